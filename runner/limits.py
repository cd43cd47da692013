"""Per-trial resource limits: processes (pids), memory, output and disk. Standard library only
(world_init.py imports it under the system Python).

Where the kernel allows it, the sandboxes of one trial (the agent and its servers, with every
process they start) share one cgroup made for the trial: cgroup v2 (`pids.max`, `memory.max`)
on a unified hierarchy, or the v1 `pids` and `memory` controllers on a legacy/hybrid one. The
cgroup is nested under the harness's own cgroup, so a trial never escapes the limits the harness
itself runs under. A limit hit shows in the controller's event counters (`pids.events` max,
`memory.events` / `memory.oom_control` oom_kill), which world_init watches. Where the kernel has
the cpu controller the trial's cgroup carries its CPU priority too (set_cpu_priority).

Without usable controllers (no write access, a v2 hierarchy whose parent cannot delegate) the
agent gets rlimits instead (`prlimit`: RLIMIT_NPROC and RLIMIT_DATA). That mode is weaker:
RLIMIT_NPROC counts every process of uid 61000 on the host, which all concurrent trials' agents
share, and neither limit can be observed directly. `mode` says which was used; it is recorded in
the trial's world.json and result.json.

Output (everything the world writes into its record directory: the CLI's stdout/stderr, strace,
the watchers' logs) and disk (each writable tree is a size-capped tmpfs, runner.trial's caps) are
watched by world_init in every mode.
"""
from __future__ import annotations

import os
import re
import signal
import time
from collections import namedtuple

CGROUP_ROOT = "/sys/fs/cgroup"
PRLIMIT = "/usr/bin/prlimit"

# world_init imports this module under the system Python for every trial: plain classes and
# os.path, not dataclasses and pathlib (whose imports cost that process ~25 ms of CPU).
# pids: processes + threads of the agent and the servers together (an ordinary gemini-cli trial
# peaks below 100). memory_bytes: resident memory incl. tmpfs pages the trial writes. output_bytes:
# the world's record directory (logs/), strace output included, which the recorder must still
# parse (about 10 MB/s).
Limits = namedtuple("Limits", ["pids", "memory_bytes", "output_bytes"], defaults=[512, 4 << 30, 128 << 20])


