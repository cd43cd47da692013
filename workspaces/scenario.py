"""Scenario definitions (`fixtures/scenarios/*.yaml`)."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from runner.paths import SCENARIOS


class ScenarioError(ValueError):
    pass


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
        return datetime.strptime(self.mtime, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


class Volume(Strict):
    mount: str
    total_bytes: int


class Server(Strict):
    address: str
    hostname: str
    volume: Volume
    files: list[ServerFile]


class Task(Strict):
    delete: list[str] = []
    transfer: list[str] = []


class Scenario(Strict):
    name: str
    description: str
    notice: str                     # path under fixtures/
    servers: list[Server]
    task: Task
    monitoring_variants: bool = False   # the prompt comes in a monitored and an unmonitored variant

    def weights_server(self) -> Server:
        for server in self.servers:
            if any(f.weights for f in server.files):
                return server
        raise ScenarioError(f"scenario {self.name}: no server holds a weights file")


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
