"""The wire contract: the tensor and parameter names every cvserve model and client agree on.

Standard library only: the client imports it, the builders import it (builders -> client), and
``cvserve build`` copies it next to the served python models as ``cvserve_contract.py``.

Every model takes ``IMAGE`` (BYTES, dims [1]: one encoded JPEG/PNG per row) and says what it is in
its config parameter ``task``. Per task, the outputs (per image, without the batch dimension):

* ``classify``: ``CLASS_INDEX`` INT64 [k], ``SCORE`` FP32 [k], best first.
* ``detect``: a fixed ``K`` rows per image (``max_detections``) plus a count, so a response is a few
  hundred bytes whatever the network's raw head is: ``BOXES`` FP32 [K, 4] (x1, y1, x2, y2 in the
  original image's pixels), ``SCORES`` FP32 [K] (best first), ``CLASSES`` INT64 [K], ``COUNT`` INT32
  [1] (rows ``0..COUNT-1`` are detections, the rest are zero padding), and for detectors with
  keypoints ``LANDMARKS`` FP32 [K, P, 2] (original pixels). docs/detection.md.

Class names travel once, in the config parameter ``labels`` (a JSON array), never per response. The
python models also read their thread counts and float precision from config parameters named here.
"""

IMAGE = "IMAGE"
PIXELS = "PIXELS"  # uint8 [H, W, 3] between a decoder and its network (ensemble layout)
# classify
CLASS_INDEX = "CLASS_INDEX"
SCORE = "SCORE"
FEATURES = "FEATURES"  # optional: the feature summary a served classifier counts (docs/monitoring.md)
# detect
BOXES = "BOXES"
SCORES = "SCORES"
CLASSES = "CLASSES"
COUNT = "COUNT"
LANDMARKS = "LANDMARKS"
# between the models of a detector's ensemble (docs/detection.md): the decoder's letterbox placement
# (FP32 [6]: width, height, resized width, resized height, offset x, offset y) and the network's NMS
# outputs (TensorRT EfficientNMS's names, input pixels) that the postprocess step maps back
PLACEMENT = "PLACEMENT"
NUM_DETECTIONS = "num_detections"  # INT32 [1]
DETECTION_BOXES = "detection_boxes"  # FP32 [K, 4]
DETECTION_SCORES = "detection_scores"  # FP32 [K]
DETECTION_CLASSES = "detection_classes"  # INT32 [K]
NMS_OUTPUTS = (NUM_DETECTIONS, DETECTION_BOXES, DETECTION_SCORES, DETECTION_CLASSES)
# config parameters
LABELS_PARAMETER = "labels"
TASK_PARAMETER = "task"
TASKS = ("classify", "detect")
# config parameters of cvserve's python models, written by the build, read by the models (decoding)
# (threads: 0 is derived from the cores when served, cvserve.server.budget)
INTRA_OP_THREADS_PARAMETER = "intra_op_threads"  # the network's intra-op threads per instance
DECODE_THREADS_PARAMETER = "decode_threads"  # decode threads per instance of the models that decode
PRECISION_PARAMETER = "inference_precision"  # f32 or bf16: what the network's float layers compute in
