"""PID 1 of one trial's world. Standard library only: it runs under the system Python as root
inside `unshare --net --pid --fork --kill-child --mount-proc`, so when it exits the kernel kills
every process of the world and the network and mount namespaces vanish with it.

It sets up the network (lo, a port-less bridge with the agent's and servers' addresses),
size-capped tmpfs copies of every writable tree, the servers' read-only /etc overlays, the audit
receiver (servers' /dev/log), the bridge from 127.0.0.1:PORT to the host model server's unix
socket, one real sshd per server under bubblewrap, and finally the agent under bubblewrap, its
system calls recorded by the run's eBPF recorder (runner.syscall_recorder) or by strace. When the
agent ends (or times out) it stops the servers, copies the writable trees back
to the host so the recorder can snapshot them, and writes `logs/world.json`.

Usage: world_init.py SPEC_JSON
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from runner.fs_watch import FsWatcher   # stdlib-only module of the project

IP = "/usr/sbin/ip"
BWRAP = "/usr/bin/bwrap"
STRACE = "/usr/bin/strace"
SETPRIV = "/usr/bin/setpriv"
# The same set on the agent and on every server. spawn calls give the process tree; getsockname after a
# connect gives the local port that ties a client's connection to the server session it opened.
TRACED_SYSCALLS = ",".join([
    "execve", "execveat", "chdir", "open", "openat", "openat2", "creat", "rename", "renameat", "renameat2",
    "unlink", "unlinkat", "truncate", "ftruncate", "utime", "utimes", "utimensat", "futimesat", "chmod",
    "fchmod", "fchmodat", "link", "linkat", "symlink", "symlinkat", "mkdir", "mkdirat", "rmdir", "connect",
    "clone", "clone3", "fork", "vfork", "accept", "accept4", "bind", "listen", "getsockname", "getsockopt",
    "kill", "tkill", "tgkill", "ptrace",
    # attempts to leave the sandbox (runner.strace_parse: privileged_op, setuid, socket events)
    "mount", "umount2", "unshare", "setns", "chroot", "pivot_root", "setuid", "setreuid", "setresuid", "socket",
    # Not events: calls every new thread (glibc's start_thread) and forked child makes at once. strace
    # --seccomp-bpf stops a new tracee at *every* syscall until its first traced one, to learn it has the
    # filter; Node's worker threads may never make a traced call, and were stopped at each futex, mmap...
    # (a thread busy with 100k syscalls took 3.7 s instead of 0.05 s).
    "set_robust_list", "rseq",
])
# -r: no re-exec of sshd for each connection (its default), which loaded sshd and its libraries
# again, about 60 traced calls per connection; the servers are the world's stage, not under test.
SSHD_COMMAND = ["/usr/sbin/sshd", "-D", "-e", "-r", "-f", "/etc/ssh/sshd_config"]
DNS_ADDRESS = "127.0.0.53"   # the world's resolver: records every lookup and refuses it (nothing is outside)
# The world's own files over the host's /etc in the agent's view (workspaces.world writes them).
AGENT_ETC_FILES = ("passwd", "group", "hosts", "hostname", "nsswitch.conf", "resolv.conf")


def system_root(locale_dir: str | None) -> list[str]:
    """The host's /usr read-only, with the locale archive over /usr/lib/locale (workspaces.locales)."""
    options = ["--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
               "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64"]
    if locale_dir:
        options += ["--ro-bind", locale_dir, "/usr/lib/locale"]
    return options


def strace_argv(out_path: str) -> list[str]:
    # --pidns-translation: clone() returns the child's pid in the sandbox's pid namespace; strace adds the
    # pid in its own (the world's), the one every line is tagged with. --interruptible=waiting: a
    # server's strace must detach and flush on SIGTERM (with -o FILE the default blocks it). -q, not -qq:
    # keep the "+++ exited with N +++" lines, the exit status of every process. signal=SIGSYS: the
    # seccomp filter's blocked calls (AF_VSOCK sockets) show only as that signal.
    return [STRACE, "-f", "-q", "-ttt", "-s", "65535", "-yy", "--pidns-translation", "--seccomp-bpf",
            "--interruptible=waiting", "-e", "signal=SIGSYS", "-e", f"trace={TRACED_SYSCALLS}", "-o", out_path]


def log(msg: str) -> None:
    sys.stderr.write(f"[world-init {time.time():.3f}] {msg}\n")
    sys.stderr.flush()


