"""A project: its sandboxmgr.yaml (profiles, command, env, prepare steps, inline profiles) and
the matrix entries it makes - each a profile plus the project's prepare steps for it,
as setup layers on top of the profile's image (so a second run reuses them).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandboxmgr.errors import ProfileError, SandboxError
from sandboxmgr.identity import image_key
from sandboxmgr.names import NAME_RE, overlay_unsafe
from sandboxmgr.profile import Profile, ProfileRegistry
from sandboxmgr.schema import Raw, check_keys, did_you_mean, read, scalar, string_list, type_name, validate_env
from sandboxmgr.store import Store

PROJECT_FILE = "sandboxmgr.yaml"
PROJECT_KEYS = ("profiles", "command", "workdir", "env", "prepare", "inline")
SOURCE_DIR = "/src"


@dataclass(frozen=True)
class Project:
    path: Path | None  # the project file, if there is one
    root: Path  # the project directory, shown at workdir
    profiles: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    workdir: str = SOURCE_DIR
    env: dict[str, str] = field(default_factory=dict)
    # profile name, distro or family -> shell steps run once in the image (cached as layers)
    prepare: dict[str, tuple[str, ...]] = field(default_factory=dict)
    inline: dict[str, Profile] = field(default_factory=dict)
    # The project file as it was parsed: what trust.py checks is what runs.
    raw: Raw | None = field(default=None, compare=False, repr=False)

    @property
    def slug(self) -> str:
        """The project's name as it appears in image and sandbox names."""
        slug = re.sub(r"[^a-z0-9.-]+", "-", self.root.name.lower()).strip("-.")
        return slug or "project"


def load_project(root: Path, registry: ProfileRegistry) -> Project:
    """The project file in ``root`` (sandboxmgr.yaml), validated like a profile:
    every problem named with its line, all at once."""
    if overlay_unsafe(root):
        # The project is shown through overlayfs, whose options cannot carry these.
        raise SandboxError(f"the project directory {root} contains ',', ':' or '\\'",
                           hint="move or link the project to a path without them")
    path = root / PROJECT_FILE
    if not path.is_file():
        return Project(path=None, root=root)
    top = os.path.realpath(root)
    if registry.confine is not None and os.path.commonpath([os.path.realpath(path), top]) != top:
        # A link to a host file (a checkout's sandboxmgr.yaml -> /root/x.yaml): its keys were printed.
        raise ProfileError(f"{path}: a link out of the project; the project file is not trusted to name a host file",
                           hint="make it a file of the project, or trust it: sandboxmgr trust DIR (matrix --trust)")
    raw = read(path)
    data = raw.data
    check_keys(raw, data, (), PROJECT_KEYS)
    profiles = string_list(raw, data, ("profiles",)) or []
    command = _command(raw, data)
    workdir = scalar(raw, data, ("workdir",)) or SOURCE_DIR
    if not workdir.startswith("/"):
        raw.error(("workdir",), "must be an absolute path inside the sandbox, like /src")
    env = _env(raw, data.get("env"))
    prepare: dict[str, tuple[str, ...]] = {}
    if "prepare" in data:
        value = data["prepare"]
        if not isinstance(value, dict):
            raw.error(("prepare",), f"must map a profile name, distro or family to steps, not {type_name(value)}")
        else:
            for key in value:
                steps = string_list(raw, value, ("prepare", key))
                if steps is not None:
                    prepare[key] = tuple(steps)
    inline_raws: dict[str, Raw] = {}
    if "inline" in data:
        value = data["inline"]
        if not isinstance(value, dict):
            raw.error(("inline",), f"must map names to profiles, not {type_name(value)}")
        else:
            for name, body in value.items():
                if not NAME_RE.fullmatch(name):
                    raw.error(("inline", name), f"{name!r} is not a valid profile name")
                elif not isinstance(body, dict):
                    raw.error(("inline", name), f"must be a profile (a mapping), not {type_name(body)}")
                else:
                    inline_raws[name] = raw.part(("inline", name), body)
    if raw.errors:
        raise _problems(raw)
    inline = {name: registry.load_inline(name, part) for name, part in inline_raws.items()}
    return Project(path=path, root=root, profiles=tuple(profiles), command=command, workdir=workdir,
                   env=env, prepare=prepare, inline=inline, raw=raw)


def _problems(raw: Raw) -> ProfileError:
    count = len(raw.errors)
    return ProfileError(f"{count} problem{'s' if count > 1 else ''} in {raw.path}:\n  " + "\n  ".join(raw.errors),
                        hint="fix the keys named above; the README describes sandboxmgr.yaml")


def _command(raw: Raw, data: dict[str, Any]) -> tuple[str, ...]:
    value = data.get("command")
    if value is None:
        return ()
    if isinstance(value, str):
        return ("/bin/sh", "-c", value)
    items = string_list(raw, data, ("command",))
    return tuple(items or ())


def _env(raw: Raw, value: Any) -> dict[str, str]:
    return {} if value is None else validate_env(raw, value)


# --- entries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    name: str  # as the user wrote it (or the profile a glob matched)
    profile: Profile  # the profile plus the project's prepare steps, named after the project


