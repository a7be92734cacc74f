"""A version's reference: the signals of held-out images, counted at build time by the served network.

``cvserve build`` runs the network it is about to serve over held-out images (the augmented sample
photos the INT8 gate uses, or ``--validation``, or the verification photos when neither is there),
through the served decode, and stores the counts in the version folder next to its build report
(:data:`cvserve.builders.repository.REFERENCE`). :mod:`cvserve.monitor.drift` compares live windows with it; the model card
shows it. The counting is :mod:`cvserve.monitor.signals`, the code the served model runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvserve.builders.repository import REFERENCE, BuiltVersion
from cvserve.errors import NotFoundError, UserInputError
from cvserve.monitor import signals as sg

SCHEMA = 1
DEFAULT_IMAGES = 200  # held-out images counted at build: enough for every bin a live window may fill
_BATCH = 16
HELD_OUT_SEED = 2  # calibration.sample_sets' validation seed: the INT8 gate's held-out images


@dataclass(frozen=True, kw_only=True)
class Reference:
    """The counts of a version's held-out images and where they came from."""

    counts: sg.Counts
    source: str

    def to_dict(self) -> dict:
        c = self.counts
        mean, var = c.feature_moments()
        return {
            "schema": SCHEMA,
            "source": self.source,
            "images": c.images,
            "num_classes": c.num_classes,
            "feature_dims": c.feature_dims,
            "mean_confidence": round(c.mean_confidence, 6),
            "low_confidence_share": round(c.low_confidence_share, 6),
            "low_confidence_below": sg.LOW_CONFIDENCE,
            "histograms": {name: [int(v) for v in h] for name, h in c.histograms().items()},
            "bins": {"classes": sg.class_bucket_labels(c.num_classes), **sg.signal_bins()},
            "feature_mean": [round(float(v), 6) for v in mean],
            "feature_var": [round(float(v), 6) for v in var],
        }

    @classmethod
    def from_dict(cls, data: object, where: str = REFERENCE) -> Reference:
        """Parse a reference; a file that is not one is a :class:`UserInputError` (exit 2) naming ``where``."""

        def bad(why: str) -> UserInputError:
            return UserInputError(
                f"{where} is not a cvserve reference ({why}): rebuild the version", exit_code=2
            )

        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise bad(f"schema {data.get('schema') if isinstance(data, dict) else None}, expected {SCHEMA}")
        try:
            n, d = int(data["images"]), int(data["feature_dims"])
            counts = sg.Counts(num_classes=int(data["num_classes"]), feature_dims=d, images=n)
            hist = data["histograms"]
            for name, expected in counts.histograms().items():
                values = np.asarray(hist[name], dtype=float)
                if values.shape != expected.shape or (values < 0).any():
                    raise bad(f"histogram {name} has {values.size} bins, expected {expected.size}")
                expected[:] = values
            mean = np.asarray(data["feature_mean"], dtype=float)
            var = np.asarray(data["feature_var"], dtype=float)
            if mean.shape != (d,) or var.shape != (d,):
                raise bad(f"feature_mean and feature_var need {d} values")
            counts.confidence_sum = float(data["mean_confidence"]) * n
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"{type(exc).__name__}: {exc}") from None
        if n < 1:
            raise bad("it counts no images")
        # Back to running sums: the mean's positive and negative parts are not kept, only their difference.
        counts.feature_pos, counts.feature_neg = np.maximum(mean, 0) * n, np.maximum(-mean, 0) * n
        counts.feature_squares = (var + mean * mean) * n
        return cls(counts=counts, source=str(data.get("source", "unknown")))

    @classmethod
    def of(cls, version: BuiltVersion) -> Reference:
        """The reference of a built version; a version built without one is a :class:`NotFoundError`
        (exit 2) naming the fix."""
        where = str(version.reference_path)
        if version.reference is None:
            raise NotFoundError(
                f"{where} does not exist: rebuild version {version.version} of {version.name} with this cvserve",
                exit_code=2,
            )
        return cls.from_dict(version.reference, where)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / REFERENCE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def count_images(runner, images: Sequence[bytes], spec, num_classes: int, feature_dims: int) -> sg.Counts:
    """The signals of ``images`` through the served decode and ``runner`` (a served graph), counted."""
    from cvserve.builders.preprocessing import decode_requests

    counts = sg.Counts(num_classes=num_classes, feature_dims=feature_dims)
    for start in range(0, len(images), _BATCH):
        sizes: list[tuple[int, int]] = []
        batch, outcomes = decode_requests([[d] for d in images[start : start + _BATCH]], spec, sizes=sizes)
        for outcome in outcomes:
            if isinstance(outcome, str):
                counts.reject(getattr(outcome, "reason", "corrupt"))
        if batch is not None:
            counts.add(sg.observe(batch, sizes, runner.run(batch), num_classes))
    return counts


def held_out_images(validation: Path | None, fallback: Sequence[Path], count: int) -> tuple[list[bytes], str]:
    """(encoded images, where they come from) for the reference, the INT8 gate's held-out set first."""
    from cvserve.builders import calibration
    from cvserve.errors import NotFoundError

    if validation is not None:
        folder = calibration.load_folder(validation, limit=count)
        return list(folder.data), f"--validation {validation} ({len(folder)} images)"
    try:
        _, sources = calibration.split_sources(sorted(calibration.source_photos()))
        held_out = calibration.sample_set(sources, count, HELD_OUT_SEED)
        return list(
            held_out.data
        ), f"augmented sample photos, the gate's held-out half ({len(held_out)} images)"
    except (NotFoundError, ImportError):
        return [p.read_bytes() for p in fallback], f"the verification photos ({len(fallback)} images)"


def build_reference(
    network: Path,
    runtime: str,
    images: Sequence[bytes],
    source: str,
    spec,
    *,
    num_classes: int,
    feature_dims: int,
    precision: str = "f32",
) -> Reference:
    """The reference of a served network file (OpenVINO IR or ONNX) run by ``runtime`` on the CPU."""
    from cvserve.builders.runners import open_runner

    runner = open_runner(network, runtime, precision=precision)
    return Reference(counts=count_images(runner, images, spec, num_classes, feature_dims), source=source)
