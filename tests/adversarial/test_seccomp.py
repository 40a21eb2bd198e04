"""Attack 10: the kernel's system call surface - user namespaces and what they unlock, the
keyrings, io_uring, userfaultfd, BPF, mounts by the new API, the cgroup limits.

Root inside keeps Docker's capability set, so each of these used to be one system
call away. The default seccomp filter denies them (EPERM; clone3 ENOSYS), the
sandbox gets a session keyring and a cgroup namespace of its own. Every call the
probe makes is harmless if a defence is missing: a bad fd, a missing path.
"""

from __future__ import annotations

import json
import platform
import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sandboxmgr import cgroups
from tests.adversarial.conftest import attempts, need_controllers, wait_until
from tests.conftest import CLI, ConcurrentBuild, Result, missing

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

IMAGE = "debian-bookworm"
UNCONFINED = ("--security-opt", "seccomp=unconfined")

# Every call `probe denied` makes: each must fail with EPERM under the default filter.
DENIED = (
    [f"{call}-{ns}" for ns in ("user", "mount", "cgroup", "uts", "ipc", "pid", "net") for call in ("unshare", "clone")]
    + ["unshare-time", "setns", "personality-read-implies-exec", "personality-addr-no-randomize",
       "unshare-user-i386", "unshare-user-x32", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
       "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "name_to_handle_at",
       "open_by_handle_at", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
       "create_module", "get_kernel_syms", "query_module", "mount", "umount2", "pivot_root", "open_tree",
       "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "syslog", "acct", "swapon",
       "swapoff", "reboot", "settimeofday", "clock_settime", "clock_adjtime", "lookup_dcookie", "quotactl",
       "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl", "iopl", "ioperm", "vhangup", "sethostname",
       "setdomainname", "fanotify_init", "socket-vsock", "set_mempolicy"]
)
# What the filter is for: each of these gets through without it (this kernel allows them
# to Docker's capability set), so the filter - nothing else - stops them.
OPEN_WITHOUT_FILTER = ("unshare-user", "clone-user", "clone3", "keyctl", "add_key", "userfaultfd",
                       "io_uring_setup", "personality-read-implies-exec", "unshare-user-i386", "clock_adjtime")


def x86_64_only() -> None:
    if platform.machine() != "x86_64":
        missing("the probe's system call numbers are x86_64's")


def probe_run(cli: CLI, attack_dir: Path, *args: str, options: tuple[str, ...] = ()) -> Result:
    result = cli("run", "-v", f"{attack_dir}:/attack:ro", *options, IMAGE, "/attack/probe", *args)
    assert result.code == 0, str(result)
    return result


def probe(cli: CLI, attack_dir: Path, *args: str, options: tuple[str, ...] = ()) -> dict[str, str]:
    return attempts(probe_run(cli, attack_dir, *args, options=options))


@pytest.mark.parametrize("no_new_privs", ["true", "false"])
def test_every_denied_system_call_fails_with_eperm_and_clone3_with_enosys(
        cli: CLI, bookworm: ConcurrentBuild, attack_dir: Path, no_new_privs: str) -> None:
    """Both orders of loading: after no_new_privs is set, and (without it) while still privileged."""
    x86_64_only()
    found = probe(cli, attack_dir, "denied", options=("--security-opt", f"no-new-privileges={no_new_privs}"))
    assert found.pop("clone3") == "ENOSYS", found  # glibc then falls back to clone, which the filter reads
    assert sorted(found) == sorted(set(DENIED) - {"clone3"}), found
    wrong = {call: result for call, result in found.items() if result != "EPERM"}
    assert not wrong, wrong


def test_what_a_userland_needs_stays_allowed(cli: CLI, bookworm: ConcurrentBuild, attack_dir: Path) -> None:
    x86_64_only()
    found = probe(cli, attack_dir, "allowed")
    assert found == dict.fromkeys(("clone-plain", "unshare-files", "personality-linux", "personality-query",
                                   "personality-linux32", "personality-uname26", "personality-linux32-uname26",
                                   "adjtimex-read", "chroot", "socket-unix", "pipe2",
                                   "ptrace-traceme"), "ok"), found
    # chroot is the capability's business: --isolation chroot drops CAP_SYS_CHROOT.
    assert probe(cli, attack_dir, "allowed", options=("--isolation", "chroot"))["chroot"] == "EPERM"


