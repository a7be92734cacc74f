"""Quantized builds: calibrate, quantize, gate on task accuracy, fall back to mixed precision.

Called by :func:`cvserve.builders.pipeline.build` after the FP32 ONNX is verified against PyTorch.

* CPU target, INT8: ONNX QDQ with asymmetric uint8 activations and per-channel symmetric int8
  weights, the format ONNX Runtime fuses into VNNI integer kernels on x86.
* GPU target: symmetric int8 QDQ (zero point 0, as TensorRT requires, bias left in float), then a
  TensorRT engine (:mod:`cvserve.builders.onnx2trt`). FP16 and FP32 go to the engine directly.
* FP16 on CPU: the ONNX converted to float16 with float32 I/O; ONNX Runtime gains nothing from it on CPU.

The candidate is compared with the FP32 network on held-out images (:mod:`cvserve.builders.accuracy`).
If the gate fails, the layers whose quantization hurts most are kept in FP32 one step at a time
(per-layer sensitivity), until the gate passes or :data:`MAX_EXCLUDED_FRACTION` is reached; then the
build fails with :class:`~cvserve.errors.BuildError` and the repository stays untouched.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvserve._extras import require
from cvserve.builders import accuracy
from cvserve.builders import calibration as cal
from cvserve.builders.verify import ort_session
from cvserve.errors import BuildError, UserInputError

DEFAULT_HELD_OUT = 200  # augmented sample photos when no --validation folder is given
SENSITIVITY_IMAGES = 32  # calibration images used to rank the layers
MAX_EXCLUDED_FRACTION = 0.25  # of the quantized layers; CVSERVE_MAX_EXCLUDED_LAYERS overrides
CALIBRATION_CHUNK = 32  # images per calibrator pass: bounds the memory the histogram methods hold
THROUGHPUT_SECONDS = 3.0


@dataclass(kw_only=True)
class QuantizationResult:
    network_file: Path  # the ONNX to serve, or a TensorRT model.plan
    report: dict


@dataclass(kw_only=True)
class HeldOut:
    calibration: cal.ImageSet
    validation: cal.ImageSet
    cal_tensors: np.ndarray
    val_tensors: np.ndarray
    labels: np.ndarray | None
    source: str


# -- running ONNX Runtime -----------------------------------------------------------------------------
def logits(model: Path, batch: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Outputs of ``model`` on ``batch``, run ``batch_size`` images at a time on the CPU."""
    session = ort_session(model)
    name = session.get_inputs()[0].name
    parts = [
        session.run(None, {name: batch[i : i + batch_size]})[0] for i in range(0, len(batch), batch_size)
    ]
    return np.concatenate(parts).astype(np.float32)


def throughput(
    model: Path, batch: np.ndarray, *, seconds: float = THROUGHPUT_SECONDS, progress=None
) -> float:
    """Images per second of ``model`` at ``len(batch)`` images per call (after 3 warm-up calls)."""
    session = ort_session(model)
    feed = {session.get_inputs()[0].name: batch}
    for _ in range(3):
        session.run(None, feed)
    runs, shown, start = 0, 0.0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or runs < 5:
        session.run(None, feed)
        runs += 1
        if progress is not None:
            progress.update(min(elapsed, seconds) - shown)
            shown = min(elapsed, seconds)
    return runs * len(batch) / (time.perf_counter() - start)


def _bar(settings, total, desc: str, unit: str = "it"):
    tqdm = require("tqdm").tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=not settings.progress, leave=False)


# -- data --------------------------------------------------------------------------------------------
def load_data(settings, class_names: list[str] | None, log: Callable[[str], None]) -> HeldOut:
    """Calibration and held-out sets through the served preprocessing; checks they do not overlap."""
    n_cal = settings.calibration_samples
    if n_cal < 1:
        raise BuildError(f"--calibration-samples must be at least 1, got {n_cal}")
    samples = None
    if settings.calibration is None or settings.validation is None:
        samples = cal.sample_sets(n_cal, DEFAULT_HELD_OUT)
    calib = cal.load_folder(settings.calibration, n_cal) if settings.calibration else samples[0]
    valid = cal.load_folder(settings.validation) if settings.validation else samples[1]
    source = (
        "folders"
        if samples is None
        else "bundled sample photos (augmented) for "
        + ", ".join(
            w
            for w, given in (("calibration", settings.calibration), ("validation", settings.validation))
            if not given
        )
    )
    if samples is not None:
        log(f"[quantize] no --calibration/--validation folder: using {source}")
    cal.check_disjoint(calib, valid, settings.preprocess)
    labels = None
    if settings.validation_labels is not None:
        labels = accuracy.read_labels(settings.validation_labels, list(valid.names), class_names)
    spec = settings.preprocess
    return HeldOut(
        calibration=calib,
        validation=valid,
        cal_tensors=calib.tensors(spec),
        val_tensors=valid.tensors(spec),
        labels=labels,
        source=source,
    )


