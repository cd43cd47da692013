"""Where the harness's CPU over the bare loop goes, by component.

Runs N trials through `harness-run` and then the same N bare episodes (bench/run_vs_bare.py's
run_harness and run_bare: same policies, seed and concurrency), each under an eBPF on-CPU account
(bpftrace on `sched:sched_switch`): nanoseconds on a CPU per task, counted only for this script's
own process tree (followed through `sched_process_fork`, so other load on the shared machine is
left out and reported apart), keyed by the task's name (comm), its pid-namespace depth (0 on the
host, 1 in a world or bare lane, 2 in the agent's or a server's sandbox) and whether it descends
from the agent CLI (its commands) or from an sshd (commands on the servers). Those keys map to components (COMPONENTS): the agent
CLI's node threads, the agent's commands, ssh/sshd/sftp-server, commands on the servers, strace,
the harness process (or the bare lane driver; both serve the scripted model), world_init, the
filesystem watcher, the tools that build and start worlds, other.

    python bench/cpu_by_component.py [--trials 20] [--concurrency 2] [--seed 0]

Prints and writes to bench/results/cpu_by_component.json: CPU ms per trial of each component for
the harness and the bare loop, their difference and its share of the whole gap; both walls;
the accounted totals next to the rusage totals run_vs_bare measures (a cross-check). The bare
loop's figures include building its lanes' worlds (one per lane), as run_vs_bare's bare wall
does. Needs root and bpftrace (setup.sh installs it)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import click
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run_vs_bare import run_bare, run_harness  # noqa: E402
from runner.fs_watch import THREAD_NAME  # noqa: E402

TRACEFS = Path("/sys/kernel/tracing")

# Thread and process names of the node-based agent CLIs (node names its threads).
NODE_COMMS = frozenset({"node", "MainThread", "V8Worker", "V8 DefaultWorke", "SignalInspector", "libuv-worker",
                        "DelayedTaskSche", "HeapHelper", "gemini"})
SSH_COMMS = frozenset({"ssh", "scp", "sftp", "sshd", "sshd-session", "sshd-auth", "sftp-server", "rsync"})
WORLD_TOOL_COMMS = frozenset({"cp", "git", "ssh-keygen", "mount", "umount", "ip", "bwrap", "unshare", "setpriv",
                              "mkdir", "chown", "chmod", "rm", "tar", "ln", "install", "truncate", "dd",
                              "sh", "prlimit"})   # sh: joining a trial's cgroup before exec (runner.limits)

# Tags the bpftrace program gives a task (see PROGRAM).
TAG_OTHER, TAG_BENCH, TAG_AGENT_CHILD, TAG_SSHD_CHILD = 0, 1, 2, 3

AGENT_CLI = "agent CLI (node threads)"
AGENT_COMMANDS = "agent's commands (shells, tools)"
SSH = "ssh, sshd, sftp-server"
SERVER_COMMANDS = "commands on the servers (audit wrapper, logger, shells)"
STRACE = "strace"
# The run's eBPF recorder (its task name cut to 15 characters); its programs run in the kernel on the
# traced tasks' own time, so they count towards those tasks.
SYSCALL_RECORDER = "eBPF syscall recorder (loader, userspace)"
SYSCALL_RECORDER_COMM = "syscall-recorder"[:15]
DRIVER = "harness process / bare lane driver (python, scripted model)"
WORLD_INIT = "world_init (python3)"
FS_WATCHER = "fs watcher (python)"
FS_WATCH_THREAD = THREAD_NAME.decode()
WORLD_TOOLS = "world tools (cp, git, ssh-keygen, mount, ip, bwrap, ...)"
BENCH = "this bench script"
OTHER = "other"
COMPONENTS = [AGENT_CLI, AGENT_COMMANDS, SSH, SERVER_COMMANDS, STRACE, SYSCALL_RECORDER, DRIVER, WORLD_INIT,
              FS_WATCHER, WORLD_TOOLS, OTHER, BENCH]


def bpftrace_program() -> str:
    """On-CPU nanoseconds per (pid-namespace depth, tag, comm) for the tree of process $1 (@cpu_ns),
    per comm for everything else (@elsewhere_ns). Whole nanoseconds per slice: dividing each slice
    to coarser units would lose the remainder of every slice. Tags and depths are kept per process
    from its fork and exec: an exiting task has left its namespaces by its last slices. A pid (tid)
    leaves the maps at sched_process_free, after its last switch: pids are reused (pid_max may be
    32768)."""
    from_node = " || ".join(f'comm == "{c}"' for c in sorted(NODE_COMMS))
    return f"""
