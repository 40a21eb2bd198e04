"""Profiles: YAML recipes for an image, validated into frozen dataclasses.

A profile file is read with a safe YAML loader only. Every problem in a file is
collected and reported at once, each naming ``file:line``, the key, and a "did
you mean" when a known key or value is close.

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
import difflib
import hashlib
import json
import locale
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sandboxmgr import distros
from sandboxmgr.errors import ProfileError
from sandboxmgr.limits import Limits, parse_cpus, parse_memory, parse_pids
from sandboxmgr.names import BUILD_FORMAT, HOSTNAME_RE, NAME_RE, NAME_RULE, check_name

__all__ = ["HOSTNAME_RE", "NAME_RE", "NAME_RULE", "Profile", "ProfileRegistry", "check_name"]

# Patterns end in \Z and are used with fullmatch: "$" would let a trailing newline through.
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

METHODS = ("debootstrap", "mmdebstrap", "dnf")
DEBOOTSTRAP_VARIANTS = ("minbase", "buildd", "fakechroot", "default")
MMDEBSTRAP_VARIANTS = (
    "extract", "custom", "essential", "apt", "required", "minbase",
    "buildd", "important", "debootstrap", "standard", "default",
)
NETWORKS = ("host", "none")
REPO_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*\Z")
# Fields that become part of a path or a file name (STORE/cache/DISTRO-RELEASE-ARCH):
# Debian's and Ubuntu's code names and numbers, Fedora's 40 and rawhide, CentOS's stream9.
RELEASE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~_-]{0,63}\Z")
RELEASE_RULE = "letters, digits, '.', '+', '~', '_' and '-', starting with a letter or digit"
ARCH_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")
# A component is a word, or words joined by '/' (updates/main): no '..', no leading '/'.
COMPONENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]*(/[A-Za-z0-9][A-Za-z0-9.+_-]*)*\Z")
# A plain URL: http(s) with a host name or address, or file:// with an absolute path; no
# spaces, quotes, backslashes, '#' or control characters (a mirror ends up in a sources.list
# line, a baseurl in a .repo file: either would let such a URL add lines or options).
URL_RE = re.compile(r"(https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:[0-9]{1,5})?"
                    r"([/?][A-Za-z0-9._~%!$&()*+,;=:@/?-]*)?"
                    r"|file:///[A-Za-z0-9._~%!$&()*+,;=:@/?-]*)\Z")



def close_matches(word: str, candidates: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = close_matches(word, candidates)
    return f"; did you mean {close[0]!r}?" if close else ""


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
    # The files this profile was read from: its own, then its parents'.
    sources: tuple[Path, ...] = ()

    def input_files(self) -> list[Path]:
        """Every file whose change can change this profile: its YAML chain and its keys."""
        files = list(self.sources)
        if self.bootstrap.keyring:
            files.append(Path(self.bootstrap.keyring))
        for repo in self.repositories:
            files += [Path(url[len("file://"):]) for url in repo.gpgkey if url.startswith("file://")]
        return files

    @property
    def family(self) -> str:
        return "rpm" if self.bootstrap.method == "dnf" else "debian"

    @property
    def release_package(self) -> str | None:
        distro = distros.get(self.distro, self.bootstrap.method)
        return distro.release_package if distro is not None else None

    def build_inputs(self) -> dict[str, Any]:
        """Everything that decides the image's content, and nothing else."""
        keyring = Path(self.bootstrap.keyring)
        try:
            keyring_digest = hashlib.sha256(keyring.read_bytes()).hexdigest()
        except OSError:
            keyring_digest = "missing:" + str(keyring)
        return {
            "format": BUILD_FORMAT,
            "distro": self.distro,
            "release": self.release,
            "arch": self.arch,
            "bootstrap": {
                "method": self.bootstrap.method,
                "variant": self.bootstrap.variant,
                "mirror": self.bootstrap.mirror,
                "components": list(self.bootstrap.components),
                "keyring_sha256": keyring_digest,
                "include": list(self.bootstrap.include),
                "exclude": list(self.bootstrap.exclude),
                "extra_args": list(self.bootstrap.extra_args),
            },
            "packages": list(self.packages),
            "setup": list(self.setup),
            # Setup steps run with the profile's environment, so it is one of their inputs.
            **({"setup_env": dict(sorted(self.env.items()))} if self.setup else {}),
            **({"rpm": {
                "rpmdb": self.bootstrap.rpmdb,
                "docs": self.bootstrap.docs,
                "repositories": [_repository_input(r) for r in self.repositories],
            }} if self.family == "rpm" else {}),
        }

    def layers(self) -> list[LayerPlan]:
        """The image as a stack of layers, bottom first. Each key hashes the layer's
        inputs and its parent's key, so profiles that share a base share its layers."""
        inputs = self.build_inputs()
        base: dict[str, Any] = {key: inputs[key] for key in ("format", "distro", "release", "arch", "bootstrap", "rpm")
                if key in inputs}
        # A custom RPM distro with neither a release package nor bootstrap.include
        # bootstraps its packages themselves (builders/rpm.py): they are then an
        # input of the bootstrap layer, and there is no packages layer.
        packages_in_bootstrap = (self.family == "rpm" and not self.release_package
                                 and not self.bootstrap.include)
        if packages_in_bootstrap:
            base["packages"] = list(self.packages)
        plan = [LayerPlan("bootstrap", _digest({"layer": "bootstrap", **base}),
                          f"bootstrap {self.distro} {self.release} ({self.bootstrap.method})")]
        if self.packages and not packages_in_bootstrap:
            plan.append(LayerPlan("packages", _digest({"parent": plan[-1].key, "packages": list(self.packages)}),
                                  f"packages: {' '.join(self.packages)}"))
        for number, step in enumerate(self.setup, 1):
            key = _digest({"parent": plan[-1].key, "setup": step, "env": inputs.get("setup_env", {})})
            first_line = step.strip().splitlines()[0] if step.strip() else ""
            plan.append(LayerPlan("setup", key, f"setup {number}: {first_line[:60]}", step))
        return plan

    def image_key(self) -> str:
        """The key of this profile's image: its name and its top layer (images are per profile,
        like tags; layers are shared)."""
        return _digest({"profile": self.name, "top": self.layers()[-1].key})


