"""Cold build: sandboxmgr with an empty store against debootstrap and mmdebstrap, on equal terms.

sandboxmgr's own bootstrap (sandboxmgr/families/debian.py) runs dpkg with ``force-unsafe-io``
and keeps apt's package lists in the image. The peers get the same: mmdebstrap
``--dpkgopt=force-unsafe-io`` and ``--skip=cleanup/apt/lists`` (sandboxmgr's other ``--skip``
options do not apply to them: ``check/empty`` and ``chroot/mount`` are there because its tool
root mounts /proc and /dev itself, ``download/empty``, ``essential/unlink`` and
``cleanup/apt/cache`` because it stages its package cache in the new root and empties it with
``apt-get clean`` afterwards, which mmdebstrap's own clean-up does); debootstrap runs under
``eatmydata`` and with the same ``force-unsafe-io`` file in the target's dpkg configuration
(eatmydata's preload does not reach the dpkg that debootstrap runs in the chroot, where the
library is missing). debootstrap keeps the package lists it used. Each output's size is shown
with and without apt's lists and caches, with its package count, so the content can be compared.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    MIRROR,
    RELEASE,
    TIMING_HEADERS,
    Candidate,
    Section,
    du,
    fmt_ratio,
    fmt_size,
    md_table,
    ratio,
    remove_tree,
    shown,
    timed,
    timing_rows,
    which,
)
from bench.workspace import Bench

UNSAFE_IO = "etc/dpkg/dpkg.cfg.d/bench-unsafe-io"
APT_STATE = ("var/lib/apt/lists", "var/cache/apt")  # what apt fetched or cached, not the system itself


def installed_packages(root: Path) -> set[str]:
    """The packages dpkg's status file in ``root`` lists as installed."""
    try:
        text = (root / "var/lib/dpkg/status").read_text(errors="replace")
    except OSError:
        return set()
    found = set()
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            found.add(fields["Package"])
    return found


@dataclass
class Content:
    """What each side's output holds: sizes with and without apt's state, and the installed packages."""

    total: dict[str, list[int]] = field(default_factory=dict)
    without_apt: dict[str, list[int]] = field(default_factory=dict)
    packages: dict[str, set[str]] = field(default_factory=dict)
    had_lists: dict[str, bool] = field(default_factory=dict)

    def record(self, label: str, root: Path) -> None:
        total = du([root])
        apt = du([root / d for d in APT_STATE if (root / d).is_dir()])
        self.total.setdefault(label, []).append(total)
        self.without_apt.setdefault(label, []).append(total - apt)
        self.packages[label] = installed_packages(root)
        self.had_lists[label] = any((root / APT_STATE[0]).glob("*_Packages"))

    def against(self, label: str, reference: str = "sandboxmgr") -> str:
        """One peer's content in a few words, against the reference's."""
        if label not in self.packages or reference not in self.packages:
            return f"{label}: n/a"
        mine, theirs = self.packages[label], self.packages[reference]
        same = "the same packages" if mine == theirs else f"{len(mine)} packages against {len(theirs)}"
        return (f"{label}: {same}, {fmt_size(statistics.median(self.without_apt[label]))} against "
                f"{fmt_size(statistics.median(self.without_apt[reference]))}")

    def cells(self, label: str, reference: str = "sandboxmgr") -> list[str]:
        if label not in self.total:
            return ["n/a", "n/a", "n/a", "n/a"]
        mine, theirs = self.packages.get(label, set()), self.packages.get(reference, set())
        if label == reference or not theirs:
            same = ""
        elif mine == theirs:
            same = ", the same set"
        else:
            extra, lacking = sorted(mine - theirs), sorted(theirs - mine)
            same = (f", +{len(extra)} ({' '.join(extra[:4])}) / -{len(lacking)} ({' '.join(lacking[:4])}) "
                    f"against {reference}'s")
        return [fmt_size(statistics.median(self.total[label])), fmt_size(statistics.median(self.without_apt[label])),
                "yes" if self.had_lists.get(label) else "no", f"{len(mine)}{same}"]


