"""Flow control without a server: the default bound, the slots of both clients, the paced plan.

The plans run under the same drivers the clients use (``run``/``arun``); states are reached by waiting
on what the slots report (who holds one, who is queued), never on time.
"""

from __future__ import annotations

import asyncio
import collections
import threading

import pytest
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from cvserve.client import Client, ClientMetrics, DeadlineExceeded, InvalidInput
from cvserve.client._effects import Paced, Rpc, arun, run
from cvserve.client._metadata import model_info
from cvserve.client._pacing import (
    DEVIATIONS,
    LATENCY_WEIGHT,
    AsyncSlots,
    Flow,
    Latency,
    ThreadSlots,
    Window,
    default_max_in_flight,
    paced,
)
from cvserve.client._retry import Deadline

WAIT_S = 10.0  # upper bound of waits on observable state (never reached when things work)


def wait_until(condition, what: str) -> None:
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.001)):
        if condition():
            return
        done.wait(0.001)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_default_bound_keeps_each_instance_busy_within_the_queue_bound():
    assert default_max_in_flight(65, 2) == 4  # each instance runs one and has the next waiting
    assert default_max_in_flight(65, 6) == 12
    assert default_max_in_flight(65, 2, requests_per_execution=32) == 65  # a batcher that joins requests
    assert default_max_in_flight(3, 2) == 3  # never more than the queue holds
    assert default_max_in_flight(1, 2) == 2  # every instance may still have a request
    assert default_max_in_flight(0, 2) is None  # an unbounded queue rejects nothing: no bound


@pytest.mark.parametrize("bad", [-1, 2.5, True, "8"])
def test_max_in_flight_is_checked(bad):
    with pytest.raises(InvalidInput, match="max_in_flight"):
        Client("localhost:1", max_in_flight=bad)


def test_max_in_flight_0_turns_pacing_off():
    meta = pb.ModelMetadataResponse(name="m", versions=["1"], platform="python")
    info = model_info(meta, _config("m", queue=40, instances=2))
    with Client("localhost:1", max_in_flight=0) as off, Client("localhost:1") as paced_client:
        assert off._flow(info) is None  # no window, no local wait: every request goes out at once
        # the batcher joins up to 8 requests: two executions of 8 per instance, within the queue's 40
        assert paced_client._flow(info).window.ceiling == 32


def _config(name: str, queue: int = 0, instances: int = 1, **kw) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, max_batch_size=8, **kw)
    cfg.instance_group.add(count=instances)
    if queue:
        cfg.dynamic_batching.default_queue_policy.max_queue_size = queue
    return cfg


def test_the_server_config_gives_the_queue_bound_and_instances_also_through_an_ensemble():
    meta = pb.ModelMetadataResponse(name="m", versions=["1"], platform="python")
    info = model_info(meta, _config("m", queue=40, instances=2))
    assert (info.max_queue_size, info.instances) == (40, 2)
    assert model_info(meta, _config("m")).max_queue_size == 0  # no queue policy: unbounded
    # An ensemble admits what its steps' queues do: the step that admits the fewest decides.
    steps = [
        _config("pre", instances=2),
        _config("net", queue=24, instances=2),
        _config("post", queue=64, instances=4),
    ]
    ensemble = model_info(pb.ModelMetadataResponse(name="e", platform="ensemble"), _config("e"), "", steps)
    assert (ensemble.max_queue_size, ensemble.instances) == (24, 2)


def test_the_server_config_says_how_many_requests_one_execution_takes():
    meta = pb.ModelMetadataResponse(name="m", versions=["1"], platform="python")
    one = _config("m", queue=40, instances=2)
    one.max_batch_size = 16
    one.dynamic_batching.preferred_batch_size.append(1)  # a cvserve build: one request per execution
    assert model_info(meta, one).requests_per_execution == 1
    joined = _config("m", queue=40, instances=2)
    joined.max_batch_size = 16  # the batcher joins up to 16 requests of one image
    assert model_info(meta, joined).requests_per_execution == 16
    delayed = _config("m", queue=40, instances=2)
    delayed.max_batch_size = 16
    delayed.dynamic_batching.preferred_batch_size.append(1)
    delayed.dynamic_batching.max_queue_delay_microseconds = 100  # waits to join requests
    assert model_info(meta, delayed).requests_per_execution == 16
    unbatched = mc.ModelConfig(name="m", max_batch_size=16)  # no dynamic batcher: one request each
    assert model_info(meta, unbatched).requests_per_execution == 1


