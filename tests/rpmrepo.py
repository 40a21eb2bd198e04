"""A real, tiny, local RPM repository for testing the `dnf --installroot` image builder.

`build_repo` writes five .spec files for a made-up distro ("Tiny Distro"), builds
them with the host's rpmbuild, signs copies of the packages with two throwaway gpg
keys and indexes three repositories with createrepo_c:

- `signed`:       every package signed with `key`
- `unsigned`:     the same packages, not signed at all
- `other_signed`: the same packages signed with `other_key`, which `signed` does not trust

The packages make a bootable-enough merged-/usr root: a filesystem skeleton, a
static busybox providing /bin/sh, an os-release and a script with a dependency.

Debian's rpm keeps its database in ~/.rpmdb, so every rpm command here gets an
explicit database path inside the work directory and a HOME of its own: nothing is
read from or written to the invoking user's home.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

VERSION = "1"
RELEASE = "1"
BUSYBOX = Path("/bin/busybox")
GPG = "gpg"

# Applets linked into /usr/bin; the first block is what the tests rely on.
APPLETS = (
    "sh", "ls", "cat", "echo", "id", "hostname", "uname", "mkdir", "rm", "touch", "test", "[", "grep", "sed",
    "head", "tr", "wc", "sleep", "true", "false", "env", "ps", "readlink", "ln", "cp", "mv", "chmod", "printf",
    "pwd", "kill",
    "ash", "awk", "basename", "chown", "cut", "date", "dirname", "expr", "find", "mktemp", "rmdir", "seq", "sort",
    "stat", "tail", "tee", "timeout", "uniq", "which", "whoami", "xargs",
)

PACKAGES = ("filesystem", "busybox", "release", "greeting", "hello")

# Debian's rpmbuild knows nothing of Fedora's brp scripts and debuginfo machinery:
# switch all of it off, and keep the payload cheap to compress.
COMMON = f"""\
%global __os_install_post %{{nil}}
%global debug_package %{{nil}}
%global _enable_debug_packages 0
%define _build_id_links none
%global _binary_payload w6.gzdio
%global _source_payload w6.gzdio

Version: {VERSION}
Release: {RELEASE}
License: MIT
URL: https://tinydistro.invalid/
"""

FILESYSTEM_DIRS = (
    "/usr", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64", "/usr/share", "/etc", "/var", "/home", "/proc",
    "/sys", "/dev", "/run", "/srv", "/opt", "/mnt",
)

PASSWD = "root:x:0:0:root:/root:/bin/sh\\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\\n"
GROUP = "root:x:0:\\nnogroup:x:65534:\\n"

OS_RELEASE = (
    'NAME="Tiny Distro"\\nID=tinydistro\\nVERSION_ID=1\\nPRETTY_NAME="Tiny Distro 1 (Test)"\\n'
    'HOME_URL="https://tinydistro.invalid/"\\n'
)

GREETING = "hello from a dependency"


def _filesystem_spec() -> str:
    dirs = " ".join(f"%{{buildroot}}{d}" for d in FILESYSTEM_DIRS)
    return COMMON + f"""\
Name: tinydistro-filesystem
Summary: The directory skeleton of a Tiny Distro root
BuildArch: noarch

%description
Merged-/usr directory layout, /etc/passwd and /etc/group.

%install
mkdir -p {dirs} %{{buildroot}}/root %{{buildroot}}/tmp %{{buildroot}}/var/tmp
ln -s usr/bin %{{buildroot}}/bin
ln -s usr/sbin %{{buildroot}}/sbin
ln -s usr/lib %{{buildroot}}/lib
ln -s usr/lib64 %{{buildroot}}/lib64
printf '{PASSWD}' > %{{buildroot}}/etc/passwd
printf '{GROUP}' > %{{buildroot}}/etc/group

