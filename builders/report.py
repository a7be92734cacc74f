"""build_report.md: the build report (build_report.json) rendered for people."""

from __future__ import annotations


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):  # metrics in [0, 1] with 4 decimals, rates and ratios as they come
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.4g}"
    return str(value)


def _table(rows: list[tuple[str, object]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {_fmt(v)} |" for k, v in rows)]


def render_markdown(report: dict) -> str:
    """Markdown summary of a build report (the dict written as build_report.json)."""
    name, version = report.get("name", "?"), report.get("version", "?")
    lines = [f"# {name} version {version}", ""]
    lines += _table(
        [
            ("precision", report.get("precision")),
            ("target", report.get("target")),
            ("runtime", report.get("runtime")),
            ("checkpoint", report.get("checkpoint")),
            ("network file size (bytes)", report.get("size_bytes")),
            ("network file sha256", f"`{report.get('sha256', '-')}`"),
        ]
    )
    calib = report.get("calibration")
    if calib:
        lines += ["", "## Calibration", ""]
        lines += _table([(k, v) for k, v in calib.items()])
    acc = report.get("accuracy")
    if acc:
        lines += ["", "## Accuracy against FP32 on held-out images", ""]
        gate = acc.get("gate", {})
        lines += _table(
            [
                ("held-out images", acc.get("held_out_images")),
                ("top-1 agreement", acc.get("top1_agreement")),
                ("top-5 overlap", acc.get("top5_overlap")),
                ("top-1 accuracy", acc.get("top1_accuracy")),
                ("top-1 accuracy, FP32", acc.get("top1_accuracy_reference")),
                ("max accuracy drop", gate.get("max_accuracy_drop")),
                ("gate", "passed" if gate.get("passed") else "-"),
                ("measured with", acc.get("measured_with", "onnxruntime-cpu")),
            ]
        )
        bands = acc.get("by_reference_confidence") or []
        if bands:
            lines += [
                "",
                "Top-1 agreement by the FP32 model's own top-1 probability (changes on images it is "
                "unsure about are flips between near-tied classes):",
                "",
                "| FP32 top-1 probability | images | top-1 agreement | top-1 changes |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {b['band']} | {b['images']} | {_fmt(b['top1_agreement'])} | {b['top1_changes']} |"
                for b in bands
            ]
    if "excluded_layers" in report:
        excluded = report["excluded_layers"]
        lines += ["", "## Layers kept in FP32", ""]
        if not excluded:
            lines.append("None: every quantizable layer runs in the reduced precision.")
        else:
            scores = report.get("fallback", {}).get("sensitivity", {})
            lines += [
                "| layer | sensitivity (logit MSE / variance, this layer alone quantized) |",
                "|---|---|",
            ]
            lines += [f"| `{n}` | {_fmt(scores.get(n))} |" for n in excluded]
    steps = report.get("fallback", {}).get("steps", [])
    if len(steps) > 1:
        lines += [
            "",
            "### Mixed-precision fallback",
            "",
            "| layers in FP32 | top-1 agreement | top-5 overlap |",
        ]
        lines += ["|---|---|---|"]
        lines += [
            f"| {s['excluded']} | {_fmt(s['top1_agreement'])} | {_fmt(s['top5_overlap'])} |" for s in steps
        ]
    tp = report.get("throughput")
    if tp:
        lines += ["", "## Throughput (ONNX Runtime on the build machine)", ""]
        lines += _table(
            [
                ("batch", tp.get("batch")),
                ("images/s", tp.get("img_s")),
                ("images/s, FP32", tp.get("reference_fp32_img_s")),
                ("speed-up", tp.get("speedup")),
                ("CPU", tp.get("cpu")),
            ]
        )
    engine = report.get("engine")
    if engine:
        lines += ["", "## TensorRT engine", ""]
        lines += _table([(k, v) for k, v in engine.items()])
    accelerator = report.get("tensorrt_accelerator")
    if accelerator:
        lines += ["", "## TensorRT accelerator of the onnxruntime backend (engine built on the GPU node)", ""]
        lines += _table([(k, v) for k, v in accelerator.items()])
    return "\n".join(lines) + "\n"
