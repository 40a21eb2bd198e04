"""Reading an RPM source on the host without running it (the .spec as text, the .src.rpm's header
byte by byte), rpmbuild's failures told apart, and the collection of its products."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from sandboxmgr.package import PackageResult
from sandboxmgr.pkgsource import SourceError, read_source, unsatisfiable
from sandboxmgr.rpmpackage import collect, failed_requires, rpmbuild_argv, stage_of
from sandboxmgr.rpmsource import parse_spec, read_header, split_requires
from sandboxmgr.store import SandboxRecord
from tests.conftest import missing

SPEC = """\
%global upstream 2.4
%define sover 3
# BuildRequires: commented-out
Name:           sm-tool
Version:        %{upstream}
Release:        1%{?dist}
Summary:        a tool
Source0:        https://example.org/releases/%{name}-%{version}.tar.gz
Source1:        %{name}.conf
Patch0:         fix-%{name}.patch
Source2:        %{vendor_url}/extra.tar.gz
BuildRequires:  gcc, make >= 4.3 libfoo%{sover}-devel
BuildRequires:  pkgconfig(glib-2.0) >= 2.56, (python3 or python2)
BuildRequires:  /usr/bin/perl \\
                zlib-devel
%if 0%{?fedora}
BuildRequires:  fedora-only
%else
BuildRequires:  elsewhere
%endif
BuildRequires:  %{distro_macro}-devel
%{!?_without_tests:BuildRequires: check-devel}

%description
A tool.

%package libs
Summary: its libraries
BuildRequires: libs-only-devel

%prep
%autosetup
BuildRequires: not-a-tag-in-a-script

