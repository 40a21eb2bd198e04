"""Resource limits: a cgroup per sandbox run (the hierarchies it goes in: cgroups.py).

A run with limits (``--memory``, ``--pids-limit``, ``--cpus`` or a profile's
``limits:``) gets a cgroup of its own in every hierarchy that carries one of the
controllers it needs: the unified (v2) hierarchy when it offers the controller,
else the controller's v1 hierarchy. Hybrid machines (systemd's layout with v1
controllers under ``/sys/fs/cgroup/<controller>`` and an empty v2 hierarchy at
``/sys/fs/cgroup/unified``) thus use v1; a pure v2 machine uses v2.

With v1 the cgroup is made below the manager's own cgroup, as
``sandboxmgr/<id>``, so whatever limits the caller lives under still apply to
the sandbox; v2's no-internal-process rule forbids that (the caller's cgroup
holds the caller), so there it is ``<v2 root>/sandboxmgr/<id>``. Either way
leftovers are easy to recognise. ``<id>`` is ``<manager pid>-<its start
time>-<random>``: :mod:`sandboxmgr.doctor` can tell a cgroup whose manager died
from one in use without any state on disk. The sandbox's PID 1 writes itself
into the cgroup's leaf (``<id>/sandbox``, see :data:`LEAF`) before it forks the
command, so everything the command starts is counted, then makes its cgroup
namespace there; the manager removes the cgroup once PID 1 (and with it every
process of the PID namespace) is gone.

Unlike the rest of the mount plan this is not free (a mkdir and a few writes
per hierarchy), so a run without limits gets no cgroup at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sandboxmgr.cgroups import (
    LEAF,
    RUN_NAME,
    Hierarchy,
    cgroup_procs,
    choose,
    delegated,
    hierarchies,
    kill_all,
    manager_alive,
    process_start_time,
    remove_dir,
    remove_parent,
    write,
)
from sandboxmgr.errors import SandboxError
from sandboxmgr.limits import MIN_CPUS, Limits, format_bytes
from sandboxmgr.userns import entered

CPU_PERIOD_US = 100_000


def _enable(directory: Path, controllers: list[str]) -> None:
    """v2: let ``directory``'s children use ``controllers`` (cgroup.subtree_control)."""
    try:
        enabled = set((directory / "cgroup.subtree_control").read_text().split())
    except OSError as exc:
        raise SandboxError(f"cannot read {directory}/cgroup.subtree_control: {exc.strerror}") from None
    missing = [c for c in controllers if c not in enabled]
    if not missing:
        return
    try:
        write(directory / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise SandboxError(
                f"cannot enable the {' '.join(missing)} controller below {directory}: it has processes "
                "of its own (cgroup v2 allows controllers only below cgroups without processes)",
                hint="inside a container's cgroup namespace, give it a delegated cgroup tree; "
                     "or run without limits",
            ) from None
        raise SandboxError(f"cannot enable the {' '.join(missing)} controller below {directory}: "
                           f"{exc.strerror}", hint="run without limits, or check the cgroup setup") from None


def _remove_stale_siblings(parent: Path) -> None:
    """Empty cgroups of managers that died (``kill -9``) are removed by the next run."""
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and RUN_NAME.match(entry.name) \
                    and not manager_alive(entry.name) and not cgroup_procs(Path(entry.path)):
                remove_dir(Path(entry.path), wait=0)


@dataclass
class RunCgroup:
    """The cgroup of one sandbox run: a directory per hierarchy used."""

    limits: Limits
    directories: dict[Path, int]  # directory -> cgroup version
    controllers: dict[str, Path]  # controller -> the directory it is limited in

    @classmethod
    def create(cls, limits: Limits, found: list[Hierarchy] | None = None) -> RunCgroup:
        """Make and configure the run's cgroup; SandboxError when the machine cannot."""
        found = hierarchies() if found is None else found
        if entered():  # an ordinary user: a subtree delegated to it, else one error
            found = delegated(found, limits.controllers())
        plan = choose(limits.controllers(), found)
        if limits.cpus is not None and limits.cpus > (os.cpu_count() or 1):
            raise SandboxError(f"--cpus {limits.cpus:g}: this machine has only {os.cpu_count()} CPUs",
                               hint=f"give a number from {MIN_CPUS} to {os.cpu_count()}")
        name = f"{os.getpid()}-{process_start_time(os.getpid()) or 0}-{os.urandom(3).hex()}"
        run = cls(limits, {}, {})
        try:
            for hierarchy, controllers in plan.items():
                directory = run._make(hierarchy, controllers, name)
                for controller in controllers:
                    run.controllers[controller] = directory
            run._configure()
        except SandboxError:
            run.remove()
            raise
        except OSError as exc:
            run.remove()
            raise SandboxError(f"cannot set up the cgroup for the limits ({limits.describe()}): {exc}",
                               hint="run without limits, or check /sys/fs/cgroup") from None
        return run

    def _make(self, hierarchy: Hierarchy, controllers: list[str], name: str) -> Path:
        parent = hierarchy.run_parent
        if hierarchy.version == 2:
            # A delegated subtree: the parent of the caller's cgroup offers them (delegated()).
            _enable(parent.parent if hierarchy.delegated else hierarchy.mount, controllers)
        for _ in range(10):
            try:
                parent.mkdir(exist_ok=True)
                if hierarchy.version == 2:
                    _enable(parent, controllers)
                directory = parent / name
                directory.mkdir()
                (directory / LEAF).mkdir()
                break
            except FileNotFoundError:  # another run removed the emptied parent just now
                continue
        else:  # pragma: no cover - ten races in a row
            raise SandboxError(f"cannot create a cgroup in {parent}", hint="try again")
        self.directories[directory] = hierarchy.version
        _remove_stale_siblings(parent)
        return directory

    def _configure(self) -> None:
        limits = self.limits
        if limits.memory is not None:
            directory = self.controllers["memory"]
            if self.directories[directory] == 2:
                write(directory / "memory.max", str(limits.memory))
                if (directory / "memory.swap.max").exists():
                    write(directory / "memory.swap.max", "0")
            else:
                write(directory / "memory.limit_in_bytes", str(limits.memory))
                if (directory / "memory.memsw.limit_in_bytes").exists():
                    write(directory / "memory.memsw.limit_in_bytes", str(limits.memory))
        if limits.pids is not None:
            write(self.controllers["pids"] / "pids.max", str(limits.pids))
        if limits.cpus is not None:
            directory = self.controllers["cpu"]
            if self.directories[directory] == 2:
                quota = max(1000, round(limits.cpus * CPU_PERIOD_US))
                write(directory / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                try:
                    period = int((directory / "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    period = CPU_PERIOD_US
                write(directory / "cpu.cfs_quota_us", str(max(1000, round(limits.cpus * period))))

    def open_procs(self) -> list[int]:
        """File descriptors on each leaf's ``cgroup.procs``, for the sandbox's PID 1 to join with."""
        fds: list[int] = []
        try:
            for directory in self.directories:
                fds.append(os.open(directory / LEAF / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def events(self) -> tuple[int, int]:
        """(processes the OOM killer took, forks refused at the pids limit) so far."""
        oom = refused = 0
        # The run's cgroup, or its leaf: v1 counts an OOM kill where the victim was (the
        # leaf), a refused fork where the limit is; v2 counts both up the tree, and its
        # leaf has no such files. The larger of the two never counts one event twice.
        memory = self.controllers.get("memory")
        if memory is not None:
            name = "memory.events" if self.directories[memory] == 2 else "memory.oom_control"
            oom = max(_counter(memory / name, "oom_kill"), _counter(memory / LEAF / name, "oom_kill"))
        pids = self.controllers.get("pids")
        if pids is not None:
            refused = max(_counter(pids / "pids.events", "max"), _counter(pids / LEAF / "pids.events", "max"))
        return oom, refused

    def report(self, status: int) -> str | None:
        """One line on what the limits did to the run, or None when they did nothing."""
        return describe(self.limits, *self.events(), status)

    def remove(self) -> list[Path]:
        """Remove the run's cgroups; returns those that could not be (still busy)."""
        left = []
        for directory in list(self.directories):
            if not remove_dir(directory):
                kill_all(directory, wait=2.0)
                if not remove_dir(directory):
                    left.append(directory)
                    continue
            del self.directories[directory]
            remove_parent(directory.parent)
        return left


def describe(limits: Limits, oom: int, refused: int, status: int) -> str | None:
    """One line on what ``limits`` did (``oom`` processes killed, ``refused`` forks), or None."""
    reasons = []
    if oom and limits.memory is not None:
        what = "process" if oom == 1 else "processes"
        reasons.append(f"out of memory: the kernel killed {oom} {what} at the memory limit "
                       f"({format_bytes(limits.memory)})")
    if refused and limits.pids is not None:
        what = "fork was" if refused == 1 else "forks were"
        reasons.append(f"the process limit ({limits.pids}) was reached: {refused} {what} refused")
    if not reasons:
        return None
    return f"{'; '.join(reasons)}; exit status {status}"


def events_in(leaves: Iterable[Path]) -> tuple[int, int]:
    """(OOM kills, refused forks) so far in the run cgroups whose leaves are ``leaves`` (a live
    sandbox's, as its monitor recorded them: a joined command's report, join.py), counted as
    :meth:`RunCgroup.events` counts them, whichever hierarchy each is in."""
    oom = refused = 0
    for leaf in leaves:
        for directory in (leaf.parent, leaf):
            for name in ("memory.events", "memory.oom_control"):
                oom = max(oom, _counter(directory / name, "oom_kill"))
            refused = max(refused, _counter(directory / "pids.events", "max"))
    return oom, refused


def join(fds: list[int]) -> None:
    """Move the calling process into the cgroups (``0`` is "the writer")."""
    for fd in fds:
        os.write(fd, b"0")
        os.close(fd)


def _counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0
