"""What a crash can leave behind, found and (on request) cleaned up.

sandboxmgr is built so that a ``kill -9`` leaves nothing that matters: a
sandbox's mounts live in its own mount namespace, its processes die with its
PID 1, a half-made image is a ``tmp/`` entry that the next command removes.
The doctor checks that promise and cleans up what is left anyway:

* **process** - a sandbox's PID 1 (named ``sandboxmgr-init``) whose manager is
  gone, or a process whose root directory is a dead run's directory in the store;
* **cgroup** - a run's cgroup (``.../sandboxmgr/<pid>-<start>-<random>``) whose
  manager is gone;
* **mount** - something mounted under the store in the host's mount namespace
  (sandboxes never mount there; a crash of an older version or a hand-made
  bind might have);
* **tmp** - a ``tmp/`` entry whose lock nobody holds;
* **lock** - a ``tmp-*``/``sandbox-*`` lock file whose directory is gone;
* **permissions** - the store's root or a top directory that another local user
  may enter (the store must be 0700: it holds setuid binaries and device nodes
  that sandboxes planted); fixed by making it 0700 again.
* **binfmt** - an architecture of an image in the store that this kernel cannot
  run now: no qemu-user binfmt_misc handler, or one without the F flag (binfmt.py).
  Reported with the fix and never fixed: the doctor registers no handler.

Processes and cgroups are the machine's, not one store's: the doctor reports
those of every store. Anything in use (a lock held, a manager alive) is left
alone. Cleaning never deletes through a mount: mounts are detached (which
touches nothing they show), and ``tmp/`` entries are removed by
:meth:`Store.clean_leftovers`, which refuses to delete while anything is
mounted inside.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandboxmgr import cgroups, linux, mountinfo
from sandboxmgr.errors import NotRootError, SandboxError, counted
from sandboxmgr.locations import tighten_dir
from sandboxmgr.locks import is_locked, lock_files
from sandboxmgr.spec import INIT_NAME
from sandboxmgr.store import Store
from sandboxmgr.userns import entered


@dataclass
class Finding:
    kind: str  # process, cgroup, mount, tmp, lock, permissions or binfmt (the module's docstring)
    what: str  # a pid or a path
    detail: str
    repair: Callable[[], None] | None = field(default=None, repr=False)
    fixed: bool = False
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "what": self.what, "detail": self.detail,
                "fixed": self.fixed, "error": self.error}


def examine(store: Store) -> list[Finding]:
    """Everything left over, in the order it is best cleaned: processes first (their
    namespaces and cgroups go with them), then cgroups, mounts, directories, locks."""
    if os.geteuid() != 0:
        raise NotRootError("doctor needs root (it reads every process, mount and cgroup)",
                           hint="run it with sudo, or as root")
    root = Path(os.path.realpath(store.root))
    findings = _orphaned_inits() + _processes_in(store, root) + _cgroups()
    findings += _mounts(store, root) + _temporaries(store) + _locks(store) + _permissions(store)
    return findings + foreign_findings(store)


def foreign_findings(store: Store, binfmt_misc: Path | None = None) -> list[Finding]:
    """One ``binfmt`` finding per architecture of the store's images that this kernel cannot
    run now, naming the images' profiles and the fix (no repair: handlers are the host's)."""
    from sandboxmgr import binfmt

    # By handler: Debian's arm64 and RPM's aarch64 images need the same one, and get one finding.
    arches: dict[str, dict[str, set[str]]] = {}
    for image in store.images():
        arch = str(image.meta.get("arch", ""))
        if arch and binfmt.is_foreign(arch):
            arches.setdefault(binfmt.handler_name(arch), {}).setdefault(arch, set()).add(image.profile)
    findings = []
    for handler, profiles in sorted(arches.items()):
        found = binfmt.problem(min(profiles), binfmt_misc)
        if found is not None:
            line, fix = found
            names = sorted(set().union(*profiles.values()))
            findings.append(Finding("binfmt", handler, f"{line}: the {'/'.join(sorted(profiles))} images of "
                                                       f"{', '.join(names)} cannot run; fix: {fix}"))
    return findings


def rootless_findings() -> list[Finding]:
    """For an ordinary user: what keeps it from rootless mode (userns.problems), as findings of
    kind ``rootless``, each with its fix; before anything else, as the store is reached only
    from the user's namespace."""
    from sandboxmgr.userns import problems

    return [Finding("rootless", what, f"{line}; fix: {fix}") for what, line, fix in problems()]


