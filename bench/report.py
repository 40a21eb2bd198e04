"""RESULTS.md: the header, the machine, the targets and the sections."""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import re
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path

from bench.common import LOAD, REPO, Section, md_table, shown, verdict, which
from bench.workspace import Rounds

HEADER = """\
# sandboxmgr benchmark results

What each benchmark measures. **Entry**: the wall time to enter a built image and run
`true` — `sandboxmgr run` (an ephemeral sandbox, created and removed around the command),
`sandboxmgr exec` into a running named sandbox (started before, stopped after: it joins,
no mount, no unmount) and `exec` into a stopped one (which starts it, joins it and stops
it again) — against `unshare -mpfui chroot`, `bwrap` and `systemd-nspawn` on a private
copy of the same root filesystem, and against `python3 -c pass` with sandboxmgr's own
interpreter and the flags of its `#!` line, the floor any Python tool pays, and
`sandboxmgr run` of a profile with `seccomp: unconfined` for what the system call filter
costs; then the same again right after 512 MB of unflushed writes in the running
sandbox (on the store's filesystem), as concurrent builds leave them.
**Create**: a throw-away sandbox (`sandboxmgr run IMAGE true`) against two peers, for two
image sizes: what mock's root cache does, untarring an uncompressed tarball of the same
root filesystem into a fresh directory, and what pbuilder/cowbuilder do, a hard-link copy
(`cp -al`) of an unpacked tree; a bare overlayfs mount + chroot is shown as the floor of
the copy-on-write approach. **Cold build**: `sandboxmgr build` with a fresh store (no
layers, no package cache) against `debootstrap` and `mmdebstrap` of the same release,
variant and mirror, given what sandboxmgr gives its own bootstrap (dpkg without fsync)
and keeping the same content (apt's package lists). **Warm rebuild**: the same build
again after `sandboxmgr rmi` (the store's cache/ kept: the package cache and the kept
bootstrap root, which is linked in when the mirror's index is unchanged), the same with
`build --no-cache` (the package cache alone), and the build of a profile that adds one
package to the built one. **Disk**: ten named sandboxes over one image, each
with a small file written by `exec`, measured with `du` (hard links counted once) against
the image plus the files. **Loop**: 50 ephemeral runs in a row, then a check that no
mount, temporary directory, lock or process was left behind. **Package build**: `sandboxmgr
package build` of GNU hello's Debian source on bookworm, cold (the build-dependencies layer
removed first) and warm (built), against the same build by hand in a fresh `sandboxmgr run`
sandbox (`apt-get build-dep`, `dpkg-buildpackage`) and against `pbuilder build`.

The figures are medians (with the minimum beside them), and a ratio is sandboxmgr's
median divided by the peer's (below 1.0: sandboxmgr is faster) unless the row says
otherwise. Where sandboxmgr and its peers alternate (round-robin, the order rotated each
round), a noisy machine slows both alike; where they do not, the table says so:

| benchmark | sides | alternated |
| --- | --- | --- |
| Entry | floor, unshare + chroot, bwrap, nspawn, sandboxmgr run / exec running / exec stopped | yes: rotated, warm-up |
| Entry under unflushed writes | the same, and bare overlayfs | yes: rotated each round |
| Entry: import profile | sandboxmgr only | no peer |
| Create | untar, `cp -al`, bare overlayfs, sandboxmgr run; two sizes | yes: rotated, after a warm-up round |
| Create: untar into a plain directory | untar only (the uncontrolled case, for the record) | no: after the others |
| Cold build | sandboxmgr, debootstrap, mmdebstrap | yes: rotated each round |
| Warm rebuild | sandboxmgr only (against its own cold build) | no peer; after each cold round, fixed order |
| Disk | sandboxmgr only | no peer (sizes, not times) |
| Loop | sandboxmgr, then bwrap for scale | no: the 50 runs of one, then the 50 of the other |
| Package build | package build cold, warm; by hand in `run` (also no fsync, parallel=N); pbuilder | yes: rotated |

Reproduce with `make bench` (as root; it installs bubblewrap, systemd-container,
eatmydata, and pbuilder without its recommends, when missing), which runs `python -m bench`
and writes this file; `make bench BENCH_ARGS=--quick` is a smoke test, `--only entry,disk`
runs a subset and `--rounds N` sets every benchmark's rounds (neither writes this file unless `--output` says where).
Builds need the Debian mirror, so their figures include its speed that day.
"""


