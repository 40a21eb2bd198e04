"""An attacker's review of exec's join ticket and of ``top`` (issue 15): what the ticket path
trusts must be what the general path would give the command now, and what ``top`` shows of a
sandbox must be the sandbox's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sandboxmgr import catalog, join, linux, live, ticket
from sandboxmgr.join import Holder, start_time
from sandboxmgr.locks import let_go, lock_name, take
from sandboxmgr.spec import INIT_NAME, EnterSpec
from sandboxmgr.store import Store
from tests.adversarial.conftest import wait_until
from tests.conftest import CLI, ConcurrentBuild, UserCLI

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

_ALLOW_ALL = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
_NO_MKDIR = {"defaultAction": "SCMP_ACT_ALLOW",
             "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}


def test_exec_into_a_started_sandbox_reads_its_seccomp_profile_file_again(
        cli: CLI, fast_cli: UserCLI, bookworm: ConcurrentBuild, tmp_path: Path) -> None:
    """A sandbox's seccomp profile file is read again at each exec (README: the path is kept, not
    the filter): tightened after the start, the next exec - by ticket or not - runs under the new
    one; removed, exec refuses. A ticket holding the filter of the start would keep the old one."""
    profile = tmp_path / "seccomp.json"
    profile.write_text(json.dumps(_ALLOW_ALL))
    name = f"sc-{os.urandom(3).hex()}"
    cli.ok("create", bookworm.profile, "--name", name, "--security-opt", f"seccomp={profile}")
    try:
        cli.ok("start", name)
        fast_cli.ok("exec", name, "mkdir", "/before")
        profile.write_text(json.dumps(_NO_MKDIR))
        tightened = fast_cli("exec", name, "mkdir", "/after")
        assert tightened.code != 0 and "Operation not permitted" in tightened.err, tightened
        assert cli("exec", name, "mkdir", "/after").code != 0  # as the general path does
        profile.unlink()
        gone = fast_cli("exec", name, "true")
        assert gone.code == 125 and "cannot read it" in gone.err, gone
    finally:
        cli("rm", "-f", name)


def test_start_keeps_an_auto_started_sandbox_whose_seccomp_profile_file_is_gone(
        cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path) -> None:
    """``start`` on a sandbox an exec started (to stop with it) makes it stay; its commands read
    its profile file at each exec, so nothing of the file is needed then: a file removed (or
    broken) since does not make ``start`` fail after it made the sandbox stay."""
    profile = tmp_path / "seccomp.json"
    profile.write_text(json.dumps(_ALLOW_ALL))
    name = f"sc-{os.urandom(3).hex()}"
    cli.ok("create", bookworm.profile, "--name", name, "--security-opt", f"seccomp={profile}")
    long = cli.popen("exec", name, "sh", "-c", "touch /long; sleep 300")
    try:
        assert wait_until(lambda: (cli.store / "sandboxes" / name / "upper" / "long").exists(), timeout=60)
        profile.unlink()
        started = cli("start", name)
        assert started.code == 0, started
        (listed,) = [row for row in json.loads(cli.ok("ls", "--json").out) if row["name"] == name]
        assert listed["state"] == "running"
    finally:
        long.kill()
        cli("rm", "-f", name)  # first: its `sleep 300` holds the pipes communicate() reads to the end
        long.communicate()


def test_top_never_shows_a_host_process_that_took_the_pid_of_one_of_the_sandbox(
        cli: CLI, live_box: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``top`` lists the sandbox's pids, then reads each one's /proc files: a process of the
    sandbox that ends in between leaves its pid to the next process the host makes, which the
    sandbox can hasten by making processes. That process (here: the test's own, standing for it)
    is the host's and is not shown."""
    cli.ok("start", live_box)
    cli.ok("exec", live_box, "sh", "-c", "(sleep 300 > /dev/null 2>&1 &)")
    members = live._members

    def reused(namespace: str, init: int) -> list[int]:
        return [*members(namespace, init), os.getpid()]  # listed, then ended: its pid is now ours

    monkeypatch.setattr(live, "_members", reused)
    rows = catalog.sandbox_processes(Store(cli.store), live_box)
    assert [row["sandbox_pid"] for row in rows][:1] == [1] and any("sleep 300" in row["command"] for row in rows)
    assert os.getpid() not in [row["pid"] for row in rows], rows


class _Joining(Exception):
    """exec_running went on to join by the ticket (raised before anything is joined)."""


