"""Every verb as an ordinary user (issue 14): a user made for the session (tests/rootless.py)
builds debian-bookworm with mmdebstrap in its own user namespace, runs a command, a command
on a terminal, a named sandbox, a matrix of two profiles and doctor; then nothing of its store
belongs to the host's root, and no mount or process of it is left."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DEBIAN_MIRROR, missing, need_mirror, run_in_pty
from tests.rootless import OrdinaryUser, ordinary_user, subordinate_range, with_max_user_namespaces
from tests.rpmrepo import RpmRepo, build_repo, tiny_profile

pytestmark = [pytest.mark.root, pytest.mark.network]

# A profile of the user's own, in $XDG_CONFIG_HOME/sandboxmgr/profiles: two setup steps
# (two layers over the bootstrap), one of them installing a package through the package cache.
HELLO = """\
extends: debian-bookworm
setup:
  - echo layered > /etc/layered
  - apt-get install -y hello
"""


@pytest.fixture(scope="module")
def user(rootless_user: OrdinaryUser) -> OrdinaryUser:
    """The session's ordinary user, with debian-bookworm built in its own store."""
    need_mirror(DEBIAN_MIRROR, "bookworm")
    rootless_user.ok("build", "debian-bookworm", timeout=1500)
    return rootless_user


def _owners(tree: Path) -> dict[tuple[int, int], list[str]]:
    """(uid, gid) -> a few paths of the tree with those owners, as the host sees them."""
    found: dict[tuple[int, int], list[str]] = {}
    for top, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            path = os.path.join(top, name)
            info = os.lstat(path)
            found.setdefault((info.st_uid, info.st_gid), []).append(path)
    return found


def _subordinate(user: OrdinaryUser) -> tuple[tuple[int, int], tuple[int, int]]:
    uids = subordinate_range("/etc/subuid", user.name)
    gids = subordinate_range("/etc/subgid", user.name)
    assert uids is not None and gids is not None
    return uids, gids


def _owned_by_user_or_its_range(user: OrdinaryUser, tree: Path) -> None:
    (uid_start, uid_count), (gid_start, gid_count) = _subordinate(user)
    for (uid, gid), paths in _owners(tree).items():
        assert uid == user.uid or uid_start <= uid < uid_start + uid_count, f"owner {uid}: {paths[:3]}"
        assert gid == user.gid or gid_start <= gid < gid_start + gid_count, f"group {gid}: {paths[:3]}"


def test_the_build_is_in_the_users_own_store_and_nothing_of_it_is_roots(user: OrdinaryUser) -> None:
    store = user.store
    info = store.stat()
    assert (info.st_uid, info.st_mode & 0o777) == (user.uid, 0o700)
    images = json.loads(user.ok("images", "--json").out)
    # The session's user may hold other tests' images too (the foreign-arch tests' arm64 one).
    (image,) = [image for image in images if image["profile"] == "debian-bookworm"]
    _owned_by_user_or_its_range(user, store)
    # Root's files inside are the user's outside; the others' are its subordinate ids.
    (layer_key,) = [layer["key"] for layer in image["layers"]]
    layer = store / "layers" / layer_key
    (uid_start, _), (gid_start, _) = _subordinate(user)
    assert (layer / "diff" / "usr" / "bin" / "passwd").stat().st_uid == user.uid
    shadow = (layer / "diff" / "etc" / "shadow").stat()
    assert (shadow.st_uid, shadow.st_gid) == (user.uid, gid_start + 41)  # shadow is gid 42 inside
    apt = (layer / "diff" / "var" / "cache" / "apt" / "archives" / "partial").stat()
    assert apt.st_uid == uid_start + 41  # _apt is uid 42 inside


def test_run_is_root_inside_and_the_user_outside(user: OrdinaryUser) -> None:
    out = user.ok("run", "debian-bookworm", "--", "sh", "-c", "id -u; cat /proc/self/uid_map").out
    lines = out.split("\n")
    assert lines[0] == "0"
    assert lines[1].split() == ["0", str(user.uid), "1"]


def test_network_none_is_a_network_namespace_of_its_own(user: OrdinaryUser) -> None:
    out = user.ok("run", "--network", "none", "debian-bookworm", "--",
                  "sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1; ls /sys/class/net").out
    assert out.split() == ["lo", "lo"]


