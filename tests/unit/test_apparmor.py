"""The AppArmor profile shipped for hosts that restrict unprivileged user namespaces (Ubuntu
24.04 and later): what it attaches to, that AppArmor's own parser compiles it, and what a
restricted host's doctor says. This machine has no AppArmor: the sysctl and the process's
label are simulated, and the parser compiles without loading (--skip-kernel-load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sandboxmgr import apparmor, doctor, userns
from sandboxmgr.cli import cli
from sandboxmgr.errors import SandboxError
from tests.conftest import REPO, missing
from tests.unit.conftest import made_up_host

SHIPPED = REPO / "contrib" / "apparmor" / "sandboxmgr"
# make deps writes it (contrib/apparmor/get-parser): AppArmor 4's parser, the host's or Debian 13's.
PARSER = REPO / "build" / "apparmor" / "apparmor_parser"
FIX = ("doctor --apparmor-profile > /etc/apparmor.d/sandboxmgr && apparmor_parser -r /etc/apparmor.d/sandboxmgr "
       "(README: AppArmor), or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")


def compile_profile(path: Path) -> subprocess.CompletedProcess[str]:
    if not os.access(PARSER, os.X_OK):
        missing(f"no AppArmor 4 parser at {PARSER} (make deps writes it)")
    return subprocess.run([str(PARSER), "--skip-kernel-load", "--skip-cache", "--names", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_the_shipped_profile_is_the_one_written_for_its_installation() -> None:
    assert SHIPPED.read_text() == apparmor.profile(Path(apparmor.SHIPPED_FOR))


def test_the_profile_attaches_to_the_script_and_allows_user_namespaces() -> None:
    text = apparmor.profile(Path("/opt/tools/bin/sandboxmgr"))
    rules = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert rules == ["abi <abi/4.0>,", "include <tunables/global>",
                     "profile sandboxmgr /opt/tools/bin/sandboxmgr flags=(unconfined) {", "userns,",
                     "include if exists <local/sandboxmgr>", "}"]


def test_apparmors_parser_compiles_the_shipped_profile() -> None:
    compiled = compile_profile(SHIPPED)
    assert compiled.returncode == 0, compiled.stderr
    assert compiled.stdout.split() == ["sandboxmgr"]


def test_apparmors_parser_compiles_a_profile_written_for_a_path_with_spaces(tmp_path: Path) -> None:
    written = tmp_path / "sandboxmgr"
    written.write_text(apparmor.profile(Path("/opt/my tools/bin/sandboxmgr"), ["alice"]))
    compiled = compile_profile(written)
    assert compiled.returncode == 0, compiled.stderr


def test_apparmors_parser_refuses_a_rule_it_does_not_know(tmp_path: Path) -> None:
    """The check can fail: the same profile with a misspelt rule is refused."""
    broken = tmp_path / "sandboxmgr"
    broken.write_text(SHIPPED.read_text().replace("userns,", "usernz,"))
    compiled = compile_profile(broken)
    assert compiled.returncode != 0
    assert "syntax error" in compiled.stderr


@pytest.mark.parametrize("path", ["/opt/a*/sandboxmgr", "/opt/{a,b}/sandboxmgr", "/home/@{USER}/sandboxmgr",
                                  '/opt/"q"/sandboxmgr', "/opt/x\ny/sandboxmgr"])
def test_a_path_apparmor_would_read_as_a_pattern_is_refused(path: str) -> None:
    with pytest.raises(SandboxError, match=r"cannot name .* in an AppArmor profile"):
        apparmor.attachment(Path(path))


def test_a_path_with_spaces_is_quoted() -> None:
    assert apparmor.attachment(Path("/opt/my tools/sandboxmgr")) == '"/opt/my tools/sandboxmgr"'
    assert apparmor.attachment(Path("/opt/sandboxmgr/bin/sandboxmgr")) == "/opt/sandboxmgr/bin/sandboxmgr"


def _script(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "sandboxmgr"
    script.write_text("#!/usr/bin/python3\nfrom sandboxmgr.fastrun import main\n")
    return script


def test_the_script_is_the_executed_file_with_links_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script(tmp_path / "venv" / "bin")
    (tmp_path / "link").symlink_to(script)
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "link"), "doctor"])
    assert apparmor.script() == script


def test_python_dash_m_has_no_script_to_attach_to(monkeypatch: pytest.MonkeyPatch) -> None:
    import sandboxmgr

    monkeypatch.setattr(sys, "argv", [str(Path(sandboxmgr.__file__).parent / "__main__.py"), "doctor"])
    with pytest.raises(SandboxError, match=r"runs from the Python interpreter \(python -m sandboxmgr\)"):
        apparmor.script()


def test_whoever_can_replace_the_script_is_named(tmp_path: Path) -> None:
    script = _script(tmp_path / "opt" / "bin")
    before = apparmor.writers(script)  # as root none (tmp_path is root's, /tmp sticky); else the user
    assert before == ([] if os.geteuid() == 0 else [apparmor._user(os.geteuid())])
    script.parent.chmod(0o777)
    assert apparmor.writers(script) == [*before, "every user"]
    script.parent.chmod(0o1777)  # sticky: others cannot replace what is not theirs
    assert apparmor.writers(script) == before
    if os.geteuid() == 0:
        script.parent.chmod(0o775)
        os.chown(script.parent, 0, 4243)
        os.chown(script, 4242, 0)
        assert apparmor.writers(script) == [apparmor._user(4242), f"group {apparmor._group(4243)}"]


def test_a_writable_installation_gets_a_warning_in_the_profile() -> None:
    text = apparmor.profile(Path("/home/alice/venv/bin/sandboxmgr"), ["alice"])
    assert "\n# WARNING: /home/alice/venv/bin/sandboxmgr can be replaced by alice: with this profile, any\n" \
           "#   program run by them can make user namespaces" in text
    assert "WARNING" not in apparmor.profile(Path("/opt/sandboxmgr/bin/sandboxmgr"), [])


@pytest.fixture
def label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The process's AppArmor label, as /proc/self/attr/apparmor/current shows it."""
    current = tmp_path / "current"
    monkeypatch.setattr(apparmor, "LABEL_FILES", (str(current), str(tmp_path / "old-current")))
    return current


