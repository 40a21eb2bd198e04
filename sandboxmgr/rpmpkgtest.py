"""``package test`` of ``.rpm`` files: the RPM family's commands in pkgtest.py's frame.

As a Fedora packager tests a package by hand, with the image's own dnf and rpm:

1. the profile's repositories are written where only this dnf reads them (the image's own
   ``/etc/yum.repos.d`` is not used, as the family's builder does not use it), and its
   ``file://`` repositories and keys are shown read-only at their host paths;
2. **install** - ``dnf install /packages/x.rpm``: dependencies from those repositories, their
   signatures checked against the profile's keys (gpgcheck as the profile says);
3. **remove** - ``dnf remove`` of the packages' names (``rpm -qp``), and only them;
4. **purge** - RPM has no purge (``rpm -e`` already removes a package's configuration,
   keeping a changed file as ``.rpmsave``, which the lists then report): the stage removes
   the dependencies that came with the packages, ``dnf autoremove``, as the Debian path's
   ``apt-get autoremove --purge`` does;
5. **leftovers** - against ``rpm -qal``, every file a package owns.
"""

from __future__ import annotations

from pathlib import Path

from sandboxmgr.families.rpm import INSIDE_REPOS, dnf_options, repo_file
from sandboxmgr.mounts import BindMount
from sandboxmgr.pkgtest import MOUNT, TestFamily
from sandboxmgr.profile import Profile

# What dnf and rpm keep of their own: the rpmdb (Fedora's is in /usr/lib/sysimage/rpm), dnf's
# history and state (dnf5's in /usr/lib/sysimage/libdnf5), scriptlets' state.
STATE = ("/var/lib/rpm", "/var/lib/dnf", "/var/lib/rpm-state", "/usr/lib/sysimage")
# /usr/bin/rpm by its path: a busybox shell prefers its own rpm applet to the real one.
NAMES = f"$(for rpm in {MOUNT}/*.rpm; do /usr/bin/rpm -qp --qf '%{{NAME}}\\n' \"$rpm\"; done)"


def family(profile: Profile) -> TestFamily:
    """The RPM family's steps for ``profile``: its dnf with the profile's repositories."""
    dnf = " ".join(["dnf", *dnf_options(profile), f"--setopt=reposdir={INSIDE_REPOS}"])
    binds = tuple(dict.fromkeys(BindMount(Path(path), path, readonly=True)
                                for repo in profile.repositories for path in repo.local_paths()))
    return TestFamily(
        suffix=".rpm", tool="dnf", state=STATE, binds=binds, env={"LC_ALL": "C.UTF-8"},
        prepare=f"mkdir -p {INSIDE_REPOS} && printf '%s' \"$1\" > {INSIDE_REPOS}/profile.repo",
        prepare_args=(repo_file(profile),),
        install=f"exec {dnf} install \"$@\"",
        remove=f"{dnf} --setopt=clean_requirements_on_remove=False remove {NAMES}",
        purge=f"{dnf} autoremove",
        owned="/usr/bin/rpm -qal")
