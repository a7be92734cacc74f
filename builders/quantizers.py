"""Post-training INT8 quantizers: each turns the FP32 core ONNX into a Q/DQ ONNX that the runtimes load.

The methods (``--quantizer``), all calibrated on the same preprocessed calibration images:

* ``nncf`` / ``nncf-bc`` / ``nncf-mixed``: Intel NNCF's ONNX backend (``nncf.quantize``): the
  *performance* preset (symmetric activations and weights) with fast bias correction, the same with
  full bias correction (slower to build), or the *mixed* preset (asymmetric activations) with fast
  bias correction. Per-channel int8 weights, quantizers placed where OpenVINO fuses them.
* ``ort-minmax`` / ``ort-entropy`` / ``ort-percentile``: ONNX Runtime's ``quantize_static`` with that
  calibration method; per-channel symmetric int8 weights and asymmetric uint8 activations (U8S8, the
  format ONNX Runtime's x86 integer kernels run), or symmetric int8 activations with float bias for
  the GPU target (zero point 0, as TensorRT requires).

Which one is the default depends on the runtime that serves the network: NNCF's Q/DQ runs fast in
OpenVINO but slowly in ONNX Runtime, ONNX Runtime's U8S8 runs well in both (docs/quantization.md has the
measurements). :func:`default_quantizer` holds that decision.

Every quantizer can keep named layers in float (the mixed-precision fallback): ONNX Runtime through
``nodes_to_exclude`` with the ranges calibrated once, NNCF through its ``ignored_scope``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cvserve._extras import require
from cvserve.builders import calibration as cal
from cvserve.errors import UserInputError

# name -> (preset, fast bias correction); full bias correction takes ~3x longer to build
NNCF_PRESETS = {
    "nncf": ("performance", True),
    "nncf-bc": ("performance", False),
    "nncf-mixed": ("mixed", True),
}
ORT_METHODS = {"ort-minmax": "MinMax", "ort-entropy": "Entropy", "ort-percentile": "Percentile"}
QUANTIZERS = (*NNCF_PRESETS, *ORT_METHODS)
AUTO = "auto"  # the default for the serving runtime, see default_quantizer
CALIBRATION_CHUNK = 32  # images per ONNX Runtime calibrator pass: bounds what the histogram methods hold


def default_quantizer(target: str, runtime: str) -> str:
    """The quantizer a build uses unless told otherwise, for the runtime that will serve the network.

    Measured on MobileNetV2 (docs/benchmarks.md, "Quantization"): NNCF's Q/DQ keeps the most answers
    and is the fastest network in OpenVINO, but runs below FP32 speed in ONNX Runtime, where ONNX
    Runtime's own U8S8 min-max Q/DQ is the fast one. TensorRT needs symmetric int8 Q/DQ.
    """
    if target == "gpu":
        return "ort-minmax"
    return "nncf" if runtime == "openvino" else "ort-minmax"


def resolve(name: str, *, target: str, runtime: str) -> str:
    """``name`` checked (``auto`` replaced by :func:`default_quantizer`)."""
    if name == AUTO:
        return default_quantizer(target, runtime)
    if name not in QUANTIZERS:
        raise UserInputError(f"--quantizer must be one of {', '.join((AUTO, *QUANTIZERS))}, not {name!r}")
    if target == "gpu" and name in NNCF_PRESETS:
        raise UserInputError(
            f"--quantizer {name} places quantizers for the CPU runtimes; --target gpu needs the symmetric "
            f"Q/DQ of {', '.join(ORT_METHODS)}"
        )
    return name


class Quantizer:
    """One PTQ method bound to a float model and calibration data; ``quantize`` may be called again."""

    name: str
    float_model: Path  # the float ONNX whose node names the quantized model keeps

    def quantize(self, out: Path, exclude: Sequence[str] = ()) -> Path:
        """Write the Q/DQ ONNX to ``out``, keeping the nodes named in ``exclude`` in float."""
        raise NotImplementedError

    def describe(self) -> dict:
        """The method's report entry."""
        raise NotImplementedError


def _onnx_input_name(model: Path) -> str:
    onnx = require("onnx")
    return onnx.load(str(model), load_external_data=False).graph.input[0].name


