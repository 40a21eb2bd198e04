"""Tiny Distro for aarch64: the tests' signed RPM repository (tests/rpmrepo.py) for a foreign
architecture, so the RPM family's ``arch: aarch64`` is tested with no Fedora mirror.

Tiny's packages are noarch but one, tinydistro-busybox, whose x86_64 build carries the host's
static busybox. Its aarch64 build carries Debian's arm64 busybox-static instead: the .deb is
fetched from the Debian archive by its signed index (InRelease verified with gpgv against the
host's Debian keyring, the Packages index and the .deb checked against the SHA256 they are
signed with), its binary taken out with dpkg-deb, and packaged with ``rpmbuild --target
aarch64``. The aarch64 package has a %post scriptlet that records ``uname -m`` as the root's
shell sees it: run at install, in the build, through qemu-user (the binary is aarch64 code).
"""

from __future__ import annotations

import hashlib
import lzma
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from sandboxmgr.builders import debindex
from sandboxmgr.builders import index as mirror_index
from tests.conftest import CLI, DEBIAN_KEYRING, DEBIAN_MIRROR, missing, need_mirror, need_root
from tests.rpmrepo import (
    COMMON,
    RpmRepo,
    RpmRepoError,
    _busybox_spec,
    _dbpath,
    _Key,
    _rpm_env,
    _run,
    _sign,
    tiny_profile,
)

DEBIAN_RELEASE = "bookworm"
PACKAGES_INDEX = "main/binary-arm64/Packages.xz"
# Where the aarch64 busybox's %post writes what `uname -m` said while the package was installed.
SCRIPTLET_RECORD = "/etc/tinydistro-installed-on"
# Where the profiles' setup step writes what `uname -m` said while the image was built.
SETUP_RECORD = "/etc/setup-ran-on"
EM_AARCH64 = 183  # the ELF header's e_machine of an aarch64 program


def elf_machine(path: Path) -> int:
    """The e_machine field of an ELF file (little-endian, at byte 18), read on the host."""
    with path.open("rb") as handle:
        header = handle.read(20)
    if header[:4] != b"\x7fELF" or len(header) < 20:
        raise RpmRepoError(f"{path} is not an ELF file")
    return int.from_bytes(header[18:20], "little")


def stanza(text: str, package: str) -> dict[str, str]:
    """``package``'s stanza in a Debian Packages index, as fields."""
    start = text.find(f"Package: {package}\n")
    if start < 0 or (start and text[start - 1] != "\n"):
        raise RpmRepoError(f"the Packages index lists no {package}")
    lines = text[start:].split("\n\n", 1)[0].splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line and line[0] != " ")


@cache
def _busybox_deb(mirror: str, keyring: Path) -> bytes:
    """The busybox-static .deb for arm64, checked against the archive's signature (once a session)."""
    base = f"{mirror.rstrip('/')}/dists/{DEBIAN_RELEASE}"
    inrelease = mirror_index.fetch(f"{base}/InRelease")
    if inrelease is None:
        raise RpmRepoError(f"{base}/InRelease: not served")
    release = debindex.verify_release(inrelease, keyring)
    sha256, size = debindex.release_hashes(release)[PACKAGES_INDEX]
    # A mirror being updated may serve a plain path newer than its Release; by-hash paths never change.
    by_hash = f"{base}/{PACKAGES_INDEX.rsplit('/', 1)[0]}/by-hash/SHA256/{sha256}"
    data = mirror_index.fetch(by_hash, limit=size) if "\nAcquire-By-Hash: yes" in release else None
    data = data or mirror_index.fetch(f"{base}/{PACKAGES_INDEX}", limit=size)
    if data is None or hashlib.sha256(data).hexdigest() != sha256:
        raise RpmRepoError(f"{base}/{PACKAGES_INDEX} is missing or does not match the signed InRelease")
    fields = stanza(lzma.decompress(data).decode(errors="replace"), "busybox-static")
    deb = mirror_index.fetch(f"{mirror.rstrip('/')}/{fields['Filename']}", limit=int(fields["Size"]))
    if deb is None or hashlib.sha256(deb).hexdigest() != fields["SHA256"].lower():
        raise RpmRepoError(f"{fields['Filename']} is missing or does not match its signed index")
    return deb


