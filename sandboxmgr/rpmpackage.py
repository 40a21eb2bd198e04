"""``package build`` of an RPM source (rpmsource.py): the steps mock takes, in package.py's frame.

1. **build-deps** - over the profile's image, a setup layer adds the unprivileged build user
   and a layer above it the source's BuildRequires and ``rpm-build`` (the profile's
   ``build_packages``), which the family's builder installs as it installs ``packages`` (the
   image's own dnf with the profile's repositories, as ``dnf builddep`` installs what it
   reads; the host's dnf for an image without one). The same image machinery as the Debian
   path's build-deps layer: keyed by the requirements, so a second build installs nothing;
2. a fresh sandbox over it without a network; root copies the source from ``/src`` to
   ``/build/src`` and gives it to the build user;
3. **build** - ``rpmbuild --rebuild`` (a ``.src.rpm``) or ``rpmbuild -ba`` (a ``.spec``, its
   sources beside it) as that user, every product written flat into ``/build/out``; the
   stage is told from rpmbuild's own words: ``build-deps`` when its check of the build
   requirements fails (naming them), ``source`` for ``%prep`` or a missing source,
   ``tests`` for ``%check``, ``build`` otherwise;
4. **results** - the ``.rpm`` and ``.src.rpm`` files are copied out of the sandbox's own files
   exactly as the Debian products are (package.copy_out: regular files only, never through
   a link), beside the build log and ``build-info.json``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

from sandboxmgr.errors import SandboxError
from sandboxmgr.package import BuildRequest, PackageResult, copy_out
from sandboxmgr.pkgsource import BUILD_USER, Source
from sandboxmgr.profile import Profile
from sandboxmgr.runner import TimedOut, run_step, tail
from sandboxmgr.store import ImageRecord, SandboxRecord, Store

PRODUCT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+~^-]*\.rpm\Z")
TOOLCHAIN = ("rpm-build", "gcc", "binutils", "glibc-devel", "make", "redhat-rpm-config")
SOURCES, OUT, TOPDIR = "/build/src", "/build/out", "/build/rpmbuild"
# The build user, made with useradd where the image has it, else by hand (a minimal image).
USER_STEP = f"""\
# the build user of package builds
if ! id -u {BUILD_USER} >/dev/null 2>&1; then
  if command -v useradd >/dev/null 2>&1; then
    useradd --create-home --user-group --shell /bin/sh {BUILD_USER}
  else
    echo '{BUILD_USER}:x:1000:1000:package builds:/home/{BUILD_USER}:/bin/sh' >> /etc/passwd
    echo '{BUILD_USER}:x:1000:' >> /etc/group
    mkdir -p /home/{BUILD_USER} && chown 1000:1000 /home/{BUILD_USER}
  fi
