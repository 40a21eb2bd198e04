"""The store without root: removal never follows symlinks, locks, leftovers."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from sandboxmgr.errors import BusyError, NotFoundError, ProfileError, SandboxError
from sandboxmgr.removal import remove_tree
from sandboxmgr.store import Store


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


def test_a_lock_whose_file_was_removed_while_waiting_is_taken_on_the_new_file(tmp_path: Path) -> None:
    """rm releases a sandbox's lock and deletes its file: whoever waited on that file
    must not hold a lock on a deleted inode while a newcomer locks a new file."""
    store = Store(tmp_path)
    store.ensure()
    holder = store.lock("sandbox", "work")
    assert holder.try_acquire()
    waiter = store.lock("sandbox", "work")
    result: list[int] = []

    def wait() -> None:
        waiter.acquire(True, "", "")
        assert waiter.fd is not None
        result.append(os.fstat(waiter.fd).st_ino)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)  # the waiter is blocked in flock on the old file
    holder.path.unlink()
    holder.release()
    thread.join(timeout=10)
    assert result and result[0] == os.stat(waiter.path).st_ino
    # The waiter holds the file now at the path: a newcomer is excluded.
    newcomer = store.lock("sandbox", "work")
    assert not newcomer.try_acquire()
    waiter.release()


def test_the_pid_in_a_lock_file_is_only_there_while_it_is_held(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure()
    lock = store.lock("image", "k")
    assert lock.try_acquire()
    assert lock.path.read_text() == f"{os.getpid()}\n"
    assert lock.holder_text() == f" (held by pid {os.getpid()})"
    lock.release()
    assert lock.path.read_text() == ""
    assert lock.holder_text() == ""
    # A pid written by a process that died without releasing is not named.
    lock.path.write_text("999999999\n")
    assert lock.holder_text() == ""
    # A shared holder writes no pid.
    lock.acquire_shared()
    assert lock.path.read_text() == "999999999\n"
    lock.release()


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


def test_a_command_for_a_sandbox_removed_meanwhile_is_refused_not_run(tmp_path: Path) -> None:
    from sandboxmgr.config import options
    from sandboxmgr.live import run_in

    store = Store(tmp_path)
    record = store.create_sandbox("work", {"name": "work", "image": "k", "settings": {"hostname": "work"}})
    store.remove_sandbox(record)  # after the exec read the record, before it took the lock
    with pytest.raises(NotFoundError, match="no sandbox named 'work'"):
        run_in(store, record, options(argv=("true",)))
    assert not (store.sandboxes_dir / "work").exists()
    assert not (store.locks_dir / "sandbox-work.lock").exists()  # nothing for doctor to find
