"""INT8 builds of real labelled tasks, gated on accuracy, and one served by the real Triton server.

The classifiers are trained once for this module (:mod:`cvserve.builders.datasets`): a small CNN on
scikit-learn's digits and one on scikit-image's lfw_subset (faces / not faces). Their images reach the
network through the served preprocessing for training, calibration and the gate; calibration and
held-out sets are disjoint and the held-out set has ground truth.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from cvserve import hardware
from cvserve.builders import accuracy, datasets, quantize, quantizers
from cvserve.builders import precision as prec
from cvserve.builders import runtime as rt
from cvserve.builders import triton_config as tc
from cvserve.builders.profile import EngineProfile
from cvserve.errors import BuildError, UserInputError
from cvserve.loadtests.metrics import network_info
from cvserve.server import ServerSettings, TritonServer
from tests.helpers import tree_digest

pytestmark = pytest.mark.slow  # trains two classifiers (~1 min) and starts Triton

NAME = "digits"


def _onnx(task: datasets.LabelledTask, folder: Path) -> Path:
    from cvserve.builders import checkpoint, torch2onnx

    model = checkpoint.load_model(task.checkpoint, None)
    return torch2onnx.export(model, folder / f"{task.name}.onnx", input_shape=task.spec.tensor_shape).path


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[datasets.LabelledTask, Path]:
    folder = tmp_path_factory.mktemp("digits")
    task = datasets.make_digits(folder)
    return task, _onnx(task, folder)


@pytest.fixture(scope="module")
def lfw(tmp_path_factory) -> tuple[datasets.LabelledTask, Path]:
    folder = tmp_path_factory.mktemp("lfw")
    task = datasets.make_lfw(folder)
    return task, _onnx(task, folder)


def _stage(
    task: datasets.LabelledTask, *, target: str = "cpu", runtime: str = "auto", **kw
) -> tuple[quantize.QuantizeSettings, quantize.Context]:
    """The stage's settings (INT8 by default, the task's data) and its context, decided as a build does."""
    base = dict(
        precision="int8",
        calibration=task.calibration,
        validation=task.validation,
        validation_labels=task.labels,
    )
    settings = quantize.QuantizeSettings(**{**base, **kw})
    plan = rt.decide(target=target, runtime=runtime)
    context = quantize.Context(
        numerics=prec.decide(settings.precision, plan, float_parts=settings.float_parts),
        plan=plan,
        preprocess=task.spec,
        profile=EngineProfile.for_batching(16, (8,)),
        class_names=task.class_names,
        progress=False,
    )
    return settings, context


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_lfw_int8_keeps_99_percent_of_fp32_accuracy(lfw, tmp_path, runtime):
    task, fp32 = lfw
    result = quantize.run(*_stage(task, runtime=runtime), fp32, tmp_path, log=lambda _m: None)
    metrics, gate = result.accuracy, result.accuracy["gate"]
    assert metrics["top1_accuracy_reference"] >= 0.9  # the fixture trained a real classifier
    assert gate["decision"] == "passed" and gate["metric"] == "top1_accuracy_ratio"
    assert metrics["top1_accuracy"] >= 0.99 * metrics["top1_accuracy_reference"]
    assert gate["images"] == task.held_out == metrics["held_out_images"]
    assert result.accuracy["measured_with"] == runtime
    assert result.quantization["validation"] == {
        "images": task.held_out,
        "source": str(task.validation),
        "labels": True,
    }
    assert result.throughput["runtime"] == runtime and result.throughput["batch"] == 8


def test_digits_int8_report_entries(digits, tmp_path):
    task, fp32 = digits
    result = quantize.run(*_stage(task), fp32, tmp_path, log=lambda _m: None)
    assert result.precision == "int8" and result.network.suffix == ".onnx"
    q = result.quantization
    assert q["method"] == "nncf" and q["library"].startswith("nncf ")  # the default for OpenVINO
    assert q["calibration"]["images"] == 200 and q["max_fallback_layers"] == 0  # 4 layers: no tenth to spare
    metrics = result.accuracy
    assert metrics["top1_accuracy"] >= 0.99 * metrics["top1_accuracy_reference"]
    assert "top1_accuracy_drop_points" in metrics and metrics["by_reference_confidence"]
    assert set(result.throughput) >= {"batch", "runtime", "img_s", "reference_fp32_img_s", "speedup", "cpu"}
    json.dumps([result.quantization, result.accuracy, result.throughput])  # the report is plain JSON


def test_fallback_keeps_the_fewest_layers_that_pass_and_lists_them(digits, tmp_path):
    task, fp32 = digits
    # Without labels, 99.5 % of the confident answers: on the AVX2 machine these tests run on, all-INT8
    # ort-minmax in OpenVINO keeps 0.961 of them, one layer in float 0.998.
    gate = accuracy.GateSettings(max_accuracy_drop=0.005)
    stage = _stage(task, validation_labels=None, gate=gate, max_fallback_layers=3, quantizer="ort-minmax")
    result = quantize.run(*stage, fp32, tmp_path, log=lambda _m: None)
    q = result.quantization
    assert result.accuracy["gate"]["decision"] == "passed"
    assert result.accuracy["gate"]["rule"].startswith("agreement where FP32 is confident")
    if q["fallback"] is None:  # a CPU whose integer kernels keep every answer needs no fallback
        assert q["excluded_layers"] == []
        return
    steps = q["fallback"]["steps"]
    assert [s["excluded"] for s in steps] == list(range(len(steps)))  # one more layer at each step
    assert steps[-1]["decision"] == "passed" and {s["decision"] for s in steps[:-1]} == {"failed"}
    assert len(q["excluded_layers"]) == len(steps) - 1 >= 1
    assert q["excluded_layers"] == list(q["fallback"]["ranking"])[: len(q["excluded_layers"])]  # best first
    assert set(q["excluded_layers"]).isdisjoint(quantizers.quantized_layers(result.network))


def test_fallback_stops_at_its_limit_with_one_line(digits, tmp_path):
    task, fp32 = digits
    gate = accuracy.GateSettings(max_accuracy_drop=0.0, min_top5_overlap=1.0)  # a perfect copy only
    stage = _stage(task, validation_labels=None, gate=gate, max_fallback_layers=2, quantizer="ort-minmax")
    with pytest.raises(BuildError) as err:
        quantize.run(*stage, fp32, tmp_path, log=lambda _m: None)
    message = str(err.value)
    assert message.startswith("accuracy gate failed: ") and "\n" not in message
    assert re.search(r" on \d+ held-out images ", message)  # metric, value, threshold and image count
    assert message.endswith(
        "with 2 layer(s) kept in float (the limit); nothing was written to the repository"
    )


def test_too_few_confident_images_refuses_with_one_line(digits, tmp_path):
    task, fp32 = digits
    stage = _stage(task, validation_labels=None, gate=accuracy.GateSettings(min_confident_images=10_000))
    with pytest.raises(BuildError) as err:
        quantize.run(*stage, fp32, tmp_path, log=lambda _m: None)
    message = str(err.value)
    assert message.startswith("accuracy gate refused: only ") and "needs at least 10000" in message
    assert "\n" not in message


def test_overlapping_calibration_and_validation_is_refused(digits, tmp_path):
    task, fp32 = digits
    with pytest.raises(UserInputError, match="also calibration images"):
        quantize.run(*_stage(task, validation=task.calibration, validation_labels=None), fp32, tmp_path)


def test_fp16_on_cpu_warns_and_passes_the_gate(digits, tmp_path):
    task, fp32 = digits
    logs: list[str] = []
    result = quantize.run(*_stage(task, precision="fp16"), fp32, tmp_path, log=logs.append)
    assert any("no speed-up" in line for line in logs)
    assert result.quantization["method"] == "fp16" and result.accuracy["gate"]["decision"] == "passed"


def test_gpu_target_returns_the_symmetric_qdq_onnx_and_builds_no_engine(digits, tmp_path):
    task, fp32 = digits
    stage = _stage(task, target="gpu", runtime="tensorrt", calibration_samples=64)
    result = quantize.run(*stage, fp32, tmp_path, log=lambda _m: None)
    assert result.network.suffix == ".onnx" and not list(tmp_path.rglob("*.plan"))
    assert result.throughput is None and result.quantization["activations"] == "int8 symmetric"
    assert result.accuracy["measured_with"].startswith(quantize.SIMULATED)


# -- through the CLI and the real Triton server (the pipeline's current call) -----------------------------
def _cli(task: datasets.LabelledTask, repo: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "cvserve", "build", str(task.checkpoint), "--name", NAME, "-r", str(repo)]
    args += ["--input-size", "8", "--resize", "0", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]
    args += ["--precision", "int8", "--calibration", str(task.calibration), "--calibration-samples", "100"]
    # ONNX Runtime serves, as the pipeline's current call gates in ONNX Runtime
    # --batch-requests: this build's single-layout model lets one execution take several requests
    args += ["--runtime", "onnxruntime", "--max-batch-size", "8", "--batch-requests"]
    args += ["--preferred-batch-sizes", "4,8"]
    return subprocess.run([*args, "--no-progress", *extra], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def built(digits, tmp_path_factory):
    task, _ = digits
    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    proc = _cli(task, repo, "--validation", str(task.validation), "--validation-labels", str(task.labels))
    assert proc.returncode == 0, proc.stderr
    return task, repo, json.loads((repo / NAME / "1" / "build_report.json").read_text())


def test_cli_writes_the_report(built):
    _, repo, report = built
    batcher = tc.parse((repo / NAME / "config.pbtxt").read_text()).dynamic_batching
    assert list(batcher.preferred_batch_size) == [4, 8]  # with --batch-requests, as asked
    assert report["network"]["precision"] == "int8"
    assert report["quantization"]["calibration"]["images"] == 100
    assert report["accuracy"]["gate"]["decision"] == "passed"
    assert report["throughput"]["batch"] == 8


def test_triton_serves_the_gated_network(built):
    """Triton's answers on every held-out digit score the accuracy the gate measured, within the gate's
    own allowance: the gate feeds the core network numpy-normalised pixels, the served graph normalises
    in-graph, and the first QuantizeLinear can round a grey level to the neighbouring step (the digits
    have only 17 grey levels, so a whole level moves at once: 2 of 597 answers differed here)."""
    task, repo, report = built
    images = sorted(Path(task.validation).glob("*.png"))
    truth = accuracy.read_labels(task.labels, [p.name for p in images])
    settings = ServerSettings(repository=repo, grpc_port=0, http_port=0, metrics_port=0, exit_timeout_s=5)
    got = []
    with TritonServer(settings) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for start in range(0, len(images), 8):  # --max-batch-size 8
            chunk = [p.read_bytes() for p in images[start : start + 8]]
            inp = grpcclient.InferInput("IMAGE", [len(chunk), 1], "BYTES")
            inp.set_data_from_numpy(np.array(chunk, dtype=np.object_).reshape(-1, 1))
            got += client.infer(NAME, [inp]).as_numpy("CLASS_INDEX")[:, 0].tolist()
        client.close()
    served = float(np.mean(np.asarray(got) == truth))
    assert abs(served - report["accuracy"]["top1_accuracy"]) <= 0.01


def test_refused_gate_fails_with_one_line_and_leaves_the_repository_unchanged(built, tmp_path):
    task, repo, _ = built
    few = tmp_path / "few"
    few.mkdir()
    for image in sorted(Path(task.validation).glob("*.png"))[:20]:  # 20 held-out images, no labels
        (few / image.name).write_bytes(image.read_bytes())
    before = tree_digest(repo)
    proc = _cli(task, repo, "--validation", str(few))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert "accuracy gate refused: only" in error and "of the 20 held-out images" in error
    assert tree_digest(repo) == before


# -- bf16: an explicit, gated precision on CPUs with native bf16 (docs/hardware.md) ------------------------
NATIVE_BF16 = hardware.cpu().native_bf16
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")


@needs_bf16
@pytest.mark.parametrize(("precision", "quantizer"), [("bf16", "auto"), ("int8", "nncf")])
def test_bf16_float_layers_are_gated_and_measured_like_int8(digits, tmp_path, precision, quantizer):
    task, fp32 = digits
    stage = _stage(task, precision=precision, float_parts="bf16", quantizer=quantizer)
    result = quantize.run(*stage, fp32, tmp_path, log=lambda _m: None)
    gate, metrics = result.accuracy["gate"], result.accuracy
    assert gate["decision"] == "passed" and gate["metric"] == "top1_accuracy_ratio"
    assert metrics["top1_accuracy"] >= 0.99 * metrics["top1_accuracy_reference"]
    assert result.throughput["float_parts"] == "bf16" and result.throughput["speedup"] > 0
    if precision == "bf16":
        assert result.network == fp32 and result.quantization["method"] == "bf16"


def _bf16_cli(task: datasets.LabelledTask, repo: Path) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "cvserve", "build", str(task.checkpoint), "--name", NAME, "-r", str(repo)]
    args += ["--input-size", "8", "--resize", "0", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]
    args += [
        "--precision",
        "bf16",
        "--validation",
        str(task.validation),
        "--calibration",
        str(task.calibration),
    ]
    args += ["--validation-labels", str(task.labels), "--no-progress"]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


@needs_bf16
def test_bf16_build_is_served_in_bf16_and_says_so(digits, tmp_path):
    task, _ = digits
    repo = tmp_path / "repo"
    proc = _bf16_cli(task, repo)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((repo / NAME / "1" / "build_report.json").read_text())
    assert report["network"]["precision"] == "bf16" and report["network"]["float_parts"] == "bf16"
    assert set(report["network"]["layer_precisions"]) == {"bf16"}
    assert report["accuracy"]["gate"]["decision"] == "passed" and report["throughput"]["speedup"] > 0
    assert report["hardware"]["native_bf16"] is True
    settings = ServerSettings(repository=repo, grpc_port=0, http_port=0, metrics_port=0, exit_timeout_s=5)
    with TritonServer(settings) as server:
        info = network_info(server.metrics_url, NAME)
    assert info == [{"model": NAME, "version": "1", "runtime": "openvino", "precision": "bf16"}]


@pytest.mark.skipif(NATIVE_BF16, reason="this CPU has native bf16: the build is allowed here")
def test_bf16_build_is_refused_in_one_line_where_the_cpu_lacks_it(digits, tmp_path):
    task, _ = digits
    repo = tmp_path / "repo"
    proc = _bf16_cli(task, repo)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "native bf16 (AVX512-BF16 or AMX)" in proc.stderr.strip().splitlines()[-1]
    assert not repo.exists() or not any(repo.iterdir())
