"""Foreign architectures: debian-bookworm for arm64, built and run on this host through qemu-user's
binfmt_misc handler (README, "Foreign architectures"). Slow: the build runs every maintainer script
under emulation. The missing-handler errors are unit tests (tests/unit/test_binfmt.py): the host's
handlers are changed only by make deps, through the distribution's packages."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ARM64_PROFILE, CLI, ConcurrentBuild
from tests.rootless import OrdinaryUser

pytestmark = [pytest.mark.root, pytest.mark.network, pytest.mark.slow]


def test_an_arm64_image_runs_arm64_programs_with_nothing_of_qemu_inside(cli: CLI, bookworm_arm64: str,
                                                                        bookworm: ConcurrentBuild) -> None:
    assert cli.ok("run", bookworm_arm64, "--", "uname", "-m").out == "aarch64\n"
    assert cli.ok("run", bookworm_arm64, "--", "dpkg", "--print-architecture").out == "arm64\n"
    # The F flag: the kernel opened qemu on the host; the image holds no interpreter of it.
    inside = cli.ok("run", bookworm_arm64, "--", "sh", "-c",
                    "ls /usr/bin/qemu-* /usr/libexec/qemu-binfmt 2>/dev/null | wc -l").out
    assert inside == "0\n"
    images = {i["profile"]: i for i in json.loads(cli.ok("images", "--json").out)}
    assert images[bookworm_arm64]["arch"] == "arm64" and images["debian-bookworm"]["arch"] == "amd64"
    assert images[bookworm_arm64]["key"] != images["debian-bookworm"]["key"]  # the key holds the arch


def test_userns_auto_and_a_named_sandbox_run_it_too(cli: CLI, bookworm_arm64: str) -> None:
    assert cli.ok("run", "--userns", "auto", bookworm_arm64, "--", "sh", "-c", "id -u; uname -m").out \
        == "0\naarch64\n"
    name = "arm64-named"
    cli.ok("create", bookworm_arm64, "--name", name)
    try:
        cli.ok("exec", name, "sh", "-c", "uname -m > /kept")
        assert cli.ok("exec", name, "cat", "/kept").out == "aarch64\n"
    finally:
        cli.ok("rm", name)


def test_a_matrix_runs_one_project_on_amd64_and_arm64(cli: CLI, bookworm: ConcurrentBuild, bookworm_arm64: str,
                                                      tmp_path: Path) -> None:
    (tmp_path / "sandboxmgr.yaml").write_text(
        f"profiles: [debian-bookworm, {bookworm_arm64}]\ncommand: dpkg --print-architecture\n")
    result = subprocess.run(cli.argv("matrix", "-C", str(tmp_path), "--json"), capture_output=True, text=True,
                            timeout=900, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    found = {r["name"]: (r["status"], Path(r["log"]).read_text()) for r in json.loads(result.stdout)}
    assert found == {"debian-bookworm": ("passed", "amd64\n"), bookworm_arm64: ("passed", "arm64\n")}


def test_the_doctor_finds_the_handler_of_the_stores_arm64_image(cli: CLI, bookworm_arm64: str) -> None:
    findings = json.loads(cli("doctor", "--json").out)
    assert not [f for f in findings if f["kind"] == "binfmt"], findings


def test_an_ordinary_user_builds_and_runs_it_rootless(rootless_user: OrdinaryUser, bookworm_arm64: str) -> None:
    user = rootless_user
    user.profiles.mkdir(parents=True, exist_ok=True)
    for path in (user.home / ".config", user.home / ".config" / "sandboxmgr", user.profiles):
        os.chown(path, user.uid, user.gid)
    name, text = ARM64_PROFILE
    (user.profiles / f"{name}.yaml").write_text(text)
    user.ok("build", name, timeout=1500)
    result = user.ok("run", name, "--", "sh", "-c", "id -u; uname -m; touch /x")
    assert result.out == "0\naarch64\n"


def multi_platform_layout(cli: CLI, images: dict[str, str], out: Path) -> Path:
    """One layout holding the exports of ``images`` (OCI architecture -> profile), named by a
    nested index as skopeo and docker write a multi-platform image."""
    root = out / "multi"
    (root / "blobs" / "sha256").mkdir(parents=True)
    entries = []
    for arch, profile in images.items():
        cli.ok("export", profile, "-o", str(out / arch))
        for blob in (out / arch / "blobs" / "sha256").iterdir():
            if not (root / "blobs" / "sha256" / blob.name).exists():  # a layer both share (none today)
                os.link(blob, root / "blobs" / "sha256" / blob.name)
        (manifest,) = json.loads((out / arch / "index.json").read_text())["manifests"]
        entries.append({key: manifest[key] for key in ("mediaType", "digest", "size")}
                       | {"platform": {"os": "linux", "architecture": arch}})
    index = "application/vnd.oci.image.index.v1+json"
    inner = json.dumps({"schemaVersion": 2, "mediaType": index, "manifests": entries}).encode()
    name = hashlib.sha256(inner).hexdigest()
    (root / "blobs" / "sha256" / name).write_bytes(inner)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": index, "digest": "sha256:" + name, "size": len(inner)}]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return root


def test_a_multi_platform_image_imports_this_machines_platform_or_the_one_asked(
        cli: CLI, bookworm: ConcurrentBuild, bookworm_arm64: str, tmp_path: Path) -> None:
    layout = multi_platform_layout(cli, {"amd64": bookworm.profile, "arm64": bookworm_arm64}, tmp_path)
    other = CLI(tmp_path / "store")
    native = json.loads(other.ok("import", str(layout), "--as", "multi-native", "--json").out)[0]
    arm = json.loads(other.ok("import", str(layout), "--as", "multi-arm", "--platform", "linux/arm64",
                              "--json").out)[0]
    assert (native["arch"], arm["arch"]) == ("amd64", "arm64")
    assert other.ok("run", "multi-native", "--", "uname", "-m").out == "x86_64\n"
    assert other.ok("run", "multi-arm", "--", "uname", "-m").out == "aarch64\n"
    refused = other("import", str(layout), "--as", "multi-s390x", "--platform", "s390x")
    assert refused.code == 125 and refused.err.splitlines()[0] == (
        "sandboxmgr: error: the image has no linux/s390x version (it has: linux/amd64, linux/arm64)"), str(refused)
    other.ok("rmi", "multi-native", "multi-arm")