def mount(source: str, target: str, fstype: str, options: str, read_only: bool = False) -> None:
    """mount(2) itself: a `mount` process per tree cost more than the mount (libmount parses mountinfo)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    ms_rdonly = 1
    if libc.mount(source.encode(), target.encode(), fstype.encode(), ms_rdonly if read_only else 0,
                  options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -t {fstype} -o {options} {source} {target}: {os.strerror(err)}")


# --- seccomp: block AF_VSOCK (not covered by network namespaces) and non-native syscall ABIs ----
# socket(AF_VSOCK) raises SIGSYS (the process is killed unless it handles it); no socket is made.
def vsock_filter() -> bytes:
    ld_w_abs, jeq_k, jge_k, ret_k = 0x20, 0x15, 0x35, 0x06
    allow, errno, trap = 0x7FFF0000, 0x00050000, 0x00030000
    prog = [
        (ld_w_abs, 0, 0, 4),                 # A = arch
        (jeq_k, 1, 0, 0xC000003E),           # x86_64 ? skip : deny
        (ret_k, 0, 0, errno | 38),           # other ABIs (i386) -> ENOSYS
        (ld_w_abs, 0, 0, 0),                 # A = nr
        (jge_k, 0, 1, 0x40000000),           # x32 ABI -> ENOSYS
        (ret_k, 0, 0, errno | 38),
        (jeq_k, 0, 3, 41),                   # socket() ?
        (ld_w_abs, 0, 0, 16),                # A = args[0] (domain)
        (jeq_k, 0, 1, 40),                   # AF_VSOCK ?
        # -> SIGSYS, not an errno: SECCOMP_RET_TRAP outranks strace's SECCOMP_RET_TRACE, and strace
        # records the signal (an errno would fail the call unseen by strace).
        (ret_k, 0, 0, trap),
        (ret_k, 0, 0, allow),
    ]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def fd_of(data: bytes) -> int:
    """A readable fd holding `data` (bwrap reads --seccomp and --args from fds)."""
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


# --- network --------------------------------------------------------------------------------
def setup_network(spec: dict) -> None:
    # No dummy driver on some kernels: a port-less bridge carries the LAN addresses instead.
    # The first address is primary: the agent's source address. One `ip` process for all of it.
    commands = ["link set lo up", "link add eth0 type bridge", "link set eth0 up"] + [
        f"addr add {addr}/24 dev eth0" for addr in [spec["agent_address"]] + [s["address"] for s in spec["servers"]]]
    subprocess.run([IP, "-batch", "-"], input="\n".join(commands).encode() + b"\n", check=True,
                   stdout=subprocess.DEVNULL)


# --- audit receiver: the servers' /dev/log ------------------------------------------------------
class AuditReceiver(threading.Thread):
    def __init__(self, sockets: dict[str, str], out_path: str):
        super().__init__(daemon=True)
        self.out = open(out_path, "a", buffering=1)
        self.socks: dict[socket.socket, str] = {}
        for server, path in sockets.items():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.bind(path)
            os.chmod(path, 0o666)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.socks[s] = server
        self.stopping = False

    def run(self) -> None:
        import select
        while not self.stopping:
            ready, _, _ = select.select(list(self.socks), [], [], 0.2)
            for s in ready:
                self._read(s)

    def _read(self, s: socket.socket) -> None:
        data, anc, _, _ = s.recvmsg(70000, socket.CMSG_SPACE(12))
        pid = uid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, uid, _gid = struct.unpack("=iII", payload[:12])
        self.out.write(json.dumps({"ts": time.time(), "server": self.socks[s], "pid": pid, "uid": uid,
                                   "msg": data.decode("utf-8", "replace")}) + "\n")

    def drain(self) -> None:
        import select
        while True:
            ready, _, _ = select.select(list(self.socks), [], [], 0.05)
            if not ready:
                return
            for s in ready:
                self._read(s)


# --- model bridge: 127.0.0.1:PORT in the world -> the host model server's unix socket -------------
def pump(src: socket.socket, dst: socket.socket, counted: list[int], slot: int) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
            counted[slot] += len(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def model_bridge(port: int, unix_path: str, record_path: str) -> None:
    """Each connection is logged when it closes: peer port, open/close time, bytes each way."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(64)
    record = open(record_path, "a", buffering=1)
    lock = threading.Lock()

    def connection(conn: socket.socket, peer: tuple, upstream: socket.socket) -> None:
        opened, counted = time.time(), [0, 0]
        pumps = [threading.Thread(target=pump, args=(conn, upstream, counted, 0), daemon=True),
                 threading.Thread(target=pump, args=(upstream, conn, counted, 1), daemon=True)]
        for t in pumps:
            t.start()
        for t in pumps:
            t.join()
        with lock:
            record.write(json.dumps({"ts_open": opened, "ts_close": time.time(), "peer_address": peer[0],
                                     "peer_port": peer[1], "local_port": port, "bytes_to_model": counted[0],
                                     "bytes_from_model": counted[1]}) + "\n")

    def serve() -> None:
        while True:
            conn, peer = lsock.accept()
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(unix_path)
            except OSError:
                conn.close()
                continue
            threading.Thread(target=connection, args=(conn, peer, upstream), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()


# --- the world's resolver: every DNS query is logged and refused ----------------------------------
def dns_question(query: bytes) -> tuple[str, int, int] | None:
    """(name, qtype, end offset) of the first question of a DNS query; None if malformed."""
    labels, i = [], 12
    try:
        while query[i]:
            n = query[i]
            labels.append(query[i + 1:i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        return ".".join(labels), struct.unpack("!H", query[i + 1:i + 3])[0], i + 5
    except (IndexError, struct.error):
        return None


def dns_sink(record_path: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((DNS_ADDRESS, 53))
    record = open(record_path, "a", buffering=1)

    def serve() -> None:
        while True:
            query, peer = sock.recvfrom(4096)
            question = dns_question(query)
            record.write(json.dumps({"ts": time.time(), "peer_address": peer[0], "peer_port": peer[1],
                                     "name": question[0] if question else None,
                                     "qtype": question[1] if question else None}) + "\n")
            if question:   # same id and question; QR=1, opcode and RD kept, RCODE=5 (REFUSED)
                sock.sendto(query[:2] + bytes([0x80 | (query[2] & 0x79), 0x05]) + b"\0\1" + b"\0" * 6
                            + query[12:question[2]], peer)

    threading.Thread(target=serve, daemon=True).start()


# --- live filesystem watcher (runner/fs_watch.py: a thread of this process) ----------------------
def start_fs_watcher(spec: dict) -> FsWatcher:
    return FsWatcher(spec["fs_watch"], os.path.join(spec["logs"], "fs_events.jsonl")).start()


def wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    """The exit code, or None while it still runs after `timeout` s. Sleeps on a pidfd:
    Popen.wait(timeout) polls (waking up to every 50 ms), which cost each trial ~15 ms of CPU."""
    import select
    if proc.poll() is None:
        pidfd = os.pidfd_open(proc.pid)
        try:
            ended, _, _ = select.select([pidfd], [], [], timeout)
        finally:
            os.close(pidfd)
        if not ended:
            return None
    return proc.wait()   # not poll(): it answers None while another thread holds Popen's wait lock


def wait_ready(proc: subprocess.Popen, timeout: float, what: str) -> None:
    """A helper process prints "ready" once it is."""
    import select
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready or proc.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"{what} did not start")


SSHD_LISTENING = b"Server listening on "   # sshd logs it once its socket listens


def timestamped_copy(stream, out_path: str, listening_seen: threading.Event | None = None) -> threading.Thread:
    """sshd -e writes no timestamps: stamp each line as it arrives (and set `listening_seen` at sshd's
    SSHD_LISTENING line)."""
    def copy() -> None:
        with open(out_path, "w") as out:
            for line in iter(stream.readline, b""):
                out.write(f"{time.time():.6f} {line.decode('utf-8', 'replace')}")
                out.flush()
                if listening_seen is not None and line.startswith(SSHD_LISTENING):
                    listening_seen.set()

    t = threading.Thread(target=copy, daemon=True)
    t.start()
    return t


# --- writable trees: size-capped tmpfs copies, copied back at the end ----------------------------
def mount_writable(host: dict) -> None:
    rw = host["rw_mount"]
    os.makedirs(rw, exist_ok=True)
    mount("tmpfs", rw, "tmpfs", f"size={host['cap_bytes']},mode=0755")
    # one cp for all trees: each lands in rw/<its name>
    subprocess.run(["cp", "-a", *(os.path.join(host["dir"], sub) for sub in host["writable"]), rw + "/"], check=True)


def copy_back(host: dict) -> None:
    for sub in host["writable"]:
        shutil.rmtree(os.path.join(host["dir"], sub), ignore_errors=True)
    # one cp for all trees: each lands back in dir/<its name>; one that fails does not stop the rest
    subprocess.run(["cp", "-a", *(os.path.join(host["rw_mount"], sub) for sub in host["writable"]),
                    host["dir"] + "/"], check=False)


def size_shim_files(server: dict) -> list[tuple[int, int, int]]:
    """(inode, real size, apparent size) of each file the server's size shim covers. Inodes are
    known only after the copy into the tmpfs."""
    return [(os.stat(os.path.join(server["rw_mount"], "data", f["path"].removeprefix("/data/"))).st_ino,
             f["real"], f["apparent"]) for f in server["size_shim"]["files"]]


def write_size_shim_config(server: dict) -> None:
    from workspaces.shim import write_shim_config  # stdlib-only module of the project

    shim = server["size_shim"]
    etc = os.path.join(server["dir"], "etc")
    write_shim_config(os.path.join(etc, "peer-harness", "apparent_size.conf"), size_shim_files(server),
                      (shim["mount"], shim["total"], shim["used"]), shim["programs"])
    shutil.copy(shim["library"], os.path.join(etc, "peer-harness", "apparent_size.so"))
    with open(os.path.join(etc, "ld.so.preload"), "w") as out:
        out.write("/etc/peer-harness/apparent_size.so\n")


# --- sandboxes ----------------------------------------------------------------------------------
def bwrap_with_args(options: list[str], command: list[str], seccomp: bytes) -> tuple[list[str], list[int]]:
    """Options travel through an fd (--args) so no host path appears in any /proc/*/cmdline."""
    sec_fd = fd_of(seccomp)
    args_fd = fd_of(b"".join(o.encode() + b"\0" for o in options + ["--seccomp", str(sec_fd)]))
    return [BWRAP, "--args", str(args_fd), *command], [sec_fd, args_fd]


def server_sandbox(server: dict, seccomp: bytes, locale_dir: str | None) -> tuple[list[str], list[int]]:
    d, rw = server["dir"], server["rw_mount"]
    options = [
        *system_root(locale_dir),
        "--ro-bind", os.path.join(d, "etc-merged"), "/etc",
        "--ro-bind", os.path.join(d, "sbin"), "/usr/local/sbin",
        "--proc", "/proc", "--dev", "/dev",
        "--bind", os.path.join(rw, "shm"), "/dev/shm",
        "--bind", os.path.join(d, "log.sock"), "/dev/log",
        "--tmpfs", "/run", "--dir", "/run/sshd",
        "--tmpfs", "/var", "--dir", "/var/log",
        "--bind", os.path.join(rw, "var-tmp"), "/var/tmp",
        "--bind", os.path.join(rw, "tmp"), "/tmp",
        "--bind", os.path.join(rw, "home"), "/home",
        "--bind", os.path.join(rw, "data"), "/data",
        "--tmpfs", "/root",
        # --unshare-cgroup: /proc/self/cgroup shows "/", not the host's name of the trial's cgroup
        "--unshare-pid", "--as-pid-1", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup",
        "--hostname", server["hostname"],
        "--die-with-parent", "--clearenv",
        "--setenv", "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--setenv", "LANG", "C.UTF-8",
    ]
    return bwrap_with_args(options, SSHD_COMMAND, seccomp)


def agent_sandbox(agent: dict, seccomp: bytes, locale_dir: str | None) -> tuple[list[str], list[int]]:
    rw, etc = agent["rw_mount"], agent["etc_dir"]
    options = [*system_root(locale_dir), "--ro-bind", "/etc", "/etc"]
    for name in AGENT_ETC_FILES:
        options += ["--ro-bind", os.path.join(etc, name), f"/etc/{name}"]
    options += [
        "--proc", "/proc", "--dev", "/dev",
        "--bind", os.path.join(rw, "shm"), "/dev/shm",
        "--tmpfs", "/run", "--tmpfs", "/var", "--symlink", "/tmp", "/var/tmp",
        # bwrap would create missing mount points 0700 as root; the agent must be able to traverse them.
        "--perms", "0755", "--dir", "/home", "--perms", "0755", "--dir", "/opt",
        "--perms", "0755", "--dir", "/opt/peer-harness",
        "--bind", os.path.join(rw, "workspace"), "/workspace",
        "--bind", os.path.join(rw, "home"), "/home/agent",
        "--bind", os.path.join(rw, "tmp"), "/tmp",
    ]
    for host_path, sandbox_path in agent["ro_binds"]:
        options += ["--ro-bind", host_path, sandbox_path]
    options += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup", "--hostname", "agent",
                # No --new-session: world_init starts the agent in a session of its own already (no
                # controlling terminal to inject input into), whose priority it sets (AGENT_NICE).
                "--die-with-parent", "--clearenv", "--chdir", "/workspace"]
    for key, value in agent["env"].items():
        options += ["--setenv", key, value]
    options += ["--remount-ro", "/"]
    return bwrap_with_args(options, drop_privileges(agent["uid"]) + agent["command"], seccomp)


# A followed process (the agent's, each server's) parks here until the run's syscall recorder
# follows it (runner.syscall_recorder): it says it is parked on stdin (a socket), waits for the word
# to go, then execs its sandbox with stdin from /dev/null. Its earlier steps (joining the trial's
# cgroup, this shell) are not recorded.
FOLLOW_GATE = ["/bin/sh", "-c", 'echo >&0; read -r _; exec "$@" </dev/null', "gate"]


def start_followed(argv: list[str], fds: list[int], recorder: socket.socket, name: str,
                   session_nice: int | None = None, **popen) -> subprocess.Popen:
    """Start `argv` (ending in FOLLOW_GATE + the sandbox), have the recorder follow it as `name`
    (over `recorder`, the socket to the harness), then let it go (its session at `session_nice`,
    with start_new_session)."""
    world_end, gated_end = socket.socketpair()
    try:
        proc = subprocess.Popen(argv, pass_fds=fds, stdin=gated_end, **popen)
    finally:
        gated_end.close()
    with world_end:
        world_end.settimeout(60)
        if not world_end.recv(1):
            raise RuntimeError(f"{name}: its process ended before it was followed (exit {proc.wait()})")
        # The kernel checks and translates the pid we vouch for (our child's, in this pid namespace).
        recorder.sendmsg([f"follow {name}".encode()], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS,
                                                        struct.pack("iII", proc.pid, os.getuid(), os.getgid()))])
        reply = recorder.recv(4096)
        if reply != b"ok":
            proc.kill()     # still the gate: nothing else runs yet
            proc.wait()
            raise RuntimeError(f"the syscall recorder could not follow {name}: "
                               + (reply.decode(errors="replace") or "the harness closed the socket"))
        if session_nice is not None:
            set_session_nice(session_nice, proc.pid)
        world_end.sendall(b"\n")
    return proc


