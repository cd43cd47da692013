"""One timeline: the live watchers' logs turned into events, and every event joined to the
trajectory step (tool call) that caused it.

Sources (all in the world's `logs/`, outside every view): the fs watcher (`fs_events.jsonl`), the
world's resolver (`dns.jsonl`), the model bridge (`bridge.jsonl`), sshd's own log per server
(`sshd-<address>.log`, each line stamped by world_init). The process events come from strace on
the agent and on each server (runner.strace_parse).

How an event finds its step (`Event.step`, `Event.tool_call_id`, `data.step_basis`):
* "command": an agent process whose `bash -c` script holds a shell tool call's command;
* "time": a process the agent CLI started while exactly that tool call was running, or (for tools
  the CLI runs itself, such as write_file) the CLI's own syscalls inside a call that started no process;
* "process": a descendant of a linked process (a background job keeps its step after the call ends),
  or a file event / snapshot change joined to the syscall that made it;
* "connection": a server process started for an SSH connection whose client (identified by the
  client's port from getsockname after connect) is linked; server-to-server hops chain the same way;
* "response": a model request is linked to the agent step its response became.
"""
from __future__ import annotations

import json
import re
from bisect import bisect_right
from datetime import datetime
from pathlib import Path

SHELL_SCRIPT_FLAGS = ("-c", "-lc", "-ic")
FILE_OP_KINDS = ("open_write", "rename", "unlink", "truncate", "utime", "chmod", "mkdir", "link")
SSHD_ACCEPTED = re.compile(r"Accepted (\w+) for (\S+) from (\S+) port (\d+) ssh2(?:: (\S+) (\S+))?")
SSHD_CLOSED = re.compile(r"(?:Disconnected from user \S+|Connection closed by(?: authenticating user \S+)?|"
                         r"Received disconnect from) (\S+) port (\d+)")
WINDOW_SLACK_S = 0.05
FS_JOIN_BEFORE_S = 3.0      # an inotify event arrives after the syscall that caused it
FS_JOIN_AFTER_S = 0.1       # ... but strace may stamp that syscall a little later than inotify delivers
# Which recorded syscalls make each live file event (a rename makes a move, a create at its
# destination and a delete at its source).
FS_EVENT_CAUSES = {"fs_create": ("open_write", "mkdir", "rename"), "fs_modify": ("open_write", "truncate"),
                   "fs_close_write": ("open_write", "truncate"), "fs_attrib": ("chmod", "utime"),
                   "fs_move": ("rename",), "fs_delete": ("unlink", "rename")}
DNS_JOIN_S = 1.0


def jsonl_records(path: Path):
    """Records of a JSONL file written by a process that may have been killed mid-line."""
    if not path.exists():
        return
    for raw in path.read_text(errors="replace").splitlines():
        try:
            yield json.loads(raw)
        except json.JSONDecodeError:
            continue      # a writer killed mid-line


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso[:-1] + "+00:00" if iso.endswith(("Z", "z")) else iso).timestamp()
    except ValueError:
        return None


# --- the watchers' logs as events -------------------------------------------------------------
def fs_events(path: Path) -> list[dict]:
    out = []
    for r in jsonl_records(path):
        data = {k: v for k, v in r.items() if k not in ("ts", "host", "kind")}
        out.append({"ts": r["ts"], "source": "fs", "host": r["host"], "kind": r["kind"], "data": data})
    return out


def dns_events(path: Path) -> list[dict]:
    """Host and process are filled in by the join with the querying process's connect."""
    return [{"ts": r["ts"], "source": "network", "host": "unknown", "kind": "dns_query",
             "data": {"name": r.get("name"), "qtype": r.get("qtype"), "client_port": r.get("peer_port"),
                      "answer": "REFUSED"}} for r in jsonl_records(path)]


def bridge_events(path: Path, model_endpoint: tuple[str, int]) -> list[dict]:
    return [{"ts": r["ts_open"], "source": "network", "host": "agent", "kind": "connection",
             "data": {"address": model_endpoint[0], "port": model_endpoint[1], "local_port": r.get("peer_port"),
                      "target": "model endpoint", "bytes_sent": r.get("bytes_to_model"),
                      "bytes_received": r.get("bytes_from_model"), "closed_at": r.get("ts_close")}}
            for r in jsonl_records(path)]


