"""Class names: the one reader of a labels file (one class name per line, line i is class i)."""

from __future__ import annotations

from pathlib import Path

from cvserve.errors import NotFoundError, UserInputError


def read_class_names(path: str | Path) -> list[str]:
    """The class names in ``path``, in class-index order; trailing blank lines are ignored.

    Raises:
        NotFoundError: the file does not exist.
        UserInputError: the file is empty or a class name is blank.
    """
    path = Path(path)
    try:
        names = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise NotFoundError(f"labels file {path} does not exist") from None
    while names and not names[-1].strip():
        names.pop()
    if not names:
        raise UserInputError(f"labels file {path} is empty: write one class name per line")
    blank = [i + 1 for i, n in enumerate(names) if not n.strip()]
    if blank:
        raise UserInputError(f"labels file {path} has blank class names on line(s) {blank[:5]}")
    return names
