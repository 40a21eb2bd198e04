"""A farm job's result files come back through the broker, and a forged reply (anyone with the
broker's password can pretend to be a worker) writes nothing outside the results directory the
caller made (farmresults.py), against a real redis-server on loopback."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from sandboxmgr import farmresults
from sandboxmgr.farmjob import MessageError

JOB = "d" * 32


def files_of(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_a_build_s_results_travel_through_the_broker_and_only_they(client: Any, tmp_path: Path) -> None:
    made = tmp_path / "worker"
    made.mkdir()
    wanted = {"hello_1.0_amd64.deb": os.urandom(3 * farmresults.CHUNK + 5), "hello_1.0_amd64.changes": b"c\n",
              "hello_1.0_amd64.buildinfo": b"b\n", "build.log": b"log\n", "build-info.json": b"{}\n",
              "empty.json": b""}
    for name, data in wanted.items():
        (made / name).write_bytes(data)
    (made / ".hidden.deb").write_bytes(b"x")
    (made / "script.sh").write_bytes(b"x")
    (made / "link.deb").symlink_to("/etc/passwd")
    os.mkfifo(made / "fifo.deb")
    (made / "dir.deb").mkdir()
    beats: list[None] = []
    manifest = farmresults.send(client, JOB, made, lambda: beats.append(None))
    assert sorted(entry["name"] for entry in manifest) == sorted(wanted)
    assert len(beats) >= 4  # the slot's heartbeat between chunks: the .deb's four, at least
    dest = tmp_path / "results" / "debian-bookworm"
    dest.mkdir(parents=True)
    assert sorted(farmresults.receive(client, JOB, manifest, dest)) == sorted(wanted)
    assert files_of(dest) == dict(sorted(wanted.items()))
    assert not client.keys("sandboxmgr:farm:files:*")  # the broker's copies are gone


def entry(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("manifest", [
    [entry("../escaped.deb", b"x")], [entry("/tmp/escaped.deb", b"x")], [entry("sub/escaped.deb", b"x")],
    [entry(".hidden.deb", b"x")], [entry("run.sh", b"x")], [entry("", b"x")], [entry("a\n.deb", b"x")],
    [entry("..", b"x")], [entry("a.deb", b"x"), entry("a.deb", b"x")],
    [{**entry("a.deb", b"x"), "size": -1}], [{**entry("a.deb", b"x"), "size": True}],
    [{**entry("a.deb", b"x"), "size": farmresults.FILE_CAP + 1}], [{**entry("a.deb", b"x"), "sha256": "0"}],
    [{**entry("a.deb", b"x"), "mode": 0o4755}], [entry(f"{n}.deb", b"x") for n in range(farmresults.FILES_CAP + 1)],
    [{**entry(f"{n}.deb", b"x"), "size": farmresults.FILE_CAP} for n in range(3)], {"a.deb": 1}, "a.deb",
], ids=["dotdot", "absolute", "separator", "dotfile", "suffix", "empty", "newline", "parent", "twice", "negative",
        "bool", "huge", "digest", "extra", "many", "total", "mapping", "string"])
def test_a_forged_manifest_is_refused_and_writes_nothing(client: Any, tmp_path: Path, manifest: Any) -> None:
    dest = tmp_path / "results" / "p"
    dest.mkdir(parents=True)
    for index in range(3):
        client.set(f"sandboxmgr:farm:files:{JOB}:{index}", b"x")
    with pytest.raises(MessageError):
        farmresults.receive(client, JOB, manifest, dest)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["p", "results"]


def test_forged_bytes_are_refused_unread_or_removed_and_a_planted_link_is_not_followed(client: Any,
                                                                                       tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    dest = tmp_path / "results" / "p"
    dest.mkdir(parents=True)
    (dest / "a.deb").symlink_to(outside)
    key = f"sandboxmgr:farm:files:{JOB}:0"
    client.set(key, b"y" * 100)  # more than the manifest says: not read at all
    with pytest.raises(MessageError, match="not the size its manifest says"):
        farmresults.receive(client, JOB, [entry("a.deb", b"y" * 10)], dest)
    assert not client.exists(key)
    client.set(key, b"z" * 10)  # the size, not the bytes
    with pytest.raises(MessageError, match="not the file its manifest describes"):
        farmresults.receive(client, JOB, [entry("a.deb", b"y" * 10)], dest)
    assert list(dest.iterdir()) == []  # the link was replaced, the wrong file removed
    client.set(key, b"y" * 10)
    assert farmresults.receive(client, JOB, [entry("a.deb", b"y" * 10)], dest) == ["a.deb"]
    assert (dest / "a.deb").read_bytes() == b"y" * 10 and not (dest / "a.deb").is_symlink()
    assert outside.read_bytes() == b"precious"


def test_a_forged_worker_s_package_reply_writes_nothing_outside_results_profile(client: Any, url: str,
                                                                                tmp_path: Path) -> None:
    """Anyone with the broker's password can answer a package build as a worker: its files named
    ../ or absolute are refused whole, the build fails at stage results, nothing is written."""
    import threading

    from sandboxmgr import farmjob
    from sandboxmgr.farmpackage import PackageFarmJob
    from sandboxmgr.farmreap import Limits
    from sandboxmgr.package import PackageResult

    (tmp_path / "src" / "debian").mkdir(parents=True)
    dest = tmp_path / "results" / "debian-bookworm"
    dest.mkdir(parents=True)
    build = {"path": ".", "build_type": "binary", "network": "none", "timeout": None, "build_jobs": None,
             "deb_build_options": None}
    message = farmjob.make_package_job(JOB, "debian-bookworm", build, farmjob.pack(tmp_path / "src"))
    job = PackageFarmJob(url, "forged", message, JOB, PackageResult("debian-bookworm", "debian-bookworm"), dest,
                         Limits(queue_timeout=30, job_timeout=30, retries=0))

    def forger() -> None:
        raw = client.blmove("sandboxmgr:farm:queue:forged", "sandboxmgr:farm:taken:forger-1", 10, "RIGHT", "LEFT")
        assert raw is not None
        client.set(f"sandboxmgr:farm:files:{JOB}:0", b"owned\n")
        files = [entry("../../escaped.deb", b"owned\n")]
        client.rpush(f"sandboxmgr:farm:reply:{JOB}", farmjob.make_result(
            "passed", 0, "", b"", "forger-1", {"package": {"stage": None, "packages": []}, "files": files}))

    threading.Thread(target=forger, daemon=True).start()
    job.report.write_text(json.dumps(job._wait_for_result()))
    job.finish(0, False)
    assert (job.result.status, job.result.stage) == ("failed", "results")
    assert "is not a result's" in job.result.reason
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "src" not in p.parts) == [
        "results", "results/debian-bookworm", "results/debian-bookworm/build.log"]
