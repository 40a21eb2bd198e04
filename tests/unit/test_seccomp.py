"""The seccomp policy as data, Docker-format profiles, the BPF cache; bind targets and uids
(no root, nothing entered: the filters are built with the real libseccomp, never loaded)."""

from __future__ import annotations

import errno
import json
import platform
from pathlib import Path

import pytest

from sandboxmgr import libseccomp, seccomp
from sandboxmgr.config import SandboxConfig, options
from sandboxmgr.mounts import BindMount, refuse_kernel_target
from sandboxmgr.seccomp import (
    ACT_ALLOW,
    CMP_EQ,
    CMP_MASKED_EQ,
    NAMESPACE_FLAGS,
    ArgCmp,
    ProfileFileError,
    Rule,
    act_errno,
    default_policy,
    load_profile,
)
from sandboxmgr.users import check_user


def rules_for(policy: seccomp.Policy, name: str) -> list[Rule]:
    return [rule for rule in policy.rules if name in rule.names]


def test_the_default_policy_is_dockers_semantics() -> None:
    policy = default_policy()
    assert policy.default_action == act_errno(errno.EPERM)
    allowed = {name for rule in policy.rules if rule.action == ACT_ALLOW and not rule.args for name in rule.names}
    for denied in ("unshare", "clone", "clone3", "setns", "keyctl", "add_key", "request_key", "bpf",
                   "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
                   "open_by_handle_at", "name_to_handle_at", "kexec_load", "kexec_file_load", "init_module",
                   "finit_module", "delete_module", "mount", "umount2", "pivot_root", "move_mount", "open_tree",
                   "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "syslog", "acct", "swapon",
                   "swapoff", "reboot", "settimeofday", "clock_settime", "clock_adjtime", "personality",
                   "lookup_dcookie", "quotactl", "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl", "vm86",
                   "vm86old", "socket", "create_module", "get_kernel_syms", "query_module"):
        assert denied not in allowed, denied
    for needed in ("execve", "chroot", "setresuid", "capset", "adjtimex", "openat", "fork", "rseq"):
        assert needed in allowed, needed
    (clone,) = rules_for(policy, "clone")
    assert clone.action == ACT_ALLOW and clone.args == (ArgCmp(0, CMP_MASKED_EQ, NAMESPACE_FLAGS, 0),)
    (clone3,) = rules_for(policy, "clone3")
    assert clone3.action == act_errno(errno.ENOSYS) and not clone3.args
    personalities = sorted(rule.args[0].value for rule in rules_for(policy, "personality"))
    assert personalities == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]
    assert all(rule.args[0].op == CMP_EQ for rule in rules_for(policy, "personality"))


def test_ptrace_only_from_kernel_4_8(monkeypatch: pytest.MonkeyPatch) -> None:
    assert seccomp._kernel_at_least((4, 8), "4.8.0-1") and seccomp._kernel_at_least((4, 8), "6.18.44-fc")
    assert not seccomp._kernel_at_least((4, 8), "4.4.302") and not seccomp._kernel_at_least((4, 8), "junk")
    monkeypatch.setattr(seccomp, "_kernel_at_least", lambda _version, _release=None: False)
    allowed = {name for rule in default_policy().rules for name in rule.names}
    assert "ptrace" not in allowed and "process_vm_readv" not in allowed


def write(tmp_path: Path, data: object) -> str:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_a_docker_format_profile(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"name": "getpid", "action": "SCMP_ACT_ALLOW"},  # the older single-name form
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["unshare"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
        ],
    })
    policy = load_profile(path, frozenset({"CHOWN", "SYS_CHROOT"}))
    assert policy.default_action == act_errno(38) and policy.source == path
    assert policy.arches == (seccomp.ARCH_X86_64, seccomp.ARCH_X86)
    names = [rule.names for rule in policy.rules]
    assert ("read", "write") in names and ("getpid",) in names and ("chroot",) in names
    assert ("unshare",) not in names  # needs a capability the sandbox lacks
    assert ("arch_prctl",) not in names or platform.machine() == "s390x"
    assert rules_for(policy, "mkdir")[0].action == act_errno(13)
    # Two comparisons on one argument: two rules, either allows (as runc does).
    assert [rule.args for rule in rules_for(policy, "personality")] == [
        (ArgCmp(0, CMP_EQ, 0),), (ArgCmp(0, CMP_EQ, 8),)]


