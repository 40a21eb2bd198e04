"""Lock files: the documented shape, a stable order, and a lock file read as hostile input (no root)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import yaml

from sandboxmgr.builders import missing_pins
from sandboxmgr.errors import ProfileError
from sandboxmgr.identity import identify
from sandboxmgr.locations import shipped_configs_dir
from sandboxmgr.locked import load as load_locked
from sandboxmgr.locked import pinned
from sandboxmgr.lockfile import Lock, Package, differences, dump, load, parse, snapshot_stamp
from sandboxmgr.profile import ProfileRegistry

PACKAGES = (Package("zlib1g", "amd64", "1:1.2.13.dfsg-1"), Package("adduser", "all", "3.134"),
            Package("sbm-hello", "all", "1.0"), Package("libc6", "i386", "2.36-9"))


def a_lock(*packages: Package) -> Lock:
    return Lock(profile="p", image="0123456789abcdef0123", distro="debian", release="bookworm", arch="amd64",
                mirror="http://deb.debian.org/debian", archive_date="Sat, 10 Feb 2024 09:50:14 UTC",
                packages=tuple(sorted(packages or PACKAGES)))


def test_a_lock_file_has_the_documented_keys_in_order_and_one_line_per_package(tmp_path: Path) -> None:
    text = dump(a_lock())
    assert text.startswith("# sandboxmgr lock file of profile p")
    data = yaml.safe_load(text)
    assert list(data) == ["lock_format", "profile", "image", "distro", "release", "arch", "mirror",
                          "archive_date", "packages"]
    assert data["packages"][0] == {"name": "adduser", "version": "3.134", "arch": "all"}
    # Sorted by name, then arch; each package a line of its own (diffs stay readable).
    assert [p["name"] for p in data["packages"]] == ["adduser", "libc6", "sbm-hello", "zlib1g"]
    assert "- {name: sbm-hello, version: '1.0', arch: all}\n" in text  # a version YAML would read as a number
    assert parse(tmp_path / "x.lock", text) == a_lock()
    assert dump(parse(tmp_path / "x.lock", text)) == text


def test_pins_name_foreign_architectures_only() -> None:
    assert a_lock().pins() == ("adduser=3.134", "libc6:i386=2.36-9", "sbm-hello=1.0", "zlib1g=1:1.2.13.dfsg-1")


def test_the_hint_names_a_snapshot_of_the_locks_archive_date() -> None:
    assert snapshot_stamp("Sat, 10 Feb 2024 09:50:14 UTC") == "20240210T095014Z"
    assert snapshot_stamp("Sat, 10 Feb 2024 10:50:14 +0100") == "20240210T095014Z"
    assert snapshot_stamp("yesterday") is None and snapshot_stamp(None) is None
    assert "https://snapshot.debian.org/archive/debian/20240210T095014Z/" in a_lock().snapshot_hint()
    ubuntu = Lock(**{**a_lock().__dict__, "distro": "ubuntu", "archive_date": None})
    assert "(unknown), e.g. https://snapshot.ubuntu.com/ubuntu/YYYYMMDDTHHMMSSZ/" in ubuntu.snapshot_hint()


@pytest.mark.parametrize("text,problem", [
    ("lock_format: [\n", "not valid YAML at line"),
    ("- a\n", "a YAML map is expected"),
    ("lock_format: 2\n", "lock_format 2 is not 1"),
    ("lock_format: 1\nextra: 1\n", "unknown key extra"),
    ("lock_format: 1\npackages: []\n", "packages must be a non-empty list"),
    ("lock_format: 1\npackages: [{name: a, version: 1}]\n", "must be a map of name, version and arch"),
    ("lock_format: 1\npackages: [{name: Bad, version: '1', arch: all}]\n",
     "packages[0].name Bad is not a valid package name"),
    ("lock_format: 1\npackages: [{name: a, version: '1 ; rm -rf /', arch: all}]\n", "packages[0].version"),
    ("lock_format: 1\npackages: [{name: a, version: '-1', arch: all}]\n", "packages[0].version"),
    ("lock_format: 1\npackages: [{name: a, version: '1', arch: all}, {name: a, version: '2', arch: all}]\n",
     "package a (all) is listed twice"),
    ("lock_format: 1\npackages: [{name: a, version: '1', arch: all}]\nprofile: \"x\\ny\"\n",
     "profile must be a line of text"),
])
def test_a_bad_lock_file_is_one_line_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse(tmp_path / "x.lock", text)
    assert caught.value.message.startswith(f"{tmp_path / 'x.lock'}: ")
    assert problem in caught.value.message and "\n" not in caught.value.message
    assert caught.value.hint is not None and "sandboxmgr lock" in caught.value.hint


def test_a_lock_file_is_bounded_and_never_blocks_on_a_fifo(tmp_path: Path) -> None:
    big = tmp_path / "big.lock"
    with open(big, "wb") as handle:
        handle.truncate((8 << 20) + 1)
    with pytest.raises(ProfileError, match="larger than 8 MiB"):
        load(big)
    fifo = tmp_path / "fifo.lock"
    os.mkfifo(fifo)
    failed: list[str] = []

    def read() -> None:
        try:
            load(fifo)
        except ProfileError as exc:
            failed.append(exc.message)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    assert failed and "not a regular file" in failed[0]
    with pytest.raises(ProfileError, match="cannot read the lock file"):
        load(tmp_path / "absent.lock")


def test_differences_name_what_is_missing_and_what_is_extra() -> None:
    lock = a_lock()
    assert differences(lock, list(lock.packages)) is None
    installed = [p for p in lock.packages if p.name != "adduser"] + [Package("tzdata", "all", "2024a-0")]
    found = differences(lock, installed)
    assert found == ("1 package not installed as locked: adduser=3.134 (all); "
                     "1 package installed but not locked: tzdata=2024a-0 (all)")
    newer = [Package(p.name, p.arch, "9.9") if p.name == "sbm-hello" else p for p in lock.packages]
    assert "sbm-hello=1.0 (all)" in str(differences(lock, newer)) and "sbm-hello=9.9" in str(differences(lock, newer))


def test_apt_saying_a_version_or_a_pinned_package_is_missing_names_the_pins() -> None:
    log = ("Reading package lists...\nE: Version '3.0' for 'sbm-hello' was not found\n"
           "E: Version '2.6.0' for 'apt' was not found\nE: Unable to locate package frob\n"
           "E: Unable to locate package plain\n")
    assert missing_pins(log, ("sbm-hello=3.0", "apt=2.6.0", "frob=1", "plain")) == [
        "sbm-hello=3.0", "apt=2.6.0", "frob=1"]


def write_profiles(tmp_path: Path, lock_text: str, extra: str = "") -> ProfileRegistry:
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "p.lock").write_text(lock_text)
    (tmp_path / "keyring.gpg").write_bytes(b"fixed\n")
    boot = f"bootstrap: {{method: mmdebstrap, keyring: {tmp_path / 'keyring.gpg'}}}\n"
    (tmp_path / "p.yaml").write_text(f"extends: debian-bookworm\narch: amd64\n{boot}packages: [sbm-hello]\n{extra}")
    (tmp_path / "locked.yaml").write_text(f"extends: p\nlock: locks/p.lock\n{extra}")
    (tmp_path / "child.yaml").write_text("extends: locked\n")
    return ProfileRegistry([shipped_configs_dir(), tmp_path])


def test_a_lock_is_part_of_the_image_key_and_a_layer_over_the_bootstrap(tmp_path: Path) -> None:
    registry = write_profiles(tmp_path, dump(a_lock()))
    plain, locked = registry.load("p"), registry.load("locked")
    assert locked.lock == str(tmp_path / "locks" / "p.lock")  # relative to the profile's file
    assert registry.load("child").lock is None  # not inherited: a child's packages differ
    before = identify(locked)
    assert [layer.kind for layer in before.layers] == ["bootstrap", "lock", "packages"]
    assert before.layers[0].key == identify(plain).layers[0].key  # the bootstrap is shared
    assert before.key != identify(plain).key
    (tmp_path / "locks" / "p.lock").write_text(dump(a_lock(*PACKAGES[:3])))
    after = identify(ProfileRegistry(registry.dirs).load("locked"))
    assert after.key != before.key and after.layers[1].key != before.layers[1].key


def test_a_profiles_packages_are_installed_as_the_lock_pins_them(tmp_path: Path) -> None:
    registry = write_profiles(tmp_path, dump(a_lock()))
    profile = registry.load("locked")
    lock = a_lock()
    assert pinned(lock, ("sbm-hello", "libc6:i386", "adduser=9", "make")) == (
        "sbm-hello=1.0", "libc6:i386=2.36-9", "adduser=3.134", "make")  # make: a build dependency
    assert load_locked(profile) == lock
    (tmp_path / "curl.yaml").write_text("extends: locked\npackages: [curl]\nlock: locks/p.lock\n")
    with pytest.raises(ProfileError, match=r"curl.yaml: curl of 'packages:' not in the lock .*p\.lock"):
        load_locked(ProfileRegistry(registry.dirs).load("curl"))


def test_the_built_image_must_have_exactly_the_locks_packages(tmp_path: Path) -> None:
    from sandboxmgr.errors import BuildError
    from sandboxmgr.locked import verify

    packages = (Package("sbm-hello", "all", "1.0"), Package("adduser", "all", "3.134"))
    registry = write_profiles(tmp_path, dump(a_lock(*packages)))
    layer = tmp_path / "layer" / "diff"
    (layer / "var/lib/dpkg").mkdir(parents=True)
    stanza = "Package: {}\nStatus: install ok installed\nArchitecture: all\nVersion: {}\n"
    status = layer / "var/lib/dpkg/status"
    status.write_text(stanza.format("adduser", "3.134") + "\n" + stanza.format("sbm-hello", "1.0"))
    verify(registry.load("locked"), [layer])
    status.write_text(stanza.format("adduser", "3.134") + "\n" + stanza.format("sbm-hello", "2.0"))
    with pytest.raises(BuildError, match=r"does not match .*p\.lock: 1 package not installed as locked: "
                                         r"sbm-hello=1\.0 \(all\); 1 package installed but not locked: sbm-hello=2\.0"):
        verify(registry.load("locked"), [layer])


def test_a_lock_is_refused_before_the_build_when_it_does_not_fit_the_profile(tmp_path: Path) -> None:
    from sandboxmgr.locked import load as load_locked

    registry = write_profiles(tmp_path, dump(a_lock()).replace("release: bookworm", "release: trixie"))
    with pytest.raises(ProfileError, match="locks debian trixie amd64, but profile locked is debian bookworm amd64"):
        load_locked(registry.load("locked"))
    (tmp_path / "rpm.yaml").write_text("extends: fedora-44\nlock: locks/p.lock\n")
    # A Debian lock for an RPM profile (each family has its own locks: lockfile.py).
    with pytest.raises(ProfileError, match="locks debian-family debian trixie amd64, but profile rpm is "
                                           "rpm-family fedora 44 x86_64"):
        load_locked(ProfileRegistry(registry.dirs).load("rpm"))


def test_a_runs_cached_answer_is_dropped_when_the_lock_file_changes(tmp_path: Path) -> None:
    registry = write_profiles(tmp_path, dump(a_lock()))
    # run's cache (runcache.py) watches a profile's input files: the lock is one of them.
    assert tmp_path / "locks" / "p.lock" in registry.load("locked").input_files()
    assert tmp_path / "locks" / "p.lock" not in registry.load("p").input_files()


@pytest.mark.parametrize("value", ["", "..", "/"])
def test_an_output_that_names_no_file_is_one_line(value: str) -> None:
    """``lock -o ''`` was an internal error (pathlib's with_name on '.')."""
    from sandboxmgr.errors import SandboxError
    from sandboxmgr.locking import write_file

    with pytest.raises(SandboxError, match="is not a file name"):
        write_file(Path(value), "text")
