"""``cvserve loadtest``: a headless Locust run that exits 0 when every gate holds and 1 when one fails."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from cvserve.errors import UserInputError

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?!s))?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


def parse_duration(text: str) -> float:
    """``"60s"``, ``"2m"``, ``"1m30s"``, ``"90"`` -> seconds (Locust's ``--run-time`` format)."""
    m = _DURATION.match(str(text))
    if not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use e.g. 60s, 2m or 1m30s")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "loadtest",
        help="load-test a served model with Locust and gate on p95 latency, errors and cost",
        description="Run a headless Locust load test against a classification model over gRPC, scrape "
        "Triton's metrics, write a report, and exit 0 when every gate holds or 1 when one fails.",
    )
    p.add_argument("name", metavar="NAME", help="the classification model (ensemble) to load-test")
    p.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC address (default 127.0.0.1:8001)")
    p.add_argument("--images", type=Path, required=True, help="folder of JPEG/PNG files sent round-robin")
    p.add_argument("--images-per-request", type=int, default=1, help="images per request (default 1)")
    p.add_argument("--scenario", choices=("steady", "ramp", "spike"), default="steady")
    p.add_argument("--users", type=int, default=8, help="concurrent users; the maximum for ramp (default 8)")
    p.add_argument(
        "--spawn-rate", type=float, default=None, help="users started per second (default: --users)"
    )
    p.add_argument(
        "--duration", type=parse_duration, default=60.0, help="measured window, e.g. 60s (default 60s)"
    )
    p.add_argument(
        "--warmup", type=parse_duration, default=5.0, help="warm-up before the window (default 5s)"
    )
    p.add_argument(
        "--target-rps",
        type=float,
        default=None,
        help="steady: fixed total request rate instead of closed loop",
    )
    p.add_argument(
        "--step-users", type=int, default=None, help="ramp: users added per step (default users/5)"
    )
    p.add_argument(
        "--step-duration",
        type=parse_duration,
        default=None,
        help="ramp: length of a step (default duration/steps)",
    )
    p.add_argument(
        "--spike-users", type=int, default=None, help="spike: users during the spike (default 4x --users)"
    )
    p.add_argument(
        "--spike-duration",
        type=parse_duration,
        default=None,
        help="spike: length of the spike (default duration/3)",
    )
    p.add_argument(
        "--request-timeout", type=float, default=30.0, help="deadline of each call in seconds (default 30)"
    )
    g = p.add_argument_group("gates")
    g.add_argument("--slo-p95-ms", type=float, required=True, help="p95 latency SLO in milliseconds")
    g.add_argument(
        "--max-error-rate", type=float, default=0.001, help="highest error rate, a fraction (default 0.001)"
    )
    g.add_argument(
        "--min-throughput-rps", type=float, default=None, help="lowest sustained requests/s (optional gate)"
    )
    g.add_argument(
        "--max-cost-per-1k", type=float, default=None, help="highest $ per 1k inferences (optional gate)"
    )
    c = p.add_argument_group("cost")
    c.add_argument("--price-per-hour", type=float, default=None, help="$ per hour of one replica")
    c.add_argument(
        "--instance-type", default=None, help="look the price up in loadtests/prices.toml (e.g. g4dn.xlarge)"
    )
    c.add_argument("--replicas", type=int, default=1, help="server replicas behind --url (default 1)")
    s = p.add_argument_group("server metrics and report")
    s.add_argument(
        "--metrics-url", default=None, help="Triton's Prometheus endpoint (default: --url's host, port 8002)"
    )
    s.add_argument("--no-metrics", action="store_true", help="do not scrape Triton's metrics")
    s.add_argument("--report-dir", type=Path, default=Path("loadtest-report"), help="where the report goes")
    s.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    s.add_argument(
        "--generator-ceiling-rps",
        type=float,
        default=None,
        help="the load generator's measured ceiling (default: the recorded one)",
    )
    d = p.add_argument_group("distributed (Locust's master/worker mode)")
    d.add_argument("--workers", type=int, default=0, help="run a Locust master and N worker processes")
    d.add_argument(
        "--remote-workers",
        action="store_true",
        help="start no local workers: wait for N started on other machines",
    )
    d.add_argument(
        "--master-bind-host",
        default=None,
        help="interface the master listens on (default 127.0.0.1; 0.0.0.0 with --remote-workers)",
    )
    d.add_argument(
        "--master-port", type=int, default=5557, help="master port for --remote-workers (default 5557)"
    )
    p.add_argument("--json", action="store_true", help="print report.json to stdout")
    p.set_defaults(func=run)


