"""Load what the user gave us (state_dict + --arch factory, TorchScript, or ExportedProgram) as a module."""

from __future__ import annotations

import importlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvserve._extras import require
from cvserve.errors import NotFoundError, UserInputError


@dataclass(kw_only=True)
class LoadedModel:
    """A model ready for export, with how it was obtained."""

    module: Any  # torch.nn.Module, torch.jit.ScriptModule or torch.export.ExportedProgram
    kind: str  # "state_dict", "torchscript" or "exported_program"
    source: Path


def resolve_factory(spec: str):
    """``package.module:callable`` -> the callable, with errors that say what to fix."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserInputError(
            f"--arch must look like module:callable (e.g. cvserve.builders.architectures:resnet50), got {spec!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserInputError(f"--arch {spec}: cannot import module {module_name!r} ({exc})") from None
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise UserInputError(f"--arch {spec}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(factory):
        raise UserInputError(f"--arch {spec}: {attr!r} is not callable")
    return factory


def _is_exported_program(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(
            n.endswith(("serialized_exported_program.json", "models/model.json")) or "/models/" in n
            for n in z.namelist()
        )


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def _unwrap_state_dict(obj: Any) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise UserInputError("the checkpoint is not a state_dict (a dict of tensors)")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel/DDP
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _describe_mismatch(exc: RuntimeError) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = "; ".join(lines[1:4]) if len(lines) > 1 else lines[0]
    return detail[:600]


def load_model(checkpoint: str | Path, arch: str | None = None) -> LoadedModel:
    """Load a checkpoint for export.

    Args:
        checkpoint: a ``state_dict`` file (needs ``arch``), a TorchScript file, or a ``torch.export`` archive.
        arch: ``module:callable`` returning an ``nn.Module`` (called with no arguments) for state dicts.
    """
    torch = require("torch", purpose="to build models")
    path = Path(checkpoint)
    if not path.is_file():
        raise NotFoundError(f"checkpoint {path} does not exist")
    if arch is None:
        if _is_exported_program(path):
            try:
                return LoadedModel(module=torch.export.load(str(path)), kind="exported_program", source=path)
            except Exception as exc:
                raise UserInputError(
                    f"{path} looks like a torch.export archive but does not load: {exc}"
                ) from None
        if _is_torchscript(path):
            try:
                return LoadedModel(
                    module=torch.jit.load(str(path), map_location="cpu").eval(),
                    kind="torchscript",
                    source=path,
                )
            except Exception as exc:
                raise UserInputError(f"{path} looks like TorchScript but does not load: {exc}") from None
        raise UserInputError(
            f"{path} is neither TorchScript nor a torch.export archive; for a state_dict pass --arch module:callable"
        )
    factory = resolve_factory(arch)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserInputError(
            f"cannot read {path} as a PyTorch checkpoint: {str(exc).splitlines()[0]}"
        ) from None
    state = _unwrap_state_dict(state)
    try:
        module = factory()
    except Exception as exc:
        raise UserInputError(f"--arch {arch}: calling it failed: {exc}") from None
    if not isinstance(module, torch.nn.Module):
        raise UserInputError(f"--arch {arch} returned {type(module).__name__}, not a torch.nn.Module")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserInputError(
            f"checkpoint {path.name} does not match --arch {arch}: {_describe_mismatch(exc)}"
        ) from None
    return LoadedModel(module=module.eval(), kind="state_dict", source=path)


def output_shape(model: LoadedModel, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Run one forward pass on a dummy batch; the output's shape without the batch dimension."""
    torch = require("torch")
    module = model.module.module() if model.kind == "exported_program" else model.module
    try:
        with torch.no_grad():
            out = module(torch.zeros((2, *input_shape)))
    except Exception as exc:
        raise UserInputError(
            f"the model does not run on input [N, {', '.join(map(str, input_shape))}]: "
            f"{str(exc).splitlines()[0]} (check --input-size and --input-layout)"
        ) from None
    if not hasattr(out, "shape") or out.dim() < 2:
        raise UserInputError(
            f"the model must return one tensor [batch, ...]; it returns {getattr(out, 'shape', type(out))}"
        )
    return tuple(out.shape[1:])


def num_classes(model: LoadedModel, input_shape: tuple[int, ...]) -> int:
    """Run one forward pass on a dummy batch; the output must be [batch, classes]."""
    shape = output_shape(model, input_shape)
    if len(shape) != 1:
        raise UserInputError(f"a classifier returns [batch, classes]; this model returns [batch, {shape}]")
    return int(shape[0])