@dataclass(frozen=True)
class LayerPlan:
    kind: str  # "bootstrap", "packages" or "setup"
    key: str
    label: str
    step: str = ""  # the shell step of a setup layer


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


def _repository_input(repo: Repository) -> dict[str, Any]:
    keys = []
    for url in repo.gpgkey:
        if url.startswith("file://"):
            try:
                keys.append("sha256:" + hashlib.sha256(Path(url[len("file://"):]).read_bytes()).hexdigest())
            except OSError:
                keys.append("missing:" + url)
        else:
            keys.append(url)
    return {"name": repo.name, "baseurl": list(repo.baseurl), "metalink": repo.metalink,
            "mirrorlist": repo.mirrorlist, "gpgkey": keys, "gpgcheck": repo.gpgcheck}


# --- reading YAML with line numbers -------------------------------------------------

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class _Raw:
    """One file's parsed mapping, with the line of every key path."""

    path: Path
    data: dict[str, Any]
    lines: dict[tuple[str, ...], int]
    errors: list[str]
    # The collections being converted (an alias may point back at one) and a count
    # of nodes (aliases can make a small file expand without end: "billion laughs").
    open_nodes: set[int] = field(default_factory=set)
    nodes: int = 0
    # Where ``data`` sits in the file: () for a profile file, ("inline", NAME) for a
    # profile written inside a project file (keys and lines are the file's).
    prefix: tuple[str, ...] = ()
    # The sha256 of the bytes parsed: what trust.py records and checks.
    sha256: str = ""

    def line(self, keys: tuple[str, ...]) -> int:
        keys = (*self.prefix, *keys)
        while keys and keys not in self.lines:
            keys = keys[:-1]
        return self.lines.get(keys, 1)

    def error(self, keys: tuple[str, ...], message: str) -> None:
        full = (*self.prefix, *keys)
        where = ".".join(full) if full else "(top level)"
        self.errors.append(f"{self.path}:{self.line(keys)}: {where}: {message}")

    def part(self, keys: tuple[str, ...], data: dict[str, Any]) -> _Raw:
        """A view of one mapping inside this file, reporting into the same error list."""
        return _Raw(path=self.path, data=data, lines=self.lines, errors=self.errors,
                    prefix=(*self.prefix, *keys))


