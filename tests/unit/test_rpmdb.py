"""The rpmdb reader (rpmdb.py): an RPM image's installed set read from its layers' sqlite rpmdb,
a hostile file - its header blobs parsed with strict bounds, sqlite told not to trust it (no root)."""

from __future__ import annotations

import os
import sqlite3
import struct
from pathlib import Path

import pytest

from sandboxmgr import rpmdb
from sandboxmgr.errors import BuildError, SandboxError
from sandboxmgr.lockfile import Package
from sandboxmgr.rpmdb import ARCH, EPOCH, INT32, NAME, RELEASE, STRING, VERSION, HeaderError, header_fields

Entry = tuple[int, int, bytes, int]  # tag, type, data, count


def blob(entries: list[Entry], pad: bool = True) -> bytes:
    """An rpm header blob: count, data size, the index, then the data (INT32s 4-aligned)."""
    index, data = b"", b""
    for tag, kind, value, count in entries:
        if kind == INT32 and pad:
            data += b"\0" * (-len(data) % 4)
        index += struct.pack(">IIII", tag, kind, len(data), count)
        data += value
    return struct.pack(">II", len(entries), len(data)) + index + data


def header(name: str = "bash", version: str = "5.2.15", release: str = "3.fc38", arch: str = "x86_64",
           epoch: int | None = None) -> bytes:
    entries: list[Entry] = [(NAME, STRING, name.encode() + b"\0", 1), (VERSION, STRING, version.encode() + b"\0", 1),
                            (RELEASE, STRING, release.encode() + b"\0", 1), (ARCH, STRING, arch.encode() + b"\0", 1)]
    if epoch is not None:
        entries.append((EPOCH, INT32, struct.pack(">I", epoch), 1))
    return blob(entries)


def database(path: Path, blobs: list[bytes], wal: bool = True, schema: str = "") -> bytes:
    """An rpmdb.sqlite as rpm writes it (its Packages table, WAL mode), its bytes."""
    connection = sqlite3.connect(path)
    if wal:
        connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(schema or "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)")
    if not schema:
        connection.executemany("INSERT INTO Packages (blob) VALUES (?)", [(b,) for b in blobs])
    connection.commit()
    connection.close()
    return path.read_bytes()


def layer_with(tmp_path: Path, data: bytes, place: str = "var/lib/rpm", name: str = "layer") -> Path:
    diff = tmp_path / name / "diff"
    (diff / place).mkdir(parents=True)
    (diff / place / "rpmdb.sqlite").write_bytes(data)
    return diff


def test_the_installed_set_is_read_with_epochs_and_without_imported_keys(tmp_path: Path) -> None:
    key = blob([(NAME, STRING, b"gpg-pubkey\0", 1), (VERSION, STRING, b"a3b98d03\0", 1),
                (RELEASE, STRING, b"6b0d321d\0", 1)])  # an imported key: no arch, not a package
    data = database(tmp_path / "db", [header(), header("perl-Errno", "1.36", "498.fc38", epoch=1), key])
    assert data[18:20] == b"\x02\x02"  # a WAL database, as rpm's are
    assert rpmdb.read_database(data) == [Package("bash", "x86_64", "0:5.2.15-3.fc38", "rpm"),
                                         Package("perl-Errno", "x86_64", "1:1.36-498.fc38", "rpm")]
    assert [p.nevra() for p in rpmdb.read_database(data)] == ["bash-5.2.15-3.fc38.x86_64",
                                                             "perl-Errno-1:1.36-498.fc38.x86_64"]


def test_fedoras_layout_is_read_through_the_profiles_rpmdb_or_the_other_place(tmp_path: Path) -> None:
    data = database(tmp_path / "db", [header()])
    diff = layer_with(tmp_path, data, "usr/lib/sysimage/rpm")
    (diff / "var" / "lib").mkdir(parents=True)
    os.symlink("../../usr/lib/sysimage/rpm", diff / "var" / "lib" / "rpm")  # Fedora's /var/lib/rpm
    assert rpmdb.installed([diff], "/usr/lib/sysimage/rpm") == rpmdb.installed([diff], "/var/lib/rpm")
    assert [p.name for p in rpmdb.installed([diff])] == ["bash"]


