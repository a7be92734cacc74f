"""Detector heads, class-aware NMS, the letterbox and the mapping of boxes back to original pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cvserve.builders import detection as det
from cvserve.builders.preprocessing import Placement, PreprocessSpec, decode, letterbox, pixels, placed

SPEC = PreprocessSpec(input_size=(64, 96), resize_shorter=0, fit="letterbox", stride=32)


def _png(w: int, h: int, rgb=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), rgb).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# -- letterbox and coordinate mapping -----------------------------------------------------------------
@pytest.mark.parametrize("size", [(300, 50), (50, 300), (97, 61), (1, 1), (96, 64), (333, 77)])
def test_letterbox_keeps_the_aspect_ratio_and_maps_boxes_back_exactly(size):
    w, h = size
    p = Placement.of(size, SPEC)
    nw, nh = p.resized
    assert nw <= 96 and nh <= 64 and (nw == 96 or nh == 64)  # fills one side
    assert abs(nw / nh - w / h) <= max(1 / nh, 1 / nw) * (w / h) + 1e-9 or min(nw, nh) == 1
    # the whole image maps to itself; a box at a known place maps back to it
    full = np.array([[p.offset[0], p.offset[1], p.offset[0] + nw, p.offset[1] + nh]], np.float32)
    np.testing.assert_allclose(p.to_original(full), [[0, 0, w, h]], atol=1e-3)
    box = np.array([[0.25 * w, 0.5 * h, 0.75 * w, h]], np.float32)
    sx, sy = nw / w, nh / h
    in_input = box * [sx, sy, sx, sy] + [*p.offset, *p.offset]
    np.testing.assert_allclose(p.to_original(in_input), box, atol=1e-3)
    np.testing.assert_allclose(p.points_to_original(in_input.reshape(2, 2)), box.reshape(2, 2), atol=1e-3)


def test_boxes_outside_the_image_are_clipped_to_it():
    p = Placement.of((300, 50), SPEC)
    out = p.to_original(np.array([[-50, -50, 500, 500]], np.float32))
    np.testing.assert_allclose(out, [[0, 0, 300, 50]])


def test_letterbox_pads_with_the_pad_value_around_the_centred_image():
    arr, p = placed(_png(300, 50), SPEC)
    assert arr.shape == (64, 96, 3) and p.offset[0] == 0 and p.offset[1] > 0
    assert (arr[: p.offset[1]] == SPEC.pad_value).all() and (arr[p.offset[1] + p.resized[1] :] == 114).all()
    assert (arr[p.offset[1] : p.offset[1] + p.resized[1], :, 0] > 150).all()
    np.testing.assert_array_equal(pixels(_png(300, 50), SPEC), arr)  # pixels() follows spec.fit


def test_a_reduced_jpeg_decode_still_maps_to_the_original_size():
    rng = np.random.default_rng(0)
    data = _jpeg(rng.integers(0, 255, (1200, 1800, 3), dtype=np.uint8))
    img = decode(data, SPEC)
    assert img.size[0] < 1800  # DCT scaling kicked in
    _, p = letterbox(img, SPEC)
    assert p.size == (1800, 1200)


def test_a_letterbox_size_off_the_stride_is_refused():
    with pytest.raises(ValueError, match="multiple of the stride"):
        PreprocessSpec(input_size=(100, 96), resize_shorter=0, fit="letterbox", stride=32)


# -- NMS ----------------------------------------------------------------------------------------------
def test_nms_keeps_the_best_of_overlapping_boxes_and_separate_ones():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9.5]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.6], np.float32)
    np.testing.assert_array_equal(det.nms(boxes, scores, 0.5), [1, 2])
    np.testing.assert_array_equal(det.nms(boxes, scores, 0.5, limit=1), [1])
    np.testing.assert_array_equal(det.nms(boxes, scores, 0.99), [1, 0, 2, 3])


def test_nms_is_class_aware():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    keep = det.batched_nms(boxes, scores, np.array([0, 1, 0]), 0.5)
    np.testing.assert_array_equal(keep, [0, 1])
    assert det.batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5).size == 0


def test_nms_matches_a_brute_force_reference_on_random_boxes():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (200, 2))], axis=1)
    scores, classes = rng.uniform(0, 1, 200), rng.integers(0, 3, 200)
    keep = det.batched_nms(boxes, scores, classes, 0.4)
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):  # the definition, pair by pair
        same = [k for k in kept if classes[k] == classes[i]]
        if all(det.box_iou(boxes[i : i + 1], boxes[k : k + 1])[0, 0] <= 0.4 for k in same):
            kept.append(int(i))
    np.testing.assert_array_equal(keep, kept)


# -- heads --------------------------------------------------------------------------------------------
def _yolo_raw(objects, anchors=50, classes=3) -> np.ndarray:
    """[1, 4 + C, A]: background anchors score 0.01; each object (cx, cy, w, h, class, score)."""
    raw = np.zeros((1, 4 + classes, anchors), np.float32)
    raw[0, 4:] = 0.01
    raw[0, 2:4] = 4
    for a, (cx, cy, w, h, c, s) in enumerate(objects):
        raw[0, :4, a] = (cx, cy, w, h)
        raw[0, 4 + c, a] = s
    return raw


def test_yolo_head_decodes_thresholds_nms_and_maps_back():
    p = Placement.of((300, 50), SPEC)  # input 96x64: resized 96x16 at offset (0, 24)
    objects = [
        (48, 32, 20, 10, 1, 0.9), (49, 32, 20, 10, 1, 0.8),  # the same object twice: one survives
        (48, 32, 20, 10, 2, 0.7),  # another class at the same place survives class-aware NMS
        (10, 30, 4, 4, 0, 0.2),  # below the score threshold
    ]  # fmt: skip
    s = det.NmsSettings(score_threshold=0.25, iou_threshold=0.5, max_detections=5)
    out = det.postprocess(_yolo_raw(objects), [p], s)
    assert out.boxes.shape == (1, 5, 4) and out.count[0, 0] == 2
    rows = out.rows(0)
    np.testing.assert_array_equal(rows.classes, [1, 2])
    np.testing.assert_allclose(rows.scores, [0.9, 0.7])
    scale = 96 / 300
    want = np.array([38 / scale, (27 - 24) / scale, 58 / scale, (37 - 24) / scale])
    np.testing.assert_allclose(rows.boxes[0], np.clip(want, 0, [300, 50, 300, 50]), atol=1e-3)
    assert (out.boxes[0, 2:] == 0).all() and (out.scores[0, 2:] == 0).all()  # the padding


def test_max_detections_caps_the_rows():
    objects = [(10 + 8 * i, 32, 4, 4, 0, 0.5 + i / 100) for i in range(10)]
    out = det.postprocess(
        _yolo_raw(objects), [Placement.of((96, 64), SPEC)], det.NmsSettings(max_detections=3)
    )
    assert out.count[0, 0] == 3 and out.scores.shape == (1, 3)
    np.testing.assert_allclose(out.rows(0).scores, [0.59, 0.58, 0.57], atol=1e-6)


def test_end2end_head_keeps_the_networks_rows_above_the_threshold():
    raw = np.zeros((2, 4, 6), np.float32)
    raw[0, 0] = (10, 20, 30, 40, 0.9, 2)
    raw[0, 1] = (10, 20, 30, 40, 0.1, 1)
    raw[0, 2] = (50, 10, 60, 20, 0.95, 0)
    p = Placement.of((96, 64), SPEC)
    out = det.postprocess(raw, [p, p], det.NmsSettings(head="end2end", max_detections=4))
    assert out.count[:, 0].tolist() == [2, 0]
    np.testing.assert_array_equal(out.rows(0).classes, [0, 2])
    np.testing.assert_allclose(out.rows(0).boxes[1], (10, 20, 30, 40))


@pytest.mark.parametrize(("head", "shape"), [("yolo", (1, 4, 10)), ("end2end", (1, 10, 5)), ("yolo", (1, 8))])
def test_a_raw_output_of_another_layout_fails_naming_the_head(head, shape):
    with pytest.raises(ValueError, match=head):
        det.postprocess(
            np.zeros(shape, np.float32), [Placement.of((96, 64), SPEC)], det.NmsSettings(head=head)
        )


def test_nms_settings_round_trip_through_config_parameters():
    s = det.NmsSettings(head="end2end", score_threshold=0.3, iou_threshold=0.6, max_detections=7)
    assert det.NmsSettings.from_parameters(s.parameters()) == s
    with pytest.raises(ValueError):
        det.NmsSettings(head="ssd")


def test_nms_placement_benchmark_runs_as_a_smoke_and_both_places_agree():
    """The measurement script (numbers are for docs/benchmarks.md, never asserted): in-graph ONNX
    NonMaxSuppression on OpenVINO keeps the rows that the served numpy NMS keeps."""
    from cvserve.builders.bench_nms import measure

    result = measure(batch=2, anchors=400, classes=3, rounds=1, s=det.NmsSettings(max_detections=50))
    assert result["images_agree"] == 2


def test_end2end_heads_compare_as_detections_not_row_by_row():
    """A ranking's low rows of near-equal scores come in either order from two runtimes (an exported
    top-K): the heads agree when their confident rows do."""
    s = det.NmsSettings(head="end2end", score_threshold=0.25)
    rng = np.random.default_rng(0)
    confident = np.float32([[10, 10, 30, 30, 0.9, 1], [40, 5, 60, 25, 0.6, 0]])
    low = np.column_stack([rng.uniform(0, 90, (30, 4)), np.full(30, 1e-4), rng.integers(0, 2, 30)])
    reference = np.concatenate([confident, low]).astype(np.float32)[None]
    shuffled = reference.copy()
    shuffled[0, 2:] = shuffled[0, 2:][rng.permutation(30)]  # the tied rows in another order
    assert det.HEADS["yolo"].difference(shuffled, reference, 0.1, s)[1] == 0  # as anchors: all differ
    diff, agree = det.HEADS["end2end"].difference(shuffled, reference, 0.1, s)
    assert agree == 1 and diff == 0.0
    moved = shuffled.copy()
    moved[0, 0, :4] += 0.05  # within the tolerance
    assert det.end2end_difference(moved, reference, 0.1, s) == (pytest.approx(0.05, abs=1e-5), 1)
    other_class = shuffled.copy()
    other_class[0, 1, 5] = 1  # a confident row changed class
    assert det.end2end_difference(other_class, reference, 0.1, s)[1] == 0
    lost = shuffled.copy()
    lost[0, 0, 4] = 1e-4  # a confident row lost
    diff, agree = det.end2end_difference(lost, reference, 0.1, s)
    assert agree == 0 and diff == float("inf")
