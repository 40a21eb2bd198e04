"""The RPM family (Fedora, CentOS Stream, AlmaLinux, Rocky, custom): dnf --installroot.

Two phases, like mock and kiwi. The host's dnf only bootstraps: the release
package and ``bootstrap.include`` go into an empty root with
``dnf --installroot``. Everything after that - ``packages``, ``setup``, and
``dnf install`` in a sandbox - runs the target's own dnf inside the root, so a
host dnf/rpm older than the target's does not decide the rpmdb format. Only an
image without a dnf of its own gets its ``packages`` from the host's dnf too.

The host's dnf configuration never leaks in: a generated config, an empty
reposdir and varsdir, no plugins, a cache of our own, and rpm macros from a
HOME of our own (Debian's rpm keeps its database in ``~/.rpmdb`` unless told
otherwise, which would put it at ``ROOT/root/.rpmdb``).
"""

from __future__ import annotations

import contextlib
import hashlib
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxmgr import commands, distros
from sandboxmgr.builders import BuildContext, Builder, BuildRoot, MissingVersions
from sandboxmgr.builders.index import digest, fetch, package_version
from sandboxmgr.builders.pkgprogress import DnfProgress
from sandboxmgr.errors import BuildError, ProfileError, SandboxError, counted
from sandboxmgr.identity import file_digest
from sandboxmgr.mounts import BindMount, overlay_options
from sandboxmgr.profile import Profile, Repository
from sandboxmgr.removal import remove_tree
from sandboxmgr.rpmreports import nevra
from sandboxmgr.toolroot import ToolRoot

# Where the repositories of the profile are written inside the root while it is
# built, so the target's dnf uses exactly them; removed before publishing.
INSIDE_REPOS = "/etc/sandboxmgr/yum.repos.d"
TARGET_DNFS = ("/usr/bin/dnf", "/usr/bin/dnf5", "/usr/bin/microdnf", "/usr/bin/yum")


def repo_file(profile: Profile) -> str:
    """The profile's repositories as a dnf .repo file."""
    sections = []
    for repo in profile.repositories:
        lines = [f"[{repo.name}]", f"name={repo.name}", "enabled=1",
                 f"gpgcheck={1 if repo.gpgcheck else 0}", "repo_gpgcheck=0"]
        if repo.baseurl:
            lines.append("baseurl=" + "\n        ".join(repo.baseurl))
        if repo.metalink:
            lines.append(f"metalink={repo.metalink}")
        if repo.mirrorlist:
            lines.append(f"mirrorlist={repo.mirrorlist}")
        if repo.gpgkey:
            lines.append("gpgkey=" + "\n       ".join(repo.gpgkey))
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def dnf_options(profile: Profile) -> list[str]:
    options = ["-y", f"--releasever={profile.release}", "--setopt=install_weak_deps=False"]
    if not profile.bootstrap.docs:
        options.append("--setopt=tsflags=nodocs")
    return options + list(profile.bootstrap.extra_args)


def host_dnf_argv(profile: Profile, installroot: Path, work: Path, keepcache: bool) -> list[str]:
    """The host's dnf on ``installroot``, with nothing of the host's dnf setup (``work`` holds
    ours). For another architecture, ``--forcearch`` (mock's way): dnf then takes that
    architecture's packages, and rpm runs their scriptlets - the target's programs, in the
    root - through qemu-user's binfmt_misc handler (check_arch made sure there is one)."""
    argv = ["dnf", *dnf_options(profile), f"--installroot={installroot}", f"--config={work / 'dnf.conf'}",
            "--noplugins", f"--setopt=reposdir={work / 'reposdir'}", f"--setopt=varsdir={work / 'varsdir'}",
            f"--setopt=keepcache={keepcache}"]
    if profile.arch != _rpm(profile).host_arch():
        argv.append(f"--forcearch={profile.arch}")
    return argv


