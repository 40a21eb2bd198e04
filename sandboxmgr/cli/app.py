"""The state every verb shares: the store and the profile registry, made when first used."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import CompletionItem

from sandboxmgr.errors import SandboxError
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

    def enter_for(self, name: str) -> None:
        """Before the store is reached: an ordinary user's command for the named sandbox NAME
        takes its user namespace when it runs (userns.enter), so that it can join it."""
        if self._store is None and "/" not in name:
            from sandboxmgr.locations import default_store, refuse_others
            from sandboxmgr.userns import enter

            path = self.store_path or default_store()
            refuse_others(path)
            enter(path / "sandboxes" / name)

    @property
    def store(self) -> Store:
        if self._store is None:
            from sandboxmgr.errors import SandboxError
            from sandboxmgr.locations import anothers, default_store
            from sandboxmgr.store import Store
            from sandboxmgr.userns import enter

            path = self.store_path or default_store()
            try:
                enter()  # an ordinary user's store is reached from its user namespace only
            except SandboxError:
                if not anothers(path):
                    raise
                # Root's store: what the user may not do there is its own one-line error (ls,
                # images), not a want of subordinate ids; `profiles` lists without it.
            self._store = Store(path)
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


class CommandVerb(click.Command):
    """A verb whose last arguments are a command with options of its own (run, exec, matrix).

    click must let the command's options through (``ignore_unknown_options``), but then an
    unknown option BEFORE the profile or name (``run -d debian``, ``--netwrok``) would be
    taken for it. So the options up to the first argument are checked here first, as click
    checks them everywhere else: "No such option", with a "did you mean"."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        self._check_leading_options(ctx, args)
        return super().parse_args(ctx, args)

    def _check_leading_options(self, ctx: click.Context, args: list[str]) -> None:
        takes_value = {name: not (isinstance(param, click.Option) and (param.is_flag or param.count))
                       for param in self.get_params(ctx) if isinstance(param, click.Option)
                       for name in (*param.opts, *param.secondary_opts)}
        index = 0
        while index < len(args) and args[index].startswith("-") and args[index] not in ("-", "--"):
            word = args[index]
            names = [word.partition("=")[0]] if word.startswith("--") else [f"-{c}" for c in word[1:]]
            for position, name in enumerate(names):
                if name not in takes_value:
                    import difflib

                    close = difflib.get_close_matches(name, list(takes_value), n=3, cutoff=0.6)
                    raise click.NoSuchOption(name, possibilities=close, ctx=ctx)
                if takes_value[name]:
                    # -wDIR, --workdir=DIR: the value is in the word; else it is the next one.
                    inline = "=" in word if word.startswith("--") else position < len(names) - 1
                    index += 0 if inline else 1
                    break
            index += 1


def require_root(app: App, action: str) -> None:
    """Root check for commands that change the store; also removes what dead runs left.
    An ordinary user's sandboxmgr enters its user namespace first (app.store), where it is root."""
    from sandboxmgr import errors

    store = app.store
    errors.require_root(action)
    store.clean_leftovers()


# --- shell completion: the names the store and the profile directories hold ---------------------


def _root_params(ctx: click.Context) -> dict[str, Any]:
    # While completing, no command runs: the group's own options are parsed but its callback
    # (which makes the App) is not called.
    return ctx.find_root().params


def complete_profiles(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Profile names and aliases, for every PROFILE argument."""
    from sandboxmgr.locations import profile_dirs
    from sandboxmgr.profile import ProfileRegistry

    try:
        registry = ProfileRegistry(profile_dirs(tuple(_root_params(ctx).get("configs") or ())))
        names = {*registry.files(), *registry.aliases()}
    except (SandboxError, OSError):
        return []  # a completion never prints an error into the user's command line
    return [CompletionItem(name) for name in sorted(names) if name.startswith(incomplete)]


def complete_sandboxes(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Named sandboxes, for every NAME argument."""
    try:
        names = [record.name for record in _store(ctx).sandboxes()]
    except (SandboxError, OSError):
        return []
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


def complete_images(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Profile names (and aliases) and the keys of built images, for rmi."""
    try:
        keys = [image.key for image in _store(ctx).images()]
    except (SandboxError, OSError):
        keys = []
    return complete_profiles(ctx, param, incomplete) + [CompletionItem(key) for key in keys
                                                         if key.startswith(incomplete)]


def _store(ctx: click.Context) -> Store:
    from sandboxmgr.locations import default_store
    from sandboxmgr.store import Store

    return Store(_root_params(ctx).get("store_path") or default_store())
