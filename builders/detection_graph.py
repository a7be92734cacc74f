"""A detector head's postprocessing as an ONNX tail, for the networks a native backend serves.

In the ensemble layout (NGC, GPUs) the network runs on a native Triton backend, so the rules of
:func:`cvserve.builders.detection.postprocess` move into the served graph, after the raw head ``RAW``.
An ``end2end`` head ([N, K0, 6], NMS done in the network) needs no NMS: its tail keeps the rows above
the score threshold, best first, at most K (:func:`_end2end`, plain ONNX operators that every runtime
runs, TensorRT included). A ``yolo`` head [N, 4 + C, A]:

* decode: boxes cx, cy, w, h -> x1, y1, x2, y2 (input pixels) [N, A, 4]; each anchor keeps only its
  best class's score (the others become 0, below any threshold), as ``detection.postprocess`` does;
* NMS, one of :data:`KINDS`:

  - ``efficient``: TensorRT's ``EfficientNMS_TRT`` plugin (TensorRT's ``plugin/efficientNMSPlugin``:
    boxes [N, A, 4], scores [N, A, C]; ``box_coding`` 0 (corners), ``score_activation`` 0 (the scores
    already are probabilities), ``background_class`` -1, class-aware). Only TensorRT runs it; the
    engine is built by :mod:`cvserve.builders.onnx2trt`, which loads TensorRT's plugin library.
  - ``onnx``: ONNX's standard ``NonMaxSuppression`` (per class, ``max_output_boxes_per_class`` K),
    then the best K of each image by score, padded: ONNX Runtime (CPU, CUDA and its TensorRT
    accelerator, which hands the nodes TensorRT cannot take to ONNX Runtime) and OpenVINO run it.

Both end in the same four tensors (:data:`cvserve.client.contract.NMS_OUTPUTS`, TensorRT's names):
``num_detections`` INT32 [N, 1], ``detection_boxes`` FP32 [N, K, 4] (input pixels), ``detection_scores``
FP32 [N, K] (best first), ``detection_classes`` INT32 [N, K], rows past the count zero. The ensemble's
python postprocess step maps the boxes back to original pixels (``detection.unpack_nms``).

Differences from the numpy rules, all at the edges: a tie between an anchor's two best classes keeps
both here (numpy keeps the first); EfficientNMS sorts at most 4096 candidates per image after the
score threshold (its README), which a threshold of 0.25 on a trained detector stays far below.
``python -m cvserve.builders.bench_nms`` times the ``onnx`` tail against numpy on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvserve._extras import require
from cvserve.builders.detection import NmsSettings
from cvserve.client import contract
from cvserve.errors import BuildError, UserInputError

RAW = "RAW"  # the raw head the tail reads (cvserve.builders.served_graph.RAW)
KINDS = ("onnx", "efficient")
EFFICIENT_NMS = "EfficientNMS_TRT"  # the plugin's registered name; plugin_version 1
MIN_OPSET = 13  # Split with sizes as an input, ReduceSum with axes as an input
_P = "cvserve_nms_"  # the tail's own tensors, apart from the network's


def kind_for(runtime: str) -> str:
    """The NMS a runtime serves: TensorRT engines use TensorRT's plugin, the others the ONNX operator."""
    return "efficient" if runtime == "tensorrt" else "onnx"


