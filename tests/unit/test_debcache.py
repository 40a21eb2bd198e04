"""The Debian package cache's rules without root or network: the index parsed, and what
stage() and keep() let through (the adversarial suite attacks the real thing)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from sandboxmgr.builders.debcache import DebCache
from sandboxmgr.builders.debindex import PackageIndex, cache_name, parse_packages, release_hashes

RELEASE = """Origin: Debian
Acquire-By-Hash: yes
MD5Sum:
 0123 10 main/binary-amd64/Packages.xz
SHA256:
 AbC123 4534476 main/binary-all/Packages.xz
 def456 9679304 main/binary-amd64/Packages.xz
 beef 12 main/binary-amd64/Release
"""

PACKAGES = """Package: hello
Version: 2.10-3
Architecture: amd64
Description: says hello
 a continuation line: Size: 99
Size: 5
SHA256: {hello}

Package: libfoo
Version: 1:2.0-1
Architecture: all
Size: 3
SHA256: ABCDEF

Package: broken
Version: 1
"""


def test_the_release_files_sha256_section_only() -> None:
    hashes = release_hashes(RELEASE)
    assert hashes["main/binary-amd64/Packages.xz"] == ("def456", 9679304)
    assert hashes["main/binary-all/Packages.xz"] == ("abc123", 4534476)  # lower-cased
    assert "0123" not in {sha for sha, _ in hashes.values()}  # MD5Sum lines are not taken


def test_packages_map_apts_cache_names_to_size_and_sha256() -> None:
    found = parse_packages(PACKAGES.format(hello="AA" * 32))
    assert found == {"hello_2.10-3_amd64.deb": (5, "aa" * 32), "libfoo_1%3a2.0-1_all.deb": (3, "abcdef")}
    assert cache_name("libfoo", "1:2.0-1", "all") == "libfoo_1%3a2.0-1_all.deb"


def cache_with(tmp_path: Path, files: dict[str, bytes], listed: dict[str, bytes]) -> tuple[DebCache, Path]:
    cache = tmp_path / "apt-archives"
    (cache / "partial").mkdir(parents=True)
    for name, data in files.items():
        (cache / name).write_bytes(data)
    index = PackageIndex("digest", {name: (len(data), hashlib.sha256(data).hexdigest())
                                    for name, data in listed.items()})
    return DebCache(cache, index, tmp_path / "index" / "verified.json"), cache


def test_stage_links_only_what_verifies_and_removes_what_is_planted(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    genuine = b"genuine package"
    verified, cache = cache_with(tmp_path, {"good_1_all.deb": genuine, "trojan_1_all.deb": b"same size ! ....",
                                            "older_0_all.deb": b"not in this index"},
                                 {"good_1_all.deb": genuine, "trojan_1_all.deb": b"the real one...."})
    (cache / "link_1_all.deb").symlink_to("/etc/shadow")
    stage = tmp_path / "stage"
    stage.mkdir()
    assert verified.stage(stage) == 1
    assert sorted(p.name for p in stage.iterdir()) == ["good_1_all.deb"]
    # A copy for a tool, which may write it; hard links of the same inodes for an overlay's lower.
    assert (stage / "good_1_all.deb").stat().st_ino != (cache / "good_1_all.deb").stat().st_ino
    assert (stage / "good_1_all.deb").read_bytes() == genuine
    lower = tmp_path / "lower"
    lower.mkdir()
    assert verified.stage(lower, copy=False) == 1
    assert (lower / "good_1_all.deb").stat().st_ino == (cache / "good_1_all.deb").stat().st_ino
    # The same-size trojan and the symlink are gone from the cache; a package of another index stays.
    assert sorted(p.name for p in cache.iterdir()) == ["good_1_all.deb", "older_0_all.deb", "partial"]
    err = capsys.readouterr().err
    assert "trojan_1_all.deb from the package cache" in err and "link_1_all.deb from the package cache" in err


def test_a_file_changed_after_it_was_verified_is_hashed_again(tmp_path: Path) -> None:
    genuine = b"genuine package"
    verified, cache = cache_with(tmp_path, {"good_1_all.deb": genuine}, {"good_1_all.deb": genuine})
    first = tmp_path / "first"
    first.mkdir()
    assert verified.stage(first) == 1
    # Rewritten in place, same size (as a hard link's other name would allow): the ctime moves on.
    with open(cache / "good_1_all.deb", "r+b") as handle:
        handle.write(b"G")
    again = tmp_path / "again"
    again.mkdir()
    reread = DebCache(cache, verified.index, verified.memo_path)
    assert reread.stage(again) == 0
    assert not (cache / "good_1_all.deb").exists()


def test_keep_copies_in_only_verified_regular_files(tmp_path: Path) -> None:
    genuine = b"genuine package"
    verified, cache = cache_with(tmp_path, {}, {"new_1_all.deb": genuine, "linked_1_all.deb": genuine,
                                                "bad_1_all.deb": genuine, "link_1_all.deb": genuine})
    downloads = tmp_path / "upper"
    downloads.mkdir()
    (downloads / "new_1_all.deb").write_bytes(genuine)
    (downloads / "bad_1_all.deb").write_bytes(b"x" * len(genuine))
    (downloads / "linked_1_all.deb").write_bytes(genuine)
    os.link(downloads / "linked_1_all.deb", tmp_path / "other-name")
    (downloads / "unknown_1_all.deb").write_bytes(b"whatever")
    os.chmod(downloads / "new_1_all.deb", 0o666)
    (downloads / "link_1_all.deb").symlink_to(downloads / "new_1_all.deb")
    assert verified.keep(downloads) == 2
    assert sorted(p.name for p in cache.iterdir()) == ["linked_1_all.deb", "new_1_all.deb", "partial"]
    # Copies of the cache's own: not the build's inode (another name of it, an open descriptor).
    assert (cache / "linked_1_all.deb").stat().st_ino != (tmp_path / "other-name").stat().st_ino
    assert (cache / "new_1_all.deb").stat().st_mode & 0o777 == 0o644
    assert (cache / "new_1_all.deb").read_bytes() == genuine
    assert not list(cache.glob(".incoming-*"))
