"""Request payloads: the encoded images of a directory, handed out round-robin."""

from __future__ import annotations

import itertools
from pathlib import Path

from cvserve.defaults import IMAGE_SUFFIXES
from cvserve.errors import NotFoundError, UserInputError


def image_files(directory: Path) -> list[Path]:
    """The image files directly in ``directory``, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotFoundError(f"--images {directory} is not a directory: give a folder of JPEG/PNG files")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserInputError(
            f"--images {directory} holds no images ({', '.join(IMAGE_SUFFIXES)}): add some JPEG/PNG files"
        )
    return files


def describe(directory: Path) -> dict:
    """The images a load test sends, for its report: the folder, how many, their mean encoded size."""
    sizes = [p.stat().st_size for p in image_files(directory)]
    return {
        "directory": str(directory),
        "images": len(sizes),
        "mean_bytes": round(sum(sizes) / len(sizes)),
    }


class RoundRobin:
    """Batches of ``per_request`` encoded images, taken in turn from the directory's images.

    Shared by all users of a process, so that consecutive requests carry different images.
    """

    def __init__(self, directory: Path, per_request: int = 1) -> None:
        if per_request < 1:
            raise UserInputError(f"--images-per-request must be at least 1, not {per_request}")
        self.files = image_files(directory)
        self.images = [p.read_bytes() for p in self.files]
        self.per_request = per_request
        self._cycle = itertools.cycle(self.images)

    def next_batch(self) -> list[bytes]:
        return [next(self._cycle) for _ in range(self.per_request)]
