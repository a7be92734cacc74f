"""``make bench``: served end-to-end throughput next to the same work in a plain in-process loop.

Both sides run the same ``model.onnx`` from the built repository, the same preprocessing code and the
same ``preprocess.json`` (the build's single source of truth), and the same top-5 post-processing, on
the same JPEG-encoded real photos:

* in-process: a sequential loop, one image at a time: decode -> preprocess -> ONNX Runtime -> top-5;
* served: the embedded Triton ensemble over gRPC (:class:`cvserve.client.Client`), one image per
  request, at concurrency 1 and 16.

The figure of merit is served throughput at concurrency 16 divided by the in-process loop's; serving
should beat the loop by overlapping decode and inference and batching (target: at least 1.2).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _jpegs() -> list[bytes]:
    from PIL import Image

    from cvserve.builders.samples import sample_images

    out = []
    for path in sample_images().values():
        buf = io.BytesIO()
        Image.open(path).convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _percentiles(latencies_s: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies_s)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50_ms": round(q[49], 2), "p95_ms": round(q[94], 2)}


def in_process(repository: Path, name: str, images: list[bytes], seconds: float) -> dict:
    """The same model file and preprocessing in a plain sequential loop (one image at a time)."""
    from cvserve.builders.preprocessing import PreprocessSpec, preprocess_batch
    from cvserve.builders.verify import ort_session

    version = max(int(p.name) for p in (repository / f"{name}_network").iterdir() if p.name.isdigit())
    spec = PreprocessSpec.load(repository / f"{name}_preprocess" / str(version))
    session = ort_session(repository / f"{name}_network" / str(version) / "model.onnx")
    input_name = session.get_inputs()[0].name

    def one(data: bytes) -> np.ndarray:
        logits = session.run(None, {input_name: preprocess_batch([data], spec)})[0]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        return np.argsort(-probs, axis=1)[:, :5]

    for data in images:  # warm-up
        one(data)
    latencies, i = [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        one(images[i % len(images)])
        latencies.append(time.perf_counter() - t)
        i += 1
    wall = time.perf_counter() - start
    return {
        "mode": "in-process loop",
        "concurrency": 1,
        "requests": i,
        "img_s": round(i / wall, 1),
        **_percentiles(latencies),
    }


def served(url: str, name: str, images: list[bytes], concurrency: int, seconds: float) -> dict:
    """Closed-loop load: ``concurrency`` threads, each sending one image per request back to back."""
    from cvserve.client import Client

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    with Client(url, model=name, timeout=30, retry=False) as client:
        client.classify([images[0]], top_k=5)  # warm-up, metadata
        for _ in range(2 * concurrency):
            client.classify([images[1]], top_k=5)
        stop = time.perf_counter() + seconds

        def worker(k: int) -> None:
            nonlocal errors
            j = k
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    client.classify([images[j % len(images)]], top_k=5)
                except Exception:
                    with lock:
                        errors += 1
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t)
                j += 1

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(worker, range(concurrency)))
        wall = time.perf_counter() - start
    return {
        "mode": "served (Triton ensemble, gRPC)",
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "img_s": round(len(latencies) / wall, 1),
        **_percentiles(latencies),
    }


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvserve.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repository", type=Path, help="an existing repository with NAME (default: build the demo)"
    )
    parser.add_argument("--name", default="mobilenet_v2")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per mode")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--output", type=Path, default=Path("reports/bench.json"))
    parser.add_argument("--max-queue-delay-us", type=int, default=2000, help="for the demo build")
    parser.add_argument("--preprocess-instances", type=int, default=2, help="for the demo build")
    parser.add_argument("--network-threads", type=int, default=0, help="for the demo build")
    args = parser.parse_args(argv)

    from cvserve.server import ServerSettings, TritonServer

    images = _jpegs()
    with tempfile.TemporaryDirectory(prefix="cvserve-bench-") as tmp:
        repository = args.repository
        if repository is None:
            from cvserve.builders import triton_config as tc
            from cvserve.builders.pipeline import BuildSettings, build
            from cvserve.builders.samples import demo_weights, imagenet_labels_path

            repository = Path(tmp) / "model_repository"
            print("building the demo model ...", flush=True)
            build(
                BuildSettings(
                    checkpoint=demo_weights(),
                    arch="cvserve.builders.architectures:mobilenet_v2",
                    name=args.name,
                    labels=imagenet_labels_path(),
                    repository=repository,
                    progress=False,
                    batching=tc.Batching(
                        max_queue_delay_us=args.max_queue_delay_us,
                        preprocess_instances=args.preprocess_instances,
                        network_threads=args.network_threads,
                    ),
                ),
                log=lambda _m: None,
            )
        print(f"in-process loop for {args.seconds:.0f} s ...", flush=True)
        rows = [in_process(repository, args.name, images, args.seconds)]
        with TritonServer(
            ServerSettings(repository=repository, grpc_port=0, http_port=0, metrics_port=0)
        ) as srv:
            for c in args.concurrency:
                print(f"served, concurrency {c}, for {args.seconds:.0f} s ...", flush=True)
                rows.append(served(srv.grpc_url, args.name, images, c, args.seconds))
    base = rows[0]["img_s"]
    best = max(r["img_s"] for r in rows[1:])
    result = {
        "machine": machine(),
        "model": args.name,
        "images": "scikit-image sample photos as JPEG q90",
        "rows": rows,
        "served_over_loop": round(best / base, 2),
        "target": 1.2,
    }
    print(f"\n{result['machine']}")
    print("| mode | concurrency | img/s | p50 ms | p95 ms | requests |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['concurrency']} | {r['img_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['requests']} |"
        )
    print(f"\nserved / in-process throughput: {result['served_over_loop']} (target >= 1.2)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