def test_the_topmost_layer_wins_and_an_image_without_an_rpmdb_is_one_line(tmp_path: Path) -> None:
    lower = layer_with(tmp_path, database(tmp_path / "a", [header()]), name="lower")
    upper = layer_with(tmp_path, database(tmp_path / "b", [header(), header("zsh", "5.9", "5")]), name="upper")
    assert [p.name for p in rpmdb.installed([lower, upper])] == ["bash", "zsh"]
    empty = tmp_path / "empty" / "diff"
    empty.mkdir(parents=True)
    with pytest.raises(BuildError, match="the image has no sqlite rpmdb") as caught:
        rpmdb.installed([empty])
    assert caught.value.hint is not None and "Berkeley DB" in caught.value.hint


def test_writes_left_in_a_wal_are_refused_not_guessed_at(tmp_path: Path) -> None:
    diff = layer_with(tmp_path, database(tmp_path / "db", [header()]))
    (diff / "var/lib/rpm/rpmdb.sqlite-wal").write_bytes(b"")  # rpm leaves an empty one: fine
    assert len(rpmdb.installed([diff])) == 1
    (diff / "var/lib/rpm/rpmdb.sqlite-wal").write_bytes(b"x" * 100)
    with pytest.raises(SandboxError, match="has writes not yet in it"):
        rpmdb.installed([diff])


def test_a_symlinked_database_file_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.sqlite").write_bytes(database(tmp_path / "db", [header()]))
    diff = tmp_path / "layer" / "diff"
    (diff / "var/lib/rpm").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere.sqlite", diff / "var/lib/rpm/rpmdb.sqlite")
    with pytest.raises(SandboxError, match="through a symlink"):
        rpmdb.installed([diff])


def bad_blobs() -> dict[str, bytes]:
    name, version = (NAME, STRING, b"bash\0", 1), (VERSION, STRING, b"1\0", 1)
    release, arch = (RELEASE, STRING, b"1\0", 1), (ARCH, STRING, b"x86_64\0", 1)
    good = [name, version, release, arch]
    whole = blob(good)
    return {
        "short": b"\0\0\0",
        "no entries": struct.pack(">II", 0, 0),
        "an index larger than the blob": struct.pack(">II", 1 << 30, 0) + whole[8:],
        "data past its end": whole[:-1],
        "bytes after its end": whole + b"\0",
        "a string without its NUL": blob([name, version, release, (ARCH, STRING, b"x86_64", 1)]),
        "an offset past the data": whole[:8] + struct.pack(">IIII", NAME, STRING, 1 << 20, 1) + whole[24:],
        "a name twice": blob([*good, (NAME, STRING, b"zsh\0", 1)]),
        "a string as a number": blob([*good, (EPOCH, STRING, b"1\0", 1)]),
        "a misaligned epoch": blob([(NAME, STRING, b"ab\0", 1), version, release, arch, (EPOCH, INT32, b"\0\0\0\1", 1)],
                                   pad=False),
        "an epoch past the data": blob([*good, (EPOCH, INT32, b"\0\0", 1)]),
        "two names in one entry": blob([(NAME, STRING, b"bash\0", 2), version, release, arch]),
        "a name that is not UTF-8": blob([(NAME, STRING, b"b\xffsh\0", 1), version, release, arch]),
        "an option as its name": blob([(NAME, STRING, b"--setopt=x\0", 1), version, release, arch]),
        "a '-' in its version": blob([name, (VERSION, STRING, b"1-2\0", 1), release, arch]),
        "a '.' in its arch": blob([name, version, release, (ARCH, STRING, b"x86.64\0", 1)]),
        "no arch": blob([name, version, release]),
        "a huge name": blob([(NAME, STRING, b"a" * 100_000 + b"\0", 1), version, release, arch]),
    }


