"""The default queue bound and instance count of a built model: sized from the latency objective and
the measured request, not from the batch.

The rule, kept here only (Little's law, ``L = lambda x W``): a model may hold as many requests waiting as
it finishes within the SLO's queueing share,

    max_queue_size = max(max_batch_size, floor(requests_per_s x QUEUEING_SHARE x slo_p95_ms / 1000))

where ``requests_per_s`` is the served network's measured throughput in images per second, one image
per request (what a request of several images costs is bounded by the queue timeout instead). Half the
SLO (:data:`QUEUEING_SHARE`) is for waiting in the queue; the other half is for running the request and
for the batch ahead of it. The floor of one max batch keeps the old default where nothing is measured
(a TensorRT engine or a GPU target, which this machine cannot time) or the network is slow. The queue
timeout (``Batching.queue_timeout_us``, 2 x the SLO) stays the hard stop for requests that wait longer
than the rule predicts.

The throughput: the build's sample photos decoded and run through the served network file in its
runtime and float precision, on this machine, on the intra-op threads one instance gets
(:func:`cvserve.builders.runners.thread_budget`), for :data:`MEASURE_S` seconds after one warm-up run;
times the instances, which run side by side on their share of the cores. A model that executes one
request at a time (the single layout without ``--batch-requests``) is timed at batch 1, as it serves;
batching layouts at the engine profile's opt batch. The result is resolved at build time into an absolute number, written into
the config and the build report (``admission``), so nobody re-derives it; ``--max-queue-size N``
overrides it, and ``cvserve tune`` searches it from there.

The network's instance count is decided here too, from the same timing: a model that executes one
request at a time gets :data:`SHORT_REQUEST_INSTANCES` when its request is timed under
:data:`SHORT_REQUEST_MS`, else :data:`~cvserve.builders.triton_config.NETWORK_INSTANCES` (why: the
constants' comment). The timing is this machine's, so the count is logged and written into the report
(``admission.network_instances`` and ``instances_source``); ``--network-instances N`` overrides it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvserve.builders.runtime import Layout
from cvserve.builders.scheduling import Scheduling
from cvserve.builders.triton_config import NETWORK_INSTANCES, Batching

QUEUEING_SHARE = 0.5  # of the SLO: what an admitted request may spend queued
MEASURE_S = 1.0  # how long the build times the served network (one short run, no alternation)
# Under a queue policy an instance that finishes idles until the next request arrives (docs/serving.md,
# "Short requests need more instances under load"): measured on the trained detector (~1.3 ms per
# request), 6 instances served 1.21x what 2 did at concurrency 16; on the demo's INT8 classifier (~8 ms)
# 0.93x. A model whose one-request execution the build times below SHORT_REQUEST_MS gets
# SHORT_REQUEST_INSTANCES unless --network-instances says otherwise (then the build advises it).
SHORT_REQUEST_MS = 5.0
SHORT_REQUEST_INSTANCES = 6


def queue_bound(requests_per_s: float | None, *, slo_p95_ms: float, max_batch_size: int) -> int:
    """The default ``max_queue_size``: requests finished within the SLO's queueing share, at least one
    max batch (``requests_per_s`` ``None``: not measured, one max batch)."""
    if requests_per_s is None:
        return max_batch_size
    return max(max_batch_size, math.floor(requests_per_s * QUEUEING_SHARE * slo_p95_ms / 1000))


def network_instances(b: Batching, request_ms: float | None) -> tuple[int, str]:
    """The network's instance count and why: the one given, else :data:`SHORT_REQUEST_INSTANCES` for a
    one-request execution timed under :data:`SHORT_REQUEST_MS` (``request_ms``; ``None``: not timed so),
    else :data:`NETWORK_INSTANCES`."""
    if b.network_instances is not None:
        return b.network_instances, "--network-instances"
    if request_ms is not None and request_ms < SHORT_REQUEST_MS:
        return SHORT_REQUEST_INSTANCES, (
            f"a request takes {request_ms:.1f} ms here, under {SHORT_REQUEST_MS:g} ms: more instances keep "
            "the cores busy between requests"
        )
    if request_ms is None:
        return NETWORK_INSTANCES, "the default: no single request was timed"
    return NETWORK_INSTANCES, f"the default: a request takes {request_ms:.1f} ms here"


def resolve(
    b: Batching, layout: Layout, requests_per_s: float | None, instances: int | None = None
) -> Scheduling:
    """``b`` as absolute settings on ``layout``, its queue bound the one given, else :func:`queue_bound`'s;
    its network instances the ones given, else ``instances``, else the default."""
    bound = queue_bound(requests_per_s, slo_p95_ms=b.slo_p95_ms, max_batch_size=b.max_batch_size)
    return b.scheduling(layout, bound, instances)


def lanes(instances: int, cores: int, threads: int) -> int:
    """How many of ``instances`` run at once on ``cores`` with ``threads`` intra-op threads each."""
    return min(instances, max(1, cores // threads))


def measure(
    network: Path,
    runtime: str,
    images: Sequence[bytes],
    spec,
    *,
    batch: int,
    instances: int,
    precision: str = "f32",
    seconds: float = MEASURE_S,
) -> dict:
    """Images/s one instance serves: decode ``batch`` images, run ``network`` on them (in its
    runtime and float ``precision``, on one instance's threads), repeat; and that times the instances
    that run at once (``instances``, at most the cores over one instance's threads).

    Decoding is timed with the network because the python model does both on the same threads; a model
    that executes one request at a time is measured at batch 1, as it runs.
    """
    import time

    from cvserve import hardware
    from cvserve.builders.preprocessing import pixels
    from cvserve.builders.runners import open_runner, thread_budget

    budget = thread_budget(instances)
    running = lanes(instances, budget.cores, budget.intra_op)
    runner = open_runner(network, runtime, threads=budget.intra_op, precision=precision)
    chunks = [list(images[i : i + batch]) or list(images[:1]) for i in range(0, len(images), batch)]
    chunks = [(c * batch)[:batch] for c in chunks]  # every chunk a full batch of the real photos

    def one(chunk: list[bytes]) -> None:
        runner.run(np.stack([pixels(data, spec) for data in chunk]))

    one(chunks[0])  # warm-up
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or done < 3 * batch:
        one(chunks[(done // batch) % len(chunks)])
        done += batch
    per_instance = done / elapsed
    return {
        "runtime": runtime,
        "float_parts": runner.precision,
        "batch": batch,
        "decode_included": True,
        "threads_per_instance": budget.intra_op,
        "instances": instances,
        "cores": budget.cores,
        "seconds": round(elapsed, 2),
        "img_s_per_instance": round(per_instance, 1),
        "img_s": round(per_instance * running, 1),
        "cpu": hardware.summary(),
    }


def instances_hint(throughput: dict | None, *, one_request: bool) -> str | None:
    """The advice for a model whose one-request executions are short (:data:`SHORT_REQUEST_MS`) and
    that has fewer than :data:`SHORT_REQUEST_INSTANCES` instances; ``None`` otherwise."""
    if not throughput or not one_request or throughput["instances"] >= SHORT_REQUEST_INSTANCES:
        return None
    request_ms = 1000.0 / throughput["img_s_per_instance"]
    if request_ms >= SHORT_REQUEST_MS:
        return None
    return (
        f"a request takes {request_ms:.1f} ms here: under load {throughput['instances']} instances leave "
        f"the cores idle between requests; --network-instances {SHORT_REQUEST_INSTANCES} keeps them busy "
        "(docs/serving.md, 'Short requests need more instances under load')"
    )


def admission(
    b: Batching, plan, network: Path, images: Sequence[Path], spec, log, *, precision: str = "f32"
) -> tuple[Scheduling, dict]:
    """The build's stage: resolve ``b`` into absolute settings, measuring ``network`` when the queue
    bound's rule or the instance count's needs it.

    Returns the settings and the build report's ``admission`` entry (the bound and the instances, where
    they came from, the rules' inputs).
    """
    from cvserve.builders.runners import RUNTIMES, thread_budget

    entry: dict = {"slo_p95_ms": b.slo_p95_ms, "queue_timeout_ms": b.queue_timeout_us / 1000}
    one_request = plan.layout == "single" and not b.batch_requests
    timed = plan.target == "cpu" and plan.runtime in RUNTIMES
    wanted = b.max_queue_size is None or (b.network_instances is None and one_request)
    throughput = None
    if timed and wanted:
        photos = [Path(p).read_bytes() for p in images]

        def timing(instances: int) -> dict:
            return measure(
                network,
                plan.runtime,
                photos,
                spec,
                batch=1 if one_request else b.profile.opt_batch,
                instances=instances,
                precision=precision,
            )

        throughput = timing(b.network_instances or NETWORK_INSTANCES)
    request_ms = 1000.0 / throughput["img_s_per_instance"] if throughput and one_request else None
    instances, why = network_instances(b, request_ms)
    if throughput and instances != throughput["instances"]:
        if thread_budget(instances).intra_op != throughput["threads_per_instance"]:
            throughput = timing(instances)  # another thread share: time it as it will run
        else:  # each instance runs as timed; only how many run at once may change
            running = lanes(instances, throughput["cores"], throughput["threads_per_instance"])
            img_s = round(throughput["img_s_per_instance"] * running, 1)
            throughput = {**throughput, "instances": instances, "img_s": img_s}
    log(f"[admission] {instances} network instances ({why})")
    entry |= {"network_instances": instances, "instances_source": why}
    if b.max_queue_size is not None:
        return b.scheduling(plan.roles, None, instances), {
            **entry,
            "max_queue_size": b.max_queue_size,
            "source": "--max-queue-size",
            "throughput": throughput,
        }
    source = (
        "derived from the SLO and the measured throughput"
        if throughput
        else "one max batch: a GPU network is not timed on the build machine"
    )
    resolved = resolve(b, plan.roles, throughput["img_s"] if throughput else None, instances)
    log(
        f"[admission] max_queue_size {resolved.max_queue_size} ({source}"
        + (f": {throughput['img_s']:g} img/s at batch {throughput['batch']}" if throughput else "")
        + f", SLO {b.slo_p95_ms:g} ms x {QUEUEING_SHARE:g}, at least one max batch of {b.max_batch_size})"
    )
    hint = instances_hint(throughput, one_request=one_request)
    if hint:
        log(f"[admission] {hint}")
    return resolved, {
        **entry,
        "max_queue_size": resolved.max_queue_size,
        "source": source,
        "rule": "max(max batch, floor(img/s x queueing share x SLO)), one image per request",
        "queueing_share": QUEUEING_SHARE,
        "max_batch_size": b.max_batch_size,
        "throughput": throughput,
        "hint": hint,
    }