BEGIN {{ @ours[$1] = 1; printf("ready\\n"); }}
tracepoint:sched:sched_process_fork /@ours[pid]/ {{
  @ours[args->child_pid] = 1;
  if (@tag[pid] == {TAG_AGENT_CHILD} || {from_node}) {{ @tag[args->child_pid] = {TAG_AGENT_CHILD}; }}
  else if (@tag[pid] == {TAG_SSHD_CHILD} || comm == "sshd" || comm == "sshd-session") {{
    @tag[args->child_pid] = {TAG_SSHD_CHILD};
  }}
}}
tracepoint:sched:sched_process_exec /@ours[pid]/ {{ @level[pid] = curtask->thread_pid->level + 1; }}
tracepoint:sched:sched_process_free {{ delete(@ours[args->pid]); delete(@tag[args->pid]); delete(@level[args->pid]); }}
tracepoint:sched:sched_switch {{
  $began = @start[args->prev_pid];
  if ($began) {{
    if (@ours[pid]) {{
      $tag = @tag[pid];
      if (pid == $1) {{ $tag = {TAG_BENCH}; }}
      $level = @level[pid];
      if ($level == 0) {{ $level = curtask->thread_pid->level + 1; }}
      @cpu_ns[$level - 1, $tag, args->prev_comm] = sum(nsecs - $began);
    }} else {{
      @elsewhere_ns[args->prev_comm] = sum(nsecs - $began);
    }}
    delete(@start[args->prev_pid]);
  }}
  if (args->next_pid != 0) {{ @start[args->next_pid] = nsecs; }}
}}
END {{ clear(@start); clear(@ours); clear(@tag); clear(@level); }}
"""


@dataclass(frozen=True)
class TaskCpu:
    level: int          # pid-namespace depth: 0 on the host
    tag: int            # TAG_*
    comm: str
    ns: int


def parse_bpftrace_output(text: str) -> tuple[list[TaskCpu], dict[str, int]]:
    """bpftrace -f json's printed maps: @cpu_ns (keys "level,tag,comm": the comm last, as
    the only part that may hold a comma) and @elsewhere_ns (comm)."""
    ours: list[TaskCpu] = []
    elsewhere: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"bpftrace output line {number} is not JSON ({exc}): {line[:200]!r}") from None
        if message.get("type") != "map":
            continue
        for name, entries in message["data"].items():
            if name == "@cpu_ns":
                for key, ns in entries.items():
                    level, tag, comm = key.split(",", 2)
                    ours.append(TaskCpu(int(level), int(tag), comm, int(ns)))
            elif name == "@elsewhere_ns":
                for comm, ns in entries.items():
                    elsewhere[comm] = elsewhere.get(comm, 0) + int(ns)
    return ours, elsewhere


def component(task: TaskCpu) -> str:
    """The component a task belongs to. The venv's python is the harness process in a harness run,
    the lane driver (PID 1 of the lane's namespaces) in a bare run; the fs watcher is a thread of
    world_init under its own task name."""
    if task.tag == TAG_BENCH:
        return BENCH
    if task.comm in NODE_COMMS:
        return AGENT_CLI
    if task.comm in SSH_COMMS:
        return SSH
    if task.tag == TAG_AGENT_CHILD:
        return AGENT_COMMANDS
    if task.tag == TAG_SSHD_CHILD:
        return SERVER_COMMANDS
    if task.comm == "strace":
        return STRACE
    if task.comm == SYSCALL_RECORDER_COMM:
        return SYSCALL_RECORDER
    if task.comm == FS_WATCH_THREAD:
        return FS_WATCHER
    if task.comm == "python3":
        return WORLD_INIT
    if task.comm in ("python", "harness-run"):
        return DRIVER
    if task.comm in WORLD_TOOL_COMMS:
        return WORLD_TOOLS
    return OTHER


@dataclass
class Account:
    ours: list[TaskCpu]
    elsewhere: dict[str, int]


class OnCpuAccounting:
    """bpftrace accounting the on-CPU time of `root_pid`'s process tree from start() to stop()."""

    def __init__(self, root_pid: int):
        self.root_pid = root_pid
        self.proc: subprocess.Popen | None = None
        self.stderr = None
        self.named: tempfile.TemporaryDirectory | None = None

    def start(self, attach_timeout: float = 120.0) -> None:
        bpftrace = shutil.which("bpftrace")
        if bpftrace is None:
            raise click.ClickException("bpftrace is missing: apt-get install bpftrace (setup.sh installs it)")
        if os.geteuid() != 0:
            raise click.ClickException("bpftrace needs root to attach its probes: run this as root")
        if not (TRACEFS / "events").is_dir():
            subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=False)
            if not (TRACEFS / "events").is_dir():
                raise click.ClickException(f"no tracefs at {TRACEFS} and mounting it failed: "
                                           f"mount -t tracefs nodev {TRACEFS}")
        self.stderr = tempfile.TemporaryFile()
        env = {**os.environ, "BPFTRACE_MAP_KEYS_MAX": "65536"}
        # Started under a name of its own: on a shared machine a `pkill bpftrace` meant for someone
        # else's tracer ended this account early (it then exits 0 as if done).
        self.named = tempfile.TemporaryDirectory(prefix="oncpu-account-")
        named_bpftrace = Path(self.named.name) / "oncpu-account"
        named_bpftrace.symlink_to(bpftrace)
        self.proc = subprocess.Popen([str(named_bpftrace), "-f", "json", "-e", bpftrace_program(), str(self.root_pid)],
                                     stdout=subprocess.PIPE, stderr=self.stderr, env=env, text=True)
        # Past the timeout bpftrace is killed, which ends the reading below.
        watchdog = threading.Timer(attach_timeout, self.proc.kill)
        watchdog.start()
        try:
            # "attached_probes" ("Attaching N probes" in text mode) comes before the attaching; BEGIN runs after it
            attached = False
            for line in self.proc.stdout:
                message = json.loads(line)
                attached = attached or message.get("type") == "attached_probes"
                if attached and message == {"type": "printf", "data": "ready\n"}:
                    return
        finally:
            watchdog.cancel()
        self.proc.kill()
        self.proc.wait()
        raise click.ClickException(f"bpftrace did not attach its probes within {attach_timeout:.0f} s "
                                   f"(exit {self.proc.returncode}): "
                                   f"{self._stderr_text()[-2000:]}")

    def _stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def stop(self) -> Account:
        if self.proc.poll() is not None:   # e.g. signalled by someone's `pkill bpftrace`: a partial account
            raise click.ClickException(f"bpftrace ended before the measured run did (exit {self.proc.returncode}): "
                                       f"{self._stderr_text()[-2000:]}")
        self.proc.send_signal(signal.SIGINT)   # bpftrace prints its maps on SIGINT
        try:
            out, _ = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise click.ClickException("bpftrace did not end within 120 s of SIGINT") from None
        self.named.cleanup()
        ours, elsewhere = parse_bpftrace_output(out)
        if not ours:
            raise click.ClickException(f"bpftrace printed no accounting (exit {self.proc.returncode}): "
                                       f"{self._stderr_text()[-2000:]}")
        return Account(ours, elsewhere)


