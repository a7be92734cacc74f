"""``make demo``: build the published MobileNetV2 in FP32 and INT8, serve it, classify, release INT8.

Steps, each timed:

1. build FP32 (version 1): checkpoint -> ONNX -> verified -> served graph -> OpenVINO IR -> repository;
2. build INT8 (version 2) behind its accuracy gate; a build that fails the gate writes nothing, and
   the demo serves FP32 and says why;
3. pin version 1 as what "production" serves, start the embedded Triton (explicit model control) and
   classify scikit-image's sample photos over gRPC with :class:`cvserve.client.Client`;
4. FP32 vs INT8 from the INT8 build report: throughput at batch 8 in the serving runtime, and
   agreement on held-out photos;
5. ``cvserve release`` of version 2 against version 1 on a golden set (per slice), a short load test
   of each, go/no-go, the model card, and promotion on go: the server then serves INT8 with no
   failed request. A no-go keeps FP32 and names the failing gates;
6. classify again with whatever is served now;
7. monitor: a batch of darkened held-out photos against the served version's reference (the counts
   read from Triton's metrics port before and after; no Prometheus needed): the drift table. Then stop
   the server.
8. detect faces: MTCNN (facenet-pytorch's published weights) built, served and checked against
   facenet-pytorch's own detect_face on a bundled photo (four real faces pasted into a real scene);
   the boxes are drawn into the report folder's demo-faces.png.

Exits 1 if an expected label (coffee -> espresso, chelsea -> Egyptian cat, rocket -> space shuttle)
is not the top-1 answer of the served model; a no-go release is a result, not a failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from cvserve.defaults import DEFAULT_REPOSITORY
from cvserve.settings import add_arguments, from_args, setting
from cvserve.slo import DEFAULT_SLO_P95_MS

ARCH = "cvserve.builders.architectures:mobilenet_v2"


def _build(args, precision: str, log) -> object:
    from cvserve.builders.pipeline import BuildSettings, ServingOptions, build
    from cvserve.builders.quantize import QuantizeSettings
    from cvserve.builders.samples import demo_weights, imagenet_labels_path

    return build(
        BuildSettings(
            checkpoint=demo_weights(),
            arch=ARCH,
            name=args.name,
            labels=imagenet_labels_path(),
            repository=args.repository,
            quantization=QuantizeSettings(precision=precision),
            serving=ServingOptions(top_k=args.top_k),
            progress=False,
        ),
        log=log,
    )


def _classify(url: str, name: str, top_k: int) -> list[str]:
    """Classify the sample photos; return the mismatches with the expected top-1 labels."""
    from cvserve.builders.samples import expected_labels, sample_images
    from cvserve.client import Client

    images = sample_images()
    with Client(url, model=name) as client:
        info = client.model_info()
        results = client.classify(list(images.values()), top_k=top_k)
    print(f"   served: {name} version {info.version}")
    failed, expected = [], expected_labels()
    for (photo, path), top in zip(images.items(), results, strict=True):
        best = ", ".join(f"{c.label} {c.score:.3f}" for c in top[:3])
        print(f"   {photo:<11} ({path.name}): {best}")
        if photo in expected and top[0].label != expected[photo]:
            failed.append(f"{photo}: expected {expected[photo]!r}, got {top[0].label!r}")
    return failed


def _monitor(server, repository: Path, name: str, images: int = 64) -> None:
    """Send ``images`` darkened held-out photos and print the drift table of that window."""
    from cvserve.builders.repository import Repository
    from cvserve.client import Client
    from cvserve.monitor import drift
    from cvserve.monitor.calibrate import shifts
    from cvserve.monitor.cli import table
    from cvserve.monitor.reference import Reference, held_out_images
    from cvserve.monitor.scrape import read_counts

    model = Repository(repository).served(name)
    version = model.version
    reference = Reference.of(model).counts
    darken = shifts()["darkened"]
    batch = [darken(d) for d in held_out_images(None, [], images)[0]]

    def counts():
        return read_counts(
            server.metrics_url,
            name,
            str(version),
            num_classes=reference.num_classes,
            feature_dims=reference.feature_dims,
        )

    before = counts()
    deadline = time.monotonic() + 60
    with Client(server.grpc_url, model=name) as client:
        for data in batch:
            client.classify([data])
        # The served model adds its counts to Triton's metrics every few seconds (FLUSH_S), on a
        # request: a few more darkened requests, spaced out, until the batch has arrived.
        while (window := counts().since(before)).images < len(batch) and time.monotonic() < deadline:
            client.classify([batch[0]])
            time.sleep(0.1)
    text = table(name, version, "one batch of darkened photos", drift.compare(window, reference))
    print("   " + text.rstrip().replace("\n", "\n   "))


def _compare(report: dict) -> None:
    """FP32 vs INT8 as the INT8 build measured them."""
    from cvserve.reporting import num

    t, acc = report.get("throughput") or {}, report.get("accuracy") or {}
    if t:
        print(
            f"   throughput at batch {t.get('batch')} in {t.get('runtime')}: INT8 {num(t.get('img_s'))} img/s "
            f"vs FP32 {num(t.get('reference_fp32_img_s'))} img/s ({num(t.get('speedup'))}x)"
        )
    gate = acc.get("gate") or {}
    print(
        f"   agreement with FP32 on {acc.get('held_out_images', '?')} held-out photos: top-1 "
        f"{num(acc.get('top1_agreement'))} overall, top-5 overlap {num(acc.get('top5_overlap'))}; "
        f"gate {gate.get('decision', '?')} on {gate.get('metric', '?')}"
    )
    quant = report.get("quantization") or {}
    kept = quant.get("excluded_layers") or []
    print(f"   quantizer {quant.get('method', '?')}, {len(kept)} layer(s) kept in higher precision")


@dataclasses.dataclass(kw_only=True)
class DemoSettings:
    """``make demo``'s settings (flags derived by :mod:`cvserve.settings`)."""

    repository: Path = setting(DEFAULT_REPOSITORY, help="the model repository the demo builds into")
    name: str = setting("mobilenet_v2", help="the model NAME clients call")
    top_k: int = setting(5, help="classes per image printed", at_least=1)
    report_dir: Path = setting(Path("reports/demo-release"), help="the release's reports")


