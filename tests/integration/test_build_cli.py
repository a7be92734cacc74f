"""`cvserve build` / `cvserve serve` / `cvserve rollback` as a user runs them: clear errors, untouched repository."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvserve.errors import TritonError, UserInputError
from cvserve.server import ServerSettings, TritonServer
from tests.helpers import tree_digest

CVSERVE = [sys.executable, "-m", "cvserve"]
ARCH = "cvserve.builders.architectures:resnet18"


def cvserve(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CVSERVE, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory) -> Path:
    from cvserve.builders.architectures import resnet18

    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(resnet18(num_classes=1000).state_dict(), path)
    return path


def _assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("cvserve build: error:")]
    assert len(errors) == 1, proc.stderr
    assert needle in errors[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--arch", "cvserve.builders.architectures:mobilenet_v2"], "does not match --arch"),
        (["--arch", "no_such_pkg.models:net"], "cannot import module 'no_such_pkg.models'"),
        (["--arch", ARCH, "--labels", "LABELS10"], "checkpoint has 1000 classes but --labels"),
        (
            ["--arch", ARCH, "--labels", "/nonexistent/labels.txt"],
            "--labels /nonexistent/labels.txt does not exist",
        ),
        (["--arch", ARCH, "--input-size", "300"], "--resize (256) is smaller than the crop"),
        (
            ["--arch", ARCH, "--max-batch-size", "4", "--preferred-batch-sizes", "8"],
            "outside 1..max batch size 4",
        ),
    ],
    ids=["wrong-arch", "arch-not-importable", "labels-count", "missing-labels", "bad-size", "bad-batching"],
)
def test_bad_builds_fail_with_one_line_and_leave_the_repository_untouched(
    repo_copy, resnet18_checkpoint, tmp_path, args, needle
):
    labels10 = tmp_path / "labels10.txt"
    labels10.write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    args = [str(labels10) if a == "LABELS10" else a for a in args]
    before = tree_digest(repo_copy)
    proc = cvserve("build", resnet18_checkpoint, "--name", "mobilenet_v2", "--repository", repo_copy, *args)
    _assert_one_line_error(proc, needle)
    assert tree_digest(repo_copy) == before


def test_missing_checkpoint(repo_copy, tmp_path):
    before = tree_digest(repo_copy)
    proc = cvserve("build", tmp_path / "nope.pth", "--name", "x", "--arch", ARCH, "--repository", repo_copy)
    _assert_one_line_error(proc, "does not exist")
    assert tree_digest(repo_copy) == before


def test_a_build_failing_at_verification_leaves_the_repository_byte_identical(repo_copy, resnet18_checkpoint):
    """A zero tolerance makes the ONNX-vs-PyTorch check fail after export, clean-up and all."""
    before = tree_digest(repo_copy)
    proc = cvserve(
        "build",
        resnet18_checkpoint,
        "--name",
        "mobilenet_v2",
        "--arch",
        ARCH,
        "--repository",
        repo_copy,
        "--atol",
        "0",
        "--rtol",
        "0",
        "--exporter",
        "torchscript",
    )
    _assert_one_line_error(proc, "ONNX Runtime disagrees with PyTorch")
    assert tree_digest(repo_copy) == before
    assert not [p for p in repo_copy.parent.iterdir() if ".staging-" in p.name]


def test_second_build_adds_version_2_and_rollback_pins_version_1(repo_copy, resnet18_checkpoint):
    proc = cvserve(
        "build",
        resnet18_checkpoint,
        "--name",
        "mobilenet_v2",
        "--arch",
        ARCH,
        "--repository",
        repo_copy,
        "--exporter",
        "torchscript",
        "--max-batch-size",
        "8",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (repo_copy / "mobilenet_v2").iterdir() if p.is_dir()) == ["1", "2"]
    proc = cvserve("rollback", "mobilenet_v2", "1", "--repository", repo_copy)
    assert proc.returncode == 0, proc.stderr
    text = (repo_copy / "mobilenet_v2" / "config.pbtxt").read_text()
    assert "specific" in text and "versions: 1" in text and "max_batch_size: 16" in text


def test_serve_reports_a_model_that_fails_to_load_with_tritons_reason(repo_copy):
    (repo_copy / "mobilenet_v2" / "1" / "model.xml").write_bytes(b"this is not an OpenVINO IR file")
    # Under heavy CPU load the python backend can abort while another instance fails to initialise
    # (upstream triton-inference-server/server#8882); cvserve names that crash, and a second start works.
    for attempt in range(2):
        server = TritonServer(ServerSettings(repository=repo_copy, grpc_port=0, http_port=0, metrics_port=0))
        with pytest.raises(TritonError) as info:
            with server:
                pass
        if "known intermittent upstream crash" not in str(info.value) or attempt:
            break
    assert re.search(r"model 'mobilenet_v2' failed to load: .*model\.xml", str(info.value))


def test_serve_names_a_port_in_use(repo_copy):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(
            UserInputError, match=rf"port {port} \(grpc\) is already in use: pass --grpc-port"
        ):
            TritonServer(
                ServerSettings(repository=repo_copy, grpc_port=port, http_port=0, metrics_port=0)
            ).start()


def test_serve_names_folders_that_are_not_models(repo_copy):
    (repo_copy / "__pycache__").mkdir()
    proc = subprocess.run(
        [*CVSERVE, "serve", "-r", str(repo_copy), "--grpc-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "not models (no config.pbtxt): __pycache__" in proc.stderr


def test_cvserve_serve_prints_endpoints_and_stops_gracefully_on_sigterm(repo_copy):
    proc = subprocess.Popen(
        [
            *CVSERVE,
            "serve",
            "-r",
            str(repo_copy),
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()  # blocks until ready (or exit)
        assert first.startswith("Triton ready in"), first + proc.stderr.read()
        endpoints = [proc.stdout.readline() for _ in range(3)]
        assert [e.split()[0] for e in endpoints] == ["gRPC", "HTTP", "metrics"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