%files
%defattr(-,root,root,-)
""" + "".join(f"%dir {d}\n" for d in FILESYSTEM_DIRS) + """\
%dir %attr(0700,root,root) /root
%dir %attr(1777,root,root) /tmp
%dir %attr(1777,root,root) /var/tmp
/bin
/sbin
/lib
/lib64
%config(noreplace) %attr(0644,root,root) /etc/passwd
%config(noreplace) %attr(0644,root,root) /etc/group
"""


def _busybox_spec() -> str:
    links = "\n".join(f"ln -s busybox '%{{buildroot}}/usr/bin/{applet}'" for applet in APPLETS)
    return COMMON + f"""\
Name: tinydistro-busybox
Summary: A static busybox and its applet links
Requires: tinydistro-filesystem
Provides: /bin/sh
AutoReqProv: no

%description
The host's statically linked busybox, with links for the common applets.

%install
install -D -m 0755 %{{busybox_src}} %{{buildroot}}/usr/bin/busybox
{links}

%files
%defattr(-,root,root,-)
/usr/bin/*
"""


def _release_spec() -> str:
    return COMMON + f"""\
Name: tinydistro-release
Summary: Tiny Distro release files
BuildArch: noarch
Requires: tinydistro-filesystem

%description
/etc/os-release of Tiny Distro.

%install
mkdir -p %{{buildroot}}/etc %{{buildroot}}/usr/lib
printf '{OS_RELEASE}' > %{{buildroot}}/usr/lib/os-release
printf '{OS_RELEASE}' > %{{buildroot}}/etc/os-release

%files
%defattr(-,root,root,-)
/etc/os-release
/usr/lib/os-release
"""


def _greeting_spec() -> str:
    return COMMON + f"""\
Name: tinydistro-greeting
Summary: A greeting, to be found through a dependency
BuildArch: noarch
Requires: tinydistro-filesystem

%description
A data file that tinydistro-hello prints.

%install
mkdir -p %{{buildroot}}/usr/share/tinydistro
echo '{GREETING}' > %{{buildroot}}/usr/share/tinydistro/greeting

%files
%defattr(-,root,root,-)
%dir /usr/share/tinydistro
/usr/share/tinydistro/greeting
"""


def _hello_spec() -> str:
    return COMMON + """\
Name: tinydistro-hello
Summary: Prints the greeting
BuildArch: noarch
Requires: tinydistro-filesystem
Requires: tinydistro-greeting
Requires: tinydistro-busybox

%description
A shell script whose data lives in another package.

%install
mkdir -p %{buildroot}/usr/bin
printf '#!/bin/sh\\nexec cat /usr/share/tinydistro/greeting\\n' > %{buildroot}/usr/bin/tiny-hello
chmod 0755 %{buildroot}/usr/bin/tiny-hello

%files
%defattr(-,root,root,-)
/usr/bin/tiny-hello
"""


SPECS = {
    "filesystem": _filesystem_spec,
    "busybox": _busybox_spec,
    "release": _release_spec,
    "greeting": _greeting_spec,
    "hello": _hello_spec,
}


class RpmRepoError(RuntimeError):
    """Building the test repository failed."""


@dataclass(frozen=True)
class RpmRepo:
    signed: Path
    unsigned: Path
    other_signed: Path
    key: Path
    other_key: Path
    arch: str
    fingerprint: str = ""  # of ``key``, whose secret half stays in the work directory's gnupg-key

    def baseurl(self, repo: Path) -> str:
        return "file://" + str(repo.resolve())


def _run(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> str:
    proc = subprocess.run(list(argv), env=dict(env), cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300, check=False)
    if proc.returncode != 0:
        raise RpmRepoError(f"{' '.join(argv)} failed with exit {proc.returncode}\n"
                           f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc.stdout


def _rpm_env(workdir: Path) -> dict[str, str]:
    """A clean environment: C locale, and a HOME without ~/.rpmmacros or ~/.rpmdb."""
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(home),
            "LC_ALL": "C", "TZ": "UTC"}


def _dbpath(path: Path) -> list[str]:
    return ["--define", f"_dbpath {path}"]


@dataclass(frozen=True)
class _Key:
    home: Path
    fingerprint: str
    public: Path


def _make_key(workdir: Path, name: str, uid_name: str, env: Mapping[str, str]) -> _Key:
    home = workdir / f"gnupg-{name}"
    home.mkdir(mode=0o700)
    gpg_env = {**env, "GNUPGHOME": str(home)}
    email = f"{name}@tinydistro.invalid"
    params = home / "keyparams"
    params.write_text(
        "%no-protection\n"
        "Key-Type: RSA\nKey-Length: 2048\nKey-Usage: sign\n"
        f"Name-Real: {uid_name}\nName-Email: {email}\n"
        "Expire-Date: 0\n%commit\n")
    try:
        _run([GPG, "--batch", "--quiet", "--gen-key", str(params)], gpg_env)
        listing = _run([GPG, "--batch", "--with-colons", "--list-secret-keys", email], gpg_env)
        fingerprints = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")]
        if not fingerprints:
            raise RpmRepoError(f"gpg made no key for {email}:\n{listing}")
        public = workdir / "keys" / f"RPM-GPG-KEY-tinydistro-{name}"
        public.parent.mkdir(exist_ok=True)
        armored = _run([GPG, "--batch", "--armor", "--export", fingerprints[0]], gpg_env)
        if "BEGIN PGP PUBLIC KEY BLOCK" not in armored:
            raise RpmRepoError(f"gpg exported no public key for {email}")
        public.write_text(armored)
    finally:
        _stop_agent(gpg_env)
    return _Key(home, fingerprints[0], public)


def _stop_agent(gpg_env: Mapping[str, str]) -> None:
    """gpg leaves an agent running for its home; the test helper must not leave processes behind."""
    if shutil.which("gpgconf") is not None:
        subprocess.run(["gpgconf", "--kill", "all"], env=dict(gpg_env), capture_output=True, check=False,
                       stdin=subprocess.DEVNULL, timeout=60)


def _sign(rpms: Sequence[Path], key: _Key, env: Mapping[str, str]) -> None:
    gpg_env = {**env, "GNUPGHOME": str(key.home)}
    gpg = shutil.which(GPG) or "/usr/bin/gpg"
    try:
        # Debian's rpm sets %__gpg to /usr/bin/gpg2, which Debian 12 does not ship.
        _run(["rpmsign", "--addsign", "--define", f"_gpg_name {key.fingerprint}",
              "--define", f"_gpg_path {key.home}", "--define", f"__gpg {gpg}",
              *[str(rpm) for rpm in rpms]], gpg_env)
    finally:
        _stop_agent(gpg_env)


def _check_signatures(workdir: Path, name: str, rpms: Sequence[Path], trusted: Path | None,
                      env: Mapping[str, str]) -> dict[Path, str]:
    """`rpmkeys -K` for each package against a fresh keyring trusting only `trusted`."""
    dbpath = workdir / "rpmdb-check" / name
    dbpath.mkdir(parents=True)
    if trusted is not None:
        _run(["rpmkeys", *_dbpath(dbpath), "--import", str(trusted)], env)
    proc = subprocess.run(["rpmkeys", *_dbpath(dbpath), "--checksig", *[str(rpm) for rpm in rpms]],
                          env=dict(env), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=120, check=False)
    results: dict[Path, str] = {}
    for line in proc.stdout.splitlines():
        path, sep, verdict = line.partition(": ")
        if sep:
            results[Path(path)] = verdict.strip()
    if set(results) != set(rpms):
        raise RpmRepoError(f"rpmkeys --checksig gave no verdict for some packages:\n{proc.stdout}{proc.stderr}")
    return results


def verify(workdir: Path, name: str, rpms: Sequence[Path], trusted: Path | None) -> dict[Path, bool]:
    """Whether each package's signature verifies against `trusted` alone (or no key at all)."""
    verdicts = _check_signatures(workdir, name, rpms, trusted, _rpm_env(workdir))
    return {rpm: verdict == "digests signatures OK" for rpm, verdict in verdicts.items()}


def rpms_in(repo: Path) -> list[Path]:
    return sorted(repo.glob("*.rpm"))


def build_repo(workdir: Path) -> RpmRepo:
    """Build, sign and index the three repositories under `workdir` (which must exist)."""
    workdir = workdir.resolve()
    env = _rpm_env(workdir)
    if not BUSYBOX.is_file():
        raise RpmRepoError(f"{BUSYBOX} is missing (install busybox-static)")
    absent = set(APPLETS) - set(_run([str(BUSYBOX), "--list"], env).split())
    if absent:
        raise RpmRepoError(f"{BUSYBOX} lacks the applets {sorted(absent)}")

    # 1. Build all five packages with one rpmbuild.
    topdir = workdir / "rpmbuild"
    specdir = topdir / "SPECS"
    specdir.mkdir(parents=True)
    specs = []
    for name in PACKAGES:
        spec = specdir / f"tinydistro-{name}.spec"
        spec.write_text(SPECS[name]())
        specs.append(spec)
    _run(["rpmbuild", "-bb", "--nodeps", "--quiet", "--define", f"_topdir {topdir}",
          *_dbpath(workdir / "rpmdb-build"), "--define", f"busybox_src {BUSYBOX.resolve()}",
          *[str(spec) for spec in specs]], env)
    built = sorted((topdir / "RPMS").glob("*/*.rpm"))
    names = sorted(rpm.name.rsplit("-", 2)[0] for rpm in built)
    if names != sorted(f"tinydistro-{name}" for name in PACKAGES):
        raise RpmRepoError(f"rpmbuild made {[rpm.name for rpm in built]}")
    arches = {rpm.parent.name for rpm in built} - {"noarch"}
    if len(arches) != 1:
        raise RpmRepoError(f"expected exactly one arch-specific package directory, got {sorted(arches)}")
    arch = arches.pop()

    # 2. Three repositories holding copies of the same packages.
    repos = workdir / "repos"
    signed, unsigned, other_signed = repos / "signed", repos / "unsigned", repos / "other-signed"
    for repo in (signed, unsigned, other_signed):
        repo.mkdir(parents=True)
        for rpm in built:
            shutil.copy2(rpm, repo / rpm.name)

    # 3. Two throwaway keys; sign two of the copies.
    key = _make_key(workdir, "key", "Tiny Distro Test Signing Key", env)
    other = _make_key(workdir, "other", "Tiny Distro Impostor Key", env)
    _sign(rpms_in(signed), key, env)
    _sign(rpms_in(other_signed), other, env)

    # 4. The signatures are what they should be, or the tests built on them mean nothing.
    checks = {
        "signed": (rpms_in(signed), key.public, True),
        "unsigned": (rpms_in(unsigned), key.public, False),
        "other-signed": (rpms_in(other_signed), key.public, False),
        "other-signed-own-key": (rpms_in(other_signed), other.public, True),
    }
    for name, (rpms, trusted, expected) in checks.items():
        verdicts = _check_signatures(workdir, name, rpms, trusted, env)
        wrong = {str(rpm): verdict for rpm, verdict in verdicts.items()
                 if (verdict == "digests signatures OK") != expected}
        if wrong:
            raise RpmRepoError(f"signature check {name!r} expected {'OK' if expected else 'not OK'}: {wrong}")

    # 5. Index them.
    for repo in (signed, unsigned, other_signed):
        _run(["createrepo_c", "--quiet", "--no-database", str(repo)], env)
        if not (repo / "repodata" / "repomd.xml").is_file():
            raise RpmRepoError(f"createrepo_c wrote no repodata/repomd.xml in {repo}")

    return RpmRepo(signed=signed, unsigned=unsigned, other_signed=other_signed,
                   key=key.public, other_key=other.public, arch=arch, fingerprint=key.fingerprint)


