"""The versions a release compares, as the model repository holds them: config, labels, build facts,
the reference statistics of the held-out images. :class:`cvserve.builders.repository.Repository` reads
the files; this module turns them into what a release and a model card show.

Read from disk only, so that a release can check everything before it touches the server. The release
works on the ``single`` serving layout (one model NAME); the ``ensemble`` layout is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders import triton_config as tc
from cvserve.builders.repository import BuiltVersion, Repository
from cvserve.errors import UserInputError

UNKNOWN = "unknown"


@dataclass(frozen=True, kw_only=True)
class ModelVersion:
    """One version of the model NAME as a release and a model card see it.

    Attributes:
        config: the configuration this version is served with (:class:`BuiltVersion`'s).
        labels: class names from the config's ``labels`` parameter (``None``: class ``i`` is ``str(i)``).
        build: facts from its build report (see :func:`build_facts`) and its reference.
        reference: its reference statistics as written (``None``: built before references);
            :class:`cvserve.monitor.reference.Reference` parses it.
    """

    name: str
    version: int
    directory: Path
    config: mc.ModelConfig
    labels: list[str] | None
    build: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] | None = None


def model_config(repository: Path, name: str) -> mc.ModelConfig:
    """NAME's current configuration, after checking that the release supports its layout.

    Raises:
        NotFoundError: the repository or NAME is not there.
        UserInputError: NAME is an ensemble (the ``ensemble`` layout is not supported yet).
    """
    tc.check_name(name)
    cfg = Repository(repository).config(name)
    if cfg.platform == "ensemble" or cfg.HasField("ensemble_scheduling"):
        raise UserInputError(
            f"{name} is served with the ensemble layout; cvserve release supports the single layout only "
            "for now: build the versions with the single layout"
        )
    return cfg


def load_version(repository: Path, name: str, version: int) -> ModelVersion:
    """Version ``version`` of NAME: its config, labels and build facts.

    Raises:
        NotFoundError: the version folder is not there (the message lists the versions present).
    """
    model_config(repository, name)
    return from_built(Repository(repository).version(name, version))


def from_built(v: BuiltVersion) -> ModelVersion:
    return ModelVersion(
        name=v.name,
        version=v.version,
        directory=v.directory,
        config=v.config,
        labels=v.labels,
        build={**build_facts(v.build_report), "reference": reference_facts(v.reference)},
        reference=v.reference,
    )


def _pick(report: dict, *paths: str) -> Any:
    """The first of ``paths`` ("a.b.c") present and not null in ``report``, else ``UNKNOWN``."""
    for path in paths:
        value: Any = report
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            return value
    return UNKNOWN


def _layers(counts: Any) -> str:
    """``{"i8": 52, "f32": 13}`` -> ``"i8 52, f32 13"``."""
    if not isinstance(counts, dict):
        return str(counts)
    return ", ".join(f"{precision} {n}" for precision, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def reference_facts(reference: dict | None) -> dict[str, Any] | None:
    """What a model card shows of a reference: where it came from, confidence, and each signal's
    non-empty bins as ``"lower edge: images"``; ``None`` for a version built without one."""
    if not isinstance(reference, dict) or "histograms" not in reference:
        return None
    bins, histograms = reference.get("bins", {}), reference["histograms"]
    signals = {}
    for name, counts in histograms.items():
        labels = bins.get(name) or [str(i) for i in range(len(counts))]
        signals[name] = ", ".join(f"{label}: {n}" for label, n in zip(labels, counts, strict=False) if n)
    return {
        "source": reference.get("source", UNKNOWN),
        "images": reference.get("images", UNKNOWN),
        "mean_confidence": reference.get("mean_confidence"),
        "low_confidence_share": reference.get("low_confidence_share"),
        "low_confidence_below": reference.get("low_confidence_below"),
        "feature_dims": reference.get("feature_dims", 0),
        "signals": signals,
    }


def build_facts(report: dict | None) -> dict[str, Any]:
    """What a release and a model card need from a build report: schema 2-3 keys, schema 1 as fallback.

    Every missing fact is ``"unknown"``; ``accuracy``, ``quantization`` and ``throughput`` are ``None``
    when the build did not produce them (FP32 builds have no accuracy gate).
    """
    r = report or {}
    quantization = r.get("quantization") if (r.get("schema") or 1) >= 2 else r.get("calibration")
    precision = _pick(r, "network.precision", "precision")
    if quantization:
        method = _pick(quantization, "method", "calibration_method")
    else:
        method = "none" if precision == "fp32" else UNKNOWN
    return {
        "found": report is not None,
        "schema": r.get("schema", 1 if report else None),
        "created": _pick(r, "created"),
        "task": _pick(r, "task.name"),  # "unknown": built before tasks existed, a classifier
        "checkpoint_path": _pick(r, "checkpoint.path", "checkpoint"),
        "checkpoint_sha256": _pick(r, "checkpoint.sha256"),
        "checkpoint_kind": _pick(r, "checkpoint.kind", "source_kind"),
        "layout": _pick(r, "network.layout"),
        "runtime": _pick(r, "network.runtime", "runtime"),
        "precision": precision,
        "float_parts": _pick(r, "network.float_parts"),  # schema 3: read back from the compiled network
        "layer_precisions": _layers(_pick(r, "network.layer_precisions")),
        "built_on": _pick(r, "hardware.summary"),
        "target": _pick(r, "network.target", "target"),
        "network_file": _pick(r, "network.file"),
        "network_sha256": _pick(r, "network.sha256", "sha256"),
        "size_bytes": _pick(r, "network.size_bytes", "size_bytes"),
        "num_classes": _pick(r, "network.num_classes", "num_classes"),
        "top_k": _pick(r, "network.top_k", "top_k"),
        # what each image gets back, as the task states it; a classifier built before it: its top k
        "returns": _pick(r, "task.returns", "network.top_k", "top_k"),
        "preprocess": r.get("preprocess") or None,
        "quantization_method": method,
        "quantization": quantization or None,
        "accuracy": r.get("accuracy") or None,
        "throughput": r.get("throughput") or None,
        "reference": None,  # the reference file, not the build report: from_built fills it in
    }
