"""The mount plan of a sandbox, as data.

:func:`plan` turns the options of one run into an ordered list of
:class:`MountStep`; :mod:`sandboxmgr.enter` carries them out inside the new
mount namespace. Keeping the plan as data lets it be tested without root.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from sandboxmgr import linux
from sandboxmgr.errors import SandboxError, shown
from sandboxmgr.names import overlay_unsafe
from sandboxmgr.record import record
from sandboxmgr.userns import entered

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from collections.abc import Iterable

NOSUID_NODEV = linux.MS_NOSUID | linux.MS_NODEV
NOSUID_NODEV_NOEXEC = NOSUID_NODEV | linux.MS_NOEXEC


# The sandbox's own kernel file systems: a bind onto them (or into them) would
# replace what the masks and read-only binds protect, or a device node of the
# sandbox's /dev, with a host directory. runc refuses them too.
KERNEL_TARGETS = ("/proc", "/sys", "/dev")


def refuse_kernel_target(target: str, resolved: str | None = None) -> None:
    """Refuse a bind target on or below /proc, /sys or /dev, in any spelling (``/tmp/../proc``,
    ``//proc/./sys``), or (``resolved``) through a symlink inside the image."""
    normal = "/" + posixpath.normpath(resolved or target).lstrip("/")
    for place in KERNEL_TARGETS:
        if normal == place or normal.startswith(place + "/"):
            # Both spellings may come from the image or a sandbox's changes: quoted, never raw.
            through = f" (a symlink to {shown(normal)})" if resolved else ""
            raise SandboxError(f"cannot bind-mount onto {shown(target)}{through}: {place} is the sandbox's own "
                               f"{place[1:]} file system", hint=f"choose a target outside {place}, like /mnt/...")


@record
class BindMount:
    """A host path shown inside the sandbox (``-v SRC:DST[:ro|:O]``).

    With ``copy_on_write`` (``:O``, as podman names it) the sandbox sees the
    host directory through an overlay: it can change it freely, and the changes
    land in ``scratch`` (upper/ and work/ of the sandbox's own), never in the
    host directory.
    """

    source: Path
    target: str
    readonly: bool = False
    copy_on_write: bool = False
    scratch: Path | None = None
    # The copy-on-write overlay without a sync of the filesystem when it goes (overlayfs
    # "volatile"): for a scratch used once, an ephemeral run's (see enter.OverlayRoot).
    volatile: bool = False

    @classmethod
    def parse(cls, spec: str) -> BindMount:
        """``SRC:DST[:ro|rw|O]`` as ``docker run -v`` (and podman's ``:O``) take it."""
        parts = spec.split(":")
        readonly = copy_on_write = False
        if len(parts) == 3 and parts[2] in ("ro", "rw", "O"):
            readonly = parts[2] == "ro"
            copy_on_write = parts[2] == "O"
            parts = parts[:2]
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ValueError(f"{spec!r} is not SRC:DST, SRC:DST:ro or SRC:DST:O")
        source, target = parts
        if not target.startswith("/"):
            raise ValueError(f"{spec!r}: the target {target!r} must be an absolute path")
        refuse_kernel_target(target)
        path = Path(source).expanduser().absolute()
        if copy_on_write and overlay_unsafe(path):
            # The path becomes an overlayfs option: a comma could smuggle in another option.
            raise ValueError(f"{spec!r}: a copy-on-write source may not contain ',', ':' or '\\'")
        return cls(path, target, readonly, copy_on_write)

    def with_scratch(self, scratch: Path, volatile: bool = False) -> BindMount:
        return BindMount(self.source, self.target, self.readonly, self.copy_on_write, scratch, volatile)


@record
class Device:
    name: str
    major: int
    minor: int
    mode: int = 0o666


@record
class MountStep:
    """One mount inside the sandbox.

    ``target`` is a path inside the sandbox; ``source`` is a host path for binds
    (``fstype`` None) and the device name otherwise.
    """

    target: str
    fstype: str | None
    source: str
    flags: int = 0
    data: str | None = None
    # What to create as the mount point when it is missing: a directory or a file.
    is_file: bool = False
    readonly: bool = False
    # A bind of one of the host's device nodes, checked to be that device: the only
    # mount without nodev.
    device: Device | None = None
    # "" for a mount or a bind as above; "mask": hide the target if it exists
    # (see MASKED_PATHS); "readonly": bind the target onto itself read-only if
    # it exists (see READONLY_PATHS); "link": a symlink at the target whose
    # content is ``source`` (see DEV_LINKS).
    kind: str = ""
    # The target follows the image's symlinks, inside the root, and is refused when
    # they lead into /proc, /sys or /dev (refuse_kernel_target): what the user asked
    # for (-v, resolv.conf). The sandbox's own file systems (/proc, /dev, /tmp ...)
    # go on real directories only.
    follow: bool = False


# The minimal /dev: what a userland expects, and nothing that reaches hardware.
# Each is a bind mount of the host's node (as bubblewrap does), so that every
# filesystem of the sandbox, /dev's tmpfs included, can be mounted nodev: a node
# the sandbox makes itself with mknod (CAP_MKNOD is in Docker's set) cannot be
# opened, so `mknod /dev/sda b 8 0` gives no access to the host's disk.
DEVICES = (
    Device("null", 1, 3),
    Device("zero", 1, 5),
    Device("full", 1, 7),
    Device("random", 1, 8),
    Device("urandom", 1, 9),
    Device("tty", 5, 0),
)
HOST_DEV = Path("/dev")

# What runc and systemd-nspawn hide of /proc and /sys: kernel memory, keys, timer
# and scheduler internals, firmware tables. A file is covered with /dev/null, a
# directory with an empty read-only tmpfs; a path this kernel lacks is skipped.
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)
# Writable only with capabilities the sandbox lacks, and read-only on top of that.
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)

