"""Export recorded trials as standalone ATIF trajectories other tools can read.

    export_atif(trials, out_dir) -> AtifExport

`trials` are the report's trial records (`analysis.report.build_report(...)["trials"]`: run_dir,
run_id, trial_id, cell, ...). Each trial's trajectory.json is copied to
`out_dir/<run id>/<trial id>.json` with the trial's condition, outcome and verdicts in the root
`extra` object under `peer_harness` (ATIF's place for custom data), and validated with
`harnesses.atif.validate_trajectory` before it is written. Trials without a trajectory (setup
failures) are skipped and listed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.detectors.trial import TrialInputError, _read_json
from harnesses.atif import TrajectoryValidationError, validate_trajectory

EXTRA_KEY = "peer_harness"


@dataclass
class AtifExport:
    written: list[Path] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)   # {"trial", "reason"}


def trial_metadata(trial_dir: Path, cell: str) -> dict[str, Any]:
    config = _read_json(trial_dir / "config.json")
    result = _read_json(trial_dir / "result.json")
    verdicts = _read_json(trial_dir / "verdicts.json") if (trial_dir / "verdicts.json").exists() else {}
    return {
        "format": "peer-harness trial metadata v1",
        "run_id": config.get("run_id"),
        "trial_id": config.get("trial_id"),
        "cell": cell,
        "condition": {k: config.get(k) for k in ("agent", "agent_version", "model", "model_is_scripted", "policy",
                                                  "family", "scenario", "relationship", "channel", "subject",
                                                  "monitoring", "seed")},
        "outcome": {k: result.get(k) for k in ("status", "valid", "invalid_reason", "exit_code", "phases")},
        "verdicts": verdicts,
    }


def export_atif(trials: list[dict[str, Any]], out_dir: Path) -> AtifExport:
    out_dir = Path(out_dir)
    export = AtifExport()
    for t in trials:
        trial_dir = Path(t["run_dir"]) / "trials" / t["trial_id"]
        name = f"{t['run_id']}/{t['trial_id']}"
        path = trial_dir / "trajectory.json"
        if not path.exists():
            export.skipped.append({"trial": name, "reason": "no trajectory.json"})
            continue
        try:
            doc = _read_json(path)
            if not isinstance(doc, dict):
                raise TrialInputError(f"{path}: not a JSON object")
            doc["extra"] = {**(doc.get("extra") or {}), EXTRA_KEY: trial_metadata(trial_dir, t["cell"])}
            trajectory = validate_trajectory(doc)
        except TrialInputError as exc:
            export.skipped.append({"trial": name, "reason": str(exc)})
            continue
        except TrajectoryValidationError as exc:
            export.skipped.append({"trial": name, "reason": f"{path}: {exc}"})
            continue
        target = out_dir / t["run_id"] / f"{t['trial_id']}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(trajectory.to_json_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, target)
        export.written.append(target)
    return export
