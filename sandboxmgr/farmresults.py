"""A farm job's result files (a package build's .deb, .changes, .buildinfo, log), worker to caller.

Not wired to a verb yet (``package build --farm`` is the next slice's): the transport both ends
will use, and the caller's half of its security. The files travel through the broker, chunked,
beside the job's reply: each file is a Redis string ``files:JOB:N``, written and read in
chunks of :data:`CHUNK` bytes (APPEND, GETRANGE: neither end holds a file whole; the caller
checks its length before it reads a byte), expiring with the reply; the reply carries a
manifest of ``{name, size, sha256}``. Through Redis, not a store beside it, because the broker is the one
thing caller and workers share already (no second service, no second password), and the caps
bound what one job may put in the broker's memory (:data:`TOTAL_CAP`).

Anyone with the broker's password can pretend to be a worker: the caller believes nothing of a
manifest beyond a checked name (no path separator, no dotfile, a known suffix), a size within
the caps, and a digest the bytes must match; each file is written inside the results directory
the caller made, by a descriptor of it, never through a link, and all are removed when one is wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandboxmgr.errors import SandboxError
from sandboxmgr.farmjob import MessageError

PREFIX = "sandboxmgr:farm:"
CHUNK = 1024 * 1024
FILE_CAP = 128 * 1024 * 1024
TOTAL_CAP = 256 * 1024 * 1024
FILES_CAP = 64
FILE_TTL = 3600  # as a reply's
# A build's products (package.PRODUCT_RE's), its log and build-info.json, and the source tree package test reads.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9+.~_-]{0,199}\."
                     r"(deb|udeb|ddeb|changes|buildinfo|dsc|tar\.(gz|xz|bz2|zst|lz)|diff\.gz|log|json)")
FIELDS = frozenset({"name", "size", "sha256"})


def send(client: Any, job_id: str, directory: Path, beat: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
    """``directory``'s result files into the broker (the worker's half); their manifest. A file
    whose name is not a result's, or that is not a regular file, stays behind. ``beat`` is called
    between chunks: the slot's heartbeat (256 MiB take longer than its 3 s)."""
    names = sorted(name for name in os.listdir(directory) if NAME_RE.fullmatch(name))
    if len(names) > FILES_CAP:
        raise MessageError(f"the results are {len(names)} files, over the farm's cap of {FILES_CAP}")
    manifest: list[dict[str, Any]] = []
    total = 0
    for name in names:
        try:
            handle = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        if not stat.S_ISREG(os.fstat(handle).st_mode):  # a fifo, a directory: a build made it
            os.close(handle)
            continue
        with os.fdopen(handle, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            total += size
            if size > FILE_CAP or total > TOTAL_CAP:
                raise MessageError(f"the results' {name} takes them over the farm's caps ({FILE_CAP} bytes a file, "
                                   f"{TOTAL_CAP} in all)")
            key, digest = f"{PREFIX}files:{job_id}:{len(manifest)}", hashlib.sha256()  # its place in the manifest
            client.delete(key)
            while chunk := file.read(CHUNK):
                digest.update(chunk)
                client.append(key, chunk)
                client.expire(key, FILE_TTL)  # from its first chunk: an upload cut midway goes too
                beat()
        manifest.append({"name": name, "size": size, "sha256": digest.hexdigest()})
    return manifest


def check_manifest(manifest: Any) -> list[dict[str, Any]]:
    """A reply's manifest, every entry checked (MessageError names the first that is wrong)."""
    if not isinstance(manifest, list) or len(manifest) > FILES_CAP:
        raise MessageError(f"a farm result's files are not a list of at most {FILES_CAP}")
    total, seen = 0, set()
    for entry in manifest:
        if not isinstance(entry, dict) or set(entry) != FIELDS:
            raise MessageError("a farm result's file is not {name, size, sha256}")
        name, size, digest = entry["name"], entry["size"], entry["sha256"]
        if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in seen:
            raise MessageError(f"a farm result's file name {name!r:.60} is not a result's (or given twice)")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= FILE_CAP:
            raise MessageError(f"a farm result's {name} has a size that is not 0 to {FILE_CAP}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise MessageError(f"a farm result's {name} has no sha256")
        total += size
        seen.add(name)
    if total > TOTAL_CAP:
        raise MessageError(f"a farm result's files are {total} bytes, over the cap of {TOTAL_CAP}")
    return manifest


def receive(client: Any, job_id: str, manifest: Any, dest: Path) -> list[str]:
    """The manifest's files from the broker into ``dest`` (the caller's half: it made ``dest``);
    the names written. When a file's bytes are not the manifest's, MessageError says why and
    none of the files is left; the broker's copies are deleted either way."""
    entries = check_manifest(manifest)
    try:
        directory = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:  # a link put in its place, or removed while the job ran: an OSError was an internal error
        raise SandboxError(f"cannot write the farm's results into {dest}: {exc.strerror}",
                           hint="give --results a directory of your own, not a link") from None
    written: list[str] = []
    try:
        for index, entry in enumerate(entries):
            _receive_one(client, f"{PREFIX}files:{job_id}:{index}", entry, directory)
            written.append(entry["name"])
    except BaseException:  # none of a refused result stays: half a build's files look like a build's
        for name in written:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=directory)
        raise
    finally:
        os.close(directory)
        for index in range(len(entries)):
            client.delete(f"{PREFIX}files:{job_id}:{index}")
    return written


def _receive_one(client: Any, key: str, entry: dict[str, Any], directory: int) -> None:
    name = entry["name"]
    if _strlen(client, key) != entry["size"]:  # before a byte is read: a forged file may be 512 MB
        raise MessageError(f"a farm result's {name} is not the size its manifest says")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=directory)  # an earlier build's, or a link someone left there: never followed
        handle = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=directory)
    except OSError as exc:
        raise SandboxError(f"cannot write the farm result {name}: {exc.strerror}",
                           hint="check the --results directory") from None
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(handle, "wb") as file:
            while size < entry["size"]:
                chunk = _getrange(client, key, size, min(size + CHUNK, entry["size"]) - 1)
                if not chunk:
                    break
                size += len(chunk)
                digest.update(chunk)
                file.write(chunk)
        if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
            raise MessageError(f"a farm result's {name} is not the file its manifest describes")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=directory)
        raise


# A forger's key may be a list, a hash, a set (WRONGTYPE: redis' ResponseError) - even between two reads.


def _strlen(client: Any, key: str) -> int | None:
    from redis import ResponseError

    try:
        return int(client.strlen(key))
    except ResponseError:
        return None


def _getrange(client: Any, key: str, start: int, end: int) -> bytes:
    from redis import ResponseError

    try:
        return bytes(client.getrange(key, start, end) or b"")
    except ResponseError:
        return b""


def write_log(dest: Path, text: str) -> None:
    """``dest``/build.log: ``text``, in place of what is there (an earlier build's log, a link:
    never followed)."""
    try:
        directory = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink("build.log", dir_fd=directory)
            handle = os.open("build.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise SandboxError(f"cannot write the farm build's log into {dest}: {exc.strerror}",
                           hint="check the --results directory") from None
    with os.fdopen(handle, "w") as file:
        file.write(text)
