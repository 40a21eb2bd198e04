"""The bench's working directory: sandboxmgr stores, profiles, peer roots and tarballs."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    BASE,
    BIG,
    EXTRA_PACKAGE,
    PEER_PACKAGES,
    PLUS_ONE,
    SEARCH_PATH,
    UNCONFINED,
    BenchError,
    log,
    remove_tree,
    run_checked,
    timed,
    which,
)


@dataclass
class Manager:
    """sandboxmgr with a store; the bench's own profiles are in ``configs``."""

    exe: Path
    store: Path
    configs: Path
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        return [str(self.exe), "--store", str(self.store), *args]

    def call(self, *args: str, log_file: Path | None = None) -> str:
        return run_checked(self.argv(*args), log_file=log_file, env=self.env, what=f"sandboxmgr {' '.join(args)}")

    def timed(self, *args: str, log_file: Path | None = None) -> float:
        return timed(self.argv(*args), log_file=log_file, env=self.env)

    def images(self) -> list[dict[str, Any]]:
        if not self.store.is_dir():
            return []
        data = json.loads(self.call("images", "--json"))
        return [dict(row) for row in data]

    def image(self, profile: str) -> dict[str, Any]:
        rows = [row for row in self.images() if row.get("profile") == profile and not row.get("outdated")]
        if not rows:
            raise BenchError(f"no image of {profile} in {self.store}")
        return rows[-1]

    def sandboxes(self) -> list[str]:
        if not self.store.is_dir():
            return []
        return [str(row["name"]) for row in json.loads(self.call("ls", "--json"))]

    def build(self, profile: str, log_file: Path) -> dict[str, Any]:
        self.call("build", self.ref(profile), log_file=log_file)
        return self.image(profile)

    def ref(self, profile: str) -> str:
        """How a profile is named on the command line: the shipped one by name, the bench's own by the path
        of its file (as `--configs` would, but `--configs` also turns off `run`'s fast path)."""
        return profile if profile == BASE else str(self.configs / f"{profile}.yaml")

    def teardown(self) -> None:
        """Remove every sandbox and image of this store with sandboxmgr itself, then the store; a sandbox a
        failed benchmark left running is stopped by ``rm -f``."""
        if not self.store.is_dir():
            return
        names = self.sandboxes()
        if names:
            self.call("-q", "rm", "-f", *names)
        keys = [str(row["key"]) for row in self.images()]
        if keys:
            self.call("-q", "rmi", *keys)
        remove_tree(self.store)


def layer_dirs(image: dict[str, Any]) -> list[Path]:
    """The image's layer directories, bottom first."""
    return [Path(str(layer["path"])) for layer in image.get("layers", [])]



@dataclass(frozen=True)
class Rounds:
    entry: int
    create: int
    builds: int
    loop: int
    importtime: int


    def every(self, count: int) -> Rounds:
        """The same count for every benchmark (``--rounds``): the loop's runs and the import profile's too."""
        return dataclasses.replace(self, entry=count, create=count, builds=count, loop=count, importtime=count)


FULL = Rounds(entry=30, create=10, builds=3, loop=50, importtime=5)
QUICK = Rounds(entry=5, create=2, builds=1, loop=10, importtime=2)


