"""Hand-made OCI image layouts for the import tests: any tar entry, any document, lies included."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MEDIA = "application/vnd.oci.image."


@dataclass
class Entry:
    """One tar entry: ``kind`` is a tarfile type; ``data`` a regular file's content."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    device: tuple[int, int] = (0, 0)
    uid: int = 0
    pax: dict[str, str] = field(default_factory=dict)


def layer_tar(entries: list[Entry]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in entries:
            info = tarfile.TarInfo(item.name)
            info.type, info.mode, info.linkname, info.uid, info.gid = item.kind, item.mode, item.linkname, item.uid, 0
            info.devmajor, info.devminor = item.device
            info.pax_headers = dict(item.pax)
            info.mtime = 1_700_000_000
            if item.kind == tarfile.REGTYPE:
                info.size = len(item.data)
                tar.addfile(info, io.BytesIO(item.data))
            else:
                tar.addfile(info)
    return out.getvalue()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class Layout:
    """An OCI layout being written at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def blob(self, data: bytes) -> dict[str, Any]:
        (self.root / "blobs" / "sha256" / digest(data)[7:]).write_bytes(data)
        return {"digest": digest(data), "size": len(data)}

    def image(self, layers: Sequence[list[Entry] | bytes], config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write an image of ``layers`` (gzip'd; each a list of entries or a tar's own bytes) and
        its index; the manifest's descriptor."""
        tars = [entries if isinstance(entries, bytes) else layer_tar(entries) for entries in layers]
        descriptors = [self.blob(gzip.compress(tar, mtime=0)) | {"mediaType": MEDIA + "layer.v1.tar+gzip"}
                       for tar in tars]
        settings = {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/usr/bin:/bin"]},
                    "rootfs": {"type": "layers", "diff_ids": [digest(tar) for tar in tars]}} | (config or {})
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": self.blob(canonical(settings)) | {"mediaType": MEDIA + "config.v1+json"},
                    "layers": descriptors}
        descriptor = self.blob(canonical(manifest)) | {"mediaType": MEDIA + "manifest.v1+json"}
        self.index([descriptor])
        return descriptor

    def index(self, manifests: list[dict[str, Any]]) -> None:
        (self.root / "index.json").write_bytes(canonical({"schemaVersion": 2, "manifests": manifests}))


def minimal_root() -> list[Entry]:
    """A layer a sandbox can start in: /bin/sh is the host's static busybox, added by the test."""
    return [Entry("bin/", tarfile.DIRTYPE, mode=0o755), Entry("etc/", tarfile.DIRTYPE, mode=0o755),
            Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")]


def busybox_image(busybox: bytes) -> list[list[Entry]]:
    """Two layers a sandbox can run: a root with the host's static busybox as /bin/sh, a file
    /gone and a directory /d (a, b); then a layer that whites out /gone, makes /d opaque and
    adds /d/c - what `ls /d; test -e /gone` must show as overlayfs merges them."""
    base = [Entry("bin/", tarfile.DIRTYPE, mode=0o755), Entry("bin/busybox", data=busybox, mode=0o755),
            Entry("bin/sh", tarfile.SYMTYPE, linkname="busybox"), Entry("bin/ls", tarfile.SYMTYPE, linkname="busybox"),
            Entry("bin/test", tarfile.SYMTYPE, linkname="busybox"), Entry("etc/", tarfile.DIRTYPE, mode=0o755),
            Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"), Entry("gone", data=b"x"),
            Entry("d/", tarfile.DIRTYPE, mode=0o755), Entry("d/a", data=b"a"), Entry("d/b", data=b"b")]
    upper = [Entry(".wh.gone"), Entry("d/", tarfile.DIRTYPE, mode=0o755), Entry("d/.wh..wh..opq"),
             Entry("d/c", data=b"c")]
    return [base, upper]
