"""``cvserve build``: its flags are derived from :class:`~cvserve.builders.pipeline.BuildSettings`.

Each stage's settings dataclass (preprocessing, export, quantization, serving and batching) is an
argument group; defaults, choices, ranges and help live on the fields (:mod:`cvserve.settings`).
"""

from __future__ import annotations

import argparse

from cvserve.errors import UserInputError


def register(sub: argparse._SubParsersAction) -> None:
    from cvserve.builders.pipeline import BuildSettings
    from cvserve.settings import add_command

    add_command(
        sub,
        "build",
        BuildSettings,
        run_build,
        help="build a PyTorch checkpoint into a served Triton model (a new version, atomically)",
        description="Export a checkpoint to ONNX, clean it up, verify it against PyTorch on real images, "
        "optionally quantize it behind an accuracy gate, wrap it so it takes uint8 pixels and returns "
        "top-k classes, convert it for its runtime, check the served file against the float reference, "
        "and add it as a new version to a Triton model repository, atomically.",
        argument_kwargs=lambda flag: {"nargs": "+"} if flag == "--verify-images" else {},
    )


def settings_from_args(args: argparse.Namespace):
    from cvserve.builders.pipeline import BuildSettings
    from cvserve.settings import from_args

    try:
        return from_args(BuildSettings, args)
    except ValueError as exc:  # the preprocessing spec checks its own values (it runs without cvserve)
        raise UserInputError(_with_flags(str(exc))) from None


def _with_flags(message: str) -> str:
    """The spec names its fields (``resize_shorter``); the user typed flags (``--resize``)."""
    import dataclasses
    import re

    from cvserve.builders.preprocessing import PreprocessSpec
    from cvserve.settings import flag

    for f in dataclasses.fields(PreprocessSpec):
        if f.metadata.get("cvserve.settings", {}).get("cli", True):
            message = re.sub(rf"\b{f.name}\b", flag(PreprocessSpec, f.name), message)
    return message


def run_build(args: argparse.Namespace) -> int:
    from cvserve.builders.pipeline import build

    build(settings_from_args(args))
    return 0
