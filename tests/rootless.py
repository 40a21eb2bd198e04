"""An ordinary user for the rootless tests: made with useradd, with its own HOME and
subordinate id ranges, removed at the end; and the real `sandboxmgr` run as that user.

The tests run as root, so they make the user (issue 14): a unique name, a home of its own in
/tmp, /etc/subuid and /etc/subgid ranges (useradd's, or a free range added with usermod), and
commands run through `setpriv` with only that user's ids and groups, its HOME and its XDG_*
directories. The user must be able to read the checkout and start a Python that imports it: the
environment's own `sandboxmgr` script when the user may run it, else the system's Python of the
same version with the checkout and the environment's site-packages on PYTHONPATH (a venv made
from a Python under /root is out of an ordinary user's reach).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO, Result, entry_point, missing

TOOLS = ("useradd", "userdel", "usermod", "setpriv", "newuidmap", "newgidmap")


@dataclass
class OrdinaryUser:
    """A user made for the tests, and `sandboxmgr` as it runs it."""

    name: str
    uid: int
    gid: int
    home: Path
    program: list[str] = field(default_factory=list)  # how the user starts sandboxmgr
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def store(self) -> Path:
        """Where an ordinary user's store is by default: $XDG_DATA_HOME/sandboxmgr."""
        return self.home / ".local" / "share" / "sandboxmgr"

    @property
    def profiles(self) -> Path:
        return self.home / ".config" / "sandboxmgr" / "profiles"

    def env(self) -> dict[str, str]:
        env = {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name, "LANG": "C.UTF-8",
               "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
               "XDG_DATA_HOME": str(self.home / ".local" / "share"),
               "XDG_CONFIG_HOME": str(self.home / ".config"), "XDG_CACHE_HOME": str(self.home / ".cache")}
        for key in ("http_proxy", "https_proxy", "no_proxy", "TERM"):
            if key in os.environ:
                env[key] = os.environ[key]
        return env | self.extra_env

    def as_user(self, argv: list[str]) -> list[str]:
        """``argv`` run with this user's ids and groups only (setpriv keeps no capability)."""
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        return [setpriv, f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *argv]

    def argv(self, *args: str) -> list[str]:
        return self.as_user([*self.program, *args])

    def __call__(self, *args: str, input: str | None = None, timeout: float = 900) -> Result:
        proc = subprocess.run(self.argv(*args), input=input, capture_output=True, text=True, env=self.env(),
                              cwd=self.home, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, input: str | None = None, timeout: float = 900) -> Result:
        result = self(*args, input=input, timeout=timeout)
        assert result.code == 0, str(result)
        return result

    def processes(self) -> list[str]:
        """Processes whose real uid is the user's or in its subordinate range (sandboxes' users)."""
        low, count = subordinate_range("/etc/subuid", self.name) or (self.uid, 0)
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                status = Path(f"/proc/{entry}/status").read_text()
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            uid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
            if uid == self.uid or low <= uid < low + count:
                found.append(f"{entry} {comm}")
        return found


# Runs as root: a user namespace of the test's own (root and the user mapped to themselves,
# written by this privileged parent, no newuidmap), where user.max_user_namespaces is set to
# argv[3] - a per-namespace limit, so the host's stays as it is - then argv[4:] in it.
_IN_RESTRICTED_NAMESPACE = r"""
import ctypes, os, sys
uid, gid, limit, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
go_read, go_write = os.pipe()
helper = os.fork()
if helper == 0:
    os.close(go_write)
    os.read(go_read, 1)
    for name, own in (("uid_map", uid), ("gid_map", gid)):
        with open(f"/proc/{os.getppid()}/{name}", "w") as handle:
            handle.write(f"0 0 1\n{own} {own} 1\n")
    os._exit(0)
os.close(go_read)
if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:
    sys.exit(f"unshare: {os.strerror(ctypes.get_errno())}")
os.close(go_write)
os.waitpid(helper, 0)
with open("/proc/sys/user/max_user_namespaces", "w") as handle:
    handle.write(limit)
os.execv(argv[0], argv)
"""


