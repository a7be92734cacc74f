"""One decision point each: the serving plan (layout, runtime, device) and the engine profile."""

from __future__ import annotations

import pytest

from cvserve.builders import runtime as rt
from cvserve.builders.profile import EngineProfile
from cvserve.errors import UserInputError


@pytest.mark.parametrize(
    ("target", "runtime", "layout", "expected"),
    [
        ("cpu", "auto", "auto", ("single", "openvino", None, "model.xml")),
        ("cpu", "onnxruntime", "auto", ("single", "onnxruntime", None, "model.onnx")),
        ("cpu", "openvino", "ensemble", ("ensemble", "openvino", None, "model.xml")),
        ("gpu", "auto", "auto", ("ensemble", "tensorrt", None, "model.plan")),
        ("gpu", "onnxruntime", "auto", ("ensemble", "onnxruntime", "tensorrt", "model.onnx")),
    ],
)
def test_the_rule(target, runtime, layout, expected):
    plan = rt.decide(target=target, runtime=runtime, layout=layout)
    assert (plan.layout, plan.runtime, plan.accelerator, plan.network_file) == expected
    assert plan.instance_kind == ("KIND_GPU" if target == "gpu" else "KIND_CPU")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"target": "cpu", "runtime": "tensorrt"}, "--target gpu"),
        ({"target": "gpu", "runtime": "openvino"}, "--runtime tensorrt"),
        ({"target": "gpu", "layout": "single"}, "--layout ensemble"),
        ({"target": "tpu"}, "--target must be"),
        ({"runtime": "tvm"}, "--runtime must be"),
        ({"layout": "pipeline"}, "--layout must be"),
    ],
)
def test_impossible_combinations_name_the_fix(kwargs, needle):
    with pytest.raises(UserInputError, match=needle):
        rt.decide(**kwargs)


@pytest.mark.parametrize(
    ("max_batch", "preferred", "opt"), [(32, (), 8), (4, (), 4), (32, (4, 16), 16), (1, (), 1)]
)
def test_profile_rule(max_batch, preferred, opt):
    profile = EngineProfile.for_batching(max_batch, preferred)
    assert (profile.min_batch, profile.opt_batch, profile.max_batch) == (1, opt, max_batch)
    assert all(profile.covers(b) for b in range(1, max_batch + 1))
    assert profile.shapes((224, 224, 3))["opt"] == (opt, 224, 224, 3)


def test_profile_round_trips_through_the_build_report():
    profile = EngineProfile.for_batching(16, (8,))
    assert EngineProfile.from_report({"engine_profile": profile.to_report()}) == profile
    assert EngineProfile.from_report({}) is None
    with pytest.raises(UserInputError, match="schema"):
        EngineProfile.from_report({"engine_profile": {**profile.to_report(), "schema": 99}})


def test_bad_profile_is_refused():
    with pytest.raises(UserInputError, match="min <= opt <= max"):
        EngineProfile(min_batch=1, opt_batch=8, max_batch=4)
