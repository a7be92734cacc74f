"""Benchmark of quantized builds; prints the figures kept in docs/benchmarks.md ("Quantization").

    python -m cvserve.builders.bench_quant [--method entropy] [--max-accuracy-drop 0.01] \
        [--max-excluded-layers N] [--skip-mobilenet] [--skip-digits]

1. The demo MobileNetV2 (torchvision's ImageNet weights), INT8 CPU target, calibrated and gated on
   disjoint sets of real augmented photos (scikit-image, scikit-learn, matplotlib): top-1 agreement
   (also by FP32's own confidence), layers kept in FP32, ONNX Runtime throughput at batch 8 against
   FP32 (alternating, repeated runs). Diagnostics first: how often FP32's own top-1 changes under
   +-0.5 / +-1 grey-level input noise, and under INT8 / 10-bit weights alone.
2. A small CNN trained on scikit-learn's digits: FP32 vs INT8 top-1 accuracy on held-out digits.
3. A digits build with ``--max-accuracy-drop 0`` through the CLI: the gate fails, the repository is
   byte-identical afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from cvserve.builders.preprocessing import PreprocessSpec

DIGITS_SPEC = PreprocessSpec(input_size=(8, 8), resize_shorter=0, mean=(0.5,) * 3, std=(0.5,) * 3)


def _digits_net():
    import torch

    class DigitsNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = torch.nn.Conv2d
            self.features = torch.nn.Sequential(
                c(3, 16, 3, padding=1), torch.nn.ReLU(), c(16, 32, 3, padding=1), torch.nn.ReLU(),
                torch.nn.MaxPool2d(2), c(32, 64, 3, padding=1), torch.nn.ReLU(),
            )  # fmt: skip
            self.classifier = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.classifier(self.features(x).mean((2, 3)))

    return DigitsNet()


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(image * 16, 0, 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def make_digits(root: Path, n_train: int = 1000, n_cal: int = 200, epochs: int = 30) -> dict:
    """Train a small CNN on scikit-learn's digits (through the served preprocessing); write the data.

    Returns the TorchScript checkpoint, the calibration folder, the held-out folder and its labels file
    (the remaining ``1797 - n_train - n_cal`` digits). Deterministic.
    """
    import torch
    from sklearn.datasets import load_digits

    from cvserve.builders.preprocessing import preprocess_batch

    root.mkdir(parents=True, exist_ok=True)
    data = load_digits()
    encoded = [_png(img) for img in data.images]
    x = torch.from_numpy(preprocess_batch(encoded[:n_train], DIGITS_SPEC))
    y = torch.from_numpy(data.target[:n_train]).long()
    torch.manual_seed(0)
    model = _digits_net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(n_train).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    checkpoint = root / "digits.pt"
    torch.jit.trace(model, x[:2]).save(str(checkpoint))
    cal_dir, val_dir = root / "calibration", root / "validation"
    cal_dir.mkdir(exist_ok=True)
    val_dir.mkdir(exist_ok=True)
    lines = []
    for i, blob in enumerate(encoded[n_train:], n_train):
        name = f"digit_{i:04d}.png"
        if i < n_train + n_cal:
            (cal_dir / name).write_bytes(blob)
        else:
            (val_dir / name).write_bytes(blob)
            lines.append(f"{name}\t{data.target[i]}")
    labels = root / "validation_labels.tsv"
    labels.write_text("\n".join(lines) + "\n")
    return {"checkpoint": checkpoint, "calibration": cal_dir, "validation": val_dir, "labels": labels}


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def compare_throughput(fp32: Path, int8: Path, batch: np.ndarray, rounds: int, seconds: float) -> dict:
    """Alternate FP32 and INT8 runs ``rounds`` times; report the median images/s of each."""
    from cvserve.builders.quantize import throughput

    got: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(rounds):
        for key, path in (("fp32", fp32), ("int8", int8)):
            got[key].append(throughput(path, batch, seconds=seconds))
    med = {k: float(np.median(v)) for k, v in got.items()}
    return {
        "batch": len(batch),
        "fp32_img_s": round(med["fp32"], 1),
        "int8_img_s": round(med["int8"], 1),
        "speedup": round(med["int8"] / med["fp32"], 2),
        "runs": {k: [round(x, 1) for x in v] for k, v in got.items()},
    }


def _fake_quant_weights(fp32: Path, bits: int, out: Path) -> Path:
    """The FP32 ONNX with Conv/Gemm weights rounded to ``bits``-bit per-channel symmetric integers."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32))
    weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    top = 2 ** (bits - 1) - 1
    for init in model.graph.initializer:
        if init.name in weights:
            w = numpy_helper.to_array(init)
            axes = tuple(range(1, w.ndim))  # output channels: axis 0 of Conv, and of Gemm with transB
            scale = np.abs(w).max(axis=axes, keepdims=True) / top
            scale[scale == 0] = 1.0
            q = (np.clip(np.round(w / scale), -top, top) * scale).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(q, init.name))
    onnx.save(model, str(out))
    return out


