"""`sandboxmgr package test` of .rpm files, in Tiny Distro (the tests' own signed RPM
repository, tests/rpmrepo.py) with a real dnf inside: the dnf stand-in (tests/dnfstandin.py),
the host's dnf with everything it loads, packaged for Tiny Distro.

What this proves: the RPM family's whole test path with real dnf and rpm inside the sandbox -
`dnf install ./x.rpm` resolving a dependency from the profile's (signed, gpgcheck) repository,
the checks, `dnf remove`, `dnf autoremove`, the files left behind against `rpm -qal` - with
each failure's stage, the results of a real RPM `package build`, and dnf's own signature
checks (a key imported with gpg in the sandbox; a package its key did not sign refused). What it cannot: that
dnf is Debian's dnf 4 on the host's Python, not a distribution's own (Fedora's dnf5 answers
as dnf 4 does on the command line used; its messages differ); the `fedora` profile's test runs
where Fedora's mirrors answer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.conftest import CLI, missing, need_fedora_mirrors, need_root
from tests.integration.test_json_shapes import check, documented
from tests.integration.test_package_rpm import spec
from tests.rpmrepo import COMMON, GREETING, RpmRepo, _dbpath, _Key, _rpm_env, _run, _sign, tiny_profile

pytestmark = [pytest.mark.root]

PACKAGE = """\
Name: {name}
Summary: a package sandboxmgr's tests install
BuildArch: noarch
Requires: {requires}

%description
Prints the greeting of the package it requires.

%install
mkdir -p %{{buildroot}}/usr/bin
printf '#!/bin/sh\\nexec cat /usr/share/tinydistro/greeting\\n' > %{{buildroot}}/usr/bin/{name}
chmod 0755 %{{buildroot}}/usr/bin/{name}
{scripts}
%files
/usr/bin/{name}
"""


STRAY = """
%post
mkdir -p /var/lib/sm-stray && echo state > /var/lib/sm-stray/state
echo made > /etc/sm-stray.conf

