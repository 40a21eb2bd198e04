"""Rootless mode's pure logic: the subordinate ranges, the id map, what a restricted host says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxmgr import userns
from sandboxmgr.errors import SandboxError
from tests.unit.conftest import made_up_host


def test_the_first_range_of_the_user_by_name_or_number_is_used(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\nbob:165536:65536\nbob:300000:10\n1234:400000:65536\nbroken:x:1\n")
    assert userns.subordinate(str(subuid), "bob", 1001) == (165536, 65536)
    assert userns.subordinate(str(subuid), "carol", 1234) == (400000, 65536)
    assert userns.subordinate(str(subuid), "broken", 5) is None
    assert userns.subordinate(str(subuid), "dave", 5) is None
    assert userns.subordinate(str(tmp_path / "none"), "alice", 5) is None


def test_an_empty_range_is_no_range(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:0\n")
    assert userns.subordinate(str(subuid), "alice", 1000) is None


def test_root_inside_is_the_user_and_the_others_its_subordinate_ids() -> None:
    # newuidmap PID 0 1000 1 1 100000 65536: inside 0 -> 1000, inside 1.. -> 100000..
    assert userns.id_map(1000, (100000, 65536)) == ["0", "1000", "1", "1", "100000", "65536"]


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A made-up host: its sysctls, subuid and subgid files in tmp_path."""
    return made_up_host(tmp_path, monkeypatch, apparmor_restricts=False)


def test_a_host_that_allows_it_has_no_problem(host: Path) -> None:
    assert userns.restriction() is None
    assert userns.problems(1000) == []


def test_user_namespaces_turned_off_are_named_with_the_sysctl(host: Path) -> None:
    (host / "max").write_text("0\n")
    problems = userns.problems(1000)
    assert len(problems) == 1
    what, line, fix = problems[0]
    assert what == "user.max_user_namespaces"
    assert "user.max_user_namespaces=0" in line
    assert "sysctl -w user.max_user_namespaces=" in fix


def test_apparmor_restriction_is_named_with_the_sysctl(host: Path) -> None:
    (host / "apparmor").write_text("1\n")
    [(what, line, fix)] = userns.problems(1000)
    assert what == "kernel.apparmor_restrict_unprivileged_userns"
    assert "kernel.apparmor_restrict_unprivileged_userns=1" in line
    assert "apparmor_restrict_unprivileged_userns=0" in fix


def test_a_user_without_ranges_is_told_how_to_add_them(host: Path) -> None:
    (host / "subuid").write_text("")
    (host / "subgid").write_text("other:1:2\n")
    problems = userns.problems(1000)
    assert [line for _, line, _ in problems] == ["me has no subordinate uid range in " + str(host / "subuid"),
                                             "me has no subordinate gid range in " + str(host / "subgid")]
    assert all("usermod --add-sub" in fix for _, _, fix in problems)


def test_missing_newuidmap_names_the_package(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(userns, "_find", lambda program: None if program == "newuidmap" else "/usr/bin/" + program)
    [(what, line, fix)] = userns.problems(1000)
    assert what == "newuidmap"
    assert line.startswith("newuidmap is not installed")
    assert "apt-get install uidmap" in fix


def test_root_is_not_rootless_outside_a_namespace_of_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(userns.MARK, raising=False)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert not userns.entered()
    assert not userns.rootless()
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert userns.rootless()


def _helper(message: bytes, status: int) -> tuple[int, int]:
    """A stand-in for the helper outside: it writes ``message`` to the report and exits ``status``."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, message)
        os._exit(status)
    os.close(write)
    return pid, read


def test_a_map_the_helper_could_not_write_is_one_line_with_its_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(userns, "problems", lambda uid: [])
    monkeypatch.delenv(userns.MARK, raising=False)
    pid, report = _helper(b"newuidmap: write to uid_map failed: Operation not permitted\n", 1)
    with pytest.raises(SandboxError) as caught:
        userns.Pending(pid, report, 1000, "me").finish()
    assert str(caught.value) == ("cannot map me's subordinate ids into its user namespace: "
                                 "newuidmap: write to uid_map failed: Operation not permitted")
    assert "newuidmap is setuid root" in (caught.value.hint or "")
    assert userns.MARK not in os.environ


def test_a_failed_map_names_what_the_host_lacks_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the host lacks (a range removed since the namespace was entered, say) explains a
    failed map before the helper's own words do."""
    monkeypatch.setattr(userns, "problems", lambda uid: [("/etc/subuid", f"uid {uid} has no range", "add one")])
    pid, report = _helper(b"", 1)
    with pytest.raises(SandboxError) as caught:
        userns.Pending(pid, report, 1000, "me").finish()
    assert (str(caught.value), caught.value.hint) == ("uid 1000 has no range", "add one")