def sshd_events(path: Path, server: str) -> list[dict]:
    """Authentications (user, key type and fingerprint, client port) and disconnects from sshd's log."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        ts_text, _, msg = line.partition(" ")
        try:
            ts = float(ts_text)
        except ValueError:
            continue          # an unstamped line (older records)
        m = SSHD_ACCEPTED.search(msg)
        if m:
            out.append({"ts": ts, "source": "server", "host": server, "kind": "ssh_auth",
                        "data": {"method": m.group(1), "user": m.group(2), "from_address": m.group(3),
                                 "from_port": int(m.group(4)), "key_type": m.group(5), "key_fingerprint": m.group(6)}})
            continue
        m = SSHD_CLOSED.search(msg)
        if m and m.group(2).isdigit():
            out.append({"ts": ts, "source": "server", "host": server, "kind": "ssh_disconnect",
                        "data": {"from_address": m.group(1), "from_port": int(m.group(2)), "raw": msg}})
    return out


# --- the trajectory's tool calls ---------------------------------------------------------------
def tool_windows(trajectory: dict | None) -> list[dict]:
    """Each tool call with its [start, end] time: the call's own timestamp and its result's, else
    the step's timestamp and the next step's."""
    if not trajectory:
        return []
    steps = trajectory.get("steps") or []
    out = []
    for i, step in enumerate(steps):
        step_ts = _epoch(step.get("timestamp"))
        next_ts = next((_epoch(s.get("timestamp")) for s in steps[i + 1:] if s.get("timestamp")), None)
        results = {r.get("source_call_id"): r for r in (step.get("observation") or {}).get("results") or []}
        for call in step.get("tool_calls") or []:
            start = _epoch((call.get("extra") or {}).get("timestamp")) or step_ts
            res = results.get(call.get("tool_call_id")) or {}
            end = _epoch((res.get("extra") or {}).get("timestamp")) or next_ts
            if start is None:
                continue
            args = call.get("arguments") or {}
            command = args.get("command") if isinstance(args.get("command"), str) else None
            out.append({"step": step["step_id"], "tool_call_id": call.get("tool_call_id"),
                        "function": call.get("function_name"), "start": start,
                        "end": end if end is not None else float("inf"), "command": command})
    return out


def agent_step_times(trajectory: dict | None) -> list[tuple[float, int]]:
    out = []
    for step in (trajectory or {}).get("steps") or []:
        ts = _epoch(step.get("timestamp"))
        if step.get("source") == "agent" and ts is not None:
            out.append((ts, step["step_id"]))
    return sorted(out)


# --- the join ----------------------------------------------------------------------------------
class _Linker:
    def __init__(self, windows: list[dict]):
        self.windows = windows
        self.link: dict[tuple[str, int], tuple[int, str, str]] = {}     # (host, pid) -> (step, call id, basis)
        self.accepted: dict[tuple[str, int], dict] = {}                  # (host, listener pid) -> accept data
        self.by_connection: dict[tuple[str, int, int], tuple[int, str, str]] = {}   # (dest, dport, sport)
        self.roots: set[str] = set()          # tool calls that started at least one process

    def window_at(self, ts: float) -> dict | None:
        hits = [w for w in self.windows if w["start"] - WINDOW_SLACK_S <= ts <= w["end"] + WINDOW_SLACK_S]
        return hits[0] if len(hits) == 1 else None

    def inherited(self, link: tuple[int, str, str]) -> tuple[int, str, str]:
        return (link[0], link[1], "process" if link[2] != "connection" else "connection")

    def visit(self, e: dict) -> None:
        host, pid, kind, data = e["host"], e.get("pid"), e["kind"], e.get("data", {})
        key = (host, pid)
        if e["source"] == "process" and kind == "spawn":
            child = (host, data["child"])
            if key in self.link:
                self.link[child] = self.inherited(self.link[key])
            elif not data.get("thread") and key in self.accepted:
                conn = self.accepted.pop(key)
                found = self.by_connection.get((conn.get("local_address"), conn.get("local_port"), conn.get("peer_port")))
                if found:
                    self.link[child] = (found[0], found[1], "connection")
            elif host == "agent" and not data.get("thread"):
                w = self.window_at(e["ts"])
                if w is not None:
                    self.link[child] = (w["step"], w["tool_call_id"], "time")
                    self.roots.add(w["tool_call_id"])
        elif e["source"] == "process" and kind == "exec" and host == "agent":
            argv = data.get("argv") or []
            flag = next((i for i, a in enumerate(argv) if a in SHELL_SCRIPT_FLAGS), None)
            script = argv[flag + 1] if flag is not None and flag + 1 < len(argv) else None
            if script and (key not in self.link or self.link[key][2] == "time"):
                # The latest tool call (started by now) whose command this shell runs.
                matches = [w for w in self.windows if w["command"] and w["command"] in script
                           and w["start"] - WINDOW_SLACK_S <= e["ts"]]
                if matches:
                    w = max(matches, key=lambda w: w["start"])
                    self.link[key] = (w["step"], w["tool_call_id"], "command")
                    self.roots.add(w["tool_call_id"])
        elif e["source"] == "process" and kind == "accept" and data.get("peer_port"):
            self.accepted[key] = data
            found = self.by_connection.get((data.get("local_address"), data.get("local_port"), data.get("peer_port")))
            if found:
                self._set(e, (found[0], found[1], "connection"))
                return
        if e["source"] == "process" and kind == "connect" and data.get("local_port") and key in self.link:
            self.by_connection[(data.get("address"), data.get("port"), data["local_port"])] = self.link[key]
        if e["source"] == "server" and kind == "ssh_auth":
            found = self.by_connection.get((host, 22, data.get("from_port")))
            if found:
                self._set(e, (found[0], found[1], "connection"))
            return
        if pid is not None and key in self.link:
            self._set(e, self.link[key] if e["source"] != "server" else (*self.link[key][:2], "process"))

    @staticmethod
    def _set(e: dict, link: tuple[int, str, str]) -> None:
        e["step"], e["tool_call_id"] = link[0], link[1]
        e.setdefault("data", {})["step_basis"] = link[2]


def _paths(e: dict) -> list[str]:
    d = e.get("data", {})
    return [p for p in (d.get("path"), d.get("src"), d.get("dst"), d.get("dest")) if p]


def _fs_cause(e: dict, ops: dict[tuple[str, str], list[dict]]) -> dict | None:
    """The syscall behind one live file event: a syscall of a kind that makes this event, on its path,
    closest in time (the last one before it, else the first just after: strace stamps a call when it
    handles the stop, which under load can be a little after inotify has delivered it). A rename to
    b.txt must not claim an earlier move of a.txt just because `rm b.txt` follows it closely."""
    d = e["data"]
    fitting = [o for o in ops.get((e["host"], d.get("path")), [])
               if e["ts"] - FS_JOIN_BEFORE_S <= o["ts"] <= e["ts"] + FS_JOIN_AFTER_S]
    kinds = FS_EVENT_CAUSES.get(e["kind"])
    if kinds is not None:
        def makes(o: dict) -> bool:
            if o["kind"] == "rename":
                if e["kind"] == "fs_move":
                    return o["data"].get("src") == d.get("path") and d.get("dest") in (None, o["data"].get("dst"))
                return o["data"].get("dst" if e["kind"] == "fs_create" else "src") == d.get("path")
            return o["kind"] in kinds
        fitting = [o for o in fitting if makes(o)] or fitting
    before = [o for o in fitting if o["ts"] <= e["ts"]]
    return before[-1] if before else (fitting[0] if fitting else None)


def link_events(events: list[dict], trajectory: dict | None, network: dict | None) -> None:
    """Set step / tool_call_id (+ data.step_basis) on every event a step caused, the process of
    file events, the host of DNS queries, and the network policy of every connect."""
    events.sort(key=lambda e: e["ts"])
    windows = tool_windows(trajectory)
    linker = _Linker(windows)
    for e in events:
        if e["source"] in ("process", "server"):
            linker.visit(e)

    # The CLI's own syscalls inside a tool call that started no process (write_file, read_file, ...).
    quiet = [w for w in windows if w["tool_call_id"] not in linker.roots]
    for e in events:
        if e["source"] == "process" and e["host"] == "agent" and "step" not in e and e["kind"] in FILE_OP_KINDS:
            w = next((w for w in quiet if w["start"] - WINDOW_SLACK_S <= e["ts"] <= w["end"] + WINDOW_SLACK_S), None)
            if w is not None:
                _Linker._set(e, (w["step"], w["tool_call_id"], "time"))

    # File events and snapshot changes: the syscall that touched the same path on the same host.
    ops: dict[tuple[str, str], list[dict]] = {}
    for e in events:
        if e["source"] == "process" and e["kind"] in FILE_OP_KINDS and e["data"].get("result") == "ok":
            for p in _paths(e):
                ops.setdefault((e["host"], p), []).append(e)
    exe: dict[tuple[str, int], str] = {}
    for e in events:
        if e["source"] == "process" and e["kind"] == "exec" and e["data"].get("result") == "ok":
            exe[(e["host"], e["pid"])] = e["data"].get("exe")
    seen_live = {(e["host"], p) for e in events if e["source"] == "fs" for p in _paths(e)}
    fs_on = any(e["source"] == "fs" for e in events) or (network or {}).get("fs_watch", False)
    for e in events:
        if e["source"] not in ("fs", "snapshot"):
            continue
        if e["source"] == "fs":
            cause = _fs_cause(e, ops)
        else:   # a snapshot change: the last syscall on its path, however long before
            cause = (ops.get((e["host"], e["data"].get("path"))) or [None])[-1]
        if cause is not None:
            e["pid"] = cause["pid"]
            e["data"]["syscall_event_ts"] = cause["ts"]
            e["data"]["process"] = exe.get((cause["host"], cause["pid"]))
            if "step" in cause:
                _Linker._set(e, (cause["step"], cause["tool_call_id"], "process"))
        elif e["source"] == "fs" and (w := linker.window_at(e["ts"])) is not None and e["host"] == "agent" \
                and w["tool_call_id"] not in linker.roots:
            _Linker._set(e, (w["step"], w["tool_call_id"], "time"))
        if e["source"] == "snapshot" and fs_on:
            e["data"]["seen_live"] = (e["host"], e["data"].get("path")) in seen_live

    # DNS queries: the process that sent them connected its UDP socket to the resolver just before.
    resolver = tuple((network or {}).get("dns") or ("127.0.0.53", 53))
    dns_connects = [e for e in events if e["source"] == "process" and e["kind"] == "connect"
                    and (e["data"].get("address"), e["data"].get("port")) == resolver]
    for e in events:
        if e["kind"] == "dns_query":
            near = [c for c in dns_connects if e["ts"] - DNS_JOIN_S <= c["ts"] <= e["ts"] + 0.01]
            if near:
                c = near[-1]
                e["host"], e["pid"] = c["host"], c["pid"]
                if "step" in c:
                    _Linker._set(e, (c["step"], c["tool_call_id"], "process"))

    # Network policy: only the model endpoint, the servers' sshd and the resolver are part of the world.
    if network and network.get("model_endpoint"):
        allowed = {tuple(network["model_endpoint"]), resolver} | {(s, 22) for s in network.get("servers", [])}
        for e in events:
            d = e.get("data", {})
            if e["source"] == "process" and e["kind"] == "connect" and d.get("family") in ("AF_INET", "AF_INET6"):
                d["allowed"] = (d.get("address"), d.get("port")) in allowed
                result = d.get("completion", d.get("result"))    # a non-blocking connect's completion
                d["outcome"] = ("connected" if result == "ok" else
                                "in progress" if result == "EINPROGRESS" else f"failed: {result}")

    # Model requests: the agent step each response became (the first agent step after the request).
    step_times = agent_step_times(trajectory)
    starts = [t for t, _ in step_times]
    for e in events:
        if e["source"] == "model" and e["data"].get("main", True):
            i = bisect_right(starts, e["ts"])
            if i < len(step_times):
                _Linker._set(e, (step_times[i][1], None, "response"))


def _what(e) -> str:
    d = e.data
    if e.kind in ("exec",):
        return d.get("cmdline", "")
    if e.kind in ("connect", "bind") or e.kind == "connection":
        return f"{d.get('address')}:{d.get('port')}" + (f" from port {d['local_port']}" if d.get("local_port") else "")
    if e.kind == "accept":
        return f"from {d.get('peer_address')}:{d.get('peer_port')}"
    if e.kind == "ssh_auth":
        return f"{d.get('user')} from {d.get('from_address')}:{d.get('from_port')} key {d.get('key_type')} {d.get('key_fingerprint')}"
    if e.kind == "ssh_session":
        return f"{d.get('session_kind')}: {d.get('cmd')}" + (" (agent forwarded)" if d.get("agent_forwarding") else "")
    if e.kind == "sftp":
        return d.get("raw", "")
    if e.kind == "dns_query":
        return f"{d.get('name')} -> {d.get('answer')}"
    if e.kind == "kill":
        return f"signal {d.get('signal')} to {d.get('target')}"
    if e.kind in ("privileged_op", "setuid"):
        return f"{d.get('syscall')}({', '.join(map(str, d.get('args') or []))})"
    if e.kind in ("socket", "ptrace"):
        return " ".join(str(d.get(k)) for k in ("family", "type", "request", "target") if d.get(k) is not None)
    if e.kind == "utime":
        return f"{d.get('path')} mtime={d.get('mtime')}"
    if e.kind == "chmod":
        return f"{d.get('path')} mode={d.get('mode')}"
    if e.kind == "fs_overflow":
        return f"inotify dropped events under {', '.join(d.get('covers') or [])} (the snapshots cover them)"
    if e.source == "snapshot":
        return f"{d.get('path')} ({d.get('size')} B" + (f", weight blocks {d['canary_blocks']}" if d.get("canary_blocks") else "") + ")"
    return " -> ".join(str(p) for p in _paths({"data": d}))


def _noise(e) -> bool:
    """Plumbing every command does (name-service probes, /dev and /proc writes, process bookkeeping)."""
    d = e.data
    return e.kind in ("spawn", "exit") or (e.kind == "connect" and d.get("family") == "AF_UNIX") or \
        (e.kind == "open_write" and str(d.get("path", "")).startswith(("/dev/", "/proc/")))


def describe(events: list, trajectory: dict | None) -> str:
    """A readable timeline (Event objects) grouped by tool call: what each did, on which host,
    e.g. `step 6: scp ... -> connect 10.0.12.46:22 -> ssh_auth -> sftp open ... -> fs_create /data/x`."""
    calls = {w["tool_call_id"]: w for w in tool_windows(trajectory)}
    # One block per call, in the order the calls started: a late inotify event or a background job's
    # write stays in its own call's block instead of splitting the block of the call running then.
    blocks: dict[str, list] = {}
    for e in events:
        if e.step is not None and e.tool_call_id is not None and not _noise(e):
            blocks.setdefault(e.tool_call_id, []).append(e)
    lines = []
    for call_id, evs in sorted(blocks.items(), key=lambda kv: ((calls.get(kv[0]) or {}).get("start", kv[1][0].ts),
                                                               kv[1][0].ts)):
        w = calls.get(call_id) or {}
        lines.append(f"step {evs[0].step}: {w.get('function', '')} {w.get('command') or ''}".rstrip())
        last = None
        for e in evs:
            what = _what(e).replace("\n", "\\n")
            if (e.host, e.kind, what) == last:      # a burst of writes to one file
                continue
            last = (e.host, e.kind, what)
            extra = f" [{e.data['outcome']}]" if "outcome" in e.data else ""
            lines.append(f"  {e.ts:.3f} {e.host:<11} {e.source:<8} {e.kind:<14} {what[:200]}{extra}")
    return "\n".join(lines) + "\n"
