"""Rootless mode: the user namespace an ordinary user's sandboxmgr works in.

An ordinary user's sandboxmgr enters a user namespace of its own before it touches its
store, as podman does, and everything after that - building, entering, removing - runs
unchanged inside it, as uid 0 with the capabilities that namespace gives:

    inside  0          -> the user's own uid (and gid)
    inside  1 .. N     -> the user's subordinate range in /etc/subuid (/etc/subgid)

The map is written by the distro's setuid ``newuidmap``/``newgidmap`` (the ``uidmap``
package), which check it against /etc/subuid and /etc/subgid: a process may not write a
map with more than its own id itself. So the files the manager makes (the store, image
files that root owns inside) belong to the user on the host, files of the sandboxes'
other users to its subordinate ids, and nothing to the host's root: root inside is the
user outside, and holds no capability over the host's files.

mmdebstrap's own unshare mode maps inside 0 to the FIRST subordinate id instead (its
directory output then has root's files owned by that id). Under this map such a tree would
show root's files as uid 1, so the bootstrap tool runs inside this namespace (as its root),
and every file of an image is written through this one map.

The manager is single-threaded when it enters (the kernel refuses CLONE_NEWUSER to a
threaded process): a forked helper outside waits until the manager has unshared, then runs
the two setuid programs on the manager's pid.
"""

from __future__ import annotations

import os

from sandboxmgr import linux
from sandboxmgr.errors import SandboxError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from pathlib import Path

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
MAX_USER_NAMESPACES = "/proc/sys/user/max_user_namespaces"
APPARMOR_RESTRICT = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
# Set by enter() in the manager's environment: sandboxmgr processes it starts know the
# namespace is the user's (uid 0 there is not the host's root), and do not enter another.
MARK = "SANDBOXMGR_USERNS"
_IDENTITY_MAP = "0 0 4294967295"
MAP_TOOLS = ("newuidmap", "newgidmap")


def entered() -> bool:
    """Whether this process is in a user namespace an ordinary user's sandboxmgr entered."""
    if os.environ.get(MARK) != "1":
        return False
    try:
        with open("/proc/self/uid_map") as handle:
            first = handle.read().split()
    except OSError:
        return False
    return " ".join(first[:3]) != _IDENTITY_MAP


def rootless() -> bool:
    """Whether sandboxmgr works for an ordinary user (before or after it entered its namespace)."""
    return os.geteuid() != 0 or entered()


def subordinate(path: str, user: str, uid: int) -> tuple[int, int] | None:
    """The first range (start, count) of ``user`` (by name or number) in /etc/subuid or
    /etc/subgid, as newuidmap reads them; None when there is none."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (user, str(uid)) and fields[1].isdigit() and fields[2].isdigit() \
                and int(fields[2]) > 0:
            return int(fields[1]), int(fields[2])
    return None


def id_map(own: int, subordinates: tuple[int, int]) -> list[str]:
    """newuidmap's (newgidmap's) triples: inside 0 is ``own``, inside 1.. the subordinate range."""
    start, count = subordinates
    return ["0", str(own), "1", "1", str(start), str(count)]


def user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _find(program: str) -> str | None:
    for directory in ("/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"):
        path = os.path.join(directory, program)
        if os.access(path, os.X_OK):
            return path
    return None


def restriction() -> tuple[str, str, str] | None:
    """Why this host refuses an ordinary user's user namespaces (what, line, fix); or None."""
    if _read_int(MAX_USER_NAMESPACES) == 0:
        return ("user.max_user_namespaces", "user namespaces are turned off on this host (user.max_user_namespaces=0)",
                "as root: sysctl -w user.max_user_namespaces=15000 (and in /etc/sysctl.d/ to keep it)")
    if _read_int(APPARMOR_RESTRICT) != 1:
        return None
    from sandboxmgr import apparmor  # here: only where the restriction is on

    if apparmor.label() in (None, "unconfined"):
        # Under a profile (sandboxmgr's own, or one that stacks on it) the profile decides:
        # its userns rule, or the attempt's refusal (_refused).
        return ("kernel.apparmor_restrict_unprivileged_userns",
                "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1) "
                "and no AppArmor profile names this sandboxmgr", apparmor_fix())
    return None


