"""df's accounting on a store made by hand: what prune and prune --cache would free, with hard
links between a layer and a kept root counted once and freed only with their last name."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sandboxmgr.df import report
from sandboxmgr.profile import ProfileRegistry
from sandboxmgr.store import Store


def layer(store: Path, key: str, size: int) -> Path:
    diff = store / "layers" / key / "diff"
    diff.mkdir(parents=True)
    (diff.parent / "layer.json").write_text(json.dumps({"key": key, "label": key}))
    (diff / "data").write_bytes(os.urandom(size))
    return diff / "data"


def image(store: Path, key: str, layers: list[str], built_ns: int) -> None:
    (store / "images" / key).mkdir(parents=True)
    (store / "images" / key / "image.json").write_text(
        json.dumps({"key": key, "profile": "gone", "layers": layers, "built_ns": built_ns}))


def rows(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["type"]: row for row in found["types"]}


def test_reclaimable_is_what_prune_and_prune_cache_would_free(tmp_path: Path) -> None:
    store = tmp_path / "store"
    base = layer(store, "base", 400_000)
    layer(store, "older", 100_000)   # only the older image uses it
    layer(store, "newer", 50_000)
    layer(store, "unused", 30_000)
    image(store, "old", ["base", "older"], 1)
    image(store, "new", ["base", "newer"], 2)  # the profile's newest: the current one
    root = store / "cache/debian-bookworm-amd64/roots/base"
    (root / "diff").mkdir(parents=True)
    (root / "root.json").write_text(json.dumps({"format": 1, "kept": "then"}))
    os.link(base, root / "diff" / "data")  # a kept root links its layer's files
    apt = store / "cache/debian-bookworm-amd64/apt-archives/k"
    (apt / "partial").mkdir(parents=True)
    (apt / "p.deb").write_bytes(os.urandom(200_000))
    found = report(Store(store), ProfileRegistry([]), verbose=True)
    by = rows(found)
    assert 100_000 <= by["images"]["reclaimable"] < 150_000   # the older image's own layer
    assert 30_000 <= by["layers"]["reclaimable"] < 50_000     # the unused layer
    assert by["kept roots"]["size"] >= 400_000 > by["kept roots"]["reclaimable"]  # its file has a layer's name too
    assert 200_000 <= by["package caches"]["reclaimable"] < 220_000
    # Each file once: the base layer's file is not counted again for the kept root.
    assert 780_000 <= found["size"] < 1_000_000
    images = {item["key"]: item for item in by["images"]["items"]}
    assert images["old"]["outdated"] and not images["new"]["outdated"]
    assert images["old"]["shared_size"] == images["new"]["shared_size"] >= 400_000


def test_a_file_an_older_layer_and_a_kept_root_share_is_freed_only_by_both(tmp_path: Path) -> None:
    store = tmp_path / "store"
    base = layer(store, "base", 400_000)
    layer(store, "other", 50_000)
    image(store, "old", ["base"], 1)
    image(store, "new", ["other"], 2)
    root = store / "cache/debian-bookworm-amd64/roots/base/diff"
    root.mkdir(parents=True)
    os.link(base, root / "data")
    found = report(Store(store), ProfileRegistry([]))
    by = rows(found)
    assert by["images"]["reclaimable"] < 400_000 and by["kept roots"]["reclaimable"] < 400_000
    assert found["reclaimable"] >= 400_000  # prune --cache removes both names
