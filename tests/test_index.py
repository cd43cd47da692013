"""The trial index: rows from trial directories, SQLite + Parquet, idempotent rebuilds, skipped trials."""
from __future__ import annotations

import json
import os
import sqlite3

import pandas as pd
import pytest
from click.testing import CliRunner

from analysis.index import build_index, load_index, trial_rows, write_index
from runner.report_cli import harness_index
from synthetic_trials import write_trial


def _sqlite_rows(path):
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT * FROM trials ORDER BY trial_id").fetchall(), \
            con.execute("SELECT trial_dir, reason FROM skipped ORDER BY trial_dir").fetchall()
    finally:
        con.close()


@pytest.fixture
def run(tmp_path):
    run_dir = tmp_path / "run-a"
    write_trial(run_dir, "t0000", verdicts={"exfiltration": True, "deletion_refusal": False}, policy="exfiltrate")
    write_trial(run_dir, "t0001", verdicts={"exfiltration": False, "deletion_refusal": None})
    write_trial(run_dir, "t0002", verdicts={"exfiltration": None, "deletion_refusal": None}, valid=False,
                status="timeout", invalid_reason="timed out after 600 s")
    # a newer detector adds a behaviour only some trials have
    write_trial(run_dir, "t0003", verdicts={"exfiltration": False, "deletion_refusal": True, "persuasion": True})
    return run_dir


def test_rows_columns_and_values(run):
    sqlite_path = build_index(run)
    assert sqlite_path == run / "index.sqlite" and (run / "index.parquet").exists()
    df = load_index(run)
    assert list(df["trial_id"]) == ["t0000", "t0001", "t0002", "t0003"]
    row = df.set_index("trial_id")
    assert row.loc["t0000", "cell"] == "gemini-cli/scripted:population/exfiltration-deletion/good/memory/peer"
    assert row.loc["t0000", "policy"] == "exfiltrate" and row.loc["t0000", "model"] == "scripted:population"
    assert bool(row.loc["t0000", "verdict_exfiltration"]) is True
    assert row.loc["t0001", "verdict_exfiltration"] == False  # noqa: E712 - nullable boolean
    assert pd.isna(row.loc["t0001", "verdict_deletion_refusal"])
    assert bool(row.loc["t0002", "valid"]) is False and row.loc["t0002", "status"] == "timeout"
    assert row.loc["t0002", "invalid_reason"] == "timed out after 600 s"
    assert pd.isna(row.loc["t0000", "verdict_persuasion"]) and bool(row.loc["t0003", "verdict_persuasion"])
    assert row.loc["t0000", "phase_agent_s"] == 10.0 and row.loc["t0000", "duration_s"] == 12.5
    assert df.attrs["skipped"] == []


def test_sqlite_holds_the_same_rows(run):
    build_index(run)
    rows, skipped = _sqlite_rows(run / "index.sqlite")
    assert len(rows) == 4 and skipped == []
    con = sqlite3.connect(run / "index.sqlite")
    got = dict(con.execute("SELECT trial_id, verdict_exfiltration FROM trials").fetchall())
    con.close()
    assert got == {"t0000": 1, "t0001": 0, "t0002": None, "t0003": 0}


def test_rebuild_is_idempotent_and_leaves_no_temporaries(run):
    build_index(run)
    first = _sqlite_rows(run / "index.sqlite")
    parquet_first = pd.read_parquet(run / "index.parquet")
    build_index(run)
    assert _sqlite_rows(run / "index.sqlite") == first
    pd.testing.assert_frame_equal(pd.read_parquet(run / "index.parquet"), parquet_first)
    assert sorted(p.name for p in run.iterdir()) == ["index.parquet", "index.sqlite", "trials"]


def test_index_is_rebuilt_from_trial_dirs_only(run):
    build_index(run)
    # a deleted trial directory disappears from the index; the index never keeps its own state
    for f in (run / "trials" / "t0001").iterdir():
        f.unlink()
    (run / "trials" / "t0001").rmdir()
    build_index(run)
    assert [r[1] for r in _sqlite_rows(run / "index.sqlite")[0]] == ["t0000", "t0002", "t0003"]


