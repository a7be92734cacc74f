"""Settings spelled once: command-line flags derived from keyword-only dataclasses.

A command's settings are one dataclass. Each field is a setting: its flag comes from the field name
(``max_batch_size`` -> ``--max-batch-size``), its type from the annotation, its default from the
dataclass (shown in ``--help``), and its help, choices, range, parser, metavar and short alias from the
field's metadata, written with :func:`setting` (or :func:`duration` for a length of time). A field whose
type is itself a settings dataclass becomes an argument group; a ``bool`` becomes ``--x/--no-x``.
:func:`from_args` builds the dataclass back from the parsed namespace, so no field is copied by hand::

    import argparse
    from dataclasses import dataclass
    from pathlib import Path

    from cvserve.settings import add_arguments, duration, from_args, setting

    @dataclass(kw_only=True)
    class Batching:
        max_batch_size: int = setting(8, help="largest batch the server forms", at_least=1)
        max_queue_delay_s: float = duration(0.0005, help="how long a request may wait for a batch")

    @dataclass(kw_only=True)
    class ServeSettings:
        name: str = setting(positional=True, metavar="NAME", help="model to serve")
        repository: Path = setting(Path("models"), short="-r", help="the model repository")
        runtime: str = setting("openvino", choices=("openvino", "onnxruntime"), help="CPU runtime")
        exit_timeout_s: float = duration(30.0, help="how long the server may take to stop")  # --exit-timeout
        strict: bool = setting(True, help="refuse a repository with unknown files")  # --strict/--no-strict
        batching: Batching = setting(default_factory=Batching, title="dynamic batching")  # a group

    parser = argparse.ArgumentParser()
    add_arguments(parser, ServeSettings)
    settings = from_args(ServeSettings, parser.parse_args(["resnet", "--max-batch-size", "16"]))
    assert settings.batching.max_batch_size == 16 and settings.exit_timeout_s == 30.0

The rules, each kept here only:

* Flag: ``--`` + the field name with ``-`` for ``_``; a :func:`duration` field drops its unit suffix
  ``_s`` (``warmup_s`` -> ``--warmup``); ``setting(flag="--other")`` overrides. :func:`flag` tells the
  flag of a field, for messages ("--users must be at least 1").
* Types: ``int``, ``float``, ``str``, ``Path``, ``bool`` and ``X | None`` of those; anything else needs
  ``parser=``. A value that does not parse, or breaks ``at_least``/``above``/``at_most``/``choices``,
  is one line naming the flag and the fix (argparse's exit status 2). :func:`check` applies the same
  checks to a dataclass built in code, raising :class:`~cvserve.errors.UserInputError`.
* A field without a default is required (an option, or a positional with ``positional=True``);
  ``setting(cli=False)`` keeps a field out of the command line (it must have a default).
* Durations: :func:`parse_duration` is the one parser ("90", "60s", "2m", "1m30s", "1h"), and
  :func:`format_duration` writes them back.

* Groups in ``--help``: a nested settings dataclass (``title=``/``description=``), or
  ``setting(group="gates")`` on a flat field. Field names must be unique across the nested groups (the
  parsed namespace is flat).

Sharing definitions: ``like(OtherSettings, "url")`` declares the same setting in another command
(``like(..., default, help=...)`` changes what differs; ``default=REQUIRED`` drops the default).
``add_arguments(..., only=, defaults=, parsers=, optional=True, argument_kwargs=)`` registers a subset
on someone else's parser (the Locust suite registers its options this way, with ``LOCUST_*`` environment
variables; ``optional=True`` makes positionals ``--name`` flags and nothing required), and
:func:`to_argv` writes a dataclass back as flags (how ``cvserve loadtest`` starts Locust);
``from_args(Other, as_mapping(settings), **changes)`` builds one command's settings from another's
(how ``cvserve tune`` and ``release`` describe their load tests). ruff knows
``setting``/``duration``/``like`` as field specifiers (``extend-immutable-calls`` in pyproject.toml).

Why not a library: simple-parsing, tyro or datargs own the parser and the flag style; these settings
also go onto Locust's configargparse parser with per-flag ``env_var=``, keep the existing flag names
(unit suffixes dropped), and must import nothing beyond the standard library so that
``cvserve --help`` stays fast on the core install. The whole helper is this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cvserve.errors import UserInputError

__all__ = [
    "REQUIRED",
    "add_arguments",
    "as_mapping",
    "check",
    "duration",
    "flag",
    "format_duration",
    "from_args",
    "like",
    "parse_duration",
    "setting",
    "to_argv",
]

_KEY = "cvserve.settings"  # the field-metadata key holding a setting's command-line description
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


# -- durations ------------------------------------------------------------------------------------
def parse_duration(text: str | float) -> float:
    """Seconds in ``"90"``, ``"60s"``, ``"2m"``, ``"1m30s"``, ``"1.5m"``, ``"1h"`` (a number is seconds).

    Raises:
        UserInputError: ``text`` is not a duration.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _DURATION.fullmatch(re.sub(r"\s+", "", str(text).lower()))
        if not m or not any(m.groups()):
            raise UserInputError(f"{text!r} is not a duration: use e.g. 90, 60s, 2m, 1m30s or 1h")
        h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    if not math.isfinite(seconds) or seconds < 0:
        raise UserInputError(f"{text!r} is not a duration: use e.g. 90, 60s, 2m, 1m30s or 1h")
    return seconds


