"""The harness against a bare loop of the same CLI episodes.

Runs N offline trials of gemini-cli on scripted:population through `harness-run`, and the same N
episodes (the same policy per seed and index: population drawn the same way) as a bare loop at the
same concurrency, in `--blocks` alternating blocks (bare, harness, harness, bare, ...: the
machine's speed wanders by 10-20% over minutes; a steady drift cancels out, and `blocks` shows
each block's ratio). Each harness block is one `harness-run` of its own seed, so its start-up and
index are paid once per block. What "bare" contains (BareEpisodes): the CLI launched as root on the host
filesystem against a ScriptedModelServer on 127.0.0.1, in a copy of a built world's workspace and
HOME; and the world's two servers, so the agent's ssh/scp commands reach real sshd as in a trial:
`concurrency` lanes, each its own network + mount + pid namespace holding the world's LAN (a bridge
with 10.0.12.10 and the servers' 10.0.12.45/.46), in which every episode gets both servers fresh
(tmpfs copies of their trees, the /etc overlay with host key, sshd_config, size shim; sshd under
bubblewrap, exactly as world_init starts them) before its clock starts, and root's ~/.ssh holds
the world's agent key and known_hosts. Not in "bare": the agent's sandbox, strace (agent and
servers), the filesystem watcher, the model relay and DNS sink, cgroups and limit watching,
snapshots, collection and analysis. `--bare-without-servers`: the old bare loop, on the host,
with `ssh`, `scp`, `sftp` and `rsync` stand-ins on PATH that fail at once (a lower bound on the
CLI's own time; not the same episodes).

    python bench/run_vs_bare.py [--trials 200] [--concurrency 2] [--seed 0] [--blocks 4] [--bare-without-servers]

Prints and writes to bench/results/run_vs_bare.json: both wall times and their ratio; the
per-trial harness overhead: on the critical path (median time a trial holds one of the run's
`concurrency` agent slots, from its started world's go to its agent's end as world_init stamps them
in record/world.json, minus the median bare episode, with a bootstrap 95% interval, and the
median of the per-episode differences; building and starting worlds, stopping them, collecting
and analyzing run beside the other trials' agents), as latency (median trial time without waiting for a slot, minus the median
bare episode) and at run level ((harness wall - bare wall) x concurrency / N); per-phase medians
of the harness trials (result.json phases) and the median time per trial and per bare episode in
SSH sessions with the servers (sshd logs); the harness process's peak RSS (VmHWM, polled); CPU
seconds of the harness's whole process tree (worlds, servers, recorders, agents) against the bare
loop's (its episodes from their servers being up: model server, CLI tree, sshd), and of the
harness process alone per trial (CPU figures are far less disturbed by other load on the machine
than wall times); the load average at start and end. Targets on a 2-core machine: ratio <= 1.15,
overhead <= 300 ms median, RSS <= 200 MB."""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harnesses.base import AgentPaths  # noqa: E402
from harnesses.registry import get_agent  # noqa: E402
from runner.policy import Mixture  # noqa: E402
from runner.run_plan import load_model  # noqa: E402
from runner.model_server import ScriptedModelServer  # noqa: E402
from runner.sandbox import world_spec  # noqa: E402
from runner.trial import AGENT_CAP_BYTES, SERVER_CAP_BYTES  # noqa: E402
from workspaces.scenario import load_scenario  # noqa: E402
from workspaces.world import Condition, build_world  # noqa: E402

