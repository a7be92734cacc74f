"""Stands in for Triton's onnxruntime backend, which the embedded server (python backend only) lacks.

It runs the build's own ``model.onnx`` (the served graph: uint8 PIXELS -> CLASS_INDEX, SCORE) with real
ONNX Runtime, one batch per request, and answers with the outputs the native backend would return.
Everything around it (the ensemble, the python decoder, the batching config) is what cvserve build wrote.
"""

import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def execute(self, requests):
        responses = []
        for request in requests:
            pixels = pb_utils.get_input_tensor_by_name(request, "PIXELS").as_numpy()
            index, score = self.session.run(["CLASS_INDEX", "SCORE"], {self.input_name: pixels})
            outputs = [pb_utils.Tensor("CLASS_INDEX", index), pb_utils.Tensor("SCORE", score)]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