def test_debootstrap_builds_too(user: OrdinaryUser) -> None:
    """debootstrap runs in the tool root as it does for root (no device node of its own)."""
    user.profiles.mkdir(parents=True, exist_ok=True)
    for path in (user.home / ".config", user.home / ".config" / "sandboxmgr", user.profiles):
        os.chown(path, user.uid, user.gid)
    (user.profiles / "bookworm-debootstrap.yaml").write_text("extends: debian-bookworm\n"
                                                            "bootstrap: {method: debootstrap}\n")
    user.ok("build", "bookworm-debootstrap", timeout=1500)
    out = user.ok("run", "bookworm-debootstrap", "--", "sh", "-c", "stat -c '%u %g' /etc/shadow; id -u").out
    assert out == "0 42\n0\n"
    user.ok("rmi", "bookworm-debootstrap")


def test_the_rpm_family_builds_with_dnf_too(user: OrdinaryUser, rpm_repo: RpmRepo) -> None:
    """The made-up Tiny Distro (tests/rpmrepo.py) from a signed repository of the user's own (the
    session's is in root's tmp), built with the host's dnf in the user's namespace."""
    (user.home / "rpmrepo").mkdir()
    repo = build_repo(user.home / "rpmrepo")  # rpm_repo: the tools are there (else skipped)
    for top, dirs, files in os.walk(user.home / "rpmrepo"):
        for name in [top, *(os.path.join(top, entry) for entry in (*dirs, *files))]:
            os.lchown(name, user.uid, user.gid)
    user.profiles.mkdir(parents=True, exist_ok=True)
    for path in (user.home / ".config", user.home / ".config" / "sandboxmgr", user.profiles):
        os.chown(path, user.uid, user.gid)
    (user.profiles / "tiny.yaml").write_text(tiny_profile(repo))
    user.ok("build", "tiny", timeout=600)
    out = user.ok("run", "tiny", "--", "sh", "-c", ". /etc/os-release; echo $ID; id -u").out
    assert out == "tinydistro\n0\n", out
    _owned_by_user_or_its_range(user, user.store)
    user.ok("rmi", "tiny")


def test_files_written_through_a_bind_belong_to_the_user_or_its_range(user: OrdinaryUser) -> None:
    shared = user.home / "shared"
    os.mkdir(shared)
    os.chown(shared, user.uid, user.gid)
    user.ok("run", "-v", f"{shared}:/out", "debian-bookworm", "--",
            "sh", "-c", "echo root > /out/by-root && echo x > /out/by-daemon && chown 1:1 /out/by-daemon")
    (uid_start, _), (gid_start, _) = _subordinate(user)
    by_root = (shared / "by-root").stat()
    by_daemon = (shared / "by-daemon").stat()
    assert (by_root.st_uid, by_root.st_gid) == (user.uid, user.gid)
    assert (by_daemon.st_uid, by_daemon.st_gid) == (uid_start, gid_start)


def test_run_t_runs_on_a_terminal(user: OrdinaryUser) -> None:
    code, output = run_in_pty(user.argv("run", "-t", "debian-bookworm", "--", "sh", "-c", "tty; id -un"),
                              env=user.env())
    assert code == 0, output
    assert "/dev/pts/0" in output and "root" in output


def test_a_named_sandbox_keeps_its_changes_until_rm(user: OrdinaryUser) -> None:
    user.ok("create", "--name", "mine", "debian-bookworm")
    user.ok("exec", "mine", "--", "sh", "-c", "echo kept > /root/kept")
    assert user.ok("exec", "mine", "--", "cat", "/root/kept").out == "kept\n"
    assert [s["name"] for s in json.loads(user.ok("ls", "--json").out)] == ["mine"]
    # shell: the image's shell on a terminal, in the named sandbox.
    code, output = run_in_pty(user.argv("shell", "mine"), env=user.env(), keys=b"cat /root/kept; exit 3\n",
                              ready=b"#")
    assert code == 3 and "kept" in output, output
    user.ok("rm", "mine")
    assert json.loads(user.ok("ls", "--json").out) == []


