"""The dnf builder against a real, local, signed RPM repository built by the tests."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sandboxmgr import mountinfo
from tests.conftest import CLI, need_fedora_mirrors, need_root
from tests.rpmrepo import GREETING, RpmRepo, tiny_profile

pytestmark = [pytest.mark.root]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, rpm_repo: RpmRepo) -> CLI:
    """The Tiny Distro image, built once for this module with the real dnf."""
    need_root()
    base = tmp_path_factory.mktemp("tiny")
    (base / "configs").mkdir()
    (base / "configs" / "tiny.yaml").write_text(tiny_profile(rpm_repo))
    cli = CLI(base / "store", base / "configs")
    cli.ok("build", "tiny")
    return cli


def image_of(cli: CLI, profile: str = "tiny") -> dict[str, Any]:
    (image,) = [i for i in json.loads(cli.ok("images", "--json").out) if i["profile"] == profile]
    return dict(image)


def test_run_shows_the_made_up_distro_on_the_hosts_kernel(tiny: CLI) -> None:
    result = tiny.ok("run", "tiny", "--", "sh", "-c", ". /etc/os-release; echo $ID $VERSION_ID; uname -r")
    assert result.out.splitlines() == ["tinydistro 1", platform.release()]


def test_the_dependency_was_resolved_and_installed(tiny: CLI) -> None:
    assert tiny.ok("run", "tiny", "tiny-hello").out.strip() == "hello from a dependency"


def test_the_rpmdb_inside_lists_what_was_installed(tiny: CLI, tmp_path: Path) -> None:
    image = image_of(tiny)
    layers = [Path(str(layer["path"])) / "diff" for layer in image["layers"]]
    assert [layer["kind"] for layer in image["layers"]] == ["bootstrap", "packages"]
    for rootfs in layers:
        # Debian's rpm defaults to ~/.rpmdb; the builder must have put the database where the target looks.
        assert not (rootfs / "root" / ".rpmdb").exists()
        assert not (rootfs / "etc" / "sandboxmgr").exists()
        cache = rootfs / "var" / "cache" / "dnf"
        assert not cache.exists() or list(cache.iterdir()) == []
    assert (layers[0] / "var" / "lib" / "rpm").is_dir()
    # Query the merged image with the host's rpm, in a private mount namespace of the test's own.
    merged = tmp_path / "merged"
    merged.mkdir()
    lowers = ":".join(str(layer) for layer in reversed(layers))
    script = (f"mount -t overlay overlay -o lowerdir={lowers} {merged} && "
              f"rpm -qa --root {merged} --dbpath /var/lib/rpm --qf '%{{NAME}}\\n'")
    query = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                           capture_output=True, text=True, check=True)
    names = set(query.stdout.split())
    assert {"tinydistro-release", "tinydistro-busybox", "tinydistro-filesystem",
            "tinydistro-hello", "tinydistro-greeting"} <= names


def test_packages_came_in_the_second_phase(tiny: CLI) -> None:
    (log,) = (tiny.store / "logs").glob("build-tiny-*.log")
    text = log.read_text()
    _bootstrap, _, second = text.partition("install tinydistro-release tinydistro-busybox")
    assert second, "the bootstrap phase did not install the release package"
    # The image carries no dnf of its own, so the second phase says so and uses the host's.
    assert "no dnf inside the image; packages installed with the host's dnf" in second
    assert "install tinydistro-hello" in second


def test_exec_in_a_named_sandbox_explains_why_dnf_is_missing(tiny: CLI) -> None:
    tiny.ok("create", "tiny", "--name", "c1")
    try:
        result = tiny("exec", "c1", "dnf", "install", "-y", "tinydistro-greeting")
        assert result.code == 127
        assert "dnf: command not found in the sandbox" in result.err
        tiny.ok("exec", "c1", "sh", "-c", "echo persisted > /root/note")
        assert tiny.ok("exec", "c1", "cat", "/root/note").out == "persisted\n"
    finally:
        tiny.ok("rm", "c1")


def test_a_profile_given_as_a_path_works(tiny: CLI, rpm_repo: RpmRepo, tmp_path: Path) -> None:
    path = tmp_path / "my-rpm-distro.yaml"
    path.write_text(tiny_profile(rpm_repo))
    result = tiny.ok("run", str(path), "--", "cat", "/etc/os-release")
    assert 'NAME="Tiny Distro"' in result.out


@pytest.mark.parametrize("case", ["unsigned", "other-key"])
def test_a_signature_that_does_not_verify_fails_cleanly(case: str, rpm_repo: RpmRepo, tmp_path: Path) -> None:
    repo_dir = rpm_repo.unsigned if case == "unsigned" else rpm_repo.other_signed
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "bad.yaml").write_text(tiny_profile(rpm_repo, repo_dir=repo_dir))
    cli = CLI(tmp_path / "store", tmp_path / "configs")
    result = cli("build", "bad")
    assert result.code == 125
    assert "a package signature did not verify while bootstrapping bad" in result.err
    assert "gpgcheck is on" in result.err
    assert_nothing_left(cli)


def test_a_missing_package_fails_cleanly(rpm_repo: RpmRepo, tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "typo.yaml").write_text(
        tiny_profile(rpm_repo, packages="[tinydistro-hello, tinydistro-nonexistent]"))
    cli = CLI(tmp_path / "store", tmp_path / "configs")
    result = cli("run", "typo", "true")
    assert result.code == 125
    assert "package tinydistro-nonexistent does not exist in the repositories of typo" in result.err
    # The complete bootstrap layer stays for the next attempt, until prune.
    assert list((cli.store / "images").iterdir()) == []
    assert "removed 0 older images and 1 unused layer\n" in cli.ok("prune").out
    assert_nothing_left(cli)


def test_an_unreachable_repository_fails_cleanly(rpm_repo: RpmRepo, tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    text = tiny_profile(rpm_repo).replace(rpm_repo.baseurl(rpm_repo.signed), "http://127.0.0.1:9/repo")
    (tmp_path / "configs" / "offline.yaml").write_text(text)
    cli = CLI(tmp_path / "store", tmp_path / "configs")
    result = cli("build", "offline")
    assert result.code == 125
    assert "a repository of offline cannot be reached" in result.err
    assert_nothing_left(cli)


def test_removing_the_image_leaves_nothing(rpm_repo: RpmRepo, tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "gone.yaml").write_text(tiny_profile(rpm_repo))
    cli = CLI(tmp_path / "store", tmp_path / "configs")
    cli.ok("build", "gone")
    cli.ok("rmi", "gone")
    assert_nothing_left(cli)


def test_a_rebuild_links_the_kept_root_until_the_repository_changes(rpm_repo: RpmRepo, tmp_path: Path) -> None:
    """The bootstrap's root is kept; a rebuild against the same repodata links it instead
    of bootstrapping, a changed repository (or --no-cache) bootstraps again."""
    repo = tmp_path / "repo"
    shutil.copytree(rpm_repo.signed, repo)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "kept.yaml").write_text(tiny_profile(rpm_repo, repo_dir=repo))
    cli = CLI(tmp_path / "store", tmp_path / "configs")
    first = cli.ok("build", "kept")
    assert "bootstrap: host dnf installing" in first.err
    assert "keeping the root for the next build" in first.err
    (kept,) = (cli.store / "cache").glob("*/roots/*/diff")
    layer = Path(image_of(cli, "kept")["layers"][0]["path"]) / "diff"
    # Hard links: the kept root costs no space while the layer exists.
    assert (kept / "etc/os-release").stat().st_ino == (layer / "etc/os-release").stat().st_ino

    # rmi says what it keeps.
    assert "kept: its bootstrap root, for the next build of kept" in cli.ok("rmi", "kept").out
    assert_nothing_left(cli)
    again = cli.ok("build", "kept")
    assert "the mirror's index is unchanged; linking the kept root" in again.err
    assert "host dnf installing" not in again.err
    assert "Tiny Distro" in cli.ok("run", "kept", "--", "cat", "/etc/os-release").out
    assert cli.ok("run", "kept", "--", "tiny-hello").out.strip() == GREETING

    # build --no-cache bootstraps afresh, whatever is kept.
    fresh = cli.ok("build", "--no-cache", "kept")
    assert "host dnf installing" in fresh.err and "linking the kept root" not in fresh.err

    # The repository's index changes (new repodata revision): the kept root is stale.
    subprocess.run(["createrepo_c", "--quiet", "--no-database", "--revision", "2", str(repo)], check=True)
    cli.ok("rmi", "kept")
    changed = cli.ok("build", "kept")
    assert "host dnf installing" in changed.err and "linking the kept root" not in changed.err

    # prune --cache removes the kept roots; the image stays usable.
    assert "removed 1 kept bootstrap root\n" in cli.ok("prune", "--cache").out
    assert not list((cli.store / "cache").glob("*/roots/*"))
    assert cli.ok("run", "kept", "--", "true").code == 0
    assert "kept:" not in cli.ok("rmi", "kept").out  # nothing kept any more

    # Keeping a root is best effort: when it fails, the build warns and succeeds.
    (roots,) = (cli.store / "cache").glob("*/roots")
    roots.rmdir()
    roots.write_text("in the way\n")
    warned = cli.ok("build", "kept")
    assert "warning: cannot keep the bootstrap root" in warned.err
    assert cli.ok("run", "kept", "--", "tiny-hello").out.strip() == GREETING
    cli.ok("rmi", "kept")
    assert_nothing_left(cli)


def test_dnf_missing_on_the_host_is_one_clear_error(rpm_repo: RpmRepo, tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text(tiny_profile(rpm_repo))
    cli = CLI(tmp_path / "store", tmp_path / "configs")
    env_path = "/nonexistent-bin"
    proc = subprocess.run([*cli.argv("build", "tiny")], capture_output=True, text=True,
                          env={**os.environ, "PATH": env_path}, timeout=120)
    assert proc.returncode == 125
    assert "sandboxmgr: error: dnf is not installed" in proc.stderr
    assert "apt-get install dnf" in proc.stderr


def assert_nothing_left(cli: CLI) -> None:
    assert list((cli.store / "images").iterdir()) == []
    assert list((cli.store / "layers").iterdir()) == []
    assert list((cli.store / "tmp").iterdir()) == []
    assert not mountinfo.mounts_under(cli.store)


def test_the_real_fedora_profile_when_its_mirrors_answer(tmp_path: Path) -> None:
    """Only where Fedora's mirrors are reachable; the local repository above is the main proof."""
    need_fedora_mirrors()
    cli = CLI(tmp_path / "store")
    result = cli.ok("run", "fedora", "--", "sh", "-c", ". /etc/os-release; echo $ID")
    assert result.out.strip() == "fedora"
