"""The build pipeline end to end on small models (no server): every input kind, the report, the files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cvserve.builders import triton_config as tc
from cvserve.builders.pipeline import (
    BuildSettings,
    ServingOptions,
    build,
    network_stages,
    sha256,
)
from cvserve.builders.preprocessing import PreprocessSpec
from cvserve.builders.quantize import QuantizeSettings
from cvserve.errors import UserInputError

SPEC = PreprocessSpec(input_size=(64, 64), resize_shorter=72)


class TinyNet(torch.nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, classes),
        )

    def forward(self, x):
        return self.body(x)


def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    net = tiny_net().eval()
    torch.save(net.state_dict(), d / "tiny.pth")
    torch.jit.script(net).save(str(d / "tiny.pt"))
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(net, (torch.randn(2, 3, 64, 64),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(d / "tiny.pt2"))
    (d / "labels.txt").write_text("ant\nbee\ncat\ndog\n")
    return d


def _settings(checkpoint, repo, **serving) -> BuildSettings:
    batching = serving.pop("batching", tc.Batching(max_batch_size=8))
    return BuildSettings(
        checkpoint=checkpoint,
        name="tiny",
        repository=repo,
        preprocess=SPEC,
        serving=ServingOptions(top_k=3, batching=batching, **serving),
    )


@pytest.mark.slow  # three full builds (exports, verification): about 12 s together
@pytest.mark.parametrize(
    ("file", "arch", "kind", "exporter"),
    [
        ("tiny.pth", "tests.unit.test_pipeline:tiny_net", "state_dict", "dynamo"),
        ("tiny.pt", None, "torchscript", "torchscript"),
        ("tiny.pt2", None, "exported_program", "dynamo"),
    ],
)
def test_every_input_kind_builds_a_verified_single_layout(checkpoints, tmp_path, file, arch, kind, exporter):
    repo = tmp_path / "repo"
    settings = _settings(checkpoints / file, repo)
    settings.arch, settings.labels = arch, checkpoints / "labels.txt"
    result = build(settings, log=lambda _m: None)
    report = result.report
    assert report["schema"] == 3 and report["version"] == 1
    assert (report["checkpoint"]["kind"], report["network"]["exporter"]) == (kind, exporter)
    assert report["checkpoint"]["sha256"] == sha256(checkpoints / file)
    assert report["network"]["layout"] == "single" and report["network"]["runtime"] == "openvino"
    # FP32 on every CPU: read back from the compiled network, every compute layer in f32
    assert report["network"]["float_parts"] == "f32" and set(report["network"]["layer_precisions"]) == {"f32"}
    assert report["hardware"]["model"] and "native_bf16" in report["hardware"]
    assert report["verification"]["ok"] and report["network"]["num_classes"] == 4
    served = report["verification"]["served"]  # the served graph in OpenVINO against the float reference
    assert served["top1_equal"] == served["images"] and served["max_score_diff"] <= served["tolerance"]
    assert report["engine_profile"] == {"schema": 1, "min_batch": 1, "opt_batch": 8, "max_batch": 8}
    assert report["quantization"] is None and report["accuracy"] is None
    v = repo / "tiny" / "1"
    names = {p.name for p in v.iterdir()}
    assert {"model.py", "model.xml", "model.bin", "cvserve_preprocessing.py", "cvserve_runners.py",
            "cvserve_hardware.py", "cvserve_signals.py", "reference_stats.json"} <= names  # fmt: skip
    assert PreprocessSpec.load(v) == SPEC
    assert [p.name for p in repo.iterdir()] == ["tiny"]  # one model: no ensemble, no postprocess
    saved = json.loads((v / "build_report.json").read_text())
    assert saved["network"]["sha256"] == report["network"]["sha256"]
    assert {
        "load",
        "export",
        "cleanup",
        "verify",
        "wrap",
        "engine",
        "check",
        "admission",
        "reference",
        "total",
    } <= set(saved["timings_s"])
    assert "write" in result.timings_s  # the report is written inside that stage
    assert (v / "build_report.md").read_text().startswith("# tiny version 1")
    cfg = tc.parse((repo / "tiny" / "config.pbtxt").read_text())
    assert [(o.name, list(o.dims)) for o in cfg.output] == [
        ("CLASS_INDEX", [3]),
        ("SCORE", [3]),
        ("FEATURES", [16]),
    ]
    reference = json.loads((v / "reference_stats.json").read_text())
    assert (
        reference["images"] > 0
        and reference["feature_dims"] == 16
        and len(reference["histograms"]["classes"]) == 4
    )
    assert json.loads(cfg.parameters["labels"].string_value) == ["ant", "bee", "cat", "dog"]
    assert cfg.parameters[tc.PRECISION_PARAMETER].string_value == "f32"
    # The queue bound is resolved to a number from the measured throughput, in the config and the report.
    admission = saved["admission"]
    assert admission["throughput"]["img_s"] > 0 and admission["throughput"]["batch"] == 1  # one request each
    bound = cfg.dynamic_batching.default_queue_policy.max_queue_size
    assert bound == admission["max_queue_size"] == saved["batching"]["max_queue_size"] >= 8


def test_served_graph_runs_pixels_to_top_k_like_the_float_reference(checkpoints, tmp_path):
    """The uint8-in/top-k-out graph against numpy normalisation + the bare network + softmax + top-k."""
    from cvserve.builders import served_graph, torch2onnx, verify
    from cvserve.builders.checkpoint import load_model
    from cvserve.builders.preprocessing import pixels
    from cvserve.builders.runners import open_runner
    from cvserve.builders.samples import sample_images

    spec = PreprocessSpec(input_size=(64, 64), resize_shorter=72, color="BGR")
    net = torch2onnx.export(
        load_model(checkpoints / "tiny.pt"), tmp_path / "n.onnx", input_shape=spec.tensor_shape
    )
    graph = served_graph.wrap(net.path, tmp_path / "served.onnx", spec, top_k=10)
    assert graph.top_k == 4  # capped at the number of classes
    batch = np.stack([pixels(p.read_bytes(), spec) for p in sample_images().values()])
    ref_index, ref_score = verify.reference_topk(net.path, batch, spec, 4)
    for runtime in ("onnxruntime", "openvino"):
        runner = open_runner(graph.path, runtime)
        assert runner.precision == "f32"  # pinned, whatever the CPU's default
        out = runner.run(batch)
        assert out["CLASS_INDEX"].dtype == np.int64 and out["SCORE"].dtype == np.float32
        np.testing.assert_array_equal(out["CLASS_INDEX"][:, 0], ref_index[:, 0])
        np.testing.assert_allclose(out["SCORE"], ref_score, atol=1e-5)


def test_ensemble_layout_with_native_onnxruntime(checkpoints, tmp_path):
    repo = tmp_path / "repo"
    settings = _settings(checkpoints / "tiny.pt", repo, layout="ensemble", runtime="onnxruntime")
    settings.serving.execution_env = "$$TRITON_MODEL_DIRECTORY/../env.tar.gz"
    build(settings, log=lambda _m: None)
    assert sorted(p.name for p in repo.iterdir()) == ["tiny", "tiny_network", "tiny_preprocess"]
    net = tc.parse((repo / "tiny_network" / "config.pbtxt").read_text())
    assert net.platform == "onnxruntime_onnx"
    assert sorted(p.name for p in (repo / "tiny_network" / "1").iterdir()) == [
        "config.pbtxt.build",
        "model.onnx",
    ]
    pre = tc.parse((repo / "tiny_preprocess" / "config.pbtxt").read_text())
    assert pre.parameters["EXECUTION_ENV_PATH"].string_value == "$$TRITON_MODEL_DIRECTORY/../env.tar.gz"
    assert (repo / "tiny_preprocess" / "1" / "model.py").exists()
    ensemble = tc.parse((repo / "tiny" / "config.pbtxt").read_text())
    # no labels given: the class indices are the labels
    assert json.loads(ensemble.parameters["labels"].string_value) == ["0", "1", "2", "3"]
    report = json.loads((repo / "tiny" / "1" / "build_report.json").read_text())
    # The network's queue bound: derived from its measured throughput, written as a number everywhere.
    admission = report["admission"]
    assert admission["throughput"]["runtime"] == "onnxruntime" and admission["throughput"]["img_s"] > 0
    bound = net.dynamic_batching.default_queue_policy.max_queue_size
    assert bound == admission["max_queue_size"] == report["batching"]["max_queue_size"] >= 8


def test_the_stages_up_to_the_network_stand_alone(checkpoints, tmp_path):
    settings = BuildSettings(
        checkpoint=checkpoints / "tiny.pt",
        name="tiny",
        labels=checkpoints / "labels.txt",
        preprocess=SPEC,
        quantization=QuantizeSettings(precision="int8"),
    )
    front = network_stages(settings, tmp_path, lambda _m: None, quantize=False)
    assert front.network == front.cleaned.path and front.network.parent == tmp_path and front.network.exists()
    assert front.quantization == {}  # stopped before quantize, whatever the precision asks
    assert front.labels == ["ant", "bee", "cat", "dog"] and front.spec == SPEC
    assert front.model.kind == "torchscript" and front.checked.images == len(front.images) > 0


def test_gpu_target_fails_before_building_without_tensorrt(checkpoints, tmp_path):
    """No TensorRT here: the engine stage names the extra, and nothing reaches the repository."""
    import importlib.util

    from cvserve.errors import MissingDependencyError

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    repo = tmp_path / "repo"
    with pytest.raises(MissingDependencyError, match=r"cvserve\[tensorrt\]"):
        build(_settings(checkpoints / "tiny.pt", repo, target="gpu"), log=lambda _m: None)
    assert not repo.exists() or not any(repo.iterdir())


def test_request_batching_flags_on_the_single_layout_fail_before_any_work(checkpoints, tmp_path):
    batching = tc.Batching(max_batch_size=8, preferred_batch_sizes=(4, 8))
    with pytest.raises(UserInputError, match=r"--preferred-batch-sizes .*add --batch-requests"):
        _settings(checkpoints / "tiny.pt", tmp_path / "repo", batching=batching)
    batching.batch_requests = True  # or the ensemble layout, where only pixels are batched
    assert _settings(checkpoints / "tiny.pt", tmp_path / "repo", batching=batching)
    assert _settings(checkpoints / "tiny.pt", tmp_path / "repo", layout="ensemble", runtime="onnxruntime",
                     batching=tc.Batching(max_batch_size=8, preferred_batch_sizes=(4, 8)))  # fmt: skip
