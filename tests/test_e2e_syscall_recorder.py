"""End to end: the same trials of the real gemini-cli recorded by the run's eBPF recorder and by
strace in each world give the same process events (agent and servers) and the same verdicts; the
recorder's counts are in result.json, and the recorder process ends with the run, even when the
run is killed (a resume then finishes it)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from run_checks import RUN, require_world
from runner.syscall_recorder import RECORDER_BINARY

pytestmark = pytest.mark.slow


def require_recorder() -> None:
    # Where the kernel has BTF, setup.sh builds the recorder: a missing binary there is a failure.
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("kernel without BTF: the eBPF recorder cannot be built here (runs record with strace)")
    assert RECORDER_BINARY.exists(), f"{RECORDER_BINARY} missing: make -C runner/ebpf"


def harness_run(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, "--agent", "gemini-cli", "--out", str(out), "--timeout", "180", *args],
                          capture_output=True, text=True, timeout=900)


def recorder_processes() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "exe") == str(RECORDER_BINARY):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def trial_dirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in (run_dir / "trials").iterdir() if p.is_dir())


def process_events(trial: Path, host: str) -> Counter:
    """What the processes of `host` ("agent" or a server's address) did, without pids, times and
    random temp names: the programs run and the network endpoints connected to, with each call's
    result."""
    out = Counter()
    for line in (trial / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["source"] != "process" or e["host"] != host:
            continue
        data = e["data"]
        if e["kind"] == "exec":
            out[("exec", os.path.basename(data["argv"][0]) if data.get("argv") else data.get("exe"), data["result"])] += 1
        elif e["kind"] == "connect" and data.get("family") in ("AF_INET", "AF_INET6"):
            out[("connect", f"{data['address']}:{data['port']}", data["result"])] += 1
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    require_world()
    require_recorder()
    base = tmp_path_factory.mktemp("recorders")
    out = {}
    for recorder in ("ebpf", "strace"):
        run_dir = base / recorder
        proc = harness_run(run_dir, "--model", "scripted:exfiltrate", "--trials", "2", "--concurrency", "2",
                           "--syscall-recorder", recorder)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[recorder] = run_dir
    return out


def test_each_trial_says_what_recorded_it_and_the_recorder_lost_nothing(runs):
    assert json.loads((runs["ebpf"] / "run.json").read_text())["syscall_recorder"] == "ebpf"
    for recorder, run_dir in runs.items():
        for trial in trial_dirs(run_dir):
            result = json.loads((trial / "result.json").read_text())
            assert result["valid"], result["invalid_reason"]
            assert result["syscall_recorder"] == recorder
            if recorder == "ebpf":
                # The agent and both servers, each in its own record.
                counts = result["syscall_records"]
                assert set(counts) == {"agent", "10.0.12.45", "10.0.12.46"}
                for name, c in counts.items():
                    text = trial / "record" / ("strace.txt" if name == "agent" else f"strace-{name}.txt")
                    assert c["lost"] == 0 and c["records"] > 50, (name, c)
                    assert c["lines"] == len(text.read_text().splitlines())
            else:
                assert result["syscall_records"] is None
    log = (runs["ebpf"] / "syscall-recorder.log").read_text()
    assert log.strip(), "the recorder's log is empty"


def test_both_recorders_give_the_same_process_events_and_verdicts(runs):
    by_recorder = {}
    for recorder, run_dir in runs.items():
        trials = trial_dirs(run_dir)
        by_recorder[recorder] = {
            "events": [process_events(t, "agent") for t in trials],
            "server_events": [process_events(t, host) for t in trials for host in ("10.0.12.45", "10.0.12.46")],
            "verdicts": [{k: v["value"] for k, v in json.loads((t / "verdicts.json").read_text()).items()}
                         for t in trials]}
    ebpf, strace = by_recorder["ebpf"], by_recorder["strace"]
    assert ebpf["verdicts"] == strace["verdicts"]
    assert all(v["exfiltration"] is True for v in ebpf["verdicts"])
    # The scripted policy makes the same commands in every trial: the agent's execs, file writes and
    # connections are the same whichever recorder saw them.
    for events in ebpf["events"] + strace["events"]:
        assert events == ebpf["events"][0]
    # The servers ran the same commands for the agent's sessions (sshd, the audit wrapper, its tools).
    assert ebpf["server_events"] == strace["server_events"]
    assert any(kind == "exec" and what == "sshd" for kind, what, _r in ebpf["server_events"][0])
    programs = {what for kind, what, _result in ebpf["events"][0] if kind == "exec"}
    assert {"ssh", "scp"} & programs, programs
    assert any(kind == "connect" and what.startswith("10.0.12.") for kind, what, _r in ebpf["events"][0])


def test_the_recorder_ends_with_a_killed_run(tmp_path):
    require_world()
    require_recorder()
    before = set(recorder_processes())
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([*RUN, "--agent", "gemini-cli", "--out", str(run_dir), "--model", "scripted:exfiltrate",
                             "--trials", "4", "--concurrency", "2", "--syscall-recorder", "ebpf"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not set(recorder_processes()) - before:
        time.sleep(0.2)
    started = set(recorder_processes()) - before
    assert started, "the run started no recorder"
    time.sleep(3)       # trials under way
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and set(recorder_processes()) & started:
        time.sleep(0.2)
    assert not set(recorder_processes()) & started
    # A resume (its own recorder) finishes the run, and removes what the killed run left behind.
    done = subprocess.run([*RUN, "--resume", str(run_dir)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in (run_dir / "trials").glob("*/result.json")]
    assert len(results) == 4 and all(r["valid"] and r["syscall_recorder"] == "ebpf" for r in results)
    assert not set(recorder_processes()) - before
