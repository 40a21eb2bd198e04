"""Project files are code the host runs: which keys make them so, and which files the user trusts.

``matrix`` reads the project's ``sandboxmgr.yaml``, whose ``inline:`` profiles
(and the profile files they or its ``profiles:`` name by path) can set keys that
make the *host* read, run or trust something the project chose. A project
cloned from elsewhere must not do that just because someone ran ``matrix`` in
it. So those keys are refused in every file that is not a profile of the
profile directories (shipped, system, user, ``--configs``), unless the user
trusts the file: ``matrix --trust`` for one run, or ``sandboxmgr trust`` which
records the sha256 of the file's bytes in ``STORE/trusted.json`` (as direnv's
allow list does). Any edit to the file changes its digest and so revokes the
trust.

The keys, and why each needs trust:

* ``mounts`` - a host path the project chose is shown in every sandbox of the
  profile, writable as root unless read-only (``source: /`` is the host's root).
* ``bootstrap.extra_args`` - arguments to the bootstrap tool, which runs as
  root on the host (mmdebstrap's ``--customize-hook`` runs a shell command
  there; dnf's ``--setopt`` can load plugins and repositories from anywhere).
* ``bootstrap.keyring`` - the key the bootstrap checks the archive against:
  with the project's key, the project's packages are installed, and their
  maintainer scripts run as root during the build; it is also a host file read.
* ``bootstrap.mirror`` with ``file://`` - a host directory the project chose is
  read as the archive by the host's tools.
* ``repositories[].baseurl``/``metalink``/``mirrorlist`` with ``file://`` -
  the same for dnf; the directory is also shown to the build steps.
* ``repositories[].gpgkey`` - the key the host's dnf trusts for the
  repository: the project's packages then run their scriptlets as root in the
  bootstrap (a ``file://`` key is also a host file read).
* ``repositories[].gpgcheck: false`` - the host's dnf installs unsigned
  packages, whatever the network or the mirror serves.
* ``lock`` naming a file outside the project (a symlink out of it included) - a
  host file the host reads as root for the project, its first keys quoted in errors.
* ``seccomp`` other than ``default`` - the system call filter: ``unconfined``
  gives the project's command user namespaces and root's user keyring, a path
  names a host file the host reads as the filter.

Everything else runs inside sandboxes and needs no trust: ``prepare`` steps and
``command`` (the project's own reason to exist), ``setup``, ``packages`` (from
the signed archive), ``env``, ``limits``. An http(s) ``mirror`` or ``baseurl``
needs none either: what it serves is checked against the distribution's key,
and the request itself reaches nothing that the project's ``command`` (with the
host's network, the default) could not reach anyway.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxmgr.errors import SandboxError
from sandboxmgr.identity import file_digest
from sandboxmgr.profile import Profile, ProfileRegistry
from sandboxmgr.schema import Raw, read
from sandboxmgr.store import Store, now_iso

TRUST_FORMAT = 1


class UntrustedError(SandboxError):
    """A project file sets a key that needs trust, and the user has not given it."""


@dataclass(frozen=True)
class Finding:
    """A key in a file that makes the host read, run or trust what the file chose."""

    path: Path
    line: int
    key: str  # dotted, as profile errors name keys
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.key}: {self.why}"


def scan(raw: Raw) -> list[Finding]:
    """The keys of one profile (a file, or a profile inline in a project file) that need trust."""
    found: list[Finding] = []

    def add(keys: tuple[str, ...], why: str) -> None:
        found.append(Finding(raw.path, raw.line(keys), ".".join((*raw.prefix, *keys)), why))

    data = raw.data
    mounts = data.get("mounts")
    if isinstance(mounts, list):
        for index, mount in enumerate(mounts):
            source = mount.get("source") if isinstance(mount, dict) else None
            add(("mounts", str(index), "source"),
                f"a host mount: sandboxes of this profile see the host's {source or 'path'}")
    boot = data.get("bootstrap")
    if isinstance(boot, dict):
        if boot.get("extra_args"):
            add(("bootstrap", "extra_args"), "arguments to the bootstrap tool, which runs as root on this host")
        if boot.get("keyring") is not None:
            add(("bootstrap", "keyring"), "a signing key the host's bootstrap trusts (and a host file it reads)")
        if _local(boot.get("mirror")):
            add(("bootstrap", "mirror"), "a host directory the bootstrap tool reads as the archive")
    repositories = data.get("repositories")
    if isinstance(repositories, list):
        for index, repo in enumerate(repositories):
            if not isinstance(repo, dict):
                continue
            keys = ("repositories", str(index))
            for key in ("baseurl", "metalink", "mirrorlist"):
                if _local(repo.get(key)):
                    add((*keys, key), "a host directory the host's dnf reads as a repository")
            if repo.get("gpgkey"):
                add((*keys, "gpgkey"), "a signing key the host's dnf trusts for the packages it installs")
            if repo.get("gpgcheck") is False:
                add((*keys, "gpgcheck"), "the host's dnf would install unsigned packages")
    seccomp = data.get("seccomp")
    if seccomp is not None and seccomp != "default":
        add(("seccomp",), "the system call filter of every sandbox of this profile: `unconfined` opens user "
                          "namespaces and root's keyrings, a path is a host file read")
    return found


def outside_lock(raw: Raw, root: Path | None) -> list[Finding]:
    """``lock:`` naming a file outside ``root`` (the project's directory; else the profile file's own)."""
    value = raw.data.get("lock")
    if not isinstance(value, str):
        return []
    path = Path(value).expanduser()
    top = os.path.realpath(root if root is not None else raw.path.parent)
    if os.path.commonpath([os.path.realpath(raw.path.parent / path), top]) == top:
        return []
    return [Finding(raw.path, raw.line(("lock",)), ".".join((*raw.prefix, "lock")),
                    "a host file outside the project, which the host reads as the lock file")]


def key_files(raw: Raw) -> list[Path]:
    """The key files a profile names (``bootstrap.keyring``, ``file://`` gpgkeys): trusting the
    profile's file means trusting their bytes too, as they are when it is trusted."""
    found: list[Path] = []
    boot = raw.data.get("bootstrap")
    keyring = boot.get("keyring") if isinstance(boot, dict) else None
    if isinstance(keyring, str):
        path = Path(keyring).expanduser()
        found.append(path if path.is_absolute() else raw.path.parent / path)
    repositories = raw.data.get("repositories")
    for repo in repositories if isinstance(repositories, list) else []:
        urls = repo.get("gpgkey") if isinstance(repo, dict) else None
        for url in urls if isinstance(urls, list) else [urls]:
            if isinstance(url, str) and url.startswith("file://"):
                found.append(Path(url[len("file://"):]))
    return found


def _local(value: Any) -> bool:
    urls = value if isinstance(value, list) else [value]
    return any(isinstance(url, str) and url.startswith("file:") for url in urls)


# --- which files a matrix run reads --------------------------------------------------------------


def _in_profile_dirs(path: Path, dirs: Iterable[Path]) -> bool:
    parent = path.resolve().parent
    return any(parent == Path(directory).resolve() for directory in dirs)


def project_files(project_path: Path | None, inline: dict[str, Profile], others: Iterable[Profile],
                  dirs: Iterable[Path]) -> list[Path]:
    """The files of a matrix run that need trust to set the keys above: the project file,
    and every file of the profiles' chains that is not in a profile directory."""
    dirs = list(dirs)
    files: list[Path] = [project_path] if project_path is not None else []
    for profile in [*inline.values(), *others]:
        for source in profile.sources:
            if source == project_path or _in_profile_dirs(source, dirs):
                continue
            if source not in files:
                files.append(source)
    return files


def findings(project_raw: Raw | None, inline: dict[str, Profile], others: Iterable[Profile],
             registry: ProfileRegistry) -> tuple[list[Finding], dict[Path, str]]:
    """Every key needing trust in the files of a matrix run, and the sha256 of each file.

    The files are scanned as they were parsed to make the profiles (the project's ``raw``,
    the registry's ``reads``), not read again: what is checked is what runs."""
    result: list[Finding] = []
    digests: dict[Path, str] = {}
    project_path = project_raw.path if project_raw is not None else None
    for path in project_files(project_path, inline, others, registry.dirs):
        raw = project_raw if project_raw is not None and path == project_path else registry.reads.get(path)
        if raw is None:  # pragma: no cover - every file of a chain was read by the registry
            raw = read(path)
        parts = [raw]
        if path == project_path:
            bodies = raw.data.get("inline")
            parts = [raw.part(("inline", name), bodies[name]) for name in inline
                     if isinstance(bodies, dict) and isinstance(bodies.get(name), dict)]
        for part in parts:
            result += scan(part) + outside_lock(part, project_path.parent if project_path is not None else None)
            for key_file in key_files(part):
                try:
                    digests[key_file] = file_digest(key_file)  # bounded: a FIFO or /dev/zero is not read
                except OSError:
                    continue  # preflight says it is missing
                result.append(Finding(key_file, 1, key_file.name,
                                      f"a signing key {path.name} names: trust covers its bytes as they are now"))
        digests[path] = raw.sha256
    return result, digests


# --- the trust list ---------------------------------------------------------------------------------


def trusted(store: Store) -> dict[str, str]:
    """path -> sha256 of the files the user trusts."""
    try:
        data = json.loads(store.trust_file.read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    return {str(path): str(entry.get("sha256")) for path, entry in files.items() if isinstance(entry, dict)}


def trusted_as_is(store: Store, path: Path) -> bool:
    """Whether the file at ``path`` is trusted with the bytes it has now."""
    try:
        digest = file_digest(path)
    except OSError:
        return False
    return trusted(store).get(str(path)) == digest


def record(store: Store, digests: dict[Path, str], revoke: bool = False) -> None:
    """Trust (or no longer trust) these files as they are now."""
    store.ensure()
    try:
        data = json.loads(store.trust_file.read_text())
    except (OSError, ValueError):
        data = {}
    files = data.get("files") if isinstance(data, dict) else None
    files = files if isinstance(files, dict) else {}
    for path, sha256 in digests.items():
        if revoke:
            files.pop(str(path), None)
        else:
            files[str(path)] = {"sha256": sha256, "trusted_at": now_iso()}
    tmp = store.trust_file.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": TRUST_FORMAT, "files": files}, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o600)
    os.rename(tmp, store.trust_file)


def check(store: Store, found: list[Finding], digests: dict[Path, str], project_dir: Path,
          covered: set[Path] | None = None) -> None:
    """Refuse, in one line, the first key of a file the user does not trust. ``covered``: the
    files 'sandboxmgr trust PROJECT_DIR' records (None: all of them)."""
    known = trusted(store)
    untrusted = [f for f in found if known.get(str(f.path)) != digests.get(f.path)]
    if not untrusted:
        return
    first = untrusted[0]
    more = f" (and {len(untrusted) - 1} more)" if len(untrusted) > 1 else ""
    if covered is None or first.path in covered:
        hint = (f"read it; if you trust it: sandboxmgr matrix --trust (this run), "
                f"or sandboxmgr trust {project_dir} (until the file changes)")
    else:
        hint = ("read it; if you trust it: sandboxmgr matrix --trust (this run; 'sandboxmgr trust' records "
                "the project file and the files it names, not one named with -p)")
    raise UntrustedError(f"{first}; this file is not trusted{more}", hint=hint)