_MAX_NODES = 100_000


def _to_python(loader: yaml.SafeLoader, node: yaml.Node, keys: tuple[str, ...], raw: _Raw) -> Any:
    raw.nodes += 1
    if raw.nodes > _MAX_NODES:
        raise ProfileError(f"{raw.path}: more than {_MAX_NODES} YAML nodes (aliases expanding without end?)",
                           hint="a profile is a few dozen lines; write it without & and * aliases")
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        if id(node) in raw.open_nodes:
            raw.lines.setdefault(keys, node.start_mark.line + 1)
            raw.error(keys, "a YAML alias refers to a collection that contains it")
            return None
        raw.open_nodes.add(id(node))
        try:
            return _collection(loader, node, keys, raw)
        finally:
            raw.open_nodes.discard(id(node))
    return loader.construct_object(node)


def _collection(loader: yaml.SafeLoader, node: yaml.Node, keys: tuple[str, ...], raw: _Raw) -> Any:
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node)
            if not isinstance(key, str):
                raw.lines[keys] = key_node.start_mark.line + 1
                raw.error(keys, f"keys must be strings, not {key!r}")
                continue
            path = (*keys, key)
            raw.lines[path] = key_node.start_mark.line + 1
            if key in result:
                raw.error(path, "appears twice; keep one")
            result[key] = _to_python(loader, value_node, path, raw)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            path = (*keys, str(index))
            raw.lines[path] = item.start_mark.line + 1
            items.append(_to_python(loader, item, path, raw))
        return items
    return None


def _read(path: Path) -> _Raw:
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from None
    # As read_text() would (the locale's encoding, universal newlines), from the bytes hashed.
    encoding = locale.getpreferredencoding(False)
    try:
        text = content.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        raise ProfileError(f"{path}:{line}: not {encoding} text ({exc.reason})",
                           hint="save the file as UTF-8") from None
    raw = _Raw(path=path, data={}, lines={}, errors=[], sha256=hashlib.sha256(content).hexdigest())
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = {} if node is None else _to_python(loader, node, (), raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError(
            f"{path}:{line}: not valid YAML: {problem}",
            hint="check the indentation and quoting around that line",
        ) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ProfileError(f"{path}:1: a profile is a YAML mapping of keys to values")
    raw.data = data
    return raw


# --- validating one file ---------------------------------------------------------------

TOP_KEYS = (
    "description", "distro", "release", "arch", "aliases", "extends", "bootstrap",
    "packages", "setup", "env", "hostname", "workdir", "user", "mounts", "network", "repositories",
    "limits", "no_new_privs", "seccomp",
)
LIMIT_KEYS = ("memory", "pids", "cpus")
BOOTSTRAP_KEYS = (
    "method", "variant", "mirror", "components", "keyring", "include", "exclude", "extra_args",
    "rpmdb", "docs",
)
REPOSITORY_KEYS = ("name", "baseurl", "metalink", "mirrorlist", "gpgkey", "gpgcheck")
MOUNT_KEYS = ("source", "target", "readonly")


def _check_keys(raw: _Raw, data: dict[str, Any], keys: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            raw.error((*keys, key), f"unknown key{_did_you_mean(key, allowed)}")


def _scalar(raw: _Raw, data: dict[str, Any], keys: tuple[str, ...], numbers: bool = False) -> str | None:
    value = data.get(keys[-1])
    if value is None:
        return None
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raw.error(keys, f"must be a string, not {_type_name(value)}")
        return None
    return value


def _string_list(raw: _Raw, data: dict[str, Any], keys: tuple[str, ...]) -> list[str] | None:
    value = data.get(keys[-1])
    if value is None:
        return None
    if isinstance(value, str):
        raw.error(keys, "must be a list of strings; write it as a YAML list (- item)")
        return None
    if not isinstance(value, list):
        raw.error(keys, f"must be a list of strings, not {_type_name(value)}")
        return None
    items = []
    for index, value_item in enumerate(value):
        item = value_item
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str):
            raw.error((*keys, str(index)), f"must be a string, not {_type_name(item)}")
            continue
        items.append(item)
    return items


def _choice(raw: _Raw, keys: tuple[str, ...], value: str | None, choices: Iterable[str]) -> None:
    choices = list(choices)
    if value is not None and value not in choices:
        raw.error(keys, f"{value!r} is not one of {', '.join(choices)}{_did_you_mean(value, choices)}")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", bool: "a boolean", int: "a number",
            float: "a number", str: "a string"}.get(type(value), type(value).__name__)


