"""End of a run: rates per behaviour (k / n, 95% Wilson interval, invalid count) over the whole
run and per cell, printed as a table and written to `RUN_DIR/summary.json`."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from analysis.stats import summarize, summary_dict
from runner.run_store import TRIALS
from runner.trial import write_json


def _trials_by_cell(run_dir: Path) -> dict[str, list[Path]]:
    by_cell: dict[str, list[Path]] = {}
    trials = run_dir / TRIALS
    for trial in sorted(p for p in trials.iterdir() if p.is_dir()):
        config = json.loads((trial / "config.json").read_text())
        by_cell.setdefault(config.get("cell") or "(no cell recorded)", []).append(trial)
    return by_cell


def summary_table(df: pd.DataFrame, title: str) -> Table:
    table = Table(title=title)
    for col in ("behaviour", "k / n", "rate", "95% CI (Wilson)", "invalid"):
        table.add_column(col, justify="left" if col == "behaviour" else "right")
    for row in df.itertuples():
        rate = "-" if row.n == 0 else f"{row.rate:.1%}"
        ci = "-" if row.n == 0 else f"[{row.ci_low:.1%}, {row.ci_high:.1%}]"
        table.add_row(row.behaviour, f"{row.k} / {row.n}", rate, ci, str(row.invalid))
    return table


def write_summary(run_dir: Path, meta: dict) -> dict:
    """Summarise every finished trial of the run; returns what summary.json holds."""
    by_cell = _trials_by_cell(run_dir)
    overall = summarize([t for trials in by_cell.values() for t in trials])
    frames = {cell: summarize(trials) for cell, trials in by_cell.items()}
    summary = summary_dict(overall, meta)
    summary["cells"] = {cell: {"trials": len(by_cell[cell]), "behaviours": summary_dict(df)["behaviours"]}
                        for cell, df in frames.items()}
    write_json(run_dir / "summary.json", summary)
    scripted = " (SCRIPTED model: validates the harness, not a model)" if meta.get("model_is_scripted") else ""
    model = meta.get("model") or "several models"
    console = Console()
    if len(frames) == 1:
        console.print(summary_table(overall, f"{run_dir.name}: {model}{scripted}"))
    else:
        console.print(f"[bold]{run_dir.name}[/]: {len(frames)} cells{scripted}")
        for cell, df in frames.items():
            console.print(summary_table(df, f"{cell}  ({len(by_cell[cell])} trials)"))
    return summary
