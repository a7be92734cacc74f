"""What cvserve's python-backend models share: their config, their threads, decoding IMAGE, answering.

Copied by ``cvserve build`` as ``cvserve_decoding.py`` next to the model that decodes (``NAME`` in the
single layout, ``NAME_preprocess`` in the ensemble), with ``cvserve_preprocessing.py`` (the builder's
preprocessing) and ``cvserve_runners.py`` (the thread budget).

The images of every request are decoded and cropped on a thread pool (Pillow releases the GIL); a
request with an image that cannot be decoded, or over a limit, fails alone with INVALID_ARGUMENT and a
message that names the image and the limit; the others get their rows of the outputs.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import cvserve_contract as contract
import numpy as np
import triton_python_backend_utils as pb_utils
from cvserve_preprocessing import PreprocessSpec, decode_each, decode_requests, placed
from cvserve_runners import open_runner, thread_budget


class DecodingModel:
    """Base of the python models that take encoded images (``IMAGE``) and answer per request."""

    def setup(self, args):
        """Read the config and the spec, size the threads (``cvserve_runners.thread_budget``)."""
        config = json.loads(args["model_config"])
        self.version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        self.budget = thread_budget(
            instances,
            intra_op=int(self.params.get(contract.INTRA_OP_THREADS_PARAMETER) or 0),
            decode=int(self.params.get(contract.DECODE_THREADS_PARAMETER) or 0),
        )
        self.spec = PreprocessSpec.load(self.version_dir)
        self.pool = ThreadPoolExecutor(self.budget.decode) if self.budget.decode > 1 else None

    def open_network(self, args):
        """Open the served network in the config's runtime and float precision, warm it up, export
        what it runs in (``cvserve_network_info``) and log it."""
        network = os.path.join(self.version_dir, self.params["network_file"])
        self.runner = open_runner(
            network,
            self.params["runtime"],
            threads=self.budget.intra_op,
            precision=self.params.get(contract.PRECISION_PARAMETER, "f32"),  # builds before it: f32
        )
        h, w = self.spec.input_size
        # The first call allocates: not on a request. Its outputs tell what the graph returns.
        warm = self.runner.run(np.zeros((1, h, w, 3), dtype=np.uint8))
        self.metrics = precision_metrics(args["model_name"], args["model_version"], self.runner)
        pb_utils.Logger.log_info(
            f"{args['model_name']} v{args['model_version']}: {self.runner.runtime} in {self.runner.precision} "
            f"({self.runner.layer_precisions()}), {self.budget.describe()}"
        )
        return warm

    def _images(self, requests):
        images = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, contract.IMAGE)
            images.append([] if tensor is None else list(tensor.as_numpy().reshape(-1)))
        mapper = self.pool.map if self.pool is not None and sum(map(len, images)) > 1 else map
        return images, mapper

    def decode(self, requests, sizes=None):
        """(uint8 crops of the good requests, each request's row count or rejection); ``sizes`` gets
        the (width, height) of each crop's image as sent."""
        images, mapper = self._images(requests)
        return decode_requests(images, self.spec, mapper, sizes)

    def decode_placed(self, requests):
        """Letterboxed: ([(uint8 input, its Placement)] of the good requests, each request's outcome)."""
        images, mapper = self._images(requests)
        return decode_each(images, self.spec, mapper, placed)

    @staticmethod
    def failed(requests, exc):
        """The network failed: the error on each request; the model keeps serving."""
        error = pb_utils.TritonError(f"the network failed: {type(exc).__name__}")
        return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]

    @staticmethod
    def respond(outcomes, outputs):
        """One response per request: its rows of ``outputs`` (name -> batch array), or its error."""
        responses, offset = [], 0
        for outcome in outcomes:
            if isinstance(outcome, str):
                error = pb_utils.TritonError(outcome, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            rows = slice(offset, offset + outcome)
            offset += outcome
            tensors = [pb_utils.Tensor(name, array[rows]) for name, array in outputs.items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self):
        if self.pool is not None:
            self.pool.shutdown(wait=False)


def precision_metrics(model, version, runner):
    """Export what the compiled network runs in; the metrics (and their families, whose deletion
    removes them from Triton) live as long as the returned list."""
    labels = {"model": model, "version": str(version)}
    info = pb_utils.MetricFamily(
        name="cvserve_network_info",
        description="the served network: its runtime and the float precision read back from it",
        kind=pb_utils.MetricFamily.GAUGE,
    )
    layers = pb_utils.MetricFamily(
        name="cvserve_network_layers",
        description="compute layers of the served network by the precision they run in",
        kind=pb_utils.MetricFamily.GAUGE,
    )
    metrics = [
        info,
        layers,
        info.Metric(labels={**labels, "runtime": runner.runtime, "precision": runner.precision}),
    ]
    metrics[-1].set(1)
    for precision, count in sorted(runner.layer_precisions().items()):
        metrics.append(layers.Metric(labels={**labels, "precision": precision}))
        metrics[-1].set(count)
    return metrics