def integers(text: str) -> tuple[int, ...]:
    """``"1,16,64"`` -> ``(1, 16, 64)``: a list setting's command-line text (empty parts ignored).

    Raises:
        UserInputError: a part is not a whole number.
    """
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserInputError(f"{text!r}: give comma-separated whole numbers, e.g. 4,8") from None


def names(text: str) -> tuple[str, ...]:
    """``"a, b"`` -> ``("a", "b")``: a list setting's command-line text (empty parts ignored)."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def format_duration(seconds: float) -> str:
    """``90`` -> ``"1m30s"``, ``3600`` -> ``"1h"``, ``0.5`` -> ``"0.5s"``: what :func:`parse_duration` reads."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")


# -- declaring settings ---------------------------------------------------------------------------
def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str | None = None,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    flag: str | None = None,
    short: str | None = None,
    metavar: str | None = None,
    choices: Sequence[Any] | None = None,
    parser: Callable[[str], Any] | None = None,
    positional: bool = False,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    default_help: str | None = None,
    group: str | None = None,
    title: str | None = None,
    description: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field that is also a command-line setting.

    Args:
        default: the default (omit, with no ``default_factory``, for a required setting).
        help: one line for ``--help``; the default is appended to it.
        default_factory: as in :func:`dataclasses.field` (a nested settings dataclass, a list).
        flag: the flag when the field name does not make it (``"--max-cost-per-1k"``).
        short: a short alias (``"-u"``).
        metavar: the value's name in ``--help``.
        choices: the allowed values.
        parser: turns the command-line text into the value (``int``/``float``/``Path`` by default).
        positional: a positional argument instead of a flag.
        at_least, above, at_most: the value's range (``above=0``: positive).
        default_help: says what ``None`` means in ``--help`` ("default: --users").
        group: title of the argument group of this flag in ``--help``.
        title, description: the argument group of a nested settings dataclass.
        cli: ``False`` keeps the field off the command line.
    """
    spec = {
        "help": help,
        "flag": flag,
        "short": short,
        "metavar": metavar,
        "choices": tuple(choices) if choices is not None else None,
        "parser": parser,
        "positional": positional,
        "at_least": at_least,
        "above": above,
        "at_most": at_most,
        "default_help": default_help,
        "group": group,
        "title": title,
        "description": description,
        "cli": cli,
    }
    kw: dict[str, Any] = {"metadata": {_KEY: spec}}
    if default_factory is not dataclasses.MISSING:
        kw["default_factory"] = default_factory
    elif default is not dataclasses.MISSING:
        kw["default"] = default
    return dataclasses.field(**kw)


def model_names_setting(flag: str, help: str) -> Any:
    """A list of model names, one per ``flag NAME`` (empty by default; the command appends them)."""
    return setting(default_factory=list, flag=flag, metavar="NAME", parser=str, help=help)


def duration(default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A length of time in seconds, given as ``90``, ``60s``, ``2m``, ``1m30s`` or ``1h``.

    The field name ends in ``_s``; the flag drops it (``warmup_s`` -> ``--warmup``). Takes the
    arguments of :func:`setting`.
    """
    kw.setdefault("metavar", "DURATION")
    return setting(default, parser=parse_duration, **kw)


