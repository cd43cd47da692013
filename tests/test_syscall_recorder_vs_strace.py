"""The eBPF syscall recorder against strace: each workload runs once under the worlds' strace
(runner.world_init.strace_argv) and once under `syscall-recorder --run`, both go through
runner.strace_parse.process_events (the recorder's records via runner.syscall_records), and the
events must be the same multiset, apart from what differs between any two runs (pids, child pids,
ephemeral ports, /proc/PID paths, times set to "now").

The binary: $PEER_HARNESS_SYSCALL_RECORDER if set, else runner/ebpf/build/syscall-recorder
(`make -C runner/ebpf`). Root and a kernel with BTF are needed to load it."""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import runner
from runner.strace_parse import process_events
from runner.syscall_records import records_to_strace
from runner.world_init import strace_argv, vsock_filter

pytestmark = pytest.mark.slow

RECORDER = Path(os.environ.get("PEER_HARNESS_SYSCALL_RECORDER")
                or Path(runner.__file__).parent / "ebpf" / "build" / "syscall-recorder")
KERNEL_BTF = Path("/sys/kernel/btf/vmlinux")
BWRAP = shutil.which("bwrap") or "/usr/bin/bwrap"
SANDBOX = [BWRAP, "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
           "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev"]
IN_WORKSPACE = ["--chdir", "/workspace", "--unshare-pid"]
LISTEN_PORT = 47321

# Sockets: a listener, a non-blocking connect to it (EINPROGRESS, SO_ERROR, getsockname), accept, a
# thread, a refused IPv6 connect, kill(self, 0), and socket(AF_VSOCK), which the world's seccomp
# filter turns into SIGSYS.
SOCKETS_PY = f"""
import os, signal, socket, threading
signal.signal(signal.SIGSYS, lambda *a: None)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {LISTEN_PORT})); s.listen()
c = socket.socket(); c.setblocking(False); c.connect_ex(("127.0.0.1", {LISTEN_PORT}))
c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR); c.getsockname()
a, _ = s.accept()
t = threading.Thread(target=lambda: None); t.start(); t.join()
c6 = socket.socket(socket.AF_INET6); c6.connect_ex(("::1", 1))
os.kill(os.getpid(), 0)
try:
    socket.socket(40, socket.SOCK_STREAM)
except OSError:
    pass
"""
FILEOPS_SH = f"""set -e
mkdir -p src/sub; echo a > src/a; echo b > src/sub/b
cp -r src dst
mv dst/a dst/a2
ln dst/a2 hard; ln -s dst/a2 soft
chmod 600 dst/a2
touch -d @1700000000 dst/a2; touch newfile
rm -r dst
cd src && rm sub/b && cd ..
python3 -c '{SOCKETS_PY}'
exit 3
"""
# A deep tree, a file deleted while open, odd bytes in a name, a read of a secret path
# (strace_parse.SECRET_PREFIXES), a child killed by SIGKILL, exec from a non-leader thread.
EDGES_PY = r"""
import os, threading
deep = "deep/" + "/".join("d%02d" % i for i in range(80))
os.makedirs(deep)
os.chdir(deep)
open("f", "w").close()
os.chdir("/workspace")
fd = os.open("gone", os.O_WRONLY | os.O_CREAT, 0o644); os.unlink("gone"); os.ftruncate(fd, 0)
os.mkdir(b"caf\xc3\xa9 \n\ttab")
try:
    open("/root/.bashrc").close()
except OSError:
    pass
if os.fork() == 0:
    os.kill(os.getpid(), 9)
os.wait()
t = threading.Thread(target=lambda: os.execv("/bin/true", ["true", "from-thread"])); t.start(); t.join()
"""


