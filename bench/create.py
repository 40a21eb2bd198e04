"""Create: a throw-away sandbox against what mock (untar) and pbuilder/cowbuilder (`cp -al`) do.

Why the untar peer needs care on some machines: on ext4 *without a journal* the inode allocator
skips inodes freed in the last 60 s (360 s while their inode table block is not yet written
back), and it looks each candidate up in the buffer cache to find out. A tree unpacked right
after the previous round's tree was removed from the same directory lands in the same block
group, and every one of its ~9,000 inodes walks over the thousands freed a moment ago: the
extraction costs seconds of system time, more with every round, depending on how long ago
the last removal was. A journaled ext4 does not make that check. The peers' trees are
therefore all kept until the end of the benchmark (then removed, each removal timed; about
8 GB at the peak for a full run's 11 rounds of both sizes) and
made under a directory marked `chattr +T` (ext4's "top of a hierarchy": each new
subdirectory is placed like a top-level one, searching from a group chosen by a hash of its
name; each round's tree has a new name), with a `sync` before each round. The old way,
removing the previous tree from the same directory just before, is kept as one row for the
record.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    BASE,
    BIG,
    TIMING_HEADERS,
    Candidate,
    Section,
    alternate,
    fmt_ratio,
    fmt_size,
    fmt_time,
    log,
    md_table,
    ratio,
    remove_tree,
    run_checked,
    timed,
    timing_rows,
)
from bench.entry import bare_overlay
from bench.workspace import Bench, layer_dirs

SIZES = ((BASE, "minbase"), (BIG, "minbase + build-essential"))
SPEEDUP_UNTAR = 30  # the target against untar


@dataclass
class Tree:
    """A peer's output directories, one per round, made in the timed region. ``keep``: they stay until
    the benchmark's end (``remove_all``), so no removal frees inodes next to the next round's; else
    each is removed before the next round. Either way the removals are timed apart, outside the peer's
    figure. Each round's directory has a new name: under a ``chattr +T`` parent ext4 starts its search
    for a new directory's block group from a hash of its name."""

    parent: Path
    prefix: str
    keep: bool = True
    path: Path = Path("/nonexistent")
    made: list[Path] = field(default_factory=list)
    removals: list[float] = field(default_factory=list)

    def next(self) -> None:
        """Before a round: (remove the previous tree,) sync, and name the next one."""
        if not self.keep:
            self.remove_all()
        os.sync()
        self.path = self.parent / f"{self.prefix}-{len(self.made) + len(self.removals) + 1}"
        self.made.append(self.path)

    def remove_all(self) -> None:
        for path in self.made:
            if os.path.lexists(path):
                start = time.perf_counter()
                remove_tree(path)
                self.removals.append(time.perf_counter() - start)
        self.made.clear()


def spread_placement(parent: Path) -> bool:
    """``chattr +T`` on the peers' parent directory; False where the filesystem has no such flag."""
    out = subprocess.run(["chattr", "+T", str(parent)], capture_output=True, text=True, check=False)
    return out.returncode == 0


def filesystem(path: Path) -> str:
    """The filesystem under ``path``, and whether an ext4 has a journal (what the inode allocator's
    wait for recently freed inodes depends on)."""
    out = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "--target", str(path)], capture_output=True,
                         text=True, check=False).stdout.split()
    if len(out) < 2:
        return "?"
    source, fstype = out[0], out[1]
    if fstype != "ext4":
        return f"{fstype} ({source})"
    try:
        task = Path(f"/sys/fs/ext4/{Path(source).name}/journal_task").read_text().strip()
    except OSError:
        return f"ext4 ({source})"
    return f"ext4 ({source}), " + ("**without a journal**" if task == "<none>" else "with a journal")


@dataclass
class Size:
    """The candidates of one image size."""

    profile: str
    label: str
    size: int
    tar_size: int
    untar: Candidate
    untar_tree: Tree
    link: Candidate
    link_tree: Tree
    raw: Candidate
    ours: Candidate