def _const(name: str, value, dtype):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _decode(classes: int, opset: int):
    """RAW -> boxes [N, A, 4] x1y1x2y2 and best-class scores [N, C, A]: nodes and initializers."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Split", [RAW, f"{_P}split"], [f"{_P}xywh", f"{_P}cls"], axis=1),
        helper.make_node("Transpose", [f"{_P}xywh"], [f"{_P}xywh_t"], perm=[0, 2, 1]),
        helper.make_node("Split", [f"{_P}xywh_t", f"{_P}half_split"], [f"{_P}xy", f"{_P}wh"], axis=2),
        helper.make_node("Mul", [f"{_P}wh", f"{_P}half"], [f"{_P}half_wh"]),
        helper.make_node("Sub", [f"{_P}xy", f"{_P}half_wh"], [f"{_P}x1y1"]),
        helper.make_node("Add", [f"{_P}xy", f"{_P}half_wh"], [f"{_P}x2y2"]),
        helper.make_node("Concat", [f"{_P}x1y1", f"{_P}x2y2"], [f"{_P}boxes"], axis=2),
    ]
    if opset >= 18:  # ReduceMax's axes became an input
        nodes.append(helper.make_node("ReduceMax", [f"{_P}cls", f"{_P}axis1"], [f"{_P}best"], keepdims=1))
    else:
        nodes.append(helper.make_node("ReduceMax", [f"{_P}cls"], [f"{_P}best"], axes=[1], keepdims=1))
    nodes += [
        helper.make_node("Equal", [f"{_P}cls", f"{_P}best"], [f"{_P}is_best"]),
        helper.make_node("Cast", [f"{_P}is_best"], [f"{_P}mask"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{_P}cls", f"{_P}mask"], [f"{_P}scores"]),  # [N, C, A]
    ]
    init = [
        _const(f"{_P}split", [4, classes], np.int64),
        _const(f"{_P}half_split", [2, 2], np.int64),
        _const(f"{_P}half", 0.5, np.float32),
        _const(f"{_P}axis1", [1], np.int64),
    ]
    return nodes, init


def _efficient(s: NmsSettings):
    """EfficientNMS_TRT over the decoded boxes; its documented inputs and attributes."""
    from onnx import helper

    nodes = [
        helper.make_node("Transpose", [f"{_P}scores"], [f"{_P}scores_t"], perm=[0, 2, 1]),  # [N, A, C]
        helper.make_node(
            EFFICIENT_NMS,
            [f"{_P}boxes", f"{_P}scores_t"],
            list(contract.NMS_OUTPUTS),
            name="cvserve_efficient_nms",
            plugin_version="1",
            background_class=-1,
            max_output_boxes=s.max_detections,
            score_threshold=float(s.score_threshold),
            iou_threshold=float(s.iou_threshold),
            score_activation=0,
            class_agnostic=0,
            box_coding=0,
        ),
    ]
    return nodes, []


def _rows():
    """The best K rows (``top`` scores [N, K], -1 where none, ``top_box``, ``top_class``) -> the four NMS
    outputs, rows past the count zero."""
    from onnx import TensorProto, helper

    n = helper.make_node
    return [
        n("Greater", [f"{_P}top", f"{_P}minus_one"], [f"{_P}valid"]),  # [N, K]
        n("Unsqueeze", [f"{_P}valid", f"{_P}i2"], [f"{_P}valid_box"]),
        n("Where", [f"{_P}valid_box", f"{_P}top_box", f"{_P}zero_f"], [contract.DETECTION_BOXES]),
        n("Where", [f"{_P}valid", f"{_P}top", f"{_P}zero_f"], [contract.DETECTION_SCORES]),
        # the outputs end in real operations: OpenVINO folds a trailing Cast and its name with it
        n("Where", [f"{_P}valid", f"{_P}top_class", f"{_P}zero_i"], [contract.DETECTION_CLASSES]),
        n("Cast", [f"{_P}valid"], [f"{_P}valid32"], to=TensorProto.INT32),
        n("ReduceSum", [f"{_P}valid32", f"{_P}axis1"], [contract.NUM_DETECTIONS], keepdims=1),
    ]


def _standard(s: NmsSettings):
    """ONNX NonMaxSuppression per class, then each image's best K by score, padded with zero rows."""
    from onnx import TensorProto, helper

    k = s.max_detections
    n = helper.make_node
    nodes = [
        n(
            "NonMaxSuppression",
            [f"{_P}boxes", f"{_P}scores", f"{_P}k", f"{_P}iou", f"{_P}score"],
            [f"{_P}selected"],  # [M, 3]: image, class, anchor
            center_point_box=0,
        ),
        n("Gather", [f"{_P}selected", f"{_P}zero"], [f"{_P}sel_image"], axis=1),  # [M]
        n("Gather", [f"{_P}selected", f"{_P}one"], [f"{_P}sel_class"], axis=1),
        n("Gather", [f"{_P}selected", f"{_P}i02"], [f"{_P}sel_image_anchor"], axis=1),  # [M, 2]
        n("GatherND", [f"{_P}scores", f"{_P}selected"], [f"{_P}sel_score"]),  # [M]
        n("GatherND", [f"{_P}boxes", f"{_P}sel_image_anchor"], [f"{_P}sel_box"]),  # [M, 4]
        # padded with K empty rows, so that every image has K to choose from
        n("Concat", [f"{_P}sel_score", f"{_P}pad_score"], [f"{_P}all_score"], axis=0),  # [M + K]
        n("Concat", [f"{_P}sel_box", f"{_P}pad_box"], [f"{_P}all_box"], axis=0),
        n("Cast", [f"{_P}sel_class"], [f"{_P}sel_class32"], to=TensorProto.INT32),
        n("Concat", [f"{_P}sel_class32", f"{_P}pad_class"], [f"{_P}all_class"], axis=0),
        # each image's scores over all rows (-1 where the row is another image's): [N, M + K]
        n("Shape", [f"{_P}boxes"], [f"{_P}boxes_shape"]),
        n("Gather", [f"{_P}boxes_shape", f"{_P}i0"], [f"{_P}n"]),  # [1]
        n("Squeeze", [f"{_P}n"], [f"{_P}n_scalar"]),
        n("Range", [f"{_P}zero", f"{_P}n_scalar", f"{_P}one"], [f"{_P}images"]),
        n("Unsqueeze", [f"{_P}images", f"{_P}i1"], [f"{_P}images_col"]),  # [N, 1]
        n("Unsqueeze", [f"{_P}sel_image", f"{_P}i0"], [f"{_P}sel_image_row"]),  # [1, M]
        n("Equal", [f"{_P}images_col", f"{_P}sel_image_row"], [f"{_P}mine"]),  # [N, M]
        n("Unsqueeze", [f"{_P}sel_score", f"{_P}i0"], [f"{_P}sel_score_row"]),
        n("Where", [f"{_P}mine", f"{_P}sel_score_row", f"{_P}minus_one"], [f"{_P}own_score"]),
        n("Concat", [f"{_P}n", f"{_P}k"], [f"{_P}nk"], axis=0),
        n("Expand", [f"{_P}minus_one", f"{_P}nk"], [f"{_P}pad_rows"]),  # [N, K]
        n("Concat", [f"{_P}own_score", f"{_P}pad_rows"], [f"{_P}dense"], axis=1),
        n("TopK", [f"{_P}dense", f"{_P}k"], [f"{_P}top", f"{_P}top_index"], axis=1, largest=1, sorted=1),
        n("Gather", [f"{_P}all_box", f"{_P}top_index"], [f"{_P}top_box"], axis=0),  # [N, K, 4]
        n("Gather", [f"{_P}all_class", f"{_P}top_index"], [f"{_P}top_class"], axis=0),  # [N, K]
        *_rows(),
    ]
    init = [
        _const(f"{_P}k", [k], np.int64),
        _const(f"{_P}iou", [s.iou_threshold], np.float32),
        _const(f"{_P}score", [s.score_threshold], np.float32),
        _const(f"{_P}i0", [0], np.int64),
        _const(f"{_P}i1", [1], np.int64),
        _const(f"{_P}i2", [2], np.int64),
        _const(f"{_P}i02", [0, 2], np.int64),
        _const(f"{_P}pad_score", np.full(k, -1), np.float32),
        _const(f"{_P}pad_box", np.zeros((k, 4)), np.float32),
        _const(f"{_P}pad_class", np.zeros(k), np.int32),
        _const(f"{_P}zero_i", 0, np.int32),
        _const(f"{_P}zero", 0, np.int64),
        _const(f"{_P}one", 1, np.int64),
        _const(f"{_P}zero_f", 0, np.float32),
        _const(f"{_P}minus_one", -1, np.float32),
    ]
    return nodes, init


