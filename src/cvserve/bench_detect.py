"""``make bench``'s detection section: where a detector's time goes, in-process and served.

``python -m cvserve.bench_detect [--seconds 10] [--rounds 3] [--generators perf_analyzer,client]
[--network-instances default,2] [--out reports/bench_detect.json]``

For the YOLO-layout detector the tests train (:mod:`cvserve.builders.detection_data`, built FP32 with
``--task detect``, the default single layout with OpenVINO, once per ``--network-instances`` count:
``default`` is the build's own choice, 6 for a request the build times under 5 ms as this detector's,
since more instances keep the cores busy under Triton's queue policy, docs/serving.md; 2 the count for
longer requests) on its held-out scenes (PNG), and for MTCNN
(:mod:`cvserve.builders.mtcnn_build`) on the astronaut photo, sent as a JPEG (quality 95, as cameras
send photos and ``cvserve.bench`` sends the classifier's; the same photo as a PNG costs the server
~11 ms more to decode, a sixth of a request):

a. stage costs per image on one thread: letterbox (decode + resize + pad), the network (batch 1, one
   intra-op thread), NMS (decode the head, threshold, class-aware NMS, map back, pad to K);
b. served on the embedded Triton at concurrency 1, one image per request, with each load generator;
c. ``--rounds`` rounds of: the in-process loop (letterbox, network on all cores, NMS, one image at a
   time, the server idle), then served at concurrency 16 for each instance count with each generator
   (their order reversed every other round): img/s, p50, p95, the generator's own CPU, and the ratio to
   that round's loop (issue 19's target: >= 1.2, judged, as ``cvserve.bench`` judges the classifier's, on the
   ``perf_analyzer`` rows: Triton's C++ generator takes ~0.1 of the 2 cores where the Python client
   takes ~0.4); medians over the rounds;
d. MTCNN served at concurrency 16 with each generator: p95 against the default SLO (500 ms).

The generators: ``perf_analyzer`` (:mod:`cvserve.perf_analyzer`, assembled on first use; skipped, with
the reason, where it cannot be) and ``client`` (:class:`cvserve.client.Client`, ``detect``, 16
threads). Figures belong in docs/benchmarks.md with the command and the machine (printed first);
nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

DEFAULT_COUNT = "default"  # --network-instances: build as cvserve build does, without the flag

if TYPE_CHECKING:
    from cvserve.builders.repository import BuiltVersion


def _median_ms(fn, items, seconds: float) -> float:
    times, i, end = [], 0, time.perf_counter() + seconds
    while time.perf_counter() < end or i < len(items):
        t = time.perf_counter()
        fn(items[i % len(items)])
        times.append(time.perf_counter() - t)
        i += 1
    return statistics.median(times) * 1000


def _detector(version: BuiltVersion):
    """What the in-process measurements of a built detector need: its spec, NMS settings, network."""
    from cvserve.builders.detection import NmsSettings
    from cvserve.builders.preprocessing import PreprocessSpec

    report = version.require_report()
    nms = NmsSettings(
        **{k: report["task"][k] for k in ("head", "score_threshold", "iou_threshold", "max_detections")}
    )
    return PreprocessSpec.load(version.directory), nms, version.directory / report["network"]["file"]


def stage_costs(version: BuiltVersion, images: list[bytes], seconds: float) -> dict:
    """(a) letterbox, network and NMS per image on one thread, medians."""
    from cvserve.builders.detection import postprocess
    from cvserve.builders.preprocessing import placed
    from cvserve.builders.runners import open_runner

    spec, nms, network = _detector(version)
    one = open_runner(network, "openvino", threads=1)
    inputs = [placed(data, spec) for data in images]
    raws = [one.run(x[None])["RAW"] for x, _ in inputs]
    return {
        "letterbox_ms": _median_ms(lambda d: placed(d, spec), images, seconds / 3),
        "network_ms_1_thread": _median_ms(lambda x: one.run(x[0][None]), inputs, seconds / 3),
        "nms_ms": _median_ms(
            lambda k: postprocess(raws[k], [inputs[k][1]], nms), list(range(len(raws))), seconds / 3
        ),
    }


def detector_loop(version: BuiltVersion, images: list[bytes], seconds: float) -> dict:
    """(c) the in-process loop: one image at a time, letterbox, network on all cores, NMS."""
    from cvserve.bench_measure import percentiles
    from cvserve.builders.detection import postprocess
    from cvserve.builders.preprocessing import placed
    from cvserve.builders.runners import available_cpus, open_runner

    spec, nms, network = _detector(version)
    runner = open_runner(network, "openvino", threads=available_cpus())
    latencies, end = [], time.perf_counter() + seconds
    start, i = time.perf_counter(), 0
    while time.perf_counter() < end:
        t = time.perf_counter()
        x, p = placed(images[i % len(images)], spec)
        postprocess(runner.run(x[None])["RAW"], [p], nms)
        latencies.append(time.perf_counter() - t)
        i += 1
    return {"img_s": len(latencies) / (time.perf_counter() - start), **percentiles(latencies)}


def _served(
    generator: str, server, model: str, images: list[bytes], concurrency: int, seconds: float, pa, work
):
    """One served measurement: img/s, p50, p95, errors, and the generator's CPU in cores."""
    from cvserve import perf_analyzer
    from cvserve.bench_measure import client_load

    if generator == "perf_analyzer":
        data = perf_analyzer.write_input_data(images, work / f"input-{model}.json")
        r = perf_analyzer.run(
            pa, url=server.grpc_url, model=model, concurrency=concurrency, input_data=data,
            seconds=seconds, workdir=work,
        )  # fmt: skip
        row = {"img_s": r.img_s, "p50_ms": r.p50_ms, "p95_ms": r.p95_ms, "errors": r.error or {}}
        return {**row, "generator_cores": r.cpu_s / r.wall_s if r.wall_s else None}
    row = client_load(server.grpc_url, model, images, concurrency, seconds, task="detect")
    return {**row, "generator_cores": row["cpu_s"] / row["wall_s"]}


