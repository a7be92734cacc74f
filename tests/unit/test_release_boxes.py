"""cvserve release for detectors without a server: the COCO golden set and its errors, per-image F1
matching, mAP per slice and its gates, the task choosing the format, the report and the model card."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders.detection_metrics import Box
from cvserve.builders.tasks import returns_detections
from cvserve.errors import UserInputError
from cvserve.release.box_compare import BoxComparison, BoxedImages, BoxSlice, compare_boxes, image_f1
from cvserve.release.boxes import ANNOTATIONS_FILE, load_box_golden_set, resolve_classes
from cvserve.release.formats import check_same_task, golden_format
from cvserve.release.gates import evaluate, failed
from cvserve.release.golden import GoldenSetError
from cvserve.release.labelled import LabelledImages
from cvserve.release.settings import ReleaseSettings
from cvserve.release.versions import ModelVersion, build_facts

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16  # only the signature is read by the validation
CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 1, "name": "face"}]  # by id: face is position 0, cat 1


def _coco() -> dict:
    """Four images, two slices by lighting; boxes as COCO x, y, width, height."""
    images = [
        {"id": 10, "file_name": "img/a.png", "width": 100, "height": 80, "slices": {"lighting": "normal"}},
        {"id": 11, "file_name": "img/b.png", "width": 100, "height": 80, "slices": {"lighting": "normal"}},
        {"id": 12, "file_name": "img/c.png", "width": 100, "height": 80, "slices": {"lighting": "dark"}},
        {"id": 13, "file_name": "img/d.png", "width": 100, "height": 80, "slices": {"lighting": "dark"}},
    ]
    annotations = [
        {"image_id": 10, "category_id": 1, "bbox": [10, 10, 30, 30]},
        {"image_id": 10, "category_id": 3, "bbox": [50, 20, 40, 40]},
        {"image_id": 11, "category_id": 1, "bbox": [5, 5, 20, 30]},
        {"image_id": 12, "category_id": 3, "bbox": [30, 30, 40, 40]},
        {"image_id": 13, "category_id": 1, "bbox": [60, 10, 30, 30]},
    ]
    return {"images": images, "annotations": annotations, "categories": [dict(c) for c in CATEGORIES]}


def _write(root: Path, coco: dict | str, files: dict[str, bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in (files if files is not None else {f"img/{c}.png": PNG for c in "abcd"}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / ANNOTATIONS_FILE).write_text(coco if isinstance(coco, str) else json.dumps(coco))
    return root


def _version(number: int, labels: list[str] | None, task: str | None = "detect") -> ModelVersion:
    report = {"schema": 3, "task": {"name": task}} if task else {"schema": 2}
    return ModelVersion(
        name="scenes",
        version=number,
        directory=Path("models/scenes") / str(number),
        config=mc.ModelConfig(name="scenes"),
        labels=labels,
        build=build_facts(report),
    )


def _truth_detections(golden, score: float = 0.9) -> list[tuple[Box, ...]]:
    """Detections equal to the golden boxes, as a perfect version would return them."""
    return [
        tuple(Box(b, score, k) for b, k in zip(case.boxes, case.categories, strict=True))
        for case in golden.cases
    ]


# -- the golden set -------------------------------------------------------------------------------------
def test_a_coco_golden_set_reads_boxes_categories_and_slices(tmp_path):
    g = load_box_golden_set(_write(tmp_path, _coco()))
    assert (len(g), g.boxes, g.slice_columns, g.category_names) == (4, 5, ("lighting",), ("face", "cat"))
    a = g.cases[0]
    assert (a.path, a.image_id, a.slices) == ("img/a.png", 10, {"lighting": "normal"})
    assert a.boxes == ((10.0, 10.0, 40.0, 40.0), (50.0, 20.0, 90.0, 60.0))  # x1, y1, x2, y2
    assert a.categories == (0, 1) and a.crowd == (False, False)
    # What the evaluator reads: ids, areas and iscrowd filled in, categories by id, no slices.
    assert [c["id"] for c in g.truth["categories"]] == [1, 3]
    assert g.truth["annotations"][0] | {} == {
        "id": 1, "image_id": 10, "category_id": 1, "bbox": [10.0, 10.0, 30.0, 30.0], "area": 900.0, "iscrowd": 0,
    }  # fmt: skip
    assert "slices" not in g.truth["images"][0]


def test_an_image_without_a_slice_value_is_in_the_blank_slice(tmp_path):
    coco = _coco()
    del coco["images"][3]["slices"]
    coco["images"][0]["slices"]["source"] = "street"
    g = load_box_golden_set(_write(tmp_path, coco))
    assert g.slice_columns == ("lighting", "source")
    assert [c.slices for c in g.cases[2:]] == [
        {"lighting": "dark", "source": ""},
        {"lighting": "", "source": ""},
    ]


def _set(path: str, value):
    def change(coco: dict) -> None:
        *keys, last = path.split(".")
        target = coco
        for key in keys:
            target = target[int(key)] if key.isdigit() else target[key]
        if value is _DELETE:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return change


_DELETE = object()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_set("images", _DELETE), "has no images list: COCO JSON needs images, annotations and categories"),
        (_set("images", []), "lists no images"),
        (_set("categories", []), "lists no categories"),
        (_set("categories.0.name", ""), "categories[0] (id 3) needs a name"),
        (_set("categories.1.id", 3), "categories[1]: category id 3 appears twice"),
        (_set("categories.1.name", "cat"), "category name 'cat' appears twice"),
        (_set("images.1.file_name", None), "images[1] (id 11) needs a file_name"),
        (_set("images.1.id", 10), "images[1]: image id 10 appears twice"),
        (_set("images.1.file_name", "img/a.png"), "lists img/a.png twice (images[0] and images[1])"),
        (_set("images.1.file_name", "../b.png"), "../b.png is not inside the golden folder"),
        (_set("images.1.file_name", "img/b.gif"), "img/b.gif is not a JPEG/PNG file"),
        (_set("images.1.slices", ["dark"]), "slices must be an object of named text values"),
        (_set("images.1.width", 0), "width must be a positive integer"),
        (_set("annotations.2.image_id", 99), "annotations[2]: image_id 99 is not the id of an image listed"),
        (
            _set("annotations.2.category_id", 2),
            "annotations[2]: category_id 2 is not a category listed (ids 1, 3)",
        ),
        (_set("annotations.2.bbox", [1, 2, 3]), "annotations[2]: bbox must be [x, y, width, height]"),
        (_set("annotations.2.bbox", [1, 2, 0, 3]), "with width and height > 0"),
        (_set("annotations.2.bbox", [1, 2, "3", 4]), "bbox must be [x, y, width, height]"),
        # x1, y1, x2, y2 written by mistake: the box reaches past the 100 x 80 image
        (
            _set("annotations.1.bbox", [50, 20, 90, 60]),
            "reaches past its image img/a.png (100 x 80): COCO's bbox",
        ),
    ],
)
def test_a_bad_coco_golden_set_is_one_clear_error(tmp_path, damage, says):
    coco = _coco()
    damage(coco)
    with pytest.raises(GoldenSetError, match=re.escape(says)):
        load_box_golden_set(_write(tmp_path, coco))


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(GoldenSetError, match="is not a directory"):
        load_box_golden_set(tmp_path / "nope")
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "labels.csv").write_text("path,label\n")
    with pytest.raises(GoldenSetError, match=r"has no annotations.json \(labels.csv is a classifier's"):
        load_box_golden_set(tmp_path / "csv")
    with pytest.raises(GoldenSetError, match=r"is not valid JSON \(line 2, column 2"):
        load_box_golden_set(_write(tmp_path / "j", '{"images": []\n,,}'))
    with pytest.raises(GoldenSetError, match="must hold one JSON object"):
        load_box_golden_set(_write(tmp_path / "l", "[]"))
    files = {"img/a.png": PNG, "img/b.png": b"GIF89a" + b"\0" * 8, "img/c.png": PNG}
    with pytest.raises(GoldenSetError, match=r"1 image\(s\) listed in .* are not in .*: img/d.png"):
        load_box_golden_set(_write(tmp_path / "m", _coco(), files))
    files["img/d.png"] = PNG
    with pytest.raises(GoldenSetError, match=r"not JPEG or PNG images whatever their names: img/b\.png"):
        load_box_golden_set(_write(tmp_path / "g", _coco(), files))


def test_categories_map_to_each_versions_classes_by_name(tmp_path):
    g = load_box_golden_set(_write(tmp_path, _coco()))
    swapped = resolve_classes(g, {1: ["face", "cat", "dog"], 2: ["cat", "face"], 3: None}, "scenes")
    assert swapped.classes == {1: (0, 1, -1), 2: (1, 0), 3: None}
    with pytest.raises(
        GoldenSetError, match=r"1 categor\(y/ies\) are not classes of scenes: 'cat'; name each"
    ):
        resolve_classes(g, {1: ["face", "dog"]}, "scenes")


# -- F1 per image ---------------------------------------------------------------------------------------
def test_image_f1_matches_greedily_by_score_within_a_class(tmp_path):
    case = load_box_golden_set(_write(tmp_path, _coco())).cases[0]  # face (10,10,40,40), cat (50,20,90,60)
    assert image_f1(case, [Box((10, 10, 40, 40), 0.9, 0), Box((50, 20, 90, 60), 0.8, 1)]) == 1.0
    # The cat box called a face matches nothing; so does a second face on the matched one.
    found = [Box((10, 10, 40, 40), 0.9, 0), Box((50, 20, 90, 60), 0.8, 0), Box((11, 11, 40, 40), 0.7, 0)]
    assert image_f1(case, found) == pytest.approx(2 * 1 / (2 + 3))
    # Best score first: the 0.9 box (IoU 0.56 with the face) takes it, the exact 0.5 one is left over.
    found = [Box((16, 10, 46, 40), 0.5, 0), Box((20, 10, 50, 40), 0.9, 0)]
    assert image_f1(case, found) == pytest.approx(2 * 1 / (2 + 2))
    assert image_f1(case, [Box((25, 10, 55, 40), 0.9, 0)]) == 0.0  # IoU 0.33 < 0.5
    # Classes the golden set has no category for are left out, not counted as false positives.
    assert image_f1(case, [Box((10, 10, 40, 40), 0.9, 0), Box((0, 0, 5, 5), 0.9, -1)]) == pytest.approx(2 / 3)


# -- the comparison and its gates -----------------------------------------------------------------------
def _settings(**kw) -> ReleaseSettings:
    return ReleaseSettings(name="scenes", golden=Path("g"), candidate=2, slo_p95_ms=500.0, **kw)


_LOAD = {"p95_ms": 10.0, "error_rate": 0.0, "cost_per_1k_usd": None, "inferences_per_s": 100.0}


def test_a_candidate_worse_on_dark_images_fails_only_the_dark_and_overall_gates(tmp_path):
    golden = load_box_golden_set(_write(tmp_path, _coco()))
    baseline = _truth_detections(golden)
    candidate = list(baseline)
    candidate[3] = ()  # d.png (dark) loses its face
    candidate[0] = (*baseline[0], Box((0, 0, 9, 9), 0.1, 0))  # a.png gains a low-score false positive
    c = compare_boxes(golden, baseline, candidate)
    slices = {s.slice: s for s in c.slices}
    assert [s.slice for s in c.slices] == ["all", "lighting=normal", "lighting=dark"]
    assert all(s.baseline_map == pytest.approx(1.0) for s in c.slices)
    assert slices["lighting=normal"].candidate_map == pytest.approx(1.0)  # ranked below every true box
    # Dark: the cat found (AP 1), the one face missed (AP 0).
    assert (
        slices["lighting=dark"].candidate_map == slices["lighting=dark"].candidate_map50 == pytest.approx(0.5)
    )
    # F1: a.png 1 -> 0.8 (a regression too), d.png 1 -> 0.
    assert [round(r.candidate_f1, 6) for r in c.cases] == [0.8, 1.0, 1.0, 0.0]
    assert [r.path for r in (x.case for x in c.changed)] == ["img/a.png", "img/d.png"]
    assert (slices["all"].regressions, slices["lighting=dark"].regression_rate) == (2, 0.5)

    gates = evaluate(_settings(), c, _LOAD, _LOAD)
    assert failed(gates) == [
        "map_drop[all]",
        "map_drop[lighting=dark]",
        "regression_rate[all]",
        "regression_rate[lighting=normal]",
        "regression_rate[lighting=dark]",
    ]
    # A tolerant regression bar leaves only the mAP; a floor adds the slices below it.
    loose = evaluate(_settings(max_regression_rate=0.5, min_map=0.9), c, _LOAD, _LOAD)
    assert failed(loose) == ["map_drop[all]", "map_drop[lighting=dark]", "map[all]", "map[lighting=dark]"]
    floor = next(g for g in loose if g.name == "map[lighting=normal]")
    assert (floor.op, floor.passed, floor.threshold) == (">=", True, 0.9)


def test_an_identical_candidate_passes_every_golden_gate(tmp_path):
    golden = load_box_golden_set(_write(tmp_path, _coco()))
    same = _truth_detections(golden)
    c = compare_boxes(golden, same, same)
    assert c.changed == [] and failed(evaluate(_settings(min_map=1.0), c, _LOAD, _LOAD)) == []


def test_the_map_drop_is_relative_to_the_baseline_with_the_default_1_percent():
    def drop(base: float, cand: float) -> BoxSlice:
        return BoxSlice(slice="all", cases=10, boxes=20, baseline_map=base, baseline_map50=base,
                        candidate_map=cand, candidate_map50=cand, regressions=0, improvements=0)  # fmt: skip

    s = _settings()
    assert s.max_map_drop == 0.01 and s.min_map is None and s.max_regression_rate == 0.02
    assert drop(0.5, 0.496).map_drop == pytest.approx(0.008)
    assert drop(0.0, 0.0).map_drop == 0.0 and drop(0.4, 0.5).map_drop == pytest.approx(-0.25)

    # Two slices: a drop of 0.98% passes the default 1%, one of 1.2% fails it.
    gates = BoxComparison(cases=(), slices=(drop(0.5, 0.4951), drop(0.5, 0.494))).gates(s)
    assert [g.passed for g in gates[:2]] == [True, False]


# -- the task chooses the format ------------------------------------------------------------------------
def test_the_candidates_task_chooses_the_golden_set_format():
    assert isinstance(golden_format(_version(2, ["face"])), BoxedImages)
    assert isinstance(golden_format(_version(2, ["cat"], task="classify")), LabelledImages)
    assert isinstance(golden_format(_version(2, ["cat"], task=None)), LabelledImages)  # built before tasks
    with pytest.raises(UserInputError, match="names the task 'segment', which this cvserve does not know"):
        golden_format(_version(2, None, task="segment"))
    with pytest.raises(UserInputError, match="version 2 is a detect build and version 1 a classify build"):
        check_same_task(_version(1, None, task=None), _version(2, None))


# -- report and model card ------------------------------------------------------------------------------
def test_the_report_and_model_card_show_map_per_slice_and_the_regressed_images(tmp_path):
    from cvserve.release import report as reports

    golden = load_box_golden_set(_write(tmp_path / "g", _coco()))
    baseline = _truth_detections(golden)
    c = compare_boxes(golden, baseline, [*baseline[:3], ()])
    gates = evaluate(_settings(), c, _LOAD, _LOAD)
    fmt = BoxedImages()
    load = {"requests": 10, "p50_ms": 5.0, "p99_ms": 9.0, "report": "x/report.md", "price": None, **_LOAD}
    report = {
        "name": "scenes", "candidate": 2, "baseline": 1, "decision": "no-go", "failed_gates": failed(gates),
        "created": "2024-01-01T00:00:00+00:00", "machine": "a CPU",
        "server": {"url": "u", "embedded": True,
                   "shadows": {"baseline": "scenes__release_baseline", "candidate": "scenes__release_candidate"}},
        "golden": {"path": "g", "cases": len(golden), "slice_columns": ["lighting"], "format": fmt.name,
                   "metric": fmt.metric, **fmt.describe(golden)},
        "gates": [g.as_dict() for g in gates], "slices": [s.as_dict() for s in c.slices],
        "changed_cases": [x.as_dict() for x in c.changed],
        "loadtest": {"baseline": load, "candidate": load,
                     "settings": {"users": 2, "duration_s": 2.0, "warmup_s": 0.5, "images_per_request": 1}},
        "builds": {"baseline": build_facts(None), "candidate": build_facts(
            {"task": {"name": "detect", "returns": returns_detections(32)}})},
        "intended_use": fmt.intended_use(_version(2, ["face", "cat"])), "user_limitations": None,
        "settings": {"slo_p95_ms": 500.0, "replicas": 1}, "promotion": {"requested": False},
    }  # fmt: skip
    card = reports.write(report, {"baseline": [1.0], "candidate": [2.0]}, tmp_path / "out", plots=False)
    md = (tmp_path / "out" / "release_report.md").read_text()
    assert "| lighting=dark | 2 | 2 | 1 | 0.5" in md  # images, boxes, mAP of each version
    assert "| `img/d.png` | 1 | 1 (1) | 0 (0) | regression |" in md
    assert "map_drop[lighting=dark]" in md and "regression_rate[lighting=dark]" in md
    assert "| map_drop[lighting=normal] | 0 | <= 0.01 |" in md
    text = card["model_card"]
    assert "## Golden-set results by slice" in text and "| task | detect |" in text
    assert "| returned per image | up to 32 detections (box, score, class) and their count |" in text
    assert "| lighting=dark | 2 | 2 | 0.5" in text and "5 boxes of face, cat" in text
    assert "Object detection" in text and "Below its overall golden-set mAP@[.5:.95] on lighting=dark" in text
    lines = reports.summary_lines(report, tmp_path / "out")
    # One face of three missed: face AP 0.6634 (COCO's 101 recall points, 67 of them at precision 1), cat 1.
    assert lines[0] == "all: mAP@[.5:.95] 1 -> 0.8317, 1 regression(s) and 0 improvement(s) in 4 cases"
    assert any(line.startswith("gate map_drop[lighting=dark]:") for line in lines)
    saved = json.loads((tmp_path / "out" / "release_report.json").read_text())
    assert saved["slices"][2]["regressions"] == 1 and saved["changed_cases"][0]["path"] == "img/d.png"
