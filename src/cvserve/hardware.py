"""The machine a network runs on, detected once: CPU model, the cores it may use, and the instruction
sets that change a network's numerics or speed.

Every figure cvserve records (build report, model card, ``make bench``, bench_quant, load test, tune
and release reports) names the machine through this module, and every precision decision asks it
whether the CPU has native bf16. It depends on the standard library only: ``cvserve build`` copies it
next to the served python-backend model (as ``cvserve_hardware.py``, imported by ``cvserve_runners``),
so the server checks the same facts when it loads a network.

Why these features (docs/hardware.md):

* ``avx2``, ``avx512``: the width of the float kernels;
* ``vnni`` (AVX512-VNNI or AVX-VNNI): int8 dot products in one instruction; without it INT8 gains
  about half as much over FP32;
* ``avx512_bf16``, ``amx`` (AMX tiles with bf16/int8): native bf16 (and, for AMX, int8 matrix) units.
  OpenVINO's CPU plugin *defaults* to bf16 inference where it finds them, which is why cvserve always
  states the precision it wants (cvserve.builders.runners).
"""

from __future__ import annotations

import functools
import math
import os
import platform
from dataclasses import asdict, dataclass

CPUS_ENV = "CVSERVE_CPUS"  # cores the served models may use (set by `cvserve serve --cpus`)

# Feature in reports -> the /proc/cpuinfo flags that provide it (any of them).
FEATURES = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "vnni": ("avx512_vnni", "avx_vnni"),
    "avx512_bf16": ("avx512_bf16",),
    "amx": ("amx_tile",),
}
BF16_FEATURES = ("avx512_bf16", "amx")  # either gives native bf16 arithmetic
_AMX_BF16_FLAG = "amx_bf16"


# -- cores ----------------------------------------------------------------------------------------------
def _cgroup_quota() -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` (or v1 ``cfs_quota_us``) quota, if one is set."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        if quota > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cpus() -> int:
    """Cores this process may use: ``$CVSERVE_CPUS``, else the affinity mask capped by a cgroup quota."""
    override = os.environ.get(CPUS_ENV, "").strip()
    if override:
        if not override.isdigit() or int(override) < 1:
            raise ValueError(f"{CPUS_ENV} must be a whole number of cores >= 1, not {override!r}")
        return int(override)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


# -- the CPU --------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Cpu:
    """The CPU as cvserve reports it."""

    model: str
    arch: str  # x86_64, aarch64, ...
    cores: int  # cores this process may use (available_cpus)
    logical_cpus: int
    features: tuple[str, ...]  # the FEATURES present, in FEATURES order

    @property
    def native_bf16(self) -> bool:
        return any(f in self.features for f in BF16_FEATURES)

    def summary(self) -> str:
        """One line for reports: ``Intel(R) Xeon(R) ..., 2 cores; AVX2 AVX512 VNNI AVX512-BF16 AMX``."""
        names = " ".join(f.upper().replace("_", "-") for f in self.features) or "no AVX2"
        return f"{self.model}, {self.cores} cores; {names}"

    def as_dict(self) -> dict:
        return {**asdict(self), "features": list(self.features), "native_bf16": self.native_bf16}


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = "", set()
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model or platform.processor() or "unknown CPU", flags


def features_from_flags(flags: set[str]) -> tuple[str, ...]:
    """The :data:`FEATURES` that a set of ``/proc/cpuinfo`` flags provides (AMX counts with its bf16 unit)."""
    found = [name for name, any_of in FEATURES.items() if flags.intersection(any_of)]
    if "amx" in found and _AMX_BF16_FLAG not in flags:
        found.remove("amx")  # AMX tiles without the bf16 unit do not change float numerics
    return tuple(found)


@functools.lru_cache(maxsize=1)
def cpu() -> Cpu:
    """This machine's CPU (detected once per process)."""
    model, flags = _cpuinfo()
    return Cpu(
        model=model,
        arch=platform.machine(),
        cores=available_cpus(),
        logical_cpus=os.cpu_count() or 1,
        features=features_from_flags(flags),
    )


def summary() -> str:
    """This machine in one line (every report's "machine")."""
    return cpu().summary()


class MissingFeatureError(RuntimeError):
    """The CPU lacks an instruction set that a network was built for."""


def require_native_bf16(what: str, machine: Cpu | None = None) -> None:
    """Raise :class:`MissingFeatureError` naming the feature unless the CPU computes bf16 natively.

    cvserve never lets a runtime emulate bf16: it would be slower than FP32 and still round like bf16.
    """
    machine = machine or cpu()
    if not machine.native_bf16:
        raise MissingFeatureError(
            f"{what} needs a CPU with native bf16 (AVX512-BF16 or AMX); this {machine.model} has "
            f"{' '.join(machine.features).upper() or 'neither'}: build with --precision fp32 or int8"
        )
