"""An attacker's review of RPM lock files (rpmdb.py, rpmreports.py, lockfile.py, locked.py).

An image's rpmdb was written by build steps that ran as root inside; a lock file is a user's
file (from a bug report, say). Each test names the hole it proves, and fails on the rpmlock
branch as it was (fb0252c):

- a ``Packages`` that is a virtual table (``CREATE VIRTUAL TABLE Packages USING fts4(blob)``)
  is of type "table" in sqlite_master, so the reader ran sqlite's full-text (fts3/4/5) or
  rtree code over the hostile file's shadow tables - the code behind most of sqlite's
  memory-safety bugs with crafted databases - though rpm's table is a plain one;
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxmgr import rpmdb
from sandboxmgr.errors import SandboxError
from tests.unit.test_rpmdb import database

pytestmark = pytest.mark.adversarial


@pytest.mark.parametrize("module", ["fts4", "fts5", "rtree(blob, a, b)"])
def test_a_virtual_packages_table_runs_no_module_over_the_hostile_file(tmp_path: Path, module: str) -> None:
    name, _, columns = module.partition("(")
    schema = f"CREATE VIRTUAL TABLE Packages USING {name}({columns.rstrip(')') or 'blob'})"
    data = database(tmp_path / "db", [], schema=schema)
    with pytest.raises(SandboxError, match="Packages is not a plain table"):
        rpmdb.read_database(data)


def test_rpms_own_table_is_still_read(tmp_path: Path) -> None:
    schema = "CREATE TABLE IF NOT EXISTS 'Packages' (hnum INTEGER PRIMARY KEY AUTOINCREMENT,blob BLOB NOT NULL)"
    data = database(tmp_path / "db", [], schema=schema)
    assert rpmdb.read_database(data) == []
