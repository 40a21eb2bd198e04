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

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from typing import Any

FORMAT = 2


def _key(ref: str, dirs: Sequence[Path]) -> list[Any]:
    # A path reference depends on the working directory; a name on the search path; both
    # on the version of sandboxmgr and its build format (they decide the image key too).
    from sandboxmgr import __version__
    from sandboxmgr.names import BUILD_FORMAT

    where = os.getcwd() if ref.endswith((".yaml", ".yml")) else ""
    return [ref, where, [str(d) for d in dirs], __version__, BUILD_FORMAT]


def _entry(store_root: Path, ref: str, dirs: Sequence[Path]) -> Path:
    text = json.dumps([FORMAT, *_key(ref, dirs)])
    # A short checksum names the entry; the entry itself records ref and dirs and is checked.
    return store_root / "refs" / f"{zlib.crc32(text.encode()):08x}.json"


def _fingerprint(path: Path) -> list[int] | None:
    try:
        info = os.stat(path)
        link = os.lstat(path)  # a symlink retargeted to another profile changes this one
    except OSError:
        return None
    return [info.st_ino, info.st_size, info.st_mtime_ns, link.st_ino, link.st_mtime_ns]


def fingerprints(ref: str, dirs: Sequence[Path], files: Sequence[Path]) -> list[list[Any]]:
    """What a resolution depends on, taken *before* the build it leads to: a profile
    edited while its image builds must not be taken for the one that was built."""
    paths = [*dirs, *files]
    if ref.endswith((".yaml", ".yml")):
        paths.append(Path(ref).absolute())  # the path as given: a retargeted symlink is a new inode
    return [[str(p), _fingerprint(p)] for p in paths]


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


def save(store_root: Path, ref: str, dirs: Sequence[Path], watched: list[list[Any]],
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
        "watched": watched,
    }
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.rename(tmp, entry)
