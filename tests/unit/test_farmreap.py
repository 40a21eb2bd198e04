"""No farm job waits forever or is lost (farmcall.py, farmreap.py): a caller's bounded wait and the
reaping of a dead slot's job, against a real redis-server on loopback (no root, no images: the
workers here are the test's own hands on the broker); a worker's job directories."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sandboxmgr import farmcall, farmjob, farmreap
from sandboxmgr.farmcall import FarmJob
from sandboxmgr.farmreap import ALIVE, GONE, PREFIX, Limits
from sandboxmgr.matrix import Result

QUEUE = PREFIX + "queue:unit"


def a_job(tmp_path: Path, url: str, limits: Limits) -> FarmJob:
    job_id = os.urandom(16).hex()
    message = farmjob.make_job(job_id, "debian-bookworm", ("true",), {}, "/src", farmjob.pack(tmp_path / "src"))
    return FarmJob(url, "unit", message, job_id, Result("e", "p", log=tmp_path / "e.log"), tmp_path / "r.json",
                   limits)


@pytest.fixture(autouse=True)
def project(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "check.sh").write_text("true\n")


def in_background(body: Any) -> threading.Thread:
    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def take(client: Any, slot: str, timeout: float = 10) -> bytes:
    """What a slot does: the message into its taken list, 'started' on the job's reply list."""
    raw = client.blmove(QUEUE, PREFIX + "taken:" + slot, timeout, "RIGHT", "LEFT")
    assert raw is not None, "the caller never queued its job"
    client.rpush(PREFIX + "reply:" + farmjob.parse_job(raw)["id"], farmjob.started(slot))
    return bytes(raw)


def test_two_reapers_of_a_dead_slot_requeue_its_job_once(client: Any, url: str) -> None:
    import redis

    client.rpush(PREFIX + "taken:dead-1", b"the message")
    results: list[int] = []

    def reaper() -> None:
        results.append(farmreap.reap(redis.Redis.from_url(url), "dead-1", "unit", b"the message", "a" * 32, 5))

    threads = [in_background(reaper) for _ in range(8)]
    for thread in threads:
        thread.join()
    assert sorted(results) == [GONE] * 7 + [1]
    assert client.lrange(QUEUE, 0, -1) == [b"the message"]
    assert not client.exists(PREFIX + "taken:dead-1")


def test_a_live_slot_s_job_is_not_reaped_and_a_lost_one_only_within_its_retries(client: Any) -> None:
    client.rpush(PREFIX + "taken:live-1", b"m")
    client.set(PREFIX + "alive:live-1", "1", ex=30)
    assert farmreap.reap(client, "live-1", "unit", b"m", "b" * 32, 1) == ALIVE
    assert client.lrange(PREFIX + "taken:live-1", 0, -1) == [b"m"] and not client.exists(QUEUE)
    for slot, expected in (("dead-1", 1), ("dead-2", 2)):
        client.rpush(PREFIX + "taken:" + slot, b"m")
        assert farmreap.reap(client, slot, "unit", b"m", "b" * 32, 1) == expected
    assert client.lrange(QUEUE, 0, -1) == [b"m"]  # the second loss is past --farm-retries 1: not requeued


def test_a_job_no_worker_takes_fails_at_stage_timeout_and_leaves_the_queue(client: Any, url: str,
                                                                         tmp_path: Path) -> None:
    job = a_job(tmp_path, url, Limits(queue_timeout=1.5, job_timeout=60, retries=1))
    started = time.monotonic()
    data = job._wait_for_result()
    assert 1.5 < time.monotonic() - started < 10
    assert (data["status"], data["stage"]) == ("failed", "timeout")
    assert data["reason"].startswith("no farm worker took the job in 1.5 s (queue 'unit', --farm-timeout)")
    assert client.llen(QUEUE) == 0
    assert client.exists(PREFIX + "cancel:" + job.job_id)  # a worker that takes it after all does not run it


def test_a_forged_started_of_a_worker_with_no_heartbeat_does_not_hold_the_caller(client: Any, url: str,
                                                                               tmp_path: Path) -> None:
    """Anyone with the broker's password can say 'started' for a job: a worker that has no heartbeat
    is a dead one, whose taken list does not hold the job - the caller goes on waiting, bounded."""
    job = a_job(tmp_path, url, Limits(queue_timeout=3, job_timeout=60, retries=1))
    in_background(lambda: client.rpush(PREFIX + "reply:" + job.job_id, farmjob.started("forger-1")))
    data = job._wait_for_result()
    assert (data["status"], data["stage"]) == ("failed", "timeout"), data
    assert "no farm worker took the job" in data["reason"]


