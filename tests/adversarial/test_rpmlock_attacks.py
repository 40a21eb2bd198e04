"""An attacker's review of RPM lock files (rpmdb.py, rpmreports.py, lockfile.py, locked.py).

An image's rpmdb was written by build steps that ran as root inside; a lock file is a user's
file (from a bug report, say). Each test names the hole it proves, and fails on the rpmlock
branch as it was (fb0252c):

- a ``Packages`` that is a virtual table (``CREATE VIRTUAL TABLE Packages USING fts4(blob)``)
  is of type "table" in sqlite_master, so the reader ran sqlite's full-text (fts3/4/5) or
  rtree code over the hostile file's shadow tables - the code behind most of sqlite's
  memory-safety bugs with crafted databases - though rpm's table is a plain one;
- a lock's pin of a package without an epoch was ``NAME-VERSION-RELEASE.ARCH``, and dnf reads a
  NEVRA without an epoch as "any epoch": with ``foo`` 0:1-1 and 1:1-1 in the repository (an epoch
  bumped to go back to an older upstream version, then forward again), ``dnf install
  foo-1-1.noarch`` installs 1:1-1 - the locked build installed another version than the lock's,
  and failed its post-build check for ever; a locked pin now says ``foo-0:1-1.noarch``;
- every header named ``gpg-pubkey`` was taken for an imported key and left out: a package of that
  name (a repository's, or one a build step installed, with files and scriptlets) was in the
  image, in no lock, and out of the post-build check's sight. rpm's key headers have no arch
  (makePubkeyHeader writes none): a ``gpg-pubkey`` with one is a package;
- a header stored twice (two rows of one NEVRA) was two packages: ``lock`` wrote a lock file
  that lists it twice, which every build of it then refused ("listed twice");
- an arch of ``rpm`` was a valid arch, and dnf reads an argument ending in ``.rpm`` as a file to
  install, not a package of its repositories: a lock (from a bug report) naming
  ``{name: foo, epoch: 0, version: '1', release: '1', arch: rpm}`` made the locked bootstrap's
  ``dnf install`` install the file ``foo-0:1-1.rpm`` of its working directory, if there is one -
  unsigned (dnf checks no local package's signature) and from no repository;
- the step budget counts sqlite's instructions, not their cost: a ``Packages`` whose ``blob`` is a
  generated column, over a chain of generated columns each a 16 MB ``hex(zeroblob(...))``, made
  every instruction take tens of milliseconds - 20 columns of 5 rows took 2.4 s in a file of
  8 KiB, and 2000 columns of 50,000 rows (a file of a few MB) are weeks of ``lock``, or of a
  locked build's post-build check, all inside the budget; rpm's table has exactly ``hnum`` and
  ``blob``, none generated, and anything else is refused before a row is read;
- ``rpm -qa`` prints no epoch (rpm's ``%_query_all_fmt`` is ``%{nvra}``), so a report of one system
  with its ``rpm -qa`` and its ``dnf list installed`` (which does print them) was refused for every
  package with an epoch - "names perl-Errno.x86_64 at two versions, perl-Errno-1.38-512.fc44.x86_64
  and perl-Errno-1:1.38-512.fc44.x86_64"; an epoch the report does not give is now unknown, and
  one it gives (dnf list's, even 0) is pinned exactly.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sandboxmgr import rpmdb, rpmreports
from sandboxmgr.errors import ProfileError, SandboxError
from sandboxmgr.lockfile import Lock, dump, parse, rpm_package
from tests.conftest import missing, need_root
from tests.unit.test_rpmdb import database, header

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


def rpm_lock(*packages: tuple[str, int, str, str, str]) -> Lock:
    made = [rpm_package(*package) for package in packages]
    return Lock(profile="tiny", image="0" * 16, distro="tinydistro", release="1", arch="x86_64",
                mirror="file:///repo", archive_date=None, packages=tuple(p for p in made if p is not None),
                family="rpm")


def two_epochs_repo(tmp_path: Path) -> Path:
    """A repository holding foo at 0:1-1 and at 1:1-1 (noarch, no files)."""
    for tool in ("rpmbuild", "createrepo_c", "dnf"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed (make deps)")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), "LC_ALL": "C"}
    repo = tmp_path / "repo"
    repo.mkdir()
    for epoch in (0, 1):
        spec = tmp_path / f"foo{epoch}.spec"
        spec.write_text(f"Name: foo\nEpoch: {epoch}\nVersion: 1\nRelease: 1\nSummary: foo\nLicense: MIT\n"
                        "BuildArch: noarch\n%description\nfoo\n%files\n")
        subprocess.run(["rpmbuild", "-bb", "--define", f"_topdir {tmp_path / f'top{epoch}'}",
                        "--define", f"_rpmdir {tmp_path / f'out{epoch}'}", str(spec)],
                       env=env, check=True, capture_output=True)
        built = tmp_path / f"out{epoch}" / "noarch" / "foo-1-1.noarch.rpm"
        built.rename(repo / f"foo-{epoch}.rpm")
    subprocess.run(["createrepo_c", "-q", str(repo)], env=env, check=True, capture_output=True)
    return repo


def dnf_would_install(tmp_path: Path, repo: Path, pins: tuple[str, ...], cwd: Path | None = None) -> list[str]:
    """The EVRs the host's dnf would install for ``pins`` (--assumeno: nothing is), run in ``cwd``."""
    (tmp_path / "dnf.conf").write_text("[main]\nreposdir=/nonexistent\ngpgcheck=0\n")
    argv = ["dnf", f"--installroot={tmp_path / 'root'}", f"--config={tmp_path / 'dnf.conf'}",
            f"--setopt=cachedir={tmp_path / 'cache'}", "--releasever=1", f"--repofrompath=t,{repo.as_uri()}",
            "--repo=t", "--assumeno", "install", *pins]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                                       "HOME": str(tmp_path), "LC_ALL": "C"})
    return re.findall(r"^ foo +noarch +(\S+) +(?:t|@commandline) ", done.stdout, re.MULTILINE)


