"""Kept bootstrap roots: what fingerprints a mirror's index, and the store side (no build)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

from sandboxmgr import rootcache
from sandboxmgr.builders import index
from sandboxmgr.builders.debindex import release_indexes
from sandboxmgr.families.debian import MmdebstrapBuilder
from sandboxmgr.images import _keep_root
from sandboxmgr.store import Store

if TYPE_CHECKING:
    from sandboxmgr.profile import Profile

RELEASE = """\
Origin: Debian
Suite: stable
Codename: bookworm
Components: main contrib non-free-firmware
MD5Sum:
 a7cfec9615d1396d24446947705d4c49 22526615 main/binary-amd64/Packages
SHA256:
 1111111111111111111111111111111111111111111111111111111111111111 22526615 main/binary-all/Packages
 2222222222222222222222222222222222222222222222222222222222222222  5699244 main/binary-all/Packages.xz
 3333333333333333333333333333333333333333333333333333333333333333 50060337 main/binary-amd64/Packages
 4444444444444444444444444444444444444444444444444444444444444444  8790396 main/binary-arm64/Packages
 5555555555555555555555555555555555555555555555555555555555555555   123456 contrib/binary-amd64/Packages
 6666666666666666666666666666666666666666666666666666666666666666   654321 main/source/Sources
 7777777777777777777777777777777777777777777777777777777777777777   111111 main/i18n/Translation-en
