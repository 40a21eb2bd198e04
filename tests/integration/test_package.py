"""`sandboxmgr package build`: Debian sources the tests write, built in clean sandboxes."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLI, ConcurrentBuild, missing
from tests.integration.test_json_shapes import check, documented

pytestmark = [pytest.mark.root, pytest.mark.network]

CONTROL = """\
Source: {name}
Section: misc
Priority: optional
Maintainer: Test <test@example.org>
Build-Depends: {deps}
Standards-Version: 4.6.2

Package: {name}
Architecture: any
Depends: ${{shlibs:Depends}}, ${{misc:Depends}}{depends}
Description: a test package of sandboxmgr's
 It prints hello.
"""
CHANGELOG = """\
{name} ({version}) unstable; urgency=medium

  * Initial release.

 -- Test <test@example.org>  Sun, 29 Nov 2026 12:00:00 +0000
"""
# A package built without debhelper: only make and a C compiler are needed.
RULES = """\
#!/usr/bin/make -f
build build-arch build-indep:
\t{build}
\tcc -o {name} hello.c
binary binary-arch binary-indep: build
\tmkdir -p debian/tmp/DEBIAN debian/tmp/usr/bin
\tcp {name} debian/tmp/usr/bin/
\tdpkg-gencontrol -p{name} -Pdebian/tmp
\t! test -f debian/postinst || install -m 755 debian/postinst debian/tmp/DEBIAN/
\t{binary}
clean:
\trm -rf {name} debian/tmp
check:
\ttest "$$(./{name})" = "hello, world"
"""


def source(root: Path, name: str, deps: str = "make", build: str = "true",
           binary: str = "dpkg-deb --build debian/tmp ..", version: str = "1.0-1", depends: str = "",
           files: dict[str, str] | None = None) -> Path:
    """A source tree; ``files`` adds files below debian/ (``tests/control``, ``postinst``), and
    ``depends`` to the binary package's Depends."""
    tree = root / name
    (tree / "debian" / "source").mkdir(parents=True)
    (tree / "debian" / "control").write_text(CONTROL.format(name=name, deps=deps, depends=depends))
    (tree / "debian" / "changelog").write_text(CHANGELOG.format(name=name, version=version))
    (tree / "debian" / "source" / "format").write_text("3.0 (native)\n")
    rules = tree / "debian" / "rules"
    rules.write_text(RULES.format(name=name, build=build, binary=binary))
    rules.chmod(0o755)
    for path, text in (files or {}).items():
        (tree / "debian" / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / "debian" / path).write_text(text)
        if not path.endswith("control"):
            (tree / "debian" / path).chmod(0o755)
    (tree / "hello.c").write_text('#include <stdio.h>\nint main(void) { puts("hello, world"); return 0; }\n')
    return tree


def build(cli: CLI, src: Path, results: Path, *args: str) -> tuple[int, list[dict[str, object]], str]:
    result = cli("package", "build", str(src), "-p", "debian-bookworm", "--results", str(results), "--json", *args)
    assert result.code in (0, 1), str(result)
    return result.code, json.loads(result.out), result.err


def test_a_source_tree_builds_and_a_second_build_reuses_its_build_deps(cli: CLI, bookworm: ConcurrentBuild,
                                                                        tmp_path: Path) -> None:
    tree = source(tmp_path, "sm-hello")
    before = sorted(p.relative_to(tree) for p in tree.rglob("*"))
    code, (row,), err = build(cli, tree, tmp_path / "out")
    assert code == 0 and row["status"] == "passed" and row["stage"] is None, (row, err)
    check([row], documented("### Package builds"))  # the README's table, field for field
    out = tmp_path / "out" / "debian-bookworm"
    assert {p.name for p in out.iterdir()} == {"sm-hello_1.0-1_amd64.deb", "sm-hello_1.0-1_amd64.changes",
                                                "sm-hello_1.0-1_amd64.buildinfo", "build.log", "build-info.json"}
    info = json.loads((out / "build-info.json").read_text())
    assert info["toolchain"]["dpkg-dev"] and info["toolchain"]["gcc"] and len(info["image"]) == 20
    listing = subprocess.run(["dpkg-deb", "-c", str(out / "sm-hello_1.0-1_amd64.deb")], capture_output=True, text=True)
    assert "./usr/bin/sm-hello" in listing.stdout
    assert sorted(p.relative_to(tree) for p in tree.rglob("*")) == before, "the build wrote into the source tree"
    # Built as the unprivileged build user, not as root.
    assert "dpkg-buildpackage" in (out / "build.log").read_text()
    layers = sorted(p.name for p in (cli.store / "layers").iterdir())
    archives = sorted(p.name for p in (cli.store / "cache").rglob("*.deb"))
    code, (row,), err = build(cli, tree, tmp_path / "out")
    assert code == 0 and row["status"] == "passed", (row, err)
    assert "building layer" not in err, err
    assert sorted(p.name for p in (cli.store / "layers").iterdir()) == layers, "a layer was built again"
    assert sorted(p.name for p in (cli.store / "cache").rglob("*.deb")) == archives, "something was downloaded"
    assert not [s for s in json.loads(cli.ok("ls", "--json").out) if s["name"].startswith("pkg-")]


