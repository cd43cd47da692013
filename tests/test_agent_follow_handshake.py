"""The handshake by which a world has a process followed by the run's syscall recorder
(runner.world_init.start_followed with runner.syscall_recorder.WorldFollower), across a real pid
namespace: the pid the harness is given is the host pid of the parked process, its command runs
only after the recorder has said yes, and never when it says no."""
from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from runner.paths import PROJECT_ROOT
from runner.syscall_recorder import RecorderError, WorldFollower

WORLD = """
import sys
sys.path.insert(0, {root!r})
import subprocess
from runner.world_init import FOLLOW_GATE, recorder_socket, start_followed
recorder = recorder_socket({{"recorder_fd": {fd}}})
proc = start_followed(FOLLOW_GATE + ["/bin/sh", "-c", "touch {marker}; exit 4"], [], recorder, "agent",
                      stdout=subprocess.PIPE)
proc.communicate()
print("pid-in-world", proc.pid, "exit", proc.returncode)
"""


class PidBook:
    """Stands in for the run's recorder at the other end of the handshake: it looks at the process
    it is asked to follow (by host pid) and says yes or no."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse, self.seen = refuse, []

    def follow(self, host_pid: int, tag: str, records_path: Path) -> None:
        status = Path(f"/proc/{host_pid}/status").read_text()
        nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:"))
        cmdline = Path(f"/proc/{host_pid}/cmdline").read_bytes().split(b"\0")
        self.seen.append({"host_pid": host_pid, "nspid": nspid, "cmdline": cmdline, "tag": tag})
        if self.refuse:
            raise RecorderError("no more tags")

    def close(self, tag: str) -> dict:
        return {"records": 0, "lost": 0}


def run_world(tmp_path: Path, book: PidBook) -> tuple[subprocess.CompletedProcess, WorldFollower]:
    follower = WorldFollower(book, "t0001", tmp_path)
    fd = follower.fd_for_world()
    code = WORLD.format(root=str(PROJECT_ROOT), marker=tmp_path / "ran", fd=fd)
    proc = subprocess.Popen(["/usr/bin/unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                             "/usr/bin/python3", "-c", code], pass_fds=[fd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    follower.world_started()
    asks = True
    while asks and proc.poll() is None:
        if follower in select.select([follower], [], [], 1)[0]:
            asks = follower.answer()
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), follower


@pytest.mark.skipif(os.geteuid() != 0, reason="pid namespaces need root")
def test_the_recorder_gets_the_host_pid_of_the_parked_agent_and_the_agent_runs_after(tmp_path):
    book = PidBook()
    done, follower = run_world(tmp_path, book)
    assert done.returncode == 0, done.stderr
    [seen] = book.seen
    assert seen["tag"] == "t0001.agent"
    # The host pid of a process of the world's pid namespace: host pid first, world pid second.
    assert len(seen["nspid"]) == 2 and int(seen["nspid"][0]) == seen["host_pid"] != int(seen["nspid"][1])
    world_pid = int(done.stdout.split()[1])
    assert int(seen["nspid"][1]) == world_pid
    # Parked at the gate (not yet the agent's command), which ran afterwards with its own exit status.
    assert seen["cmdline"][:2] == [b"/bin/sh", b"-c"] and seen["cmdline"][3] == b"gate"
    assert (tmp_path / "ran").exists()
    assert done.stdout.split()[-1] == "4"
    assert follower.followed == {"agent": tmp_path / "syscalls-agent.jsonl"}
    assert follower.finish() == {"agent": {"records": 0, "lost": 0}}


@pytest.mark.skipif(os.geteuid() != 0, reason="pid namespaces need root")
def test_a_refused_follow_fails_the_world_and_the_agent_never_runs(tmp_path):
    book = PidBook(refuse=True)
    done, follower = run_world(tmp_path, book)
    assert done.returncode != 0
    assert "the syscall recorder could not follow agent: error: no more tags" in done.stderr
    assert len(book.seen) == 1
    assert not (tmp_path / "ran").exists()
    assert not follower.followed and follower.finish() == {}


def test_a_world_that_never_asks_leaves_nothing_to_close(tmp_path):
    follower = WorldFollower(PidBook(), "t0002", tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"], pass_fds=[follower.fd_for_world()])
    follower.world_started()
    proc.wait()
    assert follower.answer() is False      # the world's end is closed: EOF
    assert follower.finish() == {}


@pytest.mark.parametrize("request_text", [b"follow ../../etc/passwd", b"follow", b"record agent", b"follow a b"])
def test_a_malformed_request_is_refused_and_nothing_is_followed(tmp_path, request_text):
    book = PidBook()
    follower = WorldFollower(book, "t0003", tmp_path)
    world = socket.socket(fileno=os.dup(follower.fd_for_world()))
    follower.world_started()
    world.sendmsg([request_text], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS,
                                    struct.pack("iII", os.getpid(), os.getuid(), os.getgid()))])
    assert follower.answer() is True
    assert world.recv(4096).startswith(b"error: unexpected request from the world")
    assert book.seen == [] and follower.followed == {}
    world.close()
