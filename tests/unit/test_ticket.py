"""The join ticket of a running sandbox (ticket.py): what it holds, when it is refused, and
that exec's fast path imports none of what it exists to avoid."""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxmgr import ticket
from sandboxmgr.join import Holder
from sandboxmgr.names import NAME_RE
from sandboxmgr.spec import DEFAULT_CAPABILITIES, EnterSpec
from sandboxmgr.store import SandboxRecord, Store


def _spec() -> EnterSpec:
    return EnterSpec(root=None, env={"PATH": "/bin", "A": "b"}, workdir="/src", hostname="box", user="builder",
                     network="none", tty=False, isolation="pivot_root", no_new_privs=False)


def test_a_ticket_gives_back_what_join_spec_made_with_the_commands_argv(tmp_path: Path) -> None:
    ticket.write(tmp_path, Holder(41, 99, ()), _spec(), b"BPF", general=False)
    assert os.stat(tmp_path / ticket.TICKET_FILE).st_mode & 0o777 == 0o600
    read = ticket.read(str(tmp_path))
    assert read is not None and read["pid"] == 41 and read["start_time"] == 99 and read["seccomp"] == b"BPF"
    spec = ticket._spec(read, ("make", "-j2"), tty=True)
    assert spec.argv == ("make", "-j2") and spec.tty is True
    assert dict(spec.env) == {"PATH": "/bin", "A": "b"}
    assert (spec.workdir, spec.hostname, spec.user, spec.network) == ("/src", "box", "builder", "none")
    assert spec.capabilities == DEFAULT_CAPABILITIES and spec.no_new_privs is False and spec.limits is None


@pytest.mark.parametrize("spoil", ["general", "format", "python", "garbage", "mode", "link", "missing"])
def test_a_ticket_that_is_not_one_for_this_code_sends_commands_the_general_way(tmp_path: Path, spoil: str) -> None:
    path = tmp_path / ticket.TICKET_FILE
    ticket.write(tmp_path, Holder(41, 99, ()), _spec(), b"BPF", general=spoil == "general")
    assert spoil == "general" or ticket.read(str(tmp_path)) is not None
    data = marshal.loads(path.read_bytes())
    if spoil in ("format", "python"):
        data |= {"format": ticket.FORMAT + 1} if spoil == "format" else {"python": [2, 7]}
        path.write_bytes(marshal.dumps(data))
    elif spoil == "garbage":
        path.write_bytes(b"\xff" * 40)
    elif spoil == "mode":
        path.chmod(0o666)  # not as write() leaves it: someone else's
    elif spoil == "link":
        (tmp_path / "elsewhere").write_bytes(path.read_bytes())
        path.unlink()
        path.symlink_to(tmp_path / "elsewhere")
    elif spoil == "missing":
        path.unlink()
    assert ticket.read(str(tmp_path)) is None


def test_plain_names_are_the_names_check_name_takes() -> None:
    for name in ("box", "a", "b-1.2_x", "0", "x" * 128, "", "Box", "-x", ".x", "a/b", "a b", "x" * 129, "ü", "a\n"):
        assert ticket.plain_name(name) == bool(NAME_RE.fullmatch(name) and len(name) <= 128), name


def test_the_store_layout_it_spells_is_the_stores(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.sandboxes_dir == tmp_path / ticket.SANDBOXES_DIR
    assert store.locks_dir == tmp_path / ticket.LOCKS_DIR


def test_the_joining_fast_path_imports_neither_json_nor_pathlib_nor_the_config_machinery() -> None:
    # What exec's fast path imports up to the join (fastrun's modules, then ticket's): the
    # imports it exists to avoid must stay out, or the path is no faster than the general one.
    code = ("import sys; from sandboxmgr import entry, fastrun, ticket; from sandboxmgr.locations import "
            "default_store_text; default_store_text();"
            "print(' '.join(sorted(m for m in sys.modules if m in ('json', 'pathlib', 're', 'urllib.parse', "
            "'sandboxmgr.config', 'sandboxmgr.store', 'sandboxmgr.live', 'sandboxmgr.enter', 'sandboxmgr.mounts', "
            "'typing', 'dataclasses', 'inspect'))))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": os.pathsep.join(sys.path), "PATH": os.environ.get("PATH", "")}).stdout
    assert out.split() == []


def test_a_start_whose_ticket_cannot_be_written_leaves_none_of_an_earlier_start(tmp_path: Path) -> None:
    # The earlier start's ticket names a PID 1 that is gone; a pid and start time seen again
    # (after a reboot) must not make it this start's, whose settings it may not say.
    store = Store(tmp_path / "store")
    record = SandboxRecord("box", tmp_path, {"settings": {"seccomp": "unconfined"}})
    ticket.write(tmp_path, Holder(41, 99, ()), _spec(), None, general=False)
    (tmp_path / (ticket.TICKET_FILE + ".tmp")).mkdir()  # what makes this start's write fail
    ticket.issue(store, record, Holder(42, 100, ()), auto_stop=False)
    assert not (tmp_path / ticket.TICKET_FILE).exists() and ticket.read(str(tmp_path)) is None


@pytest.mark.parametrize("spoil", ["capability", "unhashable", "env", "pid", "seccomp", "upgraded", "no filter"])
def test_a_ticket_never_gives_more_than_the_general_path_would(tmp_path: Path, spoil: str) -> None:
    # write() only ever writes join_spec's capabilities (Docker's default set): a file that names
    # CAP_SYS_ADMIN (21), or holds values of other types, is not a ticket this code wrote.
    path = tmp_path / ticket.TICKET_FILE
    ticket.write(tmp_path, Holder(41, 99, ()), _spec(), b"BPF", general=False)
    data = marshal.loads(path.read_bytes())
    data |= {"capability": {"capabilities": [*data["capabilities"], 21]},
             "unhashable": {"capabilities": [[0]]},
             "env": {"env": {"PATH": b"/bin"}},
             "pid": {"pid": "41"},
             "seccomp": {"seccomp": "BPF"},
             # Written by a version whose default policy was another (before an upgrade), or
             # without the filter its policy names.
             "upgraded": {"policy": str(data.get("policy")).replace("clone3", "clone4")},
             "no filter": {"seccomp": None}}[spoil]
    path.write_bytes(marshal.dumps(data))
    assert ticket.read(str(tmp_path)) is None
