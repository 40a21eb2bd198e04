"""Attack 10: the shared package cache and the bootstrap tools, as a hostile sandbox or build uses them.

The attack that once reached the host: a sandbox replaced a cached .deb with a
same-size trojan (apt trusts a cached file whose size matches the index), and the
next bootstrap installed it, its maintainer script running where /proc/1/root
was the host's /. Each test here makes the trojan for real (dpkg-deb, a postinst
that writes a marker and tries the host), and checks that no sandbox writes the
cache, that nothing planted in it is ever used, and that a bootstrap's scripts
do not see the host's tree.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLI, REPO, ConcurrentBuild, debian_archives, missing

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

CACHED = debian_archives()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def with_hello(cli: CLI, bookworm: ConcurrentBuild) -> str:
    """A profile over the session's bookworm with `hello` in a packages layer (so hello's
    .deb is in the cache); its name."""
    assert cli.configs is not None
    (cli.configs / "cache-victim.yaml").write_text("extends: debian-bookworm\npackages: [hello]\n")
    cli.ok("build", "cache-victim")
    return "cache-victim"


def hello_deb(cli: CLI) -> Path:
    (deb,) = (cli.store / CACHED).glob("hello_*_amd64.deb")
    return deb


def make_trojan(genuine: Path, out: Path, host_marker: Path) -> None:
    """``genuine`` with a postinst that leaves a marker and reads the host through
    /proc/1/root, padded to the genuine file's size (what apt checks)."""
    if subprocess.run(["which", "dpkg-deb"], capture_output=True).returncode != 0:
        missing("dpkg-deb is not installed")
    tree = out.parent / "trojan-tree"
    subprocess.run(["dpkg-deb", "-R", str(genuine), str(tree)], check=True)
    postinst = tree / "DEBIAN" / "postinst"
    postinst.write_text(f"#!/bin/sh\ntouch /TROJAN-RAN\ncat /proc/1/root{host_marker} > /TROJAN-SAW-HOST 2>&1\n"
                        f"touch /proc/1/root/tmp/TROJAN-ON-HOST 2>/dev/null\nexit 0\n")
    postinst.chmod(0o755)
    # Smaller than the genuine package, so padding can give it the genuine size.
    subprocess.run(["rm", "-rf", str(tree / "usr/share/locale"), str(tree / "usr/share/info")], check=True)
    subprocess.run(["dpkg-deb", "-Zxz", "-z9", "-b", str(tree), str(out)], check=True, capture_output=True)
    size = genuine.stat().st_size
    if out.stat().st_size <= size:
        with open(out, "ab") as handle:  # ar tolerates the padding; what matters is the size apt sees
            handle.write(b"\n" * (size - out.stat().st_size))


def assert_no_trojan(cli: CLI, image: str) -> None:
    result = cli.ok("run", image, "sh", "-c", "ls /TROJAN-RAN /TROJAN-SAW-HOST 2>&1; true")
    assert "No such file" in result.out, result.out
    assert not Path("/tmp/TROJAN-ON-HOST").exists()


def test_a_sandbox_cannot_change_the_shared_package_cache(cli: CLI, with_hello: str, tmp_path: Path,
                                                          host_marker: Path) -> None:
    genuine = hello_deb(cli)
    before = sha256(genuine)
    listing = sorted(p.name for p in (cli.store / CACHED).iterdir())
    trojan = tmp_path / "trojan.deb"
    make_trojan(genuine, trojan, host_marker)
    assert trojan.stat().st_size == genuine.stat().st_size
    # Root inside a sandbox replaces the cached .deb with the same-size trojan, plants a
    # symlink and a new file; from an ephemeral run and from a named sandbox.
    attack = (f"cp /trojan/trojan.deb /var/cache/apt/archives/{genuine.name} && "
              "ln -sf /etc/shadow /var/cache/apt/archives/planted_1_amd64.deb && "
              "echo x > /var/cache/apt/archives/new_1_amd64.deb && "
              f"cmp /trojan/trojan.deb /var/cache/apt/archives/{genuine.name} && echo replaced-inside")
    assert "replaced-inside" in cli.ok("run", "-v", f"{tmp_path}:/trojan:ro", "debian-bookworm",
                                       "sh", "-c", attack).out
    cli.ok("create", "--name", "cache-attacker", "-v", f"{tmp_path}:/trojan:ro", "debian-bookworm")
    try:
        assert "replaced-inside" in cli.ok("exec", "cache-attacker", "sh", "-c", attack).out
        # The sandbox's own copy stays its own (copy-on-write), the cache never changes.
        assert "replaced-inside" in cli.ok("exec", "cache-attacker", "sh", "-c",
                                           f"cmp /trojan/trojan.deb /var/cache/apt/archives/{genuine.name}"
                                           " && echo replaced-inside").out
    finally:
        cli.ok("rm", "cache-attacker")
    assert sha256(genuine) == before
    assert sorted(p.name for p in (cli.store / CACHED).iterdir()) == listing
    # Another sandbox's apt-get install, and a rebuild of the image's packages layer, get the genuine hello.
    installed = cli.ok("run", "debian-bookworm", "sh", "-c",
                       "apt-get install -y -q hello >/dev/null && hello && ls /TROJAN-RAN 2>&1; true")
    assert "Hello, world!" in installed.out and "No such file" in installed.out, installed.out
    cli.ok("build", "--rebuild", with_hello)
    assert_no_trojan(cli, with_hello)
    assert sha256(genuine) == before


