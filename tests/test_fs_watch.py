"""The live filesystem watcher (runner/fs_watch.py, real inotify on a real directory) and the
snapshot backstop: an inotify queue overflow loses live events but never a change in the record."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from runner.fs_watch import FsWatcher
from runner.recorder import record_events, snapshot
from runner.timeline import describe
from workspaces.manifest import Location, Manifest

MAX_QUEUED = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


def roots(root: Path) -> list[dict]:
    return [{"host": "agent", "path": "/workspace", "root": str(root)}]


def start_watcher(tmp_path: Path, root: Path) -> tuple[FsWatcher, Path]:
    out = tmp_path / "logs" / "fs_events.jsonl"
    out.parent.mkdir(exist_ok=True)
    watcher = FsWatcher(roots(root), str(out)).start()
    watcher.wait_ready(60)
    return watcher, out


def read(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def seen(out: Path) -> set[tuple]:
    return {(r["kind"], r["path"], r.get("dest")) for r in read(out)}


def wait_for(out: Path, want: tuple) -> None:
    """Until the watcher has written `want` (it reads asynchronously); the asserts say if never."""
    deadline = time.time() + 60
    while want not in seen(out) and time.time() < deadline:
        time.sleep(0.05)


def _watch_in_child(root: str, out: str, conn) -> None:
    watcher = FsWatcher(roots(Path(root)), out).start()
    watcher.wait_ready(60)
    conn.send("ready")
    conn.recv()            # "stop"
    watcher.stop()


class ChildWatcher:
    """The watcher in a forked process of its own, which a test can freeze (SIGSTOP) to let the
    kernel queue events unread, as a loaded machine would."""

    def __init__(self, tmp_path: Path, root: Path):
        self.out = tmp_path / "logs" / "fs_events.jsonl"
        self.out.parent.mkdir(exist_ok=True)
        ctx = multiprocessing.get_context("fork")
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_watch_in_child, args=(str(root), str(self.out), child_conn))
        self.proc.start()
        assert self.conn.poll(60) and self.conn.recv() == "ready"

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()
        self.conn.send("stop")
        self.proc.join(60)
        assert self.proc.exitcode == 0


def test_watcher_reports_each_kind_with_the_host_path(tmp_path: Path):
    root = tmp_path / "ws"
    root.mkdir()
    watcher, out = start_watcher(tmp_path, root)
    try:
        (root / "a.txt").write_text("one\n")
        os.rename(root / "a.txt", root / "b.txt")
        os.chmod(root / "b.txt", 0o600)
        os.utime(root / "b.txt", (1577934245, 1577934245))
        (root / "d").mkdir()
        wait_for(out, ("fs_create", "/workspace/d", None))   # its watch is set
        (root / "d" / "inner").write_text("x")
        os.chmod(root / "d", 0o700)
        with open(root / "d" / "inner", "a") as f:
            f.write("more")
        os.unlink(root / "b.txt")
    finally:
        watcher.stop()
    got = seen(out)
    for want in [("fs_create", "/workspace/a.txt", None), ("fs_close_write", "/workspace/a.txt", None),
                 ("fs_move", "/workspace/a.txt", "/workspace/b.txt"), ("fs_attrib", "/workspace/b.txt", None),
                 ("fs_create", "/workspace/d", None), ("fs_create", "/workspace/d/inner", None),
                 ("fs_modify", "/workspace/d/inner", None), ("fs_attrib", "/workspace/d", None),
                 ("fs_delete", "/workspace/b.txt", None)]:
        assert want in got, want
    records = read(out)
    assert all(r["host"] == "agent" for r in records)
    # chmod and utime are attribute changes, never content modifications (inotify merges the two
    # identical unread IN_ATTRIB events into one).
    assert ("fs_modify", "/workspace/b.txt", None) not in got
    # a paired rename is one move, not a delete and a create
    assert ("fs_delete", "/workspace/a.txt", None) not in got and ("fs_create", "/workspace/b.txt", None) not in got
    # the state when read (a deletion has none); is_dir as inotify says
    move = next(r for r in records if r["kind"] == "fs_move")
    assert set(move) == {"ts", "host", "kind", "path", "is_dir", "dest", "observed"} and move["is_dir"] is False
    assert next(r for r in records if r["kind"] == "fs_create" and r["path"] == "/workspace/d")["is_dir"] is True
    assert "observed" not in next(r for r in records if r["kind"] == "fs_delete")


def test_moves_pair_by_cookie_in_out_and_of_whole_directories(tmp_path: Path):
    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "incoming" / "sub").mkdir(parents=True)
    (outside / "incoming" / "sub" / "deep.txt").write_text("in\n")
    (outside / "single.txt").write_text("in\n")
    watcher, out = start_watcher(tmp_path, root)
    try:
        (root / "tree" / "sub").mkdir(parents=True)
        (root / "tree" / "sub" / "f.txt").write_text("x")
        os.rename(root / "tree", root / "renamed")                    # a directory moved inside the tree
        wait_for(out, ("fs_move", "/workspace/tree", "/workspace/renamed"))
        (root / "renamed" / "sub" / "after.txt").write_text("y")     # its watches follow it
        os.rename(outside / "single.txt", root / "single.txt")       # moved in: created
        os.rename(outside / "incoming", root / "incoming")           # moved in with what it holds
        wait_for(out, ("fs_create", "/workspace/incoming/sub/deep.txt", None))
        (root / "incoming" / "sub" / "later.txt").write_text("z")    # and watched from then on
        (root / "gone").mkdir()
        wait_for(out, ("fs_create", "/workspace/gone", None))
        os.rename(root / "gone", outside / "gone")                   # moved out: deleted once its other
        wait_for(out, ("fs_delete", "/workspace/gone", None))        # half has not come (not only at stop)
        assert ("fs_delete", "/workspace/gone", None) in seen(out)
        (outside / "gone" / "untracked.txt").write_text("no longer ours")
    finally:
        watcher.stop()
    got = seen(out)
    for want in [("fs_move", "/workspace/tree", "/workspace/renamed"),
                 ("fs_move", "/workspace/tree/sub", "/workspace/renamed/sub"),
                 ("fs_move", "/workspace/tree/sub/f.txt", "/workspace/renamed/sub/f.txt"),
                 ("fs_create", "/workspace/renamed/sub/after.txt", None),
                 ("fs_create", "/workspace/single.txt", None),
                 ("fs_create", "/workspace/incoming", None), ("fs_create", "/workspace/incoming/sub", None),
                 ("fs_create", "/workspace/incoming/sub/deep.txt", None),
                 ("fs_create", "/workspace/incoming/sub/later.txt", None),
                 ("fs_create", "/workspace/gone", None)]:
        assert want in got, want
    assert not any(p.startswith("/workspace/tree/sub/after") for _, p, _ in got)
    assert not any("untracked" in p for _, p, _ in got)          # the moved-out directory is unwatched


def test_new_directory_contents_made_before_its_watch_are_reported(tmp_path: Path):
    """The watcher is frozen while a directory tree is made and filled: inotify reports only the
    top directory's creation; the rest is found when its watch is set, and watched from then on."""
    root = tmp_path / "ws"
    root.mkdir()
    child = ChildWatcher(tmp_path, root)
    try:
        child.freeze()
        (root / "d" / "e").mkdir(parents=True)
        (root / "d" / "f1.txt").write_text("1")
        (root / "d" / "e" / "f2.txt").write_text("2")
        child.thaw()
        wait_for(child.out, ("fs_create", "/workspace/d/e/f2.txt", None))
        (root / "d" / "e" / "f3.txt").write_text("3")
    finally:
        child.stop()
    got = seen(child.out)
    for path in ["/workspace/d", "/workspace/d/e", "/workspace/d/f1.txt", "/workspace/d/e/f2.txt"]:
        assert ("fs_create", path, None) in got, path
    assert ("fs_close_write", "/workspace/d/e/f3.txt", None) in got


