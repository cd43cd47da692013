"""Live filesystem watcher of one world (inotify through watchdog).

world_init starts it inside the world's mount namespace, as root, before the agent: it watches the
tmpfs copies the agent and the servers really write to, which no sandbox can see. Each change is
one JSON line, stamped when it arrives, with the host and the path as that host sees it:
fs_create, fs_modify (content), fs_attrib (mode, owner or times: chmod, `touch -d`), fs_move,
fs_delete, fs_close_write. `observed` is the file's state when the event was read, which may already
be later than the change itself (inotify is asynchronous); the exact values of a chmod or utime come
from strace, joined by the recorder. inotify can also drop events (queue overflow): the recorder's
before/after snapshots are the backstop and flag every change this watcher missed, including
changes inside a directory made in the instant before its watch was added (watchdog adds it on the
directory's creation event and reports the files it then finds as created).

Usage: python -m runner.fs_watch CONFIG_JSON OUT_JSONL   (prints "ready" once every watch is set)
CONFIG_JSON: [{"host": "agent", "path": "/workspace", "root": "/abs/dir/watched"}, ...]
"""
from __future__ import annotations

import array
import fcntl
import json
import os
import signal
import stat
import sys
import termios
import threading
import time

from watchdog.events import (DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
                             FileDeletedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEvent,
                             FileSystemEventHandler)
from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver
from watchdog.observers.inotify import InotifyEmitter
from watchdog.observers.inotify_buffer import InotifyBuffer

KINDS = {"created": "fs_create", "modified": "fs_modify", "attrib": "fs_attrib", "moved": "fs_move",
         "deleted": "fs_delete", "closed": "fs_close_write"}
WATCHED = [FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, FileMovedEvent, DirMovedEvent, FileDeletedEvent,
           DirDeletedEvent, FileClosedEvent]
# On stop, wait until every event inotify has reported is in the record (see `drained`), at most
# this long: watchdog holds an unpaired IN_MOVED_FROM 0.5 s to pair it with its IN_MOVED_TO.
DRAIN_LIMIT_S = 2.0
DRAIN_POLL_S = 0.01


class FileAttribEvent(FileModifiedEvent):
    """IN_ATTRIB without IN_MODIFY: watchdog folds it into "modified"; kept apart here."""

    event_type = "attrib"


class TrackedBuffer(InotifyBuffer):
    """watchdog's inotify buffer, flagging `reading` from the moment its thread has read a batch of
    events from the kernel until the batch is in its queue (it then reads again)."""

    reading = False

    def start(self) -> None:     # InotifyBuffer.__init__ ends with this, its Inotify already made
        read_events = self._inotify.read_events

        def tracked(*args, **kwargs):
            self.reading = False
            events = read_events(*args, **kwargs)
            self.reading = bool(events)
            return events

        self._inotify.read_events = tracked
        super().start()


class AttribAwareEmitter(InotifyEmitter):
    """watchdog's inotify emitter, remembering the raw inotify event each watchdog event came from
    (read and queued in the same emitter thread) so attribute changes keep their own kind."""

    _raw = None
    _in_flight = False    # this thread holds an event taken from the buffer, not yet queued

    def on_thread_start(self) -> None:
        # InotifyEmitter.on_thread_start, with the buffer that says when it holds unqueued events
        self._inotify = TrackedBuffer(os.fsencode(self.watch.path), recursive=self.watch.is_recursive,
                                      event_mask=self.get_event_mask_from_filter())
        read = self._inotify.read_event

        def read_event():
            self._raw = read()
            self._in_flight = self._raw is not None
            return self._raw

        self._inotify.read_event = read_event

    def queue_events(self, timeout: float, **kwargs) -> None:
        try:
            super().queue_events(timeout, **kwargs)
        finally:
            self._in_flight = False

    def busy(self) -> bool:
        """Some event inotify reported is not yet in the observer's queue: bytes unread on the
        inotify fd, events being parsed or held in the buffer (unpaired moves), or being converted."""
        buffer = self._inotify
        if buffer is None:
            return False
        unread = array.array("i", [0])
        try:
            fcntl.ioctl(buffer._inotify.fd, termios.FIONREAD, unread)
        except OSError:      # closed: nothing more can arrive
            return False
        return unread[0] > 0 or buffer.reading or self._in_flight or len(buffer._queue._queue) > 0

    def queue_event(self, event: FileSystemEvent) -> None:
        raw = self._raw
        if type(event) is FileModifiedEvent and raw is not None and not isinstance(raw, tuple) \
                and raw.is_attrib and not raw.is_modify:
            event = FileAttribEvent(event.src_path)
        super().queue_event(event)


class Observer(BaseObserver):
    def __init__(self) -> None:
        super().__init__(AttribAwareEmitter, timeout=DEFAULT_OBSERVER_TIMEOUT)

    def drained(self) -> bool:
        """Every event reported so far has been written by the recorder."""
        return self.event_queue.unfinished_tasks == 0 and not any(e.busy() for e in list(self.emitters))

    def drain(self) -> None:
        """Wait until drained twice in a row (an event can be between two of the places `busy`
        looks at for an instant), or DRAIN_LIMIT_S."""
        deadline, idle = time.time() + DRAIN_LIMIT_S, 0
        while idle < 2 and time.time() < deadline:
            idle = idle + 1 if self.drained() else 0
            time.sleep(DRAIN_POLL_S)


def file_state(path: str) -> dict | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime": st.st_mtime, "mode": f"{stat.S_IMODE(st.st_mode):04o}"}


class Recorder(FileSystemEventHandler):
    """Writes one JSON line per event."""

    def __init__(self, roots: list[dict], out_path: str):
        self.roots = sorted(roots, key=lambda r: len(r["root"]), reverse=True)
        self.out = open(out_path, "a", buffering=1)
        self.lock = threading.Lock()

    def view(self, real: str) -> tuple[str, str] | None:
        for r in self.roots:
            if real == r["root"] or real.startswith(r["root"] + "/"):
                return r["host"], r["path"].rstrip("/") + real[len(r["root"]):] or "/"
        return None

    def dispatch(self, event: FileSystemEvent) -> None:
        kind = KINDS.get(event.event_type)
        src = os.fsdecode(event.src_path)
        where = self.view(src)
        if kind is None or where is None:
            return
        rec: dict = {"ts": time.time(), "host": where[0], "kind": kind, "path": where[1], "is_dir": event.is_directory}
        current = src
        if event.event_type == "moved":
            current = os.fsdecode(event.dest_path)
            dest = self.view(current)
            rec["dest"] = dest[1] if dest else None
        if event.event_type != "deleted":
            rec["observed"] = file_state(current)
        with self.lock:
            self.out.write(json.dumps(rec) + "\n")


def watched_dirs(roots: list[dict]) -> list[str]:
    """Directories whose recursive watches cover every root, as few as possible: each watch is one
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


def main(config_path: str, out_path: str) -> int:
    with open(config_path) as f:
        roots = json.load(f)
    recorder = Recorder(roots, out_path)
    observer = Observer()
    for path in watched_dirs(roots):
        observer.schedule(recorder, path, recursive=True, event_filter=WATCHED)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    observer.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    stop.wait()
    observer.drain()
    observer.stop()
    observer.join(timeout=10)
    recorder.out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
