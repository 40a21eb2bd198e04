"""Measuring the store's trees: each file once, nothing followed, what removal frees."""

from __future__ import annotations

import os
from pathlib import Path

from sandboxmgr import usage


def test_a_hard_link_counts_once_and_is_freed_only_with_all_its_names(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "file").write_bytes(b"x" * 100_000)
    os.link(one / "file", two / "file")
    alone, both = usage.scan(one), usage.merged([usage.scan(one), usage.scan(two)])
    assert usage.size(alone) >= 100_000
    assert usage.size(both) < usage.size(alone) + 100_000  # two/ adds its directory, not the file
    assert usage.freed(alone) < 100_000  # its other name, in two/, keeps it
    assert usage.freed(both) >= 100_000


def test_a_symlink_is_measured_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"x" * 1_000_000)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "link").symlink_to(outside)
    assert usage.size(usage.scan(tree)) < 100_000


def test_shared_and_unique_bytes_of_groups(tmp_path: Path) -> None:
    base, own = tmp_path / "base", tmp_path / "own"
    for directory, size in ((base, 200_000), (own, 50_000)):
        directory.mkdir()
        (directory / "data").write_bytes(b"x" * size)
    found = usage.shares({"a": [base], "b": [base, own]}, usage.Trees())
    assert found["a"][0] == found["b"][0] >= 200_000
    assert found["a"][1] == 0
    assert 50_000 <= found["b"][1] < 200_000
