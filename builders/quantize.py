"""The quantization stage: FP32 core ONNX -> INT8 (or FP16, or BF16) network that passed the accuracy gate.

The pipeline calls :func:`run` with the build's :class:`QuantizeSettings` (``cvserve build``'s
quantization flags, the accuracy gate's included) and a :class:`Context` (the precision, serving plan,
preprocessing and engine profile decided before any stage ran) after the FP32 ONNX is verified against
PyTorch, and wraps the in-graph pre/post-processing around the returned network afterwards. This
stage builds no TensorRT engine: for the GPU target it returns the symmetric Q/DQ ONNX (INT8) or the
FP32 ONNX (FP16, TensorRT's own conversion), and the pipeline hands it to ``onnx2trt``.

INT8: the chosen quantizer (:mod:`cvserve.builders.quantizers`) calibrates on the calibration images;
the result is run in the runtime that will serve it and gated against FP32 on disjoint held-out images
(:mod:`cvserve.builders.accuracy`). If the gate fails, layers are kept in float one at a time, in order
of how much restoring each one's float weights alone helps, up to ``max_fallback_layers`` (10 % of the quantized
layers by default); the first set that passes is the smallest prefix of that ranking that does. If none
does, :class:`~cvserve.errors.BuildError` names the metric, its value, the threshold and the number of
images, and the repository is left untouched.

Every network is measured in the float precision it will be served in (``float_parts``,
:mod:`cvserve.builders.precision`), the FP32 reference always in f32. BF16 is the FP32 network computed
in bf16 by OpenVINO: gated by the same rules, with no per-layer fallback, because OpenVINO's CPU
plugin applies bf16 to every float layer; an INT8 network with bf16 float parts falls back to bf16.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvserve import hardware
from cvserve._extras import require
from cvserve.builders import accuracy, quantizers
from cvserve.builders import calibration as cal
from cvserve.builders.precision import PRECISIONS, NetworkPrecision
from cvserve.builders.preprocessing import PreprocessSpec
from cvserve.builders.profile import EngineProfile
from cvserve.builders.runners import FLOAT_PRECISIONS, open_runner, run_batched
from cvserve.builders.runtime import ServingPlan
from cvserve.errors import BuildError
from cvserve.settings import check, setting

DEFAULT_HELD_OUT = 300  # augmented sample photos without --validation: ~130 confident for MobileNetV2
MAX_FALLBACK_FRACTION = 0.10  # of the quantized layers that the fallback may keep in float
SENSITIVITY_IMAGES = 32  # calibration images used to rank the layers (never the held-out ones)
THROUGHPUT_ROUNDS, THROUGHPUT_SECONDS = 3, 1.0  # alternating FP32 / candidate runs in a build

Log = Callable[[str], None]


@dataclass(kw_only=True)
class QuantizeSettings:
    """What ``--precision``, ``--quantizer`` and the gate's flags ask of the stage: ``cvserve build``'s
    quantization flags are derived from these fields (:mod:`cvserve.settings`). What the stage works
    towards, decided before it runs, comes in a :class:`Context`."""

    precision: str = setting(
        "fp32",
        choices=PRECISIONS,
        help="the served network's precision (bf16: OpenVINO on a CPU with AVX512-BF16 or AMX; "
        "docs/hardware.md)",
    )
    float_parts: str | None = setting(
        None,
        choices=FLOAT_PRECISIONS,
        help="what the runtime computes float layers in; int8 may take bf16 (gated like the rest)",
        default_help="bf16 for --precision bf16, else f32",
    )
    quantizer: str = setting(
        quantizers.AUTO,
        choices=(quantizers.AUTO, *quantizers.QUANTIZERS),
        help="the post-training quantization method (auto: nncf for OpenVINO, ort-minmax for ONNX "
        "Runtime and TensorRT; docs/quantization.md)",
    )
    calibration: Path | None = setting(
        None, metavar="DIR", help="folder of calibration images", default_help="augmented sample photos"
    )
    calibration_samples: int = setting(200, at_least=1, help="calibration images used")
    validation: Path | None = setting(
        None, metavar="DIR", help="folder of held-out images for the accuracy gate",
        default_help="augmented sample photos",
    )  # fmt: skip
    validation_labels: Path | None = setting(
        None, help="ground truth for --validation: the gate is then on top-1 accuracy"
    )  # IMAGE<sep>LABEL lines (accuracy.read_labels)
    gate: accuracy.GateSettings = setting(default_factory=accuracy.GateSettings)
    max_fallback_layers: int | None = setting(
        None,
        at_least=0,
        help="layers the fallback may keep in float",
        default_help=f"{100 * MAX_FALLBACK_FRACTION:g}%% of the quantized layers",
    )

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True, kw_only=True)
class Context:
    """What the stage works towards, decided by the pipeline before any stage runs (not settings)."""

    numerics: NetworkPrecision  # the precision and what the runtime computes float layers in
    plan: ServingPlan  # what serves the network: OpenVINO / ONNX Runtime (cpu), TensorRT / ONNX Runtime (gpu)
    preprocess: PreprocessSpec  # the served preprocessing: calibration and held-out images go through it
    profile: EngineProfile  # throughput is measured at profile.opt_batch
    # The task's accuracy metric (cvserve.builders.tasks): top-1 for classifiers, mAP for detectors.
    metric: object = field(default_factory=accuracy.TopOne)
    class_names: tuple[str, ...] | None = None  # lets --validation-labels name classes
    progress: bool = True

    @property
    def precision(self) -> str:
        return self.numerics.precision

    @property
    def float_parts(self) -> str:
        return self.numerics.float_parts

    @property
    def measuring_runtime(self) -> str:
        """What the gate runs the network in: the serving runtime; for GPU targets Q/DQ simulated in float."""
        return self.plan.runtime if self.plan.target == "cpu" else SIMULATED


@dataclass(frozen=True, kw_only=True)
class QuantizeResult:
    """The core network to serve and the build report's entries (build_report.json schema 2)."""

    network: Path  # float NCHW input -> logits ONNX: Q/DQ INT8, FP16, or the FP32 one
    precision: str
    quantization: dict | None  # null for FP32
    accuracy: dict | None  # null for FP32; the metrics (accuracy.AccuracyResult), "gate", "measured_with"
    throughput: dict | None  # null for FP32 and GPU targets (measured on the GPU node)


