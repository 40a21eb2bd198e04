"""remove_tree and empty_tree on a tree a sandbox made thousands of directories deep."""

from __future__ import annotations

import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxmgr.removal import empty_tree, remove_tree


def deep_tree(top: Path, depth: int) -> None:
    """``top``/d/d/.../d (``depth`` of them), each with a file; made by descriptor, as a sandbox's
    `mkdir d; cd d` loop makes it (no path that long is ever spelt)."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)


@pytest.fixture(autouse=True)
def removed_anyway(tmp_path: Path) -> Iterator[None]:
    """A tree left by a failure would break pytest's own clean-up (a recursion) for every later
    run on the machine: GNU rm takes it whatever happens."""
    yield
    subprocess.run(["rm", "-rf", "--", *map(str, tmp_path.iterdir())], check=True)


@pytest.fixture
def few_descriptors() -> Iterator[None]:
    """A limit of 64 open descriptors: a walk holding one per level fails 60 levels down."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_tree_deeper_than_python_s_recursion_is_removed(tmp_path: Path) -> None:
    # A sandbox's changes (its upper directory) are its own to shape: 1500 levels was a
    # RecursionError, so `rm` (and a run's clean-up, and doctor --fix) could never remove it.
    deep_tree(tmp_path / "upper", 1500)
    remove_tree(tmp_path / "upper")
    assert not (tmp_path / "upper").exists()


def test_a_deep_tree_is_removed_with_few_descriptors(tmp_path: Path, few_descriptors: None) -> None:
    deep_tree(tmp_path / "upper", 200)
    remove_tree(tmp_path / "upper")
    assert not (tmp_path / "upper").exists()


def test_emptying_a_deep_tree_keeps_its_directories(tmp_path: Path) -> None:
    deep_tree(tmp_path / "cache", 1200)
    empty_tree(tmp_path / "cache")
    fd, depth = os.open(tmp_path / "cache", os.O_RDONLY | os.O_DIRECTORY), 0
    while True:
        names = os.listdir(fd)
        assert "f" not in names
        if not names:
            break
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd, depth = child, depth + 1
    os.close(fd)
    assert depth == 1200
