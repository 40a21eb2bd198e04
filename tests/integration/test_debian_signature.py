"""A Debian build against a keyring that does not hold the archive's key fails, with one line
that names the signature, and leaves nothing in the store.

The wrong keyring is a throwaway key made here with gpg: once named by the profile key
`bootstrap.keyring`, once put in the place of the family's default (the host's
debian-archive-keyring.gpg) in a mount namespace of the build's own, so the host's file is
never touched. Required on CI: the Debian mirror and gpg are what `make deps` and the rest of
the suite need anyway.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sandboxmgr import mountinfo
from tests.conftest import CLI, DEBIAN_KEYRING, DEBIAN_MIRROR, Result, missing, need_mirror, need_root

pytestmark = [pytest.mark.root, pytest.mark.network]


@pytest.fixture(scope="module")
def wrong_keyring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A keyring holding one key made for this test, and not the archive's."""
    need_root()
    gpg = shutil.which("gpg")
    if gpg is None:
        missing("gpg is not installed (make deps installs gnupg)")
        raise AssertionError  # missing() does not return
    where = tmp_path_factory.mktemp("wrong-keyring")
    home = where / "gnupg"
    home.mkdir(mode=0o700)
    base = [gpg, "--batch", "--homedir", str(home)]
    try:
        subprocess.run([*base, "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
                        "sandboxmgr test <wrong-key@example.invalid>", "ed25519", "sign", "never"],
                       check=True, capture_output=True, timeout=60)
        keyring = where / "wrong.gpg"
        keyring.write_bytes(subprocess.run([*base, "--export"], check=True, capture_output=True, timeout=60).stdout)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, timeout=60)
    assert keyring.stat().st_size > 0
    return keyring


def assert_refused_for_the_signature(result: Result, keyring: Path) -> None:
    assert result.code == 125, str(result)
    errors = [line for line in result.err.splitlines() if line.startswith("sandboxmgr: error:")]
    assert len(errors) == 1, result.err
    # Checked on the host against the profile's keyring, before any bootstrap (builders/debindex.py).
    assert errors[0].startswith(f"sandboxmgr: error: the package index of debian bookworm from {DEBIAN_MIRROR} "
                                f"does not verify: the Release file's signature did not verify against {keyring}"), \
        result.err
    assert "hint: check the mirror and bootstrap.keyring" in result.err, result.err
    assert "Traceback" not in result.err


def assert_nothing_built(store: Path) -> None:
    for top in ("images", "layers", "tmp"):
        assert not (store / top).exists() or list((store / top).iterdir()) == [], top
    assert not list(store.glob("cache/*/roots/*"))  # no kept bootstrap root either
    assert not mountinfo.mounts_under(store)


def test_a_profile_naming_a_wrong_keyring_fails_on_the_signature(wrong_keyring: Path, tmp_path: Path) -> None:
    need_mirror(DEBIAN_MIRROR, "bookworm")
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "forged.yaml").write_text(f"extends: debian-bookworm\nbootstrap:\n  keyring: {wrong_keyring}\n")
    cli = CLI(tmp_path / "store", configs)
    assert_refused_for_the_signature(cli("build", "forged"), wrong_keyring)
    assert_nothing_built(cli.store)
    # `run` builds first: refused the same way, and nothing runs.
    assert_refused_for_the_signature(cli("run", "forged", "true"), wrong_keyring)
    assert_nothing_built(cli.store)


def test_the_hosts_debian_keyring_swapped_for_a_wrong_one_fails_the_build(wrong_keyring: Path,
                                                                          tmp_path: Path) -> None:
    """The shipped profile as it is, with the family's default keyring: the host's file, replaced
    by the wrong keyring for this command alone (a bind mount in a mount namespace of its own)."""
    need_mirror(DEBIAN_MIRROR, "bookworm")
    if not DEBIAN_KEYRING.is_file():
        missing(f"{DEBIAN_KEYRING} is not installed (make deps installs debian-archive-keyring)")
    cli = CLI(tmp_path / "store")
    swapped = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
               'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(wrong_keyring), str(DEBIAN_KEYRING)]
    proc = subprocess.run([*swapped, *cli.argv("build", "debian-bookworm")], capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert_refused_for_the_signature(Result(proc.returncode, proc.stdout, proc.stderr), DEBIAN_KEYRING)
    assert_nothing_built(cli.store)
    assert str(DEBIAN_KEYRING) not in [entry.mount_point for entry in mountinfo.read()]  # the host's is as it was
