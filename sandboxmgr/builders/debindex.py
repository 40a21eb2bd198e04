"""The Debian family's signed package index, read on the host: what every cached .deb must match.

apt trusts a file already in ``/var/cache/apt/archives`` whose size matches the
index, without hashing it; debootstrap follows symlinks in its ``--cache-dir``.
So nothing from the shared package cache reaches a build unless it was checked
here first, against an index whose signature the host verified itself:

1. ``dists/RELEASE/InRelease`` (else ``Release`` + ``Release.gpg``) is fetched
   and verified with ``gpgv`` against the profile's keyring;
2. each ``Packages`` index of the profile's components (for its arch and
   ``all``) is fetched, and its SHA256 checked against the verified Release;
3. every package's cache name (apt's ``NAME_VERSION_ARCH.deb``, ``:`` as
   ``%3a``) is mapped to its size and SHA256.

The result is kept in ``cache/DISTRO-RELEASE-ARCH/index/`` - a directory no
sandbox or build step ever sees - so a build with the mirror out of reach can
still verify against the last index that was verified.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sandboxmgr import commands
from sandboxmgr.builders import index as mirror_index

FORMAT = 1
# Compressed forms of a Packages index, the cheapest to fetch first.
_FORMS = ((".xz", lzma.decompress), (".gz", gzip.decompress), ("", bytes))


class UnverifiedIndex(Exception):
    """The mirror answered, but its index did not verify (bad signature, wrong hash)."""


@dataclass(frozen=True)
class PackageIndex:
    """Cache file name -> (size, sha256) of every package the signed index lists."""

    digest: str  # of the Packages files it was read from
    packages: dict[str, tuple[int, str]]

    def expected(self, name: str) -> tuple[int, str] | None:
        return self.packages.get(name)


def cache_name(package: str, version: str, arch: str) -> str:
    """The name apt (and debootstrap) give a downloaded package in the archives directory."""
    return f"{package}_{version.replace(':', '%3a')}_{arch}.deb"


def verify_release(data: bytes, keyring: Path, detached: bytes | None = None) -> str:
    """The text of a Release file whose signature ``gpgv`` verified against ``keyring``:
    an InRelease (``detached`` None) or a Release with its Release.gpg."""
    status_read, status_write = os.pipe()
    try:
        # The status lines, as apt reads them: gpgv's exit status alone takes an expired or
        # revoked key's signature. (A few lines: the pipe's buffer holds them all.)
        argv = [commands.require("gpgv"), "--quiet", f"--keyring={keyring}", f"--status-fd={status_write}"]
        if detached is None:
            # A cleartext-signed InRelease on stdin; --output gives only the signed text.
            result = commands.capture([*argv, "--output", "-"], data, pass_fds=(status_write,))
        else:
            with tempfile.TemporaryDirectory(prefix="sandboxmgr-release-") as scratch:
                signed, signature = Path(scratch) / "Release", Path(scratch) / "Release.gpg"
                signed.write_bytes(data)
                signature.write_bytes(detached)
                result = commands.capture([*argv, str(signature), str(signed)], pass_fds=(status_write,))
        os.close(status_write)
        status_write = -1
        with os.fdopen(status_read, "rb") as pipe:
            status_read = -1
            lines = pipe.read().decode(errors="replace").splitlines()
    finally:
        for fd in (status_read, status_write):
            if fd >= 0:
                os.close(fd)
    if result is None:
        raise UnverifiedIndex("gpgv could not be started, so the signature was not checked")
    words = [line.split()[1] for line in lines if line.startswith("[GNUPG:] ") and len(line.split()) > 1]
    # Good: a valid signature by a key of the keyring; other keys' signatures (NO_PUBKEY, an
    # expired one) are worth nothing, as apt has it, but a bad one fails it all.
    if result.returncode != 0 or "VALIDSIG" not in words or "GOODSIG" not in words or "BADSIG" in words:
        reason = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no valid signature"]
        raise UnverifiedIndex(f"the Release file's signature did not verify against {keyring}: {reason[0]}")
    return (result.stdout if detached is None else data).decode(errors="replace")


def release_hashes(release: str) -> dict[str, tuple[str, int]]:
    """path -> (sha256, size) from a Release file's SHA256 section."""
    found: dict[str, tuple[str, int]] = {}
    in_sha256 = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.rstrip() == "SHA256:"
            continue
        fields = line.split()
        if in_sha256 and len(fields) == 3 and fields[1].isdigit():
            found[fields[2]] = (fields[0].lower(), int(fields[1]))
    return found


