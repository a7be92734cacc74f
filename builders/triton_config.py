"""Triton model configurations, built from Triton's own ``model_config`` protobuf (shipped in tritonclient).

Never assembled from strings: every field is typed and checked by protobuf, and printed with
``text_format``. Names of the four models of a classification pipeline NAME:

* ``NAME`` (ensemble, what clients call): IMAGE (TYPE_STRING, [1]) -> CLASS_INDEX, SCORE, LABEL ([K])
* ``NAME_preprocess`` (python backend): IMAGE -> ``input`` (FP32, spec.tensor_shape)
* ``NAME_network`` (python backend running ONNX Runtime, or native onnxruntime / tensorrt_plan)
* ``NAME_postprocess`` (python backend): ``logits`` -> top-K
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from cvserve.errors import UserInputError

IMAGE = "IMAGE"
OUTPUTS = ("CLASS_INDEX", "SCORE", "LABEL")
NETWORK_RUNTIMES = ("python", "onnxruntime", "tensorrt")


def model_names(name: str) -> dict[str, str]:
    return {
        "ensemble": name,
        "preprocess": f"{name}_preprocess",
        "network": f"{name}_network",
        "postprocess": f"{name}_postprocess",
    }


def check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", name):
        raise UserInputError(f"--name {name!r}: use letters, digits, '_', '-', '.', starting with a letter")
    return name


@dataclass(kw_only=True)
class Batching:
    """Dynamic batching and instance settings; ops tune these (``cvserve tune``)."""

    max_batch_size: int = 32
    preferred_batch_sizes: Sequence[int] = ()
    max_queue_delay_us: int = 2000
    network_instances: int = 1
    preprocess_instances: int = 2
    postprocess_instances: int = 1
    network_threads: int = 0  # ONNX Runtime intra-op threads in the python runtime (0: all cores)
    decode_threads: int = 0  # decode threads per preprocess instance (0: min(4, cores))
    instance_kind: str = "KIND_CPU"

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise UserInputError(f"--max-batch-size must be at least 1, got {self.max_batch_size}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise UserInputError(
                f"preferred batch sizes {bad} are outside 1..max batch size {self.max_batch_size}"
            )
        if self.max_queue_delay_us < 0:
            raise UserInputError("--max-queue-delay-us must be >= 0")
        for label, n in (
            ("network", self.network_instances),
            ("preprocess", self.preprocess_instances),
            ("postprocess", self.postprocess_instances),
        ):
            if n < 1:
                raise UserInputError(f"--{label}-instances must be at least 1, got {n}")


@dataclass(kw_only=True)
class VersionPolicy:
    """``latest:N``, ``all`` or ``specific:1,3``."""

    kind: str = "latest"
    values: tuple[int, ...] = (1,)

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        kind, _, rest = text.partition(":")
        try:
            values = tuple(int(v) for v in rest.split(",") if v.strip())
        except ValueError:
            values = ()
        if kind == "all" and not rest:
            return cls(kind="all", values=())
        if (
            kind in ("latest", "specific")
            and values
            and min(values) >= 1
            and (kind == "specific" or len(values) == 1)
        ):
            return cls(kind=kind, values=values)
        raise UserInputError(f"--version-policy {text!r}: use latest:N, all, or specific:V[,V...]")

    def proto(self) -> mc.ModelVersionPolicy:
        if self.kind == "all":
            return mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All())
        if self.kind == "specific":
            return mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=list(self.values)))
        return mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=self.values[0]))


@dataclass(kw_only=True)
class PipelineShape:
    tensor_shape: tuple[int, ...]
    num_classes: int
    top_k: int = 5
    input_name: str = "input"
    logits_name: str = "logits"
    extra_params: dict[str, dict[str, str]] = field(default_factory=dict)  # model role -> parameters


def _params(cfg: mc.ModelConfig, params: dict[str, str]) -> None:
    for key, value in params.items():
        cfg.parameters[key].string_value = str(value)


def _dynamic_batching(b: Batching, preferred: Sequence[int] = ()) -> mc.ModelDynamicBatching:
    return mc.ModelDynamicBatching(
        preferred_batch_size=list(preferred), max_queue_delay_microseconds=b.max_queue_delay_us
    )


def _instances(count: int, kind: str) -> list[mc.ModelInstanceGroup]:
    return [mc.ModelInstanceGroup(count=count, kind=mc.ModelInstanceGroup.Kind.Value(kind))]


def preprocess_config(name: str, shape: PipelineShape, b: Batching, policy: VersionPolicy) -> mc.ModelConfig:
    cfg = mc.ModelConfig(
        name=model_names(name)["preprocess"],
        backend="python",
        max_batch_size=b.max_batch_size,
        version_policy=policy.proto(),
        input=[mc.ModelInput(name=IMAGE, data_type=mc.TYPE_STRING, dims=[1])],
        output=[mc.ModelOutput(name=shape.input_name, data_type=mc.TYPE_FP32, dims=list(shape.tensor_shape))],
        dynamic_batching=_dynamic_batching(b),
        instance_group=_instances(b.preprocess_instances, "KIND_CPU"),
    )
    _params(cfg, {"decode_threads": b.decode_threads, **shape.extra_params.get("preprocess", {})})
    return cfg


def network_config(
    name: str, shape: PipelineShape, b: Batching, policy: VersionPolicy, runtime: str
) -> mc.ModelConfig:
    if runtime not in NETWORK_RUNTIMES:
        raise UserInputError(f"--runtime must be one of {', '.join(NETWORK_RUNTIMES)}, not {runtime!r}")
    cfg = mc.ModelConfig(
        name=model_names(name)["network"],
        max_batch_size=b.max_batch_size,
        version_policy=policy.proto(),
        input=[mc.ModelInput(name=shape.input_name, data_type=mc.TYPE_FP32, dims=list(shape.tensor_shape))],
        output=[mc.ModelOutput(name=shape.logits_name, data_type=mc.TYPE_FP32, dims=[shape.num_classes])],
        dynamic_batching=_dynamic_batching(b, b.preferred_batch_sizes),
        instance_group=_instances(b.network_instances, b.instance_kind),
    )
    if runtime == "python":  # ONNX Runtime inside the python backend (the embedded server)
        cfg.backend = "python"
        _params(cfg, {"intra_op_threads": b.network_threads, "onnx_file": "model.onnx"})
    elif runtime == "onnxruntime":  # Triton's native onnxruntime backend (NGC container)
        cfg.platform, cfg.backend, cfg.default_model_filename = (
            "onnxruntime_onnx",
            "onnxruntime",
            "model.onnx",
        )
        if b.network_threads:
            _params(cfg, {"intra_op_thread_count": b.network_threads})
    else:  # TensorRT engine (NGC container on GPU nodes): an engine only runs on a GPU instance
        cfg.platform, cfg.backend, cfg.default_model_filename = "tensorrt_plan", "tensorrt", "model.plan"
        cfg.instance_group[0].kind = mc.ModelInstanceGroup.Kind.KIND_GPU
    _params(cfg, shape.extra_params.get("network", {}))
    return cfg


TRT_ACCELERATOR_CACHE = "/tmp/cvserve-trt-cache"  # an emptyDir in the Helm chart: engines are rebuilt per pod
TRT_PRECISION_MODES = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}


def add_tensorrt_accelerator(
    cfg: mc.ModelConfig,
    *,
    precision: str,
    input_name: str,
    tensor_shape: Sequence[int],
    b: Batching,
    cache_dir: str = TRT_ACCELERATOR_CACHE,
    workspace_bytes: int = 1 << 30,
) -> dict[str, str]:
    """Run an ``onnxruntime_onnx`` network on GPU instances through ONNX Runtime's TensorRT accelerator.

    The variant for GPU nodes that serves the ONNX itself (the Q/DQ ONNX for INT8) instead of a
    prebuilt engine: the engine is built by the server on first load and cached. The optimization
    profile follows the same rule as :mod:`cvserve.builders.onnx2trt` (min 1, opt the largest
    preferred batch, max ``max_batch_size``), so the dynamic batcher never forms a batch outside it.
    Returns the accelerator's parameters (for the build report).
    """
    from cvserve.builders.onnx2trt import opt_batch

    if cfg.platform != "onnxruntime_onnx":
        raise UserInputError(
            "the TensorRT accelerator needs --runtime onnxruntime (Triton's onnxruntime backend)"
        )
    if precision not in TRT_PRECISION_MODES:
        raise UserInputError(f"precision must be one of {', '.join(TRT_PRECISION_MODES)}, not {precision!r}")

    def dims(batch: int) -> str:
        return f"{input_name}:" + "x".join(str(d) for d in (batch, *tensor_shape))

    params = {
        "precision_mode": TRT_PRECISION_MODES[precision],
        "max_workspace_size_bytes": str(workspace_bytes),
        "trt_profile_min_shapes": dims(1),
        "trt_profile_opt_shapes": dims(opt_batch(b.max_batch_size, b.preferred_batch_sizes)),
        "trt_profile_max_shapes": dims(b.max_batch_size),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache_dir,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": cache_dir,
    }
    accelerator = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    accelerator.parameters.update(params)
    for group in cfg.instance_group:
        group.kind = mc.ModelInstanceGroup.Kind.KIND_GPU
    return params


def postprocess_config(name: str, shape: PipelineShape, b: Batching, policy: VersionPolicy) -> mc.ModelConfig:
    k = min(shape.top_k, shape.num_classes)
    cfg = mc.ModelConfig(
        name=model_names(name)["postprocess"],
        backend="python",
        max_batch_size=b.max_batch_size,
        version_policy=policy.proto(),
        input=[mc.ModelInput(name=shape.logits_name, data_type=mc.TYPE_FP32, dims=[shape.num_classes])],
        output=[
            mc.ModelOutput(name="CLASS_INDEX", data_type=mc.TYPE_INT64, dims=[k]),
            mc.ModelOutput(name="SCORE", data_type=mc.TYPE_FP32, dims=[k]),
            mc.ModelOutput(name="LABEL", data_type=mc.TYPE_STRING, dims=[k]),
        ],
        dynamic_batching=_dynamic_batching(b),
        instance_group=_instances(b.postprocess_instances, "KIND_CPU"),
    )
    _params(cfg, {"apply_softmax": "true", **shape.extra_params.get("postprocess", {})})
    return cfg


def ensemble_config(name: str, shape: PipelineShape, b: Batching, policy: VersionPolicy) -> mc.ModelConfig:
    names = model_names(name)
    k = min(shape.top_k, shape.num_classes)
    step = mc.ModelEnsembling.Step
    return mc.ModelConfig(
        name=name,
        platform="ensemble",
        max_batch_size=b.max_batch_size,
        version_policy=policy.proto(),
        input=[mc.ModelInput(name=IMAGE, data_type=mc.TYPE_STRING, dims=[1])],
        output=[
            mc.ModelOutput(name="CLASS_INDEX", data_type=mc.TYPE_INT64, dims=[k]),
            mc.ModelOutput(name="SCORE", data_type=mc.TYPE_FP32, dims=[k]),
            mc.ModelOutput(name="LABEL", data_type=mc.TYPE_STRING, dims=[k]),
        ],
        ensemble_scheduling=mc.ModelEnsembling(
            step=[
                step(
                    model_name=names["preprocess"],
                    model_version=-1,
                    input_map={IMAGE: IMAGE},
                    output_map={shape.input_name: "preprocessed"},
                ),
                step(
                    model_name=names["network"],
                    model_version=-1,
                    input_map={shape.input_name: "preprocessed"},
                    output_map={shape.logits_name: "logits"},
                ),
                step(
                    model_name=names["postprocess"],
                    model_version=-1,
                    input_map={shape.logits_name: "logits"},
                    output_map={o: o for o in OUTPUTS},
                ),
            ]
        ),
    )


def pipeline_configs(
    name: str, shape: PipelineShape, b: Batching, policy: VersionPolicy, runtime: str
) -> dict[str, mc.ModelConfig]:
    """Role -> config for the four models of the pipeline."""
    check_name(name)
    return {
        "preprocess": preprocess_config(name, shape, b, policy),
        "network": network_config(name, shape, b, policy, runtime),
        "postprocess": postprocess_config(name, shape, b, policy),
        "ensemble": ensemble_config(name, shape, b, policy),
    }


def to_text(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
