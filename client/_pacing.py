"""Flow control: a bound on one client's requests in flight per model, so a burst is paced, not rejected.

A server admits what its instances run and its queue holds (``max_queue_size``); a client that sends
more than that at once gets the rest rejected, and its retry budget, which protects an overloaded
server from retry storms, then turns ordinary concurrency into errors. So each client keeps at most
``limit`` requests of one model (and version) in flight; a request beyond that waits in the caller's
process, within the call's deadline, for one to finish. The parts of a split call are paced one by one,
like separate requests.

The default limit (:func:`default_max_in_flight`) is what keeps the model's instances busy: two
executions' worth per instance, the one it runs and the next, already queued (one request each for a
cvserve build, which runs one request per execution), and never more than the queue bound. More
would gain the client nothing, since its extra requests would only wait in the server's queue instead
of its own line, and it would cost everyone else: a queue that one client fills turns the others'
requests away, and on Triton with a queue policy a full queue also stalls the model. Triton's batcher
hands queued work to an instance that has finished only when something wakes it, a new request or
another instance taking work (docs/serving.md), and a request turned away from a full queue wakes
nothing. So several clients that stay below the queue bound together keep the model busy and are all
answered, where clients that fill it lose throughput and spend retries (docs/benchmarks.md, "A
client's default: two requests per instance").

The bound adapts (:class:`Window`, as TCP's congestion window): it starts small (one request per
instance, at least two) and grows by one per success, doubling per round trip, up to the ceiling, until
the server first turns a request away because the model's queue is full (other clients filled it too);
from then on it is halved, at most once per request latency, on each such rejection and grows back by
about one request per round of successes. Several clients bursting at one model so share its queue
instead of each sending a queue's worth at once and spending their retry budgets on the rejections.

The line is first come, first served until it stands (:func:`_next_in_line`): its oldest call has
waited longer than it has left, so it would be sent too late for an answer. Then the newest goes
first (adaptive LIFO), sent with its deadline nearly whole, and the oldest run out of time here.

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
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cvserve.client._effects import Paced, Plan
from cvserve.client._retry import Deadline
from cvserve.client.errors import ClientError, DeadlineExceeded, InvalidInput, ServerUnavailable, queue_full
from cvserve.client.metrics import ClientMetrics

LATENCY_WEIGHT = 0.2  # of the newest observation in the moving average of sent requests' latency
FLOOR_WINDOW = 32  # sent requests whose fastest is taken as the time one needs outside the queue
DEVIATIONS = 2  # a request is sent with at least its average latency plus this many mean deviations left


@dataclass
class Latency:
    """How long this client's requests to one model take once sent: a moving average and a moving mean
    deviation (as TCP estimates its round-trip time), and the time a request needs to have left
    (:attr:`needed`: the average plus twice the deviation) to be sent; and the fastest of the last
    ``FLOOR_WINDOW`` (:attr:`floor`): what a request takes that does not wait in the server's queue."""

    seconds: float | None = None
    deviation: float = 0.0
    recent: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=FLOOR_WINDOW))

    def observe(self, seconds: float) -> None:
        self.recent.append(seconds)
        if self.seconds is None:
            self.seconds, self.deviation = seconds, seconds / 2
        else:
            self.deviation += LATENCY_WEIGHT * (abs(seconds - self.seconds) - self.deviation)
            self.seconds += LATENCY_WEIGHT * (seconds - self.seconds)

    @property
    def floor(self) -> float:
        return min(self.recent, default=0.0)

    def queue_timeout(self, remaining: float) -> float:
        """How long the server may keep a request with ``remaining`` seconds left in its queue: past
        that, running it would answer after the caller gave up (it still has to run and come back)."""
        return remaining - self.floor

    @property
    def needed(self) -> float:
        return 0.0 if self.seconds is None else self.seconds + DEVIATIONS * self.deviation

    def too_late(self, remaining: float) -> bool:
        """Whether a request with ``remaining`` seconds left would likely not finish in time."""
        return remaining < self.needed


class Window:
    """How many requests a client keeps in flight to one model, at most ``ceiling`` (``max_in_flight``,
    or :func:`default_max_in_flight`): from ``start``, one more per success until the first queue-full
    rejection (slow start), then halved on each and grown back by one per round of successes."""

    def __init__(self, ceiling: int, start: int | None = None) -> None:
        self.ceiling = ceiling
        self._limit = float(min(ceiling, start or ceiling))
        self._slow_start = True
        self._shrunk_at = -math.inf

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    def succeeded(self) -> None:
        step = 1.0 if self._slow_start else 1.0 / self._limit
        self._limit = min(float(self.ceiling), self._limit + step)

    def overloaded(self, hold_s: float) -> None:
        """Halve the window, unless it was halved less than ``hold_s`` ago (the same burst of rejections)."""
        now = time.monotonic()
        self._slow_start = False
        if now - self._shrunk_at >= hold_s:
            self._limit = max(1.0, self._limit / 2)
            self._shrunk_at = now


