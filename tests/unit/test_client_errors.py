"""Mapping of gRPC/tritonclient errors to the client's typed errors."""

from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from cvserve.client import (
    ClientError,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    ServerError,
    ServerUnavailable,
)
from cvserve.client.errors import is_retryable, map_error, status_name


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
        (
            "NOT_FOUND",
            "Request for unknown model: 'm' has no available versions",
            ServerUnavailable,
            "restarting",
        ),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceeded, "longer timeout"),
        ("UNAVAILABLE", "failed to connect to all addresses", ServerUnavailable, "check that it is running"),
        ("RESOURCE_EXHAUSTED", "Exceeds maximum queue size", ServerUnavailable, "overloaded"),
        (
            "RESOURCE_EXHAUSTED",
            "Received message larger than max (5 vs. 4)",
            InvalidInput,
            "fewer or smaller",
        ),
        ("UNAUTHENTICATED", "bad token", ClientError, "token"),
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
    for cls in (InvalidInput, ModelNotFound, DeadlineExceeded, ServerUnavailable, ServerError):
        assert issubclass(cls, ClientError)
    err = ServerUnavailable("down", code="UNAVAILABLE")
    assert str(err) == "down" and err.retryable and not InvalidInput("x").retryable


def test_retryable_codes():
    assert is_retryable(triton_error("UNAVAILABLE", "x"))
    assert is_retryable(triton_error("RESOURCE_EXHAUSTED", "queue full"))
    assert is_retryable(triton_error("NOT_FOUND", "'m' has no available versions"))
    assert not is_retryable(triton_error("RESOURCE_EXHAUSTED", "larger than max"))
    for code in ("INVALID_ARGUMENT", "NOT_FOUND", "DEADLINE_EXCEEDED", "INTERNAL", None):
        assert not is_retryable(triton_error(code, "x"))


def test_status_name():
    assert status_name(triton_error("UNAVAILABLE", "x")) == "UNAVAILABLE"
    assert status_name(ValueError("x")) is None


def test_deadline_message_quotes_the_timeout_and_attempts():
    err = map_error(
        triton_error("DEADLINE_EXCEEDED", "Deadline Exceeded"), model="m", url="h:1", timeout=0.25, attempts=3
    )
    assert "0.25 s" in str(err) and "3 attempts" in str(err)


def test_client_errors_pass_through():
    original = InvalidInput("x")
    assert map_error(original, model=None, url="h:1") is original
