"""Monitoring without a server: the signals, the served graph's FEATURES, references, drift, the CLI's errors."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvserve.builders import runtime as rt
from cvserve.builders import triton_config as tc
from cvserve.builders.preprocessing import PreprocessSpec, decode_requests
from cvserve.errors import UserInputError
from cvserve.monitor import drift
from cvserve.monitor import signals as sg
from cvserve.monitor.prometheus import Prometheus
from cvserve.monitor.reference import Reference, count_images

pytestmark = pytest.mark.timeout(120)
SPEC = PreprocessSpec(input_size=(16, 16), resize_shorter=0)
BATCHING = tc.Batching(max_queue_size=8, queue_timeout_ms=1000.0)


def _png(w: int, h: int, value: int) -> bytes:
    rng = np.random.default_rng(value)
    pixels = np.clip(rng.normal(value, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _outputs(b: int, classes: np.ndarray, top1: np.ndarray, dims: int = 4) -> dict[str, np.ndarray]:
    return {
        "CLASS_INDEX": classes.reshape(b, 1).astype(np.int64),
        "SCORE": top1.reshape(b, 1).astype(np.float32),
        "FEATURES": np.linspace(-1, 1, b * dims, dtype=np.float32).reshape(b, dims),
    }


# -- signals ---------------------------------------------------------------------------------------------
def test_class_buckets_cover_every_class_once():
    for n in (1, 10, 32, 1000):
        labels = sg.class_bucket_labels(n)
        assert len(labels) == min(n, sg.CLASS_BUCKETS)
        covered = [
            i for label in labels for i in range(int(label.split("-")[0]), int(label.split("-")[1]) + 1)
        ]
        assert covered == list(range(n))
        # observe() puts class c in the bucket whose label holds it
        for c in (0, n // 2, n - 1):
            first, last = map(int, labels[c * len(labels) // n].split("-"))
            assert first <= c <= last


def test_decode_requests_gives_sizes_and_rejection_reasons():
    sizes: list[tuple[int, int]] = []
    batch, outcomes = decode_requests(
        [[_png(40, 20, 100)], [b"junk"], [], [_png(30, 60, 50)]], SPEC, sizes=sizes
    )
    assert batch.shape == (2, 16, 16, 3) and sizes == [(40, 20), (30, 60)]
    assert [getattr(o, "reason", None) for o in outcomes] == [None, "format", "no_images", None]
    assert outcomes[1].startswith("image 1 of 1 in the request: not a JPEG or PNG image")


def test_observe_and_counts():
    crops = np.stack([np.full((16, 16, 3), v, np.uint8) for v in (10, 200)])
    obs = sg.observe(
        crops, [(640, 480), (100, 400)], _outputs(2, np.array([0, 999]), np.array([0.95, 0.3])), 1000
    )
    counts = sg.Counts(num_classes=1000, feature_dims=4)
    counts.add(obs)
    counts.reject("format")
    assert counts.images == 2 and counts.classes[0] == 1 and counts.classes[-1] == 1
    assert counts.confidence[-1] == 1 and counts.confidence[3] == 1  # 0.95 -> bin "0.9", 0.3 -> "0.3"
    assert counts.inputs["brightness"][0] == 1 and counts.inputs["brightness"][-1] == 1
    assert counts.inputs["aspect"].sum() == 2 and counts.rejections == {"format": 1}
    assert counts.low_confidence_share == 0.5 and counts.mean_confidence == pytest.approx(0.625)
    mean, var = counts.feature_moments()
    f = obs.features
    np.testing.assert_allclose(mean, f.mean(0))
    np.testing.assert_allclose(var, f.var(0), atol=1e-12)


class _FakeApi:
    """Triton's custom-metrics API as SignalExport uses it: families of metrics with increment()."""

    def __init__(self):
        self.values: dict[tuple, float] = {}

    def family(self, name, description, counter):
        assert counter and description
        api = self

        class Family:
            def Metric(self, labels):
                key = (name, tuple(sorted(labels.items())))
                api.values[key] = 0.0

                class Metric:
                    def increment(self, value):
                        assert value > 0  # counters only go up
                        api.values[key] += value

                return Metric()

        return Family()


def test_export_adds_only_what_changed_and_every_series_exists_from_the_start():
    api = _FakeApi()
    counts = sg.Counts(num_classes=10, feature_dims=4)
    export = sg.SignalExport(api, "m", "3", counts)
    assert len(api.values) == len(sg.series(counts)) and not any(api.values.values())
    crops = np.zeros((2, 16, 16, 3), np.uint8)
    counts.add(sg.observe(crops, [(10, 10)] * 2, _outputs(2, np.array([1, 1]), np.array([0.7, 0.7])), 10))
    export.flush()
    export.flush()  # nothing new: no increment (a zero increment would trip the fake's assert)
    labels = (("bucket", "1-1"), ("model", "m"), ("version", "3"))
    assert api.values[(sg.CLASSES, labels)] == 2
    assert api.values[(sg.IMAGES, (("model", "m"), ("version", "3")))] == 2
    pos = api.values[(sg.FEATURE_SUM, (("dim", "0"), ("model", "m"), ("sign", "pos"), ("version", "3")))]
    neg = api.values[(sg.FEATURE_SUM, (("dim", "0"), ("model", "m"), ("sign", "neg"), ("version", "3")))]
    assert pos - neg == pytest.approx(counts.feature_moments()[0][0] * 2)


