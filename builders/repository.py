"""The Triton model repository writer: versioned, atomic, with one-command rollback.

A build is assembled completely in a staging directory next to the repository (same filesystem) and
only then moved into place with renames, so a build that fails at any stage leaves the repository
byte-identical. Each build adds version N (one more than the highest existing version of any of the
pipeline's models) to every model of its layout (NAME alone, or NAME, NAME_preprocess and
NAME_network), the model clients call last; earlier versions stay on disk. Every version directory
keeps a snapshot of the config it was built with (``config.pbtxt.build``), which ``rollback`` restores.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cvserve.builders import triton_config as tc
from cvserve.errors import NotFoundError, UserInputError

SNAPSHOT = "config.pbtxt.build"


def existing_versions(repository: Path, name: str) -> list[int]:
    versions: set[int] = set()
    for model in tc.model_names(name).values():
        d = repository / model
        if d.is_dir():
            versions.update(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())
    return sorted(versions)


def next_version(repository: Path, name: str) -> int:
    return max(existing_versions(repository, name), default=0) + 1


@dataclass(kw_only=True)
class Staged:
    """A build being assembled: write files under ``version_dir(role)``; nothing is live yet."""

    root: Path
    repository: Path
    name: str
    version: int

    def model_dir(self, role: str) -> Path:
        return self.root / tc.model_names(self.name)[role]

    def version_dir(self, role: str) -> Path:
        d = self.model_dir(role) / str(self.version)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def write_config(self, role: str, cfg) -> None:
        text = tc.to_text(cfg)
        (self.model_dir(role) / "config.pbtxt").write_text(text)
        (self.version_dir(role) / SNAPSHOT).write_text(text)


@contextmanager
def staged_build(repository: Path, name: str):
    """Yield a :class:`Staged` build; commit it into ``repository`` only if the block succeeds."""
    tc.check_name(name)
    repository = Path(repository)
    parent = repository.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f".{repository.name}.staging-", dir=parent))
    try:
        staged = Staged(root=root, repository=repository, name=name, version=next_version(repository, name))
        yield staged
        commit(staged)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def commit(staged: Staged) -> None:
    """Move the staged models into the repository; undo the moves done so far if one fails."""
    repo = staged.repository
    repo.mkdir(parents=True, exist_ok=True)
    if staged.version in existing_versions(repo, staged.name):  # another build won the race
        raise UserInputError(
            f"version {staged.version} of {staged.name} appeared during the build; build again"
        )
    undo: list[Callable[[], None]] = []
    try:
        for role in tc.model_names(staged.name):  # the model clients call last
            src = staged.model_dir(role)
            if not src.is_dir():  # a role this build's layout does not have
                continue
            dst = repo / src.name
            if not dst.exists():
                os.rename(src, dst)
                undo.append(lambda d=dst, s=src: os.rename(d, s))
                continue
            vsrc, vdst = src / str(staged.version), dst / str(staged.version)
            os.rename(vsrc, vdst)
            undo.append(lambda d=vdst, s=vsrc: os.rename(d, s))
            cfg, old = dst / "config.pbtxt", src / "config.pbtxt.previous"
            if cfg.exists():
                shutil.copy2(cfg, old)
                undo.append(lambda o=old, c=cfg: os.replace(o, c))
            os.replace(src / "config.pbtxt", cfg)
    except BaseException:
        for step in reversed(undo):
            step()
        raise


def rollback(repository: Path, name: str, version: int) -> list[Path]:
    """Serve ``version`` of the pipeline ``name``: restore its configs, pinned with a specific policy.

    Returns the config files written. With ``--model-control-mode poll`` Triton picks the change up by
    itself; in ``explicit`` mode load the ensemble again; in ``none`` mode restart the server.
    """
    repository = Path(repository)
    models = [m for m in tc.model_names(name).values() if (repository / m / str(version) / SNAPSHOT).exists()]
    if name not in models:
        have = existing_versions(repository, name)
        raise NotFoundError(
            f"version {version} of {name} is not in {repository}; versions present: {have or 'none'}"
        )
    written = []
    pinned = tc.VersionPolicy(kind="specific", values=(version,)).proto()
    for model in models:
        cfg = tc.parse((repository / model / str(version) / SNAPSHOT).read_text())
        cfg.version_policy.CopyFrom(pinned)
        path = repository / model / "config.pbtxt"
        tmp = path.with_suffix(".pbtxt.tmp")
        tmp.write_text(tc.to_text(cfg))
        os.replace(tmp, path)
        written.append(path)
    return written
