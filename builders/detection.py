"""Detector heads, class-aware NMS and the fixed-size wire rows: the served detector's postprocessing.

Numpy only, like :mod:`cvserve.builders.preprocessing`: ``cvserve build --task detect`` copies this
file next to the served python model (as ``cvserve_detection.py``), so serving runs the code that the
build verified, the tests check and the accuracy gate measures.

Heads (:data:`HEADS`, declared once; a new export layout is one more :class:`Head`):

* ``yolo``: the anchor-free YOLO export layout (YOLOv8 and later, Ultralytics ``format=onnx``):
  ``[N, 4 + C, A]``, per anchor a box as cx, cy, w, h in input pixels then C class scores in [0, 1].
  Decoded here, then class-aware NMS.
* ``end2end``: a head with NMS done in the network (YOLOv10, ``nms=True`` exports, EfficientNMS-style
  graphs): ``[N, K, 6]``, per row x1, y1, x2, y2 (input pixels), score, class. Only the score threshold
  and ``max_detections`` apply.

Every head ends in the same rows (:func:`postprocess`): at most ``max_detections`` detections per
image, best first, boxes mapped back to the original image's pixels through its letterbox
:class:`Placement`, padded to the fixed ``K`` of the wire contract (``cvserve.client.contract``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

try:  # beside the served model: the copy the build made
    from cvserve_preprocessing import Placement
except ImportError:
    from cvserve.builders.preprocessing import Placement

_SETTINGS = "cvserve.settings"  # field metadata read by cvserve.settings (this module imports no cvserve)


def _flag(default, help: str, **spec):
    return field(default=default, metadata={_SETTINGS: {"help": help, **spec}})


@dataclass(frozen=True, kw_only=True)
class NmsSettings:
    """What the served path keeps of a detector's raw head; build flags, recorded in the config."""

    head: str = _flag("yolo", "the detector's output layout (docs/detection.md)", choices=("yolo", "end2end"))
    score_threshold: float = _flag(0.25, "detections scoring below it are dropped", at_least=0, at_most=1)
    iou_threshold: float = _flag(
        0.45, "class-aware NMS: a box overlapping a better one of its class by more is dropped",
        at_least=0, at_most=1,
    )  # fmt: skip
    max_detections: int = _flag(100, "K: detections per image at most (the wire's fixed rows)", at_least=1)

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, not {self.head!r}")
        if not (0 <= self.score_threshold <= 1 and 0 <= self.iou_threshold <= 1):
            raise ValueError("score_threshold and iou_threshold must be within 0..1")
        if self.max_detections < 1:
            raise ValueError(f"max_detections must be at least 1, got {self.max_detections}")

    def parameters(self) -> dict[str, str]:
        """The config parameters the served model reads back with :meth:`from_parameters`."""
        return {
            f"nms_{k}": str(getattr(self, k))
            for k in ("head", "score_threshold", "iou_threshold", "max_detections")
        }

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> NmsSettings:
        return cls(
            head=params["nms_head"],
            score_threshold=float(params["nms_score_threshold"]),
            iou_threshold=float(params["nms_iou_threshold"]),
            max_detections=int(params["nms_max_detections"]),
        )


@dataclass(frozen=True)
class Candidates:
    """One image's detections in input pixels: boxes (n, 4) x1, y1, x2, y2, scores (n,), classes (n,)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    landmarks: np.ndarray | None = None  # (n, P, 2), for heads with keypoints


@dataclass(frozen=True)
class Head:
    """A raw output layout: how to check its shape and turn one image's rows into candidates."""

    name: str
    describe: str
    num_classes: Callable[[tuple[int, ...]], int]  # from the output shape without the batch
    candidates: Callable[[np.ndarray, NmsSettings], Candidates]  # one image's raw output
    needs_nms: bool
    # two runtimes' raw outputs [N, ...] within a tolerance -> (largest difference, images that agree)
    difference: Callable[[np.ndarray, np.ndarray, float, NmsSettings], tuple[float, int]]


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def _yolo_classes(shape: tuple[int, ...]) -> int:
    if len(shape) != 2 or shape[0] < 5:
        raise ValueError(
            f"a yolo head is [N, 4 + classes, anchors]; this one is [N, {', '.join(map(str, shape))}]"
        )
    return shape[0] - 4


