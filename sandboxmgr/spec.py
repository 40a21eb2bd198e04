"""What entering a sandbox is asked (:class:`EnterSpec`, enter.py) and what a command joining a
running one is given (join.py), with the defaults both share.

Apart from enter.py so that joining imports neither the mount machinery nor pathlib: the
joining fast path of ``exec`` (ticket.py) pays for this module, join.py and the command's
side (execute.py) only.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sandboxmgr.record import record
from sandboxmgr.seccomp import Policy, default_policy

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from pathlib import Path

    from sandboxmgr.enter import DirectoryRoot, OverlayRoot
    from sandboxmgr.limits import Limits
    from sandboxmgr.mounts import BindMount

# Docker's default capability set: enough for apt-get and dnf, not for mount,
# module loading, raw I/O, ptrace, the clock or the network configuration.
CAPABILITY_NUMBERS = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
    "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13, "SYS_CHROOT": 18,
    "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31,
}
DEFAULT_CAPABILITIES = frozenset(CAPABILITY_NUMBERS.values())
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INIT_NAME = "sandboxmgr-init"  # the sandbox's PID 1 as ps shows it (15 bytes at most)
NO_ENV: Mapping[str, str] = MappingProxyType({})  # an immutable default
DEFAULT_SECCOMP = default_policy()


@record
class EnterSpec:
    root: OverlayRoot | DirectoryRoot | None  # None: a joining command's (it takes PID 1's)
    argv: tuple[str, ...] = ()  # empty: the image's shell
    env: Mapping[str, str] = NO_ENV
    workdir: str | None = None
    hostname: str = "sandbox"
    user: str | None = None
    network: str = "host"
    binds: tuple[BindMount, ...] = ()
    tty: bool = False
    isolation: str = "pivot_root"
    capabilities: frozenset[int] = DEFAULT_CAPABILITIES
    # File descriptors to give the command as stdin, stdout, stderr (default: ours).
    stdio: tuple[int, int, int] | None = None
    # Resource limits, applied with a cgroup of the run's own (see runcgroup.py).
    limits: Limits | None = None
    # PR_SET_NO_NEW_PRIVS: setuid binaries and file capabilities grant nothing.
    no_new_privs: bool = True
    # The system call filter (see seccomp.py); None: none at all (seccomp=unconfined).
    seccomp: Policy | None = DEFAULT_SECCOMP
    # Where the filter's BPF is kept between runs (the store's cache); None: built each time.
    seccomp_cache: Path | None = None
    # A build step: Ctrl-C (or SIGTERM, SIGHUP) to the manager kills the whole sandbox at once
    # and is raised here, as a host tool's run is interrupted; otherwise it is only forwarded
    # to the command, which may take its time (a shell waits for its child first).
    interruptible: bool = False
    # The sandbox's /etc/hostname, /etc/hosts and /etc/resolv.conf (sandbox.write_etc_files);
    # None for a build step, which sees the image's and the host's resolv.conf.
    etc_dir: Path | None = None
    # A live sandbox's PID 1 (live.py): it runs no command of its own but holds the sandbox's
    # namespaces and mounts while commands join it (join.py), until it is stopped (pid1.py).
    hold: bool = False
    # A live sandbox's PID 1 with a main command (run -d): a SIGTERM to it (stop) goes to every
    # process of the sandbox, not to the command alone.
    live: bool = False
    # --userns auto (idmap.py): the first host id of the sandbox's range, which root inside is;
    # None: the host's user namespace (root inside is root outside).
    ids: int | None = None
