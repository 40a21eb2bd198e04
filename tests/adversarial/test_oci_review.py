"""Attack: a hostile OCI image, second round - what the first suite (test_oci_import_attacks.py)
left out: tars whose headers cost memory or a recursion rather than a path, trees too deep for
the store's walks, and an export's temporary name planted beforehand.

Each hostile tar is refused in one line (exit 125) and leaves nothing in the store.
"""

from __future__ import annotations

import ctypes
import io
import os
import stat
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.adversarial.test_oci_import_attacks import imported_nothing, refused
from tests.conftest import CLI, Result, need_root
from tests.ocilayout import Entry, Layout, minimal_root

pytestmark = [pytest.mark.adversarial, pytest.mark.root]


def attempt(cli: CLI, tmp_path: Path, layers: list[list[Entry] | bytes]) -> Result:
    Layout(tmp_path / "layout").image(layers)
    return cli("import", str(tmp_path / "layout"), "--as", "hostile")


def pax_chain(count: int) -> bytes:
    """A tar whose one file is preceded by ``count`` PAX headers (tarfile reads each with a recursion)."""
    header = tarfile.TarInfo("././@PaxHeader")
    record = b"20 comment=aaaaaaaa\n"
    header.type, header.size = tarfile.XHDTYPE, len(record)
    block = header.tobuf(tarfile.USTAR_FORMAT) + record + b"\0" * (tarfile.BLOCKSIZE - len(record))
    return block * count + tarfile.TarInfo("etc/x").tobuf(tarfile.USTAR_FORMAT) + b"\0" * 1024


