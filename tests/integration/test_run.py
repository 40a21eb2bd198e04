"""Running commands in ephemeral sandboxes over a real debootstrapped Debian bookworm."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CLI, ConcurrentBuild, UserCLI, host_mounts, run_in_pty, taken_path

pytestmark = [pytest.mark.root, pytest.mark.network]

IMAGE = "debian-bookworm"


def test_two_concurrent_builds_make_one_image(cli: CLI, bookworm: ConcurrentBuild) -> None:
    # Other tests of the session may have added images of their own profiles by now.
    images = [i for i in json.loads(cli.ok("images", "--json").out) if i["profile"] == IMAGE]
    assert len(images) == 1
    assert len(images[0]["layers"]) == 1
    # One of the two waited for the other instead of building again.
    assert any("waiting for another build" in r.err for r in bookworm.results)
    assert list((cli.store / "tmp").iterdir()) == []


def test_hello_world(user: UserCLI) -> None:
    result = user.ok("run", IMAGE, "echo", "hello world")
    assert result.out == "hello world\n"


def test_the_kernel_is_the_hosts_and_the_userland_the_targets(user: UserCLI) -> None:
    result = user.ok("run", IMAGE, "--", "sh", "-c", "uname -r; . /etc/os-release; echo $ID $VERSION_CODENAME")
    kernel, userland = result.out.splitlines()
    assert kernel == platform.release()
    assert userland == "debian bookworm"


def test_pid_1_is_the_init_and_no_host_process_is_visible(user: UserCLI) -> None:
    script = "tr '\\0' ' ' < /proc/1/cmdline; echo; ls -d /proc/[0-9]* | wc -l; echo $$"
    result = user.ok("run", IMAGE, "--", "sh", "-c", script)
    init_cmdline, count, own_pid = result.out.splitlines()
    # A neutral command line: not the host's interpreter, nor the store's path.
    assert init_cmdline.strip() == "sandboxmgr-init", init_cmdline
    assert own_pid == "2"
    # PID 1, the shell, and the ls/wc it runs: nothing of the host.
    assert int(count) <= 4


def test_hostname_is_the_sandboxs(user: UserCLI) -> None:
    assert user.ok("run", IMAGE, "hostname").out.strip() == IMAGE
    assert user.ok("run", "--hostname", "box1", IMAGE, "hostname").out.strip() == "box1"
    assert os.uname().nodename != "box1"


def test_network_none_leaves_only_loopback(user: UserCLI) -> None:
    result = user.ok("run", "--network", "none", IMAGE, "ls", "/sys/class/net")
    assert result.out.split() == ["lo"]
    state = user.ok("run", "--network", "none", IMAGE, "cat", "/sys/class/net/lo/operstate").out.strip()
    assert state in ("unknown", "up")
    host = user.ok("run", IMAGE, "ls", "/sys/class/net").out.split()
    assert sorted(host) == sorted(os.listdir("/sys/class/net"))


def test_exit_codes_propagate(user: UserCLI) -> None:
    assert user("run", IMAGE, "sh", "-c", "exit 7").code == 7
    missing = user("run", IMAGE, "no-such-command")
    assert missing.code == 127
    assert "no-such-command: command not found in the sandbox" in missing.err
    assert user("run", IMAGE, "/etc/passwd").code == 126
    assert user("run", IMAGE, "sh", "-c", "kill -TERM $$").code == 128 + signal.SIGTERM
    # With stdout and stderr closed (a daemon's cron job), the status still comes through.
    for closed in (">&-", "2>&-"):
        argv = user.argv("run", IMAGE, "sh", "-c", "exit 9")
        closed_run = subprocess.run(["sh", "-c", f'"$@" {closed}', "sh", *argv],
                                    capture_output=True, text=True, timeout=60, env=user.env)
        assert closed_run.returncode == 9, closed_run.stderr


def test_stdin_passes_through(user: UserCLI) -> None:
    data = "line one\nline two\n" * 1000
    assert user.ok("run", IMAGE, "cat", input=data).out == data


def test_bind_mounts_read_write_and_read_only(cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("from host")
    result = cli.ok("run", "-v", f"{shared}:/data", IMAGE, "sh", "-c", "cat /data/in; echo back > /data/out")
    assert result.out == "from host"
    assert (shared / "out").read_text() == "back\n"
    readonly = cli("run", "-v", f"{shared}:/data:ro", IMAGE, "sh", "-c", "echo x > /data/nope")
    assert readonly.code != 0
    assert "Read-only file system" in readonly.err
    assert not (shared / "nope").exists()


def test_a_bind_target_symlinked_to_etc_stays_inside(cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path) -> None:
    """A rootfs whose /src is a symlink to /etc must not get the bind on the host's /etc."""
    shared = tmp_path / "payload"
    shared.mkdir()
    (shared / "marker").write_text("inside")
    name = "symlinked"
    cli.ok("create", IMAGE, "--name", name, "-v", f"{shared}:/src/payload")
    try:
        # The attack, planted in the sandbox's own layer before its first run.
        (cli.store / "sandboxes" / name / "upper" / "src").symlink_to("/etc")
        host_before = sorted(os.listdir("/etc"))
        result = cli.ok("exec", name, "cat", "/etc/payload/marker")
        assert result.out == "inside"
        assert sorted(os.listdir("/etc")) == host_before
        assert not Path("/etc/payload").exists()
    finally:
        cli.ok("rm", name)


