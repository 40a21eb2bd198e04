"""``sandboxmgr package test``: does a package install, work, and go away cleanly on each distro?

For each profile, in a fresh sandbox of its image (with the network: the archive is needed),
as piuparts and autopkgtest do it:

1. the files of the sandbox are listed (``find``), and the family prepares the sandbox (the
   test user; the profile's repositories for dnf);
2. **install** - ``apt-get install`` of the ``.deb`` files (``dnf install`` of the ``.rpm``
   files), their dependencies resolved from that distro's archive;
3. **tests** - each ``--check`` command (as root), then the package's own autopkgtest tests
   when its source is known (``source-tree.tar.gz`` beside the packages, as ``package build``
   leaves it): unpacked by the test user, each test run from the tree (as that user, or as
   root with ``needs-root``), after its own Depends are installed;
4. **remove** (``apt-get remove``), then **purge** (``dpkg --purge``, and ``apt-get autoremove
   --purge`` for the dependencies that came with the packages);
5. **leftovers** - the files listed now that were not before and that no package owns.

What differs between the families is data (:class:`TestFamily`): the Debian family's here,
the RPM family's in rpmpkgtest.py. The report is ``package build``'s (package.PackageResult),
the stage one of STAGES.
"""

from __future__ import annotations

import secrets
import shlex
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from sandboxmgr import live
from sandboxmgr.errors import SandboxError
from sandboxmgr.linux import regular_bytes
from sandboxmgr.mounts import BindMount
from sandboxmgr.package import SOURCE_TREE, PackageJob, PackageResult
from sandboxmgr.pkgsource import unsatisfiable
from sandboxmgr.profile import Profile
from sandboxmgr.runner import TimedOut, View, run_jobs, run_step, tail
from sandboxmgr.store import ImageRecord, SandboxRecord, Store
from sandboxmgr.testcontrol import TestCase, read_tests

STAGES = ("install", "tests", "remove", "purge", "leftovers", "timeout")
TEST_USER = "sandboxmgr-test"
MOUNT = "/packages"
# The lists and the tests' tree: not in /tmp, a tmpfs of each step's own, but left out of the lists.
WORK = "/var/lib/sandboxmgr-test"
# What the file lists leave out, as piuparts ignores them: mounts, temporary and volatile files,
# caches, logs, the homes the tests run in (and each family's package manager's state: TestFamily).
IGNORED = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", MOUNT, "/var/cache", "/var/log",
           "/var/lib/systemd", "/etc/ld.so.cache", "/root", f"/home/{TEST_USER}", WORK)
_LEFTOVERS_SHOWN = 100


@dataclass(frozen=True)
class TestFamily:
    """What a family's package test runs: shell commands, as root, in the sandbox."""
    suffix: str  # of the package files (".deb")
    tool: str  # what installs them, for messages
    state: tuple[str, ...]  # the package manager's own state: left out of the lists
    prepare: str  # before the first list; $1... are prepare_args
    install: str  # "$@": the packages' paths in the sandbox
    remove: str
    purge: str
    owned: str  # prints every path a package owns
    prepare_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    binds: tuple[BindMount, ...] = ()


_DEB_NAMES = "$(for deb in " + MOUNT + "/*.deb; do dpkg-deb -f \"$deb\" Package; done)"
DEBIAN = TestFamily(
    suffix=".deb", tool="apt-get", state=("/var/lib/apt", "/var/lib/dpkg", "/var/lib/ucf"),
    prepare=f"id -u {TEST_USER} >/dev/null 2>&1 || useradd --create-home --shell /bin/sh {TEST_USER}; "
            f"chown {TEST_USER}: {WORK}",
    install="exec apt-get install -y -q --no-install-recommends \"$@\"",
    remove=f"apt-get remove -y -q {_DEB_NAMES}", purge=f"dpkg --purge {_DEB_NAMES} && apt-get autoremove --purge -y -q",
    owned="cat /var/lib/dpkg/info/*.list", env={"DEBIAN_FRONTEND": "noninteractive"})


