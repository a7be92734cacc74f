"""cvserve.settings: flags derived from settings dataclasses, the duration parser, and the CLI's errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cvserve import cli
from cvserve.errors import CvserveError, NotFoundError, UserInputError
from cvserve.settings import (
    REQUIRED,
    add_arguments,
    check,
    duration,
    flag,
    format_duration,
    from_args,
    like,
    parse_duration,
    setting,
    to_argv,
)


@dataclass(kw_only=True)
class Batching:
    max_batch_size: int = setting(8, at_least=1, help="largest batch")
    max_queue_delay_s: float = duration(0.5, help="how long a request may wait")


@dataclass(kw_only=True)
class Serve:
    name: str = setting(positional=True, metavar="NAME", help="model to serve")
    repository: Path = setting(Path("models"), short="-r", help="the repository")
    runtime: str = setting("openvino", choices=("openvino", "onnxruntime"), help="CPU runtime")
    price_per_hour: float = setting(above=0, help="$ per hour")
    max_cost_usd: float | None = setting(None, flag="--max-cost", help="a limit", default_help="none")
    strict: bool = setting(True, help="refuse unknown files")
    tags: list[str] = setting(default_factory=list, cli=False)
    batching: Batching = setting(default_factory=Batching, title="dynamic batching")


@dataclass(kw_only=True)
class Other:
    runtime: str = like(Serve, "runtime")
    price_per_hour: float = like(Serve, "price_per_hour", 1.0)
    repository: Path = like(Serve, "repository", REQUIRED, short=None)


def parser_for(cls: type) -> argparse.ArgumentParser:
    p = cli._Parser(prog="t")
    add_arguments(p, cls)
    return p


def test_flags_come_from_field_names_and_build_the_dataclass_back():
    args = parser_for(Serve).parse_args(
        [
            "resnet",
            "-r",
            "repo",
            "--price-per-hour",
            "2.5",
            "--max-batch-size",
            "16",
            "--max-queue-delay",
            "1m",
        ]
    )
    s = from_args(Serve, args)
    assert s == Serve(
        name="resnet",
        repository=Path("repo"),
        price_per_hour=2.5,
        batching=Batching(max_batch_size=16, max_queue_delay_s=60.0),
    )
    assert (
        flag(Serve, "max_queue_delay_s") == "--max-queue-delay"
        and flag(Serve, "max_cost_usd") == "--max-cost"
    )
    assert from_args(Serve, args, name="other").name == "other"  # overrides win


def test_help_shows_defaults_groups_and_toggles():
    text = parser_for(Serve).format_help()
    for needle in (
        "the repository (default: models)",
        "--runtime {openvino,onnxruntime}",
        "$ per hour (required)",
        "a limit (default: none)",
        "--strict, --no-strict",
        "refuse unknown files (default: --strict)",
        "dynamic batching:",
        "how long a request may wait (default: 0.5s)",
    ):
        assert needle in text, needle
    assert "--tags" not in text
    s = from_args(Serve, parser_for(Serve).parse_args(["m", "--price-per-hour", "1", "--no-strict"]))
    assert s.strict is False and s.tags == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--price-per-hour", "0"], "argument --price-per-hour: must be positive"),
        (["--price-per-hour", "x"], "argument --price-per-hour: 'x' is not a number"),
        (["--price-per-hour", "nan"], "argument --price-per-hour: 'nan' is not a number"),
        (
            ["--price-per-hour", "1", "--max-batch-size", "0"],
            "argument --max-batch-size: must be at least 1, not 0",
        ),
        (["--price-per-hour", "1", "--max-batch-size", "2.5"], "'2.5' is not a whole number"),
        (
            ["--price-per-hour", "1", "--max-queue-delay", "soon"],
            "'soon' is not a duration: use e.g. 90, 60s",
        ),
        (["--price-per-hour", "1", "--runtime", "tvm"], "argument --runtime: invalid choice: 'tvm'"),
        ([], "the following arguments are required: --price-per-hour"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        parser_for(Serve).parse_args(["m", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("t: error: ") and message in err and "(see t --help)" in err


def test_check_applies_the_declared_ranges_to_code_built_settings():
    check(Serve(name="m", price_per_hour=1.0))
    with pytest.raises(UserInputError, match="--max-batch-size must be at least 1, not 0"):
        check(Serve(name="m", price_per_hour=1.0, batching=Batching(max_batch_size=0)))
    with pytest.raises(UserInputError, match="--runtime must be one of openvino, onnxruntime, not 'tvm'"):
        check(Serve(name="m", price_per_hour=1.0, runtime="tvm"))


def test_to_argv_gives_the_same_settings_back():
    s = Serve(name="m", price_per_hour=2.0, strict=False, batching=Batching(max_queue_delay_s=90.0))
    argv = to_argv(s)
    assert "--no-strict" in argv and "--max-cost" not in argv  # None is left out
    assert argv[argv.index("--max-queue-delay") + 1] == "90.0"
    back = from_args(
        Serve, parser_for(Serve).parse_args(["m", *[a for a in argv if a not in ("--name", "m")]])
    )
    assert back == s
    assert to_argv(s, ["runtime"]) == ["--runtime", "openvino"]


def test_like_reuses_another_commands_definition():
    text = parser_for(Other).format_help()
    assert "CPU runtime (default: openvino)" in text and "$ per hour (default: 1.0)" in text
    assert "the repository (required)" in text and "-r," not in text and "-r PATH" not in text
    o = from_args(Other, parser_for(Other).parse_args(["--repository", "x"]))
    assert o == Other(repository=Path("x"))


def test_optional_registration_for_another_tool():
    """What the Locust suite does: a subset, its own defaults, nothing required, extra keywords."""
    p = argparse.ArgumentParser()
    seen = []
    add_arguments(
        p,
        Serve,
        only=("name", "price_per_hour", "max_queue_delay_s"),
        defaults={"max_queue_delay_s": 0.0},
        optional=True,
        argument_kwargs=lambda f: seen.append(f) or {},
    )
    args = p.parse_args([])
    assert (args.name, args.price_per_hour, args.max_queue_delay_s) == (None, None, 0.0)
    assert p.parse_args(["--name", "m"]).name == "m" and sorted(seen) == [
        "--max-queue-delay",
        "--name",
        "--price-per-hour",
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("60s", 60.0), ("2m", 120.0), ("1m30s", 90.0), ("1m 30s", 90.0), ("1.5m", 90.0),
     ("1h", 3600.0), ("1h30m", 5400.0), ("0.5s", 0.5), ("0", 0.0), (45, 45.0)],
)  # fmt: skip
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "5ms", "1d", "m", "inf"])
def test_parse_duration_rejects(text):
    with pytest.raises(UserInputError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(90, "1m30s"), (60, "1m"), (3600, "1h"), (5400, "1h30m"), (0, "0s"), (0.5, "0.5s")]
)
def test_format_duration_round_trips(seconds, text):
    assert format_duration(seconds) == text and parse_duration(text) == seconds


def test_settings_import_nothing_heavy():
    code = (
        "import sys, cvserve.settings, cvserve.loadtests.settings, cvserve.tune.settings\n"
        "heavy = [m for m in ('numpy', 'tritonclient', 'grpc', 'jinja2', 'locust') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class GoldenSetBroken(UserInputError):
    exit_code = 2


def test_cli_maps_both_error_trees_and_keeps_bugs():
    from cvserve.client.errors import ServerUnavailable

    assert cli._user_error(NotFoundError("x")) == 1
    assert cli._user_error(GoldenSetBroken("x")) == 2
    assert cli._user_error(CvserveError("x", exit_code=3)) == 3
    assert cli._user_error(ServerUnavailable("down")) == 1
    assert cli._user_error(ValueError("a bug")) is None


def test_a_user_error_is_one_line_without_traceback(tmp_path, capsys):
    code = cli.main(
        ["tune", "m", "--images", str(tmp_path / "missing"), "--slo-p95-ms", "50", "--price-per-hour", "1"]
    )
    err = capsys.readouterr().err
    assert (
        code == 1
        and err == f"cvserve tune: error: --images {tmp_path / 'missing'} is not a folder of images\n"
    )