def test_a_matrix_of_two_profiles_with_layered_setup_steps(user: OrdinaryUser) -> None:
    user.profiles.mkdir(parents=True, exist_ok=True)
    (user.profiles / "bookworm-hello.yaml").write_text(HELLO)
    project = user.home / "project"
    project.mkdir()
    (project / "sandboxmgr.yaml").write_text("profiles: [debian-bookworm, bookworm-hello]\n"
                                             "command: sh -c 'cat /etc/debian_version; touch built'\n")
    for path in (user.home / ".config", user.home / ".config" / "sandboxmgr", user.profiles, project):
        os.chown(path, user.uid, user.gid)
    result = user("matrix", "-C", str(project), "--json", "-j", "2", timeout=1500)
    assert result.code == 0, str(result)
    rows = {row["name"]: row for row in json.loads(result.out)}
    assert {name: row["status"] for name, row in rows.items()} == {"debian-bookworm": "passed",
                                                                  "bookworm-hello": "passed"}
    assert not (project / "built").exists()  # the project is shown copy-on-write
    out = user.ok("run", "bookworm-hello", "--", "sh", "-c", "cat /etc/layered; hello").out
    assert out == "layered\nHello, world!\n"
    layers = json.loads(user.ok("images", "--json").out)
    hello = next(image for image in layers if image["profile"] == "bookworm-hello")
    assert len(hello["layers"]) == 3, hello  # the bootstrap, one per setup step


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_a_signal_to_the_manager_ends_the_sandbox(user: OrdinaryUser, signum: int) -> None:
    """Ctrl-C (SIGINT) or kill -9 of the user's manager: its sandbox goes with it (PID 1 dies
    with the manager, the namespaces with PID 1), nothing of the user's is left running."""
    proc = subprocess.Popen(user.argv("run", "debian-bookworm", "--", "sleep", "300"), env=user.env(),
                            cwd=user.home, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(line.endswith(" sleep") for line in user.processes()):
        assert time.monotonic() < deadline and proc.poll() is None, "the sandbox never started"
        time.sleep(0.1)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (-signal.SIGKILL if signum == signal.SIGKILL else 130), err
    deadline = time.monotonic() + 10
    while user.processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert user.processes() == []
    # What a kill -9 leaves in tmp/ (the ephemeral sandbox's directory) goes with the next command.
    user.ok("run", "debian-bookworm", "--", "true")
    assert list((user.store / "tmp").iterdir()) == []


def test_doctor_finds_nothing(user: OrdinaryUser) -> None:
    result = user("doctor")
    assert result.code == 0, str(result)
    assert result.out.startswith("nothing left over")


def test_doctor_leaves_roots_run_cgroups_to_root(user: OrdinaryUser) -> None:
    """A run cgroup of root's whose manager is gone is root's doctor's to report: the user's
    doctor neither reports it nor tries to remove it (it could not)."""
    from sandboxmgr.cgroups import hierarchies

    v1 = next((h for h in hierarchies() if h.version == 1), None)
    if v1 is None:
        missing("no cgroup v1 hierarchy to put a run cgroup of root's in")
    top = v1.mount / f"sandboxmgr-test-{user.name}"
    group = top / "sandboxmgr" / "999999999-1-abcdef"  # no such manager: a leftover
    group.mkdir(parents=True)
    try:
        result = user("doctor", "--json")
        assert result.code == 0, str(result)
        assert json.loads(result.out) == []
        assert group.is_dir()
    finally:
        group.rmdir()
        group.parent.rmdir()
        top.rmdir()


def test_zz_nothing_is_left_and_nothing_is_roots(user: OrdinaryUser) -> None:
    """After every test above (the file's order): no mount under the user's home, no process of
    the user or its subordinate ids, no file of its store the host's root owns."""
    with open("/proc/self/mountinfo") as handle:
        mounts = [line.split()[4] for line in handle if line.split()[4].startswith(str(user.home))]
    assert mounts == []
    # A build's signed-index thread may still be finishing its gpgv when the manager exits (a race
    # of root's builds too): what is left must go on its own within seconds.
    deadline = time.monotonic() + 10
    while user.processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert user.processes() == []
    _owned_by_user_or_its_range(user, user.store)


def test_a_user_without_subordinate_ids_gets_one_line_and_the_fix() -> None:
    with ordinary_user(subordinate_ids=False) as user:
        result = user("run", "debian-bookworm", "--", "true")
        assert result.code == 125
        assert result.err == (f"sandboxmgr: error: {user.name} has no subordinate uid range in /etc/subuid\n"
                              f"hint: as root: usermod --add-subuids 100000-165535 {user.name} "
                              "(a range no other user has)\n")
        doctor = user("doctor", "--json")
        assert doctor.code == 1
        found = json.loads(doctor.out)
        assert [(f["kind"], f["what"]) for f in found] == [("rootless", "/etc/subuid"), ("rootless", "/etc/subgid")]


def test_another_user_cannot_use_the_users_store(user: OrdinaryUser) -> None:
    """Two users never share a store: the store is 0700 and its owner's ids are not mapped in
    another user's namespace, so every verb gets one line and the hint, and nothing changes."""
    before = _owners(user.store)
    with ordinary_user() as other:
        for verb in (["ls"], ["images"], ["run", "debian-bookworm", "--", "true"], ["rmi", "debian-bookworm"],
                     ["doctor", "--fix"]):
            result = other("--store", str(user.store), *verb)
            assert result.code == 125, str(result)
            assert result.err == (f"sandboxmgr: error: cannot read the store {user.store}: it is not yours "
                                  "(root's or another user's; a store is its owner's alone)\n"
                                  "hint: use a store of your own: the default, $XDG_DATA_HOME/sandboxmgr, "
                                  "or --store DIR in a directory you own\n"), verb
    assert _owners(user.store) == before


def test_user_namespaces_turned_off_are_one_line_and_a_doctor_finding(rootless_user: OrdinaryUser) -> None:
    """A host with user.max_user_namespaces=0, simulated in a user namespace of the test's own."""
    user = rootless_user
    run = subprocess.run(with_max_user_namespaces(user, 0, user.argv("run", "debian-bookworm", "--", "true")),
                         capture_output=True, text=True, env=user.env(), cwd=user.home, stdin=subprocess.DEVNULL)
    assert run.returncode == 125
    assert run.stderr == ("sandboxmgr: error: user namespaces are turned off on this host "
                          "(user.max_user_namespaces=0)\n"
                          "hint: as root: sysctl -w user.max_user_namespaces=15000 "
                          "(and in /etc/sysctl.d/ to keep it)\n")
    doctor = subprocess.run(with_max_user_namespaces(user, 0, user.argv("doctor", "--json")),
                            capture_output=True, text=True, env=user.env(), cwd=user.home, stdin=subprocess.DEVNULL)
    assert doctor.returncode == 1, doctor.stderr
    assert [(f["kind"], f["what"]) for f in json.loads(doctor.stdout)] == [("rootless", "user.max_user_namespaces")]
    # The same user where the limit allows it: the namespace of the test's own is no obstacle.
    allowed = subprocess.run(with_max_user_namespaces(user, 100, user.argv("doctor", "--json")),
                             capture_output=True, text=True, env=user.env(), cwd=user.home,
                             stdin=subprocess.DEVNULL)
    assert "user.max_user_namespaces" not in allowed.stdout + allowed.stderr


def test_an_apparmor_restriction_is_one_line_and_a_doctor_finding_naming_the_profile(
        rootless_user: OrdinaryUser) -> None:
    """Ubuntu 24.04's kernel.apparmor_restrict_unprivileged_userns=1, simulated in a mount
    namespace of the test's own where /proc/sys/kernel is a tmpfs holding only that sysctl
    (this machine has no AppArmor, so the process has no AppArmor label: unconfined, as an
    unprofiled program on Ubuntu). The hint names the commands that install sandboxmgr's
    profile, written for the very script the user ran."""
    user = rootless_user
    restrict = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                "mount -t tmpfs none /proc/sys/kernel && "
                'echo 1 > /proc/sys/kernel/apparmor_restrict_unprivileged_userns && exec "$@"', "sh"]
    script = user.program[0] if len(user.program) == 1 else None  # else python -m: no script to name
    command = os.path.realpath(script) if script else "sandboxmgr"
    hint = (f"hint: as root: {command} doctor --apparmor-profile > /etc/apparmor.d/sandboxmgr && "
            "apparmor_parser -r /etc/apparmor.d/sandboxmgr (README: AppArmor), "
            "or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")
    run = subprocess.run([*restrict, *user.argv("run", "debian-bookworm", "--", "true")], capture_output=True,
                         text=True, env=user.env(), cwd=user.home, stdin=subprocess.DEVNULL)
    assert run.returncode == 125
    assert run.stderr == ("sandboxmgr: error: AppArmor restricts unprivileged user namespaces "
                          "(kernel.apparmor_restrict_unprivileged_userns=1) and no AppArmor profile names this "
                          f"sandboxmgr\n{hint}\n")
    doctor = subprocess.run([*restrict, *user.argv("doctor", "--json")], capture_output=True, text=True,
                            env=user.env(), cwd=user.home, stdin=subprocess.DEVNULL)
    assert doctor.returncode == 1, doctor.stderr
    [finding] = json.loads(doctor.stdout)
    assert (finding["kind"], finding["what"]) == ("rootless", "kernel.apparmor_restrict_unprivileged_userns")
    assert finding["detail"].endswith("; fix: " + hint.removeprefix("hint: "))
    # The profile itself, printed for the user to hand to root: no user namespace is needed for it.
    if script:
        profile = subprocess.run([*restrict, *user.argv("doctor", "--apparmor-profile")], capture_output=True,
                                 text=True, env=user.env(), cwd=user.home, stdin=subprocess.DEVNULL)
        assert profile.returncode == 0, profile.stderr
        assert f"\nprofile sandboxmgr {command} flags=(unconfined) {{\n  userns,\n" in profile.stdout


