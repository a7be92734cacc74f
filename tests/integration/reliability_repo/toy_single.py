"""A tiny real Triton python-backend classifier batched like the ``single`` layout: every request of a
dynamic batch is decoded, the good ones are scored together, a bad image fails only its own request.

``IMAGE`` (BYTES, encoded PNG/JPEG) -> ``CLASS_INDEX`` (INT64 [3]), ``SCORE`` (FP32 [3]): the softmax of
the mean red, green and blue, so a red picture is class 0. ``delay_s`` keeps each batch busy.
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
                means = np.stack([self._mean_rgb(bytes(b)) for b in blobs])
            except ValueError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            probs = np.exp(means / 25.5 - (means / 25.5).max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            order = np.argsort(-probs, axis=1, kind="stable")
            scores = np.take_along_axis(probs, order, axis=1).astype(np.float32)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("CLASS_INDEX", order.astype(np.int64)),
                        pb_utils.Tensor("SCORE", scores),
                    ]
                )
            )
        return responses

    @staticmethod
    def _mean_rgb(blob):
        try:
            with Image.open(io.BytesIO(blob), formats=["PNG", "JPEG"]) as img:
                return np.asarray(img.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(axis=0)
        except Exception:
            raise ValueError(f"not a PNG or JPEG image ({len(blob)} bytes)") from None
