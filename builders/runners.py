"""How a network runs on the CPU, decided once: ONNX Runtime or OpenVINO, how many threads, which precision.

The builder imports this module to verify, calibrate and measure networks, and ``cvserve build``
copies it next to the served python-backend model (as ``cvserve_runners.py``), so a network is run the
same way when it is measured and when it is served. It depends on numpy, the runtime package and
:mod:`cvserve.hardware` only (copied beside it as ``cvserve_hardware.py``), because it runs inside
Triton's python backend.

The precision: every network is opened with its float precision stated (:data:`FLOAT_PRECISIONS`,
f32 unless the build chose bf16) and the compiled network's precision is read back and checked,
because OpenVINO's CPU plugin otherwise runs "FP32" networks in bf16 on CPUs with native bf16
(docs/hardware.md). A bf16 network is refused on a CPU without bf16 units rather than emulated.

The thread budget: the intra-op threads of all instances of a model never exceed the cores the
server may use (:func:`available_cpus`: the CPU affinity, capped by a cgroup CPU quota, overridden by
``CVSERVE_CPUS``). More threads than cores make the runtimes' worker threads wait on each other, which
can cut throughput several-fold. ONNX Runtime's spin-waiting is off: a spinning worker steals the core
that an image decoder needs.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

try:  # beside the served model (Triton's python backend): the copy the build made
    import cvserve_hardware as hardware
except ImportError:
    from cvserve import hardware

RUNTIMES = ("openvino", "onnxruntime")
# The precision a runtime computes a network's float layers in: always stated, never the runtime's
# per-CPU default (OpenVINO picks bf16 on CPUs with native bf16). INT8 layers stay INT8 either way.
FLOAT_PRECISIONS = ("f32", "bf16")
DEFAULT_FLOAT_PRECISION = "f32"
available_cpus = hardware.available_cpus


# -- the thread budget --------------------------------------------------------------------------------
def fits(instances: int, intra_op: int, cores: int) -> bool:
    """Whether ``instances`` with ``intra_op`` runtime threads each keep to ``cores``: their threads
    are at most the cores, or each instance runs on one thread. Thread pools of several instances
    that share cores wait on each other, which can cut throughput several-fold; instances of one thread
    have no pool, and more of them than cores take turns, which keeps the cores busy between short
    requests (docs/serving.md, "Short requests need more instances under load")."""
    return intra_op <= 1 or instances * intra_op <= cores


@dataclass(frozen=True, kw_only=True)
class ThreadBudget:
    """Threads of one model: within :func:`fits` unless overridden."""

    cores: int
    instances: int
    intra_op: int  # the network runtime's threads, per instance
    decode: int  # image decoding threads, per instance (idle while the network runs)
    overridden: bool = False

    @property
    def oversubscribed(self) -> bool:
        return not fits(self.instances, self.intra_op, self.cores)

    def describe(self) -> str:
        text = (
            f"{self.instances} instance(s) x {self.intra_op} intra-op thread(s) on {self.cores} core(s), "
            f"{self.decode} decode thread(s) per instance"
        )
        if self.oversubscribed:
            text += " - OVERSUBSCRIBED: more runtime threads than cores, in pools that wait on each other"
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
    """A network opened by one runtime: ``run(batch)`` returns its outputs by name.

    ``precision`` is the float precision the compiled network computes in, read back from the runtime
    (never assumed); ``layer_precisions`` counts its compute layers (convolutions, matrix products) by
    the precision they run in, e.g. ``{"i8": 52, "f32": 13}`` for an INT8 network with float layers.
    """

    runtime: str
    input_name: str
    output_names: tuple[str, ...]
    precision: str

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def layer_precisions(self) -> dict[str, int]:
        raise NotImplementedError


class _OnnxRuntime(Runner):
    runtime = "onnxruntime"
    precision = "f32"  # its x86 CPU kernels are f32 (or integer for Q/DQ): no per-CPU float default

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
        self._path = path

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self._session.run(None, {self.input_name: batch}), strict=True))

    def layer_precisions(self) -> dict[str, int]:
        """Counted from the ONNX file; ``{}`` where the ``onnx`` package is absent (a serve-only install:
        onnxruntime does not need it, and a served model must not fail to load for a count)."""
        try:
            import onnx
        except ImportError:
            return {}
        graph = onnx.load(self._path, load_external_data=False).graph
        quantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        count: Counter = Counter()
        for node in graph.node:
            if node.op_type in _ONNX_COMPUTE_OPS:
                count["i8" if node.input and node.input[0] in quantized else "f32"] += 1
        return dict(count)


_ONNX_COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_OPENVINO_COMPUTE_LAYERS = {"Convolution", "Deconvolution", "FullyConnected", "MatMul", "GroupConvolution"}


class _OpenVino(Runner):
    runtime = "openvino"

    def __init__(self, path: str, threads: int, precision: str) -> None:
        import openvino as ov

        if precision == "bf16":  # never emulated: refused on a CPU without bf16 units
            hardware.require_native_bf16("this bf16 network")
        core = ov.Core()
        # No CPU pinning: OpenVINO pins its threads to cores chosen inside each process, so the
        # instances of a served model (one stub process each, 1 thread each on 2 cores) all landed on
        # the same core: two processes ran at 1.00 core and 57-64 img/s together, unpinned at 1.99
        # cores and 112-117 img/s (MobileNetV2 FP32, batch 8; docs/benchmarks.md).
        # INFERENCE_PRECISION_HINT always: OpenVINO's default is bf16 on CPUs with native bf16.
        self._compiled = core.compile_model(
            core.read_model(path),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
                "ENABLE_CPU_PINNING": False,
                "INFERENCE_PRECISION_HINT": precision,
            },
        )
        self.precision = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if self.precision != precision:
            raise RuntimeError(f"OpenVINO compiled the network in {self.precision}, not {precision}")
        self._request = self._compiled.create_infer_request()  # one request: run() is called from one thread
        self.input_name = self._compiled.inputs[0].get_any_name()
        self._outputs = [(o.get_any_name(), o) for o in self._compiled.outputs]
        self.output_names = tuple(name for name, _ in self._outputs)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        result = self._request.infer({0: batch})
        return {name: np.array(result[port]) for name, port in self._outputs}

    def layer_precisions(self) -> dict[str, int]:
        count: Counter = Counter()
        for op in self._compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if "layerType" in info and info["layerType"].astype(str) in _OPENVINO_COMPUTE_LAYERS:
                count[info["runtimePrecision"].astype(str)] += 1
        return dict(count)


def open_runner(
    path: str | os.PathLike,
    runtime: str,
    *,
    threads: int = 0,
    precision: str = DEFAULT_FLOAT_PRECISION,
    gpu_device: int | None = None,
) -> Runner:
    """Open the network file ``path`` (ONNX, or OpenVINO IR ``.xml``) with ``runtime``.

    ``threads`` 0 uses :func:`available_cpus`. ``precision`` is what the float layers compute in
    (:data:`FLOAT_PRECISIONS`); the runtime is always told, and the compiled network is checked.
    Raises ``ValueError`` for an unknown runtime or a precision it cannot run,
    :class:`hardware.MissingFeatureError` for bf16 on a CPU without it, and ``ImportError`` when the
    runtime's package is not installed.
    """
    threads = threads or available_cpus()
    if precision not in FLOAT_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(FLOAT_PRECISIONS)}, not {precision!r}")
    if runtime == "onnxruntime":
        if precision != "f32":
            raise ValueError("ONNX Runtime runs float layers in f32 on CPUs: bf16 needs --runtime openvino")
        return _OnnxRuntime(os.fspath(path), threads, gpu_device)
    if runtime == "openvino":
        return _OpenVino(os.fspath(path), threads, precision)
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
