"""The MTCNN cascade's numpy parts (builders/mtcnn.py) against what they stand for: torch's area
resampling, exact integer sums, and one greedy NMS whichever way it is computed."""

import numpy as np
import pytest
import torch

from cvserve.builders import mtcnn

RNG = np.random.default_rng(7)


def _torch_area(image: np.ndarray, h: int, w: int) -> np.ndarray:
    x = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32))[None]
    return torch.nn.functional.interpolate(x, size=(h, w), mode="area")[0].numpy()


@pytest.mark.parametrize("size", [(24, 24), (48, 48), (50, 13), (131, 200), (7, 97), (97, 131)])
def test_area_resize_is_torchs_area_interpolation_then_normalised(size):
    image = RNG.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    got = mtcnn.area_resize(image, *size)
    want = (_torch_area(image, *size) - 127.5) * 0.0078125
    assert got.shape == (3, *size) and got.dtype == np.float32 and got.flags.c_contiguous
    assert np.abs(got - want).max() <= 1e-6  # torch sums in float32, this exactly


def test_crops_are_the_area_resized_windows():
    image = RNG.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    table = mtcnn.summed_area(image)
    boxes = np.array([[1, 1, 30, 40, 0.9], [10.7, 5.2, 89.9, 119.5, 0.8], [50, 60, 52, 61, 0.7]], np.float32)
    crops, rows = mtcnn._crops(table, boxes, 24)
    assert list(rows) == [0, 1, 2] and crops.shape == (3, 3, 24, 24)
    for crop, (x1, y1, x2, y2) in zip(crops, np.trunc(boxes[:, :4]).astype(int), strict=True):
        window = image[max(y1, 1) - 1 : y2, max(x1, 1) - 1 : x2]  # facenet's 1-based pad
        assert np.abs(crop - mtcnn.area_resize(window, 24, 24)).max() == 0


def test_summed_area_table_is_exact_in_both_integer_widths():
    image = RNG.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    narrow, wide = mtcnn.summed_area(image), mtcnn.summed_area(image, np.int64)
    assert narrow.dtype == np.int32  # no sum of 33 x 47 pixels can overflow int32
    assert np.array_equal(narrow, wide)
    assert wide[-1, -1].tolist() == image.reshape(-1, 3).sum(axis=0, dtype=np.int64).tolist()
    assert np.array_equal(wide[5, 9], image[:5, :9].reshape(-1, 3).sum(axis=0))


def test_float32_means_equal_the_float64_quotient_rounded_once():
    sums = RNG.integers(0, 255 * 400, (64, 64, 3)).astype(np.int32)
    area = RNG.integers(1, 400, (64, 64, 1))
    got = mtcnn._normalised_means(sums, area)
    mean = (sums / area).astype(np.float32)  # the float64 quotient, rounded once
    want = ((mean - 127.5) * 0.0078125).astype(np.float32)  # as the cascade normalised before
    assert np.array_equal(got, want)


def _random_boxes(n: int, ties: bool):
    xy = RNG.uniform(0, 200, (n, 2)).astype(np.float32)
    wh = RNG.uniform(0, 60, (n, 2)).astype(np.float32)
    scores = RNG.uniform(0, 1, n).astype(np.float32)
    return np.concatenate([xy, xy + wh], axis=1), np.round(scores, 1) if ties else scores


@pytest.mark.parametrize("method", ["Union", "Min"])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_over_the_overlap_matrix_keeps_what_the_greedy_loop_keeps(monkeypatch, method, threshold):
    for trial in range(40):
        boxes, scores = _random_boxes(int(RNG.integers(1, 300)), ties=trial % 4 == 0)
        matrix = mtcnn.nms(boxes, scores, threshold, method)
        monkeypatch.setattr(mtcnn, "_MATRIX_NMS_MAX", 0)
        loop = mtcnn.nms(boxes, scores, threshold, method)
        monkeypatch.undo()
        assert np.array_equal(matrix, loop)
        assert len(set(matrix.tolist())) == len(matrix)


def test_nms_by_hand():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    # box 3 first; box 0 overlaps it by 90 / 100, box 1 by 72 / 118 (0.61): both gone; box 2 apart
    assert mtcnn.nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert mtcnn.nms(boxes, scores, 0.65).tolist() == [3, 1, 2]
