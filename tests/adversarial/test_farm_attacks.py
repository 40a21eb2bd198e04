"""The farm's review (issue farm-review): a hostile project, a hostile worker's reply, a hostile
broker URL. Each case is a unit of farmjob's or farm's checks (no broker, no image): the caller
and the worker meet a message only through them."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from sandboxmgr import farm, farmjob
from sandboxmgr.errors import SandboxError
from sandboxmgr.farmjob import MessageError

JOB_ID = "0123456789abcdef0123456789abcdef"


def project_tar(*members: tuple[tarfile.TarInfo, bytes], pax: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT, pax_headers=pax or {}) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def a_file(name: str, data: bytes = b"x", **pax: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.pax_headers = pax
    return info, data


def pax_chain(count: int) -> bytes:
    """``count`` PAX headers before one file (tarfile reads each with a recursion)."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    record = b"18 comment=hello\n"
    header.size = len(record)
    block = header.tobuf(tarfile.USTAR_FORMAT) + record + b"\0" * (512 - len(record))
    body = block * count + a_file("a")[0].tobuf(tarfile.USTAR_FORMAT) + b"x" + b"\0" * 511 + b"\0" * 1024
    return gzip.compress(body)


def test_a_project_with_a_huge_pax_header_is_refused_before_it_is_read_whole(tmp_path: Path) -> None:
    """A PAX header of 4 MiB (tarfile reads it into memory whole: 8 GB from an 8 MB gzip) refuses the job."""
    source = project_tar(a_file("a", comment="y" * (4 << 20)))
    assert len(source) < farmjob.SOURCE_CAP
    with pytest.raises(MessageError, match="PAX header"):
        farmjob.unpack(source, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_project_with_a_chain_of_pax_headers_is_refused_in_one_line(tmp_path: Path) -> None:
    """2000 PAX headers before one entry: tarfile's recursion was a RecursionError, which killed the worker's slot."""
    with pytest.raises(MessageError, match="PAX headers"):
        farmjob.unpack(pax_chain(2000), tmp_path)


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a":' * 100_000])
def test_a_deeply_nested_message_is_refused_not_a_crash_of_the_worker(raw: bytes) -> None:
    """json.loads recurses: a message nested 100000 deep was a RecursionError in the slot, which stopped it
    (one message per slot stopped a whole farm) and left the message on its taken list."""
    with pytest.raises(MessageError, match="nested too deep"):
        farmjob.parse_job(raw)
    assert farmjob.job_id_of(raw) is None


def test_a_deeply_nested_reply_is_refused_not_an_internal_error() -> None:
    with pytest.raises(MessageError):
        farmjob.parse_reply(b"[" * 100_000)


def done(**changes: object) -> bytes:
    reply = {"event": "done", "status": "failed", "exit_code": 1, "reason": "it failed", "log": "", "worker": "w-1-0"}
    reply.update(changes)
    return json.dumps(reply).encode()


@pytest.mark.parametrize("reply", [
    done(reason="\x1b]0;owned\x07\x1b[2J"),
    done(worker="w\x1b[31m"),
    done(worker="w 1"),
    done(exit_code=10**30),
    done(exit_code=-1),
    done(status="passed", exit_code=3),
    json.dumps({"event": "started", "worker": "\x1b[2Jw"}).encode(),
], ids=["escape-in-reason", "escape-in-worker", "space-in-worker", "huge-exit", "negative-exit", "passed-nonzero",
        "escape-in-started"])
def test_a_reply_a_caller_would_print_or_count_wrongly_is_refused(reply: bytes) -> None:
    """A worker's reason and name reach the caller's terminal (the live view, the summary, a reason
    line): control characters there are terminal escapes; an exit code is one of a process's."""
    with pytest.raises(MessageError):
        farmjob.parse_reply(reply)


def test_a_reply_over_its_cap_is_refused_before_it_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 20 MiB (or 1 GB) reply was parsed whole (json.loads: several times its size) before its cap."""
    loads = json.loads
    parsed: list[int] = []

    def counting(raw: bytes | str) -> object:
        parsed.append(len(raw))
        return loads(raw)

    monkeypatch.setattr(json, "loads", counting)
    with pytest.raises(MessageError):
        farmjob.parse_reply(done(log="x" * (20 * farmjob.LOG_CAP)))
    assert parsed == []


@pytest.mark.parametrize("url", ["http://:s3cret@broker:6379/0", "redis://:s3cret@broker:port/0",
                                 "redis://:s3cret@[broker/0"])
def test_a_broker_url_that_is_wrong_is_one_line_without_its_password(url: str) -> None:
    """The wrong-scheme line printed the whole URL with its password; a port that is not a number
    made redacted() raise (ValueError, an internal error) while saying so."""
    with pytest.raises(SandboxError) as caught:
        farm.connect(url)
    assert "s3cret" not in caught.value.message
    assert "s3cret" not in farm.redacted(url)


def test_a_job_s_command_is_shown_on_the_worker_without_its_escapes() -> None:
    """The worker printed a job's command as sent: a hostile caller's escapes reached the worker's terminal."""
    shown = farm.job_line({"profile": "debian-bookworm", "command": ["sh", "-c", "\x1b]0;owned\x07echo"]})
    assert "\x1b" not in shown and "\x07" not in shown
    assert shown.isprintable()



def test_a_reply_whose_log_cannot_be_written_is_refused(tmp_path: Path) -> None:
    """JSON carries a lone surrogate (\\ud800): the caller's write of the log was a UnicodeEncodeError,
    an internal error of the caller's waiter, from a worker's reply."""
    with pytest.raises(MessageError):
        farmjob.parse_reply(done(log="before \ud800 after"))


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0?foo=bar", "redis://127.0.0.1:1/0?connection_class=x",
                                 "rediss://127.0.0.1:1/0?ssl_cert_reqs=none"])
