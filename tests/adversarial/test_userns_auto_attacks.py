"""Attacks on root's sandboxes with --userns auto (issue 14): root inside is an id of the
sandbox's range outside, so what it makes is worth nothing to the host's root.

The escape and init attacks run with it too (test_escape.py, parametrized by userns)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.adversarial.conftest import attempts
from tests.conftest import CLI, ConcurrentBuild

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

IMAGE = "debian-bookworm"
FIRST = 2**31


def test_no_device_node_can_be_made_not_even_in_a_bind(cli: CLI, bookworm: ConcurrentBuild, attack_dir: Path,
                                                      tmp_path: Path) -> None:
    """CAP_MKNOD inside a user namespace makes no device node; the host's disk stays closed."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    root_dev = os.stat("/").st_dev
    major, minor = str(os.major(root_dev)), str(os.minor(root_dev))
    for place in ("/disk", "/dev/disk", "/tmp/disk", "/shared/disk"):
        result = cli("run", "--userns", "auto", "-v", f"{attack_dir}:/attack:ro", "-v", f"{shared}:/shared",
                     IMAGE, "/attack/attack", "disk", place, major, minor)
        assert result.code == 0, str(result)
        found = attempts(result)
        assert found["mknod"] == "EPERM", (place, found)
        assert "read-disk" not in found, (place, found)
    assert not (shared / "disk").exists()


def test_a_setuid_root_shell_made_inside_belongs_to_the_range_outside(cli: CLI, bookworm: ConcurrentBuild,
                                                                      tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = cli("run", "--userns", "auto", "-v", f"{shared}:/shared", IMAGE, "sh", "-c",
                 "cp /bin/sh /shared/rootshell && chmod 4755 /shared/rootshell; "
                 "chown 0:0 /shared/rootshell; chmod u+s /shared/rootshell; stat -c '%u %a' /shared/rootshell")
    assert result.code == 0, str(result)
    assert result.out.split() == ["0", "4755"]  # root's setuid shell, inside
    info = os.stat(shared / "rootshell")
    # Outside it is setuid to the range's first id: an unprivileged uid, never 0.
    assert info.st_uid >= FIRST and info.st_gid >= FIRST, info
    assert info.st_mode & stat.S_ISUID
