"""The versions a release compares, as the model repository holds them: config, labels, build facts,
the reference statistics of the held-out images (``reference_stats.json``, cvserve.monitor).

Read from disk only, so that a release can check everything before it touches the server. The release
works on the ``single`` serving layout (one model NAME); the ``ensemble`` layout is refused in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders import triton_config as tc
from cvserve.builders.repository import SNAPSHOT
from cvserve.errors import NotFoundError, UserInputError

CONFIG = "config.pbtxt"
BUILD_REPORT = "build_report.json"
REFERENCE = "reference_stats.json"  # cvserve.monitor.reference.REFERENCE_FILE
UNKNOWN = "unknown"


@dataclass(frozen=True, kw_only=True)
class ModelVersion:
    """One version of the model NAME in the repository.

    Attributes:
        config: the configuration this version is served with: its build snapshot
            (``NAME/V/config.pbtxt.build``), else the model's current ``config.pbtxt``.
        labels: class names from the config's ``labels`` parameter (``None``: class ``i`` is ``str(i)``).
        build: facts from ``NAME/V/build_report.json`` (see :func:`build_facts`).
        reference: ``NAME/V/reference_stats.json`` as written (``None``: built before references);
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
    path = Path(repository) / name / CONFIG
    if not path.is_file():
        raise NotFoundError(
            f"{name} is not in the model repository {repository} (no {name}/{CONFIG}): "
            "give --repository, the folder the server serves"
        )
    cfg = _parse(path)
    if cfg.platform == "ensemble" or cfg.HasField("ensemble_scheduling"):
        raise UserInputError(
            f"{name} is served with the ensemble layout; cvserve release supports the single layout only "
            "for now: build the versions with the single layout"
        )
    return cfg


def _parse(path: Path) -> mc.ModelConfig:
    try:
        return tc.parse(path.read_text())
    except Exception as exc:  # protobuf's ParseError names the line
        raise UserInputError(f"{path} is not a valid Triton model configuration: {exc}") from None


def versions_on_disk(repository: Path, name: str) -> list[int]:
    d = Path(repository) / name
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()) if d.is_dir() else []


def served_by_config(repository: Path, name: str) -> int | None:
    """The version unversioned requests get when NAME is loaded from the repository as it is now."""
    cfg = model_config(repository, name)
    on_disk = versions_on_disk(repository, name)
    policy = cfg.version_policy.WhichOneof("policy_choice")
    if policy == "specific":
        pinned = [v for v in cfg.version_policy.specific.versions if v in on_disk]
        return max(pinned, default=None)
    return max(on_disk, default=None)  # latest:N and all both serve the highest version to them


def load_version(repository: Path, name: str, version: int) -> ModelVersion:
    """Version ``version`` of NAME: its config, labels and build facts.

    Raises:
        NotFoundError: the version folder is not there (the message lists the versions present).
    """
    current = model_config(repository, name)
    directory = Path(repository) / name / str(version)
    if not directory.is_dir():
        have = versions_on_disk(repository, name)
        raise NotFoundError(
            f"version {version} of {name} is not in {repository}; versions present: {have or 'none'}"
        )
    snapshot = directory / SNAPSHOT
    config = _parse(snapshot) if snapshot.is_file() else current
    reference = _read_json(directory / REFERENCE)
    return ModelVersion(
        name=name,
        version=version,
        directory=directory,
        config=config,
        labels=labels_of(config),
        build={**build_facts(_read_json(directory / BUILD_REPORT)), "reference": reference_facts(reference)},
        reference=reference,
    )


def labels_of(config: mc.ModelConfig) -> list[str] | None:
    """The class names in a config's ``labels`` parameter (contract v2), or ``None``."""
    if "labels" not in config.parameters:
        return None
    text = config.parameters["labels"].string_value
    try:
        labels = json.loads(text)
    except json.JSONDecodeError:
        labels = None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise UserInputError(
            f"model {config.name}: its 'labels' parameter is not a JSON array of class names"
        )
    return labels


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{path} is not readable JSON ({exc}): rebuild the version") from None


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
        "preprocess": r.get("preprocess") or None,
        "quantization_method": method,
        "quantization": quantization or None,
        "accuracy": r.get("accuracy") or None,
        "throughput": r.get("throughput") or None,
        "reference": None,  # reference_stats.json, not the build report: load_version fills it in
    }
