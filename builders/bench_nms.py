"""Where should a YOLO head's NMS run on the CPU: numpy in the python model, or inside the served graph?

``python -m cvserve.builders.bench_nms [--anchors 8400 --classes 80 --batch 1,8 --rounds 15]``

Both candidates start from the same raw head ``[N, 4 + C, A]`` (random boxes and scores, a few hundred
anchors above the threshold per image, as a trained detector gives) and end in the same wire rows:

* ``numpy``: :func:`cvserve.builders.detection.postprocess` (best class per anchor, score threshold,
  class-aware greedy NMS, best K), what the served detector runs today;
* ``graph``: the ONNX tail the ensemble layout serves on CPUs (:mod:`cvserve.builders.detection_graph`):
  ``ReduceMax``/``Equal`` keep each anchor's best class, ONNX ``NonMaxSuppression`` per class, then
  each image's best K sorted and padded in the graph, compiled by OpenVINO on f32 (as the served
  network runs, :mod:`cvserve.builders.runners`).

Correctness first: for every image the two must keep the same (class, box) rows; the script prints the
images that agree and refuses to print a winner otherwise. Then one run, alternating A/B per round,
medians and the ratio, per batch size, with the machine (``cvserve.hardware``). Numbers belong in
docs/benchmarks.md with the command and the machine, never in a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cvserve.builders.detection import NmsSettings, postprocess
from cvserve.builders.preprocessing import Placement, PreprocessSpec

SPEC = PreprocessSpec(input_size=(640, 640), resize_shorter=0, fit="letterbox")


def raw_heads(batch: int, anchors: int, classes: int, seed: int = 0) -> np.ndarray:
    """A YOLO-layout head with ~3 % of anchors confident, clustered as real objects are."""
    rng = np.random.default_rng(seed)
    raw = np.zeros((batch, 4 + classes, anchors), np.float32)
    centres = rng.uniform(40, 600, (batch, 20, 2))
    pick = rng.integers(0, 20, (batch, anchors))
    xy = np.take_along_axis(centres, pick[..., None], axis=1) + rng.normal(0, 6, (batch, anchors, 2))
    raw[:, 0:2] = xy.transpose(0, 2, 1)
    raw[:, 2:4] = rng.uniform(20, 80, (batch, 2, anchors))
    raw[:, 4:] = rng.uniform(0, 0.05, (batch, classes, anchors))
    hot = rng.random((batch, anchors)) < 0.03
    cls = rng.integers(0, classes, (batch, anchors))
    b, a = np.nonzero(hot)
    raw[b, 4 + cls[b, a], a] = rng.uniform(0.3, 0.95, len(b))
    return raw


def nms_graph(path: Path, classes: int, anchors: int, s: NmsSettings) -> Path:
    """The ONNX tail the ensemble serves on CPUs (:mod:`cvserve.builders.detection_graph`, ``onnx``):
    RAW [N, 4 + C, A] -> the four NMS outputs, best K per image sorted and padded in the graph."""
    from cvserve.builders.detection_graph import save_tail

    return save_tail(path, classes, anchors, s, "onnx")


def graph_rows(out: dict, raw: np.ndarray, s: NmsSettings) -> list[set]:
    """Per image, the kept (class, anchor) pairs of the graph's NMS outputs."""
    from cvserve.client import contract

    rows = []
    for i in range(len(raw)):
        n = int(out[contract.NUM_DETECTIONS][i, 0])
        boxes, classes = out[contract.DETECTION_BOXES][i, :n], out[contract.DETECTION_CLASSES][i, :n]
        rows.append({(int(c), _anchor(raw[i], b)) for c, b in zip(classes, boxes, strict=True)})
    return rows


def _anchor(raw: np.ndarray, box: np.ndarray) -> int:
    """The anchor whose decoded top-left corner is ``box``'s."""
    xyxy = np.stack([raw[0] - raw[2] / 2, raw[1] - raw[3] / 2], axis=1)
    return int(np.argmin(np.abs(xyxy - box[:2]).sum(axis=1)))


def numpy_rows(raw: np.ndarray, s: NmsSettings) -> list[set]:
    """Per image, the kept (class, anchor) pairs of :func:`postprocess` (identity placement)."""
    placements = [Placement(size=(640, 640), resized=(640, 640), offset=(0, 0))] * len(raw)
    found = postprocess(raw, placements, s)
    rows = []
    for i in range(len(raw)):
        r = found.rows(i)
        rows.append({(int(c), _anchor(raw[i], b)) for c, b in zip(r.classes, r.boxes, strict=True)})
    return rows


def measure(batch: int, anchors: int, classes: int, rounds: int, s: NmsSettings) -> dict:
    from cvserve.builders.runners import open_runner

    raw = raw_heads(batch, anchors, classes)
    with tempfile.TemporaryDirectory() as tmp:
        runner = open_runner(
            nms_graph(Path(tmp) / "nms.onnx", classes, anchors, s), "openvino", precision="f32"
        )
        want, got = numpy_rows(raw, s), graph_rows(runner.run(raw), raw, s)
        agree = sum(a == b for a, b in zip(want, got, strict=True))
        times: dict[str, list[float]] = {"numpy": [], "graph": []}
        for _ in range(rounds):  # alternating A/B
            t = time.perf_counter()
            postprocess(raw, [Placement(size=(640, 640), resized=(640, 640), offset=(0, 0))] * batch, s)
            times["numpy"].append(time.perf_counter() - t)
            t = time.perf_counter()
            graph_rows(runner.run(raw), raw, s)
            times["graph"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return {"batch": batch, "images_agree": agree, "numpy_ms": med["numpy"], "graph_ms": med["graph"],
            "graph_over_numpy": med["graph"] / med["numpy"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from cvserve import hardware

    p = argparse.ArgumentParser(
        prog="python -m cvserve.builders.bench_nms", description=__doc__.split("\n")[0]
    )
    p.add_argument("--anchors", type=int, default=8400)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--batch", default="1,8", help="batch sizes, comma-separated")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    s = NmsSettings(score_threshold=0.25, iou_threshold=0.45, max_detections=100)
    print(f"machine: {hardware.summary()}; head [N, {4 + args.classes}, {args.anchors}], {s}")
    for batch in (int(b) for b in args.batch.split(",")):
        r = measure(batch, args.anchors, args.classes, args.rounds, s)
        verdict = "" if r["images_agree"] == batch else "  DISAGREE: no winner"
        print(
            f"batch {batch}: images agree {r['images_agree']}/{batch}; median numpy {r['numpy_ms']:.2f} ms, "
            f"graph (OpenVINO NonMaxSuppression) {r['graph_ms']:.2f} ms, graph/numpy {r['graph_over_numpy']:.2f}"
            + verdict
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
