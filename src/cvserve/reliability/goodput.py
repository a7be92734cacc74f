"""R6 and R7 (issue 22): what callers get from an overloaded server through cvserve's client.

* R6, goodput under overload: the unloaded throughput (the closed-loop rate at the best of 1-8
  callers, measured again right before and right after each overload, since a shared machine's speed
  drifts: the overload is compared with their mean), then ``factor`` times the rate before it offered
  open-loop for ``duration_s`` through one :class:`AsyncClient` with its
  defaults (pacing, retries with backoff and a retry budget), and the same offered
  through a naive caller: plain gRPC (tritonclient's protobuf on a grpc.aio channel) that sends every
  rejected request again at once (no pacing, no backoff, no budget, no queue timeout).
  Goodput: correct answers delivered per second during the overload window. Target: cvserve's client
  keeps >= 90% of the unloaded throughput.
* R7, bursts from several processes: ``processes`` client processes, released together, each send
  ``calls`` classify calls at once (past what the server admits). Every call must succeed with the right
  class or fail with a typed :class:`~cvserve.client.ClientError`, within its deadline, after no more
  attempts than the retry policy allows; goodput (answers per second from the burst's start to its last
  answer) is compared with the unloaded throughput, the mean of the rates measured just before and just
  after it (target >= 90%); with ``rounds``, the median of the ratios.

Both share the machine with the server, so each unloaded run, overload and burst also reports where
the machine's cores went (:class:`Cores`): the server's processes (tritonserver and its python stubs),
the load generator, and the cores left idle; and what each correct answer cost the server's CPU, against
the unloaded runs around it (``server_efficiency_of_unloaded``: 1.0 when the overload made the server
waste nothing, lower when it spent CPU on rejected resends or on answers no caller waited for). A
goodput short of the unloaded rate while the server computes just as much per answer, and the generator
holds the difference, is the generator's CPU on the server's cores, not work the server wasted.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass

from cvserve.bench_measure import process_tree_cpu_s
from cvserve.reliability import payloads as pl
from cvserve.reliability.load import closed_loop, percentile, summary
from cvserve.reliability.scenarios import Result, _alive, _jpeg_call, _target
from cvserve.server.serve_process import ServeProcess

DEADLINE_SLACK_S = 0.05  # scheduling on a busy machine: an answer this late still counts as in time
TARGET = 0.9  # goodput of the unloaded throughput, R6 (cvserve's client) and R7


def spread(ratios: list[float], target: float = TARGET) -> dict:
    """How the rounds' goodput ratios spread around their median: a shared machine's speed moves by tens
    of percent within seconds, so one round's ratio is noisy and the median of a few can land on either
    side of the target. Gives the count, min, quartiles and max, and how many rounds reached ``target``."""
    return {
        "rounds": len(ratios),
        "min": round(min(ratios), 3),
        "p25": round(percentile(ratios, 25), 3),
        "median": round(statistics.median(ratios), 3),
        "p75": round(percentile(ratios, 75), 3),
        "max": round(max(ratios), 3),
        "rounds_at_target": sum(r >= target for r in ratios),
    }


def _median(values) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _verdict(what: str, s: dict) -> str:
    """The target's note: met or missed by the median, with the spread of the rounds behind it
    (:func:`spread`)."""
    met = "met" if s["median"] >= TARGET else "missed"
    return (
        f"target: {what} >= {TARGET} ({met}: median {s['median']} of {s['rounds']} round(s), quartiles "
        f"{s['p25']}-{s['p75']}, range {s['min']}-{s['max']}; {s['rounds_at_target']} at or above)"
    )


def _alive_within(server: ServeProcess, model: str, seconds: float = 10.0) -> bool:
    """Whether the server answers a good request correctly once it has worked off what the overload
    left queued (requests whose callers gave up are still run): polled for up to ``seconds``."""
    give_up = time.monotonic() + seconds
    while not (alive := _alive(server, _target(server, model))) and time.monotonic() < give_up:
        time.sleep(0.1)
    return alive


@dataclass
class Cores:
    """Where the machine's cores went over a stretch of time (:meth:`since` a :meth:`now` snapshot):
    the server's processes, and the cores idle (``/proc/stat``; ``None`` off Linux)."""

    wall: float
    server_s: float | None
    idle_s: float | None

    @classmethod
    def now(cls, server_pid: int | None) -> Cores:
        """A snapshot: the CPU time of ``server_pid`` and its descendants, the machine's idle time."""
        return cls(time.monotonic(), process_tree_cpu_s(server_pid) if server_pid else None, _idle_cpu_s())

    def since(self, start: Cores) -> dict[str, float | None]:
        wall = self.wall - start.wall

        def per_s(a: float | None, b: float | None) -> float | None:
            return round((a - b) / wall, 2) if a is not None and b is not None and wall > 0 else None

        return {
            "server_cores": per_s(self.server_s, start.server_s),
            "idle_cores": per_s(self.idle_s, start.idle_s),
            "seconds": round(wall, 3),
        }