def test_thread_slots_bound_the_holders_and_serve_waiters_in_order():
    slots = ThreadSlots(2)
    assert slots.acquire(0) and slots.acquire(0) and not slots.acquire(0)  # full: no slot at once
    order: list[str] = []

    def waiter(name: str) -> None:
        assert slots.acquire(WAIT_S)
        order.append(name)

    first = threading.Thread(target=waiter, args=("first",))
    first.start()
    wait_until(lambda: len(slots._queue) == 1, "the first waiter")
    second = threading.Thread(target=waiter, args=("second",))
    second.start()
    wait_until(lambda: len(slots._queue) == 2, "the second waiter")
    slots.release()
    first.join(WAIT_S)
    assert order == ["first"] and slots.in_flight == 2  # the slot went to the first in line
    slots.release()
    second.join(WAIT_S)
    assert order == ["first", "second"]
    slots.release(), slots.release()
    assert slots.in_flight == 0 and not slots._queue


def test_async_slots_hand_on_in_order_and_a_cancelled_waiter_leaks_nothing():
    async def main() -> None:
        slots = AsyncSlots(1)
        assert await slots.acquire(0)
        assert not await slots.acquire(0)  # full, and no time to wait
        first = asyncio.ensure_future(slots.acquire(WAIT_S))
        second = asyncio.ensure_future(slots.acquire(WAIT_S))
        while len(slots._waiters) < 2:
            await asyncio.sleep(0)
        first.cancel()  # a caller gives up (its call was cancelled)
        await asyncio.gather(first, return_exceptions=True)
        slots.release()  # the slot goes to the next one still waiting
        assert await second and slots.in_flight == 1
        slots.release()
        assert slots.in_flight == 0 and not slots._waiters

    asyncio.run(main())


def test_a_slot_handed_to_a_waiter_that_is_cancelled_at_that_moment_is_given_back():
    async def main() -> None:
        slots = AsyncSlots(1)
        assert await slots.acquire(0)
        waiter = asyncio.ensure_future(slots.acquire(WAIT_S))
        while not slots._waiters:
            await asyncio.sleep(0)
        slots.release()  # handed over...
        waiter.cancel()  # ...and cancelled before the waiter ran
        await asyncio.gather(waiter, return_exceptions=True)
        assert slots.in_flight == 0 and await slots.acquire(0)

    asyncio.run(main())


def _metrics():
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    return ClientMetrics(registry=registry), registry


def _one_request() -> object:
    return (yield Rpc("infer"))


def test_a_request_that_gets_no_slot_before_its_deadline_fails_naming_the_local_wait():
    metrics, registry = _metrics()
    slots = ThreadSlots(1)
    assert slots.acquire(0)  # another request holds the only slot
    sent: list[object] = []

    def perform(effect):
        assert isinstance(effect, Paced) and effect.limit.limit == 1
        if not slots.acquire(effect.timeout):
            raise TimeoutError
        sent.append(effect)

    plan = paced(
        _one_request(), model="m", key="m", flow=Flow.of(1), deadline=Deadline(0.05), metrics=metrics
    )
    with pytest.raises(DeadlineExceeded, match=r"waited .* s in this client .* max_in_flight") as caught:
        run(plan, perform)
    assert caught.value.attempts == 0 and caught.value.model == "m" and not sent
    assert registry.get_sample_value("cvserve_client_local_wait_seconds_count", {"model": "m"}) == 1
    assert registry.get_sample_value("cvserve_client_in_flight", {"model": "m"}) is None  # never held


def test_a_paced_request_is_counted_in_flight_until_it_ends_even_when_cancelled():
    metrics, registry = _metrics()
    gauge = {"model": "m"}

    async def main() -> None:
        slots, started, never = AsyncSlots(4), asyncio.Event(), asyncio.Event()

        async def perform(effect):
            if isinstance(effect, Paced):
                assert await slots.acquire(effect.timeout)
                try:
                    return await arun(effect.plan, perform)
                finally:
                    slots.release()
            started.set()
            await never.wait()  # an answer that never comes

        plan = paced(
            _one_request(), model="m", key="m", flow=Flow.of(4), deadline=Deadline(30), metrics=metrics
        )
        task = asyncio.ensure_future(arun(plan, perform))
        await started.wait()
        assert registry.get_sample_value("cvserve_client_in_flight", gauge) == 1 and slots.in_flight == 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert registry.get_sample_value("cvserve_client_in_flight", gauge) == 0 and slots.in_flight == 0

    asyncio.run(main())