@dataclass
class Flow:
    """One client's pacing state for one model (and version): its window and its latency."""

    window: Window
    latency: Latency

    @classmethod
    def of(cls, ceiling: int, instances: int = 1) -> Flow:
        return cls(window=Window(ceiling, start=max(2, instances)), latency=Latency())

    def observe(self, exc: BaseException) -> None:
        """A failed attempt: the window shrinks if the server turned it away because its queue was full."""
        if queue_full(exc):
            self.window.overloaded(self.latency.seconds or MIN_HOLD_S)


MIN_HOLD_S = 0.05  # the window is halved at most this often before any latency is known


PIPELINE_DEPTH = 2  # requests out per instance by default: the one it runs and the next, already there


def default_max_in_flight(max_queue_size: int, instances: int, requests_per_execution: int = 1) -> int | None:
    """The default bound on a client's requests in flight to a model: enough to keep each instance
    busy with its next request already waiting (``PIPELINE_DEPTH`` executions of
    ``requests_per_execution`` per instance), never more than its queue bound, and at least one
    request per instance; ``None`` (no bound) when the model's queue is unbounded (``0``).

    More would gain this client nothing: the extra requests would wait in the server's queue instead
    of its own line, for the same latency, while the queue that every client shares fills up (module
    docstring)."""
    if max_queue_size <= 0:
        return None
    return min(max(max_queue_size, instances), PIPELINE_DEPTH * instances * max(1, requests_per_execution))


NO_PACING = 0  # max_in_flight: no bound and no window (as Triton's 0 is an unbounded queue)


