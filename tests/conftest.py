"""Shared fixtures: a CLI runner on a test store, capability probes, images built once.

Integration tests need root and a reachable mirror. Off CI they skip with the
reason; on CI (SANDBOXMGR_CI=1, set by .ci/run) a missing capability fails the
test instead, so a green CI run always means the real thing ran.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from tests.rootless import OrdinaryUser
    from tests.rpmrepo import RpmRepo

REPO = Path(__file__).resolve().parent.parent
DEBIAN_MIRROR = "http://deb.debian.org/debian"
UBUNTU_MIRROR = "http://archive.ubuntu.com/ubuntu"
ON_CI = os.environ.get("SANDBOXMGR_CI") == "1"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


def debian_archives(release: str = "bookworm") -> str:
    """Where a store keeps the Debian release's cached packages (one directory per keyring)."""
    import hashlib

    key = hashlib.sha256(DEBIAN_KEYRING.read_bytes()).hexdigest()[:16] if DEBIAN_KEYRING.exists() else "none"
    return f"cache/debian-{release}-amd64/apt-archives/{key}"


# What a skip's reason starts with when its cause is outside the project and any CI machine:
# an archive that does not answer (Ubuntu's, Fedora's), or a host whose cgroup layout the
# project must not rearrange (no controller a user's delegated cgroup could have). The only
# skips a CI run accepts.
OUTSIDE_CAUSE = "outside cause: "


def missing(reason: str, required_on_ci: bool = True) -> NoReturn:
    """Skip (or, on CI, fail) a test whose environment lacks something: the one way a test skips.

    ``required_on_ci=False`` is for the outside causes only (an archive that does not answer):
    CI skips such a test too, and lists it at the end of the run. Any other skip fails a CI
    run, however it was made (pytest_sessionfinish below)."""
    if ON_CI and required_on_ci:
        pytest.fail(f"CI must be able to run this test: {reason}")
    pytest.skip(reason if required_on_ci else OUTSIDE_CAUSE + reason)


def need_root() -> None:
    if os.geteuid() != 0:
        missing("needs root (namespaces and mounts)")


@cache
def need_fedora_mirrors() -> None:
    """Root, and Fedora's mirrors answering (they do not from the machine this suite is built
    on: an outside cause, accepted on CI); the tests' local RPM repository is the main proof."""
    need_root()
    try:
        urllib.request.urlopen("https://mirrors.fedoraproject.org/metalink?repo=fedora-45&arch=x86_64",
                               timeout=10)
    except OSError as exc:
        missing(f"Fedora's mirrors are not reachable from this machine ({exc})", required_on_ci=False)


@pytest.fixture
def live_box(cli: CLI, bookworm: ConcurrentBuild) -> Iterator[str]:
    """A named sandbox over debian-bookworm for one test, removed (running or not) after it."""
    name = f"box-{os.urandom(3).hex()}"
    cli.ok("create", bookworm.profile, "--name", name)
    yield name
    cli("rm", "-f", name)
    assert not (cli.store / "sandboxes" / name).exists()


def mirror_reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def need_mirror(mirror: str, release: str, required_on_ci: bool = True) -> None:
    if not mirror_reachable(f"{mirror}/dists/{release}/InRelease"):
        missing(f"the mirror {mirror} does not answer for {release}", required_on_ci)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


class CLI:
    """Runs the real `sandboxmgr` in a subprocess against one store."""

    env: dict[str, str] | None = None  # the subprocess's environment (None: the test's)

    def __init__(self, store: Path, configs: Path | None = None) -> None:
        self.store = store
        self.configs = configs

    def argv(self, *args: str) -> list[str]:
        argv = [sys.executable, "-m", "sandboxmgr", "--store", str(self.store)]
        if self.configs is not None:
            argv += ["--configs", str(self.configs)]
        return argv + list(args)

    def __call__(self, *args: str, input: str | None = None, timeout: float = 900) -> Result:
        proc = subprocess.run(self.argv(*args), input=input, capture_output=True, text=True, env=self.env,
                              timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self(*args, input=input)
        assert result.code == 0, str(result)
        return result

    @property
    def profiles(self) -> Path:
        """The profile directory this CLI was given (--configs)."""
        assert self.configs is not None
        return self.configs

    def write_profile(self, name: str, text: str) -> None:
        (self.profiles / f"{name}.yaml").write_text(text)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, env=self.env)


