"""The cache of resolved profiles that keeps `run` from parsing YAML (no root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxmgr import runcache


def setup_dirs(tmp_path: Path) -> tuple[Path, list[Path], Path]:
    store = tmp_path / "store"
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    shipped.mkdir()
    user.mkdir()
    profile = shipped / "p.yaml"
    profile.write_text("distro: debian\nrelease: bookworm\n")
    return store, [shipped, user], profile


def test_a_saved_resolution_is_found_again(tmp_path: Path) -> None:
    store, dirs, profile = setup_dirs(tmp_path)
    runcache.save(store, "p", dirs, runcache.fingerprints("p", dirs, [profile]), "key1", "p", {"hostname": "p"})
    found = runcache.lookup(store, "p", dirs)
    assert found is not None
    assert found["image"] == "key1" and found["settings"] == {"hostname": "p"}


def test_editing_the_profile_invalidates_it(tmp_path: Path) -> None:
    store, dirs, profile = setup_dirs(tmp_path)
    runcache.save(store, "p", dirs, runcache.fingerprints("p", dirs, [profile]), "key1", "p", {})
    profile.write_text("distro: debian\nrelease: trixie\n")
    assert runcache.lookup(store, "p", dirs) is None


def test_a_new_profile_that_could_shadow_it_invalidates_it(tmp_path: Path) -> None:
    store, dirs, profile = setup_dirs(tmp_path)
    runcache.save(store, "p", dirs, runcache.fingerprints("p", dirs, [profile]), "key1", "p", {})
    (dirs[1] / "p.yaml").write_text("distro: debian\nrelease: sid\n")
    assert runcache.lookup(store, "p", dirs) is None


def test_a_changed_key_file_invalidates_it(tmp_path: Path) -> None:
    store, dirs, profile = setup_dirs(tmp_path)
    key = tmp_path / "keyring.gpg"
    key.write_bytes(b"one")
    runcache.save(store, "p", dirs, runcache.fingerprints("p", dirs, [profile, key]), "key1", "p", {})
    key.write_bytes(b"other")
    os.utime(key, ns=(1, 1))
    assert runcache.lookup(store, "p", dirs) is None


def test_other_search_paths_do_not_share_entries(tmp_path: Path) -> None:
    store, dirs, profile = setup_dirs(tmp_path)
    runcache.save(store, "p", dirs, runcache.fingerprints("p", dirs, [profile]), "key1", "p", {})
    assert runcache.lookup(store, "p", dirs[:1]) is None
    assert runcache.lookup(store, "q", dirs) is None


def test_a_corrupt_entry_is_a_miss(tmp_path: Path) -> None:
    store, dirs, profile = setup_dirs(tmp_path)
    runcache.save(store, "p", dirs, runcache.fingerprints("p", dirs, [profile]), "key1", "p", {})
    for entry in (store / "refs").iterdir():
        entry.write_text("{not json")
    assert runcache.lookup(store, "p", dirs) is None


def test_an_edit_during_the_build_is_not_taken_for_what_was_built(tmp_path: Path) -> None:
    store, dirs, profile = setup_dirs(tmp_path)
    watched = runcache.fingerprints("p", dirs, [profile])  # taken before the build
    profile.write_text("distro: debian\nrelease: bookworm\npackages: [hello]\n")  # edited meanwhile
    runcache.save(store, "p", dirs, watched, "key-of-the-old-content", "p", {})
    assert runcache.lookup(store, "p", dirs) is None


def test_a_retargeted_symlink_to_a_profile_invalidates_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, dirs, profile = setup_dirs(tmp_path)
    other = dirs[0] / "q.yaml"
    other.write_text("distro: debian\nrelease: trixie\n")
    link = tmp_path / "cur.yaml"
    link.symlink_to(profile)
    monkeypatch.chdir(tmp_path)
    runcache.save(store, "cur.yaml", dirs, runcache.fingerprints("cur.yaml", dirs, [profile]), "k", "p", {})
    assert runcache.lookup(store, "cur.yaml", dirs) is not None
    link.unlink()
    link.symlink_to(other)
    assert runcache.lookup(store, "cur.yaml", dirs) is None
