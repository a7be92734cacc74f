"""Triton python-backend model NAME (the ``single`` layout): encoded images in, top-k classes out.

Copied by ``cvserve build`` as ``NAME/<version>/model.py`` with ``cvserve_preprocessing.py`` (the
builder's preprocessing), ``cvserve_runners.py`` (how the builder runs networks), ``preprocess.json``
(the spec the build verified) and the served network (``model.xml`` for OpenVINO, ``model.onnx`` for
ONNX Runtime), whose graph takes uint8 pixels and does the normalisation, softmax and top-k itself.

Per batch that Triton's dynamic batcher forms: the images of every request are decoded and cropped on
a thread pool (Pillow releases the GIL), the crops of the good requests run through the network in one
call, and each request gets its rows back. A request with an image that cannot be decoded fails alone
with INVALID_ARGUMENT; the others in the batch still succeed.

Threads: ``cvserve_runners.thread_budget`` splits the cores this process may use between the
instances of this model (intra-op threads x instances <= cores), unless the config's
``intra_op_threads`` / ``decode_threads`` parameters say otherwise.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils
from cvserve_preprocessing import PreprocessSpec, decode_requests
from cvserve_runners import open_runner, thread_budget


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        budget = thread_budget(
            instances,
            intra_op=int(params.get("intra_op_threads") or 0),
            decode=int(params.get("decode_threads") or 0),
        )
        self.spec = PreprocessSpec.load(version_dir)
        self.runner = open_runner(
            os.path.join(version_dir, params["network_file"]), params["runtime"], threads=budget.intra_op
        )
        self.pool = ThreadPoolExecutor(budget.decode) if budget.decode > 1 else None
        h, w = self.spec.input_size
        self.runner.run(np.zeros((1, h, w, 3), dtype=np.uint8))  # first call allocates: not on a request
        pb_utils.Logger.log_info(
            f"{args['model_name']} v{args['model_version']}: {self.runner.runtime}, {budget.describe()}"
        )

    def execute(self, requests):
        images = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "IMAGE")
            images.append([] if tensor is None else list(tensor.as_numpy().reshape(-1)))
        mapper = self.pool.map if self.pool is not None and sum(map(len, images)) > 1 else map
        batch, outcomes = decode_requests(images, self.spec, mapper)
        if batch is not None:
            try:
                outputs = self.runner.run(batch)
            except Exception as exc:  # reported on each request; the model keeps serving
                error = pb_utils.TritonError(f"the network failed: {type(exc).__name__}")
                return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, offset = [], 0
        for outcome in outcomes:
            if isinstance(outcome, str):
                error = pb_utils.TritonError(outcome, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            rows = slice(offset, offset + outcome)
            offset += outcome
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("CLASS_INDEX", outputs["CLASS_INDEX"][rows]),
                        pb_utils.Tensor("SCORE", outputs["SCORE"][rows]),
                    ]
                )
            )
        return responses

    def finalize(self):
        if self.pool is not None:
            self.pool.shutdown(wait=False)
