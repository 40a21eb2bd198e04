"""CLI parsing and error mapping, with click's runner (no sandbox is entered)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sandboxmgr import cli as cli_module
from sandboxmgr.cli import sandboxes as sandbox_verbs
from sandboxmgr.cli.app import App
from sandboxmgr.config import SandboxConfig
from tests.conftest import missing


def invoke(*args: str, store: Path, stdin_tty: bool = False) -> tuple[int, str]:
    runner = CliRunner()
    with pytest.raises(SystemExit) as exit_info, runner.isolation() as (out, err, _):
        if stdin_tty:  # as a terminal on stdin would answer (the runner's stdin is a pipe)
            setattr(sys.stdin, "isatty", lambda: True)  # noqa: B010 - a method of this one stream
        cli_module.main(["--store", str(store), *args])
    output = out.getvalue().decode() + err.getvalue().decode()
    code = exit_info.value.code
    return int(code) if isinstance(code, int) else 0, output


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[SandboxConfig]:
    """Stop `run` where it would build and enter, keeping the parsed options."""
    seen: list[SandboxConfig] = []

    def fake_run(app: App, ref: str, options: SandboxConfig) -> int:
        app.registry.load(ref)  # the real resolution, so unknown names still fail
        seen.append(options)
        return 7

    monkeypatch.setattr(sandbox_verbs, "_run_ephemeral", fake_run)
    monkeypatch.setattr("sandboxmgr.errors.require_root", lambda action: None)
    return seen


def test_options_after_the_profile_belong_to_the_command(tmp_path: Path, captured: list[SandboxConfig]) -> None:
    code, _ = invoke("run", "-e", "A=1", "-w", "/src", "debian", "ls", "-la", "--color", store=tmp_path)
    assert code == 7
    assert captured[0].argv == ("ls", "-la", "--color")
    assert captured[0].env == {"A": "1"}
    assert captured[0].workdir == "/src"


def test_double_dash_separates_the_command(tmp_path: Path, captured: list[SandboxConfig]) -> None:
    invoke("run", "debian-bookworm", "--", "sh", "-c", "echo hi", store=tmp_path)
    assert captured[0].argv == ("sh", "-c", "echo hi")


def test_volumes_network_and_hostname_are_parsed(tmp_path: Path, captured: list[SandboxConfig]) -> None:
    invoke("run", "-v", f"{tmp_path}:/data:ro", "--network", "none", "--hostname", "box",
           "debian", "true", store=tmp_path)
    options = captured[0]
    assert options.binds[0].source == tmp_path and options.binds[0].readonly
    assert options.network == "none" and options.hostname == "box"


def test_bad_volume_is_a_manager_error_with_a_hint(tmp_path: Path, captured: list[SandboxConfig]) -> None:
    code, output = invoke("run", "-v", "nocolon", "debian", "true", store=tmp_path)
    assert code == 125
    assert "sandboxmgr: error: -v 'nocolon' is not SRC:DST" in output
    assert "hint: write -v /host/path:/path/inside[:ro]" in output
    assert captured == []


def test_unknown_profile_exits_125_with_close_names(tmp_path: Path, captured: list[SandboxConfig]) -> None:
    code, output = invoke("run", "debian-bookwrm", "true", store=tmp_path)
    assert code == 125
    assert "no profile named 'debian-bookwrm'" in output
    assert "did you mean debian-bookworm" in output


def test_usage_errors_exit_125(tmp_path: Path) -> None:
    code, output = invoke("run", "--network", "bridge", "debian", store=tmp_path)
    assert code == 125
    assert "'bridge' is not one of" in output


def test_bad_sandbox_name_is_refused(tmp_path: Path, captured: list[SandboxConfig]) -> None:
    code, output = invoke("run", "--name", "../../etc", "debian", "true", store=tmp_path)
    assert code == 125
    assert "invalid sandbox name" in output


def test_profiles_json_lists_shipped_profiles(tmp_path: Path) -> None:
    code, output = invoke("profiles", "--json", store=tmp_path)
    assert code == 0
    rows = {row["name"]: row for row in json.loads(output)}
    assert rows["debian-trixie"]["aliases"] == ["debian", "debian-13", "debian-stable"]
    assert rows["ubuntu-resolute"]["built"] is False


def test_an_ordinary_user_without_a_subuid_range_is_one_line_and_a_hint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Not root: sandboxmgr enters the user's user namespace (rootless mode), which needs a range.
    (tmp_path / "subuid").write_text("someone-else:100000:65536\n")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setattr("sandboxmgr.userns.SUBUID", str(tmp_path / "subuid"))
    code, output = invoke("run", "debian", "true", store=tmp_path)
    assert code == 125
    lines = output.strip().splitlines()
    assert len(lines) == 2, output
    assert "has no subordinate uid range in" in lines[0]
    assert lines[1].startswith("hint: as root: usermod --add-subuids")


def test_empty_store_lists_nothing(tmp_path: Path) -> None:
    assert invoke("ls", "--json", store=tmp_path) == (0, "[]\n")
    assert invoke("images", "--json", store=tmp_path) == (0, "[]\n")


def test_rm_flag_is_accepted_and_contradicts_name(tmp_path: Path, captured: list[SandboxConfig]) -> None:
    code, _ = invoke("run", "--rm", "debian", "true", store=tmp_path)
    assert code == 7
    code, output = invoke("run", "--rm", "--name", "x", "debian", "true", store=tmp_path)
    assert code == 125
    assert "--rm and --name contradict each other" in output


def test_a_missing_tool_says_what_to_install() -> None:
    from sandboxmgr.commands import require
    from sandboxmgr.errors import SandboxError

    with pytest.raises(SandboxError) as info:
        require("debootstrap-not-installed-xyz")
    assert info.value.message == "debootstrap-not-installed-xyz is not installed"
    assert info.value.hint is not None and "apt-get install debootstrap-not-installed-xyz" in info.value.hint


FAST_FORMS = [
    ["run", "debian", "true"],
    ["run", "debian", "--", "sh", "-c", "echo hi"],
    ["run", "--rm", "debian", "ls", "-la"],
    ["run", "-it", "debian", "bash"],
    ["run", "-i", "-t", "debian"],
    ["-q", "run", "debian-bookworm", "--", "--weird", "-x"],
    ["run", "--tty", "debian", "--", "--"],
]


@pytest.mark.parametrize("form", FAST_FORMS)
def test_the_fast_path_parses_like_the_full_cli(form: list[str], tmp_path: Path,
                                                captured: list[SandboxConfig]) -> None:
    from sandboxmgr import fastrun

    fast = fastrun.parse(["--store", str(tmp_path), *form])
    assert fast is not None
    invoke(*form, store=tmp_path, stdin_tty=True)
    (options,) = captured
    assert (fast.command, fast.tty) == (options.argv, options.tty)
    assert fast.store == str(tmp_path)


@pytest.mark.parametrize("form", [
    ["run", "-e", "A=1", "debian", "true"],
    ["--configs", "/x", "run", "debian"],
    ["run", "--name", "x", "debian"],
    ["run", "--help"],
    ["exec", "-e", "A=1", "work", "true"],
    ["exec", "work"],
    ["run"],
])
def test_the_fast_path_leaves_everything_else_to_the_full_cli(form: list[str]) -> None:
    from sandboxmgr import fastrun

    assert fastrun.parse(form) is None


@pytest.mark.parametrize("form", [
    ["exec", "work", "true"],
    ["exec", "-it", "work", "--", "sh", "-c", "echo hi"],
    ["-q", "exec", "-t", "work", "ls", "-la"],
])
def test_the_fast_path_parses_exec_like_the_full_cli(form: list[str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxmgr import fastrun
    from sandboxmgr.store import SandboxRecord, Store

    seen: list[SandboxConfig] = []

    def fake_run_in(store: object, record: object, options: SandboxConfig, keep_running: bool = False) -> int:
        seen.append(options)
        return 0

    monkeypatch.setattr("sandboxmgr.live.run_in", fake_run_in)
    monkeypatch.setattr(Store, "sandbox", lambda self, name: SandboxRecord(name, tmp_path, {}))
    monkeypatch.setattr("sandboxmgr.errors.require_root", lambda action: None)
    fast = fastrun.parse(["--store", str(tmp_path), *form])
    assert fast is not None and fast.verb == "exec" and fast.ref == "work"
    invoke(*form, store=tmp_path, stdin_tty=True)
    (options,) = seen
    assert (fast.command, fast.tty) == (options.argv, options.tty)


@pytest.mark.parametrize(("args", "unknown", "close"), [
    (("run", "-p", "80:80", "debian", "true"), "-p", None),
    (("run", "--netwrok", "none", "debian", "true"), "--netwrok", "--network"),
    (("run", "-itx", "debian"), "-x", None),
    (("exec", "--envv", "A=1", "box", "true"), "--envv", "--env"),
])
def test_an_unknown_option_before_the_profile_is_an_unknown_option(
        tmp_path: Path, captured: list[SandboxConfig], args: tuple[str, ...], unknown: str, close: str | None) -> None:
    code, output = invoke(*args, store=tmp_path)
    assert code == 125
    assert f"No such option '{unknown}'" in output
    assert "invalid profile name" not in output
    if close is not None:
        assert f"Did you mean '{close}'" in output
    assert captured == []


@pytest.mark.parametrize(("args", "argv"), [
    (("run", "-it", "--rm", "-e", "A=1", "-w/w", "debian", "ls", "-d"), ("ls", "-d")),
    (("run", "--workdir=/w", "--memory", "64M", "-v", "/tmp:/t:ro", "debian", "--", "-p"), ("-p",)),
    (("run", "--security-opt", "seccomp=unconfined", "--hostname", "box", "debian"), ()),
])
def test_known_options_before_the_profile_and_any_after_it_still_parse(
        tmp_path: Path, captured: list[SandboxConfig], args: tuple[str, ...], argv: tuple[str, ...]) -> None:
    code, output = invoke(*args, stdin_tty=True, store=tmp_path)
    assert code == 7, output  # the fake run's status: parsed, resolved, and handed on
    assert captured[0].argv == argv


def test_dash_capital_v_is_the_version(tmp_path: Path) -> None:
    code, output = invoke("-V", store=tmp_path)
    assert code == 0 and "version" in output


def test_a_configs_directory_that_does_not_exist_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = invoke("--configs", str(tmp_path / "nope"), "profiles", store=tmp_path)
    assert code == 125
    assert f"sandboxmgr: error: --configs {tmp_path / 'nope'}: no such directory" in output
    monkeypatch.setenv("SANDBOXMGR_CONFIGS", f"{tmp_path}:{tmp_path / 'gone'}")
    code, output = invoke("profiles", store=tmp_path)
    assert code == 125 and f"SANDBOXMGR_CONFIGS {tmp_path / 'gone'}: no such directory" in output


def test_user_profiles_follow_xdg_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxmgr.locations import profile_dirs

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert tmp_path / "sandboxmgr" / "profiles" in profile_dirs()


def test_under_sudo_the_invoking_users_profiles_are_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root would trust what the user (or a sandbox writing the user's home) put there: a
    profile named as a shipped one that mounts / writable (the README's Profiles section)."""
    import pwd

    from sandboxmgr.locations import profile_dirs

    if os.geteuid() != 0:
        missing("sudo's environment is read only by root")
    home = tmp_path / "home"
    mine = home / ".config" / "sandboxmgr" / "profiles"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("extends: debian-bookworm\ndescription: the invoker's own\n")
    real = pwd.getpwuid

    def getpwuid(uid: int) -> pwd.struct_passwd:
        if uid != 4242:
            return real(uid)
        fields = list(real(0))
        fields[5] = str(home)  # pw_dir
        return pwd.struct_passwd(fields)

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "root-config"))
    monkeypatch.setenv("SUDO_UID", "4242")
    monkeypatch.setenv("SUDO_USER", "someone")
    assert mine not in profile_dirs()
    code, output = invoke("profiles", store=tmp_path / "store")
    assert code == 0 and "the invoker's own" not in output, output


