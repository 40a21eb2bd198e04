"""What the package tools print while they work, turned into progress with totals.

apt's and dpkg's output (apt-get's own in a build step, or mmdebstrap's, which passes it
through with ``--verbose``), dnf's, and the bootstrap tools' ``I:`` lines become phase lines
(``packages: downloading 34 packages (12.3MB)``) and :class:`~sandboxmgr.progress.Live`
counts (``packages: downloading 12/34, 4.1MB/12.3MB``, ``packages: unpacking 5/34 make``)
that only a terminal shows (sandboxmgr/progress.py).

The source is the text the tools print in the C locale the builds run them in, not apt's
status fd (``-o APT::Status-Fd``): mmdebstrap takes that fd for its own bar, which it draws
on a terminal only, and a build step's command gets stdin, stdout and stderr only. apt's
text carries the totals (``N newly installed``, ``Need to get``) and each download's size
(``Get:12 ... [396 kB]``); dpkg's says which package it unpacks and sets up.
"""

from __future__ import annotations

import re
import time

from sandboxmgr.errors import counted
from sandboxmgr.limits import format_bytes
from sandboxmgr.progress import Live, Progress

_SIZE = r"([\d.,]+ ?[kKMGT]?i?B)"
_SUMMARY = re.compile(r"^(\d+) upgraded, (\d+) newly installed, (?:(\d+) reinstalled, )?(?:(\d+) downgraded, )?")
_NEED = re.compile(rf"^Need to get {_SIZE}(?:/{_SIZE})? of archives")
_GET = re.compile(rf"^Get:(\d+) .*\[{_SIZE}\]\s*$")
_DPKG = re.compile(r"^(Unpacking|Setting up) ([^\s:]+)\S* \(")
_TRIGGERS = re.compile(r"^Processing triggers for ([^\s:]+)")


def size_bytes(text: str, binary: bool = False) -> int:
    """A size as the tools print it, in bytes: ``29.7 MB``, ``975 kB``, ``0 B`` (apt's,
    decimal); ``12 k``, ``1.2 MB`` (dnf 4's, binary: ``binary``), ``12.0 KiB`` (dnf 5's)."""
    match = re.fullmatch(r"([\d.,]+) ?([kKMGT]?)(i?)B?", text.strip())
    if match is None:
        return 0
    number, unit, iec = match.groups()
    base = 1024 if binary or iec else 1000
    return int(float(number.replace(",", "")) * base ** " KMGT".index(unit.upper() or " "))


class AptProgress:
    """apt-get's and dpkg's lines -> ``n/N`` counts with bytes. Each apt run's summary
    (``N newly installed``) starts a new count; dpkg's lines after it (mmdebstrap installs
    the essential packages with dpkg alone) count against it."""

    def __init__(self, progress: Progress, prefix: str) -> None:
        self.progress = progress
        self.prefix = prefix
        self._start(0)

    def _start(self, total: int) -> None:
        self.total = total
        self.need = 0  # bytes to download
        self.downloads = 0  # how many downloads, when all are (0: unknown)
        self.got = 0
        self.unpacked: set[str] = set()
        self.set_up: set[str] = set()

    def __call__(self, line: str) -> bool:
        """Take one line of output; whether it was one of apt's or dpkg's."""
        if (match := _SUMMARY.match(line)) is not None:
            self._start(sum(int(n) for n in match.groups() if n))
        elif (match := _NEED.match(line)) is not None:
            self._need(size_bytes(match.group(1)), size_bytes(match.group(2)) if match.group(2) else None)
        elif (match := _GET.match(line)) is not None:
            self.got += size_bytes(match.group(2))
            of = f"/{self.downloads}" if self.downloads else ""
            # apt rounds each size it prints: the last download brings the total it announced.
            got = self.need if int(match.group(1)) == self.downloads else min(self.got, self.need or self.got)
            sizes = f"{format_bytes(got, True)}/{format_bytes(self.need, True)}" if self.need else \
                format_bytes(got, True)
            self._live(f"downloading {match.group(1)}{of}, {sizes}")
        elif (match := _DPKG.match(line)) is not None:
            self._dpkg(match.group(1), match.group(2))
        elif (match := _TRIGGERS.match(line)) is not None:
            self._live(f"processing triggers for {match.group(1)}")
        else:
            return False
        return True

    def _need(self, need: int, whole: int | None) -> None:
        self.need = need
        packages = counted(self.total, "package")
        if need == 0:
            self.progress(f"{self.prefix}: {packages}, all in the cache")
        elif whole is None or whole == need:
            self.downloads = self.total
            self.progress(f"{self.prefix}: downloading {packages} ({format_bytes(need, True)})")
        else:
            self.progress(f"{self.prefix}: downloading {format_bytes(need, True)} of {packages} "
                          f"({format_bytes(whole - need, True)} in the cache)")

    def _dpkg(self, verb: str, package: str) -> None:
        done = self.unpacked if verb == "Unpacking" else self.set_up
        if not self.unpacked and not self.set_up:
            self.progress(f"{self.prefix}: installing" + (f" {counted(self.total, 'package')}" if self.total else ""))
        done.add(package)
        count = f"{min(len(done), self.total)}/{self.total}" if self.total else str(len(done))
        self._live(f"{verb.lower()} {count} {package}")

    def _live(self, text: str) -> None:
        self.progress(Live(f"{self.prefix}: {text}"))


