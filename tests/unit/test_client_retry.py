"""Deadlines and the retry loop: backoff bounds, which errors are retried, the deadline's bound."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from tritonclient.utils import InferenceServerException

from cvserve.client import DeadlineExceeded, InvalidInput, RetryPolicy, ServerUnavailable
from cvserve.client._retry import Deadline, acall_with_retry, call_with_retry
from cvserve.client.errors import map_error

FAST = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.004)


def err(code: str) -> InferenceServerException:
    return InferenceServerException("boom", status=f"StatusCode.{code}")


def mapper(exc, attempts):
    return map_error(exc, model="m", url="h:1", timeout=1.0, attempts=attempts)


class Flaky:
    """Fails with ``codes`` in turn, then returns the remaining time it was given."""

    def __init__(self, *codes: str) -> None:
        self.codes = list(codes)
        self.calls: list[float] = []

    def __call__(self, remaining: float) -> float:
        self.calls.append(remaining)
        if self.codes:
            raise err(self.codes.pop(0))
        return remaining


def test_backoff_is_full_jitter_under_a_growing_cap():
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.5, multiplier=2)
    rng = random.Random(0)
    for retry, cap in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (10, 0.5)):
        delays = [policy.backoff(retry, rng) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= cap
        assert max(delays) > cap * 0.8  # spread over the whole range


def test_policy_and_deadline_validation():
    with pytest.raises(InvalidInput):
        RetryPolicy(max_attempts=0)
    with pytest.raises(InvalidInput):
        RetryPolicy(multiplier=0.5)
    for bad in (0, -1, None, "1", True):
        with pytest.raises(InvalidInput):
            Deadline(bad)


def test_retries_retryable_codes_until_success_with_shrinking_time():
    attempt = Flaky("UNAVAILABLE", "RESOURCE_EXHAUSTED", "UNAVAILABLE")
    assert call_with_retry(attempt, deadline=Deadline(5), policy=FAST, map_error=mapper) > 0
    assert len(attempt.calls) == 4
    assert attempt.calls == sorted(attempt.calls, reverse=True)  # each attempt gets the time left


@pytest.mark.parametrize("code", ["INVALID_ARGUMENT", "NOT_FOUND", "INTERNAL", "DEADLINE_EXCEEDED"])
def test_other_codes_are_not_retried(code):
    attempt = Flaky(code)
    with pytest.raises(Exception) as info:
        call_with_retry(attempt, deadline=Deadline(5), policy=FAST, map_error=mapper)
    assert len(attempt.calls) == 1 and info.value.code == code


def test_retries_off_and_max_attempts():
    attempt = Flaky("UNAVAILABLE")
    with pytest.raises(ServerUnavailable):
        call_with_retry(attempt, deadline=Deadline(5), policy=None, map_error=mapper)
    assert len(attempt.calls) == 1
    attempt = Flaky(*["UNAVAILABLE"] * 10)
    with pytest.raises(ServerUnavailable, match="3 attempts"):
        call_with_retry(
            attempt,
            deadline=Deadline(5),
            policy=RetryPolicy(max_attempts=3, initial_backoff_s=0),
            map_error=mapper,
        )
    assert len(attempt.calls) == 3


def test_retries_stop_inside_the_deadline():
    attempt = Flaky(*["UNAVAILABLE"] * 10_000)
    policy = RetryPolicy(initial_backoff_s=0.02, max_backoff_s=0.05)
    start = time.perf_counter()
    with pytest.raises(ServerUnavailable):
        call_with_retry(attempt, deadline=Deadline(0.3), policy=policy, map_error=mapper)
    assert time.perf_counter() - start < 0.6  # the deadline plus scheduling slack on a loaded machine
    assert len(attempt.calls) > 3


def test_no_attempt_once_the_deadline_has_passed():
    deadline = Deadline(0.001)
    time.sleep(0.002)
    attempt = Flaky()
    with pytest.raises(DeadlineExceeded):
        call_with_retry(attempt, deadline=deadline, policy=FAST, map_error=mapper)
    assert attempt.calls == []


def test_async_retry_loop():
    calls = []

    async def attempt(remaining: float) -> str:
        calls.append(remaining)
        if len(calls) < 3:
            raise err("UNAVAILABLE")
        return "ok"

    retried = []
    result = asyncio.run(
        acall_with_retry(
            attempt, deadline=Deadline(5), policy=FAST, map_error=mapper, on_retry=retried.append
        )
    )
    assert result == "ok" and len(calls) == 3 and len(retried) == 2
