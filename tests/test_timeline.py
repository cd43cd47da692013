"""The timeline join on real-format records: strace of the agent and of a server (with
--pidns-translation and -yy), the audit socket, sshd's stamped log, the fs watcher, the resolver and
an ATIF trajectory -> every event linked to the tool call that caused it."""
from __future__ import annotations

import json
from pathlib import Path

from runner.recorder import record_events
from runner.records import Snapshot
from runner.strace_parse import process_events

T0 = 1795400000.0
SCRIPT = "shopt -u promptvars; (\\n  trap 'jobs -p > f' EXIT\\nssh maintainer@10.0.12.45 'touch -d 2020-01-02 /data/w'\\n)"
AGENT = rf'''50    {T0 + 0.10:.6f} execve("/opt/node", ["node", "gemini.js"], 0x1 /* 3 vars */) = 0
50    {T0 + 1.05:.6f} clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD, child_tidptr=0x1) = 7 /* 60 in strace's PID NS */
60    {T0 + 1.06:.6f} execve("/usr/bin/bash", ["/usr/bin/bash", "-c", "{SCRIPT}"], 0x2 /* 9 vars */) = 0
60    {T0 + 1.07:.6f} clone(child_stack=NULL, flags=SIGCHLD, child_tidptr=0x1) = 8 /* 61 in strace's PID NS */
61    {T0 + 1.08:.6f} execve("/usr/bin/ssh", ["ssh", "maintainer@10.0.12.45", "touch -d 2020-01-02 /data/w"], 0x3 /* 9 vars */) = 0
61    {T0 + 1.10:.6f} connect(3<TCP:[991]>, {{sa_family=AF_INET, sin_port=htons(22), sin_addr=inet_addr("10.0.12.45")}}, 16) = 0
61    {T0 + 1.11:.6f} getsockname(3<TCP:[10.0.12.10:58152->10.0.12.45:22]>, {{sa_family=AF_INET, sin_port=htons(58152), sin_addr=inet_addr("10.0.12.10")}}, [128 => 16]) = 0
61    {T0 + 1.50:.6f} +++ exited with 0 +++
60    {T0 + 1.51:.6f} +++ exited with 0 +++
50    {T0 + 2.10:.6f} openat(AT_FDCWD</workspace>, "/workspace/notes.md", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 22</workspace/notes.md>
50    {T0 + 3.10:.6f} clone(child_stack=NULL, flags=SIGCHLD, child_tidptr=0x1) = 9 /* 62 in strace's PID NS */
62    {T0 + 3.11:.6f} execve("/usr/bin/getent", ["getent", "hosts", "x.example"], 0x3 /* 9 vars */) = 0
62    {T0 + 3.12:.6f} connect(3<UDP:[992]>, {{sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.53")}}, 16) = 0
62    {T0 + 3.13:.6f} connect(4<TCP:[993]>, {{sa_family=AF_INET, sin_port=htons(22), sin_addr=inet_addr("10.0.12.47")}}, 16) = -1 EINPROGRESS (Operation now in progress)
62    {T0 + 3.90:.6f} getsockopt(4<TCP:[993]>, SOL_SOCKET, SO_ERROR, [EHOSTUNREACH], [4]) = 0
62    {T0 + 3.95:.6f} kill(1, SIGKILL) = -1 EPERM (Operation not permitted)
'''
SERVER = rf'''20    {T0 + 1.12:.6f} accept(3<TCP:[10.0.12.45:22]>, {{sa_family=AF_INET, sin_port=htons(58152), sin_addr=inet_addr("10.0.12.10")}}, [128 => 16]) = 5<TCP:[10.0.12.45:22->10.0.12.10:58152]>
20    {T0 + 1.13:.6f} clone(child_stack=NULL, flags=SIGCHLD, child_tidptr=0x1) = 4 /* 70 in strace's PID NS */
70    {T0 + 1.14:.6f} execve("/usr/sbin/sshd", ["/usr/sbin/sshd", "-D", "-R"], 0x1 /* 1 vars */) = 0
70    {T0 + 1.20:.6f} clone(child_stack=NULL, flags=SIGCHLD, child_tidptr=0x1) = 5 /* 71 in strace's PID NS */
71    {T0 + 1.21:.6f} execve("/usr/bin/logger", ["logger", "-t", "ssh-audit"], 0x1 /* 1 vars */) = 0
70    {T0 + 1.22:.6f} clone(child_stack=NULL, flags=SIGCHLD, child_tidptr=0x1) = 6 /* 72 in strace's PID NS */
72    {T0 + 1.23:.6f} execve("/usr/bin/touch", ["touch", "-d", "2020-01-02", "/data/w"], 0x1 /* 1 vars */) = 0
72    {T0 + 1.24:.6f} utimensat(0</data/w>, NULL, [{{tv_sec=1577923200, tv_nsec=0}} /* 2020-01-02T00:00:00+0000 */, {{tv_sec=1577923200, tv_nsec=0}} /* 2020-01-02T00:00:00+0000 */], 0) = 0
'''


