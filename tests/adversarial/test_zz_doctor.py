"""After every attack (this file runs last in tests/adversarial): `sandboxmgr doctor` finds nothing.

Not in the stores the attacks used, and - machine-wide - no cgroup or process of
a sandbox whose manager is gone.
"""

from __future__ import annotations

import pytest

from sandboxmgr import mountinfo
from tests.adversarial.conftest import doctor
from tests.conftest import CLI, ConcurrentBuild

pytestmark = [pytest.mark.adversarial, pytest.mark.root]


@pytest.mark.network
def test_doctor_finds_nothing_in_the_sessions_store(cli: CLI, bookworm: ConcurrentBuild) -> None:
    result, found = doctor(cli, machine=True)
    assert found == [] and result.code == 0, found
    assert "nothing left over" in cli.ok("doctor").out
    assert not mountinfo.mounts_under(cli.store)


def test_doctor_finds_nothing_in_the_tiny_store(tiny: CLI) -> None:
    result, found = doctor(tiny, machine=True)
    assert found == [] and result.code == 0, found
    assert not mountinfo.mounts_under(tiny.store)
