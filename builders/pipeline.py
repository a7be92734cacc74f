"""The build pipeline, the only orchestrator: each stage takes its own settings and hands a typed result on.

    load (checkpoint.py)     -> LoadedModel
    export (torch2onnx.py)   -> ExportResult       the network ONNX: float input -> logits
    cleanup (onnx_cleanup.py)-> CleanupResult
    verify (verify.py)       -> VerifyResult        ONNX Runtime vs PyTorch on real photos
    quantize (quantize.py)   -> QuantizeResult      INT8/FP16/BF16 network behind the accuracy gate (not fp32)
    wrap (served_graph.py)   -> ServedGraph         uint8 pixels in, top-k out, the math in the graph
    engine (onnx2openvino.py / onnx2trt.py) -> NetworkArtifact   what the runtime serves
    check (verify.py)        -> served result equals the float reference on the same photos
    admission (admission.py) -> the queue bound, from the SLO and the served network's throughput
    write (repository.py)    -> version N of every model of the layout, atomically

Where and how the network is served (layout, runtime, device) is decided once, by
:func:`cvserve.builders.runtime.decide`, before any stage runs; the precision it computes in (and
whether this CPU can) once, by :func:`cvserve.builders.precision.decide`; the engine profile (min/opt/max batch)
once, by :class:`cvserve.builders.profile.EngineProfile`. Every stage writes into a scratch directory;
the repository is touched only by the final atomic commit, so a failure anywhere leaves it
byte-identical. The stages up to the network (:func:`network_stages`, :func:`quantize_stage`) run on
their own too, for bench_quant.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cvserve import hardware
from cvserve.builders import admission as _admission
from cvserve.builders import precision as prec
from cvserve.builders import runtime as rt
from cvserve.builders import tasks
from cvserve.builders import triton_config as tc
from cvserve.builders.detection import NmsSettings
from cvserve.builders.preprocessing import PreprocessSpec, preprocess_files
from cvserve.builders.quantize import QuantizeSettings
from cvserve.builders.repository import BUILD_REPORT
from cvserve.builders.served_graph import DEFAULT_FEATURE_DIMS
from cvserve.defaults import DEFAULT_REPOSITORY
from cvserve.errors import NotFoundError, UserInputError
from cvserve.settings import check, setting

REPORT_SCHEMA = 3  # 3: network.float_parts, network.layer_precisions and hardware


def _version_policy(text: str) -> str:
    tc.VersionPolicy.parse(text)  # a bad policy is one line naming the forms
    return text


# -- settings, one small dataclass per stage; `cvserve build`'s flags are derived from them ---------------
@dataclass(kw_only=True)
class ExportSettings:
    """How the checkpoint becomes ONNX and how closely ONNX Runtime must match PyTorch."""

    exporter: str = setting("auto", choices=("auto", "dynamo", "torchscript"), help="the ONNX exporter")
    verify_images: list[Path] = setting(
        default_factory=list,
        parser=Path,
        metavar="IMAGE",
        help="images for the ONNX-vs-PyTorch check (default: the bundled sample photos)",
    )
    atol: float = setting(1e-3, at_least=0, help="absolute tolerance of the ONNX-vs-PyTorch check")
    rtol: float = setting(1e-3, at_least=0, help="relative tolerance, times the largest output")


@dataclass(kw_only=True)
class ServingOptions:
    """Where the network is served and how Triton schedules it."""

    target: str = setting(
        "cpu", choices=rt.TARGETS, help="where the network runs (cvserve.builders.runtime decides the rest)"
    )
    runtime: str = setting(
        "auto",
        choices=("auto", *rt.RUNTIMES),
        help="the network runtime (auto: openvino on cpu, tensorrt on gpu)",
    )
    layout: str = setting(
        "auto",
        choices=("auto", *rt.LAYOUTS),
        help="single: one python model decodes and runs the network (embedded server, NGC); ensemble: "
        "python decode -> native Triton backend (NGC, GPUs). auto: single on cpu, ensemble on gpu",
    )
    top_k: int = setting(5, at_least=1, help="classes returned per image")
    batching: tc.Batching = setting(default_factory=tc.Batching, title="batching, admission and threads")
    from_tune: Path | None = setting(
        None,
        metavar="REPORT",
        help="take batching, admission and threads from a cvserve tune report's chosen configuration "
        "(tuning_report.json or its folder), so a rebuild keeps what was tuned",
    )
    version_policy: str = setting(
        "latest:1", parser=_version_policy, metavar="POLICY", help="latest:N, all or specific:V[,V]"
    )
    execution_env: str | None = setting(
        None, metavar="PATH", help="EXECUTION_ENV_PATH for the python models (a packed env, NGC)"
    )
    monitor_features: bool = setting(
        True,
        help="add the FEATURES output (a fixed random projection of the pooled features) that the "
        "single layout's model counts for drift monitoring (docs/monitoring.md)",
    )
    reference_images: int = setting(
        200, at_least=1, help="held-out images the version's reference statistics are counted on"
    )

    def plan(self) -> rt.ServingPlan:
        return rt.decide(target=self.target, runtime=self.runtime, layout=self.layout)

    def take_tuned(self) -> None:
        """With ``--from-tune``: the batching group becomes the tune report's winner, as flags. A batching
        flag given as well would be silently lost, so it is refused, naming both."""
        if self.from_tune is None:
            return
        from cvserve.builders.scheduling import from_tune_report
        from cvserve.settings import flag

        given = self.batching
        tuned = tc.Batching.of(
            from_tune_report(self.from_tune, self.plan().layout),
            self.plan().roles,
            slo_p95_ms=given.slo_p95_ms,
        )
        default = tc.Batching(slo_p95_ms=given.slo_p95_ms)
        clash = [
            flag(tc.Batching, f.name)
            for f in fields(tc.Batching)
            if getattr(given, f.name) != getattr(default, f.name) and given != tuned
        ]
        if clash:
            raise UserInputError(
                f"--from-tune {self.from_tune} sets batching, admission and threads, and so do "
                f"{', '.join(clash)}: drop those flags, or drop --from-tune"
            )
        self.batching = tuned

    def network_precision(self, quantization: QuantizeSettings) -> prec.NetworkPrecision:
        return prec.decide(quantization.precision, self.plan(), float_parts=quantization.float_parts)

    @property
    def policy(self) -> tc.VersionPolicy:
        return tc.VersionPolicy.parse(self.version_policy)


@dataclass(kw_only=True)
class BuildSettings:
    """Everything ``cvserve build`` takes: its flags come from these fields (``cvserve build --help``)."""

    checkpoint: Path = setting(
        positional=True,
        metavar="CHECKPOINT",
        help="state_dict (.pth, needs --arch), TorchScript (.pt) or torch.export (.pt2)",
    )
    name: str = setting(help="model name clients call")
    arch: str | None = setting(
        None,
        metavar="MODULE:CALLABLE",
        help="returns the nn.Module of a state_dict, e.g. cvserve.builders.architectures:mobilenet_v2",
    )
    labels: Path | None = setting(None, help="class names, one per line", default_help="the class indices")
    task: str = setting(
        tasks.DEFAULT,
        choices=tasks.NAMES,
        help="what the model answers: top-k classes, or boxes (docs/detection.md)",
    )
    repository: Path = setting(DEFAULT_REPOSITORY, short="-r", metavar="DIR", help="the model repository")
    preprocess: PreprocessSpec = setting(
        default_factory=PreprocessSpec,
        title="preprocessing",
        description="recorded once, used for serving, verification and calibration",
    )
    export: ExportSettings = setting(default_factory=ExportSettings, title="export and verification")
    quantization: QuantizeSettings = setting(
        default_factory=QuantizeSettings, title="quantization and its accuracy gate"
    )
    serving: ServingOptions = setting(default_factory=ServingOptions, title="serving")
    detection: NmsSettings = setting(
        default_factory=NmsSettings,
        title="detection (--task detect)",
        description="the raw head's layout and the served NMS, recorded in the config",
    )
    progress: bool = setting(True, help="progress bars")

    def task_of(self) -> tasks.Classify | tasks.Detect:
        return tasks.get(self.task, top_k=self.serving.top_k, nms=self.detection)

    def __post_init__(self) -> None:
        tc.check_name(self.name)
        check(self)
        self.serving.take_tuned()
        # A bad --target/--runtime/--layout combination, or batching flags the layout would ignore,
        # fail before any work.
        self.serving.batching.check(self.serving.plan().roles)
        numerics = self.serving.network_precision(self.quantization)  # bf16 here without it: exit 2
        self.task_of().check_plan(self.serving.plan(), numerics.precision)  # what the task cannot serve yet
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
    """The class names; ``num_classes`` 0: the output's shape does not say (an end-to-end detector)."""
    if path is None:
        return [str(i) for i in range(num_classes)]
    from cvserve.labels import read_class_names

    labels = read_class_names(path)
    if num_classes and len(labels) != num_classes:
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
@dataclass(frozen=True, kw_only=True)
class NetworkStages:
    """What the stages up to quantize hand on (load, export, cleanup, verify, quantize).

    Attributes:
        network: the network the wrap stage serves: ``cleaned.path``, or the quantized network.
        quantization: the quantize stage's build report entries (``{}`` when it did not run).
    """

    model: Any  # checkpoint.LoadedModel
    spec: PreprocessSpec
    labels: list[str]
    exported: Any  # torch2onnx.ExportResult
    cleaned: Any  # onnx_cleanup.CleanupResult
    checked: Any  # verify.VerifyResult
    images: list[Path]  # the verification photos
    network: Path
    quantization: dict