def sparse_file(real_size: int) -> bytes:
    """A tar of one PAX (GNU 1.0) sparse file of ``real_size`` bytes, all of them a hole."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("etc/GNUSparseFile.0/sparse")
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "etc/sparse",
                            "GNU.sparse.realsize": str(real_size)}
        sparse_map = b"1\n0\n0\n".ljust(tarfile.BLOCKSIZE, b"\0")
        info.size = len(sparse_map)
        tar.addfile(info, io.BytesIO(sparse_map))
    return out.getvalue()


@pytest.mark.parametrize("attack", ["huge-pax", "pax-chain", "sparse", "deep"])
def test_a_tar_that_costs_memory_or_a_recursion_is_refused(tmp_path: Path, attack: str) -> None:
    # huge-pax: tarfile reads a PAX header whole (a gzip layer of 8 MB holds one of 8 GB);
    # pax-chain: 2000 of them before one file was a RecursionError, an internal error;
    # sparse: its holes were written out whole (a few bytes of tar, any size on disk);
    # deep: a tree 300 levels deep, which rmi and export walk with a recursion.
    need_root()
    cli = CLI(tmp_path / "store")
    layers: dict[str, list[Entry] | bytes] = {
        "huge-pax": [Entry("etc/big", pax={"comment": "x" * (2 << 20)})],
        "pax-chain": pax_chain(2000),
        "sparse": sparse_file(64 << 20),
        "deep": [Entry("/".join(["d"] * 300) + "/f", data=b"x")],
    }
    layer = layers[attack]
    words = {"huge-pax": "more than 1048576", "pax-chain": "more than 8 PAX headers", "sparse": "is a sparse file",
             "deep": "directories deep, more than 256"}[attack]
    refused(attempt(cli, tmp_path, [minimal_root(), layer]), words)
    imported_nothing(cli)


class Repeated(io.RawIOBase):
    """A tar stream of ``count`` copies of one entry, made as it is read (never whole in memory)."""

    def __init__(self, entry: tarfile.TarInfo, count: int) -> None:
        self.block, self.left, self.pending = entry.tobuf(tarfile.USTAR_FORMAT), count, b""
        self.ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while len(self.pending) < len(buffer) and self.left:
            batch = min(self.left, 1000)
            self.pending += self.block * batch
            self.left -= batch
        if not self.left and not self.ended:
            self.pending += b"\0" * 1024  # the end of the archive
            self.ended = True
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size


@pytest.mark.parametrize("kind", [tarfile.DIRTYPE, tarfile.REGTYPE], ids=["directory", "file"])
def test_a_layer_of_many_entries_does_not_grow_the_memory(tmp_path: Path, kind: bytes) -> None:
    # The same entry 40000 times: nothing on disk grows, but tarfile kept every entry it read
    # (and the unpacker each directory entry): about 500 bytes each, so 5 GB for a 10-million
    # entry layer of 10 MB of gzip. Both are now forgotten once made.
    need_root()
    from sandboxmgr.ociunpack import unpack_layer

    entry = tarfile.TarInfo("x")
    entry.type, entry.mode, entry.mtime = kind, 0o755, 1
    (tmp_path / "diff").mkdir()
    tracemalloc.start()
    try:
        unpack_layer(io.BufferedReader(Repeated(entry, 40_000)), tmp_path / "diff", "layer 1", "trusted.overlay.opaque")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert os.listdir(tmp_path / "diff") == ["x"]
    assert peak < 4 << 20, f"unpacking 40000 copies of one entry took {peak} bytes at its peak"


@pytest.mark.parametrize("fmt", ["oci-dir", "oci-archive"])
def test_an_export_never_writes_through_a_name_planted_beside_dest(tmp_path: Path, fmt: str) -> None:
    # DEST's directory may be another user's to write (a shared project directory): the export's
    # temporary names were known beforehand (.DEST.partial-PID, -layout), and root's tar went
    # through a symlink planted there, onto any file of the host (here a canary).
    need_root()
    from sandboxmgr.ociexport import export
    from sandboxmgr.store import Store

    cli = CLI(tmp_path / "store")
    Layout(tmp_path / "layout").image([minimal_root()])
    cli.ok("import", str(tmp_path / "layout"), "--as", "plain")
    shared = tmp_path / "shared"
    shared.mkdir()
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "file").write_text("host canary\n")
    for suffix in ("", "-layout"):
        (shared / f".out.partial-{os.getpid()}{suffix}").symlink_to(canary / "file" if suffix == "" and
                                                                       fmt == "oci-archive" else canary)
    store = Store(cli.store)
    (image,) = store.images()
    written = export(store, image, shared / "out", fmt, lambda _line: None)
    assert written["path"] == str(shared / "out")
    assert sorted(os.listdir(canary)) == ["file"] and (canary / "file").read_text() == "host canary\n"
    assert (shared / "out").is_dir() == (fmt == "oci-dir") and not (shared / "out").is_symlink()
    assert sorted(name for name in os.listdir(shared) if name != "out") == sorted(
        f".out.partial-{os.getpid()}{suffix}" for suffix in ("", "-layout")), "a leftover, or a planted link removed"


def test_an_export_into_the_store_is_refused(tmp_path: Path) -> None:
    need_root()
    cli = CLI(tmp_path / "store")
    Layout(tmp_path / "layout").image([minimal_root()])
    cli.ok("import", str(tmp_path / "layout"), "--as", "plain")
    (layer,) = (cli.store / "layers").iterdir()
    result = cli("export", "plain", "-o", str(layer / "diff" / "etc" / "exported"))
    refused(result, "is inside the store")
    assert sorted(os.listdir(layer / "diff" / "etc")) == ["passwd"]


@pytest.mark.parametrize("verb", ["run", "create"])
def test_an_alias_made_later_under_an_imported_name_wins_even_broken(tmp_path: Path, verb: str) -> None:
    # As a profile file of that name does (test_oci.py): the user's alias names their profile,
    # whose error they must see - the imported image ran instead.
    need_root()
    configs = tmp_path / "configs"
    configs.mkdir()
    cli = CLI(tmp_path / "store", configs)
    Layout(tmp_path / "layout").image([minimal_root()])
    cli.ok("import", str(tmp_path / "layout"), "--as", "later")
    (configs / "mine.yaml").write_text("aliases: [later]\ndistro: no-such-distro\nrelease: x\n")
    result = cli(*(("create", "later", "--name", "box") if verb == "create" else ("run", "later", "true")))
    assert result.code == 125 and "mine.yaml" in result.err, str(result)
    assert not (cli.store / "sandboxes" / "box").exists()


def opened(path: Path, action: Callable[[], object]) -> bool:
    """Whether ``action`` opens ``path`` (inotify's IN_OPEN, which a device node reports too)."""
    libc = ctypes.CDLL(None, use_errno=True)
    watcher = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert watcher >= 0, os.strerror(ctypes.get_errno())
    try:
        assert libc.inotify_add_watch(watcher, os.fsencode(path), 0x20) >= 0, os.strerror(ctypes.get_errno())
        action()
        try:
            return bool(os.read(watcher, 4096))
        except BlockingIOError:
            return False
    finally:
        os.close(watcher)


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_layout_s_device_node_or_fifo_is_never_opened(tmp_path: Path, kind: str) -> None:
    # A layout directory is someone else's (unpacked by root from their tar, say): its
    # index.json a device node was opened (O_NONBLOCK, then refused as not a regular file) - an
    # act of its own for a watchdog, a tape or a tty. Now it is looked at first, never opened.
    need_root()
    cli = CLI(tmp_path / "store")
    Layout(tmp_path / "layout").image([minimal_root()])
    index = tmp_path / "layout" / "index.json"
    index.unlink()
    if kind == "device":
        os.mknod(index, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers: harmless if opened
    else:
        os.mkfifo(index, 0o600)
    results: list[Result] = []
    assert not opened(index, lambda: results.append(cli("import", str(tmp_path / "layout"), "--as", "hostile")))
    refused(results[0], "index.json")
    imported_nothing(cli)