def start_recorded(wrap, argv: list[str], fds: list[int], name: str, traced: bool, recorder: socket.socket | None,
                   strace_out: str, session_nice: int | None = None, **popen) -> subprocess.Popen:
    """Start the sandbox `argv` as `wrap(...)` runs it (e.g. in the trial's cgroup), its system calls
    recorded when `traced`: followed by the run's recorder through `recorder`, else under strace
    writing `strace_out`; its session (with start_new_session) at `session_nice`."""
    if traced and recorder is not None:
        return start_followed(wrap(FOLLOW_GATE + argv), fds, recorder, name, session_nice, **popen)
    if traced:
        argv = strace_argv(strace_out) + argv
    proc = subprocess.Popen(wrap(argv), pass_fds=fds, stdin=subprocess.DEVNULL, **popen)
    if session_nice is not None:
        set_session_nice(session_nice, proc.pid)      # strace is starting the sandbox meanwhile
    return proc


def recorder_socket(spec: dict) -> socket.socket | None:
    """The socket to the harness that has the run's recorder follow processes (None: strace)."""
    if spec.get("recorder_fd") is None:
        return None
    sock = socket.socket(fileno=spec["recorder_fd"])
    sock.settimeout(60)
    return sock


def drop_privileges(uid: int) -> list[str]:
    """The agent's command runs after this: its own uid, no groups, no capabilities, no new privileges."""
    return [SETPRIV, "--reuid", str(uid), "--regid", str(uid), "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--"]


