"""``make bench``: the serving yardstick. FP32 and INT8, stage costs, their limit, the loop, served load.

In one run on one machine, for the FP32 and the INT8 build of the demo MobileNetV2 (the default layout:
``single`` with OpenVINO), on JPEG-encoded real photos (scikit-image's sample photos at q90):

a. stage costs: decode + preprocess core-ms per image on one thread (the served decode), and the served
   network file's core-ms per image at batch 8 in its runtime, on one thread and on the thread budget;
b. the limit they imply: cores / (decode + network core-ms), with the one-thread network cost: that is
   the work itself, while splitting a batch over threads adds waiting that a server need not pay;
c. the plain in-process loop: same network file, same decode, one image at a time, the runtime on all
   cores; its p50 is the single-image latency;
d. served on the embedded Triton at concurrency 1, 16 and 64, with Triton's own ``perf_analyzer``
   (:mod:`cvserve.perf_analyzer`) and with :class:`cvserve.client.Client`; for each row Triton's
   per-model statistics (queue, compute input/infer/output, batch), the server's CPU time, and the load
   generator's own CPU time (it shares the cores).

Targets (issue 11): served throughput at concurrency 16 >= 1.2x the loop and >= 75 % of the limit;
served p50 at concurrency 1 <= the loop's p50 + 3 ms. A row that misses one says where the time goes.
The in-process measurements run before the server starts; FP32 and INT8 alternate; medians. Output:
the table on stdout, ``reports/bench.json`` and ``reports/bench.md`` (``templates/bench_report.md.j2``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from cvserve.bench_measure import Network
from cvserve.errors import UserInputError
from cvserve.settings import add_arguments, from_args, integers, names, setting

PRECISIONS = ("fp32", "int8")
GENERATORS = ("perf_analyzer", "client", "client-unpaced")
DEFAULT_GENERATORS = GENERATORS[:2]  # client-unpaced: the client without its pacing, for an A/B of it
UNPACED = 0  # the unpaced client's max_in_flight: no pacing at all (no bound, no window)
TARGET_OVER_LOOP = 1.2
TARGET_OVER_LIMIT = 0.75
TARGET_C1_MS = 3.0


def jpegs() -> list[bytes]:
    """scikit-image's sample photos, re-encoded as JPEG q90."""
    from PIL import Image

    from cvserve.builders.samples import sample_images

    out = []
    for path in sample_images().values():
        buf = io.BytesIO()
        Image.open(path).convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


# -- builds -------------------------------------------------------------------------------------------
def _newest_report(repository: Path, model: str) -> tuple[Path, dict] | None:
    """(version folder, build report) of the newest version of ``model``; ``None`` if it has none."""
    from cvserve.builders.repository import Repository

    repo = Repository(repository)
    if not repo.versions(model):
        return None
    newest = repo.newest(model)
    return newest.directory, newest.require_report()


def gate_note(message: str) -> str:
    """One line for a failed INT8 gate: its first clause (the full message stays in the JSON)."""
    return f"INT8 gate failed ({message.split(' (')[0]}): built again with the gate relaxed, measured for speed only"


def _build(
    repository: Path, model: str, precision: str, batching, max_drop: float | None, runtime: str = "auto"
) -> None:
    from cvserve.builders.accuracy import GateSettings
    from cvserve.builders.pipeline import BuildSettings, ServingOptions, build
    from cvserve.builders.quantize import QuantizeSettings
    from cvserve.builders.samples import demo_weights, imagenet_labels_path

    q = QuantizeSettings(precision=precision)
    if max_drop is not None:
        q.gate = GateSettings(max_accuracy_drop=max_drop)
    settings = BuildSettings(
        checkpoint=demo_weights(),
        arch="cvserve.builders.architectures:mobilenet_v2",
        name=model,
        labels=imagenet_labels_path(),
        repository=repository,
        progress=False,
        quantization=q,
        serving=ServingOptions(batching=batching, runtime=runtime),
    )
    build(settings, log=lambda _m: None)


