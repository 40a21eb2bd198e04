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
5. --farm-timeout nan (or --farm-job-timeout nan, --timeout nan) never timed out;
6. a reply the caller could not read ended its wait and left the job on the queue, to run for
   nobody; the same junk cut a cancel short;
7. a job's report (--results DIR/PROFILE/.outcome.json) was written through a link planted in
   its place while the job ran;
8. a worker's file upload cut midway (the broker full) left its chunks in the broker for ever.

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


def a_dsc(directory: Path, *files: str) -> Path:
    """A .dsc in ``directory`` whose Files field names ``files``."""
    directory.mkdir(parents=True, exist_ok=True)
    dsc = directory / "hello_1.0-1.dsc"
    listed = "".join(f" 0123456789abcdef0123456789abcdef 1 {name}\n" for name in files)
    dsc.write_text(f"Format: 3.0 (quilt)\nSource: hello\nVersion: 1.0-1\nFiles:\n{listed}")
    return dsc


def packed(tar: bytes) -> dict[str, bytes]:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:gz") as archive:
        return {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["link-to-secret", "link-to-device", "device", "nul"])
def test_a_dsc_s_files_that_are_links_or_devices_are_refused_not_read(tmp_path: Path, kind: str) -> None:
    """Hole 2: pack_source copied each file a .dsc names with shutil.copyfile(follow_symlinks=True):
    a downloaded source whose hello_1.0.orig.tar.gz is a link to /etc/shadow had root's secret read
    and sent to the broker (a local build copies the link as a link, into its sandbox), a link to
    /dev/zero was read until /tmp was full; a NUL in a name was a ValueError (an internal error)."""
    from sandboxmgr.errors import SandboxError
    from sandboxmgr.farmpackage import pack_source
    from sandboxmgr.pkgsource import read_source

    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$6$secret\n")
    secret.chmod(0o600)
    name = "hello_1.0.orig.tar.gz" if kind != "nul" else "hello_1.0.orig\0.tar.gz"
    dsc = a_dsc(tmp_path / "downloads", name)
    if kind == "link-to-secret":
        (dsc.parent / name).symlink_to(secret)
    elif kind == "link-to-device":
        (dsc.parent / name).symlink_to("/dev/null")  # /dev/zero's case, that never ends
    elif kind == "device":
        os.mknod(dsc.parent / name, 0o600 | 0o020000, os.makedev(1, 3))  # a character device: /dev/null's
    tar = b""
    with pytest.raises(SandboxError) as caught:
        tar, _path = pack_source(read_source(dsc))
    assert b"secret" not in tar
    assert "\n" not in caught.value.message and "hello_1.0.orig" in caught.value.message


def test_a_dsc_with_its_files_beside_it_is_packed_whole(tmp_path: Path) -> None:
    from sandboxmgr.farmpackage import pack_source
    from sandboxmgr.pkgsource import read_source

    dsc = a_dsc(tmp_path / "src", "hello_1.0.orig.tar.gz", "hello_1.0-1.debian.tar.xz")
    (dsc.parent / "hello_1.0.orig.tar.gz").write_bytes(b"orig")
    (dsc.parent / "hello_1.0-1.debian.tar.xz").write_bytes(b"debian")
    (dsc.parent / "unrelated.txt").write_bytes(b"not sent")
    tar, path = pack_source(read_source(dsc))
    assert path == "hello_1.0-1.dsc"
    assert packed(tar) == {"./hello_1.0-1.dsc": dsc.read_bytes(), "./hello_1.0.orig.tar.gz": b"orig",
                           "./hello_1.0-1.debian.tar.xz": b"debian"}


def entry(name: str, data: bytes) -> dict[str, Any]:
    import hashlib

    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("kind", ["list", "hash", "set"])
