"""The system call filter of a sandbox: Docker's default semantics, built with libseccomp.

Root inside a sandbox keeps Docker's capability set, which still leaves the
kernel's whole system call surface open: user namespaces (and with them mount,
cgroup file systems, every capability inside the new namespace), the kernel
keyrings, io_uring, userfaultfd, BPF, perf... A filter closes that surface the
way Docker's default profile does: an allow-list of calls, everything else
fails with EPERM; ``clone`` only without namespace flags; ``clone3`` fails
with ENOSYS (its flags sit behind a pointer a filter cannot read, and ENOSYS
makes glibc fall back to ``clone``); ``personality`` only with the harmless
values.

The filter is a :class:`Policy` (pure data: :func:`default_policy`, or a
Docker-format JSON profile read by :func:`load_profile`), turned into BPF by
libseccomp - the library runc and crun use - in the manager, on the host, and
kept in the store (:func:`sandboxmgr.libseccomp.program`: building it costs
more than the rest of a run). The command's process loads that BPF with :func:`sandboxmgr.linux.
set_seccomp_filter` just before ``execve``. Nothing here imports ctypes or opens
the library until a filter must be built: the fast path pays for the data and
one file read.
"""

from __future__ import annotations

import errno
import os

from sandboxmgr.errors import SandboxError
from sandboxmgr.record import record

MAX_PROFILE_BYTES = 4 << 20  # Docker's own profile is ~20 KB
TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from typing import Any

# libseccomp's action values (<seccomp.h>).
ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_ERRNO = 0x00050000
ACT_TRACE = 0x7FF00000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000


def act_errno(number: int) -> int:
    return ACT_ERRNO | (number & 0xFFFF)


# enum scmp_compare
CMP_NE, CMP_LT, CMP_LE, CMP_EQ, CMP_GE, CMP_GT, CMP_MASKED_EQ = range(1, 8)
_COMPARISONS = {"SCMP_CMP_NE": CMP_NE, "SCMP_CMP_LT": CMP_LT, "SCMP_CMP_LE": CMP_LE, "SCMP_CMP_EQ": CMP_EQ,
                "SCMP_CMP_GE": CMP_GE, "SCMP_CMP_GT": CMP_GT, "SCMP_CMP_MASKED_EQ": CMP_MASKED_EQ}

# Audit architecture tokens (<linux/audit.h>), as libseccomp's SCMP_ARCH_*.
ARCH_X86 = 0x40000003
ARCH_X86_64 = 0xC000003E
ARCH_X32 = 0x4000003E
ARCH_ARM = 0x40000028
ARCH_AARCH64 = 0xC00000B7
_ARCHES = {"SCMP_ARCH_X86": ARCH_X86, "SCMP_ARCH_X86_64": ARCH_X86_64, "SCMP_ARCH_X32": ARCH_X32,
           "SCMP_ARCH_ARM": ARCH_ARM, "SCMP_ARCH_AARCH64": ARCH_AARCH64,
           "SCMP_ARCH_PPC64LE": 0xC0000015, "SCMP_ARCH_S390X": 0x80000016, "SCMP_ARCH_S390": 0x00000016,
           "SCMP_ARCH_RISCV64": 0xC00000F3}
# A native architecture and the compat ones its kernel also runs, as Docker's archMap:
# a 32-bit binary (int 0x80) or an x32 one reaches the same kernel, so the filter
# covers them too rather than leaving a second, unfiltered way in.
COMPAT_ARCHES = {"x86_64": (ARCH_X86_64, ARCH_X86, ARCH_X32), "aarch64": (ARCH_AARCH64, ARCH_ARM)}

# Every namespace flag of clone(2)/unshare(2): NEWNS NEWCGROUP NEWUTS NEWIPC NEWUSER
# NEWPID NEWNET, and NEWTIME (0x80, which clone() reads as part of the exit signal,
# so it is masked for unshare only).
NAMESPACE_FLAGS = 0x7E020000
CLONE_NEWTIME = 0x80
# personality(2): PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32|UNAME26, and the query.
SAFE_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


@record
class ArgCmp:
    """One comparison of a system call argument (``struct scmp_arg_cmp``)."""

    index: int
    op: int
    value: int
    value_two: int = 0


@record
class Rule:
    """``action`` for each call in ``names`` (when every comparison in ``args`` holds)."""

    names: tuple[str, ...]
    action: int
    args: tuple[ArgCmp, ...] = ()


