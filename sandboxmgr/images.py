"""Images: find the image of a profile, or build it safely.

A build runs in the store's tmp/ under a lock per image key; the finished root
is renamed into images/KEY only after every step succeeded. A second build of
the same key waits for the first and then uses its result.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from sandboxmgr.builders import BuildContext, get_builder
from sandboxmgr.errors import BuildError, NotRootError
from sandboxmgr.profile import Profile
from sandboxmgr.store import ImageRecord, Store, now_iso, tree_size

Progress = Callable[[str], None]


def require_root(action: str) -> None:
    if os.geteuid() != 0:
        raise NotRootError(
            f"{action} needs root (namespaces, mounts and debootstrap do)",
            hint="run it with sudo, or as root",
        )


def changed_inputs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The build inputs that differ, as dotted names (``packages``, ``bootstrap.mirror``)."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{key}.{sub}" for sub in changed_inputs(a, b)]
        elif a != b:
            changed.append(key)
    return changed


def rebuild_reason(store: Store, profile: Profile) -> str | None:
    """Why the profile needs a new image although an older one exists."""
    older = [r for r in store.images() if r.profile == profile.name]
    if not older:
        return None
    newest = max(older, key=lambda r: str(r.meta.get("built_at", "")))
    changed = changed_inputs(newest.meta.get("inputs", {}), profile.build_inputs())
    what = ", ".join(changed) if changed else "the build inputs"
    return f"{profile.name} changed since image {newest.key} was built ({what})"


def ensure_image(store: Store, profile: Profile, progress: Progress, rebuild: bool = False) -> ImageRecord:
    """The image of ``profile``, built first if it is not in the store."""
    key = profile.image_key()
    record = store.image(key)
    if record is not None and not rebuild:
        return record
    require_root("building an image")
    builder = get_builder(profile.bootstrap.method)
    builder.preflight(profile)
    store.ensure()
    lock = store.lock("image", key)
    if not lock.try_acquire():
        progress(f"waiting for another build of {profile.name} ({key}){lock.holder_text()}")
        lock.acquire(True, "", "")
    with lock:
        record = store.image(key)
        if record is not None and not rebuild:
            return record  # built by the process we waited for
        store.clean_leftovers()
        reason = rebuild_reason(store, profile) if record is None else "rebuild requested"
        if reason:
            progress(f"building a new image: {reason}")
        return _build(store, profile, key, progress)


def _build(store: Store, profile: Profile, key: str, progress: Progress) -> ImageRecord:
    builder = get_builder(profile.bootstrap.method)
    log_file = store.logs_dir / f"build-{profile.name}-{key}.log"
    log_file.write_text(f"sandboxmgr build of {profile.name} ({key}) at {now_iso()}\n")
    context = BuildContext(log_file=log_file, progress=progress)
    started = time.monotonic()
    with store.temporary(f"build-{key}") as tmp:
        rootfs = tmp / "rootfs"
        progress(f"building {profile.name} ({profile.distro} {profile.release}, {profile.arch}) "
                 f"with {builder.method}")
        builder.bootstrap(profile, rootfs, context)
        builder.install(profile, rootfs, context)
        for number, step in enumerate(profile.setup, 1):
            progress(f"setup {number}/{len(profile.setup)}: {step.splitlines()[0][:60]}")
            env = dict(profile.env)
            status = context.run_inside(rootfs, ["/bin/sh", "-ec", step], env)
            if status != 0:
                raise BuildError(
                    f"setup step {number} of {profile.name} failed with exit status {status}: {step.strip()[:80]}",
                    hint=f"fix the step in {profile.path}; its output is in {log_file}",
                )
        builder.finish(profile, rootfs, context)
        progress("measuring the image")
        meta = {
            "key": key,
            "profile": profile.name,
            "profile_path": str(profile.path),
            "description": profile.description,
            "distro": profile.distro,
            "release": profile.release,
            "arch": profile.arch,
            "method": builder.method,
            "built_at": now_iso(),
            "build_seconds": round(time.monotonic() - started, 1),
            "size": tree_size(rootfs),
            "inputs": profile.build_inputs(),
        }
        record = store.publish_image(tmp, key, meta)
    progress(f"built {profile.name} ({key}) in {meta['build_seconds']}s")
    return record


def find_images(store: Store, ref: str) -> list[ImageRecord]:
    """Images named by a profile name or a key (or a unique key prefix)."""
    images = store.images()
    by_profile = [r for r in images if r.profile == ref]
    if by_profile:
        return by_profile
    return [r for r in images if r.key.startswith(ref)] if len(ref) >= 4 else []
