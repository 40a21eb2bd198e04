"""The store's modes and the locks clean_leftovers removes (no root)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sandboxmgr import locations
from sandboxmgr.errors import SandboxError
from sandboxmgr.store import TOP_DIRS, Store
from tests.conftest import need_root


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_store_is_0700_at_the_root_and_every_top_directory(tmp_path: Path) -> None:
    store = Store(tmp_path / "deep" / "store")
    store.ensure()
    assert [mode(p) for p in store.private_dirs()] == [0o700] * (1 + len(TOP_DIRS))
    assert store.loose_dirs() == []


def test_a_loose_store_is_found_and_tightened(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.ensure()
    store.root.chmod(0o755)
    store.layers_dir.chmod(0o711)
    (store.layers_dir / "KEY").mkdir(mode=0o755)  # below the top: left as the image made it
    assert store.loose_dirs() == [(store.root, 0o755), (store.layers_dir, 0o711)]
    store.tighten()
    assert store.loose_dirs() == [] and mode(store.layers_dir) == 0o700
    assert mode(store.layers_dir / "KEY") == 0o755


def test_a_shared_directory_is_refused_as_a_store_and_left_as_it_is(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(SandboxError) as info:
        Store(shared).ensure()
    assert "shared directory" in info.value.message and info.value.hint
    assert mode(shared) == 0o1777


def test_stale_lock_files_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.ensure()
    (store.sandboxes_dir / "alive").mkdir()
    for name in ("sandbox-gone", "sandbox-alive", "tmp-gone-1234", "image-abc", "layer-def"):
        (store.locks_dir / f"{name}.lock").write_text("")
    held = store.lock("sandbox", "waiting")  # a command waiting for a sandbox being made
    assert held.try_acquire()
    try:
        store.clean_leftovers()
        assert sorted(os.listdir(store.locks_dir)) == ["image-abc.lock", "layer-def.lock", "sandbox-alive.lock",
                                                       "sandbox-waiting.lock"]
    finally:
        held.release()


def test_a_store_directory_root_does_not_own_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """0700 keeps no one out of a directory that is theirs: root's images (setuid binaries) in a
    store a user owns would be the user's to run."""
    store = Store(tmp_path / "store")
    store.ensure()
    if os.geteuid() == 0:
        foreign = 65534
        os.chown(store.layers_dir, foreign, -1)
    else:  # as an ordinary user: the store is all theirs, and root's view of it is what counts
        foreign = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        # (the directories above it are the user's too: that refusal has tests of its own, below)
        monkeypatch.setattr(locations, "refuse_unsafe_parents", lambda _root: None)
    with pytest.raises(SandboxError) as info:
        store.tighten()
    assert f"belongs to uid {foreign}, not to root" in info.value.message and info.value.hint, info.value.message
    with pytest.raises(SandboxError):
        Store(tmp_path / "store").ensure()


@pytest.mark.parametrize("how", ["owned by another user", "group-writable", "world-writable"])
def test_roots_store_below_a_directory_others_can_change_is_refused_and_nothing_made(tmp_path: Path,
                                                                                     how: str) -> None:
    """Whoever can rename entries in a directory above the store can put a symlink in its place
    (sandboxes -> /etc): root would write and remove where it points."""
    need_root()  # chowns a directory to another user
    parent = tmp_path / "home" / "alice"
    parent.mkdir(parents=True)
    if how == "owned by another user":
        os.chown(parent, 65534, 65534)
    else:
        parent.chmod(0o775 if how == "group-writable" else 0o777)
    with pytest.raises(SandboxError) as info:
        Store(parent / "deeper" / "store").ensure()
    expected = {"owned by another user": "uid 65534 owns", "group-writable": "its group may write",
                "world-writable": "every user may write"}[how]
    assert f"is below {parent}, which {expected}" in info.value.message, info.value.message
    assert "--store /var/lib/sandboxmgr" in (info.value.hint or "")
    assert not (parent / "deeper").exists()


def test_a_store_reached_through_a_symlink_is_judged_by_where_it_points(tmp_path: Path) -> None:
    need_root()
    alice = tmp_path / "alice"
    (alice / "real").mkdir(parents=True)
    os.chown(alice, 65534, 65534)
    (tmp_path / "link").symlink_to(alice / "real")  # root's own link, in root's directory
    with pytest.raises(SandboxError) as info:
        Store(tmp_path / "link" / "store").ensure()
    assert f"is below {alice}, which uid 65534 owns" in info.value.message, info.value.message


def test_a_sticky_shared_directory_above_a_store_of_roots_is_accepted(tmp_path: Path) -> None:
    """As /tmp: others may write it, but not rename root's entries in it."""
    need_root()  # an ordinary user's tmp_path is below its own directories
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    store = Store(shared / "store")
    store.ensure()
    assert mode(store.root) == 0o700


def test_a_store_that_is_a_link_in_a_users_directory_is_refused_wherever_it_points(tmp_path: Path) -> None:
    """/home/alice/store -> a directory of root's: alice may repoint the link at /etc at any time."""
    need_root()
    alice = tmp_path / "alice"
    alice.mkdir()
    os.chown(alice, 65534, 65534)
    (tmp_path / "roots").mkdir()
    (alice / "store").symlink_to(tmp_path / "roots")
    with pytest.raises(SandboxError) as info:
        Store(alice / "store").ensure()
    assert f"is below {alice}, which uid 65534 owns" in info.value.message, info.value.message
    assert list((tmp_path / "roots").iterdir()) == []