# The default mounts, in order: later ones land inside earlier ones.
DEFAULT_MOUNTS = (
    MountStep("/proc", "proc", "proc", NOSUID_NODEV_NOEXEC),
    MountStep("/sys", "sysfs", "sysfs", NOSUID_NODEV_NOEXEC | linux.MS_RDONLY),
    MountStep("/dev", "tmpfs", "tmpfs", NOSUID_NODEV_NOEXEC, "mode=755,size=65536k"),
    # devpts makes its own pty nodes and refuses mknod, so it needs no nodev.
    MountStep("/dev/pts", "devpts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620,gid=5"),
    MountStep("/dev/shm", "tmpfs", "shm", NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k"),
    MountStep("/dev/mqueue", "mqueue", "mqueue", NOSUID_NODEV_NOEXEC),
    MountStep("/tmp", "tmpfs", "tmpfs", NOSUID_NODEV, "mode=1777"),
    MountStep("/run", "tmpfs", "tmpfs", NOSUID_NODEV, "mode=755"),
)

RESOLV_CONF = Path("/etc/resolv.conf")


def overlay_options(lowers: Iterable[str | Path], upper: str | Path, work: str | Path,
                    volatile: bool = False) -> str:
    """overlayfs's mount options: ``lowers`` top first, and the upper and work dirs."""
    options = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
    if entered():
        # In a user namespace overlayfs may not write trusted.* xattrs: user.overlay.* instead.
        options += ",userxattr"
    return options + (",volatile" if volatile else "")


# The files that tell a sandbox who and where it is, written per sandbox (never into the
# image) by sandbox.write_etc_files, as Docker writes them per container.
ETC_FILES = ("hostname", "hosts", "resolv.conf")


def plan(network: str, binds: tuple[BindMount, ...] = (), etc_dir: Path | None = None) -> list[MountStep]:
    """The ordered mounts of one sandbox run: its file systems, its /etc files (from
    ``etc_dir``; without it, a build step's: the host's resolv.conf with the host's network),
    then what it shows of the host."""
    steps = list(DEFAULT_MOUNTS)
    if network != "none" and entered():
        # A sysfs is mounted only from a network namespace of the user namespace's own: with
        # the host's network, the host's /sys is bound read-only instead (as podman does).
        steps[1] = MountStep("/sys", None, "/sys", NOSUID_NODEV_NOEXEC, readonly=True)
    if etc_dir is not None:
        # Writable, as Docker's: root inside may add a name to /etc/hosts; the host never reads them.
        steps += [MountStep(f"/etc/{name}", None, str(etc_dir / name), linux.MS_NOSUID | linux.MS_NOEXEC,
                            is_file=True, follow=True) for name in ETC_FILES]
    elif network == "host" and RESOLV_CONF.exists():
        steps.append(MountStep("/etc/resolv.conf", None, str(RESOLV_CONF.resolve()),
                               is_file=True, readonly=True, follow=True))
    # Like Docker: shallower targets first, so /a is mounted before /a/b.
    for bind in sorted(binds, key=lambda b: len(Path(b.target).parts)):
        if bind.copy_on_write:
            if bind.scratch is None:
                raise ValueError(f"the copy-on-write mount of {bind.source} has no scratch directory")
            data = overlay_options((bind.source,), bind.scratch / "upper", bind.scratch / "work", bind.volatile)
            steps.append(MountStep(bind.target, "overlay", "overlay", linux.MS_NOSUID | linux.MS_NODEV, data,
                                   follow=True))
            continue
        steps.append(MountStep(bind.target, None, str(bind.source),
                               is_file=not bind.source.is_dir(), readonly=bind.readonly, follow=True))
    return steps


def full_plan(network: str, binds: tuple[BindMount, ...] = (), etc_dir: Path | None = None,
              ids: int | None = None) -> list[MountStep]:
    """Everything mounted (and linked) in the sandbox's root, in order: :func:`plan` with
    /dev filled right after its tmpfs, and the masks last; ``ids``: the base of the sandbox's
    id range (--userns auto, idmap.py), whose root then owns its file systems."""
    steps = []
    for planned in plan(network, binds, etc_dir):
        step = planned if ids is None else owned_by(planned, ids)
        steps.append(step)
        if step.target == "/dev":
            steps += device_steps() + link_steps()
    return steps + mask_steps()


def owned_by(step: MountStep, ids: int) -> MountStep:
    """``step`` with its tmpfs owned by root of the id range starting at ``ids`` (the host's
    root shows as nobody inside it), and devpts's tty group (5 inside) shifted likewise."""
    if step.fstype == "tmpfs":
        data = f"{step.data},uid={ids},gid={ids}"
    elif step.fstype == "devpts":
        data = (step.data or "").replace("gid=5", f"gid={ids + 5}")
    else:
        return step
    return MountStep(step.target, step.fstype, step.source, step.flags, data, step.is_file, step.readonly,
                     step.device, step.kind, step.follow)


def device_steps() -> list[MountStep]:
    """The binds of the host's device nodes into the sandbox's /dev."""
    return [MountStep(f"/dev/{d.name}", None, str(HOST_DEV / d.name), is_file=True, readonly=True, device=d)
            for d in DEVICES]


def link_steps() -> list[MountStep]:
    """The usual links of /dev (fd, stdin, ptmx ...)."""
    return [MountStep(f"/dev/{name}", None, target, kind="link") for name, target in DEV_LINKS]


def mask_steps() -> list[MountStep]:
    """Masks and read-only paths, done after every other mount as runc does,
    so that nothing mounted later can uncover them."""
    steps = [MountStep(path, None, "/dev/null", kind="mask") for path in MASKED_PATHS]
    steps += [MountStep(path, None, path, kind="readonly") for path in READONLY_PATHS]
    return steps
