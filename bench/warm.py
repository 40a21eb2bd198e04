"""Warm rebuild: a rebuild in the store of the first cold build, against that cold build.

``rmi`` keeps the store's cache/ (the package cache and the kept bootstrap root): the warm
build links the kept root when the mirror's index is unchanged, ``--no-cache`` bootstraps
again with the package cache alone, and a profile adding one package reuses the bootstrap
layer. sandboxmgr only: no peer keeps such a cache, so nothing alternates with them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.common import (
    BASE,
    EXTRA_PACKAGE,
    PLUS_ONE,
    TIMING_HEADERS,
    Candidate,
    Section,
    fmt_ratio,
    md_table,
    ratio,
    timing_rows,
)
from bench.workspace import Manager

if TYPE_CHECKING:
    from bench.builds import Builds


class Rebuilds:
    """The three warm candidates, measured in the store that ``Builds`` keeps."""

    def __init__(self, state: Builds) -> None:
        self.state = state
        self.linked = 0
        self.warm = Candidate("sandboxmgr build, warm", f"sandboxmgr rmi {BASE} (untimed); sandboxmgr build {BASE}",
                              self.measure_warm, prepare=self.remove_image, is_peer=False, retries=1)
        self.no_cache = Candidate("sandboxmgr build, warm, --no-cache",
                                  f"sandboxmgr rmi {BASE} (untimed); sandboxmgr build --no-cache {BASE}",
                                  self.measure_no_cache, prepare=self.remove_image,
                                  finish=lambda: state.bootstrap_seconds(self.store, "package cache only"),
                                  is_peer=False, retries=1)
        self.plus_one = Candidate(f"sandboxmgr build, +{EXTRA_PACKAGE}",
                                  f"sandboxmgr build CONFIGS/{PLUS_ONE}.yaml ({BASE} built; packages: "
                                  f"[{EXTRA_PACKAGE}])", self.measure_plus_one,
                                  finish=self.remove_plus_one, is_peer=False, retries=1)
        self.candidates = [self.warm, self.no_cache, self.plus_one]

    @property
    def store(self) -> Manager:
        assert self.state.warm_store is not None
        return self.state.warm_store

    def remove_image(self) -> None:
        keys = [str(row["key"]) for row in self.store.images() if row.get("profile") == BASE]
        if keys:
            self.store.call("-q", "rmi", *keys)

    def remove_plus_one(self) -> None:
        self.store.call("-q", "rmi", PLUS_ONE)

    def measure_warm(self) -> float:
        build_log = self.state.log
        before = build_log.stat().st_size if build_log.exists() else 0
        elapsed = self.store.timed("build", BASE, log_file=build_log)
        with build_log.open(errors="replace") as handle:
            handle.seek(before)
            if "linking the kept root" in handle.read():
                self.linked += 1
        return elapsed

    def measure_no_cache(self) -> float:
        return self.store.timed("build", "--no-cache", BASE, log_file=self.state.log)

    def measure_plus_one(self) -> float:
        return self.store.timed("build", self.store.ref(PLUS_ONE), log_file=self.state.log)

    def section(self, sm_cold: Candidate, notes: list[str]) -> Section:
        result = Section("Warm rebuild", notes=list(notes))
        result.lines.append(
            "In the store of the first cold build: `rmi` keeps the store's cache/ - the package cache and "
            "the kept bootstrap root. The warm build links the kept root when the mirror's index is "
            "unchanged (it checks InRelease first); `--no-cache` bootstraps again with the package cache "
            f"alone. The +{EXTRA_PACKAGE} build reuses {BASE}'s bootstrap layer and adds a packages layer "
            "(removed again after each round). sandboxmgr only, run after each round's cold builds.")
        result.lines.append("")
        result.lines += md_table(TIMING_HEADERS, timing_rows([sm_cold, *self.candidates]))
        result.lines.append("")
        warm_ratio = ratio(self.warm.median, sm_cold.median)
        no_cache_ratio = ratio(self.no_cache.median, sm_cold.median)
        plus_ratio = ratio(self.plus_one.median, sm_cold.median)
        result.lines.append(f"warm / cold: {fmt_ratio(warm_ratio)} ({self.linked} of {len(self.warm.times)} "
                            f"warm builds linked the kept root); package cache only (`--no-cache`) / cold: "
                            f"{fmt_ratio(no_cache_ratio)}; +{EXTRA_PACKAGE} / cold: {fmt_ratio(plus_ratio)}")
        result.lines += ["", self.state.tool_note("package cache only", self.no_cache.median)]
        result.target("warm rebuild ≤ 0.5x a cold build", fmt_ratio(warm_ratio),
                      None if warm_ratio is None else warm_ratio <= 0.5)
        result.target("one added package ≤ 0.15x a cold build", fmt_ratio(plus_ratio),
                      None if plus_ratio is None else plus_ratio <= 0.15)
        return result