def build_models(
    repository: Path, name: str, args: argparse.Namespace, log, runtime: str = "auto"
) -> dict[str, dict]:
    """Precision -> the build to measure (built into ``repository`` unless it already holds it).

    An INT8 build that fails its accuracy gate is rebuilt with the gate relaxed, and marked: the bench
    measures its speed; whether it may be served is the gate's decision (see the build report).
    ``runtime`` other than auto builds ``NAME_<precision>_<runtime>`` for the runtime comparison.
    """
    from cvserve.builders import triton_config as tc
    from cvserve.errors import BuildError

    batching = tc.Batching(queue_timeout_ms=args.queue_timeout_ms, max_queue_size=args.max_queue_size)
    builds = {}
    for precision in PRECISIONS:
        suffix = "" if runtime == "auto" else f"_{runtime}"
        model, note, gate_error = f"{name}_{precision}{suffix}", None, None
        found = _newest_report(repository, model)
        if found is None:
            log(f"building {model} ...")
            t = time.perf_counter()
            try:
                _build(repository, model, precision, batching, args.int8_max_accuracy_drop, runtime)
            except BuildError as exc:
                if precision == "fp32":
                    raise
                note, gate_error = gate_note(str(exc)), str(exc)
                log(f"  {gate_error.split('. ')[0]}")
                log(
                    f"  rebuilding {model} with the gate relaxed (max accuracy drop 0.99) to measure its speed ..."
                )
                _build(repository, model, precision, batching, 0.99, runtime)
            log(f"  built in {time.perf_counter() - t:.0f} s")
            found = _newest_report(repository, model)
        else:
            log(f"reusing {model} from {repository}")
        version_dir, report = found
        net = report["network"]
        accuracy = report.get("accuracy") or {}
        builds[precision] = {
            "model": model,
            "version": report.get("version"),
            "layout": net["layout"],
            "runtime": net["runtime"],
            "file": net["file"],
            "top1_agreement": accuracy.get("top1_agreement"),
            "max_accuracy_drop": (accuracy.get("gate") or {}).get("max_accuracy_drop"),
            "note": note,
            "gate_error": gate_error,
            "version_dir": str(version_dir),
        }
    return builds


def networks_of(builds: dict[str, dict], suffix: str = "") -> list[Network]:
    from cvserve.builders.preprocessing import PreprocessSpec

    return [
        Network(
            label=p + suffix,
            path=Path(b["version_dir"]) / b["file"],
            runtime=b["runtime"],
            spec=PreprocessSpec.load(b["version_dir"]),
        )
        for p, b in builds.items()
    ]


# -- served -------------------------------------------------------------------------------------------
def served_rows(srv, builds: dict[str, dict], images, args, pa, workdir: Path, log) -> list[dict]:
    """Every (concurrency, generator, precision) row; precisions alternate their order row by row."""
    from cvserve import perf_analyzer
    from cvserve.bench_measure import ServerWatch, client_load

    input_data = perf_analyzer.write_input_data(images, workdir / "input_data.json")
    watch = ServerWatch(srv.grpc_url, srv.pid)
    for b in builds.values():  # warm every instance and the client's metadata path
        client_load(srv.grpc_url, b["model"], images, 2, 1.0)
    rows, flip = [], False
    try:
        for row, c in enumerate(args.concurrency):
            for gen in reversed(args.generators) if row % 2 else args.generators:  # A/B order alternates
                if gen == "perf_analyzer" and pa is None:
                    continue
                for precision in reversed(PRECISIONS) if flip else PRECISIONS:
                    model = builds[precision]["model"]
                    log(f"served: {precision}, concurrency {c}, {gen} ({args.seconds:.0f} s) ...")
                    if gen == "perf_analyzer":
                        res, server = watch.measure(
                            model,
                            lambda m=model, c=c: asdict(
                                perf_analyzer.run(
                                    pa, url=srv.grpc_url, model=m, concurrency=c, input_data=input_data,
                                    seconds=args.seconds, workdir=workdir,
                                )
                            ),
                        )  # fmt: skip
                    else:
                        limit = UNPACED if gen == "client-unpaced" else None
                        res, server = watch.measure(
                            model,
                            lambda m=model, c=c, n=limit: client_load(
                                srv.grpc_url, m, images, c, args.seconds, max_in_flight=n
                            ),
                        )
                    rows.append(
                        {"precision": precision, "generator": gen, "concurrency": c, **res, "server": server}
                    )
                flip = not flip
    finally:
        watch.close()
    return rows


