"""Attack: a hostile OCI image, imported. An image from elsewhere is someone else's tarballs.

Each test hand-makes a layout (tests/ocilayout.py) whose layer or documents try to write
outside the layer's directory - a ``..`` path, an absolute one, a symlink to a host directory
then a file through it, a hard link to a host file - or carry a device node, or lie about
their manifest. Each is refused with one line (or, for the device, neutralised with one
warning), the host directory the tar aims at is untouched, and the store holds no image, no
layer and no temporary tree of the attempt.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CLI, Result, need_root
from tests.ocilayout import Entry, Layout, minimal_root

pytestmark = [pytest.mark.adversarial, pytest.mark.root]


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """The host directory the attacks aim at, with a canary; unchanged after each test."""
    need_root()
    target = tmp_path / "outside"
    target.mkdir()
    (target / "canary").write_text("host canary\n")
    yield target
    assert sorted(os.listdir(target)) == ["canary"], "the import wrote into a host directory"
    assert (target / "canary").read_text() == "host canary\n"
    assert os.stat(target / "canary").st_nlink == 1, "the import hard-linked a host file"


@pytest.fixture
def store_cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path / "store")


def imported_nothing(cli: CLI) -> None:
    for top in ("images", "layers", "tmp"):
        directory = cli.store / top
        assert not directory.exists() or not os.listdir(directory), f"{top}/ holds {os.listdir(directory)}"


def refused(result: Result, words: str) -> None:
    assert result.code == 125, str(result)
    errors = [line for line in result.err.splitlines() if line.startswith("sandboxmgr: error:")]
    assert len(errors) == 1 and words in errors[0], str(result)
    assert "Traceback" not in result.err, str(result)


def attempt(cli: CLI, tmp_path: Path, layers: list[list[Entry]]) -> Result:
    Layout(tmp_path / "layout").image(layers)
    return cli("import", str(tmp_path / "layout"), "--as", "hostile")


def test_a_dotdot_path_is_refused(store_cli: CLI, tmp_path: Path, outside: Path) -> None:
    escape = "../" * 12 + str(outside.relative_to("/")) + "/pwned"
    refused(attempt(store_cli, tmp_path, [[*minimal_root(), Entry(escape, data=b"x")]]), "leaves the layer")
    imported_nothing(store_cli)


def test_an_absolute_path_is_refused(store_cli: CLI, tmp_path: Path, outside: Path) -> None:
    refused(attempt(store_cli, tmp_path, [[Entry(str(outside / "pwned"), data=b"x")]]), "is an absolute path")
    imported_nothing(store_cli)


@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_a_file_through_a_symlink_is_refused(store_cli: CLI, tmp_path: Path, outside: Path, target: str) -> None:
    link = str(outside) if target == "absolute" else "../" * 12 + str(outside.relative_to("/"))
    layers = [[*minimal_root(), Entry("etc/evil", tarfile.SYMTYPE, linkname=link), Entry("etc/evil/pwned", data=b"x")]]
    refused(attempt(store_cli, tmp_path, layers), "which is a symlink")
    imported_nothing(store_cli)


def test_a_symlink_in_a_lower_layer_is_not_followed_either(store_cli: CLI, tmp_path: Path, outside: Path) -> None:
    layers = [[*minimal_root(), Entry("opt", tarfile.SYMTYPE, linkname=str(outside))],
              [Entry("opt/pwned", data=b"x")]]
    result = attempt(store_cli, tmp_path, layers)
    # Each layer is unpacked alone: "opt" is a directory of the upper layer's own, as overlayfs
    # shows it (an upper directory over a lower symlink), never a way out.
    assert result.code == 0, str(result)
    assert not (outside / "pwned").exists()
    store_cli.ok("rmi", "hostile")


@pytest.mark.parametrize("linkname", ["absolute", "dotdot", "through-symlink", "missing"])
def test_a_hard_link_out_is_refused(store_cli: CLI, tmp_path: Path, outside: Path, linkname: str) -> None:
    targets = {"absolute": str(outside / "canary"),
               "dotdot": "../" * 12 + str(outside.relative_to("/") / "canary"),
               "through-symlink": "etc/evil/canary", "missing": "etc/nothing"}
    entries = [*minimal_root(), Entry("etc/evil", tarfile.SYMTYPE, linkname=str(outside)),
               Entry("etc/stolen", tarfile.LNKTYPE, linkname=targets[linkname])]
    words = {"absolute": "is an absolute path", "dotdot": "leaves the layer",
             "through-symlink": "which is a symlink", "missing": "not a regular file of this layer"}
    refused(attempt(store_cli, tmp_path, [entries]), words[linkname])
    imported_nothing(store_cli)


def test_a_whiteout_of_dotdot_is_refused(store_cli: CLI, tmp_path: Path, outside: Path) -> None:
    refused(attempt(store_cli, tmp_path, [[*minimal_root(), Entry("etc/.wh...")]]), "whites out nothing")
    imported_nothing(store_cli)


def test_device_nodes_are_left_out_with_one_warning(store_cli: CLI, tmp_path: Path, outside: Path) -> None:
    entries = [*minimal_root(), Entry("disk", tarfile.BLKTYPE, device=(8, 0)),
               Entry("etc/mem", tarfile.CHRTYPE, device=(1, 1)),
               Entry("etc/fake-whiteout", tarfile.CHRTYPE, device=(0, 0))]
    result = attempt(store_cli, tmp_path, [entries])
    assert result.code == 0, str(result)
    warnings = [line for line in result.err.splitlines() if "device node" in line]
    assert len(warnings) == 1 and "3 device nodes left out" in warnings[0], str(result)
    for directory, _dirs, files in os.walk(store_cli.store / "layers"):
        for name in files:
            mode = os.lstat(Path(directory) / name).st_mode
            assert not (stat.S_ISBLK(mode) or stat.S_ISCHR(mode)), f"a device node in the store: {directory}/{name}"
    store_cli.ok("rmi", "hostile")


def test_overlayfs_xattrs_in_a_layer_are_not_set(store_cli: CLI, tmp_path: Path, outside: Path) -> None:
    # trusted.overlay.redirect on a directory would make overlayfs look elsewhere in the lowers.
    entries = [*minimal_root(), Entry("opt/", tarfile.DIRTYPE, mode=0o755,
                                      pax={"SCHILY.xattr.trusted.overlay.redirect": "/etc",
                                           "SCHILY.xattr.trusted.overlay.opaque": "y"})]
    result = attempt(store_cli, tmp_path, [entries])
    assert result.code == 0, str(result)
    (layer,) = (store_cli.store / "layers").iterdir()
    assert [name for name in os.listxattr(layer / "diff" / "opt") if name.startswith("trusted.")] == []
    store_cli.ok("rmi", "hostile")


def test_a_huge_manifest_is_refused_before_it_is_read(store_cli: CLI, tmp_path: Path, outside: Path) -> None:
    layout = Layout(tmp_path / "layout")
    descriptor = layout.image([minimal_root()])
    layout.index([descriptor | {"size": 5 << 30}])
    refused(store_cli("import", str(layout.root), "--as", "hostile"), "more than")
    imported_nothing(store_cli)


@pytest.mark.parametrize("lie", ["not-json", "bad-digest", "path-digest", "no-index", "symlinked-blob"])
def test_an_invalid_layout_is_refused(store_cli: CLI, tmp_path: Path, outside: Path, lie: str) -> None:
    layout = Layout(tmp_path / "layout")
    descriptor = layout.image([minimal_root()])
    blob = layout.root / "blobs" / "sha256" / descriptor["digest"][7:]
    words = {"not-json": "is not JSON", "bad-digest": "does not match its digest", "path-digest": "no sha256 digest",
             "no-index": "index.json", "symlinked-blob": "is a symlink"}[lie]
    if lie == "not-json":
        layout.index([layout.blob(b"{not json") | {"mediaType": descriptor["mediaType"]}])
    elif lie == "bad-digest":
        blob.write_bytes(blob.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion":3'))
    elif lie == "path-digest":
        layout.index([descriptor | {"digest": "sha256:../../../../etc/passwd"}])
    elif lie == "no-index":
        (layout.root / "index.json").unlink()
    else:
        (outside.parent / "copy").write_bytes(blob.read_bytes())
        blob.unlink()
        blob.symlink_to(outside.parent / "copy")
    refused(store_cli("import", str(layout.root), "--as", "hostile"), words)
    imported_nothing(store_cli)


def test_a_bad_second_layer_leaves_no_layer_of_the_first(store_cli: CLI, tmp_path: Path, outside: Path) -> None:
    layers = [minimal_root(), [Entry("../../escape", data=b"x")]]
    refused(attempt(store_cli, tmp_path, layers), "layer 2: entry")
    imported_nothing(store_cli)


def test_a_layer_that_does_not_match_its_diff_id_is_refused(store_cli: CLI, tmp_path: Path, outside: Path) -> None:
    layout = Layout(tmp_path / "layout")
    layout.image([minimal_root()], config={"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}})
    refused(store_cli("import", str(layout.root), "--as", "hostile"), "does not match its diff_id")
    imported_nothing(store_cli)


@pytest.mark.parametrize("oddity", ["nul-in-name", "nul-in-linkname", "huge-mtime", "long-name", "huge-owner"])
def test_an_impossible_entry_is_one_line(store_cli: CLI, tmp_path: Path, outside: Path, oddity: str) -> None:
    entry = {"nul-in-name": Entry("etc/a", pax={"path": "etc/a\0b"}),
             "nul-in-linkname": Entry("etc/l", tarfile.SYMTYPE, pax={"linkpath": "/etc\0/x"}),
             "huge-mtime": Entry("etc/old", pax={"mtime": "1e300"}),
             "long-name": Entry("etc/" + "n" * 300),
             "huge-owner": Entry("etc/owned", pax={"uid": str(1 << 40)})}[oddity]
    result = attempt(store_cli, tmp_path, [[*minimal_root(), entry]])
    refused(result, "layer 1: entry")
    assert "internal error" not in result.err, str(result)
    imported_nothing(store_cli)
