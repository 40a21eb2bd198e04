"""Resource limits: a cgroup per sandbox run.

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
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sandboxmgr.errors import SandboxError
from sandboxmgr.limits import MIN_CPUS, Limits, format_bytes

GROUP_DIR = "sandboxmgr"
# The sandbox's processes live one level below the cgroup that carries the limits, and
# its cgroup namespace is rooted there. Even root in a user namespace of its own (possible
# with seccomp=unconfined only) that mounts a cgroup file system reaches nothing but this
# leaf: on cgroup v1 it may write the leaf's pids.max or memory limits, and the run's
# limits, one level up, still hold; on v2 the leaf has no limit files at all.
LEAF = "sandbox"
CPU_PERIOD_US = 100_000
_RUN_NAME = re.compile(r"^(\d+)-(\d+)-[0-9a-f]+$")


# --- the hierarchies of this machine -------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy and this process's place in it."""

    version: int  # 1 or 2
    mount: Path
    controllers: frozenset[str]  # v1: those bound to it; v2: those it offers
    own: str  # this process's cgroup in it, like /user.slice/session-1.scope

    @property
    def own_dir(self) -> Path:
        return self.mount / self.own.strip("/")

    @property
    def run_parent(self) -> Path:
        """Where runs' cgroups go. v1: below the caller's own cgroup. v2 forbids
        processes in a cgroup whose children use controllers (the caller's cgroup
        has at least the caller), so there: below the hierarchy's root, whose
        subtree_control is exempt, as Docker's cgroupfs driver does."""
        return (self.mount if self.version == 2 else self.own_dir) / GROUP_DIR


def _mounted_cgroups(mountinfo_text: str) -> list[tuple[str, str, Path, set[str]]]:
    """(fstype, mount root, mount point, super options) of each cgroup mount."""
    found = []
    for line in mountinfo_text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        found.append((tail[0], fields[3], Path(point), set(tail[2].split(","))))
    return found


def hierarchies(mountinfo_text: str | None = None, cgroup_text: str | None = None,
                sys_root: Path = Path("/")) -> list[Hierarchy]:
    """The cgroup hierarchies mounted here, each with this process's cgroup in it.

    The texts default to ``/proc/self/mountinfo`` and ``/proc/self/cgroup``;
    tests give their own (and ``sys_root``, under which mount points are read).
    """
    if mountinfo_text is None:
        mountinfo_text = Path("/proc/self/mountinfo").read_text()
    if cgroup_text is None:
        cgroup_text = Path("/proc/self/cgroup").read_text()
    mounts = _mounted_cgroups(mountinfo_text)
    result: list[Hierarchy] = []
    seen: set[Path] = set()
    for line in cgroup_text.splitlines():
        number, _, rest = line.partition(":")
        names, _, own = rest.partition(":")
        if not number or not own:
            continue
        for fstype, root, point, options in mounts:
            if point in seen:
                continue
            if number == "0" and names == "" and fstype == "cgroup2":
                mount = sys_root / point.relative_to("/")
                try:
                    offered = frozenset((mount / "cgroup.controllers").read_text().split())
                except OSError:
                    offered = frozenset()
                result.append(Hierarchy(2, mount, offered, _below(own, root)))
            elif fstype == "cgroup" and names and set(names.split(",")) <= options:
                mount = sys_root / point.relative_to("/")
                result.append(Hierarchy(1, mount, frozenset(names.split(",")), _below(own, root)))
            else:
                continue
            seen.add(point)
            break
    return result


def _below(own: str, mount_root: str) -> str:
    """``own`` relative to a mount of a sub-tree (a container's view), else as it is."""
    if mount_root not in ("", "/") and (own == mount_root or own.startswith(mount_root.rstrip("/") + "/")):
        return own[len(mount_root.rstrip("/")):] or "/"
    return own


def choose(controllers: tuple[str, ...], found: list[Hierarchy]) -> dict[Hierarchy, list[str]]:
    """Where each controller is taken from: v2 when it offers it, else its v1 hierarchy."""
    plan: dict[Hierarchy, list[str]] = {}
    for controller in controllers:
        place = next((h for h in found if h.version == 2 and controller in h.controllers), None)
        if place is None:
            place = next((h for h in found if h.version == 1 and controller in h.controllers), None)
        if place is None:
            unified = next((h for h in found if h.version == 2), None)
            where = (f"cgroup v2 at {unified.mount} does not offer it ({' '.join(sorted(unified.controllers))})"
                     if unified else "no cgroup v2 hierarchy is mounted")
            raise SandboxError(
                f"cannot apply the {controller} limit: no cgroup hierarchy has the {controller} controller "
                f"({where}, and no v1 hierarchy has it)",
                hint=f"enable the {controller} controller (cgroup v2, or mount its v1 hierarchy), "
                     "or run without that limit",
            )
        plan.setdefault(place, []).append(controller)
    return plan


# --- one run's cgroup ----------------------------------------------------------------------------


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 else None


