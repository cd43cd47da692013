"""What the watchers cost: trial wall time with every watcher on, with all off, and with each one
off in turn (fs = inotify watcher, agent_strace, server_strace), on a scripted policy. Rounds are
interleaved (one trial per configuration per round) so machine load hits every configuration alike.

    python bench/watchers_overhead.py [--agent gemini-cli --agent opencode] [--rounds 5]
                                      [--model scripted:exfiltrate]

Trial time = result.json ended_at - started_at (build, run, collect incl. parsing the watchers'
logs, analyze). Prints and writes bench/results/watchers_overhead.json. Target: all watchers
together add <= 10 % to the trial."""
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
sys.path.insert(0, str(ROOT))
from harnesses.registry import get_agent  # noqa: E402
from runner.sandbox import WATCHERS, WATCHERS_OFF_ENV  # noqa: E402

CONFIGS = {"all_on": (), "all_off": WATCHERS, **{f"without_{w}": (w,) for w in WATCHERS}}


def one_trial(agent: str, model: str, off: tuple[str, ...], out: Path) -> dict:
    cmd = [sys.executable, "-c", "from runner.cli import harness_run; harness_run()", "--agent", agent,
           "--model", model, "--trials", "1", "--concurrency", "1", "--out", str(out)]
    env = {**os.environ, WATCHERS_OFF_ENV: ",".join(off)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise click.ClickException(f"harness-run failed ({' '.join(off) or 'all watchers on'}):\n{proc.stderr[-2000:]}")
    r = json.loads(next((out / "trials").glob("*/result.json")).read_text())
    return {"total": r["ended_at"] - r["started_at"], **r["phases"], "valid": r["valid"]}


@click.command()
@click.option("--agent", "agents", multiple=True, default=["gemini-cli"])
@click.option("--model", default="scripted:exfiltrate")
@click.option("--rounds", type=int, default=5)
def main(agents, model, rounds):
    base = Path(tempfile.mkdtemp(prefix="bench-watchers-"))
    rows = []
    for agent in agents:
        if not get_agent(agent).installed():
            raise click.ClickException(f"{agent} is not installed: harness-run --agent {agent} --install")
        for r in range(rounds):
            for name, off in CONFIGS.items():
                res = one_trial(agent, model, off, base / f"{agent}-{name}-{r}")
                rows.append({**res, "cli": agent, "config": name, "round": r})
                print(f"{agent} round {r} {name:<24} total {res['total']:.2f} s agent {res.get('agent', 0):.2f} s "
                      f"collect {res.get('collect', 0):.2f} s valid {res['valid']}", flush=True)
    figures = aggregate(rows, model, rounds)
    print(json.dumps(figures, indent=2))
    out = ROOT / "bench" / "results" / "watchers_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written to {out}")


def aggregate(rows: list[dict], model: str, rounds: int) -> dict:
    """Medians per CLI and configuration; every trial's figures are kept under `trials`."""
    df = pd.DataFrame(rows)
    figures: dict = {"model": model, "rounds": rounds, "measured_at": time.time(), "agents": {}, "trials": rows}
    for agent, part in df.groupby("cli"):
        med = part.groupby("config")[["total", "agent", "collect"]].median()
        all_on, all_off = med.loc["all_on", "total"], med.loc["all_off", "total"]
        figures["agents"][agent] = {
            "valid": f"{int(part['valid'].sum())}/{len(part)}",
            "median_trial_s": {c: round(float(med.loc[c, "total"]), 3) for c in CONFIGS},
            "median_agent_phase_s": {c: round(float(med.loc[c, "agent"]), 3) for c in CONFIGS},
            "median_collect_s": {c: round(float(med.loc[c, "collect"]), 3) for c in CONFIGS},
            "all_watchers_overhead_pct": round(100 * (all_on - all_off) / all_off, 1),
            # What each watcher adds on top of the others: all on minus all on but that one.
            "per_watcher_overhead_pct": {w: round(100 * (all_on - med.loc[f"without_{w}", "total"]) / all_off, 1)
                                         for w in WATCHERS},
            "target_pct": 10,
        }
    return figures


if __name__ == "__main__":
    main()
