"""A running sandbox's join ticket, and the fast path of ``exec`` that uses it.

``exec NAME -- CMD`` into a running sandbox should cost the interpreter, a setns and a
fork. The general path (live.run_in) reads the sandbox's JSON files, merges its saved
config with the command line and builds the command's EnterSpec; the imports that takes
(json and re, pathlib, the config and mount machinery) cost more than the join itself.
So a starting sandbox gets a ticket beside its sandbox.json, written by its starter
(live.start): its PID 1 (pid, start time) and what :func:`sandboxmgr.sandbox.join_spec`
makes of its saved config for a command - environment, user, working directory, network,
isolation, capabilities, no_new_privs and its seccomp filter's BPF - in marshal's format
(a builtin module: nothing to import). :func:`exec_running` reads it and joins.

What the ticket does not cover goes the general way, as fastrun hands what it does not
know to the full CLI: an ordinary user (rootless: userns.py), a sandbox with limits (the
general path reports what they did), one started for a command (it stops when the last
command leaves: live._leave), a ticket of another format or Python, and anything not
running. The general path then says what is wrong, or starts the sandbox.

Trust: the ticket lives in the sandbox's directory in the store, root's alone (0700) and
out of the sandbox's reach (its changes are under ``upper/``); it is used only while the
live lock is held and its PID 1 is the very process it names (pidfd, name and start time,
as for live.holder). A joined command is set up by the same code either way (join.py,
execute.py), and nothing is imported once it has joined.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import sys
from stat import S_ISDIR

from sandboxmgr.join import Holder, open_holder, run_joined
from sandboxmgr.locks import is_locked, let_go, lock_name, take
from sandboxmgr.spec import DEFAULT_CAPABILITIES, DEFAULT_SECCOMP, EnterSpec
from sandboxmgr.userns import entered

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    from sandboxmgr.store import SandboxRecord, Store

TICKET_FILE = "join.ticket"
FORMAT = 2
# The store's layout as store.Store spells it (a unit test checks they agree): this module
# is on a path that does not import store.py.
SANDBOXES_DIR = "sandboxes"
LOCKS_DIR = "locks"
_NAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_NAME_REST = _NAME_FIRST | frozenset("._-")
# What write() puts in a ticket besides its format: each field and the types of its value.
_FIELDS: dict[str, tuple[type, ...]] = {
    "pid": (int,), "start_time": (int,), "cgroups": (list,), "env": (dict,), "workdir": (str, type(None)),
    "hostname": (str,), "user": (str, type(None)), "network": (str,), "tty": (bool,), "isolation": (str,),
    "capabilities": (list,), "no_new_privs": (bool,), "seccomp": (bytes, type(None)), "policy": (str, type(None)),
}


def write(directory: Path, holder: Holder, spec: EnterSpec, seccomp_program: bytes | None,
          general: bool) -> None:
    """Write the ticket of the sandbox in ``directory``, now held by ``holder``; ``spec`` is
    join_spec of its saved config, ``seccomp_program`` its filter built. ``general``: commands
    must take the general path (limits, an auto start), which the ticket then says."""
    data = {
        "format": FORMAT, "python": list(sys.version_info[:2]), "general": general,
        "pid": holder.pid, "start_time": holder.start_time, "cgroups": list(holder.cgroups),
        "env": dict(spec.env), "workdir": spec.workdir, "hostname": spec.hostname, "user": spec.user,
        "network": spec.network, "tty": spec.tty, "isolation": spec.isolation,
        "capabilities": sorted(spec.capabilities), "no_new_privs": spec.no_new_privs,
        "seccomp": seccomp_program, "policy": None if spec.seccomp is None else repr(spec.seccomp),
    }
    tmp = directory / (TICKET_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(marshal.dumps(data))
        os.rename(tmp, directory / TICKET_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def issue(store: Store, record: SandboxRecord, found: Holder, auto_stop: bool) -> None:
    """Write the ticket of ``record``, just started (live.start) and held by ``found``. A sandbox
    that stops with its last command (``auto_stop``), has limits, or a seccomp profile file (the
    general path reads it again at each exec: the README says so) gets none: its commands take
    the general way, as they do when there is none for any other reason (a full disk). The
    ticket of a previous start is removed first, so that none outlives the PID 1 it was made for."""
    from sandboxmgr.config import SandboxConfig  # the starter's imports: a start pays for them

    with contextlib.suppress(FileNotFoundError):
        os.unlink(record.path / TICKET_FILE)
    saved = SandboxConfig.from_json(record.meta["settings"])
    if auto_stop or found.cgroups or saved.limits is not None or saved.seccomp not in ("default", "unconfined"):
        return
    from sandboxmgr.libseccomp import program
    from sandboxmgr.sandbox import join_spec

    spec = join_spec(store, saved)
    with contextlib.suppress(OSError):
        write(record.path, found, spec, program(spec.seccomp, spec.seccomp_cache) if spec.seccomp else None, False)


def read(directory: str) -> dict[str, Any] | None:
    """The ticket in ``directory`` if it is one this code wrote and commands may use, else None."""
    try:
        fd = os.open(f"{directory}/{TICKET_FILE}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as ticket:
            info = os.fstat(fd)
            if info.st_uid != os.geteuid() or info.st_mode & 0o022:
                return None  # not the one write() made (the store is root's alone: see locations.py)
            # marshal runs no code (as pickle would); the file is root's, in root's 0700 store.
            data = marshal.loads(ticket.read())  # noqa: S302
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("general") is not False:
        return None
    if data.get("python") != list(sys.version_info[:2]):  # marshal's format is Python's own
        return None
    return data if _well_formed(data) else None


def _well_formed(data: dict[str, Any]) -> bool:
    """Whether ``data`` holds what :func:`write` writes: each field of its type, text where it
    is text, and no capability beyond those a command is ever given (join_spec's): a file put
    where a ticket is looked for gives no more than the general path would. Its filter is this
    code's default one (or none): one a former version wrote (before an upgrade that changed the
    default policy) is not what the general path gives now."""
    if not all(isinstance(data.get(key), types) for key, types in _FIELDS.items()):
        return False
    if (data["policy"] is None) != (data["seccomp"] is None) or data["policy"] not in (None, repr(DEFAULT_SECCOMP)):
        return False
    texts = (*data["env"], *data["env"].values(), *data["cgroups"])
    return (all(isinstance(text, str) for text in texts)
            and all(isinstance(number, int) and number in DEFAULT_CAPABILITIES for number in data["capabilities"]))


def _root_only(store: str, directories: tuple[str, ...]) -> bool:
    """Whether ``store`` and its ``directories`` (below it, no link) are directories of root's
    (the caller's) that no one else may write, as Store.ensure makes them. In a store another
    user can write, a ticket could be a link's way to a file root wrote elsewhere (what root
    inside a sandbox writes in its root is root's on the host), and one below a directory
    another user can change (locations.refuse_unsafe_parents): the general path's business."""
    from sandboxmgr.errors import SandboxError
    from sandboxmgr.locations import refuse_unsafe_parents

    try:
        refuse_unsafe_parents(store)
    except SandboxError:
        return False
    for path, look in ((store, os.stat), *((directory, os.lstat) for directory in directories)):
        try:
            info = look(path)
        except OSError:
            return False
        # Group write only for root's group (a sandbox's directory under root's umask 0002).
        others_write = info.st_mode & 0o002 or (info.st_mode & 0o020 and info.st_gid != 0)
        if not S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or others_write:
            return False
    return True


def plain_name(name: str) -> bool:
    """Whether ``name`` is a well-formed sandbox name (names.check_name's rule, without re):
    anything else goes the general way, which says what is wrong with it."""
    return 0 < len(name) <= 128 and name[0] in _NAME_FIRST and all(char in _NAME_REST for char in name)


def exec_running(store: str, name: str, argv: tuple[str, ...], tty: bool, joining: Callable[[], None]) -> int | None:
    """Run ``argv`` in the running sandbox ``name`` of ``store`` by its ticket (``joining()``
    called first); its exit status, or None when the general path must do it (see the module's
    docstring)."""
    if os.geteuid() != 0 or entered() or not argv or not plain_name(name):
        return None  # an ordinary user's (userns.py: its namespace is the running sandbox's to join)
    directory = f"{store}/{SANDBOXES_DIR}/{name}"
    locks = f"{store}/{LOCKS_DIR}"
    if not _root_only(store, (f"{store}/{SANDBOXES_DIR}", directory, locks)):
        return None
    if not os.path.isfile(f"{directory}/sandbox.json"):
        return None
    try:
        transition = take(f"{locks}/{lock_name('sandbox', name)}", exclusive=True)
    except OSError:
        return None  # the general path says what is wrong with the store
    assert transition is not None  # a blocking take returns only when it holds the lock
    try:
        # As live.run_in: only under the transition lock is the sandbox's state what it says.
        ticket = read(directory) if os.path.isfile(f"{directory}/sandbox.json") else None
        if ticket is None or not is_locked(f"{locks}/{lock_name('live', name)}"):
            return None
        holder = Holder(ticket["pid"], ticket["start_time"], tuple(ticket["cgroups"]))
        pidfd = open_holder(holder)
        if pidfd is None:
            return None
        use = take(f"{locks}/{lock_name('use', name)}", exclusive=False)
        assert use is not None
    finally:
        let_go(transition, exclusive=True)
    try:
        joining()
        return run_joined(holder, pidfd, _spec(ticket, argv, tty), ticket["seccomp"])
    finally:
        os.close(pidfd)
        let_go(use, exclusive=False)


def _spec(ticket: dict[str, Any], argv: tuple[str, ...], tty: bool) -> EnterSpec:
    """What join_spec makes of the saved config merged with ``exec [-t] NAME -- ARGV``."""
    return EnterSpec(
        root=None, argv=argv, env=ticket["env"], workdir=ticket["workdir"], hostname=ticket["hostname"],
        user=ticket["user"], network=ticket["network"], tty=tty or ticket["tty"], isolation=ticket["isolation"],
        capabilities=frozenset(ticket["capabilities"]), no_new_privs=ticket["no_new_privs"],
        seccomp=None,  # its BPF is the ticket's, given to run_joined
    )
