"""Attacks on live sandboxes (issue 15): a hostile build running as root inside a running named
sandbox, and the host's own commands racing each other over it.

Root inside must be worth nothing outside: not the caller's terminal once its command has
ended, not the power to stop the sandbox for the host, not a signal to a process that is not
the sandbox's. The host's commands (start, exec, stop, kill, rm -f) may race each other; what
they leave must be a consistent sandbox, or nothing at all.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sandboxmgr
from sandboxmgr import mountinfo
from sandboxmgr.store import Store
from tests.adversarial.conftest import processes_named, processes_rooted_in, wait_until
from tests.conftest import CLI, ConcurrentBuild, Result, UserCLI, entry_point, missing, run_in_pty

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

IMAGE = "debian-bookworm"


@pytest.fixture
def box(live_box: str) -> str:
    return live_box


def state(cli: CLI, name: str) -> dict[str, object]:
    return dict(json.loads((cli.store / "sandboxes" / name / "state.json").read_text()))


def row(cli: CLI, name: str) -> dict[str, object]:
    (found,) = [r for r in json.loads(cli.ok("ls", "--json").out) if r["name"] == name]
    return dict(found)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> Result:
    out, err = proc.communicate(timeout=timeout)
    return Result(proc.returncode, out, err)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- the inside against the host -----------------------------------------------------------------


def test_a_process_left_in_a_running_sandbox_cannot_use_the_callers_terminal_after_its_exec(
        cli: CLI, box: str) -> None:
    """A run ends with everything in it; a live sandbox outlives the command. Without -t the
    command gets the caller's terminal as its stdin/stdout: a process it leaves behind must not
    read what the user types into the host's shell afterwards (a password), nor write to it."""
    cli.ok("start", box)
    master, slave = os.openpty()
    try:
        leave = ("exec 3<&0 4>&1; (sleep 2; head -c 24 <&3 > /stolen; echo 'Password for root:' >&4) "
                 "> /dev/null 2>&1 < /dev/null & echo left")
        proc = subprocess.run(cli.argv("exec", box, "sh", "-c", leave), stdin=slave, stdout=slave, stderr=slave,
                              timeout=120)
        assert proc.returncode == 0
        os.write(master, b"typed-on-the-host-shell\n")  # the user's next line, after the exec returned
        output = bytearray()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                output += os.read(master, 4096)
    finally:
        os.close(slave)
        os.close(master)
    stolen = cli("exec", box, "cat", "/stolen")
    assert "typed-on-the-host-shell" not in stolen.out, "the sandbox read the caller's terminal after exec returned"
    assert b"Password for root:" not in output, "the sandbox wrote to the caller's terminal after exec returned"


def test_root_inside_cannot_stop_its_sandbox_by_signalling_pid1(cli: CLI, box: str) -> None:
    """PID 1 takes SIGTERM (and INT, HUP) as "stop" only from the host: root inside may kill its
    own processes, not stop the sandbox the host started (and a stop begun that way never
    ended while a process ignored SIGTERM)."""
    cli.ok("start", box)
    pid = state(cli, box)["pid"]
    for sig in ("TERM", "INT", "HUP"):
        result = cli("exec", box, "sh", "-c", f"kill -{sig} 1; sleep 1; echo survived")
        assert result.code == 0 and result.out == "survived\n", (sig, result)
    assert row(cli, box)["state"] == "running" and state(cli, box)["pid"] == pid
    stubborn = cli.popen("exec", box, "sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.1; done")
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == "up\n"
        started = time.monotonic()
        cli.ok("stop", "-t", "1", box)  # the host's stop still works, SIGKILL after the grace time
        assert time.monotonic() - started < 20
        assert stubborn.wait(timeout=30) == 128 + signal.SIGKILL
    finally:
        stubborn.kill()
        stubborn.communicate()
    assert row(cli, box)["state"] == "stopped"


