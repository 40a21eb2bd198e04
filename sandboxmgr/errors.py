"""One error type for everything sandboxmgr reports to a user.

Every failure a user can cause or fix is a :class:`SandboxError`: one line that
says what is wrong, an optional hint that says what to do, and the exit code the
CLI returns. Exit codes follow ``docker run``: 125 when sandboxmgr itself fails,
126 when the command cannot be invoked, 127 when it is not found; any other
status is the command's own.
"""

from __future__ import annotations

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


def require_root(action: str) -> None:
    import os

    if os.geteuid() != 0:
        raise NotRootError(
            f"{action} needs root (namespaces, mounts and debootstrap do)",
            hint="run it with sudo, or as root",
        )


class ProfileError(SandboxError):
    """A profile cannot be found, parsed or validated."""


class BuildError(SandboxError):
    """A builder failed; the half-made image was discarded."""


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


class CommandFailed(SandboxError):
    """The command inside the sandbox could not be started (126/127)."""
