"""Triton python-backend model: the network, run by ONNX Runtime inside the python backend.

The embedded server bundled with cvserve has only the python backend, so on the CPU target the ONNX
network runs here. In Triton's NGC container the same ``model.onnx`` is served by the native
onnxruntime backend instead (``cvserve build --runtime native``); inputs and outputs are identical.

Requests batched together by the dynamic batcher are concatenated into one ONNX Runtime call.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])}))
        self.session = ort.InferenceSession(
            os.path.join(version_dir, params.get("onnx_file", "model.onnx")), options, providers=providers
        )
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]

    def execute(self, requests):
        feeds, sizes = {name: [] for name in self.input_names}, []
        for request in requests:
            for name in self.input_names:
                feeds[name].append(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            sizes.append(len(feeds[self.input_names[0]][-1]))
        try:
            outputs = self.session.run(self.output_names, {k: np.concatenate(v) for k, v in feeds.items()})
        except Exception as exc:  # noqa: BLE001 - reported per request, the server keeps running
            err = pb_utils.TritonError(f"ONNX Runtime failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=err) for _ in requests]
        responses, offset = [], 0
        for n in sizes:
            tensors = [pb_utils.Tensor(name, out[offset : offset + n]) for name, out in zip(self.output_names, outputs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            offset += n
        return responses
