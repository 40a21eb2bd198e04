"""--userns auto's pure parts (issue 14): the ranges, the mount plan's owners, the setting."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sandboxmgr import idmap
from sandboxmgr.config import SandboxConfig, options
from sandboxmgr.errors import ProfileError
from sandboxmgr.mounts import full_plan
from sandboxmgr.profile import ProfileRegistry


def test_each_live_owner_has_a_range_of_its_own_and_a_gone_owners_is_taken_again(tmp_path: Path) -> None:
    ranges = tmp_path / "userns"
    owners = [tmp_path / name for name in ("a", "b", "c")]
    for owner in owners:
        owner.mkdir()
    bases = [idmap.reserve(ranges, owner) for owner in owners]
    assert bases == [idmap.FIRST, idmap.FIRST + idmap.SIZE, idmap.FIRST + 2 * idmap.SIZE]
    shutil.rmtree(owners[1])  # rm, or the end of a run
    fresh = tmp_path / "d"
    fresh.mkdir()
    assert idmap.reserve(ranges, fresh) == bases[1]
    # A directory made again at a gone owner's path is not that owner (the inode is recorded).
    entry = ranges / "0"
    path, ino = entry.read_text().splitlines()
    entry.write_text(f"{path}\n{int(ino) + 1}\n")
    later = tmp_path / "e"
    later.mkdir()
    assert idmap.reserve(ranges, later) == bases[0]


def test_the_last_range_ends_before_the_id_that_is_no_id() -> None:
    assert idmap.base_of(idmap.SLOTS - 1) + idmap.SIZE - 1 < 2**32 - 1
    assert idmap.FIRST > 600100000  # above useradd's SUB_UID_MAX: no user's subordinate range


def test_a_named_sandbox_keeps_its_range_for_its_life(tmp_path: Path) -> None:
    ranges = tmp_path / "userns"
    sandbox = tmp_path / "box"
    sandbox.mkdir()
    first = idmap.for_sandbox(ranges, sandbox)
    assert (sandbox / "ids").read_text().strip() == str(first)
    assert idmap.for_sandbox(ranges, sandbox) == first
    # A run beside it never takes it.
    run = tmp_path / "run"
    run.mkdir()
    assert idmap.reserve(ranges, run) != first
    # Its reservation lost (a store copied without userns/): taken again, the same range.
    shutil.rmtree(ranges)
    assert idmap.for_sandbox(ranges, sandbox) == first
    assert idmap._alive(ranges / str((first - idmap.FIRST) // idmap.SIZE))


def test_the_sandboxs_file_systems_belong_to_root_of_its_range() -> None:
    base = idmap.FIRST + 3 * idmap.SIZE
    plain = {step.target: step for step in full_plan("host")}
    owned = {step.target: step for step in full_plan("host", ids=base)}
    for target in ("/dev", "/dev/shm", "/tmp", "/run"):
        assert owned[target].data == f"{plain[target].data},uid={base},gid={base}", target
    assert f"gid={base + 5}" in (owned["/dev/pts"].data or "") and "gid=5," not in (owned["/dev/pts"].data or "")
    assert owned["/proc"] == plain["/proc"] and owned["/sys"] == plain["/sys"]


def test_userns_is_a_saved_setting_host_by_default() -> None:
    assert SandboxConfig().userns == "host"
    assert SandboxConfig.from_json({"hostname": "old"}).userns == "host"  # saved before it existed
    auto = SandboxConfig().merged(options(userns="auto"))
    assert auto.to_json()["userns"] == "auto" and SandboxConfig.from_json(auto.to_json()) == auto
    assert auto.merged(options(userns="host")).userns == "host"


def test_a_profile_sets_it_and_a_wrong_value_names_the_choices(tmp_path: Path) -> None:
    (tmp_path / "auto.yaml").write_text("distro: debian\nrelease: bookworm\nuserns: auto\n")
    (tmp_path / "bad.yaml").write_text("distro: debian\nrelease: bookworm\nuserns: yes-please\n")
    registry = ProfileRegistry([tmp_path])
    assert registry.load("auto").userns == "auto"
    with pytest.raises(ProfileError, match="userns: 'yes-please' is not one of host, auto"):
        registry.load("bad")


def test_auto_reserves_a_range_for_root_and_none_for_an_ordinary_user(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An ordinary user's sandboxes are in its user namespace already: root inside is the user."""
    from sandboxmgr import sandbox, userns
    from sandboxmgr.store import Store

    store = Store(tmp_path / "store")
    store.ensure()
    config = SandboxConfig().merged(options(userns="auto"))
    monkeypatch.setattr(userns, "rootless", lambda: False)
    assert sandbox.user_ids(store, config, tmp_path, named=False) == idmap.FIRST
    assert sandbox.user_ids(store, SandboxConfig(), tmp_path, named=False) is None
    monkeypatch.setattr(userns, "rootless", lambda: True)
    assert sandbox.user_ids(store, config, tmp_path, named=False) is None
