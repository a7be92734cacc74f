"""``cvserve build``."""

from __future__ import annotations

import argparse
from pathlib import Path

from cvserve.defaults import DEFAULT_REPOSITORY
from cvserve.errors import UserInputError


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use one number (224) or HxW (224x224)") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: use one number (224) or HxW (224x224)")
    return parts[0], parts[1]


def _floats(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give three comma-separated numbers") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: give three comma-separated numbers")
    return values  # type: ignore[return-value]


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 4,8") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="build a PyTorch checkpoint into a Triton ensemble (preprocess -> network -> postprocess)",
        description="Export a checkpoint to ONNX, clean it up, verify it against PyTorch on real images, "
        "optionally quantize it, and add it as a new version to a Triton model repository, atomically.",
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        help="state_dict (.pth, needs --arch), TorchScript (.pt) or torch.export (.pt2)",
    )
    p.add_argument("--name", required=True, help="model name clients call (the ensemble)")
    p.add_argument(
        "--arch",
        help="module:callable returning the nn.Module, e.g. cvserve.builders.architectures:mobilenet_v2",
    )
    p.add_argument("--labels", type=Path, help="class names, one per line (default: the class indices)")
    p.add_argument("--repository", "-r", type=Path, default=DEFAULT_REPOSITORY, help="model repository")
    g = p.add_argument_group("preprocessing (recorded once, used for serving, verification and calibration)")
    g.add_argument("--input-size", type=_size, default=(224, 224), help="network input HxW (default 224)")
    g.add_argument(
        "--resize",
        type=int,
        default=256,
        help="shorter side before the centre crop (0: resize straight to the input size)",
    )
    g.add_argument(
        "--mean",
        type=_floats,
        default=(0.485, 0.456, 0.406),
        help="per-channel mean in [0,1] (default ImageNet)",
    )
    g.add_argument(
        "--std",
        type=_floats,
        default=(0.229, 0.224, 0.225),
        help="per-channel std in [0,1] (default ImageNet)",
    )
    g.add_argument("--color", choices=("RGB", "BGR"), default="RGB")
    g.add_argument(
        "--input-layout", choices=("NCHW", "NHWC"), default="NCHW", help="the network input's tensor layout"
    )
    g.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest"), default="bilinear")
    g = p.add_argument_group("serving (where and how: cvserve.builders.runtime decides from these)")
    g.add_argument(
        "--target",
        choices=("cpu", "gpu"),
        default="cpu",
        help="cpu: the single layout with OpenVINO by default; gpu: the ensemble layout with a TensorRT "
        "engine (needs cvserve[tensorrt] here), or with --runtime onnxruntime the ONNX served through "
        "ONNX Runtime's TensorRT accelerator",
    )
    g.add_argument(
        "--runtime",
        choices=("auto", "openvino", "onnxruntime", "tensorrt"),
        default="auto",
        help="the network runtime (auto: openvino on cpu, tensorrt on gpu)",
    )
    g.add_argument(
        "--layout",
        choices=("auto", "single", "ensemble"),
        default="auto",
        help="single: one python model decodes and runs the network (the embedded server; NGC too); "
        "ensemble: python decode -> native Triton backend (NGC). auto: single on cpu, ensemble on gpu",
    )
    g.add_argument("--max-batch-size", type=int, default=32)
    g.add_argument(
        "--preferred-batch-sizes", type=_ints, default=[], help="dynamic batching preferred sizes, e.g. 4,8"
    )
    g.add_argument(
        "--max-queue-delay-us", type=int, default=0, help="dynamic batching queue delay (default 0)"
    )
    g.add_argument(
        "--max-queue-size",
        type=int,
        default=0,
        help="requests waiting before new ones are rejected as UNAVAILABLE (0: 2 x max batch size)",
    )
    g.add_argument(
        "--queue-timeout-ms",
        type=float,
        default=0.0,
        help="a request queued longer is rejected as UNAVAILABLE (0: --slo-p95-ms)",
    )
    g.add_argument(
        "--slo-p95-ms", type=float, default=500.0, help="latency objective the queue timeout derives from"
    )
    g.add_argument(
        "--network-instances", type=int, default=1, help="instances of the model running the network"
    )
    g.add_argument("--preprocess-instances", type=int, default=2, help="ensemble layout: decode instances")
    g.add_argument(
        "--network-threads",
        type=int,
        default=0,
        help="intra-op threads per instance (0: the server's cores / instances, decided when served)",
    )
    g.add_argument("--decode-threads", type=int, default=0, help="decode threads per instance (0: derived)")
    g.add_argument("--top-k", type=int, default=5, help="classes returned per image")
    g.add_argument("--execution-env", help="EXECUTION_ENV_PATH for the python models (packed env for NGC)")
    g.add_argument(
        "--version-policy", default="latest:1", help="latest:N, all or specific:V[,V] (default latest:1)"
    )
    g = p.add_argument_group("verification and quantization")
    g.add_argument(
        "--verify-images", type=Path, nargs="+", default=[], help="images for the ONNX-vs-PyTorch check"
    )
    g.add_argument("--atol", type=float, default=1e-3)
    g.add_argument("--rtol", type=float, default=1e-3)
    g.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto")
    g.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    g.add_argument("--calibration", type=Path, help="folder of calibration images")
    g.add_argument("--calibration-samples", type=int, default=200)
    g.add_argument("--calibration-method", choices=("minmax", "entropy", "percentile"), default="minmax")
    g.add_argument("--validation", type=Path, help="folder of held-out images for the accuracy gate")
    g.add_argument("--validation-labels", type=Path, help="ground truth for --validation (optional)")
    g.add_argument("--max-accuracy-drop", type=float, default=0.01, help="largest top-1 drop the gate allows")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_build)


