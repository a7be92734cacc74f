"""Gate metrics, calibration data sets and the Markdown report, without building a model."""

from __future__ import annotations

import numpy as np
import pytest

from cvserve.builders import accuracy
from cvserve.builders import calibration as cal
from cvserve.builders.preprocessing import PreprocessSpec
from cvserve.builders.report import render_markdown
from cvserve.errors import UserInputError


def test_metrics_of_an_exact_copy_are_perfect():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 20)).astype(np.float32)
    labels = logits.argmax(1)
    r = accuracy.compare(logits, logits.copy(), labels)
    assert (r.top1_agreement, r.top5_overlap, r.top1_accuracy, r.top1_accuracy_reference) == (1, 1, 1, 1)
    assert accuracy.gate(r, 0.0).passed


def test_metrics_count_flips_and_top5_changes():
    ref = np.tile(np.arange(10, dtype=np.float32)[::-1], (4, 1))  # top-5 = 0..4, top-1 = 0
    cand = ref.copy()
    cand[0, 1] = 100  # image 0: top-1 becomes 1 (still inside the top-5)
    cand[1, 9] = 100  # image 1: top-1 becomes 9, which enters the top-5; class 4 leaves
    r = accuracy.compare(ref, cand, labels=np.array([0, 0, 0, 5]))
    assert r.top1_agreement == pytest.approx(2 / 4)
    assert r.top5_overlap == pytest.approx((1 + 0.8 + 1 + 1) / 4)
    assert r.top1_accuracy == pytest.approx(1 / 4) and r.top1_accuracy_reference == pytest.approx(3 / 4)


def test_gate_says_which_metric_missed_by_how_much():
    r = accuracy.AccuracyResult(
        held_out_images=200, top1_agreement=0.97, top5_overlap=0.99, top1_accuracy=0.80,
        top1_accuracy_reference=0.81,
    )  # fmt: skip
    verdict = accuracy.gate(r, 0.01)
    assert not verdict.passed and set(verdict.misses) == {"top1_agreement"}
    assert verdict.misses["top1_agreement"] == pytest.approx(0.02)
    message = verdict.message(r)
    assert "top1_agreement dropped 0.0300 (allowed 0.0100, missed by 0.0200)" in message
    assert "200 held-out images" in message
    zero = accuracy.gate(r, 0.0)
    assert set(zero.misses) == {"top1_agreement", "top5_overlap", "top1_accuracy"}
    with pytest.raises(UserInputError):
        accuracy.gate(r, -0.1)


def test_agreement_by_the_reference_confidence_locates_the_top1_changes():
    ref = np.zeros((6, 4), dtype=np.float32)
    ref[:2, 0] = 10.0  # FP32 sure (p ~ 1.0)
    ref[2:4, 0] = 1.2  # p = e^1.2 / (e^1.2 + 3) ~ 0.52
    ref[4:, 0] = 0.1  # near-ties: p ~ 0.27
    cand = ref.copy()
    cand[4, 1] = 5.0  # one change on an unsure image
    cand[5, 2] = 5.0  # and another
    r = accuracy.compare(ref, cand)
    bands = {b["band"]: b for b in r.as_dict()["by_reference_confidence"]}
    assert [bands[k]["images"] for k in ("0.8-1.0", "0.5-0.8", "0.0-0.5")] == [2, 2, 2]
    assert bands["0.8-1.0"]["top1_agreement"] == 1.0 and bands["0.0-0.5"]["top1_changes"] == 2
    assert r.low_confidence_changes() == (2, 2)
    message = accuracy.gate(r, 0.01).message(r)
    assert "2 of the 2 top-1 changes are on images where FP32's own top-1 probability is below 0.5" in message
    probs = accuracy.probabilities(ref)  # already-softmaxed outputs are taken as they are
    assert np.allclose(accuracy.probabilities(probs), probs)


def test_fallback_steps_grow_to_the_limit_and_keep_one_layer_quantized(monkeypatch):
    from cvserve.builders.quantize import _exclusion_steps

    monkeypatch.delenv("CVSERVE_MAX_EXCLUDED_LAYERS", raising=False)
    assert _exclusion_steps(64) == [1, 2, 3, 4, 6, 9, 14, 16]  # a quarter of the layers
    assert _exclusion_steps(1) == []  # nothing to fall back to
    monkeypatch.setenv("CVSERVE_MAX_EXCLUDED_LAYERS", "64")
    assert _exclusion_steps(64)[-3:] == [32, 48, 63]  # never every layer
    monkeypatch.setenv("CVSERVE_MAX_EXCLUDED_LAYERS", "half")
    with pytest.raises(UserInputError, match="CVSERVE_MAX_EXCLUDED_LAYERS must be a whole number"):
        _exclusion_steps(64)


