"""Attack 11: a project file is code the host runs. A project cloned from elsewhere carries a
sandboxmgr.yaml whose inline profiles (or the profile files they extend) mount the host's root,
pass a --customize-hook to the bootstrap, bring their own signing key, or read a local
repository. `matrix` must refuse each before anything is built or run, in one line naming the
file, line and key, unless the user trusts the file: `--trust` for one run, or `sandboxmgr trust`
until the file changes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.adversarial.conftest import fresh_tiny
from tests.conftest import CLI, Result
from tests.rpmrepo import RpmRepo

pytestmark = [pytest.mark.adversarial, pytest.mark.root]


def matrix(cli: CLI, project: Path, *args: str) -> Result:
    proc = subprocess.run(cli.argv("matrix", "-C", str(project), *args), capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL, cwd=project)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_refused(result: Result, project: Path, where: str, key: str) -> None:
    lines = result.err.splitlines()
    assert result.code == 125, str(result)
    assert len(lines) == 2, str(result)
    assert lines[0].startswith(f"sandboxmgr: error: {where}: {key}: "), str(result)
    assert "not trusted" in lines[0], str(result)
    assert lines[1].startswith("hint: ") and "sandboxmgr matrix --trust" in lines[1], str(result)
    assert f"sandboxmgr trust {project}" in lines[1], str(result)


def nothing_made(cli: CLI) -> None:
    for sub in ("images", "layers", "sandboxes"):
        directory = cli.store / sub
        assert not directory.exists() or list(directory.iterdir()) == [], sub


DEBIAN = "extends: debian-bookworm\n"
RPM = "distro: tinydistro\nrelease: '1'\nbootstrap: {{method: dnf}}\nrepositories:\n"
# Each attack: the inline profile's body, and the line (of the project file) and key to be named.
ATTACKS = {
    "host-root": (DEBIAN + "mounts: [{{source: /, target: /host}}]", 6, "mounts.0.source"),
    "hook": (DEBIAN + "bootstrap:\n  extra_args: ['--customize-hook=touch {marker}']", 7, "bootstrap.extra_args"),
    "keyring": (DEBIAN + "bootstrap:\n  keyring: project-key.gpg", 7, "bootstrap.keyring"),
    "file-mirror": (DEBIAN + "bootstrap:\n  mirror: file:///", 7, "bootstrap.mirror"),
    "local-repo": (RPM + "  - {{name: local, baseurl: 'file:///', gpgcheck: false}}", 9, "repositories.0.baseurl"),
    "no-gpgcheck": (RPM + "  - {{name: web, baseurl: 'http://127.0.0.1:9/r', gpgcheck: false}}", 9,
                    "repositories.0.gpgcheck"),
    "repo-key": (RPM + "  - {{name: web, baseurl: 'http://127.0.0.1:9/r', gpgkey: 'http://127.0.0.1:9/k'}}", 9,
                 "repositories.0.gpgkey"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_an_untrusted_project_file_cannot_make_the_host_act(tmp_path: Path, attack: str) -> None:
    body, line, key = ATTACKS[attack]
    marker = tmp_path / "owned"
    project = tmp_path / "project"
    project.mkdir()
    lines = ["profiles: [evil]", "command: 'true'", "inline:", "  evil:",
             *(f"    {text}" for text in body.format(marker=marker).splitlines())]
    (project / "sandboxmgr.yaml").write_text("\n".join(lines) + "\n")
    cli = CLI(tmp_path / "store")
    result = matrix(cli, project)
    assert_refused(result, project, f"{project / 'sandboxmgr.yaml'}:{line}", f"inline.evil.{key}")
    assert not marker.exists()
    nothing_made(cli)


def test_a_profile_file_of_the_project_is_checked_through_extends_and_profiles(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "ci").mkdir(parents=True)
    (project / "ci" / "base.yaml").write_text(
        "extends: debian-bookworm\n"
        "bootstrap:\n"
        f"  extra_args: ['--customize-hook=touch {tmp_path / 'owned'}']\n")
    (project / "ci" / "top.yaml").write_text("extends: base.yaml\npackages: [make]\n")
    cli = CLI(tmp_path / "store")
    (project / "sandboxmgr.yaml").write_text(
        "profiles: [mine]\ncommand: 'true'\ninline:\n  mine:\n    extends: ci/base.yaml\n")
    assert_refused(matrix(cli, project), project, f"{project / 'ci' / 'base.yaml'}:3", "bootstrap.extra_args")
    # Named by path in profiles: (relative to the project, where matrix runs), two levels deep.
    (project / "sandboxmgr.yaml").write_text("profiles: [ci/top.yaml]\ncommand: 'true'\n")
    assert_refused(matrix(cli, project), project, f"{project / 'ci' / 'base.yaml'}:3", "bootstrap.extra_args")
    # Named with -p: checked too; 'sandboxmgr trust' would not record it, so the hint names --trust only.
    result = matrix(cli, project, "-p", "ci/top.yaml")
    lines = result.err.splitlines()
    assert result.code == 125 and len(lines) == 2, str(result)
    assert lines[0].startswith(f"sandboxmgr: error: {project / 'ci' / 'base.yaml'}:3: bootstrap.extra_args: ")
    assert "sandboxmgr matrix --trust" in lines[1] and "sandboxmgr trust /" not in lines[1], str(result)
    assert not (tmp_path / "owned").exists()
    nothing_made(cli)


def test_trust_lets_a_project_file_through_until_it_is_edited(tmp_path: Path, rpm_repo: RpmRepo) -> None:
    cli = fresh_tiny(tmp_path, rpm_repo)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data").write_text("from the host\n")
    project = tmp_path / "project"
    project.mkdir()
    text = ("profiles: [t]\n"
            "command: 'grep -q \"from the host\" /host/data'\n"
            "inline:\n"
            "  t:\n"
            "    extends: tiny\n"
            f"    mounts: [{{source: {shared}, target: /host, readonly: true}}]\n")
    (project / "sandboxmgr.yaml").write_text(text)
    assert_refused(matrix(cli, project), project, f"{project / 'sandboxmgr.yaml'}:6", "inline.t.mounts.0.source")
    nothing_made(cli)
    # Trusted as it is now.
    trusted = cli.ok("trust", str(project))
    assert str(project / "sandboxmgr.yaml") in trusted.out and "inline.t.mounts.0.source" in trusted.out
    first = matrix(cli, project, "--json")
    assert first.code == 0, str(first)
    assert [r["status"] for r in json.loads(first.out)] == ["passed"]
    # An edit - one comment - revokes the trust.
    (project / "sandboxmgr.yaml").write_text(text + "# edited\n")
    assert_refused(matrix(cli, project), project, f"{project / 'sandboxmgr.yaml'}:6", "inline.t.mounts.0.source")
    # --trust trusts it for one run, and records nothing.
    assert matrix(cli, project, "--trust").code == 0
    assert matrix(cli, project).code == 125
    # trust --revoke forgets a trusted file.
    cli.ok("trust", str(project))
    assert matrix(cli, project).code == 0
    cli.ok("trust", "--revoke", str(project))
    assert matrix(cli, project).code == 125


def test_prepare_and_command_need_no_trust(tmp_path: Path, rpm_repo: RpmRepo) -> None:
    cli = fresh_tiny(tmp_path, rpm_repo)
    project = tmp_path / "project"
    project.mkdir()
    (project / "sandboxmgr.yaml").write_text(
        "profiles: [tiny, t]\n"
        "command: 'test -e /etc/prepared && echo ran'\n"
        "prepare:\n  tinydistro: [touch /etc/prepared]\n"
        "inline:\n  t:\n    extends: tiny\n    env: {A: b}\n    setup: [echo set up > /etc/setup]\n")
    result = matrix(cli, project, "--json")
    assert result.code == 0, str(result)
    assert [r["status"] for r in json.loads(result.out)] == ["passed", "passed"]
