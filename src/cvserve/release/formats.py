"""A release's golden-set format, chosen by the task the candidate was built for.

The task (:mod:`cvserve.builders.tasks`, named in the candidate's ``build_report.json``) owns its
golden-set format: how the golden folder is read and checked, how a served version answers it, how two
versions' answers are compared per slice and which gates judge the comparison. The release pipeline,
its reports and the model card ask the format; none of them branches on the task.

Formats: :class:`cvserve.release.labelled.LabelledImages` (classifiers: ``labels.csv``) and
:class:`cvserve.release.box_compare.BoxedImages` (detectors: COCO JSON). docs/release.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cvserve.builders.repository import BUILD_REPORT
from cvserve.errors import UserInputError
from cvserve.release.versions import UNKNOWN, ModelVersion

if TYPE_CHECKING:
    from cvserve.release.gates import Gate
    from cvserve.release.settings import ReleaseSettings


class Comparison(Protocol):
    """Two versions' answers on a golden set: ``slices`` (``all`` first) and ``changed`` cases, each
    with ``as_dict()`` for the report, and the golden-set gates."""

    @property
    def slices(self) -> Sequence[Any]: ...

    @property
    def changed(self) -> Sequence[Any]: ...

    def gates(self, s: ReleaseSettings) -> list[Gate]: ...


class GoldenFormat(Protocol):
    """What a task's golden set is and how a release judges it.

    Attributes:
        name: names the report's sections, ``release_golden_<name>.md.j2`` and
            ``model_card_golden_<name>.md.j2`` in ``cvserve/templates``.
        metric: ``{"key": K, "label": L}``: each slice's ``baseline_K`` and ``candidate_K`` is the figure
            the plot, the limitations and the printed summary show, called L.
    """

    name: str
    metric: dict[str, str]

    def load(self, directory: Path) -> Any:
        """Read and check the golden folder (raises :class:`GoldenSetError` naming the fix)."""

    def resolve(self, golden: Any, baseline: ModelVersion, candidate: ModelVersion) -> Any:
        """Check the golden set's classes against the two versions' labels."""

    def predict(self, url: str, model: str, version: ModelVersion, golden: Any, *, timeout_s: float) -> list:
        """The served ``model`` (``version``'s shadow) answers every golden image."""

    def compare(self, golden: Any, baseline: list, candidate: list) -> Comparison: ...

    def describe(self, golden: Any) -> dict[str, Any]:
        """What the report's ``golden`` entry says beside path, cases and slice columns."""

    def intended_use(self, version: ModelVersion) -> str:
        """The model card's default intended use."""


def intended_use(version: ModelVersion, what: str) -> str:
    """The model card's default intended use: ``what`` the model answers for each image sent to it,
    ``{classes}`` standing for its classes."""
    labels = version.labels
    classes = f"the {len(labels)} classes in the model's labels" if labels else "the model's classes"
    return (
        f"{what.format(classes=classes)} for each JPEG/PNG image sent to `{version.name}`. Judged only on "
        "the golden set below and the build's validation images; use on other kinds of images needs its "
        "own evaluation."
    )


def task_of(version: ModelVersion) -> str:
    """The task ``version`` was built for, from its build report (a classifier when it names none)."""
    from cvserve.builders import tasks

    name = version.build.get("task", UNKNOWN)
    if name == UNKNOWN:  # built before tasks existed, or no build report: a classifier
        return tasks.DEFAULT
    if name not in tasks.NAMES:
        raise UserInputError(
            f"{version.directory / BUILD_REPORT} names the task {name!r}, which this cvserve does not know "
            f"({', '.join(tasks.NAMES)}): release it with the cvserve that built it, or rebuild it"
        )
    return name


def golden_format(candidate: ModelVersion) -> GoldenFormat:
    """The golden-set format of the task the candidate was built for."""
    from cvserve.builders import tasks

    return tasks.get(task_of(candidate)).golden_format()


def check_same_task(baseline: ModelVersion, candidate: ModelVersion) -> None:
    """Raise :class:`UserInputError` when the two versions were built for different tasks."""
    task, other = task_of(candidate), task_of(baseline)
    if other != task:
        raise UserInputError(
            f"{candidate.name} version {candidate.version} is a {task} build and version "
            f"{baseline.version} a {other} build: a release judges two versions of one task; "
            "give a --baseline built with the same --task"
        )