# -- the served graph's FEATURES ---------------------------------------------------------------------------
def _tiny_network(path: Path, classes: int = 5, width: int = 3) -> None:
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled4d"]),
        helper.make_node("Flatten", ["pooled4d"], ["pooled"]),
        helper.make_node("Gemm", ["pooled", "w", "b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [
            numpy_helper.from_array(rng.standard_normal((classes, width)).astype(np.float32), "w"),
            numpy_helper.from_array(np.zeros(classes, np.float32), "b"),
        ],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def test_features_output_is_a_fixed_projection_and_leaves_the_answer_unchanged(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from cvserve.builders import served_graph as sgraph

    _tiny_network(tmp_path / "net.onnx")
    plain = sgraph.wrap(tmp_path / "net.onnx", tmp_path / "plain.onnx", SPEC, top_k=3, features=0)
    withf = sgraph.wrap(tmp_path / "net.onnx", tmp_path / "feat.onnx", SPEC, top_k=3, features=8)
    assert plain.feature_dims == 0 and withf.feature_dims == 8
    pixels = np.random.default_rng(1).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    a = ort.InferenceSession(str(plain.path)).run(None, {"PIXELS": pixels})
    sess = ort.InferenceSession(str(withf.path))
    b = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"PIXELS": pixels}), strict=True))
    names = [o.name for o in ort.InferenceSession(str(plain.path)).get_outputs()]
    for name, value in zip(names, a, strict=True):
        np.testing.assert_array_equal(b[name], value)  # CLASS_INDEX and SCORE unchanged
    normalised = (pixels.astype(np.float32) - np.array(SPEC.mean, np.float32) * 255) / (
        np.array(SPEC.std, np.float32) * 255
    )
    pooled = normalised.mean(axis=(1, 2))
    np.testing.assert_allclose(b["FEATURES"], pooled @ sgraph.projection(3, 8), rtol=1e-4, atol=1e-5)


def test_single_config_declares_features_when_the_graph_has_them():
    plan = rt.decide(target="cpu", runtime="auto", layout="single")
    shape = tc.PipelineShape(pixels_shape=(224, 224, 3), top_k=5, labels=["a"] * 5, feature_dims=16)
    (cfg,) = tc.pipeline_configs(
        "m", plan, shape, BATCHING.scheduling(plan.roles), tc.VersionPolicy.parse("latest:1")
    ).values()
    assert [(o.name, list(o.dims)) for o in cfg.output][-1] == ("FEATURES", [16])
    plain = tc.PipelineShape(pixels_shape=(224, 224, 3), top_k=5, labels=["a"] * 5)
    (cfg,) = tc.pipeline_configs(
        "m", plan, plain, BATCHING.scheduling(plan.roles), tc.VersionPolicy.parse("latest:1")
    ).values()
    assert "FEATURES" not in [o.name for o in cfg.output]


# -- references ----------------------------------------------------------------------------------------
class _Runner:
    """A stand-in network for counting: class from the crop's brightness, features from its pixels."""

    def run(self, batch):
        mean = batch.reshape(len(batch), -1).mean(1) / 255.0
        return _outputs(len(batch), (mean * 9).astype(int), np.clip(mean, 0, 1)) | {
            "FEATURES": np.stack([mean, 1 - mean], 1).astype(np.float32)
        }


def test_reference_round_trip(tmp_path):
    images = [_png(32 + i, 24, 40 + 3 * i) for i in range(40)] + [b"junk"]
    ref = Reference(counts=count_images(_Runner(), images, SPEC, 10, 2), source="test")
    assert ref.counts.images == 40 and ref.counts.rejections == {"format": 1}
    back = Reference.from_dict(json.loads(ref.save(tmp_path).read_text()))
    for name, hist in ref.counts.histograms().items():
        np.testing.assert_array_equal(back.counts.histograms()[name], hist)
    for a, b in zip(back.counts.feature_moments(), ref.counts.feature_moments(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"schema": 99}, "schema 99"),
        ([], "schema None"),
        ({"schema": 1, "images": 3}, "KeyError"),
    ],
)
def test_a_bad_reference_is_one_exit_2_error(data, fragment):
    with pytest.raises(UserInputError, match=fragment) as info:
        Reference.from_dict(data, "v/reference_stats.json")
    assert info.value.exit_code == 2 and "rebuild the version" in str(info.value)


# -- drift -----------------------------------------------------------------------------------------------
def test_chi2_tail_matches_tables():
    assert drift.chi2_sf(23.209, 10) == pytest.approx(0.01, abs=0.002)
    assert drift.chi2_sf(16.919, 9) == pytest.approx(0.05, abs=0.005)
    assert drift.chi2_sf(0.0, 5) == 1.0


