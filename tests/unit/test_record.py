"""sandboxmgr.record (the fast path's frozen records) and what the fast path imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sandboxmgr.mounts import BindMount
from sandboxmgr.record import FrozenRecordError, record


@record
class Point:
    x: int
    label: str = "origin"
    tags: tuple[str, ...] = ()

    @property
    def shout(self) -> str:
        return self.label.upper()


def test_positional_keyword_and_default_construction() -> None:
    assert Point(1).label == "origin"
    assert Point(1, "a").label == "a"
    assert Point(x=2, tags=("t",)) == Point(2, "origin", ("t",))
    assert Point(3, label="b").shout == "B"


def test_equality_and_hash_follow_the_fields_and_the_class() -> None:
    assert Point(1, "a") == Point(1, "a")
    assert Point(1, "a") != Point(1, "b")
    assert hash(Point(1, "a")) == hash(Point(1, "a"))
    assert len({Point(1), Point(1), Point(2)}) == 2

    @record
    class Other:
        x: int
        label: str = "origin"
        tags: tuple[str, ...] = ()

    other: object = Other(1)  # same fields, another class: not equal
    assert Point(1) != other


def test_records_are_frozen() -> None:
    point = Point(1)
    with pytest.raises(FrozenRecordError):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del point.label
    assert point.x == 1


def test_wrong_arguments_are_type_errors() -> None:
    with pytest.raises(TypeError, match="missing required argument 'x'"):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'y'"):
        Point(1, y=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        Point(1, x=2)  # type: ignore[misc]
    with pytest.raises(TypeError, match="takes 3 arguments"):
        Point(1, "a", (), 4)  # type: ignore[call-arg]


def test_repr_names_the_fields() -> None:
    assert repr(Point(1, "a")) == "Point(x=1, label='a', tags=())"


def test_a_bind_mount_with_its_scratch_dir_is_a_new_record(tmp_path: Path) -> None:
    bind = BindMount.parse(f"{tmp_path}:/data:O")
    moved = bind.with_scratch(tmp_path / "scratch")
    assert moved.scratch == tmp_path / "scratch"
    assert (moved.source, moved.target, moved.copy_on_write) == (bind.source, bind.target, True)
    assert bind.scratch is None


def test_the_fast_path_imports_nothing_it_does_not_need() -> None:
    # Every module `sandboxmgr run`/`exec` loads on a cached profile, and what must stay
    # out of them: the full CLI and its parsers, and the standard library's heavy modules.
    code = (
        "import sys, sandboxmgr.fastrun, sandboxmgr.runcache, sandboxmgr.locations, "
        "sandboxmgr.store, sandboxmgr.sandbox, sandboxmgr.enter, sandboxmgr.config, sandboxmgr.resolve, "
        "sandboxmgr.entry; print(' '.join(sys.modules))"
    )
    loaded = set(subprocess.run([sys.executable, "-S", "-c", code], check=True, capture_output=True,
                                text=True, cwd=Path(__file__).parents[2]).stdout.split())
    assert "sandboxmgr.enter" in loaded
    heavy = {"click", "yaml", "plumbum", "dataclasses", "typing", "inspect", "socket", "platform",
             "subprocess", "sandboxmgr.cli", "sandboxmgr.profile", "sandboxmgr.images"}
    assert not heavy & loaded
