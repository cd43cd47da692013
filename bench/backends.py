"""Per-trial overhead of each execution backend on this machine: the same trials (same seed, so
the same policies) run with `--backend local` (bubblewrap worlds), with `--backend local --sandbox
docker` (Docker worlds, "docker") and with `--backend ray` on a single-node Ray cluster the run
starts itself ("ray-local"), one trial at a time, so a trial's overhead is the
run's wall time not spent inside trials, and the gap between one trial's end and the next one's
start (the backend's own work per trial, without its fixed costs):

    overhead per trial = (execute wall - sum of trial durations) / trials

(the execute wall is summary.json's wall_s, from the first trial's start to the last trial's
end, including Ray's node check of the cluster and its final sweep). The process wall adds the
fixed start cost (imports, preflight; for Ray, starting and stopping the cluster). For Ray the
per-task parts recorded in placement.json are summarised too: the node check, packing the
trial directory, unpacking it on the driver, the archive size.

    python bench/backends.py [--trials 8] [--backends local,docker,ray-local]

Writes bench/results/backends.json (a backend measured before and not measured now is kept)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "backends.json"
BACKEND_FLAGS = {"local": ["--backend", "local"], "docker": ["--backend", "local", "--sandbox", "docker"],
                 "ray-local": ["--backend", "ray"]}


def measure(backend: str, trials: int, seed: int, work: Path) -> dict:
    run_dir = work / backend / "run"
    cmd = [sys.executable, "-c", "from runner.cli import harness_run; harness_run()", "--agent", "gemini-cli",
           "--model", "scripted:population", "--trials", str(trials), "--seed", str(seed), "--concurrency", "1",
           "--out", str(run_dir), *BACKEND_FLAGS[backend]]
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    process_wall = time.time() - t0
    rows = []
    for trial in sorted((run_dir / "trials").iterdir()):
        result = json.loads((trial / "result.json").read_text())
        row = {"trial_s": result["ended_at"] - result["started_at"], "valid": result["valid"],
               "started_at": result["started_at"], "ended_at": result["ended_at"],
               # the sandbox's own cost is inside the trial: starting and stopping its world
               "start_world_s": result["phases"].get("start_world"), "stop_world_s": result["phases"].get("stop_world")}
        if (trial / "placement.json").exists():
            placement = json.loads((trial / "placement.json").read_text())
            row.update({k: placement[k] for k in ("node_check_s", "pack_s", "unpack_s", "archive_bytes")})
        rows.append(row)
    df = pd.DataFrame(rows).sort_values("started_at")
    # One trial at a time: from one trial's end to the next one's start is the backend's own work
    # per trial (fixed costs, like starting Ray or its first worker, fall before the first trial).
    gaps = df["started_at"].shift(-1) - df["ended_at"]
    execute_wall = json.loads((run_dir / "summary.json").read_text())["meta"]["wall_s"]
    figures = {
        "trials": len(df), "valid": int(df["valid"].sum()),
        "process_wall_s": round(process_wall, 2), "execute_wall_s": execute_wall,
        "trial_s_median": round(float(df["trial_s"].median()), 3),
        "overhead_per_trial_s": round((execute_wall - float(df["trial_s"].sum())) / len(df), 3),
        "fixed_start_stop_s": round(process_wall - execute_wall, 2),
        "gap_between_trials_s_median": round(float(gaps.median()), 3),
    }
    for column in ("start_world_s", "stop_world_s", "node_check_s", "pack_s", "unpack_s", "archive_bytes"):
        if column in df:
            figures[f"{column}_median"] = round(float(df[column].median()), 4)
    return figures


@click.command()
@click.option("--trials", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--backends", default="local,docker,ray-local", show_default=True,
              help=f"Comma-separated, of: {', '.join(BACKEND_FLAGS)}.")
def main(trials: int, seed: int, backends: str):
    names = [b.strip() for b in backends.split(",") if b.strip()]
    unknown = set(names) - set(BACKEND_FLAGS)
    if unknown:
        raise click.BadParameter(f"unknown backend(s) {sorted(unknown)}; known: {', '.join(BACKEND_FLAGS)}")
    previous = json.loads(OUT.read_text()) if OUT.exists() else {}
    measured = {}
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as work:
        for name in names:
            measured[name] = measure(name, trials, seed, Path(work))
            print(name, json.dumps(measured[name], indent=2))
    figures = {
        "what": "per-trial overhead of each backend: (execute wall - sum of trial durations) / trials, "
                "one trial at a time, gemini-cli with scripted:population",
        "machine": {"cores": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "backends": {**previous.get("backends", {}), **measured},
    }
    if "local" in figures["backends"]:
        base = figures["backends"]["local"]["overhead_per_trial_s"]
        figures["extra_overhead_per_trial_vs_local_s"] = {
            name: round(b["overhead_per_trial_s"] - base, 3) for name, b in figures["backends"].items()
            if name != "local"}
        # A sandbox's cost (docker: containers, veths, runc exec) is inside each trial, not between them.
        local_trial = figures["backends"]["local"]["trial_s_median"]
        figures["extra_trial_s_median_vs_local"] = {
            name: round(b["trial_s_median"] - local_trial, 3) for name, b in figures["backends"].items()
            if name != "local"}
    print(json.dumps(figures, indent=2))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
