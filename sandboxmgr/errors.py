"""One error type for everything sandboxmgr reports to a user.

Every failure a user can cause or fix is a :class:`SandboxError`: one line that
says what is wrong, an optional hint that says what to do, and the exit code the
CLI returns. Exit codes follow ``docker run``: 125 when sandboxmgr itself fails,
126 when the command cannot be invoked, 127 when it is not found; any other
status is the command's own.
"""

from __future__ import annotations

import errno
import os
import sys

EXIT_MANAGER = 125
EXIT_CANNOT_INVOKE = 126
EXIT_NOT_FOUND = 127


class SandboxError(Exception):
    """An error with a message for the user, a hint, and an exit code."""

    exit_code: int = EXIT_MANAGER

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class NotRootError(SandboxError):
    """The operation needs root (namespaces, mounts, debootstrap)."""


def shown(value: object) -> str:
    """``value`` as an error message quotes what a user gave: as is when it is plain text,
    else Python's quoting, so a newline or a control character never splits the one line."""
    text = str(value)
    return text if text and text.isprintable() else repr(text)


def warn(message: str) -> None:
    """A warning on stderr: something was left or skipped, and the command goes on."""
    print(f"sandboxmgr: warning: {message}", file=sys.stderr)


def require_root(action: str) -> None:
    if os.geteuid() != 0:
        raise NotRootError(
            f"{action} needs root (namespaces, mounts and debootstrap do)",
            hint="run it with sudo, or as root",
        )


class ProfileError(SandboxError):
    """A profile cannot be found, parsed or validated."""


class BuildError(SandboxError):
    """A builder failed; the half-made image was discarded."""

    log: str | None = None  # the build's log file, where the failing step's output is


class BusyError(SandboxError):
    """Another sandboxmgr process holds the lock on an image or sandbox."""


class NotFoundError(SandboxError):
    """No image or sandbox of that name."""


class UnsafeRemovalError(SandboxError):
    """Removal refused because something is still mounted inside the tree."""


class NoSpaceError(SandboxError):
    """The store's file system is full; whatever was being made was removed."""


def no_space(store: object, detail: str = "") -> NoSpaceError:
    """The one line (and hint) for a full disk under the store."""
    return NoSpaceError(f"no space left on device in the store {store}{f' ({detail})' if detail else ''}; "
                        "nothing half-made was kept",
                        hint="free some space (sandboxmgr prune, sandboxmgr rmi PROFILE, sandboxmgr rm NAME), "
                             "then try again")


def out_of_space(exc: OSError | SandboxError, store: object, where: str | os.PathLike[str]) -> NoSpaceError | None:
    """The full-disk error to report for ``exc``, raised while making something in ``where``
    (the store's tmp/), or None when the disk is not what failed. A tool that ran out of
    space (dnf, mmdebstrap) fails with its own words: this says what happened."""
    literal = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, NoSpaceError) or not (literal or _full(where)):
        return None
    if isinstance(exc, SandboxError):
        detail = exc.message
    else:
        detail = f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc.strerror)
    return no_space(store, f"{detail}; {_free_text(where)}")


def _full(path: str | os.PathLike[str]) -> bool:
    """Whether the file system of ``path`` is (as good as) full: less than 2% of its space (at
    least 8 MiB, at most 64 MiB: dnf refuses a transaction that would not fit, before the
    disk is quite full) or of its inodes left."""
    try:
        info = os.statvfs(path)
    except OSError:
        return False
    free = info.f_bavail * info.f_frsize
    space = free < min(64 << 20, max(8 << 20, info.f_blocks * info.f_frsize // 50))
    inodes = info.f_files > 0 and info.f_favail < max(16, info.f_files // 50)
    return space or inodes


def _free_text(path: str | os.PathLike[str]) -> str:
    try:
        info = os.statvfs(path)
    except OSError:
        return "free space unknown"
    return f"{info.f_bavail * info.f_frsize // 1024} kB free"


class CommandFailed(SandboxError):
    """The command inside the sandbox could not be started (126/127)."""


def counted(number: int, noun: str, plural: str = "") -> str:
    """``1 layer``, ``2 layers``, ``0 layers``: a count and its noun, as people write them."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