def tiny_profile(repo: RpmRepo, repo_dir: Path | None = None, key: Path | None = None,
                 packages: str = "[tinydistro-hello]", gpgcheck: bool = True) -> str:
    """A profile of the made-up Tiny Distro over one of ``repo``'s repositories: a dnf build in a second."""
    return (
        "description: Tiny Distro, a made-up RPM distribution\n"
        "distro: tinydistro\n"
        "release: '1'\n"
        "bootstrap:\n"
        "  method: dnf\n"
        "  include: [tinydistro-release, tinydistro-busybox]\n"
        "repositories:\n"
        "  - name: tiny\n"
        f"    baseurl: {repo.baseurl(repo_dir or repo.signed)}\n"
        f"    gpgkey: file://{key or repo.key}\n"
        f"    gpgcheck: {'true' if gpgcheck else 'false'}\n"
        f"packages: {packages}\n"
    )


# --- a build root: the host's rpmbuild, packaged for Tiny Distro ---------------------------------
#
# Tiny Distro has no compiler and no rpm-build of its own. `tinydistro-rpm-build` (which
# provides rpm-build) carries the host's own rpm, rpmbuild and rpmspec with every shared
# library they and /usr/lib/rpm's helpers load, rpm's configuration, libmagic's database and
# the busybox applets rpmbuild's scripts call: real rpmbuild, running inside the sandbox on
# the image's own rpmdb. What it cannot do is compile C: the test specs build shell scripts.

