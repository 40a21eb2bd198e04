"""Frozen records for the modules `sandboxmgr run` and `exec` import, and their JSON files.

``@dataclass`` costs about 10 ms at start-up (its import pulls in inspect,
ast, dis and tokenize) and half a millisecond per class it generates code for;
the fast path (fastrun.py) defines a dozen records, so that was a quarter of
the time to enter a sandbox. :func:`record` gives what those records use of a
frozen dataclass - the fields in annotation order, defaults, keyword or
positional construction, equality, hashing, a repr and immutability - with no
code generation. Type checkers see it as a frozen dataclass (PEP 681).

Limits: immutable defaults only (no ``default_factory``), no inheritance of
fields, no ``__post_init__``. Modules off the fast path use dataclasses.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any, TypeVar, dataclass_transform

    _T = TypeVar("_T")
else:

    def dataclass_transform(**_options: object) -> Callable[[_T], _T]:
        return lambda decorated: decorated


class FrozenRecordError(AttributeError):
    """Assigning to a field of a record (as dataclasses' FrozenInstanceError)."""


_NO_DEFAULT = object()


@dataclass_transform(frozen_default=True)
def record(cls: type[_T]) -> type[_T]:
    """Make ``cls`` a frozen record of its annotated class attributes."""
    # Not inspect.get_annotations: importing inspect is what this module avoids.
    names = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063
    defaults = tuple(cls.__dict__.get(name, _NO_DEFAULT) for name in names)
    positions = {name: index for index, name in enumerate(names)}
    qualname = cls.__qualname__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            raise TypeError(f"{qualname}() takes {len(names)} arguments but {len(args)} were given")
        values = list(args) + list(defaults[len(args):])
        for name, value in kwargs.items():
            index = positions.get(name)
            if index is None:
                raise TypeError(f"{qualname}() got an unexpected keyword argument {name!r}")
            if index < len(args):
                raise TypeError(f"{qualname}() got multiple values for argument {name!r}")
            values[index] = value
        for name, value in zip(names, values, strict=True):
            if value is _NO_DEFAULT:
                raise TypeError(f"{qualname}() missing required argument {name!r}")
        self.__dict__.update(zip(names, values, strict=True))

    def _values(self: Any) -> tuple[Any, ...]:
        return tuple(self.__dict__[name] for name in names)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(_values(self) == _values(other))

    def __hash__(self: Any) -> int:
        return hash(_values(self))

    def __repr__(self: Any) -> str:
        fields = ", ".join(f"{name}={self.__dict__[name]!r}" for name in names)
        return f"{qualname}({fields})"

    def __setattr__(self: Any, name: str, _value: object) -> None:
        raise FrozenRecordError(f"cannot assign to field {name!r} of {qualname}")

    def __delattr__(self: Any, name: str) -> None:
        raise FrozenRecordError(f"cannot delete field {name!r} of {qualname}")

    for method in (__init__, __eq__, __hash__, __repr__, __setattr__, __delattr__):
        method.__qualname__ = f"{qualname}.{method.__name__}"
        setattr(cls, method.__name__, method)
    return cls


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a record's JSON file atomically (a temporary file renamed over it)."""
    import json  # here, not at the top: exec's joining fast path reads no JSON (ticket.py)

    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written record behind
        raise
    os.rename(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    import json

    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data