def test_a_broker_url_s_query_reaches_no_client_option(url: str) -> None:
    """redis-py passes a URL's query to its connection as keyword arguments: an unknown one was a
    TypeError (an internal error), and ssl_cert_reqs=none turned a rediss:// URL's TLS checks off."""
    with pytest.raises(SandboxError, match="query"):
        farm.connect(url)


def test_a_worker_reads_only_the_tail_of_a_job_s_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile build's log is as large as it likes: the worker (root) read it whole into memory
    to send its last MiB."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from sandboxmgr import images, matrix
    from sandboxmgr import project as project_file
    from sandboxmgr.matrix import Result

    log = tmp_path / "big.log"
    with log.open("wb") as out:
        out.truncate(64 << 20)
        out.seek(0, 2)
        out.write(b"the end\n")

    @contextmanager
    def temporary(_purpose: str):  # type: ignore[no-untyped-def]
        (tmp_path / "tmp").mkdir()
        yield tmp_path / "tmp"

    store = SimpleNamespace(temporary=temporary, logs_dir=tmp_path / "logs")
    registry = SimpleNamespace(files=lambda: ["p"], aliases=lambda: [])
    monkeypatch.setattr(project_file, "entries", lambda *_args: [SimpleNamespace(profile=None)])
    monkeypatch.setattr(images, "ensure_image", lambda *_args: None)
    monkeypatch.setattr(matrix, "run", lambda *_args: [Result("p", "p", status="failed", exit_code=1, log=log)])
    whole = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        assert self != log, "the whole log was read"
        return whole(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    job = farmjob.parse_job(farmjob.make_job(JOB_ID, "p", ("true",), {}, "/src", project_tar(a_file("a"))))
    outcome = farm.run_matrix_job(store, registry, job, tmp_path / "logs")  # type: ignore[arg-type]
    assert len(outcome["log"]) == farmjob.LOG_CAP
    assert outcome["log"].endswith("the end\n")


def test_a_project_with_a_name_too_deep_is_refused_in_one_line(tmp_path: Path) -> None:
    """A member 2000 levels deep (4000 characters, under PATH_MAX): tarfile makes its directories with
    os.makedirs, a recursion - a RecursionError that stopped the worker's slot."""
    try:
        with pytest.raises(MessageError, match="levels deep"):
            farmjob.unpack(project_tar(a_file("a/" * 2000 + "f")), tmp_path / "src")
        assert not (tmp_path / "src").exists()
    finally:  # without the check, 990 levels are made: pytest's clean-up (shutil.rmtree) recurses too
        subprocess.run(["rm", "-rf", "--one-file-system", str(tmp_path / "src")], check=True)


@pytest.mark.parametrize("field", ["v", "kind"])
def test_a_refusal_quotes_a_hostile_field_s_value_shortly(field: str) -> None:
    """A refusal quoted a wrong version or kind whole: 10 MB of it on one line of the worker's output."""
    message = {"v": 1, "id": JOB_ID, "kind": "matrix", "profile": "p", "command": ["true"], "env": {},
               "workdir": "/src", "source": ""}
    message[field] = "x" * (10 << 20)
    with pytest.raises(MessageError) as caught:
        farmjob.parse_job(json.dumps(message).encode())
    assert len(caught.value.message) < 200


def test_a_junit_report_of_a_log_with_escapes_is_well_formed_xml(tmp_path: Path) -> None:
    """A build's colours (ESC) or a NUL in its log's tail made the --junit report XML no reader takes
    (ElementTree writes them as they are; XML 1.0 has no such characters): from a farm, any worker's build."""
    from xml.etree import ElementTree

    from sandboxmgr.matrix import Result, junit
    from sandboxmgr.project import Project

    log = tmp_path / "b.log"
    log.write_bytes(b"\x1b[31mFAIL\x1b[0m \x00 \x07 end\n")
    results = [Result("b", "p.b", "failed", 2, duration=1.0, log=log, reason="boom")]
    report = junit(results, Project(path=None, root=tmp_path), ("make", "check"))
    failure = ElementTree.fromstring(report.split("?>", 1)[1]).find(".//failure")
    assert failure is not None and failure.text is not None and "FAIL" in failure.text and "end" in failure.text


def test_a_checkout_too_deep_to_pack_is_one_line_on_the_caller(tmp_path: Path) -> None:
    """tarfile's add recurses per level: a project 1100 levels deep was a RecursionError in 'matrix --farm'."""
    deep = tmp_path / "project"
    deep.mkdir()
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    for _level in range(1100):
        os.mkdir("a", dir_fd=fd)
        fd, above = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
        os.close(above)
    os.close(fd)
    try:
        with pytest.raises(SandboxError, match="levels deep"):
            farmjob.pack(deep)
    finally:  # pytest's clean-up (shutil.rmtree) recurses too
        subprocess.run(["rm", "-rf", "--one-file-system", str(deep)], check=True)


def test_a_huge_sparse_file_is_refused_before_it_is_compressed(tmp_path: Path) -> None:
    """A 300 MiB sparse file gzips to under the 8 MiB cap: it was compressed whole and sent, for the
    worker to refuse; the caller refuses what the worker would, before it reads it."""
    project = tmp_path / "project"
    project.mkdir()
    with (project / "hole").open("wb") as out:
        out.truncate(300 << 20)
    with pytest.raises(SandboxError, match="more than"):
        farmjob.pack(project)


def test_a_packed_project_unpacks_as_it_was(tmp_path: Path) -> None:
    """pack walks the project itself now: the same names, in tarfile's order, and a worker unpacks them."""
    project = tmp_path / "project"
    (project / "sub" / "deeper").mkdir(parents=True)
    (project / "top.txt").write_text("top")
    (project / "sub" / "deeper" / "f").write_text("f")
    with tarfile.open(fileobj=io.BytesIO(farmjob.pack(project)), mode="r:gz") as tar:
        names = tar.getnames()
    assert names == [".", "./sub", "./sub/deeper", "./sub/deeper/f", "./top.txt"]
    (tmp_path / "out").mkdir()
    farmjob.unpack(farmjob.pack(project), tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "deeper" / "f").read_text() == "f"