def test_user_workdir_and_env(cli: CLI, bookworm: ConcurrentBuild) -> None:
    result = cli.ok("run", "-u", "nobody", "-w", "/tmp/work", "-e", "GREETING=hi", IMAGE,
                    "sh", "-c", "id -un; pwd; echo $GREETING; echo $HOME")
    assert result.out.splitlines() == ["nobody", "/tmp/work", "hi", "/nonexistent"]
    bad = cli("run", "-u", "nosuchuser", IMAGE, "true")
    assert bad.code == 125
    assert "no user 'nosuchuser'" in bad.err


def test_capabilities_are_cut_to_dockers_set(user: UserCLI) -> None:
    result = user.ok("run", IMAGE, "sh", "-c", "grep CapBnd /proc/self/status")
    bounding = int(result.out.split()[1], 16)
    assert bounding == 0xA80425FB  # CHOWN..SETFCAP as docker's default
    mount = user("run", IMAGE, "mount", "-t", "tmpfs", "none", "/mnt")
    assert mount.code != 0


def test_ephemeral_changes_vanish(user: UserCLI) -> None:
    user.ok("run", IMAGE, "touch", "/ephemeral-marker")
    assert user("run", IMAGE, "test", "-e", "/ephemeral-marker").code == 1
    assert list((user.store / "tmp").iterdir()) == []


def test_tty_gives_a_real_terminal(user: UserCLI) -> None:
    status, text = run_in_pty(user.argv("run", "-it", IMAGE, "sh", "-c", "tty; test -t 0 && echo TTY-OK"),
                              env=user.env)
    assert status == 0, text
    assert f"sandboxmgr: path: {user.expect}" in text, text  # -t on a terminal: the fast path's too
    assert "/dev/pts/0" in text
    assert "TTY-OK" in text


def test_run_without_a_command_on_a_terminal_gives_the_shell_a_pty(user: UserCLI) -> None:
    _, text = run_in_pty(user.argv("run", IMAGE), keys=b"tty; echo JOB-$(set -o | grep -c 'monitor.*on')\nexit\n",
                         env=user.env, ready=f"@{IMAGE}:".encode())  # at the prompt
    assert f"sandboxmgr: path: {user.expect}" in text, text
    assert "/dev/pts/0" in text, text
    assert "JOB-1" in text, text  # job control: the shell has a controlling terminal


def test_sigterm_to_the_manager_kills_the_command_and_leaves_no_mount(user: UserCLI) -> None:
    """On both paths; the sandbox's own mount namespace is checked gone by
    tests/adversarial/test_crash.py (its mounts are not in the host's table)."""
    before = host_mounts()
    proc = user.popen("run", IMAGE, "sleep", "6172")
    assert wait_for(lambda: subprocess.run(["pgrep", "-x", "-f", "sleep 6172"], capture_output=True).returncode == 0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert taken_path(err)[0] == user.expect, err
    assert proc.returncode == 128 + signal.SIGTERM
    assert wait_for(lambda: subprocess.run(["pgrep", "-x", "-f", "sleep 6172"], capture_output=True).returncode != 0), \
        "the command outlived the manager's SIGTERM"
    assert host_mounts() == before


def wait_for(check: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_sigkill_of_the_manager_kills_the_sandbox(user: UserCLI) -> None:
    before = host_mounts()
    proc = user.popen("run", IMAGE, "sleep", "1234")
    time.sleep(1.5)
    proc.kill()
    _, err = proc.communicate(timeout=20)
    assert taken_path(err)[0] == user.expect, err
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = subprocess.run(["pgrep", "-f", "sleep 1234"], capture_output=True).returncode == 0
        if not alive:
            break
        time.sleep(0.2)
    assert not alive
    assert host_mounts() == before
    # The next command removes the dead run's directory.
    user.ok("run", IMAGE, "true")
    assert list((user.store / "tmp").iterdir()) == []


def test_chroot_isolation_works_and_drops_sys_chroot(cli: CLI, bookworm: ConcurrentBuild) -> None:
    result = cli.ok("run", "--isolation", "chroot", IMAGE, "sh", "-c", "grep CapBnd /proc/self/status")
    bounding = int(result.out.split()[1], 16)
    assert not bounding & (1 << 18)
