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
mean of a rectangle of input pixels, read from the image's summed-area table (exact integer sums of the
uint8 pixels), for every pyramid level and, vectorised, for all the crops of a stage at once. (Written
first as two averaging matrices per resize, it took 70% of the cascade's time: a GEMM over the whole
image per pyramid level and two small ones per crop in a Python loop. The table's layout, its integer
width, the gathers, float32 means and NMS over an overlap matrix then took the cascade from ~52 to
~32 ms per 512x512 photo on one thread, with bit-identical outputs: docs/detection.md.)

One deliberate difference: facenet-pytorch skips a crop whose box is empty after clipping but keeps its
box, misaligning the boxes and the network's rows after it; here the box is dropped.
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


def summed_area(image: np.ndarray, dtype: type | None = None) -> np.ndarray:
    """(H + 1, W + 1, C) summed-area table of an HWC uint8 image (a zero first row and column): exact
    integer sums, in int32 where no sum can overflow it (up to ~8.4 megapixels) and int64 above.

    The table stays HWC, the image's own layout, so both passes and every later gather read memory in
    order (a CHW int64 table took twice as long to build and to read)."""
    h, w, c = image.shape
    table = np.zeros((h + 1, w + 1, c), dtype or (np.int32 if h * w * 255 < 2**31 else np.int64))
    table[1:, 1:] = image
    np.cumsum(table, axis=1, out=table)  # along each row first: contiguous, the faster pass
    np.cumsum(table, axis=0, out=table)
    return table


def _bounds(start, length, size: int):
    """torch's adaptive-pooling windows: output cell ``i`` of ``size`` averages input rows
    [start + floor(i * length / size), start + ceil((i + 1) * length / size))."""
    i = np.arange(size)
    return start + (i * length) // size, start - ((-(i + 1) * length) // size)


def _normalised_means(sums: np.ndarray, area: np.ndarray) -> np.ndarray:
    """Window sums / their areas, rounded once to float32, normalised as MTCNN's networks take them:
    (mean - 127.5) / 128, in float32.

    In float32 throughout when every sum and area is exact in float32 (a window of at most 65,793
    pixels): a float32 quotient of exact operands equals the float64 quotient rounded to float32, so
    this is the same number as the float64 path, in a third of the passes over memory."""
    if int(area.max()) * 255 < 2**24:
        means = sums.astype(np.float32)
        means /= area.astype(np.float32)
    else:
        means = (sums / area).astype(np.float32)
    means -= np.float32(127.5)
    means *= np.float32(0.0078125)
    return means


def _rect_means(table: np.ndarray, y0, x0, ih, iw, size_h: int, size_w: int) -> np.ndarray:
    """(n, C, size_h, size_w) float32, normalised: the windows [y0, y0 + ih) x [x0, x0 + iw) (arrays of
    n) resized by area from the summed-area ``table``."""
    ly, hy = _bounds(y0[:, None], ih[:, None], size_h)
    lx, hx = _bounds(x0[:, None], iw[:, None], size_w)
    r0, r1, c0, c1 = ly[:, :, None], hy[:, :, None], lx[:, None, :], hx[:, None, :]
    flat, width = table.reshape(-1, table.shape[2]), table.shape[1]  # one take per corner, rows of C
    sums = flat.take(r1 * width + c1, axis=0)
    sums -= flat.take(r0 * width + c1, axis=0)
    sums -= flat.take(r1 * width + c0, axis=0)
    sums += flat.take(r0 * width + c0, axis=0)  # (n, h, w, C)
    area = (hy - ly)[:, :, None, None] * (hx - lx)[:, None, :, None]
    return np.ascontiguousarray(_normalised_means(sums, area).transpose(0, 3, 1, 2))


def _level(table: np.ndarray, h: int, w: int) -> np.ndarray:
    """(C, h, w) float32, normalised: the whole image of the summed-area ``table`` resized by area (one
    pyramid level): whole rows of the table first, then columns, cheaper than four 2-D gathers."""
    ly, hy = _bounds(0, table.shape[0] - 1, h)
    lx, hx = _bounds(0, table.shape[1] - 1, w)
    rows = table.take(hy, axis=0) - table.take(ly, axis=0)  # (h, W + 1, C)
    sums = rows.take(hx, axis=1)
    sums -= rows.take(lx, axis=1)
    means = _normalised_means(sums, (hy - ly)[:, None, None] * (hx - lx)[None, :, None])
    return np.ascontiguousarray(means.transpose(2, 0, 1))


def area_resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """An HWC uint8 image -> (3, h, w) float32 as the networks take it: resized as torch's
    ``interpolate(mode="area")``, then normalised."""
    return _level(summed_area(image), h, w)


_MATRIX_NMS_MAX = 1024  # boxes; above, the (n, n) overlaps would not pay for themselves in memory


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "Union") -> np.ndarray:
    """Greedy NMS, best first. ``Union``: torchvision's (IoU, areas without +1); ``Min``: facenet's
    numpy NMS of the last stage (intersection over the smaller area, areas with +1).

    Up to ``_MATRIX_NMS_MAX`` boxes, every pair's overlap is computed at once and the greedy pass only
    reads rows of it (a box kept per loop step, no array built per step); above, each kept box's
    overlaps with the boxes still standing. Both compute the same numbers, so they keep the same boxes.
    """
    if not len(boxes):
        return np.zeros(0, np.int64)
    plus = 1.0 if method == "Min" else 0.0
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + plus) * (y2 - y1 + plus)
    order = np.argsort(-scores, kind="stable")

    def overlap(i, rest):
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + plus)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + plus)
        inter = w * h
        if method == "Min":
            return inter / np.minimum(area[i], area[rest])
        return inter / np.maximum(area[i] + area[rest] - inter, 1e-12)

    keep = []
    if len(order) <= _MATRIX_NMS_MAX:
        suppressed = ~(overlap(order[:, None], order[None, :]) <= threshold)  # NaN suppresses, as below
        standing = np.ones(len(order), bool)
        for k in range(len(order)):
            if standing[k]:
                keep.append(int(order[k]))
                standing[k + 1 :] &= ~suppressed[k, k + 1 :]
        return np.asarray(keep, np.int64)
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        order = rest[overlap(i, rest) <= threshold]
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
    h, w = table.shape[0] - 1, table.shape[1] - 1
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x, y = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    ex, ey = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
    rows = np.nonzero((ey > y - 1) & (ex > x - 1))[0]
    if not len(rows):
        return np.zeros((0, 3, size, size), np.float32), rows
    y0, x0 = y[rows] - 1, x[rows] - 1
    return _rect_means(table, y0, x0, ey[rows] - y0, ex[rows] - x0, size, size), rows


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
        out = pnet(_level(table, hs, ws)[None])[0]
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