@dataclass(frozen=True, kw_only=True)
class HeldOut:
    calibration: np.ndarray  # preprocessed calibration images
    validation: np.ndarray  # preprocessed held-out images
    labels: object | None  # the ground truth in the task metric's form (None: the unlabelled rule)
    report: dict  # where the images came from


# -- running networks -----------------------------------------------------------------------------------
SIMULATED = "onnxruntime-simulated"  # Q/DQ computed in float: how the gate stands in for TensorRT


class _Simulated:
    """ONNX Runtime with graph optimisations off: each DequantizeLinear -> float op -> QuantizeLinear runs
    as written, in float, with no integer kernel (whose int16 sums saturate on CPUs without VNNI, which
    TensorRT's INT8 kernels never do)."""

    def __init__(self, model: Path) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self._session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.input_name = self._session.get_inputs()[0].name
        self.output_names = tuple(o.name for o in self._session.get_outputs())

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self._session.run(None, {self.input_name: batch}), strict=True))


def outputs(
    model: Path, tensors: np.ndarray, runtime: str, batch_size: int = 8, precision: str = "f32"
) -> np.ndarray:
    """The first output (logits) of ``model`` on ``tensors`` in ``runtime`` (cvserve.builders.runners, or
    :data:`SIMULATED`), its float layers in ``precision``."""
    runner = _Simulated(model) if runtime == SIMULATED else open_runner(model, runtime, precision=precision)
    return run_batched(runner, tensors, batch_size)[runner.output_names[0]].astype(np.float32)


def _images_per_s(runner, batch: np.ndarray, seconds: float) -> float:
    """Images/s of ``runner`` on ``batch``, run back to back for ``seconds`` (at least 3 runs) after a warm-up."""
    runner.run(batch)  # warm-up
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or runs < 3:
        runner.run(batch)
        runs += 1
    return runs * len(batch) / elapsed


