"""Names that become paths or host names, and the rules they must follow.

Kept apart from the profile machinery so the fast path of `run` can check a
name without importing YAML.
"""

from __future__ import annotations

import re

from sandboxmgr.errors import ProfileError

# Every pattern here ends in \Z, not $: "$" also matches before a final newline, so
# "x\n" would pass a .match() of "^...$". Callers use fullmatch all the same.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
NAME_RULE = "names are lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"
HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
# Characters an overlayfs mount option cannot carry: ',' separates options (a path with one
# could smuggle in another option), ':' separates lower dirs, '\\' escapes, and a newline
# would end the mount's line in /proc/self/mountinfo.
OVERLAY_UNSAFE = ",:\\\n"
# Bumped when the meaning of a build input changes, so old layers are not reused.
BUILD_FORMAT = 2


def hostname_for(name: str) -> str:
    """A valid host name made from a profile or sandbox name (``my_prof.x`` -> ``my-prof-x``)."""
    cleaned = re.sub(r"[^A-Za-z0-9-]+", "-", name)[:63].strip("-")
    return cleaned or "sandbox"


def overlay_unsafe(path: object, blanks: bool = False) -> bool:
    """Whether ``path`` has a character overlayfs options cannot carry (OVERLAY_UNSAFE), or
    with ``blanks`` also a space or a tab (the store refuses those too)."""
    return not set(str(path)).isdisjoint(OVERLAY_UNSAFE + (" \t" if blanks else ""))


def check_name(name: str, what: str = "name") -> str:
    """Refuse a name that could escape a directory before anything touches disk."""
    if not NAME_RE.fullmatch(name) or len(name) > 128:
        lower = name.lower()
        hint = (f"names are lowercase: did you mean {lower!r}?" if NAME_RE.fullmatch(lower) and len(lower) <= 128
                else "pick a name like 'debian-bookworm' or 'work-1'")
        raise ProfileError(f"invalid {what} {name!r}: {NAME_RULE}", hint=hint)
    return name
