"""The demo MobileNetV2 build the integration tests share (conftest's session fixture, other layouts)."""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL = "mobilenet_v2"


def build_demo(repo: Path, serving=None):
    """The demo MobileNetV2 (torchvision's published ImageNet weights) built into ``repo``."""
    from cvserve.builders.pipeline import BuildSettings, ServingOptions, build
    from cvserve.builders.samples import demo_weights, imagenet_labels_path

    return build(
        BuildSettings(
            checkpoint=demo_weights(),
            arch="cvserve.builders.architectures:mobilenet_v2",
            name=DEMO_MODEL,
            labels=imagenet_labels_path(),
            repository=repo,
            serving=serving or ServingOptions(),
            progress=False,
        ),
        log=lambda _m: None,
    )
