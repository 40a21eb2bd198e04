"""A sandbox's configuration: one record from the profile to the kernel.

Every runtime setting of a sandbox - hostname, env, mounts, network, user,
workdir, limits, security options, isolation - is one field of
:class:`SandboxConfig`, declared with its own rule: its default, how the
command line's value goes on top of a saved one (:meth:`SandboxConfig.merged`,
as docker's flags override an image's config), and its JSON form in a named
sandbox's ``sandbox.json`` and in the run cache. Merging, saving and loading
are loops over those rules, so a new option is one field here, its use in
enter, and one click option.

A profile gives a whole config; the command line gives one made by
:func:`options`, which records which fields it sets (``given``): only those
replace the saved ones. A named sandbox saves everything but the invocation's
own fields (the command and its tty).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from sandboxmgr.errors import SandboxError, shown
from sandboxmgr.mounts import BindMount, refuse_kernel_target
from sandboxmgr.names import HOSTNAME_RE
from sandboxmgr.record import record
from sandboxmgr.users import check_user

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from sandboxmgr.limits import Limits

    _T = TypeVar("_T")

NO_ENV: Mapping[str, str] = MappingProxyType({})  # an immutable default


def _replaced(_saved: Any, given: Any) -> Any:
    return given


def _identity(value: Any) -> Any:
    return value


class Rule:
    """How one field merges and is saved: ``merge(saved, given)``; ``dump`` and ``load``
    convert to and from JSON under ``key`` (default: the field's name); ``saved=False``: the
    invocation's alone, never saved."""

    def __init__(self, default: Any, merge: Callable[[Any, Any], Any] = _replaced,
                 dump: Callable[[Any], Any] = _identity, load: Callable[[Any], Any] = _identity,
                 key: str = "", saved: bool = True) -> None:
        self.default = default
        self.merge = merge
        self.dump = dump
        self.load = load
        self.key = key
        self.saved = saved


def _rule(default: _T, *args: Any, **kwargs: Any) -> _T:
    """A field's rule, standing in for its default until :func:`_ruled` collects it
    (typed as the default, as ``dataclasses.field`` is)."""
    return Rule(default, *args, **kwargs)  # type: ignore[return-value]


RULES: dict[str, Rule] = {}  # field name -> its rule, in the fields' order


def _ruled(cls: type[_T]) -> type[_T]:
    """Collect the fields' rules into RULES and leave their defaults in their place (for record)."""
    for name in cls.__dict__.get("__annotations__", {}):  # noqa: RUF063 - inspect costs the fast path
        rule = cls.__dict__.get(name)
        if isinstance(rule, Rule):
            rule.key = rule.key or name
            RULES[name] = rule
            setattr(cls, name, rule.default)
    return cls


# --- the rules of the fields that are not plain values ------------------------------------------


def _updated(saved: Mapping[str, str], given: Mapping[str, str]) -> Mapping[str, str]:
    return {**saved, **given}


def _added(saved: tuple[BindMount, ...], given: tuple[BindMount, ...]) -> tuple[BindMount, ...]:
    return saved + given


def _dump_binds(binds: tuple[BindMount, ...]) -> list[dict[str, Any]]:
    return [{"source": str(b.source), "target": b.target, "readonly": b.readonly,
             "copy_on_write": b.copy_on_write} for b in binds]


def _load_binds(data: list[dict[str, Any]]) -> tuple[BindMount, ...]:
    return tuple(BindMount(Path(m["source"]), m["target"], bool(m["readonly"]), bool(m.get("copy_on_write", False)))
                 for m in data)


def _dump_caches(caches: tuple[BindMount, ...]) -> list[dict[str, Any]]:
    return [{"source": str(b.source), "target": b.target} for b in caches]


def _load_caches(data: list[dict[str, Any]]) -> tuple[BindMount, ...]:
    return tuple(BindMount(Path(m["source"]), m["target"]) for m in data)


def _merged_limits(saved: Limits | None, override: Limits) -> Limits:
    """The saved limits with the command line's on top (each one replaces its own kind)."""
    return override if saved is None else saved.merged(override)


def _dump_limits(limits: Limits | None) -> dict[str, Any]:
    return limits.to_json() if limits is not None else {}


def _load_limits(data: dict[str, Any] | None) -> Limits | None:
    if not data:
        return None
    from sandboxmgr.limits import Limits  # only a sandbox with limits pays for the import

    return Limits.from_json(data)


def _kept(saved: Any, _given: Any) -> Any:
    return saved


# --- the type -------------------------------------------------------------------------------------


@record
@_ruled
class SandboxConfig:
    """What a sandbox runs with: from its profile, saved with a named sandbox, overridden
    by the command line. Each field's rule says how (see the module's docstring)."""

    hostname: str = _rule("sandbox")
    env: Mapping[str, str] = _rule(NO_ENV, _updated, dict, dict)
    workdir: str | None = _rule(None)
    user: str | None = _rule(None)
    network: str = _rule("host")  # "host" or "none" (loopback only)
    binds: tuple[BindMount, ...] = _rule((), _added, _dump_binds, _load_binds, key="mounts")
    # The image's shared package caches (apt's archives, dnf's cache), mounted like binds.
    caches: tuple[BindMount, ...] = _rule((), _kept, _dump_caches, _load_caches)
    # None: no limits (and no cgroup, no import of cgroups.py); --memory etc. replace their own kind.
    limits: Limits | None = _rule(None, _merged_limits, _dump_limits, _load_limits)
    no_new_privs: bool = _rule(True)  # PR_SET_NO_NEW_PRIVS; --security-opt no-new-privileges=false
    seccomp: str = _rule("default")  # "default", "unconfined" or the absolute path of a JSON profile
    isolation: str = _rule("pivot_root")  # how the root is switched: "pivot_root" or "chroot"
    userns: str = _rule("host")  # "host", or "auto": root's sandbox in a user namespace (idmap.py)
    argv: tuple[str, ...] = _rule((), saved=False)  # the command; empty: the image's shell
    tty: bool = _rule(False, saved=False)
    # The fields the command line set (see options()); not a setting itself.
    given: frozenset[str] = frozenset()

    def merged(self, options: SandboxConfig) -> SandboxConfig:
        """This config with what ``options`` gives on top."""
        values = {name: getattr(self, name) for name in RULES}
        for name in options.given:
            values[name] = RULES[name].merge(values[name], getattr(options, name))
        if not HOSTNAME_RE.match(values["hostname"]):
            raise SandboxError(f"{values['hostname']!r} is not a valid host name",
                               hint="use letters, digits and '-', up to 63 characters")
        return SandboxConfig(**values)

    def to_json(self) -> dict[str, Any]:
        return {rule.key: rule.dump(getattr(self, name)) for name, rule in RULES.items() if rule.saved}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxConfig:
        """A saved config; a field it lacks (saved before the field existed) takes its default."""
        return cls(**{name: rule.load(data[rule.key]) for name, rule in RULES.items()
                      if rule.saved and rule.key in data})


def _is_given(value: object) -> bool:
    # An empty -w, -u or --hostname is no value, as an empty list of -e or -v is none.
    if value is None or value in ("", (), {}):
        return False
    return not getattr(value, "empty", False)  # Limits() with nothing set


def options(**values: Any) -> SandboxConfig:
    """The config the command line gives: the values that are None or empty are not given
    and leave the saved ones in place."""
    given = {name: value for name, value in values.items() if _is_given(value)}
    if given.get("argv", ("-",))[0] == "":
        raise SandboxError("the command to run is an empty string ('')",
                           hint="give a command, or none at all for the image's shell")
    unknown = set(given) - set(RULES)
    if unknown:
        raise TypeError(f"options() got unknown settings {sorted(unknown)}")
    return SandboxConfig(**given, given=frozenset(given))


def parse_env(items: tuple[str, ...]) -> dict[str, str]:
    """``-e K=V`` and ``-e K`` (the host's value, skipped when unset), as docker does."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise SandboxError(f"-e {item!r} has no variable name", hint="write -e NAME=value")
        if sep:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    return env


# --- the command line ------------------------------------------------------------------------------


_SECURITY_OPTS_HINT = ("sandboxmgr supports --security-opt no-new-privileges[=true|false] and "
                       "seccomp=default|unconfined|/path/profile.json")


def security_opts(given: tuple[str, ...]) -> tuple[bool | None, str | None]:
    """``--security-opt no-new-privileges[=true|false]`` and ``seccomp=default|unconfined|FILE``
    (also docker's older ``:`` form): (no_new_privs, seccomp), None where not given."""
    no_new_privs = seccomp = None
    for option in given:
        name, _, value = option.replace(":", "=", 1).partition("=")
        if name == "no-new-privileges" and value.lower() in ("", "true", "false"):
            no_new_privs = value.lower() != "false"
        elif name == "seccomp" and value:
            seccomp = value if value in ("default", "unconfined") else _seccomp_file(option, value)
        else:
            raise SandboxError(f"--security-opt {shown(option)}: not supported", hint=_SECURITY_OPTS_HINT)
    return no_new_privs, seccomp


def _seccomp_file(option: str, value: str) -> str:
    """A profile file, checked now (a named sandbox keeps its absolute path)."""
    from sandboxmgr.seccomp import load_profile

    path = os.path.abspath(os.path.expanduser(value))
    if not os.path.isfile(path):
        raise SandboxError(f"--security-opt {option}: no such file",
                           hint="give a Docker-format JSON seccomp profile, or seccomp=unconfined")
    load_profile(path)  # a malformed profile is reported here, before anything starts
    return path


def _binds(volumes: tuple[str, ...]) -> tuple[BindMount, ...]:
    binds = []
    for volume in volumes:
        try:
            binds.append(BindMount.parse(volume))
        except ValueError as exc:
            raise SandboxError(f"-v {exc}", hint="write -v /host/path:/path/inside[:ro]") from None
        refuse_kernel_target(binds[-1].target)  # now, not after a build (enter checks again)
        if not binds[-1].source.exists():
            raise SandboxError(f"-v {shown(volume)}: the source {shown(binds[-1].source)} does not exist",
                               hint="create it first, or fix the -v SRC:DST path")
    return tuple(binds)


def shell_tty(tty: bool, command: tuple[str, ...]) -> bool:
    """Whether a run gets a pty: with -t, and also with no command at all (the image's shell)
    while stdin is a terminal - as ``shell`` does; a shell without one has no job control."""
    return tty or (command in ((), ("--",)) and sys.stdin.isatty())


def parse_options(command: tuple[str, ...], tty: bool, *, env: tuple[str, ...] = (), workdir: str | None = None,
                  user: str | None = None, memory: str | None = None, pids_limit: str | None = None,
                  cpus: str | None = None, security_opt: tuple[str, ...] = (), hostname: str | None = None,
                  network: str | None = None, volumes: tuple[str, ...] = (),
                  isolation: str | None = None, userns: str | None = None) -> SandboxConfig:
    """The config ``run``, ``create``, ``exec`` and ``shell`` give, from their options as
    docker spells them; checked now, before anything is built or entered."""
    from sandboxmgr.limits import Limits

    if command[:1] == ("--",):
        command = command[1:]
    if workdir is not None and not workdir.startswith("/"):
        raise SandboxError(f"-w {shown(workdir)}: the working directory must be an absolute path",
                           hint="write -w /path/inside")
    if tty and not sys.stdin.isatty():
        raise SandboxError("-t needs a terminal on stdin, and stdin is not one",
                           hint="drop -t when piping input or running from a script")
    limits = Limits.parse(memory, pids_limit, cpus)
    no_new_privs, seccomp = security_opts(security_opt)
    binds = _binds(volumes)
    # What can be checked on the host is checked now, not after a build (enter checks again).
    check_user(user)
    if hostname is not None and not HOSTNAME_RE.match(hostname):
        raise SandboxError(f"--hostname {shown(hostname)}: not a valid host name",
                           hint="use letters, digits and '-', up to 63 characters")
    return options(argv=command, tty=tty, env=parse_env(env), workdir=workdir, hostname=hostname,
                   user=user, network=network, binds=binds, isolation=isolation, userns=userns, limits=limits,
                   no_new_privs=no_new_privs, seccomp=seccomp)
