"""Triton python-backend model NAME_preprocess (the ``ensemble`` layout): encoded images -> uint8 pixels.

Copied by ``cvserve build`` as ``NAME_preprocess/<version>/model.py`` with ``cvserve_preprocessing.py``
(the builder's preprocessing), ``cvserve_runners.py`` (the thread budget) and ``preprocess.json``. The
crops (uint8, [H, W, 3], RGB) go to NAME_network, a native Triton backend whose graph normalises them.

The images of a batch are decoded on a thread pool (Pillow releases the GIL); a request with an image
that cannot be decoded fails alone with INVALID_ARGUMENT, the others in the batch still succeed.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import triton_python_backend_utils as pb_utils
from cvserve_preprocessing import PreprocessSpec, decode_requests
from cvserve_runners import thread_budget


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        budget = thread_budget(instances, decode=int(params.get("decode_threads") or 0))
        self.spec = PreprocessSpec.load(version_dir)
        self.pool = ThreadPoolExecutor(budget.decode) if budget.decode > 1 else None

    def execute(self, requests):
        images = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "IMAGE")
            images.append([] if tensor is None else list(tensor.as_numpy().reshape(-1)))
        mapper = self.pool.map if self.pool is not None and sum(map(len, images)) > 1 else map
        batch, outcomes = decode_requests(images, self.spec, mapper)
        responses, offset = [], 0
        for outcome in outcomes:
            if isinstance(outcome, str):
                error = pb_utils.TritonError(outcome, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            pixels = batch[offset : offset + outcome]
            offset += outcome
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PIXELS", pixels)]))
        return responses

    def finalize(self):
        if self.pool is not None:
            self.pool.shutdown(wait=False)
