"""``export``: an image of the store as an OCI image layout (image-spec 1.1), a directory or a tar.

The layout is ``oci-layout``, ``index.json`` and ``blobs/sha256/``: one gzip-compressed tar
layer per layer of the image (ocilayer.py: overlayfs whiteouts become ``.wh.`` files), a
config (os, architecture, the image's command and PATH, rootfs diff_ids, one history entry
per layer with its label) and a manifest; the index names it with
``org.opencontainers.image.ref.name`` = the profile's name, so ``skopeo copy oci:DIR:NAME``
and ``podman load`` find it.

Reproducible: every JSON document has sorted keys and no blanks; times are the image's and
layers' own (when they were built), never the export's; gzip headers carry no name and mtime
0; an oci-archive's entries are sorted, owned by 0:0, with the image's build time as mtime.
Exporting an image twice gives the same bytes, so the same digests.

Nothing half-written is left at DEST: the layout is made beside it under a temporary name
and renamed into place when complete (an interrupted export removes it). That name is a fresh
one, made with O_EXCL (mkdtemp, mkstemp): DEST's directory may be someone else's to write, and
a symlink planted at a name known beforehand would have had root's tar written through it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxmgr.catalog import image_layers
from sandboxmgr.errors import SandboxError, shown, warn
from sandboxmgr.ocilayer import write_layer
from sandboxmgr.removal import remove_tree
from sandboxmgr.spec import DEFAULT_PATH
from sandboxmgr.store import ImageRecord, Store

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = MEDIA_LAYER + "+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
CREATED = "org.opencontainers.image.created"
KEY_ANNOTATION = "io.github.sandboxmgr.image.key"
FORMATS = ("oci-dir", "oci-archive")
GZIP_LEVEL = 6  # zlib's default: a quarter of the bytes of the tar, at tens of MB/s
# A profile's arch (Debian's or the RPM family's name) as OCI's GOARCH-style name.
ARCHITECTURES = {"amd64": "amd64", "x86_64": "amd64", "arm64": "arm64", "aarch64": "arm64",
                 "i386": "386", "i686": "386", "armhf": "arm", "armel": "arm", "ppc64el": "ppc64le",
                 "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
Progress = Callable[[str], None]


def canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def oci_architecture(arch: str) -> str:
    return ARCHITECTURES.get(arch, arch)


class _Hashing:
    """A file object that hashes and counts what goes through it into ``out``."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        if self.out is not None:
            self.out.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    diff_id: str = ""

    def descriptor(self, media_type: str) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": self.digest, "size": self.size}


def _blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _put(layout: Path, data: bytes) -> Blob:
    blob = Blob("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    _blob_path(layout, blob.digest).write_bytes(data)
    return blob


def _put_layer(layout: Path, diff: Path) -> Blob:
    partial = layout / "blobs" / "sha256" / "partial"
    with open(partial, "wb") as handle:
        compressed = _Hashing(handle)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=GZIP_LEVEL, mtime=0) as zipped:
            plain = _Hashing(zipped)
            sockets, unnamable = write_layer(diff, plain)
    if sockets:
        warn(f"{diff}: {sockets} socket(s) left out (a tar cannot carry one)")
    if unnamable:
        warn(f"{diff}: {len(unnamable)} file(s) named .wh.* left out (OCI reads that name as a deletion): "
             f"{', '.join(unnamable[:3])}")
    os.rename(partial, _blob_path(layout, compressed.digest))
    return Blob(compressed.digest, compressed.size, plain.digest)


def _config(image: ImageRecord, layers: list[Any], blobs: list[Blob]) -> dict[str, Any]:
    imported = image.meta.get("method") == "import"
    settings = (image.meta.get("inputs") or {}).get("config") or {} if imported else {}  # ociimport.py
    config = {key: value for key, value in settings.items() if key in ("Env", "Cmd", "Entrypoint",
                                                                         "WorkingDir", "User")}
    config.setdefault("Env", [f"PATH={DEFAULT_PATH}"])
    if "Entrypoint" not in config:
        config.setdefault("Cmd", ["/bin/sh"])
    return {
        "created": image.meta.get("built_at", ""),
        "architecture": oci_architecture(str(image.meta.get("arch", ""))),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [blob.diff_id for blob in blobs]},
        "history": [{"created": layer.meta.get("created", ""), "created_by": f"sandboxmgr: {layer.meta.get('label')}",
                     "comment": f"sandboxmgr layer {layer.key}"} for layer in layers],
    }


