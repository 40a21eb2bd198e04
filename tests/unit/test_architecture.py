"""The floor plan holds: imports point down the layers, no room reaches into another's
private names, and no room or function outgrows what one reader can hold.

The layers are the README's "Architecture" section; a new module must be placed in
one here before its first test can pass, so the plan and the code cannot drift apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sandboxmgr"

# Top to bottom; a module may import its own layer and the ones below it.
LAYERS: dict[str, tuple[str, ...]] = {
    "front": ("cli", "fastrun", "ui", "__main__"),
    "jobs": ("farm", "farmjob", "farmcall", "farmreap", "farmresults", "farmpackage", "matrix", "runner", "project",
             "trust", "doctor", "package", "pkgsource", "pkgtest", "testcontrol", "rpmsource", "rpmpackage",
             "rpmpkgtest", "locking"),
    "images": ("images", "identity", "catalog", "resolve", "rootcache", "runcache", "builders", "families",
               "ocilayer", "ociexport", "ocisource", "ociunpack", "ociimport",
               "usage", "pkgcache", "df", "locked", "dpkgstatus", "rpmdb"),
    "sandboxes": ("sandbox", "config", "idmap", "live", "monitor", "join", "enter", "pid1", "execute", "mounts",
                  "mountexec", "tty", "users", "seccomp", "spec", "supervise", "ticket",
                  "libseccomp", "cgroups", "runcgroup", "toolroot"),
    "profiles": ("schema", "profilefields", "profile", "distros", "lockfile", "reports", "rpmreports"),
    "ground": ("store", "locks", "removal", "commands", "linux", "mountinfo", "inroot", "errors", "names", "progress",
               "record", "locations", "limits", "entry", "userns", "apparmor", "binfmt", "__init__"),
}
# The one import that points up, and why: the Distro base names the Builder type its family
# modules (images layer) provide. Those modules are plugins: distros.py loads them by name
# (distros.SHIPPED) and they register themselves, so profiles never import their code.
PLUGIN_SEAMS = {("distros", "builders")}
ORDER = list(LAYERS)
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    """Dotted module name below sandboxmgr (``families.debian``) -> its file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    room = module.partition(".")[0]
    for index, name in enumerate(ORDER):
        if room in LAYERS[name]:
            return index
    raise AssertionError(f"sandboxmgr/{module}: not in any layer of LAYERS (place it, and in the README)")


def _imports(path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    """(module below sandboxmgr, names taken from it, line) for every import of the package,
    lazy and type-only ones included: a lazy import is still a dependency."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.partition(".")[0] == "sandboxmgr":
            base = node.module.removeprefix("sandboxmgr").lstrip(".")
            names = tuple(alias.name for alias in node.names)
            if base:
                found.append((base, names, node.lineno))
            else:  # from sandboxmgr import linux, store: each name a module (or the package's own)
                found += [(name if name in MODULES else "__init__", (), node.lineno) for name in names]
        elif isinstance(node, ast.Import):
            found += [(alias.name.removeprefix("sandboxmgr."), (), node.lineno) for alias in node.names
                      if alias.name.startswith("sandboxmgr.")]
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module: str) -> None:
    own = _layer(module)
    for target, _, line in _imports(MODULES[module]):
        if (module, target.partition(".")[0]) in PLUGIN_SEAMS:
            continue
        assert _layer(target) >= own, (
            f"sandboxmgr/{module}:{line} imports {target} ({ORDER[_layer(target)]}) from the "
            f"{ORDER[own]} layer: imports point down only")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_room_imports_another_rooms_private_names(module: str) -> None:
    for target, names, line in _imports(MODULES[module]):
        if target.partition(".")[0] == module.partition(".")[0]:
            continue  # a package's own modules (families.debian from families) share its privates
        private = [name for name in names if name.startswith("_")]
        assert not private, f"sandboxmgr/{module}:{line} imports private {private} of {target}"


@pytest.mark.parametrize(("room", "forbidden"), [
    ("builders", ("store", "cli", "locks")),
    ("families", ("store", "cli", "locks")),
    ("enter", ("profile", "schema", "store")),
])
def test_rooms_that_must_not_know_each_other(room: str, forbidden: tuple[str, ...]) -> None:
    for module, path in MODULES.items():
        if module.partition(".")[0] != room:
            continue
        for target, _, line in _imports(path):
            assert target.partition(".")[0] not in forbidden, f"sandboxmgr/{module}:{line} imports {target}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_room_outgrows_one_reader(module: str) -> None:
    path = MODULES[module]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"sandboxmgr/{module} has {lines} lines: split it by noun"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, (
                f"sandboxmgr/{module}:{node.lineno} {node.name}() has {length} lines")


def test_the_layer_table_names_only_modules_that_exist() -> None:
    rooms = {module.partition(".")[0] for module in MODULES}
    stale = [name for names in LAYERS.values() for name in names if name not in rooms]
    # Placeholders for rooms the plan expects are not allowed to linger: the README lists these.
    assert not stale, f"LAYERS names modules that do not exist: {stale}"