def test_a_profile_name_in_capitals_suggests_the_lowercase_one(tmp_path: Path, captured: list[SandboxConfig]) -> None:
    code, output = invoke("run", "Debian", "true", store=tmp_path)
    assert code == 125
    assert "invalid profile name 'Debian'" in output
    assert "hint: names are lowercase: did you mean 'debian'?" in output


def test_run_help_names_every_volume_form_the_readme_does(tmp_path: Path) -> None:
    code, output = invoke("run", "--help", store=tmp_path)
    assert code == 0
    assert "SRC:DST[:ro|:O]" in output and ":O" in output.split("--volume", 1)[1].split("--hostname", 1)[0]


def test_inspect_takes_a_profile_path_as_every_profile_argument_does(tmp_path: Path) -> None:
    from sandboxmgr.locations import shipped_configs_dir

    path = str(shipped_configs_dir() / "debian-bookworm.yaml")
    code, output = invoke("inspect", path, store=tmp_path)
    assert code == 125
    assert f"no image of {path} in the store" in output and "invalid sandbox name" not in output
    assert f"hint: build it: sandboxmgr build {path}" in output


def complete(words: str, store: Path) -> list[str]:
    """What the shell would offer for the last of ``words`` (bash's protocol, the real program)."""
    import subprocess

    env = {**os.environ, "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
           "_SANDBOXMGR_COMPLETE": "bash_complete", "SANDBOXMGR_STORE": str(store)}
    result = subprocess.run([sys.executable, "-m", "sandboxmgr"], env=env, capture_output=True, text=True, check=True)
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]


