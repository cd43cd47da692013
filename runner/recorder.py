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

from pydantic import TypeAdapter

from runner import timeline
from runner.records import Event, FileState, Snapshot
from runner.strace_parse import process_events
from workspaces.canary import scan_file, to_ranges
from workspaces.manifest import Manifest

AUDIT_SESSION = re.compile(r"ssh-audit: server=(\S+) from=(\S*)(?: port=(\d*))?(?: agent_forwarding=(\w+))? "
                           r"kind=(\w+) cmd=(.*)$", re.S)
SFTP_LINE = re.compile(r"sftp-server\[\d+\]: (.*)$", re.S)


def _sha256(path: Path | str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def built_blocks(manifest: Manifest) -> dict[str, list[tuple[int, int]]]:
    """The weight blocks of the files the world was built with, by sha256, known by construction:
    the weight file holds every block of its canary; a seeded file was written without the canary
    (which is drawn per trial), so it holds none."""
    blocks: dict[str, list[tuple[int, int]]] = {f.sha256: [] for f in manifest.files}
    if manifest.weights is not None:
        blocks[manifest.weights.sha256] = [(0, manifest.weights.n_blocks - 1)]
    return blocks


def snapshot(manifest: Manifest, known: Snapshot | None = None, just_built: bool = False) -> Snapshot:
    """Every regular file in every location, with hash, mtime, mode and the weight blocks it holds.
    The blocks of a file whose sha256 is in `known` (the before-snapshot) are taken from there: the
    scan is a function of the content, and most files are unchanged. `just_built`: the world as
    build_world left it, so the seeded and weight files keep the sha256 it recorded as it wrote
    them (not read back), their blocks are built_blocks', and no other file holds any (only the
    weight file was written with the per-trial canary): nothing is scanned."""
    files: list[FileState] = []
    canary = manifest.weights.canary if manifest.weights else None
    known_blocks = {**(built_blocks(manifest) if just_built else {}),
                    **({f.sha256: f.canary_blocks for f in known.files} if known else {})}
    built = [*manifest.files, *([manifest.weights] if manifest.weights else [])] if just_built else []
    built_hashes = {(f.server, f.path): f.sha256 for f in built}
    for loc in manifest.locations:
        root = loc.host_path
        for dirpath, _dirs, names in os.walk(root):
            # The location's path of this directory (string joins, not a Path per file: a world has hundreds).
            rel = os.path.relpath(dirpath, root)
            prefix = f"{loc.path.rstrip('/')}/" if rel == "." else f"{loc.path.rstrip('/')}/{rel}/"
            for name in names:
                full = os.path.join(dirpath, name)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                path = prefix + name
                digest = built_hashes.get((loc.host, path)) or _sha256(full)
                if digest in known_blocks:
                    blocks = known_blocks[digest]
                else:
                    blocks = to_ranges(scan_file(full, canary)) if not just_built and canary and st.st_size else []
                files.append(FileState(
                    host=loc.host, path=path, size=st.st_size, sha256=digest,
                    mtime=st.st_mtime, mode=stat.S_IMODE(st.st_mode), canary_blocks=blocks))
    return Snapshot(taken_at=time.time(), files=files)


ARTIFACT_CAP_BYTES = 1 << 20


def host_path(manifest: Manifest, host: str, path: str) -> Path | None:
    """Where a path of a world host lives on the harness machine (the longest matching location)."""
    best = None
    for loc in manifest.locations:
        root = loc.path.rstrip("/") + "/"
        if loc.host == host and (path + "/").startswith(root) and (best is None or len(root) > len(best[0])):
            best = (root, loc.host_path)
    return Path(best[1]) / path[len(best[0]):] if best else None


def collect_artifacts(manifest: Manifest, out_dir: Path) -> None:
    """Keep the final content of the files the analysis reads (e.g. the evaluation report and the
    shutdown config) before the world is torn down: `out_dir/index.json` says, per file, whether it
    existed, its mode and hash; `out_dir/<host>/<path>` holds the content (first 1 MiB)."""
    index = []
    for host, path in manifest.artifacts:
        src = host_path(manifest, host, path)
        entry: dict = {"host": host, "path": path, "exists": False}
        try:
            st = src.lstat() if src else None
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            dst = out_dir / host / path.lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            with src.open("rb") as fh:
                content = fh.read(ARTIFACT_CAP_BYTES)
            dst.write_bytes(content)
            entry.update(exists=True, size=st.st_size, mode=stat.S_IMODE(st.st_mode), sha256=_sha256(src),
                         truncated=st.st_size > ARTIFACT_CAP_BYTES, stored=str(dst.relative_to(out_dir)))
        elif st is not None:
            entry.update(exists=True, regular=False, mode=stat.S_IMODE(st.st_mode))
        index.append(entry)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "index.json").write_text(json.dumps(index, indent=2))


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


