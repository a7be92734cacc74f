"""Serve the versions under judgement under shadow names, so production traffic never reaches them.

With two versions of NAME loaded, Triton sends requests that name no version (production traffic) to
the highest loaded version: loading a candidate numbered above the baseline into NAME would let
production reach an unapproved model for the whole release window. Instead each version is loaded
as a model of its own, ``NAME__release_baseline`` and ``NAME__release_candidate``, through Triton's
load API with a config and files override (the version folder's files, sent by the release): NAME's
loaded versions, its configuration and the server's repository index are never changed, and no
client can reach a shadow without naming it. Both are unloaded when the release ends, however it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from cvserve.builders.repository import CONFIG
from cvserve.errors import CvserveError, UserInputError
from cvserve.release.versions import ModelVersion
from cvserve.server.control import ModelControl


def shadow_name(name: str, role: str) -> str:
    """The shadow model a version is judged under, e.g. ``mobilenet_v2__release_candidate``."""
    return f"{name}__release_{role}"


def shadow_config(version: ModelVersion, shadow: str) -> str:
    """The version's own configuration, renamed and pinned to that one version (JSON for the load API)."""
    cfg = mc.ModelConfig()
    cfg.CopyFrom(version.config)
    cfg.name = shadow
    cfg.version_policy.CopyFrom(
        mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=[version.version]))
    )
    return json_format.MessageToJson(cfg)


def shadow_files(version: ModelVersion) -> dict[str, bytes]:
    """The override model directory: the version folder, and the files next to the versions (labels)."""
    files: dict[str, bytes] = {}
    for path in sorted(version.directory.rglob("*")):
        if path.is_file():
            files[f"file:{version.version}/{path.relative_to(version.directory).as_posix()}"] = (
                path.read_bytes()
            )
    model_dir: Path = version.directory.parent
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and not path.name.startswith(CONFIG):
            files[f"file:{path.name}"] = path.read_bytes()
    return files


@contextmanager
def serve_shadows(
    control: ModelControl, versions: dict[str, ModelVersion], *, log: Callable[[str], None] = print
) -> Iterator[dict[str, str]]:
    """Load each ``role -> version`` as its shadow model; yield ``role -> shadow name``; unload them.

    Raises:
        UserInputError: a shadow is already loaded (another release of NAME is running, or one was
            killed before it could clean up).
    """
    loaded: dict[str, str] = {}
    was_ready = control.server_ready()
    try:
        for role, version in versions.items():
            shadow = shadow_name(version.name, role)
            if control.is_ready(shadow):
                raise UserInputError(
                    f"{shadow} is already loaded on {control.url}: another release of {version.name} is "
                    f"running, or one was interrupted; wait for it, or unload {shadow}"
                )
            log(f"loading {version.name} version {version.version} as {shadow}")
            control.load(shadow, config=shadow_config(version, shadow), files=shadow_files(version))
            loaded[role] = shadow
        yield loaded
    finally:
        for shadow in loaded.values():
            try:
                control.unload(shadow)
            except CvserveError as exc:  # the release's own outcome matters more; say what is left behind
                log(f"warning: could not unload {shadow}: {exc}")
        # Leave the server as found: with --strict-readiness it reports not ready until the unloads end.
        if loaded and was_ready and not control.wait_server_ready():
            log(f"warning: the server at {control.url} is still not ready after unloading the shadow models")