def test_kill_signals_nothing_when_the_recorded_pid1_is_another_process(cli: CLI, box: str) -> None:
    """The pid in state.json is never trusted alone: once it names another process (PID 1 died,
    the pid was used again, its monitor not yet gone), `kill -s` must not signal that process's
    PID namespace. The test plays that moment: a live lock held, a state naming the init of a
    PID namespace of its own, with a process in it."""
    other = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sh", "-c", "sleep 300 & wait"])
    lock = Store(cli.store).lock("live", box)
    record = cli.store / "sandboxes" / box / "state.json"
    try:
        assert wait_until(lambda: bool(_children(other.pid)) and bool(_children(_children(other.pid)[0])))
        init = _children(other.pid)[0]
        (victim,) = _children(init)
        assert lock.try_acquire()
        record.write_text(json.dumps({"status": "running", "pid": init, "start_time": 1, "monitor": os.getpid(),
                                      "auto": False, "cgroups": [], "started": "2026-01-01T00:00:00Z"}))
        result = cli("kill", "-s", "TERM", box)
        time.sleep(0.5)
        assert alive(victim), f"sandboxmgr kill signalled another PID namespace's process: {result}"
        assert result.code == 125 and "is not running" in result.err, result
    finally:
        record.unlink(missing_ok=True)
        lock.release()
        other.kill()
        other.wait()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_joined_exec_is_confined_as_the_command_of_a_run(cli: CLI, bookworm: ConcurrentBuild) -> None:
    """Capabilities, no_new_privs, the system call filter, the masked and read-only paths, the
    mounts and the cgroup (its limits) of a command joining a running sandbox are those of a
    run's command with the same settings."""
    name = f"atk-same-{os.urandom(3).hex()}"
    probe = ("grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; cat /proc/self/cgroup; "
             "wc -c < /proc/kcore; wc -c < /proc/keys; (echo x > /proc/sys/kernel/hostname) 2>&1 | wc -l; "
             "awk '{print $5, $6}' /proc/self/mountinfo | sort")
    cli.ok("create", IMAGE, "--name", name, "--pids-limit", "64")
    try:
        ran = cli.ok("run", "--pids-limit", "64", IMAGE, "sh", "-c", probe).out
        cli.ok("start", name)
        leaves = ["/".join(Path(str(leaf)).parts[-3:]) for leaf in state(cli, name)["cgroups"]]  # type: ignore[attr-defined]
        assert leaves, "a sandbox with limits has a cgroup"
        joined = cli.popen("exec", name, "sh", "-c", probe + "; sleep 3")
        # Its sleep runs: sh and it have joined (a process counted before is the joining child,
        # in the sandbox's PID namespace before it joins the cgroup and execs).
        assert wait_until(lambda: any(_cmdline(pid) == b"sleep\x003\x00" for pid in _sandbox_pids(cli, name)))
        host_view = [Path(f"/proc/{pid}/cgroup").read_text() for pid in _sandbox_pids(cli, name)]
        result = finish(joined)
        assert result.code == 0, result
        assert host_view and all(leaf in seen for seen in host_view for leaf in leaves), (host_view, leaves)
        assert result.out == ran
    finally:
        cli("rm", "-f", name)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _sandbox_pids(cli: CLI, name: str) -> list[int]:
    init = int(str(state(cli, name)["pid"]))
    namespace = os.readlink(f"/proc/{init}/ns/pid")
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != init:
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def monitors_of(name: str) -> list[int]:
    found = []
    for pid in processes_named("sandboxmgr-mon"):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].split()[1:] == [name.encode()]:
                found.append(pid)
        except (OSError, IndexError):
            continue
    return found


def test_a_joined_exec_gets_a_session_keyring_of_its_own(cli: CLI, box: str) -> None:
    """Not the caller's session keyring (its keys), nor another command's: a fresh one, as a
    run's command gets. Read with the filter off (keyctl is filtered by default) through perl's
    syscall(): keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)."""
    import ctypes
    import platform

    if platform.machine() != "x86_64":
        missing("keyctl's system call number is x86_64's here")
    libc = ctypes.CDLL(None, use_errno=True)
    ours = libc.syscall(_SYS_KEYCTL, 0, -3, 1)
    assert ours > 0, ctypes.get_errno()
    cli.ok("start", box)
    seen = set()
    for _ in range(2):
        result = cli.ok("exec", "--security-opt", "seccomp=unconfined", box, "perl", "-e",
                        f"print syscall({_SYS_KEYCTL}, 0, -3, 0)")
        seen.add(int(result.out))
    assert ours not in seen and len(seen) == 2 and all(key > 0 for key in seen), (ours, seen)


_SYS_KEYCTL = 250  # x86_64


def test_kill_and_rm_f_send_sigkill_alone(cli: CLI, box: str) -> None:
    """`kill` (KILL) and `rm -f` kill at once, as docker's: nothing inside gets a SIGTERM first
    and runs its handler (which PID 1, woken by a SIGTERM sent just before the SIGKILL, passed
    on to every process now and then)."""
    for _ in range(6):
        cli.ok("start", box)
        trapper = cli.popen("exec", box, "sh", "-c", "trap 'echo got-term; exit 7' TERM; echo up; "
                            "while :; do sleep 0.05; done")
        try:
            assert trapper.stdout is not None and trapper.stdout.readline() == "up\n"
            cli.ok("kill", box)
            result = finish(trapper)
        finally:
            trapper.kill()
            trapper.communicate()
        assert result.code == 128 + signal.SIGKILL and "got-term" not in result.out, result