def _yolo_candidates(raw: np.ndarray, s: NmsSettings) -> Candidates:
    rows = raw.T  # (A, 4 + C)
    scores_all = rows[:, 4:]
    classes = scores_all.argmax(axis=1)
    scores = scores_all[np.arange(len(rows)), classes]
    keep = scores > s.score_threshold
    return Candidates(xywh_to_xyxy(rows[keep, :4]), scores[keep], classes[keep])


def _end2end_classes(shape: tuple[int, ...]) -> int:
    if len(shape) != 2 or shape[1] != 6:
        raise ValueError(f"an end2end head is [N, K, 6]; this one is [N, {', '.join(map(str, shape))}]")
    return 0  # not in the shape: the labels say


def _end2end_candidates(raw: np.ndarray, s: NmsSettings) -> Candidates:
    keep = raw[:, 4] > s.score_threshold
    rows = raw[keep]
    return Candidates(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64))


def _nearest(rows: np.ndarray, candidates: np.ndarray) -> float:
    """The largest, over ``rows`` (n, 6), of the distance (max |difference| of box and score) to the
    nearest of ``candidates`` (m, 6) of the same class; inf where one has none."""
    if not len(rows):
        return 0.0
    if not len(candidates):
        return math.inf
    dist = np.abs(rows[:, None, :5].astype(np.float64) - candidates[None, :, :5]).max(axis=2)
    dist[rows[:, None, 5] != candidates[None, :, 5]] = math.inf
    return float(dist.min(axis=1).max())


def anchor_difference(
    got: np.ndarray, reference: np.ndarray, tolerance: float, s: NmsSettings
) -> tuple[float, int]:
    """Two runtimes' heads whose rows are anchors at fixed places, compared element by element."""
    diff = np.abs(got.astype(np.float64) - reference).reshape(len(got), -1).max(axis=1)
    return float(diff.max(initial=0.0)), int(np.sum(diff <= tolerance))


def end2end_difference(
    got: np.ndarray, reference: np.ndarray, tolerance: float, s: NmsSettings
) -> tuple[float, int]:
    """Two runtimes' end2end heads ``[N, K, 6]`` compared as the detections they hold, not row by row: a
    head is a ranking, and rows of near-equal scores (the many below the threshold) come in either
    order. Every row scored above the score threshold + ``tolerance`` in one must have a row of its
    class within ``tolerance`` (box and score) among the other's rows above the threshold -
    ``tolerance``. Returns the largest such distance and the images where it is within ``tolerance``."""
    score_threshold, worst, agree = s.score_threshold, 0.0, 0
    for g, r in zip(got, reference, strict=True):
        sure_g, sure_r = g[g[:, 4] > score_threshold + tolerance], r[r[:, 4] > score_threshold + tolerance]
        near_g, near_r = g[g[:, 4] > score_threshold - tolerance], r[r[:, 4] > score_threshold - tolerance]
        d = max(_nearest(sure_r, near_g), _nearest(sure_g, near_r))
        worst, agree = max(worst, d), agree + (d <= tolerance)
    return worst, agree


# Each head's name stated once: the table is keyed by it.
HEADS: dict[str, Head] = {
    head.name: head
    for head in (
        Head(
            "yolo",
            "[N, 4 + C, A]: cx, cy, w, h (input pixels), C class scores; NMS in the served path",
            _yolo_classes, _yolo_candidates, needs_nms=True, difference=anchor_difference,
        ),
        Head(
            "end2end",
            "[N, K, 6]: x1, y1, x2, y2 (input pixels), score, class; NMS done in the network",
            _end2end_classes, _end2end_candidates, needs_nms=False, difference=end2end_difference,
        ),
    )
}  # fmt: skip