def with_max_user_namespaces(user: OrdinaryUser, limit: int, argv: list[str]) -> list[str]:
    """``argv`` (one of ``user.argv()``) run where user.max_user_namespaces is ``limit``: a
    restricted host, simulated in a user namespace of the test's own."""
    return [sys.executable, "-c", _IN_RESTRICTED_NAMESPACE, str(user.uid), str(user.gid), str(limit), *argv]


def subordinate_range(path: str, name: str) -> tuple[int, int] | None:
    """The user's first range (start, count) in /etc/subuid or /etc/subgid (read here, not with
    sandboxmgr's code: the tests check that code)."""
    for line in Path(path).read_text().splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] == name:
            return int(fields[1]), int(fields[2])
    return None


def _free_range(path: str, count: int = 65536) -> int:
    """A start of ``count`` ids past every range in /etc/subuid or /etc/subgid."""
    end = 100000
    with open(path) as handle:
        for line in handle:
            fields = line.strip().split(":")
            if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                end = max(end, int(fields[1]) + int(fields[2]))
    return end


def _program(user: OrdinaryUser) -> list[str]:
    """How this user starts the real sandboxmgr (see the module's docstring)."""
    script = entry_point()
    probe = subprocess.run(user.as_user([*script, "--version"]), capture_output=True, text=True,
                           env=user.env(), cwd=user.home)
    if probe.returncode == 0:
        return script
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/bin:/bin")
    if system is None:
        missing(f"an ordinary user cannot run {script[0]} and there is no /usr/bin/{version}")
    paths = [str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    user.extra_env = {"PYTHONPATH": ":".join(dict.fromkeys(paths))}
    program = [system, "-m", "sandboxmgr"]
    probe = subprocess.run(user.as_user([*program, "--version"]), capture_output=True, text=True,
                           env=user.env(), cwd=user.home)
    if probe.returncode != 0:
        missing(f"an ordinary user cannot run sandboxmgr from this checkout ({REPO}): {probe.stderr.strip()}")
    return program


@contextmanager
def ordinary_user(subordinate_ids: bool = True) -> Iterator[OrdinaryUser]:
    """A new user (with ``subordinate_ids``: ranges in /etc/subuid and /etc/subgid), removed
    with its home and ranges at the end."""
    for tool in TOOLS:
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed (make deps installs it: passwd, util-linux, uidmap)")
    name = f"smgr-{secrets.token_hex(4)}"
    home = Path("/tmp") / f"sandboxmgr-user-{name}"
    argv = ["useradd", "--create-home", "--home-dir", str(home), "--user-group", "--shell", "/bin/sh"]
    if not subordinate_ids:
        argv += ["-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0"]
    subprocess.run([*argv, name], check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        if subordinate_ids and (subordinate_range("/etc/subuid", name) is None
                                or subordinate_range("/etc/subgid", name) is None):
            start = max(_free_range("/etc/subuid"), _free_range("/etc/subgid"))
            subprocess.run(["usermod", "--add-subuids", f"{start}-{start + 65535}",
                            "--add-subgids", f"{start}-{start + 65535}", name], check=True, capture_output=True)
        user = OrdinaryUser(name, entry.pw_uid, entry.pw_gid, home)
        user.program = _program(user)
        yield user
    finally:
        subprocess.run(["userdel", "--remove", name], capture_output=True)
        # What its sandboxes made belongs to its subordinate ids: not removed by userdel.
        shutil.rmtree(home, ignore_errors=True)
        for path in ("/etc/subuid", "/etc/subgid"):
            _drop_lines(path, name)


def _drop_lines(path: str, name: str) -> None:
    """userdel leaves the subordinate ranges on some distributions: take the user's out."""
    try:
        lines = Path(path).read_text().splitlines(keepends=True)
    except OSError:
        return
    kept = [line for line in lines if line.split(":", 1)[0] != name]
    if kept != lines:
        Path(path).write_text("".join(kept))
