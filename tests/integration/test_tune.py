"""``cvserve tune`` against the real embedded Triton (explicit model control) and the real load generator.

The embedded server runs the single layout (one python model NAME); the ensemble layout's mapping is
covered by the unit tests (its native network backends are not in the embedded server).
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from cvserve.tune.apply import LiveApplier

MODEL = "mobilenet_v2"


@pytest.fixture()
def explicit_server(repo_copy: Path):
    from cvserve.server import ServerSettings, TritonServer

    server = TritonServer(
        ServerSettings(
            repository=repo_copy,
            grpc_port=0,
            http_port=0,
            metrics_port=0,
            model_control_mode="explicit",
            load_models=[MODEL],
            exit_timeout_s=5,
        )
    )
    with server:
        yield server


@pytest.fixture()
def image_dir(sample_images: dict[str, Path], tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    for name, path in sample_images.items():
        shutil.copy2(path, d / f"{name}{path.suffix}")
    return d


def _classify(url: str, image: Path):
    from cvserve.client import Client

    with Client(url) as client:
        return client.classify([image], model=MODEL, top_k=1)[0]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_candidate_is_applied_live_and_restored_when_interrupted(explicit_server, sample_images, how):
    applier = LiveApplier(explicit_server.grpc_url, MODEL, log=lambda _m: None)
    assert (applier.pipeline.layout, applier.names) == ("single", {"classifier": MODEL})
    start = applier.start
    candidate = (
        start.with_value("max_batch_size", 8)
        .with_value("network_instances", 2)
        .with_value("network_threads", 1)
        .with_value("max_queue_delay_us", 500)
        .with_value("max_queue_size", 16)
    )
    with pytest.raises(KeyboardInterrupt), applier.restoring():
        applier.apply(candidate)
        cfg = applier.control.config(MODEL)  # what the server runs now
        assert cfg.max_batch_size == 8 and cfg.instance_group[0].count == 2
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
        assert cfg.dynamic_batching.default_queue_policy.max_queue_size == 16
        assert cfg.parameters["intra_op_threads"].string_value == "1"
        _classify(explicit_server.grpc_url, next(iter(sample_images.values())))  # serves while applied
        if how == "sigterm":
            # The handler restoring() installed, called as the interpreter calls it on SIGTERM. Not a real
            # os.kill: the test process holds torch, OpenVINO and gRPC threads by now, and a signal to the
            # whole process has crashed one of them (the CLI's own process does not load them).
            handler = signal.getsignal(signal.SIGTERM)
            assert callable(handler)
            handler(signal.SIGTERM, None)
        raise KeyboardInterrupt
    after = LiveApplier(explicit_server.grpc_url, MODEL, log=lambda _m: None)
    assert after.start == start
    assert after.start_configs == applier.start_configs
    assert signal.getsignal(signal.SIGTERM) is not None
    _classify(explicit_server.grpc_url, next(iter(sample_images.values())))
    applier.close()
    after.close()


@pytest.mark.slow  # a 75 s tuning budget
def test_tune_cli_end_to_end(explicit_server, repo_copy, image_dir, tmp_path):
    pytest.importorskip(
        "cvserve.loadtests.runner", reason="the load generator (cvserve.loadtests) is not there yet"
    )
    from cvserve.cli import main

    out = tmp_path / "tuning"
    before = LiveApplier(explicit_server.grpc_url, MODEL, log=lambda _m: None)
    code = main(
        [
            "tune", MODEL,
            "--url", explicit_server.grpc_url,
            "--metrics-url", explicit_server.metrics_url,
            "--images", str(image_dir),
            "--repository", str(repo_copy),
            "--slo-p95-ms", "5000",
            "--price-per-hour", "1.0",
            "--budget", "75s",
            "--run-duration", "2",
            "--warmup", "1",
            "--repeats", "2",
            "--max-users", "4",
            "--start-users", "2",
            "--max-instances", "2",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0  # a 5 s p95 is met by the starting configuration at least
    data = json.loads((out / "tuning_report.json").read_text())
    assert data["settings"]["layout"] == "single" and data["settings"]["models"] == {"classifier": MODEL}
    assert data["candidates"][0]["phase"] == "start" and data["start"]["meets_slo"]
    cores = data["settings"]["cores"]
    for c in data["candidates"]:  # the thread budget: explicit intra-op threads x instances <= cores
        k = c["candidate"]
        assert (
            k["network_instances"] * (k["network_threads"] or cores // k["network_instances"] or 1) <= cores
        )
    assert data["chosen"]["cost_per_1k_usd"] <= data["start"]["cost_per_1k_usd"] * 1.5
    bound = data["settings"]["batch_bound"]
    assert all(c["candidate"]["max_batch_size"] <= bound for c in data["candidates"])
    for name in ("tuning_report.md", "tuning_pareto.png", "helm-values.yaml", "build-flags.txt"):
        assert (out / name).exists()
    after = LiveApplier(explicit_server.grpc_url, MODEL, log=lambda _m: None)
    assert after.start_configs == before.start_configs  # restored after tuning
    before.close()
    after.close()
    _rebuild_keeps_what_was_tuned(out, data, tmp_path)


def _rebuild_keeps_what_was_tuned(out: Path, data: dict, tmp_path: Path) -> None:
    """Tune -> build --from-tune -> the written config carries the tuned values, and so do the printed
    flags. A tiny network of the same (single) layout stands in for the rebuild: the settings travel
    with the layout, not with the weights, and it builds in seconds."""
    import shlex

    import torch

    from cvserve.builders import triton_config as tc
    from cvserve.builders.runtime import LAYOUT
    from cvserve.builders.scheduling import Scheduling
    from cvserve.cli import main
    from tests.unit.test_pipeline import tiny_net

    tuned = Scheduling.from_dict(data["scheduling"])
    assert tuned.label() == data["chosen"]["label"]
    torch.save(tiny_net().eval().state_dict(), tmp_path / "tiny.pth")
    common = ["build", str(tmp_path / "tiny.pth"), "--arch", "tests.unit.test_pipeline:tiny_net",
              "--name", "tiny", "--input-size", "64", "--resize", "72", "--no-progress"]  # fmt: skip
    for repo, how in (
        (tmp_path / "from-report", ["--from-tune", str(out)]),
        (tmp_path / "from-flags", shlex.split((out / "build-flags.txt").read_text())),
    ):
        assert main([*common, "--repository", str(repo), *how]) == 0
        written = tc.parse((repo / "tiny" / "config.pbtxt").read_text())
        assert Scheduling.read(LAYOUT["single"], {"classifier": written}) == tuned, how
        report = json.loads((repo / "tiny" / "1" / "build_report.json").read_text())
        assert (
            Scheduling.from_dict({k: v for k, v in report["batching"].items() if k != "slo_p95_ms"}) == tuned
        )
