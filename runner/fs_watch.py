"""Live filesystem watcher of one world: inotify, read by one thread of world_init (or of
runner.docker_world's driver). Standard library only -- ctypes for the inotify calls -- since
world_init imports it under the system Python; no second interpreter starts for it.

world_init starts it inside the world's mount namespace, as root, before the agent: it watches the
tmpfs copies the agent and the servers really write to, which no sandbox can see. Each change is
one JSON line of `fs_events.jsonl`, stamped when it is read, with the host and the path as that
host sees it: fs_create, fs_modify (content), fs_attrib (mode, owner or times of a file or
directory: chmod, `touch -d`; never merged into fs_modify), fs_move (with `dest`), fs_delete,
fs_close_write. `observed` is the file's state when the event was read, which may already be
later than the change itself (inotify is asynchronous); the exact values of a chmod or utime come
from strace, joined by the recorder.

- Moves: IN_MOVED_FROM and IN_MOVED_TO with the same cookie are one fs_move (a directory's move
  also reports each entry under it as moved). An IN_MOVED_FROM left unpaired MOVE_PAIR_S after it
  was read (or at stop) was a move out of the watched trees: fs_delete. An unpaired IN_MOVED_TO was
  a move in: fs_create, as below for a directory.
- New directories get their watch as soon as their creation is read, and every entry already in
  them is reported as created: a change made in the instant before the watch was set is caught so.
- inotify can drop events (queue overflow, IN_Q_OVERFLOW): an `fs_overflow` line (`path` null,
  `covers` = the paths of that instance's trees) says so, and the recorder's before/after
  snapshots are the backstop that flags every change this watcher missed. Directories made while
  events were dropped get their watches then.
- One inotify instance per host tmpfs (`watched_dirs`): a user has only 128 of them.
- `wait_ready` returns once every watch is set (before the agent starts); `stop` returns once every
  event the kernel has queued is in the file (call it once nothing writes to the trees any more).
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import stat
import struct
import sys
import threading
import time

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE, IN_DELETE_SELF = 0x40, 0x80, 0x100, 0x200, 0x400
IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x4000, 0x8000, 0x40000000
IN_ONLYDIR, IN_DONT_FOLLOW = 0x01000000, 0x02000000
WATCH_MASK = (IN_CREATE | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE
              | IN_DELETE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW)
KINDS = {IN_CREATE: "fs_create", IN_MODIFY: "fs_modify", IN_ATTRIB: "fs_attrib", IN_CLOSE_WRITE: "fs_close_write",
         IN_DELETE: "fs_delete"}
EVENT_HEADER = struct.Struct("iIII")   # struct inotify_event: wd, mask, cookie, len (then the name, NUL-padded)
READ_SIZE = 256 * 1024
# The kernel queues a rename's IN_MOVED_TO right after its IN_MOVED_FROM, but a read can fall in
# between; under load the second half can be late. Only an unpaired half waits this long.
MOVE_PAIR_S = 0.5
# Stopping reads until nothing is queued; only a writer still at work could make that take long.
DRAIN_LIMIT_S = 10.0

PR_SET_NAME = 15
THREAD_NAME = b"fs-watch"

_libc = ctypes.CDLL(None, use_errno=True)


def _os_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


class Inotify:
    """One inotify instance (non-blocking fd) and its watches: watch descriptor -> directory."""

    def __init__(self, top: str):
        self.top = top
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise _os_error("inotify_init1 (see fs.inotify.max_user_instances)")
        self.dirs: dict[int, str] = {}

    def watch(self, path: str) -> bool:
        """Watch one directory; False if it is no directory (any more)."""
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), WATCH_MASK)
        if wd < 0:
            if ctypes.get_errno() in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise _os_error(f"inotify_add_watch {path} (see fs.inotify.max_user_watches)")
        self.dirs[wd] = path     # the same directory keeps its wd; the path is refreshed (moves)
        return True

    def watch_tree(self, top: str) -> list[tuple[str, bool]]:
        """Watch `top` and every directory under it, each before it is listed; return every entry
        found under it as (path, is_dir), a directory before its entries."""
        found, stack = [], [top]
        while stack:
            d = stack.pop()
            if not self.watch(d):
                continue
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for entry in entries:
                is_dir = entry.is_dir(follow_symlinks=False)
                found.append((entry.path, is_dir))
                if is_dir:
                    stack.append(entry.path)
        return found

    def unwatch_tree(self, top: str) -> None:
        """Drop the watches of a directory moved out of the watched trees (it is watched wherever
        it went, under paths that no longer mean anything)."""
        for wd, path in list(self.dirs.items()):
            if path == top or path.startswith(top + "/"):
                _libc.inotify_rm_watch(self.fd, wd)
                del self.dirs[wd]

    def rename_tree(self, src: str, dest: str) -> None:
        for wd, path in self.dirs.items():
            if path == src or path.startswith(src + "/"):
                self.dirs[wd] = dest + path[len(src):]

    def read(self) -> list[tuple[int, int, int, str]]:
        """The events queued now, as (wd, mask, cookie, name); [] when none are."""
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return []
        events, i = [], 0
        while i < len(data):
            wd, mask, cookie, length = EVENT_HEADER.unpack_from(data, i)
            start = i + EVENT_HEADER.size
            events.append((wd, mask, cookie, os.fsdecode(data[start:start + length].rstrip(b"\0"))))
            i = start + length
        return events

    def close(self) -> None:
        os.close(self.fd)


def file_state(path: str) -> dict | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime": st.st_mtime, "mode": f"{stat.S_IMODE(st.st_mode):04o}"}


def watched_dirs(roots: list[dict]) -> list[str]:
    """Directories whose recursive watches cover every root, as few as possible: each is one
    inotify instance, and a user has few (fs.inotify.max_user_instances, 128 by default; one per
    tree would run out at 9 worlds). A directory whose entries are all roots (a host's tmpfs of
    writable trees) is watched once; events on that directory itself are in no root and dropped."""
    by_parent: dict[str, set[str]] = {}
    for r in roots:
        if os.path.isdir(r["root"]):
            root = os.path.normpath(r["root"])
            by_parent.setdefault(os.path.dirname(root), set()).add(root)
    dirs = []
    for parent, children in by_parent.items():
        try:
            entries = {os.path.join(parent, name) for name in os.listdir(parent)}
        except OSError:
            entries = set()
        dirs += [parent] if len(children) > 1 and entries == children else sorted(children)
    return sorted(dirs)


class FsWatcher:
    """The watcher of a world's trees. roots: [{"host": "agent", "path": "/workspace", "root":
    "/abs/dir/watched"}, ...]; `start`, `wait_ready`, then `stop`."""

    def __init__(self, roots: list[dict], out_path: str):
        self.roots = sorted(({**r, "root": os.path.normpath(r["root"])} for r in roots),
                            key=lambda r: len(r["root"]), reverse=True)
        self.out_path = out_path
        self.instances: dict[int, Inotify] = {}      # fd -> instance
        self.unpaired: dict[int, tuple[float, float, Inotify, str, bool]] = {}   # IN_MOVED_FROM cookie ->
        #                                                  (ts read, pairing deadline, instance, path, is_dir)
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._failure: str | None = None
        self._stop_read, self._stop_write = os.pipe()
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME.decode(), daemon=True)

    # --- the world's side -------------------------------------------------------------------------
    def start(self) -> FsWatcher:
        self._thread.start()
        return self

    def wait_ready(self, timeout: float) -> None:
        """Every watch is set."""
        if not self._ready.wait(timeout) or self._failure is not None:
            raise RuntimeError(f"the filesystem watcher did not start: {self._failure or 'timed out'}")

    def stop(self, timeout: float = 20) -> None:
        """Write every event queued so far, then close. Nothing may write to the trees any more."""
        if self._thread.is_alive():
            try:
                os.write(self._stop_write, b"x")
            except BrokenPipeError:     # it has just ended (failed)
                pass
            self._thread.join(timeout)
        if self._thread.is_alive():
            sys.stderr.write(f"the fs watcher did not stop within {timeout} s\n")
            return
        os.close(self._stop_write)
        if self._failure is not None:
            sys.stderr.write(f"the fs watcher failed: {self._failure}\n")

    # --- the reader thread ------------------------------------------------------------------------
    def _run(self) -> None:
        # The thread's own task name (otherwise world_init's "python3"): ps, top and
        # bench/cpu_by_component.py tell its CPU apart.
        _libc.prctl(PR_SET_NAME, THREAD_NAME, 0, 0, 0)
        out = None
        try:
            out = open(self.out_path, "a")
            for top in watched_dirs(self.roots):
                inotify = Inotify(top)
                self.instances[inotify.fd] = inotify
                inotify.watch_tree(top)
            self._ready.set()
            self._loop(out)
        except BaseException:  # noqa: BLE001 - reported by wait_ready / stop
            import traceback

            self._failure = traceback.format_exc()
            self._ready.set()
        finally:
            for inotify in self.instances.values():
                inotify.close()
            if out is not None:
                out.close()
            os.close(self._stop_read)

    def _loop(self, out) -> None:
        poller = select.poll()
        for fd in [*self.instances, self._stop_read]:
            poller.register(fd, select.POLLIN)
        while True:
            timeout_ms = None
            if self.unpaired:
                timeout_ms = max(0.0, min(u[1] for u in self.unpaired.values()) - time.monotonic()) * 1000
            ready = [fd for fd, _ in poller.poll(timeout_ms)]
            for fd in ready:
                if fd != self._stop_read:
                    self._handle(self.instances[fd], self.instances[fd].read())
            stopping = self._stop_read in ready
            if stopping:      # drain: until no instance has anything queued (bounded, should a writer linger)
                deadline = time.monotonic() + DRAIN_LIMIT_S
                while any([self._handle(i, batch) for i in self.instances.values() if (batch := i.read())]) \
                        and time.monotonic() < deadline:
                    pass
            self._settle_moves(time.monotonic(), every=stopping)
            if self.lines:
                out.write("".join(self.lines))
                out.flush()
                self.lines.clear()
            if stopping:
                return

    def _handle(self, inotify: Inotify, events: list[tuple[int, int, int, str]]) -> bool:
        ts = time.time()
        for wd, mask, cookie, name in events:
            if mask & IN_Q_OVERFLOW:
                self._overflowed(ts, inotify)
                continue
            if mask & IN_IGNORED:           # the directory is gone (or no longer watched)
                inotify.dirs.pop(wd, None)
                continue
            parent = inotify.dirs.get(wd)
            if parent is None:
                continue
            path = os.path.join(parent, name) if name else parent
            is_dir = bool(mask & IN_ISDIR)
            if mask & IN_MOVED_FROM:
                self.unpaired[cookie] = (ts, time.monotonic() + MOVE_PAIR_S, inotify, path, is_dir)
            elif mask & IN_MOVED_TO:
                source = self.unpaired.pop(cookie, None)
                if source is None:          # moved in from outside the watched trees
                    self._created(ts, inotify, path, is_dir)
                else:
                    self._moved(ts, inotify, source[3], path, is_dir)
            elif mask & IN_CREATE:
                self._created(ts, inotify, path, is_dir)
            elif mask & IN_DELETE_SELF:
                if wd in inotify.dirs and path == inotify.top:   # other directories: IN_DELETE in their parent
                    self._record(ts, "fs_delete", path, True)
            else:
                kind = KINDS.get(mask & (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE))
                if kind is not None:
                    self._record(ts, kind, path, is_dir)
        return bool(events)

    def _created(self, ts: float, inotify: Inotify, path: str, is_dir: bool) -> None:
        self._record(ts, "fs_create", path, is_dir)
        if is_dir:
            for entry, entry_is_dir in inotify.watch_tree(path):
                self._record(ts, "fs_create", entry, entry_is_dir)

    def _moved(self, ts: float, inotify: Inotify, src: str, dest: str, is_dir: bool) -> None:
        self._record(ts, "fs_move", src, is_dir, dest)
        if is_dir:
            inotify.rename_tree(src, dest)
            for entry, entry_is_dir in inotify.watch_tree(dest):
                self._record(ts, "fs_move", src + entry[len(dest):], entry_is_dir, entry)

    def _settle_moves(self, now: float, every: bool) -> None:
        """Unpaired IN_MOVED_FROM past their deadline (`every`: all of them) were moves out."""
        for cookie, (ts, deadline, inotify, path, is_dir) in list(self.unpaired.items()):
            if every or deadline <= now:
                del self.unpaired[cookie]
                self._record(ts, "fs_delete", path, is_dir)
                if is_dir:
                    inotify.unwatch_tree(path)

    def _overflowed(self, ts: float, inotify: Inotify) -> None:
        covered: dict[str, list[str]] = {}
        for r in self.roots:
            if r["root"] == inotify.top or r["root"].startswith(inotify.top + "/"):
                covered.setdefault(r["host"], []).append(r["path"])
        for host, paths in covered.items():
            self.lines.append(json.dumps({"ts": ts, "host": host, "kind": "fs_overflow", "path": None,
                                         "covers": sorted(paths)}) + "\n")
        inotify.watch_tree(inotify.top)   # directories made meanwhile: watched from now on

    def _view(self, real: str) -> tuple[str, str] | None:
        for r in self.roots:
            if real == r["root"] or real.startswith(r["root"] + "/"):
                return r["host"], r["path"].rstrip("/") + real[len(r["root"]):] or "/"
        return None

    def _record(self, ts: float, kind: str, real: str, is_dir: bool, dest_real: str | None = None) -> None:
        where = self._view(real)
        if where is None:
            return
        rec: dict = {"ts": ts, "host": where[0], "kind": kind, "path": where[1], "is_dir": is_dir}
        current = real
        if dest_real is not None:
            current = dest_real
            dest = self._view(dest_real)
            rec["dest"] = dest[1] if dest else None
        if kind != "fs_delete":
            rec["observed"] = file_state(current)
        self.lines.append(json.dumps(rec) + "\n")