def apparmor_fix() -> str:
    """The hint for an AppArmor restriction: install sandboxmgr's profile, written for the
    running installation's script (apparmor.py), or turn the restriction off."""
    from sandboxmgr import apparmor

    try:
        command = str(apparmor.script())
    except SandboxError:
        command = "sandboxmgr"
    return (f"as root: {command} doctor --apparmor-profile > {apparmor.INSTALLED} && apparmor_parser -r "
            f"{apparmor.INSTALLED} (README: AppArmor), or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")


def _read_int(path: str) -> int | None:
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def problems(uid: int | None = None) -> list[tuple[str, str, str]]:
    """What keeps the user ``uid`` (default: the caller) from rootless mode: (what, line, fix)
    each, what being the setting, program or file to look at."""
    uid = os.getuid() if uid is None else uid
    user = user_name(uid)
    found = []
    restricted = restriction()
    if restricted is not None:
        found.append(restricted)
    for program in MAP_TOOLS:
        if _find(program) is None:
            found.append((program, f"{program} is not installed (an ordinary user's sandboxes need it)",
                          "as root: apt-get install uidmap (dnf install shadow-utils)"))
    for path, kind in ((SUBUID, "uid"), (SUBGID, "gid")):
        if subordinate(path, user, uid) is None:
            found.append((path, f"{user} has no subordinate {kind} range in {path}",
                          f"as root: usermod --add-sub{kind}s 100000-165535 {user} (a range no other user has)"))
    return found


def enter(running: Path | None = None) -> None:
    """Enter the caller's user namespace (see the module's docstring); nothing for root.
    ``running``: the directory of a named sandbox a command is for; if it runs (live.py), its
    user namespace is entered instead of a new one - a command joins the sandbox's other
    namespaces from there, and from a sibling namespace it could not."""
    pending = begin(running)
    if pending is not None:
        pending.finish()


class Pending:
    """A user namespace entered whose map the helper outside is still writing (milliseconds:
    two setuid programs' start-up). Until :meth:`finish`, the manager's ids read as unmapped
    inside: it may import modules and read files (the kernel still checks the user's own ids),
    but must not create a file or compare an owner."""

    def __init__(self, helper: int, report: int, uid: int, user: str) -> None:
        self._helper, self._report, self._uid, self._user = helper, report, uid, user

    def finish(self) -> None:
        """Wait for the map; a one-line error if it could not be written."""
        report = _read_all(self._report)
        _, status = os.waitpid(self._helper, 0)
        if status != 0 or report:
            found = problems(self._uid)
            if found:
                raise SandboxError(found[0][1], hint=found[0][2])
            raise SandboxError(f"cannot map {self._user}'s subordinate ids into its user namespace: "
                               f"{report.strip() or 'the helper failed'}",
                               hint=f"check {self._user}'s lines in {SUBUID} and {SUBGID}, and that newuidmap "
                                    "is setuid root")
        # The user's supplementary groups are not mapped (they would show as nogroup inside).
        os.setgroups([])
        os.environ[MARK] = "1"


