"""The live filesystem watcher (runner/fs_watch.py, the real process on a real directory) and the
snapshot backstop: an inotify queue overflow loses live events but never a change in the record."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runner.recorder import record_events, snapshot
from workspaces.manifest import Location, Manifest

MAX_QUEUED = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


def start_watcher(tmp_path: Path, root: Path) -> tuple[subprocess.Popen, Path]:
    config, out = tmp_path / "watch.json", tmp_path / "logs" / "fs_events.jsonl"
    out.parent.mkdir(exist_ok=True)
    config.write_text(json.dumps([{"host": "agent", "path": "/workspace", "root": str(root)}]))
    proc = subprocess.Popen([sys.executable, "-m", "runner.fs_watch", str(config), str(out)],
                            stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout.readline().strip() == b"ready"
    return proc, out


def stop_watcher(proc: subprocess.Popen) -> None:
    proc.terminate()
    assert proc.wait(timeout=60) == 0


def read(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_watcher_reports_each_kind_with_the_host_path(tmp_path: Path):
    root = tmp_path / "ws"
    root.mkdir()
    proc, out = start_watcher(tmp_path, root)
    try:
        (root / "a.txt").write_text("one\n")
        os.rename(root / "a.txt", root / "b.txt")
        os.chmod(root / "b.txt", 0o600)
        os.utime(root / "b.txt", (1577934245, 1577934245))
        (root / "d").mkdir()
        (root / "d" / "inner").write_text("x")
        os.unlink(root / "b.txt")
        time.sleep(0.3)
    finally:
        stop_watcher(proc)
    seen = [(r["kind"], r["path"], r.get("dest")) for r in read(out)]
    for want in [("fs_create", "/workspace/a.txt", None), ("fs_close_write", "/workspace/a.txt", None),
                 ("fs_move", "/workspace/a.txt", "/workspace/b.txt"), ("fs_attrib", "/workspace/b.txt", None),
                 ("fs_create", "/workspace/d", None), ("fs_create", "/workspace/d/inner", None),
                 ("fs_delete", "/workspace/b.txt", None)]:
        assert want in seen, want
    assert all(r["host"] == "agent" for r in read(out))
    # chmod and utime are attribute changes, never content modifications (inotify merges the two
    # identical unread IN_ATTRIB events into one).
    assert ("fs_modify", "/workspace/b.txt", None) not in seen


def test_overflow_loses_live_events_but_no_change(tmp_path: Path):
    """Freeze the watcher, overflow the kernel's inotify queue, then check the record: every file
    is there (from the snapshots), and the ones the watcher missed are flagged seen_live=false."""
    root = tmp_path / "ws"
    root.mkdir()
    (root / "seeded.txt").write_text("before\n")
    manifest = Manifest.model_construct(weights=None, locations=[
        Location(host="agent", path="/workspace", host_path=str(root))])
    before = snapshot(manifest)
    proc, out = start_watcher(tmp_path, root)
    n_files = MAX_QUEUED + 2000
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        for i in range(n_files):
            (root / f"f{i:05d}").write_bytes(b"x")
        (root / "seeded.txt").write_text("after\n")
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(1.0)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        stop_watcher(proc)
    after = snapshot(manifest)
    live = {r["path"] for r in read(out) if r["kind"] == "fs_create"}
    assert len(live) < n_files, "the inotify queue did not overflow; the test proves nothing"

    events = record_events(out.parent, tmp_path / "no-traffic.jsonl", before, after)
    created = {e.data["path"]: e for e in events if e.source == "snapshot" and e.kind == "file_created"}
    assert len(created) == n_files                                          # nothing lost
    missed = [p for p, e in created.items() if not e.data["seen_live"]]
    assert missed and all(p not in live for p in missed)                    # and the gap is visible
    assert all(created[p].data["seen_live"] for p in live if p in created)
    modified = [e for e in events if e.source == "snapshot" and e.kind == "file_modified"]
    assert [e.data["path"] for e in modified] == ["/workspace/seeded.txt"]


def test_changes_right_before_stop_are_all_recorded(tmp_path: Path):
    """Stopping drains: a burst of changes made just before SIGTERM, including a move out of the
    watched tree (watchdog holds the unpaired IN_MOVED_FROM while it waits for its other half),
    is all in the record once the watcher has exited."""
    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    proc, out = start_watcher(tmp_path, root)
    try:
        for i in range(200):
            (root / f"burst{i:03d}").write_bytes(b"x")
        (root / "leaving.txt").write_text("bye\n")
        os.rename(root / "leaving.txt", outside / "leaving.txt")
    finally:
        stop_watcher(proc)
    seen = {(r["kind"], r["path"]) for r in read(out)}
    assert all(("fs_create", f"/workspace/burst{i:03d}") in seen for i in range(200))
    # a move out of the tree is reported as its path being deleted
    assert ("fs_close_write", "/workspace/leaving.txt") in seen and ("fs_delete", "/workspace/leaving.txt") in seen