class TrialCgroup:
    """The cgroup directories of one trial (one per v1 controller, one for v2), or none (rlimit mode)."""

    def __init__(self, mode: str, dirs: dict[str, str] | None = None, reason: str | None = None):
        self.mode = mode                # "cgroup-v2", "cgroup-v1" or "rlimit"
        self.dirs = dirs if dirs is not None else {}    # controller ("pids", "memory", or "unified") -> dir
        self.reason = reason            # why cgroups are not used (rlimit mode)

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in dict.fromkeys(self.dirs.values())]

    def to_json(self) -> dict:
        return {"mode": self.mode, "dirs": dict(self.dirs), "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict) -> "TrialCgroup":
        return cls(**data)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _own_cgroups(pid: int | str = "self") -> dict[str, str]:
    """controller -> path of the process's cgroup ("" key: the v2 unified hierarchy)."""
    out = {}
    for line in _read(f"/proc/{pid}/cgroup").splitlines():
        _hid, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def _is_v2_unified() -> bool:
    return os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers"))


def create_trial_cgroup(name: str, limits: Limits) -> TrialCgroup:
    """Make the trial's cgroup(s) with the limits set; falls back to rlimit mode with the reason."""
    try:
        own = _own_cgroups()
        if _is_v2_unified():
            return _create_v2(name, own.get("", "/"), limits)
        if all(os.path.exists(os.path.join(CGROUP_ROOT, c, "cgroup.procs")) for c in ("pids", "memory")):
            return _create_v1(name, own, limits)
        return TrialCgroup("rlimit", reason="no cgroup v2 hierarchy and no v1 pids+memory controllers mounted")
    except OSError as exc:
        return TrialCgroup("rlimit", reason=f"cannot create a cgroup: {exc}")


def _create_v1(name: str, own: dict[str, str], limits: Limits) -> TrialCgroup:
    dirs = {}
    try:
        for ctl in ("pids", "memory"):
            d = os.path.join(CGROUP_ROOT, ctl, own.get(ctl, "/").lstrip("/"), name)
            os.mkdir(d)
            dirs[ctl] = d
        _write(os.path.join(dirs["pids"], "pids.max"), str(limits.pids))
        _write(os.path.join(dirs["memory"], "memory.limit_in_bytes"), str(limits.memory_bytes))
    except OSError:
        remove_trial_cgroup(TrialCgroup("cgroup-v1", dirs))
        raise
    # The cpu controller, where mounted: the trial's CPU priority (set_cpu_priority). Optional: a
    # trial without it still has its limits.
    if os.path.exists(os.path.join(CGROUP_ROOT, "cpu", "cgroup.procs")):
        d = os.path.join(CGROUP_ROOT, "cpu", own.get("cpu", "/").lstrip("/"), name)
        try:
            os.mkdir(d)
            dirs["cpu"] = d
        except OSError:
            pass
    return TrialCgroup("cgroup-v1", dirs)


def _create_v2(name: str, own: str, limits: Limits) -> TrialCgroup:
    parent = os.path.join(CGROUP_ROOT, own.lstrip("/")).rstrip("/")
    enabled = _read(os.path.join(parent, "cgroup.subtree_control")).split()
    if not {"pids", "memory"} <= set(enabled):
        try:   # only possible when the parent holds no processes itself (the v2 "no internal processes" rule)
            _write(os.path.join(parent, "cgroup.subtree_control"), "+pids +memory")
        except OSError as exc:
            return TrialCgroup("rlimit", reason=f"cgroup v2: cannot enable pids+memory for children of {parent} "
                                                f"({exc}); run the harness in a delegated cgroup (e.g. "
                                                "systemd-run --scope -p Delegate=yes)")
    if "cpu" in _read(os.path.join(parent, "cgroup.controllers")).split() and "cpu" not in enabled:
        try:    # optional: the trial's CPU priority (set_cpu_priority)
            _write(os.path.join(parent, "cgroup.subtree_control"), "+cpu")
        except OSError:
            pass
    d = os.path.join(parent, name)
    os.mkdir(d)
    try:
        _write(os.path.join(d, "pids.max"), str(limits.pids))
        _write(os.path.join(d, "memory.max"), str(limits.memory_bytes))
        if os.path.exists(os.path.join(d, "memory.swap.max")):
            _write(os.path.join(d, "memory.swap.max"), "0")
    except OSError:
        os.rmdir(d)
        raise
    return TrialCgroup("cgroup-v2", {"unified": d})


def process_cgroup(pid: int) -> TrialCgroup:
    """The pids and memory cgroup(s) a process runs in (e.g. a container's, limited by Docker), for
    limit_hits."""
    own = _own_cgroups(pid)
    if _is_v2_unified():
        return TrialCgroup("cgroup-v2", {"unified": os.path.join(CGROUP_ROOT, own.get("", "/").lstrip("/")).rstrip("/")})
    return TrialCgroup("cgroup-v1", {c: os.path.join(CGROUP_ROOT, c, own.get(c, "/").lstrip("/")).rstrip("/")
                                     for c in ("pids", "memory")})


def _counter(path: str, key: str) -> int:
    try:
        text = _read(path)
    except OSError:
        return 0
    m = re.search(rf"^{key} (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0


def limit_hits(cg: TrialCgroup) -> list[str]:
    """Which of the cgroup's limits were reached so far ("pids", "memory")."""
    hits = []
    if cg.mode == "cgroup-v2":
        d = cg.dirs["unified"]
        if _counter(os.path.join(d, "pids.events"), "max"):
            hits.append("pids")
        if _counter(os.path.join(d, "memory.events"), "oom_kill"):
            hits.append("memory")
    elif cg.mode == "cgroup-v1":
        if _counter(os.path.join(cg.dirs["pids"], "pids.events"), "max"):
            hits.append("pids")
        if _counter(os.path.join(cg.dirs["memory"], "memory.oom_control"), "oom_kill"):
            hits.append("memory")
    return hits


# The kernel's weight of each nice level (kernel/sched/core.c sched_prio_to_weight; nice 0 = 1024):
# what an autogroup of that nice level gets, and so what a cgroup gets for the same priority.
NICE_WEIGHTS = {-20: 88761, -15: 29154, -10: 9548, -5: 3121, 0: 1024, 5: 335, 10: 110, 15: 36, 19: 15}


def set_cpu_priority(cg: TrialCgroup, nice: int) -> None:
    """Give the trial's cgroup the CPU weight of an autogroup at `nice`. A process in a cgroup of
    its own is scheduled by that cgroup's weight, not by its session (autogroup): every SSH session
    on a server (sshd starts each one, and each command, in a new session) then runs at the
    trial's priority, as its agent does, instead of at nice 0. No-op without a cpu cgroup."""
    weight = NICE_WEIGHTS[nice]
    try:
        if cg.mode == "cgroup-v2":
            path = os.path.join(cg.dirs["unified"], "cpu.weight")
            if os.path.exists(path):    # the cpu controller is enabled for the trial's cgroup
                _write(path, str(max(1, min(10000, round(weight * 100 / 1024)))))
        elif "cpu" in cg.dirs:
            _write(os.path.join(cg.dirs["cpu"], "cpu.shares"), str(weight))
    except OSError:     # the cgroup is gone (the trial is being torn down)
        pass


def join_argv(cg: TrialCgroup, limits: Limits, argv: list[str]) -> list[str]:
    """`argv` started inside the trial's cgroup (it moves itself in before exec, so nothing it
    starts escapes), or under rlimits in rlimit mode."""
    if cg.mode == "rlimit":
        return [PRLIMIT, f"--nproc={limits.pids}", f"--data={limits.memory_bytes}", "--", *argv]
    # `echo 0` moves the writing process itself (pid 0 = the writer, in v1 and v2).
    script = 'while [ "$1" != -- ]; do echo 0 > "$1" || exit 125; shift; done; shift; exec "$@"'
    return ["/bin/sh", "-c", script, "sh", *cg.procs_files(), "--", *argv]


def _procs(d: str) -> list[int]:
    try:
        return [int(p) for p in _read(os.path.join(d, "cgroup.procs")).split()]
    except (OSError, ValueError):
        return []


def remove_trial_cgroup(cg: TrialCgroup, wait_s: float = 5.0) -> None:
    """Kill whatever is still in the cgroup and remove it (a dying process leaves it a moment later)."""
    for d in dict.fromkeys(cg.dirs.values()):
        if not os.path.isdir(d):
            continue
        deadline = time.time() + wait_s
        while True:
            for pid in _procs(d):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)


def leftover_cgroups(prefix: str) -> list[TrialCgroup]:
    """Cgroups of trials whose world directory name starts with `prefix` (a run's world prefix),
    anywhere in the hierarchies, left by a harness that was killed."""
    found: dict[str, dict[str, str]] = {}
    roots = [("unified", CGROUP_ROOT)] if _is_v2_unified() else [(c, os.path.join(CGROUP_ROOT, c))
                                                                 for c in ("pids", "memory", "cpu")]
    for ctl, root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, _ in os.walk(root):
            for dn in list(dirnames):
                if dn.startswith(prefix):
                    found.setdefault(dn, {})[ctl] = os.path.join(dirpath, dn)
                    dirnames.remove(dn)
    mode = "cgroup-v2" if _is_v2_unified() else "cgroup-v1"
    return [TrialCgroup(mode, dirs) for _name, dirs in sorted(found.items())]