def test_a_forged_started_with_a_live_heartbeat_is_stopped_at_the_job_s_deadline(
        client: Any, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(farmcall, "CANCEL_WAIT", 1.0)  # the forger never says it stopped: the caller waits this
    job = a_job(tmp_path, url, Limits(queue_timeout=60, job_timeout=2, retries=1))
    stop = threading.Event()

    def forger() -> None:
        take(client, "forger-2")
        while not stop.is_set():
            client.set(PREFIX + "alive:forger-2", "1", ex=3)
            time.sleep(0.2)

    in_background(forger)
    try:
        started = time.monotonic()
        data = job._wait_for_result()
    finally:
        stop.set()
    assert (data["status"], data["stage"]) == ("failed", "timeout"), data
    assert data["reason"] == "the job ran longer than 2 s on farm worker forger-2 and was stopped (--farm-job-timeout)"
    assert time.monotonic() - started < 60
    assert client.exists(PREFIX + "cancel:" + job.job_id)  # its worker, if real, stops it


def test_a_dead_worker_s_job_is_run_again_by_another_and_the_report_says_so(client: Any, url: str,
                                                                           tmp_path: Path) -> None:
    job = a_job(tmp_path, url, Limits(queue_timeout=30, job_timeout=60, retries=1))

    def workers() -> None:
        take(client, "doomed-1")  # ... and dies: no heartbeat, ever
        raw = take(client, "second-1", timeout=30)
        reply = PREFIX + "reply:" + farmjob.parse_job(raw)["id"]
        client.rpush(reply, farmjob.make_result("passed", 0, "", b"ok\n", "second-1"))

    in_background(workers)
    data = job._wait_for_result()
    assert (data["status"], data["lost"], data["worker"]) == ("passed", ["doomed-1"], "second-1"), data
    job.report.write_text(json.dumps(data))
    job.finish(0, False)
    assert (job.result.status, job.result.stage) == ("passed", None)
    assert job.result.reason == "retried 1 time: farm worker doomed-1 stopped answering"
    assert (tmp_path / "e.log").read_text() == "ok\n"


def test_a_job_lost_past_its_retries_fails_in_one_line_naming_the_dead_worker(client: Any, url: str,
                                                                             tmp_path: Path) -> None:
    job = a_job(tmp_path, url, Limits(queue_timeout=30, job_timeout=60, retries=1))

    def workers() -> None:
        take(client, "doomed-2")
        take(client, "doomed-3", timeout=30)

    in_background(workers)
    data = job._wait_for_result()
    job.report.write_text(json.dumps(data))
    job.finish(0, False)
    result = job.result
    assert (result.status, result.stage, result.exit_code) == ("failed", "lost", 125)
    assert result.reason == ("farm worker doomed-3 stopped answering mid-job (no heartbeat for 3s); the job was lost "
                             "2 times (--farm-retries 1): run it again")
    assert "\n" not in result.reason and client.llen(QUEUE) == 0


# --- a worker's job directories ------------------------------------------------------------------


def test_a_job_id_run_twice_on_one_worker_gets_a_directory_of_its_own(tmp_path: Path) -> None:
    with farmreap.job_dir(tmp_path, "c" * 32) as first, farmreap.job_dir(tmp_path, "c" * 32) as second:
        assert (first.name, second.name) == ("c" * 32, "c" * 32 + ".2")


def test_a_worker_keeps_its_newest_job_directories_and_never_one_a_job_runs_in(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    made = []
    with contextlib.ExitStack() as running:
        for number in range(5):
            path = running.enter_context(farmreap.job_dir(jobs, f"{number:032x}")) if number == 0 else \
                jobs / f"{number:032x}"
            path.mkdir(exist_ok=True)
            (path / "e.log").write_text("log")
            (path / "escape").symlink_to(outside)  # a job's directory is a build's: never followed
            os.utime(path, (1000 + number, 1000 + number))
            made.append(path)
        (jobs / "link").symlink_to(outside)
        assert sorted(farmreap.prune(jobs, 2)) == made[1:3]  # made[0], the oldest, runs still
        assert sorted(p.name for p in jobs.iterdir()) == sorted([made[0].name, made[3].name, made[4].name, "link"])
    assert sorted(farmreap.prune(jobs, 0)) == [made[0], made[3], made[4]]  # its job ended (or its slot was killed)
    assert sorted(p.name for p in jobs.iterdir()) == ["link"] and (outside / "precious").read_text() == "x"
