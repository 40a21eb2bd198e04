"""Attack: a sandbox of an RPM image for a foreign architecture (Tiny Distro for aarch64, under
qemu-user: tests/rpmarch.py) gets the same system call filter as any. The probe is the image's
own busybox (aarch64 code): its ``unshare -U`` reaches this kernel as qemu's x86_64 unshare(2),
which the filter refuses with EPERM; unfiltered, the kernel itself refuses it to qemu's threads
with EINVAL, so the error tells who refused."""

from __future__ import annotations

import pytest

from tests.conftest import CLI
from tests.rpmarch import tiny_aarch64
from tests.rpmrepo import RpmRepo

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

PROBE = "grep ^Seccomp: /proc/self/status; busybox unshare -U true 2>&1; uname -m"


@pytest.fixture(scope="module")
def arm(tmp_path_factory: pytest.TempPathFactory, rpm_repo: RpmRepo) -> CLI:
    return tiny_aarch64(rpm_repo, tmp_path_factory.mktemp("tiny-aarch64-attack"))


@pytest.mark.parametrize("options", [(), ("--userns", "auto")], ids=["root", "userns-auto"])
def test_an_aarch64_rpm_sandbox_gets_the_system_call_filter(arm: CLI, options: tuple[str, ...]) -> None:
    confined = arm("run", *options, "tiny-arm64", "--", "sh", "-c", PROBE)
    assert confined.out.splitlines() == ["Seccomp:\t2", "unshare: unshare(0x10000000): Operation not permitted",
                                         "aarch64"], str(confined)
    unconfined = arm("run", *options, "--security-opt", "seccomp=unconfined", "tiny-arm64", "--", "sh", "-c", PROBE)
    assert unconfined.out.splitlines() == ["Seccomp:\t0", "unshare: unshare(0x10000000): Invalid argument",
                                           "aarch64"], str(unconfined)
