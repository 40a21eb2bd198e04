"""The AppArmor profile that lets sandboxmgr make user namespaces where AppArmor restricts them.

With ``kernel.apparmor_restrict_unprivileged_userns=1`` (Ubuntu 24.04 and later) a process
that no AppArmor profile names may still make a user namespace, but the kernel moves it into
the ``unprivileged_userns`` profile, which denies every capability there: rootless mode could
not mount anything. A program whose own profile has the ``userns`` rule is exempt. bubblewrap,
podman's helpers and mmdebstrap ship such a profile: ``flags=(unconfined)`` (it confines
nothing) and ``userns,``, attached to their own executable.

sandboxmgr's executable is its console script, run by a Python interpreter. AppArmor attaches
a profile to the file that is executed - for a script the script, not its interpreter (as
Debian's profiles for the mmdebstrap and sbuild scripts rely on) - so the profile names the
script. Naming the interpreter instead would let every Python program make user namespaces.
The script's path is the installation's (a venv's ``bin/``), so the profile is written for it
(:func:`profile`, ``sandboxmgr doctor --apparmor-profile``); contrib/apparmor/sandboxmgr is
that text for a system-wide installation in /opt/sandboxmgr. What the profile grants goes to
whatever runs as that script: whoever can replace it (its owner, a writable directory above
it) can give the grant to any program, so :func:`writers` names them.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

from sandboxmgr.errors import SandboxError

NAME = "sandboxmgr"
INSTALLED = "/etc/apparmor.d/sandboxmgr"
# The installation contrib/apparmor/sandboxmgr is written for (README: AppArmor).
SHIPPED_FOR = "/opt/sandboxmgr/bin/sandboxmgr"
LABEL_FILES = ("/proc/self/attr/apparmor/current", "/proc/self/attr/current")
# Characters an AppArmor path may hold unquoted and never read as a pattern or a variable.
_PLAIN = re.compile(r"[A-Za-z0-9._+/-]+")
_QUOTABLE = re.compile(r"[A-Za-z0-9._+/ -]+")

_TEMPLATE = """\
# AppArmor profile for sandboxmgr: lets it make user namespaces (rootless mode) on a host with
# kernel.apparmor_restrict_unprivileged_userns=1 (Ubuntu 24.04 and later). It confines nothing
# and only names sandboxmgr; every other program stays restricted. It is attached to
# sandboxmgr's console script, the file that is executed - not to the Python interpreter that
# runs it, which would let every Python program make user namespaces. What sandboxmgr starts
# (the bootstrap tool, the sandboxes' commands) keeps the profile, in sandboxmgr's namespace.
#
# Written for the installation whose script is {path}; another installation's
# `sandboxmgr doctor --apparmor-profile` writes the profile for its own script.
{warning}# Install, as root (or copy this file to {installed}):
#   {path} doctor --apparmor-profile > {installed}
#   apparmor_parser -r {installed}

abi <abi/4.0>,
include <tunables/global>

profile {name} {attachment} flags=(unconfined) {{
  userns,

  # Site-specific additions and overrides. See local/README for details.
  include if exists <local/{name}>
}}
"""


def label() -> str | None:
    """The AppArmor profile this process runs under (``unconfined`` when none), without its
    mode; None where AppArmor is not the active security module."""
    for path in LABEL_FILES:
        try:
            with open(path) as handle:
                text = handle.read().strip("\0\n ")
        except OSError:
            continue
        return text.rsplit(" (", 1)[0] if text else None
    return None


def script() -> Path:
    """The console script this sandboxmgr runs as: what AppArmor attaches the profile to
    (symbolic links resolved, as AppArmor sees the path)."""
    main = Path(os.path.realpath(sys.argv[0])) if sys.argv and sys.argv[0] else None
    if main is None or not main.is_file() or main.suffix == ".py" or not _starts_with_shebang(main):
        raise SandboxError("no sandboxmgr script to write an AppArmor profile for: AppArmor attaches a profile "
                           "to the program that is executed, and this sandboxmgr runs from the Python interpreter "
                           "(python -m sandboxmgr)",
                           hint="run the installed script: sandboxmgr doctor --apparmor-profile")
    return main


def _starts_with_shebang(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == b"#!"
    except OSError:
        return False


def writers(path: Path) -> list[str]:
    """Who besides root can replace ``path``: the owner of it or of a directory above it, or a
    group or every user that may write into such a directory (a sticky one protects what root
    owns in it)."""
    found: list[str] = []
    for where in (path, *path.parents):
        info = os.stat(where)
        candidates = []
        if info.st_uid != 0:
            candidates.append(_user(info.st_uid))
        if stat.S_ISDIR(info.st_mode) and not info.st_mode & stat.S_ISVTX:
            if info.st_mode & stat.S_IWGRP and info.st_gid != 0:
                candidates.append(f"group {_group(info.st_gid)}")
            if info.st_mode & stat.S_IWOTH:
                candidates.append("every user")
        found += [who for who in candidates if who not in found]
    return found


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def attachment(path: Path) -> str:
    """``path`` as an AppArmor attachment: plain, or quoted when it has spaces; refused when
    it has characters AppArmor would read as a pattern or a variable."""
    text = str(path)
    if _PLAIN.fullmatch(text):
        return text
    if _QUOTABLE.fullmatch(text):
        return f'"{text}"'
    raise SandboxError(f"cannot name {text!r} in an AppArmor profile: AppArmor reads some of its characters "
                       "as a pattern", hint="install sandboxmgr in a directory whose path is plain letters, "
                       "digits and . _ + - /")


def warning(path: Path, who: list[str]) -> str:
    """What a profile for ``path`` gives to ``who`` (see :func:`writers`); empty for nobody."""
    if not who:
        return ""
    return (f"{path} can be replaced by {', '.join(who)}: with this profile, any program run by them can "
            "make user namespaces (as if the restriction were off for them); a system-wide installation "
            f"that only root can change is safer (README: AppArmor)")


def profile(path: Path, who: list[str] | None = None) -> str:
    """The profile for the installation whose console script is ``path``."""
    said = warning(path, who or [])
    lines = ""
    if said:
        wrapped = _wrap("WARNING: " + said, 90)
        lines = "".join(f"# {'' if n == 0 else '  '}{line}\n" for n, line in enumerate(wrapped)) + "#\n"
    return _TEMPLATE.format(path=path, warning=lines, installed=INSTALLED, name=NAME,
                            attachment=attachment(path))


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)
