"""The release load test: ``cvserve loadtest``'s steady scenario against each version in turn."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from cvserve.loadtests.settings import LoadTestSettings, load_test
from cvserve.release.golden import GoldenSet
from cvserve.release.settings import ReleaseSettings


def loadtest_settings(
    s: ReleaseSettings,
    *,
    model: str,
    version: int,
    role: str,
    url: str,
    images: Path,
    metrics_url: str | None,
) -> LoadTestSettings:
    """The load test of one version, from the release's settings (steady; gates judged by the release)."""
    return load_test(
        s,
        model=model,
        model_version=str(version),
        name=f"{s.name} v{version} ({role})",
        url=url,
        images=images,
        scenario="steady",
        metrics=metrics_url is not None,
        metrics_url=metrics_url,
        report_dir=Path(s.report_dir) / f"loadtest-{role}",
    )


def payload_folder(golden: GoldenSet, dest: Path) -> Path:
    """A flat folder of links to the golden images (the load test sends a folder's files round-robin)."""
    dest.mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(golden.cases):
        link = dest / f"{i:05d}_{case.file.name}"
        if not link.exists():
            os.symlink(case.file.resolve(), link)
    return dest


def run(settings: LoadTestSettings, *, log: Callable[[str], None]) -> dict:
    """Run one load test (see :func:`cvserve.loadtests.runner.run_loadtest`) and return its report."""
    from cvserve.loadtests.runner import run_loadtest

    return run_loadtest(settings, log=log)


def latencies_ms(report: dict) -> list[float]:
    """Response times of the successful requests in the measured window (for the latency plot)."""
    from cvserve.loadtests.stats import window

    report_dir = Path(report["settings"]["report_dir"])
    data = json.loads((report_dir / "samples.json").read_text())
    t0 = float(data["meta"].get("test_start") or 0.0)
    w = report["window"]
    return [float(s[1]) for s in window(data["samples"], t0 + w["start_s"], t0 + w["end_s"]) if s[2]]


def summary(report: dict) -> dict:
    """The figures a release compares (and its report shows) from one load test's report."""
    keys = (
        "requests",
        "failures",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "throughput_rps",
        "inferences_per_s",
        "error_rate",
        "cost_per_1k_usd",
    )
    return {k: report.get(k) for k in keys} | {
        "report": str(Path(report["settings"]["report_dir"]) / "report.md"),
        "price": report.get("price"),
    }
