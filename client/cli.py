"""``cvserve predict NAME IMAGE...``: classify image files with a served model and print the top classes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``predict`` subcommand to the top-level ``cvserve`` parser."""
    p = subparsers.add_parser(
        "predict",
        help="classify images with a served model",
        description="Send image files to a cvserve (Triton) server and print each image's top classes.",
    )
    p.add_argument("model", metavar="NAME", help="the served model name, e.g. mobilenet_v2")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (JPEG, PNG...)")
    p.add_argument(
        "--url",
        default=os.environ.get("CVSERVE_URL", "localhost:8001"),
        help="gRPC address host:port of the server (default: $CVSERVE_URL or localhost:8001)",
    )
    p.add_argument(
        "--top-k", type=int, default=None, help="classes to print per image (default: all the model returns)"
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="deadline of the call in seconds (default: 30)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Classify ``args.images`` with ``args.model``; return the exit code (0)."""
    from cvserve.client.sync import Client  # keeps `cvserve --help` from importing gRPC

    with Client(args.url, model=args.model, timeout=args.timeout) as client:
        results = client.classify(args.images, top_k=args.top_k)
    if args.json:
        payload = [
            {"image": image, "classes": [asdict(c) for c in classes]}
            for image, classes in zip(args.images, results, strict=True)
        ]
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for image, classes in zip(args.images, results, strict=True):
        print(image)
        for rank, c in enumerate(classes, 1):
            print(f"  {rank:>2}. {c.score:6.2%}  {c.label} ({c.index})")
    return 0


__all__ = ["register", "run"]
