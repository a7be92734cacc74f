"""An INT8 build through `cvserve build` served by the real Triton: the served answers are the gated model's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from cvserve.builders.bench_quant import DIGITS_SPEC, make_digits
from cvserve.builders.preprocessing import preprocess_files
from cvserve.builders.verify import ort_session
from cvserve.server import ServerSettings, TritonServer
from tests.helpers import tree_digest

NAME = "digits"


def _cli(digits: dict, repo: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "-m",
        "cvserve",
        "build",
        str(digits["checkpoint"]),
        "--name",
        NAME,
        "-r",
        str(repo),
    ]
    args += ["--input-size", "8", "--resize", "0", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]
    args += ["--precision", "int8", "--calibration", str(digits["calibration"])]
    args += ["--calibration-samples", "100", "--calibration-method", "entropy"]
    args += ["--validation", str(digits["validation"]), "--validation-labels", str(digits["labels"])]
    args += ["--max-batch-size", "8", "--preferred-batch-sizes", "4,8", "--no-progress", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    digits = make_digits(tmp_path_factory.mktemp("digits"))
    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    proc = _cli(digits, repo)
    assert proc.returncode == 0, proc.stderr
    return digits, repo


def test_cli_writes_the_report(built):
    _, repo = built
    report = json.loads((repo / NAME / "1" / "build_report.json").read_text())
    assert report["precision"] == "int8" and report["runtime"] == "python"
    assert report["calibration"]["method"] == "entropy" and report["calibration"]["samples"] == 100
    assert report["accuracy"]["top1_accuracy"] >= report["accuracy"]["top1_accuracy_reference"] - 0.01
    assert report["throughput"]["batch"] == 8
    assert (repo / NAME / "1" / "build_report.md").is_file()


def test_triton_serves_the_quantized_network(built):
    digits, repo = built
    images = sorted(Path(digits["validation"]).glob("*.png"))[:24]
    session = ort_session(repo / f"{NAME}_network" / "1" / "model.onnx")
    expected = session.run(None, {"input": preprocess_files(images, DIGITS_SPEC)})[0].argmax(1)
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
    assert got == expected.tolist()


def test_zero_drop_fails_the_gate_and_leaves_the_repository_unchanged(built, monkeypatch):
    digits, repo = built
    before = tree_digest(repo)
    monkeypatch.setenv("CVSERVE_MAX_EXCLUDED_LAYERS", "2")
    proc = _cli(digits, repo, "--max-accuracy-drop", "0")
    assert proc.returncode == 1
    error = proc.stderr.strip().splitlines()[-1]
    assert "accuracy gate failed" in error and "missed by" in error and "Traceback" not in proc.stderr
    assert tree_digest(repo) == before