def begin(running: Path | None = None) -> Pending | None:
    """:func:`enter` in two steps, so that the caller's imports overlap the helper's map: the
    namespace is entered here, and the returned :class:`Pending` (None: nothing to wait for -
    root, or a running sandbox's namespace joined) must be finished before the store is reached."""
    if os.geteuid() == 0:
        return None
    if running is not None and _join_running(running):
        return None
    uid, gid = os.getuid(), os.getgid()
    found = problems(uid)
    if found:
        raise SandboxError(found[0][1], hint=found[0][2])
    user = user_name(uid)
    uids = subordinate(SUBUID, user, uid)
    gids = subordinate(SUBGID, user, uid)
    assert uids is not None and gids is not None  # problems() said so
    maps = (id_map(uid, uids), id_map(gid, gids))
    go_read, go_write = os.pipe2(os.O_CLOEXEC)
    report_read, report_write = os.pipe2(os.O_CLOEXEC)
    manager = os.getpid()
    helper = os.fork()
    if helper == 0:  # pragma: no cover - the helper outside the namespace
        os.close(go_write)
        os.close(report_read)
        _write_maps(manager, maps, go_read, report_write)
    os.close(go_read)
    os.close(report_write)
    try:
        linux.unshare(linux.CLONE_NEWUSER)
    except OSError as exc:
        os.write(go_write, b"n")  # the helper must not map another process
        os.close(go_write)
        os.waitpid(helper, 0)
        os.close(report_read)
        raise _refused(exc) from None
    os.close(go_write)
    return Pending(helper, report_read, uid, user)


def _join_running(sandbox: Path) -> bool:
    """Enter the user namespace of the running sandbox at ``sandbox`` (its PID 1, as its monitor
    recorded it, checked by name while a pidfd holds it); False when it is not running."""
    import json

    try:
        state = json.loads((sandbox / "state.json").read_text())
        pid = int(state["pid"]) if state.get("status") == "running" else 0
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if pid <= 0:
        return False
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/comm") as comm:
            if comm.read().strip() != "sandboxmgr-init":
                return False
        linux.setns(pidfd, linux.CLONE_NEWUSER)  # allowed: the user made it
    except OSError:
        return False
    finally:
        os.close(pidfd)
    os.environ[MARK] = "1"
    return True


def fork_in_pid_namespace(own_pid_ns: int) -> int:
    """Fork a child that is PID 1 of a new PID namespace; the caller stays in its own (whose
    file descriptor is ``own_pid_ns``)."""
    if entered():
        # In the user's namespace the manager may not setns() back into its PID namespace
        # (the host's user namespace owns it): the child is cloned into the new one instead.
        return linux.fork_in_new_pid_namespace()
    linux.unshare(linux.CLONE_NEWPID)
    try:
        pid = os.fork()
    except BaseException:
        linux.setns(own_pid_ns, linux.CLONE_NEWPID)
        raise
    if pid != 0:
        linux.setns(own_pid_ns, linux.CLONE_NEWPID)
    return pid


def _refused(exc: OSError) -> SandboxError:
    restricted = restriction()
    if restricted is not None:
        return SandboxError(restricted[1], hint=restricted[2])
    from sandboxmgr import apparmor

    confined = apparmor.label()
    if confined not in (None, "unconfined", apparmor.NAME):
        return SandboxError(f"cannot make a user namespace: the AppArmor profile {confined} does not allow it "
                            f"({exc.strerror})", hint=apparmor_fix())
    return SandboxError(f"cannot make a user namespace: {exc.strerror}",
                        hint="this host does not let ordinary users make user namespaces: run sandboxmgr as root")


def _read_all(fd: int) -> str:
    chunks = []
    with os.fdopen(fd, "rb") as pipe:
        chunks.append(pipe.read())
    return b"".join(chunks).decode(errors="replace")


def _write_maps(manager: int, maps: tuple[list[str], list[str]], go: int, report: int) -> None:
    """The helper: wait for the manager's unshare (end of file on ``go``), run newuidmap and
    newgidmap on it, their errors into ``report``. Never returns."""
    try:
        if os.read(go, 1):
            os._exit(1)  # the manager could not unshare
        # Both at once, each a setuid program's start-up (milliseconds); spawned (vfork: no
        # copy of this process's memory), their errors into the report.
        children = [os.posix_spawn(_find(program) or program, [program, str(manager), *triples], os.environ,
                                   file_actions=[(os.POSIX_SPAWN_DUP2, report, 2)])
                    for program, triples in zip(MAP_TOOLS, maps, strict=True)]
        failed = [os.waitpid(child, 0)[1] != 0 for child in children]
        os._exit(1 if any(failed) else 0)
    except BaseException:
        os._exit(1)