def fetch_arm64_busybox(mirror: str, keyring: Path, target: Path) -> Path:
    """Debian's arm64 busybox-static binary at ``target``, every byte checked against the
    archive's signature (see the module's docstring)."""
    deb = _busybox_deb(mirror, keyring)
    with tempfile.TemporaryDirectory(prefix="busybox-arm64-") as scratch:
        (Path(scratch) / "b.deb").write_bytes(deb)
        subprocess.run(["dpkg-deb", "-x", f"{scratch}/b.deb", f"{scratch}/x"], check=True, timeout=120,
                       capture_output=True, stdin=subprocess.DEVNULL)
        shutil.copy2(Path(scratch) / "x" / "bin" / "busybox", target)
    if elf_machine(target) != EM_AARCH64:
        raise RpmRepoError("busybox-static's busybox for arm64 is not aarch64 code")
    return target


def _aarch64_busybox_spec() -> str:
    """tinydistro-busybox's spec, with a %post the aarch64 shell runs at install."""
    spec = _busybox_spec()
    assert spec.startswith(COMMON)
    return spec + f"\n%post\nuname -m > {SCRIPTLET_RECORD}\n"


def add_aarch64(repo: RpmRepo, busybox: Path, workdir: Path) -> Path:
    """A repository of Tiny Distro for aarch64: ``repo``'s noarch packages and an aarch64
    tinydistro-busybox of ``busybox``, signed with ``repo``'s key and indexed."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = _rpm_env(workdir)
    topdir = workdir / "rpmbuild"
    (topdir / "SPECS").mkdir(parents=True)
    spec = topdir / "SPECS" / "tinydistro-busybox.spec"
    spec.write_text(_aarch64_busybox_spec())
    _run(["rpmbuild", "-bb", "--nodeps", "--quiet", "--target", "aarch64", "--define", f"_topdir {topdir}",
          *_dbpath(workdir / "rpmdb-build"), "--define", f"busybox_src {busybox}", str(spec)], env)
    built = sorted((topdir / "RPMS").glob("*/*.rpm"))
    if [rpm.parent.name for rpm in built] != ["aarch64"]:
        raise RpmRepoError(f"rpmbuild --target aarch64 made {[str(rpm) for rpm in built]}")
    target = workdir / "repo"
    target.mkdir()
    for rpm in [*sorted(repo.signed.glob("*.noarch.rpm")), *built]:
        shutil.copy2(rpm, target / rpm.name)
    key = _Key(repo.key.parent.parent / "gnupg-key", repo.fingerprint, repo.key)
    _sign([target / rpm.name for rpm in built], key, env)
    _run(["createrepo_c", "--quiet", "--no-database", str(target)], env)
    return target


def need_aarch64_handler() -> None:
    from sandboxmgr import binfmt

    found = binfmt.problem("aarch64")
    if found is not None:
        missing(f"this host runs no aarch64 programs: {found[0]} (fix: {found[1]})")


def tiny_aarch64(rpm_repo: RpmRepo, base: Path) -> CLI:
    """A store under ``base`` with Tiny Distro for aarch64 built as the profile ``tiny-arm64``
    (spelled Debian's way; ``tiny-aarch64``, RPM's, is there too, not built), each with a setup
    step that records ``uname -m``. Skips without root, the Debian archive or an aarch64 handler."""
    need_root()
    need_aarch64_handler()
    need_mirror(DEBIAN_MIRROR, "bookworm")
    busybox = fetch_arm64_busybox(DEBIAN_MIRROR, DEBIAN_KEYRING, base / "busybox")
    repo = add_aarch64(rpm_repo, busybox, base / "repo")
    (base / "configs").mkdir()
    text = tiny_profile(rpm_repo, repo_dir=repo) + f"setup: ['uname -m > {SETUP_RECORD}']\n"
    (base / "configs" / "tiny-arm64.yaml").write_text(text + "arch: arm64\n")
    (base / "configs" / "tiny-aarch64.yaml").write_text(text + "arch: aarch64\n")
    cli = CLI(base / "store", base / "configs")
    cli.ok("build", "tiny-arm64")
    return cli