class OrtQuantizer(Quantizer):
    """ONNX Runtime's static Q/DQ quantization; activation ranges calibrated once, then cached."""

    def __init__(
        self,
        name: str,
        fp32: Path,
        tensors: np.ndarray,
        *,
        target: str,
        runtime: str,
        workdir: Path,
        log,
        progress: bool,
    ) -> None:
        self.q = require("onnxruntime.quantization", purpose="to quantize models")
        self.name, self.target, self.method = name, target, ORT_METHODS[name]
        # ONNX Runtime's U8S8 kernels on x86 CPUs without VNNI (AVX2, AVX-512F) add pairs of u8 x s8
        # products in int16, which saturates with full-range weights: top-1 accuracy of the digits CNN
        # fell from 0.921 to 0.908 on an AVX2 machine. 7-bit weights (reduce_range, ONNX Runtime's own
        # advice) cannot saturate; the build cannot know the serving CPU, so every network that ONNX
        # Runtime serves on a CPU gets them. OpenVINO and TensorRT do not need them.
        self.reduce_range = target == "cpu" and runtime == "onnxruntime"
        self.float_model = self._prepare(fp32, workdir / "prepared.onnx", log)
        self.cache = self._calibrate(tensors, workdir, progress)

    def _prepare(self, fp32: Path, out: Path, log) -> Path:
        """ONNX Runtime's pre-quantization pass (shape inference + graph optimisation)."""
        try:
            self.q.quant_pre_process(str(fp32), str(out))
        except Exception as exc:  # an optimisation that fails is not fatal: quantize the model as exported
            log(f"[quantize] pre-processing skipped ({type(exc).__name__}: {exc})")
            out.write_bytes(Path(fp32).read_bytes())
        return out

    def _calibrate(self, tensors: np.ndarray, workdir: Path, progress: bool) -> Path:
        from onnxruntime.quantization.calibrate import create_calibrator

        calibrator = create_calibrator(
            self.float_model,
            None,
            augmented_model_path=str(workdir / "augmented.onnx"),
            calibrate_method=getattr(self.q.CalibrationMethod, self.method),
            extra_options={"symmetric": self.target == "gpu"},
        )
        # Equal batches: the histogram calibrators stack them and fail on a shorter last one.
        batch = math.gcd(len(tensors), 8)
        reader = cal.BatchReader(tensors, _onnx_input_name(self.float_model), batch_size=batch)
        tqdm = require("tqdm").tqdm
        with tqdm(
            total=len(tensors), desc=f"calibrating ({self.name})", disable=not progress, leave=False
        ) as bar:
            for start in range(0, len(tensors), CALIBRATION_CHUNK):
                reader.set_range(start, start + CALIBRATION_CHUNK)
                calibrator.collect_data(reader)
                bar.update(min(CALIBRATION_CHUNK, len(tensors) - start))
        cache = workdir / f"calibration_{self.name}.json"
        self.q.save_tensors_data(calibrator.compute_data(), cache)
        return cache

    def quantize(self, out: Path, exclude: Sequence[str] = ()) -> Path:
        q = self.q
        if self.target == "gpu":  # TensorRT: symmetric int8 activations (zero point 0), float bias
            act = q.QuantType.QInt8
            extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
        else:  # uint8 activations, int8 weights: the U8S8 kernels of ONNX Runtime and OpenVINO on x86
            act, extra = q.QuantType.QUInt8, {"WeightSymmetric": True}
        q.quantize_static(
            str(self.float_model),
            str(out),
            None,
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            reduce_range=self.reduce_range,
            activation_type=act,
            weight_type=q.QuantType.QInt8,
            calibrate_method=getattr(q.CalibrationMethod, self.method),
            calibration_cache_path=self.cache,
            extra_options=extra,
            nodes_to_exclude=list(exclude),
        )
        return out

    def describe(self) -> dict:
        import onnxruntime

        return {
            "method": self.name,
            "library": f"onnxruntime {onnxruntime.__version__}",
            "calibration_method": self.method.lower(),
            "activations": "int8 symmetric" if self.target == "gpu" else "uint8 asymmetric",
            "weights": "int8 symmetric per channel" + (", 7-bit range" if self.reduce_range else ""),
        }