def unpacked(bench: Bench, profile: str) -> Path:
    """The image's root unpacked once (untimed), the source of the hard-link copies."""
    source = bench.work / "trees" / profile
    if not source.exists():
        source.mkdir(parents=True)
        run_checked(["tar", "--numeric-owner", "-xpf", bench.rootfs_tar(profile)[0], "-C", source])
    return source


def size_candidates(bench: Bench, profile: str, label: str, parent: Path) -> Size:
    sm = bench.main
    image = bench.image(profile)
    tar, tar_size = bench.rootfs_tar(profile)
    source = unpacked(bench, profile)
    layers = [d / "diff" for d in layer_dirs(image)]
    untar_tree = Tree(parent, f"untar-{profile}")
    link_tree = Tree(parent, f"link-{profile}")

    def untar() -> float:
        start = time.perf_counter()
        untar_tree.path.mkdir()
        timed(["tar", "--numeric-owner", "-xpf", tar, "-C", untar_tree.path])
        return time.perf_counter() - start

    def link() -> float:
        return timed(["cp", "-al", source, link_tree.path])

    def overlay() -> float:
        return bare_overlay(layers, bench.scratch / f"overlay-{profile}")

    def run() -> float:
        return sm.timed("run", sm.ref(profile), "true")

    shown_ref = profile if profile == BASE else f"CONFIGS/{profile}.yaml"
    return Size(
        profile, label, int(image.get("size") or 0), tar_size,
        Candidate(f"untar ({label})", f"mkdir D && tar -xpf {profile}.tar -C D", untar, prepare=untar_tree.next),
        untar_tree,
        Candidate(f"cp -al ({label})", f"cp -al TREE D (TREE: {profile} unpacked)", link, prepare=link_tree.next),
        link_tree,
        Candidate(f"bare overlayfs ({label})", "mkdir u w m; unshare -m: mount overlay + chroot m true; rm -rf",
                  overlay, prepare=os.sync),
        Candidate(f"sandboxmgr run ({label})", f"sandboxmgr run {shown_ref} true", run, prepare=os.sync,
                  is_peer=False),
    )


def uncontrolled(bench: Bench, rounds: int) -> Candidate:
    """The untar of the smaller image into a plain directory, right after the previous tree's removal
    from the same place and a sync: what the old benchmark measured, for the record."""
    tar = bench.rootfs_tar(BASE)[0]
    parent = bench.scratch / "plain"
    parent.mkdir(exist_ok=True)
    tree = Tree(parent, "untar", keep=False)

    def untar() -> float:
        start = time.perf_counter()
        tree.path.mkdir()
        timed(["tar", "--numeric-owner", "-xpf", tar, "-C", tree.path])
        return time.perf_counter() - start

    candidate = Candidate("untar (minbase), into a plain directory right after the previous tree's removal",
                          f"rm -rf D; sync (untimed); mkdir D && tar -xpf {BASE}.tar -C D", untar, prepare=tree.next)
    log(f"create: {rounds} rounds of the uncontrolled untar, for the record")
    alternate([candidate], rounds, warmup=True)
    tree.remove_all()
    return candidate