def family_of(profile: Profile) -> TestFamily:
    """How packages are tested in ``profile``'s family."""
    if profile.family == "rpm":
        from sandboxmgr import rpmpkgtest

        return rpmpkgtest.family(profile)
    return DEBIAN


@dataclass(frozen=True)
class TestRequest:
    checks: tuple[str, ...]  # --check commands
    logs: Path
    keep_failed: bool = False
    timeout: float | None = None  # seconds each step may take


@dataclass(frozen=True)
class Packages:
    """What one profile tests: the package files, the source tree if known, where they came from."""
    files: tuple[Path, ...]
    source_tree: Path | None
    origin: Path | None


def packages_for(name: str, profile: Profile, files: list[Path], results: Path | None) -> Packages:
    """The packages to test in ``profile`` (-p ``name``): ``files``, and those of ``results`` (a
    directory of ``package build --results``: its ``PROFILE/`` subdirectory, else the directory
    itself); each of the profile's family."""
    suffix = family_of(profile).suffix
    for path in files:
        if path.suffix != suffix:
            raise SandboxError(f"{name} is a profile of the {profile.family} family and {path} is not a {suffix} file",
                               hint=f"give {suffix} files to -p profiles of the {profile.family} family "
                                    "(one run per family)")
    found = [path.resolve() for path in files]
    for path in found:
        _check_package(path, suffix)
    origin = None
    if results is not None:
        origin = results / profile.name if (results / profile.name).is_dir() else results
        listed = sorted(p for p in origin.glob(f"*{suffix}")
                        if p.is_file() and not p.is_symlink() and not p.name.endswith(".src.rpm"))
        if not listed:
            raise SandboxError(f"{origin} holds no {suffix} file for {profile.name}",
                               hint=f"give the results of package build (DIR, with {profile.name}/ in it, "
                                    "or one profile's directory)")
        found += [p.resolve() for p in listed]
    places = [origin] if origin else [path.parent for path in found]
    tree = next((place / SOURCE_TREE for place in places if (place / SOURCE_TREE).is_file()), None)
    return Packages(tuple(dict.fromkeys(found)), tree, origin)


_MAGIC = {".deb": (b"!<arch>\n", "not an ar archive", "dpkg-deb --info"),
          ".rpm": (b"\xed\xab\xee\xdb", "no RPM lead", "rpm -qip")}


def _check_package(path: Path, suffix: str) -> None:
    """A package file given by name is one, before a sandbox is made for it: a file that only
    has the suffix was an install's puzzling failure in each sandbox ("the package lists or
    status file could not be parsed")."""
    magic, what, checker = _MAGIC[suffix]
    try:
        _mode, head = regular_bytes(path, len(magic))
    except OSError as exc:
        raise SandboxError(f"cannot read {path}: {exc.strerror}", hint=f"give {suffix} files") from None
    if head is None or not head.startswith(magic):
        why = "not a regular file" if head is None else what
        raise SandboxError(f"{path} is not a {suffix} package ({why})",
                           hint=f"give the {suffix} files package build made ({checker} FILE shows what one is)")


def run_all(store: Store, request: TestRequest, profiles: list[tuple[str, Profile, Packages]],
             image_for: Callable[[Profile], ImageRecord], parallel: int, fail_fast: bool,
             view: View) -> list[PackageResult]:
    """Test for each (name, profile, packages): the images first, then the tests, ``parallel``
    at once (runner.run_jobs)."""
    request.logs.mkdir(parents=True, exist_ok=True)
    results = [PackageResult(name, profile.name, results=str(packages.origin) if packages.origin else None,
                             log=str(request.logs / f"{profile.name}.log")) for name, profile, packages in profiles]
    work = []
    with store.temporary("package-test") as shown:
        for (_, profile, packages), result in zip(profiles, results, strict=True):
            image = image_for(profile)
            place = shown / profile.name
            place.mkdir(mode=0o755)
            place.chmod(0o755)
            for path in (*packages.files, *([packages.source_tree] if packages.source_tree else [])):
                shutil.copyfile(path, place / path.name, follow_symlinks=False)
                (place / path.name).chmod(0o644)
            tests = read_tests(packages.source_tree) if packages.source_tree else []
            job = partial(run_one, store, request, profile, image, place, tests, result)
            work.append(PackageJob(result, request.logs / f".{profile.name}.outcome.json", job))
        run_jobs(work, parallel, fail_fast, lambda _rows: view(results))
    return results