def settings_from_args(args: argparse.Namespace):
    from cvserve.builders import triton_config as tc
    from cvserve.builders.pipeline import BuildSettings, ExportSettings, QuantizationOptions, ServingOptions
    from cvserve.builders.preprocessing import PreprocessSpec

    try:
        spec = PreprocessSpec(
            input_size=args.input_size,
            resize_shorter=args.resize,
            mean=args.mean,
            std=args.std,
            color=args.color,
            layout=args.input_layout,
            interpolation=args.interpolation,
        )
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    batching = tc.Batching(
        max_batch_size=args.max_batch_size,
        preferred_batch_sizes=args.preferred_batch_sizes,
        max_queue_delay_us=args.max_queue_delay_us,
        max_queue_size=args.max_queue_size,
        queue_timeout_ms=args.queue_timeout_ms,
        slo_p95_ms=args.slo_p95_ms,
        network_instances=args.network_instances,
        preprocess_instances=args.preprocess_instances,
        network_threads=args.network_threads,
        decode_threads=args.decode_threads,
    )
    return BuildSettings(
        checkpoint=args.checkpoint,
        name=args.name,
        arch=args.arch,
        labels=args.labels,
        repository=args.repository,
        preprocess=spec,
        export=ExportSettings(
            exporter=args.exporter, verify_images=args.verify_images, atol=args.atol, rtol=args.rtol
        ),
        quantization=QuantizationOptions(
            precision=args.precision,
            calibration=args.calibration,
            calibration_samples=args.calibration_samples,
            calibration_method=args.calibration_method,
            validation=args.validation,
            validation_labels=args.validation_labels,
            max_accuracy_drop=args.max_accuracy_drop,
        ),
        serving=ServingOptions(
            target=args.target,
            runtime=args.runtime,
            layout=args.layout,
            top_k=args.top_k,
            batching=batching,
            version_policy=tc.VersionPolicy.parse(args.version_policy),
            execution_env=args.execution_env,
        ),
        progress=not args.no_progress,
    )


def run_build(args: argparse.Namespace) -> int:
    from cvserve.builders.pipeline import build

    build(settings_from_args(args))
    return 0
