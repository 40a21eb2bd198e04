"""A layer's tar for export (ocilayer.py): what is written, what is left out, byte for byte the same."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from sandboxmgr.ocilayer import write_layer


def tar_of(diff: Path) -> tuple[bytes, list[str]]:
    out = io.BytesIO()
    _sockets, unnamable = write_layer(diff, out)
    return out.getvalue(), unnamable


def layer(tmp_path: Path) -> Path:
    diff = tmp_path / "diff"
    (diff / "etc").mkdir(parents=True)
    (diff / "etc" / "b").write_text("b")
    (diff / "etc" / "a").write_text("a")
    os.link(diff / "etc" / "a", diff / "etc" / "a-link")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host")
    (diff / "to-host").symlink_to(outside)
    return diff


def test_entries_are_sorted_numeric_and_never_followed(tmp_path: Path) -> None:
    data, _ = tar_of(layer(tmp_path))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        entries = tar.getmembers()
    assert [entry.name for entry in entries] == ["etc", "etc/a", "etc/a-link", "etc/b", "to-host"]
    assert entries[2].islnk() and entries[2].linkname == "etc/a"
    assert entries[4].issym() and entries[4].linkname == str(tmp_path / "outside")  # not its contents
    assert {(entry.uname, entry.gname) for entry in entries} == {("", "")}


def test_a_layer_exported_twice_is_the_same_bytes(tmp_path: Path) -> None:
    diff = layer(tmp_path)
    first, _ = tar_of(diff)
    os.utime(diff / "etc" / "a", (1, os.stat(diff / "etc" / "a").st_mtime))  # reading changes atime: not written
    assert tar_of(diff)[0] == first


def test_a_file_named_like_a_whiteout_is_left_out_and_said(tmp_path: Path) -> None:
    diff = layer(tmp_path)
    (diff / "etc" / ".wh.a").write_text("not a deletion")
    data, unnamable = tar_of(diff)
    assert unnamable == ["etc/.wh.a"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert ".wh." not in " ".join(tar.getnames())


def test_a_tree_deeper_than_python_s_recursion_is_exported(tmp_path: Path) -> None:
    # Two frames a level: 600 levels was a RecursionError ('internal error' from export). 600
    # stays within what pytest's own clean-up of tmp_path can remove.
    diff = tmp_path / "diff"
    (diff / "/".join(["d"] * 600)).mkdir(parents=True)
    (diff / "/".join(["d"] * 600) / "f").write_text("deep")
    data, _ = tar_of(diff)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert len(names) == 601 and names[-1] == "/".join(["d"] * 600) + "/f"