@pytest.mark.parametrize("isolation", ["pivot_root", "chroot"])
def test_what_root_inside_plants_for_the_next_exec_does_not_lead_it_out(
        cli: CLI, bookworm: ConcurrentBuild, attack_dir: Path, host_marker: Path, isolation: str) -> None:
    """A running sandbox has had time to prepare: a symlink out for the next exec's -w, a fake
    /dev/ptmx, a process named as PID 1. The next exec (with a descriptor of the host's open
    in its manager, as a careless caller's) still lands inside, confined, with stdin, stdout
    and stderr only; with chroot isolation too, where the host's tree is in the sandbox's
    mount namespace."""
    name = f"atk-plant-{os.urandom(3).hex()}"
    cli.ok("run", "--name", name, "--isolation", isolation, "-v", f"{attack_dir}:/attack:ro", IMAGE, "true")
    try:
        cli.ok("start", name)
        plant = (f"ln -s {'../' * 16} /up; ln -sf /proc/1/root /dev/ptmx; "
                 "cp /bin/sleep /sandboxmgr-init; (/sandboxmgr-init 300 > /dev/null 2>&1 &)")
        cli.ok("exec", name, "sh", "-c", plant)
        leaked = os.open(host_marker.parent, os.O_RDONLY | os.O_DIRECTORY)  # no O_CLOEXEC
        try:
            argv = cli.argv("exec", "-w", f"/up{host_marker.parent}", name, "sh", "-c",
                            f"cat ./{host_marker.name} {host_marker}; /attack/attack fds; "
                            f"/attack/attack fd-escape {host_marker}; /attack/attack escape {host_marker}")
            proc = subprocess.run(argv, pass_fds=(leaked,), capture_output=True, text=True, timeout=120,
                                  stdin=subprocess.DEVNULL)
        finally:
            os.close(leaked)
        assert "on the host only" not in proc.stdout, proc.stdout
        fds = sorted(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("fd "))
        assert fds == [0, 1, 2], proc.stdout
        found = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
        assert found.get("no-directory-fd") == "ok", proc.stdout
        assert found["marker-visible"] == "ENOENT" and found["marker-via-proc1-root"] in ("EACCES", "EPERM"), found
        if isolation == "chroot":
            assert found["chroot-subdir"] == "EPERM", found
        # With -t the pty still comes from the sandbox's own devpts, not from the planted /dev/ptmx.
        code, output = run_in_pty(cli.argv("exec", "-t", name, "sh", "-c", "tty; echo done"), timeout=120)
        assert code == 0 and "/dev/pts/" in output and "done" in output, output
        assert host_marker.exists()
    finally:
        cli("rm", "-f", name)


def _import_path() -> list[str]:
    """Where the manager (the `sandboxmgr` script of this environment) imports from: the script's
    directory, then this interpreter's path; and the package's own directory."""
    script = Path(entry_point()[0])
    found = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
                           capture_output=True, text=True, check=True).stdout
    package = Path(sandboxmgr.__file__).parent
    return [str(script.parent), *(p for p in json.loads(found) if p.startswith("/")), str(package)]


def _plant_script(directories: list[str]) -> str:
    """Shell that plants, in each of ``directories`` inside the sandbox, a module for every name of
    Python's standard library and of sandboxmgr's package, each leaving /imported-NAME if run."""
    package = Path(sandboxmgr.__file__).parent
    ours = sorted(p.stem for p in package.rglob("*.py") if p.stem != "__init__")
    names = sorted(set(sys.stdlib_module_names) | set(ours))
    lines = ["set -e"]
    for directory in directories:
        lines.append(f"mkdir -p '{directory}'")
        for name in names:
            lines.append(f"printf '%s\\n' \"open('/imported-{name}', 'w').close()\" > '{directory}/{name}.py'")
    return "\n".join(lines) + "\n"


def test_nothing_the_sandbox_plants_where_the_manager_imports_from_is_imported(
        cli: CLI, fast_cli: UserCLI, box: str) -> None:
    """PID 1 after its root switch and a joined command see the sandbox's files at the paths the
    manager imports from: a module imported there then would be the sandbox's code, run as the
    manager. Root inside plants a module of every name on every such path; PID 1, commands joined
    by ticket and by the general way, with and without a terminal, import none of them."""
    cli.ok("start", box)
    cli.ok("exec", "-i", box, "sh", input=_plant_script(_import_path()))
    cli.ok("restart", box)  # a PID 1 that switched into a root holding them
    assert fast_cli.ok("exec", box, "true").path == "ticket"
    assert fast_cli.ok("exec", box, "sh", "-c", "exit 0").path == "ticket"
    cli.ok("exec", box, "true")
    code, output = run_in_pty([*entry_point(), "--store", str(cli.store), "exec", "-t", box, "sh", "-c", "tty"],
                              timeout=120)
    assert code == 0 and "/dev/pts/" in output, output
    cli.ok("stop", box)
    assert fast_cli("exec", box, "true").code == 0  # started for it, stopped after it
    left = cli.ok("exec", box, "sh", "-c", "ls / | grep '^imported-' || true").out
    assert left == "", f"modules the sandbox planted were imported: {left}"