def compare_throughput(
    fp32: Path,
    candidate: Path,
    batch: np.ndarray,
    runtime: str,
    *,
    precision: str = "f32",
    rounds: int = THROUGHPUT_ROUNDS,
    seconds: float = THROUGHPUT_SECONDS,
) -> dict:
    """Images/s of FP32 (in f32) and the candidate (float layers in ``precision``) at ``len(batch)``,
    alternated ``rounds`` times; medians."""
    runners = {
        "fp32": open_runner(fp32, runtime),
        "candidate": open_runner(candidate, runtime, precision=precision),
    }
    runs: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for key, runner in runners.items():
            runs[key].append(_images_per_s(runner, batch, seconds))
    ref, got = float(np.median(runs["fp32"])), float(np.median(runs["candidate"]))
    # Each round's pair ran back to back: the median of the per-round ratios resists a shared machine's
    # load changes better than the ratio of the medians.
    ratios = [c / f for f, c in zip(runs["fp32"], runs["candidate"], strict=True)]
    return {
        "batch": len(batch),
        "runtime": runtime,
        "float_parts": precision,
        "img_s": round(got, 1),
        "reference_fp32_img_s": round(ref, 1),
        "speedup": round(got / ref, 3),
        "speedup_median_of_rounds": round(float(np.median(ratios)), 3),
        "runs": {
            "fp32": [round(x, 1) for x in runs["fp32"]],
            "candidate": [round(x, 1) for x in runs["candidate"]],
        },
        "cpu": hardware.summary(),
    }


# -- data -----------------------------------------------------------------------------------------------
def load_data(settings: QuantizeSettings, context: Context, log: Log) -> HeldOut:
    """Calibration and held-out sets through the served preprocessing; checks they do not overlap."""
    samples = None
    if settings.calibration is None or settings.validation is None:
        samples = cal.sample_sets(settings.calibration_samples, DEFAULT_HELD_OUT)
        missing = [
            w
            for w, given in (("calibration", settings.calibration), ("validation", settings.validation))
            if not given
        ]
        found, known = cal.source_photos(), cal.SOURCE_PHOTOS
        pip_name = {"skimage": "scikit-image", "sklearn": "scikit-learn"}
        absent = sorted({pip_name.get(pkg, pkg) for pkg, file in known if Path(file).stem not in found})
        log(
            f"[quantize] no --{'/--'.join(missing)} folder: using augmented sample photos "
            f"({len(found)} of {len(known)} bundled photos"
            + (
                f"; pip install {' '.join(absent)} for the rest: the held-out set, and so the gate, differ"
                if absent
                else ""
            )
            + ")"
        )
    calib = (
        cal.load_folder(settings.calibration, settings.calibration_samples)
        if settings.calibration
        else samples[0]
    )
    valid = cal.load_folder(settings.validation) if settings.validation else samples[1]
    spec = context.preprocess
    cal.check_disjoint(calib, valid, spec)
    names = list(context.class_names) if context.class_names else None
    labels = context.metric.truth(settings.validation_labels, valid, names, spec)

    def source(folder: Path | None) -> str:
        return str(folder) if folder else "augmented sample photos (cvserve.builders.calibration)"

    return HeldOut(
        calibration=calib.tensors(spec),
        validation=valid.tensors(spec),
        labels=labels,
        report={
            "calibration": {"images": len(calib), "source": source(settings.calibration)},
            "validation": {
                "images": len(valid),
                "source": source(settings.validation),
                "labels": labels is not None,
            },
        },
    )


# -- INT8 -----------------------------------------------------------------------------------------------
def fallback_limit(n_layers: int, settings: QuantizeSettings) -> int:
    """How many layers the fallback may keep in float: never all of them."""
    most = settings.max_fallback_layers
    if most is None:
        most = math.floor(MAX_FALLBACK_FRACTION * n_layers)
    return max(0, min(most, n_layers - 1))


