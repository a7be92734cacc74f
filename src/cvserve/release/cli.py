"""``cvserve release``: go/no-go for a candidate version; exit 0 go, 1 no-go, 2 bad input.

The flags are derived from :class:`~cvserve.release.settings.ReleaseSettings` (:mod:`cvserve.settings`).
"""

from __future__ import annotations

import argparse

from cvserve.errors import UserInputError
from cvserve.release.settings import ReleaseSettings, RollbackSettings
from cvserve.settings import add_command, from_args

EXIT_GO, EXIT_NO_GO, EXIT_BAD_INPUT = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "release",
        ReleaseSettings,
        run,
        help="go/no-go for a new model version: golden-set regressions per slice, p95, cost; model card; "
        "promotion",
        description="Serve the candidate and baseline versions of NAME under shadow names (production "
        "traffic never reaches the candidate), run the golden set through each (classify or detect: the "
        "candidate's build report names its task), load-test each, apply the gates, write release_report.json/.md and MODEL_CARD.md, and with --promote make a go "
        "candidate the served version. Exit status: 0 go, 1 no-go (or the release failed), 2 bad input. "
        "Durations take 90, 60s, 2m, 1m30s or 1h.",
    )

    add_command(
        sub,
        "rollback",
        RollbackSettings,
        run_rollback,
        help="serve an earlier version of a built model again",
        description="Pin NAME to VERSION: restore the configs that version was built with, with "
        "version_policy specific, atomically. With --url, also switch the running server through "
        "explicit model control, the way --promote does (no failed request; the previous configs come "
        "back if the switch fails). Without it, a poll-mode server picks the change up by itself; "
        "restart a none-mode server.",
    )


def settings_from_args(args: argparse.Namespace) -> ReleaseSettings:
    return from_args(ReleaseSettings, args)


def run(args: argparse.Namespace) -> int:
    from cvserve.release.pipeline import run_release
    from cvserve.release.report import summary_lines

    try:
        result = run_release(settings_from_args(args))
    except UserInputError as exc:  # bad input is exit 2 here (1 is a no-go); cvserve.cli prints it
        exc.exit_code = EXIT_BAD_INPUT
        raise
    for line in summary_lines(result.report, result.report_dir):
        print(line)
    return EXIT_GO if result.go else EXIT_NO_GO


def run_rollback(args: argparse.Namespace) -> int:
    from cvserve.release.promote import switch

    s = from_args(RollbackSettings, args)
    switch(s.repository, s.name, s.version, url=s.url, headers=s.control_headers or None)
    if s.url is None:
        print(
            f"{s.name} is pinned to version {s.version} in {s.repository}: a poll-mode server picks it up; "
            "pass --url to switch an explicit-mode server now, or restart a none-mode server"
        )
    return 0