def _end2end(s: NmsSettings):
    """An end2end head's rows [N, K0, 6] (x1, y1, x2, y2, score, class) -> the four NMS outputs: the rows
    scoring above the threshold, best first, at most K, padded with zero rows (``detection.select``)."""
    from onnx import TensorProto, helper

    k = s.max_detections
    n = helper.make_node
    nodes = [
        n("Split", [RAW, f"{_P}sizes"], [f"{_P}box", f"{_P}score3", f"{_P}class3"], axis=2),
        n("Squeeze", [f"{_P}score3", f"{_P}i2"], [f"{_P}score"]),  # [N, K0]
        n("Squeeze", [f"{_P}class3", f"{_P}i2"], [f"{_P}class_f"]),
        n("Cast", [f"{_P}class_f"], [f"{_P}class"], to=TensorProto.INT32),  # truncates, as astype does
        n("Greater", [f"{_P}score", f"{_P}threshold"], [f"{_P}above"]),
        n("Where", [f"{_P}above", f"{_P}score", f"{_P}minus_one"], [f"{_P}kept_score"]),
        # K rows of padding per image, so that TopK always has K to choose from: [N, K0 + K]
        n("Shape", [RAW], [f"{_P}raw_shape"]),
        n("Gather", [f"{_P}raw_shape", f"{_P}i0"], [f"{_P}n"]),  # [1]
        n("Concat", [f"{_P}n", f"{_P}k"], [f"{_P}nk"], axis=0),
        n("Concat", [f"{_P}n", f"{_P}k", f"{_P}four"], [f"{_P}nk4"], axis=0),
        n("Expand", [f"{_P}minus_one", f"{_P}nk"], [f"{_P}pad_score"]),
        n("Expand", [f"{_P}zero_f", f"{_P}nk4"], [f"{_P}pad_box"]),
        n("Expand", [f"{_P}zero_i", f"{_P}nk"], [f"{_P}pad_class"]),
        n("Concat", [f"{_P}kept_score", f"{_P}pad_score"], [f"{_P}all_score"], axis=1),
        n("Concat", [f"{_P}box", f"{_P}pad_box"], [f"{_P}all_box"], axis=1),
        n("Concat", [f"{_P}class", f"{_P}pad_class"], [f"{_P}all_class"], axis=1),
        n("TopK", [f"{_P}all_score", f"{_P}k"], [f"{_P}top", f"{_P}top_index"], axis=1, largest=1, sorted=1),
        n("Unsqueeze", [f"{_P}top_index", f"{_P}i2"], [f"{_P}top_index3"]),
        n("Expand", [f"{_P}top_index3", f"{_P}nk4"], [f"{_P}top_index_box"]),  # [N, K, 4]
        n("GatherElements", [f"{_P}all_box", f"{_P}top_index_box"], [f"{_P}top_box"], axis=1),
        n("GatherElements", [f"{_P}all_class", f"{_P}top_index"], [f"{_P}top_class"], axis=1),
        *_rows(),
    ]
    init = [
        _const(f"{_P}sizes", [4, 1, 1], np.int64),
        _const(f"{_P}k", [k], np.int64),
        _const(f"{_P}four", [4], np.int64),
        _const(f"{_P}threshold", s.score_threshold, np.float32),
        _const(f"{_P}i0", [0], np.int64),
        _const(f"{_P}i2", [2], np.int64),
        _const(f"{_P}axis1", [1], np.int64),
        _const(f"{_P}zero_f", 0, np.float32),
        _const(f"{_P}zero_i", 0, np.int32),
        _const(f"{_P}minus_one", -1, np.float32),
    ]
    return nodes, init


