"""What travels through a farm's broker, and the checks a worker makes before it believes any of it.

A job message is JSON (never pickle: a message must not be able to run code where it is read)
with exactly these fields: ``v`` (1), ``id`` (32 hex digits), ``kind`` (``matrix``), ``profile``
(a profile NAME, looked up in the worker's own profile directories, never a path or an inline
profile), ``command`` (argv), ``env``, ``workdir`` and ``source`` (the project directory as a
gzip'd tar, base64, at most :data:`SOURCE_CAP` bytes). Anything else - an unknown field, a
wrong type, a size over its cap, a link or device in the tar - refuses the message whole.

A result message carries back the status, the exit code, the one-line reason and the tail of
the log (at most :data:`LOG_CAP` bytes: the full log stays in the worker's store).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandboxmgr.errors import SandboxError
from sandboxmgr.names import NAME_RE
from sandboxmgr.ociunpack import MAX_DEPTH, Bounded

if TYPE_CHECKING:
    from sandboxmgr.profile import ProfileRegistry
    from sandboxmgr.store import Store

VERSION = 1
MESSAGE_CAP = 12 * 1024 * 1024  # a whole job message, before it is parsed
SOURCE_CAP = 8 * 1024 * 1024  # the project's tar.gz as sent
UNPACKED_CAP = 256 * 1024 * 1024  # the project once unpacked
MEMBERS_CAP = 20_000
LOG_CAP = 1024 * 1024
REPLY_CAP = 14 * LOG_CAP  # a whole reply, before it is parsed: its log's tail, JSON-escaped (\uXXXX: 6 per byte)
WORKER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,255}")  # a slot's name: HOST-PID-NUMBER
JOB_FIELDS = frozenset({"v", "id", "kind", "profile", "command", "env", "workdir", "source"})
PACKAGE_FIELDS = frozenset({"v", "id", "kind", "profile", "build", "source"})  # package build --farm
BUILD_FIELDS = frozenset({"path", "build_type", "network", "timeout", "build_jobs", "deb_build_options"})
BUILD_TYPES = ("binary", "any", "all", "source", "full")
KINDS = ("matrix", "package")
ID_RE = re.compile(r"[0-9a-f]{32}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
STATUSES = ("passed", "failed", "cancelled")


class MessageError(SandboxError):
    """A broker message that is not a job this worker takes (or not a result this caller reads)."""


def make_job(job_id: str, profile: str, command: tuple[str, ...], env: dict[str, str], workdir: str,
             source: bytes) -> bytes:
    """A job message (checked as a worker would: a caller learns of a cap before the broker does)."""
    message = json.dumps({"v": VERSION, "id": job_id, "kind": "matrix", "profile": profile,
                          "command": list(command), "env": env, "workdir": workdir,
                          "source": base64.b64encode(source).decode()}).encode()
    parse_job(message)
    return message


def _loads(raw: bytes, what: str) -> Any:
    """``raw`` as JSON; MessageError when it is not (json recurses: a message nested 100000
    deep is a RecursionError, which stopped the slot that read it)."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"{what} is not JSON: {exc}") from None
    except RecursionError:
        raise MessageError(f"{what} is not JSON: nested too deep") from None


def parse_job(raw: bytes) -> dict[str, Any]:
    """The job in ``raw``, every field checked; MessageError names the first that is wrong."""
    if len(raw) > MESSAGE_CAP:
        raise MessageError(f"message of {len(raw)} bytes, over the cap of {MESSAGE_CAP}")
    data = _loads(raw, "message")
    if not isinstance(data, dict):
        raise MessageError("message is not a JSON object")
    fields = PACKAGE_FIELDS if data.get("kind") == "package" else JOB_FIELDS
    if set(data) != fields:
        extra, lacking = sorted(set(data) - fields), sorted(fields - set(data))
        raise MessageError(f"message fields are wrong (unknown: {extra}, missing: {lacking})")
    if data["v"] != VERSION:
        raise MessageError(f"message version {repr(data['v'])[:40]} is not {VERSION}")
    if not isinstance(data["id"], str) or not ID_RE.fullmatch(data["id"]):
        raise MessageError("id is not 32 hex digits")
    if data["kind"] not in KINDS:
        raise MessageError(f"kind {repr(data['kind'])[:40]} is not one of {', '.join(KINDS)}")
    if not isinstance(data["profile"], str) or not NAME_RE.fullmatch(data["profile"]):
        raise MessageError("profile is not a profile name")
    if data["kind"] == "package":
        _check_build(data["build"])
    else:
        _check_command(data["command"])
        _check_env(data["env"])
        _check_workdir(data["workdir"])
    data["source"] = _decode_source(data["source"])
    return data


def make_package_job(job_id: str, profile: str, build: dict[str, Any], source: bytes) -> bytes:
    """A package build's job message: ``build`` names the source in the tar (``path``: a .dsc's
    name, or ``.`` for a tree) and package build's options."""
    message = json.dumps({"v": VERSION, "id": job_id, "kind": "package", "profile": profile, "build": build,
                          "source": base64.b64encode(source).decode()}).encode()
    parse_job(message)
    return message


