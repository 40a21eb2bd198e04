"""The fast path of `sandboxmgr run PROFILE -- CMD` on a built image, and of `exec`.

Importing click and the YAML machinery costs more than entering a sandbox, so
the common forms of `run` whose profile resolution is cached (see runcache.py)
are handled here without either. Anything else - an option this parser does not
know, a cache miss, a profile that changed, `--help` - returns None and the
full CLI (cli/) handles the command, which also refreshes the cache. Both
paths resolve a profile with resolve.py, start with entry.py and end in the same
function (sandbox.run_ephemeral), and a unit test checks that they parse every
form accepted here the same way.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Sequence

from sandboxmgr.record import record

# Options of `run` and `exec` that take no value, as cli/sandboxes.py defines them.
_RUN_FLAGS = {"--rm": "rm", "-i": "i", "--interactive": "i", "-t": "t", "--tty": "t",
              "-it": "it", "-ti": "it"}
_EXEC_FLAGS = {key: value for key, value in _RUN_FLAGS.items() if key != "--rm"}


@record
class FastArgs:
    store: str | None
    quiet: bool
    verb: str  # "run" or "exec"
    ref: str  # the profile (run) or the sandbox's name (exec)
    command: tuple[str, ...]
    tty: bool


def parse(argv: Sequence[str]) -> FastArgs | None:
    """``[--store DIR] [-q] run [--rm] [-i] [-t] PROFILE [--] [COMMAND...]`` or
    ``[--store DIR] [-q] exec [-i] [-t] NAME [--] COMMAND...``, or None."""
    args = list(argv)
    store = None
    quiet = False
    while args and args[0] not in ("run", "exec"):
        option = args.pop(0)
        if option == "--store" and args:
            store = args.pop(0)
        elif option.startswith("--store="):
            store = option.split("=", 1)[1]
        elif option in ("-q", "--quiet"):
            quiet = True
        else:
            return None
    if not args:
        return None
    verb = args.pop(0)
    flags = _RUN_FLAGS if verb == "run" else _EXEC_FLAGS
    tty = False
    while args and args[0].startswith("-"):
        flag = flags.get(args.pop(0))
        if flag is None:
            return None
        tty = tty or flag in ("t", "it")
    if not args:
        return None
    ref = args.pop(0)
    if args[:1] == ["--"]:
        args.pop(0)
    if verb == "exec" and not args:
        return None  # click reports the missing command
    return FastArgs(store or None, quiet, verb, ref, tuple(args), tty)


def try_run(argv: Sequence[str]) -> int | None:
    """Run the command if this is the fast path's business; None hands it to the full CLI."""
    if os.environ.get("SANDBOXMGR_CONFIGS") or "--debug" in argv:
        return None
    args = parse(argv)
    if args is None or (args.tty and not sys.stdin.isatty()):
        return None
    if args.verb == "exec":
        status = _join_by_ticket(args)
        if status is not None:
            return status
    from pathlib import Path

    from sandboxmgr.locations import default_store, profile_dirs, refuse_others
    from sandboxmgr.userns import begin

    store_path = Path(args.store) if args.store else default_store()
    refuse_others(store_path)
    # An ordinary user's (nothing for root); exec into a running sandbox takes its namespace.
    # Its map is written while the modules below are imported (no file made, no owner read).
    pending = begin(store_path / "sandboxes" / args.ref if args.verb == "exec" and "/" not in args.ref else None)
    from sandboxmgr import config
    from sandboxmgr.store import Store

    if args.verb == "exec":
        from sandboxmgr import live  # before gc is on again: importing it would set off collections
    else:
        from sandboxmgr import sandbox
        from sandboxmgr.resolve import cached_run
    if pending is not None:
        pending.finish()
    store = Store(store_path)
    options = config.options(argv=args.command, tty=config.shell_tty(args.tty, args.command))
    if args.verb == "exec":
        # A named sandbox keeps its config: nothing of its profile is needed.
        store.clean_leftovers()
        _collect_from_now_on()
        _say_path("fast")
        return live.run_in(store, store.sandbox(args.ref), options)
    found = cached_run(store, args.ref, profile_dirs(()))
    if found is None:
        return None
    store.clean_leftovers()
    _collect_from_now_on()
    _say_path("fast")
    return sandbox.run_ephemeral(store, *found, options)


def _join_by_ticket(args: FastArgs) -> int | None:
    """``exec`` into a running sandbox by its ticket (ticket.py): none of the general path's
    imports (json, pathlib, the config machinery). None: the general path's business."""
    from sandboxmgr import ticket
    from sandboxmgr.locations import default_store_text

    def joining() -> None:
        _collect_from_now_on()
        _say_path("ticket")

    return ticket.exec_running(args.store or default_store_text(), args.ref, args.command, args.tty, joining)


def _say_path(path: str) -> None:
    """With SANDBOXMGR_DEBUG_PATH=1, say on stderr which path takes the command: ``fast`` (this
    module), ``ticket`` (exec joining by a running sandbox's ticket) or ``full`` (click and the
    YAML machinery). A debugging aid, and what the tests
    read to know the fast path ran; unset, it costs one lookup in the environment."""
    if os.environ.get("SANDBOXMGR_DEBUG_PATH") == "1":
        print(f"sandboxmgr: path: {path}", file=sys.stderr, flush=True)


def _collect_from_now_on() -> None:
    """gc on again once the imports are done (a long-running sandbox's manager collects as
    usual), with what the imports made frozen: it lives as long as the process, and the
    first collection would otherwise walk all of it (~1.5 ms)."""
    gc.freeze()
    gc.enable()


def main() -> None:
    """The `sandboxmgr` entry point: the fast path if it applies, else the full CLI."""
    try:
        _main()
    except KeyboardInterrupt:
        # Ctrl-C before a command started (the imports take tens of ms) or before click took
        # over: what was half-made is removed by now (the stack unwound); said as the full CLI says it.
        print("\nsandboxmgr: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception:
        # One a stopping signal caused (entry.exit_if_stopped), outside entry.guarded: the
        # full CLI's imports (click's, the YAML machinery's) come after it.
        from sandboxmgr import entry

        entry.exit_if_stopped()
        raise


def _main() -> None:
    # Importing the fast path's modules would set off collections (~2 ms of a run):
    # off until they are imported (try_run), and for the full CLI on again at once.
    gc.disable()
    from sandboxmgr import entry

    entry.start()
    status = entry.guarded(lambda: try_run(sys.argv[1:]), sys.argv[1:])
    if status is not None:
        # Done: skip the interpreter's teardown of every module (several ms). Nothing is
        # left to clean up - the sandbox and its locks are gone - but buffered output.
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None: the fd was closed when we started
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
        os._exit(status)
    gc.enable()
    _say_path("full")
    from sandboxmgr.cli import main as full_main

    full_main()