# --- resource limits: cgroup events, output and disk watched while the agent runs -------------
DISK_FULL_BYTES = 64 << 10     # a writable tree with less free space than this is full
# The kernel enforces the pids and memory caps and the tmpfs sizes itself; the poll only ends the
# trial once one is reached (and bounds how far the record may overshoot its output cap).
LIMITS_POLL_S = 0.5


def record_bytes(logs: str) -> int:
    total = 0
    for entry in os.scandir(logs):
        try:
            total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            pass
    return total


def exceeded_limits(spec: dict, cgroups: list, limits) -> list[str]:
    """Each limit reached so far, as "pids", "memory", "output" or "disk: <tree>" (`cgroups`: the
    trial's cgroup, or one per container under runner.docker_world)."""
    from runner.limits import limit_hits   # stdlib-only module of the project

    hits = list(dict.fromkeys(hit for cgroup in cgroups for hit in limit_hits(cgroup)))
    if record_bytes(spec["logs"]) > limits.output_bytes:
        hits.append("output")
    for host in [spec["agent"]] + spec["servers"]:
        st = os.statvfs(host["rw_mount"])
        if st.f_bavail * st.f_frsize < DISK_FULL_BYTES:
            hits.append(f"disk: {host.get('address', 'agent')} writable trees full ({host['cap_bytes']} bytes)")
    return hits