# -- INT8 ---------------------------------------------------------------------------------------------
def prepare(onnx_fp32: Path, out: Path, log: Callable[[str], None]) -> Path:
    """ONNX Runtime's pre-quantization pass (shape inference + graph optimisation)."""
    q = require("onnxruntime.quantization", purpose="to quantize models")
    try:
        q.quant_pre_process(str(onnx_fp32), str(out))
    except Exception as exc:  # an optimisation that fails is not fatal: quantize the model as exported
        log(f"[quantize] pre-processing skipped ({type(exc).__name__}: {exc})")
        shutil.copy2(onnx_fp32, out)
    return out


def _method(name: str):
    q = require("onnxruntime.quantization")
    return {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }[name]


def calibrate(
    model: Path, tensors: np.ndarray, *, method: str, symmetric: bool, workdir: Path, settings
) -> Path:
    """Collect activation ranges over ``tensors``; returns ONNX Runtime's calibration cache (JSON)."""
    q = require("onnxruntime.quantization", purpose="to quantize models")
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(
        model,
        None,
        augmented_model_path=str(workdir / "augmented.onnx"),
        calibrate_method=_method(method),
        extra_options={"symmetric": symmetric},
    )
    reader = cal.BatchReader(tensors, _input_name(model))
    with _bar(settings, len(tensors), f"calibrating ({method})", "img") as bar:
        for start in range(0, len(tensors), CALIBRATION_CHUNK):
            reader.set_range(start, start + CALIBRATION_CHUNK)
            calibrator.collect_data(reader)
            bar.update(min(CALIBRATION_CHUNK, len(tensors) - start))
    cache = workdir / f"calibration_{method}.json"
    q.save_tensors_data(calibrator.compute_data(), cache)
    return cache


