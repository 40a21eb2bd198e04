"""Attack 8, the command line: every option and argument of every verb, given an empty,
a huge, a relative value and one with a newline, through the real program.

Each case ends in success or in one line `sandboxmgr: error: ...` (at most a few hundred
characters, whatever the value's length) and at most one `hint:` line, with Docker's exit
codes; never a traceback or an internal error, never a mount left on the host, never a
sandbox or a file left where the case did not ask for one. The verbs and options are read
from the CLI itself, so a new option is fuzzed the day it is added.

A NUL cannot be given: execve refuses an argument that holds one. Values with NUL come
from files, which test_fuzz.py throws at the profile loader.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from sandboxmgr.cli import cli as group
from tests.conftest import CLI, ConcurrentBuild
from tests.ocilayout import Layout, minimal_root

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

VALUES = {"empty": "", "huge": "x" * 100_000, "relative": "rel/../ative", "newline": "a\nb"}
SANDBOX = "fuzzed"  # a named sandbox that exec and shell are given
EXPORTED = "exported"  # where export writes when its -o is not the option under test (the case's cwd)
IMPORTED = "fuzz-imported"
LAYOUT = "layout"  # a small OCI layout in the project directory, for import
REPORT = "report.txt"  # a bug report naming no version, for recreate (nothing is built)
BAD_SOURCE = "badsrc"  # a Debian source tree whose changelog is no changelog, for package build
BAD_DEB = "bad.deb"  # a file that is no package, for package test
CLOSED_BROKER = "redis://127.0.0.1:1/0"  # nothing listens: farm worker ends at once
LONGEST_LINE = 600


def _commands() -> list[tuple[str, click.Command]]:
    """Every verb, a group's subcommands as "GROUP SUB" (package build, farm worker)."""
    context = click.Context(group)
    found: list[tuple[str, click.Command]] = []
    for verb in group.list_commands(context):
        command = group.get_command(context, verb)
        assert command is not None
        if isinstance(command, click.Group):
            for sub in command.list_commands(context):
                inner = command.get_command(context, sub)
                assert inner is not None
                found.append((f"{verb} {sub}", inner))
        found.append((verb, command))
    return found


def _value_params() -> list[tuple[str, str]]:
    """(verb, option) for every option that takes a value, "" as the verb for the group's own."""
    found = [("", option.opts[0]) for option in group.params
             if isinstance(option, click.Option) and not option.is_flag]
    for verb, command in _commands():
        found += [(verb, p.opts[0]) for p in command.params if isinstance(p, click.Option) and not p.is_flag
                  and not p.hidden]
    return found


def _arguments() -> list[tuple[str, str]]:
    return [(verb, p.name or "") for verb, command in _commands() for p in command.params
            if isinstance(p, click.Argument)]


OPTIONS = _value_params()
ARGUMENTS = _arguments()


def argv_for(verb: str, option: str, value: str, profile: str, project: Path) -> list[str]:
    """The command line that gives ``value`` to ``option`` and everything else valid."""
    if verb == "":
        return [option, value, "profiles"]
    rest = {"run": [profile, "true"], "create": [profile, "--name", "fuzz-created"], "exec": [SANDBOX, "true"],
            "shell": [SANDBOX], "matrix": ["-C", str(project)], "inspect": [profile], "stop": [SANDBOX],
            "restart": [SANDBOX], "kill": [SANDBOX], "logs": [SANDBOX], "lock": [profile],
            "export": [profile, "-o", EXPORTED], "import": [str(project / LAYOUT), "--as", IMPORTED],
            "recreate": [str(project / REPORT), "-p", profile],
            # Inputs that fail fast (a source whose changelog is no changelog, a .deb that is no
            # package, a broker on a closed port): what is fuzzed is how each option's value is taken.
            "package build": [str(project / BAD_SOURCE), "-p", profile],
            "package test": [str(project / BAD_DEB), "-p", profile],
            "farm worker": ["--broker", CLOSED_BROKER]}[verb]
    # The option under test is one the verb needs: the rest without it (and its value).
    if option in rest:
        at = rest.index(option)
        rest = rest[:at] + rest[at + 2:]
    return [*verb.split(" "), option, value, *rest]


def argument_argv(verb: str, argument: str, value: str, profile: str) -> list[str]:
    return {
        ("run", "profile"): ["run", value, "true"], ("run", "command"): ["run", profile, value],
        ("create", "profile"): ["create", value], ("exec", "name"): ["exec", value, "true"],
        ("exec", "command"): ["exec", SANDBOX, value], ("shell", "name"): ["shell", value],
        ("matrix", "command"): ["matrix", "--", value],
        ("package build", "source"): ["package", "build", value, "-p", profile],
        ("package test", "packages"): ["package", "test", value, "-p", profile],
    }.get((verb, argument), [*verb.split(" "), value])


def check(result: subprocess.CompletedProcess[str], case: str) -> None:
    shown = "\n".join(line if len(line) < 300 else f"{line[:150]}...{line[-100:]} ({len(line)} characters)"
                      for line in result.stderr.splitlines()[-6:])
    said = f"{case}: exit {result.returncode}\n{shown}"
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, said
    assert result.returncode in (0, 1, 125, 126, 127), said
    assert all(len(line) <= LONGEST_LINE for line in result.stderr.splitlines()), said
    if result.returncode in (125, 126, 127) and "sandboxmgr: error:" in result.stderr:
        lines = result.stderr.splitlines()
        errors = [n for n, line in enumerate(lines) if line.startswith("sandboxmgr: error:")]
        assert len(errors) == 1, said
        assert all(line.startswith("hint: ") for line in lines[errors[0] + 1:]) and len(lines) - errors[0] <= 2, said
    elif result.returncode == 125:
        pytest.fail(f"exit 125 without an error line: {said}")


