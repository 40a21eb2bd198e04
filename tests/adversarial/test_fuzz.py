"""Attack 8: bad input. Hypothesis throws YAML and names at the profile loader; a few go
through the real CLI.

Every case must end in a clean ProfileError (which the CLI prints as one line and
a hint) or a valid Profile - never another exception, never a traceback, never a
file written anywhere (the loader is read-only, and `!!python/...` tags must not
run anything).
"""

from __future__ import annotations

import contextlib
import math
import os
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandboxmgr.errors import ProfileError, SandboxError
from sandboxmgr.identity import image_key
from sandboxmgr.names import check_name
from sandboxmgr.profile import Profile, ProfileRegistry
from sandboxmgr.profilefields import TOP_KEYS
from tests.conftest import CLI, need_root

pytestmark = [pytest.mark.adversarial]

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# What an attacker (or a typo) puts in a profile.
TAGGED = [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:os.system ['touch {marker}']",
    "!!python/name:os.system",
    "!!python/object:__main__.X {{a: 1}}",
    "!!binary aGVsbG8=",
    "!!set {{a, b}}",
    "!!timestamp 2001-12-14",
    "&a [*a]",
    "*undefined",
    "{{a: &x 1, b: *x}}",
]
NASTY_TEXT = st.sampled_from([
    "", ".", "..", "../../etc", "/etc/passwd", "a/b", ".hidden", "-rf", "a\x00b", "\x00", "~root",
    "${HOME}", "$(touch /tmp/x)", "`id`", "x" * 5000, "é", "\u202e", "a:b", "a,b", "a b", "\n", "\t",
    "lowerdir=/", "file:///etc/shadow", "http://[::1", "9" * 400, "1e400", "-1", "0", ".nan", ".inf",
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2 ** 128), max_value=2 ** 128),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40), NASTY_TEXT,
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=10), NASTY_TEXT), inner, max_size=4),
), max_leaves=12)
KEYS = st.one_of(st.sampled_from(TOP_KEYS), st.sampled_from(["limits", "bootstrap", "mounts", "env", "packges"]),
                 st.text(max_size=12))
LIMITS = st.dictionaries(st.sampled_from(["memory", "pids", "cpus", "swap"]), st.one_of(
    SCALARS, st.sampled_from(["512M", "1g", "16M", "15M", "1.5GiB", "0", "-5M", "1e3M", "9" * 300 + "G"])),
    max_size=4)


def listing(top: Path) -> set[str]:
    return {str(Path(d) / n) for d, dirs, files in os.walk(top) for n in dirs + files}


def load(configs: Path, text: str) -> Profile | ProfileError:
    (configs / "fuzz.yaml").write_text(text, errors="surrogateescape")
    try:
        return ProfileRegistry([configs]).load("fuzz")
    except ProfileError as exc:
        assert exc.message and "Traceback" not in exc.message
        return exc


@pytest.fixture
def sandbox_dirs(tmp_path: Path) -> tuple[Path, Path]:
    configs = tmp_path / "configs"
    configs.mkdir()
    os.chdir(tmp_path)  # anything written relative to the working directory would show here
    return configs, tmp_path


def check_nothing_written(top: Path, before: set[str], marker: Path) -> None:
    assert listing(top) - before <= {str(top / "configs" / "fuzz.yaml")}
    assert not marker.exists()


@FUZZ
@given(text=st.text(max_size=300))
def test_random_text_is_a_profile_or_a_clean_error(sandbox_dirs: tuple[Path, Path], text: str) -> None:
    configs, top = sandbox_dirs
    before = listing(top)
    load(configs, text)
    check_nothing_written(top, before, top / "marker")


@FUZZ
@given(data=st.dictionaries(KEYS, VALUES, max_size=8), limits=st.none() | LIMITS,
       base=st.sampled_from(["", "distro: debian\nrelease: bookworm\n", "extends: debian-bookworm\n"]))
