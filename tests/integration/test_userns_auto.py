"""--userns auto (issue 14, as root): root inside a sandbox is an unprivileged id outside.

The sandbox runs in a user namespace whose ids 0..65535 are a range of its own above 2^31
(idmap.py); the image's root-owned files show as root inside through idmapped layers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import CLI, DEBIAN_MIRROR, ConcurrentBuild, need_mirror
from tests.rootless import OrdinaryUser

pytestmark = [pytest.mark.root, pytest.mark.network]

FIRST = 2**31


def range_base(uid_map: str) -> int:
    """The host id that inside 0 maps to, from /proc/self/uid_map's text."""
    inside, outside, count = uid_map.split()[:3]
    assert (inside, count) == ("0", "65536"), uid_map
    return int(outside)


def test_root_inside_writes_through_a_bind_as_its_range_never_as_uid_0(cli: CLI, bookworm: ConcurrentBuild,
                                                                       tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # the host's root owns it: root inside may write only what anyone may
    out = cli.ok("run", "--userns", "auto", "-v", f"{shared}:/shared", bookworm.profile, "sh", "-c",
                 "id -u; cat /proc/self/uid_map; echo x > /shared/by-root; touch /shared/by-7; chown 7:7 /shared/by-7"
                 ).out.splitlines()
    assert out[0] == "0"  # root inside
    base = range_base(out[1])
    assert base >= FIRST
    by_root, by_seven = os.stat(shared / "by-root"), os.stat(shared / "by-7")
    assert (by_root.st_uid, by_root.st_gid) == (base, base)
    assert (by_seven.st_uid, by_seven.st_gid) == (base + 7, base + 7)
    # Nor may root inside take what the host's root owns: no capability over it.
    failed = cli("run", "--userns", "auto", "-v", f"{shared}:/shared", bookworm.profile, "sh", "-c",
                 "chown 0:0 /shared; chmod 700 /shared")
    assert failed.code != 0, str(failed)
    assert os.stat(shared).st_mode & 0o777 == 0o777


def test_the_image_shows_root_inside_and_copy_ups_land_in_the_range(cli: CLI, bookworm: ConcurrentBuild) -> None:
    cli.ok("create", "--userns", "auto", "--name", "ua-copyup", bookworm.profile)
    try:
        out = cli.ok("exec", "ua-copyup", "--", "sh", "-c",
                     "stat -c '%u %g' /etc/passwd /tmp /dev/shm /; echo 'x:x:9:9::/:/bin/sh' >> /etc/passwd; "
                     "touch /root/new; cat /proc/self/uid_map").out.splitlines()
        assert out[:4] == ["0 0"] * 4, out  # the image's files, the sandbox's tmpfs and its root: root's
        base = range_base(out[4])
        sandbox = cli.store / "sandboxes" / "ua-copyup"
        for changed in ("upper/etc/passwd", "upper/root/new"):
            info = os.stat(sandbox / changed)
            assert (info.st_uid, info.st_gid) == (base, base), changed
        # Root inside may add a name to its /etc/hosts, as without --userns auto.
        cli.ok("exec", "ua-copyup", "--", "sh", "-c", "echo '192.0.2.7 db' >> /etc/hosts")
        # The range is the sandbox's for its life: the next command (a new start) has it again.
        again = cli.ok("exec", "ua-copyup", "--", "sh", "-c",
                       "cat /proc/self/uid_map; stat -c %u /root/new; getent hosts db").out.splitlines()
        assert range_base(again[0]) == base and again[1] == "0" and again[2].split() == ["192.0.2.7", "db"]
    finally:
        cli.ok("rm", "-f", "ua-copyup")


def test_exec_into_a_running_auto_sandbox_joins_its_user_namespace(cli: CLI, bookworm: ConcurrentBuild) -> None:
    cli.ok("run", "-d", "--userns", "auto", "--name", "ua-live", bookworm.profile, "sleep", "300")
    try:
        state = json.loads(cli.ok("inspect", "ua-live").out)[0]
        assert state["settings"]["userns"] == "auto"
        holder = Path(f"/proc/{state['pid']}/uid_map").read_text()
        joined = cli.ok("exec", "ua-live", "--", "sh", "-c", "id -u; cat /proc/self/uid_map").out.splitlines()
        assert joined[0] == "0"
        assert range_base(joined[1]) == range_base(holder) >= FIRST
    finally:
        cli.ok("rm", "-f", "ua-live")


def test_two_sandboxes_have_ranges_of_their_own(cli: CLI, bookworm: ConcurrentBuild) -> None:
    bases = []
    names = ("ua-one", "ua-two")
    try:
        for name in names:
            cli.ok("create", "--userns", "auto", "--name", name, bookworm.profile)
            bases.append(range_base(cli.ok("exec", name, "--", "cat", "/proc/self/uid_map").out))
        # And an ephemeral run beside them takes a third.
        bases.append(range_base(cli.ok("run", "--userns", "auto", bookworm.profile, "cat", "/proc/self/uid_map").out))
    finally:
        cli.ok("rm", "-f", *names)
    assert len(set(bases)) == 3 and all(base >= FIRST for base in bases), bases


def test_a_profile_asks_for_it_with_userns_auto(cli: CLI, configs_dir: Path, bookworm: ConcurrentBuild) -> None:
    (configs_dir / "bookworm-userns.yaml").write_text(f"extends: {bookworm.profile}\nuserns: auto\n")
    out = cli.ok("run", "bookworm-userns", "cat", "/proc/self/uid_map").out
    assert range_base(out) >= FIRST
    # --userns host on the command line wins over the profile's.
    host = cli.ok("run", "--userns", "host", "bookworm-userns", "cat", "/proc/self/uid_map").out
    assert host.split()[:3] == ["0", "0", "4294967295"]


def test_an_ordinary_users_sandbox_takes_a_profiles_userns_auto_as_given(rootless_user: OrdinaryUser) -> None:
    """Rootless mode is a user namespace already: root inside is the user outside, as auto asks."""
    need_mirror(DEBIAN_MIRROR, "bookworm")
    rootless_user.ok("build", "debian-bookworm", timeout=1500)
    rootless_user.profiles.mkdir(parents=True, exist_ok=True)
    (rootless_user.profiles / "bookworm-auto.yaml").write_text("extends: debian-bookworm\nuserns: auto\n")
    for args in (("bookworm-auto",), ("--userns", "auto", "debian-bookworm")):
        out = rootless_user.ok("run", *args, "--", "sh", "-c", "id -u; cat /proc/self/uid_map").out.splitlines()
        assert out[0] == "0" and out[1].split() == ["0", str(rootless_user.uid), "1"], out


def _ranges(cli: CLI) -> list[str]:
    """The ranges held in the store: userns/N files whose owner (a sandbox's or a run's
    directory, their first line) is still there; a file whose owner is gone is a free range."""
    directory = cli.store / "userns"
    entries = sorted(directory.iterdir()) if directory.is_dir() else []
    return [entry.name for entry in entries if Path(entry.read_text().splitlines()[0]).exists()]


def test_a_matrix_runs_a_userns_auto_profile_in_a_range_of_its_own(cli: CLI, bookworm: ConcurrentBuild,
                                                                   tmp_path: Path) -> None:
    """The profile key, in a project's inline profile: its sandbox is in a range of its own, the
    project at /src (copy-on-write over the host's tree) shows as root's inside, and the
    sandbox's range is free again once the matrix is done; the plain profile beside it is not."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "sandboxmgr.yaml").write_text(
        "profiles: [auto, plain]\n"
        "command: sh -c 'id -u; cat /proc/self/uid_map; stat -c %u /src/sandboxmgr.yaml; echo made > /src/made'\n"
        f"inline:\n  auto: {{extends: {bookworm.profile}, userns: auto}}\n"
        f"  plain: {{extends: {bookworm.profile}}}\n")
    before = _ranges(cli)
    result = cli("matrix", "-C", str(project), "--json")
    assert result.code == 0, str(result)
    logs = {entry["name"]: Path(entry["log"]).read_text().splitlines() for entry in json.loads(result.out)}
    assert logs["auto"][0] == "0" and range_base(logs["auto"][1]) >= FIRST, logs
    assert logs["auto"][2] == "0", logs  # the project's files: root's, through an idmapped layer
    assert logs["plain"][0] == "0" and logs["plain"][1].split() == ["0", "0", "4294967295"], logs
    assert sorted(p.name for p in project.iterdir()) == ["sandboxmgr.yaml"]
    assert _ranges(cli) == before
    assert not [s for s in json.loads(cli.ok("ls", "--json").out) if s["name"].startswith("matrix-")]


def test_package_build_in_a_userns_auto_profile(cli: CLI, configs_dir: Path, bookworm: ConcurrentBuild,
                                               tmp_path: Path) -> None:
    """package build -p PROFILE whose userns is auto: the build runs in a range of its own (its
    log shows the map), its products come out whole, and no range is left reserved."""
    from tests.integration.test_package import source

    (configs_dir / "bookworm-auto-pkg.yaml").write_text(f"extends: {bookworm.profile}\nuserns: auto\n")
    tree = source(tmp_path, "sm-auto", build="cat /proc/self/uid_map")
    before = _ranges(cli)
    result = cli("package", "build", str(tree), "-p", "bookworm-auto-pkg", "--results", str(tmp_path / "out"),
                 "--json")
    assert result.code == 0, str(result)
    [row] = json.loads(result.out)
    assert row["status"] == "passed", row
    out = tmp_path / "out" / "bookworm-auto-pkg"
    assert {"sm-auto_1.0-1_amd64.deb", "sm-auto_1.0-1_amd64.changes"} <= {p.name for p in out.iterdir()}
    maps = [line.split() for line in (out / "build.log").read_text().splitlines()
            if len(line.split()) == 3 and line.split()[0] == "0" and line.split()[2] == "65536"]
    assert maps and int(maps[0][1]) >= FIRST, (out / "build.log").read_text()[-2000:]
    assert _ranges(cli) == before