def server_ms_per_answer(cores: dict, answers: int) -> float | None:
    """The server's CPU per correct answer (ms) over a stretch :meth:`Cores.since` measured: how much
    work an answer cost the server, whatever the load generator beside it took."""
    if cores.get("server_cores") is None or not answers:
        return None
    return round(cores["server_cores"] * cores["seconds"] * 1000 / answers, 2)


def _efficiency(loaded_ms: float | None, unloaded: list[dict], unloaded_rps: list[float]) -> float | None:
    """The unloaded runs' server CPU per answer over the loaded one's: 1.0 when overload made the
    server waste nothing (no rejected resends, no answers that came too late), lower when it did."""
    per_answer = [
        c["server_cores"] * 1000 / rps
        for c, rps in zip(unloaded, unloaded_rps, strict=True)
        if c.get("server_cores") and rps
    ]
    if loaded_ms is None or len(per_answer) != len(unloaded):
        return None
    return round(statistics.mean(per_answer) / loaded_ms, 3)


def _pid(server: ServeProcess) -> int | None:
    return server.proc.pid if server.proc is not None else None


def _idle_cpu_s() -> float | None:
    """Seconds the machine's cores have been idle (idle + iowait in ``/proc/stat``), None elsewhere."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()[1:]
        return (int(fields[3]) + int(fields[4])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _unloaded_concurrency(server: ServeProcess, model: str, seconds: float) -> int:
    """The closed-loop concurrency (1, 2, 4 or 8 callers) with the best throughput: the unloaded rate
    is measured at it, right before each overload it is compared with."""
    call = _jpeg_call(_target(server, model))
    closed_loop(2, call, duration_s=min(3.0, seconds))  # warm-up
    rates = {c: summary(closed_loop(c, call, duration_s=seconds))["throughput_rps"] for c in (1, 2, 4, 8)}
    return max(rates, key=rates.__getitem__)


def _unloaded_rps(server: ServeProcess, model: str, concurrency: int, seconds: float) -> tuple[float, dict]:
    """Throughput at ``concurrency`` closed-loop callers: the unloaded rate (a shared machine's speed
    drifts by tens of percent within minutes, so each overload is compared with the mean of the rates
    measured just before and just after it), and where the cores went meanwhile (:class:`Cores`; the
    callers are this process's threads)."""
    start, cpu = Cores.now(_pid(server)), time.process_time()
    records = closed_loop(concurrency, _jpeg_call(_target(server, model)), duration_s=seconds)
    cores = Cores.now(_pid(server)).since(start)
    cores["generator_cores"] = round((time.process_time() - cpu) / seconds, 2)
    return summary(records)["throughput_rps"], cores


def _unloaded_after(
    server: ServeProcess, model: str, concurrency: int, seconds: float
) -> tuple[bool, float, dict]:
    """Whether the server answered correctly after an overload (:func:`_alive_within`), and then the
    unloaded rate and its cores: measured once it has worked off what the overload left queued, so the
    drain is not counted against it."""
    alive = _alive_within(server, model)
    return (alive, *_unloaded_rps(server, model, concurrency, seconds))


async def _client_call(client, image: bytes, cls: int, deadline_s: float) -> tuple[str, float]:
    """A call through cvserve's client: the outcome (``ok``, ``wrong`` or the error's type), and when."""
    from cvserve.client import ClientError

    try:
        top = (await client.classify([image], top_k=1, timeout=deadline_s))[0][0]
    except ClientError as exc:
        return type(exc).__name__, time.monotonic()
    return ("ok" if top.index == cls else "wrong"), time.monotonic()


async def _naive_call(stub, model: str, image: bytes, cls: int, deadline_s: float) -> tuple[str, float]:
    """The naive caller: plain gRPC with a deadline, every turned-away request sent again at once (no
    pacing, no backoff, no budget, no queue timeout)."""
    import grpc

    request = pl.framed_request(model, image)
    end_by = time.monotonic() + deadline_s
    while (remaining := end_by - time.monotonic()) > 0:
        try:
            response = await stub.ModelInfer(request, timeout=remaining)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                continue  # send it again at once
            late = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            return ("DeadlineExceeded" if late else exc.code().name), time.monotonic()
        return ("ok" if pl.top1(response) == cls else "wrong"), time.monotonic()
    return "DeadlineExceeded", time.monotonic()


async def _offer(
    url: str, model: str, rate: float, duration_s: float, deadline_s: float, resend: bool
) -> dict:
    """``rate`` calls/s for ``duration_s``, whatever the answers; counts and goodput of the window.
    ``resend``: the naive caller (:func:`_naive_call`); otherwise one :class:`AsyncClient` with its
    defaults."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pbg

    from cvserve.client import AsyncClient

    images = [(d, c) for d, c in pl.good_images()[::2]]
    async with AsyncClient(url, model=model) as client, grpc.aio.insecure_channel(url) as channel:
        await client.model_info()
        stub = pbg.GRPCInferenceServiceStub(channel)

        def call(data: bytes, cls: int):
            if resend:
                return _naive_call(stub, model, data, cls, deadline_s)
            return _client_call(client, data, cls, deadline_s)

        cpu, begin = time.process_time(), time.monotonic()
        tasks = []
        for i in range(int(rate * duration_s)):
            await asyncio.sleep(max(0.0, begin + i / rate - time.monotonic()))
            tasks.append(asyncio.ensure_future(call(*images[i % len(images)])))
        outcomes = await asyncio.gather(*tasks)
        cores = (time.process_time() - cpu) / (time.monotonic() - begin)
    in_window = [o for o, end in outcomes if o == "ok" and end <= begin + duration_s]
    return {
        "offered": len(outcomes),
        "outcomes": dict(Counter(o for o, _ in outcomes)),
        "answered_in_window": len(in_window),
        "goodput_rps": len(in_window) / duration_s,
        "generator_cores": round(cores, 2),
    }


def r6_goodput(
    server: ServeProcess,
    model: str,
    *,
    slo_ms: float,
    duration_s: float = 20.0,
    factor: float = 4.0,
    unloaded_s: float = 5.0,
    rounds: int = 1,
) -> Result:
    """Goodput under ``factor`` x overload: cvserve's client against a resend-at-once caller, alternating
    which goes first each round; each overload is offered ``factor`` times the unloaded rate measured
    just before it and compared with the mean of that and the one measured just after it (medians of the
    ratios over ``rounds``); calls have a deadline of 2 x the SLO."""
    concurrency = _unloaded_concurrency(server, model, unloaded_s)
    deadline_s = 2 * slo_ms / 1000
    runs: dict[str, list[dict]] = {"cvserve_client": [], "resend_at_once": []}
    (before, before_cores), alive = _unloaded_rps(server, model, concurrency, unloaded_s), []
    for r in range(rounds):
        order = ("cvserve_client", "resend_at_once") if r % 2 == 0 else ("resend_at_once", "cvserve_client")
        for name in order:
            start = Cores.now(_pid(server))
            run = asyncio.run(
                _offer(
                    server.grpc_url,
                    model,
                    factor * before,
                    duration_s,
                    deadline_s,
                    name == "resend_at_once",
                )
            )
            run.update(Cores.now(_pid(server)).since(start))
            recovered, after, after_cores = _unloaded_after(server, model, concurrency, unloaded_s)
            alive.append(recovered)
            unloaded = (before + after) / 2
            run["unloaded_rps"] = round(unloaded, 1)
            run["unloaded_before_after_rps"] = [round(before, 1), round(after, 1)]
            run["unloaded_cores_before_after"] = [before_cores, after_cores]
            run["goodput_of_unloaded"] = round(run["goodput_rps"] / unloaded, 3) if unloaded else None
            run["server_ms_per_answer"] = server_ms_per_answer(run, run["outcomes"].get("ok", 0))
            run["server_efficiency_of_unloaded"] = _efficiency(
                run["server_ms_per_answer"], [before_cores, after_cores], run["unloaded_before_after_rps"]
            )
            runs[name].append(run)
            before, before_cores = after, after_cores
    result = Result("R6", f"goodput at {factor:g}x the unloaded throughput for {duration_s:g} s, two callers")
    result.requests = sum(run["offered"] for rs in runs.values() for run in rs)
    result.unexpected = sum(run["outcomes"].get("wrong", 0) for rs in runs.values() for run in rs)
    result.alive_after = all(alive)  # after every overload
    result.details = {
        "unloaded_concurrency": concurrency,
        "unloaded_rps": round(
            statistics.median(run["unloaded_rps"] for rs in runs.values() for run in rs), 1
        ),
        "factor": factor,
        "deadline_s": deadline_s,
    }
    for name, rs in runs.items():
        ratios = [run["goodput_of_unloaded"] or 0 for run in rs]
        result.details[f"{name}_goodput_rps"] = round(statistics.median(run["goodput_rps"] for run in rs), 1)
        result.details[f"{name}_goodput_of_unloaded"] = statistics.median(ratios)
        result.details[f"{name}_spread"] = spread(ratios)
        result.details[f"{name}_server_efficiency_of_unloaded"] = _median(
            run["server_efficiency_of_unloaded"] for run in rs
        )
        result.details[f"{name}_runs"] = rs
    result.notes.append(
        _verdict("cvserve_client_goodput_of_unloaded", result.details["cvserve_client_spread"])
    )
    return result


def _burst_process(url: str, model: str, calls: int, deadline_s: float, barrier, results) -> None:
    """One client process of R7: ready, wait for the others, then ``calls`` calls at once."""
    from cvserve.client import AsyncClient, ClientError, ClientMetrics

    async def main() -> list[tuple]:
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        images = [(d, c) for d, c in pl.good_images()[::2]]
        async with AsyncClient(url, model=model, metrics=ClientMetrics(registry=registry)) as client:
            await client.model_info()
            await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
            cpu, begin = time.process_time(), time.monotonic()

            async def one(i: int) -> tuple:
                data, cls = images[i % len(images)]
                start = time.monotonic()
                try:
                    top = (await client.classify([data], top_k=1, timeout=deadline_s))[0][0]
                    outcome, attempts = ("ok" if top.index == cls else "wrong"), None
                except ClientError as exc:
                    outcome, attempts = type(exc).__name__, exc.attempts
                except Exception as exc:  # an untyped error is what R7 looks for
                    outcome, attempts = f"untyped {type(exc).__name__}", None
                return outcome, attempts, time.monotonic() - start

            done = await asyncio.gather(*(one(i) for i in range(calls)))
            cpu_s, wall_s = time.process_time() - cpu, time.monotonic() - begin
        retries = sum(
            s.value for m in registry.collect() for s in m.samples if s.name.endswith("retries_total")
        )
        return {"records": done, "retries": retries, "cpu_s": cpu_s, "wall_s": wall_s}

    results.put(asyncio.run(main()))


def _burst(
    server: ServeProcess, model: str, processes: int, calls: int, deadline_s: float
) -> tuple[list[dict], dict]:
    """One R7 burst: ``processes`` client processes released together; what each reports, and where the
    cores went from their release to the last one's report (:class:`Cores`)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes + 1), ctx.Queue()  # this process releases them too
    workers = [
        ctx.Process(target=_burst_process, args=(server.grpc_url, model, calls, deadline_s, barrier, results))
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    barrier.wait(timeout=120)  # every process has started, connected and read the model
    start = Cores.now(_pid(server))
    per_process = [results.get(timeout=120 + deadline_s) for _ in workers]
    cores = Cores.now(_pid(server)).since(start)
    for w in workers:
        w.join(30)
    return per_process, cores


def r7_bursts(
    server: ServeProcess,
    model: str,
    *,
    processes: int = 8,
    calls: int = 64,
    deadline_s: float = 5.0,
    rounds: int = 1,
) -> Result:
    """``processes`` client processes burst ``calls`` calls each at the same moment (see the module),
    ``rounds`` times, each burst compared with the mean of the unloaded rates just before and after it
    (median)."""
    from cvserve.client import RetryPolicy

    policy = RetryPolicy()
    concurrency = _unloaded_concurrency(server, model, 3.0)
    bursts, alive = [], []
    before, before_cores = _unloaded_rps(server, model, concurrency, 3.0)
    for _ in range(rounds):
        per_process, burst_cores = _burst(server, model, processes, calls, deadline_s)
        recovered, after, after_cores = _unloaded_after(server, model, concurrency, 3.0)
        alive.append(recovered)
        unloaded, before_after = (before + after) / 2, [round(before, 1), round(after, 1)]
        cores_before_after = [before_cores, after_cores]
        before, before_cores = after, after_cores
        answered = [e for p in per_process for o, _, e in p["records"] if o == "ok"]
        goodput = len(answered) / max(answered) if answered else 0.0
        bursts.append(
            {
                "per_process": per_process,
                "unloaded_rps": round(unloaded, 1),
                "unloaded_before_after_rps": before_after,
                "answered": len(answered),
                "goodput_rps": round(goodput, 1),
                "goodput_of_unloaded": round(goodput / unloaded, 3) if unloaded else None,
                # the burst's client processes share the server's cores: their CPU over it, in cores
                "generator_cores": round(
                    sum(p["cpu_s"] for p in per_process) / max(p["wall_s"] for p in per_process), 2
                ),
                **burst_cores,
                "unloaded_cores_before_after": cores_before_after,
                "server_ms_per_answer": (ms := server_ms_per_answer(burst_cores, len(answered))),
                "server_efficiency_of_unloaded": _efficiency(ms, cores_before_after, before_after),
            }
        )
    records = [r for b in bursts for p in b["per_process"] for r in p["records"]]
    outcomes = Counter(o for o, _, _ in records)
    late = [e for _, _, e in records if e > deadline_s + DEADLINE_SLACK_S]
    over = [a for o, a, _ in records if a is not None and a > policy.max_attempts]
    title = f"{processes} client processes bursting {calls} calls each at once"
    result = Result("R7", title + (f", {rounds} times" if rounds > 1 else ""))
    result.requests = len(records)
    result.clean_errors = sum(
        n for o, n in outcomes.items() if o not in ("ok", "wrong") and "untyped" not in o
    )
    result.unexpected = outcomes.get("wrong", 0) + sum(n for o, n in outcomes.items() if "untyped" in o)
    result.unexpected += len(late) + len(over)
    result.alive_after = all(alive)  # after every burst
    elapsed = [e for _, _, e in records]
    processes_of = [p for b in bursts for p in b["per_process"]]
    ratios = [b["goodput_of_unloaded"] or 0 for b in bursts]
    result.details = {
        "unloaded_rps": statistics.median(b["unloaded_rps"] for b in bursts),
        "goodput_rps": statistics.median(b["goodput_rps"] for b in bursts),
        "goodput_of_unloaded": statistics.median(ratios),
        "spread": spread(ratios),
        "server_efficiency_of_unloaded": _median(b["server_efficiency_of_unloaded"] for b in bursts),
        "bursts": [{k: v for k, v in b.items() if k != "per_process"} for b in bursts],
        "outcomes": dict(outcomes),
        "deadline_s": deadline_s,
        "past_deadline": len(late),
        "max_elapsed_s": round(max(elapsed, default=float("nan")), 3),
        "elapsed_p95_s": round(percentile(elapsed, 95), 3),
        "attempts_of_failed_calls": dict(Counter(a for _, a, _ in records if a is not None)),
        "over_max_attempts": len(over),
        "retries_per_process": [p["retries"] for p in processes_of],
        # A success does not say how many attempts it took: no process may have retried more than
        # max_attempts - 1 times per call.
        "retries_within_policy": all(
            p["retries"] <= len(p["records"]) * (policy.max_attempts - 1) for p in processes_of
        ),
        "max_attempts": policy.max_attempts,
        "generator_cores": statistics.median(b["generator_cores"] for b in bursts),
    }
    result.notes.append(_verdict("goodput_of_unloaded", result.details["spread"]))
    return result


__all__ = ["TARGET", "r6_goodput", "r7_bursts", "server_ms_per_answer", "spread"]
