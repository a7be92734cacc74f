"""A tiny real Triton python-backend classifier with the cvserve classification contract (v2).

Input ``IMAGE`` (BYTES, dims [1]) of encoded images; outputs ``CLASS_INDEX`` (INT64 [K]) and ``SCORE``
(FP32 [K], softmax, descending); the class names are in the config (parameter ``labels``). When its
config also declares a ``LABEL`` (BYTES [K]) output, it sends the names there too, as models built
before contract v2 did. The "model" scores the mean red, green and
blue of the image, so a pure-red picture is "red" with the highest score; version N rolls the channels
by N - 1 (version 2 calls a red picture "green"), so tests can tell versions apart. Used by the client's
integration tests to exercise batching, errors, deadlines and restarts without building a network.
"""

import io
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image, UnidentifiedImageError

LABELS = ["red", "green", "blue"]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        self.delay_s = float(params.get("delay_s", {}).get("string_value", "0") or 0)
        self.k = int(pb_utils.get_output_config_by_name(config, "SCORE")["dims"][0])
        self.roll = int(args["model_version"]) - 1
        self.legacy_label = any(o["name"] == "LABEL" for o in config["output"])

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
            try:
                means = np.stack([self._mean_rgb(i, len(images), blob) for i, blob in enumerate(images)])
            except ValueError as exc:
                err = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=err))
                continue
            if self.delay_s:
                time.sleep(self.delay_s)
            logits = np.roll(means, self.roll, axis=1) * 10.0
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            order = np.argsort(-probs, axis=1, kind="stable")[:, : self.k]
            scores = np.take_along_axis(probs, order, axis=1).astype(np.float32)
            outputs = [
                pb_utils.Tensor("CLASS_INDEX", order.astype(np.int64)),
                pb_utils.Tensor("SCORE", scores),
            ]
            if self.legacy_label:
                labels = np.array([[LABELS[j].encode() for j in row] for row in order], dtype=object)
                outputs.append(pb_utils.Tensor("LABEL", labels))
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

    @staticmethod
    def _mean_rgb(i, n, blob):
        try:
            with Image.open(io.BytesIO(bytes(blob))) as img:
                rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"image {i + 1} of {n}: not a decodable image ({exc})") from None
        return rgb.reshape(-1, 3).mean(axis=0)
