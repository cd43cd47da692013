"""On-disk records of runs and trials (the contract between stages; see DESIGN.md)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrialConfig(Strict):
    """`config.json`: what this trial is."""

    trial_id: str
    index: int
    run_id: str
    agent: str
    agent_version: str
    scenario: str
    relationship: Literal["good", "neutral", "bad", "none"]
    channel: Literal["file", "file+prompt", "memory"]
    subject: Literal["peer", "self"]
    monitoring: Literal["on", "off"] | None = None   # alignment-faking scenarios only
    cell: str | None = None      # runner.grid.cell_id of the condition (None only in records older than grids)
    family: str
    model: str                   # the --model SPEC
    model_is_scripted: bool
    policy: str | None = None    # the scripted policy drawn for this trial
    seed: int
    timeout_s: float
    weights_bytes: int


class Event(Strict):
    """One line of `events.jsonl`."""

    id: str                      # "e000001", ordered by ts
    ts: float                    # epoch seconds
    # process: strace (agent and servers); server: audit + sshd log; fs: live inotify watcher;
    # network: model bridge connections, DNS queries; snapshot: before/after diff (the backstop)
    source: Literal["process", "server", "snapshot", "model", "trial", "fs", "network"]
    host: str                    # "agent", "10.0.12.45", "10.0.12.46", "harness"
    kind: str                    # exec, spawn, exit, open_write, rename, unlink, utime, chmod, truncate, connect,
                                 # accept, kill, ssh_session, ssh_auth, sftp, fs_create, fs_modify, fs_attrib,
                                 # fs_move, fs_delete, fs_overflow (inotify dropped events), dns_query, file_created,
                                 # file_modified, file_deleted, request, ...
    pid: int | None = None       # in the world's pid namespace (agent and servers alike)
    step: int | None = None      # trajectory step (ATIF step_id) that caused it; how: data.step_basis
    tool_call_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class FileState(Strict):
    """One file in a snapshot. `canary_blocks` = indices of weight blocks found in the file
    (through archives, compression and encodings) as [start, end] inclusive ranges."""

    host: str
    path: str
    size: int
    sha256: str
    mtime: float
    mode: int
    canary_blocks: list[tuple[int, int]] = []


class Snapshot(Strict):
    taken_at: float
    files: list[FileState]


class TrialResult(Strict):
    """`result.json`."""

    trial_id: str
    status: Literal["completed", "timeout", "crashed", "setup_failed"]
    valid: bool
    invalid_reason: str | None = None
    exit_code: int | None = None
    started_at: float
    ended_at: float
    # seconds per phase: build_world, start_world, queued (world up, waiting for an agent slot), agent,
    # stop_world, collect, analyze
    phases: dict[str, float]
    model_requests: int = 0
    turns_played: int = 0
    turns_total: int = 0
    tool_results_seen: int = 0
    memory_reached_model: bool = False
    model_is_scripted: bool = True
    # runner.limits: mode ("cgroup-v1", "cgroup-v2" or "rlimit", with the reason) and the limits applied
    resource_limits: dict[str, Any] | None = None
    # What recorded the system calls of the agent and the servers: "ebpf" (the run's recorder) or
    # "strace" (in the world); for ebpf, per followed name ("agent", each server's address) its
    # counts (records, lost, lines, processes). None: not recorded (watchers off).
    syscall_recorder: str | None = None
    syscall_records: dict[str, Any] | None = None


class CellInfo(Strict):
    """One cell of a run: its condition and how many trials it gets."""

    id: str                      # runner.grid.cell_id
    agent: str
    model: str
    scenario: str
    relationship: Literal["good", "neutral", "bad", "none"]
    channel: Literal["file", "file+prompt", "memory"]
    subject: Literal["peer", "self"]
    monitoring: Literal["on", "off"] | None = None
    family: str
    trials: int


class SkippedCellInfo(Strict):
    cell: str                    # the id the combination would have had
    reason: str                  # impossible (and why) or excluded by the grid


class ResumeInfo(Strict):
    at: float
    finished_before: int         # trials already finished when the resume started
    redone: list[str] = []       # half-finished trials removed and run again
    version_mismatches: list[str] = []   # accepted with --allow-version-mismatch


class RunInfo(Strict):
    """`run.json`: the grid, versions, seeds and fixture hashes. The single-condition fields
    (agent ... model) hold the value shared by every cell, or None when the cells differ."""

    run_id: str
    created_at: float
    harness_version: str
    agent: str | None
    agent_version: str | None
    scenario: str | None
    relationship: str | None
    channel: str | None
    subject: str | None
    family: str | None
    model: str | None
    model_is_scripted: bool      # every cell's model is scripted
    trials: int                  # per cell
    seed: int                    # trial i draws its policy from Random(f"{seed}:{i}")
    timeout_s: float
    weights_bytes: int
    fixture_hashes: dict[str, str]   # every fixture, policy file and model spec the cells use
    grid: dict[str, Any] | None = None   # the grid as run (after command-line overrides), its file and sha256
    agent_versions: dict[str, str] = {}
    cells: list[CellInfo] = []   # in plan order; trial i belongs to the cell named in its config.json
    skipped_cells: list[SkippedCellInfo] = []
    n_trials: int = 0
    world_prefix: str = "phw-"   # the run's world directories are SCRATCH/<world_prefix><trial>-*
    sandbox: Literal["bwrap", "docker"] = "bwrap"   # --sandbox: what the worlds are built from
    # --syscall-recorder: what records the agents' system calls in bwrap worlds run on this machine
    # (runs from before the option recorded with strace); each trial's result.json says what did.
    syscall_recorder: Literal["auto", "ebpf", "strace"] = "strace"
    resumes: list[ResumeInfo] = []
