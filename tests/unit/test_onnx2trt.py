"""The TensorRT path up to the TensorRT call: engine profile, flags, timing cache, config, missing extra."""

from __future__ import annotations

import importlib.util

import pytest

from cvserve.builders import onnx2trt
from cvserve.builders import runtime as rt
from cvserve.builders import triton_config as tc
from cvserve.builders.profile import EngineProfile
from cvserve.errors import MissingDependencyError

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
PIXELS = (224, 224, 3)


def _spec(precision="int8", profile=None, **kw):
    return onnx2trt.engine_spec(
        input_name="PIXELS",
        input_shape=PIXELS,
        precision=precision,
        profile=profile or EngineProfile.for_batching(32),
        **kw,
    )


@pytest.mark.parametrize(("max_batch", "preferred", "opt"), [(32, (), 8), (32, (4, 8), 8), (16, (16,), 16)])
def test_the_engine_uses_the_builds_profile_on_uint8_pixels(max_batch, preferred, opt, tmp_path):
    spec = _spec(profile=EngineProfile.for_batching(max_batch, preferred), timing_cache=tmp_path / "t.cache")
    assert spec.profile_shapes() == {"min": (1, *PIXELS), "opt": (opt, *PIXELS), "max": (max_batch, *PIXELS)}
    assert spec.int8 and spec.fp16  # layers left out of INT8 run in FP16, not FP32


@pytest.mark.parametrize(("precision", "fp16", "int8"), [("fp32", False, False), ("fp16", True, False)])
def test_precision_flags(precision, fp16, int8):
    spec = _spec(precision)
    assert (spec.fp16, spec.int8) == (fp16, int8)


def test_every_batch_the_dynamic_batcher_can_form_is_inside_the_profile():
    batching = tc.Batching(max_batch_size=16, preferred_batch_sizes=(4, 8, 16), max_queue_size=16)
    spec = _spec(profile=batching.profile)
    shape = tc.PipelineShape(pixels_shape=PIXELS, top_k=5, labels=[str(i) for i in range(10)])
    plan = rt.decide(target="gpu")
    cfg = tc.pipeline_configs("m", plan, shape, batching.scheduling(plan.roles), tc.VersionPolicy())[
        "network"
    ]
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert cfg.instance_group[0].kind == tc.mc.ModelInstanceGroup.Kind.KIND_GPU
    assert all(spec.covers(b) for b in range(1, cfg.max_batch_size + 1))
    assert all(spec.covers(b) for b in cfg.dynamic_batching.preferred_batch_size)


def test_timing_cache_location_can_be_set(monkeypatch, tmp_path):
    monkeypatch.setenv("CVSERVE_TRT_TIMING_CACHE", str(tmp_path / "shared.cache"))
    assert onnx2trt.default_timing_cache() == tmp_path / "shared.cache"
    monkeypatch.delenv("CVSERVE_TRT_TIMING_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert onnx2trt.default_timing_cache() == tmp_path / "cvserve" / "tensorrt" / "timing.cache"


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_without_tensorrt_the_error_names_the_extra(tmp_path):
    with pytest.raises(MissingDependencyError, match=r"pip install 'cvserve\[tensorrt\]'"):
        onnx2trt.build_engine(
            tmp_path / "model.onnx", tmp_path / "model.plan", _spec("fp16"), log=lambda _m: None
        )
    assert not (tmp_path / "model.plan").exists()  # never a fake engine
