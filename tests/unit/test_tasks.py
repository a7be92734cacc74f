"""The task module: what a detect build writes (outputs, parameters, refusals) and the client's parse."""

from __future__ import annotations

import numpy as np
import pytest

from cvserve.builders import tasks
from cvserve.builders import triton_config as tc
from cvserve.builders.detection import NmsSettings
from cvserve.builders.runtime import decide
from cvserve.client import contract
from cvserve.client._detection import detector_spec, parse_detections
from cvserve.client._metadata import pick_model
from cvserve.client.errors import InvalidInput, ServerError
from cvserve.client.types import ModelInfo, TensorSpec
from cvserve.errors import UserInputError

LENIENT = tc.Batching(max_queue_size=8)


def _config(task: str, nms: NmsSettings | None = None):
    shape = tc.PipelineShape(pixels_shape=(96, 96, 3), top_k=5, labels=["face", "cat"], task=task, nms=nms)
    plan = decide()
    return tc.pipeline_configs("m", plan, shape, LENIENT.scheduling(plan.roles), tc.VersionPolicy())[
        "classifier"
    ]


def test_detect_config_has_fixed_k_rows_a_count_and_its_nms_parameters():
    cfg = _config("detect", NmsSettings(max_detections=7, iou_threshold=0.6))
    outputs = {o.name: list(o.dims) for o in cfg.output}
    assert outputs == {"BOXES": [7, 4], "SCORES": [7], "CLASSES": [7], "COUNT": [1]}
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["task"] == "detect" and params["nms_iou_threshold"] == "0.6"
    assert NmsSettings.from_parameters(params) == NmsSettings(max_detections=7, iou_threshold=0.6)


def test_classify_config_keeps_its_outputs():
    cfg = _config("classify")
    assert {o.name: list(o.dims) for o in cfg.output} == {"CLASS_INDEX": [5], "SCORE": [5]}
    assert cfg.parameters["task"].string_value == "classify" and "nms_head" not in cfg.parameters


def test_detect_preprocessing_is_a_letterbox():
    from cvserve.builders.preprocessing import PreprocessSpec

    spec = tasks.get("detect").preprocess(PreprocessSpec(input_size=(64, 64)))
    assert spec.fit == "letterbox" and spec.resize_shorter == 0


def test_detect_serves_every_layout_with_every_head():
    for head in ("yolo", "end2end"):
        detect = tasks.get("detect", nms=NmsSettings(head=head))
        for plan in (decide(layout="ensemble"), decide(target="gpu"), decide()):
            detect.check_plan(plan, "int8")  # gated by mAP
    detect = tasks.get("detect")
    assert detect.serving_plan(decide(target="gpu")).roles.postprocess == "postprocess"
    assert detect.serving_plan(decide()).roles.postprocess is None  # single: one python model
    assert tasks.get("classify").serving_plan(decide(target="gpu")).roles.postprocess is None


def test_head_shape_checks_name_the_flag():
    assert tasks.get("detect").num_classes((6, 144)) == 2
    with pytest.raises(UserInputError, match="--head"):
        tasks.get("detect").num_classes((10,))
    with pytest.raises(UserInputError, match="task"):
        tasks.get("segment")


def test_build_flags_include_the_task_and_nms(tmp_path):
    import argparse

    from cvserve.builders.pipeline import BuildSettings
    from cvserve.settings import add_arguments, from_args

    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"")
    parser = argparse.ArgumentParser()
    add_arguments(parser, BuildSettings)
    argv = [str(ckpt), "--name", "d", "--task", "detect", "--max-detections", "9", "--iou-threshold", "0.3"]
    s = from_args(BuildSettings, parser.parse_args(argv))
    assert s.task == "detect" and s.detection == NmsSettings(max_detections=9, iou_threshold=0.3)
    ensemble = [*argv, "--layout", "ensemble", "--runtime", "onnxruntime"]
    assert from_args(BuildSettings, parser.parse_args(ensemble)).serving.plan().layout == "ensemble"
    end2end = from_args(BuildSettings, parser.parse_args([*ensemble, "--head", "end2end"]))
    assert end2end.detection.head == "end2end" and end2end.serving.plan().layout == "ensemble"


# -- the client's side ---------------------------------------------------------------------------------
def _detector(name="det", landmarks=False) -> ModelInfo:
    outputs = [
        TensorSpec("BOXES", "FP32", (-1, 3, 4)), TensorSpec("SCORES", "FP32", (-1, 3)),
        TensorSpec("CLASSES", "INT64", (-1, 3)), TensorSpec("COUNT", "INT32", (-1, 1)),
    ] + ([TensorSpec("LANDMARKS", "FP32", (-1, 3, 5, 2))] if landmarks else [])  # fmt: skip
    return ModelInfo(
        name=name, version="1", platform="python", max_batch_size=4,
        inputs=(TensorSpec("IMAGE", "BYTES", (-1, 1)),), outputs=tuple(outputs), labels=("face", "cat"),
    )  # fmt: skip


class _Result:
    def __init__(self, arrays):
        self.arrays = arrays

    def as_numpy(self, name):
        return self.arrays.get(name)


def _arrays(n=2, landmarks=False):
    arrays = {
        "BOXES": np.arange(n * 12, dtype=np.float32).reshape(n, 3, 4),
        "SCORES": np.array([[0.9, 0.5, 0.0]] * n, np.float32),
        "CLASSES": np.array([[1, 0, 0]] * n, np.int64),
        "COUNT": np.array([[2], [0]][:n], np.int32),
    }
    if landmarks:
        arrays["LANDMARKS"] = np.ones((n, 3, 5, 2), np.float32)
    return arrays


