"""The farm's second slice reviewed (issue farm2-review): package build --farm's source and results,
the caller's bounded wait. Anyone with the broker's password can pretend to be a worker; a source
handed to package build may come from anyone. The holes found, each a test here:

1. a forger pushing a reply every second kept a caller waiting past --farm-timeout and
   --farm-job-timeout forever: the wait skipped its deadlines whenever a reply came;
2. a .dsc's Files field naming a link beside it made the caller (root) read the link's
   target - /etc/shadow, a device - into the job it sends to the broker;
3. a forged worker's file of the wrong Redis type (a list) was an internal error of the caller;
4. a result refused midway left the files received before it, beside an earlier build's, in
   --results DIR/PROFILE; the log was written through a link planted there;
5. --farm-timeout nan (or --farm-job-timeout nan) never timed out.

Each case runs against a real redis-server on loopback (no root, no images), or is a unit of the
caller's own code.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sandboxmgr import farmcall, farmjob
from sandboxmgr.farmcall import FarmJob
from sandboxmgr.farmreap import PREFIX, Limits
from sandboxmgr.matrix import Result
from tests.unit.conftest import client, url  # noqa: F401 - the broker's fixtures

JOB = "e" * 32


def a_job(tmp_path: Path, url: str, limits: Limits) -> FarmJob:  # noqa: F811
    (tmp_path / "src").mkdir(exist_ok=True)
    job_id = os.urandom(16).hex()
    message = farmjob.make_job(job_id, "debian-bookworm", ("true",), {}, "/src", farmjob.pack(tmp_path / "src"))
    return FarmJob(url, "attacks", message, job_id, Result("e", "p", log=tmp_path / "e.log"), tmp_path / "r.json",
                   limits)


def test_a_forger_s_stream_of_replies_does_not_hold_a_caller_past_its_deadline(
        client: Any, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Hole 1: the caller's wait went back to the reply list after each 'started' without looking
    at its clocks; a 'started' every 0.2 s (of a worker that does not exist) held it forever."""
    monkeypatch.setattr(farmcall, "CANCEL_WAIT", 1.0)
    job = a_job(tmp_path, url, Limits(queue_timeout=2, job_timeout=2, retries=0))
    stop = threading.Event()

    def forger() -> None:
        while not stop.is_set():
            client.rpush(PREFIX + "reply:" + job.job_id, farmjob.started("forger-9"))
            time.sleep(0.2)

    threading.Thread(target=forger, daemon=True).start()
    outcome: list[dict[str, Any]] = []
    waiter = threading.Thread(target=lambda: outcome.append(job._wait_for_result()), daemon=True)
    try:
        waiter.start()
        waiter.join(timeout=20)
    finally:
        stop.set()
    assert outcome, "the caller still waited 20 s past its 2 s deadlines"
    assert (outcome[0]["status"], outcome[0]["stage"]) == ("failed", "timeout"), outcome
    assert client.exists(PREFIX + "cancel:" + job.job_id)