def test_no_bound_runs_the_request_as_it_is():
    plan = paced(_one_request(), model="m", key="m", flow=None, deadline=Deadline(1), metrics=None)
    assert run(plan, lambda effect: "answer" if isinstance(effect, Rpc) else pytest.fail(str(effect))) == (
        "answer"
    )


def test_latency_is_a_moving_average_of_what_sent_requests_took():
    latency = Latency()
    assert not latency.too_late(0.0)  # nothing measured yet: send
    latency.observe(0.2)
    latency.observe(0.4)
    assert latency.seconds == pytest.approx(0.2 + LATENCY_WEIGHT * 0.2)
    # a request needs the average plus two mean deviations left: a spread-out model needs more margin
    assert latency.needed == pytest.approx(latency.seconds + DEVIATIONS * latency.deviation)
    assert latency.needed > latency.seconds
    assert latency.too_late(latency.seconds) and not latency.too_late(1.0)


def test_a_slot_that_comes_too_late_to_finish_is_not_used_to_send():
    """Under overload the oldest caller gets the next slot with little deadline left: it fails locally
    instead of spending the server's capacity on an answer nobody waits for."""
    metrics, _ = _metrics()
    sent: list[object] = []

    def perform(effect):
        if isinstance(effect, Paced):
            return run(effect.plan, perform)
        sent.append(effect)
        return "answer"

    slow = Flow(window=Window(2), latency=Latency(seconds=5.0))  # requests take 5 s now; the call has 1 s
    plan = paced(_one_request(), model="m", key="m", flow=slow, deadline=Deadline(1), metrics=metrics)
    with pytest.raises(DeadlineExceeded, match=r"less than this model's requests need now .*not sent") as err:
        run(plan, perform)
    assert err.value.attempts == 0 and not sent
    fast = Flow(window=Window(2), latency=Latency(seconds=0.01))
    plan = paced(_one_request(), model="m", key="m", flow=fast, deadline=Deadline(1), metrics=metrics)
    assert run(plan, perform) == "answer" and len(sent) == 1 and fast.latency.seconds is not None


def test_the_window_halves_on_overload_once_per_latency_and_grows_back_on_success():
    window = Window(16)
    window.overloaded(hold_s=60)
    window.overloaded(hold_s=60)  # the same burst of rejections: halved once
    assert window.limit == 8
    for _ in range(9):  # about one more request per round of successes (1/8 each)
        window.succeeded()
    assert window.limit == 9
    for _ in range(1000):
        window.succeeded()
    assert window.limit == 16  # never above the ceiling
    tiny = Window(1)
    tiny.overloaded(hold_s=0)
    assert tiny.limit == 1  # never below one request


def test_slots_follow_a_window_that_shrinks_and_grows():
    window = Window(4)
    slots = ThreadSlots(window)
    assert all(slots.acquire(0) for _ in range(4)) and not slots.acquire(0)
    window.overloaded(hold_s=0)  # 2 now: two releases before anyone may send again
    slots.release()
    assert not slots.acquire(0)
    slots.release()
    slots.release()
    assert slots.acquire(0)


def test_async_slots_hand_on_only_what_the_window_allows():
    async def main() -> None:
        window = Window(2)
        slots = AsyncSlots(window)
        assert await slots.acquire(1) and await slots.acquire(1)
        waiter = asyncio.ensure_future(slots.acquire(30))
        await asyncio.sleep(0)  # let it queue (it is observable in slots._waiters)
        assert len(slots._waiters) == 1
        window.overloaded(hold_s=0)  # 1 now
        slots.release()  # 1 in flight: the window is full, the waiter keeps waiting
        assert not waiter.done() and slots.in_flight == 1
        slots.release()
        assert await waiter and slots.in_flight == 1

    asyncio.run(main())


