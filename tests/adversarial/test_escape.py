"""Attacks 1 and 3: getting out of the root, at the host's processes, at the caller's terminal.

Each test runs an attack as root inside a sandbox over the real Debian image and
then checks the host: a marker file that exists only on the host must stay
invisible, host processes unreachable, the caller's terminal untouched.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import subprocess
import termios
import time
from pathlib import Path

import pytest

from tests.adversarial.conftest import attempts
from tests.conftest import CLI, ConcurrentBuild, run_in_pty

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

IMAGE = "debian-bookworm"


def attack(cli: CLI, attack_dir: Path, *args: str, options: tuple[str, ...] = ()) -> dict[str, str]:
    result = cli("run", "-v", f"{attack_dir}:/attack:ro", *options, IMAGE, "/attack/attack", *args)
    assert result.code == 0, str(result)
    return attempts(result)


@pytest.mark.parametrize("userns", ["host", "auto"])
@pytest.mark.parametrize("isolation", ["pivot_root", "chroot"])
def test_the_double_chroot_escape_does_not_reach_the_host(cli: CLI, bookworm: ConcurrentBuild, attack_dir: Path,
                                                         host_marker: Path, isolation: str, userns: str) -> None:
    found = attack(cli, attack_dir, "escape", str(host_marker), options=("--isolation", isolation, "--userns", userns))
    assert found["marker-visible"] == "ENOENT", found
    # /proc/1 is the sandbox's init: not dumpable, so its root link is closed too.
    assert found["marker-via-proc1-root"] in ("EACCES", "EPERM"), found
    if isolation == "chroot":
        # No CAP_SYS_CHROOT: the escape fails at its first step.
        assert found["chroot-subdir"] == "EPERM", found
    else:
        # chroot works, but the host's tree is not in the mount namespace at all.
        assert found["chroot-subdir"] == "ok" and found["chroot-dot"] == "ok", found
    assert host_marker.exists()


def test_only_stdin_stdout_stderr_cross_and_a_leaked_directory_fd_is_not_a_way_out(
        cli: CLI, bookworm: ConcurrentBuild, attack_dir: Path, host_marker: Path) -> None:
    # The manager inherits an open directory of the host (no O_CLOEXEC), as a careless caller's would.
    leaked = os.open(host_marker.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        argv = cli.argv("run", "-v", f"{attack_dir}:/attack:ro", IMAGE, "sh", "-c",
                        f"/attack/attack fds; /attack/attack fd-escape {host_marker}")
        proc = subprocess.run(argv, pass_fds=(leaked,), capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    finally:
        os.close(leaked)
    assert proc.returncode == 0, proc.stderr
    fds = sorted(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("fd "))
    assert fds == [0, 1, 2], proc.stdout
    assert "no-directory-fd: ok" in proc.stdout


def test_the_working_directory_never_points_outside(cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path) -> None:
    (tmp_path / "host-cwd-marker").write_text("x")
    script = "pwd; readlink /proc/self/cwd; ls -a /proc/1/cwd/ || true"
    proc = subprocess.run(cli.argv("run", IMAGE, "sh", "-c", script), cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == ["/", "/"]
    assert "host-cwd-marker" not in proc.stdout


@pytest.mark.parametrize("userns", ["host", "auto"])
def test_the_init_cannot_be_read_or_traced_and_no_host_process_is_reachable(
        cli: CLI, bookworm: ConcurrentBuild, attack_dir: Path, userns: str) -> None:
    """CVE-2019-5736's lesson: PID 1 runs the host's Python and must stay closed."""
    host_pids = [str(os.getpid()), str(os.getppid()), "1"]
    script = ("cat /proc/1/exe > /dev/null; echo exe=$?; readlink /proc/1/fd/1; echo fd=$?; "
              "cat /proc/1/environ > /dev/null; echo environ=$?; "
              f"/attack/attack signals {' '.join(host_pids)}; kill -KILL 1; echo still-here")
    result = cli("run", "--userns", userns, "-v", f"{attack_dir}:/attack:ro", IMAGE, "sh", "-c", script)
    assert result.code == 0, str(result)
    found = attempts(result)
    lines = result.out.splitlines()
    statuses = dict(line.split("=", 1) for line in lines if line.startswith(("exe=", "fd=", "environ=")))
    assert sorted(statuses) == ["environ", "exe", "fd"] and "0" not in statuses.values(), result.out
    assert "Permission denied" in result.err
    # "1" inside is the sandbox's own init: alive (kill -0 works) but not traceable.
    assert found["kill-1"] == "ok" and found["ptrace-1"] == "EPERM", found
    # The host's PIDs mean nothing in the sandbox's PID namespace (or are its own few).
    for pid in host_pids[:2]:
        if int(pid) > 10:
            assert found[f"kill-{pid}"] == "ESRCH" and found[f"ptrace-{pid}"] == "ESRCH", found
    # SIGKILL from inside is ignored by the namespace's init: the sandbox survives it.
    assert "still-here" in lines


def test_tiocsti_cannot_type_into_the_callers_terminal(cli: CLI, bookworm: ConcurrentBuild, attack_dir: Path) -> None:
    """The command runs in a session of its own: the caller's terminal is not its controlling tty.

    TIOCSTI's answer alone proves little (a kernel with dev.tty.legacy_tiocsti=0 says EIO to
    anyone without CAP_SYS_ADMIN, in the caller's session or not), so the test reads the
    command's session and controlling terminal from the host while it runs."""
    master, slave = pty.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[3] &= ~(termios.ICANON | termios.ECHO)  # raw-ish: injected bytes are readable at once
    termios.tcsetattr(slave, termios.TCSANOW, attrs)

    def become_session_leader_with_the_pty() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    tag = "3.0731"  # seconds, and a name to find the command by
    argv = cli.argv("run", "-v", f"{attack_dir}:/attack:ro", IMAGE, "sh", "-c",
                    f"/attack/attack tiocsti 'echo INJECTED\n'; exec sleep {tag}")
    proc = subprocess.Popen(argv, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=become_session_leader_with_the_pty)
    try:
        command = wait_for_process(f"sleep {tag}")
        session, tty = session_and_tty(command)
        # The caller: sandboxmgr, which the test made the leader of a session on the pty.
        assert session_and_tty(proc.pid) == (proc.pid, tty_nr(os.fstat(slave).st_rdev))
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert session != proc.pid, f"the command {command} runs in the caller's session {proc.pid}"
        assert tty != tty_nr(os.fstat(slave).st_rdev), "the caller's terminal is the command's controlling tty"
        assert attempts_of(out)["tiocsti"] in ("EPERM", "EIO"), out
        # What the caller's shell would read next from its terminal: nothing was pushed.
        fcntl.fcntl(slave, fcntl.F_SETFL, os.O_NONBLOCK)
        try:
            pushed = os.read(slave, 4096)
        except OSError as exc:
            assert exc.errno == errno.EAGAIN
            pushed = b""
        assert b"INJECTED" not in pushed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        os.close(slave)
        os.close(master)


