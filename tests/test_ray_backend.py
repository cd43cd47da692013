"""The Ray backend's node-side cleanup and its command-line switch, without a cluster (the
cluster itself is exercised end to end in test_e2e_ray.py)."""
from __future__ import annotations

import fcntl
import json
import os

from click.testing import CliRunner

from runner import ray_backend
from runner.cli import harness_run
from runner.limits import Limits, create_trial_cgroup, leftover_cgroups, remove_trial_cgroup
from run_checks import process_naming


def _task_dir(scratch, name, trial_id):
    work = scratch / name
    work.mkdir()
    (work / ray_backend.TASK_LOCK).touch()
    (work / ray_backend.TASK_OWNER).write_text(json.dumps({"trial_id": trial_id, "run_id": "r1", "pid": 4242}))
    return work


def test_sweep_removes_only_what_dead_tasks_left(tmp_path, monkeypatch):
    monkeypatch.setattr(ray_backend, "SCRATCH", tmp_path)
    live = _task_dir(tmp_path, "phw-aaaa0000-rayLIVE", "t0001")
    (tmp_path / f"{live.name}-t0001-w1").mkdir()
    dead = _task_dir(tmp_path, "phw-aaaa0000-rayDEAD", "t0002")
    dead_world = tmp_path / f"{dead.name}-t0002-w2"
    dead_world.mkdir()
    local_world = tmp_path / "phw-bbbb1111-t0003-w3"       # the local backend's: no task lock, not ours
    local_world.mkdir()
    holder = os.open(live / ray_backend.TASK_LOCK, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)                    # the live task holds its lock
    # A process still running in the dead task's world (its command line names the world), and
    # each world's trial cgroup (named after the world, as runner.sandbox names it).
    straggler = process_naming(dead_world)
    cgroups = [create_trial_cgroup(world.name, Limits()) for world in (dead_world, tmp_path / f"{live.name}-t0001-w1")]
    try:
        swept = ray_backend.sweep_dead_tasks()
        assert straggler.wait(timeout=10) == -9
        dead_cgroups, live_cgroups = leftover_cgroups(dead.name), leftover_cgroups(live.name)
    finally:
        if straggler.poll() is None:
            straggler.kill()
        os.close(holder)
        for cg in cgroups:
            remove_trial_cgroup(cg)
    assert len(swept) == 1 and "t0002 of run r1 (worker pid 4242)" in swept[0] and "killed 1 process" in swept[0]
    assert not dead.exists() and not dead_world.exists()
    if cgroups[0].mode != "rlimit":     # the dead world's cgroup went with it; the live one's stayed
        assert all(d in swept[0] for d in cgroups[0].dirs.values()) and dead_cgroups == []
        assert [cg.dirs for cg in live_cgroups] == [cgroups[1].dirs]
    assert live.exists() and (tmp_path / f"{live.name}-t0001-w1").exists() and local_world.exists()
    # Once the live task is gone too (its lock released), the next sweep takes its leftovers.
    assert len(ray_backend.sweep_dead_tasks()) == 1 and not live.exists()


def test_address_needs_the_ray_backend():
    result = CliRunner().invoke(harness_run, ["--address", "127.0.0.2:6379", "--check"])
    assert result.exit_code == 2 and "--address only applies with --backend ray" in result.output


def test_excluded_nodes_become_a_label_selector():
    excluded = ray_backend._Excluded()
    assert excluded.options("cell") == {}
    for node_id in ("b" * 56, "a" * 56):
        excluded.add("cell", ray_backend.NodeInfo(node_id, "10.0.0.1", "host", 1), ["missing /usr/bin/bwrap"])
    assert excluded.options("cell") == {"label_selector": {"ray.io/node-id": f"!in({'a' * 56},{'b' * 56})"}}
    assert excluded.options("other") == {}
    assert excluded.nobody_can("cell", {"a" * 56, "b" * 56}) and not excluded.nobody_can("cell", {"c" * 56})
