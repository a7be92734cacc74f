"""Quantized builds of a real labelled task: a small CNN trained on scikit-learn's digits in the fixture.

The digits are written as PNG files and reach the network through the served preprocessing, for
training as well as for calibration and the accuracy gate (:func:`cvserve.builders.bench_quant.make_digits`,
shared with the benchmark). Calibration and held-out sets are disjoint
slices of the dataset; the held-out set comes with ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cvserve.builders import quantize
from cvserve.builders.bench_quant import DIGITS_SPEC, make_digits
from cvserve.builders.pipeline import BuildSettings, build
from cvserve.errors import BuildError, MissingDependencyError
from tests.helpers import tree_digest

SPEC = DIGITS_SPEC
N_CAL = 200


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    """TorchScript checkpoint, calibration folder, held-out folder and its labels file (see make_digits)."""
    d = make_digits(tmp_path_factory.mktemp("digits"), n_cal=N_CAL)
    return {**d, "held_out": len(d["labels"].read_text().splitlines())}


def _settings(digits: dict, repository: Path, **kw) -> BuildSettings:
    base = dict(
        checkpoint=digits["checkpoint"],
        name="digits",
        repository=repository,
        preprocess=SPEC,
        calibration=digits["calibration"],
        validation=digits["validation"],
        validation_labels=digits["labels"],
        precision="int8",
        progress=False,
    )
    return BuildSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def int8_build(digits, tmp_path_factory):
    repository = tmp_path_factory.mktemp("repo") / "model_repository"
    logs: list[str] = []
    result = build(_settings(digits, repository), log=logs.append)
    return result, logs


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_int8_accuracy_within_half_a_point_of_fp32(int8_build, digits):
    result, _ = int8_build
    acc = result.report["accuracy"]
    assert acc["held_out_images"] == digits["held_out"]
    assert acc["top1_accuracy_reference"] > 0.9  # the fixture trained a real classifier
    assert acc["top1_accuracy"] >= acc["top1_accuracy_reference"] - 0.005
    assert acc["top1_agreement"] >= 0.99


def test_cpu_int8_network_is_qdq_with_uint8_activations_and_per_channel_int8_weights(int8_build):
    result, _ = int8_build
    network = result.repository / "digits_network" / "1" / "model.onnx"
    graph = onnx.load(str(network)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    inits = _initializers(network)
    q_zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert q_zero_points and all(z.dtype == np.uint8 for z in q_zero_points)
    conv_weights = [n.input[1] for n in graph.node if n.op_type == "Conv"]
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights]
    assert len(weight_dq) == len(conv_weights)
    for dq in weight_dq:
        weight, scale, zero = (inits[i] for i in dq.input)
        assert weight.dtype == np.int8 and not zero.any()  # symmetric
        assert scale.shape == (weight.shape[0],)  # one scale per output channel


def test_build_report_json_and_markdown(int8_build):
    result, _ = int8_build
    folder = result.repository / "digits" / "1"
    report = json.loads((folder / "build_report.json").read_text())
    assert report["precision"] == "int8" and report["target"] == "cpu"
    assert report["calibration"] == {"method": "minmax", "samples": N_CAL, "symmetric_activations": False}
    for key in (
        "top1_agreement",
        "top5_overlap",
        "top1_accuracy",
        "top1_accuracy_reference",
        "held_out_images",
    ):
        assert key in report["accuracy"]
    assert isinstance(report["excluded_layers"], list)
    assert set(report["throughput"]) >= {"batch", "img_s", "reference_fp32_img_s"}
    assert report["throughput"]["img_s"] > 0 and report["size_bytes"] > 0 and len(report["sha256"]) == 64
    md = (folder / "build_report.md").read_text()
    assert "top-1 agreement" in md and report["sha256"] in md


def test_gate_failure_names_the_metric_and_leaves_the_repository_unchanged(int8_build, digits, monkeypatch):
    result, _ = int8_build
    before = tree_digest(result.repository)
    monkeypatch.setenv("CVSERVE_MAX_EXCLUDED_LAYERS", "1")
    with pytest.raises(BuildError) as err:
        build(_settings(digits, result.repository, max_accuracy_drop=0.0), log=lambda _m: None)
    message = str(err.value)
    assert "accuracy gate failed" in message and "missed by" in message
    assert "Nothing was written to the repository" in message
    assert tree_digest(result.repository) == before


def test_overlapping_calibration_and_validation_is_refused(digits, tmp_path):
    from cvserve.errors import UserInputError

    with pytest.raises(UserInputError, match="also calibration images"):
        build(
            _settings(digits, tmp_path / "repo", validation=digits["calibration"], validation_labels=None),
            log=lambda _m: None,
        )
    assert not (tmp_path / "repo").exists()


@pytest.fixture(scope="module")
def digits_onnx(digits, tmp_path_factory) -> Path:
    from cvserve.builders import checkpoint, torch2onnx

    model = checkpoint.load_model(digits["checkpoint"], None)
    out = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    return torch2onnx.export(model, out, input_shape=SPEC.tensor_shape).path


def test_gpu_target_without_tensorrt_fails_first_naming_the_extra(digits, digits_onnx, tmp_path):
    settings = _settings(digits, tmp_path / "repo", target="gpu")
    with pytest.raises(MissingDependencyError, match=r"pip install 'cvserve\[tensorrt\]'"):
        quantize.run_quantization(
            onnx_fp32=digits_onnx, workdir=tmp_path, settings=settings, log=lambda _m: None
        )
    assert not list(tmp_path.glob("*.onnx")) and not list(
        tmp_path.glob("*.plan")
    )  # nothing calibrated, no engine


def test_gpu_target_quantizes_to_symmetric_qdq_for_tensorrt(digits, digits_onnx, tmp_path):
    settings = _settings(digits, tmp_path / "repo", target="gpu", calibration_samples=64)
    data = quantize.load_data(settings, None, lambda _m: None)
    reference = quantize.logits(digits_onnx, data.val_tensors)
    qdq, entries = quantize.int8(digits_onnx, tmp_path, settings, data, reference, lambda _m: None)
    assert entries["accuracy"]["top1_agreement"] >= 0.98
    graph = onnx.load(str(qdq)).graph
    inits = _initializers(qdq)
    zero_points = [
        inits[n.input[2]] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
    ]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # zero point 0
    biases = [n.input[2] for n in graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert biases and all(inits[b].dtype == np.float32 for b in biases)  # TensorRT fuses float bias


def test_gpu_target_on_onnxruntime_serves_the_qdq_onnx_through_the_tensorrt_accelerator(digits, tmp_path):
    """--target gpu --runtime onnxruntime: no engine is built here (no TensorRT needed); Triton's
    onnxruntime backend builds it on the GPU node from the symmetric Q/DQ ONNX."""
    from cvserve.builders import triton_config as tc

    repository = tmp_path / "model_repository"
    batching = tc.Batching(max_batch_size=16, preferred_batch_sizes=(4, 8))
    settings = _settings(
        digits, repository, target="gpu", runtime="onnxruntime", calibration_samples=64, batching=batching
    )
    result = build(settings, log=lambda _m: None)
    net = repository / "digits_network"
    cfg = tc.parse((net / "config.pbtxt").read_text())
    assert (cfg.platform, cfg.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert [g.kind for g in cfg.instance_group] == [cfg.instance_group[0].KIND_GPU]
    (accelerator,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    params = dict(accelerator.parameters)
    assert accelerator.name == "tensorrt" and params["precision_mode"] == "INT8"
    shapes = {k: params[f"trt_profile_{k}_shapes"] for k in ("min", "opt", "max")}
    assert shapes == {"min": "input:1x3x8x8", "opt": "input:8x3x8x8", "max": "input:16x3x8x8"}
    assert params["trt_engine_cache_enable"] == "1" and params["trt_timing_cache_enable"] == "1"
    assert result.report["tensorrt_accelerator"] == params
    report_md = (repository / "digits" / str(result.version) / "build_report.md").read_text()
    assert "| precision_mode | INT8 |" in report_md
    served = net / str(result.version) / "model.onnx"
    assert not list(net.rglob("*.plan"))
    inits = _initializers(served)
    graph = onnx.load(str(served)).graph
    zero_points = [
        inits[n.input[2]] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
    ]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert result.report["accuracy"]["measured_with"].startswith("onnxruntime-cpu")


def test_fp16_on_cpu_warns_and_passes_the_gate(digits, digits_onnx, tmp_path):
    logs: list[str] = []
    settings = _settings(digits, tmp_path / "repo", precision="fp16")
    result = quantize.run_quantization(
        onnx_fp32=digits_onnx, workdir=tmp_path, settings=settings, log=logs.append
    )
    assert any("no speed-up" in line for line in logs)
    assert any(t.dtype == np.float16 for t in _initializers(result.network_file).values())
    assert result.report["accuracy"]["top1_agreement"] >= 0.99


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_methods(digits, digits_onnx, tmp_path, method):
    settings = _settings(digits, tmp_path / "repo", calibration_method=method, calibration_samples=64)
    result = quantize.run_quantization(
        onnx_fp32=digits_onnx, workdir=tmp_path, settings=settings, log=lambda _m: None
    )
    assert result.report["calibration"]["method"] == method
    assert result.report["calibration"]["samples"] == 64
    assert (
        result.report["accuracy"]["top1_accuracy"]
        >= result.report["accuracy"]["top1_accuracy_reference"] - 0.02
    )


def test_sensitivity_ranks_every_quantized_layer_and_exclusion_keeps_it_float(digits, digits_onnx, tmp_path):
    settings = _settings(digits, tmp_path / "repo", calibration_samples=32)
    data = quantize.load_data(settings, None, lambda _m: None)
    prepared = quantize.prepare(digits_onnx, tmp_path / "prepared.onnx", lambda _m: None)
    cache = quantize.calibrate(
        prepared, data.cal_tensors, method="minmax", symmetric=False, workdir=tmp_path, settings=settings
    )
    full = quantize.quantize(prepared, cache, tmp_path / "q.onnx", target="cpu", method="minmax")
    layers = quantize.quantized_layers(full)
    assert len(layers) >= 4  # 3 convolutions and the classifier
    scores = quantize.sensitivity(prepared, cache, layers, data, settings, tmp_path)
    assert set(scores) == set(layers) and all(s >= 0 for s in scores.values())
    worst = max(scores, key=scores.get)
    partial = quantize.quantize(
        prepared, cache, tmp_path / "p.onnx", target="cpu", method="minmax", nodes_to_exclude=[worst]
    )
    assert worst not in quantize.quantized_layers(partial)
    assert set(quantize.quantized_layers(partial)) == set(layers) - {worst}
