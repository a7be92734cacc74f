"""INT8 detectors behind the mAP gate: built from the trained detector (_detection_fixtures), the
verdict follows the numbers it reports, and the INT8 build that passed serves the mAP it was gated on."""

from __future__ import annotations

import json
import re

import pytest

from cvserve.builders.accuracy import GateSettings
from cvserve.builders.detection_metrics import coco_map
from cvserve.client import Client
from cvserve.errors import BuildError
from tests.integration import _detection_fixtures as fx


def _agrees_with_its_numbers(gate: dict) -> None:
    for check in gate["checks"]:
        assert check["passed"] == (check["value"] >= check["threshold"] - 1e-9)
    assert gate["decision"] == ("passed" if all(c["passed"] for c in gate["checks"]) else "failed")


def test_labelled_int8_passes_its_map_gate_and_serves_that_map(scenes, held_out, tmp_path):
    repository = tmp_path / "models"
    report = fx.build_detector(
        scenes, repository, precision="int8", calibration=scenes.calibration, validation=scenes.validation,
        validation_labels=scenes.truth, max_fallback_layers=4,
    )  # fmt: skip
    measured = report["accuracy"]
    gate = measured["gate"]
    _agrees_with_its_numbers(gate)
    assert gate["decision"] == "passed" and gate["metric"] == "map_ratio" and "labelled" in gate["rule"]
    assert measured["map"] >= 0.99 * measured["map_reference"] - 1e-9
    layers = report["network"]["layer_precisions"]  # OpenVINO names INT8 layers i8 or u8
    assert report["network"]["precision"] == "int8" and (layers.get("i8") or layers.get("u8"))
    assert len(report["quantization"]["excluded_layers"]) <= 4  # the fallback kept at most that in float

    from cvserve.server import ServerSettings, TritonServer

    settings = ServerSettings(
        repository=repository, grpc_port=0, http_port=0, metrics_port=0, exit_timeout_s=5
    )
    with TritonServer(settings) as server, Client(server.grpc_url, model=fx.NAME, timeout=60) as client:
        served = dict(zip(held_out, client.detect(list(held_out.values())), strict=True))
    got = coco_map(json.loads(scenes.truth.read_text()), served)
    assert abs(got["map50"] - measured["map50"]) <= 0.01, (got, measured)


def test_unlabelled_int8_is_gated_against_fp32s_boxes_as_its_numbers_say(scenes, tmp_path):
    try:
        report = fx.build_detector(
            scenes, tmp_path / "models", precision="int8", calibration=scenes.calibration,
            validation=scenes.validation, max_fallback_layers=0,
        )  # fmt: skip
    except BuildError as exc:  # a failed gate names its numbers, and they do miss
        found = re.search(r"map50_against_fp32 ([0-9.]+) < ([0-9.]+)", str(exc))
        assert found, str(exc)
        assert float(found[1]) < float(found[2])
        return
    gate = report["accuracy"]["gate"]
    _agrees_with_its_numbers(gate)
    assert gate["metric"] == "map50_against_fp32" and report["accuracy"]["reference_boxes"] > 0


@pytest.mark.parametrize("drop", [0.0])
def test_labelled_gate_without_fallback_decides_by_the_map_ratio(scenes, tmp_path, drop):
    try:
        report = fx.build_detector(
            scenes, tmp_path / "models", precision="int8", calibration=scenes.calibration,
            validation=scenes.validation, validation_labels=scenes.truth, max_fallback_layers=0,
            gate=GateSettings(max_accuracy_drop=drop),
        )  # fmt: skip
    except BuildError as exc:
        found = re.search(r"map_ratio ([0-9.]+) < ([0-9.]+) on (\d+) held-out images", str(exc))
        assert found and float(found[1]) < float(found[2]) and "nothing was written" in str(exc)
        return
    _agrees_with_its_numbers(report["accuracy"]["gate"])