%build
%make_build
"""


def test_a_spec_is_read_with_its_own_macros_and_nothing_run(tmp_path: Path) -> None:
    spec = parse_spec(SPEC, "sm-tool.spec")
    assert (spec.name, spec.version) == ("sm-tool", "2.4")
    assert spec.build_requires == ("gcc", "make >= 4.3", "libfoo3-devel", "pkgconfig(glib-2.0) >= 2.56",
                                   "(python3 or python2)", "/usr/bin/perl", "zlib-devel", "libs-only-devel")
    # What depends on the distribution's macros or on %if is left to rpmbuild's own check.
    assert spec.unread == ("fedora-only", "elsewhere", "%{distro_macro}-devel",
                           "%{!?_without_tests:BuildRequires: check-devel}")
    assert spec.sources == ("sm-tool-2.4.tar.gz", "sm-tool.conf", "fix-sm-tool.patch")
    # Through read_source: a directory with one spec is that spec's source.
    (tmp_path / "sm-tool.spec").write_text(SPEC)
    source = read_source(tmp_path)
    assert (source.family, source.path, source.name, source.version) == ("rpm", tmp_path / "sm-tool.spec",
                                                                         "sm-tool", "2.4")
    assert source.build_deps[:2] == (("BuildRequires", "gcc"), ("BuildRequires", "make >= 4.3"))


@pytest.mark.parametrize(("text", "said"), [
    ("Name: x\n", "no Name or Version tag"),
    ("Name: x y\nVersion: 1\n", "is not a package name"),
    ("Name: x\nVersion: %{distro_version}\n", "not a version the host can read"),
    ("Name: x\nVersion: 1\nBuildRequires: --installroot=/\n", "is not a requirement"),
    ("Name: x\nVersion: 1\nBuildRequires: a\x1bb\n", "is not a requirement"),
])
def test_a_spec_that_cannot_be_read_is_one_clear_error(tmp_path: Path, text: str, said: str) -> None:
    (tmp_path / "x.spec").write_text(text)
    with pytest.raises(SourceError, match=said) as caught:
        read_source(tmp_path / "x.spec")
    assert caught.value.hint


def test_a_directory_with_two_specs_or_a_binary_rpm_is_refused(tmp_path: Path) -> None:
    for name in ("a.spec", "b.spec"):
        (tmp_path / name).write_text("Name: a\nVersion: 1\n")
    with pytest.raises(SourceError, match=r"holds 2 \.spec files"):
        read_source(tmp_path)
    binary = bytearray(b"\xed\xab\xee\xdb\x03\x00\x00\x00" + bytes(88))
    (tmp_path / "x-1-1.x86_64.src.rpm").write_bytes(binary)
    with pytest.raises(SourceError, match="a binary RPM, not a source package"):
        read_source(tmp_path / "x-1-1.x86_64.src.rpm")


def test_requirements_split_as_rpm_reads_them() -> None:
    assert split_requires("a, b >= 1.0 c,d = 2:3-4 (e if f) ((g or h) and i)") == [
        "a", "b >= 1.0", "c", "d = 2:3-4", "(e if f)", "((g or h) and i)"]


def test_a_src_rpm_header_gives_the_requirements_rpm_would(tmp_path: Path) -> None:
    if shutil.which("rpmbuild") is None:
        missing("rpmbuild is not installed (make deps installs it)")
    spec = tmp_path / "sm-hdr.spec"
    spec.write_text("Name: sm-hdr\nEpoch: 2\nVersion: 1.5\nRelease: 3\nSummary: s\nLicense: MIT\n"
                    "BuildRequires: make >= 4, gcc, (a or b), c < 2, d <= 3, e = 1\n%description\nd\n%files\n")
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LC_ALL": "C"}
    subprocess.run(["rpmbuild", "-bs", "--define", f"_topdir {tmp_path}", "--define", f"_dbpath {tmp_path}/db",
                    str(spec)], env=env, check=True, capture_output=True)
    (srpm,) = (tmp_path / "SRPMS").glob("*.src.rpm")
    header = read_header(srpm.read_bytes())
    assert (header.name, header.version) == ("sm-hdr", "2:1.5-3")
    assert header.build_requires == ("(a or b)", "c < 2", "d <= 3", "e = 1", "gcc", "make >= 4")
    source = read_source(srpm)
    assert (source.family, source.name, source.version) == ("rpm", "sm-hdr", "2:1.5-3")
    # A header cut short, not an RPM at all, or whose requirement flags are strings: one clear error.
    data = srpm.read_bytes()
    flags = _retyped(data, 1048, 8)
    for bad, said in ((data[:200], "truncated"), (b"not an rpm" * 20, "not an RPM package"),
                      (flags, "requirements are malformed")):
        with pytest.raises(SourceError, match=said):
            read_header(bad)
    # A hostile header, byte flips anywhere past the lead: a header or one clear error, never a crash.

    rng = random.Random(16)
    variants = [data, _retyped(data, 1049, 4), _retyped(data, 1049, 6), _retyped(data, 1000, 4)]
    for _ in range(800):
        mutated = bytearray(rng.choice(variants)[:8192])
        for _ in range(rng.randint(0, 6)):
            mutated[rng.randrange(96, len(mutated))] = rng.randrange(256)
        with contextlib.suppress(SourceError):
            read_header(bytes(mutated))


def _retyped(data: bytes, tag: int, kind: int) -> bytes:
    """``data`` with the main header's entry of ``tag`` given another type."""
    import struct

    signature = 96 + 16 + 16 * struct.unpack(">I", data[104:108])[0] + struct.unpack(">I", data[108:112])[0]
    header = signature + (-signature % 8)
    count = struct.unpack(">I", data[header + 8:header + 12])[0]
    for index in range(count):
        entry = header + 16 + 16 * index
        if struct.unpack(">i", data[entry:entry + 4])[0] == tag:
            return data[:entry + 4] + struct.pack(">i", kind) + data[entry + 8:]
    raise AssertionError(f"no tag {tag}")


def test_rpmbuild_failures_are_told_apart() -> None:
    missing_deps = ("error: Failed build dependencies:\n\tsm-not-here >= 2 is needed by sm-x-1.0-1.noarch\n"
                    "\tother is needed by sm-x-1.0-1.noarch\n")
    assert stage_of(missing_deps) == "build-deps"
    assert failed_requires(missing_deps) == ["sm-not-here >= 2", "other"]
    assert stage_of("error: Bad exit status from /var/tmp/rpm-tmp.x1 (%check)\n") == "tests"
    assert stage_of("error: Bad exit status from /var/tmp/rpm-tmp.x1 (%prep)\n") == "source"
    assert stage_of("error: Bad exit status from /var/tmp/rpm-tmp.x1 (%build)\n") == "build"
    assert unsatisfiable("No match for argument: sm-no-such\nError: Unable to find a match: sm-no-such") == [
        "sm-no-such"]


def test_rpmbuild_writes_every_product_flat_as_the_build_user_would_read_them() -> None:
    from sandboxmgr.pkgsource import Source

    spec = Source("rpm", Path("/s/x.spec"), "x", "1", ())
    argv = rpmbuild_argv(spec, "binary")
    assert argv[:2] == ("rpmbuild", "-ba") and argv[-1] == "/build/src/x.spec"
    assert "_sourcedir /build/src" in argv and "_rpmdir /build/out" in argv and "_srcrpmdir /build/out" in argv
    assert rpmbuild_argv(spec, "source")[1] == "-bs"
    srpm = rpmbuild_argv(Source("rpm", Path("/s/x-1-1.src.rpm"), "x", "1-1", ()), "binary")
    assert srpm[1] == "--rebuild" and srpm[-1] == "/build/src/x-1-1.src.rpm"