def read_first(path: str, pattern: str) -> str:
    try:
        with open(path) as handle:
            for line in handle:
                match = re.match(pattern, line)
                if match:
                    return match.group(1).strip().strip('"')
    except OSError:
        pass
    return "?"


def tool_version(argv: list[str]) -> str:
    if which(argv[0]) is None:
        return "not installed"
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def code_state() -> str:
    """The checkout's commit, whether sandboxmgr/ or configs/ differ from it, and a digest of their files
    (an editable install runs whatever is there, so a change during the run would show here)."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "sandboxmgr", "configs"],
                           capture_output=True, text=True, check=False).stdout.strip()
    digest = hashlib.sha256()
    for path in sorted([*(REPO / "sandboxmgr").rglob("*.py"), *(REPO / "configs").rglob("*.yaml")]):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return f"commit {commit}" + (" + uncommitted changes" if dirty else "") + f", files {digest.hexdigest()[:12]}"


def machine(python: Sequence[str], exe: Path, code_before: str) -> list[tuple[str, str]]:
    mem_kb = read_first("/proc/meminfo", r"MemTotal:\s+(\d+)")
    code_after = code_state()
    code = code_after + (" throughout the run" if code_after == code_before
                         else f" at the end, **{code_before} at the start: the code changed during the run**")
    py = subprocess.run([*python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                        text=True, check=False).stdout.strip()
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("nproc", str(len(os.sched_getaffinity(0)))),
        ("CPU", read_first("/proc/cpuinfo", r"model name\s*:\s*(.*)")),
        ("memory", f"{int(mem_kb) // 1024} MiB" if mem_kb.isdigit() else "?"),
        ("kernel", platform.release()),
        ("OS", read_first("/etc/os-release", r"PRETTY_NAME=(.*)")),
        ("load average (1 min) during the run",
         f"{min(LOAD):.2f} to {max(LOAD):.2f}, median {statistics.median(LOAD):.2f} (sampled at each progress "
         "line; the bench's own builds count too)" if LOAD else "?"),
        ("python", f"{py} ({shown(python)})"),
        ("sandboxmgr", f"{exe}; {code}"),
        ("debootstrap", tool_version(["debootstrap", "--version"])),
        ("mmdebstrap", tool_version(["mmdebstrap", "--version"])),
        ("bwrap", tool_version(["bwrap", "--version"])),
        ("systemd-nspawn", tool_version(["systemd-nspawn", "--version"])),
        ("eatmydata", "installed" if which("eatmydata") else "not installed"),
    ]



def report(machine_info: list[tuple[str, str]], sections: list[Section], rounds: Rounds, how: str) -> str:
    lines = [HEADER.rstrip(), "", "## Machine and run", ""]
    lines += md_table(["", ""], [[k, v] for k, v in machine_info])
    lines.append("")
    lines.append(f"Rounds: entry {rounds.entry}, create {rounds.create}, builds {rounds.builds}, "
                 f"loop {rounds.loop}" + (f" ({how})" if how else "") + ".")
    lines += ["", "## Targets", ""]
    lines += md_table(["benchmark", "target", "measured", "verdict"],
                      [[t.benchmark, t.goal, t.measured, verdict(t)] for s in sections for t in s.targets])
    for number, section in enumerate(sections, 1):
        lines += ["", f"## {number}. {section.title}", "", *section.lines]
        if section.notes:
            lines += ["", *section.notes]
    return "\n".join(lines) + "\n"

