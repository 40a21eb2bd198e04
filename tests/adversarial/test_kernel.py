"""Attack 2: the host's disk, mounts, /proc and /sys knobs, modules, the clock; and no_new_privs.

Root inside keeps Docker's capability set (CHOWN ... MKNOD ... SYS_CHROOT), so
each of these is stopped by something specific, named in the test. Every
attempt is harmless to the host if a defence were missing (the disk is only
read, the clock set to what it is, the module image is empty, /proc knobs are
written with the value they have).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sandboxmgr.mounts import MASKED_PATHS, READONLY_PATHS
from tests.adversarial.conftest import attempts
from tests.conftest import CLI, ConcurrentBuild

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

IMAGE = "debian-bookworm"


def run_attack(cli: CLI, attack_dir: Path, *args: str) -> dict[str, str]:
    result = cli("run", "-v", f"{attack_dir}:/attack:ro", IMAGE, "/attack/attack", *args)
    assert result.code == 0, str(result)
    return attempts(result)


def test_a_device_node_of_the_hosts_disk_can_be_made_but_not_opened(cli: CLI, bookworm: ConcurrentBuild,
                                                                     attack_dir: Path) -> None:
    root_dev = os.stat("/").st_dev
    major, minor = str(os.major(root_dev)), str(os.minor(root_dev))
    # In the image's root (an overlay) and in /dev: both are mounted nodev.
    for place in ("/disk", "/dev/disk", "/tmp/disk", "/dev/shm/disk"):
        found = run_attack(cli, attack_dir, "disk", place, major, minor)
        assert found["mknod"] in ("ok", "EPERM"), (place, found)
        assert found["open-disk"] == "EACCES", (place, found)
        assert "read-disk" not in found


def test_a_bind_mounted_host_directory_is_nodev_too(cli: CLI, bookworm: ConcurrentBuild, attack_dir: Path,
                                                    tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    root_dev = os.stat("/").st_dev
    result = cli("run", "-v", f"{attack_dir}:/attack:ro", "-v", f"{shared}:/shared", IMAGE, "/attack/attack",
                 "disk", "/shared/disk", str(os.major(root_dev)), str(os.minor(root_dev)))
    assert result.code == 0, str(result)
    assert attempts(result)["open-disk"] == "EACCES", result.out
    # The node the sandbox made is on the host now, but the host opens it only where it chooses to.
    made = shared / "disk"
    assert not made.exists() or stat.S_ISBLK(made.lstat().st_mode)


def test_mount_modules_clock_hostname_swap_are_refused(cli: CLI, bookworm: ConcurrentBuild,
                                                       attack_dir: Path) -> None:
    found = run_attack(cli, attack_dir, "kernel")
    # The seccomp filter answers first (EPERM), even on a kernel without module support.
    for attempt in ("mount-tmpfs", "mount-proc", "clock-settime", "sethostname", "swapoff", "init-module",
                    "finit-module"):
        assert found[attempt] == "EPERM", (attempt, found)
    # Without the filter, the capability set alone still refuses them. A kernel built without
    # module support says ENOSYS before it checks CAP_SYS_MODULE.
    result = cli("run", "--security-opt", "seccomp=unconfined", "-v", f"{attack_dir}:/attack:ro", IMAGE,
                 "/attack/attack", "kernel")
    found = attempts(result)
    for attempt in ("mount-tmpfs", "mount-proc", "clock-settime", "sethostname", "swapoff"):
        assert found[attempt] == "EPERM", (attempt, found)
    modules = Path("/proc/modules").exists()
    for attempt in ("init-module", "finit-module"):
        assert found[attempt] == ("EPERM" if modules else "ENOSYS"), (attempt, found)


def test_proc_knobs_and_sys_are_read_only_and_every_kernel_secret_is_masked(cli: CLI, bookworm: ConcurrentBuild,
                                                                           attack_dir: Path) -> None:
    knob = "/proc/sys/kernel/printk_ratelimit"
    value = Path(knob).read_text().strip()
    found = run_attack(cli, attack_dir, "write", knob, value)
    assert found.get("open") == "EROFS", found  # the open for writing is refused already
    if Path("/proc/sysrq-trigger").exists():
        found = run_attack(cli, attack_dir, "write", "/proc/sysrq-trigger", "h")
        assert found.get("open") == "EROFS", found
    else:  # this kernel has no sysrq: the write must still fail, and does
        found = run_attack(cli, attack_dir, "write", "/proc/sysrq-trigger", "h")
        assert found.get("open") in ("ENOENT", "EROFS"), found
    result = cli.ok("run", IMAGE, "sh", "-c", MASK_SCRIPT.format(paths=" ".join(MASKED_PATHS + READONLY_PATHS)))
    rows = [line.split(" ", 2) for line in result.out.splitlines()]
    inside = {row[1]: row[2] for row in rows if row[0] == "path"}
    mounts = {row[1]: row[2] for row in rows if row[0] == "mount"}  # the last mount on each point wins
    # Every mask of the plan (sandboxmgr/mounts.py): where this kernel has the path, the sandbox
    # sees it empty, under a read-only mount of its own; where it lacks it, it stays absent.
    assert {"/proc/timer_list", "/proc/keys", "/sys/firmware"} <= {p for p in MASKED_PATHS if Path(p).exists()}
    for path in MASKED_PATHS:
        if not Path(path).exists():
            assert inside[path] == "absent", (path, result.out)
            continue
        assert inside[path] == ("entries 0" if Path(path).is_dir() else "bytes 0"), (path, result.out)
        assert mounts.get(path, "").startswith("ro,"), (path, result.out)
    # Every read-only path of the plan, and /sys itself.
    for path in READONLY_PATHS:
        if Path(path).exists():
            assert mounts.get(path, "").startswith("ro,"), (path, result.out)
        else:
            assert inside[path] == "absent", (path, result.out)
    assert mounts["/sys"].startswith("ro,"), result.out
    # Opening a root-writable sysfs file for writing (nothing is written: `: >` only opens it).
    assert "sysfs-write Read-only file system" in result.out, result.out


# For each path: absent, or what it holds; then whether opening a sysfs file for writing works;
# then every mount point with its options, as the sandbox's mount table has them.
MASK_SCRIPT = (
    "for f in {paths}; do "
    "  if [ ! -e $f ]; then echo \"path $f absent\"; "
    "  elif [ -d $f ]; then echo \"path $f entries $(ls -A $f | wc -l)\"; "
    "  else echo \"path $f bytes $(head -c 100 $f | wc -c)\"; fi; "
    "done; "
    "if (: > /sys/kernel/profiling) 2>/tmp/err; then echo sysfs-write ok; "
    "else echo \"sysfs-write $(sed 's/.*: //' /tmp/err)\"; fi; "
    "awk '{{print \"mount\", $5, $6}}' /proc/self/mountinfo"
)


def test_no_new_privs_by_default_and_the_security_opt_lifts_it(cli: CLI, bookworm: ConcurrentBuild) -> None:
    name = "suid-check"
    cli.ok("create", IMAGE, "--name", name)
    try:
        # A setuid-root copy of id, made by root inside; then run as nobody.
        cli.ok("exec", name, "sh", "-c", "cp /usr/bin/id /usr/local/bin/suid-id && chmod 4755 /usr/local/bin/suid-id")
        default = cli.ok("exec", "-u", "nobody", name, "sh", "-c",
                         "grep NoNewPrivs /proc/self/status; /usr/local/bin/suid-id -u")
        assert default.out.splitlines() == ["NoNewPrivs:\t1", "65534"]
        lifted = cli.ok("exec", "--security-opt", "no-new-privileges=false", "-u", "nobody", name, "sh", "-c",
                        "grep NoNewPrivs /proc/self/status; /usr/local/bin/suid-id -u")
        assert lifted.out.splitlines() == ["NoNewPrivs:\t0", "0"]
        bad = cli("exec", "--security-opt", "apparmor=unconfined", name, "true")
        assert bad.code == 125 and "not supported" in bad.err and "hint:" in bad.err
    finally:
        cli.ok("rm", name)


def test_the_capability_bounding_set_is_dockers_and_stays_so(cli: CLI, bookworm: ConcurrentBuild) -> None:
    result = cli.ok("run", IMAGE, "sh", "-c", "grep -E 'Cap(Bnd|Eff|Amb)' /proc/self/status")
    sets = {line.split(":")[0]: int(line.split()[1], 16) for line in result.out.splitlines()}
    assert sets["CapBnd"] == 0xA80425FB and sets["CapEff"] == 0xA80425FB and sets["CapAmb"] == 0


@pytest.mark.parametrize("user", ["4294967295", "-1", "99999999999999999999", "0:4294967295", "nobody:-5"])
def test_a_uid_or_gid_out_of_range_is_a_clean_error(cli: CLI, bookworm: ConcurrentBuild, user: str) -> None:
    """(uid_t)-1 means "unchanged" to setresuid: it must never reach the kernel as a user."""
    result = cli("run", "-u", user, IMAGE, "id")
    assert result.code == 125, str(result)
    lines = result.err.splitlines()
    assert len(lines) == 2 and "is not a valid" in lines[0] and "internal error" not in result.err, lines
    assert lines[1].startswith("hint: ")
