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

import triton_python_backend_utils as pb_utils
from cvserve_preprocessing import PreprocessSpec, decode_requests
from cvserve_runners import thread_budget


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
            intra_op=int(self.params.get("intra_op_threads") or 0),
            decode=int(self.params.get("decode_threads") or 0),
        )
        self.spec = PreprocessSpec.load(self.version_dir)
        self.pool = ThreadPoolExecutor(self.budget.decode) if self.budget.decode > 1 else None

    def decode(self, requests, sizes=None):
        """(uint8 crops of the good requests, each request's row count or rejection); ``sizes`` gets
        the (width, height) of each crop's image as sent."""
        images = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "IMAGE")
            images.append([] if tensor is None else list(tensor.as_numpy().reshape(-1)))
        mapper = self.pool.map if self.pool is not None and sum(map(len, images)) > 1 else map
        return decode_requests(images, self.spec, mapper, sizes)

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