@record
class Policy:
    """A whole filter: the default action and the rules; ``arches`` empty: native and compat."""

    default_action: int
    rules: tuple[Rule, ...]
    arches: tuple[int, ...] = ()
    source: str = "default"


# --- the default policy ---------------------------------------------------------------------

# What a userland needs: files, processes, signals, memory, time (reading it),
# sockets, IPC, and the set*id/capset calls a package manager's scripts use. Our
# own list, with Docker's default profile as the reference for what is safe.
# Names a kernel or architecture lacks are skipped when the filter is compiled.
_ALLOWED = (
    # files and directories
    "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range", "creat",
    "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64",
    "fdatasync", "fgetxattr", "flistxattr", "flock", "fremovexattr", "fsetxattr", "fstat", "fstat64",
    "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futimesat", "getcwd",
    "getdents", "getdents64", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "ioctl", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listxattr",
    "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "mkdir",
    "mkdirat", "mknod", "mknodat", "newfstatat", "open", "openat", "openat2", "pipe", "pipe2",
    "pread64", "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink",
    "readlinkat", "readv", "removexattr", "rename", "renameat", "renameat2", "rmdir", "sendfile",
    "sendfile64", "setxattr", "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink",
    "symlinkat", "sync", "sync_file_range", "sync_file_range2", "syncfs", "tee", "truncate",
    "truncate64", "umask", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes",
    "vmsplice", "write", "writev", "fanotify_mark", "arm_fadvise64_64", "cachestat",
    # polling and events
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2",
    "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "poll", "ppoll", "ppoll_time64", "pselect6",
    "pselect6_time64", "select", "_newselect", "signalfd", "signalfd4", "timerfd_create",
    "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64",
    # asynchronous I/O (the old interface; io_uring is not allowed)
    "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup",
    "io_submit", "ioprio_get", "ioprio_set",
    # processes and threads (clone, unshare and personality: see the rules below)
    "execve", "execveat", "exit", "exit_group", "fork", "vfork", "wait4", "waitid", "waitpid",
    "getpid", "getppid", "gettid", "getpgid", "getpgrp", "getsid", "setsid", "setpgid",
    "getpriority", "setpriority", "getrlimit", "ugetrlimit", "setrlimit", "prlimit64", "getrusage",
    "prctl", "arch_prctl", "set_tid_address", "set_robust_list", "get_robust_list", "rseq",
    "get_thread_area", "set_thread_area", "modify_ldt", "restart_syscall", "pidfd_open",
    "pidfd_send_signal", "membarrier", "getcpu", "sched_getaffinity", "sched_setaffinity",
    "sched_getattr", "sched_setattr", "sched_getparam", "sched_setparam", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getscheduler", "sched_setscheduler", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_yield", "seccomp", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "process_mrelease",
    # users, groups, capabilities
    "capget", "capset", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getgroups", "getgroups32", "getresgid", "getresgid32", "getresuid", "getresuid32", "getuid",
    "getuid32", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups",
    "setgroups32", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32",
    "setreuid", "setreuid32", "setuid", "setuid32",
    # signals
    "alarm", "kill", "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
    "sigaltstack", "sigprocmask", "sigreturn", "sigaction", "sigpending", "sigsuspend", "signal",
    "tgkill", "tkill",
    # memory
    "brk", "madvise", "mincore", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mremap",
    "msync", "munlock", "munlockall", "munmap", "memfd_create", "memfd_secret", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "remap_file_pages", "map_shadow_stack",
    # time (reading it, sleeping, timers; adjtimex changes nothing without CAP_SYS_TIME)
    "adjtimex", "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64",
    "clock_nanosleep", "clock_nanosleep_time64", "gettimeofday", "nanosleep", "time", "times",
    "getitimer", "setitimer", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64",
    # futexes
    "futex", "futex_time64", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue",
    # sockets (socket itself: see the rules below)
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen",
    "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg", "sendmsg",
    "sendto", "setsockopt", "shutdown", "socketpair", "socketcall",
    # System V and POSIX IPC (namespaced: the sandbox has an IPC namespace)
    "ipc", "msgctl", "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink",
    # the system
    "uname", "sysinfo", "getrandom",
    # CAP_SYS_CHROOT decides (and --isolation chroot drops it)
    "chroot",
)

# ptrace within the sandbox (strace, gdb) is allowed, as Docker does on kernels
# from 4.8 on: before 4.8 a tracer could change a system call after the filter had
# seen it. It reaches only the sandbox's own processes (a PID namespace; PID 1 is
# not dumpable) and the capability set has no CAP_SYS_PTRACE for anything more.
_PTRACE = ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd")
_PTRACE_MIN_KERNEL = (4, 8)