class NncfQuantizer(Quantizer):
    """Intel NNCF's post-training quantization of an ONNX model (statistics + fast bias correction)."""

    def __init__(self, name: str, fp32: Path, tensors: np.ndarray, *, progress: bool) -> None:
        self.nncf = require("nncf", purpose="to quantize with NNCF (--quantizer nncf)")
        self.name, self.progress = name, progress
        self.preset, self.fast_bias_correction = NNCF_PRESETS[name]
        self.float_model, self.tensors = Path(fp32), tensors
        self.input_name = _onnx_input_name(self.float_model)

    def quantize(self, out: Path, exclude: Sequence[str] = ()) -> Path:
        onnx, nncf = require("onnx"), self.nncf
        name = self.input_name
        dataset = nncf.Dataset(
            [self.tensors[i : i + 1] for i in range(len(self.tensors))], lambda x: {name: x}
        )
        preset = getattr(nncf.QuantizationPreset, self.preset.upper())
        scope = nncf.IgnoredScope(names=list(exclude)) if exclude else None
        nncf.set_log_level(logging.ERROR)
        # NNCF draws its progress bars on stdout (rich); a build without progress keeps stdout clean.
        quiet = contextlib.nullcontext() if self.progress else contextlib.redirect_stdout(io.StringIO())
        with quiet:
            model = nncf.quantize(
                onnx.load(str(self.float_model)),
                dataset,
                preset=preset,
                subset_size=len(self.tensors),
                fast_bias_correction=self.fast_bias_correction,
                ignored_scope=scope,
            )
        onnx.save(model, str(out))
        return out

    def describe(self) -> dict:
        return {
            "method": self.name,
            "library": f"nncf {self.nncf.__version__}",
            "preset": self.preset,
            "bias_correction": "fast" if self.fast_bias_correction else "full",
            "activations": "int8/uint8 symmetric" if self.preset == "performance" else "uint8 asymmetric",
            "weights": "int8 symmetric per channel",
        }


def make(
    name: str,
    fp32: Path,
    tensors: np.ndarray,
    *,
    target: str,
    runtime: str,
    workdir: Path,
    progress: bool,
    log: Callable[[str], None],
) -> Quantizer:
    """The quantizer ``name`` (see :data:`QUANTIZERS`), calibrated on ``tensors`` where it caches ranges."""
    if name in NNCF_PRESETS:
        return NncfQuantizer(name, fp32, tensors, progress=progress)
    return OrtQuantizer(
        name, fp32, tensors, target=target, runtime=runtime, workdir=workdir, log=log, progress=progress
    )


# -- Q/DQ graphs --------------------------------------------------------------------------------------
def quantized_layers(qdq_model: Path) -> list[str]:
    """Names of the compute nodes that read a DequantizeLinear output (the layers quantization touches)."""
    onnx = require("onnx")
    graph = onnx.load(str(qdq_model), load_external_data=False).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [
        n.name
        for n in graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and dq_outputs.intersection(n.input)
    ]


def float_weights(qdq_model: Path, float_model: Path, layers: Sequence[str], out: Path) -> Path:
    """The Q/DQ model with the weights and biases of ``layers`` restored to the float model's values.

    Biases too: NNCF's bias correction adjusts them (under the same name) to the rounded weights.

    Works on any quantizer's output: a layer keeps its name, and the float model's node of the same name
    holds the float tensors. Activations stay quantized: ONNX Runtime folds a ReLU into the range of the
    QuantizeLinear after a layer, so reading an activation before its QuantizeLinear would skip the
    ReLU. The DequantizeLinear nodes left without a reader are removed. Used to rank layers cheaply
    (weight rounding is where most of INT8's error comes from, docs/benchmarks.md); the build itself
    re-quantizes with the method's own exclusion, which also keeps the layer's input in float.
    """
    onnx = require("onnx")
    model = onnx.load(str(qdq_model))
    graph = model.graph
    ref = onnx.load(str(float_model)).graph
    ref_nodes = {n.name: n for n in ref.node}
    ref_inits = {t.name: t for t in ref.initializer}
    present = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.name not in layers or node.name not in ref_nodes:
            continue
        float_inputs = ref_nodes[node.name].input
        for i in range(len(node.input)):
            if i >= len(float_inputs) or float_inputs[i] not in ref_inits:
                continue  # an activation
            init = onnx.TensorProto()
            init.CopyFrom(ref_inits[float_inputs[i]])
            init.name = f"{float_inputs[i]}_float"  # ONNX Runtime's DequantizeLinear writes the original name
            if init.name not in present:
                graph.initializer.append(init)
                present.add(init.name)
            node.input[i] = init.name
    _prune(graph)
    onnx.save(model, str(out))
    return out


def _prune(graph) -> None:
    """Remove nodes none of whose outputs is read, then initializers nobody reads."""
    outputs = {o.name for o in graph.output}
    while True:
        read = outputs | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not read.intersection(n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input} | outputs
    for t in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(t)