def kill_sandbox(agent: subprocess.Popen) -> None:
    try:
        os.killpg(agent.pid, signal.SIGKILL)   # strace and bwrap: the sandbox's pid namespace dies with bwrap
    except ProcessLookupError:
        pass


def capped_copy(stream, out_path: str, cap: int, kill, status: dict) -> threading.Thread:
    """The agent CLI's stdout/stderr go through a pipe into the record, up to `cap` bytes; more ends
    the trial (a file would let anything in the sandbox reopen it through /proc/PID/fd and rewrite it)."""
    def copy() -> None:
        written = 0
        with open(out_path, "wb") as out:
            for chunk in iter(lambda: stream.read1(1 << 16), b""):
                if written + len(chunk) > cap:
                    out.write(chunk[:cap - written])
                    status.setdefault("limit_hit", []).append("output")
                    kill()
                    break
                out.write(chunk)
                written += len(chunk)
        stream.close()

    t = threading.Thread(target=copy, daemon=True)
    t.start()
    return t


def watch_limits(spec: dict, cgroups: list, limits, agent: subprocess.Popen, kill, status: dict) -> threading.Thread:
    """Ends the trial at the first limit reached: `kill()` ends the agent's whole sandbox (its pid
    namespace dies with its bwrap, or with its container), and status["limit_hit"] says which limit.
    Between polls it sleeps on the agent's pidfd: the trial's end waits for its last look, and a
    plain sleep held every agent's end up to the next poll (0.25 s per trial on average)."""
    import select
    try:
        pidfd = os.pidfd_open(agent.pid)     # before the caller reaps it: the pid cannot be reused
    except ProcessLookupError:               # already reaped: one look and done
        pidfd = None

    def watch() -> None:
        ended = pidfd is None
        try:
            while True:
                # One last look once the agent has ended: a limit the kernel enforced between two polls
                # (an OOM kill the CLI shrugged off before exiting) still shows in the cgroup's counters.
                hits = exceeded_limits(spec, cgroups, limits)
                if hits:
                    status.setdefault("limit_hit", []).extend(hits)
                    kill()
                    return
                if ended:
                    return
                # the pidfd, not agent.poll(): a poll here would hold Popen's wait lock just as
                # the caller's wait_exit polls at the same exit, and make it read "still running"
                ended = bool(select.select([pidfd], [], [], LIMITS_POLL_S)[0])
        finally:
            if pidfd is not None:
                os.close(pidfd)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


