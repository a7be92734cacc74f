"""The INT8 quantizers on a small real network (untrained CNN, real sample photos), without a build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cvserve.builders import calibration as cal
from cvserve.builders import quantizers
from cvserve.builders.preprocessing import PreprocessSpec
from cvserve.builders.quantize import outputs

SPEC = PreprocessSpec(input_size=(16, 16), resize_shorter=0)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    """A 4-layer CNN exported to ONNX, 16 calibration and 8 held-out real photos at 16x16."""
    import torch

    from cvserve.builders import torch2onnx
    from cvserve.builders.checkpoint import LoadedModel
    from cvserve.builders.datasets import small_cnn

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("small")
    model = LoadedModel(module=small_cnn(5).eval(), kind="state_dict", source=folder)
    fp32 = torch2onnx.export(model, folder / "fp32.onnx", input_shape=SPEC.tensor_shape).path
    calib, valid = cal.sample_sets(16, 8)
    return {"fp32": fp32, "cal": calib.tensors(SPEC), "val": valid.tensors(SPEC), "dir": folder}


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("name", ["nncf", "ort-minmax"])
def test_each_quantizer_writes_qdq_and_keeps_excluded_layers_float(small, tmp_path, name):
    q = quantizers.make(
        name,
        small["fp32"],
        small["cal"],
        target="cpu",
        runtime="openvino",
        workdir=tmp_path,
        progress=False,
        log=print,
    )
    full = q.quantize(tmp_path / "full.onnx")
    layers = quantizers.quantized_layers(full)
    assert len(layers) >= 4  # three convolutions and the classifier
    ops = {n.op_type for n in onnx.load(str(full)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    partial = q.quantize(tmp_path / "partial.onnx", exclude=[layers[0]])
    assert set(quantizers.quantized_layers(partial)) == set(layers) - {layers[0]}
    assert q.describe()["method"] == name
    # Float weights and biases restored by graph surgery: the FP32 network's tensors, by layer name.
    back = quantizers.float_weights(full, q.float_model, layers, tmp_path / "float.onnx")
    inits, ref_inits = _initializers(back), _initializers(q.float_model)
    ref_nodes = {n.name: n for n in onnx.load(str(q.float_model)).graph.node}
    for node in onnx.load(str(back)).graph.node:
        if node.name in layers and node.op_type in ("Conv", "Gemm"):
            for i, tensor in enumerate(node.input[1:], 1):
                assert np.array_equal(inits[tensor], ref_inits[ref_nodes[node.name].input[i]])
    got = outputs(back, small["val"], "onnxruntime")
    assert got.shape == (len(small["val"]), 5) and np.isfinite(got).all()
    one = quantizers.float_weights(full, q.float_model, [layers[-1]], tmp_path / "one.onnx")
    assert quantizers.quantized_layers(one) == layers  # its input activation stays quantized


def test_gpu_target_quantizes_to_symmetric_qdq_for_tensorrt(small, tmp_path):
    q = quantizers.make(
        "ort-minmax",
        small["fp32"],
        small["cal"],
        target="gpu",
        runtime="tensorrt",
        workdir=tmp_path,
        progress=False,
        log=print,
    )
    qdq = q.quantize(tmp_path / "gpu.onnx")
    graph = onnx.load(str(qdq)).graph
    inits = _initializers(qdq)
    zero_points = [
        inits[n.input[2]] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
    ]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # zero point 0
    biases = [n.input[2] for n in graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert biases and all(inits[b].dtype == np.float32 for b in biases)  # TensorRT fuses float bias


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_cpu_target_ort_is_u8s8_with_per_channel_symmetric_weights(small, tmp_path, runtime):
    q = quantizers.make(
        "ort-minmax",
        small["fp32"],
        small["cal"],
        target="cpu",
        runtime=runtime,
        workdir=tmp_path,
        progress=False,
        log=print,
    )
    qdq = q.quantize(tmp_path / "cpu.onnx")
    graph = onnx.load(str(qdq)).graph
    inits = _initializers(qdq)
    q_zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert q_zero_points and all(z.dtype == np.uint8 for z in q_zero_points)
    conv_weights = [n.input[1] for n in graph.node if n.op_type == "Conv"]
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights]
    assert len(weight_dq) == len(conv_weights)
    for dq in weight_dq:
        weight, scale, zero = (inits[i] for i in dq.input)
        assert weight.dtype == np.int8 and not zero.any()  # symmetric
        assert scale.shape == (weight.shape[0],)  # one scale per output channel
        # 7-bit weights for ONNX Runtime: its U8S8 kernels saturate on x86 CPUs without VNNI
        assert np.abs(weight.astype(int)).max() <= (64 if runtime == "onnxruntime" else 127)
        if runtime == "openvino":
            assert np.abs(weight.astype(int)).max() > 64


def test_bench_quant_flags_come_from_its_settings(capsys):
    from cvserve.builders import bench_quant

    with pytest.raises(SystemExit) as info:
        bench_quant.main(["--runtimes", "tvm"])
    assert info.value.code == 2 and "choose from openvino,onnxruntime" in capsys.readouterr().err
    s = bench_quant.BenchQuantSettings(quantizers=("nncf",), tasks=())
    assert s.served is None and s.runtimes == ("openvino", "onnxruntime")


def test_bench_quant_rows_are_builds_with_the_builds_default_batch(tmp_path):
    from cvserve.builders import bench_quant
    from cvserve.builders import triton_config as tc

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")

    def row(**flags):
        args = bench_quant.BenchQuantSettings(tasks=(), **flags)
        return bench_quant.build_settings(
            args, checkpoint=weights, name="m", labels=labels, runtime="onnxruntime", precision="int8"
        )

    default = row()
    assert default.serving.batching.profile == tc.Batching().profile  # the build's, not a bench's own
    assert default.serving.plan().runtime == "onnxruntime" and default.quantization.precision == "int8"
    assert row(max_batch_size=4).serving.batching.profile.max_batch == 4