def bench_create(bench: Bench) -> Section:
    section = Section("Create")
    parent = bench.scratch / "peers"
    parent.mkdir()
    spread = spread_placement(parent)
    sizes = [size_candidates(bench, profile, label, parent) for profile, label in SIZES]
    candidates = [c for s in sizes for c in (s.untar, s.link, s.raw, s.ours)]
    log(f"create: {bench.rounds.create} alternating rounds of {len(candidates)} commands")
    alternate(candidates, bench.rounds.create, warmup=True)
    log("create: removing the peers' trees (each removal timed)")
    for s in sizes:
        s.untar_tree.remove_all()
        s.link_tree.remove_all()
    record = uncontrolled(bench, max(2, bench.rounds.create // 3))

    fs = filesystem(bench.work)
    section.lines.append(
        "Each round of a peer makes a new tree, kept until the end of the benchmark and then removed (each "
        "removal timed on its own, shown below, not part of the peer's figure); each measurement of every "
        "side starts after a `sync`. The tarball is uncompressed and in the page cache, and the hard-link "
        "copy's source tree unpacked beforehand: the fastest case for the peers. sandboxmgr's figure "
        f"includes the removal of its sandbox. The bench's filesystem: {fs}. "
        + ("The peers' parent directory is marked `chattr +T`, so each tree gets block groups of its own. "
           if spread else "The peers' parent directory could not be marked `chattr +T`. ")
        + "Why (bench/create.py): on ext4 without a journal, the inode allocator passes over inodes freed in "
        "the last minutes, one lookup each, so an unpacking right after a removal in the same place costs "
        "seconds more, growing with each round; the last row measures that case.")
    section.lines.append("")
    section.lines += md_table(TIMING_HEADERS, timing_rows([*candidates, record]))
    section.lines.append("")
    section.lines += summary(sizes)
    create_targets(section, sizes)
    return section


def median_min(candidate: Candidate) -> str:
    if candidate.median is None:
        return "n/a"
    return f"{fmt_time(candidate.median)} ({fmt_time(min(candidate.times))})"


def speedup(peer: Candidate, ours: Candidate) -> str:
    """Median over median, and min over min."""
    if peer.median is None or ours.median is None:
        return "n/a"
    return f"{fmt_ratio(ratio(peer.median, ours.median))} ({fmt_ratio(ratio(min(peer.times), min(ours.times)))})"


def removal(tree: Tree) -> str:
    if not tree.removals:
        return "n/a"
    ordered = sorted(tree.removals)
    return fmt_time(ordered[len(ordered) // 2])


def summary(sizes: Sequence[Size]) -> list[str]:
    rows = [[s.label, f"`{s.profile}`", fmt_size(s.size), fmt_size(s.tar_size), median_min(s.untar),
             removal(s.untar_tree), median_min(s.link), removal(s.link_tree), median_min(s.ours),
             speedup(s.untar, s.ours), speedup(s.link, s.ours), fmt_ratio(ratio(s.ours.median, s.raw.median))]
            for s in sizes]
    return ["Median (min) of each; the removals, timed apart, are medians. Speed-ups are the peer's median over "
            "sandboxmgr's (min over min in brackets).", "",
            *md_table(["image", "profile", "image size", "tarball", "untar", "its rm -rf", "cp -al",
                       "its rm -rf", "sandboxmgr run", "speed-up vs untar", "speed-up vs cp -al",
                       "sandboxmgr / bare overlayfs"], rows)]


def create_targets(section: Section, sizes: Sequence[Size]) -> None:
    for s in sizes:
        value = ratio(s.untar.median, s.ours.median)
        section.target(f"throw-away sandbox ≥ {SPEEDUP_UNTAR}x faster than untar ({s.label})", fmt_ratio(value),
                       None if value is None else value >= SPEEDUP_UNTAR)
    for s in sizes:
        value = ratio(s.link.median, s.ours.median)
        section.target(f"throw-away sandbox faster than a hard-link copy, `cp -al` ({s.label})", fmt_ratio(value),
                       None if value is None else value > 1.0)
    small, big = sizes[0], sizes[1]
    growth = ratio(big.ours.median, small.ours.median)
    size_growth = ratio(float(big.size), float(small.size)) if small.size else None
    section.target("sandbox creation does not grow with the image's size (bigger / smaller ≤ 1.2)",
                   f"{fmt_ratio(growth)} for an image {fmt_ratio(size_growth)} the size "
                   f"(untar: {fmt_ratio(ratio(big.untar.median, small.untar.median))}, "
                   f"cp -al: {fmt_ratio(ratio(big.link.median, small.link.median))})",
                   None if growth is None else growth <= 1.2)
