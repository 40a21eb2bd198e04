"""Sandboxes: an overlay over an image, ephemeral (``run``) or named (``create``).

A named sandbox keeps its upper layer and a snapshot of its whole config
(config.py: hostname, env, mounts, network, user, workdir, limits, security
options, isolation) taken when it was created, as a Docker container keeps its
config: editing the profile later changes new sandboxes, not this one.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from sandboxmgr.config import SandboxConfig
from sandboxmgr.enter import DirectoryRoot, OverlayRoot, enter
from sandboxmgr.errors import SandboxError
from sandboxmgr.mounts import BindMount
from sandboxmgr.spec import CAPABILITY_NUMBERS, DEFAULT_PATH, DEFAULT_SECCOMP, EnterSpec
from sandboxmgr.store import ImageRecord, SandboxRecord, Store, now_iso

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from collections.abc import Iterator

    from sandboxmgr.locks import Lock
    from sandboxmgr.profile import Profile
    from sandboxmgr.seccomp import Policy


def _scratch(scratch: Path, name: str) -> Path:
    """``scratch/name`` with the upper and work dirs of a copy-on-write mount in it."""
    place = scratch / name
    for sub in ("upper", "work"):
        (place / sub).mkdir(parents=True, exist_ok=True)
    return place


def _volumes(binds: tuple[BindMount, ...], scratch: Path, volatile: bool) -> tuple[BindMount, ...]:
    """Give each copy-on-write mount its upper and work dirs under ``scratch``."""
    return tuple(bind.with_scratch(_scratch(scratch, f"volume-{index}"), volatile) if bind.copy_on_write else bind
                 for index, bind in enumerate(binds))


def cache_views(caches: tuple[BindMount, ...], scratch: Path, volatile: bool = False) -> tuple[BindMount, ...]:
    """The shared package caches, copy-on-write: what a sandbox or a build step downloads or
    changes there lands in ``scratch`` and dies with it; the cache itself is only ever written
    by builds, with verified packages (builders/debcache.py)."""
    return tuple(BindMount(cache.source, cache.target, copy_on_write=True, scratch=_scratch(scratch, f"cache-{index}"),
                           volatile=volatile) for index, cache in enumerate(caches))


def _seccomp(setting: str, isolation: str) -> Policy | None:
    """The filter a ``seccomp`` setting names: ours, none, or a Docker-format profile."""
    if setting == "default":
        return DEFAULT_SECCOMP
    if setting == "unconfined":
        return None
    from sandboxmgr.seccomp import load_profile

    capabilities = frozenset(CAPABILITY_NUMBERS) - ({"SYS_CHROOT"} if isolation == "chroot" else set())
    return load_profile(setting, capabilities)


_LOCALHOST = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def _write(path: Path, text: str, keep: bool, owner: int = 0) -> None:
    """``text`` into ``path``, a file in a directory only the manager writes; ``keep``: not
    over a file that is there (what root inside wrote into it through its bind); ``owner``:
    root inside's host uid (--userns auto), who may write it."""
    with contextlib.suppress(FileNotFoundError):
        info = os.lstat(path)
        # Kept only if it is ours as we left it (what the bind shows); anything else is replaced.
        if keep and stat.S_ISREG(info.st_mode) and info.st_uid == owner and info.st_nlink == 1:
            return
        os.unlink(path)
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    if owner:
        os.fchown(handle, owner, owner)
    with os.fdopen(handle, "w") as file:
        file.write(text)


def write_etc_files(directory: Path, hostname: str, network: str, owner: int = 0) -> Path:
    """The sandbox's /etc/hostname, /etc/hosts and /etc/resolv.conf in ``directory``, as Docker
    writes them per container: its own host name; localhost and that name (with the host's
    network, the host's names too, as podman's --network host); the host's resolv.conf, or
    none at all without a network. The first two are written once (a named sandbox keeps
    what root inside adds to /etc/hosts); resolv.conf follows the host's at every start."""
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o755, parents=True)
    hosts = _LOCALHOST
    if network == "host":
        with contextlib.suppress(OSError):
            hosts = Path("/etc/hosts").read_text(errors="replace")
    if not any(hostname in line.split()[1:] for line in hosts.splitlines() if not line.startswith("#")):
        hosts = hosts.rstrip("\n") + f"\n127.0.1.1\t{hostname}\n"
    _write(directory / "hostname", hostname + "\n", keep=True, owner=owner)
    _write(directory / "hosts", hosts, keep=True, owner=owner)
    resolv = ""
    if network == "host":
        with contextlib.suppress(OSError):
            resolv = Path("/etc/resolv.conf").read_text(errors="replace")
    _write(directory / "resolv.conf", resolv, keep=False, owner=owner)
    return directory