def network_stages(
    settings: BuildSettings,
    scratch: Path,
    log: Callable[[str], None] = print,
    *,
    clock: _Clock | None = None,
    quantize: bool = True,
) -> NetworkStages:
    """The build's stages from the checkpoint to the network it serves, each writing into ``scratch``.

    ``quantize=False`` stops after verify (the FP32 network), whatever the settings' precision: the
    quantize stage is then :func:`quantize_stage`'s, e.g. several times over one export.
    """
    from cvserve.builders import checkpoint, onnx_cleanup, torch2onnx, verify

    clock = clock or _Clock(log)
    task = settings.task_of()
    spec = task.preprocess(settings.preprocess)
    with clock.stage("load"):
        model = checkpoint.load_model(settings.checkpoint, settings.arch)
        # Check the labels before the (slow) export: one forward pass tells the number of classes.
        output_shape = checkpoint.output_shape(model, spec.tensor_shape)
        labels = _labels(settings.labels, task.num_classes(output_shape))
    with clock.stage("export"):
        exported = torch2onnx.export(
            model,
            scratch / "exported.onnx",
            input_shape=spec.tensor_shape,
            exporter=settings.export.exporter,
            output_shape=output_shape,
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
            compare=task.compare,
        )
        log(
            f"[verify] ONNX Runtime vs PyTorch on {checked.images} real images: max |diff| "
            f"{checked.max_abs_diff:.2e} (tolerance {checked.tolerance:.1e}), answers equal "
            f"{checked.top1_equal}/{checked.images}"
        )
    front = NetworkStages(
        model=model,
        spec=spec,
        labels=labels,
        exported=exported,
        cleaned=cleaned,
        checked=checked,
        images=images,
        network=cleaned.path,
        quantization={},
    )
    if quantize and settings.serving.network_precision(settings.quantization).gated:
        with clock.stage("quantize"):
            network, report = quantize_stage(settings, front, scratch, log)
        front = replace(front, network=network, quantization=report)
    return front