def test_only_regular_rpm_files_are_collected(tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    out_dir = sandbox / "upper" / "build" / "out"
    out_dir.mkdir(parents=True)
    (out_dir / "x-1-1.noarch.rpm").write_bytes(b"rpm")
    (out_dir / "x-1-1.src.rpm").write_bytes(b"srpm")
    (out_dir / "notes.txt").write_text("not a product")
    secret = tmp_path / "secret"
    secret.write_text("the host's")
    (out_dir / "evil-1-1.noarch.rpm").symlink_to(secret)
    os.mkfifo(out_dir / "fifo-1-1.noarch.rpm")
    record = SandboxRecord("s", sandbox, {})
    results = tmp_path / "results"
    results.mkdir()
    (results / "x-1-1.noarch.rpm").symlink_to(secret)  # a link left in the results is replaced, not followed
    result = PackageResult("p", "p")
    collect(record, results, result)
    assert result.stage is None, result
    assert sorted(p.name for p in results.iterdir()) == ["x-1-1.noarch.rpm", "x-1-1.src.rpm"]
    assert not (results / "x-1-1.noarch.rpm").is_symlink() and secret.read_text() == "the host's"
    # The build made /build a link (to the host's results, say): nothing is read through it.
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(sandbox / "upper" / "build"), elsewhere)
    (sandbox / "upper" / "build").symlink_to(elsewhere)
    result = PackageResult("p", "p")
    collect(record, tmp_path / "results", result)
    assert result.stage == "results" and "no /build/out" in result.reason
    # An empty /build/out is a failure of the results stage.
    (sandbox / "upper" / "build").unlink()
    (sandbox / "upper" / "build" / "out").mkdir(parents=True)
    result = PackageResult("p", "p")
    collect(record, tmp_path / "results", result)
    assert result.stage == "results" and "no .rpm" in result.reason


def test_the_build_requirements_are_one_layer_over_the_profiles_own_image(tmp_path: Path) -> None:
    """As the Debian path's build-deps layer: the profile's own layers stay, the build user's
    step and the requirements go on top, the requirements' layer keyed by them alone."""
    from sandboxmgr.identity import layers
    from sandboxmgr.locations import shipped_configs_dir
    from sandboxmgr.package import with_build_deps
    from sandboxmgr.pkgsource import Source
    from sandboxmgr.profile import ProfileRegistry

    (tmp_path / "f.yaml").write_text("extends: fedora\npackages: [gcc]\nsetup: ['echo configured']\n")
    profile = ProfileRegistry([tmp_path, shipped_configs_dir()]).load("f")
    first = Source("rpm", Path("/s/a.spec"), "Sm-A", "1", (("BuildRequires", "make >= 4"),))
    deps = with_build_deps(profile, first)
    own, built = layers(profile), layers(deps)
    assert built[:len(own)] == own and len(built) == len(own) + 2, built
    assert built[-1].kind == "packages" and built[-1].packages == ("rpm-build", "make >= 4"), built[-1]
    assert deps.name == "package-sm-a.f" and deps.packages == profile.packages
    # Another source with the same needs: the same layers; other needs: only the top one differs.
    same = with_build_deps(profile, Source("rpm", Path("/s/b.src.rpm"), "b", "2-1", first.build_deps))
    assert layers(same) == built
    other = layers(with_build_deps(profile, Source("rpm", Path("/s/c.spec"), "c", "1", (("BuildRequires", "sed"),))))
    assert other[:-1] == built[:-1] and other[-1].key != built[-1].key


def test_a_tree_with_debian_and_a_spec_is_a_debian_source(tmp_path: Path) -> None:
    (tmp_path / "debian").mkdir()
    (tmp_path / "debian" / "control").write_text("Source: both\n")
    (tmp_path / "debian" / "changelog").write_text("both (1.0) unstable; urgency=low\n")
    (tmp_path / "both.spec").write_text("Name: both\nVersion: 1.0\n")
    assert read_source(tmp_path).family == "debian"
    (tmp_path / "debian" / "control").unlink()
    (tmp_path / "debian" / "changelog").unlink()
    (tmp_path / "debian").rmdir()
    assert read_source(tmp_path).family == "rpm"
