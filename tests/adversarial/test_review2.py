"""Attack 21: a second attacker's review of the package cache, the tool root, the system call
filter and project trust (after the fixes of the first review, test_cache_attacks.py).

Each test fails on a01582b and names the hole it proves:

- an untrusted project file turns the system call filter off (``seccomp: unconfined``, or a
  Docker-format profile of its own): its ``command`` then makes user namespaces and reads
  root's user keyring ``@u``, which every root process of the host shares;
- an untrusted project file names a host file by path (``extends:``, ``profiles:``,
  ``seccomp:``): the host reads it as root and echoes its content in the error;
- the trust in a project's keyring outlives a change of the keyring file (only the project
  file's bytes are recorded);
- the tool root: a bootstrap hook or maintainer script reads the caller's session keyring and
  root's user keyring, and makes user namespaces (no filter, no keyring of its own);
- ``DebCache.keep()`` opens, as root on the host, whatever a build step put under a package's
  name in its cache view: a FIFO, or a device node (a build step has CAP_MKNOD, and the
  store's file system is not nodev);
- ``DebCache.stage()`` deletes every ``.incoming-*`` file, also the one another build's
  ``keep()`` is copying right now: that build fails;
- the saved signed index is per mirror URL, not per keyring: offline, another keyring's index
  vouches for a keyring's cache;
- check_readable() compares a real path with the store's unresolved one: through a symlinked
  store, a file:// mirror may show the whole store to the bootstrap.

And the host's own writes into what a bootstrap made, all following symlinks that a hook or a
maintainer script (root in the tool root, which shows the build's directory read-write; a
double chroot gets it out of its chroot: CAP_SYS_CHROOT is kept) left behind:

- the build-only files (``usr/sbin/policy-rc.d``, ``etc/dpkg/dpkg.cfg.d/sandboxmgr-unsafe-io``)
  are written and chmodded 0755 through a symlink at their own name: any host file;
- a later step's cache view takes its upper and work directories from the build's directory
  (``mkdir(exist_ok=True)``): symlinks there make a host directory (``/etc/cron.d``) the upper
  of an overlay the step writes;
- the new root itself replaced by a symlink to a host directory: the host writes there, runs a
  step with it as a writable root, and publishes it as the bootstrap layer, which every sandbox
  of the image then reads (with ``ln -s /``: the host's whole root file system).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sandboxmgr import trust
from sandboxmgr.builders import debcache
from sandboxmgr.builders.debcache import DebCache
from sandboxmgr.builders.debindex import PackageIndex
from sandboxmgr.locations import shipped_configs_dir
from sandboxmgr.profile import ProfileRegistry
from sandboxmgr.project import entries, expand, load_project
from sandboxmgr.store import Store
from tests.conftest import CLI, ConcurrentBuild, Result, missing

# Every test is an attack; those that build or run sandboxes are also marked root and network.
pytestmark = [pytest.mark.adversarial]

DIRS = [shipped_configs_dir()]


def x86_64_only() -> None:
    if platform.machine() != "x86_64":
        missing("the keyctl system call numbers are x86_64's")


def project_findings(root: Path) -> tuple[list[trust.Finding], dict[Path, str]]:
    registry = ProfileRegistry(DIRS)
    project = load_project(root, registry)
    listed = [name for name in expand(project.profiles, project, registry) if name not in project.inline]
    others = [entry.profile for entry in entries(listed, project, registry)]
    return trust.findings(project.raw, project.inline, others, registry)


def matrix(cli: CLI, project: Path, *args: str) -> Result:
    proc = subprocess.run(cli.argv("matrix", "-C", str(project), *args), capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL, cwd=project)
    return Result(proc.returncode, proc.stdout, proc.stderr)


# --- project files: the system call filter -------------------------------------------------------


@pytest.mark.parametrize("value", ["unconfined", "/ABS/allow-all.json"])
def test_an_untrusted_project_file_cannot_choose_the_system_call_filter(tmp_path: Path, value: str) -> None:
    """`seccomp:` decides what root inside may ask of the host's kernel: the filter is what stands
    between the sandbox and user namespaces, root's keyrings, io_uring, BPF (README). A project
    cloned from elsewhere sets it without trust today."""
    (tmp_path / "allow-all.json").write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    value = value.replace("/ABS", str(tmp_path))
    (tmp_path / "sandboxmgr.yaml").write_text(
        f"inline:\n  mine:\n    extends: debian-bookworm\n    seccomp: {value}\n")
    found, _ = project_findings(tmp_path)
    assert [f.key for f in found] == ["inline.mine.seccomp"], found


@pytest.mark.root
@pytest.mark.network
def test_an_untrusted_project_cannot_read_roots_user_keyring(cli: CLI, bookworm: ConcurrentBuild,
                                                             tmp_path: Path) -> None:
    """End to end: root's user keyring holds a key (as a root service's, a kernel's NFS or
    CIFS key would); an untrusted project's command links @u into its session keyring and
    reads the key - the filter, which it turned off, was all that stopped it."""
    x86_64_only()
    if os.geteuid() != 0:
        missing("needs root")
    libc = ctypes.CDLL(None, use_errno=True)
    description = f"atk2-u-{secrets.token_hex(4)}".encode()
    secret = b"ROOT-USER-KEYRING-SECRET"
    key = libc.syscall(248, b"user", description, secret, len(secret), -4)  # add_key(..., @u)
    assert key > 0, os.strerror(ctypes.get_errno())
    project = tmp_path / "project"
    project.mkdir()
    reader = ("perl -e 'my ($t, $d) = (\"user\", $ARGV[0]); syscall(250, 8, -4, -3);"
              " my $id = syscall(250, 10, -3, $t, $d, 0); my $b = \"\\0\" x 64;"
              " my $n = syscall(250, 11, $id, $b, 64); print \"read=\", substr($b, 0, $n > 0 ? $n : 0), \"\\n\"'"
              f" {description.decode()}; unshare -U -r true && echo USERNS-MADE; true")
    (project / "sandboxmgr.yaml").write_text(
        f"profiles: [evil]\ncommand: {json.dumps(reader)}\n"
        "inline:\n  evil:\n    extends: debian-bookworm\n    seccomp: unconfined\n")
    try:
        result = matrix(cli, project, "--json")
        logs = "".join(Path(r["log"]).read_text(errors="replace") for r in json.loads(result.out or "[]")
                       if r.get("log") and Path(r["log"]).exists())
        assert secret.decode() not in logs and "USERNS-MADE" not in logs, logs
        assert result.code == 125 and "inline.evil.seccomp" in result.err and "not trusted" in result.err, \
            str(result)
    finally:
        libc.syscall(250, 9, key, -4)  # KEYCTL_UNLINK from @u
        cli("rmi", "project.evil")


# --- project files: host files named by path ---------------------------------------------------


@pytest.mark.root
@pytest.mark.network
@pytest.mark.parametrize("how", ["extends", "profiles", "seccomp"])
def test_an_untrusted_project_file_does_not_make_the_host_read_its_files(cli: CLI, bookworm: ConcurrentBuild,
                                                                         tmp_path: Path, how: str) -> None:
    """A root-only file outside the project, named by an untrusted project file: the host reads
    it as root and its parse errors print what is in it (in CI, where matrix's output is the
    project's to read)."""
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    (secret / "creds.yaml").write_text("db_password_hunter2: x\nhostname: SECRET_VALUE_42\n")
    (secret / "creds.json").write_text('{"defaultAction": "SECRET_VALUE_42"}')
    for path in secret.iterdir():
        path.chmod(0o600)
    project = tmp_path / "project"
    project.mkdir()
    text = {
        "extends": f"profiles: [x]\ninline:\n  x:\n    extends: {secret / 'creds.yaml'}\n",
        "profiles": f"profiles: [{secret / 'creds.yaml'}]\n",
        "seccomp": (f"profiles: [x]\ninline:\n  x:\n    extends: debian-bookworm\n"
                    f"    seccomp: {secret / 'creds.json'}\n"),
    }[how]
    (project / "sandboxmgr.yaml").write_text(text + "command: 'true'\n")
    try:
        result = matrix(cli, project, "--json")
    finally:
        cli("rmi", "project.x")
    logs = "".join(Path(r["log"]).read_text(errors="replace") for r in json.loads(result.out)
                   if isinstance(r, dict) and r.get("log") and Path(r["log"]).exists()) \
        if result.out.startswith("[") else ""
    seen = result.out + result.err + logs
    assert "hunter2" not in seen and "SECRET_VALUE_42" not in seen, str(result)
    assert result.code == 125 and "not trusted" in result.err, str(result)


# --- project files: what trust covers ------------------------------------------------------------


def test_trust_in_a_project_keyring_ends_when_the_keyring_changes(tmp_path: Path) -> None:
    """`sandboxmgr trust` records the project file's bytes; `bootstrap.keyring: key.gpg` names a
    file of the project, which a `git pull` replaces without touching sandboxmgr.yaml: the new
    key's packages are then installed, their maintainer scripts run as root in the bootstrap,
    and nothing asks again."""
    store = Store(tmp_path / "store")
    project = tmp_path / "project"
    project.mkdir()
    (project / "key.gpg").write_bytes(b"the key the user read and trusted")
    (project / "sandboxmgr.yaml").write_text(
        "inline:\n  mine:\n    extends: debian-bookworm\n    bootstrap:\n      keyring: key.gpg\n")
    found, digests = project_findings(project)
    # The key needs trust, and so does the key file it names (its bytes as they are now).
    assert [f.key for f in found] == ["inline.mine.bootstrap.keyring", "key.gpg"]
    trust.record(store, digests)
    trust.check(store, found, digests, project)  # trusted
    (project / "key.gpg").write_bytes(b"the attacker's key, pulled in later")
    found, digests = project_findings(project)
    with pytest.raises(trust.UntrustedError):
        trust.check(store, found, digests, project)


# --- the tool root ---------------------------------------------------------------------------------

# The test's helper: a session keyring of its own with a key in it, a key in root's @u,
# then sandboxmgr (inheriting the session); the keys go again afterwards.
TOOL_KEYRING_HELPER = r"""
import ctypes, json, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall(250, 1, b"atk2-session")                                       # JOIN_SESSION_KEYRING
session = libc.syscall(248, b"user", b"atk2-session-key", b"CALLER-SESSION-SECRET", 21, -3)
user = libc.syscall(248, b"user", sys.argv[2].encode(), b"ROOT-USER-SECRET", 16, -4)
try:
    proc = subprocess.run(json.loads(sys.argv[1]), capture_output=True, text=True, stdin=subprocess.DEVNULL)
finally:
    libc.syscall(250, 9, user, -4)                                          # KEYCTL_UNLINK from @u
print(json.dumps({"session": session, "user": user, "code": proc.returncode, "err": proc.stderr}))
"""


@pytest.mark.root
@pytest.mark.network
def test_the_tool_root_reaches_no_keyring_of_the_host_and_makes_no_user_namespace(
        cli: CLI, bookworm: ConcurrentBuild) -> None:
    """A bootstrap hook (or a maintainer script: the same process tree, uid 0, no filter) reads the
    session keyring of whoever ran sandboxmgr (its tokens) and, after `keyctl link @u @s`,
    root's user keyring; it makes user namespaces, the kernel surface the sandboxes' filter
    closes. A sandbox gets a fresh session keyring and the filter; the tool root gets neither."""
    x86_64_only()
    assert cli.configs is not None
    user_key = f"atk2-tool-u-{secrets.token_hex(4)}"
    probe = ("perl -e 'my $t = \"user\"; my $b = \"\\0\" x 64; for my $d (@ARGV) {"
             " my $id = syscall(250, 10, -3, $t, $d, 0); my $n = syscall(250, 11, $id, $b, 64);"
             " print \"leak=\", substr($b, 0, $n), \"\\n\" if $n > 0; syscall(250, 8, -4, -3) }'"
             f" atk2-session-key {user_key} {user_key};"
             " unshare -U -r true 2>/dev/null && echo leak=user-namespace;"
             " grep -q '^Seccomp:[[:space:]]*0' /proc/self/status && echo leak=no-filter")
    name = "atk2-tool-keys"
    (cli.configs / f"{name}.yaml").write_text(
        "extends: debian-bookworm\nbootstrap:\n  method: mmdebstrap\n"
        f"  extra_args: {json.dumps(['--setup-hook=echo PROBE-BEGIN; ' + probe + '; echo PROBE-END; exit 1'])}\n")
    proc = subprocess.run([sys.executable, "-c", TOOL_KEYRING_HELPER, json.dumps(cli.argv("build", name)), user_key],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["session"] > 0 and report["user"] > 0 and report["code"] == 125, report
    logs = sorted((cli.store / "logs").glob(f"build-{name}-*.log"), key=lambda p: p.stat().st_mtime)
    text = logs[-1].read_text(errors="replace")
    assert "PROBE-END" in text, text[-3000:]
    seen = text.split("\nPROBE-BEGIN\n")[-1].split("\nPROBE-END")[0]
    leaks = [line for line in seen.splitlines() if line.startswith("leak=")]
    assert not leaks, leaks


# --- DebCache.keep() and stage() --------------------------------------------------------------------


def one_package_cache(tmp_path: Path, name: str = "hello_2.10-3_amd64.deb",
                      data: bytes = b"a genuine package") -> tuple[DebCache, Path, bytes]:
    cache = tmp_path / "cache"
    cache.mkdir()
    index = PackageIndex("d", {name: (len(data), hashlib.sha256(data).hexdigest())})
    return DebCache(cache, index, tmp_path / "index" / "verified.json"), cache, data


def test_keep_opens_nothing_but_a_regular_file(tmp_path: Path) -> None:
    """keep() opens each name of a build step's cache view (O_NOFOLLOW, O_NONBLOCK) before it
    looks at what it is. A step makes a FIFO there - or, with CAP_MKNOD, a device node: the
    view's upper directory is on the store's file system, which is not nodev, so the host's
    root opens the device (a watchdog arms, a tape rewinds, a tty becomes the controlling
    terminal of a session leader). Here a FIFO, whose writer's open() returns only when
    someone opens it for reading."""
    debcache_, _cache, _data = one_package_cache(tmp_path)
    view = tmp_path / "upper"
    view.mkdir()
    fifo = view / "hello_2.10-3_amd64.deb"
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer() -> None:
        fd = os.open(fifo, os.O_WRONLY)  # blocks until a reader opens the FIFO
        opened.set()
        os.close(fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(0.2)
    try:
        assert debcache_.keep(view) == 0
        time.sleep(0.2)
        assert not opened.is_set(), "keep() opened the FIFO a build step planted under a package's name"
    finally:
        if not opened.is_set():
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # let the writer go
        thread.join(5)


def test_staging_the_cache_does_not_break_another_builds_keep(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """stage() deletes every `.incoming-*` file as "what a killed keep() left"; two builds of one
    release (same keyring) share the cache, so one build's stage() deletes the file the other's
    keep() is copying into, and that build fails with FileNotFoundError."""
    keeper, cache, data = one_package_cache(tmp_path)
    stager = DebCache(cache, keeper.index, tmp_path / "index" / "verified.json")
    (cache / "other_1_all.deb").write_bytes(b"x")  # a cache with something in it
    downloads = tmp_path / "upper"
    downloads.mkdir()
    (downloads / "hello_2.10-3_amd64.deb").write_bytes(data)
    target = tmp_path / "stage"
    target.mkdir()
    real_write_all = debcache._write_all

    def write_all_while_another_build_stages(fd: int, chunk: bytes) -> None:
        real_write_all(fd, chunk)
        stager.stage(target)  # the other build starts now

    monkeypatch.setattr(debcache, "_write_all", write_all_while_another_build_stages)
    assert keeper.keep(downloads) == 1
    assert (cache / "hello_2.10-3_amd64.deb").read_bytes() == data


def test_an_index_saved_for_one_keyring_is_not_used_offline_for_another(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache is per keyring (what one profile's index vouches for never reaches a profile
    that trusts other keys), but the saved index is per mirror URL only: offline, a profile
    verifies its keyring's cache against whatever index was last verified for that URL, with
    any keyring."""
    from sandboxmgr.builders import debindex, index
    from sandboxmgr.families import debian

    mine, theirs = tmp_path / "mine.gpg", tmp_path / "theirs.gpg"
    mine.write_bytes(b"the distribution's key")
    theirs.write_bytes(b"another profile's key")
    (tmp_path / "p.yaml").write_text(f"extends: debian-bookworm\nbootstrap:\n  keyring: {mine}\n")
    profile = ProfileRegistry([*DIRS, tmp_path]).load("p")
    boot = profile.bootstrap
    where = tmp_path / "index"
    # What a build of a profile with the same mirror and `theirs` as its keyring verified and saved.
    foreign = PackageIndex("theirs", {"hello_2.10-3_amd64.deb": (5, "0" * 64)})
    theirs_id = hashlib.sha256(theirs.read_bytes()).hexdigest()[:16]
    debindex.save(where, boot.mirror, boot.components, profile.arch, theirs_id, foreign)

    def unreachable(*_args: object, **_kwargs: object) -> None:
        raise index.Unreachable("offline")

    monkeypatch.setattr(debindex, "fetch_index", unreachable)
    got = debian.signed_index(profile, where)
    assert got is None or got.digest != "theirs", "offline, another keyring's index vouches for this cache"


def test_keep_does_not_open_a_device_node_in_the_view(tmp_path: Path) -> None:
    """The same with what a build step really makes (`mknod ... c 1 3`: /dev/null's numbers,
    harmless to open); the open is seen with inotify (IN_OPEN on the node)."""
    if os.geteuid() != 0:
        missing("mknod needs root")
    debcache_, _cache, _data = one_package_cache(tmp_path)
    view = tmp_path / "upper"
    view.mkdir()
    node = view / "hello_2.10-3_amd64.deb"
    os.mknod(node, 0o644 | 0o020000, os.makedev(1, 3))
    libc = ctypes.CDLL(None, use_errno=True)
    inotify = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if inotify < 0:
        missing("no inotify")
    try:
        in_open = 0x20
        assert libc.inotify_add_watch(inotify, str(node).encode(), in_open) >= 0
        debcache_.keep(view)
        try:
            events = os.read(inotify, 4096)
        except BlockingIOError:
            events = b""
        assert not events, "keep() opened a device node a build step made under a package's name"
    finally:
        os.close(inotify)



def test_a_file_mirror_holding_the_store_is_refused_through_a_symlinked_store(tmp_path: Path) -> None:
    """check_readable() refuses a keyring or file:// mirror that holds the store, comparing its
    real path with the build's directory as the store names it: a store reached through a
    symlink (`--store`, or /var/lib/sandboxmgr linked to a bigger disk; the suite runs builds
    so, attack 5) is shown whole - every sandbox's changes, trusted.json - to the bootstrap."""
    from sandboxmgr.errors import SandboxError
    from sandboxmgr.toolroot import check_readable

    real = tmp_path / "disk" / "sandboxmgr"
    (real / "tmp" / "layer-x").mkdir(parents=True)
    link = tmp_path / "store"
    link.symlink_to(real)
    with pytest.raises(SandboxError):
        check_readable(real, real / "tmp" / "layer-x")
    with pytest.raises(SandboxError):
        check_readable(real, link / "tmp" / "layer-x")


# --- the host's writes into a bootstrapped root ---------------------------------------------------


@pytest.mark.root
@pytest.mark.network
@pytest.mark.parametrize("build_file", ["usr/sbin/policy-rc.d", "etc/dpkg/dpkg.cfg.d/sandboxmgr-unsafe-io"])
def test_the_build_only_files_are_not_written_through_a_symlink_the_bootstrap_left(
        cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path, build_file: str) -> None:
    """After the bootstrap the host writes its build-only files into the new root
    (BuildRoot.write_build_file: open, write, chmod 0755, by name). in_upper() refuses a symlink
    among the parent directories, not as the file itself: a maintainer script or hook that left
    `usr/sbin/policy-rc.d -> /etc/shadow` has the host's root overwrite that host file and make it
    0755 - what the tool root is there to prevent ("it cannot write the host's files")."""
    assert cli.configs is not None
    canary = tmp_path / "host-file"
    canary.write_text("the host's own, root's only\n")
    canary.chmod(0o600)
    name = f"atk2-link-{build_file.rsplit('/', maxsplit=1)[-1]}"
    hook = f'--customize-hook=ln -sfn {canary} "$1"/{build_file}'
    (cli.configs / f"{name}.yaml").write_text(
        f"extends: debian-bookworm\nbootstrap:\n  method: mmdebstrap\n  extra_args: {json.dumps([hook])}\n")
    try:
        cli("build", name)  # may fail (a symlink refused): what matters is the host's file
        assert canary.read_text() == "the host's own, root's only\n"
        assert (canary.stat().st_mode & 0o777) == 0o600
    finally:
        cli("rmi", name)


def plant_cache_views(store: Path, upper: Path, work: Path, stop: threading.Event, planted: list[Path]) -> None:
    """As soon as a bootstrap's layer directory exists: its cache-views/cache-0/{upper,work} as
    symlinks to host directories (what a maintainer script does after a double chroot: the tool
    keeps CAP_SYS_CHROOT, and the build's directory is bound read-write in its tool root)."""
    while not stop.is_set():
        for layer in store.glob("tmp/layer-*"):
            if (layer / "diff" / "usr").is_dir() and not os.path.lexists(layer / "cache-views"):
                (layer / "cache-views" / "cache-0").mkdir(parents=True)
                (layer / "cache-views" / "cache-0" / "upper").symlink_to(upper)
                (layer / "cache-views" / "cache-0" / "work").symlink_to(work)
                planted.append(layer)
                return
        time.sleep(0.02)


@pytest.mark.root
@pytest.mark.network
def test_a_bootstrap_cannot_choose_the_upper_directory_of_a_later_build_steps_cache_view(
        cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path) -> None:
    """After debootstrap (and after the host's dnf: `rpm --rebuilddb`) the host runs a step in the
    new root with the package cache copy-on-write, its upper and work directories made with
    mkdir(exist_ok=True) in the build's directory - which the tool root showed read-write to every
    maintainer script. Symlinks planted there make the host mount that overlay with a host
    directory as its upper: what the step writes to /var/cache/apt/archives lands there. With
    `upper -> /etc/cron.d` and the root's apt-get replaced by a script (the same maintainer
    script can do both), that is a root cron job on the host."""
    assert cli.configs is not None
    upper, work = tmp_path / "host-upper", tmp_path / "host-work"
    upper.mkdir()
    work.mkdir()
    (cli.configs / "atk2-deboot.yaml").write_text("extends: debian-bookworm\nbootstrap:\n  method: debootstrap\n")
    stop = threading.Event()
    planted: list[Path] = []
    planter = threading.Thread(target=plant_cache_views, args=(cli.store, upper, work, stop, planted), daemon=True)
    planter.start()
    try:
        cli("build", "--no-cache", "atk2-deboot")  # may fail (refused): what matters is the host's directories
    finally:
        stop.set()
        planter.join(5)
        cli("rmi", "atk2-deboot")
    assert planted, "the bootstrap's layer directory was never seen"
    assert sorted(p.name for p in upper.iterdir()) == [] and sorted(p.name for p in work.iterdir()) == [], \
        (sorted(upper.iterdir()), sorted(work.iterdir()))


@pytest.mark.root
@pytest.mark.network
def test_a_bootstrap_cannot_replace_its_root_with_a_symlink_to_a_host_directory(
        cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path) -> None:
    """The tool gets the new root's path, in the build's directory, which its tool root shows
    read-write: a hook (or a maintainer script out of its chroot) moves the root away and leaves
    a symlink to a host directory (one it also makes in the tool root's own /tmp, so that
    mmdebstrap still finds its root). The host then follows it: writes the build-only files
    there, runs `apt-get clean` in a sandbox whose writable root is that host directory, and
    publishes the symlink as the bootstrap layer - every sandbox of the image reads the host
    directory. With `ln -s /` the layer is the host's whole root file system."""
    assert cli.configs is not None
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        missing("busybox-static is not installed")
    # A host directory laid out like a root (as / is): a shell, an apt-get, a secret.
    host = tmp_path / "host-dir"
    for sub in ("bin", "usr/bin", "usr/sbin", "etc/dpkg/dpkg.cfg.d", "proc", "dev", "sys", "tmp", "run"):
        (host / sub).mkdir(parents=True)
    (host / "bin" / "busybox").write_bytes(busybox.read_bytes())
    (host / "bin" / "busybox").chmod(0o755)
    for applet in ("sh", "cat"):
        (host / "bin" / applet).symlink_to("busybox")
    (host / "usr" / "bin" / "apt-get").write_text("#!/bin/sh\nexit 0\n")
    (host / "usr" / "bin" / "apt-get").chmod(0o755)
    (host / "secret").write_text("HOST-ONLY-SECRET\n")
    (host / "secret").chmod(0o600)
    before = sorted(str(p.relative_to(host)) for p in host.rglob("*"))
    # (In the tool root, mmdebstrap's cleanup finds a copy of what it removes at the end.)
    hook = (f'--customize-hook=mkdir -p {host} && cp -a "$1"/etc "$1"/var {host}/'
            f' && mv "$1" "$1"-moved && ln -s {host} "$1"')
    name = "atk2-root-link"
    (cli.configs / f"{name}.yaml").write_text(
        f"extends: debian-bookworm\nbootstrap:\n  method: mmdebstrap\n  extra_args: {json.dumps([hook])}\n")
    try:
        built = cli("build", name)
        layers = [p for p in (cli.store / "layers").glob("*/diff") if p.is_symlink()]
        seen = cli("run", name, "/bin/cat", "/secret") if built.code == 0 else built
        assert not layers, layers
        assert "HOST-ONLY-SECRET" not in seen.out, str(seen)
        assert sorted(str(p.relative_to(host)) for p in host.rglob("*")) == before
    finally:
        cli("rmi", name)
