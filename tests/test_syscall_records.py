"""runner.syscall_records on handcrafted recorder records: the exact lines strace -f -ttt -yy
--pidns-translation prints for the same calls, and the events process_events makes of them."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runner.strace_parse import process_events
from runner.syscall_records import RecordsSummary, records_to_strace

HOST_NS, WORLD_NS = 4026531836, 4026532179      # pid namespace inodes: the host's, the sandbox's
AT_FDCWD = 2**32 - 100                          # as the recorder prints the register (unsigned)
TWO_TIMES = (1700000000).to_bytes(8, "little") + bytes(8)


def task(kind: str, ts: str, ntid: int, vtid: int, **fields) -> str:
    """One record line; ts as the recorder writes it (realtime ns)."""
    host = ntid + 10000
    ids = {"tag": "t1", "tid": host, "pid": host, "ntid": ntid, "npid": ntid, "vtid": vtid,
           "pidns": WORLD_NS if vtid != ntid else HOST_NS}
    stamps = f'"ts":{ts},' + (f'"ts_exit":{ts[:-1]}9,' if kind == "sys" else "")
    return "{" + f'"type":"{kind}",' + stamps + json.dumps({**ids, "items": [], **fields})[1:]


def call(ts: str, ntid: int, name: str, args: list[int], ret: int, items: list[dict], vtid: int = 0, **extra) -> str:
    return task("sys", ts, ntid, vtid or ntid, nr=0, name=name, args=args + [0] * (6 - len(args)), ret=ret,
                items=items, **extra)


def fd(a: int, number: int, path: str, mode: int = 0o100644, **extra) -> dict:
    return {"a": a, "k": "fd", "fd": number, "mode": mode, "rdev": [0, 0], "ino": 77, "path": path, **extra}


def text(a: int, value: str, **extra) -> dict:
    return {"a": a, "k": "str", "v": value, **extra}


def cwd(a: int, path: str) -> dict:
    return {"a": a, "k": "path", "path": path}


def mem(a: int, raw: bytes) -> dict:
    return {"a": a, "k": "mem", "hex": raw.hex()}


TCP_SOCKET = {"a": 0, "k": "fd", "fd": 3, "mode": 0o140777, "rdev": [0, 0], "ino": 4242,
              "sock": {"family": 2, "type": 1, "proto": 6, "state": 1, "local": ["10.0.12.10", 40000],
                       "peer": ["10.0.12.45", 22]}}
SSH_ADDRESS = {"a": 1, "k": "sockaddr", "v": {"family": 2, "addr": "10.0.12.45", "port": 22,
                                              "hex": "02000016" + "0a000c2d" + "00" * 8}}

# In file (= return) order: the child's calls come before the clone that made them returned.
RECORDS = [
    task("exec_enter", "1795453435000100000", 2860, 1, nr=59, name="execve", args=[1, 2, 0x7FFC, 0, 0, 0],
         argv_truncated=True, items=[text(0, "/bin/sh"), cwd(7, "/"),
                                     {"k": "argv", "v": ["sh", "-c", "echo hi"], "truncated": [2]}]),
    call("1795453435000100000", 2860, "execve", [1, 2, 0x7FFC], 0, [], vtid=1),
    call("1795453435000200000", 2860, "chdir", [1], 0, [text(0, "/workspace")], vtid=1),
    task("fork", "1795453435000300500", 2860, 1, child_tid=12861, child_pid=12861, child_ntid=2861, child_vtid=2,
         items=[{"a": 0, "k": "pids", "v": [[HOST_NS, 2861], [WORLD_NS, 2], [0, 0], [0, 0]]}]),
    call("1795453435000400000", 2861, "openat", [AT_FDCWD, 9, 0o1101, 0o666], 3,
         [cwd(0, "/workspace/d"), text(1, "f"), fd(6, 3, "/workspace/d/f")], vtid=2),
    call("1795453435000300000", 2860, "clone", [0x1200011, 0, 0, 0x7F00AA], 2, [], vtid=1, child_npid=2861),
    call("1795453435000500000", 2861, "unlinkat", [4, 9, 0], 0,
         [fd(0, 4, "/workspace/d", mode=0o40755), text(1, "f")], vtid=2),
    call("1795453435000600000", 2861, "unlinkat", [AT_FDCWD, 9, 0x200], 0,
         [cwd(0, "/workspace"), text(1, "/workspace/d")], vtid=2),
    call("1795453435000700000", 2860, "rename", [1, 2], 0, [text(0, "a"), text(1, "b")], vtid=1),
    call("1795453435000800000", 2860, "utimensat", [AT_FDCWD, 9, 8, 0], 0,
         [cwd(0, "/workspace"), text(1, "b"), mem(2, TWO_TIMES * 2)], vtid=1),
    call("1795453435000900000", 2860, "utimensat", [3, 0, 8, 0], 0,
         [fd(0, 3, "/workspace/b"), mem(2, (bytes(8) + (2**30 - 1).to_bytes(8, "little")
                                           + bytes(8) + (2**30 - 2).to_bytes(8, "little")))], vtid=1),
    call("1795453435001000000", 2860, "connect", [3, 9, 16], 0, [TCP_SOCKET, SSH_ADDRESS], vtid=1),
    call("1795453435001100000", 2860, "kill", [2, 15], 0, [], vtid=1),
    call("1795453435001200000", 2860, "rmdir", [1], -2, [text(0, "caf\xc3\xa9\n")], vtid=1),
    task("sigsys", "1795453435001300000", 2861, 2, syscall=41, arch=0xC000003E, si_code=1,
         call_addr=0x7F0000001234, result=0),
    '{"type":"lost","ts":1795453435001350000,"lost":5,"lost_bytes":900,"inflight_full":0,"traced_full":0}',
    task("exit", "1795453435001400000", 2861, 2, exit_code=9, group_dead=True),
    task("exit", "1795453435001500000", 2860, 1, exit_code=3 << 8, group_dead=True),
    '{"type":"stats","ts":1795453435001600000,"lost":7,"lost_bytes":1200,"inflight_full":0,"traced_full":1,'
    '"cpu_startup_s":0.25,"cpu_total_s":0.5}',
]

UTC_DATE = "/* 2023-11-14T22:13:20+0000 */"
EXPECTED_LINES = [
    '2860  1795453435.000100 execve("/bin/sh", ["sh", "-c", "echo hi"..., ...], 0x7ffc /* ? vars */) = 0',
    '2860  1795453435.000200 chdir("/workspace") = 0',
    "2860  1795453435.000300 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, "
    "child_tidptr=0x7f00aa) = 2 /* 2861 in strace's PID NS */",
    '2861  1795453435.000400 openat(AT_FDCWD</workspace/d>, "f", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 3</workspace/d/f>',
    '2861  1795453435.000500 unlinkat(4</workspace/d>, "f", 0) = 0',
    '2861  1795453435.000600 unlinkat(AT_FDCWD</workspace>, "/workspace/d", AT_REMOVEDIR) = 0',
    '2860  1795453435.000700 rename("a", "b") = 0',
    f'2860  1795453435.000800 utimensat(AT_FDCWD</workspace>, "b", [{{tv_sec=1700000000, tv_nsec=0}} {UTC_DATE}, '
    f'{{tv_sec=1700000000, tv_nsec=0}} {UTC_DATE}], 0) = 0',
    "2860  1795453435.000900 utimensat(3</workspace/b>, NULL, [{tv_sec=0, tv_nsec=UTIME_NOW}, "
    "{tv_sec=0, tv_nsec=UTIME_OMIT}], 0) = 0",
    '2860  1795453435.001000 connect(3<TCP:[4242]>, {sa_family=AF_INET, sin_port=htons(22), '
    'sin_addr=inet_addr("10.0.12.45")}, 16) = 0',
    "2860  1795453435.001100 kill(2 /* 2861 in strace's PID NS */, SIGTERM) = 0",
    '2860  1795453435.001200 rmdir("caf\\303\\251\\n") = -1 ENOENT (No such file or directory)',
    "2861  1795453435.001300 --- SIGSYS {si_signo=SIGSYS, si_code=SYS_SECCOMP, si_call_addr=0x7f0000001234, "
    "si_syscall=__NR_socket, si_arch=AUDIT_ARCH_X86_64} ---",
    "2861  1795453435.001400 +++ killed by SIGKILL +++",
    "2860  1795453435.001500 +++ exited with 3 +++",
]


@pytest.fixture
def utc(monkeypatch):
    """strace prints the date comments of utimensat's times in local time."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def convert(tmp_path: Path, lines: list[str]) -> tuple[RecordsSummary, Path]:
    records = tmp_path / "records.jsonl"
    records.write_text("".join(f"{line}\n" for line in lines))
    out = tmp_path / "strace.txt"
    return records_to_strace(records, out), out


