"""``cvserve loadtest``: a headless Locust run that exits 0 when every gate holds and 1 when one fails."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cvserve.loadtests.settings import LoadTestSettings
from cvserve.reporting import num
from cvserve.settings import add_command, from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "loadtest",
        LoadTestSettings,
        run,
        help="load-test a served model with Locust and gate on p95 latency, errors and cost",
        description="Run a headless Locust load test against a classification model over gRPC, scrape "
        "Triton's metrics, write a report, and exit 0 when every gate holds or 1 when one fails. "
        "Durations take 90, 60s, 2m, 1m30s or 1h.",
    )
    p.add_argument("--json", action="store_true", help="print report.json to stdout")


def settings_from_args(args: argparse.Namespace) -> LoadTestSettings:
    return from_args(LoadTestSettings, args)


def summary_lines(r: dict) -> list[str]:
    """What ``cvserve loadtest`` prints when it is done (numbers in the reports' one format)."""
    cost = f"${num(r['cost_per_1k_usd'])}" if r["cost_per_1k_usd"] is not None else "- (no price)"
    lines = [
        f"{r['name']} {r['scenario']}: p50 {num(r['p50_ms'])} ms, p95 {num(r['p95_ms'])} ms, "
        f"p99 {num(r['p99_ms'])} ms, {num(r['throughput_rps'])} req/s, {num(r['inferences_per_s'])} inferences/s, "
        f"error rate {num(r['error_rate'])}, cost per 1k inferences {cost}",
    ]
    if r.get("ramp"):
        ramp = r["ramp"]
        lines.append(
            f"ramp: highest throughput under p95 {num(r['slo']['p95_ms'])} ms: "
            f"{num(ramp['max_throughput_rps_under_slo'])} req/s at {num(ramp['users_at_max'])} users"
        )
    b = r["server"].get("breakdown_ms")
    if b:
        lines.append(
            f"server: queue {num(b['steps_avg_queue_ms'])} ms + compute {num(b['steps_avg_compute_ms'])} ms "
            f"per request (means), network avg batch {num(b['network_avg_batch_size'])}"
        )
    for name, g in r["gates"].items():
        lines.append(
            f"gate {name}: {num(g['value'])} {g['op']} {num(g['threshold'])}: {'pass' if g['passed'] else 'FAIL'}"
        )
    lines += [f"warning: {w}" for w in r["warnings"]]
    verdict = "all gates hold" if r["gates_passed"] else "FAILED gate(s): " + ", ".join(r["failed_gates"])
    lines.append(f"{verdict}; report in {Path(r['settings']['report_dir']) / 'report.md'}")
    return lines


def run(args: argparse.Namespace) -> int:
    from cvserve.loadtests.runner import run_loadtest

    report = run_loadtest(from_args(LoadTestSettings, args), log=lambda m: print(m, file=sys.stderr))
    for line in summary_lines(report):
        print(line, file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    return 0 if report["gates_passed"] else 1