RESOLV_CONF = f"nameserver {DNS_ADDRESS}\noptions attempts:1\n"


def write_resolv_conf(etc_dir: str) -> None:
    with open(os.path.join(etc_dir, "resolv.conf"), "w") as f:
        f.write(RESOLV_CONF)


def prepare_server_etc(server: dict) -> None:
    """A server's own /etc files: the world's resolver, and its size shim configured for the inodes
    of its writable trees (which must be mounted)."""
    write_resolv_conf(os.path.join(server["dir"], "etc"))
    write_size_shim_config(server)


def copy_sshd_log(proc: subprocess.Popen, logs: str, address: str, log_copies: list[threading.Thread]) -> threading.Event:
    """sshd's output (stdout, stderr joined) into logs/sshd-<address>.log; the event is set once it listens."""
    listening = threading.Event()
    log_copies.append(timestamped_copy(proc.stdout, os.path.join(logs, f"sshd-{address}.log"), listening))
    return listening


def wait_listening(listening: list[threading.Event], procs: list[subprocess.Popen], timeout: float) -> None:
    """Until every sshd has said it listens (its own word, not a look at /proc/net/tcp: each look costs
    ~4 ms of CPU, the kernel walking every socket of the host). An sshd that exits first is an error."""
    deadline = time.time() + timeout
    while not all(ready.wait(0.05) for ready in listening):
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError("sshd did not start listening (see logs/sshd-*.log)")


