"""Builders: how a root filesystem gets made.

A builder works in two phases, like kiwi and mock: :meth:`Builder.bootstrap`
runs a host tool (debootstrap, mmdebstrap) to make a minimal root outside it;
:meth:`Builder.install` then adds the profile's packages with the target's own
package manager, run inside the new root. Builders know nothing of the CLI or
the store: they get a root directory and a :class:`BuildContext`.
"""

from __future__ import annotations

import os
import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandboxmgr.enter import DEFAULT_PATH, DirectoryRoot, EnterSpec, enter
from sandboxmgr.errors import BuildError, SandboxError
from sandboxmgr.mounts import BindMount
from sandboxmgr.profile import Profile

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildContext:
    log_file: Path
    progress: Progress

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        """What the log gained after ``offset`` (one step's output, for error messages)."""
        with open(self.log_file, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def run_inside(self, rootfs: Path, argv: Sequence[str], env: Mapping[str, str] | None = None,
                   binds: tuple[BindMount, ...] = ()) -> int:
        """Run a command inside the root being built, output to the build log."""
        full_env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LC_ALL": "C.UTF-8"}
        full_env.update(env or {})
        with open(self.log_file, "a") as log:
            log.write(f"$ (inside) {shlex.join(argv)}\n")
            log.flush()
            null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            try:
                spec = EnterSpec(
                    root=DirectoryRoot(rootfs),
                    argv=tuple(argv),
                    env=full_env,
                    hostname="sandboxmgr-build",
                    network="host",
                    binds=binds,
                    stdio=(null, log.fileno(), log.fileno()),
                )
                try:
                    return enter(spec)
                except SandboxError as exc:
                    raise BuildError(f"cannot run {argv[0]} in the new root: {exc.message}",
                                     hint=exc.hint) from None
            finally:
                os.close(null)


class Builder(ABC):
    """Makes a root filesystem for one bootstrap method."""

    method: str

    @abstractmethod
    def preflight(self, profile: Profile) -> None:
        """Check everything that can be checked before any work starts."""

    @abstractmethod
    def bootstrap(self, profile: Profile, rootfs: Path, context: BuildContext) -> None:
        """Make a minimal root in ``rootfs`` (which does not exist yet) with host tools."""

    @abstractmethod
    def install(self, profile: Profile, rootfs: Path, context: BuildContext) -> None:
        """Install ``profile.packages`` with the target's own package manager."""

    @abstractmethod
    def finish(self, profile: Profile, rootfs: Path, context: BuildContext) -> None:
        """Undo build-only settings and drop caches before the image is published."""


def get_builder(method: str) -> Builder:
    from sandboxmgr.builders import debian, rpm

    builders: dict[str, Builder] = {
        "debootstrap": debian.DebootstrapBuilder(),
        "mmdebstrap": debian.MmdebstrapBuilder(),
        "dnf": rpm.DnfBuilder(),
    }
    try:
        return builders[method]
    except KeyError:
        raise SandboxError(f"no builder for bootstrap method {method!r}",
                           hint=f"use one of: {', '.join(builders)}") from None
