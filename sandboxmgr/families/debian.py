"""The Debian family: debootstrap or mmdebstrap, then apt inside.

:class:`Debian` is what the distribution is (methods, variants, defaults, what a
Debian profile may not say, the host's architecture in Debian's naming); the
builders make its roots. Ubuntu (ubuntu.py) is a subclass that overrides what differs.
"""

from __future__ import annotations

import platform
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxmgr import commands, distros
from sandboxmgr.builders import BuildContext, Builder, BuildRoot, MissingVersions, debindex, missing_pins
from sandboxmgr.builders.debcache import DebCache, Later
from sandboxmgr.builders.index import Unreachable, digest, fetch, package_version
from sandboxmgr.builders.pkgprogress import AptProgress, BootstrapProgress
from sandboxmgr.errors import BuildError, ProfileError, SandboxError, counted
from sandboxmgr.identity import file_digest
from sandboxmgr.mounts import BindMount
from sandboxmgr.profile import Profile
from sandboxmgr.toolroot import ToolRoot

DEBOOTSTRAP_SCRIPTS = Path("/usr/share/debootstrap/scripts")

# Build-only files: daemons must not start, and dpkg need not fsync every file
# (an image is published by a rename after the build, so a crash never leaves
# a half-written image that looks complete).
_BUILD_ONLY = {
    "usr/sbin/policy-rc.d": "#!/bin/sh\n# sandboxmgr: no daemons start while an image is built\nexit 101\n",
    "etc/dpkg/dpkg.cfg.d/sandboxmgr-unsafe-io": "force-unsafe-io\n",
}
_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true"}

def _check_common(profile: Profile, tool: str) -> None:
    commands.require(tool)
    distro = _debian(profile)
    keyring = Path(profile.bootstrap.keyring)
    if not keyring.is_file():
        raise SandboxError(
            f"the archive keyring {keyring} {'is not a regular file' if keyring.exists() else 'does not exist'}, "
            "so signatures cannot be checked",
            hint=f"install {distro.keyring_package}, or set bootstrap.keyring in {profile.path}",
        )
    distro.check_arch(profile)


def readable_paths(profile: Profile) -> tuple[Path, ...]:
    """What the bootstrap tool reads on the host besides its programs: the keyring, a file:// mirror."""
    paths = [Path(profile.bootstrap.keyring)]
    if profile.bootstrap.mirror.startswith("file://"):
        paths.append(Path(profile.bootstrap.mirror[len("file://"):]))
    return tuple(paths)


def keyring_id(profile: Profile) -> str:
    """Which keys a profile trusts, as a short digest of its keyring file's bytes."""
    try:
        return file_digest(Path(profile.bootstrap.keyring))[:16]
    except OSError:
        return "no-keyring"  # preflight stops the build; a sandbox then shares no cache with one


def signed_index(profile: Profile, where: Path) -> debindex.PackageIndex | None:
    """The profile's signed index, fetched and verified (or the one verified last, offline);
    None when the mirror answers without it. Raises BuildError when it does not verify."""
    boot = profile.bootstrap
    key = keyring_id(profile)
    saved = debindex.load_saved(where, boot.mirror, boot.components, profile.arch, key)
    try:
        index = debindex.fetch_index(boot.mirror, profile.release, boot.components, profile.arch,
                                     Path(boot.keyring), saved)
    except Unreachable:
        return saved  # offline: the index verified last time
    except debindex.UnverifiedIndex as exc:
        raise BuildError(f"the package index of {profile.distro} {profile.release} from {boot.mirror} "
                         f"does not verify: {exc}",
                         hint=f"check the mirror and bootstrap.keyring in {profile.path}") from None
    if index is not None and index is not saved:
        debindex.save(where, boot.mirror, boot.components, profile.arch, key, index)
    return index