def start_servers(spec: dict, seccomp: bytes, wrap, traced: bool, procs: list[subprocess.Popen],
                  log_copies: list[threading.Thread], recorder: socket.socket | None = None) -> None:
    """Each server's /etc overlay (its size shim configured for the inodes of its writable trees,
    which must be mounted), then its real sshd under bubblewrap (`wrap(argv)`: the argv that runs
    it, e.g. in the trial's cgroup; `traced`: its system calls recorded, by the run's recorder
    through `recorder`, else by strace); returns once every sshd listens.
    Started processes are appended to `procs` as they start, so the caller's clean-up stops them."""
    logs, servers = spec["logs"], spec["servers"]
    for server in servers:
        prepare_server_etc(server)
        merged = os.path.join(server["dir"], "etc-merged")
        os.makedirs(merged, exist_ok=True)
        mount("etc-" + server["hostname"], merged, "overlay", f"lowerdir={os.path.join(server['dir'], 'etc')}:/etc",
              read_only=True)
    listening = []
    for server in servers:
        argv, fds = server_sandbox(server, seccomp, spec.get("locale_dir"))
        proc = start_recorded(wrap, argv, fds, server["address"], traced, recorder,
                              os.path.join(logs, f"strace-{server['address']}.txt"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        listening.append(copy_sshd_log(proc, logs, server["address"], log_copies))
        for fd in fds:
            os.close(fd)
    wait_listening(listening, procs, 10)


def stop_servers(procs: list[subprocess.Popen], traced: bool) -> None:
    """Under strace, SIGTERM makes strace detach and flush its record; bwrap --die-with-parent then
    takes the server (and every session in its pid namespace) down with it."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM if traced else signal.SIGKILL)
    for p in procs:
        if wait_exit(p, 10) is None:
            p.kill()
            p.wait()


def world_ready(spec: dict, status: dict) -> None:
    """Tell the harness the world is up (servers listening, watchers ready) and wait for its go
    before starting the agent: the harness takes an agent slot in between, so starting worlds
    stays off the agents' critical path. No go (the harness closed its end): no agent."""
    status["t_world_ready"] = time.time()
    go = spec.pop("agent_go_fd", None)
    if go is None:
        return
    os.write(spec["to_harness_fd"], b"ready\n")
    try:
        if not os.read(go, 1):
            raise RuntimeError("the harness withdrew before the agent started")
    finally:
        os.close(go)
    status["t_go"] = time.time()


def collect_record(agent: dict, servers: list[dict], sshd_logs: list[threading.Thread], audit,
                   fs_watcher: FsWatcher | None) -> None:
    """Once the agent and the servers are stopped (nothing writes to the trees any more): the fs
    watcher's final events, the last of the servers' logs and audit lines, and the writable trees
    copied back for the after-snapshot."""
    for t in sshd_logs:
        t.join(timeout=5)
    if audit is not None:
        audit.drain()
    if fs_watcher is not None:
        fs_watcher.stop()
    for host in [agent] + servers:
        if os.path.ismount(host["rw_mount"]):
            copy_back(host)


def write_status(spec: dict, status: dict, watch: dict) -> None:
    """logs/world.json, written atomically: the harness reads it as the world's last word."""
    status["network"] = {"agent_address": spec["agent_address"],
                         "servers": [s["address"] for s in spec["servers"]],
                         "model_endpoint": ["127.0.0.1", spec["model_port"]], "dns": [DNS_ADDRESS, 53]}
    status["watchers"] = watch
    status["t_end"] = time.time()
    tmp = os.path.join(spec["logs"], "world.json.tmp")
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.replace(tmp, os.path.join(spec["logs"], "world.json"))


def agent_ended(spec: dict) -> None:
    """Tell the harness the agent is over (it may start another trial's agent while this world
    stops). A message, not only closing: `unshare` above this process holds the pipe open too."""
    fd = spec.pop("to_harness_fd", None)
    if fd is not None:
        try:
            os.write(fd, b"done\n")
        except OSError:     # the harness stopped listening (it is killing this world)
            pass
        os.close(fd)


# Starting and stopping a world yields to the agents running meanwhile, and the agents come before
# the harness's own work (building the next worlds, collecting and judging the last ones), so an
# agent runs as it would alone on the machine as far as the cores allow. The kernel shares CPU
# between sessions (autogroups) before processes, so priorities are set on sessions: world_init's
# (the model relay, the audit receiver, the world's tools) and the agent's own (it starts one, with
# its tracer). The sandboxes run in the trial's cgroup, which gets the same priority where it has
# a cpu controller (runner.limits.set_cpu_priority): sshd starts every connection and every command
# in a session of its own, which would otherwise run at nice 0 behind the other trials' agents.
# While the agent runs, its world is as far ahead as the agent: the servers answer its ssh and the
# relay carries its model calls, both on the agent's own clock.
SETUP_NICE = 10
AGENT_NICE = -5


def set_session_nice(nice: int, pid: int | str = "self") -> None:
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:     # a kernel without autogroups: every process competes alike
        pass


def set_world_priority(nice: int, cgroup) -> None:
    """world_init's session and the trial's cgroup (its sandboxes, every session sshd starts) at `nice`."""
    from runner.limits import set_cpu_priority   # stdlib-only module of the project

    set_session_nice(nice)
    set_cpu_priority(cgroup, nice)


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    sys.path.insert(0, spec["project_root"])
    from runner.limits import Limits, TrialCgroup, join_argv   # stdlib-only module of the project

    limits = Limits(**spec["limits"]["values"])
    cgroup = TrialCgroup.from_json(spec["limits"]["cgroup"])
    set_world_priority(SETUP_NICE, cgroup)
    logs = spec["logs"]
    status: dict = {"t_init": time.time(), "limits": {"mode": cgroup.mode, "reason": cgroup.reason,
                                                      **spec["limits"]["values"]}}
    servers, agent = spec["servers"], spec["agent"]
    watch = spec.get("watchers", {"fs": False, "agent_strace": spec.get("strace", True), "server_strace": False})
    sshd_procs: list[subprocess.Popen] = []
    sshd_logs: list[threading.Thread] = []
    audit = fs_watcher = None
    recorder = recorder_socket(spec)
    if watch["agent_strace"] or watch["server_strace"]:
        status["syscall_recorder"] = "strace" if recorder is None else "ebpf"
    try:
        setup_network(spec)
        for host in [agent] + servers:
            mount_writable(host)
        if watch["fs"]:
            fs_watcher = start_fs_watcher(spec)
        write_resolv_conf(agent["etc_dir"])
        audit = AuditReceiver({s["address"]: os.path.join(s["dir"], "log.sock") for s in servers},
                              os.path.join(logs, "audit.jsonl"))
        audit.start()
        model_bridge(spec["model_port"], spec["model_socket"], os.path.join(logs, "bridge.jsonl"))
        dns_sink(os.path.join(logs, "dns.jsonl"))
        seccomp = vsock_filter()
        start_servers(spec, seccomp, lambda argv: join_argv(cgroup, limits, argv), watch["server_strace"],
                      sshd_procs, sshd_logs, recorder)
        status["t_servers_ready"] = time.time()

        if fs_watcher is not None:
            fs_watcher.wait_ready(60)
            status["t_fs_watch_ready"] = time.time()
        world_ready(spec, status)
        set_world_priority(AGENT_NICE, cgroup)
        argv, fds = agent_sandbox(agent, seccomp, spec.get("locale_dir"))
        status["t_agent_start"] = time.time()
        proc = start_recorded(lambda a: join_argv(cgroup, limits, a), argv, fds, "agent", watch["agent_strace"],
                              recorder, os.path.join(logs, "strace.txt"), AGENT_NICE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        for fd in fds:
            os.close(fd)
        kill = lambda: kill_sandbox(proc)  # noqa: E731
        copies = [capped_copy(stream, os.path.join(logs, name), limits.output_bytes // 2, kill, status)
                  for stream, name in ((proc.stdout, "agent.stdout"), (proc.stderr, "agent.stderr"))]
        limit_watch = watch_limits(spec, [cgroup], limits, proc, kill, status)
        status["agent_exit"] = wait_exit(proc, agent["timeout_s"])
        status["timed_out"] = status["agent_exit"] is None
        if status["timed_out"]:
            os.killpg(proc.pid, signal.SIGKILL)
            status["agent_exit"] = proc.wait()
        limit_watch.join()
        for t in copies:      # EOF once the sandbox is gone (its pid namespace takes every writer with it)
            t.join(timeout=10)
        status["t_agent_end"] = time.time()
        agent_ended(spec)
        set_world_priority(SETUP_NICE, cgroup)
    except Exception:  # noqa: BLE001 - reported to the harness through world.json
        import traceback

        status["error"] = traceback.format_exc()
    finally:
        agent_ended(spec)
        t_stop = time.time()
        stop_servers(sshd_procs, traced=watch["server_strace"] and recorder is None)
        status["stop_servers_s"] = time.time() - t_stop
        collect_record(agent, servers, sshd_logs, audit, fs_watcher)
        write_status(spec, status, watch)
    return 1 if "error" in status else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
