"""Per-run wall time and peak memory of the codex and claude-code CLIs.

Two measurements per agent:
1. Bare episodes: the CLI launched on the host (the adapter's host_command/env/prepare_home)
   against a ScriptedModelServer playing a 3-reply local policy (two shell calls in two
   replies, a read, a final answer), sequentially. The process tree's summed VmRSS is sampled
   from /proc every 20 ms: wall time, time to the first model request, peak tree RSS.
2. Trials: `harness-run --agent A --trials N --model scripted:exfiltrate` (real worlds,
   sandboxed, recorded): the median per-phase trial times from every result.json.

    python bench/agents_codex_claude.py [--agents codex,claude-code] [--runs 5] [--trials 3]

Prints and writes bench/results/agents_codex_claude.json."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harnesses.base import AgentPaths  # noqa: E402
from harnesses.registry import get_agent  # noqa: E402
from runner.model_server import ScriptedModelServer  # noqa: E402
from runner.policy import load_policy_file  # noqa: E402

POLICY = """name: bench
turns:
  - say: Creating the first file.
    shell: echo step1 > step1.txt && ls -la
  - say: Reading it back and listing.
    calls: [{read: step1.txt}, {shell: "cat step1.txt > out.txt && wc -c out.txt"}]
  - say: Done.
"""


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return kids


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(root: int) -> int:
    kids, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        total += _rss_kib(pid)
        todo += kids.get(pid, [])
    return total


def bare_episode(agent_name: str, work: Path) -> dict:
    agent = get_agent(agent_name)
    ws, home, tmp = work / "ws", work / "home", work / "tmp"
    for d in (ws, home, tmp):
        d.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    (ws / agent.memory_file).write_text("# Memory\nbench-marker\n")
    (work / "p.yaml").write_text(POLICY)
    server = ScriptedModelServer(load_policy_file(work / "p.yaml"), work / "traffic.jsonl", workspace=str(ws),
                                 memory_marker="bench-marker").start()
    try:
        if agent_name == "codex":
            agent.prepare_home(home, endpoint=server.url)
        else:
            agent.prepare_home(home)
        env = agent.host_env(AgentPaths(workspace=str(ws), home=str(home), tmp=str(tmp)), server.url)
        peak, done = [0], threading.Event()
        t0 = time.time()
        proc = subprocess.Popen(agent.host_command("Do the task.", "stub-model"), cwd=ws, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss_kib(proc.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait(timeout=300)
        wall = time.time() - t0
        done.set()
        sampler.join()
    finally:
        server.stop()
    rows = [json.loads(line) for line in (work / "traffic.jsonl").read_text().splitlines()]
    ok = code == 0 and server.finished and server.memory_seen
    return {"ok": ok, "wall_s": wall, "first_request_s": rows[0]["ts_start"] - t0 if rows else None,
            "peak_tree_rss_mb": peak[0] / 1024, "requests": len(rows)}


def trials(agent_name: str, n: int) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="bench-agents-")) / "run"
    t0 = time.time()
    subprocess.run([sys.executable, "-c", "from runner.cli import harness_run; harness_run()", "--agent", agent_name,
                    "--model", "scripted:exfiltrate", "--trials", str(n), "--out", str(run_dir)],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    results = [json.loads(p.read_text()) for p in sorted((run_dir / "trials").glob("*/result.json"))]
    phases = sorted({k for r in results for k in r["phases"]})
    return {"run_dir": str(run_dir), "trials": len(results), "valid": sum(r["valid"] for r in results),
            "run_wall_s": round(wall, 2),
            "median_trial_s": round(statistics.median(r["ended_at"] - r["started_at"] for r in results), 3),
            "median_phase_s": {p: round(statistics.median(r["phases"].get(p, 0.0) for r in results), 3)
                               for p in phases}}


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


@click.command()
@click.option("--agents", default="codex,claude-code", show_default=True)
@click.option("--runs", type=click.IntRange(min=1), default=5, show_default=True, help="Bare episodes per agent.")
@click.option("--trials", "n_trials", type=click.IntRange(min=0), default=3, show_default=True,
              help="harness-run trials per agent (0: skip).")
def main(agents: str, runs: int, n_trials: int) -> None:
    # Other work on the machine inflates every figure: the load at the start is recorded with them.
    figures: dict = {"runs": runs, "host_cores": len(Path("/proc/cpuinfo").read_text().split("processor")) - 1,
                     "load_avg_1m_at_start": float(Path("/proc/loadavg").read_text().split()[0])}
    for name in agents.split(","):
        agent = get_agent(name)
        if not agent.installed():
            raise click.ClickException(f"{name} is not installed: harness-run --agent {name} --install")
        with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
            eps = [bare_episode(name, Path(tmp) / f"e{i}") for i in range(runs)]
        good = [e for e in eps if e["ok"]]
        entry: dict = {"version": agent.version, "bare_ok": f"{len(good)}/{runs}"}
        if good:
            entry["bare_wall_s"] = _summary([e["wall_s"] for e in good])
            entry["bare_first_request_s"] = _summary([e["first_request_s"] for e in good])
            entry["bare_peak_tree_rss_mb"] = _summary([e["peak_tree_rss_mb"] for e in good])
        if n_trials:
            entry["trials"] = trials(name, n_trials)
        figures[name] = entry
        print(json.dumps({name: entry}, indent=2), flush=True)
    out = ROOT / "bench" / "results" / "agents_codex_claude.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
