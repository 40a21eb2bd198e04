"""A cache of resolved profiles for `run`: profile reference -> image and settings.

`sandboxmgr run PROFILE -- true` on a built image should cost a namespace and a
mount, not a YAML parse of the profile and its parents. After the first run,
the resolution (image key and the sandbox settings the profile gives) is kept in
``STORE/refs/``. It is used only while nothing it was made from has changed: the
profile's files and their parents', the keys they name, and every profile
directory (a new file in a directory of higher precedence could shadow the
profile) must have the same inode, size and mtime as when it was written.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FORMAT = 1


def _key(ref: str, dirs: Sequence[Path]) -> list[Any]:
    # A path reference depends on the working directory; a name on the search path.
    where = os.getcwd() if ref.endswith((".yaml", ".yml")) else ""
    return [ref, where, [str(d) for d in dirs]]


def _entry(store_root: Path, ref: str, dirs: Sequence[Path]) -> Path:
    text = json.dumps([FORMAT, *_key(ref, dirs)])
    # A short checksum names the entry; the entry itself records ref and dirs and is checked.
    return store_root / "refs" / f"{zlib.crc32(text.encode()):08x}.json"


def _fingerprint(path: Path) -> list[int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_ino, info.st_size, info.st_mtime_ns]


def lookup(store_root: Path, ref: str, dirs: Sequence[Path]) -> dict[str, Any] | None:
    """The cached resolution of ``ref``, or None when there is none or it may be stale."""
    try:
        data = json.loads(_entry(store_root, ref, dirs).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != _key(ref, dirs):
        return None
    for path, fingerprint in data.get("watched", []):
        if _fingerprint(Path(path)) != fingerprint:
            return None
    return data


def save(store_root: Path, ref: str, dirs: Sequence[Path], watched: Sequence[Path],
         image: str, profile: str, settings: dict[str, Any]) -> None:
    """Remember a resolution; called after the slow path resolved and built it."""
    entry = _entry(store_root, ref, dirs)
    data = {
        "format": FORMAT,
        "key": _key(ref, dirs),
        "ref": ref,
        "image": image,
        "profile": profile,
        "settings": settings,
        "watched": [[str(p), _fingerprint(p)] for p in [*dirs, *watched]],
    }
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.rename(tmp, entry)
