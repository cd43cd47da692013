"""Wilson intervals and per-behaviour summaries."""
from __future__ import annotations

import json
import math

import pytest

from analysis.stats import COLUMNS, summarize, summary_dict, wilson_interval
from analysis.verdicts import Verdict


@pytest.mark.parametrize("k,n,lo,hi", [
    (0, 10, 0.0, 0.2775),
    (5, 10, 0.2366, 0.7634),
    (10, 10, 0.7225, 1.0),
    (200, 200, 0.9812, 1.0),
    (1, 100, 0.0018, 0.0545),
    (43, 100, 0.3373, 0.5278),   # worked by hand: center 0.43259, half-width 0.09526
])
def test_wilson_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-4)
    assert got[1] == pytest.approx(hi, abs=1e-4)


def test_wilson_edges_and_levels():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    lo90, hi90 = wilson_interval(5, 10, conf=0.90)
    lo99, hi99 = wilson_interval(5, 10, conf=0.99)
    assert lo99 < lo90 < 0.5 < hi90 < hi99
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, conf=1.5)


def _rec(valid=True, **values):
    return {"valid": valid, "verdicts": {k: {"value": v, "evidence": []} for k, v in values.items()}}


def test_summarize_records():
    records = [
        _rec(exfiltration=True, deletion_refusal=False),
        _rec(exfiltration=True, deletion_refusal=None),     # not applicable: not in n
        _rec(exfiltration=False, deletion_refusal=True),
        _rec(exfiltration=False, deletion_refusal=False),
        _rec(valid=False, exfiltration=None, deletion_refusal=None),
    ]
    df = summarize(records)
    assert list(df.columns) == COLUMNS
    rows = df.set_index("behaviour")
    assert rows.loc["exfiltration", "k"] == 2 and rows.loc["exfiltration", "n"] == 4
    assert rows.loc["exfiltration", "rate"] == pytest.approx(0.5)
    assert rows.loc["deletion_refusal", "k"] == 1 and rows.loc["deletion_refusal", "n"] == 3
    assert (df["invalid"] == 1).all()
    lo, hi = wilson_interval(2, 4)
    assert rows.loc["exfiltration", "ci_low"] == pytest.approx(lo)
    assert rows.loc["exfiltration", "ci_high"] == pytest.approx(hi)


def test_summarize_bare_verdict_maps_and_models():
    invalid = {"exfiltration": Verdict(value=None, evidence=[{"type": "invalid", "reason": "crash"}])}
    items = [{"exfiltration": Verdict(value=True)}, {"exfiltration": {"value": False}}, invalid]
    row = summarize(items).iloc[0]
    assert (row["k"], row["n"], row["invalid"]) == (1, 2, 1)


def test_summarize_trial_dirs(tmp_path):
    def trial(name, valid, value):
        d = tmp_path / name
        d.mkdir()
        (d / "result.json").write_text(json.dumps({"valid": valid}))
        (d / "verdicts.json").write_text(json.dumps(
            {"exfiltration": {"value": value, "evidence": [], "detector": "exfiltration/1"}}))
        return d
    dirs = [trial("a", True, True), trial("b", True, False), trial("c", False, None), str(trial("d", True, True))]
    row = summarize(dirs).iloc[0]
    assert (row["behaviour"], row["k"], row["n"], row["invalid"]) == ("exfiltration", 2, 3, 1)


def test_summary_dict_is_json_ready():
    df = summarize([_rec(valid=False, exfiltration=None), _rec(deletion_done=True)])
    out = summary_dict(df, {"run_id": "r1", "agent": "gemini-cli"})
    text = json.dumps(out, allow_nan=False)           # NaN became null
    back = json.loads(text)
    assert back["meta"]["run_id"] == "r1" and back["interval"] == "wilson" and back["conf"] == 0.95
    ex = back["behaviours"]["exfiltration"]
    assert ex == {"k": 0, "n": 0, "rate": None, "ci_low": None, "ci_high": None, "invalid": 1}
    assert back["behaviours"]["deletion_done"]["k"] == 1


def test_empty_summary():
    df = summarize([])
    assert list(df.columns) == COLUMNS and df.empty
    assert summary_dict(df, {})["behaviours"] == {}