# --- the host's commands racing each other -------------------------------------------------------


def test_stop_is_not_held_up_by_a_suspended_exec(cli: CLI, box: str) -> None:
    """Ctrl-Z on an `exec` in one terminal, `stop` in another: the stop still stops the sandbox
    within its grace time, instead of failing after 30 s with the sandbox left running (a
    joined command is its exec's child on the host, and the kernel keeps PID 1 until that
    exec has reaped it). The exec resumes and reports its command's end."""
    cli.ok("start", box)
    joined = cli.popen("exec", box, "sleep", "300")
    try:
        assert wait_until(lambda: row(cli, box)["processes"] == 1)
        os.kill(joined.pid, signal.SIGSTOP)
        started = time.monotonic()
        stopped = cli("stop", "-t", "1", box)
        took = time.monotonic() - started
        assert stopped.code == 0 and took < 15, (round(took, 1), stopped)
        assert row(cli, box)["state"] == "stopped"
        assert joined.wait(timeout=30) in (128 + signal.SIGTERM, 128 + signal.SIGKILL)
    finally:
        if joined.poll() is None:
            os.kill(joined.pid, signal.SIGCONT)
        joined.kill()
        joined.communicate()


def test_rm_f_racing_execs_leaves_nothing_behind(cli: CLI, bookworm: ConcurrentBuild) -> None:
    """`rm -f` while commands run and others arrive: each exec ends with its command's death
    (137) or one clear error (125, never a traceback), and the sandbox is gone whole: no
    process, monitor, mount, cgroup or lock file of it is left."""
    name = f"atk-rm-{os.urandom(3).hex()}"
    cli.ok("create", IMAGE, "--name", name, "--pids-limit", "100")
    cli.ok("start", name)
    monitor = int(str(state(cli, name)["monitor"]))
    cgroups = [Path(str(c)).parent for c in state(cli, name)["cgroups"]]  # type: ignore[attr-defined]
    execs = [cli.popen("exec", name, "sleep", "300") for _ in range(3)]
    try:
        assert wait_until(lambda: row(cli, name)["processes"] == 3)
        execs += [cli.popen("exec", name, "sh", "-c", "sleep 300") for _ in range(3)]  # arriving meanwhile
        removed = cli("rm", "-f", name)
        deadline = time.monotonic() + 60
        while removed.code != 0 and time.monotonic() < deadline:  # busy while an exec arrives
            assert removed.code == 125 and "is busy" in removed.err and "Traceback" not in removed.err, removed
            removed = cli("rm", "-f", name)
        assert removed.code == 0, removed
        results = [finish(proc) for proc in execs]
    finally:
        for proc in execs:
            proc.kill()
            proc.communicate()
        cli("rm", "-f", name)
    for result in results:
        assert result.code in (128 + signal.SIGKILL, 125), result
        assert "Traceback" not in result.err and len(result.err.strip().splitlines()) <= 2, result
    assert not (cli.store / "sandboxes" / name).exists()
    assert not list((cli.store / "locks").glob(f"*-{name}.lock"))
    assert wait_until(lambda: not alive(monitor)), "the monitor outlived rm -f"
    assert not monitors_of(name)
    assert not processes_rooted_in(cli.store / "sandboxes" / name)
    assert not mountinfo.mounts_under(cli.store)
    assert not [group for group in cgroups if group.exists()], cgroups


def test_two_starts_and_a_stop_at_once_leave_one_consistent_sandbox(cli: CLI, box: str) -> None:
    """Two `start`s and a `stop` racing: one monitor at most, and what `ls` says is true."""
    for _ in range(3):
        procs = [cli.popen("start", box), cli.popen("start", box), cli.popen("stop", "-t", "1", box)]
        results = [finish(proc) for proc in procs]
        for result in results:
            assert result.code == 0 or ("is busy" in result.err and "Traceback" not in result.err), result
        monitors = monitors_of(box)
        listed = row(cli, box)
        if listed["state"] == "running":
            assert len(monitors) == 1 and monitors[0] == state(cli, box)["monitor"], (monitors, listed)
            assert cli.ok("exec", box, "echo", "in").out == "in\n"
        else:
            assert wait_until(lambda: not monitors_of(box)), monitors
        cli.ok("stop", "-t", "1", box)
