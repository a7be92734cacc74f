"""The five reliability scenarios (issue 14), each against a running ``cvserve serve``.

Each returns a :class:`Result`: requests, clean errors, unexpected results, lost requests, whether the
server was alive after, its RSS before and after, and scenario-specific figures. What "clean",
"unexpected" and "lost" mean is written on each function.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cvserve.reliability import payloads as pl
from cvserve.reliability.load import Record, closed_loop, open_loop, percentile, summary
from cvserve.server.serve_process import ServeProcess


@dataclass
class Result:
    name: str
    title: str
    requests: int = 0
    clean_errors: int = 0
    unexpected: int = 0
    lost: int = 0
    alive_after: bool = False
    rss_before_mb: float = float("nan")
    rss_after_mb: float = float("nan")
    details: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _target(server: ServeProcess, model: str) -> pl.Target:
    return pl.Target(model, server.grpc_url, "127.0.0.1", server.http_port)


def _good(target: pl.Target, rng: random.Random) -> tuple[str, pl.Outcome, int]:
    data, cls = rng.choice(pl.good_images())
    return "good", pl.image_request(target, data), cls


def _alive(server: ServeProcess, target: pl.Target) -> bool:
    data, cls = pl.good_images()[0]
    outcome = pl.image_request(target, data)
    return server.ready() and outcome.ok and outcome.top1 == cls


# -- R1 -------------------------------------------------------------------------------------------
# Malformed BYTES framing that passes Triton's checks and fails every request a python model executes
# with it (built models execute one request at a time, so it should fail alone: docs/security.md).
POISON_KINDS = ("framing-prefix-beyond-data", "http-framing-prefix-beyond-data")


def r1_hostile(
    server: ServeProcess,
    model: str,
    *,
    bad_requests: int = 2000,
    workers: int = 8,
) -> Result:
    """Bad requests of every kind mixed with good ones (1 in 3) at ``workers`` concurrency.

    Clean: the kind's expected status (INVALID_ARGUMENT / HTTP 400, NOT_FOUND for an unknown model)
    with a message naming the problem and no process internals; "accept" kinds (odd modes) must be
    classified. Unexpected: anything else, and a good request that failed or got a wrong class.
    "poisoned": requests that failed with another request's malformed-framing error (Triton's python
    backend fails every request executed with it, see docs/security.md; 0 when built models run one
    request per execution).
    """
    target = _target(server, model)
    kinds = pl.kinds()
    heavy = {"oversize-image"}  # 20 MiB each: a few are enough
    closed_loop(workers, _jpeg_call(target), duration_s=5)  # warm-up: RSS before is after the first batches
    rss_before = server.rss_mb()
    sent_bad = Counter()
    lock = threading.Lock()

    def call(worker: int) -> tuple[str, pl.Outcome]:
        rng = random.Random()
        if rng.random() < 1 / 3:
            _, outcome, cls = _good(target, rng)
            return f"good:{cls}", outcome
        kind = rng.choice([k for k in kinds if k.name not in heavy or sent_bad[k.name] < 10])
        with lock:
            sent_bad[kind.name] += 1
        return kind.name, kind.send(target)

    records = closed_loop(workers, call, until=lambda: sum(sent_bad.values()) >= bad_requests)
    by_name = {k.name: k for k in kinds}
    per_kind: dict[str, Counter] = {}
    samples: dict[str, str] = {}
    good = Counter()
    good_failures: Counter = Counter()
    for r in records:
        if r.tag.startswith("good:"):
            cls = int(r.tag.split(":")[1])
            state = (
                "correct"
                if r.outcome.ok and r.outcome.top1 == cls
                else ("wrong" if r.outcome.ok else "failed")
            )
            good[state] += 1
            if state == "failed":
                good_failures[f"{r.outcome.status}: {r.outcome.message[:110]}"] += 1
            continue
        kind = by_name[r.tag]
        c = per_kind.setdefault(r.tag, Counter())
        c["sent"] += 1
        clean = pl.is_clean(kind, r.outcome)
        c["clean" if clean else "unclean"] += 1
        if not clean:
            samples.setdefault(r.tag, f"{r.outcome.status}: {r.outcome.message[:160]}")
        else:
            samples.setdefault(r.tag + " (clean)", f"{r.outcome.status}: {r.outcome.message[:160]}")
    bad = [r for r in records if not r.tag.startswith("good:")]
    reject_kinds = [k for k in kinds if not k.accept]
    poisoned = [
        r for r in records if r.tag not in POISON_KINDS and "incomplete string data" in r.outcome.message
    ]
    title = "hostile and malformed requests mixed with good ones"
    result = Result("R1", title)
    result.requests = len(records)
    result.clean_errors = sum(c["clean"] for n, c in per_kind.items() if not by_name[n].accept)
    result.unexpected = sum(c["unclean"] for c in per_kind.values()) + good["failed"] + good["wrong"]
    result.alive_after = _alive(server, target)
    result.rss_before_mb, result.rss_after_mb = rss_before, server.rss_mb()
    result.details = {
        "bad_requests": len(bad),
        "kinds": len(kinds),
        "reject_kinds": len(reject_kinds),
        "good": dict(good),
        "good_failures": dict(good_failures.most_common(5)),
        "poisoned_by_a_neighbours_framing": len(poisoned),
        "per_kind": {n: dict(c) for n, c in sorted(per_kind.items())},
        "samples": samples,
        "concurrency": workers,
    }
    return result


# -- R2 -------------------------------------------------------------------------------------------
def _stream(target: pl.Target):
    """(stub method, request factory) for open-loop load with the good JPEGs, round robin."""
    from tritonclient.grpc import service_pb2 as pb

    images = [d for d, _ in pl.good_images()[::2]]  # the JPEGs
    counter = iter(range(10**9))

    def make():
        request = pb.ModelInferRequest(model_name=target.model)
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = pl.INPUT, "BYTES"
        tensor.shape.extend([1, 1])
        request.raw_input_contents.append(pl.framed(images[next(counter) % len(images)]))
        return request

    return pl._stub(target).ModelInfer, make


def _jpeg_call(target: pl.Target):
    images = [(d, c) for d, c in pl.good_images()[::2]]

    def call(worker: int) -> tuple[str, pl.Outcome]:
        data, cls = images[worker % len(images)]
        return f"good:{cls}", pl.image_request(target, data)

    return call


def r2_overload(
    server: ServeProcess, model: str, *, slo_ms: float, overload_s: float = 20.0, factor: float = 4.0
) -> Result:
    """Find the saturating load, send ``factor`` times it open-loop for ``overload_s``, then go back.

    Saturation: the smallest closed-loop concurrency whose throughput is within 90% of the best of
    1..32. Overload: that throughput x ``factor`` per second, arrivals independent of answers, no client
    retries. Clean errors: rejections (UNAVAILABLE). Unexpected: any other error. Recovery: 1-s windows
    at the saturating concurrency until p95 is within 1.5x the p95 before the overload.
    """
    target = _target(server, model)
    call = _jpeg_call(target)
    closed_loop(2, call, duration_s=3)  # warm-up
    sweep = {}
    for c in (1, 2, 4, 8, 16, 32):
        s = summary(closed_loop(c, call, duration_s=5))
        sweep[c] = s
    best = max(s["throughput_rps"] for s in sweep.values())
    c_sat = min(c for c, s in sweep.items() if s["throughput_rps"] >= 0.9 * best)
    base = sweep[c_sat]
    rss_before = server.rss_mb()
    rate = factor * base["throughput_rps"]
    cpu = time.process_time()
    records = open_loop(rate, overload_s, _stream(target))
    generator_cores = (time.process_time() - cpu) / overload_s  # the load generator shares the machine
    rss_peak = server.rss_mb()
    admitted = [r.latency_s * 1000 for r in records if r.outcome.ok]
    rejected = [r for r in records if r.outcome.status == "UNAVAILABLE"]
    other = [r for r in records if not r.outcome.ok and r.outcome.status != "UNAVAILABLE"]
    # Recovery: back to the saturating load; p95 of each second.
    began = time.monotonic()
    after = closed_loop(c_sat, call, duration_s=10)
    windows = []
    for second in range(10):
        lat = [r.latency_s * 1000 for r in after if second <= r.end - began < second + 1 and r.outcome.ok]
        windows.append(percentile(lat, 95))
    normal = 1.5 * base["ok_p95_ms"]
    back = next((i + 1 for i, p in enumerate(windows) if p <= normal), None)
    result = Result("R2", f"overload at {factor:g}x saturation for {overload_s:g} s, then recovery")
    result.requests = len(records)
    result.clean_errors = len(rejected)
    result.unexpected = len(other)
    result.alive_after = _alive(server, target)
    result.rss_before_mb, result.rss_after_mb = rss_before, server.rss_mb()
    reasons = Counter(r.outcome.message.split("] ")[-1] for r in rejected)
    result.details = {
        "slo_p95_ms": slo_ms,
        "sweep": {
            c: {k: round(v, 1) for k, v in s.items() if k in ("throughput_rps", "ok_p50_ms", "ok_p95_ms")}
            for c, s in sweep.items()
        },
        "saturating_concurrency": c_sat,
        "saturated_rps": round(base["throughput_rps"], 1),
        "baseline_p95_ms": round(base["ok_p95_ms"], 1),
        "offered_rps": round(rate, 1),
        "admitted": len(admitted),
        "admitted_rps": round(len(admitted) / overload_s, 1),
        "admitted_p50_ms": round(percentile(admitted, 50), 1),
        "admitted_p95_ms": round(percentile(admitted, 95), 1),
        "rejected": len(rejected),
        "rejected_by_reason": dict(reasons),
        "rejection_p50_ms": round(percentile([r.latency_s * 1000 for r in rejected], 50), 1),
        "rejection_p95_ms": round(percentile([r.latency_s * 1000 for r in rejected], 95), 1),
        "queue_full_rejection_p95_ms": round(
            percentile([r.latency_s * 1000 for r in rejected if "queue size" in r.outcome.message], 95), 1
        ),
        "other_errors": dict(Counter(f"{r.outcome.status}: {r.outcome.message[:80]}" for r in other)),
        "rss_peak_mb": round(rss_peak, 1),
        "load_generator_cores": round(generator_cores, 2),
        "recovery_p95_ms_by_second": [round(p, 1) for p in windows],
        "p95_normal_after_s": back,
    }
    return result


# -- R3 -------------------------------------------------------------------------------------------
def _client_call(server: ServeProcess, model: str, *, retry: bool, timeout_s: float = 10.0):
    """Calls through cvserve.client (A6 retries when ``retry``), one client per worker."""
    from cvserve.client import Client, ClientError

    clients: dict[int, Client] = {}
    images = [(d, c) for d, c in pl.good_images()[::2]]

    def call(worker: int) -> tuple[str, pl.Outcome]:
        client = clients.setdefault(
            worker, Client(server.grpc_url, model=model, timeout=timeout_s, retry=retry)
        )
        data, cls = images[worker % len(images)]
        try:
            top = client.classify([data], top_k=1)[0][0]
        except ClientError as exc:
            return f"good:{cls}", pl.Outcome(exc.code or type(exc).__name__, f"{type(exc).__name__}: {exc}")
        return f"good:{cls}", pl.Outcome("OK", top1=top.index)

    def close() -> None:
        for c in clients.values():
            c.close()

    return call, close


def _judge_good(records: list[Record]) -> tuple[int, int]:
    """(failed, wrong) among records of good requests (tag ``good:<class>``: the image's class)."""
    failed = sum(1 for r in records if not r.outcome.ok)
    wrong = sum(1 for r in records if r.outcome.ok and f"good:{r.outcome.top1}" != r.tag)
    return failed, wrong


def _under_load(operate, workers: int, call, close, *, until, **loop) -> list[Record]:
    """``workers`` callers loop on ``call`` until ``until()`` while ``operate`` runs in a thread (the
    rollout, the kill, the signal); the thread is joined and the clients closed whatever happens."""
    op = threading.Thread(target=operate)
    op.start()
    try:
        return closed_loop(workers, call, until=until, **loop)
    finally:
        op.join()
        close()


def r3_rollout(server: ServeProcess, model: str, *, workers: int = 4) -> Result:
    """Version 2 rolled out and rolled back through explicit model control while clients call.

    The server must run with ``--model-control-mode explicit``. Version 2 is a copy of version 1 (what
    a new build adds), loaded with ``latest: 1``: Triton loads it, moves traffic, unloads version 1.
    Lost: any call that failed (the client retries within a 10 s deadline, as a product service would).
    """
    repo = server.repository / model
    v1, v2 = repo / "1", repo / "2"
    rss_before = server.rss_mb()
    call, close = _client_call(server, model, retry=True)
    stop = threading.Event()
    steps: list[tuple[str, float, list[str]]] = []

    def operate() -> None:
        time.sleep(3)
        shutil.copytree(v1, v2)
        t = time.monotonic()
        server.load(model)
        steps.append(("rollout to version 2", time.monotonic() - t, server.ready_versions(model)))
        time.sleep(4)
        shutil.rmtree(v2)
        t = time.monotonic()
        server.load(model)
        steps.append(("rollback to version 1", time.monotonic() - t, server.ready_versions(model)))
        time.sleep(3)
        stop.set()

    try:
        records = _under_load(operate, workers, call, close, until=stop.is_set)
    finally:
        if v2.exists():
            shutil.rmtree(v2)
    failed, wrong = _judge_good(records)
    result = Result("R3", "version rollout and rollback under load (explicit model control)")
    result.requests, result.lost, result.unexpected = len(records), failed, wrong
    result.alive_after = _alive(server, _target(server, model))
    result.rss_before_mb, result.rss_after_mb = rss_before, server.rss_mb()
    result.details = {
        "steps": [{"step": s, "load_s": round(d, 2), "ready_versions": v} for s, d, v in steps],
        "errors": dict(Counter(r.outcome.message[:120] for r in records if not r.outcome.ok)),
        **{k: round(v, 1) for k, v in summary(records).items() if k.endswith("_ms")},
        "concurrency": workers,
    }
    return result


# -- R4 -------------------------------------------------------------------------------------------
def r4_kill(server: ServeProcess, model: str, *, workers: int = 4, deadline_s: float = 10.0) -> Result:
    """kill -9 of the Triton process under load; the supervisor restarts it; clients retry.

    Lost: a call that failed within its ``deadline_s`` deadline. Also checked: no stub process of the
    killed server and no /dev/shm region of it remain once the new one is up.
    """
    rss_before = server.rss_mb()
    call, close = _client_call(server, model, retry=True, timeout_s=deadline_s)
    stop = threading.Event()
    marks: dict[str, float] = {}
    leftovers: dict[str, list] = {}

    def operate() -> None:
        time.sleep(3)
        pid = server.triton_pid()
        regions_before = set(server.shm_regions())
        marks["kill"] = time.monotonic()
        import os
        import signal

        os.kill(pid, signal.SIGKILL)
        while server.triton_pid() in (None, pid):
            time.sleep(0.05)
        server.wait_ready()
        marks["ready"] = time.monotonic()
        time.sleep(4)
        from cvserve.server.process import group_members

        leftovers["stub_processes"] = group_members(pid)
        leftovers["old_shm_regions"] = sorted(regions_before & set(server.shm_regions()))
        stop.set()

    records = _under_load(operate, workers, call, close, until=stop.is_set)
    failed, wrong = _judge_good(records)
    kill = marks.get("kill", 0.0)
    during = [r for r in records if r.start <= kill <= r.end or kill <= r.start <= marks.get("ready", kill)]
    result = Result(
        "R4",
        f"kill -9 of Triton under load, restart by the supervisor, client retries ({deadline_s:g} s deadline)",
    )
    result.requests, result.lost, result.unexpected = len(records), failed, wrong
    result.alive_after = _alive(server, _target(server, model))
    result.rss_before_mb, result.rss_after_mb = rss_before, server.rss_mb()
    result.details = {
        "down_s": round(marks.get("ready", kill) - kill, 2),
        "calls_spanning_the_outage": len(during),
        "longest_call_s": round(max((r.latency_s for r in records), default=0.0), 2),
        "restarts": server.restarts(),
        "leftovers": leftovers,
        "errors": dict(Counter(r.outcome.message[:120] for r in records if not r.outcome.ok)),
        "concurrency": workers,
    }
    return result


# -- R5 -------------------------------------------------------------------------------------------
def r5_sigterm(server: ServeProcess, model: str, *, workers: int = 8) -> Result:
    """SIGTERM to ``cvserve serve`` under load (clients without retries, to see every answer).

    Clean errors: retryable rejections of requests that arrived during or after the drain
    (UNAVAILABLE: "Server is stopping", connection refused). Lost: a request that failed otherwise
    (cut off in flight, INTERNAL, ...). Also: the exit status (0: drained) and what was left behind.
    """
    rss_before = server.rss_mb()
    call, close = _client_call(server, model, retry=False, timeout_s=30.0)
    marks: dict[str, float] = {}
    status: dict[str, object] = {}
    pid = server.triton_pid()

    def operate() -> None:
        time.sleep(3)
        marks["signal"] = time.monotonic()
        status["exit"] = server.sigterm()
        marks["exited"] = time.monotonic()

    records = _under_load(operate, workers, call, close, until=lambda: "exited" in marks, pause_s=0.01)
    from cvserve.server.process import group_members

    signal_at = marks["signal"]
    in_flight = [r for r in records if r.start < signal_at < r.end]
    retryable = [r for r in records if not r.outcome.ok and _refused(r.outcome)]
    # Lost: admitted before the signal and not answered. Sent after it and refused in a way the client
    # does not retry (e.g. CANCELLED while Triton's gRPC endpoint closes): unexpected, not lost.
    failed = [r for r in records if not r.outcome.ok and not _refused(r.outcome)]
    lost = [r for r in failed if r.start < signal_at]
    result = Result("R5", "SIGTERM to cvserve serve under load")
    result.requests = len(records)
    result.clean_errors = len(retryable)
    result.lost = len(lost)
    result.unexpected = _judge_good(records)[1] + len(failed) - len(lost)
    result.alive_after = False  # stopped on purpose
    result.rss_before_mb = rss_before
    result.details = {
        "exit_status": status.get("exit"),
        "stop_took_s": round(marks["exited"] - signal_at, 2),
        "in_flight_at_signal": len(in_flight),
        "in_flight_completed": sum(1 for r in in_flight if r.outcome.ok),
        "rejections": dict(Counter(r.outcome.message[:100] for r in retryable)),
        "errors": dict(Counter(r.outcome.message[:120] for r in failed)),
        "stub_processes_left": group_members(pid) if pid else [],
        "shm_regions_left": server.shm_regions(),
        "concurrency": workers,
    }
    return result


# A request the server refused without running it: retryable, nothing was lost. "Socket closed" or
# "Connection reset" (an answer cut off in flight) is not among them.
REFUSALS = ("Server is stopping", "failed to connect", "Connection refused", "has no available versions")


def _refused(outcome: pl.Outcome) -> bool:
    return outcome.status in ("UNAVAILABLE", "NOT_FOUND") and any(m in outcome.message for m in REFUSALS)


def copy_repository(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
