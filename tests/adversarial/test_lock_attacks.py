"""An attacker's review of lock files (lockfile.py, dpkgstatus.py, locked.py, locking.py).

A lock file, a bug report and its file name are hostile input; an image's layers were
written by build steps that ran as root inside. Each test names the hole it proves, and
fails on the lock branch as it was (a52feab):

- a lock file of a few hundred bytes (YAML aliases, a "billion laughs") made the error
  message that quotes a bad value exponential in size and time; a deeply nested one was
  an internal RecursionError;
- a version ending in '-' passed the check: apt-get install reads ``NAME=VERSION-`` as
  "remove NAME", so a lock (or a report) could turn the lock layer's install into a removal;
- a lock's ``archive_date`` out of range ('Fri, 31 Dec 9999 23:59:59 -2359') made the hint of
  the missing-versions error an internal OverflowError;
- ``lock: FIFO`` (or /dev/zero) hung every verb that computes the image key (``profiles``,
  ``run``, ``build``): the key read the lock unbounded, before the bounded reader ran;
- a lock (``lock: /dev/watchdog``, in an untrusted project's profile too), a report, or what is at
  recreate's ./NAME.yaml was opened before it was found not to be a regular file: opening a
  device acts (a watchdog is armed, and reboots the host unless fed; a tape rewinds);
- an untrusted project's profile could name any host file as its lock (``lock: /root/x.yaml``):
  the host read it as root and quoted its first keys in errors, though the project rules say
  a host file read for a project (bootstrap.keyring, a seccomp path) needs trust;
- the package database was taken from "the topmost layer that has the file", blind to
  overlayfs: a setup step's ``rm`` (a whiteout) or ``rm -rf /var/lib/dpkg; mkdir`` (an
  opaque directory) let ``lock`` and the post-build check read a lower layer's database,
  which the image no longer has - the check passed while the image held other versions;
- a package a step left "unpacked" (dpkg --unpack, never configured) was invisible to the
  post-build check, though its files are in the image: only "installed" counted;
- a package whose name or version the lock's rules refuse (dpkg takes a version of any length)
  was skipped without a word: in the image, in no lock, and out of the check's sight;
- a dpkg status line was split with str.splitlines(), which also ends a line at \\f, \\x1c,
  \\x85, \\u2028...: a field's value written before ``Version:`` (a package's Maintainer)
  made a ``Version:`` line of its own, and the lock lied about the version;
- apt's log holds what maintainer scripts print: a line of theirs named any "missing version"
  (a terminal escape sequence in the error line, a pin recreate would drop);
- ``lock -o /dev/stdout`` renamed a regular file over the host's /dev/stdout (a symlink), as it
  would over any device or FIFO named;
- recreate wrote the report's file name into the profile as bare YAML (``bug: 12.txt``
  broke it), followed a dangling symlink at ./NAME.yaml (root created its target), and
  blocked forever reading a FIFO there; ``lock -o``'s temporary file had a fixed name and
  was written through a symlink planted at it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandboxmgr import dpkgstatus, lockfile
from sandboxmgr.errors import BuildError, ProfileError, SandboxError
from sandboxmgr.lockfile import Lock, Package
from tests.conftest import CLI, need_root

pytestmark = pytest.mark.adversarial

HEADER = ("lock_format: 1\nprofile: p\nimage: '0123'\ndistro: debian\nrelease: bookworm\narch: amd64\n"
          "mirror: http://deb.debian.org/debian\n")
STANZA = "Package: {}\nStatus: install ok installed\nMaintainer: {}\nArchitecture: all\nVersion: {}\n"


def a_lock(*packages: Package) -> Lock:
    return Lock(profile="p", image="0123", distro="debian", release="bookworm", arch="amd64",
                mirror="http://deb.debian.org/debian", archive_date=None,
                packages=packages or (Package("sbm-hello", "all", "1.0"),))


def in_thread(call: Callable[[], object], unblock: Path | None = None) -> list[object]:
    """What ``call`` returned or raised, if it ended within 5 seconds (else []); a FIFO
    ``unblock`` is opened for writing afterwards, so a reader blocked on it ends."""
    result: list[object] = []

    def run() -> None:
        try:
            result.append(call())
        except Exception as exc:  # the test looks at what it was
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    done = list(result)
    if thread.is_alive() and unblock is not None:
        os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
    return done


# --- the lock file as input ------------------------------------------------------------


def test_an_alias_bomb_in_a_lock_file_is_one_short_line() -> None:
    # 23 anchors, each a list of the one before twice: 2**23 leaves when printed.
    chain = ", ".join(["&b0 [x, x]"] + [f"&b{i} [*b{i - 1}, *b{i - 1}]" for i in range(1, 23)])
    text = f"lock_format: 1\nmirror: [{chain}]\npackages:\n- {{name: *b22, version: '1', arch: all}}\n"
    assert len(text) < 1000
    started = time.monotonic()
    with pytest.raises(ProfileError) as raised:
        lockfile.parse(Path("p.lock"), text)
    assert time.monotonic() - started < 1
    assert raised.value.message == "p.lock: packages[0].name a list is not a valid package name"
    bomb = f"lock_format: [{chain}, *b22]\npackages: []\n"
    with pytest.raises(ProfileError, match=r"^p\.lock: lock_format a list is not 1$"):
        lockfile.parse(Path("p.lock"), bomb)


def test_a_deeply_nested_lock_file_is_one_line_not_an_internal_error() -> None:
    with pytest.raises(ProfileError, match=r"p\.lock: not a lock file \(YAML nested too deep\)"):
        lockfile.parse(Path("p.lock"), "lock_format: 1\npackages: " + "[" * 100_000 + "]" * 100_000 + "\n")


@pytest.mark.parametrize("version", ["2.36-", "1:2.36-9-", "1.0:x-"])
def test_a_version_apt_would_read_as_remove_is_refused(version: str) -> None:
    # apt-get install 'libc6=2.36-' removes libc6; dpkg itself refuses an empty revision.
    text = HEADER + f"packages:\n- {{name: libc6, version: '{version}', arch: amd64}}\n"
    with pytest.raises(ProfileError, match=r"packages\[0\]\.version .* is not a valid package version"):
        lockfile.parse(Path("p.lock"), text)
    from sandboxmgr import reports

    with pytest.raises(SandboxError, match="names no installed package versions"):
        reports.parse(f"ii  libc6  {version}\n")


def test_lock_format_true_is_not_format_1() -> None:
    text = HEADER.replace("lock_format: 1", "lock_format: true") + "packages:\n- {name: a, version: '1', arch: all}\n"
    with pytest.raises(ProfileError, match="lock_format True is not 1"):
        lockfile.parse(Path("p.lock"), text)


@pytest.mark.parametrize("date", ["Fri, 31 Dec 9999 23:59:59 -2359", "Sat, 10 Feb 2024 09:50:14 +99999999999999999999"])
def test_a_locks_date_out_of_range_leaves_the_missing_versions_line_one_line(date: str) -> None:
    # The hint of "the archive lacks ..." is made from the lock's archive_date: it overflowed.
    lock = lockfile.parse(Path("p.lock"), HEADER + f"archive_date: '{date}'\npackages:\n"
                          "- {name: a, version: '1', arch: all}\n")
    assert "e.g. https://snapshot.debian.org/archive/debian/YYYYMMDDTHHMMSSZ/" in lock.snapshot_hint()


def test_a_lock_that_is_a_fifo_never_hangs_the_image_key(tmp_path: Path) -> None:
    from sandboxmgr.identity import image_key
    from sandboxmgr.locations import shipped_configs_dir
    from sandboxmgr.profile import ProfileRegistry

    os.mkfifo(tmp_path / "p.lock")
    (tmp_path / "keyring.gpg").write_bytes(b"fixed\n")
    (tmp_path / "locked.yaml").write_text(
        f"extends: debian-bookworm\narch: amd64\nbootstrap: {{keyring: {tmp_path / 'keyring.gpg'}}}\nlock: p.lock\n")
    profile = ProfileRegistry([shipped_configs_dir(), tmp_path]).load("locked")
    # `sandboxmgr profiles` computes every profile's key: one FIFO blocked it for good.
    done = in_thread(lambda: image_key(profile), unblock=tmp_path / "p.lock")
    assert done and isinstance(done[0], str), done


def opens(fifo: Path, call: Callable[[], object]) -> bool:
    """Whether ``call`` opens ``fifo``: a writer blocked in open(2) wakes only when a reader
    opens it - as a watchdog device arms, or a tape rewinds, when it is opened."""
    woke = threading.Event()

    def writer() -> None:
        os.close(os.open(fifo, os.O_WRONLY))
        woke.set()

    threading.Thread(target=writer, daemon=True).start()
    time.sleep(0.3)  # the writer is blocked in open(2) now
    with contextlib.suppress(SandboxError):
        call()
    opened = woke.wait(1)
    if not opened:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # let the writer go
        woke.wait(5)
    return opened


def test_a_lock_or_a_report_that_is_not_a_regular_file_is_never_opened(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxmgr import reports
    from sandboxmgr.identity import lock_digest

    # An untrusted project's profile may say 'lock: /dev/watchdog': every verb computing its key read it.
    fifo = tmp_path / "device"
    os.mkfifo(fifo)
    assert not opens(fifo, lambda: lockfile.load(fifo))
    assert not opens(fifo, lambda: lock_digest(str(fifo)))
    assert not opens(fifo, lambda: reports.read_report(fifo))
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "report.txt"
    report.write_text("ii  libc6  2.36-9\n")
    os.rename(fifo, tmp_path / "device.yaml")
    assert not opens(tmp_path / "device.yaml", lambda: recreate_in(tmp_path, report, "device"))


def test_an_untrusted_project_cannot_make_the_host_read_a_file_outside_it_as_a_lock(tmp_path: Path) -> None:
    from sandboxmgr import trust
    from sandboxmgr.locations import shipped_configs_dir
    from sandboxmgr.profile import ProfileRegistry
    from sandboxmgr.project import entries, expand, load_project

    # The host reads the lock as root, and a bad one's error quotes its first keys: a project
    # cloned from elsewhere must not choose a host file for that without trust (as bootstrap.keyring).
    project = tmp_path / "project"
    (project / "locks").mkdir(parents=True)
    (project / "locks" / "in.lock").write_text("x: 1\n")
    (tmp_path / "host-secret.yaml").write_text("token: hunter2\n")
    (project / "locks" / "link.lock").symlink_to(tmp_path / "host-secret.yaml")
    (project / "sandboxmgr.yaml").write_text(
        "inline:\n"
        "  inside: {extends: debian-bookworm, lock: locks/in.lock}\n"
        f"  outside: {{extends: debian-bookworm, lock: {tmp_path / 'host-secret.yaml'}}}\n"
        "  link: {extends: debian-bookworm, lock: locks/link.lock}\n"
        "  up: {extends: debian-bookworm, lock: ../host-secret.yaml}\n")
    registry = ProfileRegistry([shipped_configs_dir()])
    loaded = load_project(project, registry)
    listed = [name for name in expand(loaded.profiles, loaded, registry) if name not in loaded.inline]
    found, _ = trust.findings(loaded.raw, loaded.inline, [e.profile for e in entries(listed, loaded, registry)],
                              registry)
    assert sorted(f.key for f in found) == ["inline.link.lock", "inline.outside.lock", "inline.up.lock"], found
    # End to end: matrix refuses before anything is read or built, one line and the hint.
    need_root()
    (project / "sandboxmgr.yaml").write_text(
        f"profiles: [outside]\ncommand: 'true'\ninline:\n  outside:\n    extends: debian-bookworm\n"
        f"    lock: {tmp_path / 'host-secret.yaml'}\n")
    cli = CLI(tmp_path / "store")
    proc = subprocess.run(cli.argv("matrix", "-C", str(project)), capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL, cwd=project)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 125 and len(lines) == 2, proc
    assert lines[0].startswith(f"sandboxmgr: error: {project / 'sandboxmgr.yaml'}:6: inline.outside.lock: ")
    assert "not trusted" in lines[0] and "hunter2" not in proc.stderr + proc.stdout, proc


# --- the layers' package database --------------------------------------------------------


def layer(tmp_path: Path, name: str) -> Path:
    diff = tmp_path / name / "diff"
    diff.mkdir(parents=True)
    return diff


def with_status(diff: Path, *stanzas: str) -> Path:
    (diff / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
    (diff / "var/lib/dpkg/status").write_text("\n".join(stanzas))
    return diff


def whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))  # S_IFCHR 0/0: what overlayfs writes for rm


def test_a_deleted_package_database_is_not_read_from_a_lower_layer(tmp_path: Path) -> None:
    need_root()
    lower = with_status(layer(tmp_path, "lower"), STANZA.format("sbm-hello", "m", "1.0"))
    assert dpkgstatus.installed([lower]) == [Package("sbm-hello", "all", "1.0")]
    for where in ("var/lib/dpkg/status", "var/lib/dpkg", "var"):  # rm of the file, or a directory above it
        upper = layer(tmp_path, f"upper-{where.count('/')}")
        whiteout(upper / where)
        with pytest.raises(BuildError, match="the image has no dpkg database"):
            dpkgstatus.installed([lower, upper])
    # A file where the directory was hides it as well.
    upper = layer(tmp_path, "file")
    (upper / "var/lib").mkdir(parents=True)
    (upper / "var/lib/dpkg").write_text("not a directory\n")
    with pytest.raises(BuildError, match="the image has no dpkg database"):
        dpkgstatus.installed([lower, upper])


def test_an_opaque_directory_hides_a_lower_layers_database(tmp_path: Path) -> None:
    need_root()
    lower = with_status(layer(tmp_path, "lower"), STANZA.format("sbm-hello", "m", "1.0"))
    # rm -rf /var/lib/dpkg; mkdir /var/lib/dpkg: overlayfs makes the new directory opaque.
    upper = layer(tmp_path, "upper")
    (upper / "var/lib/dpkg").mkdir(parents=True)
    os.setxattr(upper / "var/lib/dpkg", "trusted.overlay.opaque", b"y")
    with pytest.raises(BuildError, match="the image has no dpkg database"):
        dpkgstatus.installed([lower, upper])
    # The check after a locked build: versions changed, the database removed - it must not pass.
    from sandboxmgr.lockfile import differences

    with_status(upper, STANZA.format("sbm-hello", "m", "2.0"))
    assert differences(a_lock(), dpkgstatus.installed([lower, upper])) is not None
    # An opaque directory higher up hides it too; the layer's own database is read.
    top = layer(tmp_path, "top")
    (top / "var").mkdir()
    os.setxattr(top / "var", "trusted.overlay.opaque", b"y")
    with pytest.raises(BuildError, match="the image has no dpkg database"):
        dpkgstatus.installed([lower, upper, top])


def test_a_field_value_cannot_make_a_version_line_of_its_own(tmp_path: Path) -> None:
    # dpkg writes Maintainer: before Version:, and ends a line at \n only.
    for separator in ("\x0c", "\x1c", "\x85", "\u2028", "\r", "\x0b"):
        text = STANZA.format("sbm-hello", f"Mallory <m@example.org>{separator}Version: 9.9", "1.0")
        assert dpkgstatus.parse_status(text) == [Package("sbm-hello", "all", "1.0")], repr(separator)
    need_root()
    diff = with_status(layer(tmp_path, "l"), STANZA.format("sbm-hello", "M\u2028Version: 9.9", "1.0"))
    assert dpkgstatus.installed([diff]) == [Package("sbm-hello", "all", "1.0")]


def test_a_package_dpkg_only_unpacked_is_not_invisible_to_the_check() -> None:
    # A setup step's 'dpkg --unpack other.deb' (no configure): its files are in the image.
    unpacked = STANZA.format("sbm-hello", "m", "1.0") + "\n" + STANZA.format("other", "m", "6.6").replace(
        "install ok installed", "install ok unpacked")
    found = dpkgstatus.parse_status(unpacked)
    assert Package("other", "all", "6.6") in found
    assert "installed but not locked: other=6.6" in (lockfile.differences(a_lock(), found) or "")
    # Removed with only its conffiles left, or never installed: not there.
    for state in ("deinstall ok config-files", "purge ok not-installed"):
        gone = STANZA.format("other", "m", "6.6").replace("install ok installed", state)
        assert dpkgstatus.parse_status(gone) == []


def test_a_maintainer_scripts_output_cannot_name_missing_versions() -> None:
    from sandboxmgr.builders import missing_pins

    # Anything in the packages' output reaches apt's log: only the pins asked for are named.
    log = ("E: Version '\x1b]0;owned\x07' for 'x' was not found\nE: Version '2.36-9' for 'libc6' was not found\n"
           "E: Version '9' for 'sbm-hello' was not found\nE: Version '2.36-9' for 'libc6:i386' was not found\n")
    assert missing_pins(log, ("libc6=2.36-9", "sbm-hello=1.0", "libc6:i386=2.36-9")) == [
        "libc6=2.36-9", "libc6:i386=2.36-9"]


def test_a_package_a_lock_cannot_name_is_never_skipped_in_silence() -> None:
    # dpkg takes a version of any length (a third-party repository's): skipped, it was in the
    # image, in no lock, and out of the check's sight.
    long = STANZA.format("sbm-hello", "m", "1.0") + "\n" + STANZA.format("other", "m", "1." + "0" * 300)
    with pytest.raises(SandboxError, match=r"the dpkg database has other 1\.0+\.\.\. \(all\), a name, version"):
        dpkgstatus.parse_status(long)
    assert dpkgstatus.parse_status(long.replace("install ok installed", "purge ok not-installed")) == []


# --- recreate and lock -o -------------------------------------------------------------------


def recreate_in(tmp_path: Path, report: Path, name: str | None = None) -> object:
    from sandboxmgr.locations import shipped_configs_dir
    from sandboxmgr.locking import recreate
    from sandboxmgr.profile import Profile, ProfileRegistry
    from sandboxmgr.store import ImageRecord

    def build(profile: Profile) -> ImageRecord:
        return ImageRecord("0123", tmp_path, {})

    return recreate(ProfileRegistry([shipped_configs_dir()]), report, "debian-bookworm", name, None, build)


def test_a_reports_file_name_is_text_in_the_recreated_profile(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxmgr.locking import Recreated

    monkeypatch.chdir(tmp_path)
    for number, name in enumerate(("bug: 12.txt", "*x", "[a] #b", "{setup: [x]}")):
        report = tmp_path / name
        report.write_text("ii  libc6  2.36-9\n")
        done = recreate_in(tmp_path, report, f"r{number}")
        assert isinstance(done, Recreated)
        assert done.profile.description == f"{name} recreated over debian-bookworm"
        assert done.profile.packages == ("libc6=2.36-9",) and done.profile.setup == ()


def test_recreate_never_writes_through_a_symlink_or_reads_a_fifo(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "report.txt"
    report.write_text("ii  libc6  2.36-9\n")
    # A dangling symlink planted where recreate writes (a shared directory): root made its target.
    (tmp_path / "elsewhere").mkdir()
    victim = tmp_path / "elsewhere" / "victim"
    (tmp_path / "debian-bookworm-report.yaml").symlink_to(victim)
    with pytest.raises(SandboxError, match=r"debian-bookworm-report\.yaml is a symlink; not overwritten"):
        recreate_in(tmp_path, report)
    assert not victim.exists()
    # A FIFO there: recreate read it to see whether it wrote it, and blocked for good.
    os.mkfifo(tmp_path / "fifo.yaml")
    done = in_thread(lambda: recreate_in(tmp_path, report, "fifo"), unblock=tmp_path / "fifo.yaml")
    assert done and isinstance(done[0], SandboxError), done
    assert "fifo.yaml exists and was not made by recreate" in str(done[0])


def test_lock_output_is_never_written_through_a_planted_symlink(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from sandboxmgr import locking
    from sandboxmgr.cli import cli
    from sandboxmgr.cli.app import App

    monkeypatch.setattr(App, "image_for", lambda self, profile: None)
    monkeypatch.setattr(locking, "take", lambda store, profile, record: a_lock())
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / ".out.lock.tmp").symlink_to(victim)  # the temporary name lock -o used, always the same
    result = CliRunner().invoke(cli, ["--store", str(tmp_path / "store"), "lock", "debian-bookworm", "-o", "out.lock"])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious\n"
    assert lockfile.load(tmp_path / "out.lock") == a_lock()


def test_lock_output_never_replaces_a_symlink_or_a_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from sandboxmgr import locking
    from sandboxmgr.cli import cli
    from sandboxmgr.cli.app import App

    monkeypatch.setattr(App, "image_for", lambda self, profile: None)
    monkeypatch.setattr(locking, "take", lambda store, profile, record: a_lock())
    # 'lock p -o /dev/stdout' renamed a regular file over the host's /dev/stdout; here, a copy of it.
    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")
    os.mkfifo(tmp_path / "fifo")
    for target in (stdout, tmp_path / "fifo"):
        result = CliRunner().invoke(cli, ["--store", str(tmp_path / "store"), "lock", "debian-bookworm",
                                          "-o", str(target)])
        assert result.exit_code != 0 and "is not a regular file; not replaced" in str(result.exception), result
    assert stdout.is_symlink() and os.readlink(stdout) == "/proc/self/fd/1"
    assert (tmp_path / "fifo").is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "stdout"]