def explain_failure(log: str, profile: Profile, log_file: Path, step: str,
                    packages: Sequence[str] = ()) -> BuildError:
    """One clear message for the usual ways dnf fails."""
    hint = f"full log: {log_file}"
    missing = re.findall(r"No match for argument: (\S+)", log)
    # Versions asked for (a lock's, a report's: name-[epoch:]version-release.arch) the repositories
    # lack. Only those asked for: a scriptlet's output could print any line.
    versions = sorted({name for name in missing if name in packages and nevra(name) is not None})
    if versions and len(versions) == len(set(missing)):
        return _with_log(log_file, MissingVersions(
            f"the repositories of {profile.name} lack {counted(len(versions), 'pinned version')}: "
            f"{', '.join(versions[:5])}{f' and {len(versions) - 5} more' if len(versions) > 5 else ''}",
            versions, hint=hint))
    if missing:
        return _with_log(log_file, BuildError(
            f"package {', '.join(sorted(set(missing)))} does not exist in the repositories of {profile.name}",
            hint=f"fix the package names in {profile.path}; {hint}"))
    # (A NEVRA's characters only: the log may hold anything a scriptlet printed.)
    wrong_arch = sorted(set(re.findall(r"package ([\w.+~:^-]+) does not have a compatible architecture", log)))
    if wrong_arch:
        return BuildError(f"the repositories of {profile.name} offer no {profile.arch} build, only "
                          f"{', '.join(wrong_arch[:3])}{' ...' if len(wrong_arch) > 3 else ''}",
                          hint=f"point each baseurl in {profile.path} at the {profile.arch} repository ($basearch in "
                               f"its URL is {profile.arch}), or set 'arch:' to one they have; {hint}")
    if re.search(r"is not signed|GPG check FAILED|public key .* is not installed|"
                 r"[Ss]ignature .*(invalid|not OK|bad)|NOKEY|BAD", log):
        return BuildError(f"a package signature did not verify while {step} {profile.name}",
                          hint=f"check each repository's gpgkey in {profile.path} (gpgcheck is on); {hint}")
    if re.search(r"Failed to download metadata|Cannot download repomd|Curl error|"
                 r"Cannot find a valid baseurl|Failed to synchronize cache", log):
        return BuildError(f"a repository of {profile.name} cannot be reached",
                          hint=f"check the baseurl/metalink of each repository in {profile.path}; {hint}")
    if "Error: Unable to find a match" in log:
        return BuildError(f"a package of {profile.name} was not found", hint=hint)
    return BuildError(f"dnf failed while {step} {profile.name}", hint=hint)


def _with_log(log_file: Path, failure: BuildError) -> BuildError:
    failure.log = str(log_file)  # the caller may read what dnf said (package build names the packages)
    return failure


def readable_paths(profile: Profile) -> tuple[Path, ...]:
    """What the host's dnf reads on the host besides its programs: file:// repositories and keys."""
    return tuple(Path(p) for repo in profile.repositories for p in repo.local_paths())