def workload(name: str, workdir: Path) -> tuple[list[str], list[int], int]:
    """The command of a workload run in a fresh `workdir`, the fds it inherits, its exit code."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    bind = ["--bind", str(workdir), "/workspace"]
    if name == "bwrap_shell":
        return SANDBOX + bind + IN_WORKSPACE + ["sh", "-c", "mkdir d; cd d; echo hi > f; rm -r /workspace/d"], [], 0
    if name == "fileops":
        read_end, write_end = os.pipe()
        os.write(write_end, vsock_filter())
        os.close(write_end)
        return SANDBOX + bind + IN_WORKSPACE + ["--seccomp", str(read_end), "sh", "-c", FILEOPS_SH], [read_end], 3
    assert name == "edges"
    return SANDBOX + bind + IN_WORKSPACE + ["--ro-bind", "/etc", "/etc", "python3", "-c", EDGES_PY], [], 0


def run_traced(tracer: list[str], name: str, workdir: Path) -> None:
    cmd, fds, expected_exit = workload(name, workdir)
    try:
        proc = subprocess.run(tracer + cmd, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=120)
    finally:
        for fd in fds:
            os.close(fd)
    assert proc.returncode == expected_exit, proc.stderr.decode(errors="replace")[-2000:]


# Event fields that differ between two runs of the same workload.
VOLATILE = {"spawn": ("child", "child_local"), "exec": ("ppid",), "connect": ("local_port", "completed_at"),
            "accept": ("peer_port",), "kill": ("target", "target_pid")}
PROC_PID = re.compile(r"/proc/\d+/")


def normalized(event: dict) -> str:
    data = {k: v for k, v in event["data"].items() if k not in VOLATILE.get(event["kind"], ())}
    if event["kind"] == "utime" and any(isinstance(data.get(k), float) and abs(data[k] - time.time()) < 86400
                                        for k in ("atime", "mtime")):
        data.update(atime="RECENT", mtime="RECENT", times="RECENT")     # touch: set to the run's own clock
    return PROC_PID.sub("/proc/PID/", json.dumps({"kind": event["kind"], **data}, sort_keys=True))


@pytest.fixture(scope="module")
def recorder() -> Path:
    if not RECORDER.exists():
        pytest.skip(f"{RECORDER} missing: build it with `make -C runner/ebpf` (or set PEER_HARNESS_SYSCALL_RECORDER)")
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    if not KERNEL_BTF.exists():
        pytest.skip(f"{KERNEL_BTF} missing: this kernel has no BTF, the recorder's programs cannot load")
    return RECORDER


def events_of_both(name: str, recorder: Path, tmp_path: Path) -> tuple[collections.Counter, collections.Counter]:
    strace_out, records = tmp_path / "strace.txt", tmp_path / "records.jsonl"
    run_traced(strace_argv(str(strace_out)), name, tmp_path / "work")     # the same paths in both runs
    run_traced([str(recorder), "--run", name, "-o", str(records), "--"], name, tmp_path / "work")
    summary = records_to_strace(records, tmp_path / "recorder-strace.txt")
    assert summary.lost == 0 and summary.lines > 0
    return (collections.Counter(map(normalized, process_events(strace_out))),
            collections.Counter(map(normalized, process_events(tmp_path / "recorder-strace.txt"))))


@pytest.mark.parametrize("name", ["bwrap_shell", "fileops"])
def test_recorder_gives_straces_events(name: str, recorder: Path, tmp_path: Path):
    by_strace, by_recorder = events_of_both(name, recorder, tmp_path)
    assert sorted((by_strace - by_recorder).elements()) == sorted((by_recorder - by_strace).elements()) == []
    kinds = {json.loads(e)["kind"] for e in by_recorder}
    assert {"exec", "spawn", "mkdir", "open_write", "unlink", "exit"} <= kinds
    if name == "fileops":
        assert {"rename", "link", "chmod", "utime", "connect", "accept", "bind", "listen", "kill",
                "seccomp_blocked"} <= kinds


def test_recorder_gives_straces_events_in_edge_cases(recorder: Path, tmp_path: Path):
    by_strace, by_recorder = events_of_both("edges", recorder, tmp_path)
    killed = json.dumps({"kind": "exit", "status": "signal SIGKILL"}, sort_keys=True)
    assert by_recorder[killed] == 1
    # strace may miss the exit of a child that SIGKILLs itself (its kill() shows `= ?`, no
    # `+++ killed by SIGKILL +++`); otherwise the two agree.
    assert by_strace - by_recorder == collections.Counter()
    assert by_recorder - by_strace in (collections.Counter(), collections.Counter({killed: 1}))
    paths = {json.loads(e).get("path") for e in by_recorder}
    assert {"/root/.bashrc", "/workspace/caf\u00e9 \n\ttab", "/workspace/gone"} <= paths
    assert any("/d79/f" in (p or "") for p in paths)
