"""Reference architectures in plain torch, state-dict compatible with torchvision.

Use them with ``cvserve build --arch cvserve.builders.architectures:mobilenet_v2``; any importable
``module:callable`` that returns an ``nn.Module`` works the same way.
"""

from cvserve.builders.architectures.mobilenet_v2 import MobileNetV2, mobilenet_v2
from cvserve.builders.architectures.resnet import ResNet, resnet18, resnet34, resnet50, resnet101

__all__ = ["MobileNetV2", "ResNet", "mobilenet_v2", "resnet18", "resnet34", "resnet50", "resnet101"]
