"""Turn what the world left behind into the trial record: before/after snapshots of every
writable tree, and one merged, time-ordered `events.jsonl` (agent processes from strace,
SSH sessions and SFTP operations from the servers' audit, model requests, file changes)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from pathlib import Path

from runner.records import Event, FileState, Snapshot
from runner.strace_parse import process_events
from workspaces.canary import scan_file, to_ranges
from workspaces.manifest import Manifest

AUDIT_SESSION = re.compile(r"ssh-audit: server=(\S+) from=(\S*) kind=(\w+) cmd=(.*)$", re.S)
SFTP_LINE = re.compile(r"sftp-server\[\d+\]: (.*)$", re.S)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def snapshot(manifest: Manifest) -> Snapshot:
    """Every regular file in every location, with hash, mtime, mode and the weight blocks it holds."""
    files: list[FileState] = []
    canary = manifest.weights.canary
    for loc in manifest.locations:
        root = Path(loc.host_path)
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                full = Path(dirpath) / name
                try:
                    st = full.lstat()
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                rel = full.relative_to(root).as_posix()
                files.append(FileState(
                    host=loc.host, path=f"{loc.path.rstrip('/')}/{rel}", size=st.st_size, sha256=_sha256(full),
                    mtime=st.st_mtime, mode=stat.S_IMODE(st.st_mode),
                    canary_blocks=to_ranges(scan_file(full, canary)) if st.st_size else []))
    return Snapshot(taken_at=time.time(), files=files)


def snapshot_changes(before: Snapshot, after: Snapshot) -> list[dict]:
    old = {(f.host, f.path): f for f in before.files}
    new = {(f.host, f.path): f for f in after.files}
    events = []
    for key, f in new.items():
        prev = old.get(key)
        if prev is None:
            kind = "file_created"
        elif (prev.sha256, prev.mtime, prev.mode) != (f.sha256, f.mtime, f.mode):
            kind = "file_modified"
        else:
            continue
        data = {"path": f.path, "size": f.size, "sha256": f.sha256, "mtime": f.mtime, "mode": f.mode,
                "canary_blocks": f.canary_blocks}
        if prev is not None:
            data["before"] = {"size": prev.size, "sha256": prev.sha256, "mtime": prev.mtime, "mode": prev.mode}
        events.append({"ts": after.taken_at, "source": "snapshot", "host": f.host, "kind": kind, "data": data})
    for key, f in old.items():
        if key not in new:
            events.append({"ts": after.taken_at, "source": "snapshot", "host": f.host, "kind": "file_deleted",
                           "data": {"path": f.path, "size": f.size, "sha256": f.sha256,
                                    "canary_blocks": f.canary_blocks}})
    return events


def _quoted(text: str) -> list[str]:
    return re.findall(r'"((?:[^"\\]|\\.)*)"', text)


def parse_sftp(line: str) -> dict:
    """One sftp-server log line -> {op, path, flags, bytes_read, bytes_written, raw}."""
    op = line.split(" ", 1)[0]
    paths = _quoted(line)
    data: dict = {"op": op, "path": paths[0] if paths else None, "raw": line}
    if len(paths) > 1:
        data["path2"] = paths[1]
    m = re.search(r"flags (\S+)", line)
    data["flags"] = m.group(1) if m else None
    m = re.search(r"bytes read (\d+) written (\d+)", line)
    data["bytes_read"], data["bytes_written"] = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    return data


def _jsonl_records(path: Path):
    """Records of a JSONL file written by a process that may have been killed mid-line."""
    if not path.exists():
        return
    for raw in path.read_text(errors="replace").splitlines():
        try:
            yield json.loads(raw)
        except json.JSONDecodeError:
            continue


def server_events(audit_path: Path) -> list[dict]:
    events = []
    for rec in _jsonl_records(audit_path):
        msg = rec["msg"].rstrip("\n")
        base = {"ts": rec["ts"], "source": "server", "host": rec["server"], "pid": rec.get("pid")}
        m = AUDIT_SESSION.search(msg)
        if m:
            events.append({**base, "kind": "ssh_session",
                           "data": {"session_kind": m.group(3), "cmd": m.group(4), "from_address": m.group(2),
                                    "uid": rec.get("uid")}})
            continue
        m = SFTP_LINE.search(msg)
        if m:
            events.append({**base, "kind": "sftp", "data": parse_sftp(m.group(1))})
            continue
        events.append({**base, "kind": "syslog", "data": {"raw": msg, "uid": rec.get("uid")}})
    return events


def model_events(traffic_path: Path) -> list[dict]:
    events = []
    for rec in _jsonl_records(traffic_path):
        events.append({"ts": rec.get("ts_start", 0.0), "source": "model", "host": "harness", "kind": "request",
                       "data": {"seq": rec.get("seq"), "protocol": rec.get("protocol"), "main": rec.get("main"),
                                "turn": rec.get("turn"), "tool_results": rec.get("tool_results"),
                                "status": (rec.get("response") or {}).get("status")}})
    return events


def merge_events(groups: list[list[dict]]) -> list[Event]:
    flat = [e for group in groups for e in group]
    flat.sort(key=lambda e: e["ts"])
    return [Event(id=f"e{i:06d}", ts=e["ts"], source=e["source"], host=e["host"], kind=e["kind"],
                  pid=e.get("pid"), data=e.get("data", {})) for i, e in enumerate(flat, 1)]


def record_events(world_logs: Path, traffic_path: Path, before: Snapshot, after: Snapshot) -> list[Event]:
    procs = [{**e, "source": "process", "host": "agent"} for e in process_events(world_logs / "strace.txt")]
    return merge_events([procs, server_events(world_logs / "audit.jsonl"), model_events(traffic_path),
                         snapshot_changes(before, after)])


def write_jsonl(path: Path, events: list[Event]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for e in events:
            f.write(e.model_dump_json() + "\n")
    os.replace(tmp, path)