# -- verdicts -----------------------------------------------------------------------------------------
def judge(rows: list[dict], costs: dict, loop: dict) -> None:
    """Add ratios, target verdicts and, for a miss, where the time goes, to each served row."""
    for r in rows:
        lp, cost = loop[r["precision"]], costs[r["precision"]]
        r.setdefault("errors", {})
        r.setdefault("error", None)
        r["gen_cpu_cores"] = r["cpu_s"] / r["wall_s"] if r.get("wall_s") else None
        if r.get("img_s") is None:
            r["targets"], r["where"] = [], None
            continue
        r["served_over_loop"] = r["img_s"] / lp["img_s"]
        r["served_over_limit"] = r["img_s"] / cost["limit_img_s"]
        r["p50_over_loop_ms"] = r["p50_ms"] - lp["p50_ms"] if r.get("p50_ms") is not None else None
        targets = []
        if r["concurrency"] == 16:
            targets.append(("served/loop >= 1.2", r["served_over_loop"] >= TARGET_OVER_LOOP))
            targets.append(("served/limit >= 0.75", r["served_over_limit"] >= TARGET_OVER_LIMIT))
        if r["concurrency"] == 1 and r["p50_over_loop_ms"] is not None:
            targets.append(("p50 <= loop p50 + 3 ms", r["p50_over_loop_ms"] <= TARGET_C1_MS))
        r["targets"] = [{"target": t, "met": ok} for t, ok in targets]
        r["where"] = where_the_time_goes(r, cost) if any(not ok for _, ok in targets) else None


def where_the_time_goes(r: dict, cost: dict) -> str:
    s = r["server"]
    parts = [
        f"Triton per request: queue {s['queue_ms']:.1f} ms, compute input {s['compute_input_ms']:.1f}, "
        f"infer {s['compute_infer_ms']:.1f} (average batch {s['avg_batch'] or 0:.1f}), "
        f"output {s['compute_output_ms']:.1f} ms"
    ]
    if s.get("core_ms_per_img") is not None:
        stages = cost["decode_cpu_ms"] + cost["network_1t_cpu_ms"]
        parts.append(f"server CPU {s['core_ms_per_img']:.1f} core-ms/img vs {stages:.1f} in the stages")
    if r.get("gen_cpu_cores") is not None:
        parts.append(f"load generator {r['gen_cpu_cores']:.2f} cores")
    if s.get("failed"):
        parts.append(f"{s['failed']} requests failed in Triton")
    return "; ".join(parts)


# -- the run ------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("nvidia-pytriton", "tritonclient", "openvino", "onnxruntime", "pillow"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


@dataclasses.dataclass(kw_only=True)
class BenchSettings:
    """``python -m cvserve.bench``'s settings (flags derived by :mod:`cvserve.settings`)."""

    name: str = setting("mobilenet_v2", help="models NAME_fp32 and NAME_int8")
    repository: Path | None = setting(
        None, help="build into (or reuse the builds in) DIR", default_help="a temporary one", metavar="DIR"
    )
    seconds: float = setting(9.0, help="measured time of each served row", above=0)
    loop_seconds: float = setting(20.0, help="in-process loop time per precision", above=0)
    stage_seconds: float = setting(2.0, help="each stage-cost measurement", above=0)
    rounds: int = setting(3, help="alternating rounds of the stage costs", at_least=1)
    concurrency: tuple[int, ...] = setting((1, 16, 64), parser=integers, metavar="N,N", help="served rows")
    generators: tuple[str, ...] = setting(
        DEFAULT_GENERATORS,
        parser=names,
        metavar="NAME,NAME",
        help=f"load generators ({', '.join(GENERATORS)}: the client with max_in_flight={UNPACED}, no pacing)",
    )
    # perf_analyzer 2.40 got "Request timeout expired" against the default 500 ms queue timeout even at
    # concurrency 1; a long timeout and a queue for 64 clients also keep c=64 a throughput measurement.
    queue_timeout_ms: float = setting(10_000.0, help="queue timeout of the builds", above=0)
    max_queue_size: int = setting(256, help="max queue size of the builds", at_least=1)
    int8_max_accuracy_drop: float | None = setting(
        None, help="INT8 gate", default_help="cvserve build's", at_least=0
    )
    compare_runtime: str = setting(
        "onnxruntime",
        metavar="RUNTIME",
        help="also build and measure the stage costs in this CPU runtime ('' to skip)",
    )
    output: Path = setting(Path("reports/bench.json"), help="JSON; .md beside it")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.generators) - set(GENERATORS))
        if unknown or not self.generators:
            raise UserInputError(
                f"--generators {','.join(self.generators)}: choose from {','.join(GENERATORS)}"
            )
        if not self.concurrency or min(self.concurrency) < 1:
            raise UserInputError("--concurrency: give positive whole numbers, e.g. 1,16,64")


