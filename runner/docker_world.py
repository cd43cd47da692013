"""The Docker sandbox (`harness-run --sandbox docker`): the world of runner.world_init (servers
10.0.12.45/.46 with real sshd, the agent at 10.0.12.10, the model endpoint 127.0.0.1:8000 and the
resolver 127.0.0.53), built from Docker containers, with the same record in the world's `logs/`.

    harness ── setpriv --pdeathsig KILL unshare --net  docker_world.py SPEC   (the driver)
      driver netns: a port-less bridge br0 (the world's LAN), one veth per container
      ├─ docker run --network none ... container_init.py   x3 (agent, each server): PID 1 only holds the
      │    container's namespaces until the driver lets go of the world's life lock (flock)
      ├─ strace ... runc exec <server> sshd -D -e         (as `docker exec`, traced from its first call)
      ├─ strace ... runc exec <agent> setpriv ... CLI     (stdout/stderr through capped pipes)
      ├─ nsenter --net=<agent netns> docker_world.py --services agent   (model bridge + resolver)
      ├─ nsenter --net=<server netns> docker_world.py --services server (resolver)
      └─ (threads) fs watcher, audit receiver (the servers' /dev/log) -- all outside every container

The writable trees are size-capped tmpfs mounts on the host (as in the bubblewrap world),
bind-mounted into the containers and copied back at the end; logs are in no container mount.
Each container gets Docker's own pids/memory limits (runner.limits values), a seccomp profile that
traps AF_VSOCK sockets (SIGSYS, as the bubblewrap world's filter) and otherwise leaves the syscalls
to strace, and a private cgroup namespace. Nothing outlives the trial: the driver dies with the
harness (pdeathsig); the kernel then releases its life lock, every container's PID 1 exits and
takes its pid namespace (sshd, sessions, the agent) with it, and `docker run --rm` removes it.
Containers are labelled `peer-harness.world=<world dir name>`; leftovers are removed by the
harness after each trial, at run start and on resume.

The image (`harness-run --sandbox docker --install`) is built without any registry: `docker
import` of a skeleton root (mount points, /bin -> usr/bin and friends) plus a copy of the host's
/etc (its secrets left out); /usr is the host's, bind-mounted read-only like the bubblewrap
world's. Its tag is a hash of those inputs, so an image built from another /etc is stale.

The module runs in the harness (image, checks, launch) and, under the system Python with the
standard library only, as the driver (`main`) and its per-netns services (`services`).
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback

DOCKER = "/usr/bin/docker"        # Debian's docker.io client, the daemon's own version (not /usr/local/bin's)
RUNC = "/usr/sbin/runc"
RUNC_ROOT = "/run/docker/runtime-runc/moby"   # where dockerd's containerd shim keeps runc's state
NSENTER = "/usr/bin/nsenter"
SETPRIV = "/usr/bin/setpriv"
UNSHARE = "/usr/bin/unshare"
IP = "/usr/sbin/ip"
SYSTEM_PYTHON = "/usr/bin/python3"
IMAGE_REPO = "peer-harness-world"
LABEL = "peer-harness.world"
INIT_DIR = "/.peer-harness"       # in each container: container_init.py and the life lock (root only)
IMAGE_FORMAT = "1"                # bump when the skeleton below changes
SKELETON_DIRS = [("usr", 0o755), ("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("run", 0o755),
                 ("var", 0o755), ("var/log", 0o755), ("var/tmp", 0o1777), ("tmp", 0o1777), ("home", 0o755),
                 ("root", 0o700), ("data", 0o755), ("workspace", 0o755), ("opt", 0o755),
                 ("opt/peer-harness", 0o755), (INIT_DIR.lstrip("/"), 0o700)]
SYSTEM_LINKS = [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")]
# Host /etc entries left out of the image: secrets, and files every container gets bound over.
ETC_EXCLUDED = ("etc/shadow", "etc/shadow-", "etc/gshadow", "etc/gshadow-", "etc/docker", "etc/hostname",
                "etc/hosts", "etc/resolv.conf")
ETC_EXCLUDED_SUFFIX = "_key"      # /etc/ssh/ssh_host_*_key (private host keys)
# sshd runs as root with Docker's default capabilities; the agent's PID starts as root with just
# what setpriv needs to drop to the agent's uid with none.
SERVER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
               "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
               "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
AGENT_CAPS = ["CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"]
# socket(AF_VSOCK) -> SIGSYS (network namespaces do not cover vsock); everything else is allowed, so
# that strace sees every attempt the bubblewrap world would see (Docker's default profile would
# fail some calls, such as unshare, before strace could record them).
SECCOMP_PROFILE = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                   "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_TRAP",
                                 "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}]}]}
TMPFS_OPTIONS = "rw,nosuid,nodev,exec"


class DockerError(RuntimeError):
    """Docker cannot run worlds here; the message says what to do."""


# --- the image ------------------------------------------------------------------------------------
def _etc_paths() -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk("/etc"):
        dirnames[:] = sorted(d for d in dirnames if os.path.join(dirpath, d)[1:] not in ETC_EXCLUDED)
        for name in sorted(dirnames + filenames):
            rel = os.path.join(dirpath, name)[1:]
            if rel not in ETC_EXCLUDED and not (rel.startswith("etc/ssh/") and rel.endswith(ETC_EXCLUDED_SUFFIX)):
                out.append(rel)
    return out


def _image_members():
    """(TarInfo, content or None) of the image's root filesystem, in order."""
    for name, mode in SKELETON_DIRS:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, mode
        yield info, None
    for name, target in SYSTEM_LINKS:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, target
        yield info, None
    with tarfile.open(fileobj=io.BytesIO(), mode="w") as scratch:
        for rel in _etc_paths():
            info = scratch.gettarinfo("/" + rel, arcname=rel)
            if info is None:                    # a socket or other special file
                continue
            content = None
            if info.isreg():
                with open("/" + rel, "rb") as f:
                    content = f.read()
                info.size = len(content)
            yield info, content