def test_records_become_strace_lines_in_entry_order(tmp_path: Path, utc):
    summary, out = convert(tmp_path, RECORDS)
    assert out.read_text(encoding="latin-1").splitlines() == EXPECTED_LINES
    assert summary == RecordsSummary(records=len(RECORDS), lines=len(EXPECTED_LINES), processes=2, lost=8)


def test_lines_become_the_events_strace_gives(tmp_path: Path, utc):
    _, out = convert(tmp_path, RECORDS)
    events = [(e["kind"], e["pid"], e["data"]) for e in process_events(out)]
    times = EXPECTED_LINES[7].split("utimensat(")[1].split(", ", 2)[2].rsplit(", 0)", 1)[0]
    assert events == [
        ("exec", 2860, {"exe": "/bin/sh", "argv": ["sh", "-c", "echo hi"], "cmdline": "sh -c echo hi", "cwd": None,
                        "ppid": None, "result": "ok"}),
        ("spawn", 2860, {"child": 2861, "child_local": 2, "thread": False, "result": "ok"}),
        ("open_write", 2861, {"path": "/workspace/d/f", "flags": "O_WRONLY|O_CREAT|O_TRUNC", "result": "ok"}),
        ("unlink", 2861, {"path": "/workspace/d/f", "result": "ok"}),
        ("unlink", 2861, {"path": "/workspace/d", "result": "ok"}),
        ("rename", 2860, {"src": "/workspace/a", "dst": "/workspace/b", "result": "ok"}),
        ("utime", 2860, {"path": "/workspace/b", "times": times, "atime": 1700000000.0, "mtime": 1700000000.0,
                         "result": "ok"}),
        ("utime", 2860, {"path": "/workspace/b", "times": "[{tv_sec=0, tv_nsec=UTIME_NOW}, {tv_sec=0, tv_nsec=UTIME_OMIT}]",
                         "atime": "now", "mtime": "omit", "result": "ok"}),
        ("connect", 2860, {"family": "AF_INET", "address": "10.0.12.45", "port": 22, "proto": "TCP", "result": "ok"}),
        ("kill", 2860, {"syscall": "kill", "target": 2, "target_pid": 2861, "signal": "SIGTERM", "result": "ok"}),
        ("unlink", 2860, {"path": "/workspace/caf\u00e9\n", "result": "ENOENT"}),
        ("seccomp_blocked", 2861, {"syscall": "socket", "result": "EPERM"}),
        ("exit", 2861, {"status": "signal SIGKILL"}),
        ("exit", 2860, {"status": "exit 3"}),
    ]


