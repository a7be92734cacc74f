"""Build an overlay Triton model repository with per-model config overrides (runs in an init container).

    python3 apply_config_overrides.py SOURCE OVERLAY OVERRIDES_JSON

Every entry of SOURCE becomes a symlink in OVERLAY, except the models named in OVERRIDES_JSON: those get a
real directory whose entries are symlinks too, and a config.pbtxt in which each overridden top-level field
(e.g. ``max_batch_size``, ``dynamic_batching``) is removed from the original and written again from the
override. Weights are never copied. Only the Python standard library is used, so the Triton image's own
python3 runs it. A model named in the overrides that is not in SOURCE is an error: a typo must not be
silently ignored.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENUM = re.compile(r"[A-Z][A-Z0-9_]*")


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


def top_level_fields(text: str) -> list[tuple[str, int, int]]:
    """(name, start, end) of every top-level field of a text-format message."""
    fields = []
    i = _skip_blank(text, 0)
    while i < len(text):
        m = _IDENT.match(text, i)
        if not m:
            raise OverrideError(f"cannot parse config.pbtxt near {text[i : i + 40]!r}")
        start, name = i, m.group(0)
        i = _skip_blank(text, m.end())
        if i < len(text) and text[i] == ":":
            i = _skip_blank(text, i + 1)
        if i >= len(text):
            raise OverrideError(f"field {name!r} has no value in config.pbtxt")
        i = _skip_value(text, i)
        j = _skip_blank(text, i)
        if j < len(text) and text[j] in ",;":
            i = j + 1
        fields.append((name, start, i))
        i = _skip_blank(text, i)
    return fields


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


def apply_override(text: str, override: dict) -> str:
    """Replace the overridden top-level fields of a config.pbtxt, keeping everything else verbatim."""
    out, last = [], 0
    for name, start, end in top_level_fields(text):
        if name in override:
            out.append(text[last:start])
            last = end
    out.append(text[last:])
    kept = "".join(out).rstrip()
    added = "".join(render_field(k, v) for k, v in override.items())
    header = "# cvserve: fields below are overridden from the Helm values (modelConfigOverrides)\n"
    return (kept + "\n\n" if kept else "") + header + added


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