def test_overflow_loses_live_events_but_no_change(tmp_path: Path):
    """Freeze the watcher, overflow the kernel's inotify queue, then check the record: the overflow
    is noted, every file is there (from the snapshots), and the ones the watcher missed are flagged
    seen_live=false."""
    root = tmp_path / "ws"
    root.mkdir()
    (root / "seeded.txt").write_text("before\n")
    manifest = Manifest.model_construct(weights=None, locations=[
        Location(host="agent", path="/workspace", host_path=str(root))])
    before = snapshot(manifest)
    child = ChildWatcher(tmp_path, root)
    out = child.out
    n_files = MAX_QUEUED + 2000
    try:
        child.freeze()
        for i in range(n_files):
            (root / f"f{i:05d}").write_bytes(b"x")
        (root / "seeded.txt").write_text("after\n")
    finally:
        child.stop()
    after = snapshot(manifest)
    live = {r["path"] for r in read(out) if r["kind"] == "fs_create"}
    assert len(live) < n_files, "the inotify queue did not overflow; the test proves nothing"
    overflows = [r for r in read(out) if r["kind"] == "fs_overflow"]
    assert [(r["host"], r["path"], r["covers"]) for r in overflows] == [("agent", None, ["/workspace"])]

    events = record_events(out.parent, tmp_path / "no-traffic.jsonl", before, after)
    created = {e.data["path"]: e for e in events if e.source == "snapshot" and e.kind == "file_created"}
    assert len(created) == n_files                                          # nothing lost
    missed = [p for p, e in created.items() if not e.data["seen_live"]]
    assert missed and all(p not in live for p in missed)                    # and the gap is visible
    assert all(created[p].data["seen_live"] for p in live if p in created)
    modified = [e for e in events if e.source == "snapshot" and e.kind == "file_modified"]
    assert [e.data["path"] for e in modified] == ["/workspace/seeded.txt"]
    assert [e.kind for e in events if e.source == "fs" and e.data["path"] is None] == ["fs_overflow"]
    overflow = next(e for e in events if e.kind == "fs_overflow")
    overflow.step, overflow.tool_call_id = 1, "call-1"      # the timeline shows what a step caused
    assert "fs_overflow    inotify dropped events under /workspace (the snapshots cover them)" in \
        describe([overflow], None)