@pytest.fixture(scope="module")
def fuzz_env(cli: CLI, bookworm: ConcurrentBuild,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A working directory for the cases (relative values land there), a project, and the sandbox."""
    cwd = tmp_path_factory.mktemp("fuzz-cwd")
    project = tmp_path_factory.mktemp("fuzz-project")
    (project / "sandboxmgr.yaml").write_text(f"profiles: [{bookworm.profile}]\ncommand: 'true'\n")
    Layout(project / LAYOUT).image([minimal_root()])
    (project / REPORT).write_text("nothing to see\n")
    (project / BAD_SOURCE / "debian").mkdir(parents=True)
    (project / BAD_SOURCE / "debian" / "control").write_text("Source: bad\n\nPackage: bad\nArchitecture: all\n")
    (project / BAD_SOURCE / "debian" / "changelog").write_text("not a changelog\n")
    (project / BAD_DEB).write_text("not a package\n")
    cli.ok("create", bookworm.profile, "--name", SANDBOX)
    yield cwd, project
    # No case left a sandbox behind (a matrix's, a run's) or removed the one it was given, nor an image
    # of an odd name (import --as).
    assert {row["name"] for row in json.loads(cli.ok("ls", "--json").out)} == {SANDBOX}
    assert IMPORTED not in cli.ok("images").out
    cli.ok("rm", SANDBOX)


def run(cli: CLI, argv: list[str], cwd: Path, fast: bool = False) -> subprocess.CompletedProcess[str]:
    full = cli.argv(*argv)
    if fast:  # without --configs: the fast path's own parser sees the command line first
        full = [arg for n, arg in enumerate(full) if arg != "--configs" and full[n - 1] != "--configs"]
    return subprocess.run(full, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=cwd, timeout=300)


def after_each(cli: CLI, cwd: Path, verb: str) -> None:
    if verb == "create" and (cli.store / "sandboxes" / "fuzz-created").exists():
        cli.ok("rm", "fuzz-created")
    # What a case may write here: matrix --junit FILE and lock -o FILE (relative and newline values),
    # an export's layout (its -o, or EXPORTED).
    for entry in cwd.iterdir():
        if verb == "export" and entry.name in ("ative", "a\nb", EXPORTED) and entry.is_dir():
            shutil.rmtree(entry)
            continue
        assert entry.name in ("ative", "a\nb") and entry.is_file(), entry
        entry.unlink()


@pytest.mark.parametrize("kind", sorted(VALUES))
@pytest.mark.parametrize(("verb", "option"), OPTIONS, ids=[f"{v or 'global'}{o}" for v, o in OPTIONS])
def test_every_option_takes_odd_values_cleanly(cli: CLI, bookworm: ConcurrentBuild, fuzz_env: tuple[Path, Path],
                                               verb: str, option: str, kind: str) -> None:
    cwd, project = fuzz_env
    argv = argv_for(verb, option, VALUES[kind], bookworm.profile, project)
    check(run(cli, argv, cwd), f"{verb} {option} <{kind}>")
    after_each(cli, cwd, verb)


@pytest.mark.parametrize("kind", sorted(VALUES))
@pytest.mark.parametrize(("verb", "argument"), ARGUMENTS, ids=[f"{v}-{a}" for v, a in ARGUMENTS])
def test_every_argument_takes_odd_values_cleanly(cli: CLI, bookworm: ConcurrentBuild, fuzz_env: tuple[Path, Path],
                                                 verb: str, argument: str, kind: str) -> None:
    cwd, _ = fuzz_env
    argv = argument_argv(verb, argument, VALUES[kind], bookworm.profile)
    check(run(cli, argv, cwd, fast=verb in ("run", "exec")), f"{verb} {argument} <{kind}>")
    after_each(cli, cwd, verb)
    if verb in ("rm", "rmi", "build"):  # an odd name never reached another's image or sandbox
        assert f'"profile": "{bookworm.profile}"' in cli.ok("images", "--json").out
        assert (cli.store / "sandboxes" / SANDBOX).is_dir()


@pytest.mark.parametrize(("option", "said"), [
    (("--hostname", "a_b"), "--hostname a_b: not a valid host name"),
    (("-u", "nobody:x:y"), "user nobody:x:y: not a user[:group] of names or numbers"),
    (("-v", "/nonexistent-source:/x"), "-v /nonexistent-source:/x: the source /nonexistent-source does not exist"),
])
def test_what_the_host_can_check_is_refused_before_a_build(tmp_path: Path, option: tuple[str, str], said: str) -> None:
    """A mistake costs nothing: it is refused before the image (not built yet) is built."""
    cli = CLI(tmp_path / "store")
    for verb in (["run", *option, "debian-bookworm", "true"], ["create", *option, "debian-bookworm"]):
        result = cli(*verb, timeout=120)
        assert result.code == 125 and result.err.startswith(f"sandboxmgr: error: {said}\nhint: "), str(result)
        assert "building layer" not in result.err
        assert not any((tmp_path / "store" / "layers").glob("*")), "a layer was built before the check"