def parse_packages(text: str) -> dict[str, tuple[int, str]]:
    """cache name -> (size, sha256) from a Packages index."""
    found: dict[str, tuple[int, str]] = {}
    fields: dict[str, str] = {}

    def flush() -> None:
        try:
            name = cache_name(fields["Package"], fields["Version"], fields["Architecture"])
            found[name] = (int(fields["Size"]), fields["SHA256"].lower())
        except (KeyError, ValueError):
            pass
        fields.clear()

    for line in text.splitlines():
        if not line:
            if fields:
                flush()
            continue
        if line[0] in " \t":
            continue  # a continuation line (Description, Conffiles): not needed
        key, sep, value = line.partition(":")
        if sep and key in ("Package", "Version", "Architecture", "Size", "SHA256"):
            fields[key] = value.strip()
    if fields:
        flush()
    return found


def fetch_index(mirror: str, release: str, components: tuple[str, ...], arch: str,
                keyring: Path, saved: PackageIndex | None = None) -> PackageIndex | None:
    """The verified index from the mirror; None when the mirror answers without it (a
    missing Release or Packages file). ``saved`` is returned as it is when the verified
    Release lists the same Packages files (only the Release file is fetched then).
    Raises index.Unreachable when the network does not reach the mirror,
    UnverifiedIndex when what it serves does not verify."""
    base = f"{mirror.rstrip('/')}/dists/{release}"
    inrelease = mirror_index.fetch(f"{base}/InRelease")
    if inrelease is not None:
        text = verify_release(inrelease, keyring)
    else:
        plain = mirror_index.fetch(f"{base}/Release")
        signature = mirror_index.fetch(f"{base}/Release.gpg")
        if plain is None or signature is None:
            return None
        text = verify_release(plain, keyring, signature)
    hashes = release_hashes(text)
    # Packages of arch "all" are in each arch's index too, unless the Release says otherwise.
    arches = (arch,) if "\nNo-Support-for-Architecture-all: Packages" in text else (arch, "all")
    # A mirror being updated (or a frozen copy of one) may serve a plain path newer than the
    # Release; by-hash paths never change, as apt knows.
    by_hash = "\nAcquire-By-Hash: yes" in text
    wanted: list[tuple[str, Callable[[bytes], bytes], str, int]] = []
    for component in components:
        for index_arch in arches:
            stem = f"{component}/binary-{index_arch}/Packages"
            form = next(((suffix, unpack) for suffix, unpack in _FORMS if stem + suffix in hashes), None)
            if form is None:
                if index_arch == arch:
                    return None  # the release has no such component or arch: the bootstrap will say so
                continue
            wanted.append((f"{stem}{form[0]}", form[1], *hashes[stem + form[0]]))
    digest = mirror_index.digest([sha256 for _path, _unpack, sha256, _size in wanted])
    if saved is not None and saved.digest == digest:
        return saved
    packages: dict[str, tuple[int, str]] = {}
    for path, unpack, sha256, size in wanted:
        by_hash_url = f"{base}/{path.rsplit('/', 1)[0]}/by-hash/SHA256/{sha256}"
        data = mirror_index.fetch(by_hash_url, limit=size) if by_hash else None
        if data is None:
            data = mirror_index.fetch(f"{base}/{path}", limit=size)
        if data is None:
            return None
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
            raise UnverifiedIndex(f"{base}/{path} does not match the signed Release file's SHA256")
        packages.update(parse_packages(unpack(data).decode(errors="replace")))
    return PackageIndex(digest, packages)


def _saved_path(directory: Path, mirror: str, components: tuple[str, ...], arch: str, keyring: str) -> Path:
    which = mirror_index.digest([mirror.rstrip("/"), *components, arch, keyring])[:24]
    return directory / f"{which}.json"


def save(directory: Path, mirror: str, components: tuple[str, ...], arch: str, keyring: str,
         index: PackageIndex) -> None:
    """Keep ``index``, verified against ``keyring`` (a digest of its bytes), for offline builds."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = _saved_path(directory, mirror, components, arch, keyring)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"format": FORMAT, "digest": index.digest, "packages": index.packages}))
    os.rename(tmp, target)


def load_saved(directory: Path, mirror: str, components: tuple[str, ...], arch: str,
               keyring: str) -> PackageIndex | None:
    """The index last verified against ``keyring`` for this mirror, components and arch (offline)."""
    try:
        data = json.loads(_saved_path(directory, mirror, components, arch, keyring).read_text())
        packages = {str(k): (int(v[0]), str(v[1])) for k, v in data["packages"].items()}
        return PackageIndex(str(data["digest"]), packages) if data.get("format") == FORMAT else None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def release_indexes(release: str, components: tuple[str, ...], arch: str) -> list[str]:
    """The SHA256 lines of a Release/InRelease file for the Packages indexes of these
    components and architecture (and arch 'all'), sorted: what a bootstrap resolves against."""
    wanted = tuple(f"{component}/binary-{a}/Packages" for component in components for a in (arch, "all"))
    return sorted(f"{sha256} {size} {path}" for path, (sha256, size) in release_hashes(release).items()
                  if path.startswith(wanted))
