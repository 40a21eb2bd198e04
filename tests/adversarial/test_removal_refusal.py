"""Safe removal's refusal: a mount in a sandbox or a layer that the detached unmount cannot reach.

A bind mount hidden under another one (mounted over its parent directory) is listed in
mountinfo at a path that now leads into the covering mount: unmounting that path cannot
detach it. `rm` and `rmi` must then refuse with exit 125, delete nothing, and leave the
sandbox or image where it was, so that the command the hint suggests works once the mount
is gone.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxmgr import mountinfo
from tests.conftest import CLI, ConcurrentBuild, Result

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

IMAGE = "debian-bookworm"


@pytest.fixture
def host_dir(tmp_path: Path) -> Iterator[Path]:
    """A host directory with a canary, which must survive whatever is refused or removed."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "canary").write_text("must survive\n")
    yield precious
    assert (precious / "canary").read_text() == "must survive\n"


def plant_hidden_mount(where: Path, host_dir: Path, cover: Path) -> Path:
    """``host_dir`` bound at where/hidden/mnt, then ``cover`` bound over where/hidden: the
    first mount is still there, under the second. Returns where the first one is."""
    hidden = where / "hidden" / "mnt"
    hidden.mkdir(parents=True)
    cover.mkdir()
    subprocess.run(["mount", "--bind", str(host_dir), str(hidden)], check=True)
    subprocess.run(["mount", "--bind", str(cover), str(hidden.parent)], check=True)
    assert str(hidden) in mountinfo.mounts_under(where)
    return hidden


def unmount_all(top: Path) -> None:
    """The test's own mounts under ``top``, gone (whatever the test left)."""
    while mountinfo.mounts_under(top):
        subprocess.run(["umount", "-l", mountinfo.mounts_under(top)[-1]], check=True)


def assert_refused(result: Result, tree: Path, hidden: Path) -> None:
    """Exit 125, one line naming the tree and the mount, and a hint that says what to do."""
    assert result.code == 125, str(result)
    errors = [line for line in result.err.splitlines() if line.startswith("sandboxmgr: error:")]
    assert errors == [f"sandboxmgr: error: refusing to delete {tree}: {hidden} is still mounted inside it"], result.err
    assert f"hint: unmount it (umount -l {hidden}) and try again; nothing was deleted" in result.err, result.err


def test_rm_refuses_a_sandbox_with_a_mount_it_cannot_detach_and_keeps_it(
        cli: CLI, bookworm: ConcurrentBuild, host_dir: Path, tmp_path: Path) -> None:
    name = "stuck"
    cli.ok("create", IMAGE, "--name", name)
    cli.ok("exec", name, "sh", "-c", "echo mine > /kept")
    upper = cli.store / "sandboxes" / name / "upper"
    try:
        hidden = plant_hidden_mount(upper, host_dir, tmp_path / "cover")
        refused = cli("rm", name)
        assert_refused(refused, cli.store / "sandboxes" / name, hidden)
        # Nothing deleted, nothing moved: the sandbox is where it was, whole, and listed.
        assert (upper / "kept").read_text() == "mine\n"
        assert str(hidden) in mountinfo.mounts_under(upper)
        assert name in [row["name"] for row in json.loads(cli.ok("ls", "--json").out)]
        assert list((cli.store / "tmp").iterdir()) == []
        # What the hint says, then rm again: done, and the host's files are untouched.
        subprocess.run(["umount", "-l", str(hidden)], check=True)
        cli.ok("rm", name)
        assert not (cli.store / "sandboxes" / name).exists()
    finally:
        unmount_all(cli.store)  # wherever the test left it
        if (cli.store / "sandboxes" / name).exists():
            cli("rm", name)
    assert not mountinfo.mounts_under(cli.store)


def test_rmi_refuses_an_image_whose_layer_has_a_mount_it_cannot_detach_and_keeps_it(
        cli: CLI, bookworm: ConcurrentBuild, host_dir: Path, tmp_path: Path) -> None:
    assert cli.configs is not None
    name = "stuck-image"
    (cli.configs / f"{name}.yaml").write_text("extends: debian-bookworm\nsetup: [echo stuck > /etc/stuck]\n")
    cli.ok("build", name)
    (image,) = [row for row in json.loads(cli.ok("images", "--json").out) if row["profile"] == name]
    top = Path(image["layers"][-1]["path"])  # its own layer, no other image's
    try:
        hidden = plant_hidden_mount(top / "diff", host_dir, tmp_path / "cover")
        refused = cli("rmi", name)
        assert_refused(refused, top, hidden)
        # The image, its record and every layer: still there, and it still runs.
        rows = [row for row in json.loads(cli.ok("images", "--json").out) if row["profile"] == name]
        assert [row["key"] for row in rows] == [image["key"]]
        assert all(Path(layer["path"]).is_dir() for layer in image["layers"])
        assert cli.ok("run", name, "cat", "/etc/stuck").out == "stuck\n"
        assert list((cli.store / "tmp").iterdir()) == []
        subprocess.run(["umount", "-l", str(hidden)], check=True)
        cli.ok("rmi", name)
        assert not top.exists()
    finally:
        unmount_all(cli.store)
        cli("rmi", name)
    assert not mountinfo.mounts_under(cli.store)
