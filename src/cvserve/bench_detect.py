"""``make bench``'s detection section: where a detector's time goes, in-process and served.

``python -m cvserve.bench_detect [--seconds 20] [--out reports/bench_detect.json]``

For the YOLO-layout detector the tests train (:mod:`cvserve.builders.detection_data`, built FP32 with
``--task detect``, the default single layout with OpenVINO) on its held-out scenes (PNG), and for MTCNN
(:mod:`cvserve.builders.mtcnn_build`) on the astronaut photo:

a. stage costs per image on one thread: letterbox (decode + resize + pad), the network (batch 1, one
   intra-op thread), NMS (decode the head, threshold, class-aware NMS, map back, pad to K);
b. the in-process loop: letterbox, network on all cores, NMS, one image at a time: img/s, p50, p95;
c. served on the embedded Triton at concurrency 1 and 16 with :class:`cvserve.client.Client`
   (``detect``, one image per request): img/s, p50, p95, and the ratio to the loop (issue 19's target:
   >= 1.2 at concurrency 16);
d. MTCNN served at concurrency 16: p95 against the default SLO (500 ms).

The in-process measurements run before the server starts; one run, medians. Figures belong in
docs/benchmarks.md with the command and the machine (printed first); nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

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


def detector_in_process(version: BuiltVersion, images: list[bytes], seconds: float) -> dict:
    """(a) stage costs and (b) the loop of a built detector's version."""
    from cvserve.bench_measure import percentiles
    from cvserve.builders.detection import NmsSettings, postprocess
    from cvserve.builders.preprocessing import PreprocessSpec, placed
    from cvserve.builders.runners import available_cpus, open_runner

    report = version.require_report()
    spec = PreprocessSpec.load(version.directory)
    nms = NmsSettings(
        **{k: report["task"][k] for k in ("head", "score_threshold", "iou_threshold", "max_detections")}
    )
    network = version.directory / report["network"]["file"]
    one = open_runner(network, "openvino", threads=1)
    inputs = [placed(data, spec) for data in images]
    raws = [one.run(x[None])["RAW"] for x, _ in inputs]
    stages = {
        "letterbox_ms": _median_ms(lambda d: placed(d, spec), images, seconds / 3),
        "network_ms_1_thread": _median_ms(lambda x: one.run(x[0][None]), inputs, seconds / 3),
        "nms_ms": _median_ms(
            lambda k: postprocess(raws[k], [inputs[k][1]], nms), list(range(len(raws))), seconds / 3
        ),
    }
    runner = open_runner(network, "openvino", threads=available_cpus())
    latencies, end = [], time.perf_counter() + seconds
    start, i = time.perf_counter(), 0
    while time.perf_counter() < end:
        t = time.perf_counter()
        x, p = placed(images[i % len(images)], spec)
        postprocess(runner.run(x[None])["RAW"], [p], nms)
        latencies.append(time.perf_counter() - t)
        i += 1
    loop = {"img_s": len(latencies) / (time.perf_counter() - start), **percentiles(latencies)}
    return {"stages": stages, "loop": loop}


def main(argv: list[str] | None = None) -> int:
    from cvserve import hardware
    from cvserve.bench_measure import client_load
    from cvserve.builders import mtcnn_build
    from cvserve.builders.detection_data import make_scenes
    from cvserve.builders.repository import Repository
    from cvserve.server import ServerSettings, TritonServer
    from cvserve.slo import DEFAULT_SLO_P95_MS

    p = argparse.ArgumentParser(prog="python -m cvserve.bench_detect", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    p.add_argument("--out", type=Path, default=Path("reports/bench_detect.json"))
    p.add_argument(
        "--batch-requests",
        action="store_true",
        help="build the detector with --batch-requests (several requests per execution; docs/serving.md)",
    )
    args = p.parse_args(argv)
    print(f"machine: {hardware.summary()}")
    results: dict = {
        "machine": hardware.summary(),
        "seconds": args.seconds,
        "batch_requests": args.batch_requests,
    }
    with tempfile.TemporaryDirectory(prefix="cvserve-bench-detect-") as tmp:
        root = Path(tmp)
        scenes = make_scenes(root / "scenes")
        from cvserve.builders import pipeline
        from cvserve.builders import triton_config as tc

        pipeline.build(
            pipeline.BuildSettings(
                checkpoint=scenes.checkpoint, name="scenes", task="detect", labels=scenes.labels,
                repository=root / "models", preprocess=scenes.spec, progress=False,
                export=pipeline.ExportSettings(verify_images=sorted(scenes.validation.glob("*.png"))[:8]),
                serving=pipeline.ServingOptions(
                    batching=tc.Batching(max_queue_size=256, batch_requests=args.batch_requests)
                ),
            ),
            log=lambda _: None,
        )  # fmt: skip
        mtcnn_build.build("faces", root / "models", mtcnn_build.sample_photos(), log=lambda _: None)
        images = [f.read_bytes() for f in sorted(scenes.validation.glob("*.png"))]
        built = Repository(root / "models").newest("scenes")
        results["detector"] = detector_in_process(built, images, args.seconds)
        s, loop = results["detector"]["stages"], results["detector"]["loop"]
        print(f"detector stage costs per image, one thread: letterbox {s['letterbox_ms']:.2f} ms, network "
              f"{s['network_ms_1_thread']:.2f} ms, nms {s['nms_ms']:.2f} ms")  # fmt: skip
        print(
            f"detector in-process loop: {loop['img_s']:.1f} img/s, p50 {loop['p50_ms']:.1f} ms, p95 {loop['p95_ms']:.1f} ms"
        )
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(mtcnn_build.sample_photos()["astronaut"]).save(buf, format="PNG")
        settings = ServerSettings.embedded(root / "models")
        with TritonServer(settings) as server:
            for c in (1, 16):
                row = client_load(server.grpc_url, "scenes", images, c, args.seconds, task="detect")
                row["over_loop"] = row["img_s"] / loop["img_s"]
                results["detector"][f"served_c{c}"] = row
                print(f"detector served c={c}: {row['img_s']:.1f} img/s ({row['over_loop']:.2f}x the loop), "
                      f"p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms, errors {row['errors']}, "
                      f"client CPU {row['cpu_s']:.1f} s of {row['wall_s']:.1f} s")  # fmt: skip
            row = client_load(server.grpc_url, "faces", [buf.getvalue()], 16, args.seconds, task="detect")
            results["mtcnn_served_c16"] = row
            print(f"mtcnn served c=16: {row['img_s']:.2f} img/s, p95 {row['p95_ms']:.0f} ms "
                  f"(default SLO {DEFAULT_SLO_P95_MS:.0f} ms), errors {row['errors']}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
