"""``cvserve release`` of a detector against the real embedded Triton: mAP per slice, per-image F1.

The detector is the trained one of _detection_fixtures (its FP32 build, version 1). Version 2 is a copy
of it (a go); version 3 is the same network with its class names swapped in its config, so every face
is answered as a cat and every cat as a face: its mAP collapses on every slice and every image it got
right regresses (a no-go naming them). The golden set is eight held-out scenes with their boxes, sliced
by how many objects each holds. Load tests are short: they check that the figures are there.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvserve.builders import triton_config as tc
from cvserve.builders.repository import SNAPSHOT
from cvserve.cli import main
from cvserve.release.boxes import ANNOTATIONS_FILE
from tests.integration import _detection_fixtures as fx
from tests.integration.test_release import LENIENT_SPEED_GATES, SHORT_LOADTEST

pytestmark = pytest.mark.slow
GOLDEN_IMAGES = 8


@pytest.fixture(scope="module")
def golden(scenes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Held-out scenes in ``images/``, COCO truth with a slice: how many objects the scene holds."""
    truth = json.loads(scenes.truth.read_text())
    images = truth["images"][:GOLDEN_IMAGES]
    ids = {im["id"] for im in images}
    annotations = [a for a in truth["annotations"] if a["image_id"] in ids]
    d = tmp_path_factory.mktemp("golden_boxes")
    (d / "images").mkdir()
    for im in images:
        shutil.copy(scenes.validation / im["file_name"], d / "images" / im["file_name"])
        count = sum(a["image_id"] == im["id"] for a in annotations)
        im.update(file_name=f"images/{im['file_name']}", slices={"objects": str(count)})
    coco = {"images": images, "annotations": annotations, "categories": truth["categories"]}
    (d / ANNOTATIONS_FILE).write_text(json.dumps(coco, indent=1))
    return d


@pytest.fixture(scope="module")
def repo(detector_build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1: the FP32 build; 2: a copy; 3: a copy with its class names swapped. NAME/config.pbtxt
    pins version 1, as a build followed by ``cvserve rollback`` would leave it."""
    from cvserve.builders.repository import rollback

    built, _report = detector_build
    repo = tmp_path_factory.mktemp("release_detector") / "models"
    shutil.copytree(built, repo)
    model = repo / fx.NAME
    for version in (2, 3):
        shutil.copytree(model / "1", model / str(version))
    snapshot = model / "3" / SNAPSHOT
    cfg = tc.parse(snapshot.read_text())
    labels = json.loads(cfg.parameters["labels"].string_value)
    cfg.parameters["labels"].string_value = json.dumps(labels[::-1])
    snapshot.write_text(tc.to_text(cfg))
    rollback(repo, fx.NAME, 1)
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[object]:
    """Serves ``scenes`` version 1, as production would."""
    from cvserve.server import ServerSettings, TritonServer

    settings = ServerSettings.embedded(repo, load_models=[fx.NAME], exit_timeout_s=5)
    with TritonServer(settings) as srv:
        yield srv


def _release(server, repo: Path, golden: Path, report: Path, candidate: int) -> tuple[int, dict]:
    code = main(
        ["release", fx.NAME, "--golden", str(golden), "--url", server.grpc_url, "-r", str(repo),
         "--candidate", str(candidate), "--baseline", "1", "--report-dir", str(report),
         *SHORT_LOADTEST, *LENIENT_SPEED_GATES]
    )  # fmt: skip
    return code, json.loads((report / "release_report.json").read_text())


def test_a_copy_of_the_detector_is_a_go_with_map_per_slice(server, repo, golden, tmp_path, capsys):
    code, report = _release(server, repo, golden, tmp_path, 2)
    assert code == 0, capsys.readouterr()
    assert (report["decision"], report["failed_gates"], report["changed_cases"]) == ("go", [], [])
    assert report["golden"]["format"] == "boxes" and report["golden"]["cases"] == GOLDEN_IMAGES
    slices = {s["slice"]: s for s in report["slices"]}
    assert set(slices) >= {"all", "objects=1"} and slices["all"]["cases"] == GOLDEN_IMAGES
    for s in slices.values():  # the same network: the same mAP, no image changes
        assert s["candidate_map"] == s["baseline_map"] and s["regressions"] == s["improvements"] == 0
    assert slices["all"]["baseline_map50"] > 0.3  # the detector finds the objects: the gate means something
    gates = {g["name"] for g in report["gates"]}
    assert {"map_drop[all]", "map_drop[objects=1]", "regression_rate[all]"} <= gates
    assert report["loadtest"]["candidate"]["requests"] > 0  # the load test called detect()
    card = (repo / fx.NAME / "2" / "MODEL_CARD.md").read_text()
    assert "mAP@[.5:.95]" in card and "| objects=1 |" in card and "| task | detect |" in card
    assert "Object detection" in card


def test_a_detector_with_swapped_classes_is_a_no_go_naming_its_regressed_images(
    server, repo, golden, tmp_path, capsys
):
    from cvserve.server.control import ModelControl

    code, report = _release(server, repo, golden, tmp_path, 3)
    assert code == 1
    assert report["decision"] == "no-go"
    assert {"map_drop[all]", "regression_rate[all]"} <= set(report["failed_gates"])
    slices = {s["slice"]: s for s in report["slices"]}
    assert slices["all"]["candidate_map"] < 0.5 * slices["all"]["baseline_map"]
    regressed = [c for c in report["changed_cases"] if c["kind"] == "regression"]
    # Every image the baseline matched a box in is worse: all its matches now have the wrong class.
    assert regressed and all(
        c["baseline"]["f1"] > 0 and c["candidate"]["f1"] < c["baseline"]["f1"] for c in regressed
    )
    assert slices["all"]["regressions"] == len(regressed)
    md = (tmp_path / "release_report.md").read_text()
    assert "NO-GO" in md and all(f"`{c['path']}`" in md for c in regressed)
    out = capsys.readouterr().out
    assert "NO-GO" in out and "map_drop[all]" in out
    with ModelControl(server.grpc_url) as control:  # production's scenes kept serving version 1 only
        assert control.index() == [(fx.NAME, "1", "READY")]
