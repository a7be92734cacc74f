"""The build pipeline, the only orchestrator: each stage takes its own settings and hands a typed result on.

    load (checkpoint.py)     -> LoadedModel
    export (torch2onnx.py)   -> ExportResult       the network ONNX: float input -> logits
    cleanup (onnx_cleanup.py)-> CleanupResult
    verify (verify.py)       -> VerifyResult        ONNX Runtime vs PyTorch on real photos
    quantize (quantize.py)   -> QuantizeResult      INT8/FP16 core network, accuracy gate (precision != fp32)
    wrap (served_graph.py)   -> ServedGraph         uint8 pixels in, top-k out, the math in the graph
    engine (onnx2openvino.py / onnx2trt.py) -> NetworkArtifact   what the runtime serves
    check (verify.py)        -> served result equals the float reference on the same photos
    write (repository.py)    -> version N of every model of the layout, atomically

Where and how the network is served (layout, runtime, device) is decided once, by
:func:`cvserve.builders.runtime.decide`, before any stage runs; the engine profile (min/opt/max batch)
once, by :class:`cvserve.builders.profile.EngineProfile`. Every stage writes into a scratch directory;
the repository is touched only by the final atomic commit, so a failure anywhere leaves it
byte-identical.
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
from datetime import datetime, timezone
from pathlib import Path

from cvserve.builders import runtime as rt
from cvserve.builders import triton_config as tc
from cvserve.builders.preprocessing import PreprocessSpec, preprocess_files
from cvserve.defaults import DEFAULT_REPOSITORY
from cvserve.errors import NotFoundError, UserInputError

PRECISIONS = ("fp32", "fp16", "int8")
REPORT_SCHEMA = 2


# -- settings, one small dataclass per stage ------------------------------------------------------------
@dataclass(kw_only=True)
class ExportSettings:
    """How the checkpoint becomes ONNX and how closely ONNX Runtime must match PyTorch."""

    exporter: str = "auto"  # auto, dynamo or torchscript
    verify_images: list[Path] = field(default_factory=list)  # empty: the bundled sample photos
    atol: float = 1e-3
    rtol: float = 1e-3


@dataclass(kw_only=True)
class QuantizationOptions:
    """What ``--precision`` and the calibration/validation flags ask of the quantize stage."""

    precision: str = "fp32"
    calibration: Path | None = None
    calibration_samples: int = 200
    calibration_method: str = "minmax"
    validation: Path | None = None
    validation_labels: Path | None = None
    max_accuracy_drop: float = 0.01

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserInputError(
                f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}"
            )


@dataclass(kw_only=True)
class ServingOptions:
    """Where the network is served and how Triton schedules it."""

    target: str = "cpu"
    runtime: str = "auto"  # auto (the rule in cvserve.builders.runtime), openvino, onnxruntime, tensorrt
    layout: str = "auto"  # auto, single or ensemble
    top_k: int = 5
    batching: tc.Batching = field(default_factory=tc.Batching)
    version_policy: tc.VersionPolicy = field(default_factory=tc.VersionPolicy)
    execution_env: str | None = None  # EXECUTION_ENV_PATH for the python models (NGC container)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise UserInputError(f"--top-k must be at least 1, got {self.top_k}")

    def plan(self) -> rt.ServingPlan:
        return rt.decide(target=self.target, runtime=self.runtime, layout=self.layout)


@dataclass(kw_only=True)
class BuildSettings:
    """Everything ``cvserve build`` takes. Keyword-only; see ``cvserve build --help`` for meanings."""

    checkpoint: Path
    name: str
    arch: str | None = None
    labels: Path | None = None
    repository: Path = DEFAULT_REPOSITORY
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    export: ExportSettings = field(default_factory=ExportSettings)
    quantization: QuantizationOptions = field(default_factory=QuantizationOptions)
    serving: ServingOptions = field(default_factory=ServingOptions)
    progress: bool = True

    def __post_init__(self) -> None:
        tc.check_name(self.name)
        self.serving.plan()  # a bad --target/--runtime/--layout combination fails before any work
        q = self.quantization
        for label, path in (
            ("checkpoint", self.checkpoint),
            ("--labels", self.labels),
            ("--calibration", q.calibration),
            ("--validation", q.validation),
            ("--validation-labels", q.validation_labels),
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


# -- helpers --------------------------------------------------------------------------------------------
def _labels(path: Path | None, num_classes: int) -> list[str]:
    if path is None:
        return [str(i) for i in range(num_classes)]
    from cvserve.labels import read_class_names

    labels = read_class_names(path)
    if len(labels) != num_classes:
        raise UserInputError(
            f"checkpoint has {num_classes} classes but --labels {path} has {len(labels)} lines"
        )
    return labels


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verification_images(settings: ExportSettings) -> list[Path]:
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


# -- the pipeline ---------------------------------------------------------------------------------------
def build(settings: BuildSettings, log: Callable[[str], None] = print) -> BuildResult:
    """Build ``settings.name`` into ``settings.repository`` as a new version. Atomic."""
    from cvserve.builders import checkpoint, onnx_cleanup, repository, served_graph, torch2onnx, verify

    plan = settings.serving.plan()
    if plan.runtime == "tensorrt":  # fail before minutes of export and calibration, not after
        from cvserve._extras import require

        require("tensorrt", extra="tensorrt", purpose="to build TensorRT engines (--runtime tensorrt)")
    batching = settings.serving.batching
    profile = batching.profile
    precision = settings.quantization.precision
    clock = _Clock(log)
    spec = settings.preprocess
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cvserve-build-") as scratch_dir:
        scratch = Path(scratch_dir)
        with clock.stage("load"):
            model = checkpoint.load_model(settings.checkpoint, settings.arch)
            # Check the labels before the (slow) export: one forward pass tells the number of classes.
            labels = _labels(settings.labels, checkpoint.num_classes(model, spec.tensor_shape))
        with clock.stage("export"):
            exported = torch2onnx.export(
                model,
                scratch / "exported.onnx",
                input_shape=spec.tensor_shape,
                exporter=settings.export.exporter,
            )
        with clock.stage("cleanup"):
            cleaned = onnx_cleanup.cleanup(exported.path, scratch / "model.onnx")
        with clock.stage("verify"):
            images = _verification_images(settings.export)
            checked = verify.verify(
                model,
                cleaned.path,
                preprocess_files(images, spec),
                atol=settings.export.atol,
                rtol=settings.export.rtol,
            )
            log(
                f"[verify] ONNX Runtime vs PyTorch on {checked.images} real images: max |diff| "
                f"{checked.max_abs_diff:.2e} (tolerance {checked.tolerance:.1e}), top-1 equal "
                f"{checked.top1_equal}/{checked.images}"
            )
        network, quant_report = cleaned.path, {}
        if precision != "fp32":
            with clock.stage("quantize"):
                network, quant_report = _quantize(settings, plan, labels, cleaned.path, scratch, log)
        with clock.stage("wrap"):
            served = served_graph.wrap(network, scratch / "served.onnx", spec, top_k=settings.serving.top_k)
        with clock.stage("engine"):
            artifact = _engine(plan, precision, profile, served, spec, scratch, log)
        with clock.stage("check"):
            served_check = verify.served(
                artifact.path, plan.runtime, cleaned.path, [p.read_bytes() for p in images], spec
            )
            if served_check is not None:
                log(f"[check] served {plan.runtime} network vs the float reference: {served_check.summary()}")
                if precision == "fp32":
                    served_check.require_equal()
        shape = tc.PipelineShape(
            pixels_shape=served.pixels_shape,
            top_k=served.top_k,
            labels=labels,
            precision=precision,
            execution_env=settings.serving.execution_env,
        )
        configs = tc.pipeline_configs(settings.name, plan, shape, batching, settings.serving.version_policy)
        report = {
            "schema": REPORT_SCHEMA,
            "name": settings.name,
            "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            "checkpoint": {
                "path": str(settings.checkpoint),
                "sha256": sha256(Path(settings.checkpoint)),
                "kind": model.kind,
            },
            "network": {
                **plan.as_dict(),
                "precision": precision,
                "file": artifact.path.name,
                "sha256": sha256(artifact.path),
                "size_bytes": sum(p.stat().st_size for p in artifact.files),
                "exporter": exported.exporter,
                "opset": exported.opset,
                "num_classes": served.num_classes,
                "top_k": served.top_k,
            },
            "engine_profile": profile.to_report(),
            "preprocess": json.loads(spec.to_json()),
            "batching": {
                k: (list(v) if isinstance(v, tuple | list) else v) for k, v in asdict(batching).items()
            },
            "quantization": quant_report.get("quantization"),
            "accuracy": quant_report.get("accuracy"),
            "throughput": quant_report.get("throughput"),
            "verification": {
                **checked.as_dict(),
                "cleanup_nodes": [cleaned.nodes_before, cleaned.nodes_after],
                "served": served_check.as_dict() if served_check is not None else None,
            },
            "engine": artifact.details,
        }
        with clock.stage("write"), repository.staged_build(settings.repository, settings.name) as staged:
            report["version"] = staged.version
            _write_models(staged, plan, spec, artifact, configs)
            report["timings_s"] = {**clock.timings, "total": round(time.perf_counter() - started, 3)}
            _write_report(staged.version_dir("classifier"), report)
    log(
        f"built {settings.name} version {report['version']} ({plan.layout} layout, {plan.runtime}, "
        f"{precision}) into {settings.repository} in {time.perf_counter() - started:.1f} s"
    )
    return BuildResult(
        name=settings.name,
        version=report["version"],
        repository=settings.repository,
        timings_s=clock.timings,
        report=report,
    )


def _quantize(settings, plan: rt.ServingPlan, labels, fp32: Path, scratch: Path, log) -> tuple[Path, dict]:
    """The quantize stage: the INT8/FP16 core network and its report entries (accuracy gate included)."""
    from types import SimpleNamespace

    from cvserve.builders import quantize

    q = settings.quantization
    b = settings.serving.batching
    legacy = SimpleNamespace(  # TODO(quant): replaced by quantize.QuantizeSettings when it lands
        precision=q.precision,
        target=plan.target,
        runtime="onnxruntime",  # never let the stage build an engine: the pipeline does, from the wrap
        calibration=q.calibration,
        calibration_samples=q.calibration_samples,
        calibration_method=q.calibration_method,
        validation=q.validation,
        validation_labels=q.validation_labels,
        max_accuracy_drop=q.max_accuracy_drop,
        progress=settings.progress,
        preprocess=settings.preprocess,
        batching=SimpleNamespace(
            max_batch_size=b.max_batch_size, preferred_batch_sizes=list(b.preferred_batch_sizes)
        ),
        labels=settings.labels,
    )
    result = quantize.run_quantization(onnx_fp32=fp32, workdir=scratch, settings=legacy, log=log)
    entries = dict(result.report)
    quantization = {k: entries.pop(k) for k in ("calibration", "excluded_layers", "fallback") if k in entries}
    quantization["method"] = q.calibration_method
    return result.network_file, {
        "quantization": quantization,
        "accuracy": entries.get("accuracy"),
        "throughput": entries.get("throughput"),
    }


def _engine(
    plan: rt.ServingPlan, precision: str, profile, served, spec, scratch: Path, log
) -> rt.NetworkArtifact:
    """The engine stage: the served graph as the file(s) its runtime serves."""
    if plan.runtime == "openvino":
        from cvserve.builders import onnx2openvino

        xml = onnx2openvino.convert(served.path, scratch / "openvino" / plan.network_file)
        return rt.NetworkArtifact(plan=plan, files=(xml, xml.with_suffix(".bin")), precision=precision)
    if plan.runtime == "onnxruntime":
        onnx_file = scratch / "onnxruntime" / plan.network_file
        onnx_file.parent.mkdir()
        shutil.copy2(served.path, onnx_file)
        details = None
        if plan.accelerator == "tensorrt":
            details = {"accelerator": "tensorrt", "profile": profile.to_report(), "precision": precision}
        return rt.NetworkArtifact(plan=plan, files=(onnx_file,), precision=precision, details=details)
    from cvserve.builders import onnx2trt

    engine = scratch / "tensorrt" / plan.network_file
    engine.parent.mkdir()
    spec_trt = onnx2trt.engine_spec(
        input_name=tc.PIXELS, input_shape=served.pixels_shape, precision=precision, profile=profile
    )
    details = onnx2trt.build_engine(served.path, engine, spec_trt, log)
    return rt.NetworkArtifact(plan=plan, files=(engine,), precision=precision, details=details)


def _copy_resource(package: str, name: str, dst: Path) -> None:
    """Copy a file shipped inside the cvserve package (found through importlib.resources)."""
    dst.write_bytes((importlib.resources.files(package) / name).read_bytes())


def _write_models(staged, plan: rt.ServingPlan, spec: PreprocessSpec, artifact, configs) -> None:
    """Every model of the layout into the staged version folders."""
    decoder = staged.version_dir("classifier" if plan.layout == "single" else "preprocess")
    _copy_resource(
        "cvserve.model_repository",
        "classifier.py" if plan.layout == "single" else "preprocess.py",
        decoder / "model.py",
    )
    _copy_resource("cvserve.builders", "preprocessing.py", decoder / "cvserve_preprocessing.py")
    _copy_resource("cvserve.builders", "runners.py", decoder / "cvserve_runners.py")
    spec.save(decoder)
    network_dir = staged.version_dir("classifier" if plan.layout == "single" else "network")
    for f in artifact.files:
        shutil.copy2(f, network_dir / f.name)
    staged.version_dir("classifier")
    for role, cfg in configs.items():
        staged.write_config(role, cfg)


def _write_report(directory: Path, report: dict) -> None:
    (directory / "build_report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    try:
        from cvserve.builders.report import render_markdown

        markdown = render_markdown(report)
    except ImportError:
        return
    (directory / "build_report.md").write_text(markdown)
