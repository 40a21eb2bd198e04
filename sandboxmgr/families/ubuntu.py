"""Ubuntu: the Debian family with Ubuntu's archive, components, keyring and ports."""

from __future__ import annotations

from dataclasses import dataclass

from sandboxmgr import distros
from sandboxmgr.families.debian import Debian


@dataclass(frozen=True)
class Ubuntu(Debian):
    name: str = "ubuntu"
    default_mirror: str = "http://archive.ubuntu.com/ubuntu"
    default_components: tuple[str, ...] = ("main", "universe")
    default_keyring: str = "keys/ubuntu-archive-keyring.gpg"
    keyring_package: str = "the keyring file"
    debootstrap_script: str = "gutsy"
    # Ubuntu serves non-x86 architectures from a separate archive.
    arch_mirrors: tuple[tuple[str, str], ...] = (
        ("arm64", "http://ports.ubuntu.com/ubuntu-ports"),
        ("armhf", "http://ports.ubuntu.com/ubuntu-ports"),
        ("ppc64el", "http://ports.ubuntu.com/ubuntu-ports"),
        ("riscv64", "http://ports.ubuntu.com/ubuntu-ports"),
        ("s390x", "http://ports.ubuntu.com/ubuntu-ports"),
    )


distros.register(Ubuntu())