def _bootstrap_failed(tool: str, profile: Profile, context: BuildContext,
                      progress: BootstrapProgress, exc: commands.ProcessExecutionError) -> BuildError:
    # The first error is the cause; the later ones are its consequences.
    reason = progress.errors[0] if progress.errors else f"{tool} exited with status {exc.retcode}"
    hint = f"full log: {context.log_file}"
    text = " ".join(progress.errors).lower()
    if "release" in text and ("fail" in text or "couldn't" in text or "download" in text):
        hint = (f"check that {profile.bootstrap.mirror} is reachable and carries "
                f"'{profile.release}'; full log: {context.log_file}")
    elif "signature" in text or "gpg" in text or "key" in text:
        hint = (f"the mirror's signature did not verify against {profile.bootstrap.keyring}; "
                f"full log: {context.log_file}")
    return BuildError(f"{tool} failed for {profile.name}: {reason}", hint=hint)


class _DebianFamily(Builder):
    tool = ""
    tool_env: dict[str, str] = {}  # noqa: RUF012 - read only
    # Whether the bootstrap tool leaves apt's package lists in the root (else: apt-get update).
    keeps_lists = False
    parents_keep = (("/var/lib/apt/lists", ("lock", "partial")),)  # the bootstrap's lists: README, "apt lists"

    def stage_dir(self, rootfs: Path) -> Path:
        """Where the verified cached packages are put for the tool."""
        return rootfs.parent / "stage"

    def preflight(self, profile: Profile) -> None:
        _check_common(profile, self.tool)

    def bootstrap_argv(self, profile: Profile, rootfs: Path, cache: Path | None = None) -> list[str]:
        raise NotImplementedError

    def index_state(self, profile: Profile) -> str | None:
        boot = profile.bootstrap
        if boot.extra_args:
            return None  # options passed through to the tool may fetch from elsewhere
        base = f"{boot.mirror.rstrip('/')}/dists/{profile.release}"
        # The tool, and the host's apt (mmdebstrap resolves the package set with it).
        versions = [package_version(self.tool), package_version("apt")]
        if None in versions:
            return None
        signed = fetch(f"{base}/InRelease") or fetch(f"{base}/Release")
        if signed is None:
            return None  # the mirror answered without it: the bootstrap will say why
        indexes = debindex.release_indexes(signed.decode(errors="replace"), boot.components, profile.arch)
        if not indexes:
            return None
        return digest([self.method, *map(str, versions), *indexes])

    def cache_dirs(self, profile: Profile, cache: Path) -> tuple[BindMount, ...]:
        # apt's download directory, shared by every build and sandbox of this distro/release/arch
        # that trusts the same keyring (what one profile's index vouches for must not reach a
        # profile that trusts other keys); they see it copy-on-write (debcache.py).
        archives = cache / "apt-archives" / keyring_id(profile)
        (archives / "partial").mkdir(parents=True, exist_ok=True)
        return (BindMount(archives, "/var/cache/apt/archives", copy_on_write=True),)

    def open_cache(self, profile: Profile, cache: Path, scratch: Path | None = None) -> DebCache:
        # Fetched and verified in a thread of its own, while the bootstrap runs: the
        # bootstrap waits for it only to stage a cache that has packages in it.
        key = keyring_id(profile)
        return DebCache(cache / "apt-archives" / key, Later(lambda: signed_index(profile, cache / "index")),
                        cache / "index" / f"verified-{key}.json", scratch)

    def bootstrap(self, profile: Profile, rootfs: Path, context: BuildContext) -> None:
        progress = BootstrapProgress(context.progress)
        context.progress(f"bootstrap: {self.tool} {profile.release} from {profile.bootstrap.mirror}")
        # The tool's own temporary files (mmdebstrap's gpg home) go into the build's tmp/
        # tree, which is removed even when the build is killed; not into the host's /tmp.
        scratch = rootfs.parent / "scratch"
        scratch.mkdir(exist_ok=True)
        rootfs.mkdir(mode=0o755, exist_ok=True)  # shown to the tool as a mount point: it cannot be replaced
        # The tool never sees the shared cache: only copies of the packages that verified
        # against the signed index, in a directory of this build's own.
        stage = self.stage_dir(rootfs)
        (stage / "partial").mkdir(parents=True, exist_ok=True)
        if context.verified is not None:
            staged = context.verified.stage(stage)  # copies: the tool may write what it is given
            if staged:
                context.progress(f"bootstrap: {counted(staged, 'cached package')} verified against the signed index")
        shared = (rootfs, scratch) if stage.is_relative_to(rootfs) else (rootfs, stage, scratch)
        try:
            commands.run(self.bootstrap_argv(profile, rootfs, stage), log_file=context.log_file,
                         on_line=progress, env={"TMPDIR": str(scratch), **self.tool_env},
                         tool_root=ToolRoot(rootfs.parent, shared, readable_paths(profile), target=rootfs))
        except commands.ProcessExecutionError as exc:
            if context.verified is not None:
                context.verified.ready()  # an index that does not verify is the clearer reason
            raise _bootstrap_failed(self.tool, profile, context, progress, exc) from None
        if rootfs.is_symlink() or not rootfs.is_dir():
            raise BuildError(f"{self.tool} left no root directory for {profile.name} (a symlink in its place?)",
                             hint=f"check bootstrap.extra_args in {profile.path}; full log: {context.log_file}")
        if context.verified is not None:
            # debootstrap downloads into the stage, mmdebstrap into the root's archives.
            archives = BuildRoot(rootfs).in_upper("/var/cache/apt/archives/")
            for downloads in dict.fromkeys((stage, archives)):
                if downloads.is_dir() and not downloads.is_symlink():
                    context.verified.keep(downloads)
        if not BuildRoot(rootfs).exists("/usr/bin/apt-get"):
            raise BuildError(f"{self.tool} made a root without apt-get for {profile.name}",
                             hint=f"add apt to bootstrap.include in {profile.path}, or use another method")
        if self.keeps_lists:
            return
        # The package lists stay in the image, so 'apt-get install' works in a
        # sandbox without an 'apt-get update' first.
        context.progress("bootstrap: apt-get update")
        apt = AptProgress(context.progress, "bootstrap")
        if context.run_inside(BuildRoot(rootfs), ["apt-get", "update"], _APT_ENV, on_line=apt) != 0:
            raise BuildError(f"apt-get update failed in {profile.name}",
                             hint=f"check the mirror; full log: {context.log_file}")

    def prepare(self, profile: Profile, root: BuildRoot, context: BuildContext) -> None:
        for path, text in _BUILD_ONLY.items():
            root.write_build_file(path, text, 0o755)

    def install(self, profile: Profile, root: BuildRoot, context: BuildContext) -> None:
        packages = profile.packages
        listed = ", ".join(packages) if len(packages) <= 10 else counted(len(packages), "package")
        context.progress(f"packages: installing {listed}")  # a lock has hundreds
        # A pinned version (name=version: a lock, a recreated report) may be older than the bootstrap's.
        pinned = ["--allow-downgrades"] if any("=" in package for package in profile.packages) else []
        argv = ["apt-get", "install", "-y", "--no-install-recommends", *pinned, *profile.packages]
        before = context.log_size()
        if context.run_inside(root, argv, _APT_ENV, on_line=AptProgress(context.progress, "packages")) != 0:
            log = context.log_since(before)
            versions = missing_pins(log, profile.packages)
            if versions:
                raise MissingVersions(f"the archive lacks {counted(len(versions), 'pinned version')}: "
                                      f"{', '.join(versions)}", versions,
                                      hint=f"apt-cache policy NAME lists a mirror's versions; log: {context.log_file}")
            missing = re.findall(r"Unable to locate package (\S+)", log)
            if missing:
                raise BuildError(
                    f"package {', '.join(missing)} does not exist in {profile.distro} {profile.release}",
                    hint=f"fix 'packages:' in {profile.path}; full log: {context.log_file}",
                )
            raise BuildError(f"installing packages failed in {profile.name}",
                             hint=f"full log: {context.log_file}")

    def finish(self, profile: Profile, root: BuildRoot, context: BuildContext) -> None:
        context.progress("finishing: apt-get clean")
        # Without the shared cache mounted: this empties the layer's own copy only.
        context.run_inside(root, ["apt-get", "clean"], _APT_ENV, with_caches=False)
        for path in _BUILD_ONLY:
            root.remove_build_file(path)


