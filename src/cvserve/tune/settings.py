"""What ``cvserve tune`` does, in one place: :class:`TuneSettings` and its groups.

The flags of ``cvserve tune`` are derived from these dataclasses (:mod:`cvserve.settings`); the ones a
load test has too (the server's address, the images, the SLO, the error rate, the price) are the load
test's own definitions (:class:`~cvserve.loadtests.settings.LoadTestSettings`), taken with
:func:`~cvserve.settings.like`, and each load run's settings are built from them by
:func:`~cvserve.loadtests.settings.load_test` (nothing copied by hand). Importing this module imports
nothing heavy (``cvserve --help`` reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cvserve.loadtests.settings import LoadTestSettings
from cvserve.settings import REQUIRED, duration, like, setting


@dataclass(kw_only=True)
class SearchSettings:
    """How to search. ``budget_s`` counts everything: applying configs and every load run."""

    slo_p95_ms: float = like(LoadTestSettings, "slo_p95_ms", group=None)
    price_per_hour: float = like(
        LoadTestSettings, "price_per_hour", REQUIRED, above=0, group=None, help="$ per hour of the server"
    )
    budget_s: float = duration(600.0, above=0, help="time budget: applying configs and every load run")
    repeats: int = setting(3, at_least=1, help="runs per confirmed candidate")
    max_error_rate: float = like(LoadTestSettings, "max_error_rate", group=None)
    start_users: int = setting(4, at_least=1, help="users of the first load run")
    max_users: int = setting(64, at_least=1, help="most concurrent users tried")
    min_gain: float = setting(
        0.03, at_least=0, help="least relative throughput gain that is a win (at least twice the noise)"
    )
    # First guess of one load run's wall time, refined as runs finish (the CLI derives it from --run-duration).
    run_estimate_s: float = setting(12.0, cli=False)


@dataclass(kw_only=True)
class RunSettings:
    """Each load run of the search (one steady Locust run at a number of users)."""

    run_duration_s: float = duration(8.0, above=0, help="measured window of each run")
    warmup_s: float = like(LoadTestSettings, "warmup_s", 2.0, help="warm-up of each run")
    images_per_request: int = like(LoadTestSettings, "images_per_request")


@dataclass(kw_only=True)
class TuneSettings:
    """``cvserve tune``: what to tune, where, and what to write."""

    name: str = setting(
        positional=True,
        metavar="NAME",
        help="the model clients call, as given to cvserve build (either layout)",
    )
    url: str = like(LoadTestSettings, "url")
    images: Path = like(LoadTestSettings, "images", help="folder of JPEG/PNG files to send")
    metrics_url: str | None = like(
        LoadTestSettings,
        "metrics_url",
        group=None,
        default_help="not scraped",
        help="Triton's metrics endpoint, scraped during each run",
    )
    repository: Path | None = setting(
        None, metavar="DIR", help="the model repository: its config.pbtxt files and build report"
    )
    max_instances: int = setting(4, at_least=1, help="most instances of any model")
    cores: int = setting(
        0,
        at_least=0,
        help="cores the server may use: instances x intra-op threads never exceed them",
        default_help="0: this machine's (the server runs here)",
    )
    out: Path | None = setting(None, metavar="DIR", help="output folder", default_help="tuning/NAME")
    keep: bool = setting(False, help="leave the chosen configuration live")
    plots: bool = setting(True, help="draw the plot (needs matplotlib)")
    search: SearchSettings = setting(title="search")
    run: RunSettings = setting(default_factory=RunSettings, title="each load run")
