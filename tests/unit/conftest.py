"""Helpers shared by the unit tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxmgr import userns
from tests.conftest import missing


def made_up_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, apparmor_restricts: bool) -> Path:
    """A made-up host for userns.py: its sysctls (user namespaces allowed; AppArmor's
    restriction on or off), and the user "me"'s subuid and subgid ranges, in ``tmp_path``."""
    for name, text in (("max", "15000\n"), ("apparmor", "1\n" if apparmor_restricts else "0\n"),
                       ("subuid", "me:100000:65536\n"), ("subgid", "me:100000:65536\n")):
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(userns, "MAX_USER_NAMESPACES", str(tmp_path / "max"))
    monkeypatch.setattr(userns, "APPARMOR_RESTRICT", str(tmp_path / "apparmor"))
    monkeypatch.setattr(userns, "SUBUID", str(tmp_path / "subuid"))
    monkeypatch.setattr(userns, "SUBGID", str(tmp_path / "subgid"))
    monkeypatch.setattr(userns, "user_name", lambda uid: "me")
    return tmp_path


# A redis-server on a free loopback port with a password: the farm's tests that need no root.


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        missing("no redis-server (make deps installs it)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("redis") / "redis.log"
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "unit",
                             "--save", "", "--appendonly", "no"], stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield f"redis://:unit@127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def client(url: str) -> Any:
    import redis

    found = redis.Redis.from_url(url)
    found.flushdb()
    return found