%postun
echo removed > /var/lib/sm-stray/removed
"""


def rpm(tmp_path: Path, name: str, requires: str = "tinydistro-greeting", scripts: str = "") -> Path:
    """NAME-1-1.noarch.rpm, built on the host by rpmbuild; ``scripts``: its %post and such."""
    work = tmp_path / f"build-{name}"
    (work / "SPECS").mkdir(parents=True)
    (work / "SPECS" / f"{name}.spec").write_text(COMMON + PACKAGE.format(name=name, requires=requires,
                                                                         scripts=scripts))
    _run(["rpmbuild", "-bb", "--nodeps", "--quiet", "--define", f"_topdir {work}", *_dbpath(work / "rpmdb"),
          str(work / "SPECS" / f"{name}.spec")], _rpm_env(work))
    return work / "RPMS" / "noarch" / f"{name}-1-1.noarch.rpm"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, rpm_repo: RpmRepo, tiny_dnf_repo: Path) -> CLI:
    """A store whose profile `tiny` is Tiny Distro with its dnf, over a repository that also
    has the rpm-build stand-in (for package build)."""
    need_root()
    base = tmp_path_factory.mktemp("tiny-pkgtest")
    (base / "configs").mkdir()
    (base / "configs" / "tiny.yaml").write_text(tiny_profile(rpm_repo, repo_dir=tiny_dnf_repo,
                                                             packages="[tinydistro-dnf]"))
    cli = CLI(base / "store", base / "configs")
    if cli("run", "tiny", "--", "dnf", "--version").code != 0:
        missing("the dnf stand-in does not run inside Tiny Distro")
    return cli


def package_test(cli: CLI, *args: str) -> tuple[int, dict[str, object], str]:
    result = cli("package", "test", "--json", *args)
    assert result.code in (0, 1), str(result)
    (row,) = json.loads(result.out)
    return result.code, row, result.err


def failure_type(junit: Path) -> str | None:
    failure = ElementTree.parse(junit).getroot().find("testsuite/testcase/failure")
    return None if failure is None else failure.get("type")


def no_sandbox_left(cli: CLI) -> None:
    assert not [s for s in json.loads(cli.ok("ls", "--json").out) if s["name"].startswith("pkgtest-")]


def test_an_rpm_installs_with_its_dependency_passes_its_check_and_goes_away(tiny: CLI, tmp_path: Path) -> None:
    package = rpm(tmp_path, "sm-greeter")
    junit = tmp_path / "junit.xml"
    code, row, err = package_test(tiny, str(package), "-p", "tiny", "--check", "sm-greeter",
                                  "--check", f"test \"$(sm-greeter)\" = '{GREETING}'", "--junit", str(junit))
    assert code == 0 and row["status"] == "passed" and row["stage"] is None and row["leftovers"] == [], (row, err)
    check([row], documented("### Package tests"))
    assert failure_type(junit) is None
    log = Path(str(row["log"])).read_text()
    install, _, rest = log.partition("# check: sm-greeter")
    # dnf took the package from the command line and its dependency from the signed repository.
    assert "@commandline" in install and "Installing dependencies:" in install, log
    assert "tinydistro-greeting" in install.split("Installing dependencies:")[1], log
    assert GREETING in rest, log
    remove, _, purge = rest.partition("# purge")
    assert "Erasing          : sm-greeter-1-1.noarch" in remove and "tinydistro-greeting" not in remove, log
    assert "Erasing          : tinydistro-greeting-1-1.noarch" in purge and "# leftovers: none" in purge, log
    # Each test has a sandbox of its own: the image is as it was.
    tiny.ok("run", "tiny", "--", "/bin/sh", "-c", "test ! -e /usr/bin/sm-greeter && "
            "test ! -e /usr/share/tinydistro/greeting")
    no_sandbox_left(tiny)


def test_each_failure_of_an_rpm_package_test_names_its_stage(tiny: CLI, tmp_path: Path) -> None:
    cases = {
        "install": (rpm(tmp_path, "sm-unsatisfied", requires="tinydistro-greeting, sm-no-such-package-xyz"), ()),
        "tests": (rpm(tmp_path, "sm-checked"), ("--check", "sm-checked", "--check", "exit 9")),
        # Files a scriptlet makes at install, and one at removal.
        "leftovers": (rpm(tmp_path, "sm-stray", scripts=STRAY), ("--check", "sm-stray")),
    }
    for stage, (package, checks) in cases.items():
        junit = tmp_path / f"{stage}.xml"
        code, row, err = package_test(tiny, str(package), "-p", "tiny", "--junit", str(junit), *checks)
        assert code == 1 and row["status"] == "failed" and row["stage"] == stage, (stage, row, err)
        assert failure_type(junit) == stage
        if stage == "install":
            assert row["packages"] == ["sm-no-such-package-xyz"], row
            assert row["reason"] == "dnf install failed: sm-no-such-package-xyz cannot be found in the profile's " \
                                    "archive", row
        elif stage == "tests":
            assert row["reason"] == "--check 'exit 9' exited with status 9", row
        else:
            assert row["leftovers"] == ["/etc/sm-stray.conf", "/var/lib/sm-stray", "/var/lib/sm-stray/removed",
                                        "/var/lib/sm-stray/state"], row
            assert "/etc/sm-stray.conf" in str(row["reason"])
    no_sandbox_left(tiny)


def test_the_results_of_an_rpm_package_build_are_tested(tiny: CLI, tmp_path: Path) -> None:
    out = tmp_path / "out"
    built = tiny("package", "build", str(spec(tmp_path, "sm-built")), "-p", "tiny", "--results", str(out), "--json")
    assert built.code == 0, str(built)
    assert (out / "tiny" / "sm-built-1.0-1.src.rpm").is_file()
    # The image has a dnf of its own now: the build requirements' layer was installed with it.
    assert "dnf (the target's) installing rpm-build" in built.err, built.err
    code, row, err = package_test(tiny, "--results", str(out), "-p", "tiny", "--check",
                                  f"test \"$(cat /usr/share/sm-built/greeting.txt)\" = '{GREETING}' && sm-built")
    # It installs and its checks pass; but its %files lists /usr/share/sm-built/greeting.txt and not the
    # directory, which rpm made at install and leaves at removal: a packaging mistake, reported.
    assert code == 1 and row["stage"] == "leftovers" and row["results"] == str(out / "tiny"), (row, err)
    assert row["leftovers"] == ["/usr/share/sm-built"], row
    log = Path(str(row["log"])).read_text()
    assert "hello, world" in log and "sm-built-1.0-1.noarch" in log and "# remove" in log, log
    assert "src.rpm" not in log.partition("# check")[0], "the source package was given to dnf"
    no_sandbox_left(tiny)


def signed_repo(tmp_path: Path, rpm_repo: RpmRepo, package: Path) -> Path:
    """A repository of ``package`` alone, signed with the suite's other key."""
    repo = tmp_path / "extra-repo"
    repo.mkdir()
    shutil.copy2(package, repo / package.name)
    env = _rpm_env(tmp_path)
    # The other key's secret half is in rpmrepo's work directory; rpmsign takes its user id.
    _sign([repo / package.name], _Key(rpm_repo.other_key.parent.parent / "gnupg-other", "other@tinydistro.invalid",
                                      rpm_repo.other_key), env)
    _run(["createrepo_c", "--quiet", "--no-database", str(repo)], env)
    return repo