def test_the_window_starts_small_and_doubles_per_round_until_the_queue_is_first_full():
    window = Window(32, start=2)
    assert window.limit == 2
    for _ in range(2):  # one round of two successes
        window.succeeded()
    assert window.limit == 4
    for _ in range(100):
        window.succeeded()
    assert window.limit == 32  # the ceiling
    window.overloaded(hold_s=0)  # the queue was full: additive growth from now on
    assert window.limit == 16
    window.succeeded()
    assert window.limit == 16


def test_only_a_full_queue_shrinks_the_window():
    from tritonclient.utils import InferenceServerException

    flow = Flow.of(16, instances=2)
    assert flow.window.limit == 2
    expired = InferenceServerException("Request timeout expired", status="StatusCode.UNAVAILABLE")
    full = InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE")
    flow.window._limit = 8.0
    flow.observe(expired)  # the server dropped a request whose caller gave up: not a sign of overload
    assert flow.window.limit == 8
    flow.observe(full)
    assert flow.window.limit == 4


def _line(*ages_and_lefts: tuple[float, float]):
    """Waiters that asked ``age`` seconds ago and have ``left`` seconds of waiting left, oldest first."""
    import time

    from cvserve.client._pacing import _Waiter

    now, line = time.monotonic(), collections.deque()
    for age, left in ages_and_lefts:
        w = _Waiter(0)
        w.asked, w.expires = now - age, now + left
        line.append(w)
    return line


def test_a_line_is_first_come_first_served_until_its_oldest_has_waited_longer_than_it_has_left():
    from cvserve.client._pacing import _next_in_line

    line = _line((0.3, 29.0), (0.2, 29.1), (0.0, 29.3))  # a closed loop with long deadlines: FIFO
    oldest = line[0]
    assert _next_in_line(line) is oldest and len(line) == 2
    line = _line((0.8, 0.1), (0.5, 0.4), (0.01, 0.9))  # overload: the oldest would be sent too late
    newest, second = line[-1], line[-2]
    assert _next_in_line(line) is newest and len(line) == 2
    assert _next_in_line(line) is second  # still standing: newest first again


def test_a_standing_line_hands_the_freed_slot_to_the_newest_caller_in_both_clients():
    async def main() -> None:
        slots = AsyncSlots(1)
        assert await slots.acquire(0)
        old = asyncio.ensure_future(slots.acquire(30))
        new = asyncio.ensure_future(slots.acquire(30))
        while len(slots._waiters) < 2:
            await asyncio.sleep(0)
        slots._waiters[0].asked -= 60  # the oldest has waited longer than it has left: the line stands
        slots.release()
        assert await new and not old.done() and slots.in_flight == 1
        slots.release()
        assert await old and slots.in_flight == 1

    asyncio.run(main())

    slots, order = ThreadSlots(1), []
    assert slots.acquire(0)

    def waiter(name: str) -> None:
        assert slots.acquire(WAIT_S)
        order.append(name)

    threads = []
    for queued, name in enumerate(("old", "new"), start=1):
        threads.append(threading.Thread(target=waiter, args=(name,)))
        threads[-1].start()
        wait_until(lambda q=queued: len(slots._queue) == q, f"the {name} waiter")
    slots._queue[0].asked -= 3 * WAIT_S
    slots.release()
    wait_until(lambda: order == ["new"], "the newest to get the slot")
    slots.release()
    for t in threads:
        t.join(WAIT_S)
    assert order == ["new", "old"]


def test_a_waiter_that_runs_out_leaves_the_line_and_takes_no_slot():
    async def main() -> None:
        slots = AsyncSlots(1)
        assert await slots.acquire(0)
        assert not await slots.acquire(0.001)  # its own timer ran out
        assert not slots._waiters and slots.in_flight == 1
        slots.release()
        assert slots.in_flight == 0

    asyncio.run(main())


def test_the_queue_timeout_sent_leaves_a_request_its_time_outside_the_queue():
    latency = Latency()
    assert latency.floor == 0 and latency.queue_timeout(1.0) == 1.0  # nothing measured: the deadline
    for seconds in (0.30, 0.012, 0.25):
        latency.observe(seconds)
    assert latency.floor == 0.012  # the fastest recent request: one that did not wait in the queue
    assert latency.queue_timeout(1.0) == pytest.approx(0.988)
