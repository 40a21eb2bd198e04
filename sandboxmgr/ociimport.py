"""``import``: an OCI image (ocisource.py) into layers of the store, and an image NAME over them.

The index names one image (one manifest, or one for linux on this machine's architecture); its
manifest and config are read verified and size-limited; each layer is unpacked by
ociunpack.py into the store's tmp/ and checked against both its digest and the config's
diff_id. Only when every layer is whole are the new layers renamed into layers/ and the image
record written (last): an error or Ctrl-C leaves no image, and at most layers no image uses
(prune removes them; the next import of the same image reuses them).

Keys: a layer's is the hash of its parent's key and its diff_id, so two images with the same
base share it on disk, as built images do; the image's is the hash of the manifest's digest
and NAME. The image record's ``profile`` is NAME (what `images`, `rmi`, `export` show and
take), its ``method`` is ``import``; its ``inputs`` are the source, the manifest's digest and
``config``: the image's Env, WorkingDir, User (used by `run` and `create`), Cmd and Entrypoint
(kept for `export`).
"""

from __future__ import annotations

import gzip
import hashlib
import platform
import re
import tarfile
import time
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxmgr.errors import SandboxError, counted, shown, warn
from sandboxmgr.ociexport import ARCHITECTURES, MEDIA_INDEX, MEDIA_LAYER, MEDIA_MANIFEST, canonical, oci_architecture
from sandboxmgr.ocisource import Layout, descriptor, invalid, open_source
from sandboxmgr.ociunpack import unpack_layer
from sandboxmgr.removal import tree_size
from sandboxmgr.store import ImageRecord, LayerRecord, Store, now_iso

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
LAYER_TYPES = {MEDIA_LAYER: "", MEDIA_LAYER + "+gzip": "gzip",
               "application/vnd.docker.image.rootfs.diff.tar": "",
               "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip"}
MAX_LAYERS = 64  # each is an overlayfs lowerdir: their paths share one page of mount options
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    manifest: str
    layers: list[tuple[str, str, int, str]]  # (media type, digest, size, diff_id), bottom first
    config: dict[str, Any]


@dataclass(frozen=True)
class Platform:
    """An image's platform as an OCI index names it: linux, an architecture (OCI's names:
    amd64, arm64, arm, 386, ppc64le...) and a variant (v7) or None."""

    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return f"linux/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


PLATFORM_HINT = "--platform linux/ARCH[/VARIANT] (linux/arm64, linux/arm/v7; Debian's names work: arm64, armhf)"
_VARIANT_OF = {"armhf": "v7", "armel": "v5"}  # Debian's ports of arm, as OCI's variants
_VARIANT = re.compile(r"v[0-9]{1,2}")


def parse_platform(text: str | None) -> Platform | None:
    """``[linux/]ARCH[/VARIANT]``, ARCH in OCI's or a family's naming (arm64, aarch64, armhf)."""
    if text is None:
        return None
    parts = text.split("/")
    if len(parts) > 1 and parts[0] not in ARCHITECTURES and parts[0] not in ARCHITECTURES.values():
        if parts[0] != "linux":
            raise SandboxError(f"--platform {shown(text)}: only linux images run here", hint=PLATFORM_HINT)
        parts = parts[1:]
    arch, variant = parts[0], parts[1] if len(parts) > 1 else None
    if len(parts) > 2 or (arch not in ARCHITECTURES and arch not in ARCHITECTURES.values()) or \
            (variant is not None and not _VARIANT.fullmatch(variant)):
        raise SandboxError(f"--platform {shown(text)}: not a platform this import knows", hint=PLATFORM_HINT)
    return Platform(oci_architecture(arch), variant or _VARIANT_OF.get(arch))


_NAME = re.compile(r"[a-z0-9_]{1,32}")  # OCI's architectures and variants; nothing a terminal acts on


def _named(arch: Any, variant: Any) -> Platform | None:
    """A platform an index or a config names (someone else's words), or None when it names none
    this import can compare or print."""
    if not isinstance(arch, str) or not _NAME.fullmatch(arch):
        return None
    return Platform(arch, variant if isinstance(variant, str) and _NAME.fullmatch(variant) else None)


