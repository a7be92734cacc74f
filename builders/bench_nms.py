"""Where should a YOLO head's NMS run on the CPU: numpy in the python model, or inside the served graph?

``python -m cvserve.builders.bench_nms [--anchors 8400 --classes 80 --batch 1,8 --rounds 15]``

Both candidates start from the same raw head ``[N, 4 + C, A]`` (random boxes and scores, a few hundred
anchors above the threshold per image, as a trained detector gives) and end in the same wire rows:

* ``numpy``: :func:`cvserve.builders.detection.postprocess` (best class per anchor, score threshold,
  class-aware greedy NMS, best K), what the served detector runs today;
* ``graph``: an ONNX tail of the same rules, ``ReduceMax``/``Equal`` keep each anchor's best class, then
  ONNX ``NonMaxSuppression`` (per class, ``center_point_box=1``), compiled by OpenVINO on f32 (as the
  served network runs, :mod:`cvserve.builders.runners`); the selected rows are sorted and cut to K in
  numpy, which costs microseconds.

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
    """The ONNX tail: RAW [N, 4 + C, A] -> SELECTED [M, 3] (image, class, anchor), SCORES [N, C, A]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name, value, dtype):
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    nodes = [
        helper.make_node("Split", ["RAW", "split"], ["xywh", "cls"], axis=1),
        helper.make_node("Transpose", ["xywh"], ["boxes"], perm=[0, 2, 1]),
        helper.make_node("ReduceMax", ["cls", "axis1"], ["best"], keepdims=1),
        helper.make_node("Equal", ["cls", "best"], ["is_best"]),
        helper.make_node("Cast", ["is_best"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["cls", "mask"], ["SCORES"]),
        helper.make_node(
            "NonMaxSuppression",
            ["boxes", "SCORES", "max_out", "iou", "score"],
            ["SELECTED"],
            center_point_box=1,
        ),
    ]
    init = [
        const("split", [4, classes], np.int64),
        const("axis1", [1], np.int64),
        const("max_out", [s.max_detections], np.int64),
        const("iou", [s.iou_threshold], np.float32),
        const("score", [s.score_threshold], np.float32),
    ]
    graph = helper.make_graph(
        nodes,
        "cvserve_nms",
        [helper.make_tensor_value_info("RAW", TensorProto.FLOAT, ["batch", 4 + classes, anchors])],
        [
            helper.make_tensor_value_info("SELECTED", TensorProto.INT64, ["selected", 3]),
            helper.make_tensor_value_info("SCORES", TensorProto.FLOAT, ["batch", classes, anchors]),
        ],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def graph_rows(out: dict, raw: np.ndarray, s: NmsSettings) -> list[set]:
    """Per image, the kept (class, anchor) pairs: the graph's selection, best K by score."""
    selected, scores = out["SELECTED"], out["SCORES"]
    rows = []
    for i in range(len(raw)):
        mine = selected[selected[:, 0] == i]
        order = np.argsort(-scores[i, mine[:, 1], mine[:, 2]], kind="stable")[: s.max_detections]
        rows.append({(int(c), int(a)) for _, c, a in mine[order]})
    return rows


def numpy_rows(raw: np.ndarray, s: NmsSettings) -> list[set]:
    """Per image, the kept (class, anchor) pairs of :func:`postprocess` (identity placement)."""
    placements = [Placement(size=(640, 640), resized=(640, 640), offset=(0, 0))] * len(raw)
    found = postprocess(raw, placements, s)
    rows = []
    for i in range(len(raw)):
        r = found.rows(i)
        xyxy = np.stack([raw[i, 0] - raw[i, 2] / 2, raw[i, 1] - raw[i, 3] / 2], axis=1)
        anchors = [int(np.argmin(np.abs(xyxy - b[:2]).sum(axis=1))) for b in r.boxes]
        rows.append({(int(c), a) for c, a in zip(r.classes, anchors, strict=True)})
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