def expand(patterns: Sequence[str], project: Project, registry: ProfileRegistry) -> list[str]:
    """Profile names from names, aliases, paths and globs (``ubuntu-*``), in order, once each."""
    names: list[str] = []
    for pattern in patterns:
        if pattern in project.inline:
            matched = [pattern]
        elif any(char in pattern for char in "*?["):
            candidates = sorted(set(registry.files()) | set(project.inline))
            matched = [name for name in candidates if fnmatch.fnmatchcase(name, pattern)]
            if not matched:
                raise ProfileError(f"no profile matches {pattern!r}", hint="see 'sandboxmgr profiles'")
        else:
            matched = [pattern]
        for name in matched:
            if name not in names:
                names.append(name)
    return names


def entries(names: Sequence[str], project: Project, registry: ProfileRegistry) -> list[Entry]:
    bases = [project.inline[name] if name in project.inline else registry.load(name) for name in names]
    _check_prepare_keys(project, registry, bases)
    result = []
    for name, base in zip(names, bases, strict=True):
        steps = _prepare_steps(project, base)
        label = Path(name).stem if name.endswith((".yaml", ".yml")) else name
        # Images are per profile name: the project's own name keeps its images apart.
        origins = dict(base.setup_origins)
        if project.path is not None:
            origins.update({len(base.setup) + n: project.path for n in range(len(steps))})
        profile = dataclasses.replace(base, name=f"{project.slug}.{base.name}"[:128],
                                      setup=(*base.setup, *steps), setup_origins=origins, aliases=())
        result.append(Entry(label, profile))
    return result


def build_images(selected: Sequence[Entry], build: Callable[[Profile], object]) -> None:
    """Every image first, each once, even when two entries share one (``build`` is the
    caller's: the CLI's shows a progress line)."""
    built: set[str] = set()
    for entry in selected:
        key = image_key(entry.profile)
        if key not in built:
            build(entry.profile)
            built.add(key)


def prepare(store: Store, registry: ProfileRegistry, root: Path, patterns: tuple[str, ...],
            command: tuple[str, ...], trusted: bool) -> tuple[Project, list[Entry], tuple[str, ...]]:
    """The project in ``root``, the entries of ``patterns`` (else of its profiles) and the command
    (else its own), refused before anything is built if its files set keys that need trust
    and ``trusted`` (--trust) does not give it."""
    from sandboxmgr import trust

    if not trusted and not trust.trusted_as_is(store, root / PROJECT_FILE):
        # Until the trust check below: profile files it names are read only from the project
        # and the profile directories (nothing else of the host is opened for it).
        registry.confine = (root, *registry.dirs)
    project = load_project(root, registry)
    if patterns:
        registry.confine = None  # named on the command line: the user's own choice
    from_project_file = not patterns
    patterns = patterns or project.profiles
    if not patterns:
        raise SandboxError("no profiles to run", hint="give -p PROFILE, or list 'profiles:' in sandboxmgr.yaml")
    command = command or project.command
    if not command:
        raise SandboxError("no command to run", hint="give one after --, or set 'command:' in sandboxmgr.yaml")
    selected = entries(expand(patterns, project, registry), project, registry)
    # Before anything is built: keys that make the host run or trust what the project chose.
    if not trusted:
        inline = {e.name: e.profile for e in selected if e.name in project.inline}
        others = [e.profile for e in selected if e.name not in project.inline]
        found, digests = trust.findings(project.raw, inline, others, registry)
        # What 'sandboxmgr trust DIR' would record (a file named with -p it does not).
        covered = trust.project_files(project.path, project.inline, others if from_project_file else [],
                                      registry.dirs)
        trust.check(store, found, digests, project.root, set(covered))
    return project, selected, command


def _check_prepare_keys(project: Project, registry: ProfileRegistry, bases: Sequence[Profile]) -> None:
    """Every ``prepare:`` key names a profile, a distro or a family: a typo (``debain``) would
    otherwise leave its steps out without a word."""
    from sandboxmgr import distros

    shipped = distros.known_distros()  # loads the families, so DISTROS holds them all
    known = {*registry.files(), *project.inline, *shipped, *(distro.family for distro in distros.DISTROS.values()),
             *(name for base in bases for name in (base.name, base.distro, base.family))}
    for key in project.prepare:
        if key in known or key in registry.aliases() or key in _custom_distros(project, registry):
            continue
        where = f"{project.path}:{project.raw.line(('prepare', key))}" if project.raw else str(project.path)
        raise ProfileError(f"{where}: prepare.{key}: names no profile, distro or family{did_you_mean(key, known)}",
                           hint="a prepare key is a profile name (debian-bookworm), a distro (ubuntu) "
                                "or a family (debian, rpm)")


def _custom_distros(project: Project, registry: ProfileRegistry) -> set[str]:
    """The distros that profiles name (a custom RPM distro is known only so): every profile is
    read, so only when a key names nothing else."""
    profiles = [*project.inline.values(), *(item for _, item in registry.load_all() if isinstance(item, Profile))]
    return {profile.distro for profile in profiles}


def _prepare_steps(project: Project, profile: Profile) -> tuple[str, ...]:
    for key in (profile.name, profile.distro, profile.family):
        if key in project.prepare:
            return project.prepare[key]
    return ()