def server_events(audit_path: Path) -> list[dict]:
    events = []
    for rec in timeline.jsonl_records(audit_path):
        msg = rec["msg"].rstrip("\n")
        base = {"ts": rec["ts"], "source": "server", "host": rec["server"], "pid": rec.get("pid")}
        m = AUDIT_SESSION.search(msg)
        if m:
            data = {"session_kind": m.group(5), "cmd": m.group(6), "from_address": m.group(2), "uid": rec.get("uid")}
            if m.group(3):
                data["from_port"] = int(m.group(3))
            if m.group(4):
                data["agent_forwarding"] = m.group(4) == "yes"
            events.append({**base, "kind": "ssh_session", "data": data})
            continue
        m = SFTP_LINE.search(msg)
        if m:
            events.append({**base, "kind": "sftp", "data": parse_sftp(m.group(1))})
            continue
        events.append({**base, "kind": "syslog", "data": {"raw": msg, "uid": rec.get("uid")}})
    return events


def model_events(traffic_path: Path) -> list[dict]:
    events = []
    for rec in timeline.jsonl_records(traffic_path):
        events.append({"ts": rec.get("ts_start", 0.0), "source": "model", "host": "harness", "kind": "request",
                       "data": {"seq": rec.get("seq"), "protocol": rec.get("protocol"), "main": rec.get("main"),
                                "turn": rec.get("turn"), "tool_results": rec.get("tool_results"),
                                "status": (rec.get("response") or {}).get("status")}})
    return events


# A trial has about a thousand events: one validation (and one serializer) call for all of them
# spares the per-call overhead of Event(...) and model_dump_json(), for the same objects and bytes.
EVENT_LIST = TypeAdapter(list[Event])


def merge_events(groups: list[list[dict]]) -> list[Event]:
    flat = [e for group in groups for e in group]
    flat.sort(key=lambda e: e["ts"])
    return EVENT_LIST.validate_python([
        {"id": f"e{i:06d}", "ts": e["ts"], "source": e["source"], "host": e["host"], "kind": e["kind"],
         "pid": e.get("pid"), "step": e.get("step"), "tool_call_id": e.get("tool_call_id"), "data": e.get("data", {})}
        for i, e in enumerate(flat, 1)])


def record_events(world_logs: Path, traffic_path: Path, before: Snapshot, after: Snapshot,
                  trajectory: dict | None = None) -> list[Event]:
    """Every source on one timeline, each event joined to the trajectory step that caused it."""
    groups = [[{**e, "source": "process", "host": "agent"} for e in process_events(world_logs / "strace.txt")]]
    for trace in sorted(world_logs.glob("strace-*.txt")):          # one per server: strace-<address>.txt
        server = trace.stem.removeprefix("strace-")
        groups.append([{**e, "source": "process", "host": server} for e in process_events(trace)])
    for log in sorted(world_logs.glob("sshd-*.log")):
        groups.append(timeline.sshd_events(log, log.stem.removeprefix("sshd-")))
    status = json.loads((world_logs / "world.json").read_text()) if (world_logs / "world.json").exists() else {}
    network = status.get("network")
    groups += [server_events(world_logs / "audit.jsonl"), model_events(traffic_path), snapshot_changes(before, after),
               timeline.fs_events(world_logs / "fs_events.jsonl"), timeline.dns_events(world_logs / "dns.jsonl")]
    if network:
        groups.append(timeline.bridge_events(world_logs / "bridge.jsonl", tuple(network["model_endpoint"])))
    flat = [e for group in groups for e in group]
    timeline.link_events(flat, trajectory, {**(network or {}), "fs_watch": (status.get("watchers") or {}).get("fs")})
    return merge_events([flat])


def write_jsonl(path: Path, events: list[Event]) -> None:
    tmp = path.with_suffix(".tmp")
    to_json = Event.__pydantic_serializer__.to_json      # what model_dump_json() encodes with
    with tmp.open("wb") as f:
        f.write(b"".join(to_json(e) + b"\n" for e in events))
    os.replace(tmp, path)
