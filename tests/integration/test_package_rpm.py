"""`sandboxmgr package build` of RPM sources, in Tiny Distro (the tests' own signed RPM
repository, tests/rpmrepo.py) with the rpm-build stand-in: real rpmbuild inside the sandbox,
real build requirements installed from the local repository, no Fedora archive needed.

What this proves: the whole path of an RPM source (the host's reading of a .spec and of a
.src.rpm header, the build-requirements layer and its reuse, the unprivileged build without
a network, each failure's stage, the collection of the products). What it cannot: Tiny
Distro has no dnf of its own (the host's dnf installs the build requirements, as it installs
any of its packages) and no compiler (the specs build shell scripts); the real `fedora`
profile's build is tested where Fedora's mirrors answer.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CLI, missing, need_fedora_mirrors, need_root
from tests.integration.test_json_shapes import check, documented
from tests.rpmrepo import GREETING, RpmRepo, RpmRepoError, add_rpm_build, tiny_profile

pytestmark = [pytest.mark.root]

SPEC = """\
Name: {name}
Version: 1.0
Release: 1
Summary: a test package of sandboxmgr's
License: MIT
BuildArch: noarch
Source0: {name}.sh
BuildRequires: {requires}
{extra}
%description
Prints hello.

%prep
cp %{{SOURCE0}} .

%build
# as the unprivileged build user, with the build requirement installed
test "$(id -u)" != 0
cat /usr/share/tinydistro/greeting > greeting.txt
{build}