def test_read_labels_takes_indices_or_class_names(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_text("# image label\na.png\t3\nsub/b.png,cat\nc.png dog\n")
    got = accuracy.read_labels(path, ["c.png", "a.png", "sub/b.png"], ["x", "cat", "dog", "y"])
    assert got.tolist() == [2, 3, 1]
    with pytest.raises(UserInputError, match="no label for 1 held-out image"):
        accuracy.read_labels(path, ["a.png", "missing.png"], ["x", "cat", "dog", "y"])
    path.write_text("a.png\tzebra\n")
    with pytest.raises(UserInputError, match="neither a class index nor a class name"):
        accuracy.read_labels(path, ["a.png"], ["x"])


@pytest.fixture(scope="module")
def small_sets():
    return cal.sample_sets(12, 10)


def test_sample_sets_are_real_deterministic_and_disjoint(small_sets):
    calibration, validation = small_sets
    assert (len(calibration), len(validation)) == (12, 10)
    again = cal.sample_sets(12, 10)
    assert again[0].data == calibration.data and again[1].data == validation.data
    cal_sources = {n.rsplit("_", 1)[0] for n in calibration.names}
    val_sources = {n.rsplit("_", 1)[0] for n in validation.names}
    assert not cal_sources & val_sources  # no photo is in both sets
    spec = PreprocessSpec()
    cal.check_disjoint(calibration, validation, spec)
    batch = validation.tensors(spec)
    assert batch.shape == (10, 3, 224, 224) and batch.dtype == np.float32 and batch.std() > 0.1


def test_overlap_is_refused_even_under_another_name(small_sets, tmp_path):
    calibration, validation = small_sets
    folder = cal.write_set(validation, tmp_path / "val")
    (folder / "renamed.png").write_bytes(calibration.data[3])
    with pytest.raises(UserInputError, match="1 validation image"):
        cal.check_disjoint(calibration, cal.load_folder(folder), PreprocessSpec())


def test_folders_load_sorted_and_limited(small_sets, tmp_path):
    folder = cal.write_set(small_sets[0], tmp_path / "cal")
    got = cal.load_folder(folder, limit=5)
    assert list(got.names) == sorted(small_sets[0].names)[:5]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="holds no images"):
        cal.list_images(tmp_path / "empty")


def test_batch_reader_follows_onnxruntime_protocol():
    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    reader = cal.BatchReader(x, "input", batch_size=4)
    assert [len(b["input"]) for b in reader] == [4, 4, 2]
    reader.set_range(4, 9)
    first = reader.get_next()["input"]
    assert first[0, 0] == 12 and len(first) == 4
    assert len(reader.get_next()["input"]) == 1 and reader.get_next() is None


def test_markdown_report_lists_metrics_and_kept_layers():
    report = {
        "name": "m", "version": 3, "precision": "int8", "target": "cpu", "sha256": "ab" * 32,
        "size_bytes": 10, "calibration": {"method": "entropy", "samples": 200},
        "accuracy": {"held_out_images": 200, "top1_agreement": 0.995, "top5_overlap": 0.97,
                     "top1_accuracy": None, "top1_accuracy_reference": None,
                     "gate": {"max_accuracy_drop": 0.01, "passed": True},
                     "by_reference_confidence": [
                         {"band": "0.8-1.0", "images": 150, "top1_agreement": 1.0, "top1_changes": 0},
                         {"band": "0.0-0.5", "images": 50, "top1_agreement": 0.98, "top1_changes": 1}]},
        "excluded_layers": ["conv_0"],
        "fallback": {"sensitivity": {"conv_0": 0.02}, "steps": [
            {"excluded": 0, "top1_agreement": 0.9, "top5_overlap": 0.9},
            {"excluded": 1, "top1_agreement": 0.995, "top5_overlap": 0.97}]},
        "throughput": {"batch": 8, "img_s": 800.0, "reference_fp32_img_s": 280.0, "speedup": 2.86},
    }  # fmt: skip
    md = render_markdown(report)
    assert md.startswith("# m version 3")
    for needle in (
        "| top-1 agreement | 0.9950 |",
        "`conv_0`",
        "| 1 | 0.9950 | 0.9700 |",
        "| speed-up | 2.86 |",
        "| 0.0-0.5 | 50 | 0.9800 | 1 |",
    ):
        assert needle in md
