"""What users type, run as they type it: the fast path taken (and said), the options that have no
other runtime test (`shell`, `-v SRC:DST:O`, no-new-privileges), the image held during a run, and
Ctrl-C's exit status. Most tests run twice (the `user` fixture): the fast path and the full one."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import UserCLI, run_in_pty, taken_path

pytestmark = [pytest.mark.root, pytest.mark.network]

IMAGE = "debian-bookworm"


def write_profile(user: UserCLI, name: str, text: str) -> None:
    """A profile of the user's own (XDG_CONFIG_HOME's on the fast path, --configs' on the full)."""
    (user.profiles / f"{name}.yaml").write_text(text)
    # A new file in a profile directory could shadow a profile of a lower one: the cached
    # resolutions from that directory are stale, and the next run of each is the full path's.
    user.first_run(IMAGE)


def wait_for_line(proc: subprocess.Popen[str], expected: str, timeout: float = 60) -> None:
    """Until ``proc`` prints ``expected`` on stdout: its command is running in the sandbox."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            line = proc.stdout.readline()
            if line.strip() == expected:
                return
            assert line, f"{proc.args!r} ended: {proc.communicate()}"
    pytest.fail(f"{proc.args!r} never said {expected!r}")


def images_of(user: UserCLI, profile: str) -> list[dict[str, object]]:
    return [row for row in json.loads(user.ok("images", "--json").out) if row["profile"] == profile]


# --- the fast path, taken and said ----------------------------------------------------------------


def test_the_fast_path_runs_what_users_type_and_says_so_only_when_asked(fast_cli: UserCLI) -> None:
    result = fast_cli.ok("run", IMAGE, "echo", "hi")
    assert (result.out, result.path) == ("hi\n", "fast")
    # Unasked, not a word of it: the fast path's stderr is the command's.
    quiet = {key: value for key, value in (fast_cli.env or {}).items() if key != "SANDBOXMGR_DEBUG_PATH"}
    plain = subprocess.run(fast_cli.argv("run", IMAGE, "sh", "-c", "echo out; echo err >&2"),
                           capture_output=True, text=True, env=quiet, timeout=60, stdin=subprocess.DEVNULL)
    assert (plain.returncode, plain.stdout, plain.stderr) == (0, "out\n", "err\n")
    # A profile named in SANDBOXMGR_CONFIGS is the full path's business, as --configs is.
    configs = fast_cli.config_home / "named"
    configs.mkdir(exist_ok=True)
    named = subprocess.run(fast_cli.argv("run", IMAGE, "true"), capture_output=True, text=True, timeout=60,
                           env={**(fast_cli.env or {}), "SANDBOXMGR_CONFIGS": str(configs)})
    assert named.returncode == 0 and taken_path(named.stderr)[0] == "full", named.stderr


def test_a_users_own_profile_takes_the_fast_path_from_its_second_run(fast_cli: UserCLI) -> None:
    write_profile(fast_cli, "mine", "extends: debian-bookworm\nhostname: mine-box\nenv: {WHOSE: mine}\n")
    first = fast_cli.argv("run", "mine", "sh", "-c", "hostname; echo $WHOSE")
    done = subprocess.run(first, capture_output=True, text=True, env=fast_cli.env, timeout=600)
    assert taken_path(done.stderr)[0] == "full" and done.stdout == "mine-box\nmine\n", done
    # From the cache: the profile's settings, not only its image.
    second = fast_cli.ok("run", "mine", "sh", "-c", "hostname; echo $WHOSE")
    assert second.out == "mine-box\nmine\n"


# --- shell, -v :O, no-new-privileges -----------------------------------------------------------------


def test_shell_is_an_interactive_shell_in_the_named_sandbox(fast_cli: UserCLI) -> None:
    fast_cli.ok("create", IMAGE, "--name", "shelled")
    try:
        typed = b"echo $((6*7)) > /answer; tty; echo JOB-$(set -o | grep -c 'monitor.*on'); exit 3\n"
        # Typed at the prompt (bash's, with the sandbox's host name): earlier, the switch of the
        # terminal to raw mode may drop it.
        status, text = run_in_pty(fast_cli.argv("shell", "shelled"), keys=typed, env=fast_cli.env, ready=b"@shelled:")
        assert status == 3, text
        assert "/dev/pts/0" in text and "JOB-1" in text, text  # a terminal of its own, job control
        assert fast_cli.ok("exec", "shelled", "cat", "/answer").out == "42\n"  # it ran in the sandbox
        status, text = run_in_pty(fast_cli.argv("shell", "-u", "nobody", "shelled"), keys=b"id -un; exit\n",
                                  env=fast_cli.env, ready=b"@shelled:")
        assert status == 0 and "nobody" in text, text
    finally:
        fast_cli.ok("rm", "shelled")


def test_an_overlay_volume_on_run_never_writes_to_its_source(user: UserCLI, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "kept").write_text("from host\n")
    script = "cat /data/kept; echo changed > /data/kept; echo new > /data/new; rm -f /data/kept2; cat /data/kept"
    (source / "kept2").write_text("also\n")
    result = user.ok("run", "-v", f"{source}:/data:O", IMAGE, "sh", "-c", script)
    assert result.out == "from host\nchanged\n"  # writable inside
    assert sorted(p.name for p in source.iterdir()) == ["kept", "kept2"]
    assert (source / "kept").read_text() == "from host\n" and (source / "kept2").read_text() == "also\n"


def test_an_overlay_volume_of_a_named_sandbox_keeps_its_changes_in_the_sandbox(user: UserCLI,
                                                                                tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "kept").write_text("from host\n")
    name = f"overlaid-{user.expect}"
    user.ok("create", IMAGE, "--name", name, "-v", f"{source}:/data:O")
    try:
        user.ok("exec", name, "sh", "-c", "echo changed > /data/kept; echo new > /data/new")
        assert user.ok("exec", name, "cat", "/data/kept", "/data/new").out == "changed\nnew\n"  # kept in it
        assert [p.name for p in source.iterdir()] == ["kept"]
        assert (source / "kept").read_text() == "from host\n"
        (source / "later").write_text("host's\n")
        assert user.ok("exec", name, "cat", "/data/later").out == "host's\n"  # the host's side shows through
    finally:
        user.ok("rm", name)
    assert sorted(p.name for p in source.iterdir()) == ["kept", "later"]
    assert (source / "kept").read_text() == "from host\n"


NO_NEW_PRIVS = ("sh", "-c", "grep NoNewPrivs /proc/self/status")


def test_no_new_privileges_is_set_unless_the_command_line_lifts_it(user: UserCLI) -> None:
    assert user.ok("run", IMAGE, *NO_NEW_PRIVS).out.split() == ["NoNewPrivs:", "1"]
    lifted = user.ok("run", "--security-opt", "no-new-privileges=false", IMAGE, *NO_NEW_PRIVS)
    assert lifted.out.split() == ["NoNewPrivs:", "0"]
    # What it is for: a setuid-root binary run by nobody runs as root.
    setuid = ("sh", "-c", "cp /bin/id /usr/local/bin/sid && chmod u+s /usr/local/bin/sid && "
                          "su -s /bin/sh nobody -c '/usr/local/bin/sid -u'")
    assert user.ok("run", "--security-opt", "no-new-privileges=false", IMAGE, *setuid).out == "0\n"
    assert user.ok("run", IMAGE, *setuid).out == "65534\n"


def test_the_profile_key_no_new_privs_false_lifts_it(user: UserCLI) -> None:
    name = f"privileged-{user.expect}"
    write_profile(user, name, "extends: debian-bookworm\nno_new_privs: false\n")
    user.first_run(name)
    assert user.ok("run", name, *NO_NEW_PRIVS).out.split() == ["NoNewPrivs:", "0"]
    user.ok("create", name, "--name", name)
    try:
        assert user.ok("exec", name, *NO_NEW_PRIVS).out.split() == ["NoNewPrivs:", "0"]
    finally:
        user.ok("rm", name)
    assert user.ok("run", IMAGE, *NO_NEW_PRIVS).out.split() == ["NoNewPrivs:", "1"]


# --- the image held during a run; Ctrl-C ----------------------------------------------------------


def test_rmi_and_prune_refuse_while_a_run_uses_the_image(user: UserCLI) -> None:
    name = f"held-{user.expect}"
    write_profile(user, name, "extends: debian-bookworm\nsetup: [echo one > /etc/which]\n")
    user.first_run(name)
    (image,) = images_of(user, name)
    proc = user.popen("run", name, "sh", "-c", "echo in; exec sleep 120")
    try:
        wait_for_line(proc, "in")
        refused = user("rmi", name)
        assert refused.code == 125, str(refused)
        assert f"image {image['key']} ({name}) is in use by a build or a running sandbox" in refused.err
        # An edit makes the held image an older one: prune would remove it, and refuses.
        write_profile(user, name, "extends: debian-bookworm\nsetup: [echo two > /etc/which]\n")
        user.ok("build", name)
        pruned = user("prune")
        assert pruned.code == 125, str(pruned)
        assert "is in use by a build or a running sandbox" in pruned.err
        assert image["key"] in [row["key"] for row in images_of(user, name)]
        assert all(Path(str(layer["path"])).is_dir() for layer in image["layers"])  # type: ignore[attr-defined]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert taken_path(err)[0] == user.expect, err
    assert "removed 1 older image" in user.ok("prune").out
    user.ok("rmi", name)


def test_sigint_to_the_manager_ends_the_run_with_130(user: UserCLI) -> None:
    proc = user.popen("run", IMAGE, "sh", "-c", "echo in; exec sleep 120")
    try:
        wait_for_line(proc, "in")
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert time.monotonic() - started < 10
    assert proc.returncode == 130, err
    assert taken_path(err)[0] == user.expect, err
    assert subprocess.run(["pgrep", "-f", "sleep 120"], capture_output=True).returncode == 1


@pytest.mark.parametrize("tty", [False, True])
def test_ctrl_c_on_the_terminal_ends_the_run_with_130(user: UserCLI, tty: bool) -> None:
    argv = user.argv("run", *(["-t"] if tty else []), IMAGE, "sh", "-c", "echo READY; exec sleep 120")
    started = time.monotonic()
    status, text = run_in_pty(argv, keys=b"\x03", env=user.env, ready=b"READY")  # Ctrl-C, once it runs
    assert status == 130, text
    assert time.monotonic() - started < 30, text
    assert f"sandboxmgr: path: {user.expect}" in text, text
    assert "Traceback" not in text, text


STEPS = 120


def test_ctrl_c_while_a_run_starts_is_never_lost(user: UserCLI) -> None:
    """SIGINT at 120 moments spread over a run's start and the command's first moments, from the
    entry point saying its path to half as long again after the command's first output: each run
    ends with 130 at once. Likely, not certain, to catch a lost one; the three that were found:
    - before the first fix about 1 in 20 was lost (the command ran to its end, exit 0);
    - Python swallowed the KeyboardInterrupt raised in an import's module lock callback;
    - a handler due just before a blocking waitpid ran only once the command ended (PID 1's,
      or the manager's): about 1 in 250 of the moments around the command's start."""
    def started(argv: tuple[str, ...]) -> tuple[subprocess.Popen[str], float]:
        proc = user.popen("run", IMAGE, *argv)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line == f"sandboxmgr: path: {user.expect}\n", line + proc.communicate()[1]
        return proc, time.monotonic()

    proc, said = started(("sh", "-c", "echo in; exec sleep 8"))
    wait_for_line(proc, "in")
    window = time.monotonic() - said
    proc.kill()
    proc.communicate()
    lost = []
    for step in range(STEPS):
        proc, said = started(("sleep", "8"))
        time.sleep(max(0.0, said + window * 1.5 * step / STEPS - time.monotonic()))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        if proc.returncode != 130 or time.monotonic() - said > 5 or "Traceback" in err:
            lost.append((step, proc.returncode, err))
    assert not lost, f"the start takes {window:.3f} s; Ctrl-C lost at: {lost}"


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_pid_1_and_the_manager_wait_where_a_signal_cannot_be_missed(user: UserCLI) -> None:
    """While the command runs, PID 1 waits in sigtimedwait (the signals it forwards and SIGCHLD
    kept blocked) and the manager in a select that watches its signal wakeup descriptor: neither
    blocks in waitpid, where a handler due just before it would run only when the command ended."""
    proc = user.popen("run", IMAGE, "sh", "-c", "echo in; exec sleep 30")
    try:
        wait_for_line(proc, "in")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        init = [pid for pid in children if _status(int(pid))["Name"] == "sandboxmgr-init"]
        assert len(init) == 1, children
        # Where each sleeps, once both do (on a loaded machine either may be running a moment).
        waits = {"init": "", "manager": ""}
        deadline = time.monotonic() + 10
        while not all(waits.values()) and time.monotonic() < deadline:
            for who, pid in (("init", int(init[0])), ("manager", proc.pid)):
                if not waits[who] and _status(pid)["State"].startswith("S"):
                    wchan = Path(f"/proc/{pid}/wchan").read_text()
                    waits[who] = wchan if wchan != "0" else ""
            time.sleep(0.05)
        assert waits["init"].startswith("do_sigtimedwait"), waits
        assert "poll" in waits["manager"] or "select" in waits["manager"], waits
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
    finally:
        proc.kill()
        proc.wait()
