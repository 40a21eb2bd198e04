"""Attack 4: symlinks planted in a sandbox's root, aimed at the host.

A named sandbox's changes (its upper directory) are where a previous command -
or a hostile image - can leave symlinks for the next setup to trip over. Each
test plants some before the sandbox's first command, then checks that the host
directory they point at is untouched and nothing was mounted on the host.
Mount points of the sandbox's own file systems (/dev, /proc, /tmp ...) must be
real directories: a symlink there is refused. Bind targets (-v) follow
symlinks, but only inside the root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxmgr import mountinfo
from tests.conftest import CLI, ConcurrentBuild, missing

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

IMAGE = "debian-bookworm"


def snapshot(top: Path) -> dict[str, str]:
    """Every path under ``top`` with its content (or type), to compare before and after."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            relative = str(path.relative_to(top))
            found[relative] = path.read_text() if path.is_file() and not path.is_symlink() else "<dir>"
    return found


@pytest.fixture
def host_dir(tmp_path: Path) -> Iterator[Path]:
    """What the planted symlinks aim at: a host directory with a canary."""
    target = tmp_path / "host-target"
    target.mkdir()
    (target / "canary").write_text("host canary\n")
    before = snapshot(target)
    yield target
    assert snapshot(target) == before, "the host directory a symlink pointed at was changed"
    assert not mountinfo.mounts_under(target), "something was mounted on the host"


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    directory = tmp_path / "payload"
    directory.mkdir()
    (directory / "marker").write_text("payload\n")
    return directory


def planted(cli: CLI, name: str, links: dict[str, str], *create_args: str) -> Path:
    """Create sandbox ``name`` and plant ``links`` (path inside -> link text) in its changes."""
    cli.ok("create", IMAGE, "--name", name, *create_args)
    upper = cli.store / "sandboxes" / name / "upper"
    for inside, link in links.items():
        path = upper / inside.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(link)
    return upper


@pytest.mark.parametrize("mount_point", ["/dev", "/proc", "/tmp", "/run", "/sys"])
@pytest.mark.parametrize("relative", [False, True])
def test_a_sandbox_file_system_on_a_symlink_is_refused(cli: CLI, bookworm: ConcurrentBuild, host_dir: Path,
                                                      mount_point: str, relative: bool) -> None:
    link = ("../" * 12).rstrip("/") + str(host_dir) if relative else str(host_dir)
    name = f"link{mount_point.replace('/', '-')}{'-rel' if relative else ''}"
    planted(cli, name, {mount_point: link})
    try:
        result = cli("exec", name, "true")
        assert result.code == 125, str(result)
        assert f"{mount_point} is a symlink" in result.err and "refusing to mount there" in result.err
        assert "hint:" in result.err
    finally:
        cli.ok("rm", name)


def test_a_bind_target_whose_parent_links_to_the_host_lands_inside(
        cli: CLI, bookworm: ConcurrentBuild, host_dir: Path, payload: Path) -> None:
    name = "link-parent"
    planted(cli, name, {"/data": str(host_dir)}, "-v", f"{payload}:/data/inner")
    try:
        # The mount point was made at the link's path taken inside the root (here in the sandbox's /tmp).
        result = cli.ok("exec", name, "sh", "-c", "cat /data/inner/marker; readlink -f /data/inner")
        assert result.out.splitlines() == ["payload", f"{host_dir}/inner"]
    finally:
        cli.ok("rm", name)


def test_a_bind_target_that_is_a_link_to_a_host_file_lands_inside(
        cli: CLI, bookworm: ConcurrentBuild, host_dir: Path, payload: Path) -> None:
    name = "link-file"
    planted(cli, name, {"/etc/app.conf": str(host_dir / "canary")}, "-v", f"{payload / 'marker'}:/etc/app.conf:ro")
    try:
        assert cli.ok("exec", name, "cat", "/etc/app.conf").out == "payload\n"
    finally:
        cli.ok("rm", name)


def test_dotdot_links_are_clamped_at_the_root(cli: CLI, bookworm: ConcurrentBuild, host_dir: Path,
                                              payload: Path) -> None:
    name = "link-dotdot"
    planted(cli, name, {"/srv/up": "../../../../../../../../.." + str(host_dir)}, "-v", f"{payload}:/srv/up/inner")
    try:
        assert cli.ok("exec", name, "cat", "/srv/up/inner/marker").out == "payload\n"
    finally:
        cli.ok("rm", name)


def test_a_dangling_link_component_is_created_inside(cli: CLI, bookworm: ConcurrentBuild, payload: Path,
                                                     tmp_path: Path) -> None:
    nowhere = tmp_path / "does-not-exist" / "deeper"
    name = "link-dangling"
    planted(cli, name, {"/data": str(nowhere)}, "-v", f"{payload}:/data/inner")
    try:
        assert cli.ok("exec", name, "cat", "/data/inner/marker").out == "payload\n"
        assert not nowhere.parent.exists(), "the dangling link's target was created on the host"
    finally:
        cli.ok("rm", name)


def test_a_link_loop_is_a_clean_error(cli: CLI, bookworm: ConcurrentBuild, payload: Path) -> None:
    name = "link-loop"
    planted(cli, name, {"/data": "/data/x"}, "-v", f"{payload}:/data/inner")
    try:
        result = cli("exec", name, "true")
        assert result.code == 125, str(result)
        assert "too many symlinks" in result.err or "Too many levels of symbolic links" in result.err
        assert "Traceback" not in result.err
    finally:
        cli.ok("rm", name)


def test_the_resolv_conf_bind_follows_an_image_link_inside(cli: CLI, bookworm: ConcurrentBuild,
                                                          host_dir: Path) -> None:
    """Ubuntu's /etc/resolv.conf is a link into /run; one aimed at the host stays inside too."""
    if not Path("/etc/resolv.conf").exists():
        missing("this host has no /etc/resolv.conf")
    name = "link-resolv"
    planted(cli, name, {"/etc/resolv.conf": str(host_dir / "canary")})
    try:
        inside = cli.ok("exec", name, "cat", "/etc/resolv.conf").out
        assert inside == Path("/etc/resolv.conf").read_text()
    finally:
        cli.ok("rm", name)