class Bench:
    """The working directory and what several benchmarks share: the main store, its images, the peers'
    private root, tarballs, the peer tools that could not be installed."""

    def __init__(self, exe: Path, python: Sequence[str], work: Path, rounds: Rounds) -> None:
        self.exe = exe
        self.python = list(python)  # sandboxmgr's interpreter and the flags of its #! line
        self.work = work
        self.rounds = rounds
        # No SANDBOXMGR_* settings of the caller's; and bytecode is written as in a normal install
        # (with PYTHONDONTWRITEBYTECODE, a tool whose sources changed compiles them on every run).
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("SANDBOXMGR_") and k != "PYTHONDONTWRITEBYTECODE"}
        self.env["PATH"] = SEARCH_PATH
        self.configs = work / "configs"
        self.logs = work / "logs"
        self.scratch = work / "scratch"
        for directory in (self.configs, self.logs, self.scratch):
            directory.mkdir()
        self.main = self.manager(work / "store")
        self.managers: list[Manager] = [self.main]
        self.peer_root: Path | None = None
        self.tars: dict[str, tuple[Path, int]] = {}
        self.missing: dict[str, str] = {}
        self._write_profiles()

    def manager(self, store: Path) -> Manager:
        return Manager(self.exe, store, self.configs, self.env)

    def _write_profiles(self) -> None:
        (self.configs / f"{BIG}.yaml").write_text(
            f"description: bench - Debian 12 minbase with build-essential (the bigger image)\n"
            f"extends: {BASE}\npackages: [build-essential]\n")
        (self.configs / f"{PLUS_ONE}.yaml").write_text(
            f"description: bench - Debian 12 minbase plus one package\n"
            f"extends: {BASE}\npackages: [{EXTRA_PACKAGE}]\n")
        # A runtime setting only: the same image as BASE, and `run` takes the same fast path.
        (self.configs / f"{UNCONFINED}.yaml").write_text(
            f"description: bench - Debian 12 minbase, no seccomp filter\nextends: {BASE}\nseccomp: unconfined\n")

    # -- setup shared by several benchmarks
    def ensure_tools(self, commands: Sequence[str]) -> None:
        """Install the peers that are missing (apt-get); a failure makes them n/a, not fatal."""
        missing = [c for c in commands if which(c) is None and c not in self.missing]
        if not missing:
            return
        packages = sorted({PEER_PACKAGES[c] for c in missing})
        log(f"installing {' '.join(packages)} (apt-get)")
        env = dict(self.env, DEBIAN_FRONTEND="noninteractive")
        try:
            run_checked(["apt-get", "update", "-q"], env=env)
            run_checked(["apt-get", "install", "-y", "-q", *packages], env=env)
        except BenchError as exc:
            for command in missing:
                self.missing[command] = f"could not install {PEER_PACKAGES[command]}: {exc}"
            return
        for command in missing:
            if which(command) is None:
                self.missing[command] = f"{PEER_PACKAGES[command]} installed but no {command} on PATH"

    def image(self, profile: str) -> dict[str, Any]:
        """The image of ``profile`` in the main store, built (untimed) if needed."""
        existing = [row for row in self.main.images() if row.get("profile") == profile]
        if existing:
            return existing[-1]
        log(f"building {profile} in the bench store (untimed setup)")
        try:
            return self.main.build(profile, self.logs / f"setup-{profile}.log")
        except BenchError as exc:  # a mirror hiccup: once more
            log(f"{exc}; trying again")
            return self.main.build(profile, self.logs / f"setup-{profile}.log")

    def rootfs_copy(self) -> Path:
        """A private copy of BASE's bottom layer for the peers, so they never write into the store."""
        if self.peer_root is None:
            bottom = layer_dirs(self.image(BASE))[0] / "diff"
            target = self.work / "rootfs"
            run_checked(["cp", "-a", bottom, target])
            self.peer_root = target
        return self.peer_root

    def rootfs_tar(self, profile: str) -> tuple[Path, int]:
        """An uncompressed tarball of the image's merged root (made once), and its size."""
        if profile in self.tars:
            return self.tars[profile]
        layers = [d / "diff" for d in layer_dirs(self.image(profile))]
        tar = self.work / f"{profile}.tar"
        if len(layers) == 1:
            run_checked(["tar", "--numeric-owner", "-C", layers[0], "-cf", tar, "."])
        else:
            # The merged view, mounted read-only in a mount namespace of its own (gone when it exits).
            point = self.scratch / f"merged-{profile}"
            point.mkdir()
            lower = ":".join(str(d) for d in reversed(layers))
            script = ('mount -t overlay -o "ro,lowerdir=$1" overlay "$2" && '
                      'tar --numeric-owner -C "$2" -cf "$3" .')
            run_checked(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", lower, point, tar])
            point.rmdir()
        self.tars[profile] = (tar, tar.stat().st_size)
        return self.tars[profile]

    def teardown(self, keep: bool) -> None:
        for manager in self.managers:
            try:
                manager.teardown()
            except BenchError as exc:
                log(f"cleanup of {manager.store}: {exc}")
        if keep:
            log(f"kept {self.work}")
            return
        remove_tree(self.work, unmount=False)

