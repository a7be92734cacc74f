"""The ``cvserve`` command line: one entry point, one subcommand per product part.

Each part registers its own subcommand (``register(subparsers)``) in the module next to its code,
deriving its flags from its settings dataclass (:mod:`cvserve.settings`), and keeps heavy imports inside
the command's function so that ``cvserve --help`` stays fast and works with only the core install.

Errors (see :mod:`cvserve.errors` for both trees): a :class:`~cvserve.errors.CvserveError` or a
:class:`~cvserve.client.ClientError` prints one line, ``cvserve COMMAND: error: MESSAGE``, and exits with
the error's ``exit_code`` (1 unless its class says otherwise); a bad flag prints one line naming the flag
and exits 2 (argparse's convention); Ctrl-C exits 130; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from cvserve import __version__
from cvserve.errors import CvserveError

# Modules that define a `register(subparsers)` function, in the order shown by --help.
_COMMAND_MODULES = (
    "cvserve.builders.cli",  # build
    "cvserve.server.cli",  # serve
    "cvserve.client.cli",  # predict
    "cvserve.loadtests.cli",  # loadtest
    "cvserve.tune.cli",  # tune
    "cvserve.release.cli",  # release
    "cvserve.monitor.cli",  # monitor
    "cvserve.k8s.cli",  # k8s
)


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line ("cvserve loadtest: error: argument --users: ..."), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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


def _user_error(exc: BaseException) -> int | None:
    """The exit status for an error meant for the user, or ``None`` for a bug."""
    if isinstance(exc, CvserveError):
        return exc.exit_code
    client_errors = sys.modules.get("cvserve.client.errors")  # loaded only if the client was used
    if client_errors is not None and isinstance(exc, client_errors.ClientError):
        return 1
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"cvserve {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        code = _user_error(exc)
        if code is None:
            raise
        print(f"cvserve {args.command}: error: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