def test_detections_are_parsed_from_fixed_rows_and_count():
    spec = detector_spec(_detector())
    first, second = parse_detections(_Result(_arrays()), spec, 2, "det")
    assert second == [] and [d.label for d in first] == ["cat", "face"]
    assert first[0].box == (0.0, 1.0, 2.0, 3.0) and first[0].score == pytest.approx(0.9)
    assert first[0].landmarks is None


def test_landmarks_come_back_when_the_model_has_them():
    spec = detector_spec(_detector(landmarks=True))
    assert spec.outputs[-1] == contract.LANDMARKS
    [found] = parse_detections(_Result(_arrays(1, landmarks=True)), spec, 1, "det")
    assert found[0].landmarks == ((1.0, 1.0),) * 5


def test_a_bad_count_or_missing_rows_is_a_server_error():
    spec = detector_spec(_detector())
    bad = _arrays()
    bad["COUNT"] = np.array([[4], [0]], np.int32)
    with pytest.raises(ServerError, match="COUNT 4"):
        parse_detections(_Result(bad), spec, 2, "det")
    with pytest.raises(ServerError, match="BOXES"):
        parse_detections(_Result({}), spec, 2, "det")


def test_a_classifier_is_no_detector_and_discovery_picks_the_one_detector():
    classifier = ModelInfo(
        name="cls", version="1", platform="python", max_batch_size=4,
        inputs=(TensorSpec("IMAGE", "BYTES", (-1, 1)),),
        outputs=(TensorSpec("CLASS_INDEX", "INT64", (-1, 5)), TensorSpec("SCORE", "FP32", (-1, 5))),
    )  # fmt: skip
    with pytest.raises(InvalidInput, match=r"not a cvserve detector.*--task detect"):
        detector_spec(classifier)
    assert pick_model([classifier, _detector()], "h:1", detector_spec, "detectors", "detect") == "det"
    with pytest.raises(InvalidInput, match="2 detectors"):
        pick_model([_detector("a"), _detector("b")], "h:1", detector_spec, "detectors", "detect")


# -- the mAP gate's rule --------------------------------------------------------------------------------
def test_map_gate_is_relative_with_labels_and_against_fp32_without():
    from cvserve.builders.accuracy import GateSettings
    from cvserve.builders.detection_gate import DetectionAccuracy, MeanAveragePrecision

    metric, settings = MeanAveragePrecision(NmsSettings()), GateSettings(max_accuracy_drop=0.01)
    labelled = DetectionAccuracy(
        held_out_images=80, map=0.495, map50=0.8, map_reference=0.5, map50_reference=0.8
    )
    assert metric.gate(labelled, settings).decision == "passed"  # 0.99 of FP32's: on the line
    worse = DetectionAccuracy(held_out_images=80, map=0.49, map50=0.8, map_reference=0.5, map50_reference=0.8)
    verdict = metric.gate(worse, settings)
    assert (
        verdict.decision == "failed"
        and verdict.metric == "map_ratio"
        and verdict.value == pytest.approx(0.98)
    )
    unlabelled = DetectionAccuracy(held_out_images=80, map=0.7, map50=0.995, reference_boxes=60)
    assert metric.gate(unlabelled, settings).metric == "map50_against_fp32"
    assert metric.gate(unlabelled, settings).passed
    nothing = DetectionAccuracy(held_out_images=80, map=0.0, map50=0.0, reference_boxes=0)
    assert metric.gate(nothing, settings).decision == "refused"


def test_map_of_perfect_and_of_shifted_detections():
    from cvserve.builders.detection_metrics import Box, as_truth, coco_map, matched_f1

    found = {"a.png": [Box((10, 10, 50, 50), 0.9, 0), Box((60, 60, 90, 90), 0.8, 1)], "b.png": []}
    truth = as_truth(
        {"a.png": found["a.png"], "b.png": []}, ("x", "y"), {"a.png": (100, 100), "b.png": (50, 50)}
    )
    assert coco_map(truth, found) == {"map": pytest.approx(1.0), "map50": pytest.approx(1.0)}
    shifted = {"a.png": [Box((14, 14, 54, 54), 0.9, 0), Box((60, 60, 90, 90), 0.8, 1)]}
    got = coco_map(truth, shifted)
    assert got["map50"] == pytest.approx(1.0) and got["map"] < 1.0
    assert coco_map(truth, {"a.png": [Box((10, 10, 50, 50), 0.9, 1)]})["map50"] == 0.0  # wrong class
    tb, tc = np.array([[10, 10, 50, 50], [60, 60, 90, 90]]), np.array([0, 1])
    assert matched_f1(tb, tc, found["a.png"]) == 1.0
    assert matched_f1(tb, tc, [Box((10, 10, 50, 50), 0.9, 0)]) == pytest.approx(2 / 3)
    assert matched_f1(np.zeros((0, 4)), np.zeros(0), []) == 1.0


def test_model_info_reads_the_task_from_the_config():
    from types import SimpleNamespace

    from cvserve.client._metadata import model_info

    cfg = _config("detect", NmsSettings(max_detections=3))
    metadata = SimpleNamespace(name="m", versions=["1"], platform="python", inputs=[], outputs=[])
    assert model_info(metadata, cfg).task == "detect"
    assert model_info(metadata, None).task == "classify"  # models built before tasks existed


def test_the_loadtest_sends_each_tasks_call():
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("locust") is None:  # looked up, not imported: Locust patches the stdlib
        pytest.skip("the loadtest extra is not installed")
    code = (  # in its own process: importing Locust patches the standard library (gevent)
        "from cvserve.client import contract\n"
        "from cvserve.loadtests.locustfile import CALLS\n"
        "assert set(CALLS) == set(contract.TASKS), CALLS\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