def run_one(store: Store, request: TestRequest, profile: Profile, image: ImageRecord, place: Path,
             tests: list[TestCase], result: PackageResult) -> None:
    """One profile's test, its outcome in ``result``."""
    from sandboxmgr import config
    from sandboxmgr.resolve import create_sandbox

    family = family_of(profile)
    name = f"pkgtest-{profile.name}-{secrets.token_hex(3)}"[:120].rstrip(".-")
    options = config.options(network="host", env=dict(family.env),
                             binds=(BindMount(place, MOUNT, readonly=True), *family.binds))
    record = create_sandbox(store, name, image, profile, options)
    keep = False
    try:
        steps = _Steps(store, record, Path(str(result.log)), request.timeout, result, family)
        try:
            files = sorted(path.name for path in place.glob(f"*{family.suffix}"))
            steps.run(files, request.checks, tests, (place / SOURCE_TREE).is_file())
        except TimedOut:
            steps.failed("timeout", f"a step ran longer than {request.timeout:g} s and was killed")
        keep = bool(result.stage) and request.keep_failed
    finally:
        if keep:
            result.sandbox = record.name
        else:
            live.remove(store, record, force=True)


class _Steps:
    """The steps in one sandbox; the first failure is the result's stage."""

    def __init__(self, store: Store, record: SandboxRecord, log: Path, timeout: float | None,
                 result: PackageResult, family: TestFamily) -> None:
        self.store, self.record, self.log, self.timeout, self.result = store, record, log, timeout, result
        self.family = family
        self.log.write_bytes(b"")

    def sh(self, script: str, *args: str, user: str | None = None, log: Path | None = None) -> int:
        command = ("/bin/sh", "-c", script, "sh", *args)
        return run_step(self.store, self.record, log or self.log, command, user, append=log is None,
                        timeout=self.timeout)

    def failed(self, stage: str, reason: str) -> None:
        self.result.stage, self.result.reason = stage, reason

    def run(self, files: list[str], checks: tuple[str, ...], tests: list[TestCase], tree: bool) -> None:
        family = self.family
        prune = " -o ".join(f"-path {path}" for path in (*IGNORED, *family.state))
        listing = f"find / \\( {prune} \\) -prune -o -print | LC_ALL=C sort"
        if self.sh(f"set -e; mkdir -p {WORK}; {family.prepare}; {listing} > {WORK}/before",
                   *family.prepare_args) != 0:
            self.failed("install", f"the sandbox could not be prepared: {tail(self.log, 1)}")
            return
        if self.sh(f"echo '# install'; {family.install}", *(f"{MOUNT}/{name}" for name in files)) != 0:
            self.result.packages = unsatisfiable(tail(self.log, 200))
            why = (f"{', '.join(self.result.packages)} cannot be found in the profile's archive"
                   if self.result.packages else tail(self.log, 1))
            self.failed("install", f"{family.tool} install failed: {why}")
            return
        if not self._checks(checks) or (tree and not self._tests(tests)):
            return
        for stage, command in (("remove", family.remove), ("purge", family.purge)):
            if self.sh(f"echo '# {stage}'; {command}") != 0:
                self.failed(stage, f"{stage} failed: {tail(self.log, 1)}")
                return
        self._leftovers(listing)

    def _checks(self, checks: tuple[str, ...]) -> bool:
        for check in checks:
            status = self.sh("echo \"# check: $1\"; cd / && exec /bin/sh -c \"$1\"", check)
            if status != 0:
                self.failed("tests", f"--check {shlex.quote(check)} exited with status {status}")
                return False
        return True

    def _tests(self, tests: list[TestCase]) -> bool:
        if self.sh(f"set -e; mkdir -p {WORK}/tree; tar -xzf {MOUNT}/{SOURCE_TREE} -C {WORK}/tree "
                   "--strip-components=1 --no-same-owner", user=TEST_USER) != 0:
            self.failed("tests", f"the source tree could not be unpacked: {tail(self.log, 1)}")
            return False
        for test in tests:
            if test.skip:
                self.sh("echo \"# autopkgtest $1: SKIP ($2)\"", test.name, test.skip)
                continue
            if test.depends and self.sh("echo \"# autopkgtest $1: installing its Depends\"; shift; "
                                        "exec apt-get install -y -q --no-install-recommends \"$@\"",
                                        test.name, *test.depends) != 0:
                self.failed("install", f"the Depends of test {test.name} cannot be installed: {tail(self.log, 1)}")
                self.result.packages = unsatisfiable(tail(self.log, 200))
                return False
            status = self.sh(_RUN_TEST, test.name, "allow-stderr" if "allow-stderr" in test.restrictions else "",
                             "script" if test.script else "command", test.script or test.command or "",
                             user=None if "needs-root" in test.restrictions else TEST_USER)
            verdict = "PASS" if status == 0 else "SKIP" if status == 77 and "skippable" in test.restrictions \
                else "FLAKY" if "flaky" in test.restrictions else "FAIL"
            self.sh("echo \"# autopkgtest $1: $2\"", test.name, verdict)
            if verdict == "FAIL":
                self.failed("tests", f"autopkgtest {test.name} failed (exit status {status}): {tail(self.log, 2)}")
                return False
        return True

    def _leftovers(self, listing: str) -> None:
        found = self.log.with_name(f".{self.log.stem}.leftovers")
        status = self.sh(f"{listing} > {WORK}/after && {unowned(WORK, self.family.owned)}", log=found)
        lines = tail(found, 10_000).splitlines()
        found.unlink(missing_ok=True)
        if status != 0:
            self.failed("leftovers", "the files could not be listed")
            return
        left = [line for line in lines if line.startswith("/") and line.isprintable()]
        self.result.leftovers = left[:_LEFTOVERS_SHOWN]
        if left:
            more = f" and {len(left) - 3} more" if len(left) > 3 else ""
            self.failed("leftovers", f"the purge left files no package owns: {', '.join(left[:3])}{more}")
        with self.log.open("a") as log:
            log.write("# leftovers: " + (" ".join(left) if left else "none") + "\n")


