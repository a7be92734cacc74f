"""What ``make bench`` measures (:mod:`cvserve.bench` orchestrates): stage costs, the in-process loop, load.

* :func:`stage_costs` - decode + preprocess core-ms per image on one thread (the served decode,
  :func:`cvserve.builders.preprocessing.pixels`) and the served network file's core-ms per image at
  batch 8 through :func:`cvserve.builders.runners.open_runner`, on one thread and on the thread budget.
* :func:`loop` - the plain in-process loop: one image at a time, decode then the network on all cores.
* :func:`client_load` - closed-loop load through :class:`cvserve.client.Client` at a concurrency.
* :class:`ServerWatch` - what the server did during a run: Triton's per-model statistics (queue,
  compute input/infer/output, average batch) and the CPU time of the server and its python stubs.

CPU time is the measure of cost here (``time.thread_time`` / ``time.process_time`` / ``/proc``): on a
shared machine, wall time also counts other people's work.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NETWORK_BATCH = 8


def percentiles(latencies_s: Sequence[float]) -> dict[str, float | None]:
    if len(latencies_s) < 2:
        return {"p50_ms": None, "p95_ms": None}
    q = statistics.quantiles([x * 1000 for x in latencies_s], n=100, method="inclusive")
    return {"p50_ms": q[49], "p95_ms": q[94]}


# -- in-process ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Network:
    """One build's served network, as the bench runs it in-process."""

    label: str  # fp32 | int8
    path: Path  # the served network file (model.xml / model.onnx)
    runtime: str  # openvino | onnxruntime
    spec: object  # its PreprocessSpec