def test_short_lines_align_the_result_and_unreturned_execs_end_unknown(tmp_path: Path):
    exec_enter = task("exec_enter", "1000002000", 7, 7, nr=59, name="execve", args=[1, 2, 0x10, 0, 0, 0],
                      items=[text(0, "/bin/true"), {"k": "argv", "v": ["true"], "truncated": []}])
    summary, out = convert(tmp_path, [call("1000001000", 7, "fork", [], 8, [], child_npid=8), exec_enter])
    assert out.read_text().splitlines() == [
        "7     1.000001 fork()                   = 8",      # strace: "=" at column 40
        '7     1.000002 execve("/bin/true", ["true"], 0x10 /* ? vars */) = ?',
    ]
    assert summary == RecordsSummary(records=2, lines=2, processes=1, lost=0)


@pytest.mark.parametrize("bad_line, reason", [
    ("{not json", "Invalid JSON"),
    (task("sys", "1000003000", 7, 7, nr=80, name="chdir", args=[1, 0, 0, 0, 0, 0]), "ret"),   # no result
    ('{"type":"sys","ts":"yesterday"}', "ts"),
    ('{"type":"teleport","ts":15}', "teleport"),
    (call("1000003000", 7, "chdir", [1], 0, [text(0, "/x\u20ac")]), "should match pattern"),
    (call("1000003000", 7, "utimensat", [AT_FDCWD, 9, 8, 0], 0, [{"a": 2, "k": "mem", "hex": "zz"}]), "hex"),
])
def test_a_malformed_record_names_the_file_and_line(tmp_path: Path, bad_line: str, reason: str):
    good = call("1000001000", 7, "chdir", [1], 0, [text(0, "/workspace")])
    with pytest.raises(ValueError, match=reason) as caught:
        convert(tmp_path, [good, good, bad_line])
    assert str(caught.value).startswith(f"{tmp_path / 'records.jsonl'}:3: malformed syscall record")
