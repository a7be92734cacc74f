"""Triton python-backend model: encoded images (TYPE_STRING) -> the network's float32 input tensor.

Copied by ``cvserve build`` as ``<NAME>_preprocess/<version>/model.py`` together with
``cvserve_preprocessing.py`` (the builder's own preprocessing code) and ``preprocess.json`` (the spec
recorded at build time), so serving runs exactly the code and parameters the build verified.

Each request is decoded on its own: a corrupt image fails only its own request with INVALID_ARG,
while the other requests that the dynamic batcher put into the same batch are normalised together in
one vectorised pass. Decoding runs on a small thread pool (Pillow releases the GIL while decoding).
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils
from cvserve_preprocessing import ImageDecodeError, PreprocessSpec, normalize_batch, pixels


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.spec = PreprocessSpec.load(version_dir)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threads = int(params.get("decode_threads", "0")) or min(4, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None

    def _decode_request(self, request):
        encoded = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
        crops = []
        for i, data in enumerate(encoded):
            try:
                crops.append(pixels(bytes(data), self.spec))
            except ImageDecodeError as exc:
                raise ImageDecodeError(f"image {i + 1} of {len(encoded)} in the request: {exc}") from None
        return np.stack(crops) if crops else None

    def execute(self, requests):
        mapper = self.pool.map if self.pool is not None else map
        decoded = list(mapper(self._safe_decode, requests))
        good = [d for d in decoded if isinstance(d, np.ndarray)]
        batch = normalize_batch(np.concatenate(good), self.spec) if good else None
        responses, offset = [], 0
        for item in decoded:
            if isinstance(item, np.ndarray):
                n = len(item)
                out = pb_utils.Tensor(self.output_name, batch[offset : offset + n])
                offset += n
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            else:
                err = pb_utils.TritonError(item, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
        return responses

    def _safe_decode(self, request):
        try:
            crops = self._decode_request(request)
        except ImageDecodeError as exc:
            return str(exc)
        return crops if crops is not None else "the request has no images"

    def finalize(self):
        if self.pool is not None:
            self.pool.shutdown(wait=False)
