"""A real, tiny, signed apt repository, served on 127.0.0.1, for the lock tests.

`build_repo` makes ``sbm-hello`` at versions 1.0 and 2.0 (Architecture: all, one
file each) with dpkg-deb, writes a flat repository's ``Packages`` and ``Release``
(what apt-ftparchive would write, for the fields apt reads), and clear-signs the
Release into ``InRelease`` with a throwaway gpg key. `serve` serves it over HTTP
from a thread. A profile reaches it through an mmdebstrap setup hook that writes a
deb822 source with the key embedded (`source_hook`): the bootstrap's apt and every
apt inside the image verify the signature like any archive's.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "sbm-hello"
VERSIONS = ("1.0", "2.0")


@dataclass
class AptRepo:
    root: Path
    key: str  # the ASCII-armored public key
    url: str = ""

    def source_hook(self) -> str:
        """An mmdebstrap --setup-hook that adds this repository, signed-by its key, to the new root."""
        key = "\n".join(" " + (line or ".") for line in self.key.strip().splitlines())
        source = f"Types: deb\nURIs: {self.url}\nSuites: ./\nSigned-By:\n{key}\n"
        encoded = base64.b64encode(source.encode()).decode()
        return f'--setup-hook=echo {encoded} | base64 -d > "$1"/etc/apt/sources.list.d/sbm-test.sources'


def _deb(work: Path, version: str) -> Path:
    tree = work / f"tree-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/share/sbm-hello").mkdir(parents=True)
    (tree / "usr/share/sbm-hello/version").write_text(f"{version}\n")
    (tree / "DEBIAN/control").write_text(
        f"Package: {PACKAGE}\nVersion: {version}\nArchitecture: all\nMaintainer: sandboxmgr tests <t@invalid>\n"
        "Description: a package the lock tests install at two versions\n")
    out = work / "repo" / f"{PACKAGE}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(tree), str(out)], check=True,
                   capture_output=True)
    return out


def _stanza(deb: Path) -> str:
    control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True).stdout
    data = deb.read_bytes()
    return (control.rstrip("\n") + f"\nFilename: ./{deb.name}\nSize: {len(data)}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n")


def build_repo(work: Path) -> AptRepo:
    repo = work / "repo"
    repo.mkdir(parents=True)
    packages = "\n".join(_stanza(_deb(work, version)) for version in VERSIONS)
    (repo / "Packages").write_text(packages)
    data = packages.encode()
    release = ("Origin: sandboxmgr-tests\nLabel: sandboxmgr-tests\nDate: Sat, 10 Feb 2024 09:50:14 UTC\n"
               f"SHA256:\n {hashlib.sha256(data).hexdigest()} {len(data)} Packages\n")
    (repo / "Release").write_text(release)
    home = work / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "sbm-tests@invalid", "ed25519", "sign", "never"],
                   check=True, capture_output=True)
    subprocess.run([*gpg, "--clearsign", "-o", str(repo / "InRelease"), str(repo / "Release")],
                   check=True, capture_output=True)
    key = subprocess.run([*gpg, "--armor", "--export"], check=True, capture_output=True, text=True).stdout
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    return AptRepo(repo, key)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve(repo: AptRepo) -> Iterator[AptRepo]:
    handler = functools.partial(_Quiet, directory=str(repo.root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    repo.url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield repo
    finally:
        server.shutdown()
        server.server_close()
