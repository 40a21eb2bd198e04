"""Disk: images' shared and unique sizes, df, prune --cache emptying the package caches (and
leaving one in use), and layers above the bootstrap giving apt's lists back.

The tests share one store of their own: a copy of the session's (its layers and kept roots as
hard links, its package cache as real copies, so what emptying frees is real), to which a
profile extending debian-bookworm adds two setup layers.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI, DEBIAN_MIRROR, ConcurrentBuild, Result, debian_archives, need_mirror, need_root

pytestmark = [pytest.mark.root, pytest.mark.network]

BLOB = 300_000  # bytes of the child's own file
CHILD = ("extends: debian-bookworm\n"
         "setup:\n"
         "  - apt-get update\n"
         f"  - head -c {BLOB} /dev/urandom > /blob\n")


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory, cli: CLI, bookworm: ConcurrentBuild) -> CLI:
    need_root()
    need_mirror(DEBIAN_MIRROR, "bookworm")
    top = tmp_path_factory.mktemp("disk")
    store = top / "store"
    store.mkdir(mode=0o700)
    for top_dir in ("images", "layers"):
        subprocess.run(["cp", "-a", "--link", str(cli.store / top_dir), str(store)], check=True)
    own_cache = debian_archives().split("/")[1]  # debian-bookworm-amd64
    for cache in (cli.store / "cache").iterdir():
        if cache.name != own_cache and cache.name.count("-") >= 2:
            continue  # another release's or architecture's package cache (the foreign-arch tests' arm64)
        (store / "cache" / cache.name).mkdir(parents=True)
        for part in cache.iterdir():  # kept roots as links (of the layers' files, as in a store)
            link = ["--link"] if part.name == "roots" else []
            subprocess.run(["cp", "-a", *link, str(part), str(store / "cache" / cache.name)], check=True)
    configs = top / "configs"
    configs.mkdir()
    (configs / "disk-child.yaml").write_text(CHILD)
    own = CLI(store, configs)
    own.ok("build", "disk-child")
    return own


def images_by_profile(cli: CLI) -> dict[str, dict[str, Any]]:
    return {row["profile"]: row for row in json.loads(cli.ok("images", "--json").out)}


def test_images_show_shared_and_unique_sizes(disk: CLI) -> None:
    found = images_by_profile(disk)
    base, child = found["debian-bookworm"], found["disk-child"]
    # The bootstrap layer both use counts as shared in each, the child's own layers as unique.
    assert base["shared_size"] == child["shared_size"]
    assert base["shared_size"] > 50_000_000
    assert base["unique_size"] == 0
    assert BLOB <= child["unique_size"] < BLOB + 2_000_000
    assert child["size"] == child["shared_size"] + child["unique_size"]
    header = disk.ok("images").out.splitlines()[0].split()
    assert header[3:6] == ["SIZE", "SHARED", "UNIQUE"]


def test_a_setup_step_running_apt_get_update_keeps_no_lists_in_its_layer(disk: CLI) -> None:
    child = images_by_profile(disk)["disk-child"]
    update = next(layer for layer in child["layers"] if "apt-get update" in str(layer["label"]))
    lists = Path(update["path"]) / "diff/var/lib/apt/lists"
    kept = sorted(entry.name for entry in lists.iterdir()) if lists.is_dir() else []
    assert set(kept) <= {"lock", "partial"}, kept
    assert update["size"] < 1_000_000
    # The image still has the bootstrap's lists: apt-get install works without an update.
    listed = disk.ok("run", "disk-child", "sh", "-c", "ls /var/lib/apt/lists/ | grep -c _Packages").out
    assert int(listed) >= 1


def df(cli: CLI) -> dict[str, dict[str, int]]:
    report = json.loads(cli.ok("df", "--json").out)
    assert set(report) == {"store", "types", "size", "reclaimable"}
    return {row["type"]: row for row in report["types"]}


def test_df_counts_each_kind_and_what_prune_would_free(disk: CLI) -> None:
    rows = df(disk)
    assert list(rows) == ["images", "layers", "sandboxes", "package caches", "kept roots", "run caches", "logs",
                          "temporary"]
    assert rows["run caches"]["total"] >= 1  # the runs above: their seccomp filter and resolved profile
    assert rows["images"]["total"] == len(images_by_profile(disk)) >= 2
    assert rows["layers"]["total"] == len(list((disk.store / "layers").iterdir())) >= 3
    assert rows["images"]["size"] >= images_by_profile(disk)["disk-child"]["size"]
    # The copied cache holds real bytes, all reclaimable while no one uses it.
    caches = rows["package caches"]
    assert caches["total"] == 1 and caches["size"] > 1_000_000
    assert caches["reclaimable"] > 0.9 * caches["size"]
    table = disk.ok("df").out
    assert table.splitlines()[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert "total (each file once)" in table


def prune_cache_while(disk: CLI, proc: subprocess.Popen[str], what: str) -> tuple[Result, str]:
    """``prune --cache`` once ``proc`` holds its package cache; its result, and ``proc``'s stderr
    when it has ended."""
    try:
        deadline = time.monotonic() + 60
        while df(disk)["package caches"]["active"] == 0:
            assert time.monotonic() < deadline, f"{what} never held its package cache"
            time.sleep(0.2)
        result = disk.ok("prune", "--cache")
    finally:
        _out, err = proc.communicate(timeout=300)
    return result, err


def test_prune_cache_leaves_a_package_cache_a_running_sandbox_uses(disk: CLI) -> None:
    debs = disk.store / debian_archives()
    assert list(debs.glob("*.deb"))
    running = disk.popen("run", "debian-bookworm", "sleep", "10")
    result, _ = prune_cache_while(disk, running, "the sandbox")
    assert running.returncode == 0
    assert "package cache debian-bookworm-amd64 is in use" in result.err
    assert "emptied 0 package caches" in result.out
    assert list(debs.glob("*.deb"))


def test_prune_cache_leaves_a_package_cache_a_build_uses(disk: CLI) -> None:
    assert disk.configs is not None
    (disk.configs / "disk-slow.yaml").write_text("extends: debian-bookworm\nsetup: [sleep 8]\n")
    debs = disk.store / debian_archives()
    building = disk.popen("build", "disk-slow")
    result, err = prune_cache_while(disk, building, "the build")
    assert building.returncode == 0, err
    assert "package cache debian-bookworm-amd64 is in use" in result.err
    assert list(debs.glob("*.deb"))


def test_prune_cache_empties_the_package_caches(disk: CLI) -> None:
    debs = disk.store / debian_archives()
    before = df(disk)["package caches"]
    result = disk.ok("prune", "--cache")
    assert "emptied 1 package cache (" in result.out
    assert not list(debs.glob("*.deb"))
    assert not [p for p in (debs.parent.parent / "index").rglob("*") if p.is_file()]
    after = df(disk)
    assert after["package caches"]["size"] < 100_000 < before["size"]
    assert after["run caches"]["total"] == 0
    assert not list((disk.store / "refs").glob("*.json")) and not list((disk.store / "cache/seccomp").glob("*.bpf"))
    # The directories stay: the image's sandboxes still mount them (run's cached resolution too).
    assert disk.ok("run", "disk-child", "ls", "/var/cache/apt/archives").out.split() == ["partial"]


def test_measuring_enters_no_bind_mount(tmp_path: Path) -> None:
    """A bind mount from the same file system has the same st_dev: it is found in the mount
    table, and neither entered nor counted (df and images measure trees sandboxes wrote)."""
    need_root()
    from sandboxmgr import usage

    outside, tree = tmp_path / "outside", tmp_path / "tree"
    outside.mkdir()
    (outside / "big").write_bytes(b"x" * 1_000_000)
    (tree / "mnt").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(outside), str(tree / "mnt")], check=True)
    try:
        assert usage.size(usage.scan(tree)) < 100_000
    finally:
        subprocess.run(["umount", str(tree / "mnt")], check=True)
    assert usage.size(usage.scan(tree)) < 100_000 < usage.size(usage.scan(outside))