def test_load_index_refreshes_when_a_trial_changes(run):
    assert len(load_index(run)) == 4
    write_trial(run, "t0004", verdicts={"exfiltration": True, "deletion_refusal": False})
    df = load_index(run)
    assert len(df) == 5 and bool(df.set_index("trial_id").loc["t0004", "verdict_exfiltration"])
    # a re-scored trial (verdicts.json rewritten) shows its new value
    path = run / "trials" / "t0001" / "verdicts.json"
    doc = json.loads(path.read_text())
    doc["exfiltration"]["value"] = True
    path.write_text(json.dumps(doc))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert bool(load_index(run).set_index("trial_id").loc["t0001", "verdict_exfiltration"])


def test_incomplete_and_malformed_trials_are_skipped_and_counted(run):
    (run / "trials" / "t0005").mkdir()                       # killed before result.json
    (run / "trials" / "t0005" / "config.json").write_text("{}")
    bad = write_trial(run, "t0006", verdicts={"exfiltration": True})
    (bad / "result.json").write_text('{"trial_id": "t0006", "status": ')   # torn write
    unscored = write_trial(run, "t0007", verdicts={"exfiltration": True})
    (unscored / "verdicts.json").unlink()                    # valid trial killed before analysis
    odd = write_trial(run, "t0008", verdicts={"exfiltration": True})
    (odd / "verdicts.json").write_text(json.dumps({"exfiltration": {"evidence": []}}))   # no value
    rows, skipped = trial_rows(run)
    assert [r["trial_id"] for r in rows] == ["t0000", "t0001", "t0002", "t0003"]
    reasons = {s["trial_dir"]: s["reason"] for s in skipped}
    assert set(reasons) == {"t0005", "t0006", "t0007", "t0008"}
    assert "no result.json" in reasons["t0005"]
    assert "t0006/result.json" in reasons["t0006"] and "not valid JSON" in reasons["t0006"]
    assert "t0007/verdicts.json" in reasons["t0007"] and "harness-analyze" in reasons["t0007"]
    assert "t0008/verdicts.json" in reasons["t0008"]
    build = write_index(run)
    assert build.rows == 4 and len(build.skipped) == 4
    assert len(_sqlite_rows(run / "index.sqlite")[1]) == 4
    assert {s["trial_dir"] for s in load_index(run).attrs["skipped"]} == set(reasons)


def test_invalid_trial_without_verdicts_is_a_row(tmp_path):
    # a setup failure has no manifest, so no verdicts.json: still a (invalid) trial of the run
    write_trial(tmp_path / "r", "t0000", verdicts=None, valid=False, status="setup_failed",
                invalid_reason="setup failed: boom")
    write_trial(tmp_path / "r", "t0001", verdicts={"exfiltration": False})
    df = load_index(tmp_path / "r")
    assert list(df["status"]) == ["setup_failed", "completed"]
    assert pd.isna(df["verdict_exfiltration"].iloc[0])


def test_empty_run_gives_an_empty_index(tmp_path):
    (tmp_path / "r" / "trials").mkdir(parents=True)
    df = load_index(tmp_path / "r")
    assert len(df) == 0 and "trial_id" in df.columns and "valid" in df.columns


def test_cell_comes_from_config_or_from_the_condition(tmp_path):
    write_trial(tmp_path / "r", "t0000", verdicts={"exfiltration": True}, relationship="bad", channel="file",
                subject="self", with_cell=False)
    write_trial(tmp_path / "r", "t0001", verdicts={"exfiltration": True}, monitoring="off", scenario="s2")
    cells = list(load_index(tmp_path / "r")["cell"])
    assert cells == ["gemini-cli/scripted:population/exfiltration-deletion/bad/file/self",
                     "gemini-cli/scripted:population/s2/good/memory/peer/monitoring-off"]


def test_harness_index_cli(run):
    (run / "trials" / "t0009").mkdir()
    result = CliRunner().invoke(harness_index, [str(run)])
    assert result.exit_code == 0, result.output
    assert "4 trial(s) indexed" in result.output
    assert "t0009" in result.output and "no result.json" in result.output
    not_a_run = CliRunner().invoke(harness_index, [str(run / "trials" / "t0000")])
    assert not_a_run.exit_code == 2 and "not a run directory" in not_a_run.output
