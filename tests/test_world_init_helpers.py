"""world_init's sshd log copy: every line stamped in order, and the world learns that a server
listens from sshd's own "Server listening on" line (not before it); its mount(2) helper; its wait for
a process's exit (a pidfd, not a poll)."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time

import pytest

from runner.paths import PROJECT_ROOT
from runner.world_init import timestamped_copy, wait_exit


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


MOUNT_CHECK = """
import errno, os, sys
from runner.world_init import mount
base = sys.argv[1]
for d in ("cap", "low", "merged"):
    os.makedirs(os.path.join(base, d), exist_ok=True)
mount("tmpfs", base + "/cap", "tmpfs", "size=1048576,mode=0755")
st = os.statvfs(base + "/cap")
print("cap", st.f_blocks * st.f_frsize)
open(base + "/cap/inside", "w").write("y")
open(base + "/low/f", "w").write("x")
mount("etc-test", base + "/merged", "overlay", "lowerdir=" + base + "/low:" + base + "/cap", read_only=True)
print("merged", sorted(os.listdir(base + "/merged")))
try:
    open(base + "/merged/g", "w")
except OSError as e:
    print("write", errno.errorcode[e.errno])
try:
    mount("tmpfs", base + "/nowhere", "tmpfs", "size=1")
except OSError as e:
    print("error", e)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")
def test_mount_makes_a_size_capped_tmpfs_and_a_read_only_overlay(tmp_path):
    # in a private mount namespace of its own, as world_init's
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", MOUNT_CHECK,
                          str(tmp_path)], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT).stdout
    lines = out.splitlines()
    assert lines[0] == "cap 1048576"
    assert lines[1] == "merged ['f', 'inside']"
    assert lines[2] == "write EROFS"
    assert lines[3].startswith("error [Errno 2] mount -t tmpfs -o size=1 tmpfs ") and "nowhere" in lines[3]
    assert not os.listdir(tmp_path / "cap")      # the tmpfs held it, in no mount of the host's


def test_wait_exit_sleeps_until_the_exit_or_the_timeout(monkeypatch):
    wakeups = []
    real_select = select.select

    def counting_select(*args):
        wakeups.append(args)
        return real_select(*args)
    monkeypatch.setattr(select, "select", counting_select)
    sleeper = subprocess.Popen(["sleep", "30"])
    t = time.time()
    assert wait_exit(sleeper, 0.5) is None            # still running after its timeout
    assert time.time() - t >= 0.5
    sleeper.kill()
    assert wait_exit(sleeper, 30) == -9
    quick = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(1); sys.exit(3)"])
    assert wait_exit(quick, 60) == 3
    assert wait_exit(quick, 60) == 3                   # already reaped: the same code, no wait
    # one wake-up per wait (Popen.wait(timeout) woke up to every 50 ms)
    assert len(wakeups) == 3
