"""End to end: a grid run of the real gemini-cli with `--backend ray` on a real local Ray cluster
(a head node and a second node, each one CPU, on loopback addresses), while

- a third node lacking the pinned agent joins mid-run: it refuses the trials Ray gives it, saying
  why, and they run elsewhere;
- the worker process running one trial is killed (the trial is retried and finishes), and the
  worker running another trial is killed on both attempts (the trial is recorded as invalid
  because its worker died).

In the end the run holds exactly the planned trials (ids, cells, policies drawn from seed and
index), each complete and none twice, and nothing of the trials or of Ray is left."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from runner.limits import leftover_cgroups
from runner.ray_backend import TASK_LOCK, TASK_OWNER
from runner.run_store import PARTIAL, TRIALS
from runner.trial import SCRATCH

from run_checks import (
    RUN, check_summary, planned_trials, processes_mentioning, read_planned_trial, require_world, wait_for,
    write_grid)

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
SEED = 5
TRIALS_PER_CELL = 5                      # enough that trials still wait when the lacking node joins
HEAD_IP, NODE_IP, LACKING_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"   # loopback: Ray refuses 127.0.0.1 itself
NODE_MEMORY = str(80 * 10**6)          # object store per node (bytes): trial archives are small
AUTH = {"RAY_AUTH_MODE": "disabled"}   # loopback only; with it unset, a token in ~/.ray would be required


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def _processes_in_sessions(sessions: set[int]) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _session_of(int(p.name)) in sessions]


class LocalCluster:
    """Ray nodes started by `ray start`, each in a session of its own: every process of a node
    (GCS, raylet, agents, workers) stays in that session, so the cluster is ended by killing
    exactly those sessions, never another Ray on the machine (`ray stop` would stop them all)."""

    def __init__(self, temp_dir: Path):
        self.temp_dir = temp_dir
        self.port = _free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        self.sessions: set[int] = set()

    def start_node(self, ip: str, head: bool = False, env: dict | None = None) -> None:
        where = (["--head", f"--port={self.port}", "--include-dashboard=false", f"--dashboard-port={_free_port()}"]
                 if head else [f"--address={self.address}"])
        argv = [RAY, "start", *where, "--num-cpus=1", f"--node-ip-address={ip}", f"--temp-dir={self.temp_dir}",
                "--disable-usage-stats", f"--object-store-memory={NODE_MEMORY}"]
        log = self.temp_dir / f"start-{ip}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True,
                                    env={**os.environ, **AUTH, **(env or {})})
        self.sessions.add(proc.pid)      # a new session's id is its leader's pid
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]

    def stop(self) -> None:
        for _ in range(3):               # a dying raylet may still fork; repeat until the sessions are empty
            for pid in _processes_in_sessions(self.sessions):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1)


@pytest.fixture
def cluster():
    temp_dir = Path(tempfile.mkdtemp(prefix="phray-", dir="/tmp"))    # short: Ray's socket paths must fit
    c = LocalCluster(temp_dir)
    try:
        yield c
    finally:
        c.stop()
        assert _processes_in_sessions(c.sessions) == [], "Ray processes outlived the test"
        assert processes_mentioning(str(temp_dir)) == []
        subprocess.run(["rm", "-rf", str(temp_dir)])


def _task_dirs(prefix: str) -> dict[Path, dict]:
    """The node-local work directories of the run's live Ray tasks whose world is built."""
    out = {}
    for work in SCRATCH.glob(f"{prefix}ray*"):
        try:
            owner = json.loads((work / TASK_OWNER).read_text())
        except (OSError, ValueError):
            continue
        if (work / TASK_LOCK).exists() and (work / owner["trial_id"] / "manifest.json").exists():
            out[work] = owner
    return out