class DebootstrapBuilder(_DebianFamily):
    method = "debootstrap"
    tool = "debootstrap"
    # As in an LXC container: /dev's nodes are there already (toolroot.py mounts them), and
    # debootstrap may not make its own (no CAP_MKNOD), so it must not test that it can.
    tool_env = {"container": "lxc"}  # noqa: RUF012 - read only

    def bootstrap_argv(self, profile: Profile, rootfs: Path, cache: Path | None = None) -> list[str]:
        boot = profile.bootstrap
        argv = ["debootstrap", f"--arch={profile.arch}", f"--components={','.join(boot.components)}",
                f"--keyring={boot.keyring}"]
        if boot.variant != "default":
            argv.append(f"--variant={boot.variant}")
        if boot.include:
            argv.append(f"--include={','.join(boot.include)}")
        if boot.exclude:
            argv.append(f"--exclude={','.join(boot.exclude)}")
        if cache is not None:
            argv.append(f"--cache-dir={cache}")
        argv += [*boot.extra_args, profile.release, str(rootfs), boot.mirror]
        script = debootstrap_script(profile)
        if script is not None:
            argv.append(str(script))
        return argv


def debootstrap_script(profile: Profile, scripts: Path = DEBOOTSTRAP_SCRIPTS) -> Path | None:
    """The script for a release this debootstrap does not know, else None.

    Within a family the per-release scripts are aliases of one script (Debian's
    are all 'sid', Ubuntu's all 'gutsy'), so an older debootstrap can build a
    newer release with its family's script.
    """
    if (scripts / profile.release).exists():
        return None
    fallback = scripts / _debian(profile).debootstrap_script
    return fallback if fallback.exists() else None