def test_changes_right_before_stop_are_all_recorded(tmp_path: Path):
    """Stopping drains: a burst of changes made just before `stop`, including a move out of the
    watched tree (an IN_MOVED_FROM still waiting for its other half), is all in the record once
    `stop` returns."""
    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    watcher, out = start_watcher(tmp_path, root)
    try:
        for i in range(200):
            (root / f"burst{i:03d}").write_bytes(b"x")
        (root / "leaving.txt").write_text("bye\n")
        os.rename(root / "leaving.txt", outside / "leaving.txt")
    finally:
        watcher.stop()
    got = {(r["kind"], r["path"]) for r in read(out)}
    assert all(("fs_create", f"/workspace/burst{i:03d}") in got for i in range(200))
    # a move out of the tree is reported as its path being deleted
    assert ("fs_close_write", "/workspace/leaving.txt") in got and ("fs_delete", "/workspace/leaving.txt") in got


def test_a_watcher_that_cannot_start_says_why(tmp_path: Path):
    root = tmp_path / "ws"
    root.mkdir()
    watcher = FsWatcher(roots(root), str(tmp_path / "no-such-dir" / "fs_events.jsonl")).start()
    with pytest.raises(RuntimeError, match="(?s)the filesystem watcher did not start.*No such file"):
        watcher.wait_ready(60)
    watcher.stop()
