"""PID 1 of each container of a Docker world (runner.docker_world). Standard library only: it
runs under the host's /usr/bin/python3, bind-mounted read-only into the container.

It only holds the container's namespaces: the harness runs sshd and the agent in them with
`runc exec` (under strace, from the host) and holds an exclusive flock on the world's life lock
(LIFE_LOCK, bind-mounted here) for the world's whole life. This process waits for a shared lock
on that file and exits as soon as it gets one: when the world ends, or when the process holding
the lock dies in any way (the kernel releases a flock with its holder, kill -9 included). PID 1
exiting makes the kernel kill every process of the container's pid namespace, and docker
(`run --rm`) removes the container. Meanwhile it reaps the orphans that reparent to it.

Usage: container_init.py LIFE_LOCK
"""
from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading


def wait_for_release(path: str) -> None:
    with open(path) as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
    os._exit(0)


def main(life_lock: str) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})   # before the thread: it inherits the mask
    threading.Thread(target=wait_for_release, args=(life_lock,), daemon=True).start()
    while True:
        signal.sigwait({signal.SIGCHLD})
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass


if __name__ == "__main__":
    main(sys.argv[1])