def _outputs(k: int) -> list:
    from onnx import TensorProto, helper

    return [
        helper.make_tensor_value_info(contract.NUM_DETECTIONS, TensorProto.INT32, ["batch", 1]),
        helper.make_tensor_value_info(contract.DETECTION_BOXES, TensorProto.FLOAT, ["batch", k, 4]),
        helper.make_tensor_value_info(contract.DETECTION_SCORES, TensorProto.FLOAT, ["batch", k]),
        helper.make_tensor_value_info(contract.DETECTION_CLASSES, TensorProto.INT32, ["batch", k]),
    ]


def _parts(classes: int, s: NmsSettings, kind: str, opset: int):
    if kind not in KINDS:
        raise UserInputError(f"NMS kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if s.head == "end2end":  # NMS done in the network: the same tail for every runtime
        return _end2end(s)
    nodes, init = _decode(classes, opset)
    more, more_init = (_efficient if kind == "efficient" else _standard)(s)
    return nodes + more, init + more_init


def _check(model) -> None:
    import onnx

    # the plugin is no ONNX operator: TensorRT's parser alone knows it
    if all(node.op_type != EFFICIENT_NMS for node in model.graph.node):
        onnx.checker.check_model(model)


def _raw_shape(classes: int, anchors: int, s: NmsSettings) -> list:
    """The raw head the tail reads: yolo [N, 4 + C, A]; end2end [N, A, 6] (A: its rows)."""
    return ["batch", anchors, 6] if s.head == "end2end" else ["batch", 4 + classes, anchors]


def tail_model(classes: int, anchors: int, s: NmsSettings, kind: str, *, opset: int = 18):
    """The tail alone: ``RAW`` -> the four NMS outputs (the tests and bench_nms run it)."""
    require("onnx", purpose="to build models")
    from onnx import TensorProto, helper

    nodes, init = _parts(classes, s, kind, max(opset, MIN_OPSET))
    graph = helper.make_graph(
        nodes,
        "cvserve_nms",
        [helper.make_tensor_value_info(RAW, TensorProto.FLOAT, _raw_shape(classes, anchors, s))],
        _outputs(s.max_detections),
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, MIN_OPSET))])
    _check(model)
    return model