def test_seccomp_unconfined_turns_the_filter_off(cli: CLI, bookworm: ConcurrentBuild, attack_dir: Path) -> None:
    """The proof that the probe reaches the kernel: without the filter these get through."""
    x86_64_only()
    found = probe(cli, attack_dir, "denied", options=UNCONFINED)
    opened = {call: found.get(call) for call in OPEN_WITHOUT_FILTER}
    assert opened == dict.fromkeys(OPEN_WITHOUT_FILTER, "ok"), opened
    status = cli.ok("run", *UNCONFINED, IMAGE, "grep", "^Seccomp:", "/proc/self/status")
    assert status.out.split() == ["Seccomp:", "0"]
    for options in ((), ("--security-opt", "no-new-privileges=false")):
        status = cli.ok("run", *options, IMAGE, "grep", "-E", "^(Seccomp|NoNewPrivs):", "/proc/self/status")
        assert "Seccomp:\t2" in status.out, (options, status.out)


@pytest.mark.parametrize("options", [(), UNCONFINED], ids=["default", "unconfined"])
def test_a_user_namespace_cannot_lift_the_cgroup_limits(cli: CLI, bookworm: ConcurrentBuild, attack_dir: Path,
                                                        options: tuple[str, ...]) -> None:
    """unshare(USER|NS|CGROUP), mount every cgroup hierarchy, pids.max=max, memory limits
    to -1, cgroup.kill and cgroup.freeze of the test's own cgroup. With the filter every
    step fails; without it (seccomp=unconfined) the user namespace and the mounts work, but
    they show only the sandbox's leaf cgroup: the run's limits, one level up, still hold -
    read from the host, and tried from inside with 40 forks and 128 MiB."""
    need_controllers("pids", "memory")
    x86_64_only()
    own = Path("/proc/self/cgroup").read_text().splitlines()
    unified = next((line.split(":", 2)[2] for line in own if line.startswith("0::")), "/")
    script = (f"/attack/probe cgroups {unified}; cat /proc/self/cgroup; /attack/probe forks 40; "
              "/attack/attack hog 128 > /dev/null; echo hog-status $?; echo probe-done; read line")
    proc = subprocess.Popen(cli.argv("run", *options, "--pids-limit", "32", "--memory", "64M", "-v",
                                     f"{attack_dir}:/attack:ro", IMAGE, "sh", "-c", script),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    lines = []
    try:
        for line in proc.stdout:
            if line.strip() == "probe-done":
                break
            lines.append(line)
        groups = [g for g in cgroups.find_run_groups() if g.path.name.startswith(f"{proc.pid}-")]
        limits = {}
        for group in groups:
            for name in ("pids.max", "memory.limit_in_bytes", "memory.max"):
                if (group.path / name).exists():
                    limits[name] = (group.path / name).read_text().strip()
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(timeout=60)
    found = attempts(Result(0, "".join(lines), ""))
    steps = ("unshare-user-mount-cgroup", "mount-cgroup-v1-pids", "mount-cgroup-v1-memory", "mount-cgroup-v2")
    if options:
        assert {found[step] for step in steps} == {"ok"}, found  # the filter was all that stopped them
    else:
        assert {found[step] for step in steps} == {"EPERM"}, found
        writes = {k: v for k, v in found.items() if k.startswith(("write ", "host "))}
        assert len(writes) == 13 and set(writes.values()) <= {"ENOENT", "EROFS", "EPERM", "EACCES"}, writes
    # No host process's cgroup can be named, let alone killed or frozen.
    assert {v for k, v in found.items() if k.startswith("host ")} == {"ENOENT"}, found
    # The cgroup namespace: every hierarchy's root is the sandbox's own cgroup.
    cgroup_lines = [line.strip() for line in lines if line.count(":") >= 2 and line[0].isdigit()]
    assert cgroup_lines and all(line.endswith(":/") for line in cgroup_lines), cgroup_lines
    started = next(int(line.split()[1]) for line in lines if line.startswith("forks-started"))
    assert started < 32, lines
    assert "hog-status 137" in [line.strip() for line in lines], lines  # OOM-killed at 64M
    assert limits.get("pids.max") == "32", limits
    assert limits.get("memory.limit_in_bytes", limits.get("memory.max")) == str(64 << 20), limits


# --- the kernel keyrings --------------------------------------------------------------------------

# Runs as the test's helper: a session keyring of its own with a key in it, then sandboxmgr
# (inheriting that session), then a look at the session keyring again.
KEYRING_HELPER = r"""
import ctypes, json, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
KEYCTL, ADD_KEY = 250, 248
def keyctl(*args):
    result = libc.syscall(KEYCTL, *args)
    return result if result >= 0 else -ctypes.get_errno()
keyctl(1, b"sbxtest-session")                     # KEYCTL_JOIN_SESSION_KEYRING
session = keyctl(0, -3, 0)                        # KEYCTL_GET_KEYRING_ID @s
key = libc.syscall(ADD_KEY, b"user", b"sbxtest", b"secret", 6, -3)
argv = json.loads(sys.argv[1])
inside = subprocess.run([a.replace("KEY", str(key)) for a in argv], capture_output=True, text=True)
found = keyctl(10, -3, b"user", sys.argv[2].encode(), 0) if sys.argv[2] else 0   # KEYCTL_SEARCH
print(json.dumps({"session": session, "key": key, "code": inside.returncode, "out": inside.stdout,
                  "err": inside.stderr, "inside_key_on_host": found}))
"""


def with_keyring(cli: CLI, attack_dir: Path, options: tuple[str, ...], add: str) -> dict[str, object]:
    argv = cli.argv("run", "-v", f"{attack_dir}:/attack:ro", *options, IMAGE, "/attack/probe", "keys", "KEY", add)
    proc = subprocess.run([sys.executable, "-c", KEYRING_HELPER, json.dumps(argv), add.strip()],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, object] = json.loads(proc.stdout)
    assert report["code"] == 0 and int(str(report["key"])) > 0, report
    return report


@pytest.mark.parametrize("options", [(), UNCONFINED], ids=["default", "unconfined"])
def test_the_callers_session_keys_are_not_reachable_inside(cli: CLI, bookworm: ConcurrentBuild,
                                                           attack_dir: Path, options: tuple[str, ...]) -> None:
    x86_64_only()
    report = with_keyring(cli, attack_dir, options, " ")
    found = attempts(Result(0, str(report["out"]), ""))
    assert "secret" not in str(report["out"])
    if options:
        # No filter: the keyring calls work, on a fresh session keyring without the caller's key.
        assert found["session-keyring"] == "ok", found
        inside = next(line.split()[1] for line in str(report["out"]).splitlines() if line.startswith("session-id"))
        assert int(inside) != report["session"]
        assert found["read-host-key"] in ("EACCES", "ENOKEY"), found
        assert found["search-host-key"] == "ENOKEY", found
    else:
        assert {found[k] for k in ("session-keyring", "read-host-key", "search-host-key")} == {"EPERM"}, found


def test_a_key_added_inside_never_reaches_the_callers_session(cli: CLI, bookworm: ConcurrentBuild,
                                                               attack_dir: Path) -> None:
    """Without the filter (to show the keyring itself is fresh): the key lands in the sandbox's
    own session keyring, which dies with it."""
    x86_64_only()
    description = f"sbx-inside-{secrets.token_hex(4)}"
    report = with_keyring(cli, attack_dir, UNCONFINED, description)
    assert attempts(Result(0, str(report["out"]), ""))["add-key"] == "ok", report
    assert report["inside_key_on_host"] == -126, report  # -ENOKEY: not in the caller's session keyring
    # The sandbox's keyring (and the key in it) goes with its last process: the kernel's
    # key collector runs soon after, asynchronously.
    assert wait_until(lambda: description not in Path("/proc/keys").read_text(), timeout=30)
    # And with the filter, adding a key fails outright.
    report = with_keyring(cli, attack_dir, (), description)
    assert attempts(Result(0, str(report["out"]), ""))["add-key"] == "EPERM", report


# --- abstract unix sockets ------------------------------------------------------------------------


@pytest.mark.parametrize(("network", "expected"), [("host", "ok"), ("none", "ECONNREFUSED")])
def test_abstract_unix_sockets_follow_the_network_namespace(cli: CLI, bookworm: ConcurrentBuild, attack_dir: Path,
                                                            network: str, expected: str) -> None:
    """Abstract sockets are not files: no mount hides them. With --network host a sandbox
    reaches the host's (not defended, and the README says so); --network none isolates them."""
    name = f"sbxtest-{secrets.token_hex(4)}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(f"\0{name}")
    server.listen(1)
    server.settimeout(60)

    def answer() -> None:
        try:
            connection, _ = server.accept()
        except OSError:
            return
        with connection:
            connection.sendall(b"host-side")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        result = probe_run(cli, attack_dir, "abstract", name, options=("--network", network))
    finally:
        server.close()
        thread.join(timeout=5)
    assert attempts(result)["connect-abstract"] == expected, result.out
    assert ("reply host-side" in result.out.splitlines()) is (expected == "ok"), result.out


# --- the filter's settings ------------------------------------------------------------------------


def test_a_docker_format_profile_from_the_command_line_and_from_a_profile(
        cli: CLI, bookworm: ConcurrentBuild, configs_dir: Path, tmp_path: Path) -> None:
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"] if platform.machine() == "x86_64"
        else [],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["no_such_call_anywhere"], "action": "SCMP_ACT_ERRNO"},  # skipped, as runc does
            {"names": ["unshare"], "action": "SCMP_ACT_ERRNO",
             "includes": {"caps": ["CAP_SYS_ADMIN"]}},  # not ours: not included
        ],
    }))
    script = "mkdir /tmp/x; echo mkdir=$?; grep ^Seccomp: /proc/self/status"
    result = cli("run", "--security-opt", f"seccomp={profile}", IMAGE, "sh", "-c", script)
    assert result.code == 0, str(result)
    assert "mkdir=1" in result.out and "Seccomp:\t2" in result.out and "Permission denied" in result.err, result
    (configs_dir / "seccomp-file.yaml").write_text(f"extends: {IMAGE}\nseccomp: {profile}\n")
    (configs_dir / "seccomp-off.yaml").write_text(f"extends: {IMAGE}\nseccomp: unconfined\n")
    from_profile = cli("run", "seccomp-file", "sh", "-c", script)
    assert "mkdir=1" in from_profile.out, str(from_profile)
    assert cli.ok("run", "seccomp-off", "grep", "^Seccomp:", "/proc/self/status").out.split() == ["Seccomp:", "0"]
    (configs_dir / "seccomp-bad.yaml").write_text(f"extends: {IMAGE}\nseccomp: relative.json\n")
    bad = cli("run", "seccomp-bad", "true")
    assert bad.code == 125 and "seccomp: must be default, unconfined or the absolute path" in bad.err, str(bad)


