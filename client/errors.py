"""The client's one error tree, and the one place where gRPC and tritonclient errors are read.

Every error raised by :mod:`cvserve.client` is a :class:`ClientError`; catch the category you can act on::

    ClientError                      base; .code (gRPC status name or None), .model, .attempts, .retryable
    ├── InvalidInput (ValueError)    the request is wrong: not an image, an image or request over the
    │                                client's size limits, wrong tensor name/dtype/shape, top_k too large,
    │                                not a classifier, a bad option; fix the call, retrying will not help
    ├── ModelNotFound (LookupError)  the server does not serve that model (or that version)
    ├── DeadlineExceeded (TimeoutError)
    │                                no answer within the call's deadline (``timeout=``)
    ├── ServerUnavailable (ConnectionError)
    │                                unreachable, restarting, shutting down or overloaded (its queue
    │                                rejected the request); already retried within the deadline when
    │                                retries are on; ``.retryable`` is true
    ├── ServerError                  the server failed while handling a valid request (INTERNAL...)
    ├── AccessDenied (PermissionError)
    │                                the server refused the credentials (UNAUTHENTICATED,
    │                                PERMISSION_DENIED)
    └── MissingDependency (ImportError)
                                     an optional dependency (Pillow, prometheus-client) is not installed

A closed client and a cancelled call raise the base :class:`ClientError`. The tools (``cvserve build``,
``serve``...) have their own tree in :mod:`cvserve.errors`; the CLI maps both to one error line.

Which failures are retried is decided here too (:func:`retry_kind`), from what Triton 2.51 and gRPC
return (observed against the embedded server):

* :attr:`RetryKind.WAIT` - the request was not run and the server (or the model) is not there for now,
  so waiting for it within the deadline is safe and costs the server nothing: ``UNAVAILABLE`` "failed
  to connect to all addresses" (nothing listens: down or restarting), ``UNAVAILABLE`` "Server is
  stopping, scheduler for model has stopped accepting new inference requests" (a graceful shutdown
  turns new requests away) and ``NOT_FOUND`` "Request for unknown model: 'm' has no available
  versions" (the model is unloading or loading: answered during every graceful stop, and while a
  model is reloaded). Like gRPC's wait-for-ready, these waits are not attempts and spend no budget.
* :attr:`RetryKind.LOST` - the connection broke while the request was in flight: ``UNAVAILABLE``
  "Stream removed (Socket closed)" (e.g. the server was killed). The answer is lost, whether or not the
  request ran, and inference has no side effects, so it is sent again, at most ``max_attempts`` times
  in all; it spends no retry budget, since a dead connection is not a sign of overload (a kill -9 with
  many requests in flight would otherwise empty the budget and lose them).
* :attr:`RetryKind.BACKOFF` - the server turned the request away before running it: ``UNAVAILABLE``
  "Exceeds maximum queue size" (the dynamic batcher's queue is full) and "Request timeout expired"
  (queued past the queue policy's timeout, REJECT), and any other ``UNAVAILABLE``. Retried at most
  ``max_attempts`` times in all, with backoff, while the client's retry budget allows. (A request
  dropped for the queue timeout the client derived from the call's deadline is the deadline instead:
  ``cvserve.client._retry.retrying``'s ``expired``.)
* :attr:`RetryKind.NEVER` - everything else: ``INVALID_ARGUMENT``, ``NOT_FOUND`` for an unknown model
  or version, ``DEADLINE_EXCEEDED`` and ``INTERNAL`` (the request may have been processed),
  ``RESOURCE_EXHAUSTED`` (a message larger than gRPC's limit, or a quota that a retry within the
  deadline will not refill), ``UNAUTHENTICATED``...
"""

from __future__ import annotations

import enum

import grpc