fi
"""
_STAGES = ((r"Failed build dependencies:", "build-deps"),
           (r"Bad exit status from \S+ \(%check\)", "tests"),
           (r"Bad exit status from \S+ \(%prep\)|error: Bad (file|source):|error: File \S+: No such file", "source"))


def with_build_requires(profile: Profile, source: Source) -> Profile:
    """``profile`` with ``source``'s BuildRequires installed and the build user added, under a
    name of its own."""
    needs = tuple(dict.fromkeys(("rpm-build", *(value for _, value in source.build_deps))))
    name = re.sub(r"[^a-z0-9._-]+", "-", source.name.lower())
    return replace(profile, name=f"package-{name}.{profile.name}"[:128], aliases=(),
                   setup=(*profile.setup, USER_STEP), build_packages=needs)


def check_request(request: BuildRequest) -> None:
    """Refuse what rpmbuild cannot do for this source, before anything is built."""
    if request.build_type == "source" and request.source.path.suffix != ".spec":
        raise SandboxError(f"{request.source.path} is a source package already: --build-type source has "
                           "nothing to make", hint="--build-type source makes a .src.rpm from a .spec")


def rpmbuild_argv(source: Source, build_type: str, jobs: int = 0) -> tuple[str, ...]:
    """rpmbuild for ``source`` (copied into SOURCES), every product flat in OUT; ``jobs`` (if not 0)
    is the CPU count ``%_smp_mflags`` (-jN) is made of, as mock gives it."""
    defines = {"_topdir": TOPDIR, "_rpmdir": OUT, "_srcrpmdir": OUT,
               "_build_name_fmt": "%%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm"}
    if jobs:  # both, as mock sets them: rpm before 4.15 reads only %_smp_mflags
        defines.update(_smp_build_ncpus=str(jobs), _smp_mflags=f"-j{jobs}")
    target = f"{SOURCES}/{source.path.name}"
    if source.path.suffix == ".spec":
        defines["_sourcedir"] = SOURCES
        mode = "-bs" if build_type == "source" else "-ba"
    else:
        mode = "--rebuild"
    return ("rpmbuild", mode, *(part for key, value in defines.items() for part in ("--define", f"{key} {value}")),
            target)


def steps(store: Store, request: BuildRequest, record: SandboxRecord, log: Path, result: PackageResult) -> bool:
    """Copy the source in and build it; whether a step failed (its stage and reason in ``result``)."""
    source = request.source
    lost = [name for name in source.sources if not (source.path.parent / name).is_file()]
    if lost:
        _failed(result, "source", f"{source.path.name} names sources that are not beside it: {', '.join(lost[:5])}")
        log.write_text(result.reason + "\n")
        return True
    # Root only copies the files and gives them to the build user; rpmbuild runs as that user.
    # chown -h: a link of the source's (to the image's /etc/passwd) is given away, never its target
    # (some busybox builds' chown -R follows links).
    copy = (f"mkdir -p {SOURCES} {OUT} && cp -Rp /src/. {SOURCES} && chown -hR {BUILD_USER}:{BUILD_USER} /build")
    if run_step(store, record, log, ("/bin/sh", "-c", copy), None, append=False) != 0:
        _failed(result, "source", f"copying {source.path.name} into the sandbox failed: {tail(log, 1)}")
        return True
    try:
        status = run_step(store, record, log, rpmbuild_argv(source, request.build_type, request.jobs), BUILD_USER,
                          append=True, timeout=request.timeout)
    except TimedOut:
        _failed(result, "timeout", f"the build ran longer than {request.timeout:g} s and was killed")
        return True
    if status != 0:
        text = tail(log, 80)
        _failed(result, stage_of(text), f"rpmbuild exited with status {status}: {tail(log, 1)}")
        if result.stage == "build-deps":
            result.packages = failed_requires(text)
        return True
    return False


def stage_of(log: str) -> str:
    """The stage a failed rpmbuild stopped at, from its output."""
    return next((stage for pattern, stage in _STAGES if re.search(pattern, log)), "build")


def failed_requires(log: str) -> list[str]:
    """What rpmbuild's check of the build requirements named: ``\\tfoo >= 1 is needed by ...``."""
    return list(dict.fromkeys(re.findall(r"^\s+(\S+(?: [<>=]+ \S+)?) is needed by ", log, re.MULTILINE)))


def collect(record: SandboxRecord, out: Path, result: PackageResult) -> None:
    """Copy the .rpm files from the sandbox's /build/out (its own files: hostile) into ``out``."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_DIRECTORY
    found = []
    try:
        directory = os.open(record.upper, flags)
    except OSError:
        directory = -1
    for part in OUT.strip("/").split("/"):  # each step without following a link the build made
        try:
            inner = os.open(part, flags, dir_fd=directory) if directory >= 0 else -1
        except OSError:
            inner = -1
        if directory >= 0:
            os.close(directory)
        directory = inner
    if directory < 0:
        _failed(result, "results", f"the build left no {OUT} directory")
        return
    try:
        for entry in sorted(os.listdir(directory)):
            if PRODUCT_RE.match(entry) and copy_out(directory, entry, out / entry):
                found.append(entry)
    finally:
        os.close(directory)
    if not found:
        _failed(result, "results", "the build made no .rpm file (or none that is a regular file)")


def record_info(store: Store, record: SandboxRecord, image: ImageRecord, out: Path, log: Path) -> None:
    """build-info.json: the image built in, and the packages that provide the toolchain in it."""
    # /usr/bin/rpm by its path: a busybox shell prefers its own rpm applet to the real one.
    query = ("for c in " + " ".join(TOOLCHAIN) + "; do if /usr/bin/rpm -q --whatprovides \"$c\" >/dev/null 2>&1; "
             "then echo \"$c $(/usr/bin/rpm -q --whatprovides --qf '%{NAME}-%{VERSION}-%{RELEASE}\\n' \"$c\" | "
             "head -n 1)\"; fi; done")
    versions_log = out / ".toolchain"
    run_step(store, record, versions_log, ("/bin/sh", "-c", query), None, append=False)
    pairs = [line.split(" ", 1) for line in tail(versions_log, 50).splitlines() if " " in line]
    versions = {name: version for name, version in pairs if name in TOOLCHAIN and version}
    versions_log.unlink(missing_ok=True)
    info = {"image": image.key, "profile": image.profile, "toolchain": versions, "log": log.name}
    (out / "build-info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def _failed(result: PackageResult, stage: str, reason: str) -> None:
    result.stage, result.reason = stage, reason
