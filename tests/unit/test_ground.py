"""The ground layer's small shared helpers: lock file names, the overlay-unsafe check,
the byte formatter, and the one "newest image per profile"."""

from __future__ import annotations

from pathlib import Path

from sandboxmgr.catalog import newest
from sandboxmgr.limits import format_bytes
from sandboxmgr.locks import lock_file, lock_files, parse_lock_file
from sandboxmgr.names import overlay_unsafe
from sandboxmgr.store import ImageRecord


def test_a_lock_file_name_reads_back_as_its_kind_and_name(tmp_path: Path) -> None:
    path = lock_file(tmp_path, "sandbox", "work-1")
    assert path == tmp_path / "sandbox-work-1.lock"
    assert parse_lock_file(path.name) == ("sandbox", "work-1")
    assert parse_lock_file("sandbox-work-1.lock.tmp") is None and parse_lock_file("nodash.lock") is None


def test_lock_files_lists_only_the_kinds_asked_for(tmp_path: Path) -> None:
    for name in ("tmp-b", "image-k", "sandbox-a"):
        lock_file(tmp_path, *name.split("-", 1)).write_text("")
    assert lock_files(tmp_path, {"tmp", "sandbox"}) == [("sandbox", "a"), ("tmp", "b")]
    assert lock_files(tmp_path / "absent", {"tmp"}) == []


def test_overlay_unsafe_paths() -> None:
    assert overlay_unsafe("/a,b") and overlay_unsafe("/a:b") and overlay_unsafe("/a\\b") and overlay_unsafe("/a\nb")
    assert not overlay_unsafe("/a b") and overlay_unsafe("/a b", blanks=True) and overlay_unsafe("/a\tb", blanks=True)
    assert not overlay_unsafe(Path("/var/lib/sandboxmgr"), blanks=True)


def test_format_bytes_is_binary_for_limits_and_decimal_for_the_store() -> None:
    assert [format_bytes(n) for n in (100, 1536 << 20, 1_500_000)] == ["100B", "1536M", "1.4M"]
    assert [format_bytes(n, decimal=True) for n in (None, 512, 1_500_000, 2_300_000_000, 10**16)] == [
        "-", "512B", "1.5MB", "2.3GB", "10000.0TB"]


def test_newest_image_per_profile_keeps_the_first_of_equals() -> None:
    def image(key: str, profile: str, built_ns: int) -> ImageRecord:
        return ImageRecord(key, Path("/store/images") / key, {"profile": profile, "built_ns": built_ns})

    images = [image("a1", "a", 1), image("a2", "a", 2), image("a3", "a", 2), image("b1", "b", 5)]
    assert {profile: record.key for profile, record in newest(images).items()} == {"a": "a2", "b": "b1"}


def test_counts_are_written_as_people_write_them() -> None:
    from sandboxmgr.errors import counted

    assert [counted(n, "layer") for n in (0, 1, 2)] == ["0 layers", "1 layer", "2 layers"]
    assert counted(1, "leftover") == "1 leftover"
    assert counted(3, "child", "children") == "3 children"