def test_the_sandboxs_dnf_imports_a_repositorys_key_and_refuses_a_package_it_did_not_sign(
        tiny: CLI, rpm_repo: RpmRepo, tiny_dnf_repo: Path, tmp_path: Path) -> None:
    """A dependency from a second repository signed with another key: dnf in the sandbox imports
    the key the profile gives for it (gpg, in the sandbox), or refuses the package when the
    profile gives a key that did not sign it (both repositories with one key file)."""
    extra = signed_repo(tmp_path, rpm_repo, rpm(tmp_path, "sm-extra-dep", requires="tinydistro-filesystem"))
    package = rpm(tmp_path, "sm-needs-extra", requires="sm-extra-dep")
    assert tiny.configs is not None
    for name, key in (("tiny-extra", rpm_repo.other_key), ("tiny-wrong-key", rpm_repo.key)):
        (tiny.configs / f"{name}.yaml").write_text(
            tiny_profile(rpm_repo, repo_dir=tiny_dnf_repo, packages="[tinydistro-dnf]").replace(
                "packages:", f"  - name: extra\n    baseurl: file://{extra}\n    gpgkey: file://{key}\npackages:"))
    code, row, err = package_test(tiny, str(package), "-p", "tiny-extra", "--check",
                                  "test -x /usr/bin/sm-needs-extra -a -x /usr/bin/sm-extra-dep")
    assert code == 0 and row["status"] == "passed" and row["leftovers"] == [], (row, err)
    log = Path(str(row["log"])).read_text()
    assert "Importing GPG key" in log and "Key imported successfully" in log, log
    code, row, err = package_test(tiny, str(package), "-p", "tiny-wrong-key")
    assert code == 1 and row["stage"] == "install" and row["reason"] == "dnf install failed: Error: GPG check FAILED", \
        (row, err)
    assert "Failing package is: sm-extra-dep-1-1.noarch" in Path(str(row["log"])).read_text()
    no_sandbox_left(tiny)


def test_package_test_refuses_packages_of_the_other_family(tiny: CLI, tmp_path: Path) -> None:
    package = rpm(tmp_path, "sm-family")
    deb = tmp_path / "x_1.0_amd64.deb"
    deb.write_bytes(b"!<arch>\n")  # an ar archive: the family is what is refused
    source = tmp_path / "x-1.0-1.src.rpm"
    source.write_bytes(b"")
    for args, said in (((str(package), "-p", "debian-bookworm"), "is not a .deb file"),
                       ((str(deb), "-p", "tiny"), "tiny is a profile of the rpm family"),
                       ((str(source), "-p", "tiny"), "a source package: build it first")):
        result = tiny("package", "test", *args)
        assert result.code == 125 and said in result.err and "hint:" in result.err, str(result)


def test_the_real_fedora_profile_tests_an_rpm_when_its_mirrors_answer(tmp_path: Path) -> None:
    """Only where Fedora's mirrors are reachable: Fedora's own dnf installs the package and its
    dependency from Fedora's archive."""
    need_fedora_mirrors()
    package = rpm(tmp_path, "sm-fedora", requires="sed")
    cli = CLI(tmp_path / "store")
    result = cli("package", "test", str(package), "-p", "fedora", "--check", "test -x /usr/bin/sm-fedora", "--json")
    assert result.code == 0, str(result)
    (row,) = json.loads(result.out)
    assert row["status"] == "passed" and row["leftovers"] == [], row
