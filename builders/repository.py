"""The Triton model repository: where a built version's files live, how they are written and read.

The one owner of the repository's file names (``config.pbtxt``, its build snapshot, ``build_report.json``,
``reference_stats.json``): the build writes them through :func:`staged_build`, everything else reads them
through :class:`Repository` (``Repository(path).version(name, v)`` -> :class:`BuiltVersion`).

Writing: versioned, atomic, with one-command rollback.

A build is assembled completely in a staging directory next to the repository (same filesystem) and
only then moved into place with renames, so a build that fails at any stage leaves the repository
byte-identical. Each build adds version N (one more than the highest existing version of any of the
pipeline's models) to every model of its layout (NAME alone, or NAME, NAME_preprocess and
NAME_network), the model clients call last; earlier versions stay on disk. Every version directory
keeps a snapshot of the config it was built with (``config.pbtxt.build``), which ``rollback`` restores.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders import triton_config as tc
from cvserve.client import contract
from cvserve.errors import NotFoundError, UserInputError

# The files of a model repository, NAME/config.pbtxt and NAME/V/...
CONFIG = "config.pbtxt"  # NAME/config.pbtxt: what the server loads
PREVIOUS = "config.pbtxt.previous"  # NAME/config.pbtxt before the last build replaced it
SNAPSHOT = "config.pbtxt.build"  # NAME/V/: the config version V was built with (rollback restores it)
BUILD_REPORT = "build_report.json"  # NAME/V/: what the build did (schema: cvserve.builders.pipeline)
REFERENCE = "reference_stats.json"  # NAME/V/: the held-out images' signals (cvserve.monitor.reference)


def version_folders(model_dir: Path) -> list[int]:
    """The versions in a model's folder (its numeric subfolders), ascending; none if it is missing."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def existing_versions(repository: Path, name: str) -> list[int]:
    """The versions of any model of the pipeline NAME (NAME and the models of any layout of it)."""
    versions: set[int] = set()
    for model in tc.model_names(name).values():
        versions.update(version_folders(Path(repository) / model))
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
        (self.model_dir(role) / CONFIG).write_text(text)
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
            cfg, old = dst / CONFIG, src / PREVIOUS
            if cfg.exists():
                shutil.copy2(cfg, old)
                undo.append(lambda o=old, c=cfg: os.replace(o, c))
            os.replace(src / CONFIG, cfg)
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
        path = repository / model / CONFIG
        tmp = path.with_suffix(".pbtxt.tmp")
        tmp.write_text(tc.to_text(cfg))
        os.replace(tmp, path)
        written.append(path)
    return written


# -- reading a built version ----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class BuiltVersion:
    """Version ``version`` of the model ``name``, as its folder ``NAME/V`` holds it.

    Attributes:
        config: the configuration this version is served with: its build snapshot
            (``NAME/V/config.pbtxt.build``), else the model's current ``NAME/config.pbtxt``.
        build_report: ``NAME/V/build_report.json`` (``None``: not built by ``cvserve build``).
        reference: ``NAME/V/reference_stats.json`` as written (``None``: built without one);
            :class:`cvserve.monitor.reference.Reference` parses it.
    """

    name: str
    version: int
    directory: Path
    config: mc.ModelConfig
    build_report: dict[str, Any] | None = None
    reference: dict[str, Any] | None = None

    @property
    def labels(self) -> list[str] | None:
        """The class names of the config's ``labels`` parameter (``None``: class ``i`` is ``str(i)``)."""
        return labels_of(self.config)

    @property
    def report_path(self) -> Path:
        return self.directory / BUILD_REPORT

    @property
    def reference_path(self) -> Path:
        return self.directory / REFERENCE

    def require_report(self) -> dict[str, Any]:
        """The build report; :class:`NotFoundError` naming the fix when the version has none."""
        if self.build_report is None:
            raise NotFoundError(
                f"{self.report_path} does not exist: version {self.version} of {self.name} was not built "
                "by cvserve build; build it again"
            )
        return self.build_report