def user_ids(store: Store, config: SandboxConfig, owner: Path, named: bool) -> int | None:
    """The first host id of the range of the sandbox at ``owner`` with ``--userns auto``
    (idmap.py; a named sandbox keeps its own), or None. An ordinary user's sandboxes are in
    its user namespace already (userns.py): root inside is the user outside, as ``auto`` asks."""
    from sandboxmgr.userns import rootless

    if config.userns != "auto" or rootless():
        return None
    from sandboxmgr import idmap

    with store.lock("userns", "ranges") as lock:
        lock.acquire(True, "", "")
        directory = store.root / "userns"
        return idmap.for_sandbox(directory, owner) if named else idmap.reserve(directory, owner)


def enter_spec(store: Store, root: OverlayRoot, config: SandboxConfig, scratch: Path, hold: bool = False,
               live: bool = False, ids: int | None = None) -> EnterSpec:
    """The one place a sandbox's config becomes what enter() takes (``hold``: a live sandbox's
    PID 1, with no command of its own; ``live``: with its main command, run -d; both with the
    monitor's stdio and no terminal: live.py; ``ids``: its range, :func:`user_ids`)."""
    env = {"PATH": DEFAULT_PATH, "container": "sandboxmgr", "HOSTNAME": config.hostname}
    env.update(config.env)
    binds = cache_views(config.caches, scratch, root.volatile) + _volumes(config.binds, scratch, root.volatile)
    if ids is not None:  # root inside owns what the sandbox writes to (its copy-on-write layers)
        from sandboxmgr.idmap import own

        own(ids, root.upper, root.work, *(b.scratch / sub for b in binds if b.scratch for sub in ("upper", "work")))
    return EnterSpec(
        root=root,
        argv=config.argv,
        env=env,
        workdir=config.workdir,
        hostname=config.hostname,
        user=config.user,
        network=config.network,
        binds=binds,
        tty=config.tty and not (hold or live),  # a live PID 1 has none: each joined command makes its own
        isolation=config.isolation,
        limits=config.limits,
        no_new_privs=config.no_new_privs,
        seccomp=_seccomp(config.seccomp, config.isolation),
        # Beside the package caches (distro-release-arch, never without a dash), which sandboxes
        # may write; this one only the manager writes: it is never mounted into a sandbox.
        seccomp_cache=store.cache_dir / "seccomp",
        etc_dir=write_etc_files(scratch / "etc", config.hostname, config.network, ids or 0),
        hold=hold,
        live=live,
        stdio=(0, 1, 2) if hold or live else None,
        ids=ids,
    )


def join_spec(store: Store, config: SandboxConfig) -> EnterSpec:
    """What a command joining a live sandbox (join.py) takes of its config: the command's own
    settings, and nothing that mounts (the sandbox's root and mounts are PID 1's)."""
    env = {"PATH": DEFAULT_PATH, "container": "sandboxmgr", "HOSTNAME": config.hostname}
    env.update(config.env)
    return EnterSpec(
        root=DirectoryRoot(Path("/")),  # unused: the command takes PID 1's root
        argv=config.argv, env=env, workdir=config.workdir, hostname=config.hostname, user=config.user,
        network=config.network, tty=config.tty, isolation=config.isolation, limits=config.limits,
        no_new_privs=config.no_new_privs, seccomp=_seccomp(config.seccomp, config.isolation),
        seccomp_cache=store.cache_dir / "seccomp",
    )


