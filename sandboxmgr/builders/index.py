"""The package index a bootstrap would install from: fetching its signed summary, and
digests of it and of the host tools (a family's ``index_state``, rootcache.py's key).

Fetching is plain urllib with a size limit and a deadline, and it tells "the server
answered without it" (None) from "the network does not get there" (:class:`Unreachable`):
offline, a kept root may stand in for a bootstrap that cannot reach its mirror.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import socket
import time
import urllib.error
import urllib.request

from sandboxmgr import commands

_FETCH_TIMEOUT = 15  # per read
_FETCH_DEADLINE = 300  # for the whole body
_FETCH_LIMIT = 16 << 20  # a Release file, a repomd.xml: a few hundred kB


class Unreachable(Exception):
    """The network does not reach the mirror (no route, no name resolution, refused, timed out)."""


_NETWORK_ERRNOS = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN)


def _network_failure(reason: object) -> bool:
    return isinstance(reason, (socket.gaierror, ConnectionError, TimeoutError)) or (
        isinstance(reason, OSError) and reason.errno in _NETWORK_ERRNOS)


def fetch(url: str, limit: int = _FETCH_LIMIT) -> bytes | None:
    """The body of ``url`` (http, https or file). None when it cannot be had although the
    server answered (404, 503, a TLS certificate Python does not trust, a missing file), or
    when it is longer than ``limit`` bytes; Unreachable when the network does not get there,
    or not all of it within _FETCH_DEADLINE seconds (a mirror that drips)."""
    deadline = time.monotonic() + _FETCH_DEADLINE
    try:
        with urllib.request.urlopen(url, timeout=_FETCH_TIMEOUT) as response:  # noqa: S310 - the profile's mirror
            chunks: list[bytes] = []
            size = 0
            while chunk := response.read(1 << 16):
                size += len(chunk)
                if size > limit:
                    return None
                if time.monotonic() > deadline:
                    raise Unreachable(f"{url}: not received within {_FETCH_DEADLINE} s")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as exc:
        if _network_failure(exc.reason):
            raise Unreachable(f"{url}: {exc.reason}") from None
        return None
    except OSError as exc:
        if _network_failure(exc):
            raise Unreachable(f"{url}: {exc}") from None
        return None
    except ValueError:
        return None


def digest(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@functools.cache
def package_version(package: str) -> str | None:
    """The installed version of a host package (dpkg, else rpm), or None."""
    for argv in (["dpkg-query", "-W", "-f=${Version}", package],
                 ["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", package]):
        result = commands.capture(argv)
        version = result.stdout.decode(errors="replace").strip() if result is not None else ""
        if result is not None and result.returncode == 0 and version:
            return f"{package} {version}"
    return None

