"""The ``cvserve`` command line: one entry point, one subcommand per product part.

Each part registers its own subcommand (``register(subparsers)``) in the module next to its code, and
keeps heavy imports inside the command's function so that ``cvserve --help`` stays fast and works with
only the core install.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cvserve import __version__
from cvserve.errors import CvserveError

# Modules that define a `register(subparsers)` function, in the order shown by --help.
_COMMAND_MODULES = (
    "cvserve.builders.cli",  # build
    "cvserve.server.cli",  # serve
    "cvserve.client.cli",  # predict
    "cvserve.loadtests.cli",  # loadtest
    "cvserve.tune.cli",  # tune
    "cvserve.k8s.cli",  # k8s
    "cvserve.release.cli",  # release
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvserve",
        description="Build, serve, load-test, tune and deploy computer-vision models on Triton.",
    )
    parser.add_argument("--version", action="version", version=f"cvserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
            continue  # that part is not written yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CvserveError as exc:
        print(f"cvserve {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cvserve {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from cvserve.client.errors import ClientError

        if isinstance(exc, ClientError):
            print(f"cvserve {args.command}: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