def like(cls: type, name: str, default: Any = dataclasses.MISSING, **changes: Any) -> Any:
    """Setting ``name`` of settings class ``cls`` again, for another command: one definition, two
    commands (``url: str = like(LoadTestSettings, "url")``). ``default`` and ``changes`` (keywords of
    :func:`setting`) replace the original's; ``default=REQUIRED`` makes it required."""
    original = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if original is None:
        raise KeyError(f"{cls.__name__} has no setting {name!r}")
    spec = {**(original.metadata.get(_KEY) or {}), **changes}
    if default is REQUIRED:
        return setting(**spec)
    if default is not dataclasses.MISSING:
        return setting(default, **spec)
    if original.default_factory is not dataclasses.MISSING:
        return setting(default_factory=original.default_factory, **spec)
    return setting(original.default, **spec)


REQUIRED: Any = object()  # like(..., default=REQUIRED): the copy has no default


# -- reading the declarations ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Setting:
    field: dataclasses.Field
    kind: Any  # the annotation without Optional
    spec: dict

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def nested(self) -> bool:
        return dataclasses.is_dataclass(self.kind)

    @property
    def flag(self) -> str:
        if self.spec.get("flag"):
            return self.spec["flag"]
        name = self.name
        if self.spec.get("parser") is parse_duration and name.endswith("_s"):
            name = name[:-2]
        return "--" + name.replace("_", "-")

    @property
    def default(self) -> Any:
        f = self.field
        if f.default is not dataclasses.MISSING:
            return f.default
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return dataclasses.MISSING


def _settings(cls: type) -> list[_Setting]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind = hints.get(f.name, Any)
        args = typing.get_args(kind)
        if (typing.get_origin(kind) in (typing.Union, types.UnionType)) and type(None) in args:
            rest = [a for a in args if a is not type(None)]
            kind = rest[0] if len(rest) == 1 else Any
        out.append(_Setting(f, kind, dict(f.metadata.get(_KEY) or {"cli": True})))
    return out


def _walk(cls: type, only: Iterable[str] | None = None) -> Iterable[tuple[_Setting, _Setting | None]]:
    """Every command-line setting of ``cls`` (nested ones too) with the nested field it is under."""
    wanted = set(only) if only is not None else None
    for s in _settings(cls):
        if not s.spec.get("cli", True):
            continue
        if s.nested:
            for inner, _ in _walk(s.kind, only):
                yield inner, s
        elif wanted is None or s.name in wanted:
            yield s, None


def flag(cls: type, name: str) -> str:
    """The flag of setting ``name`` of ``cls`` (nested dataclasses searched too), e.g. ``"--warmup"``."""
    for s, _ in _walk(cls):
        if s.name == name:
            return s.flag
    raise KeyError(f"{cls.__name__} has no command-line setting {name!r}")


# -- values ---------------------------------------------------------------------------------------
def _range_error(s: _Setting, value: Any) -> str | None:
    if value is None or not isinstance(value, int | float) or isinstance(value, bool):
        return None
    spec = s.spec
    shown = format_duration(value) if spec.get("parser") is parse_duration else value
    if spec.get("at_least") is not None and value < spec["at_least"]:
        return f"must be at least {spec['at_least']:g}, not {shown}"
    if spec.get("above") is not None and value <= spec["above"]:
        return "must be positive" if spec["above"] == 0 else f"must be above {spec['above']:g}, not {shown}"
    if spec.get("at_most") is not None and value > spec["at_most"]:
        return f"must be at most {spec['at_most']:g}, not {shown}"
    return None


