"""Flow control: a bound on one client's requests in flight per model, so a burst is paced, not rejected.

A server admits what its instances run and its queue holds (``max_queue_size``); a client that sends
more than that at once gets the rest rejected, and its retry budget, which protects an overloaded
server from retry storms, then turns ordinary concurrency into errors. So each client keeps at most
``limit`` requests of one model (and version) in flight; a request beyond that waits in the caller's
process, within the call's deadline, for one to finish. The default limit is the model's queue bound
(:func:`default_max_in_flight`): with no more requests out than the queue holds, one client alone never
overfills it, whatever its instances are doing. The parts of a split call are paced one by one, like
separate requests.

A request whose slot comes free too late to finish is not sent: when its remaining deadline is
shorter than what this client's recent requests to the model took once sent (:class:`Latency`, a
moving average), it fails at once with :class:`DeadlineExceeded`. Under a sustained overload the
local queue would otherwise hand every slot to a call that has nearly used its deadline up waiting,
and the server would spend its capacity on requests whose callers give up before the answer:
goodput would collapse although the server never saw more than its queue bound.

The wait is an effect, :class:`~cvserve.client._effects.Paced`: the plan says which slots and for how
long; the blocking client waits on :class:`ThreadSlots` (shared by threads), the asyncio client on
:class:`AsyncSlots`. A request holds its slot through its retries and their backoff, so rejections by
a server busy with other clients slow this client down instead of letting new requests in.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass
from typing import Any

from cvserve.client._effects import Paced, Plan
from cvserve.client._retry import Deadline
from cvserve.client.errors import ClientError, DeadlineExceeded, InvalidInput
from cvserve.client.metrics import ClientMetrics

LATENCY_WEIGHT = 0.2  # of the newest observation in the moving average of sent requests' latency


@dataclass
class Latency:
    """A moving average of how long this client's requests to one model took once sent (seconds)."""

    seconds: float | None = None

    def observe(self, seconds: float) -> None:
        if self.seconds is None:
            self.seconds = seconds
        else:
            self.seconds += LATENCY_WEIGHT * (seconds - self.seconds)

    def too_late(self, remaining: float) -> bool:
        """Whether a request with ``remaining`` seconds left would likely not finish in time."""
        return self.seconds is not None and remaining < self.seconds


def default_max_in_flight(max_queue_size: int, instances: int) -> int | None:
    """The default bound on a client's requests in flight to a model: its queue bound, and at least one
    request per instance; ``None`` (no bound) when the model's queue is unbounded (``0``)."""
    return max(max_queue_size, instances) if max_queue_size > 0 else None


def check_max_in_flight(value: Any) -> int | None:
    """``max_in_flight`` as given to a client: ``None`` (from the server) or a positive int."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidInput(
            f"max_in_flight must be a positive number of requests, or None to follow the server, got {value!r}"
        )
    return value


def paced(
    plan: Plan[Any],
    *,
    model: str,
    key: Any,
    limit: int | None,
    deadline: Deadline,
    metrics: ClientMetrics | None,
    latency: Latency | None = None,
) -> Plan[Any]:
    """Run ``plan`` (one request, retried) holding one of ``limit`` slots of ``key``; no bound: as is.

    Raises:
        DeadlineExceeded: no slot came free before the deadline, or it came too late for the request
            to finish (``latency``); the message names the local wait.
    """
    if limit is None:
        return (yield from plan)
    asked = time.monotonic()
    held = _holding(plan, model, asked, metrics, latency or Latency(), deadline, limit)
    try:
        return (yield Paced(held, key, limit, deadline.remaining()))
    except ClientError:
        raise
    except TimeoutError:  # no slot in time: the request was never sent
        waited = time.monotonic() - asked
        if metrics is not None:
            metrics.waited(model, waited)
        raise DeadlineExceeded(
            f"model '{model}': the call waited {waited:.3g} s in this client for one of its {limit} "
            f"requests in flight to finish (max_in_flight) and its deadline of {deadline.timeout:g} s "
            "passed before it was sent; allow a longer timeout=, send fewer calls at once, or raise "
            "max_in_flight= if the server admits more",
            code="DEADLINE_EXCEEDED",
            model=model,
        ) from None


def _holding(
    plan: Plan[Any],
    model: str,
    asked: float,
    metrics: ClientMetrics | None,
    latency: Latency,
    deadline: Deadline,
    limit: int,
) -> Plan[Any]:
    waited = time.monotonic() - asked
    if latency.too_late(deadline.remaining()):
        if metrics is not None:
            metrics.waited(model, waited)
        raise DeadlineExceeded(
            f"model '{model}': the call waited {waited:.3g} s in this client for one of its {limit} "
            f"requests in flight to finish (max_in_flight), and the {deadline.remaining():.3g} s left of "
            f"its {deadline.timeout:g} s deadline are less than this model's requests take now "
            f"({latency.seconds:.3g} s): not sent; allow a longer timeout= or send fewer calls at once",
            code="DEADLINE_EXCEEDED",
            model=model,
        )
    sent = time.monotonic()
    if metrics is None:
        result = yield from plan
    else:
        with metrics.holding(model, waited=waited):
            result = yield from plan
    latency.observe(time.monotonic() - sent)
    return result


class ThreadSlots:
    """``limit`` slots shared by threads, handed out first come, first served."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._cond = threading.Condition()
        self._queue: collections.deque[object] = collections.deque()

    def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting up to ``timeout`` seconds; whether one was taken."""
        me = object()
        with self._cond:
            self._queue.append(me)
            try:
                got = self._cond.wait_for(
                    lambda: self.in_flight < self.limit and self._queue[0] is me, max(timeout, 0.0)
                )
            finally:
                self._queue.remove(me)
                self._cond.notify_all()  # the next in line may be first now
            if got:
                self.in_flight += 1
            return got

    def release(self) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()


class AsyncSlots:
    """``limit`` slots of one event loop, handed out first come, first served."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting up to ``timeout`` seconds; whether one was taken."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return True
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(granted)
        try:
            await asyncio.wait((granted,), timeout=max(timeout, 0.0))
        except BaseException:  # cancelled while waiting: hand on a slot given meanwhile
            if self._withdraw(granted):
                self.release()
            raise
        return self._withdraw(granted)

    def _withdraw(self, granted: asyncio.Future[None]) -> bool:
        """Stop waiting; whether the slot had been handed over (``release`` passes it on unchanged)."""
        if granted.done() and not granted.cancelled():
            return True
        granted.cancel()
        try:
            self._waiters.remove(granted)
        except ValueError:
            pass
        return False

    def release(self) -> None:
        while self._waiters:  # hand the slot to the first waiter still waiting
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1


__all__ = ["AsyncSlots", "Latency", "ThreadSlots", "check_max_in_flight", "default_max_in_flight", "paced"]
