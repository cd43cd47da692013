"""Run a run's trials on a Ray cluster (`harness-run --backend ray [--address ADDR]`).

Ray places the work; nothing here schedules. Each trial is one Ray task (1 CPU) that

1. checks its node: the preflight of `harness-run --check` and the run's version pins (harness,
   agent, every fixture and policy of the trial's cell) -- a node that fails refuses the trial,
   saying why, and the driver resubmits it with a label selector excluding that node;
2. runs the trial into a node-local work directory (SCRATCH/<run prefix>ray<random>/, locked
   by the task for its life) exactly as the local backend does;
3. returns the whole trial directory as a gzipped tar.

The driver alone writes RUN_DIR: it unpacks each trial into partial/<id>/ and promotes it, as
the local backend does, so a resume works the same whichever backend ran a trial.

A worker (or node) dying mid-trial takes the trial's world with it (`setpriv --pdeathsig`); the
driver submits the trial once more, and records it as invalid (naming the worker deaths) if that
worker dies too. The next task on that node, and the driver's sweep of every node at the end,
remove what the dead task left (its work directory, world, any process still in it).
"""
from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import shutil
import signal
import socket
import tarfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import ray
from pydantic import BaseModel
from ray.exceptions import RayError, RayTaskError, TaskCancelledError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from rich.console import Console

from analysis.analyze import write_verdicts
from runner.execute import Tally, trial_progress
from runner.limits import leftover_cgroups, remove_trial_cgroup
from runner.policy import PolicyError
from runner.records import CellInfo, RunInfo, TrialResult
from runner.run_plan import Resources, trial_setup, version_pins
from runner.run_store import PlannedTrial, kill_processes_in, partial_dir, promote, version_differences
from runner.trial import SCRATCH, new_scratch_dir, run_trial, write_json
from workspaces.scenario import ScenarioError

# A task's work directory holds this lock (flock) while the task lives; a sweep removes only
# directories whose lock is free, i.e. whose task died.
TASK_LOCK = "ray-task.lock"
TASK_OWNER = "ray-task.json"
# Serialises sweeping and creating work directories on a node (also between Ray nodes that
# share one machine).
NODE_LOCK = SCRATCH / ".peer-harness-ray.lock"
NODE_LABEL = "ray.io/node-id"
PLACEMENT = "placement.json"
PROBE_TIMEOUT_S = 300
WAIT_S = 5.0
CANCEL_WAIT_S = 30
LOCAL_OBJECT_STORE_BYTES = 256 << 20


class RayBackendError(RuntimeError):
    """The cluster cannot run this run; the message says why and what to do."""


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    ip: str
    hostname: str
    pid: int | None             # the worker process that ran the task

    def label(self) -> str:
        return f"{self.hostname} {self.ip} (node {self.node_id[:8]})"


@dataclass
class Refusal:
    node: NodeInfo
    problems: list[str]


@dataclass
class RanTrial:
    node: NodeInfo
    archive: bytes              # the trial directory, tar.gz
    swept: list[str]            # leftovers of dead tasks this task removed first
    check_s: float              # the node check before the trial
    pack_s: float


class NodeRefusal(BaseModel):
    node_id: str
    ip: str
    hostname: str
    problems: list[str]


class Placement(BaseModel):
    """`trials/<id>/placement.json` (Ray backend only): where the trial ran and who refused it."""

    backend: str = "ray"
    node_id: str | None = None          # None: the trial never finished on any node
    ip: str | None = None
    hostname: str | None = None
    worker_pid: int | None = None
    refused_by: list[NodeRefusal] = []
    worker_deaths: str | None = None    # the errors Ray reported for the attempts whose worker died
    # What the backend added to the trial (bench/backends.py): seconds, and the archive's size.
    node_check_s: float | None = None
    pack_s: float | None = None
    unpack_s: float | None = None
    archive_bytes: int | None = None


def _this_node() -> NodeInfo:
    return NodeInfo(ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), socket.gethostname(),
                    os.getpid())


