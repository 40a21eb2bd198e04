"""libseccomp, through ctypes: a :class:`~sandboxmgr.seccomp.Policy` built into BPF, and kept.

Building a filter costs more than the rest of a run, so :func:`program` keeps the BPF
in the store's cache, keyed by exactly what it was built from. Nothing here opens
the library until a filter must be built (and ctypes is imported only then): the
fast path, with the BPF cached, pays for one file read.
"""

from __future__ import annotations

import errno
import os

from sandboxmgr.errors import SandboxError
from sandboxmgr.seccomp import COMPAT_ARCHES

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from sandboxmgr.seccomp import Policy, Rule

# enum scmp_filter_attr
_ATTR_CTL_NNP = 3
_ATTR_CTL_OPTIMIZE = 8  # 2: a binary tree of system call numbers, not a linear list

_lib: Any = None
_arg_struct: Any = None  # struct scmp_arg_cmp, as a ctypes structure


def _library() -> Any:
    """libseccomp, opened on first use (on the host: before the sandbox's root switch)."""
    global _lib  # noqa: PLW0603 - opened once per process
    if _lib is not None:
        return _lib
    import ctypes

    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        raise SandboxError("libseccomp is not installed on the host (libseccomp.so.2)",
                           hint="install libseccomp2 (make deps does), or run with "
                                "--security-opt seccomp=unconfined") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]

    class ScmpArgCmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]

    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ScmpArgCmp)]
    global _arg_struct  # noqa: PLW0603 - made once, with the library
    _arg_struct = ScmpArgCmp
    _lib = lib
    return lib


_NR_SCMP_ERROR = -1
_BPF_MAXINSNS = 4096  # <linux/bpf_common.h>: the longest classic BPF program the kernel loads


class Filter:
    """A filter built with libseccomp, not loaded: export it as BPF with :meth:`program`."""

    def __init__(self, lib: Any, context: int) -> None:
        self._lib = lib
        self._context = context

    def program(self) -> bytes:
        """The filter as the kernel takes it: an array of ``struct sock_filter``."""
        fd = os.memfd_create("seccomp", os.MFD_CLOEXEC)
        try:
            _call(self._lib.seccomp_export_bpf(self._context, fd), "seccomp_export_bpf()")
            size = os.fstat(fd).st_size
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)

    def release(self) -> None:
        self._lib.seccomp_release(self._context)


def compile_policy(policy: Policy) -> Filter:
    """Build ``policy`` with libseccomp."""
    lib = _library()
    context = lib.seccomp_init(policy.default_action)
    if not context:
        raise SandboxError(f"cannot build the seccomp filter ({policy.source}): seccomp_init failed",
                           hint="run with --security-opt seccomp=unconfined")
    compiled = Filter(lib, context)
    try:
        # no_new_privs is the sandbox's own setting (--security-opt no-new-privileges):
        # libseccomp must not set it behind our back.
        _call(lib.seccomp_attr_set(context, _ATTR_CTL_NNP, 0), "seccomp_attr_set(CTL_NNP)")
        # Every system call of the sandbox runs the filter: a binary search over some
        # 350 numbers, not a walk through them. libseccomp before 2.5 refuses the
        # attribute and builds the linear filter, which works the same, a little slower.
        lib.seccomp_attr_set(context, _ATTR_CTL_OPTIMIZE, 2)
        for arch in policy.arches or COMPAT_ARCHES.get(os.uname().machine, ()):
            result = lib.seccomp_arch_add(context, arch)
            if result not in (0, -errno.EEXIST):
                _call(result, f"seccomp_arch_add({arch:#x})")
        for rule in policy.rules:
            _add(lib, context, rule, policy.default_action)
    except BaseException:
        compiled.release()
        raise
    return compiled


def program(policy: Policy, cache: Path | None = None) -> bytes:
    """``policy`` as BPF, from ``cache`` (a directory only root can write) when it was built before.

    Building a filter with libseccomp and generating its BPF costs about 12 ms, four
    times what the rest of entering a sandbox does; the result depends only on the
    policy, the architecture and the library, so it is kept. A cache file starts with
    exactly what it was built from, compared in full when it is read (no hash to trust).
    """
    header = _cache_header(policy)
    path = None
    if cache is not None:
        import zlib

        path = cache / f"{zlib.crc32(header):08x}-{len(header)}.bpf"
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            pass
        else:
            if data[:len(header)] == header and (len(data) - len(header)) % 8 == 0:
                return data[len(header):]
    compiled = compile_policy(policy)
    try:
        code = compiled.program()
    finally:
        compiled.release()
    if len(code) // 8 > _BPF_MAXINSNS:
        raise SandboxError(f"the seccomp profile {policy.source} makes a filter of {len(code) // 8} "
                           f"instructions; the kernel takes at most {_BPF_MAXINSNS}",
                           hint="merge its rules (one rule may name many system calls), or drop architectures")
    if path is not None:
        _store(path, header + code)
    return code


def _cache_header(policy: Policy) -> bytes:
    library = _library_identity()
    return f"sandboxmgr seccomp 1\n{os.uname().machine}\n{library}\n{policy!r}\n\n".encode()


def _library_identity() -> str:
    """Which libseccomp would build the filter (a new one knows more system calls)."""
    for place in ("/lib", "/usr/lib", "/lib64", "/usr/lib64"):
        for sub in (f"{os.uname().machine}-linux-gnu/", ""):
            try:
                info = os.stat(f"{place}/{sub}libseccomp.so.2")
            except OSError:
                continue
            return f"{place}/{sub}libseccomp.so.2 {info.st_ino} {info.st_size} {info.st_mtime_ns}"
    return "libseccomp.so.2"


def _store(path: Path, data: bytes) -> None:
    """Write a cache file whole or not at all (a rename), readable by root only."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError:
        pass  # a cache: the next run builds the filter again


def _add(lib: Any, context: int, rule: Rule, default_action: int) -> None:
    if rule.action == default_action:
        return  # libseccomp refuses a rule that does what the default does
    import ctypes

    arg_struct = _arg_struct
    args = (arg_struct * max(1, len(rule.args)))()
    for slot, arg in zip(args, rule.args, strict=False):
        slot.arg, slot.op, slot.datum_a, slot.datum_b = arg.index, arg.op, arg.value, arg.value_two
    pointer = ctypes.cast(args, ctypes.POINTER(arg_struct))
    for name in rule.names:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number == _NR_SCMP_ERROR:
            continue  # a call this libseccomp does not know: skipped, as runc does
        _call(lib.seccomp_rule_add_array(context, rule.action, number, len(rule.args), pointer),
              f"seccomp_rule_add({name})")


def _call(result: int, what: str) -> None:
    if result < 0:
        raise SandboxError(f"cannot build the seccomp filter: {what} failed: {os.strerror(-result)}",
                           hint="check the seccomp profile, or run with --security-opt seccomp=unconfined")