def apparmor_profile() -> str:
    """The AppArmor profile for this installation's script (apparmor.py), and a warning on
    stderr when others than root can replace the script (the profile's grant would be theirs)."""
    from sandboxmgr import apparmor
    from sandboxmgr.errors import warn

    path = apparmor.script()
    who = apparmor.writers(path)
    if who:
        warn(apparmor.warning(path, who))
    return apparmor.profile(path, who)


def repair(store: Store, findings: list[Finding]) -> None:
    """Clean up what :func:`examine` found; each finding records whether it worked."""
    killed = False
    for finding in findings:
        if finding.kind == "process" and finding.repair is not None:
            _attempt(finding)
            killed = True
    if killed:
        time.sleep(0.2)  # let the kernel tear down the dead sandboxes' namespaces
    for finding in findings:
        if finding.kind in ("cgroup", "mount", "lock", "permissions") and finding.repair is not None:
            _attempt(finding)
    temporaries = [f for f in findings if f.kind == "tmp"]
    if temporaries:
        try:
            store.clean_leftovers()
            error = None
        except SandboxError as exc:
            error = exc.message
        for finding in temporaries:
            finding.fixed = not os.path.lexists(finding.what)
            finding.error = None if finding.fixed else error or "still there (in use again?)"


def _attempt(finding: Finding) -> None:
    assert finding.repair is not None
    try:
        finding.repair()
        finding.fixed = True
    except (OSError, SandboxError) as exc:
        finding.error = str(exc)


# --- processes ---------------------------------------------------------------------------------


def _pids() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {key: value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())}


def _dying(status: dict[str, str]) -> bool:
    """A zombie, or a process with SIGKILL pending: already on its way out."""
    kill_bit = 1 << (signal.SIGKILL - 1)
    pending = [status.get(key, "0") for key in ("SigPnd", "ShdPnd")]
    return status.get("State", "").startswith(("Z", "X")) or any(int(p, 16) & kill_bit for p in pending)


def _is_manager(pid: int) -> bool:
    """Whether ``pid`` looks like a sandboxmgr manager (or a Python using it as a library)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False
    return b"sandboxmgr" in cmdline or exe.startswith("python")


def _kill(pid: int) -> Callable[[], None]:
    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return kill


def _ours(status: dict[str, str]) -> bool:
    """Whether the process is this user's: for an ordinary user (in its user namespace, see
    userns.py), an init of its sandboxes is uid 0 there; root's and other users' are not
    mapped (the overflow id) and are none of its business."""
    return not entered() or status.get("Uid", "").split()[:1] == ["0"]


def _orphaned_inits() -> list[Finding]:
    """Sandbox inits whose manager died: PDEATHSIG makes this (nearly) impossible,
    so one found here is worth a look."""
    findings = []
    for pid in _pids():
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm != INIT_NAME:
            continue
        status = _status(pid)
        if not status or _dying(status) or not _ours(status):
            continue
        parent = int(status.get("PPid", "0") or 0)
        if parent > 1 and _is_manager(parent):
            continue
        findings.append(Finding("process", str(pid),
                                f"sandbox init whose manager is gone (parent now {parent}); "
                                "killing it ends its sandbox", _kill(pid)))
    return findings


def _stale_owner(store: Store, root: Path, path: str) -> str | None:
    """What a path under the store belongs to, if that is a leftover of a dead process."""
    relative = Path(path).relative_to(root).parts
    if len(relative) >= 2 and relative[0] == "tmp":
        if not is_locked(store.lock("tmp", relative[1]).path):
            return f"a dead run's directory tmp/{relative[1]}"
        return None
    if len(relative) >= 2 and relative[0] == "sandboxes":
        if not is_locked(store.lock("live", relative[1]).path):
            return f"sandbox {relative[1]}, which is not running"
        return None
    return f"the store ({'/'.join(relative[:2]) or '.'})"


def _processes_in(store: Store, root: Path) -> list[Finding]:
    """Processes chrooted into a dead run's directory (a bootstrap tool that outlived its build)."""
    findings = []
    me = os.getpid()
    for pid in _pids():
        if pid == me:
            continue
        try:
            where = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        if not mountinfo.is_under(where, str(root)) or where == str(root) or str(root) == "/":
            continue
        status = _status(pid)
        if not status or _dying(status):
            continue
        owner = _stale_owner(store, root, where)
        if owner is None:
            continue
        name = status.get("Name", "?")
        findings.append(Finding("process", str(pid), f"{name} runs with its root in {owner}: {where}",
                                _kill(pid)))
    return findings


