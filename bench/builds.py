"""Builds: the loop that runs the cold builds (bench/cold.py) and the warm rebuilds (bench/warm.py).

They share it because the warm rebuilds start from a cold build's store: in each round the
cold builds of sandboxmgr and its peers alternate (the order rotated), then the warm
rebuilds run in that first store, in a fixed order.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from bench import cold as cold_bench
from bench import warm as warm_bench
from bench.common import BASE, Candidate, Section, fmt_time, log
from bench.workspace import Bench, Manager


class Builds:
    """What the build benchmarks share: their directory and log, the fresh stores of the cold builds,
    the store kept for the warm rebuilds, and the bootstrap tool's own times read from build logs."""

    def __init__(self, bench: Bench, keep_warm: bool) -> None:
        self.bench = bench
        self.dir = bench.work / "builds"
        self.dir.mkdir(exist_ok=True)
        self.log = bench.logs / "builds.log"
        self.keep_warm = keep_warm
        self.warm_store: Manager | None = None
        self.current: Manager | None = None
        self.count = 0
        self.tool_seconds: dict[str, list[float]] = {}

    def fresh_store(self) -> Manager:
        self.count += 1
        manager = self.bench.manager(self.dir / f"cold-{self.count}")
        self.bench.managers.append(manager)
        return manager

    def drop(self, manager: Manager) -> None:
        manager.teardown()
        self.bench.managers.remove(manager)

    def bootstrap_seconds(self, manager: Manager, label: str) -> None:
        """The bootstrap tool's own time inside sandboxmgr's build (mmdebstrap's 'success in N seconds')."""
        for log_path in sorted((manager.store / "logs").glob(f"build-{BASE}-*.log")):
            found = re.findall(r"success in ([\d.]+) seconds", log_path.read_text(errors="replace"))
            if found:
                self.tool_seconds.setdefault(label, []).append(float(found[-1]))

    def tool_note(self, label: str, total: float | None) -> str:
        values = self.tool_seconds.get(label)
        if not values:
            return f"(the {label} builds' logs gave no bootstrap time)"
        tool = statistics.median(values)
        rest = "" if total is None else f", and everything around it {fmt_time(total - tool)}"
        return (f"Inside sandboxmgr's {label} build the bootstrap tool took {fmt_time(tool)} (median, from its "
                f"'success in N seconds' line in the build log){rest} (sandboxmgr's steps in the image after "
                "the bootstrap, such as its `apt-get clean`, and publishing the layer).")

    def output_of(self, manager: Manager) -> Path:
        """The root filesystem a cold build made: its image's one layer."""
        image = manager.image(BASE)
        return Path(str(image["layers"][0]["path"])) / "diff"


def sandboxmgr_cold(state: Builds, content: cold_bench.Content) -> Candidate:
    """sandboxmgr's cold build: a fresh store each round; the first one is kept for the warm rebuilds."""

    def prepare() -> None:
        state.current = state.fresh_store()

    def measure() -> float:
        assert state.current is not None
        return state.current.timed("build", BASE, log_file=state.log)

    def finish() -> None:
        manager = state.current
        assert manager is not None
        state.current = None
        state.bootstrap_seconds(manager, "cold")
        content.record("sandboxmgr", state.output_of(manager))
        if state.keep_warm and state.warm_store is None:
            state.warm_store = manager  # kept: its cache/ serves the warm rebuilds
        else:
            state.drop(manager)

    return Candidate("sandboxmgr build, cold", f"sandboxmgr --store EMPTY build {BASE}", measure, prepare=prepare,
                     finish=finish, is_peer=False, retries=1)


def run_round(number: int, rounds: int, candidates: list[Candidate]) -> None:
    for candidate in candidates:
        elapsed = candidate.once()
        if elapsed is not None:
            candidate.times.append(elapsed)
        log(f"round {number + 1}/{rounds}: {candidate.label} {fmt_time(elapsed)}")


def bench_builds(bench: Bench, cold: bool, warm: bool) -> list[Section]:
    """Cold builds against debootstrap and mmdebstrap, and warm rebuilds, in one loop."""
    if cold:
        bench.ensure_tools(["debootstrap", "mmdebstrap", "eatmydata"])
    state = Builds(bench, keep_warm=warm)
    content = cold_bench.Content()
    sm_cold = sandboxmgr_cold(state, content)
    trio = [sm_cold, *(cold_bench.peers(state.bench, state.dir, state.log, content) if cold else [])]
    rebuilds = warm_bench.Rebuilds(state) if warm else None
    rounds = bench.rounds.builds
    log(f"builds: {rounds} alternating rounds of {', '.join(c.label for c in trio)}"
        + (f", then {', '.join(c.label for c in rebuilds.candidates)}" if rebuilds else ""))
    for number in range(rounds):
        shift = number % len(trio)
        run_round(number, rounds, trio[shift:] + trio[:shift])
        if rebuilds is not None:
            if state.warm_store is None:
                for candidate in rebuilds.candidates:
                    candidate.failure = f"no cold build to start from ({sm_cold.failure})"
            run_round(number, rounds, rebuilds.candidates)

    everyone = [*trio, *(rebuilds.candidates if rebuilds else [])]
    retried = [f"{c.label}: {reason}" for c in everyone for reason in c.retried]
    notes = ["Measurements that failed and were repeated (not counted): " + "; ".join(retried)] if retried else []
    sections = []
    if cold:
        sections.append(cold_bench.section(trio, content, notes, state.tool_note("cold", sm_cold.median)))
    if rebuilds is not None:
        sections.append(rebuilds.section(sm_cold, notes))
    if state.warm_store is not None:
        state.drop(state.warm_store)
    return sections
