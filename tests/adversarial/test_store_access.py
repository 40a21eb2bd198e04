"""Attack 10: a local user reaches the store. Root inside a sandbox plants a setuid-root shell and a
device node of a root-only disk in its upper directory (a named sandbox's, and an ephemeral
run's in tmp/ while it is alive); the image has a setuid binary of its own in a layer. An
unprivileged host user (uid 65534, no groups) then tries to run and open them through the store's
paths: every attempt must fail with EACCES.

The store is made in a directory of the test's own that every user may enter (the usual temporary
directories of pytest are root's alone, which would hide the point), and the test first checks
that the unprivileged user does reach that directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxmgr.store import Store
from tests.adversarial.conftest import wait_until
from tests.conftest import CLI, Result, missing
from tests.rpmrepo import RpmRepo, tiny_profile

pytestmark = [pytest.mark.adversarial, pytest.mark.root]

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
SECRET = b"root-only-secret-on-a-loop-device\n"

# Run as uid 65534: for each path, what stat, exec (setuid files) and open (device nodes) give.
PROBE = r"""
import errno, json, os, subprocess, sys
out = {}
for kind, path in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        if kind == "exec":
            proc = subprocess.run([path, "id"], capture_output=True, text=True, timeout=30)
            out[path] = "ran: " + proc.stdout.strip()
        elif kind == "open":
            with open(path, "rb") as handle:
                out[path] = "read: " + handle.read(64).decode(errors="replace")
        else:
            out[path] = "listed: " + ",".join(sorted(os.listdir(path)))
    except OSError as exc:
        out[path] = errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps(out))
