"""cvserve's thin client: classify images and run models on a cvserve (Triton) server over gRPC.

Its core install needs only numpy, tritonclient[grpc] and grpcio; Pillow (``cvserve[images]``) is
imported when numpy arrays or PIL images are sent, prometheus-client when metrics are turned on.

Example:
    >>> from cvserve.client import Client
    >>> with Client("localhost:8001", model="mobilenet_v2") as client:  # doctest: +SKIP
    ...     for top in client.classify(["cat.jpg", "dog.png"], top_k=3):
    ...         print(top[0].label, f"{top[0].score:.2f}")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Where each public name lives. Imported on first use (PEP 562), so that ``cvserve.client.contract``
# (standard library only) can be imported by the server tools without gRPC.
_PUBLIC = {
    "AccessDenied": "errors",
    "AsyncClient": "aio",
    "Classification": "types",
    "Client": "sync",
    "ClientError": "errors",
    "ClientMetrics": "metrics",
    "ClientOptions": "_options",
    "DeadlineExceeded": "errors",
    "Detection": "types",
    "InvalidInput": "errors",
    "MissingDependency": "errors",
    "ModelInfo": "types",
    "ModelNotFound": "errors",
    "RetryBudget": "_retry",
    "RetryPolicy": "_retry",
    "ServerError": "errors",
    "ServerUnavailable": "errors",
    "TensorSpec": "types",
}

if TYPE_CHECKING:
    from cvserve.client._options import ClientOptions
    from cvserve.client._retry import RetryBudget, RetryPolicy
    from cvserve.client.aio import AsyncClient
    from cvserve.client.errors import (
        AccessDenied,
        ClientError,
        DeadlineExceeded,
        InvalidInput,
        MissingDependency,
        ModelNotFound,
        ServerError,
        ServerUnavailable,
    )
    from cvserve.client.metrics import ClientMetrics
    from cvserve.client.sync import Client
    from cvserve.client.types import Classification, Detection, ModelInfo, TensorSpec


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'cvserve.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cvserve.client.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


__all__ = [
    "AccessDenied",
    "AsyncClient",
    "Classification",
    "Client",
    "ClientError",
    "ClientMetrics",
    "ClientOptions",
    "DeadlineExceeded",
    "Detection",
    "InvalidInput",
    "MissingDependency",
    "ModelInfo",
    "ModelNotFound",
    "RetryBudget",
    "RetryPolicy",
    "ServerError",
    "ServerUnavailable",
    "TensorSpec",
]
