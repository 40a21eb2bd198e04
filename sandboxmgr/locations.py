"""Where things live: the shipped profiles, the profile search path, the store; and that
no one but root may enter the store.

In a source checkout (the README's way) the shipped profiles are ``configs/``
and the store is ``sandboxes/`` beside them; an installed tool uses
``<prefix>/share/sandboxmgr/configs`` and ``/var/lib/sandboxmgr``.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Sequence
from contextlib import suppress

from sandboxmgr.errors import SandboxError, shown

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from pathlib import Path

INSTALLED_STORE = "/var/lib/sandboxmgr"
# As Docker's /var/lib/docker (0710), but without even the group's search right.
STORE_MODE = 0o700


def _path(text: str) -> Path:
    # pathlib only when a caller wants a Path: exec's joining fast path (ticket.py) takes text.
    from pathlib import Path

    return Path(text)


def _checkout_top() -> str | None:
    top = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    if os.path.isfile(os.path.join(top, "setup.cfg")) and os.path.isdir(os.path.join(top, "configs")):
        return top
    return None


def checkout_root() -> Path | None:
    """The source checkout this package runs from, if it runs from one."""
    top = _checkout_top()
    return None if top is None else _path(top)


def shipped_configs_dir() -> Path:
    top = _checkout_top()
    if top is not None:
        return _path(os.path.join(top, "configs"))
    return _path(os.path.join(sys.prefix, "share", "sandboxmgr", "configs"))


def default_store() -> Path:
    return _path(default_store_text())


def default_store_text() -> str:
    """:func:`default_store` as text."""
    env = os.environ.get("SANDBOXMGR_STORE")
    if env:
        return env
    from sandboxmgr import userns

    if userns.rootless():
        # An ordinary user's store is its own, never the checkout's or root's (see userns.py).
        data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        return os.path.join(data_home, "sandboxmgr")
    top = _checkout_top()
    if top is not None:
        return os.path.join(top, "sandboxes")
    return INSTALLED_STORE


def profile_dirs(extra: tuple[str, ...] = ()) -> list[Path]:
    """Profile directories, lowest precedence first: a later one's profile of the
    same name replaces an earlier one's."""
    from pathlib import Path

    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    # Under sudo, the invoking user's directory is not read (the README says why): root would
    # trust what the user - or a sandbox that can write the user's home - put there.
    dirs = [shipped_configs_dir(), Path("/etc/sandboxmgr/profiles"), Path(config_home) / "sandboxmgr" / "profiles"]
    env = os.environ.get("SANDBOXMGR_CONFIGS", "")
    named = [(Path(p), "SANDBOXMGR_CONFIGS") for p in env.split(":") if p] + [(Path(p), "--configs") for p in extra]
    for directory, where in named:
        # Named on purpose: a typo would otherwise leave its profiles out without a word.
        if not directory.is_dir():
            raise SandboxError(f"{where} {shown(directory)}: no such directory",
                               hint="give an existing directory of profile files (*.yaml)")
    return dirs + [directory for directory, _ in named]


# --- the store is root's alone ----------------------------------------------------------------
#
# The store's root and every top directory are root's alone (0700): root inside a
# sandbox can plant a setuid-root binary or a device node in its upper directory,
# images have setuid binaries of their own, and the store is on an ordinary file
# system (not nosuid, not nodev). A local user who could reach those files by path
# would run them as root or open the devices. Store.ensure makes the store so, and
# tightens one whose modes were loosened; ``doctor`` reports it.


def make_private(directories: Sequence[str], create: bool) -> None:
    """Make ``directories`` (the store's root first, then its top directories) 0700, creating
    the missing ones with ``create``."""
    # One stat per directory (every run passes here twice: the fast path counts).
    if directories and os.geteuid() == 0:
        refuse_unsafe_parents(directories[0])
    for directory in directories:
        try:
            info = os.stat(directory)
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                continue
            if directory == directories[0]:
                os.makedirs(os.path.dirname(directory), exist_ok=True)
            with suppress(FileExistsError):
                os.mkdir(directory, STORE_MODE)
            info = os.stat(directory)
        refuse_foreign(directory, info.st_uid)
        if info.st_mode & 0o077:
            tighten_dir(directory)


def refuse_foreign(directory: str, owner: int) -> None:
    """Root's store is root's alone, its owner included: 0700 keeps no one out of a directory
    that is theirs, and images hold setuid-root binaries (``sudo sandboxmgr --store ~/x build``
    would hand them to the user who owns ~/x). For an ordinary user, in its own namespace
    (userns.py), its own files read as uid 0 too; someone else's as the overflow id."""
    if os.geteuid() != 0 or owner == 0:
        return
    from sandboxmgr import userns

    if userns.entered():  # an ordinary user in its namespace, on another's store
        raise not_yours(_path(directory))
    raise SandboxError(f"the store directory {shown(directory)} belongs to uid {owner}, not to root: "
                       "whoever owns it could reach the setuid binaries and devices root puts in it",
                       hint="use a store of root's own (the default, or --store in a directory root owns), "
                            "or chown -R root: it first")


