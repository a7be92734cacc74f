"""PyTorch -> ONNX with a dynamic batch dimension, checked by the ONNX checker and shape inference."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from cvserve._extras import require
from cvserve.builders.checkpoint import LoadedModel
from cvserve.errors import BuildError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 18


@dataclass(kw_only=True)
class ExportResult:
    path: Path
    exporter: str  # "dynamo" or "torchscript"
    output_shape: tuple[int, ...]  # without the batch: (classes,) of a classifier, a detector's raw head
    opset: int

    @property
    def num_classes(self) -> int:
        return self.output_shape[0]


def _example(shape: tuple[int, ...], batch: int = 2):
    torch = require("torch")
    gen = torch.Generator().manual_seed(0)
    return torch.randn((batch, *shape), generator=gen)


@contextlib.contextmanager
def _quiet():
    """The exporters are chatty (progress lines, deprecation warnings): keep the build output readable."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(level)


def export(
    model: LoadedModel,
    path: Path,
    *,
    input_shape: tuple[int, ...],
    exporter: str = "auto",
    output_shape: tuple[int, ...] | None = None,
) -> ExportResult:
    """Export to ONNX with input ``input`` [batch, *input_shape] and output ``logits`` [batch, classes].

    ``output_shape`` (without the batch, as PyTorch returned it) pins the output's dimensions where the
    exporter left them symbolic (TorchScript exports of concatenations, a detector's head).
    ``exporter="auto"`` uses the torch.export-based (dynamo) exporter, PyTorch's maintained path,
    except for TorchScript modules, which only the TorchScript exporter takes.
    """
    torch = require("torch", purpose="to export models")
    require("onnx", purpose="to export models")
    if exporter == "auto":
        exporter = "torchscript" if model.kind == "torchscript" else "dynamo"
    module = model.module
    example = _example(input_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet(), torch.no_grad():
            if exporter == "dynamo":
                if model.kind == "exported_program":
                    module = module.module()
                batch = torch.export.Dim("batch", min=1, max=4096)
                how = {"dynamic_shapes": ({0: batch},), "opset_version": OPSET, "dynamo": True,
                       "external_data": False}  # fmt: skip
            elif exporter == "torchscript":
                how = {"dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                       "opset_version": 17, "dynamo": False}  # fmt: skip
            else:
                raise BuildError(f"unknown exporter {exporter!r}: use auto, dynamo or torchscript")
            torch.onnx.export(
                module, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], **how
            )
    except BuildError:
        raise
    except Exception as exc:
        first = "\n".join(str(exc).strip().splitlines()[:3])
        raise BuildError(f"ONNX export ({exporter}) failed: {type(exc).__name__}: {first}") from None
    if output_shape is not None:
        _pin_output(path, output_shape)
    shape = check(path)
    return ExportResult(
        path=path, exporter=exporter, output_shape=shape, opset=OPSET if exporter == "dynamo" else 17
    )


def _pin_output(path: Path, shape: tuple[int, ...]) -> None:
    onnx = require("onnx")
    model = onnx.load(str(path))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(dims) != len(shape) + 1:
        raise BuildError(f"the exported output has rank {len(dims)}, PyTorch's has {len(shape) + 1}")
    for dim, value in zip(list(dims)[1:], shape, strict=True):
        dim.Clear()
        dim.dim_value = int(value)
    onnx.save(model, str(path))


def check(path: Path) -> tuple[int, ...]:
    """Run the ONNX checker and shape inference; return the output's fixed shape without the batch."""
    onnx = require("onnx")
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise BuildError(f"ONNX checker rejected {path.name}: {exc}") from None
    outputs = inferred.graph.output
    if len(outputs) != 1:
        raise BuildError(f"a served network has one output, the exported model has {len(outputs)}")
    dims = outputs[0].type.tensor_type.shape.dim
    if len(dims) < 2 or not all(d.dim_value for d in list(dims)[1:]):
        raise BuildError(
            "the model's output must be [batch, classes] (or a detector's fixed head), got "
            f"{[d.dim_value or d.dim_param for d in dims]}"
        )
    if not dims[0].dim_param:
        raise BuildError("the exported model has a fixed batch size; the batch dimension must be dynamic")
    return tuple(int(d.dim_value) for d in list(dims)[1:])
