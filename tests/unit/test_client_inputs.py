"""Client-side checks before any round trip: images, tensors, top_k, classifier discovery, metrics."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from cvserve.client import ClientMetrics, InvalidInput, MissingDependency, ModelInfo, TensorSpec
from cvserve.client._images import as_image_list, encode_image, encode_images
from cvserve.client._metadata import (
    check_inputs,
    check_outputs,
    check_top_k,
    classifier_spec,
    model_info,
    pick_classifier,
)
from cvserve.client._requests import image_sizes, plan_infer, split_rows
from cvserve.client.errors import ServerError, ServerUnavailable


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


def classifier(name="clf", k=5, max_batch=8, image_type="BYTES") -> ModelInfo:
    return ModelInfo(
        name=name,
        version="1",
        platform="ensemble",
        max_batch_size=max_batch,
        inputs=(TensorSpec("IMAGE", image_type, (-1, 1)),),
        outputs=(
            TensorSpec("CLASS_INDEX", "INT64", (-1, k)),
            TensorSpec("SCORE", "FP32", (-1, k)),
            TensorSpec("LABEL", "BYTES", (-1, k)),
        ),
    )


ADD = ModelInfo(
    name="add",
    version="1",
    platform="python",
    max_batch_size=8,
    inputs=(TensorSpec("A", "FP32", (-1, 4)), TensorSpec("B", "FP32", (-1, 4), optional=True)),
    outputs=(TensorSpec("SUM", "FP32", (-1, 4)),),
)


def test_paths_and_bytes_are_sent_as_they_are(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(b"\xff\xd8 jpeg bytes")
    assert encode_image(path, 1, 1) == encode_image(str(path), 1, 1) == b"\xff\xd8 jpeg bytes"
    assert encode_image(bytearray(b"abc"), 1, 1) == b"abc"
    assert encode_image(memoryview(b"abc"), 1, 1) == b"abc"


@pytest.mark.parametrize(
    ("image", "match"),
    [
        ("/no/such/file.png", "image 2 of 3: file not found"),
        (b"", "image 2 of 3 is empty"),
        (3.5, "unsupported type float"),
        (np.zeros((4, 4, 3), np.float32), r"uint8.*astype\(np.uint8\)"),
        (np.zeros((3, 8, 8), np.uint8), "transpose"),
        (np.zeros((0, 8, 3), np.uint8), "no pixels"),
        (np.zeros((2, 2, 2, 3), np.uint8), "must be"),
    ],
)
def test_bad_images_name_the_image_and_the_fix(image, match):
    with pytest.raises(InvalidInput, match=match):
        encode_image(image, 2, 3)


def test_arrays_and_pil_images_become_lossless_png():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    assert np.array_equal(decode(encode_image(rgb, 1, 1)), rgb)
    gray = rgb[:, :, 0]
    assert np.array_equal(decode(encode_image(gray, 1, 1)), gray)
    assert np.array_equal(decode(encode_image(gray[:, :, None], 1, 1)), gray)
    assert decode(encode_image(np.zeros((4, 4, 4), np.uint8), 1, 1)).shape == (4, 4, 4)
    pil = Image.fromarray(rgb)
    assert np.array_equal(decode(encode_image(pil, 1, 1)), rgb)
    assert decode(encode_image(pil.convert("CMYK"), 1, 1)).shape == (6, 5, 3)


def test_image_list_forms():
    with pytest.raises(InvalidInput, match=r"classify\(\[image\]\)"):
        as_image_list("cat.jpg")
    with pytest.raises(InvalidInput, match="wrap it in a list"):
        as_image_list(Image.new("RGB", (2, 2)))
    with pytest.raises(InvalidInput, match="batch"):
        as_image_list(np.zeros((4, 4, 3), np.uint8))
    assert len(as_image_list(np.zeros((2, 4, 4, 3), np.uint8))) == 2
    assert as_image_list(b for b in [b"a", b"b"]) == [b"a", b"b"]
    with pytest.raises(InvalidInput):
        as_image_list(42)
    assert encode_images([]) == []


def test_missing_pillow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(MissingDependency, match=r"pip install 'cvserve\[images\]'"):
        encode_image(np.zeros((2, 2, 3), np.uint8), 1, 1)
    assert encode_image(b"still fine", 1, 1) == b"still fine"


def test_classifier_spec_is_discovered_from_metadata():
    spec = classifier_spec(classifier(k=7))
    assert (spec.input.name, spec.index, spec.score, spec.label, spec.k, spec.max_batch_size) == (
        "IMAGE",
        "CLASS_INDEX",
        "SCORE",
        "LABEL",
        7,
        8,
    )
    renamed = ModelInfo(
        name="r",
        version="",
        platform="ensemble",
        max_batch_size=4,
        inputs=(TensorSpec("jpeg", "BYTES", (-1, 1)),),
        outputs=(
            TensorSpec("idx", "INT64", (-1, 3)),
            TensorSpec("p", "FP32", (-1, 3)),
            TensorSpec("names", "BYTES", (-1, 3)),
        ),
    )
    spec = classifier_spec(renamed)
    assert (spec.input.name, spec.index, spec.score, spec.label, spec.k) == ("jpeg", "idx", "p", "names", 3)


def v2_classifier(labels: tuple[str, ...] = ("cat", "dog", "fox")) -> ModelInfo:
    return ModelInfo(
        name="v2",
        version="1",
        platform="python",
        max_batch_size=8,
        inputs=(TensorSpec("IMAGE", "BYTES", (-1, 1)),),
        outputs=(TensorSpec("CLASS_INDEX", "INT64", (-1, 3)), TensorSpec("SCORE", "FP32", (-1, 3))),
        labels=labels,
    )


def test_contract_v2_names_classes_from_the_config_labels():
    spec = classifier_spec(v2_classifier())
    assert (spec.index, spec.score, spec.label, spec.k) == ("CLASS_INDEX", "SCORE", None, 3)
    assert [spec.name_of(i) for i in (2, 0, 3, -1)] == ["fox", "cat", "3", "-1"]
    assert [classifier_spec(v2_classifier(())).name_of(i) for i in (0, 7)] == ["0", "7"]
    # a legacy LABEL output is not requested when the config has labels
    legacy_and_labels = ModelInfo(**{**vars_of(classifier()), "labels": ("a",) * 5})
    assert classifier_spec(legacy_and_labels).label is None


def vars_of(info: ModelInfo) -> dict:
    return {f: getattr(info, f) for f in info.__dataclass_fields__}


def test_labels_are_read_from_the_model_config():
    from tritonclient.grpc import model_config_pb2 as mc
    from tritonclient.grpc import service_pb2

    metadata = service_pb2.ModelMetadataResponse(name="m", versions=["1", "10", "9"], platform="python")
    config = mc.ModelConfig(name="m", max_batch_size=4)
    assert model_info(metadata, config).labels == ()
    assert model_info(metadata, config).version == "10"
    assert model_info(metadata, config, "9").version == "9"
    config.parameters["labels"].string_value = '["tench", "goldfish"]'
    assert model_info(metadata, config).labels == ("tench", "goldfish")
    for bad in ("tench,goldfish", '{"0": "tench"}', "[1, 2]"):
        config.parameters["labels"].string_value = bad
        with pytest.raises(ServerError, match="not a JSON array of class names"):
            model_info(metadata, config)


def test_not_a_classifier():
    with pytest.raises(InvalidInput, match=r"not a cvserve classifier.*BYTES input.*use infer"):
        classifier_spec(classifier(image_type="FP32"))
    with pytest.raises(InvalidInput, match="max_batch_size 0"):
        classifier_spec(classifier(max_batch=0))
    with pytest.raises(InvalidInput, match="outputs CLASS_INDEX"):
        classifier_spec(ADD)


def test_top_k():
    spec = classifier_spec(classifier(k=5))
    assert check_top_k(spec, None, "clf") == 5
    assert check_top_k(spec, 2, "clf") == 2
    with pytest.raises(InvalidInput, match=r"returns only the top 5.*cvserve build --top-k 6"):
        check_top_k(spec, 6, "clf")
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(InvalidInput, match="positive integer"):
            check_top_k(spec, bad, "clf")


def test_pick_classifier():
    assert pick_classifier([ADD, classifier("only")], "h:1") == "only"
    with pytest.raises(InvalidInput, match="serves 2 classifiers"):
        pick_classifier([classifier("a"), classifier("b")], "h:1")
    with pytest.raises(InvalidInput, match="serves 0"):
        pick_classifier([ADD], "h:1")


def test_check_inputs():
    a = np.zeros((3, 4), np.float32)
    assert check_inputs(ADD, {"A": a}) == 3  # B is optional
    assert check_inputs(ADD, {"A": a, "B": a}) == 3
    cases = [
        ({}, "non-empty dict"),
        ({"C": a}, "has no input C; its inputs are A"),
        ({"B": a}, "needs input A"),
        ({"A": a.astype(np.float64)}, "must be FP32, got FP64"),
        ({"A": np.zeros((3, 5), np.float32)}, r"shape \[-1, 4\].*got \[3, 5\]"),
        ({"A": np.zeros(4, np.float32)}, "shape"),
        ({"A": a, "B": np.zeros((2, 4), np.float32)}, "different batch sizes"),
        ({"A": [[0.0] * 4]}, "must be a numpy array"),
    ]
    for inputs, match in cases:
        with pytest.raises(InvalidInput, match=match):
            check_inputs(ADD, inputs)


def test_check_outputs():
    assert check_outputs(ADD, None) == ["SUM"]
    with pytest.raises(InvalidInput, match="has no output X"):
        check_outputs(ADD, ["X"])


def test_split_rows_at_the_max_batch_size_and_the_request_limit():
    def split(sizes, max_rows, max_bytes):
        return split_rows(sizes, max_rows, max_bytes, what="image", model="m")

    assert split([1] * 10, 4, 100) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert split([1] * 3, 4, 100) == [slice(0, 3)]
    assert split([1] * 5, 0, 100) == [slice(0, 5)]
    assert split([40, 40, 40, 10, 90], 8, 100) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert split([100, 100], 8, 100) == [slice(0, 1), slice(1, 2)]  # exactly the limit fits
    with pytest.raises(InvalidInput, match=r"image 2 of 3 needs 101 bytes.*max_request_bytes \(100 bytes\)"):
        split([1, 101, 1], 8, 100)


def test_infer_requests_respect_the_byte_limit():
    a = np.zeros((10, 4), np.float32)  # 16 bytes a row of A; B is optional
    assert plan_infer(ADD, {"A": a}, None, 2**20) == (["SUM"], [slice(0, 8), slice(8, 10)])
    assert plan_infer(ADD, {"A": a, "B": a}, None, 100) == (
        ["SUM"],
        [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)],  # 32 bytes a row, 3 rows a request
    )
    with pytest.raises(InvalidInput, match="row 1 of 10 needs 32 bytes"):
        plan_infer(ADD, {"A": a, "B": a}, None, 31)
    texts = ModelInfo(
        name="t",
        version="1",
        platform="python",
        max_batch_size=0,
        inputs=(TensorSpec("T", "BYTES", (2,)),),
        outputs=(TensorSpec("N", "INT64", (2,)),),
    )
    t = np.array([b"abc", b"de"], dtype=object)
    assert plan_infer(texts, {"T": t}, None, 13) == (["N"], [None])  # 4 + 3 + 4 + 2 bytes
    with pytest.raises(InvalidInput, match="max_request_bytes"):
        plan_infer(texts, {"T": t}, None, 12)


def test_per_image_limit_is_checked_before_reading_or_sending(tmp_path):
    big = tmp_path / "big.jpg"
    with big.open("wb") as f:
        f.truncate(25 * 2**20)  # sparse: never read
    with pytest.raises(
        InvalidInput, match=r"image 2 of 2 is 26214400 bytes.*max_image_bytes \(20971520 bytes, 20 MiB\)"
    ):
        encode_images([b"ok", big], 20 * 2**20)
    with pytest.raises(InvalidInput, match="max_image_bytes"):
        encode_image(b"x" * 11, 1, 1, max_bytes=10)
    assert encode_image(b"x" * 10, 1, 1, max_bytes=10) == b"x" * 10
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with pytest.raises(InvalidInput, match="max_image_bytes"):  # checked on the encoded PNG
        encode_image(rgb, 1, 1, max_bytes=1000)
    assert image_sizes([b"abc", b""]) == [7, 4]


def test_metrics_track_latency_and_errors():
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics = ClientMetrics(registry=registry)
    with metrics.track("m", "classify"):
        pass
    with pytest.raises(ServerUnavailable), metrics.track("m", "classify"):
        raise ServerUnavailable("down", code="UNAVAILABLE")
    with pytest.raises(InvalidInput), metrics.track("m", "infer"):
        raise InvalidInput("bad")
    get = registry.get_sample_value
    assert get("cvserve_client_request_duration_seconds_count", {"model": "m", "method": "classify"}) == 2
    assert (
        get("cvserve_client_errors_total", {"model": "m", "method": "classify", "code": "UNAVAILABLE"}) == 1
    )
    assert get("cvserve_client_errors_total", {"model": "m", "method": "infer", "code": "CLIENT"}) == 1
    assert ClientMetrics.default() is ClientMetrics.default()
