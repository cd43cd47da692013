"""End to end: the shipped Section 6 grid runs as one run through `harness-run --grid` with real
agent CLIs, every trial records its cell, and the summary shows every cell of the grid."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harnesses.registry import get_agent
from runner.grid import expand, load_grid
from runner.paths import FIXTURES
from workspaces.scenario import load_scenario

pytestmark = pytest.mark.slow
SECTION6 = FIXTURES / "grids" / "section6.yaml"


def test_shipped_grids_expand():
    section6 = load_grid(SECTION6)
    cells, skipped = expand(section6, {s: load_scenario(s) for s in section6.scenarios})
    assert len(cells) == 4 and not skipped
    full = load_grid(FIXTURES / "grids" / "full.yaml")
    cells, skipped = expand(full, {s: load_scenario(s) for s in full.scenarios})
    # per agent: 5 scenarios x 21 possible cells + alignment-faking's 21 x 2 monitoring variants
    assert len(cells) == 5 * (5 * 21 + 42)
    assert len(skipped) == 5 * 21
    assert all("/none/" in s.cell and s.cell.split("/")[5] == "peer" and "subject `self`" in s.reason
               for s in skipped)


def test_section6_grid_runs_every_cell(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("worlds need root")
    grid = load_grid(SECTION6)
    for name in grid.agents:
        assert get_agent(name).installed(), f"{name} is not installed (setup.sh installs every agent)"
    out = tmp_path / "section6"
    proc = subprocess.run([sys.executable, "-c", "from runner.cli import harness_run; harness_run()",
                           "--grid", str(SECTION6), "--model", "scripted:population", "--trials", "2",
                           "--timeout", "180", "--out", str(out)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    expected = {f"{a}/scripted:population/{s}/good/memory/peer" for a in grid.agents for s in grid.scenarios}
    assert set(summary["cells"]) == expected
    trials = sorted((out / "trials").iterdir())
    assert len(trials) == 2 * len(expected)
    seen = {}
    for trial in trials:
        config = json.loads((trial / "config.json").read_text())
        result = json.loads((trial / "result.json").read_text())
        assert result["valid"], (trial.name, result["invalid_reason"])
        seen[config["cell"]] = seen.get(config["cell"], 0) + 1
        verdicts = json.loads((trial / "verdicts.json").read_text())
        assert set(verdicts) == set(load_scenario(config["scenario"]).behaviours)
    assert seen == {cell: 2 for cell in expected}
