"""Triton python-backend model: network logits -> top-k class indices, scores and labels.

Copied by ``cvserve build`` as ``<NAME>_postprocess/<version>/model.py`` with ``labels.txt``. Scores
are softmax probabilities unless the network already outputs probabilities (parameter
``apply_softmax: false``). Vectorised over all requests in the batch.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.apply_softmax = params.get("apply_softmax", "true").lower() == "true"
        self.input_name = config["input"][0]["name"]
        outputs = {o["name"]: o for o in config["output"]}
        self.top_k = int(outputs["SCORE"]["dims"][0])
        with open(os.path.join(version_dir, "labels.txt"), encoding="utf-8") as f:
            labels = [line.rstrip("\n") for line in f]
        self.labels = np.array([s.encode("utf-8") for s in labels], dtype=np.object_)

    def execute(self, requests):
        logits = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [len(x) for x in logits]
        x = np.concatenate(logits).astype(np.float32, copy=False)
        if self.apply_softmax:
            x = np.exp(x - x.max(axis=1, keepdims=True))
            x /= x.sum(axis=1, keepdims=True)
        k = min(self.top_k, x.shape[1])
        top = np.argpartition(-x, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(x, top, axis=1).argsort(axis=1)[:, ::-1]
        idx = np.take_along_axis(top, order, axis=1)
        scores = np.take_along_axis(x, idx, axis=1).astype(np.float32)
        labels = self.labels[idx]
        responses, offset = [], 0
        for n in sizes:
            s = slice(offset, offset + n)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("CLASS_INDEX", idx[s].astype(np.int64)),
                        pb_utils.Tensor("SCORE", scores[s]),
                        pb_utils.Tensor("LABEL", labels[s]),
                    ]
                )
            )
            offset += n
        return responses