class ClientError(Exception):
    """Base class of every error raised by :mod:`cvserve.client`.

    Attributes:
        code: the gRPC status name (``"UNAVAILABLE"``), or ``None`` for an error found before sending.
        model: the model the call was for, when there was one.
        attempts: how many attempts the call made (0 when the error was found before any).
    """

    def __init__(
        self, message: str, *, code: str | None = None, model: str | None = None, attempts: int = 0
    ) -> None:
        super().__init__(message)
        self.code = code
        self.model = model
        self.attempts = attempts

    @property
    def retryable(self) -> bool:
        """Whether trying the same call again later may succeed."""
        return False


class InvalidInput(ClientError, ValueError):
    """The request is wrong (images, sizes, tensors, ``top_k``, options); the message says how to fix it."""


class ModelNotFound(ClientError, LookupError):
    """The server does not serve the named model, or not the named version."""


class DeadlineExceeded(ClientError, TimeoutError):
    """The call did not complete within its deadline."""


class ServerUnavailable(ClientError, ConnectionError):
    """The server is unreachable, restarting, shutting down, or overloaded."""

    @property
    def retryable(self) -> bool:
        return True


class ServerError(ClientError):
    """The server failed while handling the request (``INTERNAL`` and other server-side statuses)."""


class AccessDenied(ClientError, PermissionError):
    """The server refused the client's credentials (token, headers or client certificate)."""


class MissingDependency(ClientError, ImportError):
    """An optional dependency of the client (Pillow, prometheus-client) is not installed."""


class RetryKind(enum.Enum):
    """How a failed attempt may be retried (see the module docstring)."""

    NEVER = "never"
    WAIT = "wait"  # not run, server or model away: wait for it within the deadline (not an attempt)
    LOST = "lost"  # the connection broke in flight: send again, count it, no budget
    BACKOFF = "backoff"  # turned away unrun (overload): back off, count it, spend the budget


# Triton's and gRPC's messages (Triton 2.51, grpcio 1.6x), matched as substrings.
_NOT_CONNECTED = ("failed to connect to all addresses", "DNS resolution failed", "empty address list")
_QUEUE_FULL, _QUEUE_TIMEOUT = "Exceeds maximum queue size", "Request timeout expired"
_STOPPING, _RELOADING = "Server is stopping", "has no available versions"
_CONNECTION_LOST = ("Socket closed", "Connection reset", "Broken pipe")
_TOO_LARGE = "larger than max"


