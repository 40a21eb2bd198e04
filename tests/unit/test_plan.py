"""The mount plan, bind parsing, in-root path resolution, user lookup (no root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxmgr import linux, mountinfo, mounts
from sandboxmgr.errors import SandboxError
from sandboxmgr.families.debian import DebootstrapBuilder, MmdebstrapBuilder, debootstrap_script
from sandboxmgr.images import changed_inputs
from sandboxmgr.inroot import resolve_in_root
from sandboxmgr.locations import shipped_configs_dir
from sandboxmgr.mounts import BindMount, plan
from sandboxmgr.profile import ProfileRegistry
from sandboxmgr.users import lookup_user
from tests.conftest import missing


def test_default_plan_order_and_flags() -> None:
    steps = plan("host")
    targets = [s.target for s in steps]
    assert targets[:8] == ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/tmp", "/run"]
    sys_step = steps[1]
    assert sys_step.flags & linux.MS_RDONLY
    assert all(s.flags & linux.MS_NOSUID for s in steps[:8])
    devpts = steps[3]
    assert devpts.data is not None and "newinstance" in devpts.data


def test_host_network_brings_resolv_conf_read_only_and_none_does_not(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    resolv = tmp_path / "resolv.conf"  # whether or not this host has one
    resolv.write_text("nameserver 192.0.2.1\n")
    monkeypatch.setattr(mounts, "RESOLV_CONF", resolv)
    host = [s for s in plan("host") if s.target == "/etc/resolv.conf"]
    assert len(host) == 1 and host[0].readonly and host[0].is_file
    assert not [s for s in plan("none") if s.target == "/etc/resolv.conf"]


def test_binds_are_mounted_shallow_first(tmp_path: Path) -> None:
    binds = (BindMount(tmp_path, "/a/b/c"), BindMount(tmp_path, "/a"), BindMount(tmp_path, "/a/b", True))
    targets = [s.target for s in plan("none", binds)][8:]
    assert targets == ["/a", "/a/b", "/a/b/c"]


@pytest.mark.parametrize(("spec", "target", "readonly"), [
    ("/srv:/data", "/data", False),
    ("/srv:/data:ro", "/data", True),
    ("/srv:/data:rw", "/data", False),
])
def test_bind_parse(spec: str, target: str, readonly: bool) -> None:
    bind = BindMount.parse(spec)
    assert bind.source == Path("/srv") and bind.target == target and bind.readonly is readonly


@pytest.mark.parametrize("spec", ["/srv", "/srv:data", ":/data", "/srv:/data:xx:yy"])
def test_bind_parse_refuses(spec: str) -> None:
    with pytest.raises(ValueError):
        BindMount.parse(spec)


def test_resolve_in_root_keeps_absolute_symlinks_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "src").symlink_to("/etc")
    resolved = resolve_in_root(root, "/src/x", create=True)
    assert resolved == root / "etc" / "x"
    assert resolved.is_dir()


def test_resolve_in_root_clamps_dotdot(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "up").symlink_to("../../../../..")
    assert resolve_in_root(root, "/a/up/etc/passwd", create=True, is_file=True) == root / "etc" / "passwd"
    assert (root / "etc" / "passwd").is_file()


def test_resolve_in_root_follows_dangling_links_into_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    target = resolve_in_root(root, "/etc/resolv.conf", create=True, is_file=True)
    assert target == root / "run/systemd/resolve/stub-resolv.conf"


def test_resolve_in_root_detects_loops(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "loop").symlink_to("/loop")
    with pytest.raises(OSError, match="too many symlinks"):
        resolve_in_root(root, "/loop/x", create=True)


def test_lookup_user_by_name_number_and_group(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    group = tmp_path / "group"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\nbuilder:x:1000:1000::/home/builder:/bin/sh\n")
    group.write_text("root:x:0:\nbuilder:x:1000:\nsudo:x:27:builder\nstaff:x:50:\n")
    user = lookup_user("builder", str(passwd), str(group))
    assert (user.uid, user.gid, user.groups, user.home) == (1000, 1000, (27,), "/home/builder")
    assert lookup_user("1000:staff", str(passwd), str(group)).gid == 50
    assert lookup_user("4242", str(passwd), str(group)).uid == 4242
    assert lookup_user(None, str(passwd), str(group)).home == "/root"
    with pytest.raises(SandboxError, match="no user 'nobody'"):
        lookup_user("nobody", str(passwd), str(group))


def test_mountinfo_unescapes_paths() -> None:
    text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n"
    entry = mountinfo.parse(text)[0]
    assert entry.mount_point == "/mnt/with space"
    assert entry.fstype == "ext3"
    assert entry.root == "/mnt1"


def test_mounts_under_is_exact_about_prefixes() -> None:
    assert mountinfo.is_under("/a/b", "/a")
    assert mountinfo.is_under("/a", "/a")
    assert not mountinfo.is_under("/ab", "/a")


def test_debootstrap_script_fallback(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name in ("sid", "gutsy", "bookworm"):
        (scripts / name).write_text("")
    reg = ProfileRegistry([shipped_configs_dir()])
    assert debootstrap_script(reg.load("debian-bookworm"), scripts) is None
    assert debootstrap_script(reg.load("debian-forky"), scripts) == scripts / "sid"
    assert debootstrap_script(reg.load("ubuntu-resolute"), scripts) == scripts / "gutsy"


def test_builder_argv_carries_the_keyring_and_never_skips_signatures() -> None:
    reg = ProfileRegistry([shipped_configs_dir()])
    profile = reg.load("ubuntu-noble")
    for builder in (DebootstrapBuilder(), MmdebstrapBuilder()):
        argv = builder.bootstrap_argv(profile, Path("/x/rootfs"))
        assert f"--keyring={profile.bootstrap.keyring}" in argv
        assert not [a for a in argv if "no-check" in a or "allow-insecure" in a]
        assert argv[-3:] == ["noble", "/x/rootfs", "http://archive.ubuntu.com/ubuntu"] or \
            argv[-4:-1] == ["noble", "/x/rootfs", "http://archive.ubuntu.com/ubuntu"]
        assert "--variant=minbase" in argv


def test_changed_inputs_names_what_changed() -> None:
    old = {"packages": ["a"], "bootstrap": {"mirror": "x", "variant": "minbase"}, "release": "r"}
    new = {"packages": ["a", "b"], "bootstrap": {"mirror": "y", "variant": "minbase"}, "release": "r"}
    assert changed_inputs(old, new) == ["bootstrap.mirror", "packages"]


def test_host_arch_names_match_debian() -> None:
    from sandboxmgr.distros import host_arch

    expected = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine)
    if expected is None:
        missing(f"no expectation written for {os.uname().machine}")
    assert host_arch() == expected


def test_repo_file_carries_every_repository_with_its_key() -> None:
    from sandboxmgr.families.rpm import repo_file

    text = repo_file(ProfileRegistry([shipped_configs_dir()]).load("fedora-45"))
    assert "[fedora]" in text and "[updates]" in text
    assert text.count("gpgcheck=1") == 2
    assert "metalink=https://mirrors.fedoraproject.org/metalink?repo=fedora-$releasever&arch=$basearch" in text
    assert "gpgkey=https://fedoraproject.org/fedora.gpg" in text


def test_a_sandboxs_etc_files_are_its_own_and_writable(tmp_path: Path) -> None:
    for network in ("host", "none"):
        steps = {s.target: s for s in plan(network, (), tmp_path)}
        for name in ("hostname", "hosts", "resolv.conf"):
            step = steps[f"/etc/{name}"]
            assert step.source == str(tmp_path / name) and step.is_file and step.follow and not step.readonly


def test_a_refusal_quotes_what_the_image_spelled_never_raw() -> None:
    """A symlink's text comes from the image or a sandbox's changes: escape sequences in it
    must not reach the operator's terminal."""
    from sandboxmgr.errors import SandboxError
    from sandboxmgr.mounts import refuse_kernel_target

    with pytest.raises(SandboxError) as caught:
        refuse_kernel_target("/etc/resolv.conf", "/dev/\x1b]0;pwned\x07\nsandboxmgr: ok")
    assert caught.value.message.isprintable() and "\\x1b" in caught.value.message