"""


def as_nobody(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("setpriv") is None:
        missing("setpriv (util-linux) is not installed")
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": "/nonexistent", **(env or {})})


def probe(*attempts: tuple[str, Path]) -> dict[str, str]:
    argv = [item for kind, path in attempts for item in (kind, str(path))]
    proc = as_nobody(sys.executable, "-c", PROBE, *argv)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout)
    return result


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory every local user may enter (0755 up to /), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="sandboxmgr-access-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


@pytest.fixture
def secret_disk(tmp_path: Path) -> Iterator[Path]:
    """A root-only "disk": a loop device over a file holding a secret."""
    if shutil.which("losetup") is None:
        missing("losetup (util-linux) is not installed")
    backing = tmp_path / "disk.img"
    backing.write_bytes(SECRET + b"\0" * (1 << 20))
    backing.chmod(0o600)
    made = subprocess.run(["losetup", "--find", "--show", "--read-only", str(backing)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        missing(f"cannot make a loop device: {made.stderr.strip()}")
    device = Path(made.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=False)


def plant(device: Path) -> str:
    """Shell commands that plant a setuid-root shell and a world-readable node of ``device``."""
    rdev = os.stat(device).st_rdev
    return (f"cp /usr/bin/busybox /suidsh && chmod 4755 /suidsh && "
            f"busybox mknod /disk b {os.major(rdev)} {os.minor(rdev)} && chmod 666 /disk")


def tiny_store(base: Path, repo: RpmRepo) -> CLI:
    """The Tiny Distro with a setuid copy of busybox of its own (/usr/bin/su), in a store in ``base``."""
    (base / "configs").mkdir()
    (base / "configs" / "tiny.yaml").write_text(
        tiny_profile(repo) + "setup:\n  - cp /usr/bin/busybox /usr/bin/su && chmod 4755 /usr/bin/su\n")
    (base / "configs").chmod(0o755)
    return CLI(base / "store", base / "configs")


def assert_private(store: Path) -> None:
    for directory in Store(store).private_dirs():
        if directory.exists():
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_what_sandboxes_plant_and_images_carry_is_out_of_a_local_users_reach(
        open_base: Path, secret_disk: Path, rpm_repo: RpmRepo) -> None:
    cli = tiny_store(open_base, rpm_repo)
    cli.ok("build", "tiny")
    cli.ok("create", "tiny", "--name", "planted")
    cli.ok("exec", "planted", "sh", "-c", plant(secret_disk))
    upper = cli.store / "sandboxes" / "planted" / "upper"
    assert (upper / "suidsh").stat().st_mode & stat.S_ISUID and stat.S_ISBLK((upper / "disk").stat().st_mode)
    (layer_su,) = cli.store.glob("layers/*/diff/usr/bin/su")
    assert layer_su.stat().st_mode & stat.S_ISUID
    # The unprivileged user does reach the directory the store is in: EACCES below comes from the store.
    assert probe(("list", open_base)) == {str(open_base): "listed: configs,store"}

    run = cli.popen("run", "tiny", "sh", "-c", plant(secret_disk) + " && touch /ready && exec sleep 120")
    try:
        assert wait_until(lambda: any(cli.store.glob("tmp/run-*/upper/ready")), timeout=60), run.pid
        (run_upper,) = [path.parent for path in cli.store.glob("tmp/run-*/upper/ready")]
        attempts = [("exec", upper / "suidsh"), ("open", upper / "disk"),
                    ("exec", run_upper / "suidsh"), ("open", run_upper / "disk"),
                    ("exec", layer_su), ("list", cli.store), ("list", cli.store / "sandboxes")]
        found = probe(*attempts)
    finally:
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)
    assert found == {str(path): "EACCES" for _, path in attempts}, found
    assert_private(cli.store)
    cli.ok("rm", "planted")


def test_a_store_made_loose_is_private_again_after_the_next_command(open_base: Path, rpm_repo: RpmRepo) -> None:
    cli = tiny_store(open_base, rpm_repo)
    cli.ok("build", "tiny")
    assert_private(cli.store)
    for directory in Store(cli.store).private_dirs():
        if directory.exists():
            directory.chmod(0o755)  # as an older sandboxmgr, or git for a checkout's sandboxes/, made it
    cli.ok("run", "tiny", "true")
    assert_private(cli.store)


def permission_findings(cli: CLI, *args: str) -> tuple[Result, list[dict[str, object]]]:
    result = cli("doctor", "--json", *args)
    assert result.code in (0, 1), str(result)
    return result, [f for f in json.loads(result.out) if f["kind"] == "permissions"]


def test_doctor_reports_a_loosened_store_and_fix_tightens_it(open_base: Path, rpm_repo: RpmRepo) -> None:
    cli = tiny_store(open_base, rpm_repo)
    cli.ok("build", "tiny")
    assert permission_findings(cli)[1] == []
    cli.store.chmod(0o755)
    (cli.store / "layers").chmod(0o711)
    result, found = permission_findings(cli)
    assert result.code == 1
    assert sorted((f["what"], f["fixed"]) for f in found) == [(str(cli.store), False),
                                                               (str(cli.store / "layers"), False)], found
    assert all("0700" in str(f["detail"]) for f in found), found
    text = cli("doctor")
    assert text.code == 1 and "permissions" in text.out and "doctor --fix" in text.err, str(text)
    result, found = permission_findings(cli, "--fix")
    assert result.code == 0 and len(found) == 2 and all(f["fixed"] for f in found), found
    assert_private(cli.store)
    result, found = permission_findings(cli)
    assert result.code == 0 and found == []


def test_reading_commands_of_a_local_user_on_roots_store_are_one_line_errors(
        open_base: Path, rpm_repo: RpmRepo) -> None:
    cli = tiny_store(open_base, rpm_repo)
    cli.ok("build", "tiny")
    for verb in ("ls", "images", "inspect"):
        args = [verb, "tiny"] if verb == "inspect" else [verb]
        proc = as_nobody(*cli.argv(*args))
        lines = proc.stderr.splitlines()
        assert proc.returncode == 125, (verb, proc.stderr)
        assert len(lines) == 2 and lines[0].startswith("sandboxmgr: error: cannot read the store"), proc.stderr
        assert lines[1] == "hint: run it as root (sudo sandboxmgr ...)", proc.stderr
    # profiles needs no store: it lists them, with BUILT unknown.
    proc = as_nobody(*cli.argv("profiles", "--json"))
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert rows["tiny"]["built"] is None and rows["tiny"]["error"] is None, rows["tiny"]
    assert "debian-bookworm" in rows and "root's alone" in proc.stderr
    proc = as_nobody(*cli.argv("profiles"))
    assert proc.returncode == 0 and any(line.split()[:1] == ["tiny"] and " ? " in line
                                        for line in proc.stdout.splitlines()), proc.stdout
