"""cvserve: build, serve, load-test, tune and deploy computer-vision models on Triton.

The import namespace maps the repository's top-level folders:

* ``cvserve.builders``  (``builders/``): checkpoint -> ONNX -> (quantized) -> Triton repository
* ``cvserve.model_repository`` (``model_repository/``): the python-backend models copied into builds
* ``cvserve.client``    (``client/``): the thin gRPC client product services embed
* ``cvserve.loadtests`` (``loadtests/``): Locust suites and release gates
* ``cvserve.server``: the embedded Triton Inference Server launcher (``cvserve serve``)
* ``cvserve.tune``: the dynamic-batching tuner (``cvserve tune``)
* ``cvserve.k8s``: Kubernetes helpers (``cvserve k8s status``); the chart lives in ``helm/``

Importing ``cvserve`` never imports torch, onnx, locust or kubernetes.
"""

from cvserve.errors import CvserveError

__version__ = "0.1.0"

__all__ = ["CvserveError", "__version__"]