def faces(repository: Path, out: Path, log) -> list[str]:
    """Build MTCNN (facenet-pytorch's weights), serve it, find the faces in the bundled photo (the
    astronaut and three LFW faces pasted into the rocket photo), check them against facenet-pytorch's
    own ``detect_face`` (IoU >= 0.9 each, no extra face) and draw them into ``out``.
    Returns the mismatches (none when it matches)."""
    import tempfile

    import numpy as np

    from cvserve.builders import mtcnn_build, mtcnn_reference
    from cvserve.builders.mtcnn import Faces
    from cvserve.client import Client
    from cvserve.client.cli import draw_boxes
    from cvserve.server import ServerSettings, TritonServer

    photos = mtcnn_build.sample_photos()
    built = mtcnn_build.build("faces", repository, photos, log=log)
    image = photos["composed"]
    reference = mtcnn_reference.detect(image)
    settings = ServerSettings.embedded(repository, load_models=["faces"])
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "faces.png"
        from PIL import Image

        Image.fromarray(image).save(photo)
        with TritonServer(settings) as server, Client(server.grpc_url, model="faces", timeout=120) as client:
            [found] = client.detect([str(photo)])
        drawn = draw_boxes(photo, found, out)
    log(
        f"faces version {built.version}: {len(found)} face(s) served, {len(reference.boxes)} in the reference; drawn into {drawn}"
    )
    boxes = np.array([d.box for d in found], np.float32).reshape(-1, 4)
    served = Faces(boxes, np.array([d.score for d in found], np.float32), np.zeros((len(found), 5, 2)))
    check = mtcnn_build.compare_faces(served, reference)
    return [] if check["ok"] else [f"faces: served vs facenet-pytorch's detect_face: {check}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvserve.demo", description=__doc__.split("\n\n")[0])
    add_arguments(parser, DemoSettings)
    args = from_args(DemoSettings, parser.parse_args(argv))

    from cvserve.errors import BuildError, CvserveError
    from cvserve.release.example import make_example_golden_set
    from cvserve.release.pipeline import run_release
    from cvserve.release.promote import switch
    from cvserve.release.settings import ReleaseSettings
    from cvserve.server import ServerSettings, TritonServer

    timings: dict[str, float] = {}
    failed: list[str] = []

    def step(title: str) -> None:
        print(f"\n== {title}", flush=True)

    def indent(message: str) -> None:
        print("   " + message, flush=True)

    try:
        t = time.perf_counter()
        step("1. build FP32: torchvision's MobileNetV2 ImageNet weights -> served network")
        fp32 = _build(args, "fp32", indent)
        timings["build FP32"] = time.perf_counter() - t

        t = time.perf_counter()
        step("2. build INT8, behind its accuracy gate")
        int8 = None
        try:
            int8 = _build(args, "int8", indent)
        except BuildError as exc:
            indent(f"INT8 not built, FP32 stays served: {exc}")
        timings["build INT8"] = time.perf_counter() - t

        step(f"3. serve: embedded Triton on {args.repository}, FP32 version {fp32.version} in production")
        switch(
            args.repository, args.name, fp32.version, log=indent
        )  # what production serves before the release
        t = time.perf_counter()
        server = TritonServer(ServerSettings.embedded(args.repository, load_models=[args.name]))
        with server:
            timings["server start-to-ready"] = time.perf_counter() - t
            indent(f"ready in {timings['server start-to-ready']:.1f} s at grpc {server.grpc_url}")
            t = time.perf_counter()
            failed = _classify(server.grpc_url, args.name, args.top_k)
            timings["classify"] = time.perf_counter() - t

            if int8 is not None:
                step("4. FP32 vs INT8, from the INT8 build report")
                _compare(int8.report)

                step(f"5. release INT8 version {int8.version} against FP32 version {fp32.version}")
                t = time.perf_counter()
                golden = make_example_golden_set(args.report_dir.parent / "demo-golden")
                result = run_release(
                    ReleaseSettings(
                        name=args.name,
                        golden=golden,
                        candidate=int8.version,
                        baseline=fp32.version,
                        url=server.grpc_url,
                        repository=args.repository,
                        report_dir=args.report_dir,
                        promote=True,
                        slo_p95_ms=DEFAULT_SLO_P95_MS,  # what the builds sized admission for
                        duration_s=15.0,
                        warmup_s=3.0,
                        users=4,
                    )
                )
                timings["release"] = time.perf_counter() - t
                verdict = result.decision.upper()
                why = f", failing: {', '.join(result.failed_gates)}" if result.failed_gates else ""
                promoted = "INT8 promoted" if result.go else "FP32 stays served"
                print(
                    f"   RELEASE {verdict}{why} ({promoted}); report {result.report_dir / 'release_report.md'}"
                )

                step("6. classify with what is served now")
                failed = _classify(server.grpc_url, args.name, args.top_k)

            step("7. monitor: darkened photos against the served version's reference")
            t = time.perf_counter()
            _monitor(server, args.repository, args.name)
            timings["monitor"] = time.perf_counter() - t
            t = time.perf_counter()
        timings["server stop"] = time.perf_counter() - t

        step("8. detect faces: MTCNN's three networks built and served, checked against the reference")
        t = time.perf_counter()
        failed += faces(args.repository, args.report_dir.parent / "demo-faces.png", indent)
        timings["faces"] = time.perf_counter() - t
    except CvserveError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1

    step("report")
    for name, seconds in timings.items():
        indent(f"{name:<24} {seconds:6.1f} s")
    if failed:
        print("   MISMATCH: " + "; ".join(failed), file=sys.stderr)
        return 1
    indent("all expected labels are top-1; the served faces are the reference's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