def quantize_stage(
    settings: BuildSettings, front: NetworkStages, scratch: Path, log: Callable[[str], None] = print
) -> tuple[Path, dict]:
    """The quantize stage as ``settings`` asks it of ``front``'s FP32 network: the network to serve and
    the build report's entries. Raises BuildError when the accuracy gate fails."""
    from cvserve.builders import quantize

    plan = settings.serving.plan()
    numerics = settings.serving.network_precision(settings.quantization)
    labels, task, fp32 = front.labels, settings.task_of(), front.cleaned.path
    context = quantize.Context(
        numerics=numerics,
        plan=plan,
        preprocess=front.spec,
        profile=settings.serving.batching.profile,
        metric=task.metric(labels),
        class_names=tuple(labels) if settings.labels else None,
        progress=settings.progress,
    )
    result = quantize.run(settings.quantization, context, fp32, scratch, log)
    # FP16 on a GPU: TensorRT builds FP16 from the FP32 ONNX (quantize returns the converted one for the gate).
    network = fp32 if plan.target == "gpu" and result.precision == "fp16" else result.network
    return network, {
        "quantization": result.quantization,
        "accuracy": result.accuracy,
        "throughput": result.throughput,
    }


def build(settings: BuildSettings, log: Callable[[str], None] = print) -> BuildResult:
    """Build ``settings.name`` into ``settings.repository`` as a new version. Atomic."""
    from cvserve.builders import repository, verify

    task = settings.task_of()
    plan = task.serving_plan(settings.serving.plan())  # a detector's ensemble: a postprocess step too
    if plan.runtime == "tensorrt":  # fail before minutes of export and calibration, not after
        from cvserve._extras import require

        require("tensorrt", extra="tensorrt", purpose="to build TensorRT engines (--runtime tensorrt)")
    batching = settings.serving.batching
    profile = batching.profile
    numerics = settings.serving.network_precision(settings.quantization)
    precision = numerics.precision
    log(f"[plan] {plan.layout} layout, {plan.runtime}, {precision} (float layers in {numerics.float_parts}) "
        f"on {hardware.summary()}")  # fmt: skip
    clock = _Clock(log)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cvserve-build-") as scratch_dir:
        scratch = Path(scratch_dir)
        front = network_stages(settings, scratch, log, clock=clock)
        model, spec, labels, exported, cleaned, checked = (
            front.model, front.spec, front.labels, front.exported, front.cleaned, front.checked
        )  # fmt: skip
        images, network, quant_report = front.images, front.network, front.quantization
        with clock.stage("wrap"):
            # Only the single layout's python model runs the network and counts what it answers.
            features = DEFAULT_FEATURE_DIMS if settings.serving.monitor_features else 0
            served = task.wrap(
                network,
                scratch / "served.onnx",
                spec,
                features=features if plan.layout == "single" else 0,
                plan=plan,
            )
        with clock.stage("engine"):
            artifact = _engine(plan, precision, profile, served, spec, scratch, log)
        with clock.stage("check"):
            served_check = task.check(
                verify.CheckInputs(
                    served_file=artifact.path,
                    runtime=plan.runtime,
                    reference=cleaned.path,
                    images=[p.read_bytes() for p in images],
                    spec=spec,
                    precision=numerics.float_parts,
                )
            )
            if served_check is not None:
                log(f"[check] served {plan.runtime} network vs the float reference: {served_check.summary()}")
                if precision == "fp32":
                    served_check.require_equal()
        with clock.stage("admission"):  # the queue bound, from the SLO and the measured throughput
            scheduling, admission = _admission.admission(
                batching, plan, artifact.path, images, spec, log, precision=numerics.float_parts
            )
            if settings.serving.from_tune is not None:
                admission["source"] = f"--from-tune {settings.serving.from_tune}"
        reference = None
        if task.monitored:  # the signals of held-out images, what drift is measured against
            with clock.stage("reference"):
                reference = _reference(
                    settings, plan, served, artifact, spec, images, numerics.float_parts, log
                )
        shape = tc.PipelineShape(
            feature_dims=served.feature_dims,
            pixels_shape=served.pixels_shape,
            top_k=served.rows,
            labels=labels,
            precision=precision,
            float_parts=numerics.float_parts,
            execution_env=settings.serving.execution_env,
            task=task.name,
            nms=settings.detection,
        )
        configs = tc.pipeline_configs(settings.name, plan, shape, scheduling, settings.serving.policy)
        report = {
            "schema": REPORT_SCHEMA,
            "name": settings.name,
            "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            "task": task.report(served),
            "checkpoint": {
                "path": str(settings.checkpoint),
                "sha256": sha256(Path(settings.checkpoint)),
                "kind": model.kind,
            },
            "hardware": {**hardware.cpu().as_dict(), "summary": hardware.summary()},
            "network": {
                **plan.as_dict(),
                "precision": precision,
                # read back from the compiled network by the check stage (the decision where it cannot run)
                "float_parts": served_check.precision if served_check else numerics.float_parts,
                "layer_precisions": served_check.layer_precisions if served_check else None,
                "file": artifact.path.name,
                "sha256": sha256(artifact.path),
                "size_bytes": sum(p.stat().st_size for p in artifact.files),
                "exporter": exported.exporter,
                "opset": exported.opset,
                "num_classes": served.num_classes,
                "top_k": served.rows,
                "feature_dims": served.feature_dims,
            },
            "engine_profile": profile.to_report(),
            "preprocess": json.loads(spec.to_json()),
            # the absolute settings the configs carry, and the flags that build them again
            "batching": {**scheduling.as_dict(), "slo_p95_ms": batching.slo_p95_ms},
            "build_flags": tc.Batching.of(scheduling, plan.roles, slo_p95_ms=batching.slo_p95_ms).flags(),
            "quantization": quant_report.get("quantization"),
            "accuracy": quant_report.get("accuracy"),
            "throughput": quant_report.get("throughput"),
            "verification": {
                **checked.as_dict(),
                "cleanup_nodes": [cleaned.nodes_before, cleaned.nodes_after],
                "served": served_check.as_dict() if served_check is not None else None,
            },
            "engine": artifact.details,
            "admission": admission,
        }
        with clock.stage("write"), repository.staged_build(settings.repository, settings.name) as staged:
            report["version"] = staged.version
            _write_models(staged, plan, spec, artifact, configs, task)
            report["timings_s"] = {**clock.timings, "total": round(time.perf_counter() - started, 3)}
            _write_report(staged.version_dir(rt.ENTRY), report)
            if reference is not None:
                reference.save(staged.version_dir(rt.ENTRY))
    log(
        f"built {settings.name} version {report['version']} ({plan.layout} layout, {plan.runtime}, "
        f"{precision}, float layers in {report['network']['float_parts']}) into {settings.repository} in {time.perf_counter() - started:.1f} s"
    )
    return BuildResult(
        name=settings.name,
        version=report["version"],
        repository=settings.repository,
        timings_s=clock.timings,
        report=report,
    )