def diagnostics(fp32: Path, tensors: np.ndarray, spec: PreprocessSpec) -> dict:
    """How fragile FP32's own top-1 is on these held-out images, and what weight rounding alone costs.

    * input noise: every pixel moved by a uniform +-0.5 (or +-1) grey level, through the normalisation;
    * input only: the network input rounded to uint8, as an INT8 network's first QuantizeLinear does;
    * weights only: INT8 (or 10-bit) per-channel symmetric weights, activations left in FP32.
    """
    from cvserve.builders import accuracy
    from cvserve.builders.quantize import logits

    ref = logits(fp32, tensors)
    std = (np.asarray(spec.std, dtype=np.float32) * 255.0).reshape(1, -1, 1, 1)
    rng = np.random.default_rng(0)
    out: dict = {}
    for grey in (0.5, 1.0):
        noisy = tensors + rng.uniform(-grey, grey, tensors.shape).astype(np.float32) / std
        r = accuracy.compare(ref, logits(fp32, noisy))
        out[f"fp32_input_noise_{grey}_grey_level"] = {
            "top1_agreement": r.top1_agreement,
            "top5_overlap": r.top5_overlap,
        }
    # The network input quantized to uint8 over the full range of normalised pixels, as the first
    # QuantizeLinear of an INT8 network does (per tensor: one scale for the three channels).
    lo = float(np.min((0.0 - np.asarray(spec.mean)) / np.asarray(spec.std)))
    hi = float(np.max((1.0 - np.asarray(spec.mean)) / np.asarray(spec.std)))
    scale, zero = (hi - lo) / 255.0, round(-lo / ((hi - lo) / 255.0))
    rounded = (np.clip(np.round(tensors / scale) + zero, 0, 255) - zero) * scale
    r = accuracy.compare(ref, logits(fp32, rounded.astype(np.float32)))
    out["input_uint8_only"] = {"top1_agreement": r.top1_agreement, "top5_overlap": r.top5_overlap}
    with tempfile.TemporaryDirectory(prefix="cvserve-diagnostics-") as tmp:
        for bits in (8, 10):
            rounded_weights = _fake_quant_weights(fp32, bits, Path(tmp) / f"weights_int{bits}.onnx")
            r = accuracy.compare(ref, logits(rounded_weights, tensors))
            out[f"weights_only_int{bits}"] = {
                "top1_agreement": r.top1_agreement,
                "top5_overlap": r.top5_overlap,
            }
    return out


def bench_mobilenet(work: Path, args) -> dict:
    from cvserve.builders import calibration as cal
    from cvserve.builders.pipeline import BuildSettings, build
    from cvserve.builders.samples import demo_weights, imagenet_labels_path
    from cvserve.errors import BuildError

    cal_set, val_set = cal.sample_sets(args.calibration_samples, args.held_out)
    cal_dir, val_dir = (
        cal.write_set(cal_set, work / "calibration"),
        cal.write_set(val_set, work / "validation"),
    )
    repo = work / "repo"
    settings = BuildSettings(
        checkpoint=demo_weights(),
        arch="cvserve.builders.architectures:mobilenet_v2",
        name="mobilenet_v2",
        labels=imagenet_labels_path(),
        repository=repo,
        precision="int8",
        calibration=cal_dir,
        validation=val_dir,
        calibration_method=args.method,
        calibration_samples=args.calibration_samples,
        max_accuracy_drop=args.max_accuracy_drop,
    )
    spec = PreprocessSpec()
    fp32 = _fp32_onnx(work, settings)
    found = {"diagnostics": diagnostics(fp32, val_set.tensors(spec), spec)}
    print(json.dumps(found, indent=2), flush=True)
    try:
        result = build(settings)
    except BuildError as exc:
        return {**found, "gate": "failed", "error": str(exc)}
    report = result.report
    network = repo / "mobilenet_v2_network" / str(result.version) / "model.onnx"
    batch = np.ascontiguousarray(val_set.head(8).tensors(spec))
    return {
        **found,
        "gate": "passed",
        "accuracy": report["accuracy"],
        "excluded_layers": report["excluded_layers"],
        "fallback_steps": report.get("fallback", {}).get("steps"),
        "build_throughput": report["throughput"],
        "throughput": compare_throughput(fp32, network, batch, args.rounds, args.seconds),
    }


