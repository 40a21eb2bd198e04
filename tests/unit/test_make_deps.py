"""`make deps` installs what the tests use: every host tool the suite runs comes from a package
in the Makefile's APT_PACKAGES, or from an Essential one (always installed on Debian and Ubuntu).

The tools are read from the tests themselves (the argv of each subprocess they start, each tool
they look up with shutil.which), so a test that starts using a new tool is checked too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache

from tests.conftest import REPO, missing

CALLED = re.compile(r'(?:run|Popen|check_output|which)\(\[?\s*"([a-z][a-z0-9_.+-]*)"')
# Run under a name the pattern cannot see (tests/rpmrepo.py: GPG = "gpg").
ALSO = {"gpg"}


def tools_the_tests_run() -> set[str]:
    found = set(ALSO)
    for path in (REPO / "tests").rglob("*.py"):
        found |= set(CALLED.findall(path.read_text()))
    return found - {"sandboxmgr"}


def make_deps_packages() -> set[str]:
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("APT_PACKAGES :=")]
    return set(line.split(":=", 1)[1].split())


@cache
def owner(path: str) -> str | None:
    """The Debian package that installed ``path`` (through usrmerge's /bin -> /usr/bin too)."""
    for candidate in dict.fromkeys((path, os.path.realpath(path), path.removeprefix("/usr"))):
        found = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        owners = [line.split(":", 1)[0] for line in found.stdout.splitlines() if not line.startswith("diversion ")]
        if found.returncode == 0 and owners:
            return owners[0].split(",")[0].strip()
    return None


def installed_with(packages: set[str]) -> set[str]:
    """``packages`` and what they depend on, as installed here (gnupg brings gpg and gpgconf)."""
    seen: set[str] = set()
    todo = list(packages)
    while todo:
        package = todo.pop()
        if package in seen:
            continue
        seen.add(package)
        found = subprocess.run(["dpkg-query", "-W", "-f=${Depends},${Pre-Depends}", package],
                               capture_output=True, text=True)
        for alternatives in found.stdout.split(","):
            for alternative in alternatives.split("|"):
                name = alternative.strip().split(" ")[0].split(":")[0]
                if name:
                    todo.append(name)
    return seen


def essential(package: str) -> bool:
    found = subprocess.run(["dpkg-query", "-W", "-f=${Essential}", package], capture_output=True, text=True)
    return found.stdout.strip() == "yes"


def test_make_deps_installs_every_tool_the_tests_run() -> None:
    if shutil.which("dpkg-query") is None:
        missing("not a Debian or Ubuntu host: make deps uses apt-get")
    tools = tools_the_tests_run()
    assert {"gcc", "createrepo_c", "rpmbuild", "busybox", "pgrep", "losetup"} <= tools, tools
    listed = installed_with(make_deps_packages())
    absent = sorted(tool for tool in tools if shutil.which(tool) is None)
    assert not absent, f"not installed on this host (make deps should install them): {absent}"
    unlisted = {}
    for tool in sorted(tools):
        path = shutil.which(tool)
        assert path is not None
        package = owner(path)
        assert package is not None, f"{tool} ({path}) belongs to no package"
        if package not in listed and not essential(package):
            unlisted[tool] = package
    assert not unlisted, f"make deps installs no package giving these tools the tests run: {unlisted}"


def test_make_deps_installs_the_static_libc_the_attack_programs_link() -> None:
    gcc = shutil.which("gcc")
    if gcc is None or shutil.which("dpkg-query") is None:
        missing("gcc or dpkg-query is not installed (make deps installs gcc)")
    assert gcc is not None
    libc = subprocess.run([gcc, "-print-file-name=libc.a"], capture_output=True, text=True).stdout.strip()
    assert os.path.isabs(libc), f"gcc finds no static libc ({libc}): libc6-dev is missing"
    assert owner(libc) in make_deps_packages(), (libc, owner(libc))
