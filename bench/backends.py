"""Per-trial overhead of each execution backend on this machine: the same trials (same seed, so
the same policies) run with `--backend local` (bubblewrap worlds, "local"), with `--backend local
--sandbox docker` (Docker worlds, "docker") and with `--backend ray` on a single-node Ray cluster
the run starts itself ("ray-local"), one agent at a time (`--concurrency 1`).

Trials overlap even then (the next world is built, and the last one collected, while an agent
runs), so the figures are per trial, from each result.json's phases, plus the throughput:
* harness_s: the trial's own work around its agent: every phase but `agent` and `queued`
  (build, start and stop the world, collect, analyze); the sandbox's cost is in start/stop;
* agent_s: the agent phase (the sandbox can slow the agent itself: strace, runc exec, veths);
* wall_per_trial_s: the run's execute wall (summary.json, first trial's start to last trial's end,
  Ray's node checks and final sweep included) over the number of trials;
* fixed_start_stop_s: the process wall around it (imports, preflight; for Ray, starting and
  stopping the cluster).
For Ray the per-task parts recorded in placement.json are summarised too: the node check,
packing the trial directory, unpacking it on the driver, the archive size.

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
        phases = result["phases"]
        row = {"valid": result["valid"], "agent_s": phases.get("agent"),
               "harness_s": sum(v for k, v in phases.items() if k not in ("agent", "queued", "total")),
               "start_world_s": phases.get("start_world"), "stop_world_s": phases.get("stop_world")}
        if (trial / "placement.json").exists():
            placement = json.loads((trial / "placement.json").read_text())
            row.update({k: placement[k] for k in ("node_check_s", "pack_s", "unpack_s", "archive_bytes")})
        rows.append(row)
    df = pd.DataFrame(rows)
    execute_wall = json.loads((run_dir / "summary.json").read_text())["meta"]["wall_s"]
    figures = {
        "trials": len(df), "valid": int(df["valid"].sum()),
        "process_wall_s": round(process_wall, 2), "execute_wall_s": execute_wall,
        "wall_per_trial_s": round(execute_wall / len(df), 3),
        "fixed_start_stop_s": round(process_wall - execute_wall, 2),
    }
    for column in ("harness_s", "agent_s", "start_world_s", "stop_world_s", "node_check_s", "pack_s", "unpack_s",
                   "archive_bytes"):
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
        "what": "per trial, one agent at a time, gemini-cli with scripted:population: harness_s = every phase "
                "but agent and queued; agent_s; wall_per_trial_s = execute wall / trials",
        "machine": {"cores": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "backends": {**previous.get("backends", {}), **measured},
    }
    if "local" in figures["backends"]:
        base = figures["backends"]["local"]
        figures["extra_vs_local_s"] = {
            name: {k: round(b[k] - base[k], 3) for k in ("harness_s_median", "agent_s_median", "wall_per_trial_s")
                   if k in b and k in base}
            for name, b in figures["backends"].items() if name != "local"}
    print(json.dumps(figures, indent=2))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