"""


def test_the_packages_indexes_of_the_components_and_arch_are_taken() -> None:
    lines = release_indexes(RELEASE, ("main",), "amd64")
    assert [line.split()[2] for line in lines] == [
        "main/binary-all/Packages", "main/binary-all/Packages.xz", "main/binary-amd64/Packages"]
    # MD5 lines are not used, only SHA256 ones.
    assert all(line.split()[0][0] in "123" for line in lines)
    assert "contrib/binary-amd64/Packages" in " ".join(release_indexes(RELEASE, ("main", "contrib"), "amd64"))
    assert "arm64" in " ".join(release_indexes(RELEASE, ("main",), "arm64"))


def test_an_index_that_changed_changes_the_lines_and_others_do_not() -> None:
    before = release_indexes(RELEASE, ("main",), "amd64")
    assert release_indexes(RELEASE.replace("4444", "9999"), ("main",), "amd64") == before  # another arch
    assert release_indexes(RELEASE.replace("6666", "9999"), ("main",), "amd64") == before  # sources
    assert release_indexes(RELEASE.replace("3333", "9999"), ("main",), "amd64") != before


def test_a_release_file_without_sha256_gives_nothing() -> None:
    assert release_indexes("Origin: x\nMD5Sum:\n 00 1 main/binary-amd64/Packages\n", ("main",), "amd64") == []


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_fetch_tells_a_mirror_that_answered_from_one_the_network_does_not_reach(tmp_path: Path) -> None:
    (tmp_path / "InRelease").write_text("signed")
    assert index.fetch(f"file://{tmp_path}/InRelease") == b"signed"
    assert index.fetch(f"file://{tmp_path}/missing") is None
    assert index.fetch("not a url") is None
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            assert index.fetch(f"{base}/InRelease") == b"signed"
            assert index.fetch(f"{base}/dists/gone/InRelease") is None  # 404: it answered
        finally:
            server.shutdown()
    with pytest.raises(index.Unreachable, match=r"127\.0\.0\.1:9"):
        index.fetch("http://127.0.0.1:9/debian/dists/x/InRelease")  # connection refused


def _kept(store: Store, layer: str, state: str) -> Path:
    diff = store.root / "work" / layer
    (diff / "etc").mkdir(parents=True)
    (diff / "etc/os-release").write_text("ID=test\n")
    rootcache.keep(store, "test-1-amd64", layer, state, diff)
    return diff


def test_a_kept_root_is_found_only_with_the_same_state(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    diff = _kept(store, "layer1", "state-a")
    kept = rootcache.find(store, "test-1-amd64", "layer1", "state-a")
    assert kept is not None
    assert (kept / "etc/os-release").stat().st_ino == (diff / "etc/os-release").stat().st_ino
    assert rootcache.find(store, "test-1-amd64", "layer1", "state-b") is None
    assert rootcache.find(store, "test-1-amd64", "layer2", "state-a") is None
    assert list((store.root / "tmp").iterdir()) == []


def test_offline_any_kept_root_of_the_layer_is_found_with_when_it_was_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _kept(store, "layer1", "state-a")
    kept = rootcache.find(store, "test-1-amd64", "layer1", None)
    assert kept is not None
    assert rootcache.kept_at(kept).endswith("Z")
    assert rootcache.find(store, "test-1-amd64", "layer2", None) is None
    assert rootcache.kept_at(tmp_path / "nowhere" / "diff") == "?"


def test_keeping_again_replaces_the_older_root(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _kept(store, "layer1", "state-a")
    newer = store.root / "newer"
    (newer / "etc").mkdir(parents=True)
    (newer / "etc/os-release").write_text("ID=newer\n")
    rootcache.keep(store, "test-1-amd64", "layer1", "state-b", newer)
    assert rootcache.find(store, "test-1-amd64", "layer1", "state-a") is None
    kept = rootcache.find(store, "test-1-amd64", "layer1", "state-b")
    assert kept is not None and (kept / "etc/os-release").read_text() == "ID=newer\n"
    assert len(rootcache.kept_roots(store)) == 1


def test_a_linked_tree_keeps_modes_owners_and_symlinks(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "dir").mkdir(parents=True)
    os.chmod(source / "dir", 0o1777)
    (source / "file").write_text("x")
    os.symlink("file", source / "link")
    rootcache.link_tree(source, tmp_path / "linked")
    linked = tmp_path / "linked"
    assert (linked / "dir").stat().st_mode & 0o7777 == 0o1777
    assert os.readlink(linked / "link") == "file"
    assert (linked / "file").stat().st_ino == (source / "file").stat().st_ino


def test_at_most_a_few_roots_are_kept_per_release_the_least_recently_used_go(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    for number in range(rootcache.KEEP_PER_RELEASE):
        _kept(store, f"layer{number}", "s")
        meta = store.cache_dir / f"test-1-amd64/roots/layer{number}/root.json"
        os.utime(meta, (1000 + number, 1000 + number))
    # layer0 is the oldest, but used now: layer1 is then the least recently used.
    assert rootcache.find(store, "test-1-amd64", "layer0", "s") is not None
    _kept(store, "newest", "s")
    names = sorted(place.name for place, _meta in rootcache.kept_roots(store))
    assert len(names) == rootcache.KEEP_PER_RELEASE
    assert "newest" in names and "layer0" in names and "layer1" not in names


def test_a_failed_link_is_an_os_error_with_cps_reason(tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    with pytest.raises(OSError, match=r"cp --link .*No such file or directory"):
        rootcache.link_tree(tmp_path / "source", tmp_path / "missing-parent" / "target")


def test_remove_all_skips_a_root_whose_layer_is_being_built(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _kept(store, "layer1", "s")
    _kept(store, "layer2", "s")
    busy_lock = store.lock("layer", "layer2")
    assert busy_lock.try_acquire()
    try:
        removed, busy = rootcache.remove_all(store)
    finally:
        busy_lock.release()
    assert [p.name for p in removed] == ["layer1"]
    assert [p.name for p in busy] == ["layer2"]
    assert rootcache.find(store, "test-1-amd64", "layer2", "s") is not None
    # The work tree it was made from is untouched (only links were removed).
    assert (store.root / "work/layer1/etc/os-release").read_text() == "ID=test\n"


def test_metadata_that_is_not_ours_is_not_taken(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _kept(store, "layer1", "s")
    meta = store.cache_dir / "test-1-amd64/roots/layer1/root.json"
    meta.write_text(json.dumps({"format": 999, "state": "s"}))
    assert rootcache.find(store, "test-1-amd64", "layer1", "s") is None
    meta.write_text("not json")
    assert rootcache.find(store, "test-1-amd64", "layer1", "s") is None


class _MovingMirror(MmdebstrapBuilder):
    """A builder whose mirror publishes a new index between two looks at it."""

    def __init__(self) -> None:
        self.looks = 0

    def index_state(self, profile: Profile) -> str | None:
        self.looks += 1
        return f"index-{self.looks}"


def test_a_root_is_not_kept_when_the_index_changed_during_its_bootstrap(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    profile = cast("Profile", None)  # index_state above does not read it
    builder = _MovingMirror()
    state = rootcache.fingerprint(builder.index_state(profile))
    assert state is not None
    diff = tmp_path / "diff"
    diff.mkdir()
    lines: list[str] = []
    _keep_root(store, profile, builder, "layer1", state, diff, lines.append)
    assert lines == ["bootstrap: the mirror's index changed during the build; not keeping the root"]
    assert rootcache.kept_roots(store) == []