@pytest.mark.parametrize("how", ["a user's store", "a link in root's store", "root's store (umask 0002)",
                                 "root's store below a user's directory"])
def test_exec_takes_no_ticket_from_a_store_another_user_can_write(tmp_path: Path, how: str) -> None:
    """``sudo sandboxmgr --store DIR exec box ...`` on a store a user can write: ``sandboxes/box``
    may be the user's link to any directory, e.g. a sandbox's root as the host sees it, where
    root inside writes files that are root's and 0600 on the host - a "ticket" naming a live
    PID 1 and every capability (the one read refuses now) or no filter and no no_new_privs. The
    ticket path never reads a store whose directories are not root's alone; the general way
    takes the command. (The same ticket in root's own store is taken: what the test plants would
    be joined.) A store below a user's directory is the user's to swap for a link to anything."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / INIT_NAME).symlink_to(sleep)
    init = subprocess.Popen([str(tmp_path / "bin" / INIT_NAME), "300"])  # any process of that name
    try:
        planted = tmp_path / "upper"  # what root inside a sandbox wrote in its root
        planted.mkdir(mode=0o700)
        (planted / "sandbox.json").write_text("{}")
        found = start_time(init.pid)
        assert found is not None
        spec = EnterSpec(root=None, no_new_privs=False, seccomp=None)
        ticket.write(planted, Holder(init.pid, found), spec, None, general=False)
        store = tmp_path / "store"
        if how == "root's store below a user's directory":
            (tmp_path / "alice").mkdir()
            os.chown(tmp_path / "alice", 65534, 65534)
            store = tmp_path / "alice" / "store"
        for directory in (store, store / "sandboxes", store / "locks"):
            directory.mkdir(mode=0o700)
            if how == "a user's store":
                os.chown(directory, 65534, 65534)
        if how in ("root's store (umask 0002)", "root's store below a user's directory"):
            planted.rename(store / "sandboxes" / "box")
            (store / "sandboxes" / "box").chmod(0o775)
        else:
            (store / "sandboxes" / "box").symlink_to(planted)
        live_lock = take(store / "locks" / lock_name("live", "box"), exclusive=True)  # "running"
        assert live_lock is not None

        def joining() -> None:
            raise _Joining(how)

        try:
            if how == "root's store (umask 0002)":
                with pytest.raises(_Joining):  # nothing is joined: the test stops it here
                    ticket.exec_running(str(store), "box", ("true",), False, joining)
            else:
                assert ticket.exec_running(str(store), "box", ("true",), False, joining) is None
        finally:
            let_go(live_lock, exclusive=True)
    finally:
        init.kill()
        init.wait()


def test_top_shows_a_bounded_part_of_each_command_line(cli: CLI, live_box: str) -> None:
    """A command line is the sandbox's to write, up to 128 KiB an argument and megabytes a process,
    in as many processes as it likes: top reads and prints its first 4 KiB (catalog.COMMAND_BYTES),
    then ``...``."""
    cli.ok("start", live_box)
    cli.ok("exec", live_box, "bash", "-c",
           "(exec -a \"$(printf '%*s' 100000 '' | tr ' ' x)\" sleep 300 > /dev/null 2>&1 &)")
    rows = json.loads(cli.ok("top", "--json", live_box).out)
    (long,) = [row for row in rows if row["command"].startswith("xxx")]
    assert long["command"] == "x" * 4096 + "...", len(long["command"])
    assert max(len(line) for line in cli.ok("top", live_box).out.splitlines()) < 2 * 4096


def test_a_command_joining_a_sandbox_that_stops_meanwhile_says_so() -> None:
    """``exec`` racing ``stop`` or ``restart``: PID 1 may die between run_joined's look at it and
    the joining child's setns. The child then says what run_joined says in that case (the sandbox
    stopped, run the command again), not an errno of setns."""
    gone = subprocess.Popen(["true"])
    pidfd = os.pidfd_open(gone.pid)
    gone.wait()  # a pidfd of a PID 1 that died and was reaped
    err_read, err_write = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the joining child, which fails before it joins anything
        try:
            os.close(err_read)
            join._joined(EnterSpec(root=None, argv=("true",)), err_write, pidfd, linux.CLONE_NEWUTS, None, [], None,
                         None)
        finally:
            os._exit(99)
    os.close(err_write)
    os.close(pidfd)
    with os.fdopen(err_read, "rb") as pipe:
        said = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 125
    assert said.split("\t")[:2] == ["125", "the sandbox stopped while the command was joining it"], said
