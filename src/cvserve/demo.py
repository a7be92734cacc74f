"""``make demo``: build the published MobileNetV2, serve it on the embedded Triton, classify real photos.

Steps, each timed: build (checkpoint -> ONNX -> verified -> repository), start the embedded server,
classify scikit-image's sample photos over gRPC with :class:`cvserve.client.Client`, stop the server.
Exits 1 if an expected label (coffee -> espresso, chelsea -> Egyptian cat, rocket -> space shuttle)
is not the top-1 answer.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cvserve.defaults import DEFAULT_REPOSITORY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvserve.demo", description=__doc__)
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--name", default="mobilenet_v2")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)

    from cvserve.builders.pipeline import BuildSettings, build
    from cvserve.builders.samples import demo_weights, expected_labels, imagenet_labels_path, sample_images
    from cvserve.client import Client
    from cvserve.errors import CvserveError
    from cvserve.server import ServerSettings, TritonServer

    timings: dict[str, float] = {}
    try:
        t = time.perf_counter()
        print("== 1. build: torchvision's MobileNetV2 ImageNet weights -> Triton ensemble")
        result = build(
            BuildSettings(
                checkpoint=demo_weights(),
                arch="cvserve.builders.architectures:mobilenet_v2",
                name=args.name,
                labels=imagenet_labels_path(),
                repository=args.repository,
                top_k=args.top_k,
            ),
            log=lambda m: print("   " + m),
        )
        timings["build"] = time.perf_counter() - t

        print(f"\n== 2. serve: embedded Triton on {args.repository} (version {result.version})")
        t = time.perf_counter()
        server = TritonServer(
            ServerSettings(repository=args.repository, grpc_port=0, http_port=0, metrics_port=0)
        )
        with server:
            timings["server start-to-ready"] = time.perf_counter() - t
            print(f"   ready in {timings['server start-to-ready']:.1f} s at grpc {server.grpc_url}")

            print("\n== 3. classify over gRPC (cvserve.client)")
            images = sample_images()
            t = time.perf_counter()
            with Client(server.grpc_url, model=args.name) as client:
                results = client.classify(list(images.values()), top_k=args.top_k)
            timings["classify"] = time.perf_counter() - t
            failed = []
            expected = expected_labels()
            for (name, path), top in zip(images.items(), results, strict=True):
                print(f"   {name} ({path.name})")
                for c in top:
                    print(f"      {c.score:6.3f}  {c.label}  (class {c.index})")
                if name in expected and top[0].label != expected[name]:
                    failed.append(f"{name}: expected {expected[name]!r}, got {top[0].label!r}")
            t = time.perf_counter()
        timings["server stop"] = time.perf_counter() - t
    except CvserveError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1

    print("\n== 4. report")
    for step, seconds in timings.items():
        print(f"   {step:<24} {seconds:6.1f} s")
    for name, label in expected_labels().items():
        print(f"   expected {name} -> {label}")
    if failed:
        print("   MISMATCH: " + "; ".join(failed), file=sys.stderr)
        return 1
    print("   all expected labels are top-1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