@pytest.mark.parametrize(("data", "what"), [
    ("[1, 2", "not valid JSON"),
    ([], "the top level must be a JSON object"),
    ({}, "defaultAction: None is not an action"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"}, "is not an action"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": "read", "action": "SCMP_ACT_ALLOW"}]}, "names"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                                        "errnoRet": -1}]}, "errnoRet must be a non-negative"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                                        "args": [{"index": 0, "op": "SCMP_CMP_ALMOST"}]}]}, "op"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                                                        "includes": {"minKernel": "new"}}]}, "minKernel"),
])
def test_a_malformed_profile_says_what_and_where(tmp_path: Path, data: object, what: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ProfileFileError) as caught:
        load_profile(path)
    assert caught.value.message.startswith(f"seccomp profile {path}: ") and what in caught.value.message
    assert caught.value.hint and "unconfined" in caught.value.hint and caught.value.exit_code == 125


def test_the_bpf_is_built_once_and_read_back_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache file is used only if it starts with exactly what it was built from."""
    policy = default_policy()
    first = libseccomp.program(policy, tmp_path)
    assert first and len(first) % 8 == 0 and len(first) // 8 < 4096  # the kernel's BPF_MAXINSNS
    (kept,) = tmp_path.iterdir()
    assert kept.stat().st_mode & 0o777 == 0o600

    def no_library(_policy: seccomp.Policy) -> libseccomp.Filter:
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(libseccomp, "compile_policy", no_library)
    assert libseccomp.program(policy, tmp_path) == first
    # A different policy, or a tampered header, is never served from that file.
    kept.write_bytes(kept.read_bytes().replace(b"sandboxmgr seccomp 1", b"sandboxmgr seccomp 0"))
    with pytest.raises(AssertionError, match="cache was not used"):
        libseccomp.program(policy, tmp_path)
    other = seccomp.Policy(policy.default_action, policy.rules[:1])
    with pytest.raises(AssertionError, match="cache was not used"):
        libseccomp.program(other, tmp_path)


def test_the_seccomp_setting_is_kept_and_overridden() -> None:
    saved = SandboxConfig(hostname="box", seccomp="unconfined")
    assert SandboxConfig.from_json(saved.to_json()).seccomp == "unconfined"
    assert SandboxConfig.from_json({"hostname": "old"}).seccomp == "default"
    assert saved.merged(options()).seccomp == "unconfined"
    assert saved.merged(options(seccomp="/x.json")).seccomp == "/x.json"


@pytest.mark.parametrize("target", ["/proc", "/proc/sys", "/sys", "/sys/fs/cgroup", "/dev", "/dev/sda",
                                    "/tmp/../proc", "//proc", "/./dev/./shm", "/a/b/../../sys/kernel"])
def test_binds_onto_the_kernels_file_systems_are_refused(target: str) -> None:
    with pytest.raises(Exception, match="cannot bind-mount onto") as caught:
        BindMount.parse(f"/tmp:{target}")
    assert getattr(caught.value, "hint", None)
    with pytest.raises(Exception, match="cannot bind-mount onto"):
        refuse_kernel_target(target)


@pytest.mark.parametrize("target", ["/procs", "/device", "/system", "/mnt/proc", "/srv/dev", "/tmp"])
def test_other_targets_are_fine(target: str) -> None:
    assert BindMount.parse(f"/tmp:{target}").target == target


@pytest.mark.parametrize("user", ["4294967295", "-1", "99999999999999999999", "0:4294967295", "root:-5", "0:-0"])
def test_uids_and_gids_out_of_range_are_refused(user: str) -> None:
    with pytest.raises(Exception, match="is not a valid") as caught:
        check_user(user)
    assert getattr(caught.value, "hint", None)


@pytest.mark.parametrize("user", [None, "", "0", "4294967294", "nobody", "1000:1000", "builder:staff"])
def test_valid_users_pass(user: str | None) -> None:
    check_user(user)


def test_the_profile_key_is_validated_inherited_and_not_a_build_input(tmp_path: Path) -> None:
    from sandboxmgr.errors import ProfileError
    from sandboxmgr.identity import image_key
    from sandboxmgr.profile import ProfileRegistry

    base = "distro: debian\nrelease: bookworm\n"
    (tmp_path / "parent.yaml").write_text(base + "seccomp: /etc/sandboxmgr/strict.json\n")
    (tmp_path / "child.yaml").write_text("extends: parent\n")
    (tmp_path / "plain.yaml").write_text(base)
    registry = ProfileRegistry([tmp_path])
    assert registry.load("child").seccomp == "/etc/sandboxmgr/strict.json"
    plain = registry.load("plain")
    assert plain.seccomp == "default"
    (tmp_path / "plain.yaml").write_text(base + "seccomp: unconfined\n")
    off = ProfileRegistry([tmp_path]).load("plain")
    assert off.seccomp == "unconfined" and image_key(off) == image_key(plain)
    (tmp_path / "bad.yaml").write_text(base + "seccomp: strict.json\n")
    with pytest.raises(ProfileError) as caught:
        ProfileRegistry([tmp_path]).load("bad")
    assert f"{tmp_path / 'bad.yaml'}:3: seccomp: must be default, unconfined or the absolute path" \
        in caught.value.message
