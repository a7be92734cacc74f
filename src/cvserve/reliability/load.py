"""Load for the reliability scenarios: closed-loop workers and an open-loop arrival rate, with records.

Every request leaves a :class:`Record` (start, end, outcome); the scenarios judge the records. Times are
``time.monotonic()`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cvserve.reliability.payloads import Outcome


@dataclass(frozen=True)
class Record:
    start: float
    end: float
    outcome: Outcome
    tag: str = ""  # what was sent (a kind's name, "good")

    @property
    def latency_s(self) -> float:
        return self.end - self.start


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def closed_loop(
    workers: int,
    call: Callable[[int], tuple[str, Outcome]],
    *,
    duration_s: float | None = None,
    until: Callable[[], bool] | None = None,
    pause_s: float = 0.0,
) -> list[Record]:
    """``workers`` threads, each calling ``call(worker)`` back to back (``pause_s`` between calls)
    for ``duration_s`` or until ``until()`` is true. ``call`` returns (tag, outcome)."""
    records: list[Record] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s if duration_s is not None else None

    def done() -> bool:
        return (stop_at is not None and time.monotonic() >= stop_at) or (until is not None and until())

    def worker(i: int) -> None:
        while not done():
            start = time.monotonic()
            tag, outcome = call(i)
            with lock:
                records.append(Record(start, time.monotonic(), outcome, tag))
            if pause_s:
                time.sleep(pause_s)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def open_loop(rate: float, duration_s: float, request) -> list[Record]:
    """Send ``request()`` (a ModelInferRequest) at ``rate`` per second for ``duration_s``, whatever the
    answers (gRPC futures: the arrivals never wait for the server), through ``stub_call`` futures."""
    import grpc

    from cvserve.reliability.payloads import top1

    stub_call, make = request
    records: list[Record] = []
    lock = threading.Lock()
    pending = threading.Semaphore(0)
    sent = 0
    begin = time.monotonic()

    def on_done(future, start: float) -> None:
        end = time.monotonic()
        try:
            outcome = Outcome("OK", top1=top1(future.result()))
        except grpc.RpcError as exc:
            outcome = Outcome(exc.code().name, exc.details() or "")
        with lock:
            records.append(Record(start, end, outcome))
        pending.release()

    while True:
        now = time.monotonic()
        if now - begin >= duration_s:
            break
        due = int((now - begin) * rate) + 1
        while sent < due:
            start = time.monotonic()
            future = stub_call.future(make(), timeout=60)
            future.add_done_callback(lambda f, s=start: on_done(f, s))
            sent += 1
        time.sleep(min(0.002, 1.0 / rate))
    for _ in range(sent):
        pending.acquire(timeout=120)
    return records


def summary(records: Sequence[Record]) -> dict:
    """Counts and latency percentiles (ms) of successes and of failures."""
    ok = [r.latency_s * 1000 for r in records if r.outcome.ok]
    bad = [r.latency_s * 1000 for r in records if not r.outcome.ok]
    span = (max(r.end for r in records) - min(r.start for r in records)) if records else 0.0
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": len(bad),
        "throughput_rps": len(ok) / span if span else 0.0,
        "ok_p50_ms": percentile(ok, 50),
        "ok_p95_ms": percentile(ok, 95),
        "ok_max_ms": max(ok, default=float("nan")),
        "error_p50_ms": percentile(bad, 50),
        "error_p95_ms": percentile(bad, 95),
        "error_max_ms": max(bad, default=float("nan")),
    }