%install
mkdir -p %{{buildroot}}/usr/bin %{{buildroot}}/usr/share/{name}
cp {name}.sh %{{buildroot}}/usr/bin/{name}
chmod 0755 %{{buildroot}}/usr/bin/{name}
cp greeting.txt %{{buildroot}}/usr/share/{name}/
{check}
%files
/usr/bin/{name}
/usr/share/{name}/greeting.txt
"""


def spec(root: Path, name: str, requires: str = "tinydistro-greeting >= 1", build: str = "",
         check: str = "", extra: str = "") -> Path:
    """A directory with NAME.spec and its source, NAME.sh."""
    directory = root / name
    directory.mkdir()
    text = SPEC.format(name=name, requires=requires, build=build, extra=extra,
                       check=f"\n%check\n{check}\n" if check else "")
    (directory / f"{name}.spec").write_text(text)
    (directory / f"{name}.sh").write_text("#!/bin/sh\necho hello, world\n")
    return directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, rpm_repo: RpmRepo) -> CLI:
    """A store whose profile `tiny` is Tiny Distro over a repository with the rpm-build stand-in."""
    need_root()
    base = tmp_path_factory.mktemp("tiny-rpmbuild")
    try:
        repo = add_rpm_build(rpm_repo, base / "tools")
    except RpmRepoError as exc:  # the host's rpm tools lack a file the stand-in carries
        missing(f"the rpm-build stand-in cannot be made from the host's rpm: {exc}")
    (base / "configs").mkdir()
    # Without tinydistro-hello, whose dependency is the test specs' build requirement.
    (base / "configs" / "tiny.yaml").write_text(tiny_profile(rpm_repo, repo_dir=repo, packages="[]"))
    return CLI(base / "store", base / "configs")


def build(cli: CLI, source: Path, results: Path, *args: str) -> tuple[int, dict[str, object], str]:
    result = cli("package", "build", str(source), "-p", "tiny", "--results", str(results), "--json", *args)
    assert result.code in (0, 1), str(result)
    (row,) = json.loads(result.out)
    return result.code, row, result.err


def payload(rpm: Path, member: str, scratch: Path) -> str:
    """One file of a package, unpacked on the host (rpm2cpio, busybox cpio)."""
    scratch.mkdir()
    subprocess.run(f"rpm2cpio {rpm} | busybox cpio -id", shell=True, cwd=scratch, check=True, capture_output=True)
    return (scratch / member.lstrip("/")).read_text()


def test_a_spec_builds_with_rpmbuild_and_a_second_build_reuses_its_build_requires(tiny: CLI,
                                                                                  tmp_path: Path) -> None:
    source = spec(tmp_path, "sm-hello")
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    code, row, err = build(tiny, source, tmp_path / "out")
    assert code == 0 and row["status"] == "passed" and row["stage"] is None, (row, err)
    check([row], documented("### Package builds"))
    out = tmp_path / "out" / "tiny"
    assert {p.name for p in out.iterdir()} == {"sm-hello-1.0-1.noarch.rpm", "sm-hello-1.0-1.src.rpm", "build.log",
                                                "build-info.json"}
    # The build requirement was installed: its file went into the package.
    assert payload(out / "sm-hello-1.0-1.noarch.rpm", "/usr/share/sm-hello/greeting.txt",
                   tmp_path / "unpacked").strip() == GREETING
    log = (out / "build.log").read_text()
    assert "Executing(%build)" in log and "Wrote: /build/out/sm-hello-1.0-1.noarch.rpm" in log, log[-2000:]
    info = json.loads((out / "build-info.json").read_text())
    assert info["toolchain"] == {"rpm-build": "tinydistro-rpm-build-1-1"} and len(info["image"]) == 20, info
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before, "the build wrote into the source"

    # As the Debian path's: the profile's own image, then the build user's layer and the
    # build requirements' (installed by the family's builder: here the host's dnf) on top.
    tiny.ok("run", "tiny", "--", "test", "!", "-e", "/usr/share/tinydistro/greeting")
    images = {i["profile"]: [(layer["kind"], layer["path"]) for layer in i["layers"]]
              for i in json.loads(tiny.ok("images", "--json").out)}
    assert images["package-sm-hello.tiny"][:-2] == images["tiny"], images
    assert [kind for kind, _ in images["package-sm-hello.tiny"][-2:]] == ["setup", "packages"], images
    log = next((tiny.store / "logs").glob("build-package-sm-hello.tiny-*.log")).read_text()
    assert "install rpm-build 'tinydistro-greeting >= 1'" in log, log

    # dnf reads a file:// repository in place (its cache holds no package to count), so the
    # proof that the second build installs nothing is that dnf never runs: no layer is built,
    # no image build log is written.
    layers = sorted(p.name for p in (tiny.store / "layers").iterdir())
    logs = {p.name: p.stat().st_size for p in (tiny.store / "logs").glob("build-*.log")}
    assert [name for name in logs if name.startswith("build-package-sm-hello.tiny-")], logs
    code, row, err = build(tiny, source, tmp_path / "again")
    assert code == 0 and row["status"] == "passed", (row, err)
    assert "building layer" not in err, err
    assert sorted(p.name for p in (tiny.store / "layers").iterdir()) == layers, "a layer was built again"
    assert {p.name: p.stat().st_size for p in (tiny.store / "logs").glob("build-*.log")} == logs, "dnf ran again"

    # A .src.rpm of the same source: rpmbuild --rebuild, over the same build-requirements layer
    # (read from the package's header, they are the same requirements).
    srpm = tmp_path / "srpm"
    srpm.mkdir()
    (srpm / "sm-hello-1.0-1.src.rpm").write_bytes((out / "sm-hello-1.0-1.src.rpm").read_bytes())
    code, row, err = build(tiny, srpm / "sm-hello-1.0-1.src.rpm", tmp_path / "rebuilt")
    assert code == 0 and row["status"] == "passed", (row, err)
    assert "building layer" not in err, err
    assert {p.name for p in (tmp_path / "rebuilt" / "tiny").iterdir()} == {
        "sm-hello-1.0-1.noarch.rpm", "build.log", "build-info.json"}
    assert "Installing /build/src/sm-hello-1.0-1.src.rpm" in (tmp_path / "rebuilt" / "tiny" / "build.log").read_text()
    refused = tiny("package", "build", str(srpm / "sm-hello-1.0-1.src.rpm"), "-p", "tiny", "--build-type", "source")
    assert refused.code == 125 and "is a source package already" in refused.err and "hint:" in refused.err, refused
    # --build-type source of a spec: rpmbuild -bs, the .src.rpm alone.
    code, row, err = build(tiny, source, tmp_path / "srpm-only", "--build-type", "source")
    assert code == 0 and {p.name for p in (tmp_path / "srpm-only" / "tiny").iterdir()} == {
        "sm-hello-1.0-1.src.rpm", "build.log", "build-info.json"}, (row, err)
    assert not [s for s in json.loads(tiny.ok("ls", "--json").out) if s["name"].startswith("pkg-")]


def test_each_failure_names_its_stage(tiny: CLI, tmp_path: Path) -> None:
    cases = {
        "build-deps": spec(tmp_path, "sm-nodeps", requires="tinydistro-greeting, sm-no-such-package-xyz"),
        "build": spec(tmp_path, "sm-broken", build="echo 'the compiler is unhappy' >&2; exit 3"),
        "tests": spec(tmp_path, "sm-testfail", check="test \"$(sh ./sm-testfail.sh)\" = 'goodbye'"),
        "timeout": spec(tmp_path, "sm-slow", build="sleep 6173"),
        # Source1 is not beside the spec.
        "source": spec(tmp_path, "sm-lost", extra="Source1: sm-lost-data.tar.gz\n"),
    }
    for stage, source in cases.items():
        code, row, err = build(tiny, source, tmp_path / "out" / stage, "--timeout", "5" if stage == "timeout" else "60")
        assert code == 1 and row["status"] == "failed" and row["stage"] == stage, (stage, row, err)
        assert Path(str(row["log"])).exists(), row
    code, row, _ = build(tiny, cases["build-deps"], tmp_path / "out" / "again")
    assert row["packages"] == ["sm-no-such-package-xyz"], row
    assert "unhappy" in (tmp_path / "out" / "build" / "tiny" / "build.log").read_text()
    # A requirement under %if is not evaluated on the host: rpmbuild's own check names it.
    conditional = spec(tmp_path, "sm-cond", requires="tinydistro-greeting\n%if 1\nBuildRequires: sm-not-here >= 2\n"
                                                     "%endif")
    code, row, err = build(tiny, conditional, tmp_path / "out" / "cond")
    assert code == 1 and row["stage"] == "build-deps" and row["packages"] == ["sm-not-here >= 2"], (row, err)
    assert "left to rpmbuild's own check: sm-not-here >= 2" in err, err
    assert not [s for s in json.loads(tiny.ok("ls", "--json").out) if s["name"].startswith("pkg-")]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A URL on the host's loopback that answers: what a build with the host's network reaches."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "data").write_text("fetched\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(tmp_path / "www"), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/data"
    try:
        assert urllib.request.urlopen(url, timeout=10).read() == b"fetched\n"
        yield url
    finally:
        server.shutdown()
        server.server_close()


def test_the_build_has_no_network_unless_asked(tiny: CLI, served: str, tmp_path: Path) -> None:
    source = spec(tmp_path, "sm-fetch", build=f"wget -q -O fetched {served}")
    code, row, _ = build(tiny, source, tmp_path / "out")
    assert code == 1 and row["stage"] == "build", row
    code, row, err = build(tiny, source, tmp_path / "out", "--network", "host")
    assert code == 0 and row["status"] == "passed", (row, err)


def test_only_regular_rpm_files_come_out_of_the_sandbox(tiny: CLI, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("the host's\n")
    plant = (f"ln -s {secret} /build/out/evil-1.0-1.noarch.rpm && ln -s /etc/shadow /build/out/shadow.src.rpm "
             "&& mkfifo /build/out/fifo-1.0-1.noarch.rpm"
             # The source's link to a file of the image's did not give that file to the build user.
             "\ntest \"$(stat -c %u /etc/passwd)\" = 0")
    source = spec(tmp_path, "sm-links", build=plant)
    (source / "passwd").symlink_to("/etc/passwd")
    code, row, err = build(tiny, source, tmp_path / "out")
    assert code == 0, (row, err)
    out = tmp_path / "out" / "tiny"
    assert (out / "sm-links-1.0-1.noarch.rpm").is_file()
    for name in ("evil-1.0-1.noarch.rpm", "shadow.src.rpm", "fifo-1.0-1.noarch.rpm"):
        assert not (out / name).exists() and not (out / name).is_symlink(), name


def test_a_name_with_capitals_and_a_plus_builds(tiny: CLI, tmp_path: Path) -> None:
    """An RPM's Name may be what no sandbox may be called (PyYAML, gtk+)."""
    code, row, err = build(tiny, spec(tmp_path, "Sm_Hello+Plus"), tmp_path / "out")
    assert code == 0 and row["status"] == "passed", (row, err)
    assert (tmp_path / "out" / "tiny" / "Sm_Hello+Plus-1.0-1.noarch.rpm").is_file()