def _check_build(build: Any) -> None:
    if not isinstance(build, dict) or set(build) != BUILD_FIELDS:
        raise MessageError(f"build is not a mapping of {', '.join(sorted(BUILD_FIELDS))}")
    path = build["path"]
    if not isinstance(path, str) or not (path == "." or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9+.~_-]{0,200}\.dsc", path)):
        raise MessageError("build's path is not '.' or a .dsc's name")
    if build["build_type"] not in BUILD_TYPES or build["network"] not in ("none", "host"):
        raise MessageError("build's build_type or network is not one of package build's")
    timeout, jobs, options = build["timeout"], build["build_jobs"], build["deb_build_options"]
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                                or not 0 < timeout <= 10 ** 7):
        raise MessageError("build's timeout is not a number of seconds")
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or not 0 <= jobs <= 4096):
        raise MessageError("build's build_jobs is not 0 to 4096")
    if options is not None and (not _text(options, 4096) or not options.isprintable()):
        raise MessageError("build's deb_build_options is not a line of text")


def job_id_of(raw: bytes) -> str | None:
    """The id of a refused message, to tell its caller why - if it has a well-formed one."""
    if len(raw) > MESSAGE_CAP:
        return None
    try:
        data = _loads(raw, "message")
    except MessageError:
        return None
    found = data.get("id") if isinstance(data, dict) else None
    return found if isinstance(found, str) and ID_RE.fullmatch(found) else None


def _text(value: Any, cap: int) -> bool:
    """A string within ``cap``, without NUL, that can be written out (JSON carries lone surrogates)."""
    if not isinstance(value, str) or len(value) > cap or "\0" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_command(command: Any) -> None:
    if not isinstance(command, list) or not 1 <= len(command) <= 256 or not all(_text(a, 4096) for a in command):
        raise MessageError("command is not a list of 1 to 256 strings (each at most 4096 characters, no NUL)")


def _check_env(env: Any) -> None:
    if not isinstance(env, dict) or len(env) > 256:
        raise MessageError("env is not a mapping of at most 256 variables")
    for name, value in env.items():
        if not ENV_NAME_RE.fullmatch(name) or not _text(value, 65536):
            raise MessageError(f"env variable {name[:40]!r} is not NAME=text")


def _check_workdir(workdir: Any) -> None:
    if not _text(workdir, 256) or not workdir.startswith("/") or ".." in workdir.split("/"):
        raise MessageError("workdir is not an absolute path inside the sandbox")


def _decode_source(source: Any) -> bytes:
    if not isinstance(source, str) or len(source) > SOURCE_CAP * 4 // 3 + 4:
        raise MessageError(f"source is not a string of at most {SOURCE_CAP} bytes (base64)")
    try:
        return base64.b64decode(source, validate=True)
    except (binascii.Error, ValueError):
        raise MessageError("source is not base64") from None


# --- the project's files ------------------------------------------------------------------------


def pack(root: Path) -> bytes:
    """``root``'s files as a gzip'd tar, refused over :data:`SOURCE_CAP` (before it is sent), or
    when the worker would refuse it (over :data:`UNPACKED_CAP` or :data:`MEMBERS_CAP`, deeper than
    :data:`MAX_DEPTH`) before it is read whole: a checkout is walked with a stack (tarfile's add
    recurses: 1100 levels were a RecursionError) and a huge (sparse) file is never compressed."""
    buffer = io.BytesIO()
    total = members = 0
    try:
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            stack = [(str(root), ".", 0)]
            while stack:
                path, name, depth = stack.pop()
                if depth > MAX_DEPTH:
                    raise _too_large(root, f"holds {name[:80]!r}..., more than {MAX_DEPTH} levels deep")
                info = tar.gettarinfo(path, arcname=name)
                if info is None:  # a socket: tarfile's add leaves it out too
                    continue
                total, members = total + (info.size if info.isreg() else 0), members + 1
                if total > UNPACKED_CAP or members > MEMBERS_CAP:
                    raise _too_large(root, f"holds more than {UNPACKED_CAP} bytes or {MEMBERS_CAP} files")
                if info.isreg():
                    with open(path, "rb") as file:
                        tar.addfile(info, file)
                else:
                    tar.addfile(info)
                if info.isdir():
                    names = sorted(os.listdir(path), reverse=True)  # popped in tarfile's order
                    stack.extend((os.path.join(path, n), os.path.join(name, n), depth + 1) for n in names)
    except OSError as exc:
        raise SandboxError(f"cannot pack the project {root}: {exc}",
                           hint="check the project directory's files can be read") from None
    data = buffer.getvalue()
    if len(data) > SOURCE_CAP:
        raise _too_large(root, f"packs to {len(data)} bytes, over the farm's cap of {SOURCE_CAP}")
    return data


def _too_large(root: Path, what: str) -> SandboxError:
    return SandboxError(f"the project {root} {what}",
                        hint="leave build products and large files out of the project directory, "
                             "or run the matrix without --farm")


