"""`make man`: a page per verb, generated from the CLI's own help (click-man)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click

from sandboxmgr.cli import cli
from tests.conftest import missing

REPO = Path(__file__).resolve().parents[2]


def test_make_man_writes_a_page_for_every_verb_from_its_help(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        missing("make is not installed")
    result = subprocess.run(["make", "-s", "-C", str(REPO), "man", f"MANDIR={tmp_path}",
                             f"BIN={Path(sys.executable).parent}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    pages = {"sandboxmgr.1"}
    context = click.Context(cli)
    for verb in cli.list_commands(context):
        pages.add(f"sandboxmgr-{verb}.1")
        group = cli.get_command(context, verb)
        if isinstance(group, click.Group):  # package build ...
            pages |= {f"sandboxmgr-{verb}-{sub}.1" for sub in group.list_commands(context)}
    assert {page.name for page in tmp_path.iterdir()} == pages
    run_page = (tmp_path / "sandboxmgr-run.1").read_text()
    assert run_page.startswith(".TH ") and "\\-\\-volume" in run_page and "SRC:DST[:ro|:O]" in run_page
    assert "matrix" in (tmp_path / "sandboxmgr.1").read_text()
