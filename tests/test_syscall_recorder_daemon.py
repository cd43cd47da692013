"""The run's syscall-recorder process through runner.syscall_recorder.SyscallRecorder: several
trials' tags open at once each get only their own records, bad commands get an error and leave the
recorder running, and a trial that floods the ring is charged with its own lost records, never its
neighbours' (a fork bomb in one world must not invalidate the trial beside it)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.syscall_recorder import RECORDER_BINARY, RECORDER_NICE, RecorderError, SyscallRecorder

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not RECORDER_BINARY.exists()
                                or not Path("/sys/kernel/btf/vmlinux").exists(),
                                reason="needs root, a kernel with BTF and the built recorder (make -C runner/ebpf)")

# Parks on stdin until released, then opens FILE N times and exits 3.
OPENER = "import os, sys; sys.stdin.readline(); [os.close(os.open(sys.argv[1], os.O_RDONLY)) for _ in range(int(sys.argv[2]))]; sys.exit(3)"


def parked_opener(path: Path, n: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", OPENER, str(path), str(n)], stdin=subprocess.PIPE, text=True)
    time.sleep(0.3)     # interpreter up and waiting on stdin
    return proc


def release(proc: subprocess.Popen) -> int:
    proc.stdin.write("go\n")
    proc.stdin.close()
    return proc.wait(60)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="latin-1").splitlines()]


def opens_of(recs: list[dict], target: Path) -> int:
    return sum(1 for r in recs if r["type"] == "sys" and r["name"] == "openat"
               and any(i.get("k") == "str" and i.get("v") == str(target) for i in r.get("items", [])))


def test_two_tags_get_their_own_records_and_counts(tmp_path):
    recorder = SyscallRecorder(log_path=tmp_path / "recorder.log")
    try:
        a, b = parked_opener(tmp_path / "a", 25), parked_opener(tmp_path / "b", 40)
        (tmp_path / "a").touch()
        (tmp_path / "b").touch()
        recorder.follow(a.pid, "t0.agent", tmp_path / "a.jsonl")
        recorder.follow(b.pid, "t1.agent", tmp_path / "b.jsonl")
        assert release(a) == 3 and release(b) == 3
        counts_a, counts_b = recorder.close("t0.agent"), recorder.close("t1.agent")
    finally:
        recorder.stop()
    recs_a, recs_b = records(tmp_path / "a.jsonl"), records(tmp_path / "b.jsonl")
    assert counts_a == {"records": len(recs_a), "lost": 0} and counts_b == {"records": len(recs_b), "lost": 0}
    assert {r["tag"] for r in recs_a if "tag" in r} == {"t0.agent"}
    assert {r["tag"] for r in recs_b if "tag" in r} == {"t1.agent"}
    assert opens_of(recs_a, tmp_path / "a") == 25 and opens_of(recs_a, tmp_path / "b") == 0
    assert opens_of(recs_b, tmp_path / "b") == 40
    exits = [r for r in recs_a if r["type"] == "exit" and r["pid"] == a.pid]
    assert len(exits) == 1
    assert recs_a[-1]["type"] == "stats" and recs_a[-1]["lost"] == 0


def test_bad_commands_are_refused_and_the_recorder_goes_on(tmp_path):
    recorder = SyscallRecorder()
    try:
        with pytest.raises(RecorderError, match="no such process"):
            recorder.follow(2 ** 22 + 12345, "t0.agent", tmp_path / "x.jsonl")
        with pytest.raises(RecorderError, match="No such file or directory"):
            recorder.follow(os.getpid(), "t0.agent", tmp_path / "missing" / "x.jsonl")
        with pytest.raises(RecorderError, match="unknown tag"):
            recorder.close("t9.agent")
        with pytest.raises(RecorderError, match="single words"):
            recorder.follow(os.getpid(), "t0 agent", tmp_path / "x.jsonl")
        assert not (tmp_path / "x.jsonl").exists()
        proc = parked_opener(tmp_path / "a", 3)
        (tmp_path / "a").touch()
        recorder.follow(proc.pid, "t0.agent", tmp_path / "a.jsonl")     # still serving
        with pytest.raises(RecorderError, match="already followed"):
            recorder.follow(proc.pid, "t1.agent", tmp_path / "b.jsonl")
        assert not (tmp_path / "b.jsonl").exists()
        release(proc)
        assert recorder.close("t0.agent")["lost"] == 0
    finally:
        recorder.stop()


def test_a_flood_is_charged_to_its_own_tag_only(tmp_path):
    """The smallest ring (1 MiB) and the recorder stopped while one tag opens a file 100,000 times:
    the ring overflows; that tag's count says how many records were lost (recorded + lost = every
    open), and the quiet tag, open all along, has lost nothing."""
    proc = subprocess.Popen([str(RECORDER_BINARY), "--ring-kb", "1024"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"

        def command(line: str) -> str:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            return proc.stdout.readline().strip()

        target = tmp_path / "f"
        target.touch()
        flood, quiet = parked_opener(target, 100_000), parked_opener(tmp_path / "q", 5)
        (tmp_path / "q").touch()
        assert command(f"add {flood.pid} flood {tmp_path / 'flood.jsonl'}") == "ok add flood"
        assert command(f"add {quiet.pid} quiet {tmp_path / 'quiet.jsonl'}") == "ok add quiet"
        proc.send_signal(signal.SIGSTOP)
        try:
            assert release(flood) == 3
        finally:
            proc.send_signal(signal.SIGCONT)
        flood_reply = command("close flood")      # drains the ring
        assert release(quiet) == 3
        quiet_reply = command("close quiet")
    finally:
        proc.stdin.close()
        proc.wait(30)
    lost = int(flood_reply.rsplit("lost=", 1)[1])
    assert lost > 0, flood_reply
    assert quiet_reply.endswith("lost=0"), quiet_reply
    flood_recs = records(tmp_path / "flood.jsonl")
    # every open is either recorded or counted lost (and perhaps the exit record too)
    assert 100_000 <= opens_of(flood_recs, target) + flood_recs[-1]["lost"] <= 100_001
    assert flood_recs[-1]["lost"] == lost
    assert opens_of(records(tmp_path / "quiet.jsonl"), tmp_path / "q") == 5


def test_the_recorder_runs_ahead_of_the_agents_it_records():
    """Its session's priority is above the agents' (world_init.AGENT_NICE), so it drains the shared
    ring before any agent can fill it further."""
    from runner.world_init import AGENT_NICE

    recorder = SyscallRecorder()
    try:
        autogroup = Path(f"/proc/{recorder._proc.pid}/autogroup")
        if not autogroup.exists():
            pytest.skip("a kernel without autogroups")
        assert autogroup.read_text().split()[-1] == str(RECORDER_NICE) and RECORDER_NICE < AGENT_NICE
    finally:
        recorder.stop()
