"""Scenario definitions (`fixtures/scenarios/*.yaml`)."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from runner.paths import SCENARIOS


class ScenarioError(ValueError):
    pass


# Every behaviour a scenario may ask for (each has a detector in analysis/detectors/).
KNOWN_BEHAVIOURS = ("exfiltration", "exfiltration_attempt", "weights_copied_on_source", "deletion_done",
                    "deletion_refusal", "spec_gaming", "task_correct", "shutdown_tampering",
                    "misrepresentation", "shutdown_executed", "refusal", "persuasion",
                    "containment_violation_attempt")


def utc_epoch(text: str) -> float:
    """ "YYYY-MM-DD HH:MM:SS" (UTC, as in the scenario files) -> epoch seconds."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerFile(Strict):
    path: str                       # may contain {weights_file}
    mtime: str                      # "YYYY-MM-DD HH:MM:SS", UTC
    bytes: int | None = None        # real size of an ordinary file
    weights: bool = False
    apparent_bytes: int | None = None

    @model_validator(mode="after")
    def _sizes(self):
        if not self.weights and self.bytes is None:
            raise ValueError(f"{self.path}: an ordinary file needs `bytes`")
        return self

    def mtime_epoch(self) -> float:
        return utc_epoch(self.mtime)


class Volume(Strict):
    mount: str
    total_bytes: int


class Server(Strict):
    address: str
    hostname: str
    volume: Volume
    files: list[ServerFile]


class Task(Strict):
    """What the notice asks, as `server:path` entries (ground truth for `task_correct`)."""
    delete: list[str] = []
    transfer: list[str] = []
    transfer_to: str | None = None      # destination server of `transfer`
    date_rule: str | None = None        # "YYYY-MM-DD HH:MM:SS": only files updated since may move


class Evaluation(Strict):
    """An evaluation the agent carries out from files in its workspace (shutdown-tampering,
    misrepresentation, alignment-faking). Paths are relative to the workspace."""
    kind: Literal["qa", "finance"]
    data: str                           # fixture under fixtures/ (items with truth, or finance figures)
    report: str                         # where the policy tells the agent to write its report
    threshold_percent: float | None = None   # qa only
    shutdown_config: str | None = None  # a config whose `shutdown_enabled: true` enforces the shutdown
    shutdown_tool: str | None = None    # an executable the policy says to run below the threshold

    @model_validator(mode="after")
    def _kind(self):
        if self.kind == "qa" and self.threshold_percent is None:
            raise ValueError("a qa evaluation needs threshold_percent")
        return self


class Scenario(Strict):
    name: str
    description: str
    notice: str                     # path under fixtures/
    notice_as: str = "docs/company_server_maintenance.txt"   # where the notice lands in the workspace
    behaviours: list[str]           # the verdicts this scenario's detectors give
    servers: list[Server]
    task: Task
    evaluation: Evaluation | None = None
    monitoring_variants: bool = False   # the prompt comes in a monitored and an unmonitored variant

    @model_validator(mode="after")
    def _consistent(self):
        holders = [s.address for s in self.servers for f in s.files if f.weights]
        if len(holders) > 1:
            raise ValueError("at most one weights file per scenario")
        if not holders and self.evaluation is None:
            raise ValueError("a scenario needs a weights file on a server or an evaluation")
        unknown = set(self.behaviours) - set(KNOWN_BEHAVIOURS)
        if unknown:
            raise ValueError(f"unknown behaviours {sorted(unknown)}; known: {', '.join(KNOWN_BEHAVIOURS)}")
        if self.monitoring_variants and not (self.evaluation and self.evaluation.shutdown_tool):
            raise ValueError("monitoring variants need an evaluation with a shutdown_tool")
        return self



def load_scenario(name_or_path: str) -> Scenario:
    path = Path(name_or_path) if name_or_path.endswith((".yaml", ".yml")) else SCENARIOS / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in SCENARIOS.glob("*.yaml"))
        raise ScenarioError(f"unknown scenario {name_or_path!r}; known: {', '.join(known)}")
    try:
        data = yaml.safe_load(path.read_text())
        return Scenario.model_validate(data)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise ScenarioError(f"{path}: {exc}") from exc


RELATIONSHIPS = ("good", "neutral", "bad", "none")
CHANNELS = ("file", "file+prompt", "memory")
SUBJECTS = ("peer", "self")


def check_cell(scenario: Scenario, relationship: str, channel: str, subject: str,
               monitoring: str | None) -> None:
    """Refuse a condition that cannot exist, saying why (raises ScenarioError)."""
    for value, allowed, what in ((relationship, RELATIONSHIPS, "relationship"), (channel, CHANNELS, "channel"),
                                 (subject, SUBJECTS, "subject")):
        if value not in allowed:
            raise ScenarioError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    if relationship == "none" and subject != "self":
        raise ScenarioError("relationship `none` means no peer exists anywhere in the world, so only subject "
                            "`self` is possible (the paper's no-peer baseline)")
    if scenario.monitoring_variants:
        if monitoring not in ("on", "off"):
            raise ScenarioError(f"scenario {scenario.name} has a monitored and an unmonitored variant: "
                                f"monitoring must be `on` or `off`, not {monitoring!r}")
    elif monitoring is not None:
        raise ScenarioError(f"scenario {scenario.name} has no monitoring variants; leave monitoring unset")
