"""Accuracy check of the exported network against the original PyTorch model on real images."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvserve._extras import require
from cvserve.builders.checkpoint import LoadedModel
from cvserve.client import contract
from cvserve.errors import BuildError


@dataclass(kw_only=True)
class VerifyResult:
    images: int
    max_abs_diff: float
    tolerance: float
    top1_equal: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_equal == self.images

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def ort_session(path: Path, threads: int = 0):
    ort = require("onnxruntime", purpose="to verify and serve models")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def torch_outputs(model: LoadedModel, batch: np.ndarray) -> np.ndarray:
    torch = require("torch")
    module = model.module.module() if model.kind == "exported_program" else model.module
    with torch.no_grad():
        return module(torch.from_numpy(batch)).detach().cpu().numpy()


def top1_compare(got: np.ndarray, reference: np.ndarray, tolerance: float) -> tuple[float, int]:
    """The largest elementwise difference, and the images whose top-1 class is PyTorch's."""
    diff = float(np.max(np.abs(got.astype(np.float64) - reference)))
    return diff, int(np.sum(got.argmax(1) == reference.argmax(1)))


def verify(
    model: LoadedModel,
    onnx_path: Path,
    batch: np.ndarray,
    *,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    compare=None,
) -> VerifyResult:
    """Run the same preprocessed batch through PyTorch and ONNX Runtime and compare.

    The tolerance is ``atol + rtol * max|reference|`` on the outputs; ``compare(got, reference,
    tolerance)`` returns the largest difference and the images whose answers agree (the task's: default
    :func:`top1_compare`). The difference must be within the tolerance and every image must agree.
    Raises :class:`BuildError` on a mismatch.
    """
    reference = torch_outputs(model, batch)
    session = ort_session(onnx_path)
    got = session.run(None, {session.get_inputs()[0].name: batch})[0]
    if got.shape != reference.shape:
        raise BuildError(f"ONNX output shape {got.shape} differs from PyTorch's {reference.shape}")
    tol = atol + rtol * float(np.max(np.abs(reference)))
    diff, same = (compare or top1_compare)(got, reference, tol)
    result = VerifyResult(images=len(batch), max_abs_diff=diff, tolerance=tol, top1_equal=same)
    if not result.ok:
        raise BuildError(
            f"ONNX Runtime disagrees with PyTorch on {len(batch)} real images: max |diff| {diff:.3g} "
            f"(tolerance {tol:.3g}), answers equal on {same}/{len(batch)}"
        )
    return result


@dataclass(frozen=True, kw_only=True)
class CheckInputs:
    """What the check stage hands each task's check: the served network file in its runtime and float
    precision, the float reference network, the real images and the preprocessing."""

    served_file: Path
    runtime: str
    reference: Path
    images: list[bytes]
    spec: Any  # PreprocessSpec
    precision: str = "f32"


@dataclass(kw_only=True)
class RuntimeCheck:
    """What every check of a served network records about how its runtime ran it."""

    runtime: str
    precision: str  # the float precision read back from the compiled network
    layer_precisions: dict[str, int]  # compute layers by the precision they run in
    images: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(kw_only=True)
class ServedCheck(RuntimeCheck):
    """The served network (uint8 pixels in, top-k out, in its runtime) against the float reference."""

    top1_equal: int
    topk_equal: int  # images whose whole top-k list is the reference's
    max_score_diff: float
    tolerance: float

    def summary(self) -> str:
        return (
            f"top-1 equal {self.top1_equal}/{self.images}, top-k equal {self.topk_equal}/{self.images}, "
            f"max score diff {self.max_score_diff:.2e}"
        )

    def require_equal(self) -> None:
        """Raise :class:`BuildError` unless the served network gives the reference's answers.

        Top-1 must match on every image and every top-k score must match rank by rank; two classes of
        near-equal score may swap places between runtimes, so the order below top-1 is only reported.
        """
        if self.top1_equal != self.images or self.max_score_diff > self.tolerance:
            raise BuildError(
                f"the served {self.runtime} network ({self.precision}) disagrees with the float reference on {self.images} real "
                f"images: {self.summary()} (tolerance {self.tolerance:.1e})"
            )


def reference_topk(network: Path, pixels: np.ndarray, spec, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The float reference of the served graph: numpy normalisation, the bare network, softmax, top-k."""
    from cvserve.builders.preprocessing import normalize_batch

    session = ort_session(network)
    return softmax_topk(
        session.run(None, {session.get_inputs()[0].name: normalize_batch(pixels, spec)})[0], k
    )


def softmax_topk(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(class indices, probabilities) of the ``k`` most probable classes per row, best first."""
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    index = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return index, np.take_along_axis(probs, index, axis=1)


def open_served(served_file: Path, runtime: str, precision: str):
    """The served network file opened in its runtime and float precision, to be checked; ``None`` for
    a runtime that cannot run here (a TensorRT engine needs its GPU)."""
    from cvserve.builders.runners import RUNTIMES, open_runner

    if runtime not in RUNTIMES:
        return None
    try:
        return open_runner(served_file, runtime, precision=precision)
    except ImportError as exc:
        raise BuildError(f"{runtime} is needed to check the served network: {exc}") from None


def served(given: CheckInputs, tolerance: float = 1e-4) -> ServedCheck | None:
    """Run the served network file in its runtime and ``precision`` (its float layers') on real images
    and compare with the float reference.

    ``None`` for a runtime that cannot run here (a TensorRT engine needs its GPU).
    """
    from cvserve.builders.preprocessing import pixels as crop

    runner = open_served(given.served_file, given.runtime, given.precision)
    if runner is None:
        return None
    batch = np.stack([crop(data, given.spec) for data in given.images])
    out = runner.run(batch)
    index, score = out[contract.CLASS_INDEX], out[contract.SCORE]
    ref_index, ref_score = reference_topk(given.reference, batch, given.spec, index.shape[1])
    return ServedCheck(
        runtime=given.runtime,
        precision=runner.precision,
        layer_precisions=runner.layer_precisions(),
        images=len(batch),
        top1_equal=int(np.sum(index[:, 0] == ref_index[:, 0])),
        topk_equal=int(np.sum(np.all(index == ref_index, axis=1))),
        max_score_diff=float(np.max(np.abs(score - ref_score))),
        tolerance=tolerance,
    )
