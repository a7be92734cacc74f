"""A detector's ensemble: the NMS tail in the graph (ONNX Runtime, OpenVINO; TensorRT's EfficientNMS
checked up to the TensorRT call), the PLACEMENT it routes, and the configs that route the tensors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from cvserve.builders import detection as det
from cvserve.builders import detection_graph as dg
from cvserve.builders import tasks
from cvserve.builders import triton_config as tc
from cvserve.builders.bench_nms import raw_heads
from cvserve.builders.preprocessing import Placement, PreprocessSpec
from cvserve.builders.runners import open_runner
from cvserve.builders.runtime import decide
from cvserve.client import contract
from cvserve.errors import MissingDependencyError

CPU_RUNTIMES = ("onnxruntime", "openvino")
# odd aspect ratios: a wide and a tall image letterboxed into 640x640 (Placement.of's rounding)
SPEC = PreprocessSpec(input_size=(640, 640), resize_shorter=0, fit="letterbox")
PLACEMENTS = [Placement.of((1333, 411), SPEC), Placement.of((257, 1001), SPEC)]


def _known_head() -> np.ndarray:
    """[2, 4 + 3, 8]: image 0 has a class-0 box and its near duplicate (suppressed), a class-1 box on
    the same spot (kept: another class), a class-2 box below the threshold; image 1 has nothing."""
    raw = np.zeros((2, 7, 8), np.float32)
    boxes = [(100, 200, 40, 80), (102, 201, 40, 80), (100, 200, 40, 80), (400, 300, 30, 30)]
    for a, (box, cls, score) in enumerate(zip(boxes, (0, 0, 1, 2), (0.9, 0.8, 0.7, 0.2), strict=True)):
        raw[0, :4, a] = box
        raw[0, 4 + cls, a] = score
    raw[1, :4] = 50.0
    raw[1, 4:] = 0.1
    return raw


def _tail_rows(runtime: str, raw: np.ndarray, s: det.NmsSettings, tmp_path) -> det.Detections:
    path = dg.save_tail(tmp_path / "tail.onnx", raw.shape[1] - 4, raw.shape[2], s, "onnx")
    out = open_runner(path, runtime, precision="f32").run(raw)
    assert (
        out[contract.NUM_DETECTIONS].dtype == np.int32 and out[contract.DETECTION_CLASSES].dtype == np.int32
    )
    assert out[contract.DETECTION_BOXES].shape == (len(raw), s.max_detections, 4)
    return det.unpack_nms(*(out[n] for n in contract.NMS_OUTPUTS), PLACEMENTS[: len(raw)], s.max_detections)


def _assert_same(got: det.Detections, want: det.Detections) -> None:
    np.testing.assert_array_equal(got.count, want.count)
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)  # original pixels


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_onnx_tail_keeps_the_known_boxes_in_original_pixels(runtime, tmp_path):
    s = det.NmsSettings(score_threshold=0.25, iou_threshold=0.45, max_detections=5)
    raw = _known_head()
    got = _tail_rows(runtime, raw, s, tmp_path)
    assert got.count[:, 0].tolist() == [2, 0]
    first = got.rows(0)
    assert first.classes.tolist() == [0, 1] and np.allclose(first.scores, [0.9, 0.7])
    expected = PLACEMENTS[0].to_original(np.float32([[80, 160, 120, 240]]))[0]
    np.testing.assert_allclose(first.boxes[0], expected, atol=1e-3)
    assert not got.boxes[1].any() and not got.scores[1].any()  # zero padding
    _assert_same(got, det.postprocess(raw, PLACEMENTS, s))


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
@pytest.mark.parametrize("k", [3, 100])
def test_onnx_tail_gives_the_rows_of_the_numpy_postprocessing(runtime, k, tmp_path):
    """Hundreds of candidates per image, clustered: K cuts (3) or pads (100) the kept rows."""
    s = det.NmsSettings(score_threshold=0.25, iou_threshold=0.45, max_detections=k)
    raw = raw_heads(2, 1200, 5, seed=3)
    _assert_same(_tail_rows(runtime, raw, s, tmp_path), det.postprocess(raw, PLACEMENTS, s))


def test_efficient_nms_tail_is_tensorrts_plugin_with_its_documented_interface():
    s = det.NmsSettings(score_threshold=0.3, iou_threshold=0.5, max_detections=20)
    model = dg.tail_model(5, 300, s, "efficient")
    node = model.graph.node[-1]
    assert node.op_type == "EfficientNMS_TRT" and list(node.output) == list(contract.NMS_OUTPUTS)
    import onnx
    from onnx import TensorProto

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {
        "plugin_version": b"1",
        "background_class": -1,
        "max_output_boxes": 20,
        "score_threshold": pytest.approx(0.3),
        "iou_threshold": pytest.approx(0.5),
        "score_activation": 0,
        "class_agnostic": 0,
        "box_coding": 0,
    }
    # its inputs: boxes [N, A, 4] as corners, scores [N, A, C]
    producers = {o: n for n in model.graph.node for o in n.output}
    assert producers[node.input[0]].op_type == "Concat"  # x1y1 ++ x2y2
    assert list(producers[node.input[1]].attribute[0].ints) == [0, 2, 1]
    outputs = {
        o.name: (
            o.type.tensor_type.elem_type,
            [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim],
        )
        for o in model.graph.output
    }
    assert outputs == {
        "num_detections": (TensorProto.INT32, ["batch", 1]),
        "detection_boxes": (TensorProto.FLOAT, ["batch", 20, 4]),
        "detection_scores": (TensorProto.FLOAT, ["batch", 20]),
        "detection_classes": (TensorProto.INT32, ["batch", 20]),
    }


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_tensorrt_engine_of_the_efficient_nms_graph_needs_the_tensorrt_extra(tmp_path):
    from cvserve.builders import onnx2trt
    from cvserve.builders.profile import EngineProfile

    s = det.NmsSettings()
    graph = tmp_path / "served.onnx"
    import onnx

    onnx.save(dg.tail_model(3, 64, s, "efficient"), str(graph))
    spec = onnx2trt.engine_spec(
        input_name=dg.RAW, input_shape=(7, 64), precision="fp16", profile=EngineProfile.for_batching(4, ())
    )
    plan = tmp_path / "model.plan"
    with pytest.raises(
        MissingDependencyError, match=r"tensorrt is needed.*not installed: pip install .cvserve\[tensorrt\]."
    ):
        onnx2trt.build_engine(graph, plan, spec)
    assert not plan.exists()


def _tiny_detector(path, classes: int = 2) -> None:
    """A float network [N, 3, 32, 32] -> a yolo head [N, 4 + classes, 64]: a 1x1 convolution, reshaped."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (4 + classes, 3, 1, 1)).astype(np.float32)
    b = np.float32([16, 16, 8, 8, *([0.0] * classes)])
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "w", "b"], ["conv"], strides=[4, 4]),
            helper.make_node("Reshape", ["conv", "shape"], ["head_pre"]),
            helper.make_node("Abs", ["head_pre"], ["output"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4 + classes, 64])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array(np.int64([0, 4 + classes, 64]), "shape"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _ensemble_against_single(runtime: str, s: det.NmsSettings, tmp_path):
    """Detect.wrap of tmp_path/net.onnx for an ensemble plan (PIXELS -> network -> tail) gives the rows
    the single layout's python model computes from the raw head of the same pixels: (task, spec)."""
    spec = tasks.get("detect").preprocess(PreprocessSpec(input_size=(32, 32), mean=(0, 0, 0), std=(1, 1, 1)))
    task = tasks.get("detect", nms=s)
    plan = task.serving_plan(decide(layout="ensemble", runtime=runtime))
    task.check_plan(plan, "fp32")
    served = task.wrap(tmp_path / "net.onnx", tmp_path / "served.onnx", spec, plan=plan)
    single = task.wrap(tmp_path / "net.onnx", tmp_path / "single.onnx", spec)
    pixels = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    places = [Placement.of((64, 20), spec), Placement.of((9, 31), spec)]
    out = open_runner(served.path, runtime, precision="f32").run(pixels)
    got = det.unpack_nms(*(out[n] for n in contract.NMS_OUTPUTS), places, s.max_detections)
    raw = open_runner(single.path, "onnxruntime", precision="f32").run(pixels)["RAW"]
    want = det.postprocess(raw, places, s)
    assert want.count.sum() > 0
    _assert_same(got, want)
    return task, spec


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_the_ensembles_served_graph_ends_in_the_nms_of_the_single_layouts_model(runtime, tmp_path):
    """Detect.wrap for an ensemble plan: PIXELS -> network -> NMS tail; its rows are those the single
    layout's python model computes from the raw head of the same pixels."""
    _tiny_detector(tmp_path / "net.onnx")
    task, spec = _ensemble_against_single(
        runtime, det.NmsSettings(score_threshold=0.5, iou_threshold=0.5, max_detections=10), tmp_path
    )
    efficient = task.wrap(
        tmp_path / "net.onnx", tmp_path / "trt.onnx", spec, plan=task.serving_plan(decide(target="gpu"))
    )
    import onnx

    assert onnx.load(str(efficient.path)).graph.node[-1].op_type == "EfficientNMS_TRT"


def _end2end_head(images: int, rows: int, seed: int = 0) -> np.ndarray:
    """[images, rows, 6]: boxes, distinct scores in 0..1 (some below any threshold), float classes."""
    rng = np.random.default_rng(seed)
    raw = np.zeros((images, rows, 6), np.float32)
    xy = rng.uniform(0, 600, (images, rows, 2))
    raw[..., :2], raw[..., 2:4] = xy, xy + rng.uniform(1, 40, (images, rows, 2))
    raw[..., 4] = rng.permutation(images * rows).reshape(images, rows) / (images * rows)
    raw[..., 5] = rng.integers(0, 5, (images, rows))
    raw[-1, :, 4] = 0.01  # the last image has nothing above the threshold
    return raw


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
@pytest.mark.parametrize("k", [3, 100])
def test_end2end_tail_keeps_the_rows_the_single_layout_keeps(runtime, k, tmp_path):
    """No NMS: the rows above the threshold, best first, at most K, padded; fewer rows than K too."""
    raw = _end2end_head(2, 40)
    s = det.NmsSettings(head="end2end", score_threshold=0.3, max_detections=k)
    path = dg.save_tail(tmp_path / "tail.onnx", 0, raw.shape[1], s, "onnx")
    out = open_runner(path, runtime, precision="f32").run(raw)
    got = det.unpack_nms(*(out[n] for n in contract.NMS_OUTPUTS), PLACEMENTS, k)
    want = det.postprocess(raw, PLACEMENTS, s)
    assert want.count[:, 0].tolist() == [min(k, int((raw[0, :, 4] > 0.3).sum())), 0]
    _assert_same(got, want)


def test_end2end_tail_is_the_same_for_tensorrt_and_plain_onnx():
    """TensorRT runs an end2end head's tail as it is: no plugin, a checked ONNX graph."""
    s = det.NmsSettings(head="end2end", max_detections=7)
    assert dg.tail_model(0, 20, s, "efficient") == dg.tail_model(0, 20, s, "onnx")
    assert all(node.op_type != dg.EFFICIENT_NMS for node in dg.tail_model(0, 20, s, "efficient").graph.node)


def _tiny_end2end_detector(path, rows: int = 64) -> None:
    """A float network [N, 3, 32, 32] -> an end2end head [N, rows, 6]: a 1x1 convolution, reshaped."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (6, 3, 1, 1)).astype(np.float32)
    b = np.float32([4, 4, 20, 20, 0, 1])
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "w", "b"], ["conv"], strides=[4, 4]),
            helper.make_node("Reshape", ["conv", "shape"], ["rows_t"]),
            helper.make_node("Transpose", ["rows_t"], ["rows"], perm=[0, 2, 1]),
            helper.make_node("Abs", ["rows"], ["output"]),
        ],
        "tiny_end2end",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", rows, 6])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array(np.int64([0, 6, rows]), "shape"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_the_ensembles_served_graph_of_an_end2end_head_keeps_the_single_layouts_rows(runtime, tmp_path):
    _tiny_end2end_detector(tmp_path / "net.onnx")
    _ensemble_against_single(
        runtime, det.NmsSettings(head="end2end", score_threshold=0.5, max_detections=10), tmp_path
    )


@pytest.mark.parametrize("size", [(1333, 411), (257, 1001), (1, 1)])
def test_placement_travels_as_a_row_exactly(size):
    p = Placement.of(size, SPEC)
    row = p.as_row()
    assert row.dtype == np.float32 and row.shape == (6,)
    assert Placement.from_row(row) == p


# -- the detector's ensemble configs ------------------------------------------------------------------
def _configs(plan, k: int = 7):
    shape = tc.PipelineShape(
        pixels_shape=(64, 96, 3), top_k=k, labels=["face", "cat"], task="detect",
        nms=det.NmsSettings(max_detections=k), precision="fp16",
    )  # fmt: skip
    plan = tasks.get("detect", nms=shape.nms).serving_plan(plan)
    scheduling = tc.Batching(max_queue_size=8).scheduling(plan.roles)
    configs = tc.pipeline_configs("scenes", plan, shape, scheduling, tc.VersionPolicy())
    return {role: tc.parse(tc.to_text(cfg)) for role, cfg in configs.items()}  # valid protobuf text


@pytest.mark.parametrize(
    "plan, backend",
    [
        (decide(target="gpu"), "tensorrt_plan"),
        (decide(target="gpu", runtime="onnxruntime"), "onnxruntime_onnx"),
        (decide(layout="ensemble", runtime="openvino"), "openvino"),
        (decide(layout="ensemble", runtime="onnxruntime"), "onnxruntime_onnx"),
    ],
)
def test_detector_ensemble_configs_route_placement_and_nms_rows_to_the_postprocess_step(plan, backend):
    configs = _configs(plan)
    assert list(configs) == ["preprocess", "network", "postprocess", "classifier"]
    pre, net, post, entry = configs.values()
    assert net.platform == backend or net.backend == backend
    assert {o.name: (list(o.dims), o.data_type) for o in pre.output} == {
        "PIXELS": ([64, 96, 3], tc.mc.TYPE_UINT8),
        "PLACEMENT": ([6], tc.mc.TYPE_FP32),
    }
    assert {o.name: list(o.dims) for o in net.output} == {
        "num_detections": [1], "detection_boxes": [7, 4], "detection_scores": [7], "detection_classes": [7],
    }  # fmt: skip
    assert post.backend == "python" and post.name == "scenes_postprocess"
    assert {i.name for i in post.input} == {*contract.NMS_OUTPUTS, "PLACEMENT"}
    assert (
        det.NmsSettings.from_parameters(
            {k: v.string_value for k, v in post.parameters.items()}
        ).max_detections
        == 7
    )
    assert {o.name: list(o.dims) for o in entry.output} == {
        "BOXES": [7, 4], "SCORES": [7], "CLASSES": [7], "COUNT": [1],
    }  # fmt: skip
    steps = entry.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["scenes_preprocess", "scenes_network", "scenes_postprocess"]
    assert dict(steps[0].output_map) == {"PIXELS": "pixels", "PLACEMENT": "placement"}
    assert dict(steps[1].input_map) == {"PIXELS": "pixels"}
    assert dict(steps[2].input_map) == {
        **{n: n for n in contract.NMS_OUTPUTS},
        "PLACEMENT": "placement",
    } and dict(steps[1].output_map) == {n: n for n in contract.NMS_OUTPUTS}
    assert dict(steps[2].output_map) == {n: n for n in ("BOXES", "SCORES", "CLASSES", "COUNT")}
    # every step reads what an earlier one (or the request) wrote, with the type and shape it was written
    written = {"IMAGE": None}
    for step, cfg in zip(steps, (pre, net, post), strict=True):
        types = {i.name: (i.data_type, list(i.dims)) for i in cfg.input}
        for name, tensor in step.input_map.items():
            assert tensor in written and written[tensor] in (None, types[name])
        written.update({step.output_map[o.name]: (o.data_type, list(o.dims)) for o in cfg.output})
    assert all(c.max_batch_size == entry.max_batch_size for c in configs.values())


def test_classifier_ensemble_keeps_its_two_steps_and_names():
    shape = tc.PipelineShape(pixels_shape=(8, 8, 3), top_k=3, labels=["a", "b", "c"])
    plan = decide(target="gpu")
    configs = tc.pipeline_configs(
        "m", plan, shape, tc.Batching(max_queue_size=8).scheduling(plan.roles), tc.VersionPolicy()
    )
    assert list(configs) == ["preprocess", "network", "classifier"]
    steps = configs["classifier"].ensemble_scheduling.step
    assert dict(steps[0].output_map) == {"PIXELS": "pixels"}
    assert dict(steps[1].output_map) == {"CLASS_INDEX": "CLASS_INDEX", "SCORE": "SCORE"}
