"""Findings of the review of issue 11 (the house): each test failed on main before its fix."""

from __future__ import annotations

from sandboxmgr import names, profile


def test_profile_does_not_re_export_the_names_of_names_py() -> None:
    # The house left no re-export shims: NAME_RE, HOSTNAME_RE, NAME_RULE and check_name
    # live in names.py and are imported from there.
    re_exported = set(getattr(profile, "__all__", ())) & {n for n in vars(names) if not n.startswith("_")}
    assert not re_exported