def _cell_problems(info: RunInfo, cell: CellInfo, agent_problems: dict[str, list[str]],
                   check_sources: bool) -> tuple[Resources | None, list[str]]:
    """What keeps this node from running trials of `cell`: the preflight for its agent, and any
    version or fixture that differs from the pins in run.json."""
    from runner.cli import preflight   # runner.cli imports this module lazily: import here, not at the top

    if cell.agent not in agent_problems:
        agent_problems[cell.agent] = preflight(cell.agent, SCRATCH)
    problems = list(agent_problems[cell.agent])
    try:
        res = Resources.load([cell])
    except (KeyError, PolicyError, ScenarioError) as exc:
        return None, problems + [f"cannot load cell {cell.id}: {exc}"]
    current = version_pins([cell], res)
    pinned = info.model_copy(update={
        "agent_versions": {name: info.agent_versions.get(name, "absent") for name in current["agent_versions"]},
        "fixture_hashes": {name: info.fixture_hashes[name] for name in current["fixture_hashes"]
                           if name in info.fixture_hashes}})
    problems += [f"differs from run.json: {d}" for d in version_differences(pinned, current)]
    if check_sources:
        problems += res.source_problems()
    return res, problems


@ray.remote(num_cpus=0)
def _probe_node(info: RunInfo | None, agents: list[str]) -> tuple[NodeInfo, dict[str, list[str]]]:
    """A node's problems per cell of the run (or per agent, for `--check` without a run)."""
    from runner.cli import preflight

    if info is None:
        return _this_node(), {agent: preflight(agent, SCRATCH) for agent in agents}
    agent_problems: dict[str, list[str]] = {}
    return _this_node(), {cell.id: _cell_problems(info, cell, agent_problems, True)[1] for cell in info.cells}


