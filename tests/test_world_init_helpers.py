"""world_init's sshd log copy: every line stamped in order, and the world learns that a server
listens from sshd's own "Server listening on" line (not before it)."""
from __future__ import annotations

import os
import threading

from runner.world_init import timestamped_copy


def test_sshd_listening_line_sets_the_event_and_every_line_is_stamped(tmp_path):
    r, w = os.pipe()
    seen = threading.Event()
    out = tmp_path / "sshd.log"
    copy = timestamped_copy(os.fdopen(r, "rb"), str(out), seen)
    os.write(w, b"debug1: sshd version OpenSSH_9.2\n")
    assert not seen.wait(0.3)
    os.write(w, b"Server listening on 10.0.12.45 port 22.\n")
    assert seen.wait(10)
    os.write(w, b"Connection from 10.0.12.10 port 5000 on 10.0.12.45 port 22\n")
    os.close(w)
    copy.join(10)
    lines = out.read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "debug1: sshd version OpenSSH_9.2", "Server listening on 10.0.12.45 port 22.",
        "Connection from 10.0.12.10 port 5000 on 10.0.12.45 port 22"]
    stamps = [float(line.split(" ", 1)[0]) for line in lines]
    assert stamps == sorted(stamps)


def test_copy_without_event_ignores_the_listening_line(tmp_path):
    r, w = os.pipe()
    out = tmp_path / "sshd.log"
    copy = timestamped_copy(os.fdopen(r, "rb"), str(out))
    os.write(w, b"Server listening on 10.0.12.46 port 22.\n")
    os.close(w)
    copy.join(10)
    assert out.read_text().split(" ", 1)[1] == "Server listening on 10.0.12.46 port 22.\n"
