"""A tiny real Triton python-backend model: the preprocess step of a toy ensemble (the ``ensemble``
layout's NAME_preprocess in small). ``IMAGE`` (BYTES, encoded PNG/JPEG) -> ``PIXELS`` (UINT8 [8, 8, 3]).

An image that cannot be decoded fails its own request with INVALID_ARGUMENT; ``delay_s`` (a config
parameter) keeps each batch busy, so that tests can have requests in flight part-way through the ensemble.
"""

import io
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.delay_s = float(params.get("delay_s", {}).get("string_value", "0") or 0)

    def execute(self, requests):
        if self.delay_s:
            time.sleep(self.delay_s)
        responses = []
        for request in requests:
            blobs = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
            try:
                pixels = np.stack([self._pixels(bytes(b)) for b in blobs])
            except ValueError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PIXELS", pixels)]))
        return responses

    @staticmethod
    def _pixels(blob):
        try:
            with Image.open(io.BytesIO(blob), formats=["PNG", "JPEG"]) as img:
                return np.asarray(img.convert("RGB").resize((8, 8)), dtype=np.uint8)
        except Exception:
            raise ValueError(f"not a PNG or JPEG image ({len(blob)} bytes)") from None