def default_metrics_url(url: str) -> str:
    host = url.split("://", 1)[-1].rsplit(":", 1)[0] or "127.0.0.1"
    return f"http://{host}:8002/metrics"


def settings_from_args(args: argparse.Namespace):
    from cvserve.loadtests.runner import LoadTestSettings

    if args.no_metrics and args.metrics_url:
        raise UserInputError("--metrics-url and --no-metrics contradict each other: give one")
    bind = args.master_bind_host or ("0.0.0.0" if args.remote_workers else "127.0.0.1")
    return LoadTestSettings(
        model=args.name,
        name=args.name,
        url=args.url,
        images=args.images,
        scenario=args.scenario,
        users=args.users,
        spawn_rate=args.spawn_rate or float(args.users),
        duration_s=args.duration,
        warmup_s=args.warmup,
        images_per_request=args.images_per_request,
        target_rps=args.target_rps,
        step_users=args.step_users,
        step_duration_s=args.step_duration,
        spike_users=args.spike_users,
        spike_duration_s=args.spike_duration,
        request_timeout_s=args.request_timeout,
        slo_p95_ms=args.slo_p95_ms,
        max_error_rate=args.max_error_rate,
        min_throughput_rps=args.min_throughput_rps,
        max_cost_per_1k_usd=args.max_cost_per_1k,
        price_per_hour=args.price_per_hour,
        instance_type=args.instance_type,
        replicas=args.replicas,
        metrics_url=None if args.no_metrics else (args.metrics_url or default_metrics_url(args.url)),
        report_dir=args.report_dir,
        plots=not args.no_plots,
        generator_ceiling_rps=args.generator_ceiling_rps,
        workers=args.workers,
        remote_workers=args.remote_workers,
        master_bind_host=bind,
        master_port=args.master_port if args.remote_workers else 0,
    )


def summary_lines(r: dict) -> list[str]:
    cost = f"${r['cost_per_1k_usd']:.4f}" if r["cost_per_1k_usd"] is not None else "n/a (no price)"
    lines = [
        f"{r['name']} {r['scenario']}: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, p99 {r['p99_ms']} ms, "
        f"{r['throughput_rps']} req/s, {r['inferences_per_s']} inferences/s, error rate {r['error_rate']}, "
        f"cost per 1k inferences {cost}",
    ]
    if r.get("ramp"):
        ramp = r["ramp"]
        lines.append(
            f"ramp: highest throughput under p95 {r['slo']['p95_ms']:g} ms: {ramp['max_throughput_rps_under_slo']} req/s "
            f"at {ramp['users_at_max']} users"
        )
    b = r["server"].get("breakdown_ms")
    if b:
        lines.append(
            f"server: queue {b['steps_avg_queue_ms']} ms + compute {b['steps_avg_compute_ms']} ms per request (means), "
            f"network avg batch {b['network_avg_batch_size']}"
        )
    for name, g in r["gates"].items():
        lines.append(
            f"gate {name}: {g['value']} {g['op']} {g['threshold']}: {'pass' if g['passed'] else 'FAIL'}"
        )
    lines += [f"warning: {w}" for w in r["warnings"]]
    verdict = "all gates hold" if r["gates_passed"] else "FAILED gate(s): " + ", ".join(r["failed_gates"])
    lines.append(f"{verdict}; report in {Path(r['settings']['report_dir']) / 'report.md'}")
    return lines


def run(args: argparse.Namespace) -> int:
    from cvserve.loadtests.runner import run_loadtest

    report = run_loadtest(settings_from_args(args), log=lambda m: print(m, file=sys.stderr))
    for line in summary_lines(report):
        print(line, file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    return 0 if report["gates_passed"] else 1
