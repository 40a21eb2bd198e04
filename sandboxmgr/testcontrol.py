"""A package's own tests as autopkgtest declares them: ``debian/tests/control``
(https://salsa.debian.org/ci-team/autopkgtest/-/blob/master/doc/README.package-tests.rst).

``package test`` reads the file out of the source tree that ``package build`` saved
(``source-tree.tar.gz``): a build's file, so hostile. Only that one member is read, in
memory, its size bounded; every value that reaches a command line is checked first (test
names, the tests directory, package names), and the tests themselves run in the sandbox.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from sandboxmgr.ociunpack import Bounded
from sandboxmgr.pkgsource import SourceError, paragraphs

# What a sandbox that runs each test in a fresh testbed of its own gives: the test user
# (needs-root: root), the network, a writable copy of the tree. Any other restriction
# (build-needed, needs-reboot, ...) makes the test skipped, as autopkgtest skips it.
SUPPORTED = frozenset({"allow-stderr", "needs-root", "breaks-testbed", "isolation-container", "isolation-machine",
                       "needs-internet", "rw-build-tree", "skippable", "superficial", "flaky", "skip-not-installable",
                       "hint-testsuite-triggers", "skip-foreign-architecture"})
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._-]*\Z")
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?\Z")
_DIR_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9+._/-]*\Z")
_BIGGEST = 1 << 20  # bytes of a control file
_MEMBERS = 200_000  # members of a source tree looked through for it


@dataclass(frozen=True)
class TestCase:
    name: str  # the test's name, or "command1", "command2" for a Test-Command
    script: str | None  # the path in the tree, for a Tests: entry
    command: str | None  # a Test-Command's shell command
    depends: tuple[str, ...]  # packages to install besides the tested ones ("@")
    restrictions: frozenset[str]
    skip: str = ""  # why it is not run, else ""


def read_tests(tarball: Path) -> list[TestCase]:
    """The tests of the source tree in ``tarball`` (one top directory), [] if it has none."""
    try:
        # Bounded: the build user made the tar; a PAX header is not read whole, a chain is no recursion.
        with tarfile.open(tarball, "r:gz", tarinfo=Bounded) as archive:
            for count, member in enumerate(archive):
                if count > _MEMBERS:
                    break
                if re.fullmatch(r"[^/]+/debian/tests/control", member.name) and member.isreg():
                    if member.size > _BIGGEST:
                        raise SourceError(f"{tarball}: debian/tests/control is larger than {_BIGGEST} bytes",
                                          hint="is this really a control file?")
                    handle = archive.extractfile(member)
                    text = handle.read(_BIGGEST).decode(errors="replace") if handle else ""
                    return parse_tests(text, f"{tarball}:debian/tests/control")
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise SourceError(f"cannot read {tarball}: {exc}", hint="build the package again (package build)") from None
    return []


def parse_tests(text: str, where: str) -> list[TestCase]:
    """Each test of a control file, in order (a paragraph with ``Tests: a b`` is two)."""
    found: list[TestCase] = []
    commands = 0
    for fields in paragraphs(text, where):
        restrictions = frozenset(fields.get("Restrictions", "").replace(",", " ").split())
        depends, unmet = _depends(fields.get("Depends", "@"), where)
        directory = fields.get("Tests-Directory", "debian/tests").strip()
        if not _DIR_RE.match(directory) or ".." in directory.split("/"):
            raise SourceError(f"{where}: Tests-Directory {directory!r} is not a path in the tree",
                              hint="fix the control file")
        unknown = sorted(restrictions - SUPPORTED)
        skip = (f"restriction {unknown[0]} is not supported" if unknown else unmet)
        if "Test-Command" in fields:
            commands += 1
            found.append(TestCase(f"command{commands}", None, fields["Test-Command"].replace("\n", " ").strip(),
                                  depends, restrictions, skip))
            continue
        names = fields.get("Tests", "").replace(",", " ").split()
        if not names:
            raise SourceError(f"{where}: a paragraph with neither Tests nor Test-Command", hint="fix the control file")
        for name in names:
            if not _NAME_RE.match(name):
                raise SourceError(f"{where}: {name!r} is not a test name", hint="fix the control file")
            found.append(TestCase(name, f"{directory}/{name}", None, depends, restrictions, skip))
    return found


def _depends(value: str, where: str) -> tuple[tuple[str, ...], str]:
    """The packages a Depends field asks for besides ``@`` (the first of alternatives, without
    versions or architectures), and why the test cannot run, if it cannot."""
    names: list[str] = []
    for part in (item.strip() for item in value.replace("\n", " ").split(",")):
        if not part or part == "@":
            continue
        if part.startswith("@"):
            return (), f"Depends: {part} is not supported"
        name = re.sub(r"\s*[(\[<].*", "", part.split("|")[0]).strip()
        if not _PACKAGE_RE.match(name):
            raise SourceError(f"{where}: Depends names {name!r}, not a package", hint="fix the control file")
        names.append(name)
    return tuple(names), ""
