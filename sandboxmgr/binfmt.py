"""Foreign architectures: whether this kernel runs another architecture's programs.

An image for another architecture (``arch: arm64`` on an amd64 host) runs its
programs through qemu-user, which the kernel starts for them by a binfmt_misc
handler (``/proc/sys/fs/binfmt_misc/qemu-aarch64``). The handler must have the F
(fix-binary) flag: the kernel then opened the interpreter when the handler was
registered, on the host, so nothing of qemu needs to be inside a sandbox, whose
root is the image's. Without F the kernel looks the interpreter's path up in the
sandbox's root at each exec, where it is not (and where a sandbox could plant its
own).

sandboxmgr never registers or changes a handler: the distribution's packages do
(Debian: qemu-user-static with binfmt-support or systemd-binfmt). This module only
reads the handlers and says, in one line and a fix, what is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from sandboxmgr.errors import SandboxError

BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")

# An architecture in any family's naming (Debian's, RPM's, the kernel's) -> the kernel's name,
# which is also qemu-user's (its handlers are named qemu-NAME).
_MACHINE = {
    "amd64": "x86_64", "x86_64": "x86_64",
    "arm64": "aarch64", "aarch64": "aarch64",
    "armhf": "arm", "armel": "arm", "armv7hl": "arm", "armv7l": "arm",
    "ppc64el": "ppc64le", "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def machine(arch: str) -> str | None:
    """The kernel's name of ``arch`` (arm64 -> aarch64), or None for one qemu-user is not known for here."""
    return _MACHINE.get(arch)


def host_machine() -> str:
    return os.uname().machine


def is_foreign(arch: str) -> bool:
    """Whether ``arch`` is not this machine's. A compat architecture the kernel may run itself
    (i386 on x86_64) counts as foreign too: sandboxmgr does not build for it."""
    return _MACHINE.get(arch, arch) != host_machine()


def handler_name(arch: str) -> str:
    return f"qemu-{_MACHINE.get(arch, arch)}"


def _fields(path: Path) -> dict[str, str] | None:
    """A handler's file as ``{"enabled": "", "interpreter": ..., "flags": ...}``; None when absent."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SandboxError(f"cannot read {path}: {exc.strerror}",
                           hint="check that /proc is mounted and readable") from None
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        found[key.rstrip(":")] = value.strip()
    return found


def problem(arch: str, root: Path | None = None) -> tuple[str, str] | None:
    """What keeps this kernel from running ``arch``'s programs in a sandbox, as (what, fix);
    None when nothing does (a native architecture, or an enabled qemu handler with the F flag)."""
    if not is_foreign(arch):
        return None
    root = root or BINFMT_MISC
    name = _MACHINE.get(arch)
    if name is None:
        return (f"qemu-user emulation of {arch} is not known to sandboxmgr",
                f"use one of: {', '.join(sorted(a for a in _MACHINE if is_foreign(a)))}")
    handler = f"qemu-{name}"
    install = (f"install qemu-user-static and binfmt-support (make deps does), then "
               f"'update-binfmts --enable {handler}' (with systemd: 'systemctl restart systemd-binfmt')")
    if not (root / "status").exists():
        return (f"binfmt_misc is not mounted at {root}", install)
    if (root / "status").read_text().strip() != "enabled":
        return (f"binfmt_misc is disabled ({root}/status)", f"echo 1 > {root}/status")
    fields = _fields(root / handler)
    if fields is None:
        return (f"no binfmt_misc handler runs {name} programs ({root}/{handler})", install)
    if "enabled" not in fields:
        return (f"the binfmt_misc handler {handler} is disabled", f"update-binfmts --enable {handler}")
    if "F" not in fields.get("flags", ""):
        interpreter = fields.get("interpreter", "?")
        return (f"the binfmt_misc handler {handler} lacks the F (fix-binary) flag, so the kernel would look "
                f"for {interpreter} inside the sandbox",
                f"register qemu-user-static's handler instead (update-binfmts --package qemu-user-static "
                f"--install {handler} ... --fix-binary yes; Debian's package does): sandboxmgr never copies "
                "qemu into an image")
    return None


def require(arch: str, what: str, root: Path | None = None) -> None:
    """Raise the one-line SandboxError of :func:`problem` for ``what`` (a profile or image), if any."""
    found = problem(arch, root)
    if found is not None:
        line, fix = found
        raise SandboxError(f"{what} is for {arch}, which this {host_machine()} machine runs only through "
                           f"qemu-user, and {line}", hint=fix)
