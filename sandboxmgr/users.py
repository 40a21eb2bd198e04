"""The sandbox's users: ``-u user[:group]`` checked on the host, looked up inside.

A numeric uid or gid is checked before anything is set up (:func:`check_user`);
a name is looked up in the sandbox's own ``/etc/passwd`` and ``/etc/group``
(:func:`lookup_user`), after the root switch, so the host's user database is
never consulted.
"""

from __future__ import annotations

from sandboxmgr.errors import SandboxError, shown
from sandboxmgr.record import record


@record
class User:
    """Who the command runs as: ids, supplementary groups and home directory."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _read_table(path: str) -> list[list[str]]:
    try:
        with open(path) as handle:
            return [line.rstrip("\n").split(":") for line in handle if line.count(":") >= 2]
    except OSError:
        return []


# The largest uid and gid: (uid_t)-1 means "unchanged" to the set*id calls.
MAX_ID = 0xFFFFFFFE


def _plain_name(part: str) -> bool:
    """What useradd and groupadd accept (a trailing $: Samba's machine accounts), or a number."""
    name = part.removeprefix("-").removesuffix("$")
    return bool(name) and name.replace("_", "a").replace(".", "a").replace("-", "a").isalnum() and name.isascii()


def check_user(spec: str | None) -> None:
    """Refuse a numeric uid or gid the kernel cannot take (``-u 4294967295``, ``-u -1``),
    before anything is set up. Names are looked up inside the sandbox later."""
    if not spec:
        return
    if spec.count(":") > 1 or not all(map(_plain_name, spec.split(":"))):
        raise SandboxError(f"user {shown(spec)}: not a user[:group] of names or numbers",
                           hint="give -u (or the profile's user:) a name or a number, optionally :group")
    for part, what in zip(spec.partition(":")[::2], ("uid", "gid"), strict=True):
        negative = part.startswith("-") and part[1:].isdigit()
        if negative or (part.isdigit() and int(part) > MAX_ID):
            raise SandboxError(f"user {spec}: {part} is not a valid {what} (0 to {MAX_ID})",
                               hint="give -u (or the profile's user:) a name, or a number from 0 to 4294967294")


def lookup_user(spec: str | None, passwd: str = "/etc/passwd", group: str = "/etc/group") -> User:  # noqa: S107
    """``user[:group]`` (names or numbers) in the sandbox's own user database."""
    if spec is None or spec == "":
        spec = "0"
    user_part, _, group_part = spec.partition(":")
    users = [row for row in _read_table(passwd) if len(row) >= 7]
    entry = None
    for row in users:
        if row[0] == user_part or (user_part.isdigit() and row[2] == user_part):
            entry = row
            break
    if entry is None and not user_part.isdigit():
        raise SandboxError(f"no user {user_part!r} in the sandbox's /etc/passwd",
                           hint="create it in the profile's setup (useradd), or give a numeric uid")
    uid = int(entry[2]) if entry else int(user_part)
    gid = int(entry[3]) if entry else 0
    home = entry[5] if entry else "/"
    groups_table = [row for row in _read_table(group) if len(row) >= 4]
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            match = [row for row in groups_table if row[0] == group_part]
            if not match:
                raise SandboxError(f"no group {group_part!r} in the sandbox's /etc/group",
                                   hint="give a numeric gid or create the group in setup")
            gid = int(match[0][2])
    name = entry[0] if entry else None
    extra = tuple(int(row[2]) for row in groups_table
                  if name is not None and name in row[3].split(",") and int(row[2]) != gid)
    return User(uid, gid, extra, home)
