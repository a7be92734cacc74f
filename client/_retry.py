"""Deadlines, and retries after gRPC's A6 design: a few attempts, jittered backoff, a retry budget.

Which failures may be retried is decided in :func:`cvserve.client.errors.retry_kind`:

* a request that was not run because the server or the model is not there for now (the channel
  cannot connect; Triton is stopping; the model is unloading or loading) is tried again, after a
  jittered backoff, until the call's deadline; this does not count as an attempt and spends nothing
  from the budget, like gRPC's wait-for-ready (``wait_for_ready=False`` fails such calls at once);
* a request whose connection broke in flight (its answer lost) is sent again, at most
  ``max_attempts`` times in all, after full-jitter exponential backoff;
* a request the server turned away unrun (queue full, queued past its timeout) is retried the same
  way, and only while the client's :class:`RetryBudget` allows it; except one dropped for the queue
  timeout the client sent from the call's own deadline (``expired``): that is the deadline, not
  overload, and fails at once with ``DeadlineExceeded``, spending no budget;
* nothing else is retried.

Every attempt gets the time left before the deadline as its gRPC deadline, and no attempt starts (or
backoff sleeps) past the deadline.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cvserve.client._effects import Effect, Plan, Sleep
from cvserve.client.errors import ClientError, InvalidInput, RetryKind, retry_kind

# Called with the raw exception, the number of attempts made and a note; returns the error to raise.
ErrorMapper = Callable[..., ClientError]
# An attempt needs some time to have a chance: don't sleep into the last few milliseconds.
MIN_ATTEMPT_S = 0.005
MAX_ATTEMPTS_LIMIT = 5  # gRPC A6 caps maxAttempts at 5
DROPPED_NOTE = (
    "the server dropped it from the model's queue when its answer could no longer come in time (the "
    "queue timeout this client sends with each request, from the deadline), instead of running it"
)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How a client retries failed calls (gRPC A6's retry policy and retry throttling, in one place).

    The delay before retry ``n`` (1-based) is drawn uniformly from
    ``[0, min(max_backoff_s, initial_backoff_s * multiplier ** (n - 1))]`` ("full jitter"), so that many
    clients do not retry in step after a restart. Retries of requests the server turned away also stop
    when the client's retry budget is spent: a token bucket of ``max_tokens`` that every such rejection
    empties by one and every success refills by ``token_ratio``; retries happen only while it holds more than half of
    ``max_tokens`` (with the defaults, after 5 failures in a row, until 10 calls succeed for each
    failure), so an overloaded server is not hammered. The budget is shared by all calls of a client.

    Attributes:
        max_attempts: the most times one request is sent, the first included (1 to 5; default 4).
        initial_backoff_s: the cap of the first delay (default 0.05 s).
        max_backoff_s: the largest cap of any delay (default 1 s).
        multiplier: how fast the cap grows (default 2).
        max_tokens: the size of the retry budget (default 10, as in A6's ``retryThrottling``).
        token_ratio: what each success gives back to the budget (default 0.1).
        wait_for_ready: whether a call waits, within its deadline, for a server that cannot be
            reached or is stopping, or a model being (re)loaded; ``False`` fails it at once (default
            ``True``).
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    max_tokens: float = 10.0
    token_ratio: float = 0.1
    wait_for_ready: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise InvalidInput(f"max_attempts must be 1 to {MAX_ATTEMPTS_LIMIT}, got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise InvalidInput("backoffs must be >= 0 and the multiplier >= 1")
        if self.max_tokens <= 0 or self.token_ratio <= 0:
            raise InvalidInput("max_tokens and token_ratio of the retry budget must be positive")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """The delay in seconds before retry number ``retry`` (1 for the first retry)."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return (rng or _rng).uniform(0.0, cap)


_rng = random.Random()