def _unified_mount() -> Path | None:
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return Path(fields[4])
    return None


def test_limits_outside_a_delegated_cgroup_subtree_are_one_error(user: OrdinaryUser) -> None:
    """The test's own cgroup is root's: --memory, --pids-limit, --cpus are refused, never ignored."""
    result = user("run", "--memory", "64M", "--pids-limit", "32", "debian-bookworm", "--", "true")
    assert result.code == 125, str(result)
    [line, hint] = result.err.splitlines()
    assert line.startswith("sandboxmgr: error: cannot apply the memory and pids limits as an ordinary user: "
                           "it needs a cgroup v2 subtree delegated to you")
    assert hint.startswith("hint: run it in a scope that delegates cgroups to you (systemd-run --user --scope")


@contextlib.contextmanager
def delegated_subtree(user: OrdinaryUser, nested: bool = False) -> Iterator[Path]:
    """A cgroup v2 subtree delegated to ``user`` as systemd delegates one (the directory and its
    cgroup.procs, cgroup.subtree_control and cgroup.threads chowned to the user), with a
    ``session`` cgroup in it for the user's sandboxmgr to start in; the delegated directory.
    ``nested``: one level below a cgroup of root's that enables no controller for it, so the
    subtree offers none (on any host)."""
    unified = _unified_mount()
    if unified is None:
        missing("no cgroup v2 hierarchy is mounted")
    base = unified / f"sandboxmgr-test-{user.name}"
    base.mkdir()
    try:
        top = base / "delegated" if nested else base
        (top / "session").mkdir(parents=True)
        for path in (top, top / "cgroup.procs", top / "cgroup.subtree_control", top / "cgroup.threads",
                     top / "session", top / "session" / "cgroup.procs"):
            os.chown(path, user.uid, user.gid)
        yield top
    finally:
        for directory in sorted(base.rglob("*"), key=lambda p: -len(p.parts)):
            if directory.is_dir():
                directory.rmdir()
        base.rmdir()


