"""The build pipeline end to end on small models (no server): every input kind, the report, the files."""

from __future__ import annotations

import json

import pytest
import torch

from cvserve.builders import triton_config as tc
from cvserve.builders.pipeline import BuildSettings, build
from cvserve.builders.preprocessing import PreprocessSpec

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


@pytest.mark.parametrize(
    ("file", "arch", "kind", "exporter"),
    [
        ("tiny.pth", "tests.unit.test_pipeline:tiny_net", "state_dict", "dynamo"),
        ("tiny.pt", None, "torchscript", "torchscript"),
        ("tiny.pt2", None, "exported_program", "dynamo"),
    ],
)
def test_every_input_kind_builds_a_verified_pipeline(checkpoints, tmp_path, file, arch, kind, exporter):
    repo = tmp_path / "repo"
    result = build(
        BuildSettings(
            checkpoint=checkpoints / file,
            arch=arch,
            name="tiny",
            labels=checkpoints / "labels.txt",
            repository=repo,
            preprocess=SPEC,
            top_k=3,
            batching=tc.Batching(max_batch_size=8),
        ),
        log=lambda _m: None,
    )
    report = result.report
    assert (report["source_kind"], report["exporter"]) == (kind, exporter)
    assert report["verification"]["ok"] and report["num_classes"] == 4
    assert report["cleanup"]["nodes_after"] <= report["cleanup"]["nodes_before"]
    v = repo / "tiny_network" / "1"
    assert (v / "model.onnx").exists() and (v / "model.py").exists()
    assert PreprocessSpec.load(repo / "tiny_preprocess" / "1") == SPEC
    assert (repo / "tiny_postprocess" / "1" / "labels.txt").read_text().split() == [
        "ant",
        "bee",
        "cat",
        "dog",
    ]
    saved = json.loads((repo / "tiny" / "1" / "build_report.json").read_text())
    assert saved["sha256"] == report["sha256"] and saved["version"] == 1
    assert {"load", "export", "cleanup", "verify", "total"} <= set(saved["timings_s"])
    assert "write" in result.timings_s  # the report is written inside that stage
    post = tc.parse((repo / "tiny_postprocess" / "config.pbtxt").read_text())
    assert [list(o.dims) for o in post.output] == [[3], [3], [3]]


def test_native_onnxruntime_runtime_writes_no_python_network(checkpoints, tmp_path):
    repo = tmp_path / "repo"
    build(
        BuildSettings(
            checkpoint=checkpoints / "tiny.pt",
            name="tiny",
            repository=repo,
            preprocess=SPEC,
            runtime="onnxruntime",
            execution_env="$$TRITON_MODEL_DIRECTORY/../env.tar.gz",
        ),
        log=lambda _m: None,
    )
    net = tc.parse((repo / "tiny_network" / "config.pbtxt").read_text())
    assert net.platform == "onnxruntime_onnx" and not (repo / "tiny_network" / "1" / "model.py").exists()
    pre = tc.parse((repo / "tiny_preprocess" / "config.pbtxt").read_text())
    assert pre.parameters["EXECUTION_ENV_PATH"].string_value == "$$TRITON_MODEL_DIRECTORY/../env.tar.gz"
    # no labels given: the class indices are the labels
    assert (repo / "tiny_postprocess" / "1" / "labels.txt").read_text().split() == ["0", "1", "2", "3"]
