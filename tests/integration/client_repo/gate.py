"""A tiny real Triton python-backend model that holds each request until the test lets it go: echoes
``X`` as ``Y`` once the file named by the ``release_file`` parameter exists (at most 60 s), so a test
can keep a request in flight for as long as it needs, without timing it."""

import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.release_file = params["release_file"]["string_value"]

    def execute(self, requests):
        give_up = time.monotonic() + 60
        while not os.path.exists(self.release_file) and time.monotonic() < give_up:
            time.sleep(0.01)
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())]
            )
            for r in requests
        ]