RPMBUILD_PROGRAMS = (Path("/usr/bin/rpm"), Path("/usr/bin/rpmbuild"), Path("/usr/bin/rpmspec"))
RPMBUILD_TREES = (Path("/usr/lib/rpm"), Path("/usr/lib/file/magic.mgc"))
BUILD_APPLETS = ("tar", "gzip", "gunzip", "zcat", "cpio", "diff", "xz", "unxz", "bzip2", "patch", "wget", "md5sum",
                 "sha256sum", "cmp", "od", "sha1sum", "realpath", "nproc", "getopt")
TINY_RPM_MACROS = """\
%_dbpath /var/lib/rpm
%_tmppath /var/tmp
%_buildshell /bin/sh
%__os_install_post %{nil}
%debug_package %{nil}
%_binary_payload w6.gzdio
%_source_payload w6.gzdio
"""


def _in_image(path: Path) -> Path:
    """Where a host file goes in a merged-/usr root (/lib -> /usr/lib); libmagic's database
    where Debian's libmagic looks for it."""
    if path.name == "magic.mgc":
        return Path("/usr/share/misc/magic.mgc")
    parts = path.parts
    return Path("/usr", *parts[1:]) if parts[1] in ("lib", "lib64", "bin", "sbin") else path


def _elf_closure(files: Sequence[Path], env: Mapping[str, str]) -> set[Path]:
    """The shared libraries and the loader that ``files`` (the ELF ones among them) need."""
    found: set[Path] = set()
    for path in files:
        with path.open("rb") as handle:
            if handle.read(4) != b"\x7fELF":
                continue
        proc = subprocess.run(["ldd", str(path)], env=dict(env), capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            words = line.split()
            library = words[2] if len(words) >= 3 and words[1] == "=>" else words[0] if words else ""
            if library.startswith("/"):
                found.add(Path(library))
    return found


def _stage_rpmbuild(root: Path, env: Mapping[str, str]) -> list[str]:
    """The stand-in's files under ``root`` (absent, made here); their paths in the image."""
    files = [*RPMBUILD_PROGRAMS]
    for tree in RPMBUILD_TREES:
        files += [tree] if tree.is_file() else sorted(p for p in tree.rglob("*") if p.is_file() or p.is_symlink())
    absent = [str(path) for path in files if not path.exists()]
    if absent:
        raise RpmRepoError(f"the host lacks what the rpm-build stand-in carries: {absent}")
    listed: list[str] = []
    for path in [*files, *sorted(_elf_closure([f for f in files if f.is_file()], env))]:
        target = root / str(_in_image(path)).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() and path.resolve().is_relative_to(RPMBUILD_TREES[0]):
            target.symlink_to(os.readlink(path))
        else:
            shutil.copy2(path.resolve(), target)
        listed.append(str(_in_image(path)))
    for applet in BUILD_APPLETS:
        (root / "usr" / "bin" / applet).symlink_to("busybox")
        listed.append(f"/usr/bin/{applet}")
    (root / "etc" / "rpm").mkdir(parents=True)
    (root / "etc" / "rpm" / "macros.tinydistro").write_text(TINY_RPM_MACROS)
    listed.append("/etc/rpm/macros.tinydistro")
    return sorted(set(listed))


def _rpmbuild_spec(root: Path, listed: Sequence[str]) -> str:
    return COMMON + f"""\
Name: tinydistro-rpm-build
Summary: The host's rpmbuild, for building packages in Tiny Distro
Provides: rpm-build
Requires: tinydistro-busybox
AutoReqProv: no

%description
rpm, rpmbuild and rpmspec with their libraries and configuration.

%install
mkdir -p %{{buildroot}}
cp -a {root}/. %{{buildroot}}/

%files
%defattr(-,root,root,-)
""" + "".join(f'"{path}"\n' for path in listed)


def add_rpm_build(repo: RpmRepo, workdir: Path) -> Path:
    """A copy of ``repo``'s signed repository with the rpm-build stand-in added, signed with
    the same key and indexed: a Tiny Distro with a build root."""
    return add_standin(repo, workdir, "tinydistro-rpm-build", _stage_rpmbuild, _rpmbuild_spec)


def add_standin(repo: RpmRepo, workdir: Path, name: str, stage: Callable[[Path, Mapping[str, str]], list[str]],
                spec_text: Callable[[Path, Sequence[str]], str], base: Path | None = None) -> Path:
    """A copy of ``repo``'s signed repository (or of the repository ``base``) with the package
    ``name`` added - the files ``stage`` copies from the host into a root, packaged by the spec
    ``spec_text`` writes - signed with ``repo``'s key and indexed."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = _rpm_env(workdir)
    root = workdir / "standin-root"
    listed = stage(root, env)
    topdir = workdir / "rpmbuild"
    (topdir / "SPECS").mkdir(parents=True)
    spec = topdir / "SPECS" / f"{name}.spec"
    spec.write_text(spec_text(root, listed))
    _run(["rpmbuild", "-bb", "--nodeps", "--quiet", "--define", f"_topdir {topdir}",
          *_dbpath(workdir / "rpmdb-build"), str(spec)], env)
    built = sorted((topdir / "RPMS").glob("*/*.rpm"))
    shutil.rmtree(root)  # the package holds it now
    target = workdir / "repo"
    shutil.copytree(base or repo.signed, target, ignore=shutil.ignore_patterns("repodata"))
    for rpm in built:
        shutil.move(rpm, target / rpm.name)  # a stand-in may weigh a hundred megabytes: moved, not copied
    key = _Key(repo.key.parent.parent / "gnupg-key", repo.fingerprint, repo.key)
    _sign([target / rpm.name for rpm in built], key, env)
    _run(["createrepo_c", "--quiet", "--no-database", str(target)], env)
    return target


# --- two versions of one package: for lock files ------------------------------------------------

GREETING_2 = "hello from the second version"


def _no_files(root: Path, env: Mapping[str, str]) -> list[str]:
    root.mkdir(parents=True)
    return []


def _greeting_2_spec(root: Path, listed: Sequence[str]) -> str:
    """tinydistro-greeting 1:2-1: newer than 1-1 (and with an epoch), another greeting."""
    spec = _greeting_spec().replace(f"Version: {VERSION}\n", "Epoch: 1\nVersion: 2\n").replace(GREETING, GREETING_2)
    assert "Version: 2" in spec and GREETING_2 in spec
    return spec


def add_greeting_2(repo: RpmRepo, workdir: Path) -> Path:
    """A copy of ``repo``'s signed repository that holds tinydistro-greeting at 1-1 and at
    1:2-1, signed with the same key and indexed: a lock can pin the older one."""
    return add_standin(repo, workdir, "tinydistro-greeting", _no_files, _greeting_2_spec)
