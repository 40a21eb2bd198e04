"""Live sandboxes (issue 15): running or stopped, commands joining a running one, start,
stop, kill, rm -f, and a sandbox whose PID 1 or monitor was killed."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CLI, ConcurrentBuild, UserCLI, host_mounts

pytestmark = [pytest.mark.root, pytest.mark.network]

IMAGE = "debian-bookworm"


@pytest.fixture
def box(live_box: str) -> str:
    return live_box


def row(cli: CLI, name: str) -> dict[str, object]:
    (found,) = [r for r in json.loads(cli.ok("ls", "--json").out) if r["name"] == name]
    return dict(found)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def in_box(cli: CLI, name: str, path: str) -> bool:
    return cli("exec", name, "test", "-e", path).code == 0


def state_file(cli: CLI, name: str) -> dict[str, object]:
    return dict(json.loads((cli.store / "sandboxes" / name / "state.json").read_text()))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_two_commands_at_once_share_one_sandbox(user: UserCLI, box: str) -> None:
    user.ok("start", box)
    first = user.popen("exec", box, "sh", "-c",
                       "echo from-first > /note; while [ ! -e /go ]; do sleep 0.1; done; exit 3")
    try:
        wait_for(lambda: in_box(user, box, "/note"), "the first command")
        second = user("exec", box, "sh", "-c",
                      "cat /note; for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done; touch /go; exit 5")
        assert second.code == 5, second
        assert "from-first" in second.out  # a file the other wrote
        assert "while [ ! -e /go ]" in second.out  # the other's process
        assert first.wait(timeout=30) == 3  # each its own exit status
        (listed,) = [r for r in json.loads(user.ok("ls", "--json").out) if r["name"] == box]
        assert listed["state"] == "running" and listed["in_use"] is True
    finally:
        first.kill()
        first.communicate()


def test_a_stopped_sandbox_starts_for_a_command_and_stops_after_the_last(cli: CLI, box: str) -> None:
    assert row(cli, box)["state"] == "stopped"
    long = cli.popen("exec", box, "sh", "-c", "touch /long; sleep 4; echo long-done")
    try:
        wait_for(lambda: row(cli, box)["state"] == "running", "the sandbox to start")
        wait_for(lambda: in_box(cli, box, "/long"), "the long command")
        # A second command joins it and ends first: the sandbox stays, the long one goes on.
        assert cli.ok("exec", box, "echo", "short").out == "short\n"
        assert row(cli, box)["state"] == "running"
        out, _ = long.communicate(timeout=30)
        assert long.returncode == 0 and out == "long-done\n"
    finally:
        long.kill()
        long.communicate()
    wait_for(lambda: row(cli, box)["state"] == "stopped", "the sandbox to stop after its last command")
    assert row(cli, box)["exit_code"] == 0
    # --keep-running leaves it running.
    cli.ok("exec", "--keep-running", box, "true")
    assert row(cli, box)["state"] == "running"
    cli.ok("stop", box)
    assert row(cli, box)["state"] == "stopped"


def test_stop_sends_sigterm_then_sigkill_after_the_grace_time(cli: CLI, box: str) -> None:
    cli.ok("start", box)
    polite = cli.popen("exec", box, "sh", "-c",
                       "trap 'echo got-term; exit 7' TERM; touch /polite; while :; do sleep 0.1; done")
    stubborn = cli.popen("exec", box, "sh", "-c", "trap '' TERM; touch /stubborn; while :; do sleep 0.1; done")
    try:
        wait_for(lambda: in_box(cli, box, "/polite") and in_box(cli, box, "/stubborn"), "both commands")
        assert row(cli, box)["processes"] >= 2  # type: ignore[operator]
        started = time.monotonic()
        cli.ok("stop", "-t", "2", box)
        took = time.monotonic() - started
        out, _ = polite.communicate(timeout=30)
        assert polite.returncode == 7 and "got-term" in out
        assert stubborn.wait(timeout=30) == 128 + signal.SIGKILL
        assert took >= 2, f"SIGKILL came before the grace time ({took:.2f} s)"
    finally:
        for proc in (polite, stubborn):
            proc.kill()
            proc.communicate()
    stopped = row(cli, box)
    assert stopped["state"] == "stopped" and stopped["exit_code"] == 128 + signal.SIGKILL
    assert stopped["finished"] and stopped["pid"] is None
    assert "exited (137)" in cli.ok("ls").out


@pytest.mark.parametrize("victim", ["pid", "monitor"])
def test_a_killed_pid1_or_monitor_leaves_a_stopped_sandbox_and_nothing_else(cli: CLI, box: str, victim: str) -> None:
    cli.ok("start", box)
    state = state_file(cli, box)
    pid, monitor = int(str(state["pid"])), int(str(state["monitor"]))
    sleeper = cli.popen("exec", box, "sleep", "60")
    try:
        wait_for(lambda: row(cli, box)["processes"] == 1, "the command to run")
        os.kill(pid if victim == "pid" else monitor, signal.SIGKILL)
        assert sleeper.wait(timeout=30) == 128 + signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.communicate()
    wait_for(lambda: row(cli, box)["state"] == "stopped", "the sandbox to read as stopped")
    wait_for(lambda: not alive(pid) and not alive(monitor), "PID 1 and the monitor to be gone")
    assert not [m for m in host_mounts() if f"/sandboxes/{box}/" in m + "/"]
    assert cli.ok("exec", box, "echo", "again").out == "again\n"
    assert cli.ok("doctor").code == 0


def test_rm_refuses_a_running_sandbox_and_rm_f_kills_and_removes_it(cli: CLI, box: str) -> None:
    cli.ok("start", box)
    sleeper = cli.popen("exec", box, "sleep", "60")
    try:
        wait_for(lambda: row(cli, box)["processes"] == 1, "the command to run")
        refused = cli("rm", box)
        assert refused.code == 125, refused
        assert f"sandbox '{box}' is running" in refused.err and f"sandboxmgr rm -f {box}" in refused.err
        assert row(cli, box)["state"] == "running"
        cli.ok("rm", "-f", box)
        assert sleeper.wait(timeout=30) == 128 + signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.communicate()
    assert not (cli.store / "sandboxes" / box).exists()
    assert not list((cli.store / "locks").glob(f"*-{box}.lock"))


def test_a_running_sandbox_refuses_new_limits_and_its_own_apply_to_joined_commands(
        cli: CLI, fast_cli: UserCLI, bookworm: ConcurrentBuild) -> None:
    name = f"limited-{os.urandom(3).hex()}"
    cli.ok("create", IMAGE, "--name", name, "--pids-limit", "12")
    try:
        cli.ok("start", name)
        refused = cli("exec", "--memory", "64M", name, "true")
        assert refused.code == 125 and "its limits were set when it started" in refused.err, refused
        forks = cli("exec", name, "sh", "-c", "i=0; while [ $i -lt 30 ]; do sleep 5 & i=$((i+1)); done; wait")
        assert "fork" in forks.err.lower() or "resource temporarily unavailable" in forks.err.lower(), forks
        # Its commands go the general way, which enters its cgroup and reports what the limits did.
        forks = fast_cli("exec", name, "sh", "-c", "i=0; while [ $i -lt 30 ]; do sleep 5 & i=$((i+1)); done; wait")
        assert forks.path == "fast" and "the process limit (12) was reached" in forks.err, forks
    finally:
        cli.ok("rm", "-f", name)


def test_kill_sends_a_signal_to_every_process(cli: CLI, box: str) -> None:
    cli.ok("start", box)
    waiter = cli.popen("exec", box, "sh", "-c",
                       "trap 'echo got-usr1; exit 9' USR1; touch /w; while :; do sleep 0.1; done")
    try:
        wait_for(lambda: in_box(cli, box, "/w"), "the command")
        cli.ok("kill", "-s", "USR1", box)
        out, _ = waiter.communicate(timeout=30)
        assert waiter.returncode == 9 and "got-usr1" in out
        assert row(cli, box)["state"] == "running"
        bad = cli("kill", "-s", "NOPE", box)
        assert bad.code == 125 and "no such signal" in bad.err
        cli.ok("kill", box)  # KILL: the sandbox at once
        assert row(cli, box)["state"] == "stopped"
    finally:
        waiter.kill()
        waiter.communicate()


def _read_until(master: int, wanted: bytes, output: bytearray, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while wanted not in output:
        assert time.monotonic() < deadline, f"no {wanted!r} in {bytes(output)!r}"
        if select.select([master], [], [], 0.5)[0]:
            output += os.read(master, 4096)


def test_a_terminal_shell_and_a_plain_command_run_at_once(cli: CLI, box: str) -> None:
    cli.ok("start", box)
    plain = cli.popen("exec", box, "sh", "-c", "sleep 1; echo plain-done; exit 4")
    script = 'stty size; trap "stty size" WINCH; echo ready; while :; do sleep 0.2; done'
    argv = cli.argv("exec", "-t", box, "sh", "-c", script)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
    shell = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                             preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    output = bytearray()
    try:
        _read_until(master, b"ready", output)
        assert b"30 90" in output
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
        _read_until(master, b"40 100", output)  # the resize reached the sandbox's terminal
        out, _ = plain.communicate(timeout=30)
        assert plain.returncode == 4 and out == "plain-done\n"
        os.write(master, b"\x03")  # Ctrl-C
        assert shell.wait(timeout=30) == 128 + signal.SIGINT
    finally:
        shell.kill()
        shell.wait()
        plain.kill()
        plain.communicate()
        os.close(master)


def test_exec_into_a_removed_image_or_missing_sandbox_says_so(cli: CLI, tmp_path: Path) -> None:
    missing = cli("start", "no-such-box")
    assert missing.code == 125 and "no sandbox named 'no-such-box'" in missing.err
    assert cli("stop", "no-such-box").code == 125


def test_run_d_logs_ps_stop_wait_and_start_again(cli: CLI, bookworm: ConcurrentBuild) -> None:
    name = f"det-{os.urandom(3).hex()}"
    script = "trap 'echo got-term; exit 5' TERM; echo started; while :; do sleep 0.1; done"
    assert cli.ok("run", "-d", "--name", name, IMAGE, "sh", "-c", script).out.strip() == name
    try:
        wait_for(lambda: "started" in cli.ok("logs", name).out, "its first line")
        listed = next(line for line in cli.ok("ps").out.splitlines() if line.startswith(name + " "))
        assert "running since" in listed and "trap" in listed
        assert name in cli.ok("ps", "-q").out.split()
        follower = cli.popen("logs", "-f", name)
        waiter = cli.popen("wait", name)
        cli.ok("stop", name)
        followed, _ = follower.communicate(timeout=30)  # -f ends when the sandbox stops
        assert "started" in followed and "got-term" in followed
        assert waiter.communicate(timeout=30)[0].strip() == "5"
        assert name not in cli.ok("ps", "-q").out.split() and name in cli.ok("ps", "-a", "-q").out.split()
        assert cli.ok("logs", "--tail", "1", name).out == "got-term\n"
        (row,) = [r for r in json.loads(cli.ok("ps", "-a", "--json").out) if r["name"] == name]
        assert row["exit_code"] == 5 and row["command"] == ["sh", "-c", script]
        cli.ok("start", name)  # its main command again, as a container's
        wait_for(lambda: cli.ok("logs", name).out.count("started") == 2, "the second start")
        cli.ok("kill", name)
        assert cli.ok("wait", name).out.strip() == str(128 + signal.SIGKILL)
    finally:
        cli("rm", "-f", name)


def test_run_d_refuses_what_cannot_be_detached_and_leaves_nothing(cli: CLI, bookworm: ConcurrentBuild) -> None:
    before = json.loads(cli.ok("ls", "--json").out)
    missing = cli("run", "-d", IMAGE, "no-such-command")
    assert missing.code == 127 and "no-such-command: command not found" in missing.err, missing
    for args, words in ((("-d", "-t"), "-t and -d contradict"), (("-d", "--rm"), "--rm and -d contradict")):
        refused = cli("run", *args, IMAGE, "true")
        assert refused.code == 125 and words in refused.err, refused
    bare = cli("run", "-d", IMAGE)
    assert bare.code == 125 and "run -d needs a COMMAND" in bare.err
    assert json.loads(cli.ok("ls", "--json").out) == before  # no sandbox made by any of them


def test_a_detached_commands_log_is_capped(cli: CLI, bookworm: ConcurrentBuild) -> None:
    name = f"loud-{os.urandom(3).hex()}"
    cli.ok("run", "-d", "--name", name, IMAGE, "sh", "-c", "head -c 20000000 /dev/zero | tr '\\0' x; echo; echo end")
    try:
        assert cli.ok("wait", name).out.strip() == "0"
        logs = cli.store / "sandboxes" / name / "logs"
        sizes = sorted(path.stat().st_size for path in logs.iterdir())
        assert len(sizes) == 2 and all(size <= 8 * 1024 * 1024 for size in sizes), sizes
        assert cli.ok("logs", "--tail", "1", name).out == "end\n"
    finally:
        cli("rm", "-f", name)


def test_a_killed_exec_manager_leaves_its_auto_started_sandbox_to_stop(cli: CLI, box: str) -> None:
    """kill -9 of the sandboxmgr that started a sandbox for its command: the command is left
    running in it, no command holds it any more, and its monitor stops it (nothing half-started,
    nothing left running)."""
    proc = cli.popen("exec", box, "sh", "-c", "touch /started; sleep 60")
    try:
        wait_for(lambda: in_box(cli, box, "/started"), "the command")
        pid = int(str(state_file(cli, box)["pid"]))
        proc.kill()
        proc.communicate()
        wait_for(lambda: row(cli, box)["state"] == "stopped", "its monitor to stop it")
        wait_for(lambda: not alive(pid), "PID 1 to be gone")
    finally:
        proc.kill()
        proc.communicate()
    assert not [m for m in host_mounts() if f"/sandboxes/{box}/" in m + "/"]
    assert cli.ok("doctor").code == 0


PROBE = ("sh", "-c", "id; hostname; pwd; grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; env | sort")


def test_exec_into_a_started_sandbox_joins_by_its_ticket_as_the_general_path_would(
        fast_cli: UserCLI, cli: CLI, box: str) -> None:
    fast_cli.ok("start", box)
    by_ticket = fast_cli.ok("exec", box, *PROBE)
    assert by_ticket.path == "ticket"
    general = cli.ok("exec", box, *PROBE)  # --configs: the full CLI, live.run_in
    assert by_ticket.out == general.out  # the same user, host name, capabilities, filter, environment
    assert "NoNewPrivs:\t1" in by_ticket.out and "Seccomp:\t2" in by_ticket.out
    assert fast_cli("exec", box, "sh", "-c", "exit 7").code == 7
    # A ticket that is not one is ignored: the command takes the general way, and works.
    ticket_file = cli.store / "sandboxes" / box / "join.ticket"
    ticket_file.write_bytes(b"not a ticket")
    assert fast_cli.ok("exec", box, *PROBE).path == "fast"
    # Stopped, the ticket names a dead PID 1: the general way starts the sandbox again (auto).
    cli.ok("stop", box)
    assert fast_cli.ok("exec", box, "true").path == "fast"
    assert row(cli, box)["state"] == "stopped"


def test_commands_of_an_auto_started_sandbox_take_the_general_way_until_start_keeps_it(
        fast_cli: UserCLI, cli: CLI, box: str) -> None:
    long = fast_cli.popen("exec", box, "sh", "-c", "touch /long; while [ ! -e /go ]; do sleep 0.1; done")
    try:
        wait_for(lambda: in_box(cli, box, "/long"), "the first command")
        # It stops when the last command leaves: the general path (live._leave) sees to that.
        assert fast_cli.ok("exec", box, "true").path == "fast"
        cli.ok("start", box)  # now it stays: its ticket says so
        assert fast_cli.ok("exec", box, "touch", "/go").path == "ticket"
        assert long.wait(timeout=30) == 0
    finally:
        long.kill()
        long.communicate()
    assert row(cli, box)["state"] == "running"


def test_top_lists_the_processes_of_a_running_sandbox(cli: CLI, box: str) -> None:
    stopped = cli("top", box)
    assert stopped.code != 0 and f"sandbox {box!r} is not running" in stopped.err, stopped
    cli.ok("start", box)
    # A process left running, whose command line holds what a terminal would act on.
    cli.ok("exec", box, "bash", "-c", "(exec -a \"$(printf 'sleeper\\033[2J')\" sleep 300 > /dev/null 2>&1 &)")
    rows = json.loads(cli.ok("top", "--json", box).out)
    init, *rest = rows
    assert init["sandbox_pid"] == 1 and init["command"].startswith("sandboxmgr-init")
    (sleeper,) = [r for r in rest if "sleep" in r["command"] or "sleeper" in r["command"]]
    assert sleeper["command"] == "sleeper?[2J 300" and sleeper["uid"] == 0 and sleeper["sandbox_pid"] > 1
    assert os.readlink(f"/proc/{sleeper['pid']}/ns/pid") == os.readlink(f"/proc/{init['pid']}/ns/pid")
    table = cli.ok("top", box).out
    assert table.splitlines()[0].split() == ["PID", "SANDBOX", "PID", "UID", "STATE", "TIME", "COMMAND"]
    assert "\033" not in table and "sleeper?[2J 300" in table
