"""Reference architectures in plain torch, state-dict compatible with torchvision.

Use them with ``cvserve build --arch cvserve.builders.architectures:mobilenet_v2``; any importable
``module:callable`` that returns an ``nn.Module`` works the same way.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "MobileNetV2": "mobilenet",
    "mobilenet_v2": "mobilenet",
    "ResNet": "resnet",
    "resnet18": "resnet",
    "resnet34": "resnet",
    "resnet50": "resnet",
    "resnet101": "resnet",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    # Lazy: importing this package does not import torch; the first use does (or names the extra).
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
