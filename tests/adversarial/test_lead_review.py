"""An attacker's review of the lead's changes of this session: the rootless entry in two steps
(userns.begin/Pending.finish), the bounded reads of user-named files (linux.regular_bytes),
and ``import --platform``. Each test names the hole it proves, and fails on main as it was
(7709217):

- matrix's one-line reason of a failed job read the job's whole log into memory to find its
  last line: the command is the project's and prints as much as it likes (a log of 64 GiB, a
  sparse file here, was an internal MemoryError at the end of the matrix);
- ``package build`` read the build's .changes (the build's own file, copied out of its
  sandbox) whole to check its Files field: the same MemoryError, where a source tree's control
  files are read bounded (1 MiB);
- ``package test`` read the build's source-tree.tar.gz (the build user's tar, made in the
  sandbox) with tarfile's own headers: a chain of 2000 PAX headers was a RecursionError, an
  internal error (and a PAX header of gigabytes is read whole), where every other hostile tar
  is read with ociunpack's Bounded headers;
- linux.regular_bytes opened any file that said it was regular: a repository's symlink to a
  kernel's file (``sandboxmgr.yaml -> /proc/kmsg``, a tracefs trace_pipe; git stores symlinks,
  not FIFOs) blocked ``run ./p.yaml`` or ``matrix`` forever, or read away the kernel's
  messages another reader waits for;
- ``package build`` copied the build's products out of its sandbox byte by byte: a sparse
  "package" (a terabyte that costs the sandbox nothing) was written out whole, and filled the
  host's disk under the results directory;
- an untrusted project's profile files are read only from the project (registry.confine), but
  its sandboxmgr.yaml itself was read wherever it leads: a checkout's ``sandboxmgr.yaml ->
  /root/x.yaml`` printed the root-only file's keys as "unknown key" lines (a CI's public log);
- ``import FILE`` checked that FILE is a file (is_file), then let tarfile open it by name: a
  FIFO put in its place after the check blocked the import (and a link to /proc/kmsg, a
  kernel's file tarfile can seek, would read away the kernel's messages).
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from sandboxmgr import matrix, package, testcontrol
from sandboxmgr.errors import SandboxError
from tests.conftest import CLI, missing

pytestmark = pytest.mark.adversarial

HUGE = 64 << 30  # sparse: no disk, and more than this machine's memory


def sparse(path: Path, size: int = HUGE, end: bytes = b"") -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
        handle.seek(size)
        handle.write(end)
    return path


def test_a_failed_jobs_reason_reads_the_tail_of_its_log_not_the_whole(tmp_path: Path) -> None:
    log = sparse(tmp_path / "job.log", end=b"\nthe last line\n")
    result = matrix.Result("job", "debian-bookworm", status="failed", exit_code=1, log=log)
    assert matrix._reason(result) == "the last line"


def test_the_builds_changes_file_is_read_bounded(tmp_path: Path) -> None:
    changes = sparse(tmp_path / "hello_1.0_amd64.changes", end=b"\nFiles:\n x 1 misc optional hello.deb\n")
    with pytest.raises(SandboxError, match="larger than"):
        package._files_field(changes)


def pax_chain(count: int, last: str) -> bytes:
    """``count`` PAX headers before one file ``last`` (tarfile reads each with a recursion)."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    record = b"18 comment=hello\n"
    header.size = len(record)
    block = header.tobuf(tarfile.USTAR_FORMAT) + record + b"\0" * (512 - len(record))
    member = tarfile.TarInfo(last)
    member.size = 1
    return gzip.compress(block * count + member.tobuf(tarfile.USTAR_FORMAT) + b"x" + b"\0" * 511 + b"\0" * 1024)


def test_the_builds_source_tree_tar_is_read_with_bounded_headers(tmp_path: Path) -> None:
    tarball = tmp_path / "source-tree.tar.gz"
    tarball.write_bytes(pax_chain(2000, "hello-1.0/debian/tests/control"))
    with pytest.raises(SandboxError, match="PAX headers"):
        testcontrol.read_tests(tarball)


def with_tracefs(tmp_path: Path, link: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``sandboxmgr ARGS`` where ``link`` is a symlink to a tracefs trace_pipe (a regular file
    whose read blocks), tracefs mounted in a mount namespace of the command's own, gone with it."""
    if "tracefs" not in Path("/proc/filesystems").read_text():
        missing("this kernel has no tracefs (its trace_pipe is a regular file whose read blocks)")
    tracefs = tmp_path / "tracefs"
    tracefs.mkdir()
    (tmp_path / link).symlink_to(tracefs / "trace_pipe")
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount -t tracefs nodev "$0" && exec "$@"',
            str(tracefs), *CLI(tmp_path / "store").argv(*args)]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sandboxmgr {args[0]} blocked reading the kernel's trace_pipe through the link")


def test_a_link_to_a_kernels_file_is_not_read_as_a_profile(tmp_path: Path) -> None:
    proc = with_tracefs(tmp_path, "p.yaml", "run", str(tmp_path / "p.yaml"), "--", "true")
    lines = proc.stderr.splitlines()
    assert proc.returncode == 125 and len(lines) == 2, proc.stderr
    assert "cannot read profile " in lines[0] and lines[0].endswith("trace_pipe: not a regular file"), proc.stderr


def test_what_replaced_an_oci_archive_after_its_check_is_not_opened(tmp_path: Path) -> None:
    # open_source's is_file() said "a file"; by the time the archive is opened, a FIFO is there.
    os.mkfifo(tmp_path / "image.tar")
    code = ("import sys; from pathlib import Path; from sandboxmgr.ocisource import ArchiveLayout; "
            "from sandboxmgr.errors import SandboxError\n"
            "try:\n    ArchiveLayout(Path(sys.argv[1]))\nexcept SandboxError as exc:\n    print(exc.message)")
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "image.tar")], capture_output=True,
                              text=True, timeout=20, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("the archive's FIFO was opened: the import blocked")
    assert proc.stdout.strip().endswith("image.tar is not a regular file"), proc.stdout + proc.stderr


def test_a_builds_sparse_product_is_copied_out_with_its_holes(tmp_path: Path) -> None:
    build = tmp_path / "build"
    build.mkdir()
    size = 256 << 20  # with the fix, 1 TB costs the same; without it, this much is written
    sparse(build / "hello_1.0_amd64.deb", size - 5, end=b"tail\n")
    directory = os.open(build, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert package.copy_out(directory, "hello_1.0_amd64.deb", tmp_path / "hello_1.0_amd64.deb")
    finally:
        os.close(directory)
    copied = os.stat(tmp_path / "hello_1.0_amd64.deb")
    assert copied.st_size == size
    assert copied.st_blocks * 512 < 1 << 20, f"{copied.st_blocks * 512} bytes written for a sparse file"
    with open(tmp_path / "hello_1.0_amd64.deb", "rb") as copy:
        assert copy.read(4096) == b"\0" * 4096
        copy.seek(size - 5)
        assert copy.read() == b"tail\n"


def test_an_untrusted_projects_file_linked_out_of_the_project_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "root-only.yaml"
    secret.write_text("db_password_hunter2: yes\n")
    secret.chmod(0o600)
    project = tmp_path / "project"
    project.mkdir()
    (project / "sandboxmgr.yaml").symlink_to(secret)
    result = CLI(tmp_path / "store")("matrix", "-C", str(project), timeout=60)
    assert "hunter2" not in result.err + result.out, str(result)
    lines = result.err.splitlines()
    assert result.code == 125 and len(lines) == 2 and "a link out of the project" in lines[0], str(result)
