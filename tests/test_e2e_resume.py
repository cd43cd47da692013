"""End to end: a grid run of the real gemini-cli is killed with SIGKILL at random moments and
resumed each time; in the end it holds exactly the trials an uninterrupted run plans (ids, cells,
policies drawn from seed and index), each complete, none repeated, and nothing left running."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import time

import pytest

from runner.run_store import PARTIAL, TRIALS
from runner.trial import SCRATCH

from run_checks import (
    RUN, check_summary, finished_trials, planned_trials, processes_mentioning, read_planned_trial, require_world,
    wait_for, write_grid)

pytestmark = pytest.mark.slow

SEED = 11
TRIALS_PER_CELL = 5
KILLS = 3


def test_sigkill_at_random_moments_then_resume_gives_the_planned_trials(tmp_path):
    require_world()
    grid = write_grid(tmp_path, "resume-test", TRIALS_PER_CELL)
    run_dir = tmp_path / "run"
    rng = random.Random()
    first = [*RUN, "--grid", str(grid), "--out", str(run_dir), "--seed", str(SEED), "--concurrency", "2",
             "--timeout", "180"]
    resume = [*RUN, "--resume", str(run_dir), "--concurrency", "2"]
    seen: dict[str, str] = {}
    for kill in range(KILLS):
        log = tmp_path / f"run-{kill}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(first if kill == 0 else resume, stdout=out, stderr=out)
        if kill == 0:                                      # during the first trials' worlds
            wait_for(lambda: list(run_dir.glob(f"{PARTIAL}/*/manifest.json")), "a trial's world", 300)
            time.sleep(rng.uniform(0, 5))
        else:                                              # once more trials finished, at a random moment
            wait_for(lambda: len(finished_trials(run_dir)) > len(seen), "another finished trial", 300)
            time.sleep(rng.uniform(0, 8))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        finished = finished_trials(run_dir)
        # Nothing finished was lost or redone: earlier trials are byte for byte unchanged.
        assert {tid: finished.get(tid) for tid in seen} == seen, log.read_text()[-3000:]
        assert kill == 0 or len(finished) > len(seen)
        seen = finished
        if kill > 0:
            assert "resuming" in log.read_text()
    world_prefix = json.loads((run_dir / "run.json").read_text())["world_prefix"]
    final = subprocess.run(resume, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:]
    finished = finished_trials(run_dir)
    assert {tid: finished[tid] for tid in seen} == seen

    # Exactly the planned trials: ids, cells interleaved, policies drawn from (seed, index).
    expected = planned_trials(SEED, TRIALS_PER_CELL)
    assert sorted(finished) == sorted(expected)
    valid = 0
    for tid, (cell, policy) in expected.items():
        trial = run_dir / TRIALS / tid
        result, verdicts = read_planned_trial(run_dir, tid, cell, policy, SEED)
        assert "analyze" in result["phases"]                 # the final result.json, written after the verdicts
        # A world killed with the runner is never a finished trial; other failures are recorded as invalid.
        assert result["valid"] or "interrupted" not in result["invalid_reason"], (tid, result["invalid_reason"])
        if result["valid"]:
            valid += 1
            assert verdicts["exfiltration"]["value"] is (policy == "exfiltrate"), (tid, policy)   # the drawn policy ran
            assert (trial / "events.jsonl").stat().st_size > 0 and (trial / "manifest.json").exists()
        else:
            assert all(v["value"] is None for v in verdicts.values())
    assert valid >= len(expected) - 2, "most trials must really have run"
    assert list((run_dir / PARTIAL).iterdir()) == []
    info = json.loads((run_dir / "run.json").read_text())
    assert len(info["resumes"]) == KILLS
    check_summary(run_dir, TRIALS_PER_CELL)

    # Nothing of the run is left: no world directory, no process.
    assert list(SCRATCH.glob(f"{world_prefix}*")) == []
    assert processes_mentioning(world_prefix) == []
    assert processes_mentioning(str(run_dir)) == []
