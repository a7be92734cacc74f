"""The build pipeline: checkpoint -> ONNX -> clean-up -> verify -> (quantize / engine) -> repository.

Every stage writes into a scratch directory; the repository is touched only by the final atomic commit
(:func:`cvserve.builders.repository.staged_build`), so a failure anywhere leaves it byte-identical.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cvserve.builders import triton_config as tc
from cvserve.builders.preprocessing import PreprocessSpec, preprocess_files
from cvserve.defaults import DEFAULT_REPOSITORY
from cvserve.errors import NotFoundError, UserInputError

PRECISIONS = ("fp32", "fp16", "int8")
TARGETS = ("cpu", "gpu")


@dataclass(kw_only=True)
class BuildSettings:
    """Everything ``cvserve build`` takes. Keyword-only; see ``cvserve build --help`` for meanings."""

    checkpoint: Path
    name: str
    arch: str | None = None
    labels: Path | None = None
    repository: Path = DEFAULT_REPOSITORY
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    batching: tc.Batching = field(default_factory=tc.Batching)
    version_policy: tc.VersionPolicy = field(default_factory=tc.VersionPolicy)
    top_k: int = 5
    runtime: str = "python"  # network runtime: python (embedded server), onnxruntime or tensorrt (NGC)
    exporter: str = "auto"
    verify_images: list[Path] = field(default_factory=list)  # empty: the bundled sample photos
    atol: float = 1e-3
    rtol: float = 1e-3
    execution_env: str | None = None  # EXECUTION_ENV_PATH for the python models (NGC container)
    # Quantization (cvserve.builders.quantize)
    precision: str = "fp32"
    target: str = "cpu"
    calibration: Path | None = None
    calibration_samples: int = 200
    calibration_method: str = "minmax"
    validation: Path | None = None
    validation_labels: Path | None = None
    max_accuracy_drop: float = 0.01
    progress: bool = True

    def __post_init__(self) -> None:
        tc.check_name(self.name)
        if self.precision not in PRECISIONS:
            raise UserInputError(
                f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}"
            )
        if self.target not in TARGETS:
            raise UserInputError(f"--target must be one of {', '.join(TARGETS)}, not {self.target!r}")
        if self.top_k < 1:
            raise UserInputError(f"--top-k must be at least 1, got {self.top_k}")
        for label, path in (
            ("checkpoint", self.checkpoint),
            ("--labels", self.labels),
            ("--calibration", self.calibration),
            ("--validation", self.validation),
            ("--validation-labels", self.validation_labels),
        ):
            if path is not None and not Path(path).exists():
                raise NotFoundError(f"{label} {path} does not exist")


@dataclass(kw_only=True)
class BuildResult:
    name: str
    version: int
    repository: Path
    timings_s: dict[str, float]
    report: dict


def _read_labels(path: Path | None, num_classes: int) -> list[str]:
    if path is None:
        return [str(i) for i in range(num_classes)]
    labels = [ln.rstrip("\r\n") for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    while labels and not labels[-1].strip():
        labels.pop()
    if len(labels) != num_classes:
        raise UserInputError(
            f"checkpoint has {num_classes} classes but --labels {path} has {len(labels)} lines"
        )
    return labels


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verification_images(settings: BuildSettings) -> list[Path]:
    if settings.verify_images:
        return list(settings.verify_images)
    from cvserve.builders.samples import sample_images

    return list(sample_images().values())


class _Clock:
    def __init__(self, log: Callable[[str], None]) -> None:
        self.timings: dict[str, float] = {}
        self.log = log

    def stage(self, name: str):
        clock = self

        class _Stage:
            def __enter__(self):
                self.t = time.perf_counter()
                clock.log(f"[{name}] ...")

            def __exit__(self, exc_type, *_):
                took = time.perf_counter() - self.t
                clock.timings[name] = round(took, 3)
                if exc_type is None:
                    clock.log(f"[{name}] done in {took:.1f} s")

        return _Stage()


def build(settings: BuildSettings, log: Callable[[str], None] = print) -> BuildResult:
    """Build ``settings.name`` into ``settings.repository`` as a new version. Atomic."""
    from cvserve.builders import checkpoint, onnx_cleanup, repository, torch2onnx, verify

    clock = _Clock(log)
    spec = settings.preprocess
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cvserve-build-") as scratch_dir:
        scratch = Path(scratch_dir)
        with clock.stage("load"):
            model = checkpoint.load_model(settings.checkpoint, settings.arch)
            # Check the labels before the (slow) export: one forward pass tells the number of classes.
            labels = _read_labels(settings.labels, checkpoint.num_classes(model, spec.tensor_shape))
        with clock.stage("export"):
            exported = torch2onnx.export(
                model, scratch / "exported.onnx", input_shape=spec.tensor_shape, exporter=settings.exporter
            )
        with clock.stage("cleanup"):
            cleaned = onnx_cleanup.cleanup(exported.path, scratch / "model.onnx")
        with clock.stage("verify"):
            images = _verification_images(settings)
            batch = preprocess_files(images, spec)
            checked = verify.verify(model, cleaned.path, batch, atol=settings.atol, rtol=settings.rtol)
            log(
                f"[verify] ONNX Runtime vs PyTorch on {checked.images} real images: max |diff| "
                f"{checked.max_abs_diff:.2e} (tolerance {checked.tolerance:.1e}), top-1 equal {checked.top1_equal}/{checked.images}"
            )
        network_file, quant_report = cleaned.path, None
        if settings.precision != "fp32" or settings.target == "gpu":
            from cvserve.builders import quantize

            with clock.stage("quantize"):
                q = quantize.run_quantization(
                    onnx_fp32=cleaned.path, workdir=scratch, settings=settings, reference_model=model, log=log
                )
            network_file, quant_report = q.network_file, q.report
        shape = tc.PipelineShape(
            tensor_shape=spec.tensor_shape, num_classes=exported.num_classes, top_k=settings.top_k
        )
        if settings.execution_env:
            env = {"EXECUTION_ENV_PATH": settings.execution_env}
            shape.extra_params.update(preprocess=env, postprocess=env)
        runtime = "tensorrt" if network_file.suffix == ".plan" else settings.runtime
        configs = tc.pipeline_configs(
            settings.name, shape, settings.batching, settings.version_policy, runtime
        )
        accelerator = None
        if settings.target == "gpu" and runtime == "onnxruntime":  # the ONNX on GPU through ORT's TensorRT
            accelerator = tc.add_tensorrt_accelerator(
                configs["network"],
                precision=settings.precision,
                input_name=shape.input_name,
                tensor_shape=spec.tensor_shape,
                b=settings.batching,
            )
        report = {
            "name": settings.name,
            "checkpoint": str(settings.checkpoint),
            "source_kind": model.kind,
            "exporter": exported.exporter,
            "opset": exported.opset,
            "num_classes": exported.num_classes,
            "runtime": runtime,
            "precision": settings.precision,
            "target": settings.target,
            "preprocess": json.loads(spec.to_json()),
            "batching": {
                k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings.batching).items()
            },
            "cleanup": {"nodes_before": cleaned.nodes_before, "nodes_after": cleaned.nodes_after},
            "verification": checked.as_dict(),
            "size_bytes": network_file.stat().st_size,
            "sha256": _sha256(network_file),
        }
        if quant_report:
            report.update(quant_report)
        if accelerator:
            report["tensorrt_accelerator"] = accelerator
        with clock.stage("write"), repository.staged_build(settings.repository, settings.name) as staged:
            report["version"] = staged.version
            _write_models(staged, settings, spec, labels, network_file, runtime, configs)
            report["timings_s"] = {**clock.timings, "total": round(time.perf_counter() - started, 3)}
            _write_report(staged.version_dir("ensemble"), report)
    log(
        f"built {settings.name} version {report['version']} into {settings.repository} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return BuildResult(
        name=settings.name,
        version=report["version"],
        repository=settings.repository,
        timings_s=clock.timings,
        report=report,
    )


def _write_models(
    staged, settings, spec: PreprocessSpec, labels, network_file: Path, runtime: str, configs
) -> None:
    src = importlib.resources.files("cvserve.model_repository")
    pre = staged.version_dir("preprocess")
    _copy_resource(src / "preprocess.py", pre / "model.py")
    _copy_resource(
        importlib.resources.files("cvserve.builders") / "preprocessing.py", pre / "cvserve_preprocessing.py"
    )
    spec.save(pre)
    net = staged.version_dir("network")
    shutil.copy2(network_file, net / ("model.plan" if runtime == "tensorrt" else "model.onnx"))
    if runtime == "python":
        _copy_resource(src / "network_onnxruntime.py", net / "model.py")
    post = staged.version_dir("postprocess")
    _copy_resource(src / "postprocess.py", post / "model.py")
    (post / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    staged.version_dir("ensemble")
    for role, cfg in configs.items():
        staged.write_config(role, cfg)


def _copy_resource(resource, dst: Path) -> None:
    """Copy a file shipped inside the cvserve package (found through importlib.resources)."""
    dst.write_bytes(resource.read_bytes())


def _write_report(directory: Path, report: dict) -> None:
    (directory / "build_report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    try:
        from cvserve.builders.report import render_markdown
    except ImportError:
        return
    (directory / "build_report.md").write_text(render_markdown(report))
