"""Builders: turn a PyTorch checkpoint into a served Triton model repository.

One module per pipeline stage: ``checkpoint`` (load), ``torch2onnx`` (export), ``onnx_cleanup``
(onnx-graphsurgeon), ``quantize`` (INT8/FP16), ``onnx2trt`` (TensorRT engines), ``verify`` (accuracy
against the original), ``triton_config`` (model configs from Triton's protobuf), ``repository``
(atomic, versioned writer), and ``pipeline`` (the wiring). Importing this package imports no torch.
"""
