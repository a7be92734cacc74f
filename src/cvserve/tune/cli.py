"""``cvserve tune``: find the cheapest dynamic-batching configuration that meets a p95 SLO."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from cvserve.errors import NotFoundError, UserInputError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smh]?)")


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``10m``, ``1h`` or ``600`` (seconds)."""
    m = _DURATION.fullmatch(text.strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise UserInputError(f"--budget {text!r}: use a positive duration such as 90s, 10m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tune",
        help="search dynamic batching and instance counts for the cheapest config meeting a p95 SLO",
        description=(
            "Tune a pipeline served by a running Triton (--model-control-mode explicit): every candidate is "
            "applied live with a config override, measured with the load generator at the load that maximises "
            "throughput within the SLO, and the starting configuration is restored at the end (or on Ctrl-C)."
        ),
    )
    p.add_argument("name", metavar="NAME", help="pipeline (ensemble) name, as given to cvserve build")
    p.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC address (default %(default)s)")
    p.add_argument("--images", type=Path, required=True, help="folder of images to send")
    p.add_argument("--slo-p95-ms", type=float, required=True, help="p95 latency SLO in milliseconds")
    p.add_argument("--price-per-hour", type=float, required=True, help="price of the server per hour (USD)")
    p.add_argument("--budget", default="10m", help="time budget, e.g. 90s, 10m, 1h (default %(default)s)")
    p.add_argument("--max-instances", type=int, default=4, help="most instances of any model (default 4)")
    p.add_argument(
        "--repository", type=Path, help="model repository: its config.pbtxt files and build report (optional)"
    )
    p.add_argument("--metrics-url", help="Triton metrics URL, passed to the load generator")
    p.add_argument("--images-per-request", type=int, default=1, help="images per request (default 1)")
    p.add_argument("--max-users", type=int, default=64, help="most concurrent users tried (default 64)")
    p.add_argument("--start-users", type=int, default=4, help="users of the first load run (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="runs per confirmed candidate (default 3)")
    p.add_argument("--run-duration", type=float, default=8.0, help="seconds measured per run (default 8)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per run (default 2)")
    p.add_argument("--max-error-rate", type=float, default=0.001, help="error rate allowed (default 0.001)")
    p.add_argument("--out", type=Path, help="output folder (default tuning/NAME)")
    p.add_argument("--keep", action="store_true", help="leave the chosen configuration live")
    p.add_argument("--no-plots", action="store_true", help="skip the plot (no matplotlib needed)")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if not args.images.is_dir():
        raise NotFoundError(f"--images {args.images} is not a folder of images")
    if args.slo_p95_ms <= 0 or args.price_per_hour <= 0:
        raise UserInputError("--slo-p95-ms and --price-per-hour must be positive")
    if args.max_instances < 1 or args.repeats < 1 or args.max_users < 1 or args.start_users < 1:
        raise UserInputError("--max-instances, --repeats, --max-users and --start-users must be at least 1")
    if args.images_per_request < 1:
        raise UserInputError("--images-per-request must be at least 1")
    if args.repository is not None and not (args.repository / args.name / "config.pbtxt").exists():
        raise NotFoundError(f"--repository {args.repository} has no {args.name}/config.pbtxt")


def _repository_configs(repository: Path, names: dict[str, str]):
    from cvserve.builders import triton_config as tc

    return {
        role: tc.parse((repository / model / "config.pbtxt").read_text()) for role, model in names.items()
    }


def run(args: argparse.Namespace) -> int:
    """Run the tuner; 0 if a configuration meets the SLO, 1 if none does."""
    from cvserve.tune import candidates, report
    from cvserve.tune.apply import LiveApplier
    from cvserve.tune.measure import LoadtestMeasure
    from cvserve.tune.search import SearchSettings, Tuner

    budget_s = parse_duration(args.budget)
    _check(args)
    out = args.out or Path("tuning") / args.name
    applier = LiveApplier(args.url, args.name)
    start = applier.start
    base = _repository_configs(args.repository, applier.names) if args.repository else applier.start_configs
    bound, source = candidates.profile_batch_bound(
        applier.start_configs["network"], candidates.read_build_report(args.repository, args.name)
    )
    space = candidates.build_space(
        start,
        batch_bound=bound,
        max_instances=args.max_instances,
        slo_p95_ms=args.slo_p95_ms,
        min_batch=args.images_per_request,
    )
    print(f"batch bound {bound} ({source}); budget {budget_s:.0f} s; SLO p95 <= {args.slo_p95_ms} ms")
    measure = LoadtestMeasure(
        model=args.name,
        url=args.url,
        images=args.images,
        duration_s=args.run_duration,
        warmup_s=args.warmup,
        images_per_request=args.images_per_request,
        slo_p95_ms=args.slo_p95_ms,
        max_error_rate=args.max_error_rate,
        price_per_hour=args.price_per_hour,
        metrics_url=args.metrics_url,
        report_dir=out / "runs",
    )
    settings = SearchSettings(
        slo_p95_ms=args.slo_p95_ms,
        price_per_hour=args.price_per_hour,
        budget_s=budget_s,
        repeats=args.repeats,
        max_error_rate=args.max_error_rate,
        start_users=args.start_users,
        max_users=args.max_users,
        run_estimate_s=args.run_duration + args.warmup + 3.0,
    )
    tuner = Tuner(space, applier=applier, measure=measure, settings=settings)
    found = {}
    try:
        with applier.restoring(keep=lambda: found["best"].candidate if args.keep and found else None):
            found["result"] = result = tuner.run(start)
            if result.best.feasible:
                found["best"] = result.best
    finally:
        applier.close()
    data = report.build_report(
        result,
        settings={
            "model": args.name,
            "url": args.url,
            "images": str(args.images),
            "slo_p95_ms": args.slo_p95_ms,
            "price_per_hour": args.price_per_hour,
            "budget_s": budget_s,
            "max_instances": args.max_instances,
            "images_per_request": args.images_per_request,
            "repeats": args.repeats,
            "run_duration_s": args.run_duration,
            "warmup_s": args.warmup,
            "batch_bound": bound,
            "batch_bound_source": source,
            "config_base": str(args.repository) if args.repository else "server",
            "space": {
                k: [list(v) if isinstance(v, tuple) else v for v in vals] for k, vals in space.values.items()
            },
        },
        base=base,
    )
    written = report.write(data, out, plots=not args.no_plots)
    _print_summary(data)
    print(f"report: {written[1]}")
    return 0 if result.best.feasible else 1


def _print_summary(data: dict) -> None:
    print(f"\n{len(data['candidates'])} candidates in {data['elapsed_s']} s (stopped: {data['stopped_by']})")
    for key in ("start", "chosen"):
        r = data[key]
        p95 = "-" if r["p95_ms"] is None else f"{r['p95_ms']:.1f}"
        tput = "-" if r["inferences_per_s"] is None else f"{r['inferences_per_s']:.1f}"
        cost = "-" if r["cost_per_1k_usd"] is None else f"{r['cost_per_1k_usd']:.5f}"
        print(f"{key:>8}: {r['label']}  p95 {p95} ms  {tput} inf/s  ${cost}/1k  meets SLO: {r['meets_slo']}")
    if not data["meets_slo"]:
        print("no configuration met the SLO: relax --slo-p95-ms, add capacity, or raise --budget")
