"""The fields of a profile file, as one table: each key stated once.

:data:`FIELDS` lists every top-level key with its validator (what the file may
say; errors name ``file:line: key``), whether ``extends`` passes it on, and
whether it is a build input (decides the image: identity.py) or a runtime setting
(how a sandbox runs; never changes the image). :func:`validate` checks one file
against the table; profile.py merges the results along ``extends`` and builds the
:class:`~sandboxmgr.profile.Profile`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxmgr import distros
from sandboxmgr.limits import parse_cpus, parse_memory, parse_pids
from sandboxmgr.names import HOSTNAME_RE, NAME_RE, NAME_RULE
from sandboxmgr.schema import (
    Raw,
    boolean,
    check_keys,
    choice,
    did_you_mean,
    no_options,
    scalar,
    string_list,
    type_name,
    url_list,
    url_problem,
    validate_env,
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

LIMIT_KEYS = ("memory", "pids", "cpus")
BOOTSTRAP_KEYS = (
    "method", "variant", "mirror", "components", "keyring", "include", "exclude", "extra_args",
    "rpmdb", "docs",
)
REPOSITORY_KEYS = ("name", "baseurl", "metalink", "mirrorlist", "gpgkey", "gpgcheck")
MOUNT_KEYS = ("source", "target", "readonly")

Check = Callable[[Raw, dict[str, Any]], Any]


@dataclass(frozen=True)
class Field:
    """One top-level key of a profile file."""

    name: str
    check: Check  # the cleaned value of data[name], or None when it is absent (or wrong: an error)
    kind: str  # "build" (an input of the image), "runtime" (how a sandbox runs) or "meta"
    inherited: bool = True  # passed on by extends (merged: child scalars win, maps merged, lists joined)


def _text(key: str, numbers: bool = False, rule: Callable[[Raw, str], None] | None = None) -> Check:
    def check(raw: Raw, data: dict[str, Any]) -> str | None:
        value = scalar(raw, data, (key,), numbers=numbers)
        if value is not None and rule is not None:
            rule(raw, value)
        return value
    return check


def _items(key: str, rule: Callable[[Raw, list[str]], None] | None = None) -> Check:
    def check(raw: Raw, data: dict[str, Any]) -> list[str] | None:
        items = string_list(raw, data, (key,))
        if items is not None and rule is not None:
            rule(raw, items)
        return items
    return check


def _present(key: str, validate: Callable[[Raw, Any], Any]) -> Check:
    return lambda raw, data: validate(raw, data[key]) if key in data else None


def _hostname(raw: Raw, value: str) -> None:
    if not HOSTNAME_RE.fullmatch(value):
        raw.error(("hostname",), f"{value!r} is not a valid host name")


def _workdir(raw: Raw, value: str) -> None:
    if not value.startswith("/"):
        raw.error(("workdir",), "must be an absolute path inside the sandbox, like /src")


def _lock(raw: Raw, data: dict[str, Any]) -> str | None:
    """A lock file (lockfile.py), relative to the profile's own file; read when the image is built."""
    value = scalar(raw, data, ("lock",))
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else raw.path.parent / path)


def _release(raw: Raw, value: str) -> None:
    if not RELEASE_RE.fullmatch(value):
        raw.error(("release",), f"{value!r} is not a valid release: {RELEASE_RULE}")


def _arch(raw: Raw, value: str) -> None:
    if not ARCH_RE.fullmatch(value):
        raw.error(("arch",), f"{value!r} is not a valid architecture (like amd64, arm64, x86_64)")


def _network(raw: Raw, value: str) -> None:
    choice(raw, ("network",), value, NETWORKS)


def _userns(raw: Raw, value: str) -> None:
    choice(raw, ("userns",), value, ("host", "auto"))


def _aliases(raw: Raw, items: list[str]) -> None:
    for index, alias in enumerate(items):
        if not NAME_RE.fullmatch(alias):
            raw.error(("aliases", str(index)), f"{alias!r} is not a valid name: {NAME_RULE}")