def test_a_profile_of_the_other_family_is_refused(tiny: CLI, tmp_path: Path) -> None:
    source = spec(tmp_path, "sm-family")
    shipped = CLI(tmp_path / "store")  # the shipped profiles; nothing is built before the check
    refused = shipped("package", "build", str(source), "-p", "debian-bookworm")
    assert refused.code == 125 and "debian profile" in refused.err and "hint:" in refused.err, str(refused)
    assert "rpm source" in refused.err, refused.err
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.spec", "b.spec"):
        (two / name).write_text((source / "sm-family.spec").read_text())
    refused = tiny("package", "build", str(two), "-p", "tiny")
    assert refused.code == 125 and "holds 2 .spec files" in refused.err, str(refused)


def test_the_real_fedora_profile_builds_a_spec_when_its_mirrors_answer(tmp_path: Path) -> None:
    """Only where Fedora's mirrors are reachable: rpm-build and the BuildRequires from Fedora,
    installed by the image's own dnf."""
    need_fedora_mirrors()
    source = spec(tmp_path, "sm-fedora", requires="sed")
    (source / "sm-fedora.spec").write_text((source / "sm-fedora.spec").read_text().replace(
        "cat /usr/share/tinydistro/greeting", "echo hello from fedora"))
    cli = CLI(tmp_path / "store")
    result = cli("package", "build", str(source), "-p", "fedora", "--results", str(tmp_path / "out"), "--json")
    assert result.code == 0, str(result)
    assert (tmp_path / "out" / "fedora" / "sm-fedora-1.0-1.noarch.rpm").is_file()
