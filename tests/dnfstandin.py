"""A dnf for Tiny Distro (tests/rpmrepo.py), made from the host's: ``tinydistro-dnf``.

Tiny Distro has no dnf of its own, and Fedora's archives do not answer from the machine the
suite is built on. ``tinydistro-dnf`` (which provides dnf) carries the host's real dnf: the
``dnf`` script and the Python interpreter it runs on, the part of the standard library that
dnf's modules import (found by importing every one of them on the host and listing what
``sys.modules`` then holds), the ``dnf``, ``libdnf``, ``hawkey``, ``rpm``, ``gpg`` and
``libcomps`` modules whole, each with its compiled ``__pycache__`` (so running dnf writes no
byte code into the root), the programs dnf and gpgme run (``rpm``, ``rpmkeys``, ``gpg``,
``gpgconf``, ``gpgsm``, ``gpg-agent``), every shared library all of these load (ldd; copied
whole under the names ldd gives, as the rpm-build stand-in has them, so both install side by
side), rpm's configuration, the C.UTF-8 locale, the directories dnf makes when they are
missing, and a Fedora-like ``/etc/dnf/dnf.conf``. Inside a sandbox of an image with it,
``dnf install ./x.rpm`` is real dnf: it reads the profile's repository, checks its packages'
signatures against the profile's key, solves the dependencies and has rpm install them.

The payload is not compressed, so the package is built (and installed) in seconds; the
suite builds it once per session (conftest.tiny_dnf_repo).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.rpmrepo import (
    COMMON,
    RPMBUILD_TREES,
    RpmRepo,
    RpmRepoError,
    _elf_closure,
    _in_image,
    add_standin,
)

PYTHON = Path("/usr/bin/python3")  # the interpreter the host's dnf runs on (its #! line)
DNF_PROGRAMS = (Path("/usr/bin/dnf"), Path("/usr/bin/rpm"), Path("/usr/bin/rpmkeys"), Path("/usr/bin/gpg"),
                Path("/usr/bin/gpgconf"), Path("/usr/bin/gpgsm"), Path("/usr/bin/gpg-agent"))
DNF_MODULES = ("dnf", "libdnf", "hawkey", "rpm", "gpg", "libcomps")
# The directories dnf reads, and makes when they are missing (a leftover of every run without them).
DNF_DIRS = ("/etc/dnf", "/etc/dnf/aliases.d", "/etc/dnf/protected.d", "/etc/dnf/vars", "/etc/yum.repos.d")
# The C.UTF-8 locale dnf sets (Tiny Distro has none).
LOCALE = Path("/usr/lib/locale/C.utf8")
DNF_CONF = """\
[main]
gpgcheck=True
installonly_limit=3
clean_requirements_on_remove=True
best=True
skip_if_unavailable=False
"""
# What the modules' import lists, as the interpreter that dnf runs on sees it.
_LIST_MODULES = """\
import importlib, pkgutil, sys
for top in sys.argv[1:]:
    module = importlib.import_module(top)
    for info in pkgutil.walk_packages(module.__path__, top + "."):
        if not info.name.startswith("dnf.automatic"):  # dnf-automatic's, not dnf's
            importlib.import_module(info.name)
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if path:
        print(path)