def test_a_locked_version_without_an_epoch_is_the_one_dnf_installs(tmp_path: Path) -> None:
    need_root()  # dnf --installroot
    repo = two_epochs_repo(tmp_path)
    assert dnf_would_install(tmp_path, repo, ("foo-1:1-1.noarch",)) == ["1:1-1"]  # the test can tell them apart
    lock = rpm_lock(("foo", 0, "1", "1", "noarch"))
    assert dnf_would_install(tmp_path, repo, lock.pins()) == ["1-1"]  # 0:1-1, as locked


def test_a_package_named_gpg_pubkey_is_not_hidden_as_an_imported_key(tmp_path: Path) -> None:
    data = database(tmp_path / "db", [header(), header("gpg-pubkey", "1.0", "1", "x86_64")])
    assert [p.nevra() for p in rpmdb.read_database(data)] == ["bash-5.2.15-3.fc38.x86_64",
                                                             "gpg-pubkey-1.0-1.x86_64"]


def test_a_header_stored_twice_makes_a_lock_that_can_be_read_back(tmp_path: Path) -> None:
    data = database(tmp_path / "db", [header(), header("zsh", "5.9", "1"), header()])
    taken = replace(rpm_lock(), packages=tuple(rpmdb.read_database(data)))
    assert parse(tmp_path / "x.lock", dump(taken)).packages == taken.packages
    assert [p.name for p in taken.packages] == ["bash", "zsh"]


def test_an_arch_of_rpm_is_refused_dnf_would_install_a_file_instead(tmp_path: Path) -> None:
    need_root()  # dnf --installroot
    repo = two_epochs_repo(tmp_path)
    planted = tmp_path / "cwd"
    planted.mkdir()
    (planted / "foo-0:1-1.rpm").write_bytes((repo / "foo-1.rpm").read_bytes())
    assert dnf_would_install(tmp_path, repo, ("foo-0:1-1.rpm",), cwd=planted) == ["1:1-1"]  # the file's
    assert rpm_package("foo", 0, "1", "1", "rpm") is None and rpm_package("foo", 0, "1", "1", "RPM") is None
    text = dump(rpm_lock(("foo", 0, "1", "1", "noarch"))).replace("arch: noarch", "arch: rpm")
    with pytest.raises(ProfileError, match=r"packages\[0\]\.arch rpm is not a valid package arch"):
        parse(tmp_path / "x.lock", text)


def test_generated_columns_cannot_make_each_step_cost_seconds(tmp_path: Path) -> None:
    columns = ["x BLOB", "g0 INT AS (length(x))",
               *(f"g{i} INT AS (length(hex(zeroblob(8000000 + g{i - 1} % 2))))" for i in range(1, 41)),
               "blob BLOB AS (CASE WHEN g40 > 0 THEN x END)"]
    connection = sqlite3.connect(tmp_path / "db")
    connection.execute("CREATE TABLE Packages (x BLOB)")
    connection.executemany("INSERT INTO Packages (x) VALUES (?)", [(header(),)] * 200)  # ~ 3 minutes to read
    # Virtual generated columns take no room in a row: the rows stay as they are.
    connection.execute("PRAGMA writable_schema=ON")
    connection.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'Packages'",
                       (f"CREATE TABLE Packages ({', '.join(columns)})",))
    connection.commit()
    connection.close()
    data = (tmp_path / "db").read_bytes()
    script = ("import sys; from sandboxmgr import rpmdb, errors\n"
              "try:\n    rpmdb.read_database(sys.stdin.buffer.read())\n"
              "except errors.SandboxError as exc:\n    print(exc.message)\n")
    done = subprocess.run([sys.executable, "-c", script], input=data, capture_output=True, timeout=20)
    assert done.stdout.decode().strip() == "the rpmdb's Packages is not rpm's table (hnum, blob; none generated)"


MIXED_REPORT = """$ rpm -qa
perl-Errno-1.38-512.fc44.x86_64
bash-5.2.26-3.fc44.x86_64
zsh-5.9-14.fc44.x86_64
$ dnf list installed
Installed Packages
perl-Errno.x86_64     1:1.38-512.fc44    @fedora
bash.x86_64           5.2.26-3.fc44      @fedora
"""


def test_rpm_qa_and_dnf_list_of_one_system_are_one_report() -> None:
    from sandboxmgr.locking import _pin

    packages = rpmreports.parse(MIXED_REPORT)
    # dnf list's epochs (0 too) pinned exactly; zsh's, which only rpm -qa names, left to dnf.
    assert [_pin(p, "x86_64") for p in packages] == ["bash-0:5.2.26-3.fc44.x86_64",
                                                      "perl-Errno-1:1.38-512.fc44.x86_64", "zsh-5.9-14.fc44.x86_64"]
    with pytest.raises(SandboxError, match=r"names perl-Errno\.x86_64 at two versions"):
        rpmreports.parse(MIXED_REPORT.replace("1:1.38-512", "1:1.38-513"))
    with pytest.raises(SandboxError, match=r"names bash\.x86_64 at two versions"):
        rpmreports.parse(MIXED_REPORT + "bash-1:5.2.26-3.fc44.x86_64\n")