def _platform(entry: dict[str, Any]) -> Platform | None:
    said = entry.get("platform")
    if not isinstance(said, dict) or said.get("os") != "linux":
        return None
    return _named(said.get("architecture"), said.get("variant"))


def _pick(manifests: list[Any], wanted: Platform | None, where: str) -> dict[str, Any]:
    """The entry of an index's ``manifests`` to import: its only one when it names no platform,
    else the one for ``wanted`` (default: this machine's architecture, any variant)."""
    if not manifests or not all(isinstance(entry, dict) for entry in manifests):
        raise invalid(f"{where} names no manifest" if not manifests else f"an entry of {where} is not a descriptor")
    if len(manifests) == 1 and (wanted is None or _platform(manifests[0]) is None):
        chosen: dict[str, Any] = manifests[0]  # one image: its config says what it is for (checked later)
        return chosen
    target = wanted or Platform(oci_architecture(platform.machine()))
    fits: list[dict[str, Any]] = [entry for entry in manifests if (found := _platform(entry)) is not None
            and found.architecture == target.architecture and target.variant in (None, found.variant)]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        offered = sorted({str(found) for entry in manifests if (found := _platform(entry)) is not None})
        raise SandboxError(f"the image has no {target} version (it has: {_listed(offered) or 'none named'})",
                           hint=f"import one it has: {PLATFORM_HINT}")
    raise SandboxError(f"the image has {len(fits)} {target} versions ({_listed([str(_platform(e)) for e in fits])})",
                       hint=f"choose one: {PLATFORM_HINT}")


