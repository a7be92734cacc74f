"""``cvserve predict NAME IMAGE...``: classify image files, or find objects in them, with a served model.

What it prints follows the model's contract, as the server describes it: top classes for a
classifier, boxes for a detector (``--draw DIR`` writes each image with its boxes drawn).

Its flags are derived from :class:`PredictSettings` (:mod:`cvserve.settings`), the connection flags from
the client's own :class:`~cvserve.client.ClientOptions`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cvserve.client._options import ClientOptions
from cvserve.settings import add_arguments, from_args, setting


@dataclass(kw_only=True)
class PredictSettings:
    """What ``cvserve predict`` takes; its connection flags are the client's own options."""

    model: str = setting(positional=True, metavar="NAME", help="the served model name, e.g. mobilenet_v2")
    images: list[Path] = setting(positional=True, parser=Path, metavar="IMAGE", help="JPEG or PNG files")
    top_k: int | None = setting(
        None, at_least=1, help="classes to print per image", default_help="all the model returns"
    )
    json: bool = setting(False, help="print JSON instead of a table")
    draw: Path | None = setting(
        None, metavar="DIR", help="detectors: write each image into DIR with its boxes drawn"
    )
    client: ClientOptions = setting(
        default_factory=ClientOptions,
        title="connection",
        description="the server and TLS (mutual TLS with a client key and certificate chain)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``predict`` subcommand to the top-level ``cvserve`` parser."""
    p = subparsers.add_parser(
        "predict",
        help="classify images, or find objects in them, with a served model",
        description="Send image files to a cvserve (Triton) server and print each image's top classes "
        "(a classifier) or its detections (a detector).",
    )
    add_arguments(
        p, PredictSettings, argument_kwargs=lambda flag: {"nargs": "+"} if flag == "--images" else {}
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Classify the images, or detect objects in them, with the model; return the exit code (0)."""
    from cvserve.client._detection import detector_spec
    from cvserve.client._images import encode_images
    from cvserve.client.errors import InvalidInput
    from cvserve.client.sync import Client

    s = from_args(PredictSettings, args)
    images = encode_images([str(p) for p in s.images])  # a missing file fails before any call
    with Client(options=replace(s.client, model=s.model)) as client:
        try:
            detector_spec(client.model_info(s.model))
        except InvalidInput:
            if s.draw is not None:
                raise InvalidInput(f"--draw needs a detector; model '{s.model}' is not one") from None
            return _classified(s, client.classify(images, top_k=s.top_k))
        return _detected(s, client.detect(images))


def _print_json(key: str, s: PredictSettings, results: list) -> None:
    payload = [
        {"image": str(image), key: [asdict(item) for item in items]}
        for image, items in zip(s.images, results, strict=True)
    ]
    json.dump(payload, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _classified(s: PredictSettings, results: list) -> int:
    if s.json:
        _print_json("classes", s, results)
        return 0
    for image, classes in zip(s.images, results, strict=True):
        print(image)
        for rank, c in enumerate(classes, 1):
            print(f"  {rank:>2}. {c.score:6.2%}  {c.label} ({c.index})")
    return 0


def _detected(s: PredictSettings, results: list) -> int:
    if s.draw is not None:
        for image, found in zip(s.images, results, strict=True):
            draw_boxes(image, found, s.draw / image.name)
    if s.json:
        _print_json("detections", s, results)
        return 0
    for image, found in zip(s.images, results, strict=True):
        print(f"{image}: {len(found)} detection(s)")
        for d in found:
            x1, y1, x2, y2 = d.box
            print(f"  {d.score:6.2%}  {d.label} ({d.index})  [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]")
    return 0


def draw_boxes(image: Path, found: list, out: Path) -> Path:
    """Write ``image`` with its detections drawn (boxes, labels and landmarks) to ``out``."""
    from cvserve.client._images import _pillow

    Image = _pillow()
    from PIL import ImageDraw

    with Image.open(image) as img:
        canvas = img.convert("RGB")
    pen = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 300))
    for d in found:
        pen.rectangle(d.box, outline=(255, 40, 40), width=width)
        pen.text((d.box[0] + 2, d.box[1] + 1), f"{d.label} {d.score:.2f}", fill=(255, 255, 0))
        for x, y in d.landmarks or ():
            pen.ellipse((x - width, y - width, x + width, y + width), fill=(40, 255, 40))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


__all__ = ["PredictSettings", "draw_boxes", "register", "run"]