class Repository:
    """Reads a model repository (``Repository(path).version(name, v)``); never writes it."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Repository({str(self.path)!r})"

    def versions(self, name: str) -> list[int]:
        """The versions of the model ``name`` on disk (the numeric folders of ``NAME/``), ascending."""
        return version_folders(self.path / name)

    def has_config(self, name: str) -> bool:
        return (self.path / name / CONFIG).is_file()

    def config(self, name: str) -> mc.ModelConfig:
        """The model's current ``NAME/config.pbtxt``, what the server loads.

        Raises:
            NotFoundError: the repository or NAME is not there.
            UserInputError: the file is not a Triton model configuration.
        """
        path = self.path / name / CONFIG
        if not path.is_file():
            raise NotFoundError(
                f"{name} is not in the model repository {self.path} (no {name}/{CONFIG}): "
                "give --repository, the folder the server serves"
            )
        return _parse(path)

    def version(self, name: str, version: int) -> BuiltVersion:
        """Version ``version`` of ``name``: its config, build report and reference.

        Raises:
            NotFoundError: the version folder is not there (the message lists the versions present), or
                it has no build snapshot and NAME has no ``config.pbtxt``.
            UserInputError: a file is there but unreadable.
        """
        directory = self.path / name / str(version)
        if not directory.is_dir():
            have = self.versions(name)
            raise NotFoundError(
                f"version {version} of {name} is not in {self.path}; versions present: {have or 'none'}"
            )
        snapshot = directory / SNAPSHOT
        return BuiltVersion(
            name=name,
            version=version,
            directory=directory,
            config=_parse(snapshot) if snapshot.is_file() else self.config(name),
            build_report=_read_json(directory / BUILD_REPORT),
            reference=_read_json(directory / REFERENCE),
        )

    def newest(self, name: str) -> BuiltVersion:
        """The highest version of ``name`` on disk (not necessarily the one served: see :meth:`served`)."""
        have = self.versions(name)
        if not have:
            raise NotFoundError(f"{name} has no version in {self.path}: build it with cvserve build")
        return self.version(name, have[-1])

    def served_version(self, name: str, ready: Sequence[int] | None = None) -> int | None:
        """The version requests naming none get: the highest of ``ready`` (the versions the server
        reports READY) when given, else what ``NAME/config.pbtxt``'s version policy picks on disk."""
        if ready:
            return max(ready)
        on_disk = self.versions(name)
        policy = self.config(name).version_policy
        if policy.WhichOneof("policy_choice") == "specific":
            return max((v for v in policy.specific.versions if v in on_disk), default=None)
        return max(on_disk, default=None)  # latest:N and all both serve the highest version to them

    def served(self, name: str, ready: Sequence[int] | None = None) -> BuiltVersion:
        """The served version of ``name`` (see :meth:`served_version`).

        Raises:
            NotFoundError: no version is served, or the server serves one this repository lacks.
        """
        version = self.served_version(name, ready)
        if version is None:
            raise NotFoundError(f"{name} serves no version from {self.path}: build one with cvserve build")
        return self.version(name, version)


def labels_of(config: mc.ModelConfig) -> list[str] | None:
    """The class names in a config's ``labels`` parameter (contract v2), or ``None``."""
    if contract.LABELS_PARAMETER not in config.parameters:
        return None
    try:
        labels = json.loads(config.parameters[contract.LABELS_PARAMETER].string_value)
    except json.JSONDecodeError:
        labels = None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise UserInputError(
            f"model {config.name}: its 'labels' parameter is not a JSON array of class names"
        )
    return labels


def _parse(path: Path) -> mc.ModelConfig:
    try:
        return tc.parse(path.read_text())
    except Exception as exc:  # protobuf's ParseError names the line
        raise UserInputError(f"{path} is not a valid Triton model configuration: {exc}") from None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{path} is not readable JSON ({exc}): rebuild the version") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path} is not a JSON object: rebuild the version")
    return data
