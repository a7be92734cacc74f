"""Golden sets: a folder of images and ``labels.csv`` (``path``, ``label``, then optional slice columns).

Everything is checked before a release touches the server, and each problem is reported in one line
that says what to fix. See docs/release.md for the format.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cvserve.defaults import IMAGE_SUFFIXES
from cvserve.errors import UserInputError

LABELS_FILE = "labels.csv"
REQUIRED_COLUMNS = ("path", "label")
# The first bytes of the encoded formats cvserve serves (IMAGE_SUFFIXES): PNG and JPEG.
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
_SHOWN = 5  # how many offending entries a message names


class GoldenSetError(UserInputError):
    """The golden set is malformed; the message names the file, the line and the fix."""


@dataclass(frozen=True, kw_only=True)
class GoldenCase:
    """One image of the golden set.

    Attributes:
        path: as written in ``labels.csv`` (relative to the golden folder, ``/``-separated).
        file: the image file.
        label: the expected class as written (a class name or a class index).
        slices: slice column -> value, e.g. ``{"lighting": "dark", "source": "skimage"}``.
        line: the line of ``labels.csv`` it comes from.
    """

    path: str
    file: Path
    label: str
    slices: dict[str, str]
    line: int


@dataclass(frozen=True, kw_only=True)
class GoldenSet:
    """A validated golden set; ``classes`` maps each case's label to a class name once resolved."""

    root: Path
    cases: tuple[GoldenCase, ...]
    slice_columns: tuple[str, ...]
    classes: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cases)

    def expected(self, case: GoldenCase) -> str:
        """The class name ``case`` should be classified as (after :func:`resolve_labels`)."""
        return self.classes.get(case.label, case.label)


def shown(items: Sequence[str]) -> str:
    """The first few of ``items``, comma-separated, and how many more there are."""
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def load_golden_set(directory: str | Path) -> GoldenSet:
    """Read and check the golden set in ``directory``.

    Raises:
        GoldenSetError: the folder or ``labels.csv`` is missing or empty, a column is missing or
            repeated, a row is malformed, a path is repeated, leaves the folder, names no JPEG/PNG file,
            or the file is missing or not a JPEG/PNG image.
    """
    root = Path(directory)
    if not root.is_dir():
        raise GoldenSetError(
            f"golden set {root} is not a directory: give a folder with images and {LABELS_FILE}"
        )
    if not any(root.iterdir()):
        raise GoldenSetError(
            f"golden set {root} is empty: add the images and a {LABELS_FILE} that lists them"
        )
    csv_file = root / LABELS_FILE
    if not csv_file.is_file():
        raise GoldenSetError(
            f"golden set {root} has no {LABELS_FILE}: write one with columns path,label "
            "(then optional slice columns such as lighting,source)"
        )
    header, rows = _read_csv(csv_file)
    slice_columns = _check_header(csv_file, header)
    cases = _cases(root, csv_file, header, rows, slice_columns)
    check_files(root, csv_file, cases)
    return GoldenSet(root=root, cases=tuple(cases), slice_columns=slice_columns)


