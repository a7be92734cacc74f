"""The example golden set, generated from the sample photos that ship in packages.

Nothing binary is committed: this script writes the images from scikit-image's, scikit-learn's and
matplotlib's bundled photos, each as shipped (``lighting=normal``) and darkened to a quarter of its
brightness (``lighting=dark``), with ``labels.csv`` naming the ImageNet class a person would give it::

    python -m cvserve.release.example golden/      # then: cvserve release NAME --golden golden/ ...

The labels are the truth, not what a model says: MobileNetV2 gets some of them wrong (the rocket in
the dark, Grace Hopper's uniform), as a real golden set would show.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from cvserve._extras import require
from cvserve.errors import MissingDependencyError
from cvserve.release.golden import LABELS_FILE

DARK_FACTOR = 0.25  # brightness of the "dark" variants
MAX_SIDE = 320  # pixels: small files, and still larger than the network's 224 input


@dataclass(frozen=True)
class Photo:
    source: str  # the package it ships in, also the "source" slice
    file: str
    label: str  # ImageNet class name (torchvision's wording, builders/data/imagenet_classes.txt)


PHOTOS = (
    Photo("skimage", "chelsea.png", "Egyptian cat"),
    Photo("skimage", "coffee.png", "espresso"),
    Photo("skimage", "rocket.jpg", "space shuttle"),
    Photo("skimage", "camera.png", "tripod"),
    Photo("sklearn", "china.jpg", "palace"),
    Photo("matplotlib", "grace_hopper.jpg", "military uniform"),
)


def _source_dir(source: str) -> Path:
    try:
        if source == "skimage":
            import skimage.data as module

            return Path(module.__file__).parent
        if source == "sklearn":
            import sklearn.datasets as module

            return Path(module.__file__).parent / "images"
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data"
    except ImportError:
        package = {"skimage": "scikit-image", "sklearn": "scikit-learn"}.get(source, source)
        raise MissingDependencyError(
            f"the example golden set uses the photos bundled with {package}: pip install {package}"
        ) from None


def make_example_golden_set(dest: str | Path) -> Path:
    """Write the example golden set into ``dest`` (created; existing files are overwritten).

    Returns:
        ``dest``, holding ``images/<source>/<name>_<lighting>.<ext>`` and ``labels.csv`` with columns
        ``path,label,source,lighting``.
    """
    Image = require("PIL.Image", extra="images", purpose="to write the example golden set")
    ImageEnhance = require("PIL.ImageEnhance", extra="images", purpose="to write the example golden set")
    dest = Path(dest)
    rows = []
    for photo in PHOTOS:
        src = _source_dir(photo.source) / photo.file
        if not src.is_file():
            raise MissingDependencyError(f"{src} is missing: reinstall the package that ships it")
        with Image.open(src) as img:
            rgb = img.convert("RGB")
        rgb.thumbnail((MAX_SIDE, MAX_SIDE), Image.BILINEAR)
        stem, ext = Path(photo.file).stem, Path(photo.file).suffix.lower()
        variants = {"normal": rgb, "dark": ImageEnhance.Brightness(rgb).enhance(DARK_FACTOR)}
        for lighting, image in variants.items():
            path = Path("images") / photo.source / f"{stem}_{lighting}{ext}"
            (dest / path).parent.mkdir(parents=True, exist_ok=True)
            image.save(dest / path, **({"quality": 92} if ext == ".jpg" else {}))
            rows.append([path.as_posix(), photo.label, photo.source, lighting])
    with open(dest / LABELS_FILE, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "source", "lighting"])
        writer.writerows(rows)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cvserve.release.example", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("dest", type=Path, help="folder to write the golden set into")
    args = parser.parse_args(argv)
    try:
        out = make_example_golden_set(args.dest)
    except MissingDependencyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote the example golden set ({2 * len(PHOTOS)} images) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