class DnfBuilder(Builder):
    method = "dnf"

    def preflight(self, profile: Profile) -> None:
        commands.require("dnf")
        commands.require("rpm")
        distros.of(profile).check_arch(profile)
        for repo in profile.repositories:
            for url in repo.gpgkey:
                if url.startswith("file://") and not Path(url[len("file://"):]).is_file():
                    raise SandboxError(f"the gpgkey {url} of repository {repo.name} does not exist",
                                       hint=f"fix gpgkey in {profile.path}")
            for url in repo.baseurl:
                if url.startswith("file://") and not Path(url[len("file://"):]).is_dir():
                    raise SandboxError(f"the baseurl {url} of repository {repo.name} does not exist",
                                       hint=f"fix baseurl in {profile.path}")

    def index_state(self, profile: Profile) -> str | None:
        if profile.bootstrap.extra_args or not profile.repositories:
            return None
        parts = [self.method, package_version("dnf") or "", package_version("rpm") or ""]
        if not all(parts):
            return None
        for repo in profile.repositories:
            # A metalink or mirrorlist picks a mirror per run: which index a build gets is not known.
            if repo.metalink or repo.mirrorlist or not repo.baseurl:
                return None
            url = (repo.baseurl[0].replace("$releasever", profile.release)
                   .replace("$basearch", profile.arch).rstrip("/"))
            if "$" in url:
                return None
            repomd = fetch(f"{url}/repodata/repomd.xml")
            if repomd is None:
                return None  # answered without it: the bootstrap will say why
            parts.append(f"{repo.name} {hashlib.sha256(repomd).hexdigest()}")
        return digest(parts)

    def cache_dirs(self, profile: Profile, cache: Path) -> tuple[BindMount, ...]:
        # dnf's cache (metadata and packages, kept), shared by builds and sandboxes of this release.
        # Only the host's dnf writes it (gpgcheck: every package's signature is checked again at
        # install); build steps and sandboxes see it copy-on-write.
        (cache / "dnf").mkdir(parents=True, exist_ok=True)
        return (BindMount(cache / "dnf", "/var/cache/dnf", copy_on_write=True),)

    def _host_dnf(self, profile: Profile, root: BuildRoot, context: BuildContext, packages: list[str],
                  step: str) -> None:
        """Run the host's dnf on the root, with nothing of the host's dnf setup."""
        work = root.upper.parent / "dnf-host"
        for sub in ("reposdir", "varsdir", "home"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        # cachedir in the config (not on the command line) is taken inside the root,
        # where the shared cache is mounted for the duration of the command.
        (work / "dnf.conf").write_text(
            "[main]\ngpgcheck=1\ninstallonly_limit=3\nclean_requirements_on_remove=True\n"
            "best=True\nskip_if_unavailable=False\ncachedir=/var/cache/dnf\n\n" + repo_file(profile))
        (work / "home" / ".rpmmacros").write_text(f"%_dbpath {profile.bootstrap.rpmdb}\n")
        for path in (profile.bootstrap.rpmdb, "/var/cache/dnf"):
            (root.upper / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        base: list[commands.PreMount] = []
        installroot = root.upper
        if root.lowers:
            # The host's dnf needs the merged view: mount it where only dnf sees it.
            assert root.mountpoint is not None
            installroot = root.mountpoint
            base.append(commands.PreMount("overlay", installroot, "overlay", root.overlay_options()))
        argv = host_dnf_argv(profile, installroot, work, bool(context.caches))
        seen: list[str] = []
        counts = DnfProgress(context.progress, "bootstrap" if step == "bootstrapping" else "packages")

        def on_line(line: str) -> None:
            seen.append(line)
            counts(line)

        def run(extra: list[str], mounts: list[commands.PreMount]) -> None:
            try:
                commands.run([*argv, *extra, "install", *packages], log_file=context.log_file, on_line=on_line,
                             mounts=base + mounts, env={"HOME": str(work / "home"), "LC_ALL": "C.UTF-8"},
                             tool_root=ToolRoot(root.upper.parent, (installroot, work), readable_paths(profile)))
            except commands.ProcessExecutionError:
                raise explain_failure("\n".join(seen[-80:]), profile, context.log_file, step, packages) from None

        if not context.caches:
            run([], [])
            return
        # The shared cache is written only while nothing but dnf runs: a download-only pass
        # (no scriptlet runs), then the install from the cache alone, with the cache shown
        # copy-on-write to the scriptlets rpm runs chrooted in the root.
        views = [work / "cache" / str(index) for index in range(len(context.caches))]
        for view in views:
            (view / "upper").mkdir(parents=True, exist_ok=True)
            (view / "work").mkdir(parents=True, exist_ok=True)
        run(["--downloadonly"], [commands.PreMount(c.source, installroot / c.target.lstrip("/"))
                                 for c in context.caches])
        run(["--cacheonly"], [commands.PreMount("overlay", installroot / c.target.lstrip("/"), "overlay",
                                                overlay_options((c.source,), v / "upper", v / "work"))
                              for c, v in zip(context.caches, views, strict=True)])

    def bootstrap(self, profile: Profile, rootfs: Path, context: BuildContext) -> None:
        rootfs.mkdir(mode=0o755)
        packages = bootstrap_packages(profile)
        if not packages:
            raise BuildError(f"{profile.name} installs nothing: a custom RPM distro names its packages",
                             hint=f"add packages (the release package, a shell) to {profile.path}")
        shown_packages = f"the {len(packages)} versions of {profile.lock}" if profile.lock else ", ".join(packages)
        context.progress(f"bootstrap: host dnf installing {shown_packages}")
        root = BuildRoot(rootfs)
        try:
            self._host_dnf(profile, root, context, packages, "bootstrapping")
        except MissingVersions as exc:
            if not profile.lock:
                raise
            raise MissingVersions(f"{exc.message} (locked in {profile.lock})", exc.missing,
                                  hint="point 'repositories:' at a repository that still holds these versions "
                                       "(the release's archive: a vault, or the build system's)") from None
        if root.exists("/usr/bin/rpm"):
            # The target's own rpm rewrites the database in its own format and place.
            context.progress("bootstrap: rpm --rebuilddb with the target's rpm")
            if context.run_inside(root, ["rpm", "--rebuilddb"]) != 0:
                raise BuildError(f"the target's rpm could not rebuild its database in {profile.name}",
                                 hint=f"full log: {context.log_file}")

    def _target_dnf(self, root: BuildRoot) -> str | None:
        return next((path for path in TARGET_DNFS if root.exists(path)), None)

    def install(self, profile: Profile, root: BuildRoot, context: BuildContext) -> None:
        # (A profile whose bootstrap installs its packages has no packages layer of its own;
        # a layer of build packages - package build's - is installed here all the same.)
        packages = list(profile.packages)
        target_dnf = self._target_dnf(root)
        if target_dnf is None:
            context.progress("packages: the image has no dnf of its own; using the host's")
            with open(context.log_file, "a") as log:
                log.write("sandboxmgr: no dnf inside the image; packages installed with the host's dnf\n")
            self._host_dnf(profile, root, context, packages, "installing packages into")
            return
        root.write_build_file(f"{INSIDE_REPOS}/profile.repo", repo_file(profile))
        binds = tuple(BindMount(Path(p), p, readonly=True)
                      for repo in profile.repositories for p in repo.local_paths())
        context.progress(f"packages: {Path(target_dnf).name} (the target's) installing {', '.join(packages)}")
        argv = [target_dnf, *dnf_options(profile), f"--setopt=reposdir={INSIDE_REPOS}",
                f"--setopt=keepcache={bool(context.caches)}", "install", *packages]
        before = context.log_size()
        if context.run_inside(root, argv, {"LC_ALL": "C.UTF-8"}, binds=binds,
                              on_line=DnfProgress(context.progress, "packages")) != 0:
            raise explain_failure(context.log_since(before), profile, context.log_file, "installing packages into",
                                  packages)

    def finish(self, profile: Profile, root: BuildRoot, context: BuildContext) -> None:
        root.remove_build_file(f"{INSIDE_REPOS}/profile.repo")
        for directory in (INSIDE_REPOS, "/etc/sandboxmgr"):
            with contextlib.suppress(OSError):
                root.in_upper(directory + "/").rmdir()
        # Whatever dnf left in the layer's own cache (the shared one was mounted over it).
        cache = root.in_upper("/var/cache/dnf/")
        if cache.is_dir() and not cache.is_symlink():
            for entry in cache.iterdir():
                remove_tree(entry)


def bootstrap_packages(profile: Profile) -> list[str]:
    """What the host's dnf installs into the empty root: the release package and
    bootstrap.include, or - a custom distro with neither - the profile's packages; with a
    lock, every locked version (name-[epoch:]version-release.arch) and nothing else."""
    if profile.lock:
        from sandboxmgr import locked

        return list(locked.load(profile).pins())
    if _rpm(profile).packages_in_bootstrap(profile):
        return list(profile.packages)
    return [p for p in (profile.release_package, *profile.bootstrap.include) if p]


def _repository_input(repo: Repository) -> dict[str, Any]:
    keys = []
    for url in repo.gpgkey:
        if url.startswith("file://"):
            try:
                keys.append("sha256:" + file_digest(Path(url[len("file://"):])))
            except OSError:
                keys.append("missing:" + url)
        else:
            keys.append(url)
    return {"name": repo.name, "baseurl": list(repo.baseurl), "metalink": repo.metalink,
            "mirrorlist": repo.mirrorlist, "gpgkey": keys, "gpgcheck": repo.gpgcheck}


_BUILDER = DnfBuilder()
# Debian's (and OCI's) architecture names -> RPM's, which dnf's $basearch and --forcearch take.
_RPM_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "ppc64el": "ppc64le", "armhf": "armv7hl", "i386": "i686"}


@dataclass(frozen=True)
class Rpm(distros.Distro):
    """An RPM distribution: the shipped ones are data (their release package), a custom
    one names its packages itself."""

    family: str = "rpm"
    methods: tuple[str, ...] = ("dnf",)
    foreign_arches: bool = True  # dnf --forcearch, then qemu-user's binfmt_misc handlers (binfmt.py)

    def check(self, path: Path, method: str, boot: Mapping[str, Any], repositories: Sequence[object]) -> str:
        debian_only = [key for key in ("variant", "mirror", "components", "keyring", "exclude") if key in boot]
        if debian_only:
            raise ProfileError(
                f"{path}: bootstrap.{debian_only[0]} is a debootstrap/mmdebstrap setting, not a dnf one",
                hint="dnf profiles list their repositories under 'repositories:'",
            )
        if any(str(arg).startswith("--forcearch") for arg in boot.get("extra_args", ())):
            raise ProfileError(f"{path}: bootstrap.extra_args may not name --forcearch",
                               hint="set 'arch:' instead (sandboxmgr passes --forcearch for another architecture)")
        if not repositories:
            raise ProfileError(f"{path}: a dnf profile needs at least one repository",
                               hint="add 'repositories: [{name: ..., baseurl: ..., gpgkey: ...}]'")
        return ""

    def host_arch(self) -> str:
        machine = platform.machine()
        return "i686" if machine in ("i386", "i586") else machine

    def arch_name(self, arch: str) -> str:
        return _RPM_ARCH.get(arch, arch)  # arm64 is aarch64 here

    def packages_in_bootstrap(self, profile: Profile) -> bool:
        # A custom RPM distro with neither a release package nor bootstrap.include
        # bootstraps its packages themselves.
        return not self.release_package and not profile.bootstrap.include

    def lock_in_bootstrap(self) -> bool:
        return True

    def build_inputs(self, profile: Profile) -> dict[str, Any]:
        return {"rpm": {
            "rpmdb": profile.bootstrap.rpmdb,
            "docs": profile.bootstrap.docs,
            "repositories": [_repository_input(r) for r in profile.repositories],
        }}

    def builder(self, method: str) -> Builder:
        return _BUILDER


def _rpm(profile: Profile) -> Rpm:
    distro = distros.of(profile)
    assert isinstance(distro, Rpm), distro
    return distro


distros.register(
    Rpm("fedora", release_package="fedora-release"),
    Rpm("centos-stream", release_package="centos-stream-release"),
    Rpm("almalinux", release_package="almalinux-release"),
    Rpm("rocky", release_package="rocky-release"),
    custom={"dnf": Rpm},  # a custom distro: named by its profile, no release package
)