# --- cgroups, mounts, directories, locks ---------------------------------------------------------


def _cgroups() -> list[Finding]:
    findings = []
    try:
        groups = cgroups.find_run_groups()
    except OSError:
        return []
    for group in groups:
        if group.manager_alive or not _own_group(group.path):
            continue
        what = f"{counted(len(group.procs), 'process', 'processes')} left in it" if group.procs else "empty"
        findings.append(Finding("cgroup", str(group.path), f"a run's cgroup whose manager is gone ({what})",
                                _remove_group(group)))
    return findings


def _own_group(path: Path) -> bool:
    """Root's doctor judges every run cgroup; an ordinary user's only its own (uid 0 in its
    namespace), never root's or another user's, which it could not remove anyway."""
    try:
        return not entered() or os.stat(path).st_uid == 0
    except OSError:
        return False


def _remove_group(group: cgroups.RunGroup) -> Callable[[], None]:
    def remove() -> None:
        if not cgroups.remove_run_group(group):
            raise SandboxError(f"cannot empty or remove {group.path}")
    return remove


def _mounts(store: Store, root: Path) -> list[Finding]:
    findings = []
    for point in mountinfo.mounts_under(root):
        if point == str(root):
            continue  # the store may live on a file system of its own
        owner = _stale_owner(store, root, point)
        if owner is None:
            continue
        findings.append(Finding("mount", point, f"mounted in the host's namespace, in {owner}",
                                _unmount(point)))
    return findings


def _unmount(point: str) -> Callable[[], None]:
    def unmount() -> None:
        # Detached: the mount goes, what it shows is not touched.
        linux.umount2(point, linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)
    return unmount


def _temporaries(store: Store) -> list[Finding]:
    if not store.tmp_dir.is_dir():
        return []
    findings = []
    for entry in sorted(store.tmp_dir.iterdir()):
        if not is_locked(store.lock("tmp", entry.name).path):
            findings.append(Finding("tmp", str(entry), "temporary directory of a process that died"))
    return findings


def _locks(store: Store) -> list[Finding]:
    if not store.locks_dir.is_dir():
        return []
    homes = {"tmp": store.tmp_dir, **dict.fromkeys(("sandbox", "live", "use"), store.sandboxes_dir)}
    findings = []
    for kind, name in lock_files(store.locks_dir, homes):
        entry = store.lock(kind, name).path
        if (homes[kind] / name).exists() or is_locked(entry):
            continue
        findings.append(Finding("lock", str(entry), f"lock file of a {kind} that is gone",
                                _unlink_lock(store, kind, name, homes[kind] / name)))
    return findings


def _unlink_lock(store: Store, kind: str, name: str, home: Path) -> Callable[[], None]:
    def unlink() -> None:
        lock = store.lock(kind, name)
        if not lock.try_acquire():
            raise SandboxError(f"{lock.path} is in use again")
        try:
            if not home.exists():
                lock.path.unlink(missing_ok=True)
        finally:
            lock.release()
    return unlink


def _permissions(store: Store) -> list[Finding]:
    return [Finding("permissions", str(directory),
                    f"mode {mode:04o}: other local users can reach what sandboxes planted there "
                    "(setuid binaries, device nodes); the store must be 0700",
                    _tighten(directory))
            for directory, mode in store.loose_dirs()]


def _tighten(directory: Path) -> Callable[[], None]:
    def tighten() -> None:
        tighten_dir(directory)  # refuses a shared directory (/tmp) rather than making it 0700
    return tighten
