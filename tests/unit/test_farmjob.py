"""A farm worker believes nothing in a broker message beyond its declared, checked fields (farmjob.py)."""

from __future__ import annotations

import base64
import io
import json
import pickle
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sandboxmgr import farmjob
from sandboxmgr.errors import SandboxError
from sandboxmgr.farm import redacted
from sandboxmgr.farmjob import MessageError, make_job, pack, parse_job, parse_reply, unpack

JOB_ID = "0123456789abcdef0123456789abcdef"


def good(**changes: Any) -> dict[str, Any]:
    message = {"v": 1, "id": JOB_ID, "kind": "matrix", "profile": "debian-bookworm", "command": ["sh", "check.sh"],
               "env": {"GREETING": "hello"}, "workdir": "/src", "source": base64.b64encode(b"").decode()}
    message.update(changes)
    return message


def test_a_job_made_by_a_caller_is_read_back_whole(tmp_path: Path) -> None:
    (tmp_path / "check.sh").write_text("echo ok\n")
    raw = make_job(JOB_ID, "debian-bookworm", ("sh", "check.sh"), {"A": "1"}, "/src", pack(tmp_path))
    job = parse_job(raw)
    assert (job["profile"], job["command"], job["env"], job["workdir"]) == ("debian-bookworm", ["sh", "check.sh"],
                                                                            {"A": "1"}, "/src")
    dest = tmp_path / "out"
    dest.mkdir()
    unpack(job["source"], dest)
    assert (dest / "check.sh").read_text() == "echo ok\n"