def manager_alive(name: str) -> bool:
    """Whether the manager that made the run cgroup ``name`` still runs."""
    match = _RUN_NAME.match(name)
    if match is None:
        return False
    return process_start_time(int(match.group(1))) == int(match.group(2))


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def cgroup_procs(directory: Path) -> list[int]:
    """The live processes of a run's cgroup and of its leaf (a zombie waits for its parent, not for us)."""
    pids: list[int] = []
    for place in (directory, directory / LEAF):
        try:
            pids += [int(line) for line in (place / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            continue
    return [pid for pid in pids if not _zombie(pid)]


def _zombie(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # gone already
    return text[text.rfind(")") + 2:].startswith(("Z", "X"))


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
        _write(directory / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
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


def remove_dir(directory: Path, wait: float = 2.0) -> bool:
    """rmdir a run's cgroup (its leaf first), waiting a little for exiting processes to leave it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(directory / LEAF)
            os.rmdir(directory)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
        time.sleep(0.01)


def kill_all(directory: Path, wait: float = 5.0) -> bool:
    """SIGKILL every process of a cgroup; True once it is empty."""
    kill_file = directory / "cgroup.kill"
    if kill_file.exists():
        with contextlib.suppress(OSError):
            _write(kill_file, "1")
    deadline = time.monotonic() + wait
    while True:
        procs = cgroup_procs(directory)
        if not procs:
            return True
        if time.monotonic() > deadline:
            return False
        for pid in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _remove_parent(parent: Path) -> None:
    """The ``sandboxmgr`` directory goes when its last run has: it must not keep the
    caller's own cgroup from being removed."""
    with contextlib.suppress(OSError):
        os.rmdir(parent)


def _remove_stale_siblings(parent: Path) -> None:
    """Empty cgroups of managers that died (``kill -9``) are removed by the next run."""
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and _RUN_NAME.match(entry.name) \
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
        plan = choose(limits.controllers(), hierarchies() if found is None else found)
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
            _enable(hierarchy.mount, controllers)
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
                _write(directory / "memory.max", str(limits.memory))
                if (directory / "memory.swap.max").exists():
                    _write(directory / "memory.swap.max", "0")
            else:
                _write(directory / "memory.limit_in_bytes", str(limits.memory))
                if (directory / "memory.memsw.limit_in_bytes").exists():
                    _write(directory / "memory.memsw.limit_in_bytes", str(limits.memory))
        if limits.pids is not None:
            _write(self.controllers["pids"] / "pids.max", str(limits.pids))
        if limits.cpus is not None:
            directory = self.controllers["cpu"]
            if self.directories[directory] == 2:
                quota = max(1000, round(limits.cpus * CPU_PERIOD_US))
                _write(directory / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                try:
                    period = int((directory / "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    period = CPU_PERIOD_US
                _write(directory / "cpu.cfs_quota_us", str(max(1000, round(limits.cpus * period))))

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
        oom, refused = self.events()
        reasons = []
        if oom and self.limits.memory is not None:
            what = "process" if oom == 1 else "processes"
            reasons.append(f"out of memory: the kernel killed {oom} {what} at the memory limit "
                           f"({format_bytes(self.limits.memory)})")
        if refused and self.limits.pids is not None:
            what = "fork was" if refused == 1 else "forks were"
            reasons.append(f"the process limit ({self.limits.pids}) was reached: {refused} {what} refused")
        if not reasons:
            return None
        return f"{'; '.join(reasons)}; exit status {status}"

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
            _remove_parent(directory.parent)
        return left


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


# --- what the doctor looks at --------------------------------------------------------------------


@dataclass(frozen=True)
class RunGroup:
    """A run cgroup found on the machine."""

    path: Path
    manager_alive: bool
    procs: tuple[int, ...]


def find_run_groups(found: list[Hierarchy] | None = None, max_depth: int = 8) -> list[RunGroup]:
    """Every ``sandboxmgr/<id>`` cgroup in every hierarchy, whoever's cgroup it sits under."""
    result = []
    for hierarchy in hierarchies() if found is None else found:
        for parent in _group_dirs(hierarchy.mount, max_depth):
            with contextlib.suppress(OSError), os.scandir(parent) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    if entry.is_dir(follow_symlinks=False) and _RUN_NAME.match(entry.name):
                        path = Path(entry.path)
                        result.append(RunGroup(path, manager_alive(entry.name), tuple(cgroup_procs(path))))
    return result


def _group_dirs(top: Path, max_depth: int) -> Iterator[Path]:
    stack = [(top, 0)]
    while stack:
        current, depth = stack.pop()
        try:
            entries = [e for e in os.scandir(current) if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for entry in entries:
            if entry.name == GROUP_DIR:
                yield Path(entry.path)
            elif depth < max_depth:
                stack.append((Path(entry.path), depth + 1))


def remove_run_group(group: RunGroup) -> bool:
    """Kill what is left in a dead run's cgroup and remove it."""
    if not kill_all(group.path):
        return False
    removed = remove_dir(group.path)
    if removed:
        _remove_parent(group.path.parent)
    return removed