def _distro(raw: Raw, data: dict[str, Any]) -> str | None:
    distro = scalar(raw, data, ("distro",))
    if distro is None:
        return None
    boot = data.get("bootstrap")
    own_method = boot.get("method") if isinstance(boot, dict) else None
    if distros.get(distro, own_method if isinstance(own_method, str) else None) is None:
        known = distros.known_distros()
        raw.error(("distro",), f"{distro!r} is not one of {', '.join(known)}{did_you_mean(distro, known)}"
                  " (a custom RPM distro needs bootstrap.method: dnf)")
    elif not NAME_RE.fullmatch(distro) or len(distro) > 64:
        # It forms a directory name (cache/DISTRO-RELEASE-ARCH): 255 bytes at most for the three.
        raw.error(("distro",), f"{distro[:80]!r} is not a valid name: {NAME_RULE}, 64 at most")
    return distro


def _seccomp(raw: Raw, seccomp: Any) -> str | None:
    if isinstance(seccomp, str) and (seccomp in ("default", "unconfined") or seccomp.startswith("/")):
        return seccomp
    raw.error(("seccomp",), "must be default, unconfined or the absolute path of a JSON profile, "
                            f"not {seccomp!r}")
    return None


def _validate_limits(raw: Raw, value: Any) -> dict[str, Any]:
    """``limits: {memory: 512M, pids: 256, cpus: 1.5}``; runtime settings, not build inputs."""
    if not isinstance(value, dict):
        raw.error(("limits",), f"must be a mapping like {{memory: 512M, pids: 256, cpus: 1.5}}, "
                               f"not {type_name(value)}")
        return {}
    check_keys(raw, value, ("limits",), LIMIT_KEYS)
    out: dict[str, Any] = {}
    for key, parse in (("memory", parse_memory), ("pids", parse_pids), ("cpus", parse_cpus)):
        if key in value:
            try:
                out[key] = parse(value[key])
            except ValueError as exc:
                raw.error(("limits", key), str(exc))
    return out