def _listed(names: list[str], most: int = 8) -> str:
    """An index's platforms for one line: an index may name thousands."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _choose(layout: Layout, wanted: Platform | None) -> dict[str, Any]:
    """The manifest descriptor to import: from index.json, through at most one nested index
    (what skopeo and docker write for a multi-platform image)."""
    index, where = layout.document("index.json"), "index.json"
    for depth in range(2):
        manifests = index.get("manifests")
        chosen = _pick(manifests if isinstance(manifests, list) else [], wanted, where)
        if chosen.get("mediaType") not in (MEDIA_INDEX, DOCKER_LIST):
            return chosen
        if depth:
            break
        _, _, index = layout.blob_document(chosen, "index")
        where = "the image's index"
    raise invalid("an index names an index that names an index")


def read_plan(layout: Layout, wanted: Platform | None = None) -> Plan:
    """The image's manifest digest, its layers and its config, checked; ``wanted``: the platform
    to take of a multi-platform image (default: this machine's)."""
    layout_file = layout.document("oci-layout")
    if layout_file.get("imageLayoutVersion") != "1.0.0":
        raise invalid("oci-layout is not imageLayoutVersion 1.0.0")
    media, digest, manifest = layout.blob_document(_choose(layout, wanted), "manifest")
    if media in (MEDIA_INDEX, DOCKER_LIST) or manifest.get("mediaType") in (MEDIA_INDEX, DOCKER_LIST):
        raise invalid("a manifest is an index its descriptor does not say it is")
    if manifest.get("schemaVersion") != 2 or manifest.get("mediaType", MEDIA_MANIFEST) not in (MEDIA_MANIFEST,
                                                                                              DOCKER_MANIFEST):
        raise invalid("the manifest is not an OCI image manifest (schemaVersion 2)")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        raise invalid("the manifest has no layers")
    if len(layers) > MAX_LAYERS:
        raise SandboxError(f"the image has {len(layers)} layers, more than {MAX_LAYERS}",
                           hint="squash it first (buildah commit --squash, podman build --squash)")
    _, _, config = layout.blob_document(manifest.get("config"), "config")
    _check_platform(config, wanted)
    diff_ids = config["rootfs"].get("diff_ids") if isinstance(config.get("rootfs"), dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise invalid("the config's rootfs.diff_ids do not match the manifest's layers")
    found = []
    for number, (layer, diff_id) in enumerate(zip(layers, diff_ids, strict=True), 1):
        layer_media, layer_digest, size = descriptor(layer, f"layer {number}")
        if layer_media not in LAYER_TYPES:
            hint = ("convert it: skopeo copy --dest-compress-format gzip SOURCE oci:DIR" if "zstd" in layer_media
                    else "only tar and tar+gzip layers are imported")
            raise SandboxError(f"layer {number} is {shown(layer_media)}", hint=hint)
        if not isinstance(diff_id, str) or not diff_id.startswith("sha256:") or len(diff_id) != 71:
            raise invalid(f"diff_id {number} is not a sha256 digest")
        found.append((layer_media, layer_digest, size, diff_id))
    return Plan(digest, found, config)


def _check_platform(config: dict[str, Any], wanted: Platform | None) -> None:
    """The config says what its programs are for: an index (or a single image) that claimed
    another platform is not believed."""
    arch, variant = config.get("architecture"), config.get("variant")
    if wanted is None or arch is None:
        return
    found = _named(arch, variant)
    if found is None:
        raise invalid("the config's architecture is not an architecture's name")
    if found.architecture != wanted.architecture or (wanted.variant and found.variant not in (None, wanted.variant)):
        raise SandboxError(f"the image chosen for {wanted} is for {found} (its config says so)",
                           hint=f"import the platform it is for: --platform {found}")


def _arch_of(config: dict[str, Any]) -> str:
    """The architecture to record (`images` prints it): the config's, when it is a name."""
    found = _named(config.get("architecture"), None)
    return found.architecture if found is not None else ""


def oci_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What `run` takes of an image's config (Env, WorkingDir, User) and `export` keeps
    (Cmd, Entrypoint), checked as the command line's own options are."""
    from sandboxmgr.users import check_user

    settings: dict[str, Any] = config["config"] if isinstance(config.get("config"), dict) else {}
    kept: dict[str, Any] = {}
    for key in ("Env", "Cmd", "Entrypoint"):
        value = settings.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(item, str) and "\0" not in item for item in value):
            raise invalid(f"the config's {key} is not a list of strings")
        kept[key] = value
    if any("=" not in item or item.startswith("=") for item in kept.get("Env", [])):
        raise invalid("the config's Env has an entry that is not NAME=VALUE")
    workdir, user = settings.get("WorkingDir"), settings.get("User")
    if workdir:
        if not isinstance(workdir, str) or not workdir.startswith("/") or "\0" in workdir:
            raise invalid("the config's WorkingDir is not an absolute path")
        kept["WorkingDir"] = workdir
    if user:
        if not isinstance(user, str):
            raise invalid("the config's User is not a string")
        check_user(user)
        kept["User"] = user
    return kept


def layer_key(parent: str | None, diff_id: str) -> str:
    return hashlib.sha256(canonical({"oci-layer": diff_id, "parent": parent})).hexdigest()[:20]


def image_key(manifest: str, name: str) -> str:
    return hashlib.sha256(canonical({"oci-image": manifest, "name": name})).hexdigest()[:20]


def _opaque_xattr() -> str:
    from sandboxmgr.userns import entered

    return "user.overlay.opaque" if entered() else "trusted.overlay.opaque"


def _unpack(layout: Layout, layer: tuple[str, str, int, str], diff: Path, label: str) -> int:
    media, digest, size, diff_id = layer
    blob = layout.blob(digest, size)
    try:
        stream: Any = blob
        plain = _Hashing(gzip.GzipFile(fileobj=stream, mode="rb") if LAYER_TYPES[media] else stream)
        try:
            devices = unpack_layer(plain, diff, label, _opaque_xattr())  # type: ignore[arg-type]
            plain.drain()
            blob.finish()
        except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # the store's own trouble (a full disk): said as such by the store
            raise invalid(f"{label} is not a valid tar{' (gzip)' if LAYER_TYPES[media] else ''}: {exc}") from None
    finally:
        blob.stream.close()
    if plain.digest != diff_id:
        raise invalid(f"{label}'s content does not match its diff_id")
    return devices


class _Hashing:
    """A read-through sha256 of the uncompressed layer: its diff_id."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.hash = stream, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.stream.read(size)
        self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def _locked(held: ExitStack, store: Store, kind: str, key: str, progress: Progress) -> None:
    lock = store.lock(kind, key)
    if not lock.try_acquire():
        progress(f"waiting for another command that holds the {kind} {key}")
        lock.acquire(True, "", "")
    held.callback(lock.release)


def import_image(store: Store, source: str, name: str, progress: Progress,
                 wanted: Platform | None = None) -> tuple[ImageRecord, bool]:
    """Import ``source`` (of a multi-platform image: the ``wanted`` platform's, default this
    machine's) as the image ``name``; the record, and whether it was new."""
    store.ensure()
    with store.temporary("import") as scratch, ExitStack() as held:
        skopeo = ("--override-os", "linux", "--override-arch", wanted.architecture,
                  *(("--override-variant", wanted.variant) if wanted.variant else ())) if wanted else ()
        layout = open_source(source, scratch, progress, skopeo)
        held.callback(layout.close)
        plan = read_plan(layout, wanted)
        settings = oci_settings(plan.config)
        key = image_key(plan.manifest, name)
        _locked(held, store, "image", key, progress)
        existing = store.image(key)
        if existing is not None and all(store.layer(k) is not None for k in existing.layers):
            return existing, False
        started = time.monotonic()
        keys: list[str] = []
        made: dict[str, Path] = {}
        for number, layer in enumerate(plan.layers, 1):
            keys.append(layer_key(keys[-1] if keys else None, layer[3]))
            _locked(held, store, "layer", keys[-1], progress)  # until the image is recorded, as a build
            if store.layer(keys[-1]) is not None:
                progress(f"reusing layer {keys[-1]} (layer {number})")
                continue
            progress(f"unpacking layer {number}/{len(plan.layers)} ({counted(layer[2], 'byte')})")
            (scratch / keys[-1] / "diff").mkdir(parents=True)
            devices = _unpack(layout, layer, scratch / keys[-1] / "diff", f"layer {number}")
            if devices:
                warn(f"layer {number}: {counted(devices, 'device node')} left out (a sandbox has its own /dev)")
            made[keys[-1]] = scratch / keys[-1]
        records = _publish_layers(store, name, plan, keys, made)
        meta = {"key": key, "profile": name, "profile_path": None, "description": f"imported from {source}",
                "distro": "oci", "release": "", "arch": _arch_of(plan.config),
                "method": "import", "built_at": now_iso(), "built_ns": time.time_ns(),
                "build_seconds": round(time.monotonic() - started, 1), "layers": keys,
                "size": sum(int(r.meta.get("size", 0)) for r in records),
                "inputs": {"source": source, "manifest": plan.manifest, "config": settings}}
        return store.publish_image(key, meta), True


def layer_labels(config: dict[str, Any], count: int) -> list[str]:
    """Each layer's label: ``oci layer N``, with what the image's history says made it (its
    ``created_by``, printable characters only, cut at 60) when the history has one entry per layer."""
    history = config.get("history") if isinstance(config.get("history"), list) else []
    steps = [step for step in history or () if isinstance(step, dict) and not step.get("empty_layer")]
    labels = []
    for index in range(count):
        said = steps[index].get("created_by") if len(steps) == count else None
        text = "".join(c if c.isprintable() else "?" for c in said).strip() if isinstance(said, str) else ""
        labels.append(f"oci layer {index + 1}" + (f": {text[:60]}" if text else ""))
    return labels


def _publish_layers(store: Store, name: str, plan: Plan, keys: list[str], made: dict[str, Path]) -> list[LayerRecord]:
    records = []
    labels = layer_labels(plan.config, len(keys))
    for index, key in enumerate(keys):
        if key in made:
            meta = {"key": key, "kind": "oci", "label": labels[index],
                    "parent": keys[index - 1] if index else None, "profile": name, "created": now_iso(),
                    "build_seconds": 0, "size": tree_size(made[key] / "diff"), "diff_id": plan.layers[index][3]}
            store.publish_layer(made[key], key, meta)
        found = store.layer(key)
        if found is None:
            raise SandboxError(f"layer {key} went missing during the import", hint="import again")
        records.append(found)
    return records


def check_image_name(name: str, profiles: set[str]) -> None:
    """NAME is a name (names.py's rule), and not a profile's name or alias: `run NAME` would
    not know which is meant."""
    from sandboxmgr.names import check_name

    check_name(name, "image name")
    if name in profiles:
        raise SandboxError(f"{name!r} is a profile's name or alias", hint="import under another name: --as NAME")