def quantize(model: Path, cache: Path, out: Path, *, target: str, method: str, **nodes) -> Path:
    """QDQ-quantize ``model`` with the cached ranges; ``nodes``: nodes_to_exclude / nodes_to_quantize."""
    q = require("onnxruntime.quantization", purpose="to quantize models")
    if target == "gpu":  # TensorRT: symmetric int8 activations (zero point 0), float bias
        act, extra = (
            q.QuantType.QInt8,
            {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
    else:  # ONNX Runtime on x86: uint8 activations run on the VNNI u8s8 kernels
        act, extra = q.QuantType.QUInt8, {"WeightSymmetric": True}
    q.quantize_static(
        str(model),
        str(out),
        None,
        quant_format=q.QuantFormat.QDQ,
        per_channel=True,
        activation_type=act,
        weight_type=q.QuantType.QInt8,
        calibrate_method=_method(method),
        calibration_cache_path=cache,
        extra_options=extra,
        **nodes,
    )
    return out


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


def sensitivity(
    model: Path, cache: Path, layers: list[str], data: HeldOut, settings, workdir: Path
) -> dict[str, float]:
    """Layer -> error of the logits (MSE / variance of the FP32 logits) with only that layer quantized."""
    x = data.cal_tensors[:SENSITIVITY_IMAGES]
    ref = logits(model, x)
    scale = float(ref.var()) or 1.0
    scores: dict[str, float] = {}
    with _bar(settings, len(layers), "layer sensitivity", "layer") as bar:
        for layer in layers:
            one = quantize(
                model,
                cache,
                workdir / "one_layer.onnx",
                target=settings.target,
                method=settings.calibration_method,
                nodes_to_quantize=[layer],
            )
            scores[layer] = float(np.mean((logits(one, x) - ref) ** 2) / scale)
            bar.update(1)
    return scores


def _exclusion_steps(n_layers: int) -> list[int]:
    """Layers kept in FP32 at each fallback step: 1, 2, 3, 4, 6, 9, 14, ... up to the limit.

    Never all of them: an INT8 build with no INT8 layer left would be an FP32 build under another name.
    """
    limit = os.environ.get("CVSERVE_MAX_EXCLUDED_LAYERS", "").strip()
    if limit and not limit.isdigit():
        raise UserInputError(f"CVSERVE_MAX_EXCLUDED_LAYERS must be a whole number of layers, not {limit!r}")
    most = int(limit) if limit else max(1, math.ceil(MAX_EXCLUDED_FRACTION * n_layers))
    most = min(most, n_layers - 1)
    steps, k = [], 1
    while k < most:
        steps.append(k)
        k = k + 1 if k < 4 else math.ceil(k * 1.5)
    return [*steps, most] if most >= 1 else []


def int8(
    onnx_fp32: Path, workdir: Path, settings, data: HeldOut, reference: np.ndarray, log
) -> tuple[Path, dict]:
    """Calibrate, quantize and gate; on a gate failure keep the most sensitive layers in FP32, step by step."""
    t0 = time.perf_counter()
    prepared = prepare(onnx_fp32, workdir / "prepared.onnx", log)
    symmetric = settings.target == "gpu"
    cache = calibrate(
        prepared,
        data.cal_tensors,
        method=settings.calibration_method,
        symmetric=symmetric,
        workdir=workdir,
        settings=settings,
    )
    log(
        f"[quantize] calibrated on {len(data.cal_tensors)} images ({settings.calibration_method}) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    out = workdir / "model.int8.onnx"
    quantize(prepared, cache, out, target=settings.target, method=settings.calibration_method)
    result = accuracy.compare(reference, logits(out, data.val_tensors), data.labels)
    verdict = accuracy.gate(result, settings.max_accuracy_drop)
    log(f"[quantize] all layers INT8: {_summary(result)}")
    fallback: dict = {"steps": [{"excluded": 0, **result.as_dict()}]}
    excluded: list[str] = []
    if not verdict.passed:
        log(f"[quantize] {verdict.message(result)}; ranking layers by sensitivity")
        layers = quantized_layers(out)
        scores = sensitivity(prepared, cache, layers, data, settings, workdir)
        order = sorted(layers, key=lambda n: -scores[n])
        fallback["sensitivity"] = {n: round(scores[n], 6) for n in order}
        for k in _exclusion_steps(len(layers)):
            excluded = order[:k]
            quantize(
                prepared,
                cache,
                out,
                target=settings.target,
                method=settings.calibration_method,
                nodes_to_exclude=excluded,
            )
            result = accuracy.compare(reference, logits(out, data.val_tensors), data.labels)
            verdict = accuracy.gate(result, settings.max_accuracy_drop)
            fallback["steps"].append({"excluded": k, **result.as_dict()})
            log(f"[quantize] {k} layer(s) kept in FP32: {_summary(result)}")
            if verdict.passed:
                break
    if not verdict.passed:
        kept = f" with {len(excluded)} of the most sensitive layers kept in FP32" if excluded else ""
        hints = [
            f"--calibration-method {m}" for m in ("entropy", "percentile") if m != settings.calibration_method
        ]
        hints += ["more --calibration-samples", "CVSERVE_MAX_EXCLUDED_LAYERS", "a larger --max-accuracy-drop"]
        raise BuildError(
            f"{verdict.message(result)}{kept}. Nothing was written to the repository; try " + ", ".join(hints)
        )
    return out, {"accuracy": result.as_dict(), "excluded_layers": excluded, "fallback": fallback}


def _summary(r: accuracy.AccuracyResult) -> str:
    text = f"top-1 agreement {r.top1_agreement:.4f}, top-5 overlap {r.top5_overlap:.4f}"
    if r.top1_accuracy is not None:
        text += f", top-1 accuracy {r.top1_accuracy:.4f} (FP32 {r.top1_accuracy_reference:.4f})"
    return f"{text} on {r.held_out_images} held-out images"


def _input_name(model: Path) -> str:
    onnx = require("onnx")
    return onnx.load(str(model), load_external_data=False).graph.input[0].name


# -- FP16 ---------------------------------------------------------------------------------------------
def fp16(onnx_fp32: Path, out: Path) -> Path:
    """Float16 weights and compute, float32 inputs/outputs (ONNX Runtime's maintained converter)."""
    onnx = require("onnx")
    f16 = require("onnxruntime.transformers.float16", purpose="to convert models to FP16")
    model = f16.convert_float_to_float16(onnx.load(str(onnx_fp32)), keep_io_types=True)
    onnx.save(model, str(out))
    return out


# -- the pipeline's entry point -------------------------------------------------------------------------
def run_quantization(
    *, onnx_fp32: Path, workdir: Path, settings, reference_model=None, log=print
) -> QuantizationResult:
    """Turn the verified FP32 ONNX into what ``settings.precision`` / ``settings.target`` serve.

    Returns the network file (ONNX, or ``model.plan`` for the GPU target) and the report entries
    (calibration, accuracy, excluded_layers, throughput, engine). Raises
    :class:`~cvserve.errors.BuildError` when the accuracy gate fails. ``reference_model`` (the PyTorch
    model) is not needed: the FP32 ONNX, verified against it, is the reference.
    """
    workdir = Path(workdir)
    precision, target = settings.precision, settings.target
    report: dict = {"precision": precision, "target": target}
    network = onnx_fp32
    # GPU target: a TensorRT engine, unless the ONNX is served through the onnxruntime backend's
    # TensorRT accelerator (--runtime onnxruntime), which builds its engine on the GPU node itself.
    engine = target == "gpu" and settings.runtime != "onnxruntime"
    if engine:  # fail before minutes of calibration, not after
        require(
            "tensorrt",
            extra="tensorrt",
            purpose="to build TensorRT engines (--target gpu; --runtime onnxruntime needs none here)",
        )
    if precision == "fp32" and target == "gpu":
        served = _engine(onnx_fp32, workdir, settings, log, report) if engine else onnx_fp32
        return QuantizationResult(network_file=served, report=report)
    data = load_data(settings, _class_names(settings), log)
    log(
        f"[quantize] {len(data.calibration)} calibration and {len(data.validation)} held-out images "
        f"({data.source}), disjoint"
    )
    reference = logits(onnx_fp32, data.val_tensors)
    if precision == "int8":
        report["calibration"] = {
            "method": settings.calibration_method,
            "samples": len(data.calibration),
            "symmetric_activations": target == "gpu",
        }
        network, entries = int8(onnx_fp32, workdir, settings, data, reference, log)
        report.update(entries)
    else:  # fp16
        if target == "cpu":
            log(
                "[quantize] warning: FP16 brings no speed-up on CPUs with ONNX Runtime; it is built "
                "because it was asked for"
            )
        network = fp16(onnx_fp32, workdir / "model.fp16.onnx")
        result = accuracy.compare(reference, logits(network, data.val_tensors), data.labels)
        verdict = accuracy.gate(result, settings.max_accuracy_drop)
        log(f"[quantize] FP16: {_summary(result)}")
        if not verdict.passed:
            raise BuildError(f"{verdict.message(result)}. Nothing was written to the repository")
        report.update(accuracy=result.as_dict(), excluded_layers=[])
    report["accuracy"]["gate"] = {
        "max_accuracy_drop": settings.max_accuracy_drop,
        "allowed": accuracy.allowances(settings.max_accuracy_drop),
        "passed": True,
    }
    if target == "gpu":
        # The gate above ran the Q/DQ (or FP16) ONNX in ONNX Runtime on the CPU: the same quantization
        # parameters TensorRT uses, though its kernels round differently.
        report["accuracy"]["measured_with"] = "onnxruntime-cpu (simulated quantization)"
        # INT8: the symmetric Q/DQ ONNX. FP16: the FP32 ONNX, with TensorRT's FP16 flag / precision mode.
        served = network if precision == "int8" else onnx_fp32
        if engine:
            served = _engine(served, workdir, settings, log, report)
        return QuantizationResult(network_file=served, report=report)
    report["throughput"] = measure_throughput(onnx_fp32, network, data.val_tensors, settings, log)
    return QuantizationResult(network_file=network, report=report)


def measure_throughput(fp32: Path, candidate: Path, tensors: np.ndarray, settings, log) -> dict:
    """ONNX Runtime images/s of the FP32 and the candidate network at the opt batch, on this machine."""
    b = settings.batching
    batch_size = max(b.preferred_batch_sizes) if b.preferred_batch_sizes else min(8, b.max_batch_size)
    batch = np.resize(tensors, (batch_size, *tensors.shape[1:])).astype(np.float32)
    with _bar(settings, 2 * THROUGHPUT_SECONDS, "throughput", "s") as bar:
        ref = throughput(fp32, batch, progress=bar)
        got = throughput(candidate, batch, progress=bar)
    log(
        f"[quantize] ONNX Runtime at batch {batch_size}: {got:.0f} img/s vs FP32 {ref:.0f} img/s "
        f"({got / ref:.2f}x)"
    )
    return {
        "batch": batch_size,
        "img_s": round(got, 1),
        "reference_fp32_img_s": round(ref, 1),
        "speedup": round(got / ref, 3),
        "runtime": "onnxruntime-cpu",
        "cpu": _cpu_name(),
    }


def _engine(onnx_path: Path, workdir: Path, settings, log, report: dict) -> Path:
    from cvserve.builders import onnx2trt

    b = settings.batching
    spec = onnx2trt.engine_spec(
        input_name=_input_name(onnx_path),
        input_shape=settings.preprocess.tensor_shape,
        precision=settings.precision,
        max_batch_size=b.max_batch_size,
        preferred_batch_sizes=b.preferred_batch_sizes,
    )
    outside = [n for n in b.preferred_batch_sizes if not spec.covers(n)]
    if outside:  # cannot happen with Batching's own checks; kept because Triton would fail at load time
        raise BuildError(
            f"preferred batch sizes {outside} fall outside the engine profile {spec.profile_shapes()}"
        )
    plan = workdir / "model.plan"
    report["engine"] = onnx2trt.build_engine(onnx_path, plan, spec, log)
    return plan


def _class_names(settings) -> list[str] | None:
    if settings.labels is None:
        return None
    return [ln.rstrip("\r\n") for ln in Path(settings.labels).read_text(encoding="utf-8").splitlines()]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"
