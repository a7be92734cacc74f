"""MTCNN face detection (Zhang et al., 2016), the published three-stage cascade, in numpy.

A line-by-line port of facenet-pytorch's ``detect_face`` (MIT licence, Timothy Esler) without torch or
torchvision: image pyramid -> P-Net -> NMS per scale (IoU 0.5) -> NMS (0.7) -> box regression ->
square -> R-Net on 24x24 crops -> threshold -> NMS (0.7) -> regression -> square -> O-Net on 48x48
crops -> threshold -> five landmarks -> regression -> NMS by the smaller area ("Min", 0.7).

The networks are callables (float32 NCHW in, one array out: :mod:`cvserve.builders.architectures.mtcnn`
describes the layouts), so the same cascade runs PyTorch's networks (the reference the tests check the
served pipeline against) and the served OpenVINO ones. Numpy only: ``cvserve build`` copies this file
next to the served model as ``cvserve_mtcnn.py``.

Resampling is torch's ``interpolate(mode="area")`` (adaptive average pooling): each output pixel is the
mean of a rectangle of input pixels, read from the image's summed-area table (int64, so the sums of the
uint8 pixels are exact), for every pyramid level and, vectorised, for all the crops of a stage at once.
(Written first as two averaging matrices per resize, it took 70% of the cascade's time: a GEMM over
the whole image per pyramid level and two small ones per crop in a Python loop.) One deliberate difference: facenet-pytorch skips a crop whose box is empty after clipping
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


def summed_area(image: np.ndarray) -> np.ndarray:
    """(C, H + 1, W + 1) int64 summed-area table of an HWC integer image (a zero first row and column)."""
    h, w, c = image.shape
    table = np.zeros((c, h + 1, w + 1), np.int64)
    np.cumsum(image.transpose(2, 0, 1), axis=1, dtype=np.int64, out=table[:, 1:, 1:])
    np.cumsum(table[:, 1:, 1:], axis=2, out=table[:, 1:, 1:])
    return table


def _rect_means(table: np.ndarray, y0, x0, ih, iw, size_h: int, size_w: int) -> np.ndarray:
    """(n, C, size_h, size_w) float32: the windows [y0, y0 + ih) x [x0, x0 + iw) (arrays of n) resized
    by area from the summed-area ``table``."""
    i, j = np.arange(size_h), np.arange(size_w)
    ly, hy = y0[:, None] + (i * ih[:, None]) // size_h, y0[:, None] - ((-(i + 1) * ih[:, None]) // size_h)
    lx, hx = x0[:, None] + (j * iw[:, None]) // size_w, x0[:, None] - ((-(j + 1) * iw[:, None]) // size_w)
    r0, r1, c0, c1 = ly[:, :, None], hy[:, :, None], lx[:, None, :], hx[:, None, :]
    sums = table[:, r1, c1] - table[:, r0, c1] - table[:, r1, c0] + table[:, r0, c0]  # (C, n, h, w)
    area = (hy - ly)[:, :, None] * (hx - lx)[:, None, :]
    return (sums / area).astype(np.float32).transpose(1, 0, 2, 3)


def _level(table: np.ndarray, h: int, w: int) -> np.ndarray:
    """(C, h, w) float32: the whole image of the summed-area ``table`` resized by area (one pyramid
    level): whole rows of the table first, then columns, cheaper than four 2-D gathers."""
    ih, iw = table.shape[1] - 1, table.shape[2] - 1
    i, j = np.arange(h), np.arange(w)
    ly, hy = (i * ih) // h, -((-(i + 1) * ih) // h)
    lx, hx = (j * iw) // w, -((-(j + 1) * iw) // w)
    rows = table[:, hy] - table[:, ly]  # (C, h, W + 1)
    sums = rows[:, :, hx] - rows[:, :, lx]
    return (sums / ((hy - ly)[:, None] * (hx - lx)[None, :])).astype(np.float32)


def area_resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """(3, H, W) image of integer values (as float32) -> (3, h, w), torch's ``interpolate(mode="area")``."""
    return _level(summed_area(np.rint(image).astype(np.int64).transpose(1, 2, 0)), h, w)


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


def _crops(table: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``size`` x ``size`` crops of ``boxes`` (clipped, 1-based as facenet's ``pad``) from
    the image's summed-area ``table``, and the rows of ``boxes`` they belong to."""
    h, w = table.shape[1] - 1, table.shape[2] - 1
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x, y = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    ex, ey = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
    rows = np.nonzero((ey > y - 1) & (ex > x - 1))[0]
    if not len(rows):
        return np.zeros((0, 3, size, size), np.float32), rows
    y0, x0 = y[rows] - 1, x[rows] - 1
    batch = _rect_means(table, y0, x0, ey[rows] - y0, ex[rows] - x0, size, size)
    return _normalise(batch), rows


def _stage(table: np.ndarray, boxes: np.ndarray, net: Network, size: int, threshold: float):
    """Crop ``boxes`` to ``size``, run ``net``, keep the boxes whose face probability (the last column)
    is above ``threshold``: (boxes with their new scores, the network's rows for them), or None."""
    crops, rows = _crops(table, boxes, size)
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
    table = summed_area(image)
    h, w = image.shape[:2]
    found = []
    for scale in scales(h, w, s):
        hs, ws = int(h * scale + 1), int(w * scale + 1)
        out = pnet(_normalise(_level(table, hs, ws))[None])[0]
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
    staged = _stage(table, boxes, rnet, 24, s.thresholds[1])
    if staged is None:
        return none
    boxes, out = staged
    pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
    boxes = _rerec(_bbreg(boxes[pick], out[pick, :4]))
    # third stage: O-Net
    staged = _stage(table, boxes, onet, 48, s.thresholds[2])
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
