"""Every sandbox's /etc/hostname, /etc/hosts and /etc/resolv.conf: its own, written per sandbox,
never into the image (as Docker writes them per container); the image itself holds no build machine's name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CLI, ConcurrentBuild

pytestmark = [pytest.mark.root, pytest.mark.network]

SHOW = ("cat /etc/hostname; echo ==; getent hosts localhost $(hostname) || echo unresolved; echo ==; "
        "cat /etc/resolv.conf")


def image_etc(cli: CLI, profile: str) -> dict[str, bytes | None]:
    """The image's own /etc files, as its layers hold them (top layer first)."""
    (image,) = [row for row in json.loads(cli.ok("images", "--json").out) if row["profile"] == profile
                and not row["outdated"]]
    found: dict[str, bytes | None] = {}
    for name in ("hostname", "hosts", "resolv.conf"):
        files = [Path(layer["path"]) / "diff" / "etc" / name for layer in reversed(image["layers"])]
        found[name] = next((f.read_bytes() for f in files if f.exists()), None)
    return found


def test_a_run_has_its_own_names_and_the_hosts_resolver(cli: CLI, bookworm: ConcurrentBuild) -> None:
    before = image_etc(cli, bookworm.profile)
    hostname, hosts, resolv = cli.ok("run", "--hostname", "web-1", bookworm.profile, "sh", "-c", SHOW).out.split("==\n")
    assert hostname == "web-1\n"
    assert "localhost" in hosts and "web-1" in hosts and "unresolved" not in hosts, hosts
    assert resolv == Path("/etc/resolv.conf").read_text()
    # Root inside may add a name, as under Docker; the image never changes.
    out = cli.ok("run", bookworm.profile, "sh", "-c", "echo '192.0.2.7 db' >> /etc/hosts && getent hosts db").out
    assert out.split() == ["192.0.2.7", "db"]
    assert image_etc(cli, bookworm.profile) == before
    # Nothing in them is a program: no setuid file, no executable, no device node.
    mounts = cli.ok("run", bookworm.profile, "grep", " /etc/hosts ", "/proc/self/mountinfo").out.split()
    assert {"nosuid", "noexec", "nodev"} <= set(mounts[5].split(",")), mounts


def test_without_a_network_there_is_no_resolver_but_localhost_resolves(cli: CLI, bookworm: ConcurrentBuild) -> None:
    hostname, hosts, resolv = cli.ok("run", "--network", "none", bookworm.profile, "sh", "-c", SHOW).out.split("==\n")
    assert hostname == f"{bookworm.profile}\n"
    assert "127.0.0.1" in hosts or "::1" in hosts
    assert bookworm.profile in hosts and "unresolved" not in hosts, hosts
    assert resolv == "", "a sandbox without a network was given a resolver (the build host's)"


def test_a_named_sandbox_keeps_its_hosts_entries_and_follows_the_hosts_resolver(cli: CLI,
                                                                                 bookworm: ConcurrentBuild) -> None:
    cli.ok("create", bookworm.profile, "--name", "named-etc")
    try:
        assert cli.ok("exec", "named-etc", "cat", "/etc/hostname").out == "named-etc\n"
        cli.ok("exec", "named-etc", "sh", "-c", "echo '192.0.2.8 cache' >> /etc/hosts")
        assert cli.ok("exec", "named-etc", "getent", "hosts", "cache").out.split() == ["192.0.2.8", "cache"]
        # The host's resolver is taken at every start, whatever the sandbox wrote into its copy.
        cli.ok("exec", "named-etc", "sh", "-c", "echo 'nameserver 192.0.2.53' > /etc/resolv.conf")
        assert cli.ok("exec", "named-etc", "cat", "/etc/resolv.conf").out == Path("/etc/resolv.conf").read_text()
        # The files are mount points: root inside cannot swap one for a link to somewhere else.
        result = cli("exec", "named-etc", "sh", "-c", "rm /etc/hosts || mv /etc/hostname /etc/x")
        assert result.code != 0 and "busy" in result.err.lower(), str(result)
    finally:
        cli.ok("rm", "named-etc")


def test_the_image_does_not_hold_the_build_machines_name(cli: CLI, bookworm: ConcurrentBuild) -> None:
    import socket

    held = image_etc(cli, bookworm.profile)["hostname"]
    assert held == b"localhost\n", held  # the bootstrap copied the build machine's; it is dropped
    assert socket.gethostname().encode() + b"\n" != held
