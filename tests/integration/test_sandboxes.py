"""Named sandboxes: persistence, isolation from the image, listing, safe removal."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from sandboxmgr import mountinfo
from tests.conftest import CLI, DEBIAN_MIRROR, ConcurrentBuild, UserCLI, need_mirror, taken_path

pytestmark = [pytest.mark.root, pytest.mark.network]

IMAGE = "debian-bookworm"


def image_layers(cli: CLI) -> list[Path]:
    (image,) = [i for i in json.loads(cli.ok("images", "--json").out) if i["profile"] == IMAGE]
    return [Path(layer["path"]) / "diff" for layer in image["layers"]]


def in_image(cli: CLI, path: str) -> bool:
    return any((layer / path.lstrip("/")).exists() for layer in image_layers(cli))


def test_named_sandbox_changes_persist_and_never_touch_the_image(user: UserCLI) -> None:
    assert user.ok("create", IMAGE, "--name", "work").out.strip() == "work"
    try:
        user.ok("exec", "work", "sh", "-c", "echo kept > /persisted; rm /etc/debian_version")
        assert user.ok("exec", "work", "cat", "/persisted").out == "kept\n"
        assert user("exec", "work", "test", "-e", "/etc/debian_version").code == 1
        assert not in_image(user, "/persisted")
        assert in_image(user, "/etc/debian_version")
        # A fresh ephemeral sandbox sees the pristine image.
        assert user("run", IMAGE, "test", "-e", "/persisted").code == 1
        listing = json.loads(user.ok("ls", "--json").out)
        (row,) = [r for r in listing if r["name"] == "work"]
        assert row["profile"] == IMAGE and row["changes_size"] > 0
        table = user.ok("ls").out
        assert "work" in table and IMAGE in table
        (info,) = json.loads(user.ok("inspect", "work", "--json").out)
        assert info["type"] == "sandbox"
        assert info["name"] == "work" and info["distro"] == "debian" and info["release"] == "bookworm"
        assert info["settings"]["hostname"] == "work"
        assert user.ok("exec", "work", "hostname").out.strip() == "work"
    finally:
        user.ok("rm", "work")
    assert user("exec", "work", "true").code == 125
    assert not (user.store / "sandboxes" / "work").exists()


def test_apt_get_install_in_a_named_sandbox(user: UserCLI) -> None:
    need_mirror(DEBIAN_MIRROR, "bookworm")
    user.ok("create", IMAGE, "--name", "apt")
    try:
        user.ok("exec", "apt", "apt-get", "install", "-y", "hello")
        assert user.ok("exec", "apt", "hello").out == "Hello, world!\n"
        assert not in_image(user, "/usr/bin/hello")
    finally:
        user.ok("rm", "apt")


def test_images_lists_the_built_image(cli: CLI, bookworm: ConcurrentBuild) -> None:
    rows = json.loads(cli.ok("images", "--json").out)
    row = next(r for r in rows if r["profile"] == IMAGE)
    assert row["distro"] == "debian" and row["release"] == "bookworm"
    assert row["size"] > 50_000_000
    assert "inputs" not in row
    profiles = {p["name"]: p for p in json.loads(cli.ok("profiles", "--json").out)}
    assert profiles[IMAGE]["built"] is True
    assert profiles[IMAGE]["key"] == row["key"]


def test_rm_never_deletes_through_a_bind_mount(cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path) -> None:
    """A bind mount that a crash left inside a sandbox: rm must not delete through it."""
    host_dir = tmp_path / "precious"
    host_dir.mkdir()
    canary = host_dir / "canary"
    canary.write_text("must survive")
    cli.ok("create", IMAGE, "--name", "crashed")
    target = cli.store / "sandboxes" / "crashed" / "upper" / "mnt" / "data"
    target.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(host_dir), str(target)], check=True)
    try:
        assert mountinfo.mounts_under(target)
        cli.ok("rm", "crashed")
        assert canary.read_text() == "must survive"
        assert not (cli.store / "sandboxes" / "crashed").exists()
    finally:
        if mountinfo.mounts_under(target.parent):
            subprocess.run(["umount", "-l", str(target)], check=False)
    assert not mountinfo.mounts_under(cli.store)


def test_rmi_refuses_while_a_sandbox_uses_the_image(cli: CLI, bookworm: ConcurrentBuild) -> None:
    cli.ok("create", IMAGE, "--name", "user1")
    try:
        refused = cli("rmi", IMAGE)
        assert refused.code == 125
        assert "used by sandbox user1" in refused.err
        assert "sandboxmgr rm user1" in refused.err
        # A rebuild would replace the layers under it: refused as well.
        rebuild = cli("build", "--rebuild", IMAGE)
        assert rebuild.code == 125
        assert "cannot rebuild debian-bookworm: sandbox user1 uses a layer" in rebuild.err
    finally:
        cli.ok("rm", "user1")


def test_a_busy_sandbox_is_reported(user: UserCLI) -> None:
    user.ok("create", IMAGE, "--name", "busy")
    proc = user.popen("exec", "busy", "sleep", "30")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            (row,) = [r for r in json.loads(user.ok("ls", "--json").out) if r["name"] == "busy"]
            if row["in_use"] and row["processes"]:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        assert row["state"] == "running" and row["processes"] == 1  # ls --json has what ls shows
        line = next(line for line in user.ok("ls").out.splitlines() if line.startswith("busy "))
        assert "running since" in line and line.split()[-1] == "1"
        # A second command joins it (issue 15); rm is refused while it runs.
        assert user.ok("exec", "busy", "echo", "joined").out == "joined\n"
        refused = user("rm", "busy")
        assert refused.code == 125 and "sandbox 'busy' is running" in refused.err
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        assert taken_path(err)[0] == user.expect, err
    deadline = time.monotonic() + 20
    while row["state"] != "stopped" and time.monotonic() < deadline:
        (row,) = [r for r in json.loads(user.ok("ls", "--json").out) if r["name"] == "busy"]
        time.sleep(0.1)
    assert row["state"] == "stopped"  # its last command ended
    user.ok("rm", "busy")


def test_a_named_sandbox_keeps_its_isolation(user: UserCLI) -> None:
    # --isolation chroot drops CAP_SYS_CHROOT (bit 18 of the bounding set); pivot_root keeps it.
    probe = ("sh", "-c", "grep CapBnd /proc/self/status")
    user.ok("run", "--name", "jail", "--isolation", "chroot", IMAGE, "true")
    user.ok("create", IMAGE, "--name", "pivot")
    try:
        assert json.loads(user.ok("inspect", "jail").out)[0]["settings"]["isolation"] == "chroot"
        assert not int(user.ok("exec", "jail", *probe).out.split()[1], 16) & (1 << 18)
        assert int(user.ok("exec", "pivot", *probe).out.split()[1], 16) & (1 << 18)
    finally:
        user.ok("rm", "jail", "pivot")
