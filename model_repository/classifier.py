"""Triton python-backend model NAME (the ``single`` layout): encoded images in, top-k classes out.

Copied by ``cvserve build`` as ``NAME/<version>/model.py`` with ``cvserve_decoding.py`` (decoding and
answering, shared with the ensemble's decoder), ``cvserve_preprocessing.py`` (the builder's
preprocessing), ``cvserve_runners.py`` (how the builder runs networks), ``preprocess.json`` (the spec
the build verified) and the served network (``model.xml`` for OpenVINO, ``model.onnx`` for ONNX
Runtime), whose graph takes uint8 pixels and does the normalisation, softmax and top-k itself.

Per batch that Triton's dynamic batcher forms: the images of every request are decoded and cropped on
a thread pool, the crops of the good requests run through the network in one call, and each request
gets its rows back; a request with an image that cannot be decoded fails alone with INVALID_ARGUMENT.

Threads: ``cvserve_runners.thread_budget`` splits the cores this process may use between the
instances of this model (intra-op threads x instances <= cores), unless the config's
``intra_op_threads`` / ``decode_threads`` parameters say otherwise.
"""

import os

import numpy as np
import triton_python_backend_utils as pb_utils
from cvserve_decoding import DecodingModel
from cvserve_runners import open_runner


class TritonPythonModel(DecodingModel):
    def initialize(self, args):
        self.setup(args)
        network = os.path.join(self.version_dir, self.params["network_file"])
        self.runner = open_runner(network, self.params["runtime"], threads=self.budget.intra_op)
        h, w = self.spec.input_size
        self.runner.run(np.zeros((1, h, w, 3), dtype=np.uint8))  # first call allocates: not on a request
        pb_utils.Logger.log_info(
            f"{args['model_name']} v{args['model_version']}: {self.runner.runtime}, {self.budget.describe()}"
        )

    def execute(self, requests):
        batch, outcomes = self.decode(requests)
        outputs = {}
        if batch is not None:
            try:
                outputs = self.runner.run(batch)  # the served graph's CLASS_INDEX and SCORE
            except Exception as exc:  # reported on each request; the model keeps serving
                error = pb_utils.TritonError(f"the network failed: {type(exc).__name__}")
                return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        return self.respond(outcomes, outputs)
