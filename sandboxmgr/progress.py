"""What a build says while it works: phase lines, and live counts for a terminal only.

A build reports through one callable (:data:`Progress`) taking a message. Most messages
name a phase (``packages: downloading 34 packages (12.3MB)``) and every display prints
them. A :class:`Live` message is an update within a phase (``packages: downloading 12/34,
4.1MB/12.3MB``): a terminal redraws its status line with it, and a log off a terminal
leaves it out, so a CI log gets one line per phase, never one per package or percent.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


class Live(str):
    """A message that updates the current phase (a count, a package's name): shown on a
    terminal, left out of a log."""

    __slots__ = ()
