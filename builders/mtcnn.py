"""MTCNN face detection (Zhang et al., 2016), the published three-stage cascade, in numpy.

A line-by-line port of facenet-pytorch's ``detect_face`` (MIT licence, Timothy Esler) without torch or
torchvision: image pyramid -> P-Net -> NMS per scale (IoU 0.5) -> NMS (0.7) -> box regression ->
square -> R-Net on 24x24 crops -> threshold -> NMS (0.7) -> regression -> square -> O-Net on 48x48
crops -> threshold -> five landmarks -> regression -> NMS by the smaller area ("Min", 0.7).

The networks are callables (float32 NCHW in, one array out: :mod:`cvserve.builders.architectures.mtcnn`
describes the layouts), so the same cascade runs PyTorch's networks (the reference the tests check the
served pipeline against) and the served OpenVINO ones. Numpy only: ``cvserve build`` copies this file
next to the served model as ``cvserve_mtcnn.py``.

Resampling is torch's ``interpolate(mode="area")`` (adaptive average pooling), written as two averaging
matrices. One deliberate difference: facenet-pytorch skips a crop whose box is empty after clipping
but keeps its box, misaligning the boxes and the network's rows after it; here the box is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Network = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, kw_only=True)
class MtcnnSettings:
    """facenet-pytorch's defaults."""

    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709


@dataclass(frozen=True)
class Faces:
    """One image's faces: boxes (n, 4) x1, y1, x2, y2, scores (n,), landmarks (n, 5, 2), in pixels."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray


def _area_matrix(n: int, m: int) -> np.ndarray:
    """(m, n): row i averages input [floor(i n / m), ceil((i + 1) n / m)), as adaptive average pooling."""
    i = np.arange(m)
    lo, hi = (i * n) // m, -((-(i + 1) * n) // m)
    j = np.arange(n)
    inside = (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])
    return (inside / (hi - lo)[:, None]).astype(np.float32)


def area_resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """(3, H, W) float32 -> (3, h, w), torch's ``interpolate(mode="area")``."""
    c, ih, iw = image.shape
    rows = _area_matrix(ih, h) @ image.transpose(1, 0, 2).reshape(ih, c * iw)  # two GEMMs, not 2 x c
    rows = rows.reshape(h, c, iw).transpose(1, 0, 2).reshape(c * h, iw)
    return (rows @ _area_matrix(iw, w).T).reshape(c, h, w).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return ((x - 127.5) * 0.0078125).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "Union") -> np.ndarray:
    """Greedy NMS, best first. ``Union``: torchvision's (IoU, areas without +1); ``Min``: facenet's
    numpy NMS of the last stage (intersection over the smaller area, areas with +1)."""
    if not len(boxes):
        return np.zeros(0, np.int64)
    plus = 1.0 if method == "Min" else 0.0
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + plus) * (y2 - y1 + plus)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + plus)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + plus)
        inter = w * h
        if method == "Min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        order = rest[overlap <= threshold]
    return np.asarray(keep, np.int64)


def scales(h: int, w: int, s: MtcnnSettings) -> list[float]:
    """The image pyramid: the first scale maps ``min_face_size`` to P-Net's 12 pixels."""
    m = 12.0 / s.min_face_size
    minl, scale, out = min(h, w) * m, m, []
    while minl >= 12:
        out.append(scale)
        scale, minl = scale * s.factor, minl * s.factor
    return out


def _generate(out: np.ndarray, scale: float, threshold: float) -> np.ndarray:
    """P-Net's output (6, h, w) -> candidate windows (n, 9): x1, y1, x2, y2, score, 4 regressions."""
    prob = out[5]
    ys, xs = np.nonzero(prob >= threshold)
    bb = np.stack([xs, ys], axis=1).astype(np.float32)
    q1, q2 = np.floor((2 * bb + 1) / scale), np.floor((2 * bb + 12) / scale)
    return np.concatenate([q1, q2, prob[ys, xs][:, None], out[:4, ys, xs].T], axis=1).astype(np.float32)


def _rerec(boxes: np.ndarray) -> np.ndarray:
    """Make boxes square around their centre (the longer side)."""
    boxes = boxes.copy()
    h, w = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
    return boxes


def _bbreg(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] += reg[:, :4] * np.stack([w, h, w, h], axis=1)
    return boxes


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``size`` x ``size`` crops of ``boxes`` (clipped, 1-based as facenet's ``pad``) and the
    rows of ``boxes`` they belong to."""
    _, h, w = image.shape
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x, y = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    ex, ey = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
    rows = [k for k in range(len(b)) if ey[k] > y[k] - 1 and ex[k] > x[k] - 1]
    crops = [area_resize(image[:, y[k] - 1 : ey[k], x[k] - 1 : ex[k]], size, size) for k in rows]
    batch = np.stack(crops) if crops else np.zeros((0, 3, size, size), np.float32)
    return _normalise(batch), np.asarray(rows, np.int64)


def _stage(image: np.ndarray, boxes: np.ndarray, net: Network, size: int, threshold: float):
    """Crop ``boxes`` to ``size``, run ``net``, keep the boxes whose face probability (the last column)
    is above ``threshold``: (boxes with their new scores, the network's rows for them), or None."""
    crops, rows = _crops(image, boxes, size)
    if not len(rows):
        return None
    out = net(crops)
    score = out[:, -1]
    keep = score > threshold
    return np.concatenate([boxes[rows][keep, :4], score[keep, None]], axis=1), out[keep]


def detect(
    image: np.ndarray, pnet: Network, rnet: Network, onet: Network, s: MtcnnSettings | None = None
) -> Faces:
    """The faces in one HWC uint8 RGB image."""
    s = s or MtcnnSettings()
    none = Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
    img = image.transpose(2, 0, 1).astype(np.float32)
    h, w = image.shape[:2]
    found = []
    for scale in scales(h, w, s):
        hs, ws = int(h * scale + 1), int(w * scale + 1)
        out = pnet(_normalise(area_resize(img, hs, ws))[None])[0]
        cand = _generate(out, scale, s.thresholds[0])
        found.append(cand[nms(cand[:, :4], cand[:, 4], 0.5)])
    boxes = np.concatenate(found) if found else np.zeros((0, 9), np.float32)
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
    if not len(boxes):
        return none
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    refined = boxes[:, :4] + boxes[:, 5:9] * np.stack([regw, regh, regw, regh], axis=1)
    boxes = _rerec(np.concatenate([refined, boxes[:, 4:5]], axis=1))
    # second stage: R-Net
    staged = _stage(img, boxes, rnet, 24, s.thresholds[1])
    if staged is None:
        return none
    boxes, out = staged
    pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
    boxes = _rerec(_bbreg(boxes[pick], out[pick, :4]))
    # third stage: O-Net
    staged = _stage(img, boxes, onet, 48, s.thresholds[2])
    if staged is None:
        return none
    boxes, out = staged
    reg, points = out[:, :4], out[:, 4:14]
    wi, hi = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    px = wi[:, None] * points[:, :5] + boxes[:, 0:1] - 1
    py = hi[:, None] * points[:, 5:10] + boxes[:, 1:2] - 1
    marks = np.stack([px, py], axis=2)
    boxes = _bbreg(boxes, reg)
    pick = nms(boxes[:, :4], boxes[:, 4], 0.7, "Min")
    return Faces(
        boxes[pick, :4].astype(np.float32), boxes[pick, 4].astype(np.float32), marks[pick].astype(np.float32)
    )
