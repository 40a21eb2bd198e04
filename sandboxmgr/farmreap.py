"""What a farm leaves behind, taken care of: a dead slot's job (retried or failed, never lost)
and a worker's old job directories (pruned).

A slot moves a job's message into its own ``taken:SLOT`` list and refreshes ``alive:SLOT``
while it runs it. When that key expires (the slot was killed: no goodbye on the broker), the
job's caller reaps the message: one Lua script, so atomic on the broker, checks the key is
still absent, takes the message out of the dead slot's list (LREM: of two reapers, one finds
it), counts the retry and puts the message back at the head of the queue - or, past the
retries allowed, leaves it out, and the caller fails the job naming the dead worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxmgr.errors import SandboxError

PREFIX = "sandboxmgr:farm:"
RETRY_TTL = 24 * 3600  # a job's retry count outlives any wait for it

# KEYS: alive:SLOT, taken:SLOT, queue:NAME, retries:JOB; ARGV: the message, the retries allowed, RETRY_TTL.
# -1: the slot is alive after all; -2: the message is not in its list (it ended it, another reaper
# took it, or the slot never had it: a forged 'started'); else the retry's number (requeued when
# within the retries allowed).
REAP = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if redis.call('LREM', KEYS[2], 1, ARGV[1]) == 0 then return -2 end
local count = redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], ARGV[3])
if count <= tonumber(ARGV[2]) then redis.call('RPUSH', KEYS[3], ARGV[1]) end
return count
"""

ALIVE, GONE = -1, -2


@dataclass(frozen=True)
class Limits:
    """How long a caller waits, and how often a lost job is run again (matrix's --farm-* options)."""

    queue_timeout: float = 3600.0  # --farm-timeout: no worker took the job
    job_timeout: float = 3600.0  # --farm-job-timeout: a worker has run it this long
    retries: int = 1  # --farm-retries: a dead worker's job back on the queue, at most this often


def reap(client: Any, slot: str, queue: str, message: bytes, job_id: str, retries: int) -> int:
    """Take ``message`` back from dead ``slot``: ALIVE, GONE, or the retry's number (requeued if
    at most ``retries``)."""
    keys = [PREFIX + "alive:" + slot, PREFIX + "taken:" + slot, PREFIX + "queue:" + queue,
            PREFIX + "retries:" + job_id]
    found: int = client.eval(REAP, len(keys), *keys, message, retries, RETRY_TTL)
    return found


# --- a worker's job directories -----------------------------------------------------------------


@contextlib.contextmanager
def job_dir(jobs: Path, job_id: str) -> Iterator[Path]:
    """A directory of its own for one run of job ``job_id``, locked (flock) while it runs: a second
    run of the same id on this worker (a retry, a replayed message) gets ``ID.2``, never the first
    one's files, and :func:`prune` never takes a directory in use (a forked job process holds the
    lock too, until it ends)."""
    for attempt in range(1, 1000):
        path = jobs / (job_id if attempt == 1 else f"{job_id}.{attempt}")
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        handle = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield path
        finally:
            os.close(handle)
        return
    raise SandboxError(f"job {job_id} has run 999 times on this worker", hint="prune STORE/logs/farm/")


def prune(jobs: Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` newest job directories no job runs in (a killed worker's are
    done with: nothing holds their lock); what was removed. Never through a mount or a link."""
    from sandboxmgr.removal import remove_tree

    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(jobs):
            if entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    found.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
    removed = []
    for _mtime, name in sorted(found, reverse=True)[keep:]:
        try:
            handle = os.open(jobs / name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # another slot's prune removed it first
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError: a job runs in it
            remove_tree(jobs / name)
        except (OSError, SandboxError):
            continue
        finally:
            os.close(handle)
        removed.append(jobs / name)
    return removed
