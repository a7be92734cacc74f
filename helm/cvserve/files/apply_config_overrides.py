"""Build an overlay Triton model repository with per-model config overrides (runs in an init container).

    python3 apply_config_overrides.py SOURCE OVERLAY OVERRIDES_JSON

Every entry of SOURCE becomes a symlink in OVERLAY, except the models named in OVERRIDES_JSON: those get a
real directory whose entries are symlinks too, and a config.pbtxt into which the override is merged:
a message field (a JSON object, e.g. ``dynamic_batching`` or its ``default_queue_policy``) is merged field
by field into the one the build wrote, so ``{"dynamic_batching": {"default_queue_policy":
{"max_queue_size": 64}}}`` changes the queue bound and keeps the preferred batch sizes, the queue delay and
the queue timeout; a scalar or a list (e.g. ``preferred_batch_size: [8]``, or ``[]`` to drop them) replaces
what was there, and so does ``version_policy`` (a oneof: ``{"specific": {"versions": [3]}}`` pins version 3). Everything not overridden stays verbatim. Weights are never copied. Only the Python
standard library is used, so the Triton image's own python3 runs it. A model named in the overrides that
is not in SOURCE is an error: a typo must not be silently ignored.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENUM = re.compile(r"[A-Z][A-Z0-9_]*")
# Messages that are a protobuf oneof (latest / all / specific): merging two members would set both, which
# Triton refuses to parse, so an override replaces them whole.
REPLACED_WHOLE = {"version_policy"}


class OverrideError(Exception):
    """The overrides or the repository are not usable; the message says why."""


def _skip_string(text: str, i: int) -> int:
    quote = text[i]
    i += 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    raise OverrideError("unterminated string in config.pbtxt")


def _skip_blank(text: str, i: int) -> int:
    while i < len(text):
        if text[i].isspace():
            i += 1
        elif text[i] == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end + 1
        else:
            break
    return i


def _skip_value(text: str, i: int) -> int:
    """Index just past the value starting at ``i``: a {...} or [...] group, a string or a bare token."""
    if text[i] in "{[<":
        depth = 0
        while i < len(text):
            c = text[i]
            if c in "\"'":
                i = _skip_string(text, i)
                continue
            if c == "#":
                i = _skip_blank(text, i)
                continue
            if c in "{[<":
                depth += 1
            elif c in "}]>":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        raise OverrideError("unbalanced braces in config.pbtxt")
    if text[i] in "\"'":
        i = _skip_string(text, i)
        # adjacent string literals concatenate in text format
        j = _skip_blank(text, i)
        while j < len(text) and text[j] in "\"'":
            i = _skip_string(text, j)
            j = _skip_blank(text, i)
        return i
    j = i
    while j < len(text) and not text[j].isspace() and text[j] not in ",;#{}[]":
        j += 1
    return j


def fields(text: str, start: int = 0, end: int | None = None) -> list[tuple[str, int, int, int]]:
    """(name, start, value_start, end) of every field of a text-format message body in text[start:end]."""
    end = len(text) if end is None else end
    found = []
    i = _skip_blank(text, start)
    while i < end:
        m = _IDENT.match(text, i)
        if not m:
            raise OverrideError(f"cannot parse config.pbtxt near {text[i : i + 40]!r}")
        first, name = i, m.group(0)
        i = _skip_blank(text, m.end())
        if i < end and text[i] == ":":
            i = _skip_blank(text, i + 1)
        if i >= end:
            raise OverrideError(f"field {name!r} has no value in config.pbtxt")
        value = i
        i = _skip_value(text, i)
        if i > end:
            raise OverrideError(f"field {name!r} runs past its message in config.pbtxt")
        j = _skip_blank(text, i)
        if j < end and text[j] in ",;":
            i = j + 1
        found.append((name, first, value, i))
        i = _skip_blank(text, i)
    return found


def top_level_fields(text: str) -> list[tuple[str, int, int]]:
    """(name, start, end) of every top-level field of a text-format message."""
    return [(name, first, last) for name, first, _, last in fields(text)]


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if _ENUM.fullmatch(value) else json.dumps(value)
    raise OverrideError(f"unsupported value {value!r}")


def render_field(name: str, value: object, indent: str = "") -> str:
    """Text-format protobuf for one field from its JSON form (dict = message, list = repeated)."""
    if isinstance(value, dict):
        body = "".join(render_field(k, v, indent + "  ") for k, v in value.items())
        return f"{indent}{name} {{\n{body}{indent}}}\n"
    if isinstance(value, list):
        if all(isinstance(v, dict) for v in value):
            return "".join(render_field(name, v, indent) for v in value)
        return f"{indent}{name}: [{', '.join(_scalar(v) for v in value)}]\n"
    return f"{indent}{name}: {_scalar(value)}\n"


def merge_message(text: str, start: int, end: int, override: dict, indent: str = "") -> str:
    """The message body text[start:end] with ``override`` merged in (see the module docstring)."""
    kept, existing = [], {}
    for name, first, value, last in fields(text, start, end):
        existing.setdefault(name, []).append((value, last))
        if name not in override:
            kept.append(f"{indent}{text[first:last].strip()}\n")
    merged = []
    for name, value in override.items():
        old = existing.get(name, [])
        mergeable = isinstance(value, dict) and name not in REPLACED_WHOLE
        if mergeable and len(old) == 1 and text[old[0][0]] in "{<":
            body_start, body_end = old[0][0] + 1, old[0][1] - 1  # inside the braces
            while text[body_end] not in "}>":
                body_end -= 1
            body = merge_message(text, body_start, body_end, value, indent + "  ")
            merged.append(f"{indent}{name} {{\n{body}{indent}}}\n")
        else:
            merged.append(render_field(name, value, indent))
    return "".join(kept) + "".join(merged)


def apply_override(text: str, override: dict) -> str:
    """Merge the override into a config.pbtxt, keeping every field it does not name verbatim."""
    header = "# cvserve: modelConfigOverrides from the Helm values are merged into this config\n"
    return header + merge_message(text, 0, len(text), override)


def build_overlay(source: str, overlay: str, overrides: dict[str, dict]) -> list[str]:
    """Fill ``overlay`` with symlinks into ``source`` and patched configs; returns the overridden models."""
    entries = sorted(os.listdir(source))
    missing = sorted(set(overrides) - {e for e in entries if os.path.isdir(os.path.join(source, e))})
    if missing:
        raise OverrideError(
            f"modelConfigOverrides name models that are not in the repository {source}: {', '.join(missing)} "
            f"(models there: {', '.join(entries) or 'none'})"
        )
    os.makedirs(overlay, exist_ok=True)
    for old in os.listdir(overlay):  # a restarted init container finds its previous overlay
        path = os.path.join(overlay, old)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    for entry in entries:
        src = os.path.join(source, entry)
        dst = os.path.join(overlay, entry)
        if entry not in overrides:
            os.symlink(src, dst)
            continue
        os.makedirs(dst)
        for item in sorted(os.listdir(src)):
            if item != "config.pbtxt":
                os.symlink(os.path.join(src, item), os.path.join(dst, item))
        config = os.path.join(src, "config.pbtxt")
        original = ""
        if os.path.exists(config):
            with open(config, encoding="utf-8") as f:
                original = f.read()
        with open(os.path.join(dst, "config.pbtxt"), "w", encoding="utf-8") as f:
            f.write(apply_override(original, overrides[entry]))
    return sorted(overrides)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, overlay, overrides_path = argv
    try:
        with open(overrides_path, encoding="utf-8") as f:
            overrides = json.load(f)
        done = build_overlay(source, overlay, overrides)
    except (OverrideError, OSError, ValueError) as exc:
        print(f"apply_config_overrides: error: {exc}", file=sys.stderr)
        return 1
    print(f"apply_config_overrides: {overlay} ready; overridden: {', '.join(done) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