def unpack(source: bytes, dest: Path) -> None:
    """The project into ``dest``: regular files and directories only, inside ``dest``, within the caps."""
    try:
        # Bounded: a PAX header or GNU long name is not read whole, a chain of them is no recursion.
        with tarfile.open(fileobj=io.BytesIO(source), mode="r:gz", tarinfo=Bounded) as tar:
            members, total = [], 0
            for member in tar:
                if not (member.isfile() or member.isdir()):
                    raise MessageError(f"source holds {member.name[:80]!r}, neither a file nor a directory")
                if member.name.startswith("/") or ".." in Path(member.name).parts:
                    raise MessageError(f"source holds {member.name[:80]!r}, outside the project")
                if len(Path(member.name).parts) > MAX_DEPTH:  # tarfile's os.makedirs recurses
                    raise MessageError(f"source holds {member.name[:80]!r}..., more than {MAX_DEPTH} levels deep")
                total += member.size
                members.append(member)
                if total > UNPACKED_CAP or len(members) > MEMBERS_CAP:
                    raise MessageError(f"source unpacks to more than {UNPACKED_CAP} bytes or {MEMBERS_CAP} files")
            # The 'data' filter refuses absolute names, '..', and modes beyond the owner's rwx.
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:  # Bounded's refusals are TarErrors
        raise MessageError(f"source is not a project archive: {exc}") from None


# --- results -------------------------------------------------------------------------------------


def started(worker: str) -> bytes:
    return json.dumps({"event": "started", "worker": worker}).encode()


def make_result(status: str, exit_code: int | None, reason: str, log: bytes, worker: str,
                extra: dict[str, Any] | None = None) -> bytes:
    """A ``done`` reply; ``extra``: a package build's ``package`` (its stage, the packages apt
    could not install) and ``files`` (farmresults' manifest)."""
    text = log[-LOG_CAP:].decode(errors="replace").replace("\0", "\ufffd")
    reason = "".join(char if char.isprintable() else "?" for char in reason[:200])  # the caller prints it
    return json.dumps({"event": "done", "status": status, "exit_code": exit_code, "reason": reason,
                       "log": text, "worker": worker, **(extra or {})}).encode()


PACKAGE_STAGES = ("source", "build-deps", "build", "tests", "results", "timeout")  # package.STAGES


def _check_package(data: dict[str, Any]) -> None:
    """A package build's reply: its stage, the packages apt could not install (printed), the files."""
    package = data.get("package")
    if not isinstance(package, dict) or set(package) != {"stage", "packages"} \
            or (package["stage"] is not None and package["stage"] not in PACKAGE_STAGES):
        raise MessageError("a farm result's package build is not {stage, packages}")
    names = package["packages"]
    if not isinstance(names, list) or len(names) > 256 \
            or not all(_text(name, 200) and name.isprintable() for name in names):
        raise MessageError("a farm result's packages are not at most 256 names")
    if not isinstance(data.get("files"), list):
        raise MessageError("a farm result's files are not a list")


def parse_reply(raw: bytes) -> dict[str, Any]:
    """A worker's reply (``started`` or ``done``), its fields checked. What the caller prints (the
    worker's name, the reason) is printable text: a control character there is a terminal escape."""
    if len(raw) > REPLY_CAP:
        raise MessageError(f"a farm reply of {len(raw)} bytes, over the cap of {REPLY_CAP}")
    data = _loads(raw, "a farm reply")
    if not isinstance(data, dict) or not isinstance(data.get("worker"), str) \
            or not WORKER_RE.fullmatch(data["worker"]):
        raise MessageError("a farm reply names no worker")
    if data.get("event") == "started":
        return data
    if data.get("event") != "done" or data.get("status") not in STATUSES:
        raise MessageError("a farm reply is neither 'started' nor a result")
    code = data.get("exit_code")
    if code is not None and (not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255):
        raise MessageError("a farm result's exit code is not one of a process (0 to 255)")
    if data["status"] == "passed" and code != 0:
        raise MessageError("a farm result passed with an exit code that is not 0")
    reason = data.get("reason")
    if not _text(reason, 200) or not str(reason).isprintable() or not _text(data.get("log"), 2 * LOG_CAP):
        raise MessageError("a farm result's reason or log is not text")
    if "package" in data or "files" in data:
        _check_package(data)
    return data


# --- on the worker ------------------------------------------------------------------------------


@contextmanager
def job_tree(store: Store, registry: ProfileRegistry, job: dict[str, Any]) -> Iterator[Path]:
    """The job's files unpacked in the worker's store (tmp/, removed afterwards), for a job whose
    profile this worker has (its own of that name: SandboxError when it has none)."""
    name = job["profile"]
    if name not in registry.files() and name not in registry.aliases():
        raise SandboxError(f"this farm worker has no profile {name!r} in its profile directories")
    with store.temporary("farm") as tmp:
        root = tmp / "src"
        root.mkdir()
        unpack(job["source"], root)
        yield root


def log_tail(path: Path | None) -> bytes:
    """The last LOG_CAP bytes of a job's log (a hostile build's log is as large as it likes)."""
    if path is None or not path.is_file():
        return b""
    with path.open("rb") as file:
        file.seek(max(0, os.fstat(file.fileno()).st_size - LOG_CAP))
        return file.read(LOG_CAP)
