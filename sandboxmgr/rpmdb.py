"""What an RPM-family image has installed, read from its layers on the host.

The same list ``rpm -qa --qf '%{NAME} %{EPOCH} %{VERSION} %{RELEASE} %{ARCH}'`` prints
inside, read from the sqlite rpmdb (``rpmdb.sqlite``, rpm 4.16 and later: Fedora 33+,
EL 9+) of the topmost layer that has it, as dpkgstatus.py reads dpkg's status: nothing
is run and nothing is mounted, so it cannot change the image, and it works for an image
without an rpm of its own. A layer's files were written by build steps that ran as root
inside, so they are hostile, and the reader is built for that:

* the database file is found without following a symlink (dpkgstatus.image_file), and
  read whole, bounded, into memory: sqlite opens no file of the image, never a journal
  or a ``-wal`` beside it (a non-empty ``-wal`` - writes not yet in the database - is
  refused, not guessed at);
* sqlite reads it with ``trusted_schema`` off (no function of a view, trigger or
  generated column runs), ``query_only``, cell size checks, a bounded value length and
  a bounded number of steps; ``Packages`` must be rpm's plain table of ``hnum`` and ``blob``
  (a virtual one would run its module - fts, rtree - over the file; a generated column, an
  expression of any cost in each step);
* each header blob is parsed by our own code with strict bounds: an index of at most
  MAX_TAGS entries inside the blob, each string NUL-terminated inside the data, the
  epoch a 4-byte-aligned number; every name, version, release and arch must be one a
  lock can hold (lockfile.rpm_package), or the whole read is refused - a package a
  lock cannot name would be in the image and in no lock.

Berkeley DB (EL 8, ``Packages``) and ndb (``Packages.db``) databases are not read.
"""

from __future__ import annotations

import re
import sqlite3
import struct
from pathlib import Path

from sandboxmgr.dpkgstatus import image_file
from sandboxmgr.errors import BuildError, SandboxError, shown
from sandboxmgr.lockfile import MAX_PACKAGES, Package, rpm_package

DB_NAME = "rpmdb.sqlite"
PLACES = ("/var/lib/rpm", "/usr/lib/sysimage/rpm")
MAX_DB = 256 << 20
MAX_BLOB = 16 << 20
MAX_TAGS = 65536
MAX_STEPS = 1_000_000  # progress handler calls, one per 1000 sqlite instructions
# rpm's header tags and types (rpmtag.h)
NAME, VERSION, RELEASE, EPOCH, ARCH = 1000, 1001, 1002, 1003, 1022
INT32, STRING = 4, 6
_WANTED = {NAME: STRING, VERSION: STRING, RELEASE: STRING, EPOCH: INT32, ARCH: STRING}
_TABLE_RE = re.compile(r"\s*CREATE\s+TABLE\s", re.IGNORECASE)  # not CREATE VIRTUAL TABLE
_REBUILD = "the image was changed by a build step; build it again (build --rebuild)"


class HeaderError(ValueError):
    """A header blob that is not one rpm writes."""


def _string(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    if end < 0:
        raise HeaderError("a string runs past the header's data")
    try:
        return data[offset:end].decode()
    except UnicodeDecodeError:
        raise HeaderError("a string is not UTF-8") from None


def header_fields(blob: bytes) -> dict[int, str | int]:
    """NAME, VERSION, RELEASE, ARCH (str) and EPOCH (int) of one rpm header blob, those it has;
    HeaderError for anything out of bounds or of the wrong type."""
    if len(blob) < 8:
        raise HeaderError("shorter than a header")
    count, size = struct.unpack_from(">II", blob)
    if not 0 < count <= MAX_TAGS or size > len(blob):
        raise HeaderError(f"an index of {count} entries and {size} bytes of data")
    start = 8 + 16 * count
    if start + size != len(blob):
        raise HeaderError(f"{len(blob)} bytes, not the {start + size} its index says")
    data = blob[start:]
    found: dict[int, str | int] = {}
    for tag, kind, offset, number in struct.iter_unpack(">IIII", blob[8:start]):
        if tag not in _WANTED:
            continue
        if kind != _WANTED[tag] or number != 1 or offset >= size or tag in found:
            raise HeaderError(f"tag {tag} of type {kind}, count {number} at {offset}")
        if kind == INT32:
            if offset % 4 or offset + 4 > size:
                raise HeaderError(f"tag {tag}'s number at {offset}")
            found[tag] = struct.unpack_from(">I", data, offset)[0]
        else:
            found[tag] = _string(data, offset)
    return found


def package_of(blob: bytes) -> Package | None:
    """The package of one header blob; None for an imported key (``gpg-pubkey``: rpm keeps
    them as headers, no package installs them); HeaderError for one a lock cannot hold."""
    fields = header_fields(blob)
    name = fields.get(NAME)
    if name == "gpg-pubkey" and ARCH not in fields:
        return None  # rpm writes a key's header without an arch: one with an arch is a package, and counts
    epoch = fields.get(EPOCH, 0)
    texts = [fields.get(tag) for tag in (NAME, VERSION, RELEASE, ARCH)]
    if not all(isinstance(text, str) for text in texts) or not isinstance(epoch, int):
        raise HeaderError("a header without a name, version, release or arch")
    name, version, release, arch = (str(text) for text in texts)
    package = rpm_package(name, epoch, version, release, arch)
    if package is None:
        raise HeaderError(f"{_short(name)} {epoch}:{_short(version)}-{_short(release)}.{_short(arch)}, "
                          "a name, version, release or arch a lock file cannot hold")
    return package


def _short(value: str) -> str:
    return shown(value if len(value) <= 60 else value[:60] + "...")


def _connect(data: bytes) -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_BLOB)
    connection.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, 1 << 16)
    connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    if len(data) >= 20 and data[18:20] == b"\x02\x02":
        # A WAL database (rpm's): its header says so in bytes 18-19, and a database in memory has
        # no WAL. With its -wal empty (installed() checks) the file is whole: read it as a legacy one.
        data = data[:18] + b"\x01\x01" + data[20:]
    connection.deserialize(data)
    for pragma in ("trusted_schema=OFF", "query_only=ON", "cell_size_check=ON", "mmap_size=0"):
        connection.execute(f"PRAGMA {pragma}")
    steps = [0]

    def budget() -> int:
        steps[0] += 1
        return int(steps[0] > MAX_STEPS)  # non-zero: sqlite stops the statement (an OperationalError)

    connection.set_progress_handler(budget, 1000)
    return connection


