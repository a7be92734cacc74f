"""Deadlines and retries with exponential backoff and full jitter, bounded by the call's deadline.

Only errors that mean "try again later" are retried (:func:`cvserve.client.errors.is_retryable`:
UNAVAILABLE, RESOURCE_EXHAUSTED, and a model that is being reloaded); each attempt gets the time left
before the deadline as its gRPC deadline, and no attempt starts once the deadline has passed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from cvserve.client.errors import ClientError, InvalidInput, is_retryable

T = TypeVar("T")
# Called with the raw exception and the number of attempts made; returns the error to raise.
ErrorMapper = Callable[[BaseException, int], ClientError]


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How to retry calls that failed with a retryable status.

    The delay before retry ``n`` (1-based) is drawn uniformly from
    ``[0, min(max_backoff_s, initial_backoff_s * multiplier ** (n - 1))]`` ("full jitter"), so that many
    clients do not retry in step after a restart.

    Attributes:
        max_attempts: the most attempts per call, the first included; ``None`` retries until the deadline.
        initial_backoff_s: the cap of the first delay.
        max_backoff_s: the largest cap of any delay.
        multiplier: how fast the cap grows.
    """

    max_attempts: int | None = None
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise InvalidInput(f"max_attempts must be at least 1 (or None), got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise InvalidInput("backoffs must be >= 0 and the multiplier >= 1")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """The delay in seconds before retry number ``retry`` (1 for the first retry)."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return (rng or _rng).uniform(0.0, cap)


_rng = random.Random()


class Deadline:
    """A point in time, ``timeout`` seconds after creation, that every attempt of one call shares."""

    __slots__ = ("expires", "timeout")

    def __init__(self, timeout: float) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.expires = time.monotonic() + self.timeout

    def remaining(self) -> float:
        """Seconds left; zero or less once the deadline has passed."""
        return self.expires - time.monotonic()


def _next_delay(
    exc: BaseException, attempts: int, policy: RetryPolicy | None, deadline: Deadline
) -> float | None:
    """The delay before the next attempt, or ``None`` when the error must be raised now."""
    if isinstance(exc, ClientError) or policy is None or not is_retryable(exc):
        return None
    if policy.max_attempts is not None and attempts >= policy.max_attempts:
        return None
    delay = policy.backoff(attempts)
    # An attempt needs some time to have a chance; don't sleep into the deadline.
    return delay if deadline.remaining() - delay > 0.005 else None


def call_with_retry(
    attempt: Callable[[float], T],
    *,
    deadline: Deadline,
    policy: RetryPolicy | None,
    map_error: ErrorMapper,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Run ``attempt(seconds_left)`` until it succeeds, a non-retryable error, or the deadline.

    Raises:
        ClientError: the mapped error of the last attempt (``DeadlineExceeded`` when no time was left).
    """
    attempts, last = 0, None
    while True:
        remaining = deadline.remaining()
        if remaining <= 0:
            raise _deadline_passed(map_error, attempts, last)
        attempts += 1
        try:
            return attempt(remaining)
        except Exception as exc:
            delay = _next_delay(exc, attempts, policy, deadline)
            if delay is None:
                if isinstance(exc, ClientError):
                    raise
                raise map_error(exc, attempts) from None
            if on_retry is not None:
                on_retry(exc)
            last = exc
        time.sleep(delay)


async def acall_with_retry(
    attempt: Callable[[float], Awaitable[T]],
    *,
    deadline: Deadline,
    policy: RetryPolicy | None,
    map_error: ErrorMapper,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """The asyncio form of :func:`call_with_retry`."""
    attempts, last = 0, None
    while True:
        remaining = deadline.remaining()
        if remaining <= 0:
            raise _deadline_passed(map_error, attempts, last)
        attempts += 1
        try:
            return await attempt(remaining)
        except Exception as exc:
            delay = _next_delay(exc, attempts, policy, deadline)
            if delay is None:
                if isinstance(exc, ClientError):
                    raise
                raise map_error(exc, attempts) from None
            if on_retry is not None:
                on_retry(exc)
            last = exc
        await asyncio.sleep(delay)


class _DeadlinePassed(Exception):
    """Stands for a gRPC DEADLINE_EXCEEDED raised before an attempt could start."""

    def status(self) -> str:
        return "StatusCode.DEADLINE_EXCEEDED"

    def message(self) -> str:
        return "Deadline Exceeded"


def _deadline_passed(map_error: ErrorMapper, attempts: int, last: BaseException | None) -> ClientError:
    # The deadline ran out while backing off: the last error (the server stayed unavailable) says more.
    return map_error(last if last is not None else _DeadlinePassed(), max(attempts, 1))


__all__ = ["Deadline", "RetryPolicy", "acall_with_retry", "call_with_retry"]
