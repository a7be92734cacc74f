"""The detection contract on the client's side: where a detector keeps its outputs, and parsing them.

A cvserve detector (``cvserve build --task detect``, :mod:`cvserve.client.contract`) takes ``IMAGE``
like a classifier and returns a fixed ``K`` rows per image plus a count: ``BOXES`` FP32 [K, 4]
(x1, y1, x2, y2, original pixels), ``SCORES`` FP32 [K], ``CLASSES`` INT64 [K], ``COUNT`` INT32 [1],
and ``LANDMARKS`` FP32 [K, P, 2] when it finds keypoints. Class names are the config's ``labels``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cvserve.client import contract
from cvserve.client._metadata import image_input, problems_of
from cvserve.client.errors import InvalidInput, ServerError
from cvserve.client.types import Detection, ModelInfo, TensorSpec

_OUTPUTS = {
    contract.BOXES: ("FP32",),
    contract.SCORES: ("FP32",),
    contract.CLASSES: ("INT64", "INT32"),
    contract.COUNT: ("INT32", "INT64"),
}


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """Where a detection model keeps what the client needs."""

    input: TensorSpec
    outputs: tuple[str, ...]  # the names requested, LANDMARKS last when the model has it
    labels: tuple[str, ...]
    max_batch_size: int

    @property
    def landmarks(self) -> bool:
        return contract.LANDMARKS in self.outputs

    def name_of(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)


def detector_spec(info: ModelInfo) -> DetectorSpec:
    """Check that ``info`` describes a cvserve detector.

    Raises:
        InvalidInput: the model does not take encoded images in and give boxes out.
    """
    problems = problems_of(info)
    have = {o.name: o.datatype for o in info.outputs}
    missing = [n for n, types in _OUTPUTS.items() if have.get(n) not in types]
    if missing:
        problems.append(f"it needs outputs {', '.join(_OUTPUTS)}; it lacks {', '.join(missing)}")
    if problems:
        raise InvalidInput(
            f"model '{info.name}' is not a cvserve detector: {'; '.join(problems)}; "
            "use classify() or infer() for other models, or build it with cvserve build --task detect",
            model=info.name,
        )
    names = tuple(_OUTPUTS) + ((contract.LANDMARKS,) if contract.LANDMARKS in have else ())
    return DetectorSpec(image_input(info), names, info.labels, info.max_batch_size)


def parse_detections(result: Any, spec: DetectorSpec, n: int, model: str) -> list[list[Detection]]:
    """Per image, its detections (best first) from a response's fixed rows and count."""
    arrays = {}
    for name in spec.outputs:
        array = result.as_numpy(name)
        if array is None or len(array) != n:
            raise ServerError(
                f"model '{model}' returned no {name} rows for {n} images; check the model", model=model
            )
        arrays[name] = array
    boxes, scores = arrays[contract.BOXES].reshape(n, -1, 4), arrays[contract.SCORES].reshape(n, -1)
    classes, count = arrays[contract.CLASSES].reshape(n, -1), arrays[contract.COUNT].reshape(n)
    marks = arrays[contract.LANDMARKS].reshape(n, boxes.shape[1], -1, 2) if spec.landmarks else None
    out = []
    for i in range(n):
        m = int(count[i])
        if not 0 <= m <= boxes.shape[1]:
            raise ServerError(f"model '{model}' returned COUNT {m} for {boxes.shape[1]} rows", model=model)
        out.append([
            Detection(
                box=tuple(float(v) for v in boxes[i, j]),  # type: ignore[arg-type]
                score=float(scores[i, j]),
                index=int(classes[i, j]),
                label=spec.name_of(int(classes[i, j])),
                landmarks=_points(marks[i, j]) if marks is not None else None,
            )
            for j in range(m)
        ])  # fmt: skip
    return out


def _points(array: np.ndarray) -> tuple[tuple[float, float], ...]:
    return tuple((float(x), float(y)) for x, y in array)


__all__ = ["DetectorSpec", "detector_spec", "parse_detections"]