def _lock_free(lock: Path) -> bool:
    """True when nobody holds `lock` (its holder died); False if held or gone."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def sweep_dead_tasks() -> list[str]:
    """Remove what dead tasks left on this node: their work directories, their worlds, any
    process still running in one and their worlds' cgroups (named after the worlds). Call with the
    node lock held."""
    swept = []
    for work in sorted(SCRATCH.glob("phw-*")):
        if not (work / TASK_LOCK).is_file() or not _lock_free(work / TASK_LOCK):
            continue
        try:
            owner = json.loads((work / TASK_OWNER).read_text())
            what = f"{owner['trial_id']} of run {owner['run_id']} (worker pid {owner['pid']})"
        except (OSError, ValueError, KeyError):
            what = "an unknown trial"
        paths = [work, *SCRATCH.glob(f"{work.name}-*")]
        killed = kill_processes_in(paths)
        cgroups = leftover_cgroups(f"{work.name}-")
        for cg in cgroups:
            remove_trial_cgroup(cg)
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)
        swept.append(f"{what}: removed {', '.join([str(p) for p in paths] + [d for cg in cgroups for d in cg.dirs.values()])}"
                     + (f"; killed {len(killed)} process(es)" if killed else ""))
    return swept


@contextmanager
def _node_lock():
    fd = os.open(NODE_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def _work_dir(info: RunInfo, trial_id: str):
    """A node-local directory for one task, locked for the task's life; dead tasks' leftovers are
    swept first. Yields (directory, what was swept)."""
    with _node_lock():
        swept = sweep_dead_tasks()
        work = new_scratch_dir(f"{info.world_prefix}ray")
        fd = os.open(work / TASK_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        write_json(work / TASK_OWNER, {"trial_id": trial_id, "run_id": info.run_id, "pid": os.getpid(),
                                       "started_at": time.time()})
    try:
        yield work, swept
    finally:
        shutil.rmtree(work, ignore_errors=True)   # kept worlds (--keep-world) are siblings, not inside
        os.close(fd)


def _pack(trial_dir: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        tar.add(trial_dir, arcname=".")
    return buf.getvalue()


# Retries are the driver's (after a refusal or a worker death), so it knows every attempt.
@ray.remote(num_cpus=1, max_retries=0, retry_exceptions=False)
def _trial_task(info: RunInfo, planned: PlannedTrial, keep_world: bool) -> Refusal | RanTrial:
    node = _this_node()
    t = time.time()
    res, problems = _cell_problems(info, planned.cell, {}, False)
    check_s = time.time() - t
    if problems:
        return Refusal(node, problems)
    with _work_dir(info, planned.trial_id) as (work, swept):
        setup = replace(trial_setup(planned, info, res, keep_world), world_prefix=f"{work.name}-")
        trial_dir = work / planned.trial_id
        run_trial(trial_dir, setup)
        t = time.time()
        archive = _pack(trial_dir)
        return RanTrial(node, archive, swept, check_s, time.time() - t)


@ray.remote(num_cpus=0)
def _sweep_node() -> tuple[NodeInfo, list[str]]:
    with _node_lock():
        return _this_node(), sweep_dead_tasks()


def connect(address: str | None, num_cpus: int | None) -> None:
    """Join the cluster at `address` ("auto": the one this machine belongs to), or without an
    address start a single-node cluster on this machine for the run (`num_cpus` trials at once)."""
    kwargs = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        kwargs.update(num_cpus=num_cpus or os.cpu_count() or 1, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayBackendError(f"cannot join the Ray cluster at {address}: {exc}\nStart one with `ray start --head` "
                              "(from this project's venv, on every node), pass its GCS address as --address "
                              "HOST:PORT, or --address auto on a node of the cluster") from None


def _trial_nodes() -> dict[str, dict]:
    """Alive nodes that can take a trial (they have CPUs), by node id."""
    return {n["NodeID"]: n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1}


def probe_nodes(info: RunInfo | None, agents: list[str], console: Console) -> list[tuple[NodeInfo, dict]]:
    """Run the node check on every node that can take trials: per node, its problems by cell of
    `info` (by agent without a run). A node where the check itself fails (e.g. the project is not
    importable there) gets that as its problem; nodes that do not answer within PROBE_TIMEOUT_S
    are reported and left out (their tasks still check themselves)."""
    nodes = _trial_nodes()
    if not nodes:
        raise RayBackendError("the Ray cluster has no alive node with a CPU to run trials on")
    refs = {_probe_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
            .remote(info, agents): node for node_id, node in nodes.items()}
    ready, not_ready = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    for ref in not_ready:
        _note(console, f"[yellow]warning:[/] node {refs[ref]['NodeManagerAddress']} did not answer the check "
              f"within {PROBE_TIMEOUT_S} s")
        ray.cancel(ref, force=True)
    reports = []
    for ref in ready:
        try:
            reports.append(ray.get(ref))
        except RayError as exc:
            node = refs[ref]
            lines = [line for line in str(exc).splitlines() if line.strip()]
            problem = f"the check failed on the node: {lines[-1].strip() if lines else type(exc).__name__}"
            reports.append((NodeInfo(node["NodeID"], node["NodeManagerAddress"], node["NodeManagerHostname"], None),
                            {key: [problem] for key in ([c.id for c in info.cells] if info else agents)}))
    return reports


def check_cluster(address: str | None, agents: list[str], console: Console) -> bool:
    """`harness-run --check --backend ray`: the preflight on every node; True if all pass."""
    connect(address, None)
    try:
        reports = probe_nodes(None, agents, console)
    finally:
        ray.shutdown()
    ok = True
    for node, by_agent in sorted(reports, key=lambda r: r[0].label()):
        problems = sorted({p for ps in by_agent.values() for p in ps})
        ok &= not problems
        _note(console, ("[green]OK[/] " if not problems else "[red]FAIL[/] ") + node.label()
              + "".join(f"\n  - {p}" for p in problems))
    return ok


class _Excluded:
    """Per cell, the nodes that refused it (from the first check or from a task) and why."""

    def __init__(self) -> None:
        self.by_cell: dict[str, dict[str, NodeRefusal]] = {}

    def add(self, cell_id: str, node: NodeInfo, problems: list[str]) -> None:
        self.by_cell.setdefault(cell_id, {})[node.node_id] = NodeRefusal(
            node_id=node.node_id, ip=node.ip, hostname=node.hostname, problems=problems)

    def refusals(self, cell_id: str) -> list[NodeRefusal]:
        return list(self.by_cell.get(cell_id, {}).values())

    def options(self, cell_id: str) -> dict:
        excluded = self.by_cell.get(cell_id)
        return {"label_selector": {NODE_LABEL: f"!in({','.join(sorted(excluded))})"}} if excluded else {}

    def nobody_can(self, cell_id: str, alive: set[str]) -> bool:
        return not alive - set(self.by_cell.get(cell_id, {}))


def _note(console: Console, text: str) -> None:
    console.print(text, soft_wrap=True)   # unwrapped: node ids, reasons and paths stay whole in logs


def _report_swept(console: Console, node: NodeInfo, swept: list[str]) -> None:
    for line in swept:
        _note(console, f"node {node.label()} removed the leftovers of a dead task: {line}")


def _describe(refusals: list[NodeRefusal]) -> str:
    return "; ".join(f"{r.hostname} {r.ip} (node {r.node_id[:8]}): {', '.join(r.problems)}" for r in refusals)


def _write_failed(run_dir: Path, planned: PlannedTrial, info: RunInfo, res: Resources, keep_world: bool,
                  reason: str, placement: Placement) -> Path:
    """Record a trial that no node finished as invalid, with its config and null verdicts."""
    trial_dir = partial_dir(run_dir, planned.trial_id)
    shutil.rmtree(trial_dir, ignore_errors=True)
    trial_dir.mkdir(parents=True)
    cfg = trial_setup(planned, info, res, keep_world).config
    write_json(trial_dir / "config.json", cfg.model_dump())
    now = time.time()
    result = TrialResult(trial_id=planned.trial_id, status="crashed", valid=False, invalid_reason=reason,
                         started_at=now, ended_at=now, phases={}, model_is_scripted=cfg.model_is_scripted)
    write_json(trial_dir / "result.json", result.model_dump())
    write_json(trial_dir / PLACEMENT, placement.model_dump())
    write_verdicts(trial_dir)
    return promote(run_dir, planned.trial_id)


def _write_ran(run_dir: Path, planned: PlannedTrial, ran: RanTrial, refusals: list[NodeRefusal],
               deaths: list[str]) -> Path:
    trial_dir = partial_dir(run_dir, planned.trial_id)
    shutil.rmtree(trial_dir, ignore_errors=True)
    trial_dir.mkdir(parents=True)
    t = time.time()
    with tarfile.open(fileobj=io.BytesIO(ran.archive), mode="r:gz") as tar:
        tar.extractall(trial_dir, filter="data")   # "data": nothing may land outside the trial directory
    placement = Placement(node_id=ran.node.node_id, ip=ran.node.ip, hostname=ran.node.hostname,
                          worker_pid=ran.node.pid, refused_by=refusals, worker_deaths=" | ".join(deaths) or None,
                          node_check_s=round(ran.check_s, 4), pack_s=round(ran.pack_s, 4),
                          unpack_s=round(time.time() - t, 4), archive_bytes=len(ran.archive))
    write_json(trial_dir / PLACEMENT, placement.model_dump())
    return promote(run_dir, planned.trial_id)


def execute_ray(run_dir: Path, todo: list[PlannedTrial], info: RunInfo, res: Resources, keep_world: bool,
                concurrency: int | None, finished: list[Path], title: str, console: Console) -> float:
    """Run `todo` as Ray tasks on the cluster joined by `connect` and return the wall time. At
    most `concurrency` trials are submitted at once (default: twice the cluster's CPUs, so Ray
    always has the next trial queued). On Ctrl-C / SIGTERM every running task is killed (its
    world dies with its worker) and KeyboardInterrupt is raised."""
    tally = Tally()
    for trial_dir in finished:
        tally.add(trial_dir)
    t0 = time.time()
    excluded = _Excluded()
    for node, by_cell in probe_nodes(info, sorted({c.agent for c in info.cells}), console):
        for cell_id, problems in by_cell.items():
            if problems:
                excluded.add(cell_id, node, problems)
                _note(console, f"[yellow]node {node.label()} cannot run cell {cell_id}:[/] " + "; ".join(problems))
    alive = set(_trial_nodes())
    hopeless = sorted({p.cell.id for p in todo if excluded.nobody_can(p.cell.id, alive)})
    if hopeless:
        raise RayBackendError("no node of the cluster can run "
                              + "; ".join(f"cell {c}: {_describe(excluded.refusals(c))}" for c in hopeless))
    window = concurrency or 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    shared_info = ray.put(info)
    pending = list(reversed(todo))           # popped from the end: plan order
    inflight: dict[ray.ObjectRef, PlannedTrial] = {}
    deaths: dict[str, list[str]] = {}        # trial id -> how its workers died

    def submit(planned: PlannedTrial) -> None:
        inflight[_trial_task.options(**excluded.options(planned.cell.id)).remote(shared_info, planned, keep_world)] \
            = planned

    with trial_progress(console) as progress:
        task = progress.add_task(title, total=len(finished) + len(todo), completed=len(finished), stats=tally.text())

        def done(trial_dir: Path) -> None:
            tally.add(trial_dir)
            progress.update(task, advance=1, stats=tally.text())

        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while pending or inflight:
                while pending and len(inflight) < window:
                    submit(pending.pop())
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=WAIT_S)
                for ref in ready:
                    planned = inflight.pop(ref)
                    cell_id = planned.cell.id
                    try:
                        outcome = ray.get(ref)
                    except (RayTaskError, TaskCancelledError):
                        raise                # a harness bug: stop the run (it stays resumable), as locally
                    except RayError as exc:  # the worker (or its node) died: its world died with it
                        died = deaths.setdefault(planned.trial_id, [])
                        died.append(f"{type(exc).__name__}: {' '.join(str(exc).split())}")
                        if len(died) == 1:
                            _note(console, f"[yellow]{planned.trial_id}: its Ray worker died; running it once more[/]")
                            pending.append(planned)
                            continue
                        reason = f"worker died: the Ray worker running this trial died on both attempts ({died[-1]})"
                        _note(console, f"[red]{planned.trial_id}[/]: {reason}")
                        done(_write_failed(run_dir, planned, info, res, keep_world, reason, Placement(
                            refused_by=excluded.refusals(cell_id), worker_deaths=" | ".join(died))))
                        continue
                    if isinstance(outcome, Refusal):
                        excluded.add(cell_id, outcome.node, outcome.problems)
                        _note(console, f"[yellow]node {outcome.node.label()} refused {planned.trial_id}:[/] "
                              + "; ".join(outcome.problems))
                        pending.append(planned)          # resubmitted next, away from the nodes that refused
                        continue
                    _report_swept(console, outcome.node, outcome.swept)
                    done(_write_ran(run_dir, planned, outcome, excluded.refusals(cell_id),
                                    deaths.get(planned.trial_id, [])))
                # Trials of a cell that every alive node refused would wait forever: record them as invalid.
                alive = set(_trial_nodes())
                for ref, planned in list(inflight.items()):
                    if excluded.nobody_can(planned.cell.id, alive):
                        ray.cancel(ref, force=True)
                        del inflight[ref]
                        pending.append(planned)
                for planned in [p for p in pending if excluded.nobody_can(p.cell.id, alive)]:
                    pending.remove(planned)
                    refusals = excluded.refusals(planned.cell.id)
                    done(_write_failed(run_dir, planned, info, res, keep_world,
                                       f"no node of the cluster can run it: {_describe(refusals)}",
                                       Placement(refused_by=refusals)))
        except BaseException:
            for ref in inflight:
                ray.cancel(ref, force=True)    # kills the worker; its world dies with it
            ray.wait(list(inflight), num_returns=len(inflight), timeout=CANCEL_WAIT_S)
            _sweep_all(console)                # then what the killed tasks left on their nodes
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
    _sweep_all(console)
    return round(time.time() - t0, 1)


def _sweep_all(console: Console) -> None:
    """Every node removes what dead tasks left there."""
    refs = [_sweep_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
            for n in _trial_nodes()]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    for node, swept in ray.get(ready):
        _report_swept(console, node, swept)