def test_a_named_sandbox_keeps_its_seccomp_setting(cli: CLI, bookworm: ConcurrentBuild) -> None:
    name = "seccomp-kept"
    cli.ok("create", IMAGE, "--name", name, "--security-opt", "seccomp=unconfined")
    try:
        assert cli.ok("exec", name, "grep", "^Seccomp:", "/proc/self/status").out.split() == ["Seccomp:", "0"]
        inspect = json.loads(cli.ok("inspect", name, "--json").out)
        assert "unconfined" in json.dumps(inspect)
        # An exec may still ask for the default for itself.
        again = cli.ok("exec", "--security-opt", "seccomp=default", name, "grep", "^Seccomp:", "/proc/self/status")
        assert again.out.split() == ["Seccomp:", "2"]
    finally:
        cli.ok("rm", name)


@pytest.mark.parametrize(("content", "what"), [
    ("{not json", "not valid JSON"),
    ('{"defaultAction": "SCMP_ACT_MAYBE"}', "is not an action"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {"names": ["read"]}}', "syscalls must be a list"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]}',
     "names must be a non-empty list"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_VAX"]}', "architecture"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", '
     '"args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}', "index must be from 0 to 5"),
])
def test_a_malformed_profile_is_one_line_with_a_hint(cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path,
                                                     content: str, what: str) -> None:
    profile = tmp_path / "bad.json"
    profile.write_text(content)
    result = cli("run", "--security-opt", f"seccomp={profile}", IMAGE, "true")
    assert result.code == 125, str(result)
    lines = result.err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("sandboxmgr: error: seccomp profile") and what in lines[0], lines
    assert lines[1].startswith("hint: ") and "unconfined" in lines[1]
    missing_file = cli("run", "--security-opt", f"seccomp={tmp_path / 'none.json'}", IMAGE, "true")
    assert missing_file.code == 125 and "no such file" in missing_file.err, str(missing_file)


def test_apt_dpkg_and_processes_work_under_the_filter_kept_in_the_store(cli: CLI,
                                                                        bookworm: ConcurrentBuild) -> None:
    """apt and dpkg (the full install path runs in tests/integration), processes (clone without
    namespace flags, once glibc's clone3 got ENOSYS); the filter's BPF is kept, root's only."""
    script = ("apt-get check >/dev/null && echo apt-ok; dpkg -s dpkg >/dev/null && echo dpkg-ok; "
              "sh -c 'sleep 0.1 & wait' && echo fork-ok")
    result = cli.ok("run", IMAGE, "sh", "-c", script)
    assert result.out.splitlines() == ["apt-ok", "dpkg-ok", "fork-ok"], str(result)
    kept = list((cli.store / "cache" / "seccomp").glob("*.bpf"))
    assert kept and all(path.stat().st_mode & 0o077 == 0 for path in kept), kept