_STEP = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) (\S+?)(\.\.\.)?(\s|$)")
# mmdebstrap's lines about what it was told (hooks with their shell commands, --skip) and
# its own bookkeeping: nothing a user acts on. The log keeps them.
_UNSAID = re.compile(r"^(skipping \S+ as requested|running (--\S+-hook|special hook)|chroot architecture |"
                     r"finding correct signed-by|automatically chosen format|using .* as tempdir)")


class BootstrapProgress:
    """debootstrap's and mmdebstrap's output -> progress; keeps their errors (``E:``)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.apt = AptProgress(progress, "bootstrap")
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []

    def __call__(self, line: str) -> None:
        if line.startswith(("E: ", "W: Failure")):
            self.errors.append(line[3:].strip())
        match = _STEP.match(line)
        if match and match.group(2) not in ("the", "required", "base"):
            # debootstrap's, one a package, with no total to count against.
            verb, package = match.group(1).lower(), match.group(2)
            self.counts[verb] = self.counts.get(verb, 0) + 1
            self.progress(Live(f"bootstrap: {verb} {package} ({self.counts[verb]})"))
        elif line.startswith("I: "):
            said = line[3:].strip().rstrip(".")
            if not _UNSAID.match(said) and "sh -c" not in said:
                self.progress(f"bootstrap: {said}")
        else:
            self.apt(line)


_DNF_DOWNLOAD = (re.compile(rf"^\((\d+)/(\d+)\): (\S+)\s.*\|\s*{_SIZE}\s+\S+\s*$"),  # dnf 4
                 re.compile(rf"^\[\s*(\d+)/(\d+)\] (\S+)\s+\d+%\s*\|.*\|\s*{_SIZE}\s*\|"))  # dnf 5
_DNF_STEP = (re.compile(r"^\s*(Installing|Upgrading|Reinstalling|Downgrading|Running scriptlet|Verifying|Cleanup)"
                        r"\s*:\s*([^\s:]+)\S*\s+(\d+)/(\d+)\s*$"),  # dnf 4: NAME n/N
             re.compile(r"^\[\s*(\d+)/(\d+)\] (Installing|Upgrading|Reinstalling|Downgrading|Verify package files|"
                        r"Running scriptlet|Verifying)\s*((?!\d+%)\S*)"))  # dnf 5: [n/N] VERB NAME
_DNF_TOTAL = re.compile(r"^Total download size: ([\d.,]+ ?[kKMGT]?i?B?)")
_DNF_SUMMARY = re.compile(r"^(Install|Upgrade|Reinstall|Downgrade)\s+(\d+) Packages?\s*$")  # dnf 4


class DnfProgress:
    """dnf's download and transaction lines (dnf 4's and dnf 5's) -> ``n/N`` with bytes."""

    def __init__(self, progress: Progress, prefix: str) -> None:
        self.progress = progress
        self.prefix = prefix
        self.need = 0
        self.got = 0
        self.phase = ""
        self.total = 0  # packages the transaction installs (0: not said)

    def __call__(self, line: str) -> bool:
        """Take one line of output; whether it was one of dnf's counts."""
        if line.startswith("Transaction Summary"):
            self.total = 0
        elif (match := _DNF_SUMMARY.match(line)) is not None:
            self.total += int(match.group(2))
            return True
        if (match := _DNF_TOTAL.match(line)) is not None:
            self.need = size_bytes(match.group(1), binary=True)
            self._phase("downloading", f"downloading {format_bytes(self.need, True)}")
            return True
        for pattern in _DNF_DOWNLOAD:
            if (match := pattern.match(line)) is not None:
                self.got += size_bytes(match.group(4), binary=True)
                sizes = format_bytes(self.got, True) + (f"/{format_bytes(self.need, True)}" if self.need else "")
                self._phase("downloading", f"downloading {counted(int(match.group(2)), 'package')}")
                self.progress(Live(f"{self.prefix}: downloading {match.group(1)}/{match.group(2)}, {sizes}"))
                return True
        dnf4, dnf5 = (pattern.match(line) for pattern in _DNF_STEP)
        if dnf4 is not None:
            verb, name, done, total = dnf4.groups()
        elif dnf5 is not None:
            done, total, verb, name = dnf5.groups()
        else:
            return False
        self._phase("installing", "installing" + (f" {counted(self.total, 'package')}" if self.total else ""))
        self.progress(Live(f"{self.prefix}: {verb.lower()} {done}/{total} {name}".rstrip()))
        return True

    def _phase(self, phase: str, text: str) -> None:
        if phase != self.phase:
            self.phase = phase
            self.progress(f"{self.prefix}: {text}")


class StepOutput:
    """A setup step's output: apt's or dnf's counts when it installs packages, else its
    latest line, on a terminal only, so that a long step never looks stuck."""

    # A step may print thousands of lines a second (a compiler's): its latest line is shown
    # at most this often, which is still more often than anyone reads it.
    EVERY = 0.1

    def __init__(self, progress: Progress, prefix: str) -> None:
        self.progress = progress
        self.prefix = prefix
        self.parsers = (AptProgress(progress, prefix), DnfProgress(progress, prefix))
        self.shown = -self.EVERY

    def __call__(self, line: str) -> None:
        if any(parser(line) for parser in self.parsers):
            return
        text = " ".join(line.split())  # no tabs or carriage returns in the status line
        now = time.monotonic()
        if text and now - self.shown >= self.EVERY:
            self.shown = now
            self.progress(Live(f"{self.prefix}: {text}"))