def _base_parser(s: _Setting) -> Callable[[str], Any]:
    if s.spec.get("parser"):
        return s.spec["parser"]
    if s.kind is int:
        return _number(int, "a whole number")
    if s.kind is float:
        return _number(float, "a number")
    if s.kind in (str, Path):
        return s.kind
    raise TypeError(f"setting {s.name!r} ({s.kind!r}) needs parser= to be read from the command line")


def _number(kind: type, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise UserInputError(f"{text!r} is not {what}") from None
        if kind is float and not math.isfinite(value):
            raise UserInputError(f"{text!r} is not {what}")
        return value

    return parse


def _converter(s: _Setting, base: Callable[[str], Any] | None = None) -> Callable[[str], Any]:
    base = base or _base_parser(s)

    def convert(text: str) -> Any:
        try:
            value = base(text)
        except UserInputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        problem = _range_error(s, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    convert.__name__ = getattr(base, "__name__", s.name)
    return convert


def _show(s: _Setting, value: Any) -> str:
    if isinstance(value, bool):
        return s.flag if value else "--no-" + s.flag[2:]
    if s.spec.get("parser") is parse_duration and isinstance(value, int | float):
        return format_duration(value)
    if isinstance(value, tuple | list):  # as the flag takes it: 224,224
        return ",".join(map(str, value))
    return str(value)


def check(settings: Any) -> None:
    """Check a settings dataclass built in code against its declared ranges and choices.

    Raises:
        UserInputError: naming the flag, e.g. "--users must be at least 1, not 0".
    """
    for s in _settings(type(settings)):
        value = getattr(settings, s.name)
        if s.nested and value is not None:
            check(value)
            continue
        problem = _range_error(s, value)
        choices = s.spec.get("choices")
        if problem is None and choices and value is not None and value not in choices:
            problem = f"must be one of {', '.join(map(str, choices))}, not {value!r}"
        if problem:
            raise UserInputError(f"{s.flag} {problem}")


# -- argparse -------------------------------------------------------------------------------------
class _Toggle(argparse.Action):
    """``--x`` sets True, ``--no-x`` sets False."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        long = next(o for o in option_strings if o.startswith("--"))
        super().__init__([*option_strings, "--no-" + long[2:]], dest, nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, not (option_string or "").startswith("--no-"))

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def _help(s: _Setting, default: Any, required: bool) -> str:
    text = (s.spec.get("help") or "").replace("%", "%%")
    if required and not s.spec.get("positional"):
        note = "required"
    elif default is None or default is dataclasses.MISSING:
        note = f"default: {s.spec['default_help']}" if s.spec.get("default_help") else ""
    elif isinstance(default, list | tuple | dict) and not default:
        note = ""
    else:
        note = f"default: {_show(s, default)}".replace("%", "%%")
    return f"{text} ({note})" if note and text else (text or note)


def _metavar(s: _Setting) -> str | None:
    if s.spec.get("metavar") or s.spec.get("choices"):
        return s.spec.get("metavar")
    by_type = {int: "N", float: "NUM", Path: "PATH"}
    return by_type.get(s.kind) or (None if s.spec.get("positional") else s.flag[2:].replace("-", "_").upper())


def add_command(
    subparsers: Any,
    name: str,
    cls: type,
    run: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
    argument_kwargs: Callable[[str], dict] | None = None,
) -> argparse.ArgumentParser:
    """The subcommand ``name``: its flags are ``cls``'s settings (:func:`add_arguments`), ``run(args)``
    runs it."""
    parser = subparsers.add_parser(name, help=help, description=description)
    add_arguments(parser, cls, argument_kwargs=argument_kwargs)
    parser.set_defaults(func=run)
    return parser


def add_arguments(
    parser: Any,
    cls: type,
    *,
    only: Iterable[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    parsers: Mapping[str, Callable[[str], Any]] | None = None,
    optional: bool = False,
    argument_kwargs: Callable[[str], dict] | None = None,
) -> None:
    """Add a flag (or positional) for every setting of ``cls`` to ``parser``.

    Args:
        parser: an ``argparse.ArgumentParser`` (or a compatible one, such as Locust's).
        cls: the settings dataclass; nested settings dataclasses become argument groups.
        only: register just these field names.
        defaults: field name -> a default that differs from the dataclass's for this parser.
        parsers: field name -> a parser that differs from the setting's for this parser (``str``
            for a path that must stay a plain string, as Locust sends options to its workers).
        optional: every setting an optional flag (positionals too) and none required: a setting
            not given is ``None`` unless it has a default.
        argument_kwargs: flag -> extra ``add_argument`` keywords (e.g. Locust's ``env_var``).
    """
    defaults = dict(defaults or {})
    groups: dict[str | None, Any] = {None: parser}

    def container(title: str | None, description: str | None = None) -> Any:
        if title not in groups:
            groups[title] = parser.add_argument_group(title, description)
        return groups[title]

    seen: dict[str, str] = {}
    for s, outer in _walk(cls, only):
        if s.name in seen:
            raise TypeError(f"setting {s.name!r} appears twice in {cls.__name__} ({seen[s.name]})")
        seen[s.name] = outer.name if outer else cls.__name__
        if outer is not None:
            title = outer.spec.get("title") or outer.name.replace("_", " ")
            target = container(title, outer.spec.get("description"))
        else:
            target = container(s.spec.get("group"))
        default = defaults.get(s.name, s.default)
        required = default is dataclasses.MISSING and not optional
        if default is dataclasses.MISSING:
            default = None
        kw: dict[str, Any] = {"help": _help(s, default, required), "default": default}
        kw.update(argument_kwargs(s.flag) if argument_kwargs else {})
        if s.kind is bool:
            target.add_argument(s.flag, dest=s.name, action=_Toggle, **kw)
            continue
        kw |= {
            "type": _converter(s, (parsers or {}).get(s.name)),
            "metavar": _metavar(s),
            "choices": s.spec.get("choices"),
        }
        if s.spec.get("positional") and not optional:
            if not required:
                kw["nargs"] = "?"
            target.add_argument(s.name, **kw)
        else:
            names = [s.spec["short"], s.flag] if s.spec.get("short") else [s.flag]
            target.add_argument(*names, dest=s.name, required=required, **kw)


def from_args(cls: type, namespace: argparse.Namespace | Mapping[str, Any], **overrides: Any) -> Any:
    """Build ``cls`` from parsed arguments (nested settings too); ``overrides`` win over the namespace.

    Settings kept off the command line (``cli=False``) and settings absent from the namespace keep
    their dataclass defaults.
    """
    values = namespace if isinstance(namespace, Mapping) else vars(namespace)
    kwargs: dict[str, Any] = {}
    for s in _settings(cls):
        if s.name in overrides:
            kwargs[s.name] = overrides[s.name]
        elif s.nested and s.spec.get("cli", True):
            kwargs[s.name] = from_args(s.kind, values)
        elif s.spec.get("cli", True) and s.name in values:
            kwargs[s.name] = values[s.name]
    return cls(**kwargs)


def as_mapping(settings: Any) -> dict[str, Any]:
    """Every setting of ``settings`` by field name, nested ones too: what :func:`from_args` reads.

    ``from_args(Other, as_mapping(settings), **changes)`` builds another command's settings from the
    ones this command took with :func:`like` (same name, same setting), with nothing copied by hand.
    """
    out: dict[str, Any] = {}
    for s in _settings(type(settings)):
        value = getattr(settings, s.name)
        if s.nested and value is not None:
            out.update(as_mapping(value))
        else:
            out[s.name] = value
    return out


def to_argv(settings: Any, only: Iterable[str] | None = None) -> list[str]:
    """The flags that give ``settings`` back (``None`` values left out): ``["--users", "8", ...]``."""
    argv: list[str] = []
    wanted = list(only) if only is not None else None
    pairs = [(s, getattr(settings, s.name)) for s in _settings(type(settings))]
    for s, value in pairs:
        if not s.spec.get("cli", True) or value is None:
            continue
        if s.nested:
            argv += to_argv(value, wanted)
            continue
        if wanted is not None and s.name not in wanted:
            continue
        if isinstance(value, bool):
            argv.append(_show(s, value))
        elif isinstance(value, tuple | list):
            argv += [s.flag, _show(s, value)] if value else []  # empty: the flag's own default
        else:
            argv += [s.flag, str(value)]
    return argv