def decode_cost(images: Sequence[bytes], spec, seconds: float) -> dict[str, float]:
    """Decode + resize + crop (the served decode) on this thread: CPU and wall ms per image."""
    from cvserve.builders.preprocessing import pixels

    n, cpu0, wall0 = 0, time.thread_time(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds or n < len(images):
        pixels(images[n % len(images)], spec)
        n += 1
    return {
        "cpu_ms": (time.thread_time() - cpu0) * 1000 / n,
        "wall_ms": (time.perf_counter() - wall0) * 1000 / n,
    }


def network_cost(runner, batch: np.ndarray, seconds: float) -> dict[str, float]:
    """The network on ``batch``: CPU (every thread of this process) and wall ms per image."""
    runner.run(batch)  # warm
    calls, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds or calls < 3:
        runner.run(batch)
        calls += 1
    images = calls * len(batch)
    return {
        "cpu_ms": (time.process_time() - cpu0) * 1000 / images,
        "wall_ms": (time.perf_counter() - wall0) * 1000 / images,
    }


def crops(images: Sequence[bytes], spec, n: int) -> np.ndarray:
    from cvserve.builders.preprocessing import pixels

    return np.stack([pixels(images[i % len(images)], spec) for i in range(n)])


def stage_costs(
    networks: Sequence[Network], images: Sequence[bytes], *, cores: int, rounds: int, seconds: float
) -> dict[str, dict]:
    """Per network: decode and network costs, medians over ``rounds`` that alternate the networks.

    Decode does not depend on the network (both builds share the spec) but is measured in every round
    with each, so both see the same machine.
    """
    from cvserve.builders.runners import open_runner

    runners = {
        n.label: {threads: open_runner(n.path, n.runtime, threads=threads) for threads in sorted({1, cores})}
        for n in networks
    }
    batch = {n.label: crops(images, n.spec, NETWORK_BATCH) for n in networks}
    samples: dict[str, dict[str, list[dict]]] = {n.label: {} for n in networks}
    for r in range(rounds):
        order = networks if r % 2 == 0 else list(reversed(networks))
        for n in order:
            s = samples[n.label]
            s.setdefault("decode", []).append(decode_cost(images, n.spec, seconds))
            for threads, runner in runners[n.label].items():
                s.setdefault(f"network_{threads}t", []).append(network_cost(runner, batch[n.label], seconds))
    out = {}
    for n in networks:
        med = {
            key: {field: statistics.median(x[field] for x in runs) for field in runs[0]}
            for key, runs in samples[n.label].items()
        }
        decode, one = med["decode"]["cpu_ms"], med["network_1t"]["cpu_ms"]
        budget = med[f"network_{cores}t"]
        out[n.label] = {
            "runtime": n.runtime,
            "decode_cpu_ms": decode,
            "decode_wall_ms": med["decode"]["wall_ms"],
            "network_1t_cpu_ms": one,
            "network_1t_wall_ms": med["network_1t"]["wall_ms"],
            "network_budget_threads": cores,
            "network_budget_cpu_ms": budget["cpu_ms"],
            "network_budget_wall_ms": budget["wall_ms"],
            # What the budget run holds: every core for its wall time, busy or waiting on a thread.
            "network_budget_core_ms": budget["wall_ms"] * cores,
            "limit_img_s": cores * 1000 / (decode + one),
            "limit_budget_img_s": cores * 1000 / (decode + budget["wall_ms"] * cores),
            "rounds": rounds,
        }
    return out


def loop(
    networks: Sequence[Network], images: Sequence[bytes], *, cores: int, rounds: int, seconds: float
) -> dict[str, dict]:
    """The plain in-process loop per network: decode one image, run it (batch 1, all cores), next.

    ``rounds`` alternate the networks, ``seconds / rounds`` each; throughput is images over time,
    latencies are pooled over the rounds.
    """
    from cvserve.builders.preprocessing import pixels
    from cvserve.builders.runners import open_runner

    runners = {n.label: open_runner(n.path, n.runtime, threads=cores) for n in networks}
    lat: dict[str, list[float]] = {n.label: [] for n in networks}
    wall: dict[str, float] = {n.label: 0.0 for n in networks}
    for n in networks:  # warm-up
        for data in images:
            runners[n.label].run(pixels(data, n.spec)[None])
    for r in range(rounds):
        for n in networks if r % 2 == 0 else list(reversed(networks)):
            runner, mine, i = runners[n.label], lat[n.label], 0
            start = time.perf_counter()
            while time.perf_counter() - start < seconds / rounds:
                t = time.perf_counter()
                runner.run(pixels(images[i % len(images)], n.spec)[None])
                mine.append(time.perf_counter() - t)
                i += 1
            wall[n.label] += time.perf_counter() - start
    return {
        n.label: {
            "img_s": len(lat[n.label]) / wall[n.label],
            "requests": len(lat[n.label]),
            **percentiles(lat[n.label]),
        }
        for n in networks
    }


# -- served ---------------------------------------------------------------------------------------------
# One image per request, by the call of the model's task (the build report's ``task``).
CALLS = {
    "classify": lambda client, image: client.classify([image], top_k=5),
    "detect": lambda client, image: client.detect([image]),
}


def client_load(
    url: str,
    model: str,
    images: Sequence[bytes],
    concurrency: int,
    seconds: float,
    task: str = "classify",
    *,
    max_in_flight: int | None = None,
) -> dict:
    """``concurrency`` threads sending one image per request back to back through one Client
    (``max_in_flight``: the client's pacing bound; None: its default, from the model's instances and queue bound).

    Also returns the client's own CPU time over the run (this process does nothing else meanwhile).
    """
    send = CALLS[task]
    from cvserve.client import Client, ClientError

    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    with Client(url, model=model, timeout=60, retry=False, max_in_flight=max_in_flight) as client:
        for i in range(2 * concurrency):  # warm-up, metadata
            try:
                send(client, images[i % len(images)])
            except ClientError:
                pass  # a rejected warm-up request is not measured; the run counts its own errors
        stop = time.perf_counter() + seconds

        def worker(k: int) -> None:
            j = k
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    send(client, images[j % len(images)])
                except ClientError as exc:  # counted, by kind: a rejection is a result here
                    with lock:
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                finally:
                    j += 1
                with lock:
                    latencies.append(time.perf_counter() - t)

        cpu0, start = time.process_time(), time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(worker, range(concurrency)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {
        "img_s": len(latencies) / wall,
        "requests": len(latencies),
        "errors": errors,
        "wall_s": wall,
        "cpu_s": cpu,
        **percentiles(latencies),
    }


def process_tree_cpu_s(root_pid: int) -> float | None:
    """User + system CPU seconds of ``root_pid`` and its descendants (Linux /proc), None elsewhere."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        stats: dict[int, tuple[int, float]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    except (OSError, ValueError):
        return None
    tree, total, frontier = {root_pid}, 0.0, [root_pid]
    while frontier:
        parent = frontier.pop()
        total += stats.get(parent, (0, 0.0))[1]
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return total


class ServerWatch:
    """Triton's statistics of one model, and the server's CPU time, between :meth:`start` and :meth:`stop`."""

    def __init__(self, url: str, server_pid: int | None) -> None:
        import tritonclient.grpc as grpcclient

        self._client = grpcclient.InferenceServerClient(url)
        self._pid = server_pid

    def close(self) -> None:
        self._client.close()

    def _stats(self, model: str) -> dict:
        data = self._client.get_inference_statistics(model, as_json=True)
        s = data["model_stats"][0]
        inf = s.get("inference_stats", {})

        def part(key: str, field: str) -> int:
            return int(inf.get(key, {}).get(field, 0))

        return {
            "requests": part("success", "count"),
            "failed": part("fail", "count"),
            **{
                f"{k}_ns": part(k, "ns")
                for k in ("queue", "compute_input", "compute_infer", "compute_output")
            },
            "inferences": int(s.get("inference_count", 0)),
            "executions": int(s.get("execution_count", 0)),
        }

    def measure(self, model: str, run: Callable[[], dict]) -> tuple[dict, dict]:
        """``run()``'s result, and what the server did meanwhile (per-request means in ms)."""
        before, cpu0 = self._stats(model), process_tree_cpu_s(self._pid) if self._pid else None
        started = time.perf_counter()
        result = run()
        wall = time.perf_counter() - started
        after, cpu1 = self._stats(model), process_tree_cpu_s(self._pid) if self._pid else None
        d = {k: after[k] - before[k] for k in after}
        n = max(1, d["requests"])
        server = {
            "requests": d["requests"],
            "failed": d["failed"],
            "avg_batch": d["inferences"] / d["executions"] if d["executions"] else None,
            **{
                f"{k}_ms": d[f"{k}_ns"] / n / 1e6
                for k in ("queue", "compute_input", "compute_infer", "compute_output")
            },
            "cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
            "inferences": d["inferences"],
        }
        # Cores the server kept busy: under 1 of 2 at full load means it waited (or the machine is shared).
        server["cores_busy"] = server["cpu_s"] / wall if server["cpu_s"] is not None else None
        server["core_ms_per_img"] = (
            server["cpu_s"] * 1000 / d["inferences"]
            if server["cpu_s"] is not None and d["inferences"]
            else None
        )
        return result, server
