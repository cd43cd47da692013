"""Waiting without polling: runner.sandbox._run_world sleeps until the launcher speaks, exits, or
the run is cancelled (CancelFlag), whatever the world's duration (driven with a real launcher
process that follows world_init's protocol: ready / go / done); a trial waiting for an agent slot
(runner.trial.AgentSlots) sleeps until one is given back or the run is cancelled."""
from __future__ import annotations

import select
import sys
import threading
import time
from pathlib import Path

import pytest

from runner import sandbox
from runner.sandbox import CANCEL, CancelFlag, _run_world
from runner.trial import AgentSlots, TrialInterrupted

# Says "ready", waits for the go, "works" for SLEEP seconds, says "done" and exits with 7.
LAUNCHER = """
import json, os, sys, time
spec = json.load(open(sys.argv[-1]))
os.write(spec["to_harness_fd"], b"ready\\n")
os.read(spec["agent_go_fd"], 1)
time.sleep(float(os.environ["SLEEP"]))
os.write(spec["to_harness_fd"], b"done\\n")
sys.exit(7)
"""


@pytest.fixture
def world_dir(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir()
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    return tmp_path


def run(world_dir: Path, sleep: float, slots: list[str], monkeypatch) -> sandbox.WorldOutcome:
    monkeypatch.setenv("SLEEP", str(sleep))

    def agent_slot():     # like runner.trial.AgentSlots.take: giving back is idempotent
        slots.append("taken")
        return lambda: "given back" in slots or slots.append("given back")
    return _run_world({"logs": str(world_dir / "logs")}, world_dir, 600, agent_slot,
                      launcher=[sys.executable, str(world_dir / "launcher.py")])


def test_waits_for_the_world_without_polling(world_dir, monkeypatch):
    calls = []
    real_select = select.select

    def counting_select(*args):
        calls.append(args)
        return real_select(*args)
    monkeypatch.setattr(sandbox.select, "select", counting_select)
    slots: list[str] = []
    outcome = run(world_dir, 3.0, slots, monkeypatch)
    assert outcome.launcher_exit == 7 and not outcome.killed
    assert slots == ["taken", "given back"]
    # One wake-up per message and one for the exit (a 50 ms poll made ~60 over these 3 s).
    assert len(calls) <= 6, f"{len(calls)} select() calls: the wait polls"


def test_cancel_wakes_the_wait_and_kills_the_world(world_dir, monkeypatch):
    slots: list[str] = []
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(run(world_dir, 300.0, slots, monkeypatch)))
    waiter.start()
    try:
        deadline = time.time() + 60
        while not slots and time.time() < deadline:     # the world is up and its agent "runs"
            time.sleep(0.05)
        assert slots == ["taken"]
        CANCEL.set()
        waiter.join(60)
        assert not waiter.is_alive(), "a cancelled run left its world running"
    finally:
        CANCEL.clear()
    assert got[0].killed and got[0].launcher_exit is not None and got[0].launcher_exit < 0
    assert slots == ["taken", "given back"]


def test_cancel_flag_is_selectable_while_set():
    flag = CancelFlag()
    assert not real_ready(flag)
    flag.set()
    flag.set()                        # setting twice is one state: one clear() undoes it
    assert flag.is_set() and real_ready(flag)
    flag.clear()
    assert not flag.is_set() and not real_ready(flag)
    flag.set()
    assert real_ready(flag)


def real_ready(flag: CancelFlag) -> bool:
    return bool(select.select([flag], [], [], 0)[0])


def take_in_thread(slots) -> tuple[threading.Thread, list]:
    got: list = []

    def take() -> None:
        try:
            got.append(slots.take())
        except TrialInterrupted as exc:
            got.append(exc)
    thread = threading.Thread(target=take)
    thread.start()
    return thread, got


def test_agent_slots_wake_a_waiting_trial_when_a_slot_is_given_back():
    slots = AgentSlots(2)
    first, second = slots.take(), slots.take()
    waiter, got = take_in_thread(slots)
    waiter.join(1.0)
    assert waiter.is_alive() and not got          # both slots held: the third trial waits
    first()
    first()                                       # giving back twice frees one slot only
    waiter.join(30)
    assert not waiter.is_alive() and callable(got[0])
    again, got_again = take_in_thread(slots)
    again.join(1.0)
    assert again.is_alive()                       # still full: `second` and the waiter's slot
    second()
    again.join(30)
    assert callable(got_again[0])


def test_agent_slots_cancel_wakes_a_waiting_trial():
    slots = AgentSlots(1)
    held = slots.take()
    waiter, got = take_in_thread(slots)
    try:
        waiter.join(1.0)
        assert waiter.is_alive()
        CANCEL.set()
        waiter.join(30)
        assert not waiter.is_alive() and isinstance(got[0], TrialInterrupted)
    finally:
        CANCEL.clear()
        held()
