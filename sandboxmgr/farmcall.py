"""A farm's caller: each matrix entry is a job message on the broker's queue, waited for by a
process of its own (runner.fork_job), so the runner's -j, --fail-fast, signals, live view and
reports work as for a local matrix. The wait is bounded (farmreap.Limits): a job no worker
takes fails at stage ``timeout``, as does one that runs too long (its worker is told to stop
it); a job whose worker's heartbeat runs out is reaped (farmreap.reap): run again on another
worker, at most ``--farm-retries`` times, then failed with one line naming the dead worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandboxmgr import farmjob, farmreap
from sandboxmgr.errors import EXIT_MANAGER
from sandboxmgr.farm import CANCEL_WAIT, HEARTBEAT_TTL, PREFIX, REPLY_TTL, connect
from sandboxmgr.farmreap import Limits
from sandboxmgr.matrix import Result
from sandboxmgr.runner import Stopped, fork_job, read_report


class FarmJob:
    """One matrix entry sent to the farm (runner.Job): a local process hands it to the broker,
    waits for its result (bounded: :class:`~sandboxmgr.farmreap.Limits`), and reports it as a
    local worker would."""

    def __init__(self, url: str, queue: str, message: bytes, job_id: str, result: Any, report: Path,
                 limits: Limits) -> None:
        self.url, self.queue, self.message, self.job_id = url, queue, message, job_id
        self.result, self.report, self.limits = result, report, limits

    def start(self) -> int:
        return fork_job(self._wait_for_result, self.report)

    def _wait_for_result(self) -> dict[str, Any]:
        client = connect(self.url)
        return self.received(client, self._wait(client))

    def received(self, _client: Any, data: dict[str, Any]) -> dict[str, Any]:
        """What the waiter reports of the job's end (a package build's receives its files here)."""
        return data

    def _wait(self, client: Any) -> dict[str, Any]:
        reply, limits = PREFIX + "reply:" + self.job_id, self.limits
        worker: str | None = None
        queued, running = time.monotonic(), None  # since when it waits in the queue, runs on a worker
        lost: list[str] = []  # dead workers it was taken back from
        try:
            client.lpush(PREFIX + "queue:" + self.queue, self.message)
            while True:
                popped = client.blpop([reply], timeout=1)
                if popped is not None:
                    data = farmjob.parse_reply(popped[1])
                    if data["event"] == "done":
                        return {**data, "lost": lost}
                    worker, running = data["worker"], running or time.monotonic()
                # Not `continue` after a reply: the clocks below are read after every one (a forger's
                # stream of 'started' held the wait past its deadlines).
                elif worker is not None and not client.exists(PREFIX + "alive:" + worker):
                    count = farmreap.reap(client, worker, self.queue, self.message, self.job_id, limits.retries)
                    if count > limits.retries:
                        return _lost(worker, lost, limits.retries)
                    if count > 0:  # back at the head of the queue: its clocks start again
                        lost.append(worker)
                        queued = time.monotonic()
                    if count != farmreap.ALIVE:  # requeued, or that slot never had it (a forged 'started')
                        worker, running = None, None
                elapsed = time.monotonic() - (queued if running is None else running)
                if running is None and elapsed > limits.queue_timeout:
                    return self._timed_out(worker, f"no farm worker took the job in {limits.queue_timeout:g} s "
                                                   f"(queue {self.queue!r}, --farm-timeout): are its workers running?",
                                           lost)
                if running is not None and elapsed > limits.job_timeout:
                    return self._timed_out(worker, f"the job ran longer than {limits.job_timeout:g} s on farm worker "
                                                   f"{worker} and was stopped (--farm-job-timeout)", lost)
        except (Stopped, farmjob.MessageError):  # a forged reply: the job must not run on for nobody
            self._cancel(worker)
            raise

    def _timed_out(self, worker: str | None, reason: str, lost: list[str]) -> dict[str, Any]:
        """The job's failure at stage ``timeout``, once its worker has stopped it (or, not taken, it is
        off the queue; a worker that takes it after all finds it cancelled)."""
        log = self._cancel(worker)
        return {"status": "failed", "exit_code": None, "log": log, "worker": worker or "", "reason": reason,
                "stage": "timeout", "lost": lost}

    def _cancel(self, worker: str | None) -> str:
        """Take the job back from the queue, or tell its worker to stop it and wait (bounded) until it
        has; the log that came back, if any."""
        client = connect(self.url)  # afresh: the signal may have cut the other one mid-reply
        client.set(PREFIX + "cancel:" + self.job_id, "1", ex=REPLY_TTL)
        if client.lrem(PREFIX + "queue:" + self.queue, 1, self.message):
            return ""
        deadline = time.monotonic() + CANCEL_WAIT
        while time.monotonic() < deadline:
            popped = client.blpop([PREFIX + "reply:" + self.job_id], timeout=1)
            if popped is not None:
                try:
                    data = farmjob.parse_reply(popped[1])
                except farmjob.MessageError:  # a forger's: the worker's may follow
                    continue
                if data["event"] == "done":
                    return str(data["log"])
            if worker is not None and not client.exists(PREFIX + "alive:" + worker):
                return ""
        return ""

    def finish(self, status: int, stopped: bool) -> None:
        result = self.result
        data = read_report(self.report)
        if data is None:
            result.status = "cancelled" if stopped else "failed"
            if result.status == "failed":
                result.reason = "the farm job's waiter ended without a result (see the messages above)"
            return
        assert result.log is not None
        result.log.write_text(data["log"])
        result.exit_code = data["exit_code"]
        result.status = data["status"]
        result.reason = data["reason"]
        result.stage = data.get("stage")
        if data["lost"] and result.stage != "lost":  # a lost one's reason says it already
            result.reason = retried(result.reason, data["lost"])
        if result.status == "failed" and data["exit_code"] is None:
            result.exit_code = EXIT_MANAGER  # lost or refused: no command status


def _lost(worker: str, lost: list[str], retries: int) -> dict[str, Any]:
    runs = len(lost) + 1
    return {"status": "failed", "exit_code": None, "log": "", "worker": worker, "stage": "lost", "lost": lost,
            "reason": f"farm worker {worker} stopped answering mid-job (no heartbeat for {HEARTBEAT_TTL}s); "
                      f"the job was lost {runs} time{'s' if runs > 1 else ''} (--farm-retries {retries}): run it again"}


def retried(reason: str, lost: list[str]) -> str:
    said = f"retried {len(lost)} time{'s' if len(lost) > 1 else ''}: farm worker {', '.join(lost)} stopped answering"
    return f"{reason} ({said})" if reason else said


def submit(url: str, queue: str, entries: list[tuple[str, str]], project_root: Path, command: tuple[str, ...],
           env: dict[str, str], workdir: str, logs: Path, jobs: int, fail_fast: bool,
           view: Callable[[list[Any]], None], limits: Limits) -> list[Result]:
    """Run ``command`` for every (entry name, profile name) on the farm; the results, as matrix.run's."""
    from sandboxmgr.runner import run_jobs

    connect(url)  # a wrong URL or password is said once, before any job starts
    source = farmjob.pack(project_root)
    logs.mkdir(parents=True, exist_ok=True)
    work = []
    for name, profile in entries:
        job_id = os.urandom(16).hex()
        message = farmjob.make_job(job_id, profile, command, env, workdir, source)
        result = Result(name, profile, log=logs / f"{name}.log")
        work.append(FarmJob(url, queue, message, job_id, result, logs / f".{name}.farm.json", limits))
    run_jobs(work, jobs, fail_fast, view)
    return [job.result for job in work]
