"""Detector golden sets: a folder of images and ``annotations.json``, COCO's object-detection format.

``images`` (``id``, ``file_name`` relative to the folder, optional ``width``/``height`` and ``slices``),
``annotations`` (``image_id``, ``category_id``, ``bbox`` as x, y, width, height in the image's pixels,
optional ``iscrowd``), ``categories`` (``id``, ``name``: the model's class names). A slice is a key of
an image's ``slices`` object (``{"lighting": "dark"}``): each value is a slice, as a column of a
classifier's ``labels.csv`` is. Everything is checked before a release touches the server; each problem
is one line that names the entry and the fix. docs/release.md, "Detectors".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cvserve.release.golden import GoldenSetError, check_files, image_path, shown

ANNOTATIONS_FILE = "annotations.json"
_SLICES = "slices"  # the image record's key for its slice values


@dataclass(frozen=True, kw_only=True)
class BoxCase:
    """One image of the golden set and its objects.

    Attributes:
        path: ``file_name`` as a ``/``-separated path inside the golden folder.
        file: the image file.
        image_id: its id in ``annotations.json``.
        slices: slice name -> value (``""`` when the image does not give one).
        boxes: per object, ``(x1, y1, x2, y2)`` in the image's pixels.
        categories: per object, its category's position in :attr:`BoxGoldenSet.category_names`.
        crowd: per object, COCO's ``iscrowd`` (a region mAP ignores; left out of the F1).
    """

    path: str
    file: Path
    image_id: int
    slices: dict[str, str]
    boxes: tuple[tuple[float, float, float, float], ...]
    categories: tuple[int, ...]
    crowd: tuple[bool, ...]


@dataclass(frozen=True, kw_only=True)
class BoxGoldenSet:
    """A validated detector golden set.

    Attributes:
        truth: the COCO JSON as the evaluator reads it: ``file_name`` normalised to :attr:`BoxCase.path`,
            every annotation with an ``id``, ``area`` and ``iscrowd``, categories sorted by id.
        category_names: the categories' names by id, so class position ``i`` is the ``i``-th category.
        classes: per version number, its class index -> category position (-1: not in the golden set);
            filled in by :func:`resolve_classes`.
    """

    root: Path
    file: Path
    truth: dict
    cases: tuple[BoxCase, ...]
    slice_columns: tuple[str, ...]
    category_names: tuple[str, ...]
    classes: dict[int, tuple[int, ...] | None] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def boxes(self) -> int:
        return sum(len(c.boxes) for c in self.cases)


def load_box_golden_set(directory: str | Path) -> BoxGoldenSet:
    """Read and check the detector golden set in ``directory``.

    Raises:
        GoldenSetError: the folder or ``annotations.json`` is missing, the JSON is malformed or not
            COCO, an entry is missing a field or has a wrong one (named with its index), an id is
            repeated or unknown, a box is empty or reaches past its image, a path leaves the folder, or
            an image is missing or not a JPEG/PNG image.
    """
    root = Path(directory)
    if not root.is_dir():
        raise GoldenSetError(
            f"golden set {root} is not a directory: give a folder with the images and {ANNOTATIONS_FILE}"
        )
    file = root / ANNOTATIONS_FILE
    if not file.is_file():
        hint = " (labels.csv is a classifier's golden set)" if (root / "labels.csv").is_file() else ""
        raise GoldenSetError(
            f"golden set {root} has no {ANNOTATIONS_FILE}{hint}: a detector's golden set is COCO JSON "
            "with images (file_name), annotations (bbox as x, y, width, height) and categories (the "
            "model's class names); see docs/release.md"
        )
    coco = _read(file)
    categories = _categories(file, coco["categories"])
    images, slice_columns = _images(file, coco["images"])
    position = {cid: i for i, (cid, _) in enumerate(categories)}
    objects = _annotations(file, coco["annotations"], images, position)
    cases = []
    for image in images.values():
        found = objects.get(image["id"], [])
        cases.append(
            BoxCase(
                path=image["file_name"],
                file=root / image["file_name"],
                image_id=image["id"],
                slices={k: _slice_value(image.get(_SLICES, {}).get(k)) for k in slice_columns},
                boxes=tuple(o["xyxy"] for o in found),
                categories=tuple(position[o["category_id"]] for o in found),
                crowd=tuple(bool(o["iscrowd"]) for o in found),
            )
        )
    check_files(root, file, cases)
    truth = {
        "images": [{k: v for k, v in im.items() if k != _SLICES} for im in images.values()],
        "annotations": [
            {k: v for k, v in o.items() if k != "xyxy"} for found in objects.values() for o in found
        ],
        "categories": [{"id": cid, "name": name} for cid, name in categories],
    }
    return BoxGoldenSet(
        root=root,
        file=file,
        truth=truth,
        cases=tuple(cases),
        slice_columns=slice_columns,
        category_names=tuple(name for _, name in categories),
    )


def _read(file: Path) -> dict:
    try:
        coco = json.loads(file.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise GoldenSetError(f"{file} is not UTF-8 text: save it as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise GoldenSetError(
            f"{file} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(coco, dict):
        raise GoldenSetError(f"{file} must hold one JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise GoldenSetError(
                f"{file} has no {key} list: COCO JSON needs images, annotations and categories "
                "(annotations may be empty)"
            )
    if not coco["images"]:
        raise GoldenSetError(f"{file} lists no images: add at least one image record")
    if not coco["categories"]:
        raise GoldenSetError(f"{file} lists no categories: add one per class, named as the model's labels")
    return coco


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _categories(file: Path, records: list) -> list[tuple[int, str]]:
    seen: dict[int, str] = {}
    for i, c in enumerate(records):
        where = f"{file}: categories[{i}]"
        if not isinstance(c, dict) or not _int(c.get("id")):
            raise GoldenSetError(f"{where} needs an integer id")
        name = c.get("name")
        if not isinstance(name, str) or not name.strip():
            raise GoldenSetError(f"{where} (id {c['id']}) needs a name: the model's class name")
        if c["id"] in seen:
            raise GoldenSetError(f"{where}: category id {c['id']} appears twice; give each category once")
        if name in seen.values():
            raise GoldenSetError(f"{where}: category name {name!r} appears twice; give each class once")
        seen[c["id"]] = name
    return sorted(seen.items())


def _slice_value(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _images(file: Path, records: list) -> tuple[dict[int, dict], tuple[str, ...]]:
    images: dict[int, dict] = {}
    first: dict[str, int] = {}
    columns: dict[str, None] = {}
    for i, im in enumerate(records):
        where = f"{file}: images[{i}]"
        if not isinstance(im, dict) or not _int(im.get("id")):
            raise GoldenSetError(f"{where} needs an integer id")
        if not isinstance(im.get("file_name"), str) or not im["file_name"].strip():
            raise GoldenSetError(f"{where} (id {im['id']}) needs a file_name: the image's path in the folder")
        if im["id"] in images:
            raise GoldenSetError(f"{where}: image id {im['id']} appears twice; give each image once")
        path = image_path(im["file_name"].strip(), f"{where} (id {im['id']})")
        if path in first:
            raise GoldenSetError(
                f"{file} lists {path} twice (images[{first[path]}] and images[{i}]): give each image once"
            )
        first[path] = i
        slices = im.get(_SLICES, {})
        if not isinstance(slices, dict) or any(
            isinstance(v, dict | list) or not str(k).strip() for k, v in slices.items()
        ):
            raise GoldenSetError(
                f"{where} ({path}): {_SLICES} must be an object of named text values, e.g. "
                '{"lighting": "dark", "source": "street"}'
            )
        for size in ("width", "height"):
            if size in im and not (_int(im[size]) and im[size] > 0):
                raise GoldenSetError(f"{where} ({path}): {size} must be a positive integer (pixels)")
        columns.update(dict.fromkeys(str(k).strip() for k in slices))
        images[im["id"]] = {**im, "file_name": path, _SLICES: {str(k).strip(): v for k, v in slices.items()}}
    return images, tuple(columns)


def _annotations(
    file: Path, records: list, images: dict[int, dict], position: dict[int, int]
) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for i, a in enumerate(records):
        where = f"{file}: annotations[{i}]"
        if not isinstance(a, dict):
            raise GoldenSetError(f"{where} must be an object with image_id, category_id and bbox")
        if a.get("image_id") not in images:
            raise GoldenSetError(f"{where}: image_id {a.get('image_id')!r} is not the id of an image listed")
        if a.get("category_id") not in position:
            known = ", ".join(str(c) for c in position)
            raise GoldenSetError(
                f"{where}: category_id {a.get('category_id')!r} is not a category listed (ids {known})"
            )
        bbox = a.get("bbox")
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
            and bbox[2] > 0
            and bbox[3] > 0
        ):
            raise GoldenSetError(
                f"{where}: bbox must be [x, y, width, height] in pixels with width and height > 0, "
                f"not {bbox!r}"
            )
        x, y, w, h = (float(v) for v in bbox)
        image = images[a["image_id"]]
        width, height = image.get("width"), image.get("height")
        if x < -1 or y < -1 or (width and x + w > width + 1) or (height and y + h > height + 1):
            raise GoldenSetError(
                f"{where}: bbox {bbox} reaches past its image {image['file_name']} "
                f"({width or '?'} x {height or '?'}): COCO's bbox is [x, y, width, height], not "
                "[x1, y1, x2, y2]"
            )
        out.setdefault(a["image_id"], []).append({
            "id": i + 1, "image_id": a["image_id"], "category_id": a["category_id"],
            "bbox": [x, y, w, h], "area": float(a.get("area") or w * h),
            "iscrowd": int(bool(a.get("iscrowd", 0))), "xyxy": (x, y, x + w, y + h),
        })  # fmt: skip
    return out


def resolve_classes(golden: BoxGoldenSet, versions: dict[int, list[str] | None], model: str) -> BoxGoldenSet:
    """Map each version's classes to the golden categories: by name when it has labels, else class
    ``i`` is the ``i``-th category by id.

    Args:
        versions: version number -> its class names (``None``: the model has none).
        model: named in the error message.

    Raises:
        GoldenSetError: a category is a class of neither version (a misspelt name, another model's set).
    """
    names = [n for labels in versions.values() for n in labels or []]
    if names:
        unknown = [c for c in golden.category_names if c not in names]
        if unknown:
            raise GoldenSetError(
                f"{golden.file}: {len(unknown)} categor(y/ies) are not classes of {model}: "
                f"{shown([repr(c) for c in unknown])}; name each category as in the model's labels "
                f"({shown(list(dict.fromkeys(names)))})"
            )
    at = {name: i for i, name in enumerate(golden.category_names)}
    classes = {
        number: None if not labels else tuple(at.get(name, -1) for name in labels)
        for number, labels in versions.items()
    }
    return replace(golden, classes=classes)
