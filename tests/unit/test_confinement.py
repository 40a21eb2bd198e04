"""Hardening as data and pure logic: in-root resolution by fd, masks, devices, limits in
profiles and settings, the security option (no root, nothing entered)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from sandboxmgr import cli as cli_module
from sandboxmgr import inroot, linux
from sandboxmgr.config import SandboxConfig, options, security_opts
from sandboxmgr.errors import ProfileError, SandboxError
from sandboxmgr.identity import build_inputs, image_key
from sandboxmgr.inroot import SymlinkRefused, open_in_root
from sandboxmgr.limits import Limits
from sandboxmgr.mounts import (
    DEV_LINKS,
    DEVICES,
    MASKED_PATHS,
    READONLY_PATHS,
    BindMount,
    device_steps,
    full_plan,
    mask_steps,
    plan,
)
from sandboxmgr.profile import ProfileRegistry


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every resolution test runs with the kernel's openat2 and with the fallback walk."""
    if request.param == "walk":
        def no_openat2(*_args: object, **_kwargs: object) -> int:
            raise OSError(errno.ENOSYS, "openat2: not on this kernel")
        monkeypatch.setattr(linux, "openat2", no_openat2)
        monkeypatch.setattr(inroot, "_openat2_missing", False)
    return str(request.param)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    top = tmp_path / "root"
    (top / "etc").mkdir(parents=True)
    (top / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (top / "usr" / "lib").mkdir(parents=True)
    (top / "lib").symlink_to("usr/lib")
    (top / "abs").symlink_to("/etc")
    (top / "up").symlink_to("../../../../../..")
    (top / "dangling").symlink_to("/nowhere/deeper")
    (top / "loop").symlink_to("/loop")
    fd = os.open(top, os.O_PATH | os.O_DIRECTORY)
    yield top, fd
    os.close(fd)


def resolved(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


@pytest.mark.parametrize(("path", "expected"), [
    ("/etc/passwd", "etc/passwd"), ("/abs/passwd", "etc/passwd"), ("/up/etc/passwd", "etc/passwd"),
    ("/lib", "usr/lib"), ("/usr/../etc/../usr/lib", "usr/lib"), ("/", ""), ("/../../..", ""),
])
def test_resolution_never_leaves_the_root(root: tuple[Path, int], resolver: str, path: str, expected: str) -> None:
    top, fd = root
    assert resolved(open_in_root(fd, path)) == str(top / expected).rstrip("/")


def test_missing_components_are_created_inside_even_through_dangling_links(root: tuple[Path, int],
                                                                           resolver: str) -> None:
    top, fd = root
    assert resolved(open_in_root(fd, "/dangling/x", create=True)) == str(top / "nowhere/deeper/x")
    assert (top / "nowhere/deeper/x").is_dir()
    assert resolved(open_in_root(fd, "/abs/new.conf", create=True, is_file=True)) == str(top / "etc/new.conf")
    assert (top / "etc/new.conf").is_file()
    assert not Path("/nowhere").exists()


def test_without_follow_any_symlink_on_the_way_is_refused(root: tuple[Path, int], resolver: str) -> None:
    _, fd = root
    for path in ("/abs", "/abs/passwd", "/lib/x", "/up/etc"):
        with pytest.raises(SymlinkRefused, match="is a symlink"):
            open_in_root(fd, path, create=True, follow=False)
    os.close(open_in_root(fd, "/etc/passwd", follow=False))


def test_loops_and_missing_paths_are_errors(root: tuple[Path, int], resolver: str) -> None:
    _, fd = root
    with pytest.raises(OSError) as caught:
        open_in_root(fd, "/loop/x", create=True)
    assert caught.value.errno == errno.ELOOP
    with pytest.raises(FileNotFoundError):
        open_in_root(fd, "/etc/missing")
    with pytest.raises(NotADirectoryError):
        open_in_root(fd, "/etc/passwd/x", create=True)


def test_masks_and_read_only_paths_follow_runc() -> None:
    steps = mask_steps()
    assert {s.target for s in steps if s.kind == "mask"} == set(MASKED_PATHS)
    assert {s.target for s in steps if s.kind == "readonly"} == set(READONLY_PATHS)
    assert {"/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware"} <= set(MASKED_PATHS)
    assert {"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"} <= set(READONLY_PATHS)


def test_every_file_system_is_nodev_but_the_device_binds() -> None:
    for step in plan("none"):
        if step.fstype in ("tmpfs", "shm", "mqueue", "proc", "sysfs"):
            assert step.flags & linux.MS_NODEV, step
    devices = device_steps()
    assert [s.target for s in devices] == [f"/dev/{d.name}" for d in DEVICES]
    assert all(s.device and s.readonly and s.is_file and s.source.startswith("/dev/") for s in devices)
    assert not any(s.device for s in plan("host"))


@pytest.mark.parametrize(("options", "expected"), [
    ((), None), (("no-new-privileges",), True), (("no-new-privileges=true",), True),
    (("no-new-privileges=false",), False), (("no-new-privileges:false",), False),
    (("no-new-privileges=false", "no-new-privileges"), True),
])
def test_security_opt_no_new_privileges(options: tuple[str, ...], expected: bool | None) -> None:
    assert security_opts(options) == (expected, None)


@pytest.mark.parametrize("option", ["seccomp=", "no-new-privileges=maybe", "apparmor=x", "label:disable"])
def test_other_security_opts_are_refused(option: str) -> None:
    with pytest.raises(SandboxError, match="not supported") as caught:
        security_opts((option,))
    assert caught.value.hint and "no-new-privileges" in caught.value.hint and "seccomp=" in caught.value.hint


def test_run_exec_create_take_the_limit_options_and_doctor_exists() -> None:
    runner = CliRunner()
    for command in ("run", "exec", "create"):
        text = runner.invoke(cli_module.cli, [command, "--help"]).output
        for option in ("--memory", "--pids-limit", "--cpus", "--security-opt"):
            assert option in text, (command, option)
    doctor = runner.invoke(cli_module.cli, ["doctor", "--help"]).output
    assert "--fix" in doctor and "--json" in doctor


def write_profile(directory: Path, text: str) -> Path:
    path = directory / "lim.yaml"
    path.write_text(text)
    return path


def test_profile_limits_are_validated_and_are_not_build_inputs(tmp_path: Path) -> None:
    base = "distro: debian\nrelease: bookworm\n"
    write_profile(tmp_path, base + "limits: {memory: 512M, pids: 256, cpus: 1.5}\nno_new_privs: false\n")
    limited = ProfileRegistry([tmp_path]).load("lim")
    assert limited.limits == Limits(512 << 20, 256, 1.5) and limited.no_new_privs is False
    write_profile(tmp_path, base)
    plain = ProfileRegistry([tmp_path]).load("lim")
    assert plain.limits == Limits() and plain.no_new_privs is True
    assert build_inputs(plain) == build_inputs(limited) and image_key(plain) == image_key(limited)


def test_bad_profile_limits_name_file_line_and_key(tmp_path: Path) -> None:
    path = write_profile(tmp_path, "distro: debian\nrelease: bookworm\nlimits:\n  memory: lots\n"
                                   "  pids: 1\n  cpus: .nan\n  swap: 1G\nno_new_privs: sometimes\n")
    with pytest.raises(ProfileError) as caught:
        ProfileRegistry([tmp_path]).load("lim")
    message = caught.value.message
    assert f"{path}:4: limits.memory: 'lots' is not a size like 512M or 2G" in message
    assert f"{path}:5: limits.pids: 1 is not between 2 and" in message
    assert f"{path}:6: limits.cpus: nan is not between" in message
    assert f"{path}:7: limits.swap: unknown key" in message
    assert f"{path}:8: no_new_privs: must be true or false, not a string" in message


def test_child_profiles_merge_limits_key_by_key(tmp_path: Path) -> None:
    (tmp_path / "parent.yaml").write_text("distro: debian\nrelease: bookworm\nlimits: {memory: 1G, pids: 100}\n")
    write_profile(tmp_path, "extends: parent\nlimits: {pids: 50}\n")
    assert ProfileRegistry([tmp_path]).load("lim").limits == Limits(memory=1 << 30, pids=50)


def test_settings_keep_limits_and_the_command_line_overrides_them() -> None:
    saved = SandboxConfig(hostname="box", limits=Limits(memory=64 << 20, pids=100), no_new_privs=False)
    assert SandboxConfig.from_json(saved.to_json()) == saved
    assert SandboxConfig.from_json({"hostname": "old"}).limits is None  # a sandbox made before limits existed
    assert SandboxConfig.from_json({"hostname": "old"}).no_new_privs is True
    run = saved.merged(options(limits=Limits(pids=10), no_new_privs=True))
    assert run.limits == Limits(memory=64 << 20, pids=10) and run.no_new_privs is True
    assert saved.merged(options()).limits == saved.limits
    assert SandboxConfig(hostname="box").merged(options(limits=Limits(cpus=1.0))).limits == Limits(cpus=1.0)


def test_doctor_needs_root_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxmgr import doctor
    from sandboxmgr.errors import NotRootError
    from sandboxmgr.store import Store

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NotRootError, match="doctor needs root") as caught:
        doctor.examine(Store(tmp_path))
    assert caught.value.hint == "run it with sudo, or as root"


def test_the_full_plan_holds_dev_its_links_and_the_masks() -> None:
    steps = full_plan("none")
    targets = [s.target for s in steps]
    dev = targets.index("/dev")
    filled = [f"/dev/{d.name}" for d in DEVICES] + [f"/dev/{name}" for name, _ in DEV_LINKS]
    assert targets[dev + 1:dev + 1 + len(filled)] == filled
    assert targets[dev + 1 + len(filled)] == "/dev/pts"
    assert [s for s in steps if s.kind in ("mask", "readonly")] == steps[-len(mask_steps()):]
    assert not any(s.follow for s in steps if s.kind or s.device or s.fstype in ("proc", "sysfs", "tmpfs"))


def test_only_what_the_user_asked_for_follows_symlinks(tmp_path: Path) -> None:
    steps = plan("host", (BindMount(tmp_path, "/data"),))
    assert [s.target for s in steps if s.follow] == [s.target for s in steps[8:]]
