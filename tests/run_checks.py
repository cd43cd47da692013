"""Shared by the end-to-end tests that run trials in worlds: when they can run, the runner's
command, and for the interrupted grid runs (test_e2e_resume.py, test_e2e_ray.py, crash safety)
the two-cell grid of the real gemini-cli they run, the trials it plans and what must be left of
the run in the end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harnesses.registry import get_agent
from runner.policy import load_policy_spec
from runner.run_store import TRIALS

RUN = [sys.executable, "-c", "from runner.cli import harness_run; harness_run()"]
CELLS = ["gemini-cli/scripted:population/exfiltration-deletion/good/memory/peer",
         "gemini-cli/scripted:population/exfiltration-deletion/none/memory/self"]


def interruptible_run(argv: list[str], **popen_kwargs) -> subprocess.Popen:
    """The runner started so that a SIGINT the test sends reaches it as Ctrl-C would: a test run from a
    shell's background job inherits SIGINT ignored (POSIX), and the runner would rightly ignore it."""
    return subprocess.Popen(argv, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen_kwargs)


def process_naming(path: Path) -> subprocess.Popen:
    """A sleeping process whose command line names `path`, as a leftover world's PID 1 would be,
    returned once /proc shows that command line (Popen returns as the exec commits, a moment
    before the kernel shows the new one)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", str(path)])
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    for _ in range(1000):
        if str(path).encode() in cmdline.read_bytes():
            break
        time.sleep(0.01)
    return proc


def require_world(agent: str = "gemini-cli") -> None:
    """Skip the test where worlds cannot be built (not root) or ``agent`` is not installed."""
    if os.geteuid() != 0:
        pytest.skip("worlds need root (namespaces, bubblewrap as root for sshd)")
    if not get_agent(agent).installed():
        pytest.skip(f"{agent} is not installed: harness-run --agent {agent} --install")


def write_grid(tmp_path: Path, name: str, trials_per_cell: int) -> Path:
    """The grid of CELLS, ``trials_per_cell`` trials each: tmp_path/grid.yaml."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"""name: {name}
agents: [gemini-cli]
models: [scripted:population]
scenarios: [exfiltration-deletion]
relationships: [good, none]
subjects: [peer, self]
trials: {trials_per_cell}
exclude:
  - {{relationship: good, subject: self}}
""")
    return grid


def finished_trials(run_dir: Path) -> dict[str, str]:
    """trial id -> its result.json text, for every trial in trials/."""
    trials = run_dir / TRIALS
    return {p.name: (p / "result.json").read_text() for p in sorted(trials.iterdir())} if trials.exists() else {}


def planned_trials(seed: int, trials_per_cell: int) -> dict[str, tuple[str, str]]:
    """trial id -> (cell, policy) an uninterrupted run plans: cells interleaved, policies drawn
    from (seed, index)."""
    population = load_policy_spec("population", scenario="exfiltration-deletion")
    return {f"t{i:04d}": (CELLS[i % 2], population.draw(seed, i).name) for i in range(2 * trials_per_cell)}


def read_planned_trial(run_dir: Path, tid: str, cell: str, policy: str, seed: int) -> tuple[dict, dict]:
    """(result.json, verdicts.json) of trial ``tid``, whose config.json must be the planned
    ``cell`` and ``policy`` at its index with the run's seed."""
    trial = run_dir / TRIALS / tid
    config = json.loads((trial / "config.json").read_text())
    assert (config["cell"], config["policy"], config["index"], config["seed"]) == (cell, policy, int(tid[1:]), seed)
    return json.loads((trial / "result.json").read_text()), json.loads((trial / "verdicts.json").read_text())


def check_summary(run_dir: Path, trials_per_cell: int) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {cell: s["trials"] for cell, s in summary["cells"].items()} == {c: trials_per_cell for c in CELLS}


def wait_for(condition, what: str, timeout: float):
    """condition()'s first true value, asked every 0.2 s; fails the test after ``timeout`` s."""
    deadline = time.time() + timeout
    while not (found := condition()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


def processes_mentioning(text: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in ps if text in line and "ps -eo" not in line]