def test_completion_offers_verbs_profiles_and_aliases(tmp_path: Path) -> None:
    assert "build" in complete("sandboxmgr bu", tmp_path)
    offered = complete("sandboxmgr run debian-b", tmp_path)
    assert "debian-bookworm" in offered and "debian-bullseye" in offered
    assert "debian" in complete("sandboxmgr build deb", tmp_path)  # an alias
    assert complete("sandboxmgr exec nosuch", tmp_path) == []  # no sandboxes: nothing, and no error


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_completion_command_prints_the_shells_script(tmp_path: Path, shell: str) -> None:
    code, output = invoke("completion", shell, store=tmp_path)
    assert code == 0
    assert "_SANDBOXMGR_COMPLETE" in output


def test_completion_offers_the_stores_sandboxes_and_image_keys(tmp_path: Path) -> None:
    from sandboxmgr.store import Store

    store = Store(tmp_path / "store")
    store.create_sandbox("work-1", {"name": "work-1", "image": "0123456789abcdef0123"})
    store.publish_image("0123456789abcdef0123", {"key": "0123456789abcdef0123", "profile": "debian-bookworm",
                                                 "layers": []})
    assert complete("sandboxmgr exec wo", store.root) == ["work-1"]
    assert complete("sandboxmgr rm ", store.root) == ["work-1"]
    assert "0123456789abcdef0123" in complete("sandboxmgr rmi 0123", store.root)