def status_name(exc: BaseException) -> str | None:
    """The gRPC status name of a tritonclient or gRPC error (``"UNAVAILABLE"``), if it has one."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        code = exc.code()
        return code.name if code is not None else None
    status = getattr(exc, "status", None)
    status = status() if callable(status) else status
    if not status:
        return None
    return str(status).rsplit(".", 1)[-1]


def _message(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "details"):
        return exc.details() or ""
    msg = getattr(exc, "message", None)
    return (msg() if callable(msg) else msg) or str(exc)


def queue_timed_out(exc: BaseException) -> bool:
    """Whether the server dropped a raw request from the model's queue when its queue timeout passed
    (the model's policy, or the one the client sent from the call's deadline)."""
    return status_name(exc) == "UNAVAILABLE" and _QUEUE_TIMEOUT in _message(exc)


def queue_full(exc: BaseException) -> bool:
    """Whether the server turned a request away because the model's queue was full (a raw error, or
    the :class:`ServerUnavailable` it was mapped to): the signal that clients together send too much."""
    if isinstance(exc, ClientError):
        return isinstance(exc, ServerUnavailable) and _QUEUE_FULL in str(exc)
    return status_name(exc) == "UNAVAILABLE" and _QUEUE_FULL in _message(exc)


def retry_kind(exc: BaseException) -> RetryKind:
    """Whether and how a raw tritonclient/gRPC error may be retried (see the module docstring)."""
    if isinstance(exc, ClientError):
        return RetryKind.NEVER
    code, msg = status_name(exc), _message(exc)
    if code == "UNAVAILABLE":
        if _STOPPING in msg or any(m in msg for m in _NOT_CONNECTED):
            return RetryKind.WAIT
        return RetryKind.LOST if any(m in msg for m in _CONNECTION_LOST) else RetryKind.BACKOFF
    if code == "NOT_FOUND" and _RELOADING in msg:
        return RetryKind.WAIT
    return RetryKind.NEVER


def map_error(
    exc: BaseException,
    *,
    model: str | None,
    url: str,
    timeout: float | None = None,
    attempts: int = 1,
    note: str = "",
) -> ClientError:
    """Turn a tritonclient/gRPC exception into the matching :class:`ClientError`, with advice.

    Args:
        exc: the exception raised by tritonclient or grpc.
        model: the model the call was for (``None`` for server-level calls).
        url: the server address, quoted in messages.
        timeout: the call's deadline in seconds, quoted in deadline messages.
        attempts: how many attempts were made, quoted when there were several.
        note: a sentence added to the message (e.g. why retries stopped).
    """
    if isinstance(exc, ClientError):
        return exc
    code, msg = status_name(exc), _message(exc)
    cls, text = _classify(code, msg, f"model '{model}'" if model else "server", url, timeout, attempts)
    return cls(f"{text}{'; ' + note if note else ''}", code=code, model=model, attempts=attempts)


def _classify(
    code: str | None, msg: str, what: str, url: str, timeout: float | None, attempts: int
) -> tuple[type[ClientError], str]:
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if code == "INVALID_ARGUMENT":
        return InvalidInput, f"{what} rejected the request: {msg}"
    if code == "NOT_FOUND" and _RELOADING in msg:
        return ServerUnavailable, (
            f"{what} at {url} is loading or unloading (a reload, or the server restarting){tries}: {msg}; "
            "retry later or allow a longer timeout"
        )
    if code == "NOT_FOUND" or "unknown model" in msg:
        return ModelNotFound, (
            f"{what} is not served by {url}: {msg}; check the name (and version) and that the model "
            "loaded (see the server log)"
        )
    if code == "DEADLINE_EXCEEDED":
        limit = f" of {timeout:g} s" if timeout is not None else ""
        return DeadlineExceeded, (
            f"{what} at {url} did not answer within the deadline{limit}{tries}; "
            "allow a longer timeout= or send fewer images per call"
        )
    if code == "RESOURCE_EXHAUSTED" and _TOO_LARGE in msg:
        return InvalidInput, f"request to {what} is too large for gRPC: {msg}; send fewer or smaller images"
    if code == "RESOURCE_EXHAUSTED" or (
        code == "UNAVAILABLE" and (_QUEUE_FULL in msg or _QUEUE_TIMEOUT in msg)
    ):
        return ServerUnavailable, (
            f"{what} at {url} is overloaded{tries}: {msg}; retry later, lower the request rate, "
            "or add server capacity"
        )
    if code == "UNAVAILABLE" and _STOPPING in msg:
        return ServerUnavailable, f"{what} at {url} is shutting down{tries}: {msg}; retry on another replica"
    if code == "UNAVAILABLE":
        return ServerUnavailable, (
            f"cannot reach the Triton server at {url}{tries}: {msg}; check that it is running and the URL, "
            "or allow a longer timeout= to ride out restarts"
        )
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return AccessDenied, (
            f"{url} refused the credentials ({code}): {msg}; check the token= / headers= / certificates "
            "given to the client"
        )
    if code == "CANCELLED":
        return ClientError, f"call to {what} was cancelled: {msg}"
    if code is None:
        return InvalidInput, f"request to {what} could not be prepared: {msg}"
    if _looks_like_decode_error(msg):
        # An ensemble may report a failing step as INTERNAL; a bad image is still the caller's input.
        return InvalidInput, f"{what} rejected the request: {msg}"
    return ServerError, f"{what} at {url} failed ({code}): {msg}; see the server log"


def _looks_like_decode_error(msg: str) -> bool:
    low = msg.lower()
    return "not a decodable image" in low or "cannot identify image" in low


__all__ = [
    "AccessDenied",
    "ClientError",
    "DeadlineExceeded",
    "InvalidInput",
    "MissingDependency",
    "ModelNotFound",
    "RetryKind",
    "ServerError",
    "ServerUnavailable",
    "map_error",
    "queue_timed_out",
    "retry_kind",
    "status_name",
]
