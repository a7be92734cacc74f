"""``cvserve release``: go/no-go for a candidate version; exit 0 go, 1 no-go, 2 bad input.

The flags are written out here until ``cvserve.settings`` derives them; every default comes from
:class:`~cvserve.release.settings.ReleaseSettings`, its single definition.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from cvserve.errors import UserInputError

EXIT_GO, EXIT_NO_GO, EXIT_BAD_INPUT = 0, 1, 2


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=VALUE, e.g. admin-key=$CVSERVE_ADMIN_KEY")
    return name.strip().lower(), value


def _defaults() -> dict:
    from cvserve.release.settings import ReleaseSettings

    return {f.name: f.default for f in fields(ReleaseSettings)}


def register(sub: argparse._SubParsersAction) -> None:
    from cvserve.loadtests.cli import parse_duration

    d = _defaults()
    p = sub.add_parser(
        "release",
        help="go/no-go for a new model version: golden-set regressions per slice, p95, cost; model card; "
        "promotion",
        description="Serve the candidate and baseline versions of NAME under shadow names (production "
        "traffic never reaches the candidate), classify the golden set with each, load-test each, apply "
        "the gates, write release_report.json/.md and MODEL_CARD.md, and on --promote make a go candidate "
        "the served version. Exit status: 0 go, 1 no-go (or the release failed), 2 bad input.",
    )
    p.add_argument("name", metavar="NAME", help="the served model (single layout)")
    p.add_argument("--golden", type=Path, required=True, help="golden-set folder: images and labels.csv")
    p.add_argument("--candidate", type=int, required=True, help="the version to judge")
    p.add_argument(
        "--baseline",
        type=int,
        default=d["baseline"],
        help="the version to judge it against (default: the "
        "version the server serves to requests that name none)",
    )
    p.add_argument(
        "--url",
        default=d["url"],
        help="gRPC address of a running Triton in explicit model-control mode "
        "(default: start an embedded server on --repository for the release)",
    )
    p.add_argument("--repository", "-r", type=Path, default=d["repository"], help="the model repository")
    p.add_argument("--report-dir", type=Path, default=d["report_dir"], help="where the reports go")
    p.add_argument(
        "--promote",
        action="store_true",
        help="on go, make the candidate the served version (repository "
        "config, atomically, and the running server at --url, with no failed request)",
    )
    g = p.add_argument_group("gates")
    g.add_argument(
        "--max-regression-rate",
        type=float,
        default=d["max_regression_rate"],
        help="largest regression rate on any slice, a fraction (default %(default)s)",
    )
    g.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=d["max_accuracy_drop_points"],
        dest="max_accuracy_drop_points",
        metavar="POINTS",
        help="largest overall top-1 accuracy drop in percentage points (default %(default)s)",
    )
    g.add_argument(
        "--max-cost-increase",
        type=float,
        default=d["max_cost_increase"],
        help="largest cost-per-1k increase over the baseline, a fraction (default %(default)s)",
    )
    g.add_argument(
        "--slo-p95-ms",
        type=float,
        default=d["slo_p95_ms"],
        help="p95 latency SLO of the candidate in ms (default %(default)s)",
    )
    g.add_argument(
        "--max-error-rate",
        type=float,
        default=d["max_error_rate"],
        help="highest error rate of the candidate under load (default %(default)s)",
    )
    t = p.add_argument_group("release load test (cvserve loadtest, steady, against each version)")
    t.add_argument("--users", type=int, default=d["users"], help="concurrent users (default %(default)s)")
    t.add_argument(
        "--spawn-rate", type=float, default=d["spawn_rate"], help="users per second (default: --users)"
    )
    t.add_argument(
        "--duration",
        type=parse_duration,
        default=d["duration_s"],
        dest="duration_s",
        metavar="DURATION",
        help="measured window, e.g. 60s (default %(default)s s)",
    )
    t.add_argument(
        "--warmup",
        type=parse_duration,
        default=d["warmup_s"],
        dest="warmup_s",
        metavar="DURATION",
        help="warm-up before the window (default %(default)s s)",
    )
    t.add_argument("--images-per-request", type=int, default=d["images_per_request"])
    t.add_argument(
        "--request-timeout",
        type=float,
        default=d["request_timeout_s"],
        dest="request_timeout_s",
        metavar="SECONDS",
        help="deadline of each call in seconds (default %(default)s)",
    )
    t.add_argument(
        "--price-per-hour", type=float, default=d["price_per_hour"], help="$ per hour of one replica"
    )
    t.add_argument(
        "--instance-type", default=d["instance_type"], help="look the price up in loadtests/prices.toml"
    )
    t.add_argument("--replicas", type=int, default=d["replicas"], help="server replicas behind --url")
    t.add_argument(
        "--metrics-url",
        default=d["metrics_url"],
        help="Triton's Prometheus endpoint to scrape (default: none with --url; the embedded one)",
    )
    t.add_argument("--no-plots", action="store_false", dest="plots", help="skip the PNG plots")
    c = p.add_argument_group("model card and rollout")
    c.add_argument("--intended-use", default=d["intended_use"], help="the model card's intended-use text")
    c.add_argument(
        "--limitations", default=d["limitations"], help="known limitations added to the model card"
    )
    c.add_argument(
        "--load-timeout",
        type=float,
        default=d["load_timeout_s"],
        dest="load_timeout_s",
        metavar="SECONDS",
        help="seconds a version may take to load (default %(default)s)",
    )
    c.add_argument(
        "--control-header",
        type=_header,
        action="append",
        default=[],
        dest="control_headers",
        metavar="NAME=VALUE",
        help="gRPC metadata sent with model-control calls (load, unload, index), e.g. the key of a "
        "server whose model-control API is restricted; repeatable",
    )
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    from cvserve.release.settings import ReleaseSettings

    values = {f.name: getattr(args, f.name) for f in fields(ReleaseSettings)}
    values["control_headers"] = dict(values["control_headers"])
    return ReleaseSettings(**values)


def run(args: argparse.Namespace) -> int:
    from cvserve.release.pipeline import run_release
    from cvserve.release.report import summary_lines

    try:
        result = run_release(settings_from_args(args))
    except UserInputError as exc:
        print(f"cvserve release: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for line in summary_lines(result.report, result.report_dir):
        print(line)
    return EXIT_GO if result.go else EXIT_NO_GO