def rank_layers(
    q: quantizers.Quantizer,
    full: Path,
    layers: Sequence[str],
    tensors: np.ndarray,
    runtime: str,
    workdir: Path,
    precision: str = "f32",
) -> dict[str, float]:
    """Layer -> how much restoring its float weights alone reduces the logits' error (MSE / FP32 variance).

    Measured on the all-INT8 network by graph surgery (:func:`quantizers.float_weights`), so it works
    for every quantizer and costs one inference pass per layer on a few calibration images.
    """
    ref = outputs(q.float_model, tensors, runtime)
    scale = float(ref.var()) or 1.0

    def error(model: Path) -> float:
        return float(np.mean((outputs(model, tensors, runtime, precision=precision) - ref) ** 2) / scale)

    base = error(full)
    one = workdir / "one_layer_float.onnx"
    return {
        layer: base - error(quantizers.float_weights(full, q.float_model, [layer], one)) for layer in layers
    }


def int8(
    fp32: Path,
    settings: QuantizeSettings,
    context: Context,
    data: HeldOut,
    reference: np.ndarray,
    workdir: Path,
    log: Log,
) -> tuple[Path, dict, accuracy.AccuracyResult, accuracy.GateResult]:
    """Quantize, gate, fall back; returns (network, quantization entry, metrics, verdict) or raises."""
    plan, runtime, parts = context.plan, context.measuring_runtime, context.float_parts
    name = quantizers.resolve(settings.quantizer, target=plan.target, runtime=plan.runtime)
    t0 = time.perf_counter()
    q = quantizers.make(
        name,
        fp32,
        data.calibration,
        target=plan.target,
        runtime=plan.runtime,
        workdir=workdir,
        progress=context.progress,
        log=log,
    )
    out = q.quantize(workdir / "model.int8.onnx")
    log(
        f"[quantize] {name}: calibrated on {len(data.calibration)} images in {time.perf_counter() - t0:.1f} s"
    )

    def measure(model: Path) -> tuple[accuracy.AccuracyResult, accuracy.GateResult]:
        return _measure(model, settings, context, data, reference)

    result, verdict = measure(out)
    log(
        f"[quantize] all layers INT8 ({runtime}, float layers {parts}): {result.summary()}: "
        f"{verdict.decision}"
    )
    layers = quantizers.quantized_layers(out)
    limit = fallback_limit(len(layers), settings)
    steps = [_step([], result, verdict)]
    excluded: list[str] = []
    ranking: dict[str, float] = {}
    if verdict.decision == "failed" and limit:
        log(f"[quantize] {verdict.message()}; ranking {len(layers)} layers (up to {limit} may stay in float)")
        ranking = rank_layers(q, out, layers, data.calibration[:SENSITIVITY_IMAGES], runtime, workdir, parts)
        order = sorted(layers, key=lambda n: -ranking[n])
        for k in range(1, limit + 1):
            excluded = order[:k]
            result, verdict = measure(q.quantize(out, exclude=excluded))
            steps.append(_step(excluded, result, verdict))
            log(f"[quantize] {k} layer(s) in float: {result.summary()}: {verdict.decision}")
            if verdict.passed:
                break
    if not verdict.passed:
        kept = f" with {len(excluded)} layer(s) kept in float (the limit)" if excluded else ""
        raise BuildError(f"{verdict.message()}{kept}; nothing was written to the repository")
    entry = {
        **q.describe(),
        **data.report,
        "quantized_layers": len(layers),
        "excluded_layers": excluded,
        "max_fallback_layers": limit,
        "fallback": {"ranking": {n: round(ranking[n], 6) for n in sorted(ranking, key=lambda n: -ranking[n])},
                     "steps": steps} if ranking else None,
    }  # fmt: skip
    return out, entry, result, verdict


def _measure(
    model: Path, settings: QuantizeSettings, context: Context, data: HeldOut, reference: np.ndarray
) -> tuple[accuracy.AccuracyResult, accuracy.GateResult]:
    """``model`` on the held-out images as it will be served, against FP32, and the gate's verdict."""
    got = outputs(
        model, data.validation, context.measuring_runtime, context.profile.opt_batch, context.float_parts
    )
    result = context.metric.compare(reference, got, data.labels, settings.gate)
    return result, context.metric.gate(result, settings.gate)


def _step(excluded: list[str], result, verdict: accuracy.GateResult) -> dict:
    return {"excluded": len(excluded), "decision": verdict.decision, **result.step_entry()}