def parse_args(argv: list[str] | None) -> BenchSettings:
    p = argparse.ArgumentParser(prog="python -m cvserve.bench", description=__doc__.split("\n\n")[0])
    add_arguments(p, BenchSettings)
    try:
        return from_args(BenchSettings, p.parse_args(argv))
    except UserInputError as exc:
        p.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cvserve import bench_measure, hardware, perf_analyzer
    from cvserve.builders.runners import available_cpus
    from cvserve.reporting import render
    from cvserve.server import ServerSettings, TritonServer

    def log(message: str) -> None:
        print(message, flush=True)

    started, load_before = time.perf_counter(), os.getloadavg()
    cores, images = available_cpus(), jpegs()
    with tempfile.TemporaryDirectory(prefix="cvserve-bench-") as tmp:
        repository = args.repository or Path(tmp) / "models"
        builds = build_models(repository, args.name, args, log)
        networks = networks_of(builds)
        compared = {}
        if args.compare_runtime:  # the same precisions in the other CPU runtime, for its stage costs only
            compared = build_models(repository, args.name, args, log, runtime=args.compare_runtime)
        log(f"stage costs ({args.rounds} alternating rounds) ...")
        costs = bench_measure.stage_costs(
            networks + networks_of(compared, f" ({args.compare_runtime})"),
            images,
            cores=cores,
            rounds=args.rounds,
            seconds=args.stage_seconds,
        )
        log(f"in-process loop ({args.loop_seconds:.0f} s per precision, alternating) ...")
        loop = bench_measure.loop(networks, images, cores=cores, rounds=4, seconds=args.loop_seconds)
        pa, pa_note = None, None
        if "perf_analyzer" in args.generators:
            try:
                pa = perf_analyzer.ensure(log=log)
            except perf_analyzer.PerfAnalyzerUnavailable as exc:
                pa_note = f"perf_analyzer unavailable ({exc}); only the cvserve.client rows were measured"
                log(pa_note)
        with TritonServer(ServerSettings.embedded(repository)) as srv:
            rows = served_rows(srv, builds, images, args, pa, Path(tmp), log)
    judge(rows, costs, loop)
    result = {
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "command": "python -m cvserve.bench" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:])),
        "machine": hardware.summary(),
        "hardware": hardware.cpu().as_dict(),
        "cores": cores,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "versions": _versions(),
        "images": f"{len(images)} scikit-image sample photos as JPEG q90, one per request",
        "builds": builds,
        "compared_builds": compared,
        "build_queue_policy": {
            "queue_timeout_ms": args.queue_timeout_ms,
            "max_queue_size": args.max_queue_size,
        },
        "perf_analyzer": {"version": perf_analyzer.VERSION, "available": pa is not None, "note": pa_note},
        "rounds": args.rounds,
        "stage_costs": costs,
        "loop": loop,
        "served": rows,
        "targets": {
            "over_loop": TARGET_OVER_LOOP,
            "over_limit": TARGET_OVER_LIMIT,
            "c1_p50_ms": TARGET_C1_MS,
        },
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    markdown = render("bench_report.md.j2", r=result)
    print("\n" + markdown)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown)
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
