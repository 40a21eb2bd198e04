"""What both front doors (fastrun.main and cli.main) do around a command: signals, umask,
and errors turned into one line, a hint and an exit code.

The fast path imports this module, so it imports nothing of its own until an error
has to be reported.
"""

from __future__ import annotations

import os
import signal
import sys

from sandboxmgr.errors import EXIT_MANAGER, SandboxError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path
    from typing import NoReturn, TypeVar

    _T = TypeVar("_T")


_CAUGHT: list[int] = []  # the stopping signals received, in order (raise_if_interrupted)


def _stop(signum: int, _frame: object) -> NoReturn:
    # Ctrl-C raises KeyboardInterrupt; SIGTERM and SIGHUP unwind like it, so builds remove
    # their temporary trees. Recorded too: Python swallows what a handler raises while it
    # runs a weakref callback or a __del__ (one of importlib's module locks, in an import,
    # printed "Exception ignored in ..." and the run went on to exit 0).
    _CAUGHT.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def raise_if_interrupted() -> None:
    """Raise again a stopping signal whose exception Python swallowed. Called with the
    forwarded signals blocked, just before a sandbox's command is forked (enter._enter,
    join.run_joined): one that came earlier is never lost, and one that comes later waits
    for the handler that forwards it (supervise)."""
    if _CAUGHT:
        _stop(_CAUGHT[0], None)


def exit_if_stopped() -> None:
    """Exit as a stopping signal that came asks (130 for Ctrl-C, with the line), if one came:
    the exception being handled is its doing, not an error of ours (Python wraps a
    KeyboardInterrupt raised in a class's __set_name__, in an import, in a RuntimeError)."""
    if not _CAUGHT:
        return
    if _CAUGHT[0] == signal.SIGINT:
        print("\nsandboxmgr: interrupted", file=sys.stderr, flush=True)
    sys.exit(128 + _CAUGHT[0])


def _unraisable(info: sys.UnraisableHookArgs) -> None:
    """What :func:`_stop` raised where Python cannot raise it (a weakref callback, a __del__:
    one of importlib's module locks, in an import) is not printed: Python would print
    "Exception ignored in ..." and a traceback on the user's screen at a Ctrl-C. The signal is
    recorded; raise_if_interrupted and exit_if_stopped act on it. Anything else is printed as
    Python prints it."""
    if _CAUGHT and isinstance(info.exc_value, (KeyboardInterrupt, SystemExit)):
        return
    sys.__unraisablehook__(info)


def start() -> None:
    """Signals and umask, before anything else is done."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    sys.unraisablehook = _unraisable
    # Directories made in the store become directories of sandboxes and images (an
    # overlay takes a directory's mode from its upper one): a caller's umask of 077
    # would make / or /usr unreadable to users inside.
    os.umask(0o022)


_LONGEST = 400  # characters of a message or a hint: a 100 kB value given to an option is not echoed whole


def _clip(text: str) -> str:
    if len(text) <= _LONGEST:
        return text
    return f"{text[:_LONGEST // 2]}...({len(text) - _LONGEST + 40} characters left out)...{text[-_LONGEST // 2 + 40:]}"


def error(message: str, hint: str | None) -> None:
    """``sandboxmgr: error: ...`` and ``hint: ...`` on stderr, one line each."""
    print(f"sandboxmgr: error: {_clip(message)}", file=sys.stderr, flush=True)
    if hint:
        print(f"hint: {_clip(hint)}", file=sys.stderr, flush=True)


def guarded(body: Callable[[], _T], argv: Sequence[str]) -> _T:
    """``body()``, with what it raises reported as one line and a hint, and an exit
    (SandboxError: its own code; anything else: 125, or the traceback with --debug)."""
    try:
        return body()
    except SandboxError as exc:
        error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except OSError as exc:
        exit_if_stopped()
        if "--debug" in argv:
            raise
        error(*_os_error(exc, argv))
        sys.exit(EXIT_MANAGER)
    except Exception as exc:
        exit_if_stopped()
        if "--debug" in argv:
            raise
        error(f"internal error: {type(exc).__name__}: {exc}", "run again with --debug for the traceback, and report it")
        sys.exit(EXIT_MANAGER)


def _store_of(argv: Sequence[str]) -> Path:
    """The store a command line names (--store DIR, SANDBOXMGR_STORE, the default), for
    errors that come after click's context is gone."""
    from pathlib import Path

    from sandboxmgr.locations import default_store

    args = list(argv)
    for index, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--store" and index + 1 < len(args):
            return Path(os.path.abspath(args[index + 1]))
        if arg.startswith("--store="):
            return Path(os.path.abspath(arg.split("=", 1)[1]))
    return Path(os.path.abspath(default_store()))


def _os_error(exc: OSError, argv: Sequence[str]) -> tuple[str, str | None]:
    """One line and a hint for what the system refused: a full disk, a permission."""
    import errno

    from sandboxmgr.errors import no_space, shown

    store = _store_of(argv)
    where = f" ({shown(exc.filename)})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        full = no_space(store, str(exc.filename) if exc.filename else "")
        if exc.errno == errno.EDQUOT:
            full.message = full.message.replace("no space left on device", "disk quota exceeded")
        return full.message, full.hint
    if exc.errno in (errno.EACCES, errno.EPERM):
        inside = exc.filename is not None and (str(exc.filename) + "/").startswith(str(store) + "/")
        from sandboxmgr import userns

        if inside and userns.rootless():
            from sandboxmgr.locations import not_yours

            refused = not_yours(store)
            return refused.message, refused.hint
        if userns.entered():
            return (f"permission denied{where}", "an ordinary user's sandboxmgr reaches only what the user "
                    "may: its own store, and -v sources it can read (write)")
        return f"permission denied{where}", "sandboxmgr works as root: run it with sudo, or as root"
    if exc.errno == errno.ENAMETOOLONG:
        return (f"a path is too long for the system{where}",
                "use shorter paths (--store, -v, -C, --junit) and names")
    return (f"{exc.strerror or exc}{where}",
            "run again with --debug for the traceback; report it if it is not the system's fault")
