"""Triton python-backend model NAME_pnet, NAME_rnet or NAME_onet: one MTCNN network (the ``bls`` layout).

Copied by ``cvserve.builders.mtcnn_build --layout bls`` as ``NAME_<stage>/<version>/model.py`` beside
the stage's OpenVINO IR (the config's ``network_file``), ``cvserve_runners.py`` and the contract. NAME (the python
model that runs the cascade) calls it through BLS: float32 NCHW ``input`` -> the network's one
``output``. Requests whose inputs have the same shape (R-Net's 24x24 and O-Net's 48x48 crops always;
P-Net's pyramid levels when they come from images of one size) run as one batch; the others run one
after the other. On Triton's NGC image the same config can name the ``openvino`` backend instead
(docs/detection.md): the IR, its tensor names and the dynamic dimensions are already what it reads.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from cvserve_contract import INTRA_OP_THREADS_PARAMETER
from cvserve_runners import open_runner, thread_budget


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        budget = thread_budget(instances, intra_op=int(params.get(INTRA_OP_THREADS_PARAMETER) or 0))
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.runner = open_runner(
            os.path.join(folder, params["network_file"]), "openvino", threads=budget.intra_op, precision="f32"
        )
        self.input, self.output = config["input"][0]["name"], config["output"][0]["name"]
        pb_utils.Logger.log_info(
            f"{args['model_name']} v{args['model_version']}: openvino in {self.runner.precision}, "
            f"{budget.describe()}"
        )

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        outputs = [None] * len(requests)
        by_shape = {}
        for k, x in enumerate(inputs):
            by_shape.setdefault(x.shape[1:], []).append(k)
        for rows in by_shape.values():
            batch = np.concatenate([inputs[k] for k in rows]) if len(rows) > 1 else inputs[rows[0]]
            out = next(iter(self.runner.run(np.ascontiguousarray(batch, dtype=np.float32)).values()))
            start = 0
            for k in rows:
                n = len(inputs[k])
                outputs[k] = out[start : start + n]
                start += n
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output, np.ascontiguousarray(o))])
            for o in outputs
        ]
