"""What a distribution is, as data: family, mirror, keyring, bootstrap methods.

How packages get into a root filesystem is the builders' business; this module
only says what a profile may leave out and what the builders fall back to.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from sandboxmgr.locations import shipped_configs_dir


@dataclass(frozen=True)
class Distro:
    name: str
    family: str  # "debian" or "rpm"
    methods: tuple[str, ...]
    # Debian family: mirror, components and keyring a profile may leave out.
    default_mirror: str = ""
    default_components: tuple[str, ...] = ()
    # A keyring path; relative paths are relative to the shipped configs/ dir.
    default_keyring: str = ""
    # debootstrap has one script per release name, and within a family they are
    # aliases of one script; an older debootstrap that lacks a newer release's
    # script is given this one instead.
    debootstrap_script: str = ""
    # Architectures served from another archive than default_mirror.
    arch_mirrors: tuple[tuple[str, str], ...] = ()
    # RPM family: the package that makes /etc/os-release the target's.
    release_package: str | None = None

    def mirror_for(self, arch: str) -> str:
        return dict(self.arch_mirrors).get(arch, self.default_mirror)

    def keyring_path(self) -> str:
        if not self.default_keyring or self.default_keyring.startswith("/"):
            return self.default_keyring
        return str(shipped_configs_dir() / self.default_keyring)


DEBIAN_METHODS = ("debootstrap", "mmdebstrap")
RPM_METHODS = ("dnf",)

DISTROS: dict[str, Distro] = {
    "debian": Distro(
        name="debian",
        family="debian",
        default_mirror="http://deb.debian.org/debian",
        default_components=("main",),
        default_keyring="/usr/share/keyrings/debian-archive-keyring.gpg",
        methods=DEBIAN_METHODS,
        debootstrap_script="sid",
    ),
    "ubuntu": Distro(
        name="ubuntu",
        family="debian",
        default_mirror="http://archive.ubuntu.com/ubuntu",
        default_components=("main", "universe"),
        default_keyring="keys/ubuntu-archive-keyring.gpg",
        methods=DEBIAN_METHODS,
        debootstrap_script="gutsy",
        # Ubuntu serves non-x86 architectures from a separate archive.
        arch_mirrors=(("arm64", "http://ports.ubuntu.com/ubuntu-ports"),
                      ("armhf", "http://ports.ubuntu.com/ubuntu-ports"),
                      ("ppc64el", "http://ports.ubuntu.com/ubuntu-ports"),
                      ("riscv64", "http://ports.ubuntu.com/ubuntu-ports"),
                      ("s390x", "http://ports.ubuntu.com/ubuntu-ports")),
    ),
    "fedora": Distro(name="fedora", family="rpm", methods=RPM_METHODS, release_package="fedora-release"),
    "centos-stream": Distro(name="centos-stream", family="rpm", methods=RPM_METHODS,
                            release_package="centos-stream-release"),
    "almalinux": Distro(name="almalinux", family="rpm", methods=RPM_METHODS, release_package="almalinux-release"),
    "rocky": Distro(name="rocky", family="rpm", methods=RPM_METHODS, release_package="rocky-release"),
}


def get(name: str, method: str | None) -> Distro | None:
    """A known distro, or a custom RPM distro when the method is dnf (its profile
    names the release package among its packages)."""
    if name in DISTROS:
        return DISTROS[name]
    if method in RPM_METHODS:
        return Distro(name=name, family="rpm", methods=RPM_METHODS)
    return None

# uname -m -> Debian architecture name.
_DEB_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "armhf",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "i686": "i386",
}


def host_arch(family: str = "debian") -> str:
    """The host's architecture in the family's own naming (amd64 vs x86_64)."""
    machine = platform.machine()
    if family == "rpm":
        return "i686" if machine in ("i386", "i586") else machine
    return _DEB_ARCH.get(machine, machine)


def known_distros() -> list[str]:
    return sorted(DISTROS)
