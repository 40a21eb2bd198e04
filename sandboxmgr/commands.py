"""The one place that runs external programs (debootstrap, mmdebstrap, ...).

Commands are argv lists, never shell strings. Their output is streamed line by
line into a log file and to a callback (the progress display); the full argv
is logged at debug level (``--debug``). A program that is not installed
becomes one error with the package to install; a failure is plumbum's
:class:`ProcessExecutionError`, which already carries argv, exit code and
output.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from sandboxmgr import linux
from sandboxmgr.errors import SandboxError

if TYPE_CHECKING:
    from plumbum.commands.processes import ProcessExecutionError


log = logging.getLogger("sandboxmgr")

# Program -> the Debian/Ubuntu package that provides it.
PACKAGES = {
    "debootstrap": "debootstrap",
    "mmdebstrap": "mmdebstrap",
    "gpgv": "gpgv",
    "dnf": "dnf",
    "rpm": "rpm",
    "skopeo": "skopeo",
}

__all__ = ["ProcessExecutionError", "capture", "require", "run"]

_PASSED_TO_TOOLS = {"http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy", "tz", "lang"}
_TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def __getattr__(name: str) -> Any:
    # plumbum is imported only when a program is run: `sandboxmgr run` on a built
    # image never runs one, and the import costs tens of milliseconds.
    if name == "ProcessExecutionError":
        from plumbum.commands.processes import ProcessExecutionError

        return ProcessExecutionError
    raise AttributeError(name)


def require(program: str) -> str:
    """The full path of ``program``, or an error that says what to install."""
    from plumbum import local
    from plumbum.commands.processes import CommandNotFound

    try:
        return str(local.which(program))
    except CommandNotFound:
        package = PACKAGES.get(program, program)
        raise SandboxError(
            f"{program} is not installed",
            hint=f"install it: apt-get install {package} (or run 'make deps')",
        ) from None


@dataclass(frozen=True)
class PreMount:
    """A mount made for one command only, in its private mount namespace."""

    source: str | Path
    target: Path
    fstype: str | None = None  # None: a bind mount
    data: str | None = None


class Confinement(Protocol):
    """Where a tool runs instead of on the host as it is (toolroot.ToolRoot): what its child
    does between fork and exec, after ``mounts`` are made in a mount namespace of its own."""

    def preexec(self, mounts: Sequence[PreMount]) -> Callable[[], None]:
        """The function the child runs before exec; built in the parent, as it may not import."""


def _die_with_manager() -> None:  # pragma: no cover - runs between fork and exec
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)


def _environment(env: Mapping[str, str] | None, in_tool_root: bool) -> dict[str, str]:
    if not in_tool_root:
        full_env = dict(os.environ)
    else:
        # A tool in a tool root gets nothing of the caller's environment (tokens, sockets'
        # addresses) but what reaching a mirror needs.
        full_env = {key: value for key, value in os.environ.items() if key.lower() in _PASSED_TO_TOOLS}
        full_env.update({"PATH": _TOOL_PATH, "LC_ALL": "C.UTF-8", "HOME": "/root"})
    if env:
        full_env.update(env)
    return full_env


def _stream(process: subprocess.Popen[bytes], tail: deque[str], handle: TextIO | None,
            on_line: Callable[[str], None] | None) -> int:
    """Pass the output on line by line (to the log, to ``on_line``), keeping the last lines in
    ``tail``; the exit status. Interrupted, the process is killed first."""
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            line = text.rstrip("\n")
            tail.append(line)
            if handle is not None:
                handle.write(line + "\n")
            if on_line is not None:
                on_line(line)
        return process.wait()
    except BaseException:
        process.kill()
        process.wait()
        raise


def run(
    argv: Sequence[str],
    log_file: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
    mounts: Sequence[PreMount] = (),
    tool_root: Confinement | None = None,
) -> None:
    """Run ``argv`` to completion, streaming its combined output. With ``tool_root``: in
    mount and PID namespaces of its own, in that root (toolroot.py), after ``mounts``; a
    killed build then leaves no mount and no process behind, only a tmp/ tree the next
    command removes.

    Raises :class:`ProcessExecutionError` with the last lines of output when
    it exits non-zero.
    """
    from plumbum.commands.processes import ProcessExecutionError

    full_argv = [require(argv[0]), *argv[1:]]
    log.debug("running: %s", shlex.join(full_argv))
    full_env = _environment(env, tool_root is not None)
    tail: deque[str] = deque(maxlen=40)
    handle = open(log_file, "a") if log_file is not None else None  # noqa: SIM115
    try:
        if handle is not None:
            handle.write(f"$ {shlex.join(full_argv)}\n")
            handle.flush()
        # subprocess, not plumbum's popen: that one adds the caller's environment to ``env``.
        process = subprocess.Popen(
            full_argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            # The signed index may be fetched in a thread meanwhile (debcache.Later): the child
            # runs only our own code (syscalls through ctypes, toolroot imported already) and
            # takes no lock that thread could hold.
            preexec_fn=_die_with_manager if tool_root is None else tool_root.preexec(mounts),  # noqa: PLW1509
        )
        code = _stream(process, tail, handle, on_line)
    finally:
        if handle is not None:
            handle.close()
    if code != 0:
        raise ProcessExecutionError(list(argv), code, "\n".join(tail), "")


def capture(argv: Sequence[str], data: bytes | None = None,
            pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess[bytes] | None:
    """Run a short host program (dpkg-query, cp, gpgv) to completion, ``data`` on its stdin
    and its output captured, whatever its exit status; None when the program cannot be
    started (not installed)."""
    log.debug("running: %s", shlex.join(argv))
    try:
        return subprocess.run(list(argv), input=data, capture_output=True, check=False, pass_fds=tuple(pass_fds))
    except OSError:
        return None
