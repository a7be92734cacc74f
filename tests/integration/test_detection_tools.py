"""``cvserve loadtest`` and ``cvserve tune`` against the trained detector (_detection_fixtures), through
the CLI as users run them: the load test sends ``detect`` calls and prices them per 1k images; the tuner
searches the detector's serving settings live and puts the starting ones back.

Short runs (seconds); no timing is asserted, only that the gates, the reports and the exit status say
what happened.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from cvserve.cli import main
from tests.integration import _detection_fixtures as fx


@pytest.fixture(scope="module")
def image_dir(scenes) -> Path:
    """The held-out scenes: photos composed into scenes, PNG."""
    return scenes.validation


def test_loadtest_sends_detect_calls_and_prices_them_per_1k_images(detector_server, image_dir, tmp_path):
    code = main(
        ["loadtest", fx.NAME, "--url", detector_server.grpc_url, "--metrics-url", detector_server.metrics_url,
         "--images", str(image_dir), "--users", "2", "--duration", "4s", "--warmup", "1s",
         "--slo-p95-ms", "60000", "--max-error-rate", "0", "--price-per-hour", "0.526",
         "--report-dir", str(tmp_path), "--no-plots"]
    )  # fmt: skip
    assert code == 0
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["gates_passed"] and r["failed_gates"] == [] and r["error_rate"] == 0.0 and r["requests"] > 0
    assert r["task"] == "detect"
    files = sorted(p for p in image_dir.iterdir() if p.suffix == ".png")
    assert r["payload"]["images"] == len(files) and r["payload"]["directory"] == str(image_dir)
    assert r["payload"]["mean_bytes"] == round(sum(p.stat().st_size for p in files) / len(files))
    assert r["inferences_per_s"] == r["throughput_rps"] > 0  # one image per request
    assert r["cost_per_1k_usd"] == pytest.approx(
        0.526 / (r["inferences_per_s"] * 3600) * 1000, abs=1e-6
    )  # rounded
    assert r["server"]["scraped"] and set(r["server"]["models"]) == {fx.NAME}  # the single layout
    markdown = (tmp_path / "report.md").read_text()
    assert "detect requests of 1 image(s)" in markdown and "cost / 1k inferences" in markdown
    # Every request, the first one too, is named by the call it made.
    names = {row["Name"] for row in csv.DictReader((tmp_path / "locust_stats.csv").open())}
    assert names == {f"detect {fx.NAME}", "Aggregated"}, names


@pytest.fixture()
def explicit_server(detector_build, tmp_path: Path):
    """The detector's repository, copied, served in explicit model-control mode (the tuner reloads it)."""
    from cvserve.server import ServerSettings, TritonServer

    repository = tmp_path / "models"
    shutil.copytree(detector_build[0], repository)
    settings = ServerSettings.embedded(repository, load_models=[fx.NAME], exit_timeout_s=5)
    with TritonServer(settings) as server:
        yield server, repository


@pytest.mark.slow  # a 40 s tuning budget
def test_tune_searches_the_detector_and_restores_its_configuration(explicit_server, image_dir, tmp_path):
    from cvserve.tune.apply import LiveApplier

    server, repository = explicit_server
    out = tmp_path / "tuning"
    before = LiveApplier(server.grpc_url, fx.NAME, log=lambda _m: None)
    code = main(
        ["tune", fx.NAME, "--url", server.grpc_url, "--metrics-url", server.metrics_url,
         "--images", str(image_dir), "--repository", str(repository),
         "--slo-p95-ms", "60000", "--price-per-hour", "1.0", "--budget", "40s",
         "--run-duration", "2", "--warmup", "1", "--repeats", "1",
         "--max-users", "2", "--start-users", "1", "--max-instances", "2", "--out", str(out), "--no-plots"]
    )  # fmt: skip
    assert code == 0  # a 60 s p95 is met by the starting configuration at least
    data = json.loads((out / "tuning_report.json").read_text())
    assert data["settings"]["layout"] == "single" and list(data["settings"]["models"].values()) == [fx.NAME]
    assert data["candidates"][0]["phase"] == "start" and data["start"]["meets_slo"]
    assert data["chosen"]["cost_per_1k_usd"] > 0
    runs = sorted((out / "runs").glob("run*/report.json"))
    assert runs and all(json.loads(p.read_text())["task"] == "detect" for p in runs)
    flags = (out / "build-flags.txt").read_text().split()
    assert "--max-batch-size" in flags, flags
    assert (out / "tuning_report.md").exists() and (out / "helm-values.yaml").exists()
    after = LiveApplier(server.grpc_url, fx.NAME, log=lambda _m: None)
    assert after.start_configs == before.start_configs  # restored after tuning
    before.close()
    after.close()