@pytest.mark.parametrize("case", sorted(bad_blobs()))
def test_a_header_blob_out_of_bounds_or_of_the_wrong_shape_is_refused(case: str, tmp_path: Path) -> None:
    data = database(tmp_path / "db", [header(), bad_blobs()[case]])
    with pytest.raises(SandboxError, match="the rpmdb's header 2 is not one rpm writes") as caught:
        rpmdb.read_database(data)
    assert "\n" not in caught.value.message and len(caught.value.message) < 400


def test_the_bounds_hold_without_sqlite(tmp_path: Path) -> None:
    """header_fields alone: every offset and count is checked, never trusted."""
    with pytest.raises(HeaderError, match="runs past"):
        header_fields(bad_blobs()["a string without its NUL"])
    with pytest.raises(HeaderError, match="an index of"):
        header_fields(bad_blobs()["an index larger than the blob"])
    assert header_fields(header(epoch=7))[EPOCH] == 7


@pytest.mark.parametrize("schema,problem", [
    ("CREATE VIEW Packages AS SELECT randomblob(10) AS blob", "no Packages table"),
    ("CREATE TABLE Other (blob BLOB)", "no Packages table"),
    # A generated column (an expression run on each row) is no column of rpm's: refused before a row is read.
    ("CREATE TABLE Packages (x BLOB, blob BLOB AS (zeroblob(100000000)))", "not rpm's table"),
    ("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY, blob BLOB, extra AS (1))", "not rpm's table"),
])
def test_a_database_that_is_not_rpms_is_one_line(tmp_path: Path, schema: str, problem: str) -> None:
    data = database(tmp_path / "db", [], schema=schema)
    with pytest.raises(SandboxError, match=problem):
        rpmdb.read_database(data)


@pytest.mark.parametrize("value,problem", [
    ("zeroblob(100000000)", "cannot be read .*too big"),
    # 16 MiB made in each of 2000 rows (32 GB held by a fetchall): bounded by the file's size, row by row.
    ("zeroblob(16000000)", "larger than the database"),
])
def test_values_sqlite_makes_rather_than_reads_are_bounded(tmp_path: Path, value: str, problem: str) -> None:
    """The bounds under the schema's check: what a value sqlite computes (a generated column's) may be."""
    data = database(tmp_path / "db", [header()])
    with pytest.raises(SandboxError, match=problem):
        try:
            connection = rpmdb._connect(data)
            rows = connection.execute(f"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 2000) "
                                      f"SELECT {value} FROM r")
            rpmdb._packages(rows, len(data))
        except sqlite3.Error as exc:
            raise SandboxError(f"the rpmdb cannot be read ({exc})") from None


def test_bytes_that_are_no_database_are_one_line() -> None:
    for data in (b"", b"SQLite format 3\0" + b"\xff" * 200, os.urandom(8192), b"\0" * 4096):
        with pytest.raises(SandboxError, match="the rpmdb"):
            rpmdb.read_database(data)


def test_too_many_packages_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rpmdb, "MAX_PACKAGES", 3)
    data = database(tmp_path / "db", [header(f"p{n}") for n in range(4)])
    with pytest.raises(SandboxError, match="more than 3 packages"):
        rpmdb.read_database(data)


def test_a_database_larger_than_the_bound_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rpmdb, "MAX_DB", 1024)
    diff = layer_with(tmp_path, database(tmp_path / "db", [header()]))
    with pytest.raises(SandboxError, match="larger than"):
        rpmdb.installed([diff])


def test_a_query_that_runs_too_long_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rpmdb, "MAX_STEPS", 1)
    database(tmp_path / "db", [header()])
    connection = sqlite3.connect(tmp_path / "db")  # a schema of 500 tables: one long step finds Packages
    for n in range(500):
        connection.execute(f"CREATE TABLE t{n} (x)")
    connection.commit()
    connection.close()
    data = (tmp_path / "db").read_bytes()
    with pytest.raises(SandboxError, match=r"cannot be read .*interrupted"):
        rpmdb.read_database(data)
