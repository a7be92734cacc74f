"""The latency objective, ``--slo-p95-ms``: one setting, one default, for every command that takes it.

``cvserve build`` sizes admission control from it (the queue bound and timeout,
:mod:`cvserve.builders.admission`) and defaults to :data:`DEFAULT_SLO_P95_MS`; ``cvserve loadtest``,
``tune`` and ``release`` gate on it and take it with :func:`~cvserve.settings.like`, required: a gate is
told the objective it checks. Standard library only (``cvserve --help`` reads it).
"""

from __future__ import annotations

from dataclasses import dataclass

from cvserve.settings import setting

DEFAULT_SLO_P95_MS = 500.0


@dataclass(kw_only=True)
class LatencyObjective:
    """The p95 latency a model is built for and gated on."""

    slo_p95_ms: float = setting(
        DEFAULT_SLO_P95_MS, above=0, metavar="MS", help="p95 latency SLO in milliseconds"
    )


__all__ = ["DEFAULT_SLO_P95_MS", "LatencyObjective"]