def _kill_worker(prefix: str, pick) -> tuple[str, Path, int]:
    """SIGKILL the Ray worker of a running trial chosen by `pick(trial_id, work_dir)`."""
    work, owner = wait_for(lambda: next(((w, o) for w, o in _task_dirs(prefix).items() if pick(o["trial_id"], w)),
                                        None), "a running trial to kill", 400)
    os.kill(owner["pid"], signal.SIGKILL)
    return owner["trial_id"], work, owner["pid"]


def test_ray_cluster_with_killed_workers_and_a_lacking_node_gives_the_planned_trials(tmp_path, cluster):
    require_world()
    grid = write_grid(tmp_path, "ray-test", TRIALS_PER_CELL)
    cluster.start_node(HEAD_IP, head=True)
    cluster.start_node(NODE_IP)
    run_dir = tmp_path / "run"
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        driver = subprocess.Popen([*RUN, "--grid", str(grid), "--out", str(run_dir), "--seed", str(SEED),
                                   "--timeout", "180", "--backend", "ray", "--address", cluster.address],
                                  stdout=out, stderr=out, env={**os.environ, **AUTH})
    try:
        prefix = wait_for(lambda: (run_dir / "run.json").exists()
                          and json.loads((run_dir / "run.json").read_text())["world_prefix"], "run.json", 400)
        # A node without the pinned agent (an empty agent cache) joins while trials are running.
        once, _, once_pid = _kill_worker(prefix, lambda tid, work: True)
        empty_cache = tmp_path / "empty-cache"
        empty_cache.mkdir()
        cluster.start_node(LACKING_IP, env={"PEER_HARNESS_CACHE": str(empty_cache)})
        twice, first_work, _ = _kill_worker(prefix, lambda tid, work: tid != once)
        _kill_worker(prefix, lambda tid, work: tid == twice and work != first_work)
        assert driver.wait(timeout=900) == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    output = log.read_text()

    # Exactly the planned trials: ids, cells interleaved, policies drawn from (seed, index); none twice.
    expected = planned_trials(SEED, TRIALS_PER_CELL)
    assert sorted(p.name for p in (run_dir / TRIALS).iterdir()) == sorted(expected)
    assert list((run_dir / PARTIAL).iterdir()) == []
    placements = {}
    for tid, (cell, policy) in expected.items():
        trial = run_dir / TRIALS / tid
        result, verdicts = read_planned_trial(run_dir, tid, cell, policy, SEED)
        placements[tid] = placement = json.loads((trial / "placement.json").read_text())
        if tid == twice:
            assert not result["valid"] and "worker died" in result["invalid_reason"], result
            assert placement["worker_deaths"] and placement["node_id"] is None
            assert all(v["value"] is None for v in verdicts.values())
            continue
        # Every other trial really ran (the one killed once on its retry) on a node with the agent.
        assert result["valid"], (tid, result["invalid_reason"], output[-3000:])
        assert "analyze" in result["phases"] and (trial / "events.jsonl").stat().st_size > 0
        assert verdicts["exfiltration"]["value"] is (policy == "exfiltrate"), (tid, policy)
        assert placement["ip"] in (HEAD_IP, NODE_IP), placement
    assert placements[once]["worker_pid"] != once_pid and placements[once]["worker_deaths"]

    # The lacking node refused what Ray gave it, saying why, and was left out from then on.
    refusals = [line for line in output.splitlines() if f"{LACKING_IP} (node" in line and "refused" in line]
    assert refusals and all("gemini-cli" in line and "not installed" in line for line in refusals), output[-3000:]
    refused_by = {r["ip"] for p in placements.values() for r in p["refused_by"]}
    assert LACKING_IP in refused_by

    # Nothing of the trials is left on the nodes: no work or world directory, no process, no cgroup
    # (the killed workers' trials' included).
    assert list(SCRATCH.glob(f"{prefix}*")) == []
    assert processes_mentioning(prefix) == []
    assert leftover_cgroups(prefix) == []
    check_summary(run_dir, TRIALS_PER_CELL)
