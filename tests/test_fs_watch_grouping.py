"""The filesystem watcher covers a host's writable trees with one inotify instance when they are
all its tmpfs holds (a user has only 128 instances), still reports each change under the right
host and path, and never watches a directory holding anything else (the world's logs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from runner.fs_watch import watched_dirs

PROJECT = Path(__file__).resolve().parent.parent


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


def inotify_instances(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd) == "anon_inode:inotify")


def test_one_watch_per_host_reports_every_tree_with_its_path(tmp_path):
    rw, logs = tmp_path / "agent" / "rw", tmp_path / "logs"
    subs = {"workspace": "/workspace", "home": "/home/agent", "tmp": "/tmp", "shm": "/dev/shm"}
    make(rw, subs)
    logs.mkdir()
    config, out = tmp_path / "watch.json", logs / "fs_events.jsonl"
    config.write_text(json.dumps(roots_of(rw, "agent", subs)))
    proc = subprocess.Popen([sys.executable, "-m", "runner.fs_watch", str(config), str(out)],
                            stdout=subprocess.PIPE, cwd=PROJECT)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        assert inotify_instances(proc.pid) == 1
        for sub in subs:
            (rw / sub / "d").mkdir()
            (rw / sub / "d" / "f.txt").write_text(sub)
            (rw / sub / "g.txt").write_text(sub)
        time.sleep(0.3)
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    seen = {(r["host"], r["kind"], r["path"]) for r in map(json.loads, out.read_text().splitlines())}
    for path in subs.values():
        assert ("agent", "fs_create", f"{path}/d") in seen
        assert ("agent", "fs_create", f"{path}/d/f.txt") in seen
        assert ("agent", "fs_close_write", f"{path}/g.txt") in seen
    assert all(path.split("/")[1] in ("workspace", "home", "tmp", "dev") for _, _, path in seen)
