"""OCI export and import: the session's debian-bookworm image (with one setup layer that deletes a
file, replaces a directory and hard-links a file: an overlayfs whiteout, an opaque directory,
a hard link) written as an OCI image layout, read by skopeo and umoci, written again byte for
byte, and imported back - from the layout, from an oci-archive, and through skopeo from a
docker-archive - into a store of its own, where `run` and `create` use it.

podman is not used: it cannot run containers on this machine (a hybrid cgroup hierarchy), and
skopeo and umoci read the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import CLI, ConcurrentBuild, missing
from tests.ocilayout import Entry, Layout, busybox_image
from tests.rootless import OrdinaryUser

pytestmark = [pytest.mark.root, pytest.mark.network]

PROFILE = "oci-whiteouts"
STEP = ("rm /etc/debian_version && rm -rf /etc/apt/apt.conf.d && mkdir /etc/apt/apt.conf.d && "
        "echo kept > /etc/apt/apt.conf.d/99oci && echo new > /etc/oci-added && ln /etc/oci-added /etc/oci-link")


def need_tools() -> None:
    for tool in ("skopeo", "umoci"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed (make deps installs it)")


@pytest.fixture(scope="module")
def whiteouts(cli: CLI, bookworm: ConcurrentBuild) -> str:
    """debian-bookworm and one setup layer with a whiteout, an opaque directory and a hard link."""
    need_tools()
    assert cli.configs is not None
    (cli.configs / f"{PROFILE}.yaml").write_text(f"extends: {bookworm.profile}\nsetup:\n  - {json.dumps(STEP)}\n")
    cli.ok("build", PROFILE)
    return PROFILE


def digests(layout: Path) -> dict[str, str]:
    """Every file of a layout (or an archive) with its sha256."""
    files = [layout] if layout.is_file() else sorted(path for path in layout.rglob("*") if path.is_file())
    return {str(path.relative_to(layout.parent)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def skopeo_inspect(reference: str) -> dict[str, object]:
    found = subprocess.run(["skopeo", "inspect", reference], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    result: dict[str, object] = json.loads(found.stdout)
    return result


def test_export_is_an_oci_image_skopeo_and_umoci_read(cli: CLI, whiteouts: str, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    cli.ok("export", whiteouts, "-o", str(layout))
    index = json.loads((layout / "index.json").read_text())
    (descriptor,) = index["manifests"]
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == whiteouts
    image = skopeo_inspect(f"oci:{layout}:{whiteouts}")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine]
    assert (image["Os"], image["Architecture"]) == ("linux", arch)
    assert len(image["Layers"]) == 2  # type: ignore[arg-type]

    bundle = tmp_path / "bundle"
    unpack = subprocess.run(["umoci", "unpack", "--image", f"{layout}:{whiteouts}", str(bundle)],
                            capture_output=True, text=True)
    assert unpack.returncode == 0, unpack.stderr
    rootfs = bundle / "rootfs"
    assert (rootfs / "etc" / "os-release").read_text() == cli.ok("run", whiteouts, "cat", "/etc/os-release").out
    assert not (rootfs / "etc" / "debian_version").exists()  # the whiteout
    assert os.listdir(rootfs / "etc" / "apt" / "apt.conf.d") == ["99oci"]  # the opaque directory
    assert os.stat(rootfs / "etc" / "oci-link").st_ino == os.stat(rootfs / "etc" / "oci-added").st_ino
    mode = cli.ok("run", whiteouts, "stat", "-c", "%a %u:%g", "/usr/bin/passwd").out.split()
    assert mode == [f"{os.stat(rootfs / 'usr/bin/passwd').st_mode & 0o7777:o}", "0:0"] and mode[0] == "4755"


def test_exporting_twice_gives_the_same_digests(cli: CLI, whiteouts: str, tmp_path: Path) -> None:
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        cli.ok("export", whiteouts, "-o", str(tmp_path / name / "layout"))
        cli.ok("export", whiteouts, "-o", str(tmp_path / name / "image.tar"), "--format", "oci-archive")
    assert digests(tmp_path / "first" / "layout") == digests(tmp_path / "second" / "layout")
    assert digests(tmp_path / "first" / "image.tar") == digests(tmp_path / "second" / "image.tar")
    again = cli("export", whiteouts, "-o", str(tmp_path / "first" / "layout"))
    assert again.code == 125 and "exists already" in again.err, str(again)


def test_an_imported_export_runs_and_exports_the_same_layers(cli: CLI, whiteouts: str, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    cli.ok("export", whiteouts, "-o", str(archive), "--format", "oci-archive")
    other = CLI(tmp_path / "store")  # a store of its own: the session's keeps built images only
    result = other.ok("import", str(archive), "--as", "copy", "--json")
    (row,) = json.loads(result.out)
    assert row["name"] == "copy" and row["new"] is True and len(row["layers"]) == 2
    check = "test ! -e /etc/debian_version && ls /etc/apt/apt.conf.d && cat /etc/os-release"
    assert other.ok("run", "copy", "sh", "-c", check).out == "99oci\n" + cli.ok("run", whiteouts, "cat",
                                                                                 "/etc/os-release").out
    assert other.ok("create", "copy", "--name", "box").out.strip() == "box"
    assert other.ok("exec", "box", "cat", "/etc/oci-added").out == "new\n"
    other.ok("rm", "box")
    again = json.loads(other.ok("import", str(archive), "--as", "copy", "--json").out)[0]
    assert again["new"] is False and again["key"] == row["key"]

    other.ok("export", "copy", "-o", str(tmp_path / "re-exported"))
    cli.ok("export", whiteouts, "-o", str(tmp_path / "exported"))
    layers = [json.loads((tmp_path / name / "blobs" / "sha256" / manifest_digest(tmp_path / name)).read_text())
              ["layers"] for name in ("exported", "re-exported")]
    assert layers[0] == layers[1]  # the same bytes, layer for layer: nothing lost on the way
    other.ok("rmi", "copy")


def manifest_digest(layout: Path) -> str:
    digest: str = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    return digest.removeprefix("sha256:")


def test_import_through_skopeo_from_a_docker_archive(cli: CLI, whiteouts: str, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    cli.ok("export", whiteouts, "-o", str(layout))
    docker = tmp_path / "docker.tar"
    copied = subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}:{whiteouts}", f"docker-archive:{docker}"],
                            capture_output=True, text=True)
    assert copied.returncode == 0, copied.stderr
    other = CLI(tmp_path / "store")
    other.ok("import", f"docker-archive:{docker}", "--as", "from-docker")
    assert other.ok("run", "from-docker", "cat", "/etc/oci-added").out == "new\n"
    other.ok("rmi", "from-docker")
    refused = other("import", f"docker-archive:{tmp_path / 'none.tar'}", "--as", "nothing")
    assert refused.code == 125 and "skopeo cannot copy" in refused.err, str(refused)
    assert refused.err.count("sandboxmgr: error:") == 1, str(refused)


def test_an_import_never_takes_a_profiles_name(cli: CLI, whiteouts: str, tmp_path: Path) -> None:
    cli.ok("export", whiteouts, "-o", str(tmp_path / "layout"))
    result = cli("import", str(tmp_path / "layout"), "--as", "debian-bookworm")
    assert result.code == 125 and "is a profile's name or alias" in result.err, str(result)


def test_ctrl_c_during_an_import_leaves_no_image_and_no_layer(cli: CLI, whiteouts: str, tmp_path: Path) -> None:
    cli.ok("export", whiteouts, "-o", str(tmp_path / "layout"))
    other = CLI(tmp_path / "store")
    proc = subprocess.Popen(other.argv("import", str(tmp_path / "layout"), "--as", "cut"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "unpacking layer 1/2" in line:
            break
    time.sleep(0.5)  # into the bootstrap layer's files (a few seconds of them)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, rest
    for top in ("images", "layers", "tmp"):
        assert not os.listdir(other.store / top), f"{top}/ holds {os.listdir(other.store / top)}"
    assert json.loads(other.ok("images", "--json").out) == []


BUSYBOX_CHECK = "ls /d; test -e /gone || echo gone"


def busybox_layout(tmp_path: Path) -> Path:
    busybox = shutil.which("busybox")
    if busybox is None:
        missing("busybox is not installed (make deps installs busybox-static)")
        raise AssertionError
    Layout(tmp_path / "layout").image(busybox_image(Path(busybox).read_bytes()))
    return tmp_path / "layout"


def test_whiteouts_of_an_imported_image_hide_what_they_hide(tmp_path: Path) -> None:
    other = CLI(tmp_path / "store")
    other.ok("import", str(busybox_layout(tmp_path)), "--as", "tiny-oci")
    assert other.ok("run", "tiny-oci", "sh", "-c", BUSYBOX_CHECK).out == "c\ngone\n"


def test_an_ordinary_user_imports_and_runs_an_image(rootless_user: OrdinaryUser, tmp_path: Path) -> None:
    # In the user's user namespace: owners chown'd there, whiteouts made there, user.overlay.opaque.
    layout = busybox_layout(tmp_path)
    shutil.copytree(layout, rootless_user.home / "layout")
    try:
        rootless_user.ok("import", str(rootless_user.home / "layout"), "--as", "tiny-oci")
        assert rootless_user.ok("run", "tiny-oci", "sh", "-c", BUSYBOX_CHECK).out == "c\ngone\n"
        rootless_user.ok("rmi", "tiny-oci")
        shutil.rmtree(rootless_user.home / "layout")
        Layout(rootless_user.home / "layout").image([[Entry("owned", uid=200_000)]])
        refused = rootless_user("import", str(rootless_user.home / "layout"), "--as", "beyond")
        assert refused.code == 125 and "layer 1: entry owned cannot be made" in refused.err, str(refused)
        assert refused.err.count("sandboxmgr: error:") == 1, str(refused)
    finally:
        shutil.rmtree(rootless_user.home / "layout")


@pytest.mark.parametrize("order", ["whiteout-first", "directory-first"])
def test_a_directory_and_its_whiteout_in_one_layer_hide_the_lower_one(tmp_path: Path, order: str) -> None:
    # image-spec: a whiteout applies to the lower layers only; this layer's own d/ stays, and
    # the lower d/'s files are gone, whichever comes first in the tar.
    busybox = shutil.which("busybox")
    if busybox is None:
        missing("busybox is not installed (make deps installs busybox-static)")
        raise AssertionError
    base, _ = busybox_image(Path(busybox).read_bytes())
    new = [Entry("d/", tarfile.DIRTYPE, mode=0o755), Entry("d/c", data=b"c")]
    upper = [Entry(".wh.d"), *new] if order == "whiteout-first" else [*new, Entry(".wh.d")]
    Layout(tmp_path / "layout").image([base, upper])
    other = CLI(tmp_path / "store")
    other.ok("import", str(tmp_path / "layout"), "--as", "replaced")
    assert other.ok("run", "replaced", "ls", "/d").out == "c\n"


def test_a_profile_made_later_under_an_imported_name_wins_even_broken(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    other = CLI(tmp_path / "store", configs)
    other.ok("import", str(busybox_layout(tmp_path)), "--as", "later")
    assert other.ok("run", "later", "sh", "-c", BUSYBOX_CHECK).out == "c\ngone\n"
    (configs / "later.yaml").write_text("distro: [\n")  # a profile of that name, broken
    for verb in (("run", "later", "true"), ("create", "later", "--name", "box")):
        result = other(*verb)
        assert result.code == 125 and "later.yaml" in result.err, str(result)