@pytest.mark.parametrize(("text", "name"), [("unconfined\n", "unconfined"),
                                             ("sandboxmgr (unconfined)\n", "sandboxmgr"),
                                             ("/usr/bin/man (enforce)\n", "/usr/bin/man")])
def test_the_label_is_the_profile_without_its_mode(label: Path, text: str, name: str) -> None:
    label.write_text(text)
    assert apparmor.label() == name


def test_no_label_without_apparmor(label: Path) -> None:
    assert apparmor.label() is None


@pytest.fixture
def restricted(tmp_path: Path, label: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A made-up Ubuntu 24.04 host: kernel.apparmor_restrict_unprivileged_userns=1, user
    namespaces otherwise allowed, the user's ranges there; this process unconfined."""
    made_up_host(tmp_path, monkeypatch, apparmor_restricts=True)
    monkeypatch.setattr(userns, "_find", lambda program: "/usr/bin/" + program)
    script = _script(tmp_path / "venv" / "bin")
    monkeypatch.setattr(sys, "argv", [str(script)])
    label.write_text("unconfined\n")
    return script


def test_the_doctor_finding_names_the_profile_of_this_installation(restricted: Path) -> None:
    [finding] = doctor.rootless_findings()
    assert (finding.kind, finding.what) == ("rootless", "kernel.apparmor_restrict_unprivileged_userns")
    assert finding.detail == ("AppArmor restricts unprivileged user namespaces "
                              "(kernel.apparmor_restrict_unprivileged_userns=1) and no AppArmor profile names this "
                              f"sandboxmgr; fix: as root: {restricted} {FIX}")


def test_doctor_prints_the_finding_for_an_ordinary_user(restricted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(cli, ["doctor", "--json"], standalone_mode=False)
    assert result.return_value == 1, result.output
    [finding] = json.loads(result.output)
    assert finding["what"] == "kernel.apparmor_restrict_unprivileged_userns"
    assert finding["detail"].endswith(f"fix: as root: {restricted} {FIX}")


def test_entering_says_the_same_in_one_line(restricted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxError) as raised:
        userns.enter()
    assert raised.value.hint == f"as root: {restricted} {FIX}"


def test_under_sandboxmgrs_profile_the_restriction_is_no_problem(restricted: Path, label: Path) -> None:
    label.write_text("sandboxmgr (unconfined)\n")
    assert userns.restriction() is None
    assert userns.problems(1000) == []


def test_a_refusal_under_another_profile_names_that_profile(restricted: Path, label: Path) -> None:
    label.write_text("/usr/bin/foo (enforce)\n")
    error = userns._refused(PermissionError(13, "Permission denied"))
    assert error.message == ("cannot make a user namespace: the AppArmor profile /usr/bin/foo does not allow it "
                             "(Permission denied)")
    assert error.hint == f"as root: {restricted} {FIX}"


def test_doctor_apparmor_profile_prints_the_profile_and_nothing_else(restricted: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # no user namespace is entered for it
    result = CliRunner().invoke(cli, ["doctor", "--apparmor-profile"], standalone_mode=False)
    assert result.return_value == 0, result.output
    assert f"\nprofile sandboxmgr {restricted} flags=(unconfined) {{\n  userns,\n" in result.stdout
