"""The harness against a bare loop of the same CLI episodes.

Runs N offline trials of gemini-cli on scripted:population through `harness-run`, then the same N
episodes (the same policy per index: population drawn from the same seed) as a bare loop: the
CLI launched on the host against a ScriptedModelServer in a temp workspace, no world, no
sandbox, no recorder, at the same concurrency. There are no servers: `ssh`, `scp`, `sftp` and
`rsync` are stand-ins on PATH that fail at once, so the bare loop is a lower bound on the CLI's
own time.

    python bench/run_vs_bare.py [--trials 200] [--concurrency 2] [--seed 0]

Prints and writes to bench/results/run_vs_bare.json: both wall times and their ratio; the
per-trial harness overhead: on the critical path (median time a trial holds one of the run's
`concurrency` agent slots -- world start and agent -- minus the median bare episode; building,
stopping, collecting and analyzing run beside the other trials' agents), as latency (median trial
time without waiting for a slot, minus the median bare episode) and at run level ((harness wall -
bare wall) x concurrency / N); per-phase medians of the harness trials (result.json phases) and
the median time per trial in SSH sessions with the world's servers (within the agent phase; the
bare loop has none); the harness process's peak RSS (VmHWM, polled); CPU seconds of the
harness's whole process tree (worlds, servers, recorders, agents) against the bare loop's, and of
the harness process alone per trial (CPU figures are far less disturbed by other load on the
machine than wall times); the load average at start and end. Targets on a 2-core machine: ratio <= 1.15, overhead <= 300 ms median,
RSS <= 200 MB."""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harnesses.base import AgentPaths  # noqa: E402
from harnesses.registry import get_agent  # noqa: E402
from runner.policy import Mixture  # noqa: E402
from runner.run_plan import load_model  # noqa: E402
from runner.model_server import ScriptedModelServer  # noqa: E402
from workspaces.scenario import load_scenario  # noqa: E402
from workspaces.world import Condition, build_world  # noqa: E402

