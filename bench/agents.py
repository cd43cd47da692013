"""Per-trial wall time and peak memory of every registered agent CLI (default: all of them).

Two measurements per agent:
1. Bare episodes: the CLI launched on the host (adapter host_command / env / prepared HOME)
   against a ScriptedModelServer playing a 3-reply local policy (two shell calls in two
   replies, a read, a final answer), sequentially; the process tree's summed VmRSS sampled from
   /proc every 20 ms: wall time, time to the first model request, peak tree RSS.
2. Trials: `harness-run --agent A --trials N --model scripted:exfiltrate --concurrency 1` (real
   worlds: sandboxed, under strace, recorded): median per-trial and per-phase times from every
   result.json, and the peak summed VmRSS of the CLI's process tree inside the worlds of that
   run (the host sees the world's processes; see world_cli_rss_kib).

    python bench/agents.py [--agents codex,claude-code] [--runs 3] [--trials 3]

Prints and writes bench/results/agents.json (merged: agents not measured keep their figures)."""
from __future__ import annotations

import inspect
import json
import os
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
from harnesses.registry import AGENTS, SANDBOX_AGENT_DIR, get_agent  # noqa: E402
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


def _descendants(root: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def tree_rss_kib(root: int) -> int:
    """Summed VmRSS of ``root`` and all its descendants."""
    return sum(_rss_kib(pid) for pid in _descendants(root, _children()))


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def _prepare(agent, home: Path, endpoint: str) -> None:
    """Prepare HOME for a run on the host (adapters differ in how they take host paths)."""
    if hasattr(agent, "host_prepare_home"):
        agent.host_prepare_home(home)
    elif "endpoint" in inspect.signature(agent.prepare_home).parameters:
        agent.prepare_home(home, endpoint=endpoint)
    else:
        agent.prepare_home(home)


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
        _prepare(agent, home, server.url)
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


def world_cli_rss_kib(run_pid: int) -> int:
    """Summed VmRSS of the agent CLI's process tree in the worlds of one harness-run (pid
    `run_pid`): every descendant whose argv[0] runs from the sandbox's mounts (or the opencode
    sh wrapper), with its own descendants (tool commands). strace and bwrap, whose command lines
    merely contain the CLI's, are left out; so are other runs on the machine."""
    kids = _children()
    roots = []
    for pid in _descendants(run_pid, kids):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].startswith(b"/opt/peer-harness/") or (argv[0] == b"/bin/sh" and SANDBOX_AGENT_DIR.encode() in b" ".join(argv)):
            roots.append(pid)
    tree = {pid for root in roots for pid in _descendants(root, kids)}
    return sum(_rss_kib(pid) for pid in tree)


def trials(agent_name: str, n: int) -> dict:
    (ROOT / "runs").mkdir(exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-agents-", dir=ROOT / "runs")) / "run"   # runs/ is git-ignored
    peak, done = [0], threading.Event()

    def sample(run_pid: int) -> None:
        while not done.is_set():
            peak[0] = max(peak[0], world_cli_rss_kib(run_pid))
            time.sleep(0.05)

    t0 = time.time()
    run = subprocess.Popen([sys.executable, "-c", "from runner.cli import harness_run; harness_run()", "--agent",
                            agent_name, "--model", "scripted:exfiltrate", "--trials", str(n), "--concurrency", "1",
                            "--out", str(run_dir)], cwd=ROOT, stdout=subprocess.DEVNULL)
    sampler = threading.Thread(target=sample, args=(run.pid,), daemon=True)
    sampler.start()
    try:
        if run.wait() != 0:
            raise click.ClickException(f"harness-run --agent {agent_name} failed (exit {run.returncode})")
    finally:
        done.set()
        sampler.join()
    wall = time.time() - t0
    results = [json.loads(p.read_text()) for p in sorted((run_dir / "trials").glob("*/result.json"))]
    phases = sorted({k for r in results for k in r["phases"]})
    return {"run_dir": str(run_dir), "trials": len(results), "valid": sum(r["valid"] for r in results),
            "run_wall_s": round(wall, 2),
            "median_trial_s": round(statistics.median(r["ended_at"] - r["started_at"] for r in results), 3),
            "median_phase_s": {p: round(statistics.median(r["phases"].get(p, 0.0) for r in results), 3)
                               for p in phases},
            "peak_cli_tree_rss_mb_in_world": round(peak[0] / 1024, 1)}


@click.command()
@click.option("--agents", default=",".join(AGENTS), show_default=True)
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True, help="Bare episodes per agent.")
@click.option("--trials", "n_trials", type=click.IntRange(min=0), default=3, show_default=True,
              help="harness-run trials per agent (0: skip).")
def main(agents: str, runs: int, n_trials: int) -> None:
    out = ROOT / "bench" / "results" / "agents.json"
    figures: dict = json.loads(out.read_text()) if out.exists() else {}
    figures.update({"host_cores": len(Path("/proc/cpuinfo").read_text().split("processor")) - 1})
    for name in agents.split(","):
        agent = get_agent(name)
        if not agent.installed():
            raise click.ClickException(f"{name} is not installed: harness-run --agent {name} --install")
        load = round(os.getloadavg()[0], 2)
        with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
            eps = [bare_episode(name, Path(tmp) / f"e{i}") for i in range(runs)]
        good = [e for e in eps if e["ok"]]
        # The host is shared: the load average says how much the figures are inflated.
        entry: dict = {"version": agent.version, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "load_avg_1m_at_start": load,
                       "bare_runs": runs, "bare_ok": f"{len(good)}/{runs}"}
        if good:
            entry["bare_wall_s"] = summary([e["wall_s"] for e in good])
            entry["bare_first_request_s"] = summary([e["first_request_s"] for e in good])
            entry["bare_peak_tree_rss_mb"] = summary([e["peak_tree_rss_mb"] for e in good])
        if n_trials:
            entry["trials"] = trials(name, n_trials)
        figures[name] = entry
        print(json.dumps({name: entry}, indent=2), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=2) + "\n")   # after each agent: a later failure keeps it
        print(f"written to {out}")


if __name__ == "__main__":
    main()
