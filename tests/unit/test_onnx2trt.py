"""The TensorRT path up to the TensorRT call: engine profile, flags, timing cache, config, missing extra."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cvserve.builders import onnx2trt
from cvserve.builders import triton_config as tc
from cvserve.errors import MissingDependencyError, UserInputError

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.parametrize(
    ("max_batch", "preferred", "opt"), [(32, (), 32), (32, (4, 8), 8), (16, (16,), 16), (1, (), 1)]
)
def test_profile_is_1_opt_max(max_batch, preferred, opt, tmp_path):
    spec = onnx2trt.engine_spec(
        input_name="input",
        input_shape=(3, 224, 224),
        precision="int8",
        max_batch_size=max_batch,
        preferred_batch_sizes=preferred,
        timing_cache=tmp_path / "t.cache",
    )
    assert spec.profile_shapes() == {
        "min": (1, 3, 224, 224),
        "opt": (opt, 3, 224, 224),
        "max": (max_batch, 3, 224, 224),
    }
    assert spec.int8 and spec.fp16  # layers left out of INT8 run in FP16, not FP32


@pytest.mark.parametrize(("precision", "fp16", "int8"), [("fp32", False, False), ("fp16", True, False)])
def test_precision_flags(precision, fp16, int8):
    spec = onnx2trt.engine_spec(input_name="x", input_shape=(3, 8, 8), precision=precision, max_batch_size=4)
    assert (spec.fp16, spec.int8) == (fp16, int8)


def test_every_batch_the_dynamic_batcher_can_form_is_inside_the_profile():
    batching = tc.Batching(max_batch_size=16, preferred_batch_sizes=(4, 8, 16))
    spec = onnx2trt.engine_spec(
        input_name="input", input_shape=(3, 224, 224), precision="int8",
        max_batch_size=batching.max_batch_size, preferred_batch_sizes=batching.preferred_batch_sizes,
    )  # fmt: skip
    shape = tc.PipelineShape(tensor_shape=(3, 224, 224), num_classes=1000)
    cfg = tc.network_config("m", shape, batching, tc.VersionPolicy(), "tensorrt")
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert cfg.instance_group[0].kind == tc.mc.ModelInstanceGroup.Kind.KIND_GPU
    assert all(spec.covers(b) for b in range(1, cfg.max_batch_size + 1))
    assert all(spec.covers(b) for b in cfg.dynamic_batching.preferred_batch_size)


def test_bad_profile_is_refused():
    with pytest.raises(UserInputError, match="min <= opt <= max"):
        onnx2trt.EngineSpec(
            input_name="x", input_shape=(3,), min_batch=1, opt_batch=8, max_batch=4,
            fp16=False, int8=False, timing_cache=Path("t"),
        )  # fmt: skip


def test_timing_cache_location_can_be_set(monkeypatch, tmp_path):
    monkeypatch.setenv("CVSERVE_TRT_TIMING_CACHE", str(tmp_path / "shared.cache"))
    assert onnx2trt.default_timing_cache() == tmp_path / "shared.cache"
    monkeypatch.delenv("CVSERVE_TRT_TIMING_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert onnx2trt.default_timing_cache() == tmp_path / "cvserve" / "tensorrt" / "timing.cache"


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_without_tensorrt_the_error_names_the_extra(tmp_path):
    spec = onnx2trt.engine_spec(input_name="x", input_shape=(3, 8, 8), precision="fp16", max_batch_size=4)
    with pytest.raises(MissingDependencyError, match=r"pip install 'cvserve\[tensorrt\]'"):
        onnx2trt.build_engine(tmp_path / "model.onnx", tmp_path / "model.plan", spec, log=lambda _m: None)
    assert not (tmp_path / "model.plan").exists()  # never a fake engine
