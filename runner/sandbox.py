"""Launch one world: an anonymous network + pid + mount namespace whose PID 1 is
`world_init.py`. Nothing started inside can outlive it: `setpriv --pdeathsig KILL` kills the
namespace's launcher if this thread dies, `unshare --kill-child` kills PID 1 if the launcher dies,
and the kernel kills every process of a pid namespace when its PID 1 exits."""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harnesses.base import AgentAdapter, AgentPaths, node_bin_dir
from harnesses.registry import SANDBOX_AGENT_DIR, SANDBOX_NODE_DIR
from runner.limits import Limits, create_trial_cgroup, remove_trial_cgroup
from runner.paths import PROJECT_ROOT
from runner.syscall_recorder import WorldFollower
from workspaces.world import AGENT_ADDRESS, AGENT_UID, AGENT_WRITABLE, SERVER_WRITABLE, SIZE_SHIM_PROGRAMS, BuiltWorld

MODEL_PORT = 8000


class CancelFlag(threading.Event):
    """A threading.Event whose `fileno()` is readable while it is set, so a thread waiting in
    select() for its world wakes the moment the run is cancelled (no polling)."""

    def __init__(self) -> None:
        super().__init__()
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        with self._lock:
            if not self.is_set():
                super().set()
                os.write(self._write, b"!")

    def clear(self) -> None:
        with self._lock:
            if self.is_set():
                os.read(self._read, 1)
                super().clear()


# Set on Ctrl-C / SIGTERM: every running world is killed at once (worlds run in their own
# sessions, so the terminal's SIGINT never reaches them directly).
CANCEL = CancelFlag()
SYSTEM_PYTHON = "/usr/bin/python3"
# world_init imported, not run as a script (a script is compiled at every start: ~10 ms of CPU per
# trial; the module's bytecode is cached), without site (standard library and this project only).
WORLD_INIT = [SYSTEM_PYTHON, "-S", "-c", f"import sys; sys.path.insert(0, {str(PROJECT_ROOT)!r}); "
              "from runner.world_init import main; sys.exit(main(sys.argv[1]))"]
WATCHERS = ("fs", "agent_strace", "server_strace")
# Internal switch for bench/watchers_overhead.py (not a user-facing option): comma-separated watchers to turn off.
WATCHERS_OFF_ENV = "PEER_HARNESS_WATCHERS_OFF"


def watchers_on() -> dict[str, bool]:
    off = {w.strip() for w in os.environ.get(WATCHERS_OFF_ENV, "").split(",") if w.strip()}
    unknown = off - set(WATCHERS)
    if unknown:
        raise ValueError(f"{WATCHERS_OFF_ENV}: unknown watcher(s) {sorted(unknown)}; known: {', '.join(WATCHERS)}")
    return {w: w not in off for w in WATCHERS}
REQUIRED_TOOLS = ["/usr/bin/bwrap", "/usr/sbin/sshd", "/usr/bin/strace", "/usr/bin/setpriv", "/usr/bin/unshare",
                  "/usr/sbin/ip", "/usr/bin/ssh", "/usr/bin/ssh-keygen", "/usr/bin/logger", "/usr/bin/git",
                  "/usr/lib/openssh/sftp-server", "/usr/bin/prlimit", SYSTEM_PYTHON]


@dataclass
class WorldOutcome:
    launcher_exit: int | None
    status: dict            # logs/world.json written by world_init (empty if it never got that far)
    killed: bool            # the harness had to kill the world


def world_spec(world: BuiltWorld, agent: AgentAdapter, model_name: str, model_socket: Path, timeout_s: float,
               agent_cap_bytes: int, server_cap_bytes: int) -> dict:
    w = world.dir
    return {
        "project_root": str(PROJECT_ROOT),
        "logs": str(w / "logs"),
        "agent_address": AGENT_ADDRESS,
        "model_port": MODEL_PORT,
        "model_socket": str(model_socket),
        "watchers": watchers_on(),
        "locale_dir": str(world.locale_dir) if world.locale_dir else None,
        # Live watches on the tmpfs copies the sandboxes really write to (each `path` as its host sees it).
        "fs_watch": [{"host": "agent", "path": path, "root": str(w / "agent" / "rw" / sub)}
                     for sub, path in AGENT_WRITABLE.items()]
                    + [{"host": s.address, "path": path, "root": str(s.dir / "rw" / sub)}
                       for s in world.servers for sub, path in SERVER_WRITABLE.items()],
        "servers": [{
            "address": s.address, "hostname": s.hostname, "dir": str(s.dir), "rw_mount": str(s.dir / "rw"),
            "writable": list(SERVER_WRITABLE), "cap_bytes": server_cap_bytes,
            "size_shim": {"library": str(world.shim_path), "programs": list(SIZE_SHIM_PROGRAMS), "files": s.shim_files,
                          "mount": s.volume_mount, "total": s.volume_total, "used": s.volume_used},
        } for s in world.servers],
        "agent": {
            "dir": str(w / "agent"), "rw_mount": str(w / "agent" / "rw"), "etc_dir": str(w / "agent-etc"),
            "writable": list(AGENT_WRITABLE), "cap_bytes": agent_cap_bytes, "uid": AGENT_UID,
            "ro_binds": [[str(node_bin_dir().parent), SANDBOX_NODE_DIR], [str(agent.prefix()), SANDBOX_AGENT_DIR]],
            "env": agent.env(AgentPaths(), f"http://127.0.0.1:{MODEL_PORT}"),
            "command": agent.command(world.prompt, model_name),
            "timeout_s": timeout_s,
        },
    }


# Takes an agent slot (blocking) and returns the function that gives it back (runner.trial.AgentSlots).
AgentSlot = Callable[[], Callable[[], None]]


