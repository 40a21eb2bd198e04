"""The farm's own options given without --farm: one line, not a local run that ignores them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import CLI


@pytest.mark.parametrize(("verb", "option"), [
    (["matrix"], ["--farm-retries", "2"]), (["matrix"], ["--farm-timeout", "60"]),
    (["matrix"], ["--farm-job-timeout", "60"]), (["matrix"], ["--queue", "arm"]),
    (["package", "build", "SRC", "-p", "debian-bookworm"], ["--queue", "arm"]),
    (["package", "build", "SRC", "-p", "debian-bookworm"], ["--farm-retries", "0"])])
def test_a_farm_option_without_a_farm_is_one_line(tmp_path: Path, verb: list[str], option: list[str]) -> None:
    source = tmp_path / "src"
    (source / "debian").mkdir(parents=True)
    cli = CLI(tmp_path / "store")
    cli.env = {key: value for key, value in os.environ.items() if key != "SANDBOXMGR_FARM"}
    argv = [str(source) if word == "SRC" else word for word in verb]
    result = cli(*argv, *option, *(["-C", str(tmp_path)] if verb == ["matrix"] else []), timeout=60)
    assert result.code == 125, str(result)
    assert result.err == (f"sandboxmgr: error: {option[0]} is for a run on the farm, and no --farm URL is given\n"
                          f"hint: give --farm redis://:PASSWORD@HOST:PORT/N (or set SANDBOXMGR_FARM), "
                          f"or leave {option[0]} out\n"), str(result)
    assert not (tmp_path / "store" / "images").exists()
