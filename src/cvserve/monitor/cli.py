"""``cvserve monitor``: the live window of a served model against its version's reference.

Exit status: 0 no signal drifted, 1 a signal drifted, 2 bad input (a bad or missing reference, a model
Prometheus or Triton does not know, an unreachable Prometheus). With ``--serve-metrics`` it keeps
comparing and serves the ``cvserve_drift_*`` gauges until interrupted.
"""

from __future__ import annotations

import argparse
import time

from cvserve.settings import add_command, from_args

EXIT_OK, EXIT_DRIFT = 0, 1


def register(sub: argparse._SubParsersAction) -> None:
    from cvserve.monitor.watch import MonitorSettings

    add_command(
        sub,
        "monitor",
        MonitorSettings,
        run,
        help="compare what a served model sees and answers with its version's reference (drift)",
        description="Read the last --window of NAME's signals (classes, confidence, input statistics, "
        "feature summary) from Prometheus, compare them with the reference the build counted on held-out "
        "images, print a table and, with --serve-metrics, serve cvserve_drift_* gauges. Exit status: 0 no "
        "drift, 1 drift, 2 bad input. docs/monitoring.md.",
    )


def table(name: str, version: int, window: str, report) -> str:
    """The drift table (Markdown), as ``cvserve monitor`` prints it."""
    from cvserve.monitor import drift, signals
    from cvserve.reporting import render

    return render(
        "monitor_drift.md.j2",
        name=name,
        version=version,
        window=window,
        r=report,
        low=signals.LOW_CONFIDENCE,
        min_images=drift.MIN_IMAGES,
    )


def run(args: argparse.Namespace) -> int:
    from cvserve.monitor.watch import DriftGauges, MonitorSettings, check

    s = from_args(MonitorSettings, args)
    version, report = check(s)
    print(table(s.name, version, f"the last {s.window}", report), end="")
    if s.serve_metrics is None:
        return EXIT_DRIFT if report.drifted else EXIT_OK
    gauges = DriftGauges(s.serve_metrics)
    print(f"serving the cvserve_drift_* gauges on :{gauges.port}/metrics, comparing every {s.every_s:g} s")
    try:
        while True:
            gauges.publish(s.name, version, report)
            time.sleep(s.every_s)  # the cadence of a long-running exporter, not a wait for state
            version, report = check(s)
    finally:
        gauges.close()