_AF_VSOCK = 40  # the host's hypervisor sockets: Docker blocks them too


def _kernel_at_least(version: tuple[int, int], release: str | None = None) -> bool:
    parts = (release or os.uname().release).split(".")
    try:
        return (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)) >= version
    except (IndexError, ValueError):
        return False


def _clone_flags_index() -> int:
    """s390's clone(2) takes the stack first and the flags second."""
    return 1 if os.uname().machine.startswith("s390") else 0


def default_policy() -> Policy:
    """Docker's default semantics, without CAP_SYS_ADMIN (see the module docstring)."""
    names = _ALLOWED + (_PTRACE if _kernel_at_least(_PTRACE_MIN_KERNEL) else ())
    rules = [
        Rule(names, ACT_ALLOW),
        Rule(("clone",), ACT_ALLOW, (ArgCmp(_clone_flags_index(), CMP_MASKED_EQ, NAMESPACE_FLAGS, 0),)),
        # unshare without a namespace (CLONE_FILES, CLONE_FS, CLONE_SYSVSEM) is harmless.
        Rule(("unshare",), ACT_ALLOW, (ArgCmp(0, CMP_MASKED_EQ, NAMESPACE_FLAGS | CLONE_NEWTIME, 0),)),
        Rule(("clone3",), act_errno(errno.ENOSYS)),
        Rule(("socket",), ACT_ALLOW, (ArgCmp(0, CMP_NE, _AF_VSOCK),)),
    ]
    rules += [Rule(("personality",), ACT_ALLOW, (ArgCmp(0, CMP_EQ, value),)) for value in SAFE_PERSONALITIES]
    return Policy(act_errno(errno.EPERM), tuple(rules))


# --- Docker-format JSON profiles ----------------------------------------------------------------


class ProfileFileError(SandboxError):
    """A seccomp profile file that cannot be read or is not a Docker-format profile."""


_ACTIONS = {"SCMP_ACT_ALLOW": ACT_ALLOW, "SCMP_ACT_KILL": ACT_KILL_THREAD,
            "SCMP_ACT_KILL_THREAD": ACT_KILL_THREAD, "SCMP_ACT_KILL_PROCESS": ACT_KILL_PROCESS,
            "SCMP_ACT_TRAP": ACT_TRAP, "SCMP_ACT_LOG": ACT_LOG}
_CAP_PREFIX = "CAP_"