def _validate_repositories(raw: Raw, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raw.error(("repositories",), f"must be a list of repositories, not {type_name(value)}")
        return []
    repos = []
    for index, item in enumerate(value):
        keys = ("repositories", str(index))
        if not isinstance(item, dict):
            raw.error(keys, f"must be a mapping with name and baseurl (or metalink), not {type_name(item)}")
            continue
        check_keys(raw, item, keys, REPOSITORY_KEYS)
        name = scalar(raw, item, (*keys, "name"))
        if name is None:
            raw.error(keys, "needs a name")
            continue
        if not REPO_NAME_RE.fullmatch(name):
            raw.error((*keys, "name"), f"{name!r} is not a valid repository id")
        repo: dict[str, Any] = {"name": name}
        for key in ("baseurl", "gpgkey"):
            if key in item:
                repo[key] = url_list(raw, item, (*keys, key))
        for key in ("metalink", "mirrorlist"):
            if key in item:
                urls = url_list(raw, item, (*keys, key))
                if len(urls) == 1:
                    repo[key] = urls[0]
        sources = [key for key in ("baseurl", "metalink", "mirrorlist") if key in item]
        if len(sources) != 1:
            raw.error(keys, "needs exactly one of baseurl, metalink, mirrorlist")
        gpgcheck = boolean(raw, (*keys, "gpgcheck"), item.get("gpgcheck", True), True)
        repo["gpgcheck"] = gpgcheck
        if gpgcheck and not item.get("gpgkey"):
            raw.error(keys, "gpgcheck is on (the default) but no gpgkey is given; "
                            "add gpgkey: file:///... or https://...")
        repos.append(repo)
    return repos


def _validate_mounts(raw: Raw, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raw.error(("mounts",), f"must be a list of {{source, target, readonly}}, not {type_name(value)}")
        return []
    mounts = []
    for index, item in enumerate(value):
        keys = ("mounts", str(index))
        if not isinstance(item, dict):
            raw.error(keys, f"must be a mapping with source and target, not {type_name(item)}")
            continue
        check_keys(raw, item, keys, MOUNT_KEYS)
        source = scalar(raw, item, (*keys, "source"))
        target = scalar(raw, item, (*keys, "target"))
        readonly = boolean(raw, (*keys, "readonly"), item.get("readonly", False), False)
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


def _validate_bootstrap(raw: Raw, value: Any) -> dict[str, Any]:
    keys = ("bootstrap",)
    if not isinstance(value, dict):
        raw.error(keys, f"must be a mapping (method, mirror, ...), not {type_name(value)}")
        return {}
    check_keys(raw, value, keys, BOOTSTRAP_KEYS)
    out = _method_and_variant(raw, value)
    mirror = scalar(raw, value, (*keys, "mirror"))
    if mirror is not None:
        problem = url_problem(mirror)
        if problem:
            raw.error((*keys, "mirror"), problem)
        out["mirror"] = mirror
    rpmdb = scalar(raw, value, (*keys, "rpmdb"))
    if rpmdb is not None:
        if rpmdb not in ("/var/lib/rpm", "/usr/lib/sysimage/rpm"):
            raw.error((*keys, "rpmdb"), f"{rpmdb!r} is not /var/lib/rpm or /usr/lib/sysimage/rpm")
        out["rpmdb"] = rpmdb
    if "docs" in value:
        out["docs"] = boolean(raw, (*keys, "docs"), value["docs"], False)
    keyring = scalar(raw, value, (*keys, "keyring"))
    if keyring is not None:
        keyring_path = Path(keyring).expanduser()
        if not keyring_path.is_absolute():
            keyring_path = raw.path.parent / keyring_path
        out["keyring"] = str(keyring_path)
    for key in ("components", "include", "exclude", "extra_args"):
        items = string_list(raw, value, (*keys, key))
        if items is not None:
            out[key] = items
    for index, component in enumerate(out.get("components", [])):
        if not COMPONENT_RE.fullmatch(component):
            raw.error((*keys, "components", str(index)), f"{component!r} is not a valid archive component "
                                                         "(like main, contrib, non-free-firmware)")
    for key in ("include", "exclude"):
        no_options(raw, (*keys, key), out.get(key, []))
    return out


def _method_and_variant(raw: Raw, value: dict[str, Any]) -> dict[str, Any]:
    """The method among the registered families' methods, and a variant that method knows."""
    keys = ("bootstrap",)
    out: dict[str, Any] = {}
    method = scalar(raw, value, (*keys, "method"))
    if method is not None:
        choice(raw, (*keys, "method"), method, distros.methods())
        out["method"] = method
    variant = scalar(raw, value, (*keys, "variant"))
    if variant is not None:
        allowed = distros.variants(method)
        if allowed is not None:  # else the method's family refuses the key (distros.Distro.check)
            choice(raw, (*keys, "variant"), variant, allowed)
        out["variant"] = variant
    return out


FIELDS: tuple[Field, ...] = (
    # In the order the checks report problems.
    Field("description", _text("description"), "meta"),
    Field("hostname", _text("hostname", rule=_hostname), "runtime"),
    Field("workdir", _text("workdir", rule=_workdir), "runtime"),
    Field("extends", _text("extends"), "meta"),
    Field("release", _text("release", numbers=True, rule=_release), "build"),
    Field("user", _text("user", numbers=True), "runtime"),
    Field("distro", _distro, "build"),
    Field("arch", _text("arch", rule=_arch), "build"),
    Field("network", _text("network", rule=_network), "runtime"),
    Field("aliases", _items("aliases", _aliases), "meta", inherited=False),  # an alias names one profile
    Field("packages", _items("packages", lambda raw, items: no_options(raw, ("packages",), items)), "build"),
    Field("setup", _items("setup"), "build"),
    # A lock pins the package set of one profile's image: a child adds packages, so it is not inherited.
    Field("lock", _lock, "build", inherited=False),
    # Setup steps run with the profile's environment, so with setup it is a build input too.
    Field("env", _present("env", validate_env), "runtime"),
    Field("mounts", _present("mounts", _validate_mounts), "runtime"),
    Field("bootstrap", _present("bootstrap", _validate_bootstrap), "build"),
    Field("repositories", _present("repositories", _validate_repositories), "build"),
    Field("limits", _present("limits", _validate_limits), "runtime"),
    Field("no_new_privs", _present("no_new_privs", lambda raw, v: boolean(raw, ("no_new_privs",), v, True)),
          "runtime"),
    Field("seccomp", _present("seccomp", _seccomp), "runtime"),
    Field("userns", _text("userns", rule=_userns), "runtime"),
)
TOP_KEYS = tuple(field.name for field in FIELDS)
NOT_INHERITED = tuple(field.name for field in FIELDS if not field.inherited)


def validate(raw: Raw) -> dict[str, Any]:
    """Check one file's types and values; return the cleaned fields it sets."""
    check_keys(raw, raw.data, (), TOP_KEYS)
    out: dict[str, Any] = {}
    for field in FIELDS:
        value = field.check(raw, raw.data)
        if value is not None:
            out[field.name] = value
    return out