@functools.cache
def image_tag() -> str:
    """`peer-harness-world:<hash of the image's inputs>` (the skeleton and the host's /etc)."""
    h = hashlib.sha256(IMAGE_FORMAT.encode())
    for info, content in _image_members():
        h.update(json.dumps([info.name, info.type.decode(), info.mode, info.uid, info.gid, info.linkname,
                             hashlib.sha256(content).hexdigest() if content is not None else None]).encode())
    return f"{IMAGE_REPO}:{h.hexdigest()[:16]}"


def build_image(echo=print) -> str:
    """Build the image from this machine's files (no registry); removes stale ones. Returns the tag."""
    image_tag.cache_clear()
    tag = image_tag()
    proc = subprocess.Popen([DOCKER, "import", "-", tag], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
        for info, content in _image_members():
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    proc.stdin.close()
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise DockerError(f"docker import failed: {err.strip()}")
    for old in _image_tags():
        if old != tag:
            subprocess.run([DOCKER, "rmi", old], capture_output=True)
            echo(f"removed stale image {old}")
    echo(f"built image {tag} (skeleton + this host's /etc; /usr is bind-mounted read-only at run time)")
    return tag


def _image_tags() -> list[str]:
    out = subprocess.run([DOCKER, "images", IMAGE_REPO, "--format", "{{.Repository}}:{{.Tag}}"],
                         capture_output=True, text=True)
    return out.stdout.split()


def daemon_problem(stderr: str, socket_hint: str) -> str:
    """What a failed `docker version` means, and how to fix it."""
    text = stderr.strip()
    if "permission denied" in text.lower():
        return (f"no permission on the Docker daemon's socket ({socket_hint}): run harness-run as root "
                f"(worlds need root anyway) [docker: {text}]")
    if "Cannot connect to the Docker daemon" in text or "Is the docker daemon running" in text:
        return ("the Docker daemon is not running: start it with `dockerd --bridge=none --iptables=false "
                ">/var/log/peer-harness-dockerd.log 2>&1 &` (or `systemctl start docker`); `bash setup.sh` "
                "starts it too")
    return f"the Docker daemon does not answer `docker version`: {text}"


def docker_problems(docker: str = DOCKER) -> list[str]:
    """Everything --sandbox docker needs, checked before any trial; empty when all is well."""
    if not os.access(docker, os.X_OK):
        return [f"Docker CLI missing at {docker}: apt-get install docker.io"]
    if not os.access(RUNC, os.X_OK):
        return [f"runc missing at {RUNC}: apt-get install docker.io runc"]
    try:
        proc = subprocess.run([docker, "version", "--format", "{{.Server.Version}}"], capture_output=True,
                              text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return ["the Docker daemon did not answer `docker version` within 60 s"]
    if proc.returncode != 0:
        return [daemon_problem(proc.stderr, os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))]
    tag = image_tag()
    if subprocess.run([docker, "image", "inspect", tag], capture_output=True).returncode != 0:
        others = _image_tags()
        why = (f"stale: the image(s) {', '.join(others)} were built from other inputs (this host's /etc "
               "changed since)" if others else "missing")
        return [f"the world image {tag} is {why}; build it with `harness-run --sandbox docker --install`"]
    return []


# --- the harness side -----------------------------------------------------------------------------
def launch_world(spec: dict, world_dir, timeout_s: float, agent_slot=None):
    """runner.sandbox.launch_world's Docker counterpart: same spec in, same WorldOutcome out."""
    from runner.limits import Limits
    from runner.paths import PROJECT_ROOT
    from runner.sandbox import _run_world

    spec = {**spec, "limits": {"values": Limits()._asdict(), "mode": "docker"},
            "docker": {"image": image_tag(), "world": world_dir.name,
                       "init": str(PROJECT_ROOT / "runner" / "container_init.py")}}
    # TERM: a driver whose harness died still stops its world and unmounts its trees (its handler).
    launcher = [SETPRIV, "--pdeathsig", "TERM", UNSHARE, "--net", SYSTEM_PYTHON,
                str(PROJECT_ROOT / "runner" / "docker_world.py")]
    try:
        return _run_world(spec, world_dir, timeout_s, agent_slot, launcher)
    finally:   # the driver cleans up after itself; these cover a driver that was killed
        remove_containers(lambda world, _state: world == world_dir.name)
        unmount_under(str(world_dir))


def labelled_containers() -> list[tuple[str, str, str]]:
    """(id, world label, state) of every container of any world on this machine."""
    out = subprocess.run([DOCKER, "ps", "-a", "--filter", f"label={LABEL}", "--format",
                          f'{{{{.ID}}}} {{{{.Label "{LABEL}"}}}} {{{{.State}}}}'], capture_output=True, text=True)
    return [tuple(line.split()) for line in out.stdout.splitlines() if len(line.split()) == 3]


def remove_containers(which) -> list[str]:
    """Force-remove the world containers `which(world label, state)` selects; waits until they
    are gone. Returns their ids."""
    ids = [cid for cid, world, state in labelled_containers() if which(world, state)]
    if ids:
        subprocess.run([DOCKER, "rm", "-f", *ids], capture_output=True)
        deadline = time.time() + 30
        while time.time() < deadline and set(ids) & {c for c, _w, _s in labelled_containers()}:
            time.sleep(0.2)
    return ids


def unmount_under(path: str) -> list[str]:
    """Unmount whatever is mounted below `path` (a killed driver's tmpfs trees), deepest first."""
    prefix = path.rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    found = sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True)
    for point in found:
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)
    return found


