"""`sandboxmgr farm worker` and `matrix --farm`: a redis-server on a free loopback port, two worker
processes with their own stores and profile directories, a caller with a third."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CLI, ConcurrentBuild, missing

pytestmark = [pytest.mark.root, pytest.mark.network]

CHECK = """\
. /etc/os-release
echo "ok on $ID $GREETING"
if [ -n "$BROKEN" ]; then echo "broken on purpose"; exit 5; fi
"""
# A second profile over the same image (its layers are the session's debian-bookworm's).
OTHER = ("farm-broken", "extends: debian-bookworm\nenv: {BROKEN: '1'}\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server on loopback, with a password, killed at the end."""
    if shutil.which("redis-server") is None:
        missing("no redis-server (make deps installs it)")
    port, password = free_port(), os.urandom(8).hex()
    log = tmp_path_factory.mktemp("redis") / "redis.log"
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password,
                             "--save", "", "--appendonly", "no"], stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield f"redis://:{password}@127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


def own_store(root: Path, session_store: Path) -> CLI:
    """A store and profile directory of its own, its images those of the session (hard links: cheap)."""
    store, configs = root / "store", root / "configs"
    store.mkdir(parents=True)
    configs.mkdir()
    for part in ("layers", "images"):
        subprocess.run(["cp", "-al", str(session_store / part), str(store / part)], check=True)
    (configs / f"{OTHER[0]}.yaml").write_text(OTHER[1])
    return CLI(store, configs)