def _fp32_onnx(work: Path, settings) -> Path:
    from dataclasses import replace

    from cvserve.builders.pipeline import build

    result = build(replace(settings, precision="fp32", repository=work / "repo_fp32"), log=lambda _m: None)
    return work / "repo_fp32" / "mobilenet_v2_network" / str(result.version) / "model.onnx"


def bench_digits(work: Path) -> dict:
    from cvserve.builders.pipeline import BuildSettings, build

    d = make_digits(work / "digits")
    repo = work / "digits_repo"
    result = build(
        BuildSettings(
            checkpoint=d["checkpoint"],
            name="digits",
            repository=repo,
            preprocess=DIGITS_SPEC,
            precision="int8",
            calibration=d["calibration"],
            validation=d["validation"],
            validation_labels=d["labels"],
            progress=False,
        ),
        log=lambda _m: None,
    )
    acc = result.report["accuracy"]
    before = tree_digest(repo)
    cli = [
        sys.executable,
        "-m",
        "cvserve",
        "build",
        str(d["checkpoint"]),
        "--name",
        "digits",
        "-r",
        str(repo),
    ]
    cli += ["--input-size", "8", "--resize", "0", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]
    cli += [
        "--precision",
        "int8",
        "--calibration",
        str(d["calibration"]),
        "--validation",
        str(d["validation"]),
    ]
    cli += ["--validation-labels", str(d["labels"]), "--max-accuracy-drop", "0", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "CVSERVE_MAX_EXCLUDED_LAYERS"}  # the default limit
    proc = subprocess.run(cli, capture_output=True, text=True, env=env)
    return {
        "fp32_top1_accuracy": acc["top1_accuracy_reference"],
        "int8_top1_accuracy": acc["top1_accuracy"],
        "top1_agreement": acc["top1_agreement"],
        "held_out_images": acc["held_out_images"],
        "excluded_layers": result.report["excluded_layers"],
        "gate_zero_drop": {
            "exit_code": proc.returncode,
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "",
            "repository_unchanged": tree_digest(repo) == before,
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="entropy")
    p.add_argument("--calibration-samples", type=int, default=200)
    p.add_argument("--held-out", type=int, default=200)
    p.add_argument("--max-accuracy-drop", type=float, default=0.01)
    p.add_argument("--rounds", type=int, default=5, help="alternating FP32/INT8 throughput rounds")
    p.add_argument("--seconds", type=float, default=4.0, help="per throughput round")
    p.add_argument(
        "--max-excluded-layers",
        type=int,
        help="how far the fallback may go (CVSERVE_MAX_EXCLUDED_LAYERS; default a quarter of the layers)",
    )
    p.add_argument("--skip-mobilenet", action="store_true")
    p.add_argument("--skip-digits", action="store_true")
    args = p.parse_args(argv)
    if args.max_excluded_layers is not None:
        os.environ["CVSERVE_MAX_EXCLUDED_LAYERS"] = str(args.max_excluded_layers)
    from cvserve.builders.quantize import _cpu_name

    out: dict = {"cpu": _cpu_name(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="cvserve-bench-quant-") as tmp:
        if not args.skip_digits:
            out["digits"] = bench_digits(Path(tmp))
            print(json.dumps({"digits": out["digits"]}, indent=2), flush=True)
        if not args.skip_mobilenet:
            out["mobilenet_v2"] = bench_mobilenet(Path(tmp), args)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