# --- the path users run ------------------------------------------------------------------------

# The options of `run`/`exec` the fast path takes (fastrun.py); any other makes the full CLI run it.
# Written out here, not imported: the tests check fastrun against what a user may type.
FAST_OPTIONS = {"-i", "--interactive", "-t", "--tty", "-it", "-ti", "--rm"}


def entry_point() -> list[str]:
    """What a user types: the `sandboxmgr` script of this Python's environment (setup.cfg's
    entry point, fastrun.main), or `python -m sandboxmgr` (the same function) without one."""
    script = Path(sys.executable).with_name("sandboxmgr")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "sandboxmgr"]


@dataclass
class PathResult(Result):
    # "fast", "ticket" (exec joining by a running sandbox's ticket: fast too) or "full": the path
    # the command took, as it said (SANDBOXMGR_DEBUG_PATH)
    path: str = ""


def taken_path(err: str) -> tuple[str, str]:
    """The path a command said it took (SANDBOXMGR_DEBUG_PATH=1), and its stderr without that line."""
    paths = [line.removeprefix("sandboxmgr: path: ") for line in err.splitlines(keepends=True)
             if line.startswith("sandboxmgr: path: ")]
    rest = "".join(line for line in err.splitlines(keepends=True) if not line.startswith("sandboxmgr: path: "))
    assert len(paths) == 1, f"expected one 'sandboxmgr: path:' line on stderr:\n{err}"
    return paths[0].strip(), rest


class UserCLI(CLI):
    """`sandboxmgr` run as a user types it, on a test store: the entry point, `--store`, and
    profiles found where a user's are (the shipped ones, XDG_CONFIG_HOME's) instead of `--configs`,
    so `run PROFILE` and `exec NAME` can take the fast path. SANDBOXMGR_DEBUG_PATH=1 makes each
    command say which path it took: a result's ``path``. ``expect`` is the path `run`/`exec` must
    take when given only options the fast path knows ("full" with ``configs``: `--configs` is given,
    as the full path's variant); with any other option they must take the full path. Every call
    checks it."""

    def __init__(self, store: Path, config_home: Path, configs: Path | None = None) -> None:
        super().__init__(store, configs)
        self.expect = "full" if configs is not None else "fast"
        self.config_home = config_home
        env = {key: value for key, value in os.environ.items() if key != "SANDBOXMGR_CONFIGS"}
        self.env = env | {"XDG_CONFIG_HOME": str(config_home), "SANDBOXMGR_DEBUG_PATH": "1"}

    @property
    def profiles(self) -> Path:
        """Where this user's profiles are: configs/ (full path) or $XDG_CONFIG_HOME/sandboxmgr/profiles."""
        return self.configs or self.config_home / "sandboxmgr" / "profiles"

    def argv(self, *args: str) -> list[str]:
        return entry_point() + super().argv(*args)[3:]  # instead of python -m sandboxmgr

    def expected_path(self, *args: str) -> str:
        """The path ``args`` must take through this helper (whose stdin is never a terminal, so
        `-t` is the full path's)."""
        if not args or args[0] not in ("run", "exec"):
            return "full"
        options = []
        for arg in args[1:]:
            if not arg.startswith("-"):
                break
            options.append(arg)
        return self.expect if set(options) <= FAST_OPTIONS - {"-t", "--tty", "-it", "-ti"} else "full"

    def first_run(self, profile: str) -> None:
        """`run PROFILE true`, whatever path it takes: on the fast path's side, the full path
        resolves the profile the first time and caches the answer, and the next runs are fast."""
        result = super().__call__("run", profile, "true")
        assert result.code == 0, str(result)

    def __call__(self, *args: str, input: str | None = None, timeout: float = 900) -> PathResult:
        result = super().__call__(*args, input=input, timeout=timeout)
        path, err = taken_path(result.err)
        expected = self.expected_path(*args)
        # exec into a running sandbox may join by its ticket (ticket.py): a form of the fast path
        # that tests of it check by name.
        taken = "fast" if path == "ticket" and args[0] == "exec" else path
        assert taken == expected, f"{args}: took the {path} path\n{result}"
        return PathResult(result.code, result.out, err, path)

    def ok(self, *args: str, input: str | None = None) -> PathResult:
        result = self(*args, input=input)
        assert result.code == 0, str(result)
        return result


