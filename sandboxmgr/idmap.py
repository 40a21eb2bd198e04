"""``--userns auto``: root's sandbox in a user namespace, so root inside is nobody outside.

Each such sandbox gets a range of 65536 host ids of its own (:func:`reserve`): inside, ids
0..65535; outside, ``base``..``base+65535``. The ranges are cut from a fixed pool above
2^31 (2147483648 + N * 65536), not from root's line in /etc/subuid:

- Debian and Ubuntu write no /etc/subuid line for root, so ``auto`` works on any host
  with nothing to configure;
- a range per sandbox, not one shared range: root of one sandbox is a stranger to the
  files and processes of every other (one subuid line would make them all the same user);
- useradd hands out ordinary users' subordinate ranges far below (SUB_UID_MAX is
  600100000), so no user's rootless sandboxes share an id with these.

A range is reserved by a file ``userns/N`` in the store naming its owner (a named
sandbox's directory, or an ephemeral run's temporary one) and its inode; it is free again
when that owner is gone (``rm``, or the run's end), so there is nothing to release.

How the sandbox is made (enter.py, join.py call these):

- the manager makes the user namespace (:func:`user_namespace`) before the sandbox's PID 1;
- PID 1, still the host's root in its private mount namespace, mounts idmapped clones of
  the image's layers (and of copy-on-write mounts' sources) over them (:func:`idmap_layers`,
  open_tree + mount_setattr + move_mount): root's files of the image show as 0 inside, and
  overlayfs copies them up with the range's owners; it mounts the overlay and the rest,
  switches root, and then joins the user namespace as its root (:func:`become_root`);
- the command is PID 1's child, in the user namespace from its birth; a joined command
  (``exec``) joins it as the last namespace.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal

from sandboxmgr import linux
from sandboxmgr.errors import EXIT_MANAGER, SandboxError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from pathlib import Path

FIRST = 2**31
SIZE = 65536
SLOTS = (2**32 - FIRST) // SIZE - 1  # the last id, 4294967295, is "no id"
CHOICES = ("host", "auto")


def base_of(slot: int) -> int:
    return FIRST + slot * SIZE


def _owner_text(owner: Path) -> str:
    return f"{owner}\n{os.stat(owner).st_ino}\n"


def _alive(entry: Path) -> bool:
    """Whether the owner a reservation names is still there (the same directory)."""
    try:
        path, ino = entry.read_text().splitlines()[:2]
        return os.stat(path).st_ino == int(ino)
    except (OSError, ValueError):
        return False


def reserve(directory: Path, owner: Path) -> int:
    """The base of a free range, reserved for ``owner`` (a directory) in ``directory``. The
    caller holds the store's lock of the ranges (:func:`reserved`)."""
    directory.mkdir(mode=0o700, exist_ok=True)
    text = _owner_text(owner)
    for slot in range(SLOTS):
        entry = directory / str(slot)
        if entry.exists() and _alive(entry):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
        fd = os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        return base_of(slot)
    raise SandboxError(f"all {SLOTS} id ranges of --userns auto are taken",
                       hint="remove sandboxes you no longer need (sandboxmgr rm), or use --userns host")


def for_sandbox(directory: Path, sandbox: Path) -> int:
    """The range of the named sandbox at ``sandbox``: reserved at its first start and kept in
    its ``ids`` file for its life (its upper layer's files belong to it)."""
    kept = sandbox / "ids"
    with contextlib.suppress(FileNotFoundError, ValueError):
        base = int(kept.read_text())
        slot, rest = divmod(base - FIRST, SIZE)
        if rest == 0 and 0 <= slot < SLOTS:
            entry = directory / str(slot)
            if not entry.exists() or not _alive(entry):  # lost (store copied): taken again
                directory.mkdir(mode=0o700, exist_ok=True)
                entry.unlink(missing_ok=True)
                entry.write_text(_owner_text(sandbox))
            return base
    base = reserve(directory, sandbox)
    kept.write_text(f"{base}\n")
    return base


def own(base: int, *paths: Path) -> None:
    """Hand the directories ``paths`` (upper, work, scratch) to root inside the range."""
    for path in paths:
        os.chown(path, base, base, follow_symlinks=False)


def user_namespace(base: int) -> int:
    """A file descriptor of a new user namespace mapping 0..65535 to ``base``.. (a child
    unshares, the manager - root - writes its maps; the child then exits)."""
    ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
    done_read, done_write = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:  # pragma: no cover - the short-lived child
        try:
            os.close(ready_read)
            os.close(done_write)
            linux.unshare(linux.CLONE_NEWUSER)
            os.write(ready_write, b"1")
            os.read(done_read, 1)
        finally:
            os._exit(0)
    os.close(ready_write)
    os.close(done_read)
    try:
        if os.read(ready_read, 1) != b"1":
            raise SandboxError("cannot make the sandbox's user namespace (--userns auto)",
                               hint="see 'sandboxmgr doctor'; --userns host runs without it")
        for kind in ("uid_map", "gid_map"):
            with open(f"/proc/{child}/{kind}", "w") as handle:
                handle.write(f"0 {base} {SIZE}\n")
        return os.open(f"/proc/{child}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_read)
        os.close(done_write)
        os.waitpid(child, 0)


def idmap_layers(paths: tuple[Path, ...], userns_fd: int) -> None:
    """In PID 1's private mount namespace: each directory of ``paths`` covered by an idmapped
    clone of itself (read-only layers: what root owns there shows as root inside)."""
    for path in dict.fromkeys(paths):
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            linux.idmap_over(fd, userns_fd)
        except OSError as exc:
            raise SandboxError(f"cannot make an idmapped mount of {path}: {exc.strerror}",
                               hint="--userns auto needs Linux 5.19 or later and a file system with idmapped "
                                    "mounts (ext4, xfs, btrfs, tmpfs); use --userns host") from None
        finally:
            os.close(fd)


def become_root(userns_fd: int) -> None:
    """Join the user namespace open at ``userns_fd`` (a pidfd's too) as its root: uid and gid
    0 inside, the range's first id outside, no supplementary group."""
    linux.setns(userns_fd, linux.CLONE_NEWUSER)
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def pid1_becomes_root(userns_fd: int, alive: int) -> None:
    """PID 1, set up, joins the sandbox's user namespace (and closes ``userns_fd``). The change
    of credentials clears its parent-death signal: set again, then the manager is checked to
    be alive still (``alive`` hangs up when it is gone; closed here)."""
    become_root(userns_fd)
    os.close(userns_fd)
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if select.select([alive], [], [], 0)[0]:
        os._exit(EXIT_MANAGER)
    os.close(alive)
