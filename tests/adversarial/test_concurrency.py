"""Attack 7: commands racing each other over one sandbox, one profile, one cgroup parent.

Refused work must be refused with a clear "busy" error (125); accepted work must
not corrupt anything.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from sandboxmgr import cgroups
from tests.adversarial.conftest import doctor, fresh_tiny, need_controllers, wait_until
from tests.conftest import CLI, Result
from tests.rpmrepo import RpmRepo

pytestmark = [pytest.mark.adversarial, pytest.mark.root]


def finish(procs: list[subprocess.Popen[str]], timeout: float = 120) -> list[Result]:
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(Result(proc.returncode, out, err))
    return results


def test_parallel_execs_into_one_sandbox_all_join_it(tiny: CLI, tmp_path: Path) -> None:
    """One exec holds the sandbox until the test opens a gate; the others, started while it
    holds it, join the same running sandbox (issue 15): each runs, each writes the same /log,
    and they return while the first still runs."""
    gate = tmp_path / "gate"
    gate.mkdir()
    tiny.ok("create", "tiny", "--name", "crowded", "-v", f"{gate}:/gate:ro")
    holder = tiny.popen("exec", "crowded", "sh", "-c",
                        "echo $$ >> /log; while [ ! -e /gate/open ]; do sleep 1; done; echo through")
    try:
        assert wait_until(lambda: in_use(tiny, "crowded") or holder.poll() is not None), "the holder never got in"
        assert holder.poll() is None, finish([holder])
        joined = finish([tiny.popen("exec", "crowded", "sh", "-c", "echo $$ >> /log; cat /log") for _ in range(3)],
                        timeout=60)
        assert holder.poll() is None, "the holder ended before the others returned"
        for other in joined:
            assert other.code == 0 and len(other.out.split()) >= 2, other  # the holder's line and its own
        (gate / "open").touch()
        (held,) = finish([holder])
        assert held.code == 0 and held.out == "through\n", held
        assert len(set(tiny.ok("exec", "crowded", "cat", "/log").out.split())) == 4  # four commands wrote
    finally:
        (gate / "open").touch()
        if holder.poll() is None:
            holder.communicate(timeout=30)
        tiny.ok("rm", "-f", "crowded")


def in_use(cli: CLI, name: str) -> bool:
    return any(r["name"] == name and r["in_use"] for r in json.loads(cli.ok("ls", "--json").out))


def test_rm_while_exec_runs_is_refused_and_the_exec_finishes(tiny: CLI) -> None:
    tiny.ok("create", "tiny", "--name", "busy-rm")
    proc = tiny.popen("exec", "busy-rm", "sh", "-c", "sleep 2; echo finished")
    try:
        assert wait_until(lambda: in_use(tiny, "busy-rm"))
        refused = tiny("rm", "busy-rm")
        assert refused.code == 125 and "is running" in refused.err, refused
        (result,) = finish([proc])
        assert result.code == 0 and result.out == "finished\n", result
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        tiny.ok("rm", "busy-rm")
    assert not (tiny.store / "sandboxes" / "busy-rm").exists()


def test_parallel_builds_of_one_profile_make_one_image(tmp_path: Path, rpm_repo: RpmRepo) -> None:
    cli = fresh_tiny(tmp_path, rpm_repo)
    results = finish([cli.popen("build", "tiny") for _ in range(3)])
    assert all(r.code == 0 for r in results), results
    images = json.loads(cli.ok("images", "--json").out)
    assert len(images) == 1
    assert list((cli.store / "tmp").iterdir()) == []
    assert cli.ok("run", "tiny", "tiny-hello").out.strip() == "hello from a dependency"
    assert doctor(cli)[1] == []


def test_parallel_runs_with_limits_share_the_cgroup_parent_safely(tiny: CLI) -> None:
    """Each run removes the emptied `sandboxmgr` parent; the others must still get their cgroups."""
    need_controllers("pids")
    started = time.monotonic()
    procs = [tiny.popen("run", "--pids-limit", "32", "tiny", "sh", "-c", "echo ok") for _ in range(6)]
    managers = {f"{proc.pid}-" for proc in procs}
    results = finish(procs)
    assert all(r.code == 0 and r.out == "ok\n" for r in results), results
    assert time.monotonic() - started < 60
    left = [g for g in cgroups.find_run_groups() if g.path.name.startswith(tuple(managers))]
    assert not left, left
