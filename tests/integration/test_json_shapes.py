"""Every `--json` shape is the one the README's tables document, field for field."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI, ConcurrentBuild

pytestmark = [pytest.mark.root, pytest.mark.network]

README = Path(__file__).resolve().parents[2] / "README.md"


def documented(heading: str) -> dict[str, set[str]]:
    """The fields of the table under ``heading``: "" for the top level, "layers[]" or
    "settings" for the fields of a nested object."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    section = text[start + len(heading) + 2:]
    section = section[:re.search(r"\n#+ ", section).start()]  # type: ignore[union-attr]
    fields: dict[str, set[str]] = {"": set()}
    for name in re.findall(r"^\| `([a-z_]+(?:\[\])?(?:\.[a-z_]+)?)` \|", section, re.MULTILINE):
        parent, _, child = name.rpartition(".")
        if parent:
            fields.setdefault(parent, set()).add(child)
        else:
            fields[""].add(name)
    assert fields[""], f"no table under {heading}"
    return fields


def check(rows: list[dict[str, Any]], fields: dict[str, set[str]], extra: frozenset[str] = frozenset()) -> None:
    assert isinstance(rows, list) and rows, rows
    for row in rows:
        assert set(row) == fields[""] | extra, sorted(set(row) ^ (fields[""] | extra))
        for parent, children in fields.items():
            if parent.endswith("[]"):
                for item in row[parent[:-2]]:
                    assert set(item) == children, (parent, sorted(set(item) ^ children))
            elif parent:
                assert set(row[parent]) == children, (parent, sorted(set(row[parent]) ^ children))


def test_every_json_shape_is_the_documented_one(cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path) -> None:
    assert cli.configs is not None
    broken = cli.configs / "broken.yaml"
    broken.write_text("distro: [\n")
    try:
        profiles = json.loads(cli.ok("profiles", "--json").out)
    finally:
        broken.unlink()
    assert {row["error"] is None for row in profiles} == {True, False}  # both kinds of row
    check(profiles, documented("#### `profiles --json`"))

    images = documented("#### `images --json`")
    check(json.loads(cli.ok("images", "--json").out), images)

    name = "json-shapes"
    cli.ok("create", bookworm.profile, "--name", name, "-v", f"{tmp_path}:/mnt:ro", "--memory", "64m")
    try:
        sandboxes = documented("#### `ls --json`")
        check([r for r in json.loads(cli.ok("ls", "--json").out) if r["name"] == name], sandboxes)
        inspected = json.loads(cli.ok("inspect", name, bookworm.profile).out)
        assert [row["type"] for row in inspected] == ["sandbox", "image"]
        inspect = documented("#### `inspect NAME...`")
        assert inspect[""] == {"type", "inputs"}
        check(inspected[:1], sandboxes, frozenset({"type"}))
        check(inspected[1:], images, frozenset({"type", "inputs"}))
        assert json.loads(cli.ok("inspect", "--type", "image", bookworm.profile).out)[0]["type"] == "image"
    finally:
        cli.ok("rm", name)

    lock = json.loads(cli.ok("lock", bookworm.profile, "--json").out)
    check([lock], documented("#### `lock --json`"))
    assert all(isinstance(package["version"], str) for package in lock["packages"])

    df = json.loads(cli.ok("df", "--json").out)
    check([df], documented("#### `df --json`"))
    assert [row["type"] for row in df["types"]] == ["images", "layers", "sandboxes", "package caches", "kept roots",
                                                    "run caches", "logs", "temporary"]

    project = tmp_path / "project"
    project.mkdir()
    (project / "sandboxmgr.yaml").write_text("profiles: [debian-bookworm]\ncommand: 'true'\n")
    check(json.loads(cli.ok("matrix", "-C", str(project), "--json").out), documented("#### `matrix --json`"))

    (cli.store / "tmp" / "left-by-a-crash").mkdir(parents=True)
    result = cli("doctor", "--json")
    assert result.code == 1, str(result)
    check(json.loads(result.out), documented("### Doctor's findings"))
    cli.ok("doctor", "--fix")


def test_export_and_import_json_shapes_are_the_documented_ones(cli: CLI, bookworm: ConcurrentBuild,
                                                               tmp_path: Path) -> None:
    exported = json.loads(cli.ok("export", bookworm.profile, "-o", str(tmp_path / "layout"), "--json").out)
    check(exported, documented("#### `export --json`"))
    other = CLI(tmp_path / "store")  # the session's store keeps built images only
    imported = json.loads(other.ok("import", str(tmp_path / "layout"), "--as", "shapes", "--json").out)
    check(imported, documented("#### `import --json`"))
    check(json.loads(other.ok("images", "--json").out), documented("#### `images --json`"))
    other.ok("rmi", "shapes")
