"""Attack: a sandbox of a foreign architecture (arm64 under qemu-user) gets the same system call
filter. qemu-user is x86_64 code that runs as the sandbox's own process: it turns each arm64 call
into this kernel's call, which the filter then judges as it judges any (README, "Foreign
architectures"). The probe is the image's own perl, whose syscall() takes arm64's numbers."""

from __future__ import annotations

import errno

import pytest

from tests.adversarial.conftest import attempts
from tests.conftest import CLI

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network, pytest.mark.slow]

# arm64's numbers: personality 92, unshare 97. Each line: "<attempt>: ok" or "<attempt>: <errno>".
PROBE = r"""
sub try { my ($name, $r) = @_; print "$name: ", ($r == -1 ? $! + 0 : "ok"), "\n"; }
$! = 0; try("personality-addr-no-randomize", syscall(92, 0x0040000));
$! = 0; try("unshare-user", syscall(97, 0x10000000));
"""


@pytest.mark.parametrize("options", [(), ("--userns", "auto")], ids=["root", "userns-auto"])
def test_a_foreign_sandbox_gets_the_system_call_filter(cli: CLI, bookworm_arm64: str,
                                                       options: tuple[str, ...]) -> None:
    confined = attempts(cli.ok("run", *options, bookworm_arm64, "perl", "-e", PROBE))
    assert confined == {"personality-addr-no-randomize": str(errno.EPERM), "unshare-user": str(errno.EPERM)}
    status = cli.ok("run", *options, bookworm_arm64, "grep", "^Seccomp:", "/proc/self/status").out
    assert status.split() == ["Seccomp:", "2"]
    # What the filter is for: qemu hands both calls to the kernel, which, unfiltered, allows the first
    # and fails the second for qemu's threads (EINVAL), not with the filter's EPERM.
    unconfined = attempts(cli.ok("run", *options, "--security-opt", "seccomp=unconfined", bookworm_arm64,
                                 "perl", "-e", PROBE))
    assert unconfined == {"personality-addr-no-randomize": "ok", "unshare-user": str(errno.EINVAL)}
