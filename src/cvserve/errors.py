"""Errors raised by cvserve's tools (build, serve, loadtest, tune, k8s).

The client has its own hierarchy rooted at :class:`cvserve.client.ClientError`. Third-party errors are
mapped to these at the boundary; the CLI prints the message of a :class:`CvserveError` and exits 1
without a traceback, while any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class CvserveError(Exception):
    """Base class of every error a cvserve tool reports to its user."""


class UserInputError(CvserveError):
    """A flag, file or value given by the user is wrong; the message says how to fix it."""


class NotFoundError(UserInputError):
    """A file, module, model or binary that was named does not exist."""


class MissingDependencyError(CvserveError):
    """An optional dependency (an extra) is not installed; the message names the pip command."""


class BuildError(CvserveError):
    """A build stage failed (export, verification, accuracy gate); the repository is untouched."""


class ServerError(CvserveError):
    """The Triton server could not start, became unhealthy or failed to load a model."""


class TimeoutError(CvserveError):
    """Something did not happen within the time allowed."""
