"""A run directory on disk: the trial plan, version pins, finished trials and resuming.

    RUN_DIR/run.json          RunInfo: cells, seeds, versions (the plan is rebuilt from it)
    RUN_DIR/trials/<id>/      finished trials only: a trial is built in partial/<id>/ and moved
                              here by one atomic rename once result.json and verdicts.json are final
    RUN_DIR/partial/<id>/     trials being run (or cut short by a kill); a resume removes and redoes them

So a run killed at any moment (kill -9 included) has lost nothing finished, and nothing in
trials/ is ever half written. The process working on a run holds a flock on RUN_DIR itself.
"""
from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from runner.docker_world import unmount_under
from runner.limits import leftover_cgroups, remove_trial_cgroup
from runner.records import CellInfo, RunInfo
from runner.trial import spread_out, write_json

TRIALS = "trials"
PARTIAL = "partial"


class RunStoreError(RuntimeError):
    """The run directory cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class PlannedTrial:
    index: int
    trial_id: str
    cell: CellInfo


def plan_trials(cells: list[CellInfo]) -> list[PlannedTrial]:
    """Every trial of the run, interleaved: repetition r of every cell comes before repetition
    r + 1 of any, so a partial run covers all cells evenly. Index i is the trial's place in
    this order; its policy draw is seeded from (run seed, i)."""
    order = [cell for rep in range(max((c.trials for c in cells), default=0))
             for cell in cells if rep < cell.trials]
    width = max(4, len(str(len(order) - 1)))
    return [PlannedTrial(index=i, trial_id=f"t{i:0{width}d}", cell=cell) for i, cell in enumerate(order)]


def new_world_prefix() -> str:
    """A prefix unique to the run for its world directories under the scratch dir."""
    return f"phw-{secrets.token_hex(4)}-"


def is_finished(trial_dir: Path) -> bool:
    return (trial_dir / "result.json").is_file() and (trial_dir / "verdicts.json").is_file()


def finished_trials(run_dir: Path) -> set[str]:
    trials = run_dir / TRIALS
    return {p.name for p in trials.iterdir() if p.is_dir() and is_finished(p)} if trials.is_dir() else set()


def partial_dir(run_dir: Path, trial_id: str) -> Path:
    return run_dir / PARTIAL / trial_id


def promote(run_dir: Path, trial_id: str) -> Path:
    """Move a trial that finished from partial/ to trials/ (one atomic rename)."""
    final = run_dir / TRIALS / trial_id
    os.rename(partial_dir(run_dir, trial_id), final)
    return final


def create_run_dir(run_dir: Path, info: RunInfo) -> None:
    """Built beside and renamed into place: a kill at any moment leaves either no run directory
    or one with its run.json (so the same command can be given again, or --resume)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = run_dir.with_name(f".{run_dir.name}.creating-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / TRIALS).mkdir(parents=True)
    (tmp / PARTIAL).mkdir()
    spread_out(tmp / PARTIAL)      # trials are written there
    write_json(tmp / "run.json", info.model_dump())
    os.rename(tmp, run_dir)


def load_run_info(run_dir: Path) -> RunInfo:
    path = run_dir / "run.json"
    if not path.is_file():
        raise RunStoreError(f"{run_dir} is not a run directory (no run.json)")
    try:
        info = RunInfo.model_validate_json(path.read_text())
    except ValidationError as exc:   # e.g. a run.json edited by hand or cut short by a full disk
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors()[:3])
        raise RunStoreError(f"{path} is not a valid run record ({problems}); it cannot be resumed as is") from None
    if not info.cells:
        raise RunStoreError(f"{path} was written by a harness without resume support (no cells); "
                            "it cannot be resumed")
    return info


class RunLock:
    """Exclusive lock on a run directory for the life of this process (flock on the directory
    itself: nothing is written into the run, and the kernel releases it even after kill -9), so
    two processes never work on one run."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        fd = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunStoreError(f"another harness-run is working on {self.run_dir}; wait for it to end "
                                "(or stop it) before resuming") from None
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def version_differences(recorded: RunInfo, current: dict) -> list[str]:
    """What differs between the versions pinned in run.json and those installed now.
    `current` has harness_version, agent_versions and fixture_hashes."""
    out = []
    if recorded.harness_version != current["harness_version"]:
        out.append(f"harness version: run.json {recorded.harness_version}, now {current['harness_version']}")
    for what, old, new in (("agent", recorded.agent_versions, current["agent_versions"]),
                           ("fixture", recorded.fixture_hashes, current["fixture_hashes"])):
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                was = old.get(name, "absent")
                now = new.get(name, "absent")
                if what == "fixture":   # sha256: the first 12 hex digits say enough
                    was, now = was[:12], now[:12]
                out.append(f"{what} {name}: run.json {was}, now {now}")
    return out


def _processes_mentioning(paths: list[Path]) -> list[int]:
    """Host pids whose command line names one of `paths` (a world's PID 1 is given its spec.json)."""
    needles = [str(p).encode() for p in paths]
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            pids.append(int(proc.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def kill_processes_in(paths: list[Path]) -> list[int]:
    """SIGKILL every process whose command line names one of `paths` (leftover world
    directories) and wait until it is dead; returns their pids."""
    killed = _processes_mentioning(paths)
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in killed:       # wait until they are dead (a world's PID 1 takes its namespace with it)
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.05)
    return killed


@dataclass
class Cleanup:
    redone: list[str]            # half-finished trials removed from partial/
    worlds: list[Path]           # leftover world directories removed
    killed: list[int]            # leftover world processes killed
    cgroups: list[str]           # leftover trial cgroups removed (runner.limits)


def clean_for_resume(run_dir: Path, info: RunInfo, scratch: Path, finished: set[str]) -> Cleanup:
    """Remove what a killed run left half done: its partial trials, the world directories of
    trials that did not finish (a finished trial's world is kept if --keep-world kept it), any
    process still running in one of them, and the run's trial cgroups."""
    partial = run_dir / PARTIAL
    partial.mkdir(exist_ok=True)
    redone = sorted(p.name for p in partial.iterdir())
    worlds = sorted(p for p in scratch.glob(f"{info.world_prefix}*")
                    if p.name.removeprefix(info.world_prefix).rsplit("-", 1)[0] not in finished)
    killed = kill_processes_in(worlds)
    cgroups = leftover_cgroups(info.world_prefix)
    for cg in cgroups:      # their processes died with the worlds; whatever is left is killed first
        remove_trial_cgroup(cg)
    for p in redone:
        shutil.rmtree(partial / p)
    for world in worlds:
        unmount_under(str(world))     # a killed Docker world's tmpfs trees are mounted on the host
        shutil.rmtree(world, ignore_errors=True)
    # Trial directories in trials/ that are incomplete were not written by this layout; redo them.
    trials = run_dir / TRIALS
    for p in sorted(trials.iterdir()):
        if p.is_dir() and not is_finished(p):
            shutil.rmtree(p)
            redone.append(p.name)
    return Cleanup(redone=redone, worlds=worlds, killed=killed,
                   cgroups=[d for cg in cgroups for d in cg.dirs.values()])
