"""``cvserve predict NAME IMAGE...``: classify image files with a served model and print the top classes.

Its flags are derived from :class:`PredictSettings` (:mod:`cvserve.settings`, standard library only, so
the core install keeps ``cvserve predict``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from cvserve.settings import add_arguments, from_args, setting

_TLS = "TLS (mutual TLS with a client key and certificate chain)"


@dataclass(kw_only=True)
class PredictSettings:
    """What ``cvserve predict`` takes."""

    model: str = setting(positional=True, metavar="NAME", help="the served model name, e.g. mobilenet_v2")
    images: list[Path] = setting(positional=True, parser=Path, metavar="IMAGE", help="JPEG or PNG files")
    url: str | None = setting(
        None,
        metavar="HOST:PORT",
        help="gRPC address of the server",
        default_help="$CVSERVE_URL or localhost:8001",
    )
    top_k: int | None = setting(
        None, at_least=1, help="classes to print per image", default_help="all the model returns"
    )
    timeout: float = setting(30.0, above=0, help="deadline of the call in seconds")
    json: bool = setting(False, help="print JSON instead of a table")
    ssl: bool = setting(False, group=_TLS, help="use TLS (implied by a certificate flag)")
    root_certificates: Path | None = setting(None, group=_TLS, help="PEM root certificates of the server")
    private_key: Path | None = setting(None, group=_TLS, help="the client's PEM private key")
    certificate_chain: Path | None = setting(None, group=_TLS, help="the client's PEM certificate chain")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``predict`` subcommand to the top-level ``cvserve`` parser."""
    p = subparsers.add_parser(
        "predict",
        help="classify images with a served model",
        description="Send image files to a cvserve (Triton) server and print each image's top classes.",
    )
    add_arguments(
        p, PredictSettings, argument_kwargs=lambda flag: {"nargs": "+"} if flag == "--images" else {}
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Classify the images with the model; return the exit code (0)."""
    from cvserve.client.sync import Client  # keeps `cvserve --help` from importing gRPC

    s = from_args(PredictSettings, args)
    with Client(
        s.url,
        model=s.model,
        timeout=s.timeout,
        ssl=s.ssl,
        root_certificates=s.root_certificates,
        private_key=s.private_key,
        certificate_chain=s.certificate_chain,
    ) as client:
        results = client.classify([str(p) for p in s.images], top_k=s.top_k)
    if s.json:
        payload = [
            {"image": str(image), "classes": [asdict(c) for c in classes]}
            for image, classes in zip(s.images, results, strict=True)
        ]
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for image, classes in zip(s.images, results, strict=True):
        print(image)
        for rank, c in enumerate(classes, 1):
            print(f"  {rank:>2}. {c.score:6.2%}  {c.label} ({c.index})")
    return 0


__all__ = ["PredictSettings", "register", "run"]
