"""cvserve release without a server: golden-set validation, the comparison, gates, build facts,
version pinning, the layout check and the report templates."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cvserve.builders import triton_config as tc
from cvserve.builders.repository import SNAPSHOT, Repository
from cvserve.cli import main
from cvserve.release.compare import Prediction, compare
from cvserve.release.gates import evaluate, failed
from cvserve.release.golden import GoldenSetError, load_golden_set, resolve_labels
from cvserve.release.labelled import LabelledImages
from cvserve.release.promote import pin_version
from cvserve.release.settings import ReleaseSettings
from cvserve.release.versions import (
    build_facts,
    load_version,
    model_config,
    reference_facts,
)
from tests.integration._release_fixtures import config as thumb_config

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16  # only the signature is read by the validation
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 16


def _golden(
    root: Path, rows: list[str], header: str = "path,label,lighting", files: dict | None = None
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in (
        files if files is not None else {"a.png": PNG, "b.jpg": JPEG, "sub/c.png": PNG}
    ).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


GOOD = ["a.png,cat,normal", "b.jpg,1,dark", "sub/c.png,dog,dark"]


def test_a_good_golden_set_reads_paths_labels_and_slices(tmp_path):
    g = load_golden_set(_golden(tmp_path, GOOD))
    assert [c.path for c in g.cases] == ["a.png", "b.jpg", "sub/c.png"]
    assert g.slice_columns == ("lighting",) and g.cases[1].slices == {"lighting": "dark"}
    g = resolve_labels(g, ["cat", "dog"], "m")
    assert [g.expected(c) for c in g.cases] == ["cat", "dog", "dog"]
    # A model without labels: class i is "i", so golden labels are class indices.
    unlabelled = load_golden_set(_golden(tmp_path / "u", ["a.png,3,x"], files={"a.png": PNG}))
    assert resolve_labels(unlabelled, None, "m").expected(unlabelled.cases[0]) == "3"


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda d: d.mkdir(), "is empty"),
        (
            lambda d: (
                _golden(d, [], files={}).joinpath("labels.csv").unlink() or (d / "x.png").write_bytes(PNG)
            ),
            "has no labels.csv",
        ),
        (lambda d: _golden(d, [], header=""), "is empty: its first line must be the header"),
        (lambda d: _golden(d, []), "has a header but no rows"),
        (lambda d: _golden(d, GOOD, header="file,label,lighting"), "the first two must be path,label"),
        (lambda d: _golden(d, GOOD, header="label,path,lighting"), "the first two must be path,label"),
        (lambda d: _golden(d, GOOD, header="path,label,label"), "appear more than once"),
        (lambda d: _golden(d, [*GOOD, "a.png,cat"]), "line 5 has 2 fields, the header has 3"),
        (lambda d: _golden(d, ["a.png,,normal"]), "line 2: path and label must not be blank"),
        (lambda d: _golden(d, [*GOOD, "./a.png,dog,dark"]), "lists ./a.png twice (lines 2 and 5)"),
        (lambda d: _golden(d, ["../a.png,cat,normal"]), "is not inside the golden folder"),
        (lambda d: _golden(d, ["a.gif,cat,normal"], files={"a.gif": b"GIF89a"}), "is not a JPEG/PNG file"),
        (lambda d: _golden(d, [*GOOD, "gone.png,cat,dark"]), "1 image(s) listed in"),
        (
            lambda d: _golden(d, GOOD, files={"a.png": b"not a png", "b.jpg": JPEG, "sub/c.png": PNG}),
            "not JPEG or PNG images whatever their names: a.png",
        ),
    ],
    ids=[
        "empty-folder",
        "no-csv",
        "empty-csv",
        "no-rows",
        "wrong-columns",
        "swapped-columns",
        "repeated-column",
        "ragged-row",
        "blank-label",
        "duplicate-path",
        "outside-folder",
        "not-jpeg-png",
        "missing-image",
        "fake-png",
    ],
)
def test_a_bad_golden_set_is_one_clear_error(tmp_path, make, says):
    d = tmp_path / "golden"
    make(d)
    with pytest.raises(GoldenSetError) as info:
        load_golden_set(d)
    message = str(info.value)
    assert says in message and "\n" not in message


def test_a_missing_golden_folder_is_an_error(tmp_path):
    with pytest.raises(GoldenSetError, match="is not a directory"):
        load_golden_set(tmp_path / "nope")


def test_unknown_labels_are_named_once_with_their_line(tmp_path):
    g = load_golden_set(_golden(tmp_path, [*GOOD[:2], "sub/c.png,catt,dark"]))
    with pytest.raises(GoldenSetError, match=r"1 label\(s\) are not classes of m: 'catt' \(line 4\)") as info:
        resolve_labels(g, ["cat", "dog"], "m")
    assert "class index 0..1" in str(info.value)
    with pytest.raises(GoldenSetError, match="'7'"):
        resolve_labels(
            load_golden_set(_golden(tmp_path / "i", ["a.png,7,x"], files={"a.png": PNG})), ["a"], "m"
        )


def _predictions(labels: list[str]) -> list[Prediction]:
    return [Prediction(label, 0, 0.9) for label in labels]


def test_regressions_improvements_and_rates_per_slice(tmp_path):
    g = resolve_labels(load_golden_set(_golden(tmp_path, GOOD)), ["cat", "dog"], "m")
    # expected: cat, dog, dog; baseline right on 1 and 2, candidate right on 1 and 3
    c = compare(g, _predictions(["cat", "dog", "cat"]), _predictions(["cat", "cat", "dog"]))
    slices = {s.slice: s for s in c.slices}
    assert list(slices) == ["all", "lighting=normal", "lighting=dark"]
    dark = slices["lighting=dark"]
    assert (dark.cases, dark.regressions, dark.improvements) == (2, 1, 1)
    assert dark.regression_rate == 0.5  # over all cases of the slice, not over the baseline's correct ones
    assert dark.accuracy_change_points == 0.0
    assert [(r.case.path, r.kind) for r in c.changed] == [
        ("b.jpg", "regression"),
        ("sub/c.png", "improvement"),
    ]
    assert slices["lighting=normal"].regressions == 0


def _load(ips: float, cost: float | None = None, p95: float = 10.0) -> dict:
    return {"inferences_per_s": ips, "cost_per_1k_usd": cost, "p95_ms": p95, "error_rate": 0.0}


def test_gates_name_what_fails_and_cost_is_relative_without_a_price(tmp_path):
    g = resolve_labels(load_golden_set(_golden(tmp_path, GOOD)), ["cat", "dog"], "m")
    same = compare(g, _predictions(["cat", "dog", "dog"]), _predictions(["cat", "dog", "dog"]))
    s = ReleaseSettings(name="m", golden=tmp_path, candidate=2, slo_p95_ms=50.0)
    assert failed(evaluate(s, same, _load(100.0), _load(100.0))) == []
    # 10% more cost is exactly the default limit: it passes; slower than that fails.
    assert failed(evaluate(s, same, _load(110.0), _load(100.0))) == []
    assert failed(evaluate(s, same, _load(120.0), _load(100.0))) == ["cost_per_1k"]
    assert failed(evaluate(s, same, _load(1.0, cost=0.010), _load(1.0, cost=0.012))) == ["cost_per_1k"]
    assert failed(evaluate(s, same, _load(100.0), _load(100.0, p95=51.0))) == ["p95_ms"]
    worse = compare(g, _predictions(["cat", "dog", "dog"]), _predictions(["cat", "cat", "dog"]))
    names = failed(evaluate(s, worse, _load(100.0), _load(100.0)))
    assert names == ["regression_rate[all]", "regression_rate[lighting=dark]", "accuracy_drop_points"]


def test_build_facts_read_schema_2_and_fall_back_to_schema_1_or_unknown():
    v2 = build_facts(
        {
            "schema": 2,
            "checkpoint": {"path": "w.pth", "sha256": "abc", "kind": "state_dict"},
            "network": {"precision": "int8", "runtime": "openvino", "layout": "single"},
            "quantization": {"method": "nncf", "calibration": {"images": 200}},
            "accuracy": {"gate": {"decision": "pass"}},
        }
    )
    assert (v2["checkpoint_sha256"], v2["precision"], v2["quantization_method"], v2["layout"]) == (
        "abc",
        "int8",
        "nncf",
        "single",
    )
    assert v2["created"] == "unknown"
    v1 = build_facts({"checkpoint": "w.pth", "precision": "fp32", "runtime": "python", "sha256": "def"})
    assert (v1["schema"], v1["checkpoint_path"], v1["network_sha256"], v1["quantization_method"]) == (
        1,
        "w.pth",
        "def",
        "none",
    )
    assert v1["checkpoint_sha256"] == "unknown" and v1["accuracy"] is None
    assert build_facts(None)["precision"] == "unknown"


def _repo(tmp_path: Path, served: tuple[int, ...] = (1,)) -> Path:
    repo = tmp_path / "models"
    for v in (1, 2):
        (repo / "thumb" / str(v)).mkdir(parents=True)
        (repo / "thumb" / str(v) / SNAPSHOT).write_text(tc.to_text(thumb_config("thumb", ["a", "b"], (v,))))
    (repo / "thumb" / "config.pbtxt").write_text(tc.to_text(thumb_config("thumb", ["a", "b"], served)))
    return repo


def test_versions_labels_and_what_unversioned_requests_get(tmp_path):
    repo = _repo(tmp_path)
    v = load_version(repo, "thumb", 2)
    assert v.labels == ["a", "b"] and v.build["found"] is False
    assert Repository(repo).served_version("thumb") == 1
    cfg = model_config(repo, "thumb")
    cfg.version_policy.CopyFrom(tc.VersionPolicy(kind="latest", values=(1,)).proto())
    (repo / "thumb" / "config.pbtxt").write_text(tc.to_text(cfg))
    assert Repository(repo).served_version("thumb") == 2
    with pytest.raises(Exception, match=r"version 7 of thumb is not in .*versions present: \[1, 2\]"):
        load_version(repo, "thumb", 7)


def test_pin_version_replaces_the_config_atomically(tmp_path):
    repo = _repo(tmp_path)
    inode = os.stat(repo / "thumb" / "config.pbtxt").st_ino
    path = pin_version(repo, "thumb", 2)
    cfg = tc.parse(path.read_text())
    assert list(cfg.version_policy.specific.versions) == [2]
    assert os.stat(path).st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert sorted(p.name for p in (repo / "thumb").iterdir()) == ["1", "2", "config.pbtxt"]


def test_the_ensemble_layout_is_refused_in_one_line_with_exit_2(tmp_path, capsys):
    repo = tmp_path / "models"
    (repo / "pipe" / "1").mkdir(parents=True)
    (repo / "pipe" / "config.pbtxt").write_text('name: "pipe"\nplatform: "ensemble"\nmax_batch_size: 8\n')
    golden = _golden(tmp_path / "golden", GOOD)
    code = main(
        [
            "release",
            "pipe",
            "--golden",
            str(golden),
            "--candidate",
            "1",
            "-r",
            str(repo),
            "--slo-p95-ms",
            "100",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "ensemble layout" in err[0] and "single layout" in err[0]


def test_the_flags_come_from_the_settings(tmp_path):
    from cvserve.cli import build_parser
    from cvserve.release.cli import settings_from_args

    args = build_parser().parse_args(
        [
            "release",
            "m",
            "--golden",
            "g",
            "--candidate",
            "2",
            "--duration",
            "1m30s",
            "--max-accuracy-drop",
            "0.5",
            "--control-header",
            "Admin-Key=s3cret",
            "--no-plots",
            "--slo-p95-ms",
            "200",
        ]
    )
    s = settings_from_args(args)
    assert (s.duration_s, s.max_accuracy_drop_points, s.plots) == (90.0, 0.5, False)
    assert s.control_headers == {"admin-key": "s3cret"}
    assert (
        s.max_regression_rate
        == ReleaseSettings(name="m", golden=Path("g"), candidate=2, slo_p95_ms=1.0).max_regression_rate
    )


def test_the_report_and_model_card_render(tmp_path):
    from cvserve.release import report as reports

    g = resolve_labels(load_golden_set(_golden(tmp_path / "g", GOOD)), ["cat", "dog"], "m")
    c = compare(g, _predictions(["cat", "dog", "dog"]), _predictions(["cat", "cat", "dog"]))
    s = ReleaseSettings(name="m", golden=tmp_path, candidate=2, slo_p95_ms=500.0)
    load = {
        "requests": 10,
        "p50_ms": 5.0,
        "p99_ms": 9.0,
        "throughput_rps": 100.0,
        "report": "x/report.md",
        "price": None,
        **_load(100.0),
    }
    gates = evaluate(s, c, load, load)
    facts = build_facts(
        {
            "schema": 2,
            "network": {"precision": "int8"},
            "accuracy": {"gate": {"decision": "pass"}, "metrics": {"top1_agreement": 0.991}},
        }
    )
    facts["reference"] = reference_facts(
        {
            "source": "augmented sample photos",
            "images": 200,
            "mean_confidence": 0.61,
            "low_confidence_share": 0.3,
            "low_confidence_below": 0.5,
            "feature_dims": 16,
            "histograms": {"brightness": [0, 150, 50]},
            "bins": {"brightness": ["0", "32", "64"]},
        }
    )
    report = {
        "name": "m",
        "candidate": 2,
        "baseline": 1,
        "decision": "no-go",
        "failed_gates": failed(gates),
        "created": "2024-01-01T00:00:00+00:00",
        "machine": "a CPU",
        "server": {
            "url": "u",
            "embedded": True,
            "shadows": {"baseline": "m__release_baseline", "candidate": "m__release_candidate"},
        },
        "golden": {
            "path": "g",
            "cases": 3,
            "slice_columns": ["lighting"],
            "format": LabelledImages.name,
            "metric": LabelledImages.metric,
        },
        "gates": [x.as_dict() for x in gates],
        "slices": [x.as_dict() for x in c.slices],
        "changed_cases": [x.as_dict() for x in c.changed],
        "loadtest": {
            "baseline": load,
            "candidate": load,
            "settings": {"users": 2, "duration_s": 2.0, "warmup_s": 0.5, "images_per_request": 1},
        },
        "builds": {"baseline": build_facts(None), "candidate": facts},
        "intended_use": "testing",
        "user_limitations": "not for production",
        "settings": {"slo_p95_ms": 500.0, "replicas": 1},
        "promotion": {"requested": False},
    }
    card = reports.write(report, {"baseline": [1.0, 2.0], "candidate": [1.5, 3.0]}, tmp_path / "out")[
        "model_card"
    ]
    md = (tmp_path / "out" / "release_report.md").read_text()
    assert "NO-GO" in md and "| lighting=dark | 2 |" in md and "`b.jpg`" in md
    assert "regression_rate[lighting=dark]" in md
    assert (
        "top1_agreement | 0.991" in card and "not for production" in card and "| precision | int8 |" in card
    )
    assert (
        "200 held-out images (augmented sample photos)" in card and "| brightness | 32: 150, 64: 50 |" in card
    )
    assert json.loads((tmp_path / "out" / "release_report.json").read_text())["files"]["plots"] == [
        "accuracy_by_slice.png",
        "latency_baseline_vs_candidate.png",
    ]