SCENARIO = "exfiltration-deletion"
MODEL = "scripted:population"


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of one process so far (its own, not its children's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SSHD_CONNECTION = re.compile(r"^(\S+) Connection from \S+ port (\d+)")
SSHD_DISCONNECTED = re.compile(r"^(\S+) Disconnected from (?:user \S+ )?\S+ port (\d+)")


def ssh_session_seconds(trial_dir: Path) -> float:
    """Time the trial's agent spent in SSH connections to the world's servers (from each
    server's sshd log: connection to disconnect). The bare loop has no servers: its ssh fails at once."""
    total = 0.0
    for log in (trial_dir / "record").glob("sshd-*.log"):
        opened: dict[str, float] = {}
        for line in log.read_text(errors="replace").splitlines():
            if m := SSHD_CONNECTION.match(line):
                opened[m.group(2)] = float(m.group(1))
            elif (m := SSHD_DISCONNECTED.match(line)) and m.group(2) in opened:
                total += float(m.group(1)) - opened.pop(m.group(2))
    return total


def run_harness(run_dir: Path, trials: int, concurrency: int, seed: int) -> dict:
    """Wall time of `harness-run`, its peak RSS in MB (VmHWM of the harness process), the CPU
    time of the harness process itself and of its whole tree (worlds, servers, agents)."""
    cmd = [sys.executable, "-c", "from runner.cli import harness_run; harness_run()", "--agent", "gemini-cli",
           "--model", MODEL, "--scenario", SCENARIO, "--trials", str(trials), "--concurrency", str(concurrency),
           "--seed", str(seed), "--out", str(run_dir)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    peak, own_cpu = 0.0, 0.0
    while True:   # poll /proc while it lives; reap with wait4 for the tree's CPU time
        peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
        own_cpu = process_cpu_s(proc.pid) or own_cpu
        done, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.2)
    wall = time.time() - t0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code != 0:
        raise SystemExit(f"harness-run failed with exit {code}")
    return {"wall": wall, "rss": peak, "own_cpu": own_cpu, "tree_cpu": usage.ru_utime + usage.ru_stime}


def run_bare(base: Path, trials: int, concurrency: int, seed: int) -> tuple[float, float, list[dict]]:
    """Wall time, CPU seconds (the CLIs and their shells, the model servers) and the episodes."""
    agent = get_agent("gemini-cli")
    scenario = load_scenario(SCENARIO)
    spec = load_model(MODEL, SCENARIO)
    # One world built outside the timing only to get the same workspace, memory file and HOME.
    template = build_world(base / "template", "bench", Condition(scenario, "good", "memory", "peer", agent.family),
                           agent, 8192, canary_seed="bench-template")
    ws_template, home_template = template.dir / "agent" / "workspace", template.dir / "agent" / "home"
    no_servers = base / "no-servers"
    no_servers.mkdir()
    for tool in ("ssh", "scp", "sftp", "rsync"):
        (no_servers / tool).write_text(f"#!/bin/sh\necho '{tool}: connect to host: Network is unreachable' >&2\n"
                                       "exit 255\n")
        (no_servers / tool).chmod(0o755)

    def episode(index: int) -> dict:
        policy = spec.draw(seed, index) if isinstance(spec, Mixture) else spec
        ep = base / f"ep{index:04d}"
        ws, home, tmp = ep / "workspace", ep / "home", ep / "tmp"
        shutil.copytree(ws_template, ws, symlinks=True)
        shutil.copytree(home_template, home, symlinks=True)
        tmp.mkdir()
        t0 = time.time()
        server = ScriptedModelServer(policy, ep / "model_traffic.jsonl", workspace=str(ws),
                                     memory_marker=template.memory_marker).start()
        try:
            env = agent.env(AgentPaths(workspace=str(ws), home=str(home), tmp=str(tmp)), server.url)
            env["PATH"] = f"{no_servers}:{env['PATH']}"
            proc = subprocess.Popen(agent.host_command(template.prompt, "stub-model"), cwd=ws, env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=600)
            finally:   # the CLI's shells and their children end with the episode
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        finally:
            server.stop()
        return {"index": index, "policy": policy.name, "seconds": time.time() - t0, "exit": code,
                "finished": server.finished and server.turns_played == server.turns_total}

    t0 = time.time()
    before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        episodes = list(pool.map(episode, range(trials)))
    after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
    return time.time() - t0, cpu, episodes


@click.command()
@click.option("--trials", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Default: one per CPU core.")
@click.option("--seed", type=int, default=0, show_default=True)
def main(trials: int, concurrency: int | None, seed: int) -> None:
    concurrency = concurrency or os.cpu_count() or 1
    load_at_start = os.getloadavg()
    base = Path(tempfile.mkdtemp(prefix="bench-run-vs-bare-", dir="/var/tmp"))
    try:
        run_dir = base / "run"
        harness = run_harness(run_dir, trials, concurrency, seed)
        harness_wall = harness["wall"]
        bare_wall, bare_cpu, episodes = run_bare(base / "bare", trials, concurrency, seed)
        rows = []
        for result in sorted((run_dir / "trials").glob("*/result.json")):
            r = json.loads(result.read_text())
            rows.append({**r["phases"], "total": r["ended_at"] - r["started_at"], "valid": r["valid"],
                         "ssh_sessions": ssh_session_seconds(result.parent)})
        df = pd.DataFrame(rows).fillna({"queued": 0.0})
        phases = [c for c in df.columns if c not in ("valid", "ssh_sessions")]
        latency = df["total"] - df["queued"]
        # What a trial does outside its agent slot (runner.trial.AgentSlots) is off the critical path.
        slot = latency - df[[p for p in ("build_world", "stop_world", "collect", "analyze") if p in df]].sum(axis=1)
        harness_trial = float(latency.median())
        bare_episode = statistics.median(e["seconds"] for e in episodes)
        figures = {
            "trials": trials, "concurrency": concurrency, "seed": seed, "cpus": os.cpu_count(),
            "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
            "harness_wall_s": round(harness_wall, 2), "bare_wall_s": round(bare_wall, 2),
            "ratio": round(harness_wall / bare_wall, 3),
            "harness_valid": int(df["valid"].sum()), "bare_finished": sum(e["finished"] for e in episodes),
            "median_harness_trial_s": round(harness_trial, 3), "median_bare_episode_s": round(bare_episode, 3),
            "median_agent_slot_s": round(float(slot.median()), 3),
            "overhead_per_trial_median_ms": round((float(slot.median()) - bare_episode) * 1000),
            "overhead_per_trial_latency_median_ms": round((harness_trial - bare_episode) * 1000),
            "overhead_per_trial_run_level_ms": round((harness_wall - bare_wall) * concurrency / trials * 1000),
            "harness_phase_median_s": {p: round(float(df[p].median()), 3) for p in phases},
            # part of the agent phase: real SSH sessions with the world's servers, absent from the bare loop
            "median_ssh_session_s_per_trial": round(float(df["ssh_sessions"].median()), 3),
            # CPU seconds depend far less than wall times on what else the machine is doing.
            "harness_tree_cpu_s": round(harness["tree_cpu"], 1), "bare_cpu_s": round(bare_cpu, 1),
            "cpu_ratio": round(harness["tree_cpu"] / bare_cpu, 3),
            "harness_tree_cpu_per_trial_s": round(harness["tree_cpu"] / trials, 3),
            "bare_cpu_per_episode_s": round(bare_cpu / trials, 3),
            "harness_process_cpu_per_trial_ms": round(harness["own_cpu"] / trials * 1000),
            "harness_peak_rss_mb": round(harness["rss"], 1),
            "targets": {"ratio": 1.15, "overhead_per_trial_median_ms": 300, "harness_peak_rss_mb": 200},
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    out = ROOT / "bench" / "results" / "run_vs_bare.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
