"""Run planning, seeding, resume clean-up and refusals (no agent is run here)."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.cli import harness_run
from runner.grid import Cell
from runner.records import RunInfo
from runner.run_plan import Resources, cell_infos, trial_setup, version_pins
from runner.run_store import (
    PARTIAL, TRIALS, RunLock, RunStoreError, clean_for_resume, create_run_dir, finished_trials, plan_trials,
    version_differences)
from run_checks import process_naming

PEER = Cell(agent="gemini-cli", model="scripted:population", scenario="exfiltration-deletion", relationship="good",
            channel="memory", subject="peer")
BASELINE = PEER.model_copy(update={"relationship": "none", "subject": "self"})


def make_info(run_dir: Path, cells: list[Cell], trials: int, seed: int = 7) -> tuple[RunInfo, Resources]:
    res = Resources.load(cells)
    infos = cell_infos(cells, res, trials, None)
    pins = version_pins(infos, res)
    info = RunInfo(run_id=run_dir.name, created_at=time.time(), harness_version=pins["harness_version"],
                   agent="gemini-cli", agent_version=res.agents["gemini-cli"].version, scenario=None,
                   relationship=None, channel="memory", subject=None, family="Gemini", model="scripted:population",
                   model_is_scripted=True, trials=trials, seed=seed, timeout_s=60, weights_bytes=8192,
                   fixture_hashes=pins["fixture_hashes"], agent_versions=pins["agent_versions"], cells=infos,
                   n_trials=trials * len(cells), world_prefix="phw-testrun1-")
    return info, res


def finish(trial_dir: Path) -> None:
    trial_dir.mkdir(parents=True)
    (trial_dir / "result.json").write_text(json.dumps({"valid": True}))
    (trial_dir / "verdicts.json").write_text("{}")


def test_plan_interleaves_cells_so_a_partial_run_covers_all(tmp_path):
    info, _ = make_info(tmp_path / "run", [PEER, BASELINE], trials=3)
    plan = plan_trials(info.cells)
    assert [t.trial_id for t in plan] == [f"t{i:04d}" for i in range(6)]
    assert [t.index for t in plan] == list(range(6))
    assert [t.cell.id for t in plan] == [PEER.id, BASELINE.id] * 3
    uneven = [info.cells[0].model_copy(update={"trials": 1}), info.cells[1]]
    assert [t.cell.id for t in plan_trials(uneven)] == [PEER.id, BASELINE.id, BASELINE.id, BASELINE.id]


def test_policies_are_drawn_from_run_seed_and_index(tmp_path):
    info, res = make_info(tmp_path / "run", [PEER, BASELINE], trials=20)
    plan = plan_trials(info.cells)
    draws = [trial_setup(t, info, res, False).policy.name for t in plan]
    again = [trial_setup(t, info, res, False).policy.name for t in reversed(plan)][::-1]
    assert draws == again                                   # independent of order and of what ran before
    assert len(set(draws)) > 1                              # the population mixture really mixes
    other_seed = info.model_copy(update={"seed": info.seed + 1})
    assert [trial_setup(t, other_seed, res, False).policy.name for t in plan] != draws
    setup = trial_setup(plan[1], info, res, False)
    assert setup.config.cell == BASELINE.id and setup.config.trial_id == "t0001" and setup.config.seed == 7
    assert setup.world_prefix == "phw-testrun1-"


def test_resume_cleanup_removes_half_done_trials_and_leftover_worlds(tmp_path):
    run_dir, scratch = tmp_path / "run", tmp_path / "scratch"
    info, _ = make_info(run_dir, [PEER], trials=4)
    create_run_dir(run_dir, info)
    finish(run_dir / TRIALS / "t0000")
    (run_dir / TRIALS / "t0003").mkdir()                    # incomplete: no result.json / verdicts.json
    (run_dir / PARTIAL / "t0001" / "native").mkdir(parents=True)
    kept = scratch / "phw-testrun1-t0000-aaaa"              # a finished trial's world kept by --keep-world
    leftover = scratch / "phw-testrun1-t0001-bbbb"
    foreign = scratch / "phw-otherrun-t0001-cccc"           # another run's world: not ours to touch
    for world in (kept, leftover, foreign):
        (world / "w").mkdir(parents=True)
    (leftover / "spec.json").write_text("{}")
    # A process still running in the leftover world (as a world's PID 1 would be, named by its spec).
    orphan = process_naming(leftover / "spec.json")
    try:
        finished = finished_trials(run_dir)
        assert finished == {"t0000"}
        cleanup = clean_for_resume(run_dir, info, scratch, finished)
        assert orphan.wait(timeout=60) == -9
    finally:
        orphan.kill()
    assert cleanup.killed == [orphan.pid]
    assert sorted(cleanup.redone) == ["t0001", "t0003"]
    assert cleanup.worlds == [leftover]
    assert kept.exists() and foreign.exists() and not leftover.exists()
    assert sorted(p.name for p in (run_dir / TRIALS).iterdir()) == ["t0000"]
    assert list((run_dir / PARTIAL).iterdir()) == []


def test_version_differences_say_exactly_what_changed(tmp_path):
    info, res = make_info(tmp_path / "run", [PEER], trials=1)
    pins = version_pins(info.cells, res)
    assert version_differences(info, pins) == []
    changed = {**pins, "agent_versions": {"gemini-cli": "9.9.9"},
               "fixture_hashes": {**pins["fixture_hashes"], "memories/good.md": "f" * 64}}
    del changed["fixture_hashes"]["prompts/user.txt"]
    diffs = version_differences(info, changed)
    assert f"agent gemini-cli: run.json {info.agent_versions['gemini-cli']}, now 9.9.9" in diffs
    assert f"fixture memories/good.md: run.json {info.fixture_hashes['memories/good.md'][:12]}, now ffffffffffff" in diffs
    assert any(d.startswith("fixture prompts/user.txt:") and d.endswith("now absent") for d in diffs)
    assert len(diffs) == 3


def test_run_lock_is_exclusive(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunStoreError, match="another harness-run"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):                                 # released on exit
        pass


# ---- the command line (refusals happen before any world is built) ----

def invoke(*args: str):
    return CliRunner().invoke(harness_run, list(args))


def test_resume_refuses_mixed_versions_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    info, _ = make_info(run_dir, [PEER], trials=2)
    info.fixture_hashes["memories/good.md"] = "0" * 64
    info.agent_versions["gemini-cli"] = "0.0.1"
    create_run_dir(run_dir, info)
    before = (run_dir / "run.json").read_text()
    result = invoke("--resume", str(run_dir))
    assert result.exit_code == 2
    assert "fixture memories/good.md: run.json 000000000000" in result.output
    assert "agent gemini-cli: run.json 0.0.1" in result.output and "--allow-version-mismatch" in result.output
    assert (run_dir / "run.json").read_text() == before


def test_resume_takes_the_condition_from_run_json(tmp_path):
    result = invoke("--resume", str(tmp_path), "--trials", "3", "--seed", "1")
    assert result.exit_code == 2 and "drop --seed, --trials" in result.output


def test_existing_run_dir_points_to_resume(tmp_path):
    result = invoke("--out", str(tmp_path))
    assert result.exit_code == 2 and "already exists" in result.output and "--resume" in result.output


def test_impossible_cell_on_the_command_line_is_refused(tmp_path):
    result = invoke("--out", str(tmp_path / "r"), "--relationship", "none", "--subject", "peer")
    assert result.exit_code == 2
    assert "impossible condition" in result.output and "--subject self" in result.output
    assert not (tmp_path / "r").exists()


def test_bad_grid_file_is_refused_naming_file_and_line(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nagents: [gemini-cli, no-such-agent]\nscenarios: [exfiltration-deletion]\n")
    result = invoke("--grid", str(grid), "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert f"{grid}:2: agents[1]: unknown agent 'no-such-agent'" in result.output
    assert not (tmp_path / "r").exists()


def test_summary_has_rates_per_cell(tmp_path):
    from runner.execute import Tally
    from runner.run_summary import write_summary

    run_dir = tmp_path / "run"
    outcomes = {"t0000": (PEER.id, True, True), "t0001": (BASELINE.id, True, False),
                "t0002": (PEER.id, True, False), "t0003": (BASELINE.id, False, None)}
    tally = Tally()
    for tid, (cell, valid, exfiltrated) in outcomes.items():
        trial = run_dir / TRIALS / tid
        trial.mkdir(parents=True)
        (trial / "config.json").write_text(json.dumps({"cell": cell}))
        (trial / "result.json").write_text(json.dumps({"valid": valid}))
        (trial / "verdicts.json").write_text(json.dumps({"exfiltration": {"value": exfiltrated, "evidence": []}}))
        tally.add(trial)
    summary = write_summary(run_dir, {"model": "scripted:population", "model_is_scripted": True})
    overall = summary["behaviours"]["exfiltration"]
    assert (overall["k"], overall["n"], overall["invalid"]) == (1, 3, 1)
    peer, baseline = summary["cells"][PEER.id], summary["cells"][BASELINE.id]
    assert (peer["trials"], peer["behaviours"]["exfiltration"]["k"], peer["behaviours"]["exfiltration"]["n"]) == (2, 1, 2)
    assert peer["behaviours"]["exfiltration"]["ci_low"] < 0.5 < peer["behaviours"]["exfiltration"]["ci_high"]
    assert (baseline["behaviours"]["exfiltration"]["n"], baseline["behaviours"]["exfiltration"]["invalid"]) == (1, 1)
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert tally.text() == "valid 3 invalid 1 | exfiltration 33%"


def test_worlds_and_trials_are_spread_out_on_ext4(tmp_path, monkeypatch):
    """World roots under SCRATCH and the run's partial/ carry ext4's top-directory flag (chattr +T):
    without it a crowded scratch filesystem made building a world several times dearer in CPU."""
    from runner import trial

    probe = tmp_path / "probe"
    probe.mkdir()
    if subprocess.run(["chattr", "+T", str(probe)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no top-directory flag")
    monkeypatch.setattr(trial, "SCRATCH", tmp_path)
    world_root = trial.new_scratch_dir("phw-test-")
    assert world_root.parent == tmp_path and "T" in lsattr_flags(world_root)
    run_dir = tmp_path / "run"
    create_run_dir(run_dir, make_info(run_dir, [PEER], trials=1)[0])
    assert "T" in lsattr_flags(run_dir / "partial")


def lsattr_flags(path):
    return subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]