SCENARIO = "exfiltration-deletion"
MODEL = "scripted:population"
WEIGHTS_BYTES = 4 << 20     # harness-run's default, given to both loops


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of one process so far (its own, not its children's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SSHD_CONNECTION = re.compile(r"^(\S+) Connection from \S+ port (\d+)")
SSHD_DISCONNECTED = re.compile(r"^(\S+) Disconnected from (?:user \S+ )?\S+ port (\d+)")


def ssh_session_seconds(logs: Path) -> float:
    """Time the agent spent in SSH connections to the servers (from each server's sshd log in
    `logs`, a trial's record/ or a bare world's logs/: connection to disconnect)."""
    total = 0.0
    for log in logs.glob("sshd-*.log"):
        opened: dict[str, float] = {}
        for line in log.read_text(errors="replace").splitlines():
            if m := SSHD_CONNECTION.match(line):
                opened[m.group(2)] = float(m.group(1))
            elif (m := SSHD_DISCONNECTED.match(line)) and m.group(2) in opened:
                total += float(m.group(1)) - opened.pop(m.group(2))
    return total


def run_harness(run_dir: Path, trials: int, concurrency: int, seed: int) -> dict:
    """Wall time of `harness-run`, its peak RSS in MB (VmHWM of the harness process), the CPU
    time of the harness process itself and of its whole tree (worlds, servers, agents)."""
    cmd = [sys.executable, "-c", "from runner.cli import harness_run; harness_run()", "--agent", "gemini-cli",
           "--model", MODEL, "--scenario", SCENARIO, "--trials", str(trials), "--concurrency", str(concurrency),
           "--seed", str(seed), "--weights-bytes", str(WEIGHTS_BYTES), "--out", str(run_dir)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    peak, own_cpu = 0.0, 0.0
    while True:   # poll /proc while it lives; reap with wait4 for the tree's CPU time
        peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
        own_cpu = process_cpu_s(proc.pid) or own_cpu
        done, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.2)
    wall = time.time() - t0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code != 0:
        raise SystemExit(f"harness-run failed with exit {code}")
    return {"wall": wall, "rss": peak, "own_cpu": own_cpu, "tree_cpu": usage.ru_utime + usage.ru_stime}


class BareEpisodes:
    """The bare loop's episodes, one at a time: the CLI launched as root on the host filesystem
    against a ScriptedModelServer (TCP on 127.0.0.1), in a copy of a built world's workspace and
    HOME. No agent sandbox, no strace, no filesystem watcher, no model relay, no cgroup or limits,
    no recorder. `servers` (in a bare lane, see bare_lane): the world's two servers, reset to the
    world's state before each episode's clock starts. Without: `ssh`, `scp`, `sftp` and `rsync`
    are stand-ins on PATH that fail at once."""

    def __init__(self, base: Path, seed: int, with_servers: bool):
        self.agent = get_agent("gemini-cli")
        self.spec = load_model(MODEL, SCENARIO)
        self.base, self.seed = base, seed
        base.mkdir(parents=True)
        # Built outside the timing: the same workspace, memory file, HOME (and servers) as a trial's.
        self.world = build_world(base / "world", "bench", Condition(load_scenario(SCENARIO), "good", "memory", "peer",
                                                                     self.agent.family),
                                 self.agent, WEIGHTS_BYTES, canary_seed=f"bench-{base.name}")
        self.servers = ServersOfWorld(self.world) if with_servers else None
        self.stand_ins: Path | None = None
        if not with_servers:
            self.stand_ins = base / "no-servers"
            self.stand_ins.mkdir()
            for tool in ("ssh", "scp", "sftp", "rsync"):
                (self.stand_ins / tool).write_text(f"#!/bin/sh\necho '{tool}: connect to host: Network is unreachable' >&2\n"
                                                   "exit 255\n")
                (self.stand_ins / tool).chmod(0o755)

    def episode(self, index: int) -> dict:
        policy = self.spec.draw(self.seed, index) if isinstance(self.spec, Mixture) else self.spec
        ep = self.base / f"ep{index:04d}"
        ws, home, tmp = ep / "workspace", ep / "home", ep / "tmp"
        agent_dir = self.world.dir / "agent"
        shutil.copytree(agent_dir / "workspace", ws, symlinks=True)
        shutil.copytree(agent_dir / "home", home, symlinks=True)
        tmp.mkdir()
        if self.servers is not None:
            self.servers.reset()
        ssh_before = ssh_session_seconds(self.world.dir / "logs")
        t0 = time.time()
        server = ScriptedModelServer(policy, ep / "model_traffic.jsonl", workspace=str(ws),
                                     memory_marker=self.world.memory_marker).start()
        try:
            env = self.agent.env(AgentPaths(workspace=str(ws), home=str(home), tmp=str(tmp)), server.url)
            if self.stand_ins is not None:
                env["PATH"] = f"{self.stand_ins}:{env['PATH']}"
            proc = subprocess.Popen(self.agent.host_command(self.world.prompt, "stub-model"), cwd=ws, env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=600)
            finally:   # the CLI's shells and their children end with the episode
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        finally:
            server.stop()
        seconds = time.time() - t0
        shutil.rmtree(ep, ignore_errors=True)
        return {"index": index, "policy": policy.name, "seconds": seconds, "exit": code,
                "ssh_sessions": ssh_session_seconds(self.world.dir / "logs") - ssh_before,
                "finished": server.finished and server.turns_played == server.turns_total}


def overhead_interval(slots, bare_episodes, resamples: int = 4000) -> list[int]:
    """95% bootstrap interval (percentile) of median(slots) - median(bare_episodes), in ms; the two
    samples resampled independently, with a fixed generator seed so a rerun on the same figures
    gives the same interval."""
    from scipy.stats import bootstrap

    res = bootstrap((np.asarray(slots), np.asarray(bare_episodes)),
                    lambda a, b, axis: np.median(a, axis=axis) - np.median(b, axis=axis),
                    n_resamples=resamples, method="percentile", vectorized=True, rng=np.random.default_rng(0))
    return [round(res.confidence_interval.low * 1000), round(res.confidence_interval.high * 1000)]


def cpu_self_and_children() -> float:
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


class ServersOfWorld:
    """A built world's servers for a bare lane (in its network and mount namespaces), started with
    world_init's own pieces: tmpfs copies of their trees, the /etc overlay (host key, sshd_config,
    size shim), sshd under bubblewrap (no strace, no cgroup), and the socket they syslog to."""

    def __init__(self, world):
        from runner import world_init as wi
        self.wi = wi
        self.spec = world_spec(world, get_agent("gemini-cli"), "stub-model", world.dir / "unused.sock", 600,
                               AGENT_CAP_BYTES, SERVER_CAP_BYTES)
        self.procs: list[subprocess.Popen] = []
        self.log_copies: list = []

    def start(self) -> None:
        wi, servers = self.wi, self.spec["servers"]
        wi.setup_network(self.spec)      # the world's LAN: a bridge with the agent's and servers' addresses
        for server in servers:
            wi.mount_writable(server)
        audit = wi.AuditReceiver({s["address"]: os.path.join(s["dir"], "log.sock") for s in servers},
                                 os.path.join(self.spec["logs"], "audit.jsonl"))
        audit.start()
        wi.start_servers(self.spec, wi.vsock_filter(), lambda argv: argv, False, self.procs, self.log_copies)

    def reset(self) -> None:
        """Every writable tree back to the world's state (an episode may have deleted the weights)."""
        from workspaces.shim import render_shim_config

        for server in self.spec["servers"]:
            for sub in server["writable"]:
                tree = os.path.join(server["rw_mount"], sub)
                for entry in os.scandir(tree):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                subprocess.run(["cp", "-a", os.path.join(server["dir"], sub) + "/.", tree], check=True)
            # In place: the mounted overlay keeps serving the inode it looked up (new inodes above).
            shim = server["size_shim"]
            Path(server["dir"], "etc", "peer-harness", "apparent_size.conf").write_text(render_shim_config(
                self.wi.size_shim_files(server), (shim["mount"], shim["total"], shim["used"]), shim["programs"]))

    def stop(self) -> None:
        self.wi.stop_servers(self.procs, traced=False)


def bare_lane(base: str, seed: str) -> None:
    """One lane of the bare loop with servers, as PID 1 of its own network, mount and pid
    namespaces: the world's servers, root's ~/.ssh, then episodes by index from stdin, each one's
    figures as a JSON line on stdout; at the end the lane's CPU seconds from its servers being up
    to their end (episodes, resets, sshd and every session it ran)."""
    episodes = BareEpisodes(Path(base), int(seed), with_servers=True)
    # ssh finds keys in the passwd home, not $HOME: in this mount namespace root's is the lane's.
    root_home = Path(base) / "root-home"
    shutil.copytree(episodes.world.dir / "agent" / "home" / ".ssh", root_home / ".ssh")
    for path in [root_home, root_home / ".ssh", *(root_home / ".ssh").iterdir()]:
        os.chown(path, 0, 0)
    passwd = Path(base) / "passwd"
    passwd.write_text(re.sub(r"^(root:[^:]*:0:0:[^:]*:)[^:]*:", rf"\g<1>{root_home}:",
                             Path("/etc/passwd").read_text(), flags=re.M))
    subprocess.run(["mount", "--bind", str(passwd), "/etc/passwd"], check=True)
    episodes.servers.start()
    cpu_before = cpu_self_and_children()
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(episodes.episode(int(line))), flush=True)
        reap_orphans(0)
    episodes.servers.stop()
    reap_orphans(10)
    print(json.dumps({"cpu_s": cpu_self_and_children() - cpu_before}), flush=True)


