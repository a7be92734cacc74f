"""Mapping of gRPC/tritonclient errors to the client's typed errors."""

from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from cvserve.client import (
    AccessDenied,
    ClientError,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    ServerError,
    ServerUnavailable,
)
from cvserve.client.errors import RetryKind, map_error, retry_kind, status_name


def triton_error(code: str | None, msg: str) -> InferenceServerException:
    return InferenceServerException(msg, status=f"StatusCode.{code}" if code else None)


@pytest.mark.parametrize(
    ("code", "msg", "expected", "advice"),
    [
        ("INVALID_ARGUMENT", "image 2 of 4: not a decodable image", InvalidInput, "image 2 of 4"),
        ("INTERNAL", "in ensemble 'm', image 1 of 1: not a decodable image", InvalidInput, "decodable"),
        ("INTERNAL", "onnxruntime crashed", ServerError, "server log"),
        ("UNKNOWN", "something", ServerError, "server log"),
        ("NOT_FOUND", "Request for unknown model: 'x' is not found", ModelNotFound, "check the name"),
        ("NOT_FOUND", "unknown model: 'm' has no available versions", ServerUnavailable, "restarting"),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceeded, "longer timeout"),
        ("UNAVAILABLE", "failed to connect to all addresses", ServerUnavailable, "check that it is running"),
        ("UNAVAILABLE", "[request id: 1] Exceeds maximum queue size", ServerUnavailable, "overloaded"),
        ("UNAVAILABLE", "Request timeout expired", ServerUnavailable, "overloaded"),
        ("UNAVAILABLE", "Server is stopping, scheduler for...", ServerUnavailable, "shutting down"),
        ("UNAVAILABLE", "Stream removed (Socket closed)", ServerUnavailable, "cannot reach"),
        ("RESOURCE_EXHAUSTED", "quota exceeded", ServerUnavailable, "overloaded"),
        ("NOT_FOUND", "Request for unknown model: 'm' version 3 is not found", ModelNotFound, "version"),
        ("RESOURCE_EXHAUSTED", "message larger than max (5 vs. 4)", InvalidInput, "fewer or smaller"),
        ("UNAUTHENTICATED", "bad token", AccessDenied, "token"),
        ("PERMISSION_DENIED", "no", AccessDenied, "certificates"),
        ("CANCELLED", "cancelled", ClientError, "cancelled"),
        (None, "unexpected dtype", InvalidInput, "could not be prepared"),
    ],
)
def test_map_error(code, msg, expected, advice):
    err = map_error(triton_error(code, msg), model="m", url="h:1", timeout=2.0)
    assert type(err) is expected
    assert advice in str(err)
    assert err.model == "m"
    assert err.code == code


def test_categories_are_also_builtin_exceptions():
    assert issubclass(InvalidInput, ValueError)
    assert issubclass(ModelNotFound, LookupError)
    assert issubclass(DeadlineExceeded, TimeoutError)
    assert issubclass(ServerUnavailable, ConnectionError)
    assert issubclass(AccessDenied, PermissionError)
    for cls in (InvalidInput, ModelNotFound, DeadlineExceeded, ServerUnavailable, ServerError, AccessDenied):
        assert issubclass(cls, ClientError)
    err = ServerUnavailable("down", code="UNAVAILABLE")
    assert str(err) == "down" and err.retryable and not InvalidInput("x").retryable
    assert err.attempts == 0


@pytest.mark.parametrize(
    ("code", "msg", "kind"),
    [
        (
            "UNAVAILABLE",
            "failed to connect to all addresses; last error: Connection refused",
            RetryKind.WAIT,
        ),
        ("UNAVAILABLE", "DNS resolution failed for nowhere:1", RetryKind.WAIT),
        ("UNAVAILABLE", "[request id: <id_unknown>] Exceeds maximum queue size", RetryKind.BACKOFF),
        ("UNAVAILABLE", "Request timeout expired", RetryKind.BACKOFF),
        ("UNAVAILABLE", "Server is stopping, scheduler for model has stopped", RetryKind.WAIT),
        ("UNAVAILABLE", "Stream removed (Socket closed)", RetryKind.LOST),
        ("UNAVAILABLE", "recvmsg:Connection reset by peer", RetryKind.LOST),
        ("UNAVAILABLE", "upstream connect error", RetryKind.BACKOFF),
        ("NOT_FOUND", "Request for unknown model: 'm' has no available versions", RetryKind.WAIT),
        ("NOT_FOUND", "Request for unknown model: 'm' is not found", RetryKind.NEVER),
        ("RESOURCE_EXHAUSTED", "Received message larger than max (5 vs. 4)", RetryKind.NEVER),
        ("RESOURCE_EXHAUSTED", "queue full", RetryKind.NEVER),
        ("INVALID_ARGUMENT", "x", RetryKind.NEVER),
        ("DEADLINE_EXCEEDED", "x", RetryKind.NEVER),
        ("INTERNAL", "x", RetryKind.NEVER),
        (None, "x", RetryKind.NEVER),
    ],
)
def test_retry_kind(code, msg, kind):
    assert retry_kind(triton_error(code, msg)) is kind
    assert retry_kind(InvalidInput("x")) is RetryKind.NEVER


def test_status_name():
    assert status_name(triton_error("UNAVAILABLE", "x")) == "UNAVAILABLE"
    assert status_name(ValueError("x")) is None


def test_deadline_message_quotes_the_timeout_and_attempts():
    err = map_error(
        triton_error("DEADLINE_EXCEEDED", "Deadline Exceeded"), model="m", url="h:1", timeout=0.25, attempts=3
    )
    assert "0.25 s" in str(err) and "3 attempts" in str(err) and err.attempts == 3
    noted = map_error(triton_error("UNAVAILABLE", "x"), model="m", url="h:1", note="not retried: why")
    assert str(noted).endswith("; not retried: why")


def test_client_errors_pass_through():
    original = InvalidInput("x")
    assert map_error(original, model=None, url="h:1") is original