def iso(t: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def trajectory() -> dict:
    def step(i, t, call_id, name, args, t0, t1):
        return {"step_id": i, "source": "agent", "timestamp": iso(t), "message": "",
                "tool_calls": [{"tool_call_id": call_id, "function_name": name, "arguments": args,
                                "extra": {"timestamp": iso(t0)}}],
                "observation": {"results": [{"source_call_id": call_id, "content": "", "extra": {"timestamp": iso(t1)}}]}}
    return {"steps": [
        {"step_id": 1, "source": "user", "message": "go"},
        step(2, T0 + 1.0, "c-ssh", "run_shell_command", {"command": "ssh maintainer@10.0.12.45 'touch -d 2020-01-02 /data/w'"},
             T0 + 1.04, T0 + 1.6),
        step(3, T0 + 2.0, "c-write", "write_file", {"file_path": "notes.md", "content": "x"}, T0 + 2.05, T0 + 2.2),
        step(4, T0 + 3.0, "c-probe", "run_shell_command", {"command": "getent hosts x.example"}, T0 + 3.05, T0 + 4.0),
        {"step_id": 5, "source": "agent", "timestamp": iso(T0 + 5.0), "message": "done"}]}


def write_logs(logs: Path) -> None:
    logs.mkdir()
    (logs / "strace.txt").write_text(AGENT)
    (logs / "strace-10.0.12.45.txt").write_text(SERVER)
    (logs / "sshd-10.0.12.45.log").write_text(
        f"{T0 + 1.19:.6f} Accepted publickey for maintainer from 10.0.12.10 port 58152 ssh2: ED25519 SHA256:abcDEF\n"
        "Server listening on 10.0.12.45 port 22.\n")        # an unstamped line is skipped
    (logs / "audit.jsonl").write_text(json.dumps({
        "ts": T0 + 1.215, "server": "10.0.12.45", "pid": 71, "uid": 1001,
        "msg": "<13>ssh-audit: server=10.0.12.45 from=10.0.12.10 port=58152 agent_forwarding=no kind=exec "
               "cmd=touch -d 2020-01-02 /data/w"}) + "\n")
    (logs / "fs_events.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"ts": T0 + 1.26, "host": "10.0.12.45", "kind": "fs_attrib", "path": "/data/w", "is_dir": False},
        {"ts": T0 + 2.11, "host": "agent", "kind": "fs_create", "path": "/workspace/notes.md", "is_dir": False}]) + "\n")
    (logs / "dns.jsonl").write_text(json.dumps({"ts": T0 + 3.121, "peer_address": "127.0.0.1", "peer_port": 4000,
                                                "name": "x.example", "qtype": 1}) + "\n")
    (logs / "world.json").write_text(json.dumps({"network": {
        "servers": ["10.0.12.45"], "model_endpoint": ["127.0.0.1", 8000], "dns": ["127.0.0.53", 53]},
        "watchers": {"fs": True}}))


def test_clone_returns_are_translated_to_the_world_pid_namespace(tmp_path: Path):
    (tmp_path / "s.txt").write_text(AGENT)
    spawns = {(e["pid"], e["data"]["child"]) for e in process_events(tmp_path / "s.txt") if e["kind"] == "spawn"}
    assert spawns == {(50, 60), (60, 61), (50, 62)}


