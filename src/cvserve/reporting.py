"""Reports: every Markdown/YAML report cvserve writes is rendered here, with one number format.

Build, load-test, tune, bench and release reports are Jinja2 templates in ``cvserve/templates/``,
rendered by :func:`render`; numbers go through :func:`num` (the ``num`` filter in templates) and YAML
through :func:`yaml_dump` (``yaml.safe_dump``). Jinja2 and PyYAML come with the extras that write
reports; they are imported when a report is rendered.
"""

from __future__ import annotations

import math
from typing import Any

from cvserve._extras import require


def num(value: Any, digits: int = 3, unit: str = "") -> str:
    """The one number format: ``None`` -> "-", integers as they are, floats to ``digits`` significant
    digits without exponent for ordinary magnitudes (``0.9912``, ``217``, ``1.2e-05``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e7):
            text = f"{value:.{digits - 1}e}"
        else:
            magnitude = math.floor(math.log10(abs(value))) + 1 if value else 1
            decimals = max(0, digits - magnitude)
            text = f"{value:.{decimals}f}"
            if "." in text:
                text = text.rstrip("0").rstrip(".")
    else:
        text = str(value)
    return f"{text} {unit}".rstrip() if unit else text


def _environment():
    jinja2 = require("jinja2", purpose="to render reports")
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cvserve", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["num"] = num
    return env


def render(template: str, /, **context: Any) -> str:
    """Render ``cvserve/templates/<template>`` with ``context``."""
    return _environment().get_template(template).render(**context)


def yaml_dump(data: Any) -> str:
    """YAML for humans and Helm (``yaml.safe_dump``, keys in the order given)."""
    yaml = require("yaml", purpose="to write YAML reports")
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
