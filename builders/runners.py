"""How a network runs on the CPU, decided once: ONNX Runtime or OpenVINO, and how many threads.

The builder imports this module to verify, calibrate and measure networks, and ``cvserve build``
copies it next to the served python-backend model (as ``cvserve_runners.py``), so a network is run the
same way when it is measured and when it is served. It depends on numpy and the runtime package only,
never on cvserve, because it runs inside Triton's python backend.

The thread budget: the intra-op threads of all instances of a model never exceed the cores the
server may use (:func:`available_cpus`: the CPU affinity, capped by a cgroup CPU quota, overridden by
``CVSERVE_CPUS``). More threads than cores make the runtimes' worker threads wait on each other, which
can cut throughput several-fold. ONNX Runtime's spin-waiting is off: a spinning worker steals the core
that an image decoder needs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RUNTIMES = ("openvino", "onnxruntime")
CPUS_ENV = "CVSERVE_CPUS"


# -- the thread budget --------------------------------------------------------------------------------
def _cgroup_quota() -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` (or v1 ``cfs_quota_us``) quota, if one is set."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        if quota > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cpus() -> int:
    """Cores this process may use: ``$CVSERVE_CPUS``, else the affinity mask capped by a cgroup quota."""
    override = os.environ.get(CPUS_ENV, "").strip()
    if override:
        if not override.isdigit() or int(override) < 1:
            raise ValueError(f"{CPUS_ENV} must be a whole number of cores >= 1, not {override!r}")
        return int(override)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


@dataclass(frozen=True, kw_only=True)
class ThreadBudget:
    """Threads of one model: ``instances x intra_op`` is at most ``cores`` unless overridden."""

    cores: int
    instances: int
    intra_op: int  # the network runtime's threads, per instance
    decode: int  # image decoding threads, per instance (idle while the network runs)
    overridden: bool = False

    @property
    def oversubscribed(self) -> bool:
        return self.instances * self.intra_op > self.cores

    def describe(self) -> str:
        text = (
            f"{self.instances} instance(s) x {self.intra_op} intra-op thread(s) on {self.cores} core(s), "
            f"{self.decode} decode thread(s) per instance"
        )
        if self.oversubscribed:
            text += " - OVERSUBSCRIBED: more runtime threads than cores"
        return text + (" (overridden)" if self.overridden else "")


def thread_budget(
    instances: int, *, cores: int | None = None, intra_op: int = 0, decode: int = 0
) -> ThreadBudget:
    """The threads of a model with ``instances`` instances; 0 means derive it from the cores.

    Decoding and the network run one after the other within an instance, so each may use all of
    that instance's share of the cores.
    """
    if instances < 1:
        raise ValueError(f"instances must be at least 1, got {instances}")
    cores = cores or available_cpus()
    share = max(1, cores // instances)
    return ThreadBudget(
        cores=cores,
        instances=instances,
        intra_op=intra_op or share,
        decode=decode or share,
        overridden=bool(intra_op or decode),
    )


# -- running a network ----------------------------------------------------------------------------------
class Runner:
    """A network opened by one runtime: ``run(batch)`` returns its outputs by name."""

    runtime: str
    input_name: str
    output_names: tuple[str, ...]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


class _OnnxRuntime(Runner):
    runtime = "onnxruntime"

    def __init__(self, path: str, threads: int, gpu_device: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list = ["CPUExecutionProvider"]
        if gpu_device is not None and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": gpu_device}))
        self._session = ort.InferenceSession(path, options, providers=providers)
        self.input_name = self._session.get_inputs()[0].name
        self.output_names = tuple(o.name for o in self._session.get_outputs())

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self._session.run(None, {self.input_name: batch}), strict=True))


class _OpenVino(Runner):
    runtime = "openvino"

    def __init__(self, path: str, threads: int) -> None:
        import openvino as ov

        core = ov.Core()
        # No CPU pinning: OpenVINO pins its threads to cores chosen inside each process, so the
        # instances of a served model (one stub process each, 1 thread each on 2 cores) all landed on
        # the same core: two processes ran at 1.00 core and 57-64 img/s together, unpinned at 1.99
        # cores and 112-117 img/s (MobileNetV2 FP32, batch 8; docs/benchmarks.md).
        compiled = core.compile_model(
            core.read_model(path),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
                "ENABLE_CPU_PINNING": False,
            },
        )
        self._request = compiled.create_infer_request()  # one request: run() is called from one thread
        self.input_name = compiled.inputs[0].get_any_name()
        self._outputs = [(o.get_any_name(), o) for o in compiled.outputs]
        self.output_names = tuple(name for name, _ in self._outputs)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        result = self._request.infer({0: batch})
        return {name: np.array(result[port]) for name, port in self._outputs}


def open_runner(
    path: str | os.PathLike, runtime: str, *, threads: int = 0, gpu_device: int | None = None
) -> Runner:
    """Open the network file ``path`` (ONNX, or OpenVINO IR ``.xml``) with ``runtime``.

    ``threads`` 0 uses :func:`available_cpus`. Raises ``ValueError`` for an unknown runtime and
    ``ImportError`` when the runtime's package is not installed.
    """
    threads = threads or available_cpus()
    if runtime == "onnxruntime":
        return _OnnxRuntime(os.fspath(path), threads, gpu_device)
    if runtime == "openvino":
        return _OpenVino(os.fspath(path), threads)
    raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")


def run_batched(runner: Runner, inputs: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Outputs of ``runner`` over ``inputs``, ``batch_size`` rows per call, concatenated."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in runner.output_names}
    for start in range(0, len(inputs), batch_size):
        for name, out in runner.run(inputs[start : start + batch_size]).items():
            parts[name].append(out)
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def split_rows(sizes: Sequence[int]) -> list[slice]:
    """Row slices of consecutive requests of ``sizes`` rows in a concatenated batch."""
    out, start = [], 0
    for n in sizes:
        out.append(slice(start, start + n))
        start += n
    return out