def run_in_pty(argv: list[str], timeout: float = 60, keys: bytes = b"",
               env: dict[str, str] | None = None, ready: bytes = b"") -> tuple[int, str]:
    """Run ``argv`` on a pty of the test's own, as on a terminal, typing ``keys`` once it has
    said something (``ready``, when given; or after 5 s): its exit status and output. Killed
    when it outlives ``timeout``."""
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs
        os.execve(argv[0], argv, os.environ if env is None else env)
    output = b""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        ready_now = ready in output if ready else output != b""
        if keys and (ready_now or (not ready and time.monotonic() > started + 5)):
            os.write(master, keys)
            keys = b""
        if not select.select([master], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    if time.monotonic() >= deadline:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(master)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def host_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as handle:
        return sorted(line.split()[4] for line in handle)


@pytest.fixture(scope="session", autouse=True)
def no_leaked_mounts() -> Iterator[None]:
    """After the whole suite, the host's mount table is as it was before."""
    before = host_mounts()
    yield
    after = host_mounts()
    leaked = sorted(set(after) - set(before))
    assert not leaked, f"mounts left on the host by the test suite: {leaked}"


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def configs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Test-only profiles, next to the shipped ones."""
    return tmp_path_factory.mktemp("configs")


@pytest.fixture(scope="session")
def cli(store_dir: Path, configs_dir: Path) -> CLI:
    return CLI(store_dir, configs_dir)


@dataclass
class ConcurrentBuild:
    profile: str
    results: list[Result]


@pytest.fixture(scope="session")
def bookworm(cli: CLI) -> ConcurrentBuild:
    """debian-bookworm, built once per session - by two builds started at once."""
    need_root()
    need_mirror(DEBIAN_MIRROR, "bookworm")
    procs = [cli.popen("build", "debian-bookworm") for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        results.append(Result(proc.returncode, out, err))
    for result in results:
        assert result.code == 0, str(result)
    return ConcurrentBuild("debian-bookworm", results)


# Debian 12 for arm64 (README, "Foreign architectures"). Not shipped: every 'debian-*' glob of a
# matrix would take in a build under qemu-user. Not named debian-*: test_matrix's globs stay as they were.
ARM64_PROFILE = ("arm64-bookworm", "extends: debian-bookworm\narch: arm64\n")


@pytest.fixture(scope="session")
def bookworm_arm64(cli: CLI, configs_dir: Path) -> str:
    """Debian 12 for arm64 (a foreign architecture, through qemu-user), built once per session:
    for the tests marked slow."""
    need_root()
    need_mirror(DEBIAN_MIRROR, "bookworm")
    from sandboxmgr import binfmt

    found = binfmt.problem("arm64")
    if found is not None:
        missing(f"this host runs no arm64 programs: {found[0]} (fix: {found[1]})")
    name, text = ARM64_PROFILE
    (configs_dir / f"{name}.yaml").write_text(text)
    cli.ok("build", name)
    return name


@pytest.fixture(scope="session")
def rpm_repo(tmp_path_factory: pytest.TempPathFactory) -> RpmRepo:
    """A real signed RPM repository built once per session (rpmbuild + createrepo_c)."""
    need_root()
    for tool in ("rpmbuild", "rpmsign", "createrepo_c", "gpg"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed (make deps installs it)")
    from tests.rpmrepo import build_repo
    return build_repo(tmp_path_factory.mktemp("rpmrepo"))


@pytest.fixture(scope="session")
def tiny_dnf_repo(tmp_path_factory: pytest.TempPathFactory, rpm_repo: RpmRepo) -> Path:
    """Tiny Distro's signed repository with the rpm-build and dnf stand-ins added (made from
    the host's rpmbuild and dnf: tests/rpmrepo.py, tests/dnfstandin.py), built once per session."""
    for tool in ("dnf", "ldd"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed (make deps installs it)")
    from tests.dnfstandin import add_dnf
    from tests.rpmrepo import RpmRepoError, add_rpm_build

    base = tmp_path_factory.mktemp("tiny-dnf")
    try:
        return add_dnf(rpm_repo, base / "dnf", base=add_rpm_build(rpm_repo, base / "rpm-build"))
    except RpmRepoError as exc:  # the host's rpm or dnf lacks a file a stand-in carries
        missing(f"the dnf stand-in cannot be made from the host's dnf: {exc}")


@pytest.fixture(scope="session", autouse=True)
def doctor_finds_nothing_at_the_end(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole suite, `sandboxmgr doctor` finds nothing left in any store the tests ran
    sandboxmgr on: no mount, temporary directory or lock that a crash (or a bug) left behind, and
    no store another local user may enter."""
    used: set[str] = set()
    argv = CLI.argv

    def recording(self: CLI, *args: str) -> list[str]:
        used.add(os.path.realpath(self.store))
        return argv(self, *args)

    CLI.argv = recording  # type: ignore[method-assign]
    try:
        yield
    finally:
        CLI.argv = argv  # type: ignore[method-assign]
    if os.geteuid() != 0:
        return
    import json

    problems = {}
    for store in sorted(used):
        if not os.path.isdir(store):
            continue
        proc = subprocess.run([sys.executable, "-m", "sandboxmgr", "--store", store, "doctor", "--json"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode in (0, 1), proc.stderr
        left = [f for f in json.loads(proc.stdout) if f["kind"] in ("mount", "tmp", "lock", "permissions")]
        if left:
            problems[store] = left
    assert not problems, f"sandboxmgr doctor found leftovers after the test suite: {problems}"


# --- No silent skips ----------------------------------------------------------------------------
# Every skip of the run, as (test, reason): listed at the end; on CI, one whose cause is not an
# outside one (OUTSIDE_CAUSE) fails the run, so a plain pytest.skip cannot hide a test there.
SKIPS: list[tuple[str, str]] = []


def skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        SKIPS.append((report.nodeid, skip_reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        SKIPS.append((report.nodeid, skip_reason(report)))


def skips_ci_refuses() -> list[tuple[str, str]]:
    return [(test, reason) for test, reason in SKIPS if not reason.startswith(OUTSIDE_CAUSE)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if ON_CI and skips_ci_refuses() and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SKIPS:
        return
    terminalreporter.section("skips (SANDBOXMGR_CI=1 accepts only an outside cause)")
    refused = skips_ci_refuses()
    for test, reason in SKIPS:
        verdict = "REFUSED ON CI" if (test, reason) in refused else "accepted on CI"
        terminalreporter.write_line(f"{verdict}: {test}: {reason}")
    if ON_CI and refused:
        terminalreporter.write_line(f"CI run failed: {len(refused)} skip(s) without an outside cause; "
                                    "a test skips through tests.conftest.missing() and, on CI, only when "
                                    "an archive does not answer", red=True, bold=True)


@pytest.fixture(scope="session")
def config_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's XDG_CONFIG_HOME, with an empty sandboxmgr/profiles/ (tests add theirs)."""
    home = tmp_path_factory.mktemp("config-home")
    (home / "sandboxmgr" / "profiles").mkdir(parents=True)
    return home


@pytest.fixture(scope="session")
def fast_cli(store_dir: Path, config_home: Path, bookworm: ConcurrentBuild) -> UserCLI:
    """The session store as a user types commands to it; its first `run debian-bookworm` (the
    full path) has cached the profile's resolution, so the next ones take the fast path."""
    user = UserCLI(store_dir, config_home)
    user.first_run(bookworm.profile)
    return user


@pytest.fixture(params=["fast", "full"])
def user(request: pytest.FixtureRequest, fast_cli: UserCLI, store_dir: Path, config_home: Path,
         configs_dir: Path) -> UserCLI:
    """A test run twice: as users type it (the fast path), and with --configs (the full path)."""
    if request.param == "fast":
        return fast_cli
    return UserCLI(store_dir, config_home, configs_dir)


@pytest.fixture(scope="session")
def rootless_user() -> Iterator[OrdinaryUser]:
    """An ordinary user made for this session (useradd, its own HOME, /etc/subuid and
    /etc/subgid ranges), running the real sandboxmgr (tests/rootless.py); removed at the end."""
    need_root()
    from tests.rootless import ordinary_user

    with ordinary_user() as user:
        yield user
