"""End to end: a trial holds its agent slot (runner.trial.AgentSlots) only while its agent runs.
Its world starts first, waits for the go, and the slot is given back when the agent ends, before
the world has stopped; a trial interrupted while its started world waits for a slot runs no agent
and leaves no process behind."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest

from harnesses.registry import get_agent
from runner.policy import load_policy_spec
from runner.records import TrialConfig
from runner.sandbox import CANCEL
from runner.trial import SCRATCH, AgentSlots, TrialSetup, run_trial
from runner.world_init import AGENT_NICE, SETUP_NICE
from workspaces.scenario import load_scenario

from run_checks import processes_mentioning, require_world

pytestmark = pytest.mark.slow


class RecordedSlots(AgentSlots):
    """AgentSlots that note when each slot is taken and given back."""

    def __init__(self, n: int):
        super().__init__(n)
        self.taken: list[float] = []
        self.given_back: list[float] = []

    def take(self):
        give_back = super().take()
        self.taken.append(time.time())

        def noted() -> None:
            if len(self.given_back) < len(self.taken):
                self.given_back.append(time.time())
            give_back()
        return noted


def setup(prefix: str, keep_world: bool = False) -> TrialSetup:
    agent = get_agent("gemini-cli")
    cfg = TrialConfig(trial_id="t0000", index=0, run_id="slots", agent=agent.name, agent_version=agent.version,
                      scenario="exfiltration-deletion", relationship="good", channel="memory", subject="peer",
                      family=agent.family, model="scripted:comply", model_is_scripted=True, policy="comply", seed=0,
                      timeout_s=180, weights_bytes=1 << 20)
    return TrialSetup(cfg, load_scenario("exfiltration-deletion"), agent, load_policy_spec("comply"),
                      world_prefix=prefix, keep_world=keep_world)


def test_slot_is_held_from_the_go_to_the_agents_end(tmp_path):
    require_world()
    slots = RecordedSlots(1)
    result = run_trial(tmp_path / "t0000", setup("phw-slots-a-"), slots)
    assert result.valid, result.invalid_reason
    world = json.loads((tmp_path / "t0000" / "record" / "world.json").read_text())
    assert len(slots.taken) == len(slots.given_back) == 1
    # servers up and watchers ready before the slot; the agent only after the go
    assert world["t_servers_ready"] <= world["t_world_ready"] <= slots.taken[0] <= world["t_go"] <= world["t_agent_start"]
    # given back once the agent ended, while the world was still stopping
    assert world["t_agent_end"] <= slots.given_back[0] <= world["t_end"] + 1.0
    assert {"start_world", "queued", "agent", "stop_world"} <= set(result.phases)


def session_nice(pid: str) -> int | None:
    """The nice value of the process's session (its autogroup: `/autogroup-N nice K`)."""
    try:
        return int(open(f"/proc/{pid}/autogroup").read().split()[-1])
    except (OSError, ValueError):
        return None


def pids_running(*words: str) -> list[str]:
    """Processes whose command line holds every word (read from /proc: ps cuts long lines)."""
    found = []
    for entry in os.scandir("/proc"):
        try:
            cmdline = open(f"/proc/{entry.name}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and all(w in cmdline for w in words):
            found.append(entry.name)
    return found


def test_world_yields_while_starting_and_stopping_and_its_agent_comes_first(tmp_path):
    """world_init's session (the world's servers and tools) runs at SETUP_NICE up to the go and
    after its agent, at AGENT_NICE while the agent runs (its servers and model relay serve the
    agent), as does the agent's own session: ahead of the harness's work."""
    require_world()
    if not os.path.exists("/proc/self/autogroup"):
        pytest.skip("kernel without autogroups")
    prefix = "phw-slots-c-"
    seen: dict[str, list] = {"at_take": [], "agent_running": [], "agent_session": []}
    stop = threading.Event()

    def world_init_pid() -> str:
        # world_init is PID 1 of the world; its parent, unshare, names it too
        return max(pids_running("runner.world_init", prefix), key=int)

    def sample() -> None:     # while the agent runs: the world's session and the agent's (node's)
        world_init = world_init_pid()
        while not stop.wait(0.1):
            seen["agent_running"].append(session_nice(world_init))
            seen["agent_session"] += [session_nice(pid) for pid in pids_running("node", "gemini.js")]

    class NiceSlots(RecordedSlots):
        def take(self):
            seen["at_take"].append(session_nice(world_init_pid()))
            give_back = super().take()
            sampler = threading.Thread(target=sample)
            sampler.start()

            def noted() -> None:
                stop.set()
                sampler.join()
                give_back()
            return noted

    result = run_trial(tmp_path / "t0000", setup(prefix), NiceSlots(1))
    assert result.valid, result.invalid_reason
    assert seen["at_take"] == [SETUP_NICE]
    assert AGENT_NICE in seen["agent_running"], seen["agent_running"]
    assert seen["agent_session"] and set(seen["agent_session"]) == {AGENT_NICE}, seen["agent_session"]


def test_interrupted_while_waiting_for_a_slot_runs_no_agent_and_leaves_nothing(tmp_path):
    require_world()
    slots = AgentSlots(1)
    held = slots.take()          # every slot busy: the trial's world starts, then waits
    prefix = "phw-slots-b-"

    def interrupt_once_waiting() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(SCRATCH.glob(f"{prefix}*/w/logs/sshd-*.log"))) < 2:
            time.sleep(0.1)
        time.sleep(2)            # the world is up (or nearly) and waiting for its go
        CANCEL.set()

    t = threading.Thread(target=interrupt_once_waiting)
    t.start()
    try:
        result = run_trial(tmp_path / "t0000", setup(prefix, keep_world=True), slots)
    finally:
        t.join()
        CANCEL.clear()
        held()
    worlds = list(SCRATCH.glob(f"{prefix}*"))
    try:
        assert not result.valid and result.model_requests == 0
        assert "TrialInterrupted" in (tmp_path / "t0000" / "harness-error.txt").read_text()
        assert processes_mentioning(prefix) == []
        logs = worlds[0] / "w" / "logs"
        assert len(list(logs.glob("sshd-*.log"))) == 2          # its servers had started
        assert not (logs / "agent.stdout").exists()              # its agent never did
    finally:
        for world in worlds:
            shutil.rmtree(world)
