"""The end-to-end head (``--head end2end``: ``[N, K, 6]`` rows, no NMS in the served path) built from a
checkpoint, served by the real Triton and called by the client, as the YOLO head is in test_detection.py:
the trained detector with an NMS-free top-K tail (``detection_data.end2end_checkpoint``)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from cvserve.builders.detection import NmsSettings
from cvserve.builders.detection_data import torch_detections
from cvserve.builders.detection_metrics import coco_map
from cvserve.client import Client
from tests.integration import _detection_fixtures as fx

END2END = NmsSettings(head="end2end", score_threshold=0.05, max_detections=20)


@pytest.fixture(scope="module")
def end2end(scenes, tmp_path_factory):
    """(the end2end checkpoint, its build report, a server serving it)."""
    from cvserve.builders.detection_data import end2end_checkpoint
    from cvserve.server import ServerSettings, TritonServer

    root = tmp_path_factory.mktemp("end2end")
    checkpoint = end2end_checkpoint(scenes.checkpoint, root / "end2end.pt")
    report = fx.build_detector(scenes, root / "models", checkpoint=checkpoint, detection=END2END)
    settings = ServerSettings(
        repository=root / "models", grpc_port=0, http_port=0, metrics_port=0, exit_timeout_s=5
    )
    with TritonServer(settings) as server:
        yield checkpoint, report, server


@pytest.fixture(scope="module")
def served(end2end, held_out):
    with Client(end2end[2].grpc_url, model=fx.NAME, timeout=60) as client:
        return dict(zip(held_out, client.detect(list(held_out.values())), strict=True))


def test_the_build_reads_the_head_and_checks_the_served_rows(end2end):
    report = end2end[1]
    assert report["task"]["name"] == "detect" and report["task"]["head"] == "end2end"
    check = report["verification"]["served"]
    assert check["count_equal"] == check["images"] and check["max_box_diff_px"] <= 1.0


def test_served_map_equals_in_process_pytorch(scenes, held_out, end2end, served):
    truth = json.loads(scenes.truth.read_text())
    reference = coco_map(truth, torch_detections(end2end[0], held_out, scenes.spec, END2END))
    got = coco_map(truth, served)
    assert reference["map50"] > 0.2, reference  # the rows find the objects: the comparison means something
    assert abs(got["map50"] - reference["map50"]) <= 0.005, (got, reference)
    assert abs(got["map"] - reference["map"]) <= 0.005, (got, reference)


def test_rows_come_back_best_first_in_original_pixels(held_out, served):
    assert any(served.values())
    for name, data in held_out.items():
        w, h = Image.open(io.BytesIO(data)).size
        found = served[name]
        assert len(found) <= END2END.max_detections
        assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
        for d in found:
            x1, y1, x2, y2 = d.box
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h and d.score > END2END.score_threshold
            assert d.label == ("face", "cat")[d.index]
