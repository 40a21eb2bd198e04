"""The store without root: removal never follows symlinks, locks, leftovers."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxmgr.errors import BusyError, NotFoundError, ProfileError, SandboxError
from sandboxmgr.store import Store, remove_tree


def test_remove_tree_never_follows_a_symlink_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = outside / "canary"
    canary.write_text("alive")
    doomed = tmp_path / "doomed"
    (doomed / "sub").mkdir(parents=True)
    (doomed / "sub" / "link-to-dir").symlink_to(outside)
    (doomed / "link-to-file").symlink_to(canary)
    remove_tree(doomed)
    assert not doomed.exists()
    assert canary.read_text() == "alive"


def test_remove_tree_on_a_symlink_removes_only_the_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary").write_text("alive")
    link = tmp_path / "link"
    link.symlink_to(outside)
    remove_tree(link)
    assert not link.exists()
    assert (outside / "canary").exists()


def test_remove_tree_of_nothing_is_fine(tmp_path: Path) -> None:
    remove_tree(tmp_path / "absent")


def test_a_second_holder_of_a_lock_is_told_busy(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure()
    first = store.lock("sandbox", "work")
    assert first.try_acquire()
    second = store.lock("sandbox", "work")
    with pytest.raises(BusyError, match=r"in use \(held by pid"):
        second.acquire(False, "sandbox 'work' is in use", "wait")
    first.release()
    assert second.try_acquire()
    second.release()


def test_leftovers_of_dead_processes_are_removed_but_live_ones_kept(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure()
    dead = store.tmp_dir / "build-dead"
    (dead / "rootfs" / "etc").mkdir(parents=True)
    with store.temporary("run") as live:
        removed = store.clean_leftovers()
        assert removed == [dead]
        assert live.is_dir()
    assert not live.exists()
    assert list(store.tmp_dir.iterdir()) == []


def test_store_paths_overlayfs_cannot_carry_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="overlayfs"):
        Store(tmp_path / "a,b")


def test_sandbox_names_are_checked_and_missing_ones_reported(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(ProfileError, match="invalid sandbox name"):
        store.sandbox("../images")
    with pytest.raises(NotFoundError, match="no sandbox named 'work'"):
        store.sandbox("work")


def test_create_sandbox_is_atomic_and_refuses_duplicates(tmp_path: Path) -> None:
    store = Store(tmp_path)
    record = store.create_sandbox("work", {"name": "work", "image": "k"})
    assert (record.path / "upper").is_dir() and (record.path / "sandbox.json").is_file()
    with pytest.raises(SandboxError, match="already exists"):
        store.create_sandbox("work", {"name": "work", "image": "k"})
    assert list(store.tmp_dir.iterdir()) == []