# -- NMS --------------------------------------------------------------------------------------------
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4), x1, y1, x2, y2: (n, m)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int | None = None) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes, best score first (ties: the earlier box first)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and (limit is None or len(keep) < limit):
        best, order = order[0], order[1:]
        keep.append(int(best))
        if order.size:
            order = order[box_iou(boxes[best : best + 1], boxes[order])[0] <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, limit: int | None = None
) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other (the offset trick: each
    class is moved to its own region, far from the others, and one NMS runs over all)."""
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    span = float(np.max(boxes)) - min(float(np.min(boxes)), 0.0) + 1.0
    shifted = boxes + (classes.astype(np.float64) * span)[:, None]
    return nms(shifted, scores, iou_threshold, limit)


# -- the wire rows ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Detections:
    """A batch of postprocessed detections in the wire contract's fixed-size layout."""

    boxes: np.ndarray  # (n, K, 4) float32, original pixels
    scores: np.ndarray  # (n, K) float32
    classes: np.ndarray  # (n, K) int64
    count: np.ndarray  # (n, 1) int32
    landmarks: np.ndarray | None = None  # (n, K, P, 2) float32

    def rows(self, i: int) -> Candidates:
        """Image ``i``'s detections without the padding."""
        n = int(self.count[i, 0])
        marks = self.landmarks[i, :n] if self.landmarks is not None else None
        return Candidates(self.boxes[i, :n], self.scores[i, :n], self.classes[i, :n], marks)


def select(c: Candidates, s: NmsSettings, needs_nms: bool) -> Candidates:
    """The kept candidates, best first, at most ``s.max_detections``."""
    if needs_nms:
        keep = batched_nms(c.boxes, c.scores, c.classes, s.iou_threshold, s.max_detections)
    else:
        keep = np.argsort(-c.scores, kind="stable")[: s.max_detections]
    marks = c.landmarks[keep] if c.landmarks is not None else None
    return Candidates(c.boxes[keep], c.scores[keep], c.classes[keep], marks)


def pack(kept: Sequence[Candidates], placements: Sequence[Placement], k: int, points: int = 0) -> Detections:
    """Per image kept candidates (input pixels) -> the fixed-K wire rows in original pixels."""
    n = len(kept)
    out = Detections(
        boxes=np.zeros((n, k, 4), np.float32),
        scores=np.zeros((n, k), np.float32),
        classes=np.zeros((n, k), np.int64),
        count=np.zeros((n, 1), np.int32),
        landmarks=np.zeros((n, k, points, 2), np.float32) if points else None,
    )
    for i, (c, placement) in enumerate(zip(kept, placements, strict=True)):
        m = min(len(c.scores), k)
        out.boxes[i, :m] = placement.to_original(c.boxes[:m])
        out.scores[i, :m] = c.scores[:m]
        out.classes[i, :m] = c.classes[:m]
        out.count[i, 0] = m
        if out.landmarks is not None and c.landmarks is not None:
            out.landmarks[i, :m] = placement.points_to_original(c.landmarks[:m])
    return out


def postprocess(raw: np.ndarray, placements: Sequence[Placement], s: NmsSettings) -> Detections:
    """A batch of the network's raw head -> the wire rows: decode, threshold, NMS, map back, pad."""
    head = HEADS[s.head]
    head.num_classes(tuple(raw.shape[1:]))  # a wrong layout fails here, naming the head
    kept = [select(head.candidates(raw[i], s), s, head.needs_nms) for i in range(len(raw))]
    return pack(kept, placements, s.max_detections)


def unpack_nms(
    num: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    placements: Sequence[Placement],
    k: int,
) -> Detections:
    """The NMS tail's outputs (:mod:`cvserve.builders.detection_graph`: count [n, 1], boxes [n, K', 4] in
    input pixels, scores [n, K'] best first, classes [n, K']) -> the wire rows in original pixels."""
    kept = []
    for i in range(len(num)):
        m = int(num[i].reshape(-1)[0])
        kept.append(Candidates(boxes[i, :m], scores[i, :m], classes[i, :m].astype(np.int64)))
    return pack(kept, placements, k)
