"""What a real build shows (issue 12): on a terminal, n/N counts with bytes that advance
while packages download and install; off a terminal, plain lines, one per phase, without
the bootstrap tool's hook shell commands. Each test builds in a store of its own, so that
the packages are downloaded and not taken from a cache."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from tests.conftest import CLI, DEBIAN_MIRROR, need_mirror, need_root, run_in_pty

pytestmark = [pytest.mark.root, pytest.mark.network]

PROFILE = ("extends: debian-bookworm\npackages: [make, patch, file]\n"
           "setup: ['for i in 1 2 3; do echo step-line-$i; sleep 0.5; done']\n")
SIZE = r"[\d.]+[KMG]?B"


def fresh_cli(tmp_path: Path) -> CLI:
    need_root()
    need_mirror(DEBIAN_MIRROR, "bookworm")
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "tools.yaml").write_text(PROFILE)
    return CLI(tmp_path / "store", configs)


def counts(shown: list[str], pattern: str) -> list[tuple[int, int]]:
    """The (n, N) of every status line that matches ``pattern`` (whose first two groups are them)."""
    return [(int(m.group(1)), int(m.group(2))) for line in shown if (m := re.search(pattern, line))]


def advances(pairs: list[tuple[int, int]]) -> bool:
    """Counts rising to their total, several for each total (an apt run each)."""
    totals = {total for _, total in pairs}
    runs = [[n for n, t in pairs if t == total] for total in totals]
    return bool(pairs) and all(len(set(run)) >= 2 and run == sorted(run) and run[-1] == total
                               for run, total in zip(runs, totals, strict=True))


def test_on_a_terminal_downloads_and_installs_show_counts_with_bytes_that_advance(tmp_path: Path) -> None:
    cli = fresh_cli(tmp_path)
    code, output = run_in_pty(cli.argv("build", "tools"), timeout=900)
    assert code == 0, output
    shown = [part.strip() for part in re.split(r"\r\x1b\[K|\r?\n", output) if part.strip()]
    # The bootstrap's essential packages, then the profile's own, each counted against its total.
    downloads = counts(shown, rf"\[tools\] packages: downloading (\d+)/(\d+), {SIZE}/{SIZE}$")
    assert advances(downloads), shown
    assert downloads[-1][1] >= 3
    assert advances(counts(shown, r"\[tools\] packages: unpacking (\d+)/(\d+) \S+$")), shown
    assert advances(counts(shown, r"\[tools\] packages: setting up (\d+)/(\d+) \S+$")), shown
    assert advances(counts(shown, rf"\[tools\] bootstrap: downloading (\d+)/(\d+), {SIZE}/{SIZE}$")), shown
    # The bytes climb to the total apt announced.
    sizes = [m.groups() for line in shown if (m := re.search(rf"packages: downloading \d+/\d+, ({SIZE})/({SIZE})$",
                                                               line))]
    assert sizes[-1][0] == sizes[-1][1] and len({got for got, _ in sizes}) >= 2, sizes
    # A setup step that installs nothing shows its latest line.
    assert "[tools] setup 1: step-line-2" in shown, shown


def test_off_a_terminal_the_build_prints_one_plain_line_per_phase(tmp_path: Path) -> None:
    cli = fresh_cli(tmp_path)
    bootstrap = cli.ok("build", "debian-bookworm")
    packages = cli.ok("build", "tools")
    for result in (bootstrap, packages):
        lines = result.err.splitlines()
        assert lines and all(line.startswith("[") for line in lines), result.err
        assert all(a != b for a, b in itertools.pairwise(lines)), result.err  # a line per phase, never twice
        assert "\r" not in result.err and "\x1b" not in result.err
        # No hook shell commands, no --skip echoes, no per-package or per-percent lines.
        for leak in ("sh -c", "-hook", "as requested", "dpkg.cfg.d", "unpacking ", "setting up ", "step-line-2"):
            assert leak not in result.err, (leak, result.err)
        assert not re.search(r"\d+/\d+", result.err), result.err
    assert re.search(r"bootstrap: downloading \d+ packages \(" + SIZE + r"\)\n", bootstrap.err), bootstrap.err
    assert re.search(r", 1 layer, in ", bootstrap.err), bootstrap.err
    assert re.search(r"\[tools\] packages: downloading \d+ packages \(" + SIZE + r"\)\n", packages.err), packages.err
    assert "[tools] packages: installing " in packages.err and ", 3 layers, in " in packages.err
