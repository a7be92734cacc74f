"""A tiny real Triton python-backend model that is slow on purpose: echoes ``X`` as ``Y`` after
``delay_s`` per batch, so that a small dynamic-batcher queue fills up and its policy rejects requests."""

import json
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.delay_s = float(params["delay_s"]["string_value"])

    def execute(self, requests):
        time.sleep(self.delay_s)
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())]
            )
            for r in requests
        ]