def test_a_trojan_planted_in_the_cache_is_refused_and_replaced_before_a_build_uses_it(
        cli: CLI, with_hello: str, tmp_path: Path, host_marker: Path) -> None:
    """As if written by a local user with access to the store, or by an older version whose
    sandboxes could write the cache: the next build verifies every cached package first."""
    genuine = hello_deb(cli)
    before = sha256(genuine)
    trojan = tmp_path / "trojan.deb"
    make_trojan(genuine, trojan, host_marker)
    trojan.replace(genuine)  # same name, same size, other content
    # And a bootstrap package replaced by same-size garbage, and a symlink planted.
    (victim,) = (cli.store / CACHED).glob("base-files_*.deb")
    victim.write_bytes(b"\0" * victim.stat().st_size)
    (cli.store / CACHED / "zz-planted_1_all.deb").symlink_to("/etc/shadow")
    result = cli.ok("build", "--no-cache", with_hello)
    assert f"removing {genuine}" in result.err, result.err
    assert f"removing {victim}" in result.err
    assert "zz-planted_1_all.deb from the package cache" in result.err
    assert_no_trojan(cli, with_hello)
    assert sha256(genuine) == before  # downloaded again, verified, kept
    assert not (cli.store / CACHED / "zz-planted_1_all.deb").exists()
    assert not (cli.store / CACHED / "zz-planted_1_all.deb").is_symlink()


def test_a_symlink_planted_in_the_cache_is_never_followed_by_debootstrap(
        cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path) -> None:
    """debootstrap writes what it downloads into its --cache-dir: a symlink there named like a
    package it needs once made it write a root-owned file where the sandbox chose."""
    assert cli.configs is not None
    (cli.configs / "cache-deboot.yaml").write_text(
        "extends: debian-bookworm\nbootstrap:\n  method: debootstrap\n  variant: minbase\n")
    cache = cli.store / CACHED
    (victim,) = cache.glob("base-files_*.deb")
    name = victim.name
    victim.unlink()
    target = tmp_path / "written-by-debootstrap"
    (cache / name).symlink_to(target)
    result = cli.ok("build", "--no-cache", "cache-deboot")
    assert f"removing {cache / name}" in result.err
    assert not target.exists() and not target.is_symlink()
    assert (cache / name).is_file() and not (cache / name).is_symlink()
    cli.ok("rmi", "cache-deboot")


def test_the_bootstrap_tool_and_its_maintainer_scripts_do_not_see_the_hosts_tree(
        cli: CLI, bookworm: ConcurrentBuild, host_marker: Path) -> None:
    """What a maintainer script sees during the bootstrap, probed by mmdebstrap hooks: one in
    the new root (chroot, as dpkg runs the scripts), one as the tool itself."""
    assert cli.configs is not None
    probe_in = (f'--customize-hook=chroot "$1" sh -c "cat /proc/1/root{host_marker} > /probe-proc1 2>&1;'
                ' ls /proc/1/root/ > /probe-ls 2>&1; grep Cap /proc/self/status > /probe-caps"; true')
    probe_out = (f'--customize-hook=cat {host_marker} > "$1"/probe-tool 2>&1;'
                 ' cat /etc/shadow > "$1"/probe-shadow 2>&1; ls / > "$1"/probe-tool-ls; true')
    (cli.configs / "cache-probe.yaml").write_text(
        "extends: debian-bookworm\nbootstrap:\n  method: mmdebstrap\n"
        f"  extra_args: {json.dumps([probe_in, probe_out])}\n")
    cli.ok("build", "cache-probe")
    try:
        seen = cli.ok("run", "cache-probe", "sh", "-c",
                      "for f in /probe-*; do echo \"== $f\"; cat $f; done").out
    finally:
        cli.ok("rmi", "cache-probe")
    marker_text = host_marker.read_text().strip()
    assert marker_text not in seen, seen
    assert "== /probe-proc1" in seen and "== /probe-tool" in seen
    listing = seen.split("== /probe-ls")[1].split("==")[0].split()
    # /proc/1/root is the tool root: the host's /usr and /etc (read-only), nothing of /home, /root, /work ...
    assert "usr" in listing and "etc" in listing
    assert not {"home", "boot", "srv", "work", "opt", "mnt", "media"} & set(listing), listing
    shadow = seen.split("== /probe-shadow")[1].split("==")[0].strip()
    assert shadow == "" or "root:" not in shadow, shadow
    # No capability to mount (or remount what is read-only), make device nodes, load modules,
    # do raw I/O, ptrace, set the clock or open_by_handle_at (DAC_READ_SEARCH).
    caps = int(seen.split("CapBnd:")[1].split()[0], 16)
    for cap in (2, 16, 17, 19, 21, 25, 27):  # DAC_READ_SEARCH MODULE RAWIO PTRACE SYS_ADMIN TIME MKNOD
        assert not caps & (1 << cap), hex(caps)


def test_a_debian_build_against_a_wrong_keyring_is_refused(tmp_path: Path, bookworm: ConcurrentBuild) -> None:
    """The signed index is verified on the host before anything is taken from the cache."""
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "forged.yaml").write_text(
        "extends: debian-bookworm\n"
        f"bootstrap:\n  keyring: {REPO / 'configs/keys/ubuntu-archive-keyring.gpg'}\n")
    cli = CLI(tmp_path / "store", configs)
    result = cli("build", "forged")
    assert result.code == 125, str(result)
    assert "does not verify" in result.err and "signature" in result.err, result.err
    assert "hint: check the mirror and bootstrap.keyring" in result.err
    assert [p.name for p in (cli.store / "images").iterdir()] == []
    assert [p.name for p in (cli.store / "tmp").iterdir()] == []
