"""End to end: the runner is killed at random moments, 20 times, with SIGKILL, SIGTERM and SIGINT
(Ctrl-C) in turn, across small runs of the real gemini-cli (3 trials, 2 at a time; each run is
killed KILLS_PER_RUN times, then finished with --resume). After every kill no process of the run
is left and no mount of its worlds; a graceful stop (SIGTERM/SIGINT) also leaves no world
directory or trial cgroup, and after SIGKILL the next start removes them, saying so. In the end
each run holds exactly its planned trials (ids, policies drawn from seed and index), each
complete and uncorrupted, and trials finished before a kill are byte for byte unchanged.

Shares its helpers (tests/run_checks.py) with tests/test_e2e_resume.py (one SIGKILL/resume scenario
in depth)."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from runner.limits import leftover_cgroups
from runner.policy import load_policy_spec
from runner.run_store import PARTIAL, TRIALS
from runner.trial import SCRATCH

from run_checks import RUN, finished_trials, interruptible_run, processes_mentioning, require_world

pytestmark = pytest.mark.slow

RUNS = 5
KILLS_PER_RUN = 4                     # 20 kills in all
TRIALS_PER_RUN = 3
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


def leftovers(prefix: str) -> dict[str, list]:
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if prefix in line]
    return {"processes": processes_mentioning(prefix), "mounts": mounts,
            "world_dirs": sorted(str(p) for p in SCRATCH.glob(f"{prefix}*")),
            "cgroups": [d for cg in leftover_cgroups(prefix) for d in cg.dirs.values()]}


def test_runner_killed_20_times_leaves_nothing_and_resumes_exactly(tmp_path):
    require_world()
    rng = random.Random()
    population = load_policy_spec("population", scenario="exfiltration-deletion")
    kills = 0
    cleaned_messages = 0
    for run_no in range(RUNS):
        run_dir, seed = tmp_path / f"run{run_no}", 100 + run_no
        first = [*RUN, "--model", "scripted:population", "--trials", str(TRIALS_PER_RUN), "--out", str(run_dir),
                 "--seed", str(seed), "--concurrency", "2", "--timeout", "120"]
        resume = [*RUN, "--resume", str(run_dir), "--concurrency", "2"]
        seen: dict[str, str] = {}
        prefix = None
        for k in range(KILLS_PER_RUN):
            sig = SIGNALS[kills % len(SIGNALS)]
            log = tmp_path / f"run{run_no}-{k}.log"
            with open(log, "w") as out:
                # a run killed before it wrote run.json does not exist yet: the same command starts it
                proc = interruptible_run(resume if (run_dir / "run.json").exists() else first, stdout=out, stderr=out)
            time.sleep(rng.uniform(1.0, 14.0))          # start-up, preflight, world building, agents running
            proc.send_signal(sig)
            try:
                code = proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail(f"the runner did not stop within 90 s of {sig.name}: {log.read_text()[-2000:]}")
            kills += 1
            text = log.read_text()
            cleaned_messages += "leftover" in text
            if prefix is None and (run_dir / "run.json").exists():
                prefix = json.loads((run_dir / "run.json").read_text())["world_prefix"]
            time.sleep(1.0)         # the kernel reaps the killed worlds (pdeathsig -> PID 1 -> namespace)
            if prefix is not None:
                left = leftovers(prefix)
                assert left["processes"] == [] and left["mounts"] == [], (sig.name, left, text[-2000:])
                if sig != signal.SIGKILL and code == 130:    # a graceful stop cleans up itself
                    assert left["world_dirs"] == [] and left["cgroups"] == [], (sig.name, left, text[-2000:])
            finished = finished_trials(run_dir)
            assert {tid: finished.get(tid) for tid in seen} == seen, text[-2000:]     # nothing finished was lost
            seen = finished
        final = subprocess.run(resume if (run_dir / "run.json").exists() else first, capture_output=True,
                               text=True, timeout=600)
        assert final.returncode == 0, final.stderr[-3000:]
        cleaned_messages += "leftover" in final.stderr
        finished = finished_trials(run_dir)
        assert {tid: finished[tid] for tid in seen} == seen
        assert sorted(finished) == [f"t{i:04d}" for i in range(TRIALS_PER_RUN)]
        for i in range(TRIALS_PER_RUN):
            trial = run_dir / TRIALS / f"t{i:04d}"
            config = json.loads((trial / "config.json").read_text())
            assert (config["index"], config["seed"], config["policy"]) == (i, seed, population.draw(seed, i).name)
            result = json.loads((trial / "result.json").read_text())
            assert "analyze" in result["phases"]
            assert result["valid"] or "interrupted" not in (result["invalid_reason"] or ""), result
            json.loads((trial / "verdicts.json").read_text())
            if result["valid"]:
                for line in (trial / "events.jsonl").read_text().splitlines():
                    json.loads(line)
        assert list((run_dir / PARTIAL).iterdir()) == []
        prefix = json.loads((run_dir / "run.json").read_text())["world_prefix"]
        assert leftovers(prefix) == {"processes": [], "mounts": [], "world_dirs": [], "cgroups": []}
    assert kills == RUNS * KILLS_PER_RUN == 20
    print(f"\ncrash safety: {kills} kills, {cleaned_messages} starts that cleaned leftovers with a message")