@dataclass
class Worker:
    cli: CLI
    proc: subprocess.Popen[str]
    log: Path

    def said(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def start_worker(root: Path, session_store: Path, url: str, *options: str) -> Worker:
    cli = own_store(root, session_store)
    log = root / "worker.log"
    proc = subprocess.Popen(cli.argv("farm", "worker", "--broker", url, *options), stdin=subprocess.DEVNULL,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while "taking jobs" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return Worker(cli, proc, log)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory, broker: str, bookworm: ConcurrentBuild,
            cli: CLI) -> Iterator[list[Worker]]:
    started = [start_worker(tmp_path_factory.mktemp(f"worker{n}"), cli.store, broker) for n in (1, 2)]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture(scope="module")
def caller(tmp_path_factory: pytest.TempPathFactory, cli: CLI, bookworm: ConcurrentBuild) -> CLI:
    return own_store(tmp_path_factory.mktemp("caller"), cli.store)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("farmproject")
    (root / "check.sh").write_text(CHECK)
    (root / "sandboxmgr.yaml").write_text(
        f"profiles: [debian-bookworm, {OTHER[0]}]\ncommand: sh check.sh\nenv: {{GREETING: hello}}\n")
    return root


def test_a_matrix_on_the_farm_reports_as_a_local_one(workers: list[Worker], caller: CLI, broker: str,
                                                    project: Path, tmp_path: Path) -> None:
    farmed = caller("matrix", "-C", str(project), "-j", "2", "--json", "--junit", str(tmp_path / "farm.xml"),
                    "--farm", broker, timeout=300)
    local = caller("matrix", "-C", str(project), "-j", "2", "--json", timeout=300)
    assert (farmed.code, local.code) == (1, 1), f"{farmed}\n{local}"
    remote_results, local_results = json.loads(farmed.out), json.loads(local.out)
    shape = [(r["name"], r["status"], r["exit_code"], sorted(r)) for r in local_results]
    assert [(r["name"], r["status"], r["exit_code"], sorted(r)) for r in remote_results] == shape
    assert shape[1][1:3] == ("failed", 5)  # the failing command's status came back
    broken = remote_results[1]
    assert broken["reason"] == "broken on purpose"
    assert Path(broken["log"]).read_text() == "ok on debian hello\nbroken on purpose\n"
    assert "[farm-broken] failed" in farmed.err  # the live view's lines, as local
    # Each worker took one of the two jobs, in its own store.
    for worker in workers:
        assert worker.said().count("sh check.sh") == 1, worker.said()
        assert any((worker.cli.store / "logs" / "farm").rglob("*.log"))
    (case_ok, case_failed) = ElementTree.parse(tmp_path / "farm.xml").getroot().iter("testcase")
    assert case_ok.find("failure") is None
    failure = case_failed.find("failure")
    assert failure is not None and failure.get("type") == "exit-status" and "broken on purpose" in (failure.text or "")


def test_a_hostile_message_is_refused_in_one_line_and_the_worker_goes_on(workers: list[Worker], caller: CLI,
                                                                        broker: str, project: Path) -> None:
    import pickle

    import redis

    client = redis.Redis.from_url(broker)
    client.lpush("sandboxmgr:farm:queue:default", pickle.dumps({"id": "x"}))
    client.lpush("sandboxmgr:farm:queue:default", json.dumps({"v": 1, "id": "0" * 32, "kind": "matrix",
                                                               "profile": "/etc/passwd"}).encode())
    client.lpush("sandboxmgr:farm:queue:default", b"[" * 100_000)  # a RecursionError stopped its slot
    deadline = time.monotonic() + 10
    while sum(w.said().count("refused a message") for w in workers) < 3:
        assert time.monotonic() < deadline, [w.said() for w in workers]
        time.sleep(0.2)
    said = "".join(w.said() for w in workers)
    assert "refused a message: message is not JSON" in said
    assert "refused a message: message fields are wrong" in said
    assert "refused a message: message is not JSON: nested too deep" in said and "stopped" not in said
    # The refused message's caller (its id is well formed) hears why instead of waiting.
    reply = client.blpop(["sandboxmgr:farm:reply:" + "0" * 32], timeout=10)
    assert reply is not None and b"refused by farm worker" in reply[1]
    result = caller("matrix", "-C", str(project), "-p", "debian-bookworm", "--farm", broker, timeout=300)
    assert result.code == 0, str(result)


def run_until_taken(caller: CLI, project: Path, broker: str, workers: list[Worker], marker: str,
                    *options: str) -> subprocess.Popen[str]:
    proc = caller.popen("matrix", "-C", str(project), "-p", "debian-bookworm", "--farm", broker, *options,
                        "--", "sh", "-c", f"echo {marker}; sleep 300")
    deadline = time.monotonic() + 120
    while not any(marker in w.said() for w in workers):
        assert proc.poll() is None and time.monotonic() < deadline, [w.said() for w in workers]
        time.sleep(0.2)
    time.sleep(2)  # the sandbox's command has started
    return proc


def test_ctrl_c_of_the_caller_cancels_the_job_on_its_worker(workers: list[Worker], caller: CLI, broker: str,
                                                           project: Path) -> None:
    proc = run_until_taken(caller, project, broker, workers, "cancel-me")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled" in out
    # The worker stopped it: both are free for the next jobs at once.
    result = caller("matrix", "-C", str(project), "-j", "2", "--farm", broker, timeout=120)
    assert result.code == 1 and "exit 5" in result.err, str(result)
    assert subprocess.run(["pgrep", "-f", "echo cancel-me; sleep"], capture_output=True).returncode == 1


def test_a_worker_killed_mid_job_fails_the_job_in_one_line(tmp_path: Path, cli: CLI, bookworm: ConcurrentBuild,
                                                           broker: str, caller: CLI, project: Path) -> None:
    worker = start_worker(tmp_path / "doomed", cli.store, broker, "--queue", "doomed")
    try:
        proc = run_until_taken(caller, project, broker, [worker], "kill-my-worker", "--queue", "doomed",
                               "--farm-retries", "0")
        worker.proc.kill()  # SIGKILL: no goodbye on the broker
        out, err = proc.communicate(timeout=60)
    finally:
        worker.stop()
    assert proc.returncode == 1, err
    lines = [line for line in out.splitlines() if "stopped answering mid-job" in line]
    assert len(lines) == 1 and "the job was lost 1 time (--farm-retries 0): run it again" in lines[0], out
    deadline = time.monotonic() + 30  # the job's own process stops its sandbox after its slot died
    while subprocess.run(["pgrep", "-f", "echo kill-my-worker; sleep"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the killed worker's job still runs"
        time.sleep(0.5)


def test_a_profile_the_worker_does_not_have_fails_its_job_with_the_worker_s_reason(
        workers: list[Worker], caller: CLI, broker: str, project: Path) -> None:
    # The caller's profile directory has it; no worker's has: a worker runs only its own profiles.
    (Path(str(caller.configs)) / "caller-only.yaml").write_text("extends: debian-bookworm\n")
    result = caller("matrix", "-C", str(project), "-p", "caller-only", "--json", "--farm", broker, timeout=120)
    assert result.code == 1, str(result)
    (entry,) = json.loads(result.out)
    assert (entry["status"], entry["exit_code"]) == ("failed", 125)
    assert entry["reason"] == "this farm worker has no profile 'caller-only' in its profile directories"


def test_ctrl_c_takes_a_job_no_worker_took_back_off_the_queue(caller: CLI, broker: str, project: Path) -> None:
    import redis

    proc = caller.popen("matrix", "-C", str(project), "-p", "debian-bookworm", "--farm", broker, "--queue", "nobody")
    client = redis.Redis.from_url(broker)
    deadline = time.monotonic() + 30
    while not client.llen("sandboxmgr:farm:queue:nobody"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert client.llen("sandboxmgr:farm:queue:nobody") == 0


def test_with_farm_every_profile_is_out_at_once_by_default(tmp_path: Path, cli: CLI, bookworm: ConcurrentBuild,
                                                           broker: str, caller: CLI, project: Path) -> None:
    """Not -j CPUs (2 here): a farm's width is its workers', so 3 entries go to a 3-slot worker at once."""
    worker = start_worker(tmp_path / "wide", cli.store, broker, "--queue", "wide", "--concurrency", "3")
    third = "extends: debian-bookworm\n"
    for configs in (Path(str(caller.configs)), Path(str(worker.cli.configs))):
        (configs / "farm-third.yaml").write_text(third)
    try:
        proc = caller.popen("matrix", "-C", str(project), "-p", "debian-bookworm", "-p", OTHER[0], "-p", "farm-third",
                            "--farm", broker, "--queue", "wide", "--", "sh", "-c", "echo wide-job; sleep 300")
        deadline = time.monotonic() + 60
        while worker.said().count("wide-job") < 3:
            assert proc.poll() is None and time.monotonic() < deadline, worker.said()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        assert proc.returncode == 130
    finally:
        worker.stop()


def test_a_worker_stopped_mid_job_fails_the_job_rather_than_cancelling_it(
        tmp_path: Path, cli: CLI, bookworm: ConcurrentBuild, broker: str, caller: CLI, project: Path) -> None:
    """SIGTERM to a worker (its service stopped): it stops its job's sandbox and says so; the
    caller, who cancelled nothing, sees a failure (exit 1), not an interruption (130)."""
    worker = start_worker(tmp_path / "stopped", cli.store, broker, "--queue", "stopped")
    try:
        proc = run_until_taken(caller, project, broker, [worker], "stop-my-worker", "--queue", "stopped")
        worker.proc.terminate()
        out, err = proc.communicate(timeout=60)
        assert worker.proc.wait(timeout=60) == 0
    finally:
        worker.stop()
    assert proc.returncode == 1, err
    assert len([line for line in out.splitlines() if "was stopped mid-job: run it again" in line]) == 1, out
    assert subprocess.run(["pgrep", "-f", "echo stop-my-worker; sleep"], capture_output=True).returncode == 1


def test_a_worker_killed_mid_job_has_its_job_run_again_by_another(tmp_path: Path, cli: CLI, bookworm: ConcurrentBuild,
                                                                  broker: str, caller: CLI, project: Path) -> None:
    """SIGKILL of a worker mid-job: its caller reaps the job (its heartbeat ran out) and puts it back on
    the queue; a second worker runs it to the end, and the report says it was retried. That worker
    keeps only its newest --keep-logs job directories."""
    doomed = start_worker(tmp_path / "doomed", cli.store, broker, "--queue", "retry")
    second = None
    try:
        command = "echo retry-me; sleep 3; echo finished"
        proc = caller.popen("matrix", "-C", str(project), "-p", "debian-bookworm", "--json", "--farm", broker,
                            "--queue", "retry", "--", "sh", "-c", command)
        deadline = time.monotonic() + 120
        while "retry-me" not in doomed.said():
            assert proc.poll() is None and time.monotonic() < deadline, doomed.said()
            time.sleep(0.2)
        doomed.proc.kill()  # SIGKILL: no goodbye on the broker
        second = start_worker(tmp_path / "second", cli.store, broker, "--queue", "retry", "--keep-logs", "1")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        (entry,) = json.loads(out)
        assert (entry["status"], entry["exit_code"], entry["stage"]) == ("passed", 0, None)
        slot = doomed.said().split("farm worker ", 1)[1].split(":")[0]  # the line of its job: "farm worker SLOT: ..."
        assert entry["reason"] == f"retried 1 time: farm worker {slot} stopped answering", (entry, doomed.said())
        assert Path(entry["log"]).read_text() == "retry-me\nfinished\n"
        assert "retry-me" in second.said()
        again = caller("matrix", "-C", str(project), "-p", "debian-bookworm", "--farm", broker, "--queue", "retry",
                       timeout=120)
        assert again.code == 0, str(again)
        deadline = time.monotonic() + 10  # pruned by its slot once it has replied
        while len(list((second.cli.store / "logs" / "farm").iterdir())) != 1:  # --keep-logs 1
            assert time.monotonic() < deadline, list((second.cli.store / "logs" / "farm").iterdir())
            time.sleep(0.2)
    finally:
        doomed.stop()
        if second is not None:
            second.stop()
    assert subprocess.run(["pgrep", "-f", "echo retry-me; sleep"], capture_output=True).returncode == 1


def test_a_job_no_worker_takes_fails_at_stage_timeout(caller: CLI, broker: str, project: Path, tmp_path: Path) -> None:
    result = caller("matrix", "-C", str(project), "-p", "debian-bookworm", "--json", "--junit", str(tmp_path / "t.xml"),
                    "--farm", broker, "--queue", "idle", "--farm-timeout", "2", timeout=60)
    assert result.code == 1, str(result)
    (entry,) = json.loads(result.out)
    assert (entry["status"], entry["stage"], entry["exit_code"]) == ("failed", "timeout", 125)
    assert entry["reason"] == ("no farm worker took the job in 2 s (queue 'idle', --farm-timeout): "
                               "are its workers running?")
    (case,) = ElementTree.parse(tmp_path / "t.xml").getroot().iter("testcase")
    failure = case.find("failure")
    assert failure is not None and failure.get("type") == "timeout"


def test_a_job_past_its_deadline_is_stopped_on_its_worker(workers: list[Worker], caller: CLI, broker: str,
                                                          project: Path) -> None:
    result = caller("matrix", "-C", str(project), "-p", "debian-bookworm", "--json", "--farm", broker,
                    "--farm-job-timeout", "5", "--", "sh", "-c", "echo too-long; sleep 300", timeout=120)
    assert result.code == 1, str(result)
    (entry,) = json.loads(result.out)
    assert (entry["status"], entry["stage"]) == ("failed", "timeout"), entry
    assert entry["reason"].startswith("the job ran longer than 5 s on farm worker ")
    assert subprocess.run(["pgrep", "-f", "echo too-long; sleep"], capture_output=True).returncode == 1


def test_a_package_build_on_the_farm_reports_as_a_local_one(workers: list[Worker], caller: CLI, broker: str,
                                                            tmp_path: Path) -> None:
    """package build --farm: each worker builds with its own profile and store; the results come back
    into --results DIR/PROFILE/, and the report (JSON, JUnit, exit status) is a local build's."""
    from tests.integration.test_package import source

    for name, build, code in (("sm-farmed", "true", 0), ("sm-farm-broken", "false", 1)):
        tree = source(tmp_path, name, build=build)
        rows = []
        for where, farm in (("farm", ("--farm", broker)), ("local", ())):
            result = caller("package", "build", str(tree), "-p", "debian-bookworm", "--results", str(tmp_path / where),
                            "--json", "--junit", str(tmp_path / f"{where}.xml"), *farm, timeout=900)
            assert result.code == code, str(result)
            (row,) = json.loads(result.out)
            rows.append(row)
        farmed, local = rows
        for row in rows:
            row.pop("duration")
            for key in ("results", "log"):
                row[key] = str(Path(row[key]).relative_to(tmp_path / ("farm" if row is farmed else "local")))
        assert farmed == local, (farmed, local)
        out, here = tmp_path / "farm" / "debian-bookworm", tmp_path / "local" / "debian-bookworm"
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in here.iterdir())
        if code == 0:
            assert (out / f"{name}_1.0-1_amd64.deb").stat().st_size > 0
        types = [[f.get("type") for f in ElementTree.parse(tmp_path / f"{where}.xml").getroot().iter("failure")]
                 for where in ("farm", "local")]
        assert types[0] == types[1] == ([] if code == 0 else ["build"])