class RetryBudget:
    """A6 retry throttling: a thread-safe token bucket shared by every call of one client.

    Args:
        max_tokens: the bucket's size; it starts full.
        token_ratio: what each success puts back.
    """

    def __init__(self, max_tokens: float = 10.0, token_ratio: float = 0.1) -> None:
        self.max_tokens = float(max_tokens)
        self.token_ratio = float(token_ratio)
        self._tokens = self.max_tokens
        self._lock = threading.Lock()

    @property
    def tokens(self) -> float:
        """The tokens left."""
        return self._tokens

    def failed(self) -> None:
        """Record an attempt that failed with a retryable status."""
        with self._lock:
            self._tokens = max(0.0, self._tokens - 1.0)

    def succeeded(self) -> None:
        """Record an attempt that succeeded."""
        with self._lock:
            self._tokens = min(self.max_tokens, self._tokens + self.token_ratio)

    def allows_retry(self) -> bool:
        """Whether a retry may be sent now: more than half the tokens are left."""
        return self._tokens > self.max_tokens / 2


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


def retrying(
    attempt: Callable[[float], Effect],
    *,
    deadline: Deadline,
    policy: RetryPolicy | None,
    budget: RetryBudget,
    map_error: ErrorMapper,
    on_retry: Callable[[BaseException], None] | None = None,
    expired: Callable[[BaseException], bool] | None = None,
) -> Plan[Any]:
    """Send ``attempt(seconds_left)`` until it succeeds, fails for good, or the deadline passes.

    ``expired(exc)``: whether a failed attempt was dropped by the server because the call's own
    deadline could no longer be met (the queue timeout the attempt was sent with, derived from the
    deadline, passed). Such a call fails with ``DeadlineExceeded`` at once: not retried, and no retry
    budget spent, since it says nothing about overload that the deadline did not.

    Raises:
        ClientError: the mapped error of the last attempt (``DeadlineExceeded`` when no time was left).
    """
    sent = waited = 0  # attempts sent (turned away, lost or failed); attempts that found the server away
    last: BaseException | None = None
    while True:
        remaining = deadline.remaining()
        if remaining <= 0:
            raise _deadline_passed(map_error, sent + waited, last)
        try:
            result = yield attempt(remaining)
        except ClientError:
            raise
        except Exception as exc:
            if expired is not None and expired(exc):
                raise map_error(_DeadlinePassed(), sent + waited + 1, DROPPED_NOTE) from None
            kind = retry_kind(exc)
            if kind is RetryKind.WAIT:
                waited += 1
            else:
                sent += 1
                if kind is RetryKind.BACKOFF:
                    budget.failed()
            delay, note = _next_delay(kind, sent, waited, policy, budget, deadline)
            if delay is None:
                raise map_error(exc, sent + waited, note) from None
            if on_retry is not None:
                on_retry(exc)
            last = exc
        else:
            budget.succeeded()
            return result
        yield Sleep(delay)


def _next_delay(
    kind: RetryKind,
    sent: int,
    waited: int,
    policy: RetryPolicy | None,
    budget: RetryBudget,
    deadline: Deadline,
) -> tuple[float | None, str]:
    """The delay before the next attempt, or ``None`` (and why, when it is news) to raise now."""
    if policy is None or kind is RetryKind.NEVER:
        return None, ""
    if kind is RetryKind.WAIT:
        if not policy.wait_for_ready:
            return None, ""
        delay = policy.backoff(waited)
    elif sent >= policy.max_attempts:
        return None, ""
    elif kind is RetryKind.BACKOFF and not budget.allows_retry():
        return None, (
            "not retried: this client's retry budget is spent (the server kept failing); "
            "retries resume as calls succeed"
        )
    else:
        delay = policy.backoff(sent)
    return (delay, "") if deadline.remaining() - delay > MIN_ATTEMPT_S else (None, "")


class _DeadlinePassed(Exception):
    """Stands for a gRPC DEADLINE_EXCEEDED raised before an attempt could start."""

    def status(self) -> str:
        return "StatusCode.DEADLINE_EXCEEDED"

    def message(self) -> str:
        return "Deadline Exceeded"


def _deadline_passed(map_error: ErrorMapper, attempts: int, last: BaseException | None) -> ClientError:
    # The deadline ran out while backing off: the last error (the server stayed unavailable) says more.
    return map_error(last if last is not None else _DeadlinePassed(), attempts, "")


__all__ = ["Deadline", "RetryBudget", "RetryPolicy", "retrying"]