# --- the driver (system Python, standard library + stdlib-only project modules) -------------------
def run_argv(name: str, world: str, image: str, hostname: str, *, binds: list[tuple[str, str, bool]],
             tmpfs: list[str], caps: list[str], limits: dict, seccomp: str, init_dir: str) -> list[str]:
    """`docker run` of one container of a world; binds are (host path, container path, writable)."""
    argv = [DOCKER, "run", "-d", "--rm", "--name", name, "--label", f"{LABEL}={world}", "--network", "none",
            "--hostname", hostname, "--log-driver", "none", "--cgroupns", "private", "--ipc", "private",
            "--read-only", "--pids-limit", str(limits["pids"]), "--memory", str(limits["memory_bytes"]),
            "--memory-swap", str(limits["memory_bytes"]), "--security-opt", f"seccomp={seccomp}",
            "--cap-drop", "ALL"]
    for cap in caps:
        argv += ["--cap-add", cap.removeprefix("CAP_")]
    for dst in tmpfs:
        argv += ["--tmpfs", f"{dst}:{TMPFS_OPTIONS},mode={'700' if dst == '/root' else '755'}"]
    for src, dst, writable in binds:
        argv += ["-v", f"{src}:{dst}:{'rw' if writable else 'ro'}"]
    return argv + ["-v", f"{init_dir}:{INIT_DIR}:ro", image, SYSTEM_PYTHON, "-I", f"{INIT_DIR}/init.py",
                   f"{INIT_DIR}/life.lock"]


def system_binds(spec: dict) -> list[tuple[str, str, bool]]:
    """world_init.system_root's /usr (and locale archive) as container binds."""
    return [("/usr", "/usr", False)] + ([(spec["locale_dir"], "/usr/lib/locale", False)] if spec.get("locale_dir") else [])


