"""Network ONNX -> served ONNX: uint8 pixels in, top-k classes out, the math inside the graph.

The exported (and possibly quantized) network takes the float input its training used (``input``,
NCHW or NHWC, normalised) and returns ``logits``. Serving wraps it, with ``onnx.compose``, between

* a head that takes ``PIXELS`` (uint8, [batch, H, W, 3], RGB, the centre crop that
  :func:`cvserve.builders.preprocessing.pixels` returns) and does the cast, the channel order, the
  mean/std normalisation and the layout change, the same arithmetic as
  :func:`cvserve.builders.preprocessing.normalize_batch`;
* a tail that does softmax and top-k and returns ``CLASS_INDEX`` (int64, [batch, k]) and ``SCORE``
  (float32, [batch, k], probabilities, best first).
and, unless ``features=0``, a third output ``FEATURES`` (float32, [batch, d]): the pooled penultimate
features (the input of the network's final Gemm/MatMul) times a fixed, seeded random projection, the
compact summary the served model counts for drift monitoring (docs/monitoring.md). It reads a tensor
the network computes anyway, so CLASS_INDEX and SCORE are unchanged, and clients that ask for their
outputs by name never receive it.

So only uint8 pixels travel between processes (a quarter of float32), no python model does the
maths, and every runtime (ONNX Runtime, OpenVINO, TensorRT) runs the whole thing. Quantizers see the
bare network: the wrap happens after quantization, and the head and tail stay in float.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvserve._extras import require
from cvserve.builders.preprocessing import PreprocessSpec
from cvserve.client import contract
from cvserve.errors import BuildError

PIXELS = contract.PIXELS
CLASS_INDEX = contract.CLASS_INDEX
SCORE = contract.SCORE
RAW = "RAW"  # a network output served as it is (a detector's raw head, decoded by the python model)
FEATURES = contract.FEATURES
DEFAULT_FEATURE_DIMS = 16
FEATURE_SEED = 20  # the projection is the same for every build: references of two versions compare
_PREFIX = "cvserve_"  # names of the head's and tail's own tensors, apart from the network's


@dataclass(frozen=True, kw_only=True)
class ServedGraph:
    """The served network file and its interface (without the batch dimension)."""

    path: Path
    pixels_shape: tuple[int, int, int]  # (H, W, 3)
    top_k: int
    num_classes: int
    feature_dims: int = 0  # width of the FEATURES output; 0: the graph has none


def _opset(model) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise BuildError("the network ONNX declares no default-domain opset")


def _head(spec: PreprocessSpec, input_name: str, opset: int, ir_version: int):
    from onnx import TensorProto, helper, numpy_helper

    h, w = spec.input_size
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)
    nodes = [helper.make_node("Cast", [PIXELS], [f"{_PREFIX}float"], to=TensorProto.FLOAT)]
    last = f"{_PREFIX}float"
    if spec.color == "BGR":  # the crop is RGB: reverse the channel axis
        nodes.append(
            helper.make_node(
                "Slice",
                [last, f"{_PREFIX}c_start", f"{_PREFIX}c_end", f"{_PREFIX}c_axis", f"{_PREFIX}c_step"],
                [f"{_PREFIX}bgr"],
            )
        )
        last = f"{_PREFIX}bgr"
        mean, inv_std = mean[::-1].copy(), inv_std[::-1].copy()
    nodes += [
        helper.make_node("Sub", [last, f"{_PREFIX}mean"], [f"{_PREFIX}centred"]),
        helper.make_node(
            "Mul",
            [f"{_PREFIX}centred", f"{_PREFIX}inv_std"],
            [input_name if spec.input_layout == "NHWC" else f"{_PREFIX}nhwc"],
        ),
    ]
    if spec.input_layout == "NCHW":
        nodes.append(helper.make_node("Transpose", [f"{_PREFIX}nhwc"], [input_name], perm=[0, 3, 1, 2]))
    initializers = [
        numpy_helper.from_array(mean, f"{_PREFIX}mean"),
        numpy_helper.from_array(inv_std, f"{_PREFIX}inv_std"),
    ]
    if spec.color == "BGR":
        initializers += [
            numpy_helper.from_array(np.array([-1], np.int64), f"{_PREFIX}c_start"),
            numpy_helper.from_array(np.array([np.iinfo(np.int64).min], np.int64), f"{_PREFIX}c_end"),
            numpy_helper.from_array(np.array([3], np.int64), f"{_PREFIX}c_axis"),
            numpy_helper.from_array(np.array([-1], np.int64), f"{_PREFIX}c_step"),
        ]
    shape_out = ["batch", *spec.tensor_shape]
    graph = helper.make_graph(
        nodes,
        "cvserve_head",
        [helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, ["batch", h, w, 3])],
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape_out)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def _tail(output_name: str, num_classes: int, top_k: int, softmax: bool, opset: int, ir_version: int):
    from onnx import TensorProto, helper, numpy_helper

    probs = f"{_PREFIX}probabilities" if softmax else output_name
    nodes = [helper.make_node("Softmax", [output_name], [probs], axis=1)] if softmax else []
    nodes.append(
        helper.make_node("TopK", [probs, f"{_PREFIX}k"], [SCORE, CLASS_INDEX], axis=1, largest=1, sorted=1)
    )
    graph = helper.make_graph(
        nodes,
        "cvserve_tail",
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", num_classes])],
        [
            helper.make_tensor_value_info(CLASS_INDEX, TensorProto.INT64, ["batch", top_k]),
            helper.make_tensor_value_info(SCORE, TensorProto.FLOAT, ["batch", top_k]),
        ],
        [numpy_helper.from_array(np.array([top_k], np.int64), f"{_PREFIX}k")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def projection(width: int, dims: int) -> np.ndarray:
    """The fixed random projection of ``width`` pooled features onto ``dims`` (Gaussian, unit variance
    per output for unit-variance inputs)."""
    rng = np.random.default_rng(FEATURE_SEED)
    return (rng.standard_normal((width, dims)) / np.sqrt(width)).astype(np.float32)


def _pooled_features(graph) -> tuple[str, int] | None:
    """(name, width) of the input of the final Gemm/MatMul (through a bias Add), or ``None``."""
    producers = {o: n for n in graph.node for o in n.output}
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    node = producers.get(graph.output[0].name)
    if node is not None and node.op_type == "Add":  # MatMul + Add, as some exporters write a Linear
        node = next((producers[i] for i in node.input if i in producers), None)
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        return None
    weight = node.input[1]
    while weight not in shapes and weight in producers:  # a quantized weight: DequantizeLinear, Transpose
        weight = producers[weight].input[0]
    if weight not in shapes or len(shapes[weight]) != 2:
        return None
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    return node.input[0], int(shapes[weight][1 if trans_b else 0])


def _add_features(net, dims: int) -> int:
    """Add the FEATURES output to the network graph; its width, or 0 where the graph has no pooled features."""
    from onnx import TensorProto, helper, numpy_helper

    found = _pooled_features(net.graph)
    if found is None:
        return 0
    name, width = found
    net.graph.initializer.append(numpy_helper.from_array(projection(width, dims), f"{_PREFIX}projection"))
    net.graph.node.append(helper.make_node("MatMul", [name, f"{_PREFIX}projection"], [FEATURES]))
    net.graph.output.append(helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["batch", dims]))
    return dims


def _identity_tail(output_name: str, shape: list, opset: int, ir_version: int):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [output_name], [RAW])],
        "cvserve_tail",
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(RAW, TensorProto.FLOAT, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def _load_single_io(network: Path, what: str):
    onnx = require("onnx", purpose="to build models")
    net = onnx.load(str(network))
    if len(net.graph.input) != 1 or len(net.graph.output) != 1:
        raise BuildError(
            f"a {what} network has one input and one output, {network.name} has "
            f"{len(net.graph.input)} and {len(net.graph.output)}"
        )
    return net


def _compose(net, head, tail, out: Path, network: Path, opset: int, features: int = 0) -> int:
    """head -> network -> tail (and ``features`` wide FEATURES), checked and saved to ``out``; returns
    the FEATURES width (0: none)."""
    onnx = require("onnx", purpose="to build models")
    from onnx import compose

    input_name, output_name = net.graph.input[0].name, net.graph.output[0].name
    if _opset(net) < opset:
        net = onnx.version_converter.convert_version(net, opset)
    feature_dims = _add_features(net, features) if features else 0
    try:
        served = compose.merge_models(head, net, io_map=[(input_name, input_name)])
        served = compose.merge_models(served, tail, io_map=[(output_name, output_name)])
        served.graph.name = "cvserve_served"
        onnx.checker.check_model(served)
    except Exception as exc:
        raise BuildError(f"could not wrap {network.name} for serving: {type(exc).__name__}: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(served, str(out))
    return feature_dims


def wrap(
    network: Path,
    out: Path,
    spec: PreprocessSpec,
    *,
    top_k: int,
    softmax: bool = True,
    features: int = DEFAULT_FEATURE_DIMS,
) -> ServedGraph:
    """Write the served graph of ``network`` to ``out``: PIXELS -> network -> CLASS_INDEX, SCORE (, FEATURES).

    ``softmax=False`` for a network whose output already is probabilities. ``top_k`` is capped at the
    number of classes. ``features`` is the width of the FEATURES output (0: none); a network whose
    output is not a Gemm/MatMul of pooled features gets none either (``ServedGraph.feature_dims``).
    """
    net = _load_single_io(network, "classifier")
    input_name, output_name = net.graph.input[0].name, net.graph.output[0].name
    dims = net.graph.output[0].type.tensor_type.shape.dim
    num_classes = dims[1].dim_value if len(dims) == 2 else 0
    if not num_classes:
        raise BuildError(f"the network's output must be [batch, classes], {network.name} has another shape")
    k = min(top_k, num_classes)
    opset = max(_opset(net), 13)  # Softmax over one axis and TopK with k as an input
    head = _head(spec, input_name, opset, net.ir_version)
    tail = _tail(output_name, num_classes, k, softmax, opset, net.ir_version)
    feature_dims = _compose(net, head, tail, out, network, opset, features)
    h, w = spec.input_size
    return ServedGraph(
        path=out, pixels_shape=(h, w, 3), top_k=k, num_classes=num_classes, feature_dims=feature_dims
    )


def wrap_raw(network: Path, out: Path, spec: PreprocessSpec) -> tuple[Path, tuple[int, ...]]:
    """Write ``network`` with only the pixel head to ``out``: PIXELS -> network -> ``RAW`` (its output
    as it is, e.g. a detector's raw head, which the served python model decodes). Returns the file and
    the output's shape without the batch dimension."""
    net = _load_single_io(network, "detector")
    input_name, output_name = net.graph.input[0].name, net.graph.output[0].name
    dims = [d.dim_value or d.dim_param or "?" for d in net.graph.output[0].type.tensor_type.shape.dim]
    if len(dims) < 2 or not all(isinstance(d, int) for d in dims[1:]):
        raise BuildError(
            f"the network's output must have a fixed shape but the batch, {network.name} has {dims}"
        )
    opset = max(_opset(net), 13)
    head = _head(spec, input_name, opset, net.ir_version)
    _compose(
        net,
        head,
        _identity_tail(output_name, ["batch", *dims[1:]], opset, net.ir_version),
        out,
        network,
        opset,
    )
    return out, tuple(dims[1:])
