"""One trial, start to finish: build the world, start the model endpoint, run the world, collect
the record, judge validity, analyze, tear down. Everything of the trial ends before it returns."""
from __future__ import annotations

import array
import fcntl
import json
import os
import select
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from analysis.analyze import write_verdicts
from harnesses.base import AgentAdapter
from runner.model_proxy import ModelProxy
from runner.model_server import ScriptedModelServer
from runner.model_source import parse_model_spec
from runner.policy import Policy
from runner.recorder import collect_artifacts, record_events, snapshot, write_jsonl
from runner.records import TrialConfig, TrialResult
from runner.timeline import describe
from runner import docker_world
from runner.sandbox import CANCEL, AgentSlot, WorldOutcome, launch_world, world_spec
from runner.syscall_recorder import SyscallRecorder, WorldFollower
from runner.syscall_records import records_to_strace
from workspaces.scenario import Scenario
from workspaces.world import BuiltWorld, Condition, build_world, remove_world

SCRATCH = Path(os.environ.get("PEER_HARNESS_SCRATCH", "/var/tmp"))
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000
AGENT_CAP_BYTES = 1 << 30
SERVER_CAP_BYTES = 1 << 30


def write_json(path: Path, data) -> None:
    """Atomic: a reader never sees half a file, a killed writer leaves the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def spread_out(directory: Path) -> None:
    """Mark `directory` a top of directory hierarchies (ext4's `chattr +T`): the block allocator
    then places what is created under it in block groups with room, not next to the directory
    itself. A world created plainly in a crowded /var/tmp cost 4x the CPU in the kernel's search
    for free blocks. Elsewhere (tmpfs, another filesystem) it is a no-op."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = array.array("l", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        flags[0] |= FS_TOPDIR_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags, True)
    except OSError:    # no such flags on this filesystem, or not ours to set
        pass
    finally:
        os.close(fd)


def new_scratch_dir(prefix: str) -> Path:
    """A new directory under SCRATCH for one world (or one Ray task), spread out on disk."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH))
    spread_out(path)
    return path


@dataclass
class TrialSetup:
    config: TrialConfig
    scenario: Scenario
    agent: AgentAdapter
    policy: Policy | None          # None: a real model source, reached through the recording proxy
    keep_world: bool = False
    world_prefix: str = "phw-"     # the run's prefix, so a resume can find and remove its leftover worlds
    sandbox: str = "bwrap"         # "bwrap" (runner.sandbox) or "docker" (runner.docker_world)
    # The run's eBPF recorder for the agent's system calls (bwrap worlds); None: strace in the world.
    syscall_recorder: SyscallRecorder | None = None


class AgentSlots:
    """At most `n` agents running at once. A trial takes a slot once its world is up, just before
    its agent starts, and gives it back as soon as its agent has ended, so building and starting the
    next trial's world, stopping this one and collecting and analyzing its record all happen beside
    the running agents (runner.sandbox._run_world)."""

    def __init__(self, n: int):
        # One byte per free slot in a pipe: a waiting trial sleeps in select() until a slot is
        # given back or the run is cancelled (a semaphore cannot wake on CANCEL, so it was polled).
        self._free, self._give = os.pipe()
        os.set_blocking(self._free, False)
        os.write(self._give, b"s" * n)

    def __del__(self) -> None:
        os.close(self._free)
        os.close(self._give)

    def take(self) -> Callable[[], None]:
        """Wait for a slot; returns the function that gives it back (once, however often called).
        An interruption (CANCEL) while waiting raises TrialInterrupted."""
        while True:
            select.select([self._free, CANCEL], [], [])
            if CANCEL.is_set():
                raise TrialInterrupted("the run was interrupted before this trial's agent started")
            try:
                os.read(self._free, 1)
                break
            except BlockingIOError:     # another trial took that slot first
                continue
        lock, held = threading.Lock(), [True]

        def give_back() -> None:
            with lock:
                if held[0]:
                    held[0] = False
                    os.write(self._give, b"s")
        return give_back


class TrialInterrupted(RuntimeError):
    pass


def _copy_if_exists(src: Path, dst: Path) -> None:
    if src.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def judge_validity(world_status: dict, server: ScriptedModelServer | ModelProxy, policy: Policy | None,
                   agent: AgentAdapter, stdout: str, stderr: str) -> tuple[bool, str | None]:
    """Valid only if the CLI really ran, talked to the model, every scripted turn was played and
    every tool result came back (for a real model: see proxied_validity)."""
    if world_status.get("limit_hit"):     # cut off by a resource limit (runner.limits), whatever else happened
        return False, "resource limit: " + "; ".join(world_status["limit_hit"])
    for name, counts in world_status.get("syscall_records", {}).items():
        if "error" in counts:
            return False, f"syscall recorder failed ({name}): {counts['error']}"
        if counts["lost"]:
            return False, f"the syscall recorder lost {counts['lost']} record(s) of {name} while this trial ran"
    if "error" in world_status:
        return False, "world failed: " + world_status["error"].strip().splitlines()[-1]
    if world_status.get("timed_out"):
        return False, "timeout"
    error = agent.error_class(stdout, stderr, world_status.get("agent_exit"))
    if isinstance(server, ModelProxy):
        return proxied_validity(server, agent, error, world_status.get("agent_exit"))
    if server.errors_served:
        return False, f"api_error: the model endpoint answered {server.errors_served} request(s) with an error"
    if server.main_requests == 0:
        return False, "agent never reached the model" + (f" ({error})" if error else "")
    if error:
        return False, error
    if world_status.get("agent_exit") != 0:
        return False, f"agent CLI exited with {world_status.get('agent_exit')}"
    expected_results = policy.tool_results_before()[-1] if policy.turns else 0
    if not server.finished or server.turns_played < server.turns_total:
        return False, f"only {server.turns_played} of {server.turns_total} scripted turns were played"
    if server.tool_results_seen < expected_results:
        return False, f"only {server.tool_results_seen} of {expected_results} tool results came back"
    if not server.memory_seen:
        return False, f"the memory file ({agent.memory_file}) never reached the model"
    return True, None


def proxied_validity(proxy: ModelProxy, agent: AgentAdapter, error: str | None,
                     agent_exit: int | None) -> tuple[bool, str | None]:
    """A real model's trial is valid if the agent reached the model, the conversation did not
    end on a failed exchange (typed: rate_limit, auth, model_not_found, api_error,
    context_overflow, timeout -- an API failure, never a refusal; a failure the CLI retried past
    does not count), the CLI succeeded and the memory file reached the model."""
    if proxy.main_requests == 0:
        detail = proxy.last_main_error or error
        return False, "agent never reached the model" + (f" ({detail})" if detail else "")
    if proxy.last_main_error:
        return False, proxy.last_main_error
    if error:
        return False, error
    if agent_exit != 0:
        return False, f"agent CLI exited with {agent_exit}"
    if not proxy.memory_seen:
        return False, f"the memory file ({agent.memory_file}) never reached the model"
    return True, None


def launch_recorded_world(spec: dict, world: BuiltWorld, recorder: SyscallRecorder, cfg: TrialConfig,
                          slot: AgentSlot | None) -> WorldOutcome:
    """A bwrap world whose agent and servers the run's eBPF recorder follows; once the world has
    ended, each one's records become the strace-format text strace in the world would have written
    (logs/strace.txt, logs/strace-ADDRESS.txt), and the world's status gets their counts and
    whether the recorder lost any."""
    logs = world.dir / "logs"
    follower = WorldFollower(recorder, cfg.trial_id, logs)
    try:
        outcome = launch_world(spec, world.dir.parent, cfg.timeout_s, agent_slot=slot, follower=follower)
    finally:
        counts = follower.finish()
    for name, path in follower.followed.items():
        if "error" not in counts[name]:
            text = logs / ("strace.txt" if name == "agent" else f"strace-{name}.txt")
            counts[name].update(records_to_strace(path, text).model_dump())
    if counts:
        outcome.status["syscall_records"] = counts
    return outcome


def run_trial(trial_dir: Path, setup: TrialSetup, slots: AgentSlots | None = None) -> TrialResult:
    """`slots`: run the agent only while holding an agent slot (time its started world spends
    waiting for one is the `queued` phase); without, the agent starts as soon as its world is up."""
    cfg, agent = setup.config, setup.agent
    trial_dir.mkdir(parents=True)
    write_json(trial_dir / "config.json", cfg.model_dump())
    phases: dict[str, float] = {}
    started = time.time()
    world_root = new_scratch_dir(f"{setup.world_prefix}{cfg.trial_id[-12:]}-")
    server: ScriptedModelServer | ModelProxy | None = None
    status, world_status, reason = "crashed", {}, None
    try:
        t = time.time()
        cond = Condition(setup.scenario, cfg.relationship, cfg.channel, cfg.subject, cfg.family, cfg.monitoring)
        world = build_world(world_root / "w", cfg.trial_id, cond, agent, cfg.weights_bytes,
                            canary_seed=f"{cfg.run_id}/{cfg.trial_id}")
        write_json(trial_dir / "manifest.json", world.manifest.model_dump())
        (trial_dir / "snapshots").mkdir()
        before = snapshot(world.manifest, just_built=True)
        write_json(trial_dir / "snapshots" / "before.json", before.model_dump())
        phases["build_world"] = time.time() - t

        t = time.time()
        if setup.policy is not None:
            server = ScriptedModelServer(setup.policy, trial_dir / "model_traffic.jsonl",
                                         unix_socket=world_root / "model.sock", memory_marker=world.memory_marker)
            model_name = "stub-model"
        else:   # a real source: the recording proxy, outside the sandbox, is the agent's only way to it
            source = parse_model_spec(cfg.model)
            server = ModelProxy(source, agent.wire_protocol, trial_dir / "model_traffic.jsonl",
                                unix_socket=world_root / "model.sock", memory_marker=world.memory_marker)
            model_name = source.model
        server.start()
        spec = world_spec(world, agent, model_name,
                          world_root / "model.sock", cfg.timeout_s, AGENT_CAP_BYTES, SERVER_CAP_BYTES)
        slot = slots.take if slots is not None else None
        if setup.sandbox == "docker":
            outcome = docker_world.launch_world(spec, world_root, cfg.timeout_s, agent_slot=slot)
        elif setup.syscall_recorder is None:
            outcome = launch_world(spec, world_root, cfg.timeout_s, agent_slot=slot)
        else:
            outcome = launch_recorded_world(spec, world, setup.syscall_recorder, cfg, slot)
        server.stop()
        world_status = outcome.status
        ws = world_status
        if "t_world_ready" in ws:
            phases["start_world"] = ws["t_world_ready"] - t
        if "t_world_ready" in ws and "t_go" in ws:
            phases["queued"] = ws["t_go"] - ws["t_world_ready"]
        if "t_agent_start" in ws and "t_agent_end" in ws:
            phases["agent"] = ws["t_agent_end"] - ws["t_agent_start"]
        if "t_agent_end" in ws and "t_end" in ws:
            phases["stop_world"] = ws["t_end"] - ws["t_agent_end"]
        if outcome.killed:
            why = "the run was interrupted" if CANCEL.is_set() else "world did not finish within its limit"
            world_status = {**ws, "error": f"{why}; the world was killed"}

        t = time.time()
        logs, native, record = world.dir / "logs", trial_dir / "native", trial_dir / "record"
        native.mkdir()
        record.mkdir()
        _copy_if_exists(logs / "agent.stdout", native / "stdout.txt")
        _copy_if_exists(logs / "agent.stderr", native / "stderr.txt")
        for name in ("strace.txt", "audit.jsonl", "world.json", "world-init.log", "fs_events.jsonl", "dns.jsonl",
                     "bridge.jsonl"):
            _copy_if_exists(logs / name, record / name)
        for log in [*logs.glob("sshd-*.log"), *logs.glob("strace-*.txt")]:
            _copy_if_exists(log, record / log.name)
        home, tmp = world.dir / "agent" / "home", world.dir / "agent" / "tmp"
        for log in agent.native_logs(home, tmp):
            _copy_if_exists(log, native / "logs" / log.name)
        after = snapshot(world.manifest, known=before)
        write_json(trial_dir / "snapshots" / "after.json", after.model_dump())
        collect_artifacts(world.manifest, trial_dir / "artifacts")
        stdout = (native / "stdout.txt").read_text(errors="replace") if (native / "stdout.txt").exists() else ""
        stderr = (native / "stderr.txt").read_text(errors="replace") if (native / "stderr.txt").exists() else ""
        trajectory = None
        try:
            trajectory = agent.trajectory(native, cfg.model)
            write_json(trial_dir / "trajectory.json", trajectory)
        except Exception as exc:  # noqa: BLE001 - a trajectory failure makes the trial invalid, not the run
            world_status = {**world_status, "error": f"trajectory conversion failed: {exc}"}
        # Events are joined to the trajectory's steps, so they come after it.
        events = record_events(logs, trial_dir / "model_traffic.jsonl", before, after, trajectory)
        write_jsonl(trial_dir / "events.jsonl", events)
        (trial_dir / "timeline.txt").write_text(describe(events, trajectory))
        valid, reason = judge_validity(world_status, server, setup.policy, agent, stdout, stderr)
        status = "timeout" if world_status.get("timed_out") else (
            "crashed" if "error" in world_status else "completed")
        phases["collect"] = time.time() - t
    except Exception:  # noqa: BLE001 - recorded as a setup failure of this trial
        valid, reason, status = False, "setup failed: " + traceback.format_exc().strip().splitlines()[-1], "setup_failed"
        (trial_dir / "harness-error.txt").write_text(traceback.format_exc())
    finally:
        if server is not None:
            server.stop()
        if not setup.keep_world:
            remove_world(world_root)

    result = TrialResult(
        trial_id=cfg.trial_id, status=status, valid=valid, invalid_reason=reason,
        exit_code=world_status.get("agent_exit"), started_at=started, ended_at=time.time(), phases=phases,
        model_requests=server.requests if server else 0,
        turns_played=server.turns_played if isinstance(server, ScriptedModelServer) else 0,
        turns_total=len(setup.policy.turns) if setup.policy else 0, tool_results_seen=server.tool_results_seen if server else 0,
        memory_reached_model=bool(server and server.memory_seen), model_is_scripted=cfg.model_is_scripted,
        resource_limits=world_status.get("limits"), syscall_recorder=world_status.get("syscall_recorder"),
        syscall_records=world_status.get("syscall_records"))
    write_json(trial_dir / "result.json", result.model_dump())
    t = time.time()
    write_verdicts(trial_dir)      # an invalid trial (even one without a world) gets null verdicts
    result.phases["analyze"] = time.time() - t
    result.ended_at = time.time()
    write_json(trial_dir / "result.json", result.model_dump())
    return result