def server_container(spec: dict, server: dict, seccomp: str, init_dir: str) -> list[str]:
    """The bubblewrap server sandbox's view (world_init.server_sandbox): the generated /etc entries
    over the host's, the audit wrapper, /dev/log to the audit receiver, the writable trees."""
    d, rw = server["dir"], server["rw_mount"]
    etc = os.path.join(d, "etc")
    binds = [*system_binds(spec), (os.path.join(d, "sbin"), "/usr/local/sbin", False),
             *[(os.path.join(etc, e), f"/etc/{e}", False) for e in sorted(os.listdir(etc))],
             (os.path.join(rw, "shm"), "/dev/shm", True), (os.path.join(d, "log.sock"), "/dev/log", True),
             (os.path.join(rw, "var-tmp"), "/var/tmp", True), (os.path.join(rw, "tmp"), "/tmp", True),
             (os.path.join(rw, "home"), "/home", True), (os.path.join(rw, "data"), "/data", True)]
    return run_argv(container_name(spec, server["address"]), spec["docker"]["world"], spec["docker"]["image"],
                    server["hostname"], binds=binds, tmpfs=["/run", "/run/sshd", "/var", "/var/log", "/root"],
                    caps=SERVER_CAPS, limits=spec["limits"]["values"], seccomp=seccomp, init_dir=init_dir)


def agent_container(spec: dict, seccomp: str, init_dir: str) -> list[str]:
    """The bubblewrap agent sandbox's view (world_init.agent_sandbox); /var/tmp is its /tmp."""
    agent = spec["agent"]
    rw, etc = agent["rw_mount"], agent["etc_dir"]
    from runner.world_init import AGENT_ETC_FILES
    binds = [*system_binds(spec), *[(os.path.join(etc, n), f"/etc/{n}", False) for n in AGENT_ETC_FILES],
             (os.path.join(rw, "shm"), "/dev/shm", True), (os.path.join(rw, "workspace"), "/workspace", True),
             (os.path.join(rw, "home"), "/home/agent", True), (os.path.join(rw, "tmp"), "/tmp", True),
             (os.path.join(rw, "tmp"), "/var/tmp", True),
             *[(host, sandbox, False) for host, sandbox in agent["ro_binds"]]]
    return run_argv(container_name(spec, "agent"), spec["docker"]["world"], spec["docker"]["image"], "agent",
                    binds=binds, tmpfs=["/run", "/var"], caps=AGENT_CAPS, limits=spec["limits"]["values"],
                    seccomp=seccomp, init_dir=init_dir)


def container_name(spec: dict, host: str) -> str:
    return f"{spec['docker']['world']}-{host.rsplit('.', 1)[-1]}"


def process_spec(args: list[str], env: dict[str, str], cwd: str, caps: list[str]) -> bytes:
    """A runc process (what `docker exec` runs): root with `caps`, exactly `env`."""
    return json.dumps({"terminal": False, "user": {"uid": 0, "gid": 0}, "args": args, "cwd": cwd,
                       "env": [f"{k}={v}" for k, v in env.items()], "noNewPrivileges": False,
                       "capabilities": {k: caps for k in ("bounding", "effective", "permitted")}}).encode()


def runc_exec(container_id: str, process_fd: int) -> list[str]:
    """runc reads the process from an inherited pipe: no file of the harness is opened on the way."""
    return [RUNC, "--root", RUNC_ROOT, "exec", "--process", f"/dev/fd/{process_fd}", container_id]


def connect_to_lan(pid: int, veth: str, address: str) -> None:
    """A veth pair from the driver's bridge br0 into the container's netns, where it is eth0."""
    subprocess.run([IP, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(pid)], check=True)
    subprocess.run([IP, "link", "set", veth, "master", "br0", "up"], check=True)
    subprocess.run([NSENTER, f"--net=/proc/{pid}/ns/net", IP, "-batch", "-"], check=True, text=True,
                   input=f"addr add {address}/24 dev eth0\nlink set eth0 up\nlink set lo up\n")


def start_services(pid: int, kind: str, spec_path: str) -> subprocess.Popen:
    """The model bridge and/or the resolver, in the container's netns only (its pid and mount
    namespaces stay the host's: nothing in the container can see or touch it)."""
    return subprocess.Popen([SETPRIV, "--pdeathsig", "KILL", NSENTER, f"--net=/proc/{pid}/ns/net", SYSTEM_PYTHON,
                             os.path.abspath(__file__), "--services", kind, spec_path],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)


