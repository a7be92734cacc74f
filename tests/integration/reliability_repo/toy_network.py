"""A tiny real Triton python-backend model: the network step of a toy ensemble. ``PIXELS`` (UINT8
[8, 8, 3]) -> ``CLASS_INDEX`` (INT64 [3]) and ``SCORE`` (FP32 [3]): the softmax of the mean red, green
and blue, so a red picture is class 0. ``delay_s`` (a config parameter) keeps each batch busy."""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.delay_s = float(params.get("delay_s", {}).get("string_value", "0") or 0)

    def execute(self, requests):
        if self.delay_s:
            time.sleep(self.delay_s)
        responses = []
        for request in requests:
            pixels = pb_utils.get_input_tensor_by_name(request, "PIXELS").as_numpy().astype(np.float32)
            logits = pixels.reshape(len(pixels), -1, 3).mean(axis=1) / 25.5
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
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