def refuse_unsafe_parents(store_root: str) -> None:
    """Root's store must not be below a directory another user can change, as sshd's StrictModes
    asks of a user's ~/.ssh: whoever can rename entries there can move the store aside and put
    a symlink in its place (``sandboxes -> /etc``), and root would build, write and remove in the
    symlink's target. Every directory above the store's real path must be root's and writable by
    no one else, or sticky (/tmp: then only root may rename the root-owned entry below it)."""
    from sandboxmgr import userns

    if userns.entered():  # an ordinary user in its namespace: its own home is its to change
        return
    # The directories above the path as given and above where it leads: a link anywhere on the
    # way (the store itself, /home/alice/store -> /var/lib/x) is its directory's owner's to repoint.
    for path in dict.fromkeys((os.path.abspath(store_root), os.path.realpath(store_root))):
        parent = os.path.dirname(path)
        while True:
            _refuse_unsafe_parent(store_root, parent)
            if parent == "/":
                break
            parent = os.path.dirname(parent)


def _refuse_unsafe_parent(store_root: str, parent: str) -> None:
    try:
        info = os.stat(parent)
    except OSError:
        return  # not there yet (a store to create): makedirs will make it root's, 0755
    if info.st_uid == 0 and not (info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX):
        return
    who = f"uid {info.st_uid} owns" if info.st_uid != 0 else \
        f"{'every user' if info.st_mode & 0o002 else 'its group'} may write"
    raise SandboxError(
        f"root's store {shown(store_root)} is below {shown(parent)}, which {who}: whoever can rename "
        "entries there could put a symlink in the store's place, and root would write and remove "
        "where it points",
        hint=f"use a store in a directory only root can change (--store {INSTALLED_STORE}, or "
             f"SANDBOXMGR_STORE), or make {shown(parent)} root's and not writable by others")


def create_private(root: Path, directories: Sequence[str]) -> None:
    """:func:`make_private` creating what is missing, with a one-line error for a place where
    the store cannot be."""
    try:
        make_private(directories, create=True)
    except PermissionError:
        raise SandboxError(f"cannot create the store at {root}: permission denied",
                           hint="run as root, or point --store at a directory you own") from None
    except (FileNotFoundError, NotADirectoryError, FileExistsError) as exc:
        # /proc/nope, a path through a file, a file where the store should be.
        raise SandboxError(f"cannot create the store at {root}: {exc.strerror} ({exc.filename})",
                           hint="point --store (or SANDBOXMGR_STORE) at a directory you can create") from None
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise  # a full disk is the entry's to explain (errors.no_space)
        raise SandboxError(f"cannot create the store at {root}: the file system is read-only",
                           hint="point --store (or SANDBOXMGR_STORE) at a writable directory") from None


def loose_dirs(directories: Sequence[Path]) -> list[tuple[Path, int]]:
    """Those of ``directories`` that another local user may enter, with their modes."""
    found = []
    for directory in directories:
        try:
            mode = stat.S_IMODE(os.stat(directory).st_mode)
        except OSError:
            continue
        if mode & 0o077:
            found.append((directory, mode))
    return found


def require_access(store: Path, directory: Path) -> None:
    """For the commands that only read (ls, images): a clear error, not a traceback or an
    empty list, when the store is root's and the caller is not."""
    try:
        os.stat(directory)
    except (FileNotFoundError, NotADirectoryError):
        return  # no store there (yet): nothing in it
    except PermissionError:
        pass
    else:
        if os.access(directory, os.R_OK | os.X_OK):
            return
    raise not_yours(store)


def anothers(store: Path) -> bool:
    """Whether the caller, an ordinary user, looks at a store that exists and belongs to someone
    else (root's); False for root, and for a store not there yet (made as the caller's)."""
    if os.geteuid() == 0:
        return False
    try:
        return os.stat(store).st_uid != os.getuid()
    except OSError:
        return False


def refuse_others(store: Path) -> None:
    """For an ordinary user, before anything (its user namespace included): a store that belongs
    to someone else is refused with the one line of :func:`not_yours`."""
    if anothers(store):
        raise not_yours(store)


def not_yours(store: Path) -> SandboxError:
    """The error for a store the caller may not read: root's, or in rootless mode (userns.py)
    root's or another user's - there both are ids the user's namespace does not map."""
    from sandboxmgr import userns

    owner = None
    if not userns.entered():  # in the user's namespace another's ids all read as one unmapped id
        with suppress(OSError):
            owner = os.stat(store).st_uid
    if userns.entered() or owner not in (None, 0):
        return SandboxError(f"cannot read the store {store}: it is not yours (root's or another user's; "
                            "a store is its owner's alone)",
                            hint="use a store of your own: the default, $XDG_DATA_HOME/sandboxmgr, "
                                 "or --store DIR in a directory you own")
    return SandboxError(
        f"cannot read the store {store}: it is root's alone (it holds setuid binaries "
        "and device nodes of sandboxes)",
        hint="run it as root (sudo sandboxmgr ...)")


def tighten_dir(directory: str | Path) -> None:
    """Make a directory of the store 0700 (from anything looser); refuse a shared one."""
    info = os.stat(directory)
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o077:
        return
    if mode & (stat.S_ISVTX | stat.S_IWOTH) or os.path.realpath(directory) == "/":
        # /tmp, /: making it 0700 would break the machine, and a store there is not one's own.
        raise SandboxError(f"the store {directory} is a shared directory (mode {mode:04o}), not one of its own",
                           hint="point --store (or SANDBOXMGR_STORE) at a new directory, e.g. /var/lib/sandboxmgr")
    os.chmod(directory, mode & ~0o077)
