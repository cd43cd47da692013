"""End to end: a grid run of the real gemini-cli is killed with SIGKILL at random moments and
resumed each time; in the end it holds exactly the trials an uninterrupted run plans (ids, cells,
policies drawn from seed and index), each complete, none repeated, and nothing left running."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harnesses.registry import get_agent
from runner.policy import load_policy_spec
from runner.run_store import PARTIAL, TRIALS
from runner.trial import SCRATCH

pytestmark = pytest.mark.slow

RUN = [sys.executable, "-c", "from runner.cli import harness_run; harness_run()"]
SEED = 11
CELLS = ["gemini-cli/scripted:population/exfiltration-deletion/good/memory/peer",
         "gemini-cli/scripted:population/exfiltration-deletion/none/memory/self"]
TRIALS_PER_CELL = 5
KILLS = 3


def _processes_mentioning(text: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in ps if text in line and "ps -eo" not in line]


def _finished(run_dir: Path) -> dict[str, str]:
    """trial id -> its result.json text, for every trial in trials/."""
    trials = run_dir / TRIALS
    return {p.name: (p / "result.json").read_text() for p in sorted(trials.iterdir())} if trials.exists() else {}


def _wait_for(condition, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.2)


def test_sigkill_at_random_moments_then_resume_gives_the_planned_trials(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("worlds need root (namespaces, bubblewrap as root for sshd)")
    if not get_agent("gemini-cli").installed():
        pytest.skip("gemini-cli is not installed: harness-run --agent gemini-cli --install")
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"""name: resume-test
agents: [gemini-cli]
models: [scripted:population]
scenarios: [exfiltration-deletion]
relationships: [good, none]
subjects: [peer, self]
trials: {TRIALS_PER_CELL}
exclude:
  - {{relationship: good, subject: self}}
""")
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
            _wait_for(lambda: list(run_dir.glob(f"{PARTIAL}/*/manifest.json")))
            time.sleep(rng.uniform(0, 5))
        else:                                              # once more trials finished, at a random moment
            _wait_for(lambda: len(_finished(run_dir)) > len(seen))
            time.sleep(rng.uniform(0, 8))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        finished = _finished(run_dir)
        # Nothing finished was lost or redone: earlier trials are byte for byte unchanged.
        assert {tid: finished.get(tid) for tid in seen} == seen, log.read_text()[-3000:]
        assert kill == 0 or len(finished) > len(seen)
        seen = finished
        if kill > 0:
            assert "resuming" in log.read_text()
    world_prefix = json.loads((run_dir / "run.json").read_text())["world_prefix"]
    final = subprocess.run(resume, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:]
    finished = _finished(run_dir)
    assert {tid: finished[tid] for tid in seen} == seen

    # Exactly the planned trials: ids, cells interleaved, policies drawn from (seed, index).
    population = load_policy_spec("population", scenario="exfiltration-deletion")
    expected = {f"t{i:04d}": (CELLS[i % 2], population.draw(SEED, i).name) for i in range(2 * TRIALS_PER_CELL)}
    assert sorted(finished) == sorted(expected)
    valid = 0
    for tid, (cell, policy) in expected.items():
        trial = run_dir / TRIALS / tid
        config = json.loads((trial / "config.json").read_text())
        assert (config["cell"], config["policy"], config["index"], config["seed"]) == (cell, policy, int(tid[1:]), SEED)
        result = json.loads((trial / "result.json").read_text())
        assert "analyze" in result["phases"]                 # the final result.json, written after the verdicts
        # A world killed with the runner is never a finished trial; other failures are recorded as invalid.
        assert result["valid"] or "interrupted" not in result["invalid_reason"], (tid, result["invalid_reason"])
        verdicts = json.loads((trial / "verdicts.json").read_text())
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
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {cell: s["trials"] for cell, s in summary["cells"].items()} == {c: TRIALS_PER_CELL for c in CELLS}

    # Nothing of the run is left: no world directory, no process.
    assert list(SCRATCH.glob(f"{world_prefix}*")) == []
    assert _processes_mentioning(world_prefix) == []
    assert _processes_mentioning(str(run_dir)) == []
