"""Precision is decided by the build, pinned in the runtime and read back, on any CPU (docs/hardware.md)."""

from __future__ import annotations

import numpy as np
import pytest

from cvserve import hardware
from cvserve.builders import precision as prec
from cvserve.builders import runtime as rt
from cvserve.errors import UserInputError

# /proc/cpuinfo flags (the ones that matter) of the three CPUs this project has been built on
ZEN3 = {"avx2", "fma", "sse4_2"}
ZEN4 = ZEN3 | {"avx512f", "avx512_vnni", "avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "avx512_fp16"}


def machine(flags: set[str]) -> hardware.Cpu:
    return hardware.Cpu(
        model="test CPU", arch="x86_64", cores=2, logical_cpus=2, features=hardware.features_from_flags(flags)
    )


@pytest.mark.parametrize(
    ("flags", "features", "bf16"),
    [
        (ZEN3, ("avx2",), False),
        (ZEN4, ("avx2", "avx512", "vnni", "avx512_bf16"), True),
        (SAPPHIRE_RAPIDS, ("avx2", "avx512", "vnni", "avx512_bf16", "amx"), True),
        ({"avx2", "amx_tile", "amx_int8"}, ("avx2",), False),  # AMX without its bf16 unit
        (set(), (), False),
    ],
)
def test_cpu_features_that_change_numerics(flags, features, bf16):
    cpu = machine(flags)
    assert cpu.features == features and cpu.native_bf16 is bf16
    assert cpu.summary().startswith("test CPU, 2 cores; ")


def test_this_machine_is_detected_once_and_named_in_one_line():
    cpu = hardware.cpu()
    assert cpu is hardware.cpu() and cpu.cores >= 1 and cpu.model
    assert hardware.summary() == cpu.summary()
    assert set(cpu.as_dict()) >= {"model", "cores", "features", "native_bf16"}


CPU_OPENVINO = rt.decide(target="cpu", runtime="openvino")


@pytest.mark.parametrize("flags", [ZEN3, ZEN4, SAPPHIRE_RAPIDS])
def test_fp32_and_int8_compute_float_layers_in_f32_on_every_cpu(flags):
    for precision in ("fp32", "int8"):
        decided = prec.decide(precision, CPU_OPENVINO, machine=machine(flags))
        assert decided.float_parts == "f32"
    assert not prec.decide("fp32", CPU_OPENVINO, machine=machine(flags)).gated


@pytest.mark.parametrize("flags", [ZEN4, SAPPHIRE_RAPIDS])
def test_bf16_is_an_explicit_gated_choice_on_cpus_with_native_bf16(flags):
    decided = prec.decide("bf16", CPU_OPENVINO, machine=machine(flags))
    assert (decided.precision, decided.float_parts, decided.gated) == ("bf16", "bf16", True)
    assert prec.decide("int8", CPU_OPENVINO, float_parts="bf16", machine=machine(flags)).float_parts == "bf16"


def test_bf16_on_a_cpu_without_it_is_refused_in_one_line_with_exit_2():
    for precision, parts in (("bf16", None), ("int8", "bf16")):
        with pytest.raises(prec.MissingCpuFeature, match=r"native bf16 \(AVX512-BF16 or AMX\)") as err:
            prec.decide(precision, CPU_OPENVINO, float_parts=parts, machine=machine(ZEN3))
        assert err.value.exit_code == 2 and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("precision", "parts", "plan", "fix"),
    [
        ("bf16", None, rt.decide(target="cpu", runtime="onnxruntime"), "--runtime openvino"),
        ("bf16", None, rt.decide(target="gpu", runtime="onnxruntime"), "--target cpu"),
        ("fp32", "bf16", CPU_OPENVINO, "--precision bf16"),
        ("fp32", None, rt.decide(target="cpu", runtime="openvino", layout="ensemble"), "--layout single"),
        ("int8", None, rt.decide(target="cpu", runtime="openvino", layout="ensemble"), "--layout single"),
    ],
)
def test_combinations_that_would_not_run_as_asked_name_the_fix(precision, parts, plan, fix):
    with pytest.raises(UserInputError, match=fix):
        prec.decide(precision, plan, float_parts=parts, machine=machine(SAPPHIRE_RAPIDS))


def test_the_ensemble_serves_openvino_in_bf16_through_the_backends_own_parameter():
    from cvserve.builders import triton_config as tc

    plan = rt.decide(target="cpu", runtime="openvino", layout="ensemble")
    assert prec.decide("bf16", plan, machine=machine(ZEN4)).float_parts == "bf16"
    shape = tc.PipelineShape(pixels_shape=(8, 8, 3), top_k=1, labels=["a"], float_parts="bf16")
    cfg = tc.pipeline_configs(
        "m", plan, shape, tc.Batching(max_queue_size=16).scheduling(plan.roles), tc.VersionPolicy()
    )["network"]
    assert cfg.parameters[tc.OPENVINO_BF16_PARAMETER].string_value == "YES"


def test_bf16_refusal_names_the_feature_for_the_server_too():
    with pytest.raises(hardware.MissingFeatureError, match=r"this bf16 network needs .*AVX512-BF16 or AMX"):
        hardware.require_native_bf16("this bf16 network", machine(ZEN3))
    hardware.require_native_bf16("this bf16 network", machine(ZEN4))  # no error


# -- the runtimes, on this CPU ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def network(tmp_path_factory):
    """A small convolutional ONNX network (float input)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16 * 30 * 30, 10)
    ).eval()
    path = tmp_path_factory.mktemp("net") / "net.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})  # fmt: skip
    return path


def test_every_runtime_reads_back_f32_whatever_the_cpus_default(network):
    from cvserve.builders.runners import open_runner

    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    results = {}
    for runtime in ("openvino", "onnxruntime"):
        runner = open_runner(network, runtime, threads=1)
        assert runner.precision == "f32"
        assert runner.layer_precisions() == {"f32": 2}  # the convolution and the fully connected layer
        results[runtime] = runner.run(x)[runner.output_names[0]]
    np.testing.assert_allclose(results["openvino"], results["onnxruntime"], rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not hardware.cpu().native_bf16, reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_bf16_runs_in_bf16_where_the_cpu_has_it(network):
    from cvserve.builders.runners import open_runner

    runner = open_runner(network, "openvino", threads=1, precision="bf16")
    assert runner.precision == "bf16" and runner.layer_precisions() == {"bf16": 2}


@pytest.mark.skipif(hardware.cpu().native_bf16, reason="this CPU has native bf16: nothing to refuse")
def test_bf16_is_refused_by_the_runner_where_the_cpu_lacks_it(network):
    from cvserve.builders.runners import open_runner

    with pytest.raises(hardware.MissingFeatureError, match="AVX512-BF16 or AMX"):
        open_runner(network, "openvino", threads=1, precision="bf16")


def test_onnxruntime_has_no_bf16_cpu_path(network):
    from cvserve.builders.runners import open_runner

    with pytest.raises(ValueError, match="--runtime openvino"):
        open_runner(network, "onnxruntime", precision="bf16")
