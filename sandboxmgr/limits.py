"""Resource limits as data: what ``--memory``, ``--pids-limit``, ``--cpus`` and a profile's
``limits:`` say, checked and normalised. Applying them is :mod:`sandboxmgr.cgroups`'s job.

Sizes are read as docker reads them (binary units: ``512M`` is 512 MiB); every
value out of range is refused with a message fit for the user, so nothing the
kernel would reject (or take as "no limit") gets that far.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandboxmgr.errors import SandboxError

CONTROLLERS = ("memory", "pids", "cpu")
# The sandbox's own init (a fork of the manager's Python) is charged to the cgroup
# too; below this it could be the first thing the OOM killer takes.
MIN_MEMORY = 16 * 1024 * 1024
MAX_MEMORY = 1 << 60
MAX_PIDS = 4194304  # the kernel's PID_MAX_LIMIT
MIN_CPUS = 0.01
MAX_CPUS = 1024.0
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?) ?([bkmgtp]?)(?:i?b)?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_memory(value: object) -> int:
    """``512M``, ``1g``, ``1.5GiB``, ``65536k`` or a number of bytes (binary units, as docker).

    Raises :class:`ValueError` with a message fit for the user.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{value!r} is not a size like 512M or 2G")
    if isinstance(value, int):
        size = value
    else:
        match = _MEMORY.match(value.strip())
        if match is None:
            raise ValueError(f"{value!r} is not a size like 512M or 2G")
        from decimal import Decimal  # not float: "9999...9.5G" is "too large", not an overflow

        size = int(Decimal(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < MIN_MEMORY:
        raise ValueError(f"{value!r} is below the minimum of {format_bytes(MIN_MEMORY)} "
                         "(the sandbox's init is counted too)")
    if size > MAX_MEMORY:
        raise ValueError(f"{value!r} is too large")
    return size


def parse_pids(value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a whole number of processes")
    if not 2 <= value <= MAX_PIDS:
        raise ValueError(f"{value} is not between 2 and {MAX_PIDS} (the sandbox's init is counted too)")
    return value


def parse_cpus(value: object) -> float:
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a number of CPUs like 1.5") from None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ValueError(f"{value!r} is not a number of CPUs like 1.5")
    try:
        cpus = float(number)
    except OverflowError:  # an int too large for a float
        cpus = math.inf
    if not math.isfinite(cpus) or not MIN_CPUS <= cpus <= MAX_CPUS:
        raise ValueError(f"{value!r} is not between {MIN_CPUS} and {MAX_CPUS:.0f}")
    return cpus


def format_bytes(size: int | float | None, decimal: bool = False) -> str:
    """A size for people; ``-`` for an unknown one.

    Binary by default, the way limits are given (``1536M``, ``1.4M``, ``100B``: a whole
    number of units when it is one), so a limit reads back as it was written. ``decimal``
    for what the store holds, as ``df -H`` (``512B``, ``1.5MB``, ``2.3GB``).
    """
    if size is None:
        return "-"
    if decimal:
        value = float(size)
        for unit in ("B", "KB", "MB", "GB"):
            if value < 1000:
                return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
            value /= 1000
        return f"{value:.1f}TB"
    whole = int(size)
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if whole >= factor and whole % factor == 0:
            return f"{whole // factor}{unit}"
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if whole >= factor:
            return f"{whole / factor:.1f}{unit}"
    return f"{whole}B"


@dataclass(frozen=True)
class Limits:
    """What a run may use; None is no limit."""

    memory: int | None = None  # bytes, swap included
    pids: int | None = None  # processes (and threads), the sandbox's init included
    cpus: float | None = None  # CPU time per wall-clock second

    @property
    def empty(self) -> bool:
        return self.memory is None and self.pids is None and self.cpus is None

    def controllers(self) -> tuple[str, ...]:
        wanted = {"memory": self.memory, "pids": self.pids, "cpu": self.cpus}
        return tuple(name for name in CONTROLLERS if wanted[name] is not None)

    def merged(self, override: Limits) -> Limits:
        """These limits with ``override``'s set fields taking their place."""
        return Limits(
            memory=override.memory if override.memory is not None else self.memory,
            pids=override.pids if override.pids is not None else self.pids,
            cpus=override.cpus if override.cpus is not None else self.cpus,
        )

    def describe(self) -> str:
        parts = []
        if self.memory is not None:
            parts.append(f"memory {format_bytes(self.memory)}")
        if self.pids is not None:
            parts.append(f"pids {self.pids}")
        if self.cpus is not None:
            parts.append(f"cpus {self.cpus:g}")
        return ", ".join(parts) or "none"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"memory": self.memory, "pids": self.pids, "cpus": self.cpus}
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Limits:
        data = data or {}
        return cls(memory=data.get("memory"), pids=data.get("pids"), cpus=data.get("cpus"))

    @classmethod
    def parse(cls, memory: str | None = None, pids: str | None = None, cpus: str | None = None) -> Limits:
        """The command line's ``--memory``, ``--pids-limit``, ``--cpus``; SandboxError when wrong."""
        return cls(memory=_option("--memory", parse_memory, memory),
                   pids=_option("--pids-limit", parse_pids, pids),
                   cpus=_option("--cpus", parse_cpus, cpus))


def _option(option: str, parse: Callable[[object], Any], value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as exc:
        raise SandboxError(f"{option}: {exc}", hint="e.g. --memory 512M --pids-limit 256 --cpus 1.5") from None
