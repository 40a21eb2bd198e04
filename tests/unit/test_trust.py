"""Which keys of a project file need trust, in which files, and the trust list (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxmgr import trust
from sandboxmgr.errors import ProfileError
from sandboxmgr.locations import shipped_configs_dir
from sandboxmgr.profile import ProfileRegistry
from sandboxmgr.project import entries, expand, load_project
from sandboxmgr.store import Store

DIRS = [shipped_configs_dir()]


def findings(root: Path, text: str) -> list[trust.Finding]:
    (root / "sandboxmgr.yaml").write_text(text)
    registry = ProfileRegistry(DIRS)
    project = load_project(root, registry)
    listed = [name for name in expand(project.profiles, project, registry) if name not in project.inline]
    others = [entry.profile for entry in entries(listed, project, registry)]
    return trust.findings(project.raw, project.inline, others, registry)[0]


def inline(body: str) -> str:
    return "inline:\n  mine:\n    extends: debian-bookworm\n" + "".join(f"    {line}\n" for line in body.splitlines())


RPM_BASE = "distro: tinydistro\nrelease: '1'\nbootstrap: {method: dnf}\n"


@pytest.mark.parametrize("body,key,line", [
    ("mounts: [{source: /, target: /host}]", "inline.mine.mounts.0.source", 4),
    ("bootstrap:\n  extra_args: ['--customize-hook=touch /tmp/owned']", "inline.mine.bootstrap.extra_args", 5),
    ("bootstrap:\n  keyring: /tmp/project-key.gpg", "inline.mine.bootstrap.keyring", 5),
    ("bootstrap:\n  mirror: file:///srv/project-archive", "inline.mine.bootstrap.mirror", 5),
])
def test_each_key_that_makes_the_host_act_is_found_with_its_line(tmp_path: Path, body: str, key: str,
                                                                 line: int) -> None:
    (found,) = findings(tmp_path, inline(body))
    assert (found.path, found.key, found.line) == (tmp_path / "sandboxmgr.yaml", key, line), found
    assert str(found).startswith(f"{tmp_path / 'sandboxmgr.yaml'}:{line}: {key}: ")


def test_repository_keys_that_need_trust(tmp_path: Path) -> None:
    text = ("inline:\n  rpm:\n" + "".join(f"    {line}\n" for line in RPM_BASE.splitlines()) +
            "    repositories:\n"
            "      - {name: local, baseurl: 'file:///srv/repo', gpgcheck: false}\n"
            "      - {name: web, metalink: 'https://x.example/m', gpgkey: 'https://x.example/key'}\n"
            "      - {name: list, mirrorlist: 'file:///srv/list', gpgkey: 'file:///srv/key'}\n")
    keys = [f.key for f in findings(tmp_path, text)]
    assert keys == ["inline.rpm.repositories.0.baseurl", "inline.rpm.repositories.0.gpgcheck",
                    "inline.rpm.repositories.1.gpgkey",
                    "inline.rpm.repositories.2.mirrorlist", "inline.rpm.repositories.2.gpgkey"]


def test_what_runs_inside_sandboxes_needs_no_trust(tmp_path: Path) -> None:
    text = ("profiles: [mine, debian-trixie, 'ubuntu-*']\n"
            "command: make check\nenv: {A: b}\nprepare:\n  debian: [apt-get install -y make]\n" +
            inline("packages: [make]\nsetup: [touch /x]\nenv: {CC: gcc}\nhostname: box\nno_new_privs: false\n"
                   "limits: {memory: 1G}\nbootstrap:\n  mirror: http://deb.debian.org/debian\n"
                   "  include: [ca-certificates]\n  components: [main, contrib]"))
    assert findings(tmp_path, text) == []


def test_profiles_of_the_profile_directories_need_no_trust(tmp_path: Path) -> None:
    # ubuntu-jammy sets its keyring: a shipped profile is trusted as the tool itself is.
    text = "profiles: [ubuntu-jammy, mine]\ninline:\n  mine:\n    extends: ubuntu-jammy\n"
    assert findings(tmp_path, text) == []


def test_a_file_of_the_project_that_an_inline_profile_extends_is_checked(tmp_path: Path) -> None:
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "base.yaml").write_text("extends: debian-bookworm\nbootstrap:\n  keyring: ../key.gpg\n")
    (found,) = findings(tmp_path, "inline:\n  mine:\n    extends: ci/base.yaml\n    packages: [make]\n")
    assert (found.path, found.line, found.key) == (tmp_path / "ci" / "base.yaml", 3, "bootstrap.keyring")


def test_a_profile_file_the_project_lists_by_path_is_checked_with_its_parents(tmp_path: Path) -> None:
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "base.yaml").write_text("extends: debian-bookworm\nmounts: [{source: /etc, target: /e}]\n")
    (tmp_path / "ci" / "top.yaml").write_text("extends: base.yaml\npackages: [make]\n")
    (found,) = findings(tmp_path, f"profiles: [{tmp_path / 'ci' / 'top.yaml'}]\n")
    assert (found.path, found.key) == (tmp_path / "ci" / "base.yaml", "mounts.0.source")


def test_trusting_a_file_lets_it_through_until_it_is_edited(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    project = tmp_path / "project"
    project.mkdir()
    text = inline("mounts: [{source: /srv, target: /srv}]")
    (project / "sandboxmgr.yaml").write_text(text)
    registry = ProfileRegistry(DIRS)
    loaded = load_project(project, registry)
    found, digests = trust.findings(loaded.raw, loaded.inline, [], registry)
    with pytest.raises(trust.UntrustedError) as info:
        trust.check(store, found, digests, project)
    assert info.value.message.startswith(f"{project / 'sandboxmgr.yaml'}:4: inline.mine.mounts.0.source: ")
    assert "\n" not in info.value.message
    assert info.value.hint is not None
    assert "matrix --trust" in info.value.hint and f"sandboxmgr trust {project}" in info.value.hint
    trust.record(store, digests)
    assert (store.trust_file.stat().st_mode & 0o777) == 0o600
    trust.check(store, found, digests, project)  # trusted: no error
    # One byte more (a comment): a new digest, so the trust is gone.
    (project / "sandboxmgr.yaml").write_text(text + "# edited\n")
    loaded = load_project(project, registry)
    found, digests = trust.findings(loaded.raw, loaded.inline, [], registry)
    with pytest.raises(trust.UntrustedError):
        trust.check(store, found, digests, project)
    trust.record(store, digests)
    trust.check(store, found, digests, project)
    trust.record(store, digests, revoke=True)
    with pytest.raises(trust.UntrustedError):
        trust.check(store, found, digests, project)


def test_a_damaged_trust_list_trusts_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.ensure()
    for text in ("", "[]", '{"files": []}', '{"files": {"/x": "abc"}}', "not json"):
        store.trust_file.write_text(text)
        assert trust.trusted(store) == {}


def test_what_is_checked_is_what_was_parsed_not_the_file_read_again(tmp_path: Path) -> None:
    """An edit between loading the project and checking it cannot slip an unchecked key through:
    the check scans the parsed project, and its digest is of the parsed bytes."""
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "base.yaml").write_text("extends: debian-bookworm\nmounts: [{source: /, target: /h}]\n")
    (tmp_path / "sandboxmgr.yaml").write_text(inline("mounts: [{source: /, target: /host}]") +
                                              "  other:\n    extends: ci/base.yaml\n")
    registry = ProfileRegistry(DIRS)
    project = load_project(tmp_path, registry)
    (tmp_path / "sandboxmgr.yaml").write_text("inline:\n  mine:\n    extends: debian-bookworm\n")
    (tmp_path / "ci" / "base.yaml").write_text("extends: debian-bookworm\n")
    found, digests = trust.findings(project.raw, project.inline, [], registry)
    assert [f.key for f in found] == ["inline.mine.mounts.0.source", "mounts.0.source"]
    assert project.raw is not None and digests[tmp_path / "sandboxmgr.yaml"] == project.raw.sha256


def test_a_profile_file_that_changes_between_two_reads_of_one_command_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("extends: debian-bookworm\n")
    registry = ProfileRegistry([*DIRS, tmp_path])
    registry.load("p")
    (tmp_path / "p.yaml").write_text("extends: debian-bookworm\nmounts: [{source: /, target: /h}]\n")
    with pytest.raises(ProfileError) as info:
        registry.load("p")
    assert "changed while it was being read" in info.value.message
