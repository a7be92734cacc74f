"""Rollout and rollback: pin a version in the repository atomically, then switch a running server.

The repository change is :func:`cvserve.builders.repository.rollback`'s: one atomic rename (the config
is written to a temporary file next to it and ``os.replace``-d over ``NAME/config.pbtxt``), so a server
that reads it mid-way sees the old or the new configuration, never half of one. A running
server in explicit model-control mode is then told to load NAME again: Triton loads the new version
set, switches requests to it and only then unloads the old versions (their in-flight requests finish),
so no request fails. In poll mode Triton notices the change by itself; here we wait until it has.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cvserve.builders.repository import CONFIG
from cvserve.errors import TimeLimitError, UserInputError
from cvserve.release.versions import model_config
from cvserve.server.control import DEFAULT_LOAD_TIMEOUT_S, ModelControl, ModelControlDisabled

# How long a poll-mode server may take to notice the new configuration (Triton polls every 15 s by default).
POLL_WAIT_S = 120.0


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one rename (a reader sees the old or the new file, whole)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def pin_version(repository: Path, name: str, version: int) -> Path:
    """Make ``NAME/config.pbtxt`` serve ``version`` only (single layout): the version's build-time
    config pinned with version policy ``specific: [version]``, as ``cvserve rollback`` writes it.

    Returns:
        The config file written.
    """
    from cvserve.builders.repository import rollback

    model_config(repository, name)  # the single layout: NAME is the only model the rollback writes
    (path,) = rollback(repository, name, version)
    return path


def apply_live(
    url: str,
    name: str,
    version: int,
    *,
    timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
    headers: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Make the server at ``url`` serve what the repository now says for NAME, and check it serves ``version``.

    For ``cvserve rollback NAME V --url URL`` too: after the repository is rolled back, this switches
    the live server the same way a promotion does.

    Args:
        headers: gRPC metadata for the model-control calls (a restricted API's key).

    Raises:
        UserInputError: the server takes no model loads and does not poll (``none`` mode: restart it).
        TritonError: the new version failed to load (the old one keeps serving).
        TimeLimitError: the server does not serve ``version`` alone in time (wrong repository?).
    """
    with ModelControl(url, load_timeout_s=timeout_s, headers=headers) as control:
        try:
            control.load(name)
        except ModelControlDisabled:
            # Triton answers the same in poll and none mode: a polling server switches by itself.
            log(f"the server at {url} takes no model loads: waiting up to {POLL_WAIT_S:g} s for it to poll")
            try:
                control.wait_serving(name, version, timeout_s=POLL_WAIT_S)
            except TimeLimitError:
                raise UserInputError(
                    f"the server at {url} takes no model loads and did not pick up {name} version {version} "
                    f"within {POLL_WAIT_S:g} s: with --model-control-mode none it serves a new version only "
                    "after a restart; switch it with explicit or poll model control"
                ) from None
            return
        control.wait_serving(name, version, timeout_s=timeout_s)


def switch(
    repository: Path,
    name: str,
    version: int,
    *,
    url: str | None = None,
    timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
    headers: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Serve ``version`` of NAME: pin it in the repository, then switch the server at ``url`` (if given).

    Promotion and rollback are both this. If the live switch fails, the repository's previous
    configuration is put back (atomically) before the error is raised.

    Returns:
        The config file written.
    """
    path = Path(repository) / name / CONFIG
    previous = path.read_text() if path.is_file() else None
    written = pin_version(repository, name, version)
    log(f"wrote {written}: {name} serves version {version}")
    if url is None:
        return written
    try:
        apply_live(url, name, version, timeout_s=timeout_s, headers=headers, log=log)
    except BaseException:
        if previous is not None:
            write_atomic(path, previous)
            log(f"restored the previous {path}")
        raise
    log(f"the server at {url} serves {name} version {version}")
    return written
