"""Images: find the image of a profile, or build its missing layers safely.

An image is a stack of layers (see identity.py): the bootstrap, then
the packages, then one layer per setup step. Each layer is keyed by its inputs
and its parent's key, so a layer already in the store - built for this
profile before, or for another profile with the same base - is reused, and
only the layers above a change are built again.

A layer is built in the store's tmp/ under a lock per layer key and renamed
into layers/KEY only after every step succeeded; the image record is written
last. A second build of the same layer waits for the first and uses its result.
A bootstrap layer's root is also kept in the package cache's directory and
reused while the mirror's index is unchanged (rootcache.py).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from sandboxmgr import catalog, locked, pkgcache, rootcache
from sandboxmgr.builders import BuildContext, Builder, BuildRoot, builder_for
from sandboxmgr.builders.index import Unreachable
from sandboxmgr.builders.pkgprogress import StepOutput
from sandboxmgr.errors import BuildError, BusyError, counted, require_root, warn
from sandboxmgr.identity import Identity, LayerPlan, build_inputs, identify
from sandboxmgr.locks import Lock
from sandboxmgr.mounts import BindMount
from sandboxmgr.profile import Profile
from sandboxmgr.removal import remove_tree, tree_size
from sandboxmgr.store import ImageRecord, LayerRecord, Store, now_iso

Progress = Callable[[str], None]


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


def rebuild_reason(store: Store, profile: Profile, inputs: dict[str, Any] | None = None) -> str | None:
    """Why the profile needs a new image although an older one exists (``inputs``: its
    build inputs, when they are known already)."""
    newest = catalog.newest(store.images()).get(profile.name)
    if newest is None:
        return None
    changed = changed_inputs(newest.meta.get("inputs", {}), build_inputs(profile) if inputs is None else inputs)
    what = ", ".join(changed) if changed else "the build inputs"
    return f"{profile.name} changed since image {newest.key} was built ({what})"


def cache_key(profile: Profile) -> str:
    """Package caches are shared per distro, release and architecture."""
    return f"{profile.distro}-{profile.release}-{profile.arch}"


def package_caches(store: Store, profile: Profile) -> tuple[BindMount, ...]:
    """The shared package caches to mount into a build step or a sandbox of ``profile``."""
    cache = store.cache_dir / cache_key(profile)
    cache.mkdir(parents=True, exist_ok=True)
    return builder_for(profile).cache_dirs(profile, cache)


def ensure_image(store: Store, profile: Profile, progress: Progress, rebuild: bool = False,
                 use_kept_roots: bool = True) -> ImageRecord:
    """The image of ``profile``, its missing layers built first (all of them with
    ``rebuild``; ``use_kept_roots=False`` bootstraps afresh even when the mirror is unchanged)."""
    identity = identify(profile)  # once: it reads the keyring and key files
    key = identity.key
    record = store.image(key)
    if record is not None and not rebuild and _layers_present(store, record):
        return record
    require_root("building an image")
    builder = builder_for(profile)
    builder.preflight(profile)
    if profile.lock:
        locked.load(profile)  # a lock that cannot be used stops the build before it starts
    store.ensure()
    if rebuild:
        _check_rebuild(store, profile, identity)
    with ExitStack() as held:
        held.enter_context(_locked(store.lock("image", key), progress, f"image of {profile.name}"))
        record = store.image(key)
        if record is not None and not rebuild and _layers_present(store, record):
            return record  # built by the process we waited for
        # Its package cache is read and filled throughout: prune --cache leaves it meanwhile.
        held.enter_context(pkgcache.using(store, cache_key(profile)))
        store.clean_leftovers()
        if record is None:
            reason = rebuild_reason(store, profile, identity.inputs)
        else:
            reason = "rebuild requested" if rebuild else "layers of the image are missing"
        if reason:
            progress(f"building a new image: {reason}")
        started = time.monotonic()
        log_file = store.logs_dir / f"build-{profile.name}-{key}.log"
        log_file.write_text(f"sandboxmgr build of {profile.name} ({key}) at {now_iso()}\n")
        caches = package_caches(store, profile)
        scratch = held.enter_context(store.temporary("cache-view"))
        context = BuildContext(log_file=log_file, progress=progress, caches=caches,
                               verified=builder.open_cache(profile, store.cache_dir / cache_key(profile), scratch))
        built: list[LayerRecord] = []
        for step in identity.layers:
            # Each layer stays locked until the image that uses it is recorded, so a
            # concurrent rmi or prune cannot take it away in between.
            held.enter_context(_locked(store.lock("layer", step.key), progress, step.label))
            layer = store.layer(step.key)
            if layer is not None and not rebuild:
                progress(f"reusing layer {step.key} ({step.label})")
            else:
                layer = _build_layer(store, profile, builder, step, built, context, use_kept_roots)
            built.append(layer)
        if profile.lock:
            # Or no image is recorded. Not package build's build dependencies: they are not locked.
            locked.verify(profile, [layer.diff for layer in built][:-1 if profile.build_packages else None])
        meta = _image_meta(profile, identity, builder, built, started)
        record = store.publish_image(key, meta)
    progress(f"ready: {profile.name} ({key}), {counted(len(built), 'layer')}, in {meta['build_seconds']}s")
    return record


def _image_meta(profile: Profile, identity: Identity, builder: Builder, built: list[LayerRecord],
                started: float) -> dict[str, Any]:
    return {
        "key": identity.key,
        "profile": profile.name,
        "profile_path": str(profile.path),
        "description": profile.description,
        "distro": profile.distro,
        "release": profile.release,
        "arch": profile.arch,
        "method": builder.method,
        "built_at": now_iso(),
        "built_ns": time.time_ns(),
        "build_seconds": round(time.monotonic() - started, 1),
        "layers": [layer.key for layer in built],
        "size": sum(int(layer.meta.get("size", 0)) for layer in built),
        "inputs": identity.inputs,
    }


def _check_rebuild(store: Store, profile: Profile, identity: Identity) -> None:
    """A rebuild replaces layers in place: refuse while any image that shares one of
    them has a sandbox, named or running (its lower layers would change under it)."""
    from sandboxmgr.locks import is_held

    keys = {layer.key for layer in identity.layers}
    for image in store.images():
        if not keys & set(image.layers):
            continue
        users = store.users(image)
        if users or is_held(store.lock("image", image.key).path):
            what = f"sandbox {', '.join(users)}" if users else "a running sandbox"
            raise BusyError(f"cannot rebuild {profile.name}: {what} uses a layer it shares with image "
                            f"{image.key} ({image.profile})",
                            hint="remove those sandboxes (or wait for the run to end), then rebuild")


def _layers_present(store: Store, record: ImageRecord) -> bool:
    return all(store.layer(key) is not None for key in record.layers)


@contextmanager
def _locked(lock: Lock, progress: Progress, what: str) -> Iterator[None]:
    if not lock.try_acquire():
        progress(f"waiting for another build of the {what}{lock.holder_text()}")
        lock.acquire(True, "", "")
    try:
        yield
    finally:
        lock.release()


def _build_layer(store: Store, profile: Profile, builder: Builder, step: LayerPlan,
                 parents: list[LayerRecord], context: BuildContext, use_kept_roots: bool = True) -> LayerRecord:
    started = time.monotonic()
    progress = context.progress
    progress(f"building layer {step.key}: {step.label}")
    with store.temporary(f"layer-{step.key}") as tmp:
        diff = tmp / "diff"
        state = None
        if step.kind == "bootstrap":
            # Fingerprinted before the bootstrap and after it (_keep_root): kept only if the index did not change.
            unreachable = None
            try:
                state = rootcache.fingerprint(builder.index_state(profile))
            except Unreachable as exc:
                unreachable = exc
            kept = rootcache.find(store, cache_key(profile), step.key, state) if state and use_kept_roots else None
            if kept is not None:
                progress(f"bootstrap: the mirror's index is unchanged; linking the kept root of {step.key}")
                if _link_kept(kept, diff, "bootstrapping instead"):
                    return _publish_layer(store, profile, step, parents, tmp, started, kept)
            try:
                builder.bootstrap(profile, diff, context)
            except BuildError as failure:
                # Offline: the network does not reach the mirror and the bootstrap failed
                # too. A kept root of this layer is then the best there is.
                offline = (rootcache.find(store, cache_key(profile), step.key, None)
                           if unreachable is not None and use_kept_roots else None)
                if offline is None:
                    raise
                warn(f"the mirror cannot be reached ({unreachable}) and the bootstrap failed "
                      f"({failure.message}); using the bootstrap root kept at {rootcache.kept_at(offline)}, "
                      "which may be older than the mirror's packages")
                remove_tree(diff)
                if not _link_kept(offline, diff, "the build fails"):
                    raise
                return _publish_layer(store, profile, step, parents, tmp, started, offline)
            locked.unchanged(profile, step.step)  # a locked RPM bootstrap installed the lock of the layer's key
            root = BuildRoot(diff)
        else:
            for sub in ("diff", "work", "root"):
                (tmp / sub).mkdir()
            lowers = tuple(layer.diff for layer in reversed(parents))
            root = BuildRoot(diff, lowers, tmp / "work", tmp / "root")
        builder.prepare(profile, root, context)
        if step.kind == "packages":
            packages = locked.pinned(locked.load(profile), step.packages) if profile.lock else step.packages
            builder.install(replace(profile, packages=packages), root, context)
        elif step.kind == "lock":
            locked.install(profile, builder, root, context, step.step)
        elif step.kind == "setup":
            status = context.run_inside(root, ["/bin/sh", "-ec", step.step], dict(profile.env),
                                        on_line=StepOutput(context.progress, step.label.split(":")[0]))
            if status != 0:
                raise _step_failed(profile, step, status, context.log_file)
        builder.finish(profile, root, context)
        for path, keep in builder.parents_keep if root.lowers else ():
            root.drop_changes(path, keep)
        if step.kind == "bootstrap" and state:
            _keep_root(store, profile, builder, step.key, state, diff, progress)
        return _publish_layer(store, profile, step, parents, tmp, started)


def _step_failed(profile: Profile, step: LayerPlan, status: int, log: Path) -> BuildError:
    failure = BuildError(f"{step.label.split(':')[0]} of {profile.name} failed with exit status {status}: "
                         f"{step.step.strip()[:80]}",
                         hint=f"fix the step in {profile.setup_origins.get(step.index, profile.path)}; "
                              f"its output is in {log}")
    failure.log = str(log)
    return failure


def _keep_root(store: Store, profile: Profile, builder: Builder, layer_key: str, state: str, diff: Path,
               progress: Progress) -> None:
    """Keep a bootstrapped root for the next build of its layer; best effort: the build
    succeeds without it. Only if the index is still the one fingerprinted before the
    bootstrap - a mirror that moved on meanwhile may have served either."""
    try:
        unchanged = rootcache.fingerprint(builder.index_state(profile)) == state
    except Unreachable:
        unchanged = False
    if not unchanged:
        progress("bootstrap: the mirror's index changed during the build; not keeping the root")
        return
    progress("bootstrap: keeping the root for the next build (hard links)")
    try:
        rootcache.keep(store, cache_key(profile), layer_key, state, diff)
    except OSError as exc:
        warn(f"cannot keep the bootstrap root for the next build ({exc}); the image is not affected")


def _link_kept(kept: Path, diff: Path, otherwise: str) -> bool:
    """Link a kept root in as ``diff``; on failure warn (with what happens ``otherwise``),
    clean up and say so."""
    try:
        rootcache.link_tree(kept, diff)
        return True
    except OSError as exc:
        warn(f"cannot link the kept bootstrap root ({exc}); {otherwise}")
        remove_tree(diff)
        return False


def _forget_build_host(diff: Path) -> None:
    """The bootstrap tools copy the build machine's /etc/hostname into the root: an image is
    not that machine (each sandbox gets its own name, sandbox.write_etc_files). A new file,
    never a write into this one: it may be a hard link to a kept root's."""
    hostname = diff / "etc" / "hostname"
    try:
        if not stat.S_ISREG(os.lstat(hostname).st_mode):
            return
    except OSError:
        return
    hostname.unlink()
    fd = os.open(hostname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write("localhost\n")


def _publish_layer(store: Store, profile: Profile, step: LayerPlan, parents: list[LayerRecord],
                   tmp: Path, started: float, kept: Path | None = None) -> LayerRecord:
    diff = tmp / "diff"
    if step.kind == "bootstrap":
        _forget_build_host(diff)
    meta: dict[str, Any] = {
        "key": step.key,
        "kind": step.kind,
        "label": step.label,
        "parent": parents[-1].key if parents else None,
        "profile": profile.name,
        "created": now_iso(),
        "build_seconds": round(time.monotonic() - started, 1),
        "size": tree_size(diff),
    }
    if kept is not None:
        meta["kept_root"] = rootcache.kept_at(kept)  # when the linked root was bootstrapped
    # Only the layer's diff/ and its metadata move into layers/; work dirs stay in tmp/.
    layer_dir = tmp / "layer"
    layer_dir.mkdir()
    os.rename(diff, layer_dir / "diff")
    return store.publish_layer(layer_dir, step.key, meta)

