"""The schema layer: YAML read with the line of every key, and the validators that
name ``file:line: key: problem`` with a "did you mean".

Shared by profile files (profilefields.py), project files (matrix.py) and the trust
check (trust.py). A file is read with a safe YAML loader only; every problem in it is
collected in :class:`Raw` and reported at once.
"""

from __future__ import annotations

import difflib
import hashlib
import locale
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sandboxmgr.errors import ProfileError
from sandboxmgr.linux import regular_bytes

# Patterns end in \Z and are used with fullmatch: "$" would let a trailing newline through.
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# A plain URL: http(s) with a host name or address, or file:// with an absolute path; no
# spaces, quotes, backslashes, '#' or control characters (a mirror ends up in a sources.list
# line, a baseurl in a .repo file: either would let such a URL add lines or options).
URL_RE = re.compile(r"(https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:[0-9]{1,5})?"
                    r"([/?][A-Za-z0-9._~%!$&()*+,;=:@/?-]*)?"
                    r"|file:///[A-Za-z0-9._~%!$&()*+,;=:@/?-]*)\Z")


def close_matches(word: str, candidates: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = close_matches(word, candidates)
    return f"; did you mean {close[0]!r}?" if close else ""


# --- reading YAML with line numbers -------------------------------------------------

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Raw:
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

    def part(self, keys: tuple[str, ...], data: dict[str, Any]) -> Raw:
        """A view of one mapping inside this file, reporting into the same error list."""
        return Raw(path=self.path, data=data, lines=self.lines, errors=self.errors,
                    prefix=(*self.prefix, *keys))


MAX_NODES = 100_000
MAX_PROFILE_BYTES = 4 << 20  # a project file with inline profiles included


def _to_python(loader: yaml.SafeLoader, node: yaml.Node, keys: tuple[str, ...], raw: Raw) -> Any:
    raw.nodes += 1
    if raw.nodes > MAX_NODES:
        raise ProfileError(f"{raw.path}: more than {MAX_NODES} YAML nodes (aliases expanding without end?)",
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


def _collection(loader: yaml.SafeLoader, node: yaml.Node, keys: tuple[str, ...], raw: Raw) -> Any:
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


def read(path: Path) -> Raw:
    try:
        # A profile may be a project's file, from a repository: a FIFO there must not hang the
        # command, nor /dev/zero fill its memory.
        _mode, loaded = regular_bytes(path, MAX_PROFILE_BYTES)
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from None
    if loaded is None:
        raise ProfileError(f"cannot read profile {path}: not a regular file",
                           hint="a profile is a YAML file (see configs/)")
    if len(loaded) > MAX_PROFILE_BYTES:
        raise ProfileError(f"cannot read profile {path}: larger than {MAX_PROFILE_BYTES >> 20} MiB",
                           hint="a profile is a few lines of YAML; a lock file (lock: FILE) holds the package list")
    content = loaded
    # As read_text() would (the locale's encoding, universal newlines), from the bytes hashed.
    encoding = locale.getpreferredencoding(False)
    try:
        text = content.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        raise ProfileError(f"{path}:{line}: not {encoding} text ({exc.reason})",
                           hint="save the file as UTF-8") from None
    raw = Raw(path=path, data={}, lines={}, errors=[], sha256=hashlib.sha256(content).hexdigest())
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


# --- validators ---------------------------------------------------------------------------


def check_keys(raw: Raw, data: dict[str, Any], keys: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            raw.error((*keys, key), f"unknown key{did_you_mean(key, allowed)}")


def scalar(raw: Raw, data: dict[str, Any], keys: tuple[str, ...], numbers: bool = False) -> str | None:
    value = data.get(keys[-1])
    if value is None:
        return None
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raw.error(keys, f"must be a string, not {type_name(value)}")
        return None
    return value


def string_list(raw: Raw, data: dict[str, Any], keys: tuple[str, ...]) -> list[str] | None:
    value = data.get(keys[-1])
    if value is None:
        return None
    if isinstance(value, str):
        raw.error(keys, "must be a list of strings; write it as a YAML list (- item)")
        return None
    if not isinstance(value, list):
        raw.error(keys, f"must be a list of strings, not {type_name(value)}")
        return None
    items = []
    for index, value_item in enumerate(value):
        item = value_item
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str):
            raw.error((*keys, str(index)), f"must be a string, not {type_name(item)}")
            continue
        items.append(item)
    return items


def choice(raw: Raw, keys: tuple[str, ...], value: str | None, choices: Iterable[str]) -> None:
    choices = list(choices)
    if value is not None and value not in choices:
        raw.error(keys, f"{value!r} is not one of {', '.join(choices)}{did_you_mean(value, choices)}")


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", bool: "a boolean", int: "a number",
            float: "a number", str: "a string"}.get(type(value), type(value).__name__)


def url_list(raw: Raw, item: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    value = item.get(keys[-1])
    urls = [value] if isinstance(value, str) else string_list(raw, item, keys) or []
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


def no_options(raw: Raw, keys: tuple[str, ...], items: list[str]) -> None:
    """Package names reach apt, dnf and the bootstrap tools as arguments: none may pass for an option."""
    for index, item in enumerate(items):
        if item.startswith("-") or not item.strip() or any(ord(char) < 32 for char in item):
            raw.error((*keys, str(index)), f"{item!r} is not a package name (it would reach the package "
                                           "manager as an option or a broken argument)")


def validate_env(raw: Raw, value: Any) -> dict[str, str]:
    """``env: {NAME: value}`` of a profile or a project file: names a shell accepts, values
    strings or numbers."""
    if not isinstance(value, dict):
        raw.error(("env",), f"must be a mapping of NAME: value, not {type_name(value)}")
        return {}
    env = {}
    for key, item in value.items():
        if not ENV_KEY_RE.fullmatch(key):
            raw.error(("env", key), "is not a valid environment variable name")
        elif isinstance(item, str) and "\0" in item:
            # execve(2) takes C strings: the value would be cut there (Python refuses it outright).
            raw.error(("env", key), "holds a NUL character (\\0), which no environment variable can hold")
        elif isinstance(item, (str, int, float)) and not isinstance(item, bool):
            env[key] = str(item)
        else:
            raw.error(("env", key), f"must be a string or number, not {type_name(item)}")
    return env


def boolean(raw: Raw, keys: tuple[str, ...], value: Any, default: bool) -> bool:
    """A true/false setting; ``default`` (and an error) when it is something else."""
    if isinstance(value, bool):
        return value
    raw.error(keys, f"must be true or false, not {type_name(value)}")
    return default