def by_component(account: Account, trials: int) -> pd.Series:
    """CPU ms per trial of each component."""
    df = pd.DataFrame([{"component": component(t), "ns": t.ns} for t in account.ours])
    return (df.groupby("component")["ns"].sum() / 1e6 / trials).reindex(COMPONENTS, fill_value=0.0)


def top_comms(account: Account, name: str, n: int = 8) -> dict[str, float]:
    """The comms of one component with the most CPU (ms over the run): what "other" holds."""
    df = pd.DataFrame([{"comm": t.comm, "ns": t.ns} for t in account.ours if component(t) == name])
    if df.empty:
        return {}
    return {c: round(ns / 1e6, 1) for c, ns in df.groupby("comm")["ns"].sum().nlargest(n).items()}


@click.command()
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Default: one per CPU core.")
@click.option("--seed", type=int, default=0, show_default=True)
def main(trials: int, concurrency: int | None, seed: int) -> None:
    concurrency = concurrency or os.cpu_count() or 1
    accounting = OnCpuAccounting(os.getpid())
    base = Path(tempfile.mkdtemp(prefix="bench-cpu-by-component-", dir="/var/tmp"))
    try:
        accounting.start()
        harness = run_harness(base / "run", trials, concurrency, seed)
        harness_account = accounting.stop()
        accounting.start()
        harness_valid = sum(json.loads(r.read_text())["valid"] for r in (base / "run" / "trials").glob("*/result.json"))
        bare_wall, bare_cpu, episodes = run_bare(base / "bare", range(trials), concurrency, seed, True)
        bare_account = accounting.stop()
    finally:
        if accounting.proc is not None and accounting.proc.poll() is None:
            accounting.proc.kill()
        shutil.rmtree(base, ignore_errors=True)
    harness_ms, bare_ms = by_component(harness_account, trials), by_component(bare_account, trials)
    gap = harness_ms - bare_ms
    total_gap = float(gap.sum())
    table = pd.DataFrame({"harness_ms_per_trial": harness_ms.round(1), "bare_ms_per_trial": bare_ms.round(1),
                          "difference_ms": gap.round(1),
                          "share_of_gap": (gap / total_gap).round(3) if total_gap else 0.0})
    table.loc["total"] = [round(float(harness_ms.sum()), 1), round(float(bare_ms.sum()), 1), round(total_gap, 1), 1.0]
    figures = {
        "trials": trials, "concurrency": concurrency, "seed": seed, "cpus": os.cpu_count(),
        "harness_wall_s": round(harness["wall"], 2), "bare_wall_s": round(bare_wall, 2),
        "ratio": round(harness["wall"] / bare_wall, 3),
        # the components compare like with like only when every trial and episode played its script out
        "harness_valid": harness_valid, "bare_finished": sum(e["finished"] for e in episodes),
        "components": table.to_dict(orient="index"),
        # cross-check with run_vs_bare's figures: the harness's tree (rusage, without this script) and
        # the bare lanes' CPU from their servers being up (without building their worlds)
        "harness_tree_cpu_ms_per_trial_rusage": round(harness["tree_cpu"] / trials * 1000, 1),
        "bare_cpu_ms_per_episode_rusage": round(bare_cpu / trials * 1000, 1),
        "other_comms_ms": {"harness": top_comms(harness_account, OTHER),
                           "bare": top_comms(bare_account, OTHER)},
        # CPU outside this script's tree during each run: the shared machine's other load and kernel threads
        "elsewhere_cpu_s": {"harness": round(sum(harness_account.elsewhere.values()) / 1e9, 1),
                            "bare": round(sum(bare_account.elsewhere.values()) / 1e9, 1)},
    }
    with pd.option_context("display.width", 200, "display.max_colwidth", 70):
        print(table.to_string())
    print(json.dumps({k: v for k, v in figures.items() if k != "components"}, indent=2))
    out = ROOT / "bench" / "results" / "cpu_by_component.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
