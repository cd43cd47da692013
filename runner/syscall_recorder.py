"""The run's eBPF syscall recorder: one `syscall-recorder` process (runner/ebpf) for the whole run,
on the host, outside every world, recording the agents' system calls in place of one strace per
trial (strace stops the traced process at each recorded call; the recorder's programs run in the
kernel at syscall exit and never stop it).

A world asks for its agent and each of its servers to be followed before their sandboxes start:
world_init parks the process at a gate, sends its pid over a unix socket (the kernel translates the
pid from the world's pid namespace into the harness's, SCM_CREDENTIALS), and opens the gate once
the recorder has said it follows that pid; from then on every process it starts is followed too.
When the world has ended the trial closes its tags: the recorder drains what the kernel has
committed, closes each record file and says how many records it wrote and whether any were lost.
runner.syscall_records then writes the strace-format text the parser reads (logs/strace.txt for
the agent, logs/strace-ADDRESS.txt for a server).

Control protocol (stdin / one reply line on stdout each): `add PID TAG FILE` -> `ok add TAG`;
`close TAG` -> `ok close TAG records=N lost=M`; errors -> `err ...`."""
from __future__ import annotations

import os
import re
import select
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

from runner.paths import PROJECT_ROOT
from runner.world_init import set_session_nice

RECORDER_BINARY = PROJECT_ROOT / "runner" / "ebpf" / "build" / "syscall-recorder"
# What a world may ask to have followed: "agent" or a server's address.
FOLLOWED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}")
START_TIMEOUT_S = 30                 # loading and verifying the programs takes 0.2-0.4 s of CPU
REPLY_TIMEOUT_S = 30
SYSCALL_RECORDERS = ("ebpf", "strace")
# The recorder's session comes before every agent it records (world_init.AGENT_NICE is -5): the
# trials share one ring, and a reader that fell behind one world's flood of records (a red-team
# agent writing without end) lost the records of the trial beside it.
RECORDER_NICE = -10


class RecorderError(RuntimeError):
    pass


class SyscallRecorder:
    """Client of the run's recorder process; commands from the trials' threads are serialised."""

    def __init__(self, binary: Path = RECORDER_BINARY, log_path: Path | None = None) -> None:
        if not binary.exists():
            raise RecorderError(f"{binary} is not built (setup.sh builds it: make -C runner/ebpf)")
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._log, start_new_session=True)
        set_session_nice(RECORDER_NICE, self._proc.pid)
        self._lock = threading.Lock()
        self._pending = b""
        try:
            reply = self._reply(START_TIMEOUT_S)
        except RecorderError:
            self.stop()
            raise
        if reply != "ready":
            self.stop()
            raise RecorderError(f"syscall-recorder did not start: {reply}")

    def _reply(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        out = self._proc.stdout.fileno()
        while b"\n" not in self._pending:
            if not select.select([out], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise RecorderError(f"syscall-recorder gave no answer within {timeout_s} s")
            chunk = os.read(out, 4096)
            if not chunk:
                raise RecorderError(f"syscall-recorder exited (status {self._proc.wait()})")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode(errors="replace")

    def _command(self, line: str) -> str:
        with self._lock:
            if self._proc.poll() is not None:
                raise RecorderError(f"syscall-recorder exited (status {self._proc.returncode})")
            try:
                self._proc.stdin.write(line.encode() + b"\n")
                self._proc.stdin.flush()
            except OSError as exc:
                raise RecorderError(f"syscall-recorder stopped listening: {exc}") from exc
            return self._reply(REPLY_TIMEOUT_S)

    def follow(self, host_pid: int, tag: str, records_path: Path) -> None:
        """Record `host_pid` and everything it starts, from now on, into `records_path`."""
        if not re.fullmatch(r"[A-Za-z0-9._-]+", tag) or any(c.isspace() for c in str(records_path)):
            raise RecorderError(f"tag and path must be single words: {tag!r} {records_path}")
        reply = self._command(f"add {host_pid} {tag} {records_path}")
        if reply != f"ok add {tag}":
            raise RecorderError(f"the syscall recorder could not follow pid {host_pid}: {reply}")

    def close(self, tag: str) -> dict:
        """The tag's record is complete (its processes have ended): {"records": N, "lost": M}."""
        reply = self._command(f"close {tag}")
        m = re.fullmatch(rf"ok close {re.escape(tag)} records=(\d+) lost=(\d+)", reply)
        if not m:
            raise RecorderError(f"the syscall recorder could not close {tag}: {reply}")
        return {"records": int(m[1]), "lost": int(m[2])}

    def stop(self) -> None:
        """End of stdin: the recorder drains, closes every file and exits."""
        if self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()


class WorldFollower:
    """One trial's side of the handshake: the harness end of the socket world_init asks on (the
    other end goes into the world's spec), and the trial's tag. The world asks `follow NAME` for
    its agent ("agent") and each server (its address); NAME's records go to `syscalls-NAME.jsonl`
    in the world's logs."""

    def __init__(self, recorder: SyscallRecorder, trial_tag: str, logs: Path) -> None:
        self.recorder, self.trial_tag, self.logs = recorder, trial_tag, logs
        self._harness_end, self._world_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Credentials the world attaches are translated into this process's pid namespace.
        self._harness_end.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.followed: dict[str, Path] = {}      # name -> its records file

    def fd_for_world(self) -> int:
        return self._world_end.fileno()

    def fileno(self) -> int:
        return self._harness_end.fileno()

    def world_started(self) -> None:
        """The world holds its end now (inherited): ours is closed so a dead world reads as EOF."""
        self._world_end.close()

    def answer(self) -> bool:
        """Handle the world's request (the socket is readable); False once the world closed its end."""
        data, ancillary, _flags, _addr = self._harness_end.recvmsg(256, socket.CMSG_SPACE(struct.calcsize("iII")))
        if not data:
            return False
        pid = next((struct.unpack("iII", d[:12])[0] for level, kind, d in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
        verb, _, name = data.decode(errors="replace").partition(" ")
        try:
            if verb != "follow" or not FOLLOWED_NAME.fullmatch(name) or name in self.followed or pid is None:
                raise RecorderError(f"unexpected request from the world: {data!r}")
            path = self.logs / f"syscalls-{name}.jsonl"
            self.recorder.follow(pid, f"{self.trial_tag}.{name}", path)
            self.followed[name] = path
            self._harness_end.send(b"ok")
        except RecorderError as exc:
            self._harness_end.send(f"error: {exc}".encode()[:4000])
        return True

    def finish(self) -> dict[str, dict]:
        """After the world has ended: each followed name's counts ({"records": N, "lost": M}), or
        {"error": ...} where the recorder failed."""
        self._harness_end.close()
        self._world_end.close()      # already closed unless the world never started
        counts = {}
        for name in self.followed:
            try:
                counts[name] = self.recorder.close(f"{self.trial_tag}.{name}")
            except RecorderError as exc:
                counts[name] = {"error": str(exc)}
        return counts
