"""The package build benchmark's report (bench/package.py): its target's verdict comes from the
medians, and a peer that could not run says why instead of a figure."""

from __future__ import annotations

from bench.common import Candidate, verdict
from bench.package import BREAKDOWN, JOBS, section


def measured(label: str, *times: float) -> Candidate:
    candidate = Candidate(label, label, lambda: 0.0)
    candidate.times = list(times)
    return candidate


def test_warm_at_most_half_the_by_hand_time_is_met_and_more_is_not() -> None:
    for warm, met in ((20.0, True), (21.0, False)):
        candidates = [measured("cold", 35.0), measured("warm", warm, warm + 5, warm - 1), measured("hand", 40.0),
                      measured("hand, no fsync", 30.0), measured("hand, parallel", 32.0), measured("pbuilder", 60.0)]
        result = section("hello_2.10-3.dsc", candidates, [], None)
        target = result.targets[0]
        assert target.goal.startswith("`package build` warm ≤ 0.5x")
        assert (target.measured, verdict(target)) == ((f"{warm / 40:.2f}x"), "met" if met else "**not met**")
        assert [t.measured for t in result.targets[1:]] == ["0.88x", f"{warm / 60:.2f}x"]
        assert any(f"warm / by hand without fsync: {warm / 30:.2f}x" in line and "warm / pbuilder" in line
                   and f"warm / by hand with parallel={JOBS}: {warm / 32:.2f}x" in line
                   and f"by hand with parallel={JOBS} / by hand: 0.80x" in line for line in result.lines)
        assert BREAKDOWN in result.lines  # where a warm build's time goes


def test_a_failed_side_gives_no_verdict_and_a_missing_pbuilder_says_why() -> None:
    hand = measured("hand", 40.0)
    hand.failure = "exit status 100: E: Unable to locate package debhelper"
    result = section("hello_2.10-3.dsc", [measured("cold", 35.0), measured("warm", 18.0), hand,
                                          measured("hand, no fsync", 30.0), measured("hand, parallel", 32.0)], [],
                      "pbuilder does not install from this machine's archive: no candidate")
    assert [verdict(t) for t in result.targets] == ["n/a", "reported (no target)"]
    assert "pbuilder does not install from this machine's archive: no candidate" in result.lines
    assert any("n/a: exit status 100" in line for line in result.lines)
    assert not any("pbuilder" in line and "|" in line for line in result.lines)