def check_max_in_flight(value: Any) -> int | None:
    """``max_in_flight`` as given to a client: ``None`` (from the server), ``0`` (no pacing) or a
    positive int."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < NO_PACING):
        raise InvalidInput(
            f"max_in_flight must be a positive number of requests, 0 for no pacing, or None to follow the "
            f"server, got {value!r}"
        )
    return value


def paced(
    plan: Plan[Any],
    *,
    model: str,
    key: Any,
    flow: Flow | None,
    deadline: Deadline,
    metrics: ClientMetrics | None,
) -> Plan[Any]:
    """Run ``plan`` (one request, retried) holding a slot of ``key`` within ``flow``'s window; no flow
    (no bound): as is.

    Raises:
        DeadlineExceeded: no slot came free before the deadline, or it came too late for the request
            to finish (the flow's latency); the message names the local wait.
    """
    if flow is None:
        return (yield from plan)
    limit = flow.window.ceiling
    asked = time.monotonic()
    held = _holding(plan, model, asked, metrics, flow, deadline, limit)
    try:
        # wait only while an answer can still come in time: the head of the line is never a call that
        # would be dropped when its slot comes (under overload the line would otherwise be all of them)
        return (yield Paced(held, key, flow.window, deadline.remaining() - flow.latency.needed))
    except ClientError:
        raise
    except TimeoutError:  # no slot in time: the request was never sent
        waited = time.monotonic() - asked
        if metrics is not None:
            metrics.waited(model, waited)
        raise DeadlineExceeded(
            f"model '{model}': the call waited {waited:.3g} s in this client for one of its {limit} "
            f"requests in flight to finish (max_in_flight) and its deadline of {deadline.timeout:g} s "
            "would pass before an answer came, so it was not sent; allow a longer timeout=, send fewer "
            "calls at once, or raise max_in_flight= if the server admits more",
            code="DEADLINE_EXCEEDED",
            model=model,
        ) from None


def _holding(
    plan: Plan[Any],
    model: str,
    asked: float,
    metrics: ClientMetrics | None,
    flow: Flow,
    deadline: Deadline,
    limit: int,
) -> Plan[Any]:
    latency = flow.latency
    waited = time.monotonic() - asked
    if latency.too_late(deadline.remaining()):
        if metrics is not None:
            metrics.waited(model, waited)
        raise DeadlineExceeded(
            f"model '{model}': the call waited {waited:.3g} s in this client for one of its {limit} "
            f"requests in flight to finish (max_in_flight), and the {deadline.remaining():.3g} s left of "
            f"its {deadline.timeout:g} s deadline are less than this model's requests need now "
            f"({latency.needed:.3g} s): not sent; allow a longer timeout= or send fewer calls at once",
            code="DEADLINE_EXCEEDED",
            model=model,
        )
    sent = time.monotonic()
    try:
        if metrics is None:
            result = yield from plan
        else:
            with metrics.holding(model, waited=waited):
                result = yield from plan
    except ServerUnavailable as exc:  # turned away for good: the window shrinks (retries were observed)
        flow.observe(exc)
        raise
    except DeadlineExceeded:  # sent, and no answer in time: it took at least this long (no survivor bias)
        latency.observe(time.monotonic() - sent)
        raise
    latency.observe(time.monotonic() - sent)
    flow.window.succeeded()
    return result


def _window(limit: Window | int) -> Window:
    return limit if isinstance(limit, Window) else Window(limit)


class _Waiter:
    """A call waiting in a client's line: when it asked, when its wait runs out, and how it is woken."""

    __slots__ = ("asked", "expires", "granted", "wake")

    def __init__(self, timeout: float, wake: threading.Condition | None = None) -> None:
        self.asked = time.monotonic()
        self.expires = self.asked + max(timeout, 0.0)
        self.granted: Any = False  # True, or the asyncio future the slot is handed over by
        self.wake = wake  # a thread's own condition (on the slots' lock), notified when it is handed one


def _next_in_line(line: collections.deque[Any]) -> Any:
    """Take the waiter a freed slot goes to: the first in line, unless the line is standing (adaptive
    LIFO, as Facebook's servers order their queues under overload, "Fail at Scale", 2015). The line
    stands when its oldest call has waited longer than it has left to wait: it would be sent with too
    little of its deadline to be answered, and so would everyone behind it. Then the newest goes first,
    sent with its deadline nearly whole; the oldest run out of time here, unsent and cheaply, instead
    of being sent late and dropped by the server. A closed loop of callers with long deadlines never
    stands, so it stays first come, first served."""
    now, head = time.monotonic(), line[0]
    return line.pop() if now - head.asked > head.expires - now else line.popleft()


class ThreadSlots:
    """Slots shared by threads, as many as the window allows, handed by :func:`_next_in_line`.

    Each waiting thread has its own condition on the slots' lock, and a freed slot wakes only the
    thread it is handed to: with one condition for all, each answer woke every waiting thread (64 of a
    web service's worker pool) to find the slot was not theirs, and the herd cost the client CPU and
    delayed the one that was."""

    def __init__(self, limit: Window | int) -> None:
        self.window = _window(limit)
        self.in_flight = 0
        self._lock = threading.Lock()
        self._queue: collections.deque[_Waiter] = collections.deque()

    def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting up to ``timeout`` seconds; whether one was taken."""
        with self._lock:
            if self.in_flight < self.window.limit and not self._queue:
                self.in_flight += 1
                return True
            wake = threading.Condition(self._lock)
            me = _Waiter(timeout, wake)
            self._queue.append(me)
            try:
                if wake.wait_for(lambda: me.granted, max(timeout, 0.0)):
                    return True
                self._queue.remove(me)
                return False
            except BaseException:  # interrupted while waiting: hand on a slot given meanwhile
                if me.granted:
                    self.in_flight -= 1
                    self._grant()
                else:
                    self._queue.remove(me)
                raise

    def _grant(self) -> None:
        while self._queue and self.in_flight < self.window.limit:
            waiter = _next_in_line(self._queue)
            waiter.granted = True  # counted in flight from here
            self.in_flight += 1
            waiter.wake.notify()  # type: ignore[union-attr]

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self._grant()


class AsyncSlots:
    """Slots of one event loop, as many as the window allows, handed by :func:`_next_in_line`.

    A waiter is one future, set ``True`` when a slot is handed to it and ``False`` by its own timer
    (cheaper than ``asyncio.wait`` per call: under overload most calls wait here and run out)."""

    def __init__(self, limit: Window | int) -> None:
        self.window = _window(limit)
        self.in_flight = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()

    async def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting up to ``timeout`` seconds; whether one was taken."""
        if self.in_flight < self.window.limit and not self._waiters:
            self.in_flight += 1
            return True
        loop = asyncio.get_running_loop()
        me = _Waiter(timeout)
        me.granted = granted = loop.create_future()
        self._waiters.append(me)
        timer = loop.call_at(loop.time() + max(timeout, 0.0), _run_out, granted)
        try:
            got = await granted
        except BaseException:  # cancelled while waiting: hand on a slot given meanwhile
            if not self._withdraw(me):
                self.release()
            raise
        finally:
            timer.cancel()
        if not got:
            self._withdraw(me)
        return got

    def _withdraw(self, me: _Waiter) -> bool:
        """Leave the line; whether ``me`` had not been handed a slot (or it would be counted in flight)."""
        granted = me.granted
        handed = granted.done() and not granted.cancelled() and granted.result()
        if not handed:
            try:
                self._waiters.remove(me)
            except ValueError:
                pass
        return not handed

    def release(self) -> None:
        self.in_flight -= 1
        while self._waiters and self.in_flight < self.window.limit:
            waiter = _next_in_line(self._waiters).granted
            if not waiter.done():  # still waiting (one that ran out or was cancelled is leaving)
                self.in_flight += 1
                waiter.set_result(True)


def _run_out(granted: asyncio.Future[bool]) -> None:
    if not granted.done():
        granted.set_result(False)


__all__ = [
    "NO_PACING",
    "PIPELINE_DEPTH",
    "AsyncSlots",
    "Flow",
    "Latency",
    "ThreadSlots",
    "Window",
    "check_max_in_flight",
    "default_max_in_flight",
    "paced",
]