@pytest.mark.parametrize(("raw", "said"), [
    (pickle.dumps({"id": JOB_ID}), "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (json.dumps(good(extra="x")).encode(), "unknown: ['extra']"),
    (json.dumps({k: v for k, v in good().items() if k != "env"}).encode(), "missing: ['env']"),
    (json.dumps(good(v=2)).encode(), "version"),
    (json.dumps(good(id="../../x")).encode(), "id"),
    (json.dumps(good(kind="shell")).encode(), "kind"),
    (json.dumps(good(profile="/etc/passwd")).encode(), "profile is not a profile name"),
    (json.dumps(good(profile="../configs/x.yaml")).encode(), "profile is not a profile name"),
    (json.dumps(good(profile={"inline": "x"})).encode(), "profile is not a profile name"),
    (json.dumps(good(command="sh -c 'id'")).encode(), "command"),
    (json.dumps(good(command=[])).encode(), "command"),
    (json.dumps(good(command=["sh", "a\0b"])).encode(), "command"),
    (json.dumps(good(command=["x"] * 257)).encode(), "command"),
    (json.dumps(good(env={"A=B": "c"})).encode(), "env variable"),
    (json.dumps(good(env={"A": 1})).encode(), "env variable"),
    (json.dumps(good(env=["A=1"])).encode(), "env is not a mapping"),
    (json.dumps(good(workdir="src")).encode(), "workdir"),
    (json.dumps(good(workdir="/src/../../etc")).encode(), "workdir"),
    (json.dumps(good(source="not base64!")).encode(), "source is not base64"),
    (json.dumps(good(source=123)).encode(), "source is not a string"),
    (b" " * (farmjob.MESSAGE_CAP + 1), "over the cap"),
])
def test_a_hostile_or_broken_message_is_refused_whole(raw: bytes, said: str) -> None:
    with pytest.raises(MessageError, match=None) as caught:
        parse_job(raw)
    assert said in caught.value.message
    assert "\n" not in caught.value.message


def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "",
           size: int | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if size is None else size
    return info, data


@pytest.mark.parametrize(("source", "said"), [
    (tar_of(member("link", tarfile.SYMTYPE, linkname="/etc/shadow")), "neither a file nor a directory"),
    (tar_of(member("hard", tarfile.LNKTYPE, linkname="/etc/shadow")), "neither a file nor a directory"),
    (tar_of(member("null", tarfile.CHRTYPE)), "neither a file nor a directory"),
    (tar_of(member("fifo", tarfile.FIFOTYPE)), "neither a file nor a directory"),
    (tar_of(member("../escaped", data=b"x")), "outside the project"),
    (tar_of(member("/etc/escaped", data=b"x")), "outside the project"),
    (b"not a tar at all", "not a project archive"),
], ids=["symlink", "hardlink", "device", "fifo", "dotdot", "absolute", "garbage"])
def test_a_hostile_project_archive_is_refused_and_writes_nothing_outside(tmp_path: Path, source: bytes,
                                                                        said: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(MessageError) as caught:
        unpack(source, dest)
    assert said in caught.value.message
    assert not (tmp_path / "escaped").exists()


def test_an_archive_that_unpacks_past_the_cap_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(farmjob, "UNPACKED_CAP", 1000)
    with pytest.raises(MessageError, match="more than 1000 bytes"):
        unpack(tar_of(member("big", data=b"x" * 2000)), tmp_path)


def test_a_project_over_the_cap_is_refused_before_it_is_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(farmjob, "SOURCE_CAP", 10)
    (tmp_path / "f").write_text("data")
    with pytest.raises(SandboxError, match="over the farm's cap"):
        pack(tmp_path)


@pytest.mark.parametrize("raw", [
    b"\x80\x04K\x01.",  # a pickle
    json.dumps({"event": "done", "status": "passed", "exit_code": "0", "reason": "", "log": "",
                "worker": "w"}).encode(),
    json.dumps({"event": "done", "status": "exploded", "exit_code": 0, "reason": "", "log": "",
                "worker": "w"}).encode(),
    json.dumps({"event": "done", "status": "passed", "exit_code": 0, "reason": "", "log": ""}).encode(),
    json.dumps({"event": "exec", "worker": "w"}).encode(),
])
def test_a_reply_the_caller_cannot_read_is_refused(raw: bytes) -> None:
    with pytest.raises(MessageError):
        parse_reply(raw)


def test_a_result_carries_the_log_s_tail_within_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(farmjob, "LOG_CAP", 8)
    data = parse_reply(farmjob.make_result("failed", 2, "boom", b"0123456789\0x", "w1"))
    assert (data["status"], data["exit_code"], data["log"], data["worker"]) == ("failed", 2, "3456789\ufffdx"[-8:],
                                                                                "w1")


def test_messages_name_the_broker_without_its_password() -> None:
    assert redacted("redis://:s3cret@127.0.0.1:6390/2") == "redis://127.0.0.1:6390/2"
    assert "s3cret" not in redacted("rediss://user:s3cret@farm.example:6380/0")


def test_a_refused_message_s_caller_is_told_only_through_a_well_formed_id() -> None:
    assert farmjob.job_id_of(json.dumps(good(profile="/etc/passwd")).encode()) == JOB_ID
    for raw in (pickle.dumps({"id": JOB_ID}), json.dumps(good(id="../../x")).encode(), b"[]",
                json.dumps(good(id=JOB_ID + "\n")).encode()):
        assert farmjob.job_id_of(raw) is None


@pytest.mark.parametrize("queue", ["a:b", "../x", "", "x" * 65, "-dash", "q*"])
def test_a_queue_name_that_could_reach_other_keys_is_refused(queue: str) -> None:
    import click

    from sandboxmgr.cli.farm import check_queue

    context, option = click.Context(click.Command("x")), click.Option(["--queue"])
    with pytest.raises(click.BadParameter):
        check_queue(context, option, queue)
    assert check_queue(context, option, "arm64.builds_1") == "arm64.builds_1"


BUILD = {"path": "hello_1.0-1.dsc", "build_type": "binary", "network": "none", "timeout": None, "build_jobs": None,
         "deb_build_options": None}


@pytest.mark.parametrize("change", [
    {"path": "../hello.dsc"}, {"path": "sub/hello.dsc"}, {"path": ".hidden.dsc"}, {"path": "hello.sh"},
    {"build_type": "evil"}, {"network": "all"}, {"timeout": True}, {"timeout": -1}, {"timeout": "1"},
    {"build_jobs": 1.5}, {"build_jobs": 10 ** 6}, {"deb_build_options": "nocheck\n\x1b[2J"}, {"extra": 1},
], ids=["dotdot", "separator", "dotfile", "suffix", "type", "network", "bool", "negative", "string", "float",
        "many", "escape", "extra"])
def test_a_package_job_s_build_is_checked_field_by_field(change: dict[str, Any]) -> None:
    raw = json.dumps({"v": 1, "id": JOB_ID, "kind": "package", "profile": "debian-bookworm",
                      "build": {**BUILD, **change}, "source": ""}).encode()
    with pytest.raises(MessageError, match="build"):
        parse_job(raw)
    assert parse_job(farmjob.make_package_job(JOB_ID, "debian-bookworm", BUILD, b""))["build"] == BUILD


@pytest.mark.parametrize("extra", [
    {"package": {"stage": "pwned", "packages": []}, "files": []},
    {"package": {"stage": None, "packages": ["\x1b]0;title\x07"]}, "files": []},
    {"package": {"stage": None, "packages": [], "more": 1}, "files": []},
    {"package": {"stage": None, "packages": []}, "files": {}},
    {"files": []},
], ids=["stage", "escape", "extra", "files", "no-package"])
def test_a_package_reply_is_checked_before_it_is_reported(extra: dict[str, Any]) -> None:
    with pytest.raises(MessageError):
        parse_reply(farmjob.make_result("passed", 0, "", b"", "w-1", extra))