def test_each_failure_names_its_stage(cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path) -> None:
    cases = {
        "build-deps": source(tmp_path, "sm-nodeps", deps="make, sm-no-such-package-xyz"),
        "build": source(tmp_path, "sm-broken", build="echo 'the compiler is unhappy' >&2; exit 3"),
        "tests": source(tmp_path, "sm-testfail", build="$(MAKE) -f debian/rules check"),
        # dpkg-genchanges follows the link and is content; a product must be a regular file.
        "results": source(tmp_path, "sm-noproducts", binary="dpkg-deb --build debian/tmp /tmp/x.deb && "
                          "ln -s /tmp/x.deb ../sm-noproducts_1.0-1_amd64.deb"),
    }
    # A .dsc whose tarball is not beside it: dpkg-source -x (as the build user) fails.
    lost = tmp_path / "lost"
    lost.mkdir()
    (lost / "sm-lost_1.0.dsc").write_text("Format: 3.0 (native)\nSource: sm-lost\nVersion: 1.0\n"
                                          "Build-Depends: make\nFiles:\n 0123456789abcdef0123456789abcdef 10 "
                                          "sm-lost_1.0.tar.xz\n")
    cases["source"] = lost / "sm-lost_1.0.dsc"
    for stage, tree in cases.items():
        code, (row,), err = build(cli, tree, tmp_path / "out" / stage)
        assert code == 1 and row["status"] == "failed" and row["stage"] == stage, (stage, row, err)
        assert Path(str(row["log"])).exists()
    code, (row,), _ = build(cli, cases["build-deps"], tmp_path / "out" / "again")
    assert row["packages"] == ["sm-no-such-package-xyz"], row
    assert "unhappy" in Path(str(build(cli, cases["build"], tmp_path / "out" / "b2")[1][0]["log"])).read_text()


def test_the_build_has_no_network_unless_asked(cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path) -> None:
    fetch = "apt-get download hello"  # as the build user, into the tree: a real fetch from the archive
    tree = source(tmp_path, "sm-fetch", build=fetch)
    code, (row,), _ = build(cli, tree, tmp_path / "out")
    assert code == 1 and row["stage"] == "build", row
    code, (row,), err = build(cli, tree, tmp_path / "out", "--network", "host")
    assert code == 0 and row["status"] == "passed", (row, err)


def test_only_regular_product_files_come_out_of_the_sandbox(cli: CLI, bookworm: ConcurrentBuild,
                                                            tmp_path: Path) -> None:
    """The build's files are hostile: a product that is a link to a host file, or a fifo, is
    never followed, opened or copied."""
    secret = tmp_path / "host-secret"
    secret.write_text("the host's\n")
    plant = (f"dpkg-deb --build debian/tmp .. && ln -s {secret} ../evil_1.0_amd64.deb "
             "&& ln -s /etc/shadow ../shadow.changes && mkfifo ../fifo_1.0_amd64.deb")
    code, (row,), err = build(cli, source(tmp_path, "sm-links", binary=plant), tmp_path / "out")
    assert code == 0, (row, err)
    out = tmp_path / "out" / "debian-bookworm"
    assert {p.name for p in out.iterdir()} >= {"sm-links_1.0-1_amd64.deb"}
    for name in ("evil_1.0_amd64.deb", "shadow.changes", "fifo_1.0_amd64.deb"):
        assert not (out / name).exists() and not (out / name).is_symlink(), name


def test_a_dsc_builds_and_a_profile_of_another_family_is_refused(cli: CLI, bookworm: ConcurrentBuild,
                                                                 tmp_path: Path) -> None:
    tree = source(tmp_path, "sm-dsc", version="1.0")  # native: no Debian revision
    made = subprocess.run(["dpkg-source", "-b", tree.name], cwd=tmp_path, capture_output=True, text=True)
    if made.returncode != 0:
        missing(f"dpkg-source cannot make the test's .dsc: {made.stderr[-300:]}")
    dsc = tmp_path / "sm-dsc_1.0.dsc"
    # An alias and the name are one profile: one build, in the directory of the profile's name.
    code, (row,), err = build(cli, dsc, tmp_path / "out", "-p", "debian-12")
    assert code == 0 and row["status"] == "passed", (row, err)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["debian-bookworm"]
    assert (tmp_path / "out" / "debian-bookworm" / "sm-dsc_1.0_amd64.deb").is_file()
    refused = cli("package", "build", str(dsc), "-p", "fedora")
    assert refused.code == 125 and "rpm profile" in refused.err and "hint:" in refused.err, str(refused)
    nothing = cli("package", "build", str(tmp_path / "out"), "-p", "debian-bookworm")
    assert nothing.code == 125 and "has no debian/control" in nothing.err, str(nothing)