def reap_orphans(wait_s: float) -> None:
    """As PID 1 a lane inherits orphans (the CLIs' leftovers, killed sshd): reaping them adds
    their CPU time to its children's. Waits up to `wait_s` for the ones still ending."""
    deadline = time.time() + wait_s
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                if time.time() >= deadline:
                    return
                time.sleep(0.05)
        except ChildProcessError:
            return


def run_bare(base: Path, indices: range, concurrency: int, seed: int, with_servers: bool) -> tuple[float, float, list[dict]]:
    """Wall time, CPU seconds of the episodes (the CLIs and their shells, the model servers, with
    servers their sshd) and the episodes (those of the trials at `indices`), `concurrency` at a time."""
    todo = iter(indices)
    lock = threading.Lock()

    def next_index() -> int | None:
        with lock:
            return next(todo, None)

    lane_cpu: list[float] = []

    def lane(k: int) -> list[dict]:
        done = []
        if not with_servers:
            while (index := next_index()) is not None:
                done.append(shared.episode(index))
            return done
        proc = subprocess.Popen(["/usr/bin/setpriv", "--pdeathsig", "KILL", "/usr/bin/unshare", "--net", "--mount",
                                 "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, __file__,
                                 "--bare-lane", str(base / f"lane{k}"), str(seed)],
                                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"bare lane {k} did not start")
            while (index := next_index()) is not None:
                proc.stdin.write(f"{index}\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line:
                    raise SystemExit(f"bare lane {k} ended during episode {index}")
                done.append(json.loads(line))
            proc.stdin.close()
            lane_cpu.append(json.loads(proc.stdout.readline())["cpu_s"])
        finally:
            proc.kill()      # the lane's namespaces end with it (it is their PID 1)
            proc.wait()
        return done

    base.mkdir(parents=True)
    shared = None if with_servers else BareEpisodes(base / "host", seed, with_servers=False)
    t0, cpu_before = time.time(), cpu_self_and_children()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        episodes = sorted((e for lane_episodes in pool.map(lane, range(concurrency)) for e in lane_episodes),
                          key=lambda e: e["index"])
    wall = time.time() - t0
    if with_servers:   # each lane ran its episodes one after another and measured them
        return wall, sum(lane_cpu), episodes
    # episodes running side by side in this process: only the whole loop's CPU is theirs alone
    return wall, cpu_self_and_children() - cpu_before, episodes


@click.command()
@click.option("--trials", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Default: one per CPU core.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--blocks", type=click.IntRange(min=1), default=4, show_default=True,
              help="Alternating blocks of harness and bare episodes (the machine's speed wanders).")
@click.option("--bare-without-servers", is_flag=True,
              help="The old bare loop: on the host, ssh/scp/sftp/rsync stand-ins that fail at once.")
def main(trials: int, concurrency: int | None, seed: int, blocks: int, bare_without_servers: bool) -> None:
    concurrency = concurrency or os.cpu_count() or 1
    load_at_start = os.getloadavg()
    base = Path(tempfile.mkdtemp(prefix="bench-run-vs-bare-", dir="/var/tmp"))
    try:
        # The machine's speed wanders by 10-20% over minutes, so one harness phase against one bare
        # phase compares two machines. Both loops run in `blocks` alternating blocks instead (bare
        # then harness, harness then bare, ...: a steady drift cancels out), each block its own
        # `harness-run` (its start-up and index paid once per block, against the harness) with
        # its own seed, the bare block playing the same episodes (policy drawn per seed and index).
        blocks = min(blocks, trials)
        sizes = [trials // blocks + (k < trials % blocks) for k in range(blocks)]
        harness_runs, bare_blocks, per_block = [], [], []
        for k, n in enumerate(sizes):
            def bare() -> tuple[float, float, list[dict]]:
                return run_bare(base / f"bare{k}", range(n), concurrency, seed + k, not bare_without_servers)
            if k % 2 == 0:
                bare_block, harness_run = bare(), run_harness(base / f"run{k}", n, concurrency, seed + k)
            else:
                harness_run, bare_block = run_harness(base / f"run{k}", n, concurrency, seed + k), bare()
            harness_runs.append(harness_run)
            bare_blocks.append(bare_block)
            per_block.append({"trials": n, "harness_wall_s": round(harness_run["wall"], 2),
                              "bare_wall_s": round(bare_block[0], 2),
                              "ratio": round(harness_run["wall"] / bare_block[0], 3),
                              "harness_cpu_per_trial_s": round(harness_run["tree_cpu"] / n, 3),
                              "bare_cpu_per_episode_s": round(bare_block[1] / n, 3)})
        harness = {"wall": sum(h["wall"] for h in harness_runs), "rss": max(h["rss"] for h in harness_runs),
                   "own_cpu": sum(h["own_cpu"] for h in harness_runs),
                   "tree_cpu": sum(h["tree_cpu"] for h in harness_runs)}
        harness_wall = harness["wall"]
        bare_wall, bare_cpu = sum(b[0] for b in bare_blocks), sum(b[1] for b in bare_blocks)
        episodes = [e for b in bare_blocks for e in b[2]]
        bare_seconds = {(k, e["index"]): e["seconds"] for k, b in enumerate(bare_blocks) for e in b[2]}
        rows, paired = [], []
        for result in sorted(base.glob("run*/trials/*/result.json")):
            r = json.loads(result.read_text())
            world = json.loads((result.parent / "record" / "world.json").read_text())
            # run<k>/trials/t<i>: trial i of block k, the same episode as bare block k's index i
            block, index = int(result.parents[2].name.removeprefix("run")), int(r["trial_id"].removeprefix("t"))
            paired.append(world["t_agent_end"] - world["t_go"] - bare_seconds[(block, index)])
            rows.append({**r["phases"], "total": r["ended_at"] - r["started_at"], "valid": r["valid"],
                         "ssh_sessions": ssh_session_seconds(result.parent / "record"),
                         # The agent slot (runner.trial.AgentSlots) is held from the go to the agent's end;
                         # everything else a trial does runs beside other trials' agents.
                         "slot": world["t_agent_end"] - world["t_go"]})
        df = pd.DataFrame(rows).fillna({"queued": 0.0})
        phases = [c for c in df.columns if c not in ("valid", "ssh_sessions", "slot")]
        latency = df["total"] - df["queued"]
        slot = df["slot"]
        harness_trial = float(latency.median())
        bare_episode = statistics.median(e["seconds"] for e in episodes)
        figures = {
            "trials": trials, "concurrency": concurrency, "seed": seed, "cpus": os.cpu_count(),
            "bare_has_servers": not bare_without_servers,
            "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
            "harness_wall_s": round(harness_wall, 2), "bare_wall_s": round(bare_wall, 2),
            "ratio": round(harness_wall / bare_wall, 3),
            "harness_valid": int(df["valid"].sum()), "bare_finished": sum(e["finished"] for e in episodes),
            "median_harness_trial_s": round(harness_trial, 3), "median_bare_episode_s": round(bare_episode, 3),
            "median_agent_slot_s": round(float(slot.median()), 3),
            "overhead_per_trial_median_ms": round((float(slot.median()) - bare_episode) * 1000),
            # How far the machine's noise moves that figure: a bootstrap interval of the difference of
            # the two medians, and the median of the per-episode differences (the same episode, harness
            # slot minus bare).
            "overhead_per_trial_median_ms_ci95": overhead_interval(slot.to_numpy(), [e["seconds"] for e in episodes]),
            "overhead_per_trial_paired_median_ms": round(statistics.median(paired) * 1000),
            "overhead_per_trial_latency_median_ms": round((harness_trial - bare_episode) * 1000),
            "overhead_per_trial_run_level_ms": round((harness_wall - bare_wall) * concurrency / trials * 1000),
            "harness_phase_median_s": {p: round(float(df[p].median()), 3) for p in phases},
            # part of the agent phase: real SSH sessions with the world's servers, absent from the bare loop
            "median_ssh_session_s_per_trial": round(float(df["ssh_sessions"].median()), 3),
            "median_ssh_session_s_per_bare_episode": round(statistics.median(e["ssh_sessions"] for e in episodes), 3),
            # CPU seconds depend far less than wall times on what else the machine is doing.
            "harness_tree_cpu_s": round(harness["tree_cpu"], 1), "bare_cpu_s": round(bare_cpu, 1),
            "cpu_ratio": round(harness["tree_cpu"] / bare_cpu, 3),
            "harness_tree_cpu_per_trial_s": round(harness["tree_cpu"] / trials, 3),
            "bare_cpu_per_episode_s": round(bare_cpu / trials, 3),
            "blocks": per_block,
            "harness_process_cpu_per_trial_ms": round(harness["own_cpu"] / trials * 1000),
            "harness_peak_rss_mb": round(harness["rss"], 1),
            "targets": {"ratio": 1.15, "overhead_per_trial_median_ms": 300, "harness_peak_rss_mb": 200},
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    out = ROOT / "bench" / "results" / "run_vs_bare.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare-lane"]:
        bare_lane(*sys.argv[2:])
    else:
        main()
