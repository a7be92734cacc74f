"""Load tests against the real embedded Triton serving the demo ``mobilenet_v2`` ensemble.

Short runs (a few seconds each); the 30 s runs and the ramp behind docs/benchmarks.md are run by hand.
No timing is asserted: only that the gates, the report and the exit status say what happened.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cvserve.cli import main
from cvserve.loadtests.runner import LOCUSTFILE, LoadTestSettings, run_loadtest

MODEL = "mobilenet_v2"


@pytest.fixture(scope="module")
def image_dir(sample_images, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("loadtest-images")
    for name, path in sample_images.items():
        shutil.copy(path, d / f"{name}{path.suffix}")
    return d


def _cli(triton, image_dir: Path, report_dir: Path, *extra: str) -> int:
    return main(
        ["loadtest", MODEL, "--url", triton.grpc_url, "--metrics-url", triton.metrics_url,
         "--images", str(image_dir), "--users", "2", "--duration", "5s", "--warmup", "1s",
         "--price-per-hour", "0.526", "--report-dir", str(report_dir), *extra]
    )  # fmt: skip


def test_steady_run_passes_a_generous_slo_and_writes_the_report(triton, image_dir, tmp_path):
    assert _cli(triton, image_dir, tmp_path, "--slo-p95-ms", "60000", "--max-error-rate", "0.01") == 0
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["gates_passed"] and r["failed_gates"] == [] and r["slo"] == {"p95_ms": 60000.0, "met": True}
    assert r["requests"] > 0 and r["error_rate"] == 0.0
    assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert r["throughput_rps"] > 0 and r["inferences_per_s"] == r["throughput_rps"]
    assert r["cost_per_1k_usd"] == pytest.approx(0.526 / (r["inferences_per_s"] * 3600) * 1000, rel=1e-3)
    for gate in ("p95_latency_ms", "error_rate"):
        assert set(r["gates"][gate]) >= {"value", "threshold", "passed"}
    server = r["server"]
    assert server["scraped"], server
    assert set(server["models"]) == {MODEL}  # the single layout: one model decodes and runs the network
    net = server["models"][MODEL]
    assert net["requests"] > 0 and net["avg_batch_size"] >= 1 and net["avg_compute_ms"] > 0
    assert server["breakdown_ms"]["queue_plus_compute_ms"] > 0
    for name in (
        "report.md",
        "latency.png",
        "throughput.png",
        "server.png",
        "locust_stats.csv",
        "locust_stats_history.csv",
    ):
        assert (tmp_path / name).stat().st_size > 0, name


def test_an_impossible_slo_exits_1_and_names_the_gate(triton, image_dir, tmp_path, capsys):
    assert _cli(triton, image_dir, tmp_path, "--slo-p95-ms", "1", "--no-plots") == 1
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["failed_gates"] == ["p95_latency_ms"] and r["slo"]["met"] is False
    assert "FAIL: p95_latency_ms" in (tmp_path / "report.md").read_text()
    assert "FAILED gate(s): p95_latency_ms" in capsys.readouterr().err


def test_ramp_and_distributed_workers_with_batches_of_images(triton, image_dir, tmp_path):
    """A ramp in Locust's master/worker mode: steps of users, the best step under the SLO reported."""
    r = run_loadtest(
        LoadTestSettings(
            model=MODEL,
            url=triton.grpc_url,
            images=image_dir,
            scenario="ramp",
            users=2,
            step_users=1,
            step_duration_s=4.0,
            warmup_s=1.0,
            images_per_request=2,
            slo_p95_ms=60000.0,
            max_error_rate=0.01,
            metrics_url=triton.metrics_url,
            report_dir=tmp_path,
            workers=1,
            plots=False,
        )
    )
    steps = r["ramp"]["steps"]
    assert [(s["step"], s["users"], s["ran"]) for s in steps] == [("step1", 1, True), ("step2", 2, True)]
    assert all(s["held_slo"] for s in steps) and r["gates_passed"]
    assert r["ramp"]["max_throughput_rps_under_slo"] == max(s["throughput_rps"] for s in steps)
    assert r["inferences_per_s"] == pytest.approx(2 * r["throughput_rps"], rel=1e-3)
    assert r["generator"]["processes"] == 1 and (tmp_path / "locust-worker-0.log").exists()


def test_plain_locust_runs_the_suite(triton, image_dir, tmp_path):
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-H", triton.grpc_url,
           "-u", "1", "-r", "1", "-t", "3s", "--model", MODEL, "--images", str(image_dir),
           "--csv", str(tmp_path / "plain"), "--only-summary"]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = (tmp_path / "plain_stats.csv").read_text().splitlines()
    agg = next(r for r in rows if ",Aggregated," in r).split(",")
    assert int(agg[2]) > 0 and int(agg[3]) == 0  # requests, failures


def test_unknown_model_is_a_clear_error(triton, image_dir, tmp_path, capsys):
    code = main(["loadtest", "no_such_model", "--url", triton.grpc_url, "--images", str(image_dir),
                 "--slo-p95-ms", "100", "--no-metrics", "--report-dir", str(tmp_path)])  # fmt: skip
    assert code == 1
    assert "no_such_model" in capsys.readouterr().err
