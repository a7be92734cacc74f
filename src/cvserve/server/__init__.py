"""The embedded Triton Inference Server (``cvserve serve``).

Runs the real ``tritonserver`` binary shipped in the nvidia-pytriton wheel, not PyTriton's Python API.
"""

from cvserve.server.process import ServerSettings, TritonServer, check_repository, free_port
from cvserve.server.runtime import TritonRuntime, ensure_runtime

__all__ = [
    "ServerSettings",
    "TritonRuntime",
    "TritonServer",
    "check_repository",
    "ensure_runtime",
    "free_port",
]
