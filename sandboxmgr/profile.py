"""Profiles: YAML recipes for an image, validated into frozen dataclasses.

A profile file is read with a safe YAML loader only (schema.py) and checked against
the table of its fields (profilefields.py). Every problem in a file is collected and
reported at once, each naming ``file:line``, the key, and a "did you mean" when a
known key or value is close. This module holds the data, ``extends`` and the registry;
what a distribution adds (defaults, its own checks) comes from its family (distros.py),
and the image a profile makes is identity.py's business.

``extends: NAME`` inherits another profile. The merge rules:

* scalars (``distro``, ``release``, ``hostname``, ``bootstrap.mirror`` ...):
  the child's value wins;
* maps (``bootstrap``, ``env``): merged key by key, the child's keys win;
* lists (``packages``, ``setup``, ``mounts``, ``bootstrap.include`` ...): the
  parent's items, then the child's, duplicates dropped;
* ``aliases`` are never inherited (an alias names exactly one profile).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandboxmgr import distros
from sandboxmgr.errors import ProfileError, counted
from sandboxmgr.limits import Limits
from sandboxmgr.names import NAME_RE, check_name
from sandboxmgr.profilefields import FIELDS, NOT_INHERITED, validate
from sandboxmgr.schema import Raw, close_matches, read, string_list


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    readonly: bool = False


@dataclass(frozen=True)
class Repository:
    """An RPM repository for the dnf builder (the fields of a .repo section)."""

    name: str
    baseurl: tuple[str, ...] = ()
    metalink: str | None = None
    mirrorlist: str | None = None
    gpgkey: tuple[str, ...] = ()
    gpgcheck: bool = True

    def local_paths(self) -> list[str]:
        """Host paths this repository reads (file:// URLs), to be shown to a build inside."""
        urls = [*self.baseurl, *self.gpgkey]
        return [url[len("file://"):] for url in urls if url.startswith("file:///")]


@dataclass(frozen=True)
class Bootstrap:
    method: str
    variant: str
    mirror: str
    components: tuple[str, ...]
    keyring: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    # dnf: where the target's rpm keeps its database, and whether docs are installed.
    rpmdb: str = "/var/lib/rpm"
    docs: bool = False


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    description: str
    distro: str
    release: str
    arch: str
    bootstrap: Bootstrap
    aliases: tuple[str, ...] = ()
    extends: tuple[str, ...] = ()  # the chain of parents, nearest first
    packages: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    # Packages installed last, by the family's builder, in a layer of their own over the setup
    # layers: what ``package build`` adds for an RPM source (its BuildRequires). No YAML sets it.
    build_packages: tuple[str, ...] = ()
    lock: str | None = None  # a lock file's path (lockfile.py): the build installs exactly its versions
    env: Mapping[str, str] = field(default_factory=dict)
    hostname: str | None = None
    workdir: str | None = None
    user: str | None = None
    mounts: tuple[Mount, ...] = ()
    network: str = "host"
    repositories: tuple[Repository, ...] = ()
    # Runtime settings, like env and mounts: not in build_inputs, so they never change the image.
    limits: Limits = field(default_factory=Limits)
    no_new_privs: bool = True
    seccomp: str = "default"  # default, unconfined, or the absolute path of a Docker-format JSON profile
    userns: str = "host"  # or "auto": root inside is an id of a range of its own outside (idmap.py)
    # The files this profile was read from: its own, then its parents'.
    sources: tuple[Path, ...] = ()
    # Where a setup step that is not the profile's own was written (a project's ``prepare:``),
    # by its index in ``setup``; a failing step's hint names that file.
    setup_origins: Mapping[int, Path] = field(default_factory=dict)

    def input_files(self) -> list[Path]:
        """Every file whose change can change this profile: its YAML chain and its keys."""
        files = list(self.sources)
        if self.bootstrap.keyring:
            files.append(Path(self.bootstrap.keyring))
        for repo in self.repositories:
            files += [Path(url[len("file://"):]) for url in repo.gpgkey if url.startswith("file://")]
        if self.lock:
            files.append(Path(self.lock))  # its content is part of the image key
        return files

    @property
    def family(self) -> str:
        """The distribution family ("debian", "rpm", ...), as its family module says."""
        return distros.of(self).family

    @property
    def release_package(self) -> str | None:
        return distros.of(self).release_package


# --- merging and building ----------------------------------------------------------------


def _union(first: list[Any], second: list[Any]) -> list[Any]:
    result = list(first)
    for item in second:
        if item not in result:
            result.append(item)
    return result


def merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Merge two validated field sets by the rules in this module's docstring."""
    result = {key: value for key, value in parent.items() if key not in NOT_INHERITED}
    for key, value in child.items():
        old = result.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            result[key] = merge(old, value)
        elif isinstance(value, list) and isinstance(old, list) and key not in NOT_INHERITED:
            result[key] = _union(old, value)
        else:
            result[key] = value
    return result


# Profile fields made from the fields of the same name by _build itself; the others are
# copied, lists as tuples, with these conversions.
_BUILT = ("distro", "release", "arch", "bootstrap", "repositories", "extends")
_CONVERT: dict[str, Any] = {
    "mounts": lambda value: tuple(Mount(**m) for m in value),
    "limits": Limits.from_json,
    "env": dict,
}


def _build(name: str, path: Path, fields: dict[str, Any], parents: tuple[str, ...]) -> Profile:
    missing = [key for key in ("distro", "release") if not fields.get(key)]
    if missing:
        raise ProfileError(
            f"{path}: profile {name!r} does not set {' and '.join(missing)}",
            hint="add e.g. 'distro: debian' and 'release: bookworm', or 'extends: debian-bookworm'",
        )
    boot = fields.get("bootstrap", {})
    distro = distros.get(fields["distro"], boot.get("method"))
    if distro is None:
        raise ProfileError(f"{path}: {fields['distro']!r} is not a known distro",
                           hint="a custom RPM distro needs 'bootstrap: {method: dnf}'")
    method = boot.get("method") or distro.default_method()
    if method not in distro.methods:
        raise ProfileError(
            f"{path}: bootstrap.method {method!r} cannot build {distro.name}",
            hint=f"use one of: {', '.join(distro.methods)}",
        )
    repositories = tuple(
        Repository(name=r["name"], baseurl=tuple(r.get("baseurl", ())), metalink=r.get("metalink"),
                   mirrorlist=r.get("mirrorlist"), gpgkey=tuple(r.get("gpgkey", ())), gpgcheck=r["gpgcheck"])
        for r in fields.get("repositories", ())
    )
    variant = distro.check(path, method, boot, repositories)  # the family's own refusals
    arch = distro.arch_name(fields["arch"]) if fields.get("arch") else distro.host_arch()
    bootstrap = Bootstrap(
        method=method,
        variant=variant,
        mirror=distro.mirror_for(arch, boot.get("mirror")),
        components=tuple(boot.get("components") or distro.default_components),
        keyring=boot.get("keyring") or distro.keyring_path(),
        include=tuple(boot.get("include", ())),
        exclude=tuple(boot.get("exclude", ())),
        extra_args=tuple(boot.get("extra_args", ())),
        rpmdb=boot.get("rpmdb", "/var/lib/rpm"),
        docs=boot.get("docs", False),
    )
    copied: dict[str, Any] = {"description": ""}
    for item in FIELDS:
        if item.name in fields and item.name not in _BUILT:
            value = fields[item.name]
            convert = _CONVERT.get(item.name, tuple if isinstance(value, list) else None)
            copied[item.name] = convert(value) if convert is not None else value
    return Profile(name=name, path=path, distro=distro.name, release=fields["release"], arch=arch,
                   bootstrap=bootstrap, extends=parents, repositories=repositories, **copied)


# --- finding profiles ----------------------------------------------------------------------


def is_path_ref(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml"))


class ProfileRegistry:
    """Profiles found in a list of directories; a later directory wins a name clash."""

    def __init__(self, dirs: Iterable[Path]) -> None:
        self.dirs = list(dirs)
        self._files: dict[str, Path] | None = None
        self._aliases: dict[str, str] | None = None
        # Every file a profile was loaded from, as it was parsed (trust.py checks these).
        self.reads: dict[Path, Raw] = {}
        # While an untrusted project file is read (matrix): the only directories a profile
        # file named by path may be in. Anything else is not even opened: its parse errors
        # would print what a root-only file holds.
        self.confine: tuple[Path, ...] | None = None

    def files(self) -> dict[str, Path]:
        if self._files is None:
            found: dict[str, Path] = {}
            for directory in self.dirs:
                if not directory.is_dir():
                    continue
                for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
                    if NAME_RE.fullmatch(path.stem):
                        found[path.stem] = path
            self._files = found
        return self._files

    def aliases(self) -> dict[str, str]:
        """alias -> profile name. Reads every profile, so only used when a name misses."""
        if self._aliases is None:
            table: dict[str, str] = {}
            for name, path in self.files().items():
                try:
                    raw = read(path)
                except ProfileError:
                    continue
                for alias in string_list(raw, raw.data, ("aliases",)) or []:
                    if alias not in self.files():
                        table.setdefault(alias, name)
            self._aliases = table
        return self._aliases

    def resolve(self, ref: str) -> Path:
        """A profile reference (name, alias or path to a .yaml file) -> its file."""
        if is_path_ref(ref):
            path = Path(ref).expanduser()
            if self.confine is not None and not any(
                    os.path.commonpath([os.path.realpath(path), os.path.realpath(top)]) == os.path.realpath(top)
                    for top in self.confine):
                raise ProfileError(f"{ref}: outside the project and the profile directories; the project file "
                                   "is not trusted to name it",
                                   hint="move it into the project, or trust the project file: sandboxmgr matrix "
                                        "--trust (this run), or sandboxmgr trust DIR")
            if not path.is_file():
                raise ProfileError(f"no profile file {ref}", hint="check the path")
            check_name(path.stem, "profile name (the file's name)")
            return path.resolve()
        check_name(ref, "profile name")
        files = self.files()
        if ref in files:
            return files[ref]
        aliases = self.aliases()
        if ref in aliases:
            return files[aliases[ref]]
        close = close_matches(ref, list(files) + list(aliases))
        hint = f"did you mean {', '.join(close)}?" if close else "see 'sandboxmgr profiles'"
        raise ProfileError(f"no profile named {ref!r}", hint=hint)

    def load(self, ref: str) -> Profile:
        path = self.resolve(ref)
        fields, parents = self._load_chain(path, [])
        profile = _build(path.stem, path, fields, tuple(p.stem for p in parents))
        return dataclasses.replace(profile, sources=(path, *parents))

    def load_inline(self, name: str, raw: Raw) -> Profile:
        """A profile written inside another file (a project file's ``inline:``), validated
        like a profile file; its errors name that file's lines."""
        check_name(name, "inline profile name")
        fields = validate(raw)
        if raw.errors:
            raise ProfileError(f"{counted(len(raw.errors), 'problem')} in {raw.path}:\n  " + "\n  ".join(raw.errors),
                               hint="fix the keys named above; the README lists every profile field")
        parent_ref = fields.pop("extends", None)
        parents: tuple[Path, ...] = ()
        if parent_ref is not None:
            if is_path_ref(parent_ref) and not Path(parent_ref).is_absolute():
                parent_ref = str(raw.path.parent / parent_ref)
            try:
                parent_path = self.resolve(parent_ref)
            except ProfileError as exc:
                raise ProfileError(f"{raw.path}:{raw.line(('extends',))}: {'.'.join(raw.prefix)}.extends: "
                                   f"{exc.message}", hint=exc.hint) from None
            parent_fields, grand = self._load_chain(parent_path, [])
            fields = merge(parent_fields, fields)
            parents = (parent_path, *grand)
        profile = _build(name, raw.path, fields, tuple(p.stem for p in parents))
        return dataclasses.replace(profile, sources=(raw.path, *parents))

    def _load_chain(self, path: Path, seen: list[Path]) -> tuple[dict[str, Any], tuple[Path, ...]]:
        if path in seen:
            chain = " -> ".join(p.stem for p in [*seen, path])
            raise ProfileError(f"{path}: extends forms a cycle: {chain}",
                               hint="remove one of the extends")
        raw = read(path)
        earlier = self.reads.setdefault(path, raw)
        if earlier.sha256 != raw.sha256:  # read twice in one command, and different
            raise ProfileError(f"{path} changed while it was being read", hint="run the command again")
        fields = validate(raw)
        if raw.errors:
            count = len(raw.errors)
            raise ProfileError(
                f"{count} problem{'s' if count > 1 else ''} in {path}:\n  " + "\n  ".join(raw.errors),
                hint="fix the keys named above; the README lists every profile field",
            )
        parent_ref = fields.pop("extends", None)
        if parent_ref is None:
            return fields, ()
        if is_path_ref(parent_ref) and not Path(parent_ref).is_absolute():
            parent_ref = str(path.parent / parent_ref)
        try:
            parent_path = self.resolve(parent_ref)
        except ProfileError as exc:
            raise ProfileError(f"{path}:{raw.line(('extends',))}: extends: {exc.message}",
                               hint=exc.hint) from None
        parent_fields, grand = self._load_chain(parent_path, [*seen, path])
        return merge(parent_fields, fields), (parent_path, *grand)

    def load_all(self) -> list[tuple[str, Profile | ProfileError]]:
        result: list[tuple[str, Profile | ProfileError]] = []
        for name in sorted(self.files()):
            try:
                result.append((name, self.load(name)))
            except ProfileError as exc:
                result.append((name, exc))
        return result