def test_wrong_types_huge_values_and_odd_names_are_clean_errors(sandbox_dirs: tuple[Path, Path],
                                                                data: dict[str, Any], limits: Any,
                                                                base: str) -> None:
    configs, top = sandbox_dirs
    if limits is not None:
        data["limits"] = limits
    before = listing(top)
    try:
        body = yaml.safe_dump(data, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return  # not representable as YAML at all
    result = load(configs, base + body)
    if isinstance(result, Profile):
        # Whatever loaded is sane: the limits in it are the ones the kernel can take.
        assert result.limits.memory is None or result.limits.memory >= 16 << 20
        assert result.limits.cpus is None or math.isfinite(result.limits.cpus)
        image_key(result)  # the image inputs of anything valid can be computed
    check_nothing_written(top, before, top / "marker")


@FUZZ
@given(tag=st.sampled_from(TAGGED), key=KEYS, nested=st.booleans())
def test_python_tags_and_aliases_never_run_anything(sandbox_dirs: tuple[Path, Path], tag: str, key: str,
                                                    nested: bool) -> None:
    configs, top = sandbox_dirs
    marker = top / "marker"
    value = tag.format(marker=marker)
    text = f"distro: debian\nrelease: bookworm\n{key!r}: {{inner: {value}}}\n" if nested else \
        f"distro: debian\nrelease: bookworm\n{key!r}: {value}\n"
    before = listing(top)
    load(configs, text)
    check_nothing_written(top, before, marker)


@FUZZ
@given(name=st.one_of(NASTY_TEXT, st.text(max_size=60), st.text(alphabet=string.ascii_lowercase + "./-_", max_size=20)))
def test_names_that_could_escape_a_directory_are_refused(sandbox_dirs: tuple[Path, Path], name: str) -> None:
    configs, top = sandbox_dirs
    before = listing(top)
    try:
        check_name(name, "sandbox name")
    except ProfileError:
        pass
    else:
        assert "/" not in name and not name.startswith(".") and "\x00" not in name and len(name) <= 128
    with contextlib.suppress(ProfileError):
        ProfileRegistry([configs]).resolve(name)
    # extends: with the same name, through a file.
    load(configs, f"extends: {yaml.safe_dump(name, allow_unicode=True).splitlines()[0]}\n")
    check_nothing_written(top, before, top / "marker")


def test_an_alias_bomb_is_refused_quickly(sandbox_dirs: tuple[Path, Path]) -> None:
    """Nine levels of nine aliases: a billion strings if expanded."""
    configs, _ = sandbox_dirs
    lines = ["distro: debian", "release: bookworm", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    lines.append("packages: *a9")
    result = load(configs, "\n".join(lines) + "\n")
    assert isinstance(result, ProfileError) and "YAML nodes" in result.message


BAD_NAMES = ["../../etc", "a/b", ".hidden", "-x", "UPPER", "a b", "x" * 200, "..", "/abs", "é"]


@pytest.mark.root
def test_the_cli_refuses_bad_names_in_one_line_and_writes_nothing_outside_the_store(tmp_path: Path) -> None:
    need_root()
    cli = CLI(tmp_path / "store", tmp_path / "configs")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "bad.yaml").write_text("distro: debian\nrelease: [1, 2]\nlimits: {memory: lots}\n")
    before = listing(tmp_path)
    for name in BAD_NAMES:
        for args in (("create", "debian", "--name", name), ("run", "--name", name, "debian", "true"),
                     ("exec", name, "true"), ("rm", name), ("build", name), ("rmi", name)):
            result = cli(*args)
            assert result.code == 125, (args, str(result))  # a usage error, as every one is
            assert result.err.startswith("sandboxmgr: error: "), (args, str(result))
            assert "Traceback" not in result.err and "internal error" not in result.err, (args, str(result))
    invalid = cli("build", "bad")
    assert invalid.code == 125 and "limits.memory: 'lots' is not a size" in invalid.err, invalid.err
    assert "release: must be a string" in invalid.err
    created = listing(tmp_path) - before
    assert all(path.startswith(str(tmp_path / "store")) for path in created), sorted(created)


def test_sandbox_errors_are_what_the_cli_turns_into_one_line() -> None:
    """The contract the fuzz tests rely on: ProfileError is a SandboxError (exit 125)."""
    assert issubclass(ProfileError, SandboxError)
    assert ProfileError("x").exit_code == 125


# --- profile values that form paths ----------------------------------------------------------------

PATH_TEXT = st.one_of(
    NASTY_TEXT, st.text(max_size=20), st.text(alphabet="./-_~+ab01\n", max_size=20),
    st.sampled_from(["../../../../tmp/x", "..", "/", "a/../../b", "bookworm/../../x", "x\n", "../" * 12 + "tmp"]),
)


@FUZZ
@given(distro=st.one_of(st.sampled_from(["debian", "ubuntu", "tinydistro"]), PATH_TEXT), release=PATH_TEXT,
       arch=st.none() | PATH_TEXT, components=st.none() | st.lists(PATH_TEXT, max_size=3), repo=PATH_TEXT,
       hostname=st.none() | PATH_TEXT)
def test_no_profile_value_makes_a_path_outside_the_store(sandbox_dirs: tuple[Path, Path], distro: str,
                                                         release: str, arch: str | None,
                                                         components: list[str] | None, repo: str,
                                                         hostname: str | None) -> None:
    """The fields that name the package cache (STORE/cache/DISTRO-RELEASE-ARCH) and its kept roots,
    whatever they hold: a directory is made, if at all, inside the store's cache/."""
    from sandboxmgr import distros, images, rootcache
    from sandboxmgr.store import Store

    configs, top = sandbox_dirs
    fields: dict[str, Any] = {"distro": distro, "release": release}
    if arch is not None:
        fields["arch"] = arch
    known = distros.get(distro, None)
    if known is None or known.family == "rpm":
        fields["bootstrap"] = {"method": "dnf"}
        fields["repositories"] = [{"name": repo, "baseurl": "file:///srv/r", "gpgkey": "file:///srv/k"}]
    elif components is not None:
        fields["bootstrap"] = {"components": components}
    if hostname is not None:
        fields["hostname"] = hostname
    # Deep, so that a few '..' too many would still land (visibly) in this test's directory.
    store = Store(top / "a" / "b" / "c" / "d" / "e" / "f" / "store")
    before = listing(top)
    result = load(configs, yaml.safe_dump(fields, allow_unicode=True))
    if isinstance(result, Profile):
        key = images.cache_key(result)
        cache = Path(os.path.realpath(store.cache_dir / key))
        assert cache.parent == store.cache_dir and "/" not in key and key not in (".", ".."), key
        images.package_caches(store, result)
        rootcache.roots_dir(store, key).mkdir(parents=True, exist_ok=True)
    created = listing(top) - before - {str(configs / "fuzz.yaml")}
    inside = str(store.root) + "/"
    assert all(path.startswith(inside) or inside.startswith(path + "/") for path in created), sorted(created)


@pytest.mark.root
def test_the_cli_refuses_names_and_host_names_with_a_trailing_newline(tiny: CLI) -> None:
    for args in (("create", "tiny", "--name", "x\n"), ("run", "--name", "x\n", "tiny", "true"),
                 ("run", "--hostname", "x\n", "tiny", "true"), ("run", "--hostname", "x\n", "--name", "nl1", "tiny",
                                                                "true"),
                 ("create", "tiny", "--name", "nl2", "--hostname", "box\n"), ("exec", "x\n", "true"),
                 ("rm", "x\n"), ("build", "tiny\n"), ("run", "tiny\n", "true")):
        result = tiny(*args)
        assert result.code == 125, (args, str(result))
        assert result.err.startswith("sandboxmgr: error: ") and "Traceback" not in result.err, (args, str(result))
        assert "internal error" not in result.err, (args, str(result))
    names = set(os.listdir(tiny.store / "sandboxes"))
    assert not names & {"x\n", "nl1", "nl2"}, names


@pytest.mark.root
@pytest.mark.parametrize(("args", "said", "hint"), [
    (("run", "debian", ""), "the command to run is an empty string ('')", "or none at all for the image's shell"),
    (("exec", "box", ""), "the command to run is an empty string ('')", "or none at all for the image's shell"),
    (("--store", "/proc/nope", "run", "debian", "true"), "cannot create the store at /proc/nope",
     "point --store (or SANDBOXMGR_STORE) at a directory you can create"),
    (("--store", "/etc/passwd/store", "build", "debian"), "cannot create the store at /etc/passwd/store",
     "point --store (or SANDBOXMGR_STORE) at a directory you can create"),
    (("run", "-v", "/tmp:/proc", "debian", "true"), "cannot bind-mount onto /proc", "outside /proc"),
])
def test_odd_input_is_one_line_with_a_hint_and_builds_nothing(tmp_path: Path, args: tuple[str, ...], said: str,
                                                               hint: str) -> None:
    need_root()
    cli = CLI(tmp_path / "store")
    result = cli(*args)
    assert result.code == 125, str(result)
    assert result.err.startswith(f"sandboxmgr: error: {said}"), str(result)
    assert "hint: " in result.err and hint in result.err, str(result)
    assert "internal error" not in result.err and "Traceback" not in result.err
    assert not (tmp_path / "store" / "images").exists() or not any((tmp_path / "store" / "images").iterdir())
