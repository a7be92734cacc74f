"""Accuracy check of the exported network against the original PyTorch model on real images."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cvserve._extras import require
from cvserve.builders.checkpoint import LoadedModel
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


def verify(
    model: LoadedModel, onnx_path: Path, batch: np.ndarray, *, atol: float = 1e-3, rtol: float = 1e-3
) -> VerifyResult:
    """Run the same preprocessed batch through PyTorch and ONNX Runtime and compare.

    The tolerance is ``atol + rtol * max|reference|`` on the outputs; top-1 must agree on every image.
    Raises :class:`BuildError` on a mismatch.
    """
    reference = torch_outputs(model, batch)
    session = ort_session(onnx_path)
    got = session.run(None, {session.get_inputs()[0].name: batch})[0]
    if got.shape != reference.shape:
        raise BuildError(f"ONNX output shape {got.shape} differs from PyTorch's {reference.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - reference)))
    tol = atol + rtol * float(np.max(np.abs(reference)))
    same = int(np.sum(got.argmax(1) == reference.argmax(1)))
    result = VerifyResult(images=len(batch), max_abs_diff=diff, tolerance=tol, top1_equal=same)
    if not result.ok:
        raise BuildError(
            f"ONNX Runtime disagrees with PyTorch on {len(batch)} real images: max |diff| {diff:.3g} "
            f"(tolerance {tol:.3g}), top-1 equal on {same}/{len(batch)}"
        )
    return result