def read_database(data: bytes) -> list[Package]:
    """The packages of an rpmdb.sqlite's bytes, sorted; SandboxError (one line) for anything wrong."""
    try:
        connection = _connect(data)
        try:
            kinds = connection.execute("SELECT type, sql FROM sqlite_master WHERE name = 'Packages'").fetchall()
            if [kind for kind, _ in kinds] != ["table"]:
                raise SandboxError("the rpmdb has no Packages table", hint=_REBUILD)
            if not _TABLE_RE.match(str(kinds[0][1])):
                # A virtual table is a "table" too: its module's code (fts, rtree) would run over the file.
                raise SandboxError("the rpmdb's Packages is not a plain table", hint=_REBUILD)
            # (name, hidden) of each column: a generated one (hidden 2, 3) is an expression run on each
            # row, and one instruction of the step budget may cost a 16 MB hex(zeroblob()) - seconds a row.
            columns = [(row[1], row[6]) for row in connection.execute("PRAGMA table_xinfo(Packages)")]
            if columns != [("hnum", 0), ("blob", 0)]:
                raise SandboxError("the rpmdb's Packages is not rpm's table (hnum, blob; none generated)",
                                   hint=_REBUILD)
            # A header stored twice is one package (a lock lists each once, or is refused).
            return sorted(set(_packages(connection.execute("SELECT blob FROM Packages"), len(data))))
        finally:
            connection.close()
    except (sqlite3.Error, MemoryError, OverflowError) as exc:
        why = _short(str(exc) or type(exc).__name__)  # a MemoryError says nothing
        raise SandboxError(f"the rpmdb cannot be read ({why})", hint=_REBUILD) from None


def _packages(rows: sqlite3.Cursor, size: int) -> list[Package]:
    """Each row's package, one row at a time: a value sqlite makes rather than reads (a generated
    column's zeroblob) may be as large as MAX_BLOB in every row, so the bytes of all rows together are
    bounded by the file's size, as an rpm-made table's are."""
    found, total = [], 0
    for number, (blob,) in enumerate(rows, 1):
        if number > MAX_PACKAGES:
            raise SandboxError(f"the rpmdb has more than {MAX_PACKAGES} packages", hint=_REBUILD)
        try:
            if not isinstance(blob, bytes):
                raise HeaderError("not a blob")
            total += len(blob)
            if total > size:
                raise HeaderError("the headers are larger than the database")
            package = package_of(blob)
        except (HeaderError, struct.error) as exc:
            raise SandboxError(f"the rpmdb's header {number} is not one rpm writes: {exc}",
                               hint="lock files take rpm's names and versions; remove that package, "
                                    "or build the image again (build --rebuild)") from None
        if package is not None:
            found.append(package)
    return found


def installed(layers: list[Path], rpmdb: str = PLACES[0]) -> list[Package]:
    """The packages installed in the image made of ``layers`` (diff directories, bottom first), from
    the rpmdb at ``rpmdb`` (the profile's bootstrap.rpmdb) or, when it has none, at the other place
    (Fedora's rpm moves it to /usr/lib/sysimage/rpm, leaving /var/lib/rpm a symlink)."""
    places = [rpmdb, *(place for place in PLACES if place != rpmdb)]
    first: SandboxError | None = None
    for place in places:
        try:
            data = image_file(layers, f"{place}/{DB_NAME}", MAX_DB)
        except SandboxError as exc:  # a symlink on the way, a directory there, too big
            first = first or exc
            continue
        if data is None:
            continue
        wal = image_file(layers, f"{place}/{DB_NAME}-wal", MAX_DB)
        if wal:
            raise SandboxError(f"{place}/{DB_NAME} has writes not yet in it (a {DB_NAME}-wal); not read",
                               hint="let rpm finish (rpm -qa inside writes them back), or build again")
        return read_database(data)
    if first is not None:
        raise first
    raise BuildError(f"the image has no sqlite rpmdb ({' or '.join(f'{p}/{DB_NAME}' for p in places)})",
                     hint="lock files read the rpmdb of rpm 4.16 and later (Fedora 33+, EL 9+); "
                          "a Berkeley DB one (EL 8) is not read")
