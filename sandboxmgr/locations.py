"""Where things live: the shipped profiles, the profile search path, the store.

In a source checkout (the README's way) the shipped profiles are ``configs/``
and the store is ``sandboxes/`` beside them; an installed tool uses
``<prefix>/share/sandboxmgr/configs`` and ``/var/lib/sandboxmgr``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

INSTALLED_STORE = Path("/var/lib/sandboxmgr")


def checkout_root() -> Path | None:
    """The source checkout this package runs from, if it runs from one."""
    top = Path(__file__).resolve().parent.parent
    if (top / "setup.cfg").is_file() and (top / "configs").is_dir():
        return top
    return None


def shipped_configs_dir() -> Path:
    top = checkout_root()
    if top is not None:
        return top / "configs"
    return Path(sys.prefix) / "share" / "sandboxmgr" / "configs"


def default_store() -> Path:
    env = os.environ.get("SANDBOXMGR_STORE")
    if env:
        return Path(env)
    top = checkout_root()
    if top is not None:
        return top / "sandboxes"
    return INSTALLED_STORE


def profile_dirs(extra: tuple[str, ...] = ()) -> list[Path]:
    """Profile directories, lowest precedence first: a later one's profile of the
    same name replaces an earlier one's."""
    dirs = [
        shipped_configs_dir(),
        Path("/etc/sandboxmgr/profiles"),
        Path.home() / ".config" / "sandboxmgr" / "profiles",
    ]
    env = os.environ.get("SANDBOXMGR_CONFIGS", "")
    dirs += [Path(p) for p in env.split(":") if p]
    dirs += [Path(p) for p in extra]
    return dirs
