"""Where import reads an image from (ocisource.py): what it asks skopeo to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandboxmgr import commands
from sandboxmgr.ocisource import DirectoryLayout, open_source


def test_skopeo_keeps_its_temporary_files_in_the_import_s_scratch(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # skopeo decompresses a docker-archive (and saves a docker-daemon image) into /var/tmp unless
    # told: outside the store's disk and tmp/, and left there when the import is killed. It does
    # not read TMPDIR for those (skopeo 1.9: strace shows /var/tmp/docker-tarNNN); --tmpdir it does.
    calls: list[list[str]] = []

    def run(argv: list[str], **_kwargs: Any) -> None:
        calls.append(argv)

    monkeypatch.setattr(commands, "run", run)
    layout = open_source("docker-archive:/nowhere/saved.tar.gz", tmp_path, lambda _line: None)
    assert isinstance(layout, DirectoryLayout)
    (argv,) = calls
    assert argv[0] == "skopeo" and "--tmpdir" in argv[:argv.index("copy")], argv
    big_files = Path(argv[argv.index("--tmpdir") + 1])
    assert big_files.is_dir() and big_files.parent == tmp_path
    assert argv[argv.index("copy") + 1:] == ["--quiet", "docker-archive:/nowhere/saved.tar.gz",
                                             f"oci:{tmp_path / 'skopeo'}:import"]



def test_a_platform_asked_for_is_skopeo_s_to_take_of_a_multi_platform_source(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(commands, "run", lambda argv, **_kwargs: calls.append(argv))
    from sandboxmgr import ociimport
    from sandboxmgr.errors import SandboxError
    from sandboxmgr.store import Store

    with pytest.raises(SandboxError):  # skopeo did not run: there is no layout to read afterwards
        ociimport.import_image(Store(tmp_path / "store"), "docker://example.org/x:1", "x", lambda _line: None,
                               ociimport.Platform("arm", "v7"))
    (argv,) = calls
    assert argv[:argv.index("copy")][:7] == ["skopeo", "--override-os", "linux", "--override-arch", "arm",
                                             "--override-variant", "v7"], argv
