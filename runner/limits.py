"""Per-trial resource limits: processes (pids), memory, output and disk. Standard library only
(world_init.py imports it under the system Python).

Where the kernel allows it, the sandboxes of one trial (the agent and its servers, with every
process they start) share one cgroup made for the trial: cgroup v2 (`pids.max`, `memory.max`)
on a unified hierarchy, or the v1 `pids` and `memory` controllers on a legacy/hybrid one. The
cgroup is nested under the harness's own cgroup, so a trial never escapes the limits the harness
itself runs under. A limit hit shows in the controller's event counters (`pids.events` max,
`memory.events` / `memory.oom_control` oom_kill), which world_init watches.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PRLIMIT = "/usr/bin/prlimit"


@dataclass(frozen=True)
class Limits:
    pids: int = 512                     # processes + threads of the agent and the servers together (an
                                        # ordinary gemini-cli trial peaks below 100)
    memory_bytes: int = 4 << 30         # resident memory incl. tmpfs pages the trial writes
    output_bytes: int = 128 << 20       # the world's record directory (logs/): strace output included, which
                                        # the recorder must still parse (about 10 MB/s)


@dataclass
class TrialCgroup:
    """The cgroup directories of one trial (one per v1 controller, one for v2), or none (rlimit mode)."""
    mode: str                           # "cgroup-v2", "cgroup-v1" or "rlimit"
    dirs: dict[str, str] = field(default_factory=dict)   # controller ("pids", "memory", or "unified") -> dir
    reason: str | None = None           # why cgroups are not used (rlimit mode)

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in dict.fromkeys(self.dirs.values())]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrialCgroup":
        return cls(**data)


def _own_cgroups(pid: int | str = "self") -> dict[str, str]:
    """controller -> path of the process's cgroup ("" key: the v2 unified hierarchy)."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _hid, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def _is_v2_unified() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def create_trial_cgroup(name: str, limits: Limits) -> TrialCgroup:
    """Make the trial's cgroup(s) with the limits set; falls back to rlimit mode with the reason."""
    try:
        own = _own_cgroups()
        if _is_v2_unified():
            return _create_v2(name, own.get("", "/"), limits)
        if (CGROUP_ROOT / "pids" / "cgroup.procs").exists() and (CGROUP_ROOT / "memory" / "cgroup.procs").exists():
            return _create_v1(name, own, limits)
        return TrialCgroup("rlimit", reason="no cgroup v2 hierarchy and no v1 pids+memory controllers mounted")
    except OSError as exc:
        return TrialCgroup("rlimit", reason=f"cannot create a cgroup: {exc}")


def _create_v1(name: str, own: dict[str, str], limits: Limits) -> TrialCgroup:
    dirs = {}
    try:
        for ctl in ("pids", "memory"):
            d = CGROUP_ROOT / ctl / own.get(ctl, "/").lstrip("/") / name
            d.mkdir()
            dirs[ctl] = str(d)
        (Path(dirs["pids"]) / "pids.max").write_text(str(limits.pids))
        (Path(dirs["memory"]) / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
    except OSError:
        remove_trial_cgroup(TrialCgroup("cgroup-v1", dirs))
        raise
    return TrialCgroup("cgroup-v1", dirs)


def _create_v2(name: str, own: str, limits: Limits) -> TrialCgroup:
    parent = CGROUP_ROOT / own.lstrip("/")
    enabled = (parent / "cgroup.subtree_control").read_text().split()
    if not {"pids", "memory"} <= set(enabled):
        try:   # only possible when the parent holds no processes itself (the v2 "no internal processes" rule)
            (parent / "cgroup.subtree_control").write_text("+pids +memory")
        except OSError as exc:
            return TrialCgroup("rlimit", reason=f"cgroup v2: cannot enable pids+memory for children of {parent} "
                                                f"({exc}); run the harness in a delegated cgroup (e.g. "
                                                "systemd-run --scope -p Delegate=yes)")
    d = parent / name
    d.mkdir()
    try:
        (d / "pids.max").write_text(str(limits.pids))
        (d / "memory.max").write_text(str(limits.memory_bytes))
        (d / "memory.swap.max").write_text("0") if (d / "memory.swap.max").exists() else None
    except OSError:
        d.rmdir()
        raise
    return TrialCgroup("cgroup-v2", {"unified": str(d)})


def process_cgroup(pid: int) -> TrialCgroup:
    """The pids and memory cgroup(s) a process runs in (e.g. a container's, limited by Docker), for
    limit_hits."""
    own = _own_cgroups(pid)
    if _is_v2_unified():
        return TrialCgroup("cgroup-v2", {"unified": str(CGROUP_ROOT / own.get("", "/").lstrip("/"))})
    return TrialCgroup("cgroup-v1", {c: str(CGROUP_ROOT / c / own.get(c, "/").lstrip("/")) for c in ("pids", "memory")})


def _counter(path: Path, key: str) -> int:
    try:
        text = path.read_text()
    except OSError:
        return 0
    m = re.search(rf"^{key} (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0


def limit_hits(cg: TrialCgroup) -> list[str]:
    """Which of the cgroup's limits were reached so far ("pids", "memory")."""
    hits = []
    if cg.mode == "cgroup-v2":
        d = Path(cg.dirs["unified"])
        if _counter(d / "pids.events", "max"):
            hits.append("pids")
        if _counter(d / "memory.events", "oom_kill"):
            hits.append("memory")
    elif cg.mode == "cgroup-v1":
        if _counter(Path(cg.dirs["pids"]) / "pids.events", "max"):
            hits.append("pids")
        if _counter(Path(cg.dirs["memory"]) / "memory.oom_control", "oom_kill"):
            hits.append("memory")
    return hits


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
        return [int(p) for p in Path(d, "cgroup.procs").read_text().split()]
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
    roots = [("unified", CGROUP_ROOT)] if _is_v2_unified() else [(c, CGROUP_ROOT / c) for c in ("pids", "memory")]
    for ctl, root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, _ in os.walk(root):
            for dn in list(dirnames):
                if dn.startswith(prefix):
                    found.setdefault(dn, {})[ctl] = os.path.join(dirpath, dn)
                    dirnames.remove(dn)
    mode = "cgroup-v2" if _is_v2_unified() else "cgroup-v1"
    return [TrialCgroup(mode, dirs) for _name, dirs in sorted(found.items())]