def test_a_forged_file_of_another_redis_type_is_refused_in_one_line(client: Any, tmp_path: Path,  # noqa: F811
                                                                    kind: str) -> None:
    """Hole 3: the caller asked the broker for a file's length (STRLEN) and bytes (GETRANGE): a forger's
    files:JOB:0 made a list, a hash or a set was redis' ResponseError (WRONGTYPE), an internal error of
    the caller's waiter, which ended without a result."""
    from sandboxmgr import farmresults
    from sandboxmgr.farmjob import MessageError

    key = f"{PREFIX}files:{JOB}:0"
    {"list": lambda: client.rpush(key, b"x"), "hash": lambda: client.hset(key, "a", b"x"),
     "set": lambda: client.sadd(key, b"x")}[kind]()
    dest = tmp_path / "results" / "p"
    dest.mkdir(parents=True)
    with pytest.raises(MessageError, match=r"hello_1\.0_amd64\.deb"):
        farmresults.receive(client, JOB, [entry("hello_1.0_amd64.deb", b"x")], dest)
    assert list(dest.iterdir()) == [] and not client.exists(key)


def test_a_results_directory_replaced_by_a_link_is_one_line_and_not_followed(client: Any,  # noqa: F811
                                                                             tmp_path: Path) -> None:
    """Hole 3 too: --results DIR/PROFILE made a link (or removed) while the job ran was an OSError
    (ELOOP), an internal error of the caller's waiter; the link is not followed."""
    from sandboxmgr import farmresults
    from sandboxmgr.errors import SandboxError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "p").symlink_to(elsewhere)
    client.set(f"{PREFIX}files:{JOB}:0", b"x")
    with pytest.raises(SandboxError, match="cannot write the farm's results"):
        farmresults.receive(client, JOB, [entry("hello_1.0_amd64.deb", b"x")], tmp_path / "results" / "p")
    assert list(elsewhere.iterdir()) == []


def test_a_result_refused_midway_leaves_none_of_its_files(client: Any, tmp_path: Path) -> None:  # noqa: F811
    """Hole 4: the files received before a refused one stayed in --results DIR/PROFILE, a build's
    half (a .deb without its .changes) beside an earlier build's, for package test to take."""
    from sandboxmgr import farmresults
    from sandboxmgr.farmjob import MessageError

    dest = tmp_path / "results" / "p"
    dest.mkdir(parents=True)
    client.set(f"{PREFIX}files:{JOB}:0", b"good")
    client.set(f"{PREFIX}files:{JOB}:1", b"evil")
    manifest = [entry("hello_1.0_amd64.deb", b"good"), entry("hello_1.0_amd64.changes", b"good")]
    with pytest.raises(MessageError, match="not the file its manifest describes"):
        farmresults.receive(client, JOB, manifest, dest)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("there", ["dangling-link", "earlier-log"])
def test_the_log_of_a_farm_build_is_its_own_and_never_written_through_a_link(client: Any, url: str,  # noqa: F811
                                                                             tmp_path: Path, there: str) -> None:
    """Hole 4 too: the caller wrote the reply's log to DIR/PROFILE/build.log unless something was
    there - exists() is False for a dangling link, which write_text followed (root writing the
    worker's text wherever the link led); an earlier build's log stayed as this one's."""
    from sandboxmgr.farmpackage import PackageFarmJob
    from sandboxmgr.package import PackageResult

    dest = tmp_path / "results" / "p"
    dest.mkdir(parents=True)
    planted = tmp_path / "planted"
    if there == "dangling-link":
        (dest / "build.log").symlink_to(planted)
    else:
        (dest / "build.log").write_text("an earlier build's log\n")
    job = PackageFarmJob(url, "attacks", b"", JOB, PackageResult("p", "p"), dest, Limits())
    data: dict[str, Any] = {"event": "done", "status": "failed", "exit_code": None, "reason": "refused",
                            "log": "this build's log\n", "worker": "w-1-0",
                            "package": {"stage": "farm", "packages": []}, "files": [], "lost": []}
    report = job.received(client, data)
    assert report["stage"] == "farm"
    assert not planted.exists()
    assert not (dest / "build.log").is_symlink() and (dest / "build.log").read_text() == "this build's log\n"


