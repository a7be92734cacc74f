"""ONNX -> TensorRT engine (``model.plan``) through Polygraphy and the TensorRT builder API.

Explicit quantization: an INT8 engine is built from a symmetric int8 Q/DQ ONNX (zero point 0), never
from TensorRT's implicit calibrators (deprecated in TensorRT 10). One optimization profile covers every
batch Triton's dynamic batcher can form: min 1, opt the preferred batch, max the model's max batch
size. The builder's timing cache is loaded before and saved after each build, so later builds of
similar networks on the same GPU skip most tactic timing.

TensorRT is the optional extra ``cvserve[tensorrt]``; it is imported only when an engine is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cvserve._extras import require
from cvserve.errors import BuildError, UserInputError

FP8_MIN_COMPUTE_CAPABILITY = (8, 9)  # Ada and Hopper and later have FP8 tensor cores


@dataclass(frozen=True, kw_only=True)
class EngineSpec:
    """What the engine is built for; everything but the TensorRT calls is decided here (and tested)."""

    input_name: str
    input_shape: tuple[int, ...]  # one sample, without the batch dimension
    min_batch: int
    opt_batch: int
    max_batch: int
    fp16: bool
    int8: bool
    timing_cache: Path
    workspace_bytes: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise UserInputError(
                f"TensorRT profile needs 1 <= min <= opt <= max batch, got "
                f"{self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )

    def profile_shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            "min": (self.min_batch, *self.input_shape),
            "opt": (self.opt_batch, *self.input_shape),
            "max": (self.max_batch, *self.input_shape),
        }

    def covers(self, batch: int) -> bool:
        return self.min_batch <= batch <= self.max_batch

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


def opt_batch(max_batch_size: int, preferred: Sequence[int]) -> int:
    """The profile's opt batch: the largest preferred batch size, else the max batch size."""
    return max(preferred) if preferred else max_batch_size


def engine_spec(
    *,
    input_name: str,
    input_shape: Sequence[int],
    precision: str,
    max_batch_size: int,
    preferred_batch_sizes: Sequence[int] = (),
    timing_cache: Path | None = None,
) -> EngineSpec:
    """The engine for a Triton model with ``max_batch_size`` and dynamic batching ``preferred_batch_sizes``.

    FP16 is allowed in INT8 engines too, so that layers left out of quantization run in FP16 rather
    than FP32.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise UserInputError(f"precision must be fp32, fp16 or int8, not {precision!r}")
    return EngineSpec(
        input_name=input_name,
        input_shape=tuple(input_shape),
        min_batch=1,
        opt_batch=opt_batch(max_batch_size, preferred_batch_sizes),
        max_batch=max_batch_size,
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
        import tensorrt as trt

        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: spec.workspace_bytes}
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
