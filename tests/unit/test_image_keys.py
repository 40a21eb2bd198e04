"""Image keys are the names of images in users' stores: a refactor must never change them.
Each shipped profile, pinned to one architecture, method and keyring, has the key it had
when this test was written (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxmgr.identity import image_key, layers
from sandboxmgr.locations import shipped_configs_dir
from sandboxmgr.profile import ProfileRegistry

# (shipped profile, arch, method, the image key of a child that pins them)
PINNED = [
    ("almalinux-9", "x86_64", "dnf", "848ccf1e7a1341186178"),
    ("centos-stream-10", "x86_64", "dnf", "721511bc8f1cf549405b"),
    ("centos-stream-9", "x86_64", "dnf", "f233b385f3a18e9ded07"),
    ("debian-bookworm", "amd64", "mmdebstrap", "5846c8355741077e3a65"),
    ("debian-bullseye", "amd64", "debootstrap", "e911014be5261e345712"),
    ("debian-forky", "arm64", "mmdebstrap", "572c3304e9a0dd97cfcc"),
    ("debian-sid", "amd64", "mmdebstrap", "07e55f3c530222ae78d7"),
    ("debian-trixie", "amd64", "mmdebstrap", "1ea187bf5d75f3b9c59d"),
    ("fedora-44", "x86_64", "dnf", "77d6449d891c6dba64a5"),
    ("fedora-45", "aarch64", "dnf", "b7d9f82837a77e8de79d"),
    ("rocky-9", "x86_64", "dnf", "3cde303d5efa16e438b8"),
    ("ubuntu-jammy", "amd64", "debootstrap", "1547af52a677a0666c03"),
    # From ports.ubuntu.com since the foreign-architecture work: before, archive.ubuntu.com, which has no
    # arm64, so no store can hold an image of the old key (4fc0b4b02401df29c1a6).
    ("ubuntu-noble", "arm64", "debootstrap", "714d7d154830da999a65"),
    ("ubuntu-resolute", "amd64", "mmdebstrap", "a3cf6d25d924cc37c3c4"),
]


def child(tmp_path: Path, parent: str, arch: str, method: str) -> str:
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"a keyring of fixed bytes\n")
    boot = f"{{method: {method}}}" if method == "dnf" else f"{{method: {method}, keyring: {keyring}}}"
    if parent.startswith("ubuntu"):
        boot = f"{{method: {method}}}"  # the shipped keyring file is part of the checkout
    (tmp_path / "pin.yaml").write_text(
        f"extends: {parent}\narch: {arch}\nbootstrap: {boot}\npackages: [less]\n"
        "env: {GREETING: hello}\nsetup: ['echo $GREETING > /greeting', 'true']\n")
    return "pin"


@pytest.mark.parametrize("parent,arch,method,key", PINNED)
def test_image_keys_of_shipped_profiles_never_change(tmp_path: Path, parent: str, arch: str, method: str,
                                                      key: str) -> None:
    registry = ProfileRegistry([shipped_configs_dir(), tmp_path])
    profile = registry.load(child(tmp_path, parent, arch, method))
    assert image_key(profile) == key


def test_image_key_of_a_custom_rpm_distro_that_bootstraps_its_packages(tmp_path: Path) -> None:
    (tmp_path / "key.asc").write_bytes(b"a gpg key of fixed bytes\n")
    (tmp_path / "tiny.yaml").write_text(
        "distro: tinydistro\nrelease: '1'\narch: x86_64\nbootstrap: {method: dnf}\npackages: [bash, tiny-release]\n"
        f"repositories: [{{name: tiny, baseurl: 'file:///srv/repo', gpgkey: 'file://{tmp_path}/key.asc'}}]\n")
    profile = ProfileRegistry([tmp_path]).load("tiny")
    assert [layer.kind for layer in layers(profile)] == ["bootstrap"]
    assert image_key(profile) == "c7543ff4c8b8e822f275"


def test_a_keyring_that_is_a_fifo_or_a_device_is_never_opened_for_the_image_key(tmp_path: Path) -> None:
    """Every verb that computes a key (profiles, run) digests the keyring: a FIFO would hang it
    (opening one blocks until a writer comes) and /dev/zero would never end."""
    import hashlib
    import os

    from sandboxmgr.identity import file_digest

    fifo = tmp_path / "keyring.gpg"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(OSError, match="not a regular file"):
            file_digest(path)
    big = tmp_path / "big.gpg"
    with open(big, "wb") as handle:
        handle.truncate((16 << 20) + 1)  # sparse
    with pytest.raises(OSError, match="larger than 16 MiB"):
        file_digest(big)
    small = tmp_path / "small.gpg"
    small.write_bytes(b"key")
    assert file_digest(small) == hashlib.sha256(b"key").hexdigest()
