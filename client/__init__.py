"""cvserve's thin client: classify images and run models on a cvserve (Triton) server over gRPC.

Its core install needs only numpy, tritonclient[grpc] and grpcio; Pillow (``cvserve[images]``) is
imported when numpy arrays or PIL images are sent, prometheus-client when metrics are turned on.

Example:
    >>> from cvserve.client import Client
    >>> with Client("localhost:8001", model="mobilenet_v2") as client:  # doctest: +SKIP
    ...     for top in client.classify(["cat.jpg", "dog.png"], top_k=3):
    ...         print(top[0].label, f"{top[0].score:.2f}")
"""

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
