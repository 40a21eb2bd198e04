"""The state every verb shares: the store and the profile registry, made when first used."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sandboxmgr.ui import ProgressLine

if TYPE_CHECKING:
    from sandboxmgr.profile import Profile, ProfileRegistry
    from sandboxmgr.store import ImageRecord, Store


# --- shared state ---------------------------------------------------------------------------


@dataclass
class App:
    store_path: Path | None = None
    configs: tuple[str, ...] = ()
    quiet: bool = False
    debug: bool = False
    _registry: ProfileRegistry | None = field(default=None, repr=False)
    _store: Store | None = field(default=None, repr=False)

    @property
    def registry(self) -> ProfileRegistry:
        if self._registry is None:
            from sandboxmgr.locations import profile_dirs
            from sandboxmgr.profile import ProfileRegistry

            self._registry = ProfileRegistry(profile_dirs(self.configs))
        return self._registry

    @property
    def store(self) -> Store:
        if self._store is None:
            from sandboxmgr.locations import default_store
            from sandboxmgr.store import Store

            self._store = Store(self.store_path or default_store())
        return self._store

    def progress(self, label: str) -> ProgressLine:
        return ProgressLine(label, quiet=self.quiet)

    def image_for(self, profile: Profile) -> ImageRecord:
        from sandboxmgr.images import ensure_image

        line = self.progress(profile.name)
        try:
            return ensure_image(self.store, profile, line)
        finally:
            line.done()


pass_app = click.make_pass_decorator(App)
# Verbs that run a command: what follows their PROFILE or NAME is the command's, options too.
COMMAND_SETTINGS = {"ignore_unknown_options": True, "allow_interspersed_args": False}


def require_root(app: App, action: str) -> None:
    """Root check for commands that change the store; also removes what dead runs left."""
    from sandboxmgr import errors

    errors.require_root(action)
    app.store.clean_leftovers()