@pytest.mark.parametrize("argv", [
    ["matrix", "--farm", "redis://:x@127.0.0.1:1/0", "--farm-timeout", "nan", "--", "true"],
    ["matrix", "--farm", "redis://:x@127.0.0.1:1/0", "--farm-job-timeout", "NaN", "--", "true"],
    ["package", "build", ".", "-p", "debian-bookworm", "--farm", "redis://:x@127.0.0.1:1/0", "--farm-timeout", "nan"],
    ["package", "build", ".", "-p", "debian-bookworm", "--timeout", "nan"],
], ids=["farm-timeout", "farm-job-timeout", "package-build", "timeout"])
def test_a_timeout_that_is_not_a_number_is_refused_not_an_endless_wait(argv: list[str], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Hole 5: click's FloatRange takes 'nan' (no comparison refuses it): every deadline check
    (elapsed > nan) was False, and the caller waited for ever - the bound the option promises, gone."""
    from click.testing import CliRunner

    from sandboxmgr.cli import cli

    monkeypatch.chdir(tmp_path)  # '.': no source, were the option taken
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    assert "not a number of seconds" in result.output


def test_a_forged_reply_the_caller_refuses_does_not_leave_its_job_to_run_for_nobody(
        client: Any, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Hole 6: a reply the caller cannot read (anyone with the broker's password can push one) ended
    its wait with the job still on the queue: a worker ran it later for nobody. And the same junk
    met while cancelling cut the cancel short."""
    from sandboxmgr.farmjob import MessageError

    monkeypatch.setattr(farmcall, "CANCEL_WAIT", 1.0)
    job = a_job(tmp_path, url, Limits(queue_timeout=30, job_timeout=30, retries=0))
    client.rpush(PREFIX + "reply:" + job.job_id, b"junk", b"more junk")
    with pytest.raises(MessageError):
        job._wait_for_result()
    assert client.exists(PREFIX + "cancel:" + job.job_id)
    assert client.llen(PREFIX + "queue:attacks") == 0
    # A job a worker runs: the caller's cancel reads past a forger's junk to the worker's last word.
    client.set(PREFIX + "alive:w-1-0", "1", ex=30)
    last = farmjob.make_result("cancelled", None, "", b"its log", "w-1-0")
    client.rpush(PREFIX + "reply:" + job.job_id, b"junk", last)
    assert job._cancel("w-1-0") == "its log"


def test_a_job_s_report_is_never_written_through_a_link_planted_in_its_place(tmp_path: Path) -> None:
    """Hole 7: a job's report (``--results DIR/PROFILE/.outcome.json`` of package build, with --farm
    or not) was removed before the job and written after it with write_text: a link planted there
    meanwhile (a --results DIR another user can write) was followed, root writing wherever it led."""
    from sandboxmgr.runner import fork_job, read_report

    target = tmp_path / "target"
    report = tmp_path / "results" / ".outcome.json"
    report.parent.mkdir()

    def body() -> dict[str, Any]:
        report.symlink_to(target)  # the racer's link, in place before the job ends
        return {"owned": True}

    pid = fork_job(body, report)
    os.waitpid(pid, 0)
    assert not target.exists()
    assert read_report(report) is None


def test_a_file_whose_upload_breaks_midway_does_not_stay_in_the_broker_for_ever(client: Any,  # noqa: F811
                                                                                tmp_path: Path) -> None:
    """Hole 8: a worker's file got its expiry only once whole: an upload cut midway (the broker full,
    'OOM command not allowed'; the connection lost) left its chunks in the broker's memory for ever."""
    import redis

    from sandboxmgr import farmresults

    made = tmp_path / "worker"
    made.mkdir()
    (made / "hello_1.0_amd64.deb").write_bytes(b"x" * (3 * farmresults.CHUNK))
    chunks: list[bytes] = []

    class Full:
        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

        def append(self, key: str, chunk: bytes) -> Any:
            if chunks:
                raise redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")
            chunks.append(chunk)
            return client.append(key, chunk)

    with pytest.raises(redis.ResponseError):
        farmresults.send(Full(), JOB, made)
    key = f"{PREFIX}files:{JOB}:0"
    assert client.exists(key) and 0 < client.ttl(key) <= farmresults.FILE_TTL
