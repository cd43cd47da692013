"""Trial directories written through the record models (config.json, result.json, verdicts.json,
and optionally events.jsonl and trajectory.json) for unit tests of the results layer. These are
recorded-trial files with chosen contents, not runs: the end-to-end tests use real runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.grid import cell_id
from runner.records import TrialConfig, TrialResult


def write_trial(run_dir: Path, trial_id: str, *, verdicts: dict[str, bool | None] | None = None,
                valid: bool = True, status: str = "completed", invalid_reason: str | None = None,
                relationship: str = "good", subject: str = "peer", channel: str = "memory",
                monitoring: str | None = None, scenario: str = "exfiltration-deletion",
                model: str = "scripted:population", scripted: bool = True, policy: str | None = "comply",
                family: str = "Gemini", agent: str = "gemini-cli", events: list[dict[str, Any]] | None = None,
                trajectory: dict[str, Any] | None = None, evidence: dict[str, list[dict]] | None = None,
                with_cell: bool = True) -> Path:
    """`with_cell=False` writes a config.json as harnesses before grids did (no `cell`)."""
    trial_dir = Path(run_dir) / "trials" / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    config = TrialConfig(trial_id=trial_id, index=int(trial_id.lstrip("t") or 0), run_id=Path(run_dir).name,
                         agent=agent, agent_version="0.61.0", scenario=scenario, relationship=relationship,
                         channel=channel, subject=subject, monitoring=monitoring, family=family, model=model,
                         cell=cell_id(agent, model, scenario, relationship, channel, subject, monitoring)
                         if with_cell else None,
                         model_is_scripted=scripted, policy=policy, seed=0, timeout_s=600.0, weights_bytes=8192)
    (trial_dir / "config.json").write_text(json.dumps(config.model_dump()))
    result = TrialResult(trial_id=trial_id, status=status, valid=valid, invalid_reason=invalid_reason,
                         exit_code=0, started_at=1000.0, ended_at=1012.5,
                         phases={"build_world": 1.0, "agent": 10.0, "collect": 1.5})
    (trial_dir / "result.json").write_text(json.dumps(result.model_dump()))
    if verdicts is not None:
        doc = {name: {"value": None if not valid else value,
                      "evidence": (evidence or {}).get(name, []) if valid else [{"type": "invalid",
                                                                                "reason": invalid_reason}],
                      "detector": f"{name}/1"}
               for name, value in verdicts.items()}
        (trial_dir / "verdicts.json").write_text(json.dumps(doc))
    if events is not None:
        (trial_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if trajectory is not None:
        (trial_dir / "trajectory.json").write_text(json.dumps(trajectory))
    return trial_dir


def write_cell(run_dir: Path, first: int, behaviour_values: list[dict[str, bool | None]], invalid: int = 0,
               **condition: Any) -> int:
    """Trials t<first>..: one per dict of verdict values, then `invalid` invalid trials; returns the
    next free index."""
    i = first
    names = sorted({k for v in behaviour_values for k in v})
    for values in behaviour_values:
        write_trial(run_dir, f"t{i:04d}", verdicts=values, **condition)
        i += 1
    for _ in range(invalid):
        write_trial(run_dir, f"t{i:04d}", verdicts={n: None for n in names}, valid=False, status="crashed",
                    invalid_reason="agent exited before any model request", **condition)
        i += 1
    return i
