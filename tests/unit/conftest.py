"""Helpers shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxmgr import userns


def made_up_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, apparmor_restricts: bool) -> Path:
    """A made-up host for userns.py: its sysctls (user namespaces allowed; AppArmor's
    restriction on or off), and the user "me"'s subuid and subgid ranges, in ``tmp_path``."""
    for name, text in (("max", "15000\n"), ("apparmor", "1\n" if apparmor_restricts else "0\n"),
                       ("subuid", "me:100000:65536\n"), ("subgid", "me:100000:65536\n")):
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(userns, "MAX_USER_NAMESPACES", str(tmp_path / "max"))
    monkeypatch.setattr(userns, "APPARMOR_RESTRICT", str(tmp_path / "apparmor"))
    monkeypatch.setattr(userns, "SUBUID", str(tmp_path / "subuid"))
    monkeypatch.setattr(userns, "SUBGID", str(tmp_path / "subgid"))
    monkeypatch.setattr(userns, "user_name", lambda uid: "me")
    return tmp_path