def in_session(top: Path, user: OrdinaryUser, *args: str) -> list[str]:
    """The user's sandboxmgr ``args``, started in the subtree's session cgroup."""
    return ["sh", "-c", f'echo $$ > {top}/session/cgroup.procs && exec "$@"', "sh", *user.argv(*args)]


def test_limits_in_a_delegated_subtree_without_the_controller_are_one_error(user: OrdinaryUser) -> None:
    """A subtree delegated to the user that offers no controller: the limit is refused, and the
    error names the subtree and what it offers."""
    with delegated_subtree(user, nested=True) as top:
        result = subprocess.run(in_session(top, user, "run", "--pids-limit", "32", "debian-bookworm", "--", "true"),
                                capture_output=True, text=True, env=user.env(), cwd=user.home,
                                stdin=subprocess.DEVNULL, timeout=300)
    assert result.returncode == 125
    assert result.stderr.splitlines()[0] == (
        f"sandboxmgr: error: cannot apply the pids limit as an ordinary user: the cgroup delegated to you "
        f"({top}) offers only: no controller")


# What the limits need of the host: a cgroup v2 hierarchy that gives its cgroups these controllers.
DELEGATED_CONTROLLERS = ("memory", "pids")


def test_limits_in_a_delegated_cgroup_subtree_are_applied(user: OrdinaryUser) -> None:
    """--memory and --pids-limit in a subtree delegated to the user: the run's cgroup is made in
    it, beside the user's own, with the limits written; the sandbox sees its cgroup as /.
    Only where the host's cgroup v2 hierarchy has the controllers: on a hybrid host (cpu,
    memory and pids bound to v1 hierarchies) no subtree delegated to a user can have them."""
    unified = _unified_mount()
    if unified is None:
        missing("no cgroup v2 hierarchy is mounted")
    given = (unified / "cgroup.subtree_control").read_text().split()
    lacking = [c for c in DELEGATED_CONTROLLERS if c not in given]
    if lacking:
        # This machine's kind is such a host (hybrid, no delegation: see the README's rootless
        # mode); rearranging the host's cgroup mounts is not a test's business.
        from sandboxmgr.cgroups import hierarchies

        v1 = {c for h in hierarchies() if h.version == 1 for c in h.controllers}
        why = " (a hybrid host: they are bound to cgroup v1 hierarchies)" if set(lacking) <= v1 else ""
        reason = (f"this host's cgroup v2 hierarchy ({unified}) gives its cgroups no {' or '.join(lacking)} "
                  f"controller{why}, so no subtree delegated to a user can apply these limits")
        missing(reason, required_on_ci=False)  # an outside cause: the host's cgroup layout
    with delegated_subtree(user) as top:
        proc = subprocess.Popen(in_session(top, user, "run", "--memory", "64M", "--pids-limit", "32",
                                           "debian-bookworm", "--", "sh", "-c", "cat /proc/self/cgroup; sleep 60"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=user.env(),
                                cwd=user.home, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not list(top.glob("sandboxmgr/*/pids.max")) and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
            [pids_max] = top.glob("sandboxmgr/*/pids.max")
            assert pids_max.read_text().strip() == "32"
            assert (pids_max.parent / "memory.max").read_text().strip() == str(64 * 2**20)
        finally:
            proc.terminate()
            out, err = proc.communicate(timeout=120)
        assert out == "0::/\n", err


def test_no_newuidmap_is_one_line_and_a_doctor_finding(rootless_user: OrdinaryUser) -> None:
    """A host without the uidmap package, simulated in a mount namespace of the test's own where
    /usr/bin/newuidmap is covered (by /dev/null, which no one may execute)."""
    user = rootless_user
    hide = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount --bind /dev/null /usr/bin/newuidmap && exec "$@"', "sh"]
    run = subprocess.run([*hide, *user.argv("run", "debian-bookworm", "--", "true")], capture_output=True,
                         text=True, env=user.env(), cwd=user.home, stdin=subprocess.DEVNULL)
    assert run.returncode == 125
    assert run.stderr == ("sandboxmgr: error: newuidmap is not installed (an ordinary user's sandboxes need it)\n"
                          "hint: as root: apt-get install uidmap (dnf install shadow-utils)\n")
    doctor = subprocess.run([*hide, *user.argv("doctor", "--json")], capture_output=True, text=True,
                            env=user.env(), cwd=user.home, stdin=subprocess.DEVNULL)
    assert doctor.returncode == 1, doctor.stderr
    assert [(f["kind"], f["what"]) for f in json.loads(doctor.stdout)] == [("rootless", "newuidmap")]


def test_commands_of_an_ordinary_user_join_its_running_sandbox(user: OrdinaryUser) -> None:
    """Issue 15 in rootless mode: a second command (another sandboxmgr, which would make a user
    namespace of its own) joins the running sandbox through the sandbox's user namespace."""
    user.ok("create", "--name", "both", "debian-bookworm")
    try:
        user.ok("start", "both")
        first = subprocess.Popen(user.argv("exec", "both", "--", "sh", "-c",
                                           "echo first > /root/note; while [ ! -e /root/go ]; do sleep 0.1; done"),
                                 env=user.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while user("exec", "both", "--", "test", "-e", "/root/note").code != 0:
                assert time.monotonic() < deadline and first.poll() is None, first.communicate()
                time.sleep(0.1)
            second = user.ok("exec", "both", "--", "sh", "-c",
                             "cat /root/note; grep -l 'go' /proc/[0-9]*/cmdline | wc -l; touch /root/go")
            assert second.out.split()[0] == "first" and int(second.out.split()[1]) >= 1, second
            assert first.wait(timeout=30) == 0
        finally:
            first.kill()
            first.communicate()
        user.ok("stop", "both")
    finally:
        user.ok("rm", "-f", "both")
