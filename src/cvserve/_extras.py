"""Lazy imports of optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from cvserve.errors import MissingDependencyError

# Module name -> the extra that provides it.
_EXTRA_OF = {
    "torch": "build",
    "onnx": "build",
    "onnxscript": "build",
    "onnx_graphsurgeon": "build",
    "polygraphy": "build",
    "onnxruntime": "build",
    "tqdm": "build",
    "tensorrt": "tensorrt",
    "PIL": "images",
    "pytriton": "serve",
    "locust": "loadtest",
    "prometheus_client": "loadtest",
    "matplotlib": "loadtest",
    "kubernetes": "k8s",
    "jinja2": "reports",
    "yaml": "reports",
    "openvino": "serve",
    "nncf": "build",
}


def require(module: str, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``pip install 'cvserve[extra]'``.

    Args:
        module: dotted module name, e.g. ``"onnxruntime.quantization"``.
        extra: the cvserve extra that provides it; looked up from the top-level name when omitted.
        purpose: what it is needed for, shown in the message ("to build models").
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".", 1)[0]
        if exc.name is not None and exc.name.split(".", 1)[0] != top:
            raise  # the package is there but one of *its* imports is broken: a real bug, keep it
        extra = extra or _EXTRA_OF.get(top, "all")
        why = f" {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"{top} is needed{why} but is not installed: pip install 'cvserve[{extra}]'"
        ) from None