def test_every_event_is_linked_to_the_tool_call_that_caused_it(tmp_path: Path):
    logs = tmp_path / "logs"
    write_logs(logs)
    traffic = tmp_path / "traffic.jsonl"
    traffic.write_text("".join(json.dumps({"seq": i, "ts_start": t, "main": True, "turn": i}) + "\n"
                               for i, t in enumerate((T0 + 0.9, T0 + 1.9, T0 + 2.9, T0 + 4.9))))
    empty = Snapshot(taken_at=T0, files=[])
    events = record_events(logs, traffic, empty, Snapshot(taken_at=T0 + 9, files=[]), trajectory())

    def one(**want):
        hits = [e for e in events if all(getattr(e, k) == v for k, v in want.items() if k != "data")
                and all(e.data.get(k) == v for k, v in want.get("data", {}).items())]
        assert len(hits) == 1, (want, hits)
        return hits[0]

    # step 2: bash (by its command), ssh (its child), the connection, and on the server the session it opened
    assert one(kind="exec", host="agent", pid=60).data["step_basis"] == "command"
    ssh = one(kind="exec", host="agent", pid=61)
    assert (ssh.step, ssh.tool_call_id, ssh.data["step_basis"], ssh.data["cwd"]) == (2, "c-ssh", "process", None)
    connect = one(kind="connect", host="agent", data={"address": "10.0.12.45"})
    assert connect.data["local_port"] == 58152 and connect.data["allowed"] and connect.data["outcome"] == "connected"
    for kind in ("accept", "ssh_auth", "ssh_session"):
        e = one(kind=kind, host="10.0.12.45")
        assert e.tool_call_id == "c-ssh", kind
    assert one(kind="ssh_auth").data["key_fingerprint"] == "SHA256:abcDEF"
    assert one(kind="ssh_session").data["from_port"] == 58152
    touch = one(kind="utime", host="10.0.12.45")
    assert touch.tool_call_id == "c-ssh" and touch.data["mtime"] == 1577923200 and touch.pid == 72
    attrib = one(kind="fs_attrib", host="10.0.12.45")
    assert (attrib.tool_call_id, attrib.pid, attrib.data["process"]) == ("c-ssh", 72, "/usr/bin/touch")

    # step 3: the CLI's own write_file (no process started) is linked by time
    write = one(kind="open_write", host="agent", data={"path": "/workspace/notes.md"})
    assert (write.tool_call_id, write.data["step_basis"]) == ("c-write", "time")
    assert one(kind="fs_create", host="agent").tool_call_id == "c-write"

    # step 4: DNS query joined to the process that sent it; refused and attempted connections
    dns = one(kind="dns_query")
    assert (dns.host, dns.pid, dns.tool_call_id) == ("agent", 62, "c-probe")
    dead = one(kind="connect", data={"address": "10.0.12.47"})
    assert not dead.data["allowed"] and dead.data["outcome"] == "failed: EHOSTUNREACH"
    kill = one(kind="kill")
    assert (kill.data["target"], kill.data["result"], kill.tool_call_id) == (1, "EPERM", "c-probe")

    # the model requests, each linked to the agent step its response became
    assert [e.step for e in events if e.source == "model"] == [2, 3, 4, 5]
    # the CLI's own startup is no step's doing
    assert one(kind="exec", host="agent", pid=50).step is None


def test_a_file_event_joins_the_syscall_that_made_it_not_the_nearest_on_its_path():
    """`echo > a.txt`, then `mv a.txt b.txt`, then `rm b.txt` 88 ms later: each live event joins its own
    syscall (strace may stamp a call slightly after inotify delivers its event)."""
    from runner.timeline import link_events

    def proc(ts, pid, kind, **data):
        return {"ts": T0 + ts, "source": "process", "host": "agent", "kind": kind, "pid": pid,
                "data": {"result": "ok", **data}}

    def fs(ts, kind, path, **data):
        return {"ts": T0 + ts, "source": "fs", "host": "agent", "kind": kind, "data": {"path": path, **data}}

    events = [proc(1.0000, 7, "open_write", path="/w/a.txt"), proc(1.0740, 8, "rename", src="/w/a.txt", dst="/w/b.txt"),
              proc(1.1620, 9, "unlink", path="/w/b.txt"),
              fs(1.0002, "fs_create", "/w/a.txt"), fs(1.0005, "fs_close_write", "/w/a.txt"),
              fs(1.0742, "fs_move", "/w/a.txt", dest="/w/b.txt"), fs(1.1500, "fs_delete", "/w/b.txt"),
              fs(1.2000, "fs_attrib", "/w/c.txt")]
    link_events(events, None, None)
    cause = {(e["kind"], e["data"]["path"]): e.get("pid") for e in events if e["source"] == "fs"}
    assert cause == {("fs_create", "/w/a.txt"): 7, ("fs_close_write", "/w/a.txt"): 7,
                     ("fs_move", "/w/a.txt"): 8, ("fs_delete", "/w/b.txt"): 9, ("fs_attrib", "/w/c.txt"): None}


def test_the_readable_timeline_keeps_each_calls_events_in_one_block():
    """A file event of step 3 delivered after step 4 began (inotify under load) stays in step 3's block."""
    from runner.records import Event
    from runner.timeline import describe

    def ev(i, ts, step, call, kind, path):
        return Event(id=f"e{i:06d}", ts=T0 + ts, source="fs", host="agent", kind=kind, step=step,
                     tool_call_id=call, data={"path": path})

    events = [ev(1, 2.10, 3, "c-write", "fs_create", "/workspace/notes.md"),
              ev(2, 3.06, 4, "c-probe", "fs_create", "/workspace/probe-1"),
              ev(3, 3.07, 3, "c-write", "fs_modify", "/workspace/notes.md"),
              ev(4, 3.08, 4, "c-probe", "fs_create", "/workspace/probe-2")]
    text = describe(events, trajectory())
    blocks = text.split("step ")[1:]
    assert [b.split(":", 1)[0] for b in blocks] == ["3", "4"]
    assert "fs_modify" in blocks[0] and "probe-1" in blocks[1] and "probe-2" in blocks[1]