def write_layout(store: Store, image: ImageRecord, layout: Path, progress: Progress) -> dict[str, Any]:
    """The OCI layout of ``image`` in the empty directory ``layout``; its index's descriptor."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    layers = image_layers(store, image)
    blobs = []
    for number, layer in enumerate(layers, 1):
        progress(f"layer {number}/{len(layers)}: {layer.meta.get('label', layer.key)}")
        blobs.append(_put_layer(layout, layer.diff))
    config = _put(layout, canonical(_config(image, layers, blobs)))
    created = str(image.meta.get("built_at", ""))
    annotations = {CREATED: created, KEY_ANNOTATION: image.key}
    manifest = _put(layout, canonical({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config.descriptor(MEDIA_CONFIG),
        "layers": [blob.descriptor(MEDIA_LAYER_GZIP) for blob in blobs], "annotations": annotations}))
    descriptor = manifest.descriptor(MEDIA_MANIFEST) | {
        "annotations": {**annotations, REF_NAME: image.profile},
        "platform": {"architecture": oci_architecture(str(image.meta.get("arch", ""))), "os": "linux"}}
    (layout / "index.json").write_bytes(canonical({"schemaVersion": 2, "mediaType": MEDIA_INDEX,
                                                   "manifests": [descriptor]}))
    (layout / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    return descriptor


def _archive(layout: Path, out: int, mtime: int) -> None:
    """``layout`` as a tar (an oci-archive) into the descriptor ``out``: sorted entries, 0:0,
    fixed modes and mtime."""
    names = ["oci-layout", "index.json", "blobs", "blobs/sha256",
             *(f"blobs/sha256/{name}" for name in sorted(os.listdir(layout / "blobs" / "sha256")))]
    with os.fdopen(out, "wb") as handle, tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            path = layout / name
            entry = tarfile.TarInfo(name)
            entry.mtime, entry.uid, entry.gid, entry.uname, entry.gname = mtime, 0, 0, "", ""
            if path.is_dir():
                entry.type, entry.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(entry)
                continue
            entry.mode, entry.size = 0o644, path.stat().st_size
            with open(path, "rb") as blob:
                tar.addfile(entry, blob)


def _check_dest(store: Store, dest: Path) -> None:
    if os.path.lexists(dest):
        raise SandboxError(f"{shown(str(dest))} exists already", hint="remove it, or give another -o path")
    if not dest.parent.is_dir():
        raise SandboxError(f"{shown(str(dest.parent))} is not a directory", hint="create it first")
    parent, root = os.path.realpath(dest.parent), os.path.realpath(store.root)
    if parent == root or parent.startswith(root + os.sep):
        raise SandboxError(f"{shown(str(dest))} is inside the store {store.root}",
                           hint="give a path outside the store (the store's trees are its own)")


def export(store: Store, image: ImageRecord, dest: Path, fmt: str, progress: Progress) -> dict[str, Any]:
    """Write ``image`` to ``dest`` in ``fmt`` (oci-dir or oci-archive); what was written."""
    from sandboxmgr.sandbox import using

    dest = Path(os.path.abspath(dest))
    _check_dest(store, dest)
    made: list[Path] = []  # removed unless renamed into place: only what this export made
    try:
        with using(store, image):  # rmi refuses meanwhile, as for a running sandbox
            if store.image(image.key) is None:
                raise SandboxError(f"image {image.key} was removed meanwhile", hint="see 'sandboxmgr images'")
            layout = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
            made.append(layout)
            os.chmod(layout, 0o755)  # noqa: S103 - as mkdir made it before: an export is for others to read
            descriptor = write_layout(store, image, layout, progress)
            partial = layout
            if fmt == "oci-archive":
                out, name = tempfile.mkstemp(prefix=f".{dest.name}.partial-", dir=dest.parent)
                partial = Path(name)
                made.append(partial)
                os.fchmod(out, 0o644)
                _archive(layout, out, int(image.built_ns // 1_000_000_000))
            os.rename(partial, dest)
            made.remove(partial)
    finally:
        for leftover in made:
            remove_tree(leftover)
    return {"image": image.key, "profile": image.profile, "format": fmt, "path": str(dest),
            "manifest": descriptor["digest"], "layers": len(image.layers)}
