"""ONNX -> TensorRT engine (``model.plan``) through Polygraphy and the TensorRT builder API.

The input is the served graph (cvserve.builders.served_graph): uint8 pixels, cast and normalised
inside the network, top-k at its end. Explicit quantization: an INT8 engine is built from a symmetric
int8 Q/DQ ONNX (zero point 0), never from TensorRT's implicit calibrators (deprecated in TensorRT 10).
One optimization profile, the build's :class:`~cvserve.builders.profile.EngineProfile`, covers every
batch Triton's dynamic batcher can form. The builder's timing cache is loaded before and saved after each build, so later builds of
similar networks on the same GPU skip most tactic timing.

TensorRT is the optional extra ``cvserve[tensorrt]``; it is imported only when an engine is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cvserve._extras import require
from cvserve.builders.precision import PRECISIONS
from cvserve.builders.profile import EngineProfile
from cvserve.errors import BuildError, UserInputError

# What an engine is built in: every build precision but bf16, which OpenVINO alone serves (precision.decide).
ENGINE_PRECISIONS = tuple(p for p in PRECISIONS if p != "bf16")
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)  # Ada and Hopper and later have FP8 tensor cores


@dataclass(frozen=True, kw_only=True)
class EngineSpec:
    """What the engine is built for; everything but the TensorRT calls is decided here (and tested)."""

    input_name: str
    input_shape: tuple[int, ...]  # one sample, without the batch dimension
    profile: EngineProfile
    fp16: bool
    int8: bool
    timing_cache: Path
    workspace_bytes: int | None = None

    def profile_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.profile.shapes(self.input_shape)

    def covers(self, batch: int) -> bool:
        return self.profile.covers(batch)

    def as_dict(self) -> dict:
        return {
            "profile": {k: list(v) for k, v in self.profile_shapes().items()},
            "fp16": self.fp16,
            "int8": self.int8,
            "timing_cache": str(self.timing_cache),
        }


def default_timing_cache() -> Path:
    """``CVSERVE_TRT_TIMING_CACHE``, else ``~/.cache/cvserve/tensorrt/timing.cache``."""
    env = os.environ.get("CVSERVE_TRT_TIMING_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "cvserve" / "tensorrt" / "timing.cache"


def engine_spec(
    *,
    input_name: str,
    input_shape: Sequence[int],
    precision: str,
    profile: EngineProfile,
    timing_cache: Path | None = None,
) -> EngineSpec:
    """The engine for a Triton model served with the engine ``profile`` (builders/profile.py).

    FP16 is allowed in INT8 engines too, so that layers left out of quantization run in FP16 rather
    than FP32.
    """
    if precision not in ENGINE_PRECISIONS:
        raise UserInputError(f"precision must be one of {', '.join(ENGINE_PRECISIONS)}, not {precision!r}")
    return EngineSpec(
        input_name=input_name,
        input_shape=tuple(input_shape),
        profile=profile,
        fp16=precision in ("fp16", "int8"),
        int8=precision == "int8",
        timing_cache=timing_cache or default_timing_cache(),
    )


def _gpu_has_fp8() -> bool:
    try:
        import torch

        return torch.cuda.is_available() and torch.cuda.get_device_capability() >= FP8_MIN_COMPUTE_CAPABILITY
    except Exception:  # no CUDA build of torch: leave FP8 off rather than guess
        return False


def build_engine(
    onnx_path: Path, plan_path: Path, spec: EngineSpec, log: Callable[[str], None] = print
) -> dict:
    """Build and save the engine; returns what the build report records about it.

    Raises :class:`~cvserve.errors.MissingDependencyError` naming ``pip install 'cvserve[tensorrt]'``
    when TensorRT is not installed, and :class:`~cvserve.errors.BuildError` when TensorRT fails.
    """
    require("tensorrt", extra="tensorrt", purpose="to build TensorRT engines (--target gpu)")
    import tensorrt as trt
    from polygraphy.backend.trt import (
        CreateConfig,
        Profile,
        engine_from_network,
        network_from_onnx_path,
        save_engine,
    )

    fp8 = spec.int8 and _gpu_has_fp8()  # lets TensorRT use FP8 tactics where the network has FP8 Q/DQ
    shapes = spec.profile_shapes()
    profile = Profile().add(spec.input_name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
    spec.timing_cache.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if spec.workspace_bytes:
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: spec.workspace_bytes}
    # TensorRT's plugin library (EfficientNMS_TRT, a detector's NMS tail) registered before parsing:
    # the ONNX parser looks an unknown operator up in the plugin registry by its name.
    trt.init_libnvinfer_plugins(trt.Logger(trt.Logger.WARNING), "")
    try:
        network = network_from_onnx_path(str(onnx_path))
        config = CreateConfig(
            fp16=spec.fp16,
            int8=spec.int8,
            fp8=fp8,
            profiles=[profile],
            load_timing_cache=str(spec.timing_cache) if spec.timing_cache.exists() else None,
            **kwargs,
        )
        engine = engine_from_network(network, config=config, save_timing_cache=str(spec.timing_cache))
        save_engine(engine, path=str(plan_path))
    except Exception as exc:  # Polygraphy raises PolygraphyException; TensorRT its own errors
        raise BuildError(f"TensorRT engine build failed: {type(exc).__name__}: {exc}") from None
    log(f"[tensorrt] engine {plan_path.name}: profile {shapes}, fp16={spec.fp16} int8={spec.int8} fp8={fp8}")
    return {**spec.as_dict(), "fp8": fp8}