def _show(what: str, row: dict, loop: dict | None = None) -> str:
    if row.get("img_s") is None:
        return f"{what}: failed: {row.get('errors')}"
    over = f" ({row['img_s'] / loop['img_s']:.2f}x the loop)" if loop else ""
    return (
        f"{what}: {row['img_s']:.1f} img/s{over}, p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms, "
        f"errors {row['errors'] or 0}, generator {row['generator_cores']:.2f} cores"
    )


def main(argv: list[str] | None = None) -> int:
    import io

    from PIL import Image

    from cvserve import hardware, perf_analyzer
    from cvserve.bench_measure import client_load
    from cvserve.builders import mtcnn_build, pipeline
    from cvserve.builders import triton_config as tc
    from cvserve.builders.detection_data import make_scenes
    from cvserve.builders.repository import Repository
    from cvserve.server import ServerSettings, TritonServer
    from cvserve.slo import DEFAULT_SLO_P95_MS

    p = argparse.ArgumentParser(prog="python -m cvserve.bench_detect", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    p.add_argument("--rounds", type=int, default=3, help="rounds of loop then served at concurrency 16")
    p.add_argument(
        "--generators", default="perf_analyzer,client", help="load generators: perf_analyzer, client"
    )
    p.add_argument("--out", type=Path, default=Path("reports/bench_detect.json"))
    p.add_argument(
        "--batch-requests",
        action="store_true",
        help="build the detector with --batch-requests (several requests per execution; docs/serving.md)",
    )
    p.add_argument(
        "--network-instances",
        default=f"{DEFAULT_COUNT},{tc.NETWORK_INSTANCES}",
        help=f"build the detector once per instance count, {DEFAULT_COUNT!r} the build's own choice (the "
        "first also gives the stage costs, the loop and the c=1 rows; docs/serving.md)",
    )
    args = p.parse_args(argv)
    tokens = [n.strip() for n in args.network_instances.split(",") if n.strip()]
    try:
        counts = [None if n == DEFAULT_COUNT else int(n) for n in tokens]
    except ValueError:
        p.error(
            f"--network-instances takes counts separated by commas, or {DEFAULT_COUNT!r} (e.g. default,2), "
            f"got {args.network_instances!r}"
        )
    if not counts or min((n for n in counts if n is not None), default=1) < 1:
        p.error("--network-instances needs at least one count, each at least 1 (e.g. default,2)")
    generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    print(f"machine: {hardware.summary()}")
    results: dict = {
        "machine": hardware.summary(),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "batch_requests": args.batch_requests,
    }
    pa = None
    if "perf_analyzer" in generators:
        try:
            pa = perf_analyzer.ensure(log=print)
        except perf_analyzer.PerfAnalyzerUnavailable as exc:
            print(f"perf_analyzer unavailable ({exc}): only the client rows are measured")
            results["perf_analyzer_unavailable"] = str(exc)
            generators.remove("perf_analyzer")
    with tempfile.TemporaryDirectory(prefix="cvserve-bench-detect-") as tmp:
        root = Path(tmp)
        scenes = make_scenes(root / "scenes")
        names = {n: f"scenes_{n or DEFAULT_COUNT}" for n in counts}
        for n, name in names.items():
            pipeline.build(
                pipeline.BuildSettings(
                    checkpoint=scenes.checkpoint, name=name, task="detect", labels=scenes.labels,
                    repository=root / "models", preprocess=scenes.spec, progress=False,
                    export=pipeline.ExportSettings(verify_images=sorted(scenes.validation.glob("*.png"))[:8]),
                    serving=pipeline.ServingOptions(
                        batching=tc.Batching(
                            max_queue_size=256, batch_requests=args.batch_requests, network_instances=n
                        )
                    ),
                ),
                log=lambda _: None,
            )  # fmt: skip
        mtcnn_build.build("faces", root / "models", mtcnn_build.sample_photos(), log=lambda _: None)
        images = [f.read_bytes() for f in sorted(scenes.validation.glob("*.png"))]
        first = names[counts[0]]
        repository = Repository(root / "models")
        built = repository.newest(first)
        resolved = {  # what each build chose, as its report says
            n: repository.newest(name).build_report["admission"]["network_instances"]
            for n, name in names.items()
        }
        what = {
            n: f"{resolved[n]} instances" + (" (the build's choice)" if n is None else "") for n in counts
        }
        detector: dict = {
            "stages": stage_costs(built, images, args.seconds),
            "network_instances": {names[n]: resolved[n] for n in counts},
        }
        results["detector"] = detector
        s = detector["stages"]
        print(f"detector stage costs per image, one thread: letterbox {s['letterbox_ms']:.2f} ms, network "
              f"{s['network_ms_1_thread']:.2f} ms, nms {s['nms_ms']:.2f} ms")  # fmt: skip
        buf = io.BytesIO()
        Image.fromarray(mtcnn_build.sample_photos()["astronaut"]).save(buf, format="JPEG", quality=95)
        with TritonServer(ServerSettings.embedded(root / "models")) as server:
            for name in names.values():
                client_load(server.grpc_url, name, images, 2, 1.0, task="detect")  # warm every instance
            for gen in generators:
                row = detector[f"served_c1_{gen}"] = _served(
                    gen, server, first, images, 1, args.seconds, pa, root
                )
                print(_show(f"detector served c=1, {gen}", row))
            # Each round: the loop, then every (instances, generator) row, their order reversed
            # every other round; each ratio against its own round's loop.
            rows = [(n, gen) for n in counts for gen in generators]
            rounds = detector["rounds"] = []
            for r in range(args.rounds):
                loop = detector_loop(built, images, args.seconds)
                print(
                    _show(
                        f"round {r + 1}: detector in-process loop",
                        {**loop, "errors": 0, "generator_cores": 0},
                    )
                )
                entry = {"loop": loop}
                for n, gen in rows if r % 2 == 0 else list(reversed(rows)):
                    row = entry[f"{names[n]}_{gen}"] = _served(
                        gen, server, names[n], images, 16, args.seconds, pa, root
                    )
                    if row.get("img_s") is not None:
                        row["over_loop"] = row["img_s"] / loop["img_s"]
                    print(_show(f"round {r + 1}: detector served c=16, {what[n]}, {gen}", row, loop))
                rounds.append(entry)
            for n, gen in rows:
                key = f"{names[n]}_{gen}"
                ratios = [e[key]["over_loop"] for e in rounds if e[key].get("over_loop") is not None]
                detector[f"served_c16_{key}_over_loop_median"] = statistics.median(ratios) if ratios else None
                if ratios:
                    print(f"detector served c=16 / loop, {what[n]}, {gen}: median "
                          f"{statistics.median(ratios):.2f} (rounds {', '.join(f'{x:.2f}' for x in ratios)}; "
                          "target >= 1.2)")  # fmt: skip
            for gen in generators:
                row = results[f"mtcnn_served_c16_{gen}"] = _served(
                    gen, server, "faces", [buf.getvalue()], 16, args.seconds, pa, root
                )
                print(
                    _show(f"mtcnn served c=16, {gen}", row)
                    + f" (default SLO p95 {DEFAULT_SLO_P95_MS:.0f} ms)"
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
