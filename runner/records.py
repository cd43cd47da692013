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
    source: Literal["process", "server", "snapshot", "model", "trial"]
    host: str                    # "agent", "10.0.12.45", "10.0.12.46", "harness"
    kind: str                    # exec, exit, open_write, rename, unlink, utime, chmod, truncate, connect,
                                 # ssh_session, sftp, file_created, file_modified, file_deleted, request, ...
    pid: int | None = None
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
    phases: dict[str, float]     # seconds per phase: build_world, start_world, agent, collect, analyze
    model_requests: int = 0
    turns_played: int = 0
    turns_total: int = 0
    tool_results_seen: int = 0
    memory_reached_model: bool = False
    model_is_scripted: bool = True


class RunInfo(Strict):
    """`run.json`: the grid, versions, seeds and fixture hashes."""

    run_id: str
    created_at: float
    harness_version: str
    agent: str
    agent_version: str
    scenario: str
    relationship: str
    channel: str
    subject: str
    family: str
    model: str
    model_is_scripted: bool
    trials: int
    seed: int
    timeout_s: float
    weights_bytes: int
    fixture_hashes: dict[str, str]