def traced(pid: int, out_path: str, argv: list[str]) -> list[str]:
    """`argv` under strace, which runs in the container's netns: -yy names a socket's endpoints by
    asking the kernel (sock_diag) in strace's own netns, and the connect/accept endpoints are what
    ties an SSH session to the command that opened it."""
    from runner.world_init import strace_argv

    return [SETPRIV, "--pdeathsig", "KILL", NSENTER, f"--net=/proc/{pid}/ns/net", *strace_argv(out_path), *argv]


# runc is a Go program. Go's runtime preempts its threads with SIGURG; under strace -f one of those
# signals landing as runc's thread execs the container process could stall the exec for good
# (opencontainers/runc#1025: a CI trial hung there until its timeout). runc reads this variable
# only for itself: the container process gets exactly its process spec's environment.
RUNC_ENV = {**os.environ, "GODEBUG": "asyncpreemptoff=1"}


def kill_container(pid: int) -> None:
    """SIGKILL to a container's PID 1: the kernel kills every process of its pid namespace."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    sys.path.insert(0, spec["project_root"])
    from runner import world_init as wi          # stdlib-only modules of the project
    from runner.limits import Limits, process_cgroup

    def on_term(signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)     # once: the clean-up below must run to its end
        sys.stderr.write(f"[docker-world {time.time():.3f}] signal {signum}: stopping the world\n")
        raise SystemExit("terminated")
    signal.signal(signal.SIGTERM, on_term)

    limits = Limits(**spec["limits"]["values"])
    logs = spec["logs"]
    world_dir = os.path.dirname(logs)
    status: dict = {"t_init": time.time(), "sandbox": "docker",
                    "limits": {"mode": "docker", "reason": "Docker's per-container pids and memory limits",
                               **spec["limits"]["values"]}}
    servers, agent = spec["servers"], spec["agent"]
    watch = spec["watchers"]
    work = os.path.join(world_dir, "docker")
    init_dir = os.path.join(work, "init")
    os.makedirs(init_dir, mode=0o700)
    shutil.copy(spec["docker"]["init"], os.path.join(init_dir, "init.py"))
    life = open(os.path.join(init_dir, "life.lock"), "w")
    fcntl.flock(life, fcntl.LOCK_EX)              # held until the world ends (or this process dies)
    seccomp = os.path.join(work, "seccomp.json")
    with open(seccomp, "w") as f:
        json.dump(SECCOMP_PROFILE, f)
    sshd_procs: list[subprocess.Popen] = []
    sshd_logs: list[threading.Thread] = []
    helpers: list[subprocess.Popen] = []
    containers: dict[str, tuple[str, int]] = {}   # host ("agent" or address) -> (container id, PID 1's host pid)
    audit = fs_watcher = None
    try:
        subprocess.run([IP, "link", "set", "lo", "up"], check=True)
        subprocess.run([IP, "link", "add", "br0", "type", "bridge"], check=True)
        subprocess.run([IP, "link", "set", "br0", "up"], check=True)
        for host in [agent] + servers:
            wi.mount_writable(host)
        if watch["fs"]:
            fs_watcher = wi.start_fs_watcher(spec)
        wi.write_resolv_conf(agent["etc_dir"])
        for server in servers:
            wi.prepare_server_etc(server)
        audit = wi.AuditReceiver({s["address"]: os.path.join(s["dir"], "log.sock") for s in servers},
                                 os.path.join(logs, "audit.jsonl"))
        audit.start()

        runs = {"agent": agent_container(spec, seccomp, init_dir)}
        runs.update({s["address"]: server_container(spec, s, seccomp, init_dir) for s in servers})
        started = {host: subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True) for host, argv in runs.items()}
        for host, proc in started.items():
            out, err = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"docker run of {container_name(spec, host)} failed: {err.strip()}")
            containers[host] = (out.strip(), 0)
        pids = subprocess.run([DOCKER, "inspect", "-f", "{{.State.Pid}}", *(c for c, _ in containers.values())],
                              check=True, capture_output=True, text=True).stdout.split()
        containers = {host: (cid, int(pid)) for (host, (cid, _)), pid in zip(containers.items(), pids)}
        status["containers"] = {host: cid for host, (cid, _) in containers.items()}
        status["image"] = spec["docker"]["image"]
        cgroups = [process_cgroup(pid) for _cid, pid in containers.values()]

        connect_to_lan(containers["agent"][1], "v-agent", spec["agent_address"])
        helpers.append(start_services(containers["agent"][1], "agent", spec_path))
        for server in servers:
            connect_to_lan(containers[server["address"]][1], "v-" + server["address"].rsplit(".", 1)[1],
                           server["address"])
            helpers.append(start_services(containers[server["address"]][1], "server", spec_path))
        for helper in helpers:
            wi.wait_ready(helper, 60, "the model bridge / resolver of a container (see logs/world-init.log)")

        listening = []
        for server in servers:
            cid, _pid = containers[server["address"]]
            process = wi.fd_of(process_spec(wi.SSHD_COMMAND,
                                            {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                             "LANG": "C.UTF-8"}, "/", SERVER_CAPS))
            argv = runc_exec(cid, process)
            if watch["server_strace"]:
                argv = traced(containers[server["address"]][1], os.path.join(logs, f"strace-{server['address']}.txt"),
                              argv)
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    pass_fds=[process], env=RUNC_ENV)
            os.close(process)
            sshd_procs.append(proc)
            listening.append(wi.copy_sshd_log(proc, logs, server["address"], sshd_logs))
        wi.wait_listening(listening, sshd_procs, 30)
        status["t_servers_ready"] = time.time()

        if fs_watcher is not None:
            fs_watcher.wait_ready(60)
            status["t_fs_watch_ready"] = time.time()
        wi.world_ready(spec, status)
        cid, agent_pid = containers["agent"]
        process = wi.fd_of(process_spec(wi.drop_privileges(agent["uid"]) + agent["command"], agent["env"],
                                        "/workspace", AGENT_CAPS))
        argv = runc_exec(cid, process)
        if watch["agent_strace"]:
            argv = traced(agent_pid, os.path.join(logs, "strace.txt"), argv)
        status["t_agent_start"] = time.time()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, pass_fds=[process], env=RUNC_ENV)
        os.close(process)
        kill = lambda: kill_container(agent_pid)  # noqa: E731
        copies = [wi.capped_copy(stream, os.path.join(logs, name), limits.output_bytes // 2, kill, status)
                  for stream, name in ((proc.stdout, "agent.stdout"), (proc.stderr, "agent.stderr"))]
        limit_watch = wi.watch_limits(spec, cgroups, limits, proc, kill, status)
        try:
            status["agent_exit"] = proc.wait(timeout=agent["timeout_s"])
            status["timed_out"] = False
        except subprocess.TimeoutExpired:
            kill()
            status["agent_exit"] = proc.wait()
            status["timed_out"] = True
        limit_watch.join()   # before the kill: its last look reads the container's cgroup counters
        kill()     # the agent's container ends with its CLI, as its bubblewrap sandbox does
        for t in copies:
            t.join(timeout=10)
        status["t_agent_end"] = time.time()
        wi.agent_ended(spec)
    except BaseException:  # noqa: BLE001 - reported to the harness through world.json (SIGTERM included)
        status["error"] = traceback.format_exc()
    finally:
        wi.agent_ended(spec)
        t_stop = time.time()
        wi.stop_servers(sshd_procs, traced=watch["server_strace"])
        life.close()               # every container's PID 1 gets its lock and exits
        if containers:
            subprocess.run([DOCKER, "rm", "-f", *(c for c, _ in containers.values())], capture_output=True)
        for helper in helpers:
            helper.kill()
            helper.wait()
        status["stop_servers_s"] = time.time() - t_stop
        wi.collect_record(agent, servers, sshd_logs, audit, fs_watcher)
        unmount_under(world_dir)
        wi.write_status(spec, status, watch)
    return 1 if "error" in status else 0


def services(kind: str, spec_path: str) -> None:
    """Run inside one container's netns: the resolver, and on the agent's the model bridge."""
    with open(spec_path) as f:
        spec = json.load(f)
    sys.path.insert(0, spec["project_root"])
    from runner.world_init import dns_sink, model_bridge

    if kind == "agent":
        model_bridge(spec["model_port"], spec["model_socket"], os.path.join(spec["logs"], "bridge.jsonl"))
    dns_sink(os.path.join(spec["logs"], "dns.jsonl"))
    print("ready", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    if sys.argv[1] == "--services":
        services(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main(sys.argv[1]))
