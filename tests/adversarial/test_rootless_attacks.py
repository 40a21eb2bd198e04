"""The escape, mknod, ptrace, setuid and symlink attacks again, from a sandbox of an ordinary
user (rootless mode, issue 14): root inside is the user outside, and no more than that."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.adversarial.conftest import attempts
from tests.conftest import DEBIAN_MIRROR, need_mirror
from tests.rootless import OrdinaryUser

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

IMAGE = "debian-bookworm"


@pytest.fixture(scope="module")
def user(rootless_user: OrdinaryUser) -> OrdinaryUser:
    need_mirror(DEBIAN_MIRROR, "bookworm")
    rootless_user.ok("build", IMAGE, timeout=1500)
    return rootless_user


@pytest.fixture(scope="module")
def attacks(user: OrdinaryUser, attack_dir: Path) -> Path:
    """The attack programs where the user can read them (the session's tmp is root's)."""
    place = user.home / "attack"
    shutil.copytree(attack_dir, place, dirs_exist_ok=True)
    for path in (place, *place.iterdir()):
        os.chown(path, user.uid, user.gid)
        path.chmod(0o755)
    return place


def _attack(user: OrdinaryUser, attacks: Path, *args: str, options: tuple[str, ...] = ()) -> dict[str, str]:
    result = user("run", "-v", f"{attacks}:/attack:ro", *options, IMAGE, "/attack/attack", *args)
    assert result.code == 0, str(result)
    return attempts(result)


@pytest.mark.parametrize("isolation", ["pivot_root", "chroot"])
def test_the_double_chroot_escape_does_not_reach_the_host(user: OrdinaryUser, attacks: Path, host_marker: Path,
                                                         isolation: str) -> None:
    found = _attack(user, attacks, "escape", str(host_marker), options=("--isolation", isolation))
    assert found["marker-visible"] == "ENOENT", found
    assert found["marker-via-proc1-root"] in ("EACCES", "EPERM"), found
    if isolation == "chroot":
        assert found["chroot-subdir"] == "EPERM", found
    assert host_marker.exists()


def test_no_device_node_can_be_made(user: OrdinaryUser, attacks: Path) -> None:
    """A user namespace never lets a device node be made, CAP_MKNOD or not; and all is nodev."""
    root_dev = os.stat("/").st_dev
    for place in ("/disk", "/dev/disk", "/tmp/disk"):
        found = _attack(user, attacks, "disk", place, str(os.major(root_dev)), str(os.minor(root_dev)))
        assert found["mknod"] == "EPERM", (place, found)
        assert found["open-disk"] in ("ENOENT", "EACCES"), (place, found)
        assert "read-disk" not in found


def test_the_init_cannot_be_traced_and_no_host_process_is_reachable(user: OrdinaryUser, attacks: Path) -> None:
    host_pids = [str(os.getpid()), str(os.getppid())]
    found = _attack(user, attacks, "signals", "1", *host_pids)
    assert found["kill-1"] == "ok" and found["ptrace-1"] == "EPERM", found
    for pid in host_pids:
        if int(pid) > 10:
            assert found[f"kill-{pid}"] == "ESRCH" and found[f"ptrace-{pid}"] == "ESRCH", found


def test_a_setuid_root_shell_made_inside_is_only_the_users_outside(user: OrdinaryUser) -> None:
    shared = user.home / "setuid"
    shared.mkdir()
    os.chown(shared, user.uid, user.gid)
    user.ok("run", "-v", f"{shared}:/out", IMAGE, "--", "sh", "-c",
            "cp /bin/dash /out/rootshell && chown 0:0 /out/rootshell && chmod 4755 /out/rootshell")
    made = (shared / "rootshell").stat()
    assert made.st_mode & stat.S_ISUID  # the bit is there, but for the user's own uid only
    assert (made.st_uid, made.st_gid) == (user.uid, user.gid)


def test_a_symlink_planted_in_a_bind_reaches_only_the_sandboxs_tree(user: OrdinaryUser) -> None:
    """A link in a bound directory to a file of the user's outside it is followed inside the
    sandbox's root: the user's file stays as it was."""
    secret = user.home / "secret"
    secret.write_text("the user's own\n")
    os.chown(secret, user.uid, user.gid)
    shared = user.home / "links"
    shared.mkdir()
    (shared / "link").symlink_to(secret)
    os.lchown(shared / "link", user.uid, user.gid)
    os.chown(shared, user.uid, user.gid)
    result = user("run", "-v", f"{shared}:/data", IMAGE, "--", "sh", "-c",
                  "cat /data/link; echo overwritten > /data/link; echo done")
    assert "the user's own" not in result.out, result.out
    assert secret.read_text() == "the user's own\n"