def seed_unsafe_io(target: Path) -> None:
    """What sandboxmgr's setup hook writes for its own bootstrap: dpkg without fsync."""
    path = target / UNSAFE_IO
    path.parent.mkdir(parents=True)
    path.write_text("force-unsafe-io\n")


def peers(bench: Bench, builds: Path, build_log: Path, content: Content) -> list[Candidate]:
    def peer(tool: str, argv: list[str], seed: bool) -> Candidate:
        target = builds / tool
        with_target = [str(target) if a == "DIR" else a for a in argv]

        def prepare() -> None:
            remove_tree(target, unmount=True)
            if seed:
                seed_unsafe_io(target)

        def measure() -> float:
            return timed(with_target, log_file=build_log, env=bench.env)

        def finish() -> None:
            if seed:
                (target / UNSAFE_IO).unlink()
            content.record(tool, target)
            remove_tree(target, unmount=True)

        failure = bench.missing.get(tool) or (bench.missing.get("eatmydata") if argv[0] == "eatmydata" else None)
        return Candidate(tool, shown(argv) + (f" (DIR/{UNSAFE_IO} written first)" if seed else ""), measure,
                         prepare=prepare, finish=finish, failure=failure, retries=1)

    debootstrap = ["debootstrap", "--variant=minbase", RELEASE, "DIR", MIRROR]
    if which("eatmydata") is not None:
        debootstrap.insert(0, "eatmydata")
    mmdebstrap = ["mmdebstrap", "--variant=minbase", "--dpkgopt=force-unsafe-io", "--skip=cleanup/apt/lists",
                  RELEASE, "DIR", MIRROR]
    return [peer("debootstrap", debootstrap, seed=True), peer("mmdebstrap", mmdebstrap, seed=False)]


def section(trio: Sequence[Candidate], content: Content, notes: list[str], tool_note: str) -> Section:
    sm_cold, others = trio[0], trio[1:]
    result = Section("Cold build", notes=list(notes))
    result.lines.append(f"{RELEASE}, minbase, {MIRROR}; each sandboxmgr build gets a fresh `--store` (no "
                        "layers, no package cache), each peer a fresh target directory. The peers get what "
                        "sandboxmgr's bootstrap gets (dpkg `force-unsafe-io`; mmdebstrap keeps apt's lists as "
                        "sandboxmgr does) — the module docstring of bench/cold.py says which options and why.")
    result.lines.append("")
    rows = timing_rows(trio)
    for row, candidate in zip(rows, trio, strict=True):
        row.extend(content.cells("sandboxmgr" if candidate is sm_cold else candidate.label))
    result.lines += md_table([*TIMING_HEADERS, "output (du)", "without apt's lists and cache", "apt lists kept",
                              "packages installed"], rows)
    result.lines.append("")
    result.lines.append("sandboxmgr / " + ", ".join(f"{c.label}: {fmt_ratio(ratio(sm_cold.median, c.median))} "
                                                    f"(min over min: {min_ratio(sm_cold, c)})" for c in others))
    result.lines += ["", tool_note]
    medians = [c.median for c in others if c.median is not None]
    value = ratio(sm_cold.median, min(medians)) if medians else None
    result.target("cold build no slower than the faster of debootstrap and mmdebstrap, both given dpkg "
                  "`force-unsafe-io` (ratio ≤ 1.0)", fmt_ratio(value), None if value is None else value <= 1.0)
    result.reported("the peers' output against sandboxmgr's image (installed packages; size without apt's "
                    "lists and cache)", "; ".join(content.against(c.label) for c in others))
    return result


def min_ratio(ours: Candidate, peer: Candidate) -> str:
    if ours.median is None or peer.median is None:
        return "n/a"
    return fmt_ratio(ratio(min(ours.times), min(peer.times)))