def _validate(raw: _Raw) -> dict[str, Any]:
    """Check one file's types and values; return the cleaned fields it sets."""
    data = raw.data
    out: dict[str, Any] = {}
    _check_keys(raw, data, (), TOP_KEYS)
    for key in ("description", "hostname", "workdir", "extends"):
        value = _scalar(raw, data, (key,))
        if value is not None:
            out[key] = value
    for key in ("release", "user"):
        value = _scalar(raw, data, (key,), numbers=True)
        if value is not None:
            out[key] = value
    distro = _scalar(raw, data, ("distro",))
    boot = data.get("bootstrap")
    own_method = boot.get("method") if isinstance(boot, dict) else None
    if distro is not None:
        if distro not in distros.DISTROS and own_method != "dnf":
            known = distros.known_distros()
            raw.error(("distro",), f"{distro!r} is not one of {', '.join(known)}{_did_you_mean(distro, known)}"
                      " (a custom RPM distro needs bootstrap.method: dnf)")
        elif not NAME_RE.fullmatch(distro) or len(distro) > 64:
            # It forms a directory name (cache/DISTRO-RELEASE-ARCH): 255 bytes at most for the three.
            raw.error(("distro",), f"{distro[:80]!r} is not a valid name: {NAME_RULE}, 64 at most")
        out["distro"] = distro
    if out.get("release") is not None and not RELEASE_RE.fullmatch(out["release"]):
        raw.error(("release",), f"{out['release']!r} is not a valid release: {RELEASE_RULE}")
    arch = _scalar(raw, data, ("arch",))
    if arch is not None:
        if not ARCH_RE.fullmatch(arch):
            raw.error(("arch",), f"{arch!r} is not a valid architecture (like amd64, arm64, x86_64)")
        out["arch"] = arch
    network = _scalar(raw, data, ("network",))
    if network is not None:
        _choice(raw, ("network",), network, NETWORKS)
        out["network"] = network
    if out.get("hostname") is not None and not HOSTNAME_RE.fullmatch(out["hostname"]):
        raw.error(("hostname",), f"{out['hostname']!r} is not a valid host name")
    if out.get("workdir") is not None and not out["workdir"].startswith("/"):
        raw.error(("workdir",), "must be an absolute path inside the sandbox, like /src")
    for key in ("aliases", "packages", "setup"):
        items = _string_list(raw, data, (key,))
        if items is not None:
            out[key] = items
    _no_options(raw, ("packages",), out.get("packages", []))
    for index, alias in enumerate(out.get("aliases", [])):
        if not NAME_RE.fullmatch(alias):
            raw.error(("aliases", str(index)), f"{alias!r} is not a valid name: {NAME_RULE}")
    if "env" in data:
        out["env"] = _validate_env(raw, data["env"])
    if "mounts" in data:
        out["mounts"] = _validate_mounts(raw, data["mounts"])
    if "bootstrap" in data:
        out["bootstrap"] = _validate_bootstrap(raw, data["bootstrap"])
    if "repositories" in data:
        out["repositories"] = _validate_repositories(raw, data["repositories"])
    if "limits" in data:
        out["limits"] = _validate_limits(raw, data["limits"])
    if "no_new_privs" in data:
        if isinstance(data["no_new_privs"], bool):
            out["no_new_privs"] = data["no_new_privs"]
        else:
            raw.error(("no_new_privs",), f"must be true or false, not {_type_name(data['no_new_privs'])}")
    if "seccomp" in data:
        seccomp = data["seccomp"]
        if isinstance(seccomp, str) and (seccomp in ("default", "unconfined") or seccomp.startswith("/")):
            out["seccomp"] = seccomp
        else:
            raw.error(("seccomp",), "must be default, unconfined or the absolute path of a JSON profile, "
                                    f"not {seccomp!r}")
    return out