def unowned(work: str, owned: str) -> str:
    """Shell that prints the paths of ``work``/after that are not in ``work``/before and not among
    those the command ``owned`` prints; its status 0 when it could tell (none left too).

    grep -Fxv -f, not comm: a minimal image may have no coreutils (Tiny Distro's busybox has no
    comm). grep's status 1 is "no line printed", not a failure."""
    return (f"{owned} | LC_ALL=C sort -u > {work}/owned && "
            f"{{ grep -Fxv -f {work}/before {work}/after > {work}/new; [ $? -le 1 ]; }} && "
            f"{{ grep -Fxv -f {work}/owned {work}/new; [ $? -le 1 ]; }}")


# One autopkgtest test: $1 its name, $2 "allow-stderr" or "", $3 "script" or "command", $4 the
# script's path in the tree or the command. Output on stderr fails it, unless allowed.
_RUN_TEST = f"""\
echo "# autopkgtest $1"
tmp=$(mktemp -d)
export AUTOPKGTEST_TMP="$tmp" ADTTMP="$tmp" AUTOPKGTEST_ARTIFACTS="$tmp/artifacts" ADT_ARTIFACTS="$tmp/artifacts"
mkdir -p "$tmp/artifacts"
cd {WORK}/tree || exit 125
if [ "$3" = script ]; then
    [ -x "$4" ] || chmod +x "$4" 2>/dev/null
    "./$4" 2>"$tmp/stderr"
else
    /bin/sh -c "$4" 2>"$tmp/stderr"
fi
status=$?
cat "$tmp/stderr" >&2
if [ "$status" = 0 ] && [ -s "$tmp/stderr" ] && [ -z "$2" ]; then
    echo "sandboxmgr: test $1 wrote to stderr (and has no allow-stderr restriction)" >&2
    status=1
fi
exit "$status"
"""