def test_a_build_past_its_timeout_is_killed_and_leaves_nothing(cli: CLI, bookworm: ConcurrentBuild,
                                                               tmp_path: Path) -> None:
    tree = source(tmp_path, "sm-slow", build="sleep 6173")
    code, (row,), err = build(cli, tree, tmp_path / "out", "--timeout", "3")
    assert code == 1 and row["status"] == "failed" and row["stage"] == "timeout", (row, err)
    assert float(str(row["duration"])) < 60, row
    assert subprocess.run(["pgrep", "-f", "sleep 6173"], capture_output=True).returncode != 0
    assert not [s for s in json.loads(cli.ok("ls", "--json").out) if s["name"].startswith("pkg-")]


SHOW_OPTIONS = 'echo "options: [$$DEB_BUILD_OPTIONS]"'  # a build step that shows what the build was told


def told(out: Path) -> set[str]:
    """The DEB_BUILD_OPTIONS a SHOW_OPTIONS build had, from its log in ``out``."""
    # The line as the build echoed it (make shows the command too: that one has the $).
    found = {line for line in re.findall(r"options: \[(.*)\]", (out / "build.log").read_text()) if "$" not in line}
    assert len(found) == 1, found
    return set(found.pop().split())  # dpkg-buildpackage passes them on in its own order


def test_the_build_is_told_how_many_jobs_it_may_run(cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path) -> None:
    """parallel=N in DEB_BUILD_OPTIONS, on top of the caller's own options: the CPUs this build may
    use (the caller's affinity here: one, where dpkg-buildpackage alone counts the machine's online
    CPUs); --build-jobs sets N; a parallel= of the caller's stays."""
    tree = source(tmp_path, "sm-jobs", build=SHOW_OPTIONS)
    caller = CLI(cli.store, cli.configs)
    caller.env = {**os.environ, "DEB_BUILD_OPTIONS": "nocheck"}
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        code, (row,), err = build(caller, tree, tmp_path / "one")
    finally:
        os.sched_setaffinity(0, cpus)
    assert code == 0, (row, err)
    assert told(tmp_path / "one" / "debian-bookworm") == {"nocheck", "parallel=1"}
    info = json.loads((tmp_path / "one" / "debian-bookworm" / "build-info.json").read_text())
    assert info["build_jobs"] == 1 and info["deb_build_options"] == "nocheck parallel=1", info
    code, (row,), err = build(caller, tree, tmp_path / "three", "--build-jobs", "3")
    assert code == 0 and told(tmp_path / "three" / "debian-bookworm") == {"nocheck", "parallel=3"}, (row, err)
    caller.env["DEB_BUILD_OPTIONS"] = "parallel=5 nocheck"
    code, (row,), err = build(caller, tree, tmp_path / "five")
    assert code == 0 and told(tmp_path / "five" / "debian-bookworm") == {"nocheck", "parallel=5"}, (row, err)


def test_builds_at_once_share_the_cpus_and_a_cpu_limit_caps_its_own(cli: CLI, bookworm: ConcurrentBuild,
                                                                     tmp_path: Path) -> None:
    """With -j 2, two builds share the CPUs; a profile's limits.cpus caps its own build's jobs."""
    assert cli.configs is not None
    (cli.configs / "bookworm-one-cpu.yaml").write_text("extends: debian-bookworm\nlimits: {cpus: 1}\n")
    tree = source(tmp_path, "sm-share", build=SHOW_OPTIONS)
    cpus = len(os.sched_getaffinity(0))
    for at_once in (1, 2):
        out = tmp_path / f"j{at_once}"
        result = cli("package", "build", str(tree), "-p", "debian-bookworm", "-p", "bookworm-one-cpu", "-j",
                     str(at_once), "--results", str(out), "--json")
        assert result.code == 0, str(result)
        share = max(1, cpus // at_once)
        jobs = {name: json.loads((out / name / "build-info.json").read_text())["build_jobs"]
                for name in ("debian-bookworm", "bookworm-one-cpu")}
        assert jobs == {"debian-bookworm": share, "bookworm-one-cpu": 1}, (at_once, jobs)
        assert told(out / "debian-bookworm") == {f"parallel={share}"}
        assert told(out / "bookworm-one-cpu") == {"parallel=1"}
