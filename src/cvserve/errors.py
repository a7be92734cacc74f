"""Errors raised by cvserve's tools (build, serve, loadtest, tune, release, k8s), and how the CLI shows them.

cvserve has two error trees, one per surface, and each names a few categories to catch::

    CvserveError                 the tools (this module); the CLI prints one line, exit_code (1)
    ├── UserInputError           a flag, file or value is wrong; the message says how to fix it
    │   └── NotFoundError        a named file, model, binary or price does not exist
    ├── MissingDependencyError   an optional extra is not installed; the message names the pip command
    ├── BuildError               a build stage failed (export, verify, accuracy gate); repository untouched
    ├── TritonError              the Triton server process failed to start, exited, or refused a request
    │                            a tool made of it (load a model, apply a config)
    └── TimeLimitError           something did not happen within the time allowed

    ClientError                  the client (cvserve.client.errors, documented there); retry-aware
    ├── InvalidInput             the request is wrong (also a ValueError)
    ├── ModelNotFound            the server does not serve that model (also a LookupError)
    ├── DeadlineExceeded         no answer within the call's deadline (also a TimeoutError)
    ├── ServerUnavailable        unreachable, restarting or overloaded; retried (also a ConnectionError)
    ├── ServerError              the server failed on a valid request
    └── MissingDependency        an optional client dependency is missing (also an ImportError)

``cvserve.client.errors.ServerError`` is what a *request* got back from a running server; the tools'
:class:`TritonError` is about the server *process* and its control API. No class here shadows a builtin.

Third-party errors are mapped at the boundary (``raise ... from None``). ``cvserve`` (:mod:`cvserve.cli`)
catches both trees: it prints ``cvserve COMMAND: error: MESSAGE`` on one line, without a traceback, and
exits with the error's :attr:`CvserveError.exit_code` (1; a class may choose another, e.g. 2 for a
golden set that is malformed rather than failed) or 1 for a :class:`~cvserve.client.ClientError`. Any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class CvserveError(Exception):
    """Base class of every error a cvserve tool reports to its user.

    Attributes:
        exit_code: the exit status of ``cvserve`` when this error ends a command; a subclass sets its
            own as a class attribute, or a raise site passes ``exit_code=``.
    """

    exit_code: int = 1

    def __init__(self, *args: object, exit_code: int | None = None) -> None:
        super().__init__(*args)
        if exit_code is not None:
            self.exit_code = exit_code


class UserInputError(CvserveError):
    """A flag, file or value given by the user is wrong; the message says how to fix it."""


class NotFoundError(UserInputError):
    """A file, module, model or binary that was named does not exist."""


class MissingDependencyError(CvserveError):
    """An optional dependency (an extra) is not installed; the message names the pip command."""


class BuildError(CvserveError):
    """A build stage failed (export, verification, accuracy gate); the repository is untouched."""


class TritonError(CvserveError):
    """The Triton server process could not start, exited or became unhealthy, or refused what a tool
    asked of it (loading a model, applying a config override).

    Not :class:`cvserve.client.errors.ServerError`, which is a failed inference request.
    """


class TimeLimitError(CvserveError):
    """Something did not happen within the time allowed (the server becoming ready, a model loading)."""