def _counts(rng, n, brightness_shift=0.0, feature_shift=0.0):
    c = sg.Counts(num_classes=10, feature_dims=4)
    crops = np.clip(rng.normal(120 + brightness_shift, 30, (n, 16, 16, 3)), 0, 255).astype(np.uint8)
    sizes = [(int(w), int(w * 0.75)) for w in rng.integers(300, 700, n)]
    outputs = {
        "CLASS_INDEX": rng.integers(0, 10, (n, 1)),
        "SCORE": rng.beta(5, 2, (n, 1)).astype(np.float32),
        "FEATURES": rng.normal(feature_shift, 1, (n, 4)).astype(np.float32),
    }
    c.add(sg.observe(crops, sizes, outputs, 10))
    return c


def test_same_distribution_is_quiet_and_a_shift_is_flagged_with_its_signal():
    rng = np.random.default_rng(0)
    reference = _counts(rng, 2000)
    quiet = drift.compare(_counts(rng, 300), reference)
    assert not quiet.drifted, [(s.signal, s.p_value) for s in quiet.signals]
    dark = drift.compare(_counts(rng, 300, brightness_shift=-60), reference)
    assert {s.signal for s in dark.signals if s.drifted} >= {"brightness"}
    moved = drift.compare(_counts(rng, 300, feature_shift=0.5), reference)
    assert [s.signal for s in moved.signals if s.drifted] == ["features"]


def test_a_window_too_small_is_never_flagged():
    rng = np.random.default_rng(1)
    report = drift.compare(_counts(rng, drift.MIN_IMAGES - 1, brightness_shift=-100), _counts(rng, 500))
    assert not report.drifted


# -- errors of the command -----------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_prometheus_is_one_exit_2_error():
    with pytest.raises(UserInputError, match="is not reachable") as info:
        Prometheus(url=f"http://127.0.0.1:{_closed_port()}", timeout_s=2).query("up")
    assert info.value.exit_code == 2


def test_cli_prints_one_line_and_exits_2(capsys):
    from cvserve.cli import main

    code = main(["monitor", "m", "--prometheus", f"http://127.0.0.1:{_closed_port()}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("cvserve monitor: error: Prometheus at")


class _PrometheusClientApi:
    """Triton's custom-metrics API over prometheus_client counters, exposed over HTTP like Triton's port."""

    def __init__(self, registry):
        import prometheus_client as pc

        self.pc, self.registry = pc, registry

    def family(self, name, description, counter):
        api = self

        class Family:
            def __init__(self):
                self.counter = None

            def Metric(self, labels):
                if self.counter is None:
                    self.counter = api.pc.Counter(name, description, sorted(labels), registry=api.registry)
                child = self.counter.labels(**labels)

                class Metric:
                    def increment(self, value):
                        child.inc(value)

                return Metric()

        return Family()


def test_exported_counts_read_back_from_a_metrics_port_and_subtract_to_a_window():
    pc = pytest.importorskip("prometheus_client")
    from cvserve.monitor.scrape import read_counts

    registry = pc.CollectorRegistry()
    counts = sg.Counts(num_classes=10, feature_dims=4)
    export = sg.SignalExport(_PrometheusClientApi(registry), "m", "2", counts)
    server, _ = pc.start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        crops = np.zeros((3, 16, 16, 3), np.uint8)
        counts.add(
            sg.observe(crops, [(50, 40)] * 3, _outputs(3, np.array([1, 2, 3]), np.array([0.2, 0.6, 0.9])), 10)
        )
        export.flush()
        before = read_counts(url, "m", "2", num_classes=10, feature_dims=4)
        assert before.images == 3 and before.classes[1:4].tolist() == [1, 1, 1]
        counts.add(
            sg.observe(
                np.full((2, 16, 16, 3), 250, np.uint8),
                [(64, 64)] * 2,
                _outputs(2, np.array([9, 9]), np.array([0.95, 0.95])),
                10,
            )
        )
        counts.reject("corrupt")
        export.flush()
        window = read_counts(url, "m", "2", num_classes=10, feature_dims=4).since(before)
        assert window.images == 2 and window.classes[9] == 2 and window.classes.sum() == 2
        assert window.rejections == {"corrupt": 1} and window.inputs["brightness"][-1] == 2
        np.testing.assert_allclose(
            window.feature_moments()[0], _outputs(2, np.zeros(2), np.zeros(2))["FEATURES"].mean(0), atol=1e-6
        )
        assert read_counts(url, "other", "2", num_classes=10, feature_dims=4).images == 0
    finally:
        server.shutdown()
        server.server_close()


def test_pooled_features_are_found_behind_a_matmul_and_bias_add(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from cvserve.builders.served_graph import _pooled_features

    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["pooled"]),
            helper.make_node("MatMul", ["pooled", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["logits"]),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 7, 1, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [
            numpy_helper.from_array(np.ones((7, 3), np.float32), "w"),
            numpy_helper.from_array(np.zeros(3, np.float32), "b"),
        ],
    )
    assert _pooled_features(graph) == ("pooled", 7)
    graph.node[1].op_type = "Conv"  # not a final Gemm/MatMul: no feature summary
    assert _pooled_features(graph) is None