def _reference(settings, plan, served, artifact, spec, images, precision: str, log):
    """The reference stage: the served network (its ONNX where the runtime does not run here) over
    held-out images, counted as the served model counts (cvserve.monitor.reference)."""
    from cvserve.builders.runners import RUNTIMES
    from cvserve.monitor import reference as ref

    data, source = ref.held_out_images(
        settings.quantization.validation, images, settings.serving.reference_images
    )
    network, runtime = artifact.path, plan.runtime
    if runtime not in RUNTIMES:  # TensorRT engines: the served graph they were built from
        network, runtime, precision = served.path, "onnxruntime", "f32"
    result = ref.build_reference(
        network,
        runtime,
        data,
        source,
        spec,
        num_classes=served.num_classes,
        feature_dims=served.feature_dims,
        precision=precision,
    )
    c = result.counts
    log(f"[reference] {c.images} images from {source}: mean top-1 confidence {c.mean_confidence:.3f}")
    return result


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


def _write_models(staged, plan: rt.ServingPlan, spec: PreprocessSpec, artifact, configs, task) -> None:
    """Every model of the layout into the staged version folders; each python model gets the same
    helper files beside it (the task's python_models say which model file plays which role)."""
    for role, model_file in task.python_models(plan.roles).items():
        folder = staged.version_dir(role)
        _copy_resource("cvserve.model_repository", model_file, folder / "model.py")
        for package, name, copied in task.beside:
            _copy_resource(package, name, folder / copied)
        _copy_resource("cvserve.client", "contract.py", folder / "cvserve_contract.py")
        _copy_resource("cvserve.model_repository", "decoding.py", folder / "cvserve_decoding.py")
        _copy_resource("cvserve.builders", "preprocessing.py", folder / "cvserve_preprocessing.py")
        _copy_resource("cvserve.builders", "runners.py", folder / "cvserve_runners.py")
        _copy_resource("cvserve", "hardware.py", folder / "cvserve_hardware.py")
        _copy_resource("cvserve.monitor", "signals.py", folder / "cvserve_signals.py")
        spec.save(folder)
    network_dir = staged.version_dir(plan.roles.network)
    for f in artifact.files:
        shutil.copy2(f, network_dir / f.name)
    staged.version_dir(rt.ENTRY)
    for role, cfg in configs.items():
        staged.write_config(role, cfg)


def _write_report(directory: Path, report: dict) -> None:
    (directory / BUILD_REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    try:
        from cvserve.builders.report import render_markdown

        markdown = render_markdown(report)
    except ImportError:
        return
    (directory / "build_report.md").write_text(markdown)