class MmdebstrapBuilder(_DebianFamily):
    method = "mmdebstrap"
    tool = "mmdebstrap"
    keeps_lists = True

    def stage_dir(self, rootfs: Path) -> Path:
        # In the new root's archives already: apt takes them from there, and a hard link
        # from a stage elsewhere would cross the tool root's mounts.
        return rootfs / "var/cache/apt/archives"

    def preflight(self, profile: Profile) -> None:
        super().preflight(profile)
        if profile.bootstrap.exclude:
            raise SandboxError(
                f"{profile.path}: bootstrap.exclude is a debootstrap option; mmdebstrap has no equivalent",
                hint="use 'method: debootstrap', or drop 'exclude'",
            )

    def bootstrap_argv(self, profile: Profile, rootfs: Path, cache: Path | None = None) -> list[str]:
        boot = profile.bootstrap
        # Keep the package lists mmdebstrap fetched: they are what 'apt-get update' would fetch again.
        # The tool root mounts /proc and /dev in the new root for it (and it may not mount):
        # the directory is not empty, and there is nothing for mmdebstrap to mount.
        # --verbose: apt's and dpkg's own lines, with the totals and each download's size, for
        # the progress (pkgprogress.py); without it mmdebstrap draws a bar on a terminal only.
        argv = ["mmdebstrap", "--verbose", "--mode=root", "--skip=cleanup/apt/lists", "--skip=check/empty",
                "--skip=chroot/mount", f"--arch={profile.arch}",
                f"--components={','.join(boot.components)}", f"--keyring={boot.keyring}"]
        if boot.variant != "default":
            argv.append(f"--variant={boot.variant}")
        if boot.include:
            argv.append(f"--include={','.join(boot.include)}")
        # dpkg need not fsync every file: the layer is published by a rename after the
        # build, so a crash never leaves a half-written one that looks complete.
        unsafe_io = '"$1"/etc/dpkg/dpkg.cfg.d/sandboxmgr-unsafe-io'
        argv += [f"--setup-hook=mkdir -p \"$1\"/etc/dpkg/dpkg.cfg.d && echo force-unsafe-io > {unsafe_io}",
                 f"--customize-hook=rm -f {unsafe_io}"]
        if cache is not None:
            # mmdebstrap's recipe for a package cache (sync-in before the download, sync-out
            # at the end) copies every .deb through tar twice. The verified packages are in
            # the new root's archives before it starts instead (stage_dir), kept there, and
            # the new downloads verified and copied into the cache afterwards (DebCache.keep).
            argv += ["--skip=download/empty", "--skip=essential/unlink", "--skip=cleanup/apt/cache"]
        argv += [*boot.extra_args, profile.release, str(rootfs), boot.mirror]
        return argv


