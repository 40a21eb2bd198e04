"""What the store holds, listed and looked up: images (with their layers) and named sandboxes.

The images layer's reading side: which image is a profile's newest (the others are
"older", and ``prune`` removes them), which profiles share a layer, and what a
reference on the command line (a profile, an alias, an image key or its prefix)
names. Building is images.py's; the records and their removal are store.py's.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from sandboxmgr import usage
from sandboxmgr.errors import SandboxError
from sandboxmgr.identity import image_key
from sandboxmgr.profile import Profile, ProfileRegistry
from sandboxmgr.removal import tree_size

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from sandboxmgr.store import ImageRecord, LayerRecord, Store


def newest(images: Iterable[ImageRecord]) -> dict[str, ImageRecord]:
    """The newest image of each profile (the first of equals, as ``max``), by profile name."""
    found: dict[str, ImageRecord] = {}
    for image in images:
        best = found.get(image.profile)
        if best is None or image.built_ns > best.built_ns:
            found[image.profile] = image
    return found


def current(images: Iterable[ImageRecord], registry: ProfileRegistry) -> dict[str, str]:
    """The key of each profile's current image: the one its profile's present content keys
    to, when that one is built; else (the profile changed and was not built again, or is
    gone, or is a matrix entry's) its newest. A rebuild, then an edit undone, makes the
    current image an older one: "newest" alone would call it superseded."""
    found = {profile: image.key for profile, image in newest(images).items()}
    built = {(image.profile, image.key) for image in images}
    for profile in found:
        try:
            key = image_key(registry.load(profile))
        except SandboxError:
            continue
        if (profile, key) in built:
            found[profile] = key
    return found


def prune(store: Store, registry: ProfileRegistry) -> tuple[list[str], list[str]]:
    """Remove the images that are not their profile's current one (see :func:`current`) and
    that no sandbox uses, then unused layers; return both lists of keys."""
    images = store.images()
    keep = current(images, registry)
    removed_images: list[str] = []
    removed_layers: list[str] = []
    for image in images:
        if image.key != keep[image.profile] and not store.users(image):
            removed_layers += store.remove_image(image)
            removed_images.append(image.key)
    return removed_images, removed_layers + store.remove_unused_layers()


def find_images(store: Store, ref: str) -> list[ImageRecord]:
    """Images named by a profile name or a key (or a unique key prefix)."""
    images = store.images()
    by_profile = [r for r in images if r.profile == ref]
    if by_profile:
        return by_profile
    return [r for r in images if r.key.startswith(ref)] if len(ref) >= 4 else []


def lookup(store: Store, registry: ProfileRegistry, ref: str) -> list[ImageRecord]:
    """The images ``ref`` names (see :func:`find_images`), else those of the profile it names
    (an alias, a path); none when neither finds any."""
    found = find_images(store, ref)
    if found:
        return found
    try:
        return find_images(store, registry.load(ref).name)
    except SandboxError:
        return []


def listing(store: Store, registry: ProfileRegistry) -> list[dict[str, Any]]:
    """Every image's metadata (its build inputs left out) with its path, whether it is not its
    profile's current image ("outdated", see :func:`current`), and its layers, each with the
    other profiles that share it: the rows of ``sandboxmgr images`` (and its --json).

    ``size`` is what the image's layers take on disk, each file once; ``shared_size`` the part
    of it that another image has too (a layer both use, a hard link), ``unique_size`` the rest,
    which removing the image alone would free (with ``prune --cache`` for a kept root's links)."""
    records = store.images()
    keep = current(records, registry)
    measured = usage.shares({record.key: _layer_paths(store, record) for record in records}, usage.Trees())
    users: dict[str, set[str]] = {}
    for record in records:
        for key in record.layers:
            users.setdefault(key, set()).add(record.profile)
    rows = []
    for record in records:
        meta = dict(record.meta)
        meta.pop("inputs", None)
        meta["path"] = str(record.path)
        meta["outdated"] = record.key != keep[record.profile]
        meta["shared_size"], meta["unique_size"] = measured[record.key]
        meta["size"] = meta["shared_size"] + meta["unique_size"]
        meta["layers"] = [_layer_row(store, key, users[key] - {record.profile}) for key in record.layers]
        rows.append(meta)
    return rows


def image_layers(store: Store, record: ImageRecord) -> list[LayerRecord]:
    """The layers of ``record``, bottom first; one line if one is missing (lock, export)."""
    found = []
    for key in record.layers:
        layer = store.layer(key)
        if layer is None:
            raise SandboxError(f"layer {key} of image {record.key} ({record.profile}) is missing from the store",
                               hint=f"rebuild it: sandboxmgr build --rebuild {record.profile}")
        found.append(layer)
    return found


def _layer_paths(store: Store, record: ImageRecord) -> list[Path]:
    return [store.layers_dir / key for key in record.layers if store.layer(key) is not None]


def _layer_row(store: Store, key: str, shared_with: set[str]) -> dict[str, Any]:
    layer = store.layer(key)
    return {
        "key": key,
        "kind": layer.meta.get("kind") if layer else None,
        "label": layer.meta.get("label") if layer else None,
        "size": layer.meta.get("size") if layer else None,
        "path": str(layer.path) if layer else None,
        "shared_with": sorted(shared_with),
        "missing": layer is None,
        # When the kept bootstrap root this layer links was made (rootcache.py), if it does.
        "kept_root": layer.meta.get("kept_root") if layer else None,
    }


def profile_listing(store: Store, registry: ProfileRegistry) -> tuple[list[dict[str, Any]], bool]:
    """Every profile (an invalid one with its error) as a row of ``sandboxmgr profiles`` (and
    its --json), and whether the store could be read: profiles need no store, so a user other
    than root lists them too, with "built" unknown (None)."""
    try:
        store.require_access(store.images_dir)
        readable = True
    except SandboxError:
        readable = False
    rows: list[dict[str, Any]] = []
    for name, item in registry.load_all():
        if isinstance(item, Profile):
            key = image_key(item)
            built = store.image(key) is not None if readable else None
            rows.append({"name": name, "distro": item.distro, "release": item.release,
                         "arch": item.arch, "aliases": list(item.aliases), "built": built,
                         "key": key, "description": item.description,
                         "path": str(item.path), "error": None})
        else:
            rows.append({"name": name, "distro": "?", "release": "?", "arch": "?", "aliases": [],
                         "built": False, "key": None, "description": "",
                         "path": str(registry.files()[name]), "error": item.message})
    return rows, readable


def sandbox_info(store: Store, name: str) -> dict[str, Any]:
    """A named sandbox's metadata with its path, the size of its changes, whether a command
    runs in it, and whether its image is still in the store (ls, inspect)."""
    record = store.sandbox(name)
    info = dict(record.meta)
    info["path"] = str(record.path)
    info["changes_size"] = tree_size(record.upper)
    from sandboxmgr.live import status

    info["command"] = record.meta.get("command")  # a detached one's main command (run -d), else None
    info.update(status(store, record))
    info["in_use"] = info["state"] == "running"
    info["image_present"] = store.image(record.image_key) is not None
    return info


# Of a command line, what top shows: the sandbox writes them (megabytes each, in any number of
# processes), and what is read is held and printed whole.
COMMAND_BYTES = 4096


def sandbox_processes(store: Store, name: str) -> list[dict[str, Any]]:
    """``top``: the processes of a running sandbox, its PID 1 first - pid on the host and in
    the sandbox, uid (the host's view), state, CPU seconds, command line."""
    from sandboxmgr.live import holder, pid_namespace, processes

    record = store.sandbox(name)
    found = holder(store, record)
    namespace = None if found is None else pid_namespace(found)
    if found is None or namespace is None:
        raise SandboxError(f"sandbox {name!r} is not running", hint=f"start it first: sandboxmgr start {name}")
    rows = [_process_row(pid, namespace) for pid in (found.pid, *processes(found))]
    return [row for row in rows if row is not None]


def _process_row(pid: int, namespace: str) -> dict[str, Any] | None:
    """What /proc says of ``pid`` while it is a process of the sandbox's PID ``namespace``, else
    None: it is gone, or its pid is another's by now (a host process is never shown as the
    sandbox's). Its command line is the sandbox's to write: anything not printable in it is
    shown as ``?``, and what is beyond its first COMMAND_BYTES as ``...``."""
    import signal

    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        if os.readlink(f"/proc/{pid}/ns/pid") != namespace:
            return None
        with open(f"/proc/{pid}/status") as handle:
            status = dict(line.split(":", 1) for line in handle.read().splitlines() if ":" in line)
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read().rpartition(")")[2].split()
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read(COMMAND_BYTES + 1)
        row = {"pid": pid, "sandbox_pid": int(status["NSpid"].split()[-1]), "uid": int(status["Uid"].split()[0]),
               "state": stat[0], "cpu_seconds": round((int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"), 2)}
        signal.pidfd_send_signal(pidfd, 0)  # still that process: what /proc said was its
    except (OSError, ValueError, KeyError, IndexError):
        return None
    finally:
        os.close(pidfd)
    argv = cmdline[:COMMAND_BYTES].rstrip(b"\0").split(b"\0")
    command = " ".join(arg.decode(errors="replace") for arg in argv) or f"[{status.get('Name', '').strip()}]"
    command = "".join(char if char.isprintable() else "?" for char in command)
    return row | {"command": command + ("..." if len(cmdline) > COMMAND_BYTES else "")}
