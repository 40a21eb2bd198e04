"""Distribution families: what a distribution is, and the registry of them.

A family lives in one module of :mod:`sandboxmgr.families` (debian, ubuntu, rpm):
a :class:`Distro` subclass that says which bootstrap methods and variants it has,
what a profile may leave out (mirror, components, keyring), what it refuses, what
goes in the bootstrap, its preflight checks, and - its module being in the images
layer - how it builds (its builders, cache directories and index state). The
module registers its distros here, with :func:`register`, when it is imported.

This module is the profiles layer's side: the base class, with no builder code, and
the registry. It names the shipped family modules once, in :data:`SHIPPED`, and
imports them by name on first use, as plugins (an import of them here would point
up the layers). A new family is one module that calls :func:`register`, plus its
profiles; a family the tests define registers the same way.
"""

from __future__ import annotations

import importlib
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandboxmgr.errors import ProfileError, SandboxError
from sandboxmgr.locations import shipped_configs_dir

if TYPE_CHECKING:
    from sandboxmgr.builders import Builder
    from sandboxmgr.profile import Profile

# The shipped family modules, in the order their methods are listed in messages.
SHIPPED = ("sandboxmgr.families.debian", "sandboxmgr.families.ubuntu", "sandboxmgr.families.rpm")


@dataclass(frozen=True)
class Distro:
    """One distribution. Subclasses (one per family) override what differs."""

    name: str
    family: str = ""  # "debian", "rpm", ...: what a project file's ``prepare:`` may name
    methods: tuple[str, ...] = ()
    # Mirror, components and keyring a profile may leave out.
    default_mirror: str = ""
    default_components: tuple[str, ...] = ()
    # A keyring path; relative paths are relative to the shipped configs/ dir.
    default_keyring: str = ""
    # Architectures served from another archive than default_mirror.
    arch_mirrors: tuple[tuple[str, str], ...] = ()
    # The package that makes /etc/os-release the target's (RPM family).
    release_package: str | None = None
    # Said after "this machine is X" when a profile is for another architecture.
    foreign_arch_hint: str = "foreign architectures are not supported"
    # Whether its builders make images for another architecture, run through qemu-user (binfmt.py).
    foreign_arches: bool = False

    # --- what a profile may say ---------------------------------------------------------

    def variants(self, method: str) -> tuple[str, ...]:
        """The ``bootstrap.variant`` values ``method`` knows (none: the family refuses the key)."""
        return ()

    def default_method(self) -> str:
        """The bootstrap method of a profile that names none."""
        return self.methods[0]

    def check(self, path: Path, method: str, boot: Mapping[str, Any], repositories: Sequence[object]) -> str:
        """Refuse what this family cannot build (one ProfileError); return the variant."""
        return ""

    def mirror_for(self, arch: str, given: str | None = None) -> str:
        """A profile's mirror: the one it names, else the distro's for ``arch``. The distro's default
        mirror named for an architecture it does not carry (Ubuntu's archive has no arm64: ports
        has) is that architecture's: ``extends: ubuntu-noble`` with ``arch: arm64`` just works."""
        mine = dict(self.arch_mirrors).get(arch)
        if not given or (mine and given.rstrip("/") == self.default_mirror.rstrip("/")):
            return mine or self.default_mirror
        return given

    def keyring_path(self) -> str:
        if not self.default_keyring or self.default_keyring.startswith("/"):
            return self.default_keyring
        return str(shipped_configs_dir() / self.default_keyring)

    def host_arch(self) -> str:
        """The host's architecture in the family's own naming (amd64 vs x86_64)."""
        return platform.machine()

    def arch_name(self, arch: str) -> str:
        """A profile's ``arch`` in the family's own naming: the RPM family takes Debian's
        ``arm64`` as its ``aarch64``, so both spellings make one image."""
        return arch

    def packages_in_bootstrap(self, profile: Profile) -> bool:
        """Whether the bootstrap installs ``profile.packages`` itself (then there is no
        packages layer, and the packages are an input of the bootstrap layer)."""
        return False

    def lock_in_bootstrap(self) -> bool:
        """Whether the bootstrap installs a lock's versions itself (the RPM family's: dnf
        --installroot takes exact versions): the lock is then an input of the bootstrap layer,
        and there is no lock layer."""
        return False

    # --- building (the family's module provides it) ---------------------------------------

    def build_inputs(self, profile: Profile) -> dict[str, Any]:
        """The family's own build inputs, beside the common ones (identity.py)."""
        return {}

    def builder(self, method: str) -> Builder:
        raise SandboxError(f"no builder for bootstrap method {method!r} of {self.name}",
                           hint=f"use one of: {', '.join(self.methods)}")

    def check_arch(self, profile: Profile) -> None:
        """The arch preflight: a profile for another architecture is built only by a family that
        can (``foreign_arches``), and only where the kernel runs its programs (binfmt.py)."""
        host = self.host_arch()
        if profile.arch == host:
            return
        if not self.foreign_arches:
            raise SandboxError(
                f"profile {profile.name} is for {profile.arch}, but this machine is {host}",
                hint=f"set 'arch: {host}' ({self.foreign_arch_hint})",
            )
        from sandboxmgr import binfmt

        binfmt.require(profile.arch, f"profile {profile.name}")


# --- the registry ---------------------------------------------------------------------------

DISTROS: dict[str, Distro] = {}
# bootstrap method -> how a distro it builds but that is not registered is made (custom RPM distros).
_CUSTOM: dict[str, Callable[[str], Distro]] = {}
_loaded = False


def register(*distros: Distro, custom: Mapping[str, Callable[[str], Distro]] | None = None) -> None:
    """Add distros (and, by method, a maker of custom distros) to the registry."""
    for distro in distros:
        DISTROS[distro.name] = distro
    _CUSTOM.update(custom or {})


def _load_shipped() -> None:
    global _loaded  # noqa: PLW0603 - the registry is filled once per process
    if not _loaded:
        _loaded = True
        for module in SHIPPED:
            importlib.import_module(module)


def get(name: str, method: str | None) -> Distro | None:
    """A known distro, or a custom one when the method builds custom distros (dnf: its
    profile names the release package among its packages)."""
    _load_shipped()
    if name in DISTROS:
        return DISTROS[name]
    if method in _CUSTOM:
        return _CUSTOM[method](name)
    return None


def of(profile: Profile) -> Distro:
    """The distro of a loaded profile."""
    distro = get(profile.distro, profile.bootstrap.method)
    if distro is None:
        raise ProfileError(f"{profile.path}: {profile.distro!r} is not a known distro")
    return distro


def known_distros() -> list[str]:
    _load_shipped()
    return sorted(DISTROS)


def methods() -> tuple[str, ...]:
    """Every bootstrap method of the registered families, in registration order."""
    _load_shipped()
    found = [*(m for d in DISTROS.values() for m in d.methods), *_CUSTOM]
    return tuple(dict.fromkeys(found))


def variants(method: str | None) -> tuple[str, ...] | None:
    """The variants ``method`` knows; every family's for no method (or an unknown one);
    None when the method has none (its family refuses ``bootstrap.variant``)."""
    _load_shipped()
    if method in methods():
        found = tuple(dict.fromkeys(v for d in DISTROS.values() if method in d.methods for v in d.variants(method)))
        return found or None
    return tuple(dict.fromkeys(v for d in DISTROS.values() for m in d.methods for v in d.variants(m)))


def host_arch(family: str = "debian") -> str:
    """The host's architecture in a family's naming (the first registered distro of it)."""
    _load_shipped()
    return next(d for d in DISTROS.values() if d.family == family).host_arch()
