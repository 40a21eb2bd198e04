"""Attack 12: the disk fills up. A store on a small tmpfs (24 MB, made and unmounted by the test),
filled to the brim: `build` and `create` must fail in one line that says the store is full and
what to do (exit 125, never "internal error"), and leave nothing half-made - no image listed, no
sandbox listed, no tmp/ entry once the next command ran, nothing for doctor.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adversarial.conftest import doctor, fresh_tiny
from tests.conftest import CLI, Result, missing
from tests.rpmrepo import RpmRepo

pytestmark = [pytest.mark.adversarial, pytest.mark.root]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs in a directory of this test's own."""
    place = tmp_path / "small"
    place.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(place)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        missing(f"cannot mount a tmpfs: {made.stderr.strip()}")
    try:
        yield place
    finally:
        if subprocess.run(["umount", str(place)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(place)], check=False)


def fill(place: Path) -> Path:
    """Write a file until the file system is full; return it (deleting it frees the space)."""
    filler = place / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 64 << 10, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def assert_full_disk_error(result: Result, store: Path) -> None:
    lines = result.err.strip().splitlines()
    log = lines[-1].rpartition("full log: ")[2] if "full log: " in result.err else ""
    if log and os.path.exists(log):  # for the assertion messages below
        result.err += "--- the build log's end\n" + "\n".join(Path(log).read_text().splitlines()[-15:])
    assert result.code == 125, str(result)
    assert "internal error" not in result.err and "Traceback" not in result.err, str(result)
    errors = [line for line in lines if line.startswith("sandboxmgr: error: ")]
    assert len(errors) == 1 and "no space left on device" in errors[0] and str(store) in errors[0], str(result)
    assert lines[-1].startswith("hint: ") and "sandboxmgr prune" in lines[-1], str(result)


def assert_nothing_half_made(cli: CLI) -> None:
    assert json.loads(cli.ok("images", "--json").out) == []
    assert json.loads(cli.ok("ls", "--json").out) == []
    # Not even an image's directory without its record, or a half-written record.
    assert list((cli.store / "images").iterdir()) == []
    assert [p for p in cli.store.rglob("*.tmp") if "/tmp/" not in str(p.relative_to(cli.store.parent))] == []


def test_a_build_into_a_full_store_fails_cleanly_and_leaves_nothing(small_fs: Path, rpm_repo: RpmRepo) -> None:
    cli = fresh_tiny(small_fs / "base", rpm_repo)
    cli.ok("profiles")
    filler = fill(small_fs)
    result = cli("build", "tiny")
    assert_full_disk_error(result, cli.store)
    assert_nothing_half_made(cli)
    filler.unlink()
    cli.ok("build", "tiny")  # the next command recovers
    assert list((cli.store / "tmp").iterdir()) == []
    assert doctor(cli)[1] == []


def test_a_build_that_fills_the_store_midway_fails_cleanly(small_fs: Path, rpm_repo: RpmRepo) -> None:
    cli = fresh_tiny(small_fs / "base", rpm_repo)
    cli.ok("build", "tiny")
    size = int(subprocess.run(["du", "-sb", str(cli.store)], capture_output=True, text=True).stdout.split()[0])
    # Leave about half of what a build takes, so it starts and then runs out.
    cli.ok("rmi", "tiny")
    cli.ok("prune", "--cache")
    filler = fill(small_fs)
    stat = os.statvfs(small_fs)
    free = stat.f_bavail * stat.f_frsize
    with open(filler, "r+b") as handle:
        handle.truncate(max(0, os.path.getsize(filler) - (size // 2 - free)))
    result = cli("build", "tiny")
    assert_full_disk_error(result, cli.store)
    assert_nothing_half_made(cli)
    filler.unlink()
    cli.ok("build", "tiny")
    assert list((cli.store / "tmp").iterdir()) == []
    assert doctor(cli)[1] == []


def test_create_in_a_full_store_fails_cleanly_and_lists_no_sandbox(small_fs: Path, rpm_repo: RpmRepo) -> None:
    cli = fresh_tiny(small_fs / "base", rpm_repo)
    cli.ok("build", "tiny")
    filler = fill(small_fs)
    result = cli("create", "tiny", "--name", "full")
    assert_full_disk_error(result, cli.store)
    assert json.loads(cli.ok("ls", "--json").out) == []
    assert not (cli.store / "sandboxes" / "full").exists()
    filler.unlink()
    cli.ok("create", "tiny", "--name", "full")  # the name is free: nothing of the failed one is left
    assert list((cli.store / "tmp").iterdir()) == []
    cli.ok("rm", "full")
    assert doctor(cli)[1] == []
