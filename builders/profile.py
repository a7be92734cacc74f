"""The engine profile: the batch sizes a served network is built for, defined once.

Every reader imports it: the TensorRT engine builder (its optimization profile), the Triton config
writer (ONNX Runtime's TensorRT accelerator shapes, the dynamic batcher's bounds), the quantization
stage (throughput is measured at the opt batch) and the tuner (no candidate may form a batch outside
the profile; it reads the profile back from the build report by name).

The rule: min 1; opt the largest preferred batch size, else :data:`DEFAULT_OPT_BATCH` (capped by the
max); max the model's ``max_batch_size``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cvserve.errors import UserInputError

DEFAULT_OPT_BATCH = 8  # the batch a network is tuned and measured at when no preferred size is given
REPORT_KEY = "engine_profile"  # its field in build_report.json
SCHEMA = 1  # version of that field


@dataclass(frozen=True, kw_only=True)
class EngineProfile:
    """Batch sizes a network serves: ``min_batch <= opt_batch <= max_batch``."""

    min_batch: int = 1
    opt_batch: int
    max_batch: int

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise UserInputError(
                f"an engine profile needs 1 <= min <= opt <= max batch, got "
                f"{self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )

    @classmethod
    def for_batching(cls, max_batch_size: int, preferred_batch_sizes: Sequence[int] = ()) -> EngineProfile:
        """The profile of a model with ``max_batch_size`` and dynamic batching ``preferred_batch_sizes``."""
        if max_batch_size < 1:
            raise UserInputError(f"--max-batch-size must be at least 1, got {max_batch_size}")
        opt = max(preferred_batch_sizes) if preferred_batch_sizes else min(DEFAULT_OPT_BATCH, max_batch_size)
        return cls(min_batch=1, opt_batch=opt, max_batch=max_batch_size)

    def covers(self, batch: int) -> bool:
        return self.min_batch <= batch <= self.max_batch

    def shapes(self, sample_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """``{"min": (1, *sample_shape), "opt": ..., "max": ...}`` for one input."""
        return {
            "min": (self.min_batch, *sample_shape),
            "opt": (self.opt_batch, *sample_shape),
            "max": (self.max_batch, *sample_shape),
        }

    def to_report(self) -> dict[str, int]:
        return {
            "schema": SCHEMA,
            "min_batch": self.min_batch,
            "opt_batch": self.opt_batch,
            "max_batch": self.max_batch,
        }

    @classmethod
    def from_report(cls, report: Mapping) -> EngineProfile | None:
        """The profile recorded in a build report; ``None`` when the report has none (older builds)."""
        field = report.get(REPORT_KEY)
        if not field:
            return None
        if field.get("schema") != SCHEMA:
            raise UserInputError(
                f"the build report's {REPORT_KEY} has schema {field.get('schema')!r}; this cvserve reads "
                f"schema {SCHEMA}: rebuild the model or upgrade cvserve"
            )
        return cls(min_batch=field["min_batch"], opt_batch=field["opt_batch"], max_batch=field["max_batch"])
