"""The filesystem watcher covers a host's writable trees with one inotify instance when they are
all its tmpfs holds (a user has only 128 instances), still reports each change under the right
host and path, and never watches a directory holding anything else (the world's logs)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from runner.fs_watch import FsWatcher, watched_dirs


def roots_of(rw: Path, host: str, subs: dict[str, str]) -> list[dict]:
    return [{"host": host, "path": path, "root": str(rw / sub)} for sub, path in subs.items()]


def make(rw: Path, subs) -> None:
    for sub in subs:
        (rw / sub).mkdir(parents=True)


def test_trees_filling_a_directory_share_one_watch_others_keep_their_own(tmp_path):
    agent, server, mixed = tmp_path / "agent" / "rw", tmp_path / "srv" / "rw", tmp_path / "mixed"
    make(agent, ["workspace", "tmp"])
    make(server, ["data", "home"])
    make(mixed, ["data", "logs"])
    roots = (roots_of(agent, "agent", {"workspace": "/workspace", "tmp": "/tmp"})
             + roots_of(server, "10.0.12.45", {"data": "/data", "home": "/home"})
             + roots_of(mixed, "10.0.12.46", {"data": "/data"}))
    assert watched_dirs(roots) == sorted([str(agent), str(server), str(mixed / "data")])
    # a missing root is skipped; a lone root is watched itself
    assert watched_dirs(roots_of(agent, "agent", {"workspace": "/workspace", "gone": "/gone"})) == \
        [str(agent / "workspace")]


def inotify_instances() -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.exists(fd) and os.readlink(fd) == "anon_inode:inotify")


def test_one_watch_per_host_reports_every_tree_with_its_path(tmp_path):
    rw, logs = tmp_path / "agent" / "rw", tmp_path / "logs"
    subs = {"workspace": "/workspace", "home": "/home/agent", "tmp": "/tmp", "shm": "/dev/shm"}
    make(rw, subs)
    logs.mkdir()
    out = logs / "fs_events.jsonl"
    instances_before = inotify_instances()
    watcher = FsWatcher(roots_of(rw, "agent", subs), str(out)).start()
    try:
        watcher.wait_ready(60)
        assert inotify_instances() - instances_before == 1
        # one thread of this process, under its own task name (what CPU accounts by)
        names = {(t / "comm").read_text().strip() for t in Path("/proc/self/task").iterdir()}
        assert "fs-watch" in names
        for sub in subs:
            (rw / sub / "d").mkdir()
        deadline = time.time() + 60     # each new directory's watch is set before anything is written in it
        while len(out.read_text().splitlines() if out.exists() else []) < len(subs) and time.time() < deadline:
            time.sleep(0.05)
        for sub in subs:
            (rw / sub / "d" / "f.txt").write_text(sub)
            (rw / sub / "g.txt").write_text(sub)
    finally:
        watcher.stop()
    assert inotify_instances() == instances_before     # closed on stop
    seen = {(r["host"], r["kind"], r["path"]) for r in map(json.loads, out.read_text().splitlines())}
    for path in subs.values():
        assert ("agent", "fs_create", f"{path}/d") in seen
        assert ("agent", "fs_create", f"{path}/d/f.txt") in seen
        assert ("agent", "fs_close_write", f"{path}/d/f.txt") in seen
        assert ("agent", "fs_close_write", f"{path}/g.txt") in seen
    assert all(path.split("/")[1] in ("workspace", "home", "tmp", "dev") for _, _, path in seen)