def _read_csv(csv_file: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    try:
        text = csv_file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise GoldenSetError(f"{csv_file} is not UTF-8 text: save it as UTF-8 CSV") from None
    reader = csv.reader(text.splitlines())
    lines = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not lines:
        raise GoldenSetError(f"{csv_file} is empty: its first line must be the header path,label[,slices...]")
    (_, header), rows = lines[0], lines[1:]
    if not rows:
        raise GoldenSetError(f"{csv_file} has a header but no rows: list one image per line")
    return [h.strip() for h in header], rows


def _check_header(csv_file: Path, header: list[str]) -> tuple[str, ...]:
    if tuple(header[:2]) != REQUIRED_COLUMNS:
        raise GoldenSetError(
            f"{csv_file} has columns {','.join(header)}: the first two must be path,label "
            "(then optional slice columns such as lighting,source)"
        )
    slices = header[2:]
    blank = [i + 3 for i, h in enumerate(slices) if not h]
    if blank:
        raise GoldenSetError(
            f"{csv_file}: column(s) {blank} have no name in the header: name every slice column"
        )
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise GoldenSetError(
            f"{csv_file}: column(s) {', '.join(repeated)} appear more than once in the header"
        )
    return tuple(slices)


def _cases(
    root: Path, csv_file: Path, header: list[str], rows: list[tuple[int, list[str]]], slices: tuple[str, ...]
) -> list[GoldenCase]:
    cases: list[GoldenCase] = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise GoldenSetError(
                f"{csv_file} line {line} has {len(row)} fields, the header has {len(header)}: "
                f"write {','.join(header)} on every line"
            )
        path, label, *values = (cell.strip() for cell in row)
        if not path or not label:
            raise GoldenSetError(f"{csv_file} line {line}: path and label must not be blank")
        key = image_path(path, f"{csv_file} line {line}")
        if key in first_line:
            raise GoldenSetError(
                f"{csv_file} lists {path} twice (lines {first_line[key]} and {line}): give each image once"
            )
        first_line[key] = line
        cases.append(
            GoldenCase(
                path=key,
                file=root / key,
                label=label,
                slices=dict(zip(slices, values, strict=True)),
                line=line,
            )
        )
    return cases


def image_path(path: str, where: str) -> str:
    """``path`` as a ``/``-separated path inside the golden folder, naming a JPEG/PNG file.

    Raises:
        GoldenSetError: it leaves the folder or is not a JPEG/PNG file by name (``where`` says where).
    """
    relative = PurePosixPath(path.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise GoldenSetError(f"{where}: {path} is not inside the golden folder: give paths relative to it")
    if relative.suffix.lower() not in IMAGE_SUFFIXES:
        raise GoldenSetError(
            f"{where}: {path} is not a JPEG/PNG file ({', '.join(IMAGE_SUFFIXES)}): convert it or leave it out"
        )
    return relative.as_posix()


def check_files(root: Path, csv_file: Path, cases: Sequence) -> None:
    """Every case's ``file`` (``path`` names it) exists and is a JPEG or PNG by content."""
    missing = [c.path for c in cases if not c.file.is_file()]
    if missing:
        raise GoldenSetError(
            f"{len(missing)} image(s) listed in {csv_file} are not in {root}: {shown(missing)}"
        )
    not_images = []
    for case in cases:
        with open(case.file, "rb") as f:
            head = f.read(8)
        if not head.startswith(_MAGIC):
            not_images.append(case.path)
    if not_images:
        raise GoldenSetError(
            f"{len(not_images)} file(s) in {root} are not JPEG or PNG images whatever their names: "
            f"{shown(not_images)}"
        )


def resolve_labels(golden: GoldenSet, class_names: Sequence[str] | None, model: str) -> GoldenSet:
    """Map every golden label (a class name, or a class index) to a class name of the model.

    Args:
        golden: the validated golden set.
        class_names: the model's labels, index -> name; ``None`` when the model has none (the label of
            class ``i`` is then ``str(i)``).
        model: named in the error message.

    Raises:
        GoldenSetError: a label is neither a class name nor a class index of the model.
    """
    names = list(class_names or [])
    known = set(names)
    classes: dict[str, str] = {}
    unknown: list[str] = []
    where: list[str] = []
    for case in golden.cases:
        label = case.label
        if label in classes or label in unknown:
            continue
        if label in known:
            classes[label] = label
        elif label.isdigit() and (not names or int(label) < len(names)):
            classes[label] = names[int(label)] if names else str(int(label))
        else:
            unknown.append(label)
            where.append(f"{label!r} (line {case.line})")
    if unknown:
        span = f"a class index 0..{len(names) - 1}" if names else "a class index"
        raise GoldenSetError(
            f"{golden.root / LABELS_FILE}: {len(unknown)} label(s) are not classes of {model}: "
            f"{shown(where)}; use a class name from the model's labels or {span}"
        )
    return GoldenSet(
        root=golden.root, cases=golden.cases, slice_columns=golden.slice_columns, classes=classes
    )
