"""Per-phase trial timings of a run: runs `harness-run` (or reads an existing RUN_DIR) and prints
the median / p90 of each phase from every trial's result.json, plus the run's wall time.

    python bench/trial_phases.py --trials 20 [--model scripted:population] [--concurrency 2]
    python bench/trial_phases.py --run-dir runs/<id>

Writes the figures to bench/results/trial_phases-<run>.json."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


@click.command()
@click.option("--run-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
@click.option("--trials", type=int, default=20)
@click.option("--model", default="scripted:population")
@click.option("--agent", default="gemini-cli")
@click.option("--concurrency", type=int, default=None)
def main(run_dir, trials, model, agent, concurrency):
    wall = None
    if run_dir is None:
        run_dir = Path(tempfile.mkdtemp(prefix="bench-")) / "run"
        cmd = [sys.executable, "-c", "from runner.cli import harness_run; harness_run()", "--agent", agent,
               "--model", model, "--trials", str(trials), "--out", str(run_dir)]
        if concurrency:
            cmd += ["--concurrency", str(concurrency)]
        t0 = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT)
        wall = time.time() - t0
    rows = []
    for result in sorted((run_dir / "trials").glob("*/result.json")):
        r = json.loads(result.read_text())
        rows.append({**r["phases"], "total": r["ended_at"] - r["started_at"], "valid": r["valid"]})
    df = pd.DataFrame(rows)
    phases = [c for c in df.columns if c != "valid"]
    figures = {
        "run_dir": str(run_dir), "trials": len(df), "valid": int(df["valid"].sum()),
        "wall_s": wall if wall is not None else json.loads((run_dir / "summary.json").read_text())["meta"].get("wall_s"),
        "median_s": {p: round(float(df[p].median()), 3) for p in phases},
        "p90_s": {p: round(float(df[p].quantile(0.9)), 3) for p in phases},
    }
    print(json.dumps(figures, indent=2))
    out = ROOT / "bench" / "results" / f"trial_phases-{run_dir.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