DEBOOTSTRAP_VARIANTS = ("minbase", "buildd", "fakechroot", "default")
MMDEBSTRAP_VARIANTS = (
    "extract", "custom", "essential", "apt", "required", "minbase",
    "buildd", "important", "debootstrap", "standard", "default",
)
_BUILDERS: dict[str, Builder] = {"debootstrap": DebootstrapBuilder(), "mmdebstrap": MmdebstrapBuilder()}

# uname -m -> Debian architecture name.
_DEB_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "armhf",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "i686": "i386",
}


@dataclass(frozen=True)
class Debian(distros.Distro):
    name: str = "debian"
    family: str = "debian"
    methods: tuple[str, ...] = ("debootstrap", "mmdebstrap")
    default_mirror: str = "http://deb.debian.org/debian"
    default_components: tuple[str, ...] = ("main",)
    default_keyring: str = "/usr/share/keyrings/debian-archive-keyring.gpg"
    foreign_arches: bool = True  # through qemu-user's binfmt_misc handlers (binfmt.py)
    # What to install when the keyring is missing.
    keyring_package: str = "debian-archive-keyring"
    # debootstrap has one script per release name, and within a family they are
    # aliases of one script; an older debootstrap that lacks a newer release's
    # script is given this one instead.
    debootstrap_script: str = "sid"

    def variants(self, method: str) -> tuple[str, ...]:
        return {"debootstrap": DEBOOTSTRAP_VARIANTS, "mmdebstrap": MMDEBSTRAP_VARIANTS}.get(method, ())

    def default_method(self) -> str:
        """The fastest builder this host has: mmdebstrap over debootstrap when installed."""
        return "mmdebstrap" if shutil.which("mmdebstrap") else "debootstrap"

    def check(self, path: Path, method: str, boot: Mapping[str, Any], repositories: Sequence[object]) -> str:
        if repositories:
            raise ProfileError(f"{path}: repositories are for the dnf method",
                               hint="Debian-family profiles name their archive with bootstrap.mirror")
        variant = str(boot.get("variant", "minbase"))
        allowed = self.variants(method)
        if variant not in allowed:
            raise ProfileError(
                f"{path}: bootstrap.variant {variant!r} is not a {method} variant",
                hint=f"use one of: {', '.join(allowed)}",
            )
        return variant

    def host_arch(self) -> str:
        machine = platform.machine()
        return _DEB_ARCH.get(machine, machine)

    def arch_name(self, arch: str) -> str:
        return _DEB_ARCH.get(arch, arch)  # aarch64 is arm64 here

    def builder(self, method: str) -> Builder:
        return _BUILDERS[method]


def _debian(profile: Profile) -> Debian:
    distro = distros.of(profile)
    assert isinstance(distro, Debian), distro
    return distro


distros.register(Debian())