"""


def _python_files(env: Mapping[str, str]) -> list[Path]:
    """The standard library dnf imports, and dnf's modules whole: each with its byte code."""
    proc = subprocess.run([str(PYTHON), "-I", "-c", _LIST_MODULES, *DNF_MODULES], env=dict(env),
                          capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise RpmRepoError(f"the host's dnf modules cannot be imported by {PYTHON}:\n{proc.stderr[-2000:]}")
    files: set[Path] = set()
    for line in proc.stdout.splitlines():
        path = Path(line)
        if path.is_relative_to("/usr/lib"):  # not the host's own /usr/local
            files.add(path)
    for top in DNF_MODULES:
        found = subprocess.run([str(PYTHON), "-I", "-c", f"import {top}; print({top}.__file__)"], env=dict(env),
                               capture_output=True, text=True, check=True, timeout=60).stdout.strip()
        files.update(p for p in Path(found).parent.rglob("*") if p.is_file())
    tag = subprocess.run([str(PYTHON), "-I", "-c", "import sys; print(sys.implementation.cache_tag)"],
                         env=dict(env), capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    byte_code = [p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc" for p in files if p.suffix == ".py"]
    files.update(p for p in byte_code if p.is_file())
    return sorted(files)


def _copy(path: Path, root: Path, links: bool = True) -> list[str]:
    """``path`` into ``root`` where the image has it; its paths in the image (a link's target too).
    A library is copied whole under the name ldd gave, as the rpm-build stand-in has it (the two
    share the file: rpm lets two packages own a path only if they install the same thing there)."""
    inside = _in_image(path)
    target = root / str(inside).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        return [str(inside)]
    link = os.readlink(path) if path.is_symlink() else ""
    if links and link and "/" not in link:  # python3 -> python3.11, dnf -> dnf-3, a library's soname link
        target.symlink_to(link)
        return [str(inside), *_copy(path.parent / link, root)]
    shutil.copy2(path.resolve(), target)
    return [str(inside)]


def stage_dnf(root: Path, env: Mapping[str, str]) -> list[str]:
    """The stand-in's files under ``root`` (absent, made here); their paths in the image."""
    programs = [*DNF_PROGRAMS, PYTHON]
    absent = [str(path) for path in programs if not path.exists()]
    if absent:
        raise RpmRepoError(f"the host lacks what the dnf stand-in carries: {absent}")
    files = [*programs, *_python_files(env), *sorted(p for p in LOCALE.rglob("*") if p.is_file())]
    rpm_tree = sorted(p for p in RPMBUILD_TREES[0].rglob("*") if p.is_file() or p.is_symlink())
    elves = [f for f in files if f.is_file() and not f.is_symlink()]
    elves += [path.resolve() for path in files if path.is_symlink()]
    listed = [inside for path in files for inside in _copy(path, root)]
    listed += [inside for path in sorted(_elf_closure(elves, env)) for inside in _copy(path, root, links=False)]
    for path in rpm_tree:  # rpm's configuration, as the rpm-build stand-in carries it
        target = root / str(_in_image(path)).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            target.symlink_to(os.readlink(path))
        else:
            shutil.copy2(path, target)
        listed.append(str(_in_image(path)))
    for name, text in (("etc/dnf/dnf.conf", DNF_CONF), ("etc/rpm/macros.tinydistro-dnf", "%_dbpath /var/lib/rpm\n")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
        listed.append(f"/{name}")
    for directory in DNF_DIRS:
        (root / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return sorted(set(listed))


def _dnf_spec(root: Path, listed: Sequence[str]) -> str:
    # An uncompressed payload: tens of megabytes of libraries are packed and unpacked in seconds.
    return COMMON.replace("w6.gzdio", "w0.ufdio") + f"""\
Name: tinydistro-dnf
Summary: The host's dnf, for installing packages in Tiny Distro
Provides: dnf
Provides: rpm
Requires: tinydistro-busybox
AutoReqProv: no

%description
dnf with the Python, the modules, the programs and the libraries it runs on.

%install
mkdir -p %{{buildroot}}
cp -a {root}/. %{{buildroot}}/

%files
%defattr(-,root,root,-)
""" + "".join(f'%dir "{path}"\n' for path in DNF_DIRS) + "".join(f'"{path}"\n' for path in listed)


def add_dnf(repo: RpmRepo, workdir: Path, base: Path | None = None) -> Path:
    """A copy of ``repo``'s signed repository (or of the repository ``base``) with the dnf
    stand-in added, signed with ``repo``'s key and indexed: a Tiny Distro with a dnf."""
    return add_standin(repo, workdir, "tinydistro-dnf", stage_dnf, _dnf_spec, base)