def wait_for_process(command_line: str, timeout: float = 60) -> int:
    """The PID of the one process whose command line is ``command_line``, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-x", "-f", command_line], capture_output=True, text=True).stdout.split()
        if found:
            (pid,) = found
            return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"no process {command_line!r} within {timeout} s")


def session_and_tty(pid: int) -> tuple[int, int]:
    """The session ID and the controlling terminal (tty_nr) of ``pid``, as the host sees them."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rfind(")") + 2:].split()
    return int(fields[3]), int(fields[4])


def tty_nr(device: int) -> int:
    """A terminal's device number as /proc/PID/stat writes it."""
    major, minor = os.major(device), os.minor(device)
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def attempts_of(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(": ") for line in text.splitlines()) if v}


def test_tiocsti_with_t_reaches_only_the_sandboxs_own_pty(cli: CLI, bookworm: ConcurrentBuild,
                                                         attack_dir: Path) -> None:
    """With -t the command owns a pty made in the sandbox: injecting there is harmless."""
    status, output = run_in_pty(cli.argv("run", "-t", "-v", f"{attack_dir}:/attack:ro", IMAGE, "sh", "-c",
                                         "/attack/attack tiocsti 'true\n'; echo DONE"))
    assert status == 0, output
    assert "tiocsti: ok" in output and "DONE" in output


@pytest.mark.parametrize("target", ["/proc", "/proc/sys", "/dev/sda", "/dev", "/sys/kernel", "/sys",
                                    "/tmp/../proc", "//proc/./sys/..", "/dev/shm/../../sys/fs/cgroup"])
def test_a_bind_onto_proc_sys_or_dev_is_refused(cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path,
                                                target: str) -> None:
    """As runc refuses them: a host directory over /proc/sys (or a device of /dev) would undo
    the read-only binds and masks. One line and a hint, exit 125, for every spelling."""
    source = "/proc" if target == "/proc" else str(tmp_path)
    result = cli("run", "-v", f"{source}:{target}", IMAGE, "true")
    assert result.code == 125, str(result)
    lines = result.err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"sandboxmgr: error: cannot bind-mount onto {target}"), lines
    assert lines[1].startswith("hint: choose a target outside")


def test_a_profiles_mount_or_an_image_symlink_onto_proc_is_refused(cli: CLI, bookworm: ConcurrentBuild,
                                                                   configs_dir: Path, tmp_path: Path) -> None:
    (configs_dir / "bind-proc.yaml").write_text(f"extends: {IMAGE}\nmounts:\n  - {{source: {tmp_path}, "
                                                "target: /proc/sys/kernel}\n")
    result = cli("run", "bind-proc", "true")
    assert result.code == 125 and "cannot bind-mount onto /proc/sys/kernel" in result.err, str(result)
    # A harmless spelling that is a symlink into /proc in the sandbox's own changes.
    name = "bind-through-link"
    cli.ok("create", IMAGE, "--name", name, "-v", f"{tmp_path}:/etc/innocent")
    try:
        upper = cli.store / "sandboxes" / name / "upper" / "etc"
        upper.mkdir(parents=True, exist_ok=True)
        (upper / "innocent").symlink_to("/proc/sys")
        result = cli("exec", name, "true")
        assert result.code == 125, str(result)
        assert "cannot bind-mount onto /etc/innocent (a symlink to /proc/sys)" in result.err, str(result)
    finally:
        cli.ok("rm", name)