def save_tail(path: Path, classes: int, anchors: int, s: NmsSettings, kind: str) -> Path:
    import onnx

    onnx.save(tail_model(classes, anchors, s, kind), str(path))
    return path


def append(served: Path, out: Path, classes: int, s: NmsSettings, kind: str) -> Path:
    """``served`` (PIXELS -> ``RAW``, :func:`cvserve.builders.served_graph.wrap_raw`) with the tail after
    ``RAW``: PIXELS -> the four NMS outputs, saved to ``out``."""
    onnx = require("onnx", purpose="to build models")
    model = onnx.load(str(served))
    if [o.name for o in model.graph.output] != [RAW]:
        raise BuildError(f"{served.name} must return {RAW} alone to take the NMS tail")
    opset = next(e.version for e in model.opset_import if e.domain in ("", "ai.onnx"))
    if opset < MIN_OPSET:
        raise BuildError(f"{served.name} declares opset {opset}; the NMS tail needs {MIN_OPSET} or later")
    nodes, init = _parts(classes, s, kind, opset)
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(init)
    del model.graph.output[:]
    model.graph.output.extend(_outputs(s.max_detections))
    try:
        _check(model)
    except Exception as exc:
        raise BuildError(f"the NMS tail does not fit {served.name}: {type(exc).__name__}: {exc}") from None
    onnx.save(model, str(out))
    return out