def run_ephemeral(store: Store, image: ImageRecord, saved: SandboxConfig, options: SandboxConfig) -> int:
    """Run in a throw-away sandbox over ``image``; its changes vanish on exit."""
    config = saved.merged(options)
    runnable(image)
    with store.temporary("run") as tmp, using(store, image, config.caches):
        for sub in ("upper", "work", "root"):
            (tmp / sub).mkdir()
        root = OverlayRoot(store.lower_dirs(image), tmp / "upper", tmp / "work", tmp / "root", volatile=True)
        return enter(enter_spec(store, root, config, tmp, ids=user_ids(store, config, tmp, named=False)))


def runnable(image: ImageRecord) -> None:
    """Refuse, in one line, an image for another architecture that this kernel cannot run now
    (no qemu-user handler, or one without the F flag: binfmt.py); a native image costs a compare."""
    arch = str(image.meta.get("arch", ""))
    from sandboxmgr import binfmt

    if arch and binfmt.is_foreign(arch):
        binfmt.require(arch, f"the image of {image.profile}")


@contextlib.contextmanager
def using(store: Store, image: ImageRecord, caches: tuple[BindMount, ...] = ()) -> Iterator[None]:
    """A shared hold on the image while a sandbox runs over it: rmi and prune wait for no one
    but refuse (busy) instead of deleting layers under a running sandbox. Likewise on each
    package cache it mounts (``cache-DISTRO-RELEASE-ARCH``, pkgcache.py): ``prune --cache``
    leaves it, instead of emptying the lower directory of a mounted overlay."""
    held = holds(store, image, caches)
    try:
        for lock in held:
            lock.acquire_shared()
        yield
    finally:
        for lock in held:
            lock.release()


def create(store: Store, name: str, image: ImageRecord, profile: Profile | None,
           config: SandboxConfig) -> SandboxRecord:
    """Make the named sandbox ``name`` over ``image``, saving ``config`` whole (resolve.create_sandbox
    makes it from the profile and the command line; an imported image has no ``profile``)."""
    meta = {
        "name": name,
        "profile": profile.name if profile else image.profile,
        "profile_path": str(profile.path) if profile else None,
        "image": image.key,
        "distro": profile.distro if profile else image.meta.get("distro"),
        "release": profile.release if profile else image.meta.get("release"),
        "created": now_iso(),
        "settings": config.to_json(),
    }
    # Holding the image, so a concurrent rmi either sees this sandbox or is refused.
    with using(store, image):
        if store.image(image.key) is None:
            raise SandboxError(f"the image {image.key} of {meta['profile']} was removed meanwhile",
                               hint="run the command again: the image is built anew")
        return store.create_sandbox(name, meta)


def image_of(store: Store, record: SandboxRecord) -> ImageRecord:
    """The image a named sandbox lies over; SandboxError when it was removed meanwhile."""
    image = store.image(record.image_key)
    if image is None:
        raise SandboxError(
            f"the image {record.image_key} of sandbox {record.name!r} is gone",
            hint=f"remove the sandbox (sandboxmgr rm {record.name}) and create it again",
        )
    return image


def holds(store: Store, image: ImageRecord, caches: tuple[BindMount, ...]) -> list[Lock]:
    """The locks a running sandbox holds shared (see :func:`using`)."""
    names = []
    for cache in caches:
        try:
            names.append(cache.source.relative_to(store.cache_dir).parts[0])
        except (ValueError, IndexError):
            continue  # not in this store's cache (a sandbox saved by another layout)
    return [store.lock("image", image.key), *(store.lock("cache", name) for name in dict.fromkeys(names))]


def hold_spec(store: Store, record: SandboxRecord, image: ImageRecord, config: SandboxConfig,
              command: tuple[str, ...] | None = None) -> EnterSpec:
    """The spec of a live sandbox's PID 1 over ``image`` (live.py): holding it, or running its
    main ``command`` (run -d)."""
    runnable(image)
    root = OverlayRoot(store.lower_dirs(image), record.upper, record.work, record.root)
    ids = user_ids(store, config, record.path, named=True)
    if command:
        from sandboxmgr.config import options

        return enter_spec(store, root, config.merged(options(argv=command)), record.path / "volumes", live=True,
                          ids=ids)
    return enter_spec(store, root, config, record.path / "volumes", hold=True, ids=ids)
