"""``cvserve tune``: find the cheapest serving configuration (batching, instances, threads, admission
control) that meets a p95 SLO."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from cvserve.errors import NotFoundError
from cvserve.reporting import num
from cvserve.settings import add_command, from_args
from cvserve.tune.settings import TuneSettings


def register(subparsers) -> None:
    add_command(
        subparsers,
        "tune",
        TuneSettings,
        run,
        help="search batching, instances, threads and queue limits for the cheapest config meeting a p95 SLO",
        description=(
            "Tune a model served by a running Triton (--model-control-mode explicit), either layout: every "
            "candidate is "
            "applied live with a config override, measured with the load generator at the load that maximises "
            "throughput within the SLO, and the starting configuration is restored at the end (or on Ctrl-C). "
            "Durations take 90, 60s, 2m, 1m30s or 1h."
        ),
    )


def _check(s: TuneSettings) -> None:
    if not s.images.is_dir():
        raise NotFoundError(f"--images {s.images} is not a folder of images")
    if s.repository is not None:
        from cvserve.builders.repository import Repository

        Repository(s.repository).config(s.name)  # there and readable, or one line naming the fix


def _repository_pipeline(repository: Path, name: str):
    """NAME's pipeline as the repository's config.pbtxt files describe it."""
    from cvserve.builders.repository import Repository
    from cvserve.tune.models import discover

    return discover(name, Repository(repository).config)


def _served_report(repository: Path | None, name: str, ready: list[int]) -> dict | None:
    """The build report of the version the server serves (its highest READY one) in ``repository``."""
    if repository is None:
        return None
    from cvserve.builders.repository import Repository

    try:
        return Repository(repository).served(name, ready).build_report
    except NotFoundError as exc:
        raise NotFoundError(f"{exc} (is --repository the folder this server serves?)") from None


def run(args: argparse.Namespace) -> int:
    """Run the tuner; 0 if a configuration meets the SLO, 1 if none does."""
    return tune(from_args(TuneSettings, args))


def tune(s: TuneSettings) -> int:
    """Tune as ``s`` says, write the report; 0 if a configuration meets the SLO, 1 if none does."""
    from cvserve.builders.runners import available_cpus
    from cvserve.loadtests.settings import load_test
    from cvserve.settings import check
    from cvserve.tune import candidates, report
    from cvserve.tune.apply import LiveApplier
    from cvserve.tune.measure import LoadtestMeasure
    from cvserve.tune.search import Tuner

    check(s)
    _check(s)
    out = s.out or Path("tuning") / s.name
    applier = LiveApplier(s.url, s.name)
    start, live = applier.start, applier.pipeline
    base = _repository_pipeline(s.repository, s.name) if s.repository else live
    bound, source = candidates.profile_batch_bound(
        live.configs[live.network_role], _served_report(s.repository, s.name, applier.ready_versions())
    )
    cores = (s.cores or available_cpus()) if live.threads_parameter else None
    space = candidates.build_space(
        start,
        batch_bound=bound,
        max_instances=s.max_instances,
        slo_p95_ms=s.search.slo_p95_ms,
        cores=cores,
        threads_share_cores=live.threads_share_cores,
        min_batch=s.run.images_per_request,
        max_users=s.search.max_users,
    )
    print(
        f"{s.name}: {live.layout} layout ({', '.join(live.models.values())}); batch bound {bound} ({source}); "
        f"thread budget {f'{cores} cores' if cores else 'none (GPU)'}; budget {s.search.budget_s:.0f} s; "
        f"SLO p95 <= {num(s.search.slo_p95_ms)} ms"
    )
    measure = LoadtestMeasure(
        template=load_test(
            s,
            model=s.name,
            duration_s=s.run.run_duration_s,
            metrics=s.metrics_url is not None,
            plots=False,
        ),
        report_dir=out / "runs",
    )
    search = dataclasses.replace(s.search, run_estimate_s=s.run.run_duration_s + s.run.warmup_s + 3.0)
    tuner = Tuner(space, applier=applier, measure=measure, settings=search)
    found = {}
    try:
        with applier.restoring(keep=lambda: found["best"].candidate if s.keep and found else None):
            found["result"] = result = tuner.run(start)
            if result.best.feasible:
                found["best"] = result.best
    finally:
        applier.close()
    settings = {
        "model": s.name,
        "url": s.url,
        "images": str(s.images),
        "out": str(out),
        **dataclasses.asdict(s.search),
        **dataclasses.asdict(s.run),
        "max_instances": s.max_instances,
        "layout": live.layout,
        "models": dict(live.models),
        "cores": cores,
        "batch_bound": bound,
        "batch_bound_source": source,
        "config_base": str(s.repository) if s.repository else "server",
        "space": {
            k: [list(v) if isinstance(v, tuple) else v for v in vals] for k, vals in space.values.items()
        },
    }
    data = report.build_report(result, settings=settings, base=base)
    written = report.write(data, out, plots=s.plots)
    _print_summary(data)
    print(f"report: {written[1]}")
    print(f"rebuild with them: cvserve build ... --from-tune {out}  (as flags: {written[3]})")
    return 0 if result.best.feasible else 1


def _print_summary(data: dict) -> None:
    print(f"\n{len(data['candidates'])} candidates in {data['elapsed_s']} s (stopped: {data['stopped_by']})")
    for key in ("start", "chosen"):
        r = data[key]
        print(
            f"{key:>8}: {r['label']}  p95 {num(r['p95_ms'])} ms  {num(r['inferences_per_s'])} inf/s  "
            f"${num(r['cost_per_1k_usd'])}/1k  meets SLO: {num(r['meets_slo'])}"
        )
    print("build flags: " + " ".join(data["build_flags"]))
    if not data["meets_slo"]:
        print("no configuration met the SLO: relax --slo-p95-ms, add capacity, or raise --budget")