def load_profile(path: str, capabilities: frozenset[str] = frozenset()) -> Policy:
    """A Docker-format profile (``defaultAction``, ``syscalls[].names/action/args/errnoRet``,
    ``architectures`` or ``archMap``, ``includes``/``excludes`` by ``caps``, ``arches``,
    ``minKernel``), as ``docker run --security-opt seccomp=FILE`` reads it.

    ``capabilities`` are the sandbox's (names without CAP_), for the rules Docker's own
    profile includes only with a capability. Unknown system call names are skipped when
    compiling, as runc does; anything else malformed raises :class:`ProfileFileError`.
    """
    import json

    from sandboxmgr import linux

    try:
        _mode, content = linux.regular_bytes(path, MAX_PROFILE_BYTES)
    except OSError as exc:
        raise _bad(path, f"cannot read it: {exc.strerror}") from None
    if content is None:
        raise _bad(path, "cannot read it: not a regular file")  # /dev/zero would never end, a FIFO hang
    if len(content) > MAX_PROFILE_BYTES:
        raise _bad(path, f"larger than {MAX_PROFILE_BYTES >> 20} MiB")
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise _bad(path, f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _bad(path, "the top level must be a JSON object")
    default_errno = _int(path, data.get("defaultErrnoRet", errno.EPERM), "defaultErrnoRet")
    default = _action(path, data.get("defaultAction"), default_errno, "defaultAction")
    machine = os.uname().machine
    arches = tuple(_arch(path, name) for name in _list(path, data.get("architectures", []), "architectures"))
    if not arches and "archMap" in data:
        arches = _from_arch_map(path, data["archMap"])
    rules: list[Rule] = []
    for index, entry in enumerate(_list(path, data.get("syscalls", []), "syscalls")):
        where = f"syscalls[{index}]"
        if not isinstance(entry, dict):
            raise _bad(path, f"{where} must be an object")
        if not _applies(path, entry, where, capabilities, machine):
            continue
        names = entry.get("names", [entry["name"]] if "name" in entry else None)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
            raise _bad(path, f"{where}.names must be a non-empty list of system call names")
        errno_ret = _int(path, entry.get("errnoRet", default_errno), f"{where}.errnoRet")
        action = _action(path, entry.get("action"), errno_ret, f"{where}.action")
        args = tuple(_arg(path, arg, f"{where}.args[{i}]")
                     for i, arg in enumerate(_list(path, entry.get("args") or [], f"{where}.args")))
        rules += [Rule(tuple(names), action, group) for group in _arg_groups(args)]
    return Policy(default, tuple(rules), arches, source=path)


def _bad(path: str, what: str) -> ProfileFileError:
    return ProfileFileError(f"seccomp profile {path}: {what}",
                            hint="give a Docker-format JSON profile (defaultAction, syscalls[].names and "
                                 "action), or --security-opt seccomp=unconfined")


def _list(path: str, value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(path, f"{where} must be a list")
    return value


def _int(path: str, value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(path, f"{where} must be a non-negative integer")
    return value


def _action(path: str, name: Any, errno_ret: int, where: str) -> int:
    if name == "SCMP_ACT_ERRNO":
        return act_errno(errno_ret)
    if name == "SCMP_ACT_TRACE":
        return ACT_TRACE | (errno_ret & 0xFFFF)
    if name not in _ACTIONS:
        known = ", ".join([*_ACTIONS, "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"])
        raise _bad(path, f"{where}: {name!r} is not an action sandboxmgr knows ({known})")
    return _ACTIONS[name]


def _arch(path: str, name: Any) -> int:
    if name not in _ARCHES:
        raise _bad(path, f"architecture {name!r} is unknown (known: {', '.join(_ARCHES)})")
    return _ARCHES[name]


def _from_arch_map(path: str, arch_map: Any) -> tuple[int, ...]:
    native = COMPAT_ARCHES.get(os.uname().machine, ())[:1]
    for entry in _list(path, arch_map, "archMap"):
        if isinstance(entry, dict) and native and _ARCHES.get(str(entry.get("architecture"))) == native[0]:
            return native + tuple(_arch(path, name) for name in _list(path, entry.get("subArchitectures", []),
                                                                          "archMap[].subArchitectures"))
    return native


def _applies(path: str, entry: dict[str, Any], where: str, capabilities: frozenset[str], machine: str) -> bool:
    """Docker's ``includes``/``excludes``: by capability, architecture, minimum kernel."""
    arch_names = {"x86_64": {"amd64", "x86_64"}, "aarch64": {"arm64", "aarch64"}}.get(machine, {machine})
    for key, wanted in (("includes", True), ("excludes", False)):
        condition = entry.get(key) or {}
        if not isinstance(condition, dict):
            raise _bad(path, f"{where}.{key} must be an object")
        caps = {c.removeprefix(_CAP_PREFIX) for c in _list(path, condition.get("caps", []), f"{where}.{key}.caps")}
        arches = set(_list(path, condition.get("arches", []), f"{where}.{key}.arches"))
        if wanted:
            if caps and not caps <= capabilities:
                return False
            if arches and not arches & arch_names:
                return False
            kernel = condition.get("minKernel")
            if kernel is not None and not _kernel_at_least(_version(path, kernel, where)):
                return False
        elif (caps and caps & capabilities) or (arches and arches & arch_names):
            return False
    return True


def _version(path: str, text: Any, where: str) -> tuple[int, int]:
    parts = str(text).split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        raise _bad(path, f"{where}.includes.minKernel {text!r} is not a kernel version like 4.8")
    return int(parts[0]), int(parts[1])


def _arg(path: str, arg: Any, where: str) -> ArgCmp:
    if not isinstance(arg, dict) or arg.get("op") not in _COMPARISONS:
        raise _bad(path, f"{where} must be an object with index, value and an op like SCMP_CMP_EQ")
    index = _int(path, arg.get("index"), f"{where}.index")
    if index > 5:
        raise _bad(path, f"{where}.index must be from 0 to 5")
    return ArgCmp(index, _COMPARISONS[arg["op"]], _int(path, arg.get("value", 0), f"{where}.value"),
                  _int(path, arg.get("valueTwo", 0), f"{where}.valueTwo"))


def _arg_groups(args: tuple[ArgCmp, ...]) -> list[tuple[ArgCmp, ...]]:
    """libseccomp takes one comparison per argument in a rule: several on the same
    argument become one rule each (any of them allows), as runc does."""
    indexes = [a.index for a in args]
    if len(set(indexes)) == len(indexes):
        return [args]
    return [(a,) for a in args]
