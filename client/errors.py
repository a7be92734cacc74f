"""The client's exceptions, and the one place where gRPC and tritonclient errors are mapped to them.

Every error raised by :mod:`cvserve.client` is a :class:`ClientError`; catch the category you can act on:

* :class:`InvalidInput` - the request was wrong (not an image, wrong shape or dtype, ``top_k`` too
  large); fix the call, retrying will not help.
* :class:`ModelNotFound` - the server does not serve that model name.
* :class:`DeadlineExceeded` - no answer within the call's deadline (``timeout=``).
* :class:`ServerUnavailable` - the server could not be reached, is restarting or is overloaded; retried
  automatically inside the deadline unless retries are off.
* :class:`ServerError` - the server failed while handling a valid request.
"""

from __future__ import annotations

import grpc

# gRPC status names that mean "try again later": the server is down, restarting or shedding load.
RETRYABLE_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})


class ClientError(Exception):
    """Base class of every error raised by :mod:`cvserve.client`.

    Attributes:
        code: the gRPC status name (``"UNAVAILABLE"``), or ``None`` for an error found before sending.
        model: the model the call was for, when there was one.
    """

    def __init__(self, message: str, *, code: str | None = None, model: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.model = model

    @property
    def retryable(self) -> bool:
        """Whether trying the same call again later may succeed."""
        return False


class InvalidInput(ClientError, ValueError):
    """The request is wrong (images, tensors, ``top_k``, options); the message says how to fix it."""


class ModelNotFound(ClientError, LookupError):
    """The server does not serve the named model."""


class DeadlineExceeded(ClientError, TimeoutError):
    """The call did not complete within its deadline."""


class ServerUnavailable(ClientError, ConnectionError):
    """The server is unreachable, restarting, or overloaded (``RESOURCE_EXHAUSTED``)."""

    @property
    def retryable(self) -> bool:
        return True


class ServerError(ClientError):
    """The server failed while handling the request (``INTERNAL`` and other server-side statuses)."""


class MissingDependency(ClientError, ImportError):
    """An optional dependency of the client (Pillow, prometheus-client) is not installed."""


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


def is_retryable(exc: BaseException) -> bool:
    """Whether a raw tritonclient/gRPC error is worth retrying (see :func:`map_error`)."""
    code, msg = status_name(exc), _message(exc)
    if code == "RESOURCE_EXHAUSTED" and "larger than max" in msg:
        return False  # gRPC's message-size limit, not load: the same request will fail again
    if code == "NOT_FOUND" and "no available versions" in msg:
        return True  # Triton is loading or unloading the model, e.g. during a restart
    return code in RETRYABLE_CODES


def map_error(
    exc: BaseException,
    *,
    model: str | None,
    url: str,
    timeout: float | None = None,
    attempts: int = 1,
) -> ClientError:
    """Turn a tritonclient/gRPC exception into the matching :class:`ClientError`, with advice.

    Args:
        exc: the exception raised by tritonclient or grpc.
        model: the model the call was for (``None`` for server-level calls).
        url: the server address, quoted in messages.
        timeout: the call's deadline in seconds, quoted in deadline messages.
        attempts: how many attempts were made, quoted when the server stayed unavailable.
    """
    if isinstance(exc, ClientError):
        return exc
    code, msg = status_name(exc), _message(exc)
    what = f"model '{model}'" if model else "server"
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if code == "INVALID_ARGUMENT":
        return InvalidInput(f"{what} rejected the request: {msg}", code=code, model=model)
    if code == "NOT_FOUND" and "no available versions" in msg:
        return ServerUnavailable(
            f"{what} at {url} is loading or unloading (the server may be restarting){tries}: {msg}; "
            "retry later or allow a longer timeout",
            code=code,
            model=model,
        )
    if code == "NOT_FOUND" or "unknown model" in msg:
        return ModelNotFound(
            f"{what} is not served by {url}: {msg}; check the name and that the model loaded "
            "(see the server log)",
            code=code,
            model=model,
        )
    if code == "DEADLINE_EXCEEDED":
        limit = f" of {timeout:g} s" if timeout is not None else ""
        return DeadlineExceeded(
            f"{what} at {url} did not answer within the deadline{limit}{tries}; "
            "allow a longer timeout= or send fewer images per call",
            code=code,
            model=model,
        )
    if code == "RESOURCE_EXHAUSTED" and "larger than max" in msg:
        return InvalidInput(
            f"request to {what} is too large for gRPC: {msg}; send fewer or smaller images",
            code=code,
            model=model,
        )
    if code == "RESOURCE_EXHAUSTED":
        return ServerUnavailable(
            f"{what} at {url} is overloaded{tries}: {msg}; retry later, lower the request rate, "
            "or add server capacity",
            code=code,
            model=model,
        )
    if code == "UNAVAILABLE":
        return ServerUnavailable(
            f"cannot reach the Triton server at {url}{tries}: {msg}; check that it is running and the URL, "
            "or allow a longer timeout= to ride out restarts",
            code=code,
            model=model,
        )
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return ClientError(
            f"{url} refused the credentials ({code}): {msg}; check the token= / headers= given to the client",
            code=code,
            model=model,
        )
    if code == "CANCELLED":
        return ClientError(f"call to {what} was cancelled: {msg}", code=code, model=model)
    if code is None:
        return InvalidInput(f"request to {what} could not be prepared: {msg}", model=model)
    if _looks_like_decode_error(msg):
        # An ensemble may report a failing step as INTERNAL; a bad image is still the caller's input.
        return InvalidInput(f"{what} rejected the request: {msg}", code=code, model=model)
    return ServerError(f"{what} at {url} failed ({code}): {msg}; see the server log", code=code, model=model)


def _looks_like_decode_error(msg: str) -> bool:
    low = msg.lower()
    return "not a decodable image" in low or "cannot identify image" in low


__all__ = [
    "RETRYABLE_CODES",
    "ClientError",
    "DeadlineExceeded",
    "InvalidInput",
    "MissingDependency",
    "ModelNotFound",
    "ServerError",
    "ServerUnavailable",
    "is_retryable",
    "map_error",
    "status_name",
]