# -- FP16 -----------------------------------------------------------------------------------------------
def fp16(fp32: Path, out: Path) -> Path:
    """Float16 weights and compute, float32 inputs/outputs (ONNX Runtime's maintained converter)."""
    onnx = require("onnx")
    f16 = require("onnxruntime.transformers.float16", purpose="to convert models to FP16")
    onnx.save(f16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(out))
    return out


def _whole_network(context: Context, fp32: Path, workdir: Path, log: Log) -> tuple[Path, dict]:
    """FP16 or BF16: every float layer converted, no per-layer fallback; (network, quantization entry)."""
    if context.precision == "bf16":  # the FP32 network, computed in bf16 by OpenVINO (runners)
        ov = require("openvino")
        return fp32, {
            "method": "bf16",
            "library": f"openvino {ov.__version__} (INFERENCE_PRECISION_HINT bf16)",
            "fallback": None,
            "note": "no per-layer fallback: OpenVINO's CPU plugin computes every float layer in bf16",
        }
    if context.plan.target == "cpu":
        log("[quantize] warning: FP16 brings no speed-up on x86 CPUs; it is built because it was asked for")
    network = fp16(fp32, workdir / "model.fp16.onnx")
    return network, {"method": "fp16", "library": "onnxruntime float16 converter"}


# -- the stage --------------------------------------------------------------------------------------------
def run(
    settings: QuantizeSettings, context: Context, fp32_onnx: Path, workdir: Path, log: Log = print
) -> QuantizeResult:
    """Turn the verified FP32 core ONNX into what ``context.numerics`` on ``context.plan`` serves.

    Raises:
        BuildError: the accuracy gate failed or refused (the message is one line).
        UserInputError: bad settings or data (overlapping sets, unknown labels, ...).
    """
    fp32_onnx, workdir = Path(fp32_onnx), Path(workdir)
    precision, target = context.precision, context.plan.target
    if precision == "fp32":
        return QuantizeResult(
            network=fp32_onnx, precision="fp32", quantization=None, accuracy=None, throughput=None
        )
    if precision == "int8":  # an unknown quantizer, or one the target cannot serve, fails before any work
        quantizers.resolve(settings.quantizer, target=target, runtime=context.plan.runtime)
    data = load_data(settings, context, log)
    runtime = context.measuring_runtime
    log(
        f"[quantize] {len(data.calibration)} calibration and {len(data.validation)} held-out images, "
        f"disjoint; measured in {runtime}"
    )
    reference = outputs(fp32_onnx, data.validation, runtime, context.profile.opt_batch)
    if precision == "int8":
        network, entry, result, verdict = int8(fp32_onnx, settings, context, data, reference, workdir, log)
    else:
        network, entry = _whole_network(context, fp32_onnx, workdir, log)
        result, verdict = _measure(network, settings, context, data, reference)
        log(f"[quantize] {precision.upper()} ({runtime}): {result.summary()}: {verdict.decision}")
        if not verdict.passed:
            raise BuildError(f"{verdict.message()}; nothing was written to the repository")
        entry = {**entry, **data.report, "excluded_layers": []}
        if target == "gpu":  # TensorRT converts the FP32 ONNX itself (its FP16 builder flag)
            network = fp32_onnx
    measured = {**result.as_dict(), "gate": verdict.as_dict(), "measured_with": runtime}
    if target == "gpu":
        measured["measured_with"] = f"{SIMULATED} (Q/DQ in float on the CPU; TensorRT rounds differently)"
        return QuantizeResult(
            network=network,
            precision=precision,
            quantization=entry,
            accuracy=measured,
            throughput=None,
        )
    batch = np.ascontiguousarray(
        np.resize(data.validation, (context.profile.opt_batch, *data.validation.shape[1:]))
    )
    speed = compare_throughput(fp32_onnx, network, batch, runtime, precision=context.float_parts)
    log(
        f"[quantize] {runtime} at batch {speed['batch']}: {speed['img_s']:.0f} img/s vs FP32 "
        f"{speed['reference_fp32_img_s']:.0f} img/s ({speed['speedup']:.2f}x, medians of {THROUGHPUT_ROUNDS})"
    )
    return QuantizeResult(
        network=network, precision=precision, quantization=entry, accuracy=measured, throughput=speed
    )
