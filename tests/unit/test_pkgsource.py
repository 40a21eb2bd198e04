"""Reading a package's source: deb822 fields, a signed .dsc, the build-deps step, apt's refusals."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from sandboxmgr.pkgsource import SourceError, build_deps_step, paragraphs, read_source, unsatisfiable

SIGNED_DSC = """\
-----BEGIN PGP SIGNED MESSAGE-----
Hash: SHA512

Format: 3.0 (quilt)
Source: hello
Binary: hello
Version: 2.10-3
Build-Depends: debhelper-compat (= 13),
 gettext <!nocheck>,
 libc6-dev [linux-any]
Build-Depends-Indep: texinfo
Files:
 0123 100 hello_2.10.orig.tar.gz

-----BEGIN PGP SIGNATURE-----

iQIzBAEBCgAdFiEE
-----END PGP SIGNATURE-----
"""


def test_a_signed_dsc_is_read_without_its_armour(tmp_path: Path) -> None:
    dsc = tmp_path / "hello_2.10-3.dsc"
    dsc.write_text(SIGNED_DSC)
    source = read_source(dsc)
    assert (source.name, source.version, source.tree_name) == ("hello", "2.10-3", "hello-2.10")
    assert dict(source.build_deps) == {
        "Build-Depends": "debhelper-compat (= 13),\n gettext <!nocheck>,\n libc6-dev [linux-any]",
        "Build-Depends-Indep": "texinfo"}


def test_the_build_deps_step_carries_the_fields_and_nothing_for_the_shell(tmp_path: Path) -> None:
    dsc = tmp_path / "xx_1.0.dsc"
    dsc.write_text("Source: xx\nVersion: 1:1.0~rc1\nBuild-Depends: make, $(touch /tmp/owned); `id`\n")
    source = read_source(dsc)
    assert source.upstream_version == "1.0~rc1"
    step = build_deps_step(source)
    assert "$(touch" not in step.split("\n", 1)[1] and "`id`" not in step.split("\n", 1)[1]
    encoded = next(word for word in step.split() if len(word) > 40)
    control = base64.b64decode(encoded).decode()
    assert control == "Source: sandboxmgr-build-deps\nBuild-Depends: make, $(touch /tmp/owned); `id`\n"
    # Same needs, same step (so the same layer), whatever the source's name.
    other = tmp_path / "y_2.0.dsc"
    other.write_text("Source: yy\nVersion: 2.0\nBuild-Depends: make, $(touch /tmp/owned); `id`\n")
    assert build_deps_step(read_source(other)) == step


@pytest.mark.parametrize(("files", "said"), [
    ({}, "has no debian/control"),
    ({"debian/control": "Source: x\n", "debian/changelog": "not a changelog\n"}, "the first line is not"),
    ({"debian/control": "Source: x\n", "debian/changelog": "X_Y (1.0) unstable; urgency=low\n"}, "the first line"),
    ({"debian/control": " continuation first\n", "debian/changelog": "xx (1.0) unstable\n"}, "continuation line"),
    ({"debian/control": "Source: x\nBuild-Depends: a\x1bb\n", "debian/changelog": "xx (1.0) u\n"}, "control char"),
])
def test_a_source_that_cannot_be_read_is_one_clear_error(tmp_path: Path, files: dict[str, str], said: str) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(SourceError, match=said) as caught:
        read_source(tmp_path)
    assert caught.value.hint


def test_rpm_sources_go_to_their_reader_and_other_files_are_not_sources(tmp_path: Path) -> None:
    for name, said in (("x.spec", "no Name or Version tag"), ("x-1.src.rpm", "not an RPM package"),
                       ("notes.txt", "not a package source")):
        (tmp_path / name).write_text("")
        with pytest.raises(SourceError, match=said):
            read_source(tmp_path / name)


def test_apt_refusals_name_the_packages() -> None:
    log = ("E: Unable to locate package sm-no-such-package-xyz\n"
           " builddeps:x : Depends: libfoo-dev but it is not installable\n"
           "E: Package 'bar' has no installation candidate\n")
    assert unsatisfiable(log) == ["sm-no-such-package-xyz", "libfoo-dev", "bar"]


def test_paragraphs_skip_comments_and_split_on_blank_lines() -> None:
    assert paragraphs("# c\nA: 1\n\nB: 2\n c\n", "f") == [{"A": "1"}, {"B": "2\n c"}]