def _validate_limits(raw: _Raw, value: Any) -> dict[str, Any]:
    """``limits: {memory: 512M, pids: 256, cpus: 1.5}``; runtime settings, not build inputs."""
    if not isinstance(value, dict):
        raw.error(("limits",), f"must be a mapping like {{memory: 512M, pids: 256, cpus: 1.5}}, "
                               f"not {_type_name(value)}")
        return {}
    _check_keys(raw, value, ("limits",), LIMIT_KEYS)
    out: dict[str, Any] = {}
    for key, parse in (("memory", parse_memory), ("pids", parse_pids), ("cpus", parse_cpus)):
        if key in value:
            try:
                out[key] = parse(value[key])
            except ValueError as exc:
                raw.error(("limits", key), str(exc))
    return out


def _url_list(raw: _Raw, item: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    value = item.get(keys[-1])
    urls = [value] if isinstance(value, str) else _string_list(raw, item, keys) or []
    good = []
    for url in urls:
        problem = url_problem(url)
        if problem:
            raw.error(keys, problem)
        else:
            good.append(url)
    return good


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a plain http://, https:// or file:///PATH URL, or None."""
    if URL_RE.fullmatch(url):
        return None
    if not re.match(r"(https?|file)://", url):
        return f"{url!r} is not an http://, https:// or file:// URL"
    return (f"{url!r} is not a plain URL: spaces, quotes, backslashes, '#', control characters "
            "and user names are not allowed (a file:// URL needs an absolute path: file:///...)")


def _no_options(raw: _Raw, keys: tuple[str, ...], items: list[str]) -> None:
    """Package names reach apt, dnf and the bootstrap tools as arguments: none may pass for an option."""
    for index, item in enumerate(items):
        if item.startswith("-") or not item.strip() or any(ord(char) < 32 for char in item):
            raw.error((*keys, str(index)), f"{item!r} is not a package name (it would reach the package "
                                           "manager as an option or a broken argument)")


def _validate_repositories(raw: _Raw, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raw.error(("repositories",), f"must be a list of repositories, not {_type_name(value)}")
        return []
    repos = []
    for index, item in enumerate(value):
        keys = ("repositories", str(index))
        if not isinstance(item, dict):
            raw.error(keys, f"must be a mapping with name and baseurl (or metalink), not {_type_name(item)}")
            continue
        _check_keys(raw, item, keys, REPOSITORY_KEYS)
        name = _scalar(raw, item, (*keys, "name"))
        if name is None:
            raw.error(keys, "needs a name")
            continue
        if not REPO_NAME_RE.fullmatch(name):
            raw.error((*keys, "name"), f"{name!r} is not a valid repository id")
        repo: dict[str, Any] = {"name": name}
        for key in ("baseurl", "gpgkey"):
            if key in item:
                repo[key] = _url_list(raw, item, (*keys, key))
        for key in ("metalink", "mirrorlist"):
            if key in item:
                urls = _url_list(raw, item, (*keys, key))
                if len(urls) == 1:
                    repo[key] = urls[0]
        sources = [key for key in ("baseurl", "metalink", "mirrorlist") if key in item]
        if len(sources) != 1:
            raw.error(keys, "needs exactly one of baseurl, metalink, mirrorlist")
        gpgcheck = item.get("gpgcheck", True)
        if not isinstance(gpgcheck, bool):
            raw.error((*keys, "gpgcheck"), f"must be true or false, not {_type_name(gpgcheck)}")
            gpgcheck = True
        repo["gpgcheck"] = gpgcheck
        if gpgcheck and not item.get("gpgkey"):
            raw.error(keys, "gpgcheck is on (the default) but no gpgkey is given; "
                            "add gpgkey: file:///... or https://...")
        repos.append(repo)
    return repos


def _validate_env(raw: _Raw, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raw.error(("env",), f"must be a mapping of NAME: value, not {_type_name(value)}")
        return {}
    env = {}
    for key, item in value.items():
        if not ENV_KEY_RE.fullmatch(key):
            raw.error(("env", key), "is not a valid environment variable name")
        elif isinstance(item, (str, int, float)) and not isinstance(item, bool):
            env[key] = str(item)
        else:
            raw.error(("env", key), f"must be a string or number, not {_type_name(item)}")
    return env


def _validate_mounts(raw: _Raw, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raw.error(("mounts",), f"must be a list of {{source, target, readonly}}, not {_type_name(value)}")
        return []
    mounts = []
    for index, item in enumerate(value):
        keys = ("mounts", str(index))
        if not isinstance(item, dict):
            raw.error(keys, f"must be a mapping with source and target, not {_type_name(item)}")
            continue
        _check_keys(raw, item, keys, MOUNT_KEYS)
        source = _scalar(raw, item, (*keys, "source"))
        target = _scalar(raw, item, (*keys, "target"))
        readonly = item.get("readonly", False)
        if not isinstance(readonly, bool):
            raw.error((*keys, "readonly"), f"must be true or false, not {_type_name(readonly)}")
            readonly = False
        if source is None or target is None:
            raw.error(keys, "needs both source and target")
            continue
        if not target.startswith("/"):
            raw.error((*keys, "target"), "must be an absolute path inside the sandbox")
            continue
        source_path = Path(source).expanduser()
        if not source_path.is_absolute():
            source_path = raw.path.parent / source_path
        mounts.append({"source": str(source_path), "target": target, "readonly": readonly})
    return mounts


def _validate_bootstrap(raw: _Raw, value: Any) -> dict[str, Any]:
    keys = ("bootstrap",)
    if not isinstance(value, dict):
        raw.error(keys, f"must be a mapping (method, mirror, ...), not {_type_name(value)}")
        return {}
    _check_keys(raw, value, keys, BOOTSTRAP_KEYS)
    out: dict[str, Any] = {}
    method = _scalar(raw, value, (*keys, "method"))
    if method is not None:
        _choice(raw, (*keys, "method"), method, METHODS)
        out["method"] = method
    variant = _scalar(raw, value, (*keys, "variant"))
    if variant is not None:
        allowed: tuple[str, ...] = DEBOOTSTRAP_VARIANTS if method == "debootstrap" else MMDEBSTRAP_VARIANTS
        if method is None:
            allowed = tuple(dict.fromkeys(DEBOOTSTRAP_VARIANTS + MMDEBSTRAP_VARIANTS))
        _choice(raw, (*keys, "variant"), variant, allowed)
        out["variant"] = variant
    mirror = _scalar(raw, value, (*keys, "mirror"))
    if mirror is not None:
        problem = url_problem(mirror)
        if problem:
            raw.error((*keys, "mirror"), problem)
        out["mirror"] = mirror
    rpmdb = _scalar(raw, value, (*keys, "rpmdb"))
    if rpmdb is not None:
        if rpmdb not in ("/var/lib/rpm", "/usr/lib/sysimage/rpm"):
            raw.error((*keys, "rpmdb"), f"{rpmdb!r} is not /var/lib/rpm or /usr/lib/sysimage/rpm")
        out["rpmdb"] = rpmdb
    if "docs" in value:
        if isinstance(value["docs"], bool):
            out["docs"] = value["docs"]
        else:
            raw.error((*keys, "docs"), f"must be true or false, not {_type_name(value['docs'])}")
    keyring = _scalar(raw, value, (*keys, "keyring"))
    if keyring is not None:
        keyring_path = Path(keyring).expanduser()
        if not keyring_path.is_absolute():
            keyring_path = raw.path.parent / keyring_path
        out["keyring"] = str(keyring_path)
    for key in ("components", "include", "exclude", "extra_args"):
        items = _string_list(raw, value, (*keys, key))
        if items is not None:
            out[key] = items
    for index, component in enumerate(out.get("components", [])):
        if not COMPONENT_RE.fullmatch(component):
            raw.error((*keys, "components", str(index)), f"{component!r} is not a valid archive component "
                                                         "(like main, contrib, non-free-firmware)")
    for key in ("include", "exclude"):
        _no_options(raw, (*keys, key), out.get(key, []))
    return out


# --- merging and building ----------------------------------------------------------------


def _union(first: list[Any], second: list[Any]) -> list[Any]:
    result = list(first)
    for item in second:
        if item not in result:
            result.append(item)
    return result


def merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Merge two validated field sets by the rules in this module's docstring."""
    result = {key: value for key, value in parent.items() if key != "aliases"}
    for key, value in child.items():
        old = result.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            result[key] = merge(old, value)
        elif isinstance(value, list) and isinstance(old, list) and key != "aliases":
            result[key] = _union(old, value)
        else:
            result[key] = value
    return result


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
    method = boot.get("method") or _default_method(distro)
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
    if distro.family == "rpm":
        _check_rpm_fields(path, boot, repositories)
        variant = ""
    else:
        if repositories:
            raise ProfileError(f"{path}: repositories are for the dnf method",
                               hint="Debian-family profiles name their archive with bootstrap.mirror")
        variant = boot.get("variant", "minbase")
        allowed = DEBOOTSTRAP_VARIANTS if method == "debootstrap" else MMDEBSTRAP_VARIANTS
        if variant not in allowed:
            raise ProfileError(
                f"{path}: bootstrap.variant {variant!r} is not a {method} variant",
                hint=f"use one of: {', '.join(allowed)}",
            )
    arch = fields.get("arch") or distros.host_arch(distro.family)
    bootstrap = Bootstrap(
        method=method,
        variant=variant,
        mirror=boot.get("mirror") or distro.mirror_for(arch),
        components=tuple(boot.get("components") or distro.default_components),
        keyring=boot.get("keyring") or distro.keyring_path(),
        include=tuple(boot.get("include", ())),
        exclude=tuple(boot.get("exclude", ())),
        extra_args=tuple(boot.get("extra_args", ())),
        rpmdb=boot.get("rpmdb", "/var/lib/rpm"),
        docs=boot.get("docs", False),
    )
    return Profile(
        name=name,
        path=path,
        description=fields.get("description", ""),
        distro=distro.name,
        release=fields["release"],
        arch=arch,
        bootstrap=bootstrap,
        aliases=tuple(fields.get("aliases", ())),
        extends=parents,
        packages=tuple(fields.get("packages", ())),
        setup=tuple(fields.get("setup", ())),
        env=dict(fields.get("env", {})),
        hostname=fields.get("hostname"),
        workdir=fields.get("workdir"),
        user=fields.get("user"),
        mounts=tuple(Mount(**m) for m in fields.get("mounts", ())),
        network=fields.get("network", "host"),
        repositories=repositories,
        limits=Limits.from_json(fields.get("limits")),
        no_new_privs=fields.get("no_new_privs", True),
        seccomp=fields.get("seccomp", "default"),
    )


def _default_method(distro: distros.Distro) -> str:
    """The fastest builder this host has: mmdebstrap over debootstrap when installed."""
    if "mmdebstrap" in distro.methods and shutil.which("mmdebstrap"):
        return "mmdebstrap"
    return distro.methods[0]


def _check_rpm_fields(path: Path, boot: dict[str, Any], repositories: tuple[Repository, ...]) -> None:
    debian_only = [key for key in ("variant", "mirror", "components", "keyring", "exclude") if key in boot]
    if debian_only:
        raise ProfileError(
            f"{path}: bootstrap.{debian_only[0]} is a debootstrap/mmdebstrap setting, not a dnf one",
            hint="dnf profiles list their repositories under 'repositories:'",
        )
    if not repositories:
        raise ProfileError(f"{path}: a dnf profile needs at least one repository",
                           hint="add 'repositories: [{name: ..., baseurl: ..., gpgkey: ...}]'")


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
        self.reads: dict[Path, _Raw] = {}
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
                    raw = _read(path)
                except ProfileError:
                    continue
                for alias in _string_list(raw, raw.data, ("aliases",)) or []:
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

    def load_inline(self, name: str, raw: _Raw) -> Profile:
        """A profile written inside another file (a project file's ``inline:``), validated
        like a profile file; its errors name that file's lines."""
        check_name(name, "inline profile name")
        fields = _validate(raw)
        if raw.errors:
            raise ProfileError(f"{len(raw.errors)} problem(s) in {raw.path}:\n  " + "\n  ".join(raw.errors),
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
        raw = _read(path)
        earlier = self.reads.setdefault(path, raw)
        if earlier.sha256 != raw.sha256:  # read twice in one command, and different
            raise ProfileError(f"{path} changed while it was being read", hint="run the command again")
        fields = _validate(raw)
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
