"""Gate metrics, calibration data sets and the Markdown report, without building a model."""

from __future__ import annotations

import numpy as np
import pytest

from cvserve.builders import accuracy
from cvserve.builders import calibration as cal
from cvserve.builders.preprocessing import PreprocessSpec
from cvserve.errors import UserInputError


def test_metrics_of_an_exact_copy_are_perfect():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 20)).astype(np.float32)
    labels = logits.argmax(1)
    r = accuracy.compare(logits, logits.copy(), labels)
    assert (r.top1_agreement, r.top5_overlap, r.top1_accuracy, r.top1_accuracy_reference) == (1, 1, 1, 1)
    assert accuracy.gate(r, accuracy.GateSettings(max_accuracy_drop=0.0)).passed
    assert r.as_dict()["top1_accuracy_drop_points"] == 0


def test_metrics_count_flips_and_top5_changes():
    ref = np.tile(np.arange(10, dtype=np.float32)[::-1], (4, 1))  # top-5 = 0..4, top-1 = 0
    cand = ref.copy()
    cand[0, 1] = 100  # image 0: top-1 becomes 1 (still inside the top-5)
    cand[1, 9] = 100  # image 1: top-1 becomes 9, which enters the top-5; class 4 leaves
    r = accuracy.compare(ref, cand, labels=np.array([0, 0, 0, 5]))
    assert r.top1_agreement == pytest.approx(2 / 4)
    assert r.top5_overlap == pytest.approx((1 + 0.8 + 1 + 1) / 4)
    assert r.top1_accuracy == pytest.approx(1 / 4) and r.top1_accuracy_reference == pytest.approx(3 / 4)
    assert r.as_dict()["top1_accuracy_drop_points"] == pytest.approx(50.0)


def _result(**kw) -> accuracy.AccuracyResult:
    base = dict(
        held_out_images=300, top1_agreement=0.9, top5_overlap=0.9, confidence=0.5, confident_images=150,
        confident_top1_agreement=1.0,
    )  # fmt: skip
    return accuracy.AccuracyResult(**{**base, **kw})


def test_with_labels_the_gate_is_the_share_of_fp32_accuracy_kept():
    gate = accuracy.GateSettings()  # INT8 >= 99 % of FP32's accuracy
    ok = accuracy.gate(_result(top1_accuracy=0.792, top1_accuracy_reference=0.80), gate)
    assert ok.passed and ok.metric == "top1_accuracy_ratio" and ok.value == pytest.approx(0.99)
    assert ok.rule == "labelled accuracy" and ok.images == 300
    bad = accuracy.gate(_result(top1_accuracy=0.78, top1_accuracy_reference=0.80, top1_agreement=1.0), gate)
    assert bad.decision == "failed" and bad.threshold == pytest.approx(0.99)
    assert bad.message() == (
        "accuracy gate failed: top1_accuracy_ratio 0.9750 < 0.9900 on 300 held-out images (labelled accuracy)"
    )
    # labels decide even when agreement and confident images would not pass
    few = _result(top1_accuracy=0.8, top1_accuracy_reference=0.8, confident_images=3, top5_overlap=0.1)
    assert accuracy.gate(few, gate).passed


def test_without_labels_the_gate_is_confident_agreement_and_top5_overlap():
    gate = accuracy.GateSettings()
    assert gate.needed_confident_images == 100  # one change in 100 is the 1 % allowed
    verdict = accuracy.gate(_result(top1_agreement=0.6), gate)  # unsure images do not decide
    assert verdict.passed and verdict.metric == "confident_top1_agreement" and verdict.images == 150
    assert [c["metric"] for c in verdict.checks] == ["confident_top1_agreement", "top5_overlap"]
    failed = accuracy.gate(_result(confident_top1_agreement=0.98), gate)
    assert failed.message() == (
        "accuracy gate failed: confident_top1_agreement 0.9800 < 0.9900 on 150 held-out images "
        "(agreement where FP32 is confident, p >= 0.5)"
    )
    top5 = accuracy.gate(_result(top5_overlap=0.5), gate)
    assert top5.decision == "failed" and top5.metric == "top5_overlap" and top5.images == 300
    assert accuracy.gate(_result(confident_top1_agreement=0.99), gate).passed  # 0.99 is not below 0.99


def test_the_gate_refuses_to_pass_on_too_few_confident_images():
    verdict = accuracy.gate(_result(confident_images=91), accuracy.GateSettings())
    assert verdict.decision == "refused" and not verdict.passed
    message = verdict.message()
    assert "only 91 of the 300 held-out images" in message and "needs at least 100" in message
    assert "\n" not in message
    looser = accuracy.GateSettings(max_accuracy_drop=0.02)
    assert looser.needed_confident_images == 50 and accuracy.gate(_result(confident_images=91), looser).passed
    assert accuracy.GateSettings(min_confident_images=20).needed_confident_images == 20
    with pytest.raises(UserInputError, match="--max-accuracy-drop must be at least 0"):
        accuracy.GateSettings(max_accuracy_drop=-0.1)


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
    assert (r.confident_images, r.confident_top1_agreement, r.top1_agreement) == (
        4,
        1.0,
        pytest.approx(4 / 6),
    )
    assert accuracy.compare(ref, cand, confidence=0.9).confident_images == 2
    probs = accuracy.probabilities(ref)  # already-softmaxed outputs are taken as they are
    assert np.allclose(accuracy.probabilities(probs), probs)


def test_fallback_may_keep_a_tenth_of_the_layers_and_never_all():
    from cvserve.builders.quantize import QuantizeSettings, fallback_limit

    settings = QuantizeSettings(precision="int8")
    assert fallback_limit(64, settings) == 6  # MobileNetV2: 6 of 64 (9.4 %)
    assert fallback_limit(4, settings) == 0  # a 4-layer network has no tenth to spare
    wide = QuantizeSettings(precision="int8", max_fallback_layers=9)
    assert fallback_limit(4, wide) == 3 and fallback_limit(64, wide) == 9
    with pytest.raises(UserInputError, match="--max-fallback-layers must be at least 0"):
        QuantizeSettings(max_fallback_layers=-1)


def test_quantizer_choice_follows_the_serving_runtime():
    from cvserve.builders import quantizers

    assert quantizers.resolve("auto", target="cpu", runtime="openvino") == "nncf"
    assert quantizers.resolve("auto", target="cpu", runtime="onnxruntime") == "ort-minmax"
    assert quantizers.resolve("auto", target="gpu", runtime="tensorrt") == "ort-minmax"
    assert quantizers.resolve("ort-entropy", target="cpu", runtime="openvino") == "ort-entropy"
    with pytest.raises(UserInputError, match="--quantizer must be one of"):
        quantizers.resolve("magic", target="cpu", runtime="openvino")
    with pytest.raises(UserInputError, match="--target gpu needs the symmetric"):
        quantizers.resolve("nncf", target="gpu", runtime="tensorrt")


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