def launch_world(spec: dict, world_dir: Path, timeout_s: float, agent_slot: AgentSlot | None = None,
                 follower: WorldFollower | None = None) -> WorldOutcome:
    """Run the world to completion (blocking). Call from a thread that lives until it returns.
    `agent_slot`: taken (from this thread) once the world is up and before its agent starts, given
    back as soon as the agent has ended, while the world is still stopping its servers and copying
    its trees back (or when the world ends early). `follower`: the system calls of the agent and the
    servers are recorded by the run's eBPF recorder (else by strace in the world)."""
    limits = Limits()
    cgroup = create_trial_cgroup(world_dir.name, limits)   # named after the world: a resume finds leftovers
    spec = {**spec, "limits": {"values": limits._asdict(), "cgroup": cgroup.to_json()}}
    try:
        return _run_world(spec, world_dir, timeout_s, agent_slot, follower=follower)
    finally:
        remove_trial_cgroup(cgroup)


def _run_world(spec: dict, world_dir: Path, timeout_s: float, agent_slot: AgentSlot | None,
               launcher: list[str] | None = None, follower: WorldFollower | None = None) -> WorldOutcome:
    """`launcher`: the command the world's spec.json is given to (default: world_init.py as PID 1 of
    new namespaces; runner.docker_world passes its own). The launcher follows world_init's protocol:
    "ready" on `to_harness_fd` once the world is up, then it waits for a byte on `agent_go_fd`
    before starting the agent, and says "done" (or closes) when the agent has ended."""
    news_read, news_write = os.pipe()     # world -> harness: "ready", then "done"
    go_read, go_write = os.pipe()
    spec = {**spec, "to_harness_fd": news_write, "agent_go_fd": go_read}
    world_fds = [news_write, go_read]
    if follower is not None:
        spec["recorder_fd"] = follower.fd_for_world()
        world_fds.append(spec["recorder_fd"])
    spec_path = world_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    logs = Path(spec["logs"])
    argv = (launcher or ["/usr/bin/setpriv", "--pdeathsig", "KILL", "/usr/bin/unshare", "--net", "--pid", "--fork",
                         "--kill-child", "--mount-proc", *WORLD_INIT]) + [str(spec_path)]
    give_back: Callable[[], None] = lambda: None
    with open(logs / "world-init.log", "wb") as out:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                    pass_fds=world_fds)
        finally:
            os.close(news_write)
            os.close(go_read)
            if follower is not None:
                follower.world_started()
        killed, said, agent_done = False, b"", False
        follower_asks = follower is not None
        # world_init enforces the agent's limit itself; this margin covers setup (until the go) and
        # then stopping and copying back. Waiting for an agent slot has no limit of its own.
        deadline = time.time() + timeout_s + 120
        # Sleep until the world says something, ends (its pidfd turns readable), the run is
        # cancelled or the deadline passes: polling every 50 ms cost each trial ~10 ms of CPU.
        exited = None
        try:
            exited = os.pidfd_open(proc.pid)
            while (code := proc.poll()) is None:
                if CANCEL.is_set() or time.time() > deadline:
                    proc.kill()
                    code = proc.wait()
                    killed = True
                    break
                waiting = [exited, CANCEL] if agent_done else [exited, CANCEL, news_read]
                if follower_asks:
                    waiting.append(follower)
                readable = select.select(waiting, [], [], max(0.0, deadline - time.time()))[0]
                if follower in readable:
                    follower_asks = follower.answer()
                if news_read not in readable:
                    continue
                message = os.read(news_read, 64)
                said += message
                if b"ready\n" in said and go_write is not None:
                    if agent_slot is not None:
                        give_back = agent_slot()
                    deadline = time.time() + timeout_s + 120
                    try:
                        os.write(go_write, b"\n")
                    except OSError:    # the world ended while this trial waited for its slot
                        pass
                    os.close(go_write)
                    go_write = None
                if b"done\n" in said or not message:
                    agent_done = True
                    give_back()
        finally:
            if exited is not None:
                os.close(exited)
            os.close(news_read)
            if go_write is not None:
                os.close(go_write)
            give_back()
            if proc.poll() is None:   # KeyboardInterrupt or any other exit path: never leave it running
                proc.kill()
                proc.wait()
    status_path = logs / "world.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    return WorldOutcome(launcher_exit=code, status=status, killed=killed)


def missing_prerequisites() -> list[str]:
    """Isolation features and tools a world needs; empty when all are present."""
    problems = [f"missing {tool} (install: apt-get install bubblewrap openssh-server openssh-client strace "
                f"iproute2 util-linux bsdutils git python3)" for tool in REQUIRED_TOOLS if not os.path.exists(tool)]
    if os.geteuid() != 0:
        problems.append("must run as root: worlds need network namespaces, bubblewrap as root for the sshd "
                        "servers, and tmpfs/overlay mounts")
    if not Path("/proc/self/ns/net").exists():
        problems.append("kernel without network namespaces")
    if "overlay" not in Path("/proc/filesystems").read_text():
        problems.append("kernel without overlayfs (needed for the servers' /etc)")
    if shutil.which("gcc") is None:
        problems.append("missing gcc (builds the apparent-size shim): apt-get install gcc")
    return problems


def probe_world_namespaces() -> str | None:
    """Actually create a throwaway namespace set with a bridge; None when it works."""
    try:
        proc = subprocess.run(["/usr/bin/unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc",
                               "/bin/sh", "-c", "ip link set lo up && ip link add eth0 type bridge && "
                               "/usr/bin/bwrap --ro-bind / / --unshare-pid --die-with-parent /bin/true"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")
