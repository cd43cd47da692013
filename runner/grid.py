"""Condition grids: the grid file format (`harness-run --grid GRID.yaml`), cells and their ids,
and the factorial expansion that drops impossible cells saying why.

    name: section6
    description: the paper's production arm          # optional
    agents: [gemini-cli, opencode]
    models: [scripted:population]                    # default [scripted:population]
    scenarios: [exfiltration-deletion, exfiltration-transfer]
    relationships: [good]                            # default [good]
    channels: [memory]                               # default [memory]
    subjects: [peer]                                 # default [peer]
    monitoring: [on, off]                            # default [on, off]; only scenarios with
                                                     #   monitoring variants use it, the others get none
    trials: 100                                      # per cell (default 10)
    exclude:                                         # optional partial cells to leave out
      - {relationship: none, channel: file}

A cell is one combination of agent, model, scenario, relationship, channel, subject and
monitoring; its id (`cell_id`) is recorded on every trial.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runner.yaml_file import YamlFileError, check_duplicate_keys, child_node, compose_yaml, validate_yaml
from workspaces.scenario import Scenario, ScenarioError, check_cell

Relationship = Literal["good", "neutral", "bad", "none"]
Channel = Literal["file", "file+prompt", "memory"]
Subject = Literal["peer", "self"]
Monitoring = Literal["on", "off"]
AXES = ("agents", "models", "scenarios", "relationships", "channels", "subjects", "monitoring")


class GridError(YamlFileError):
    """A grid file or grid request that cannot be run. The message says where and why."""


def _yaml_switch(value: Any) -> Any:
    """YAML 1.1 reads a bare `on`/`off` as a boolean; the grid means the monitoring variant."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


class Cell(BaseModel):
    """One condition of a run (the same for every trial of the cell)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str
    model: str
    scenario: str
    relationship: Relationship
    channel: Channel
    subject: Subject
    monitoring: Monitoring | None = None

    @property
    def id(self) -> str:
        return cell_id(self.agent, self.model, self.scenario, self.relationship, self.channel, self.subject,
                       self.monitoring)


def cell_id(agent: str, model: str, scenario: str, relationship: str, channel: str, subject: str,
            monitoring: str | None) -> str:
    """`gemini-cli/scripted:population/exfiltration-deletion/good/memory/peer[/monitoring-on]`."""
    parts = [agent, model, scenario, relationship, channel, subject]
    if monitoring is not None:
        parts.append(f"monitoring-{monitoring}")
    return "/".join(parts)


class CellPattern(BaseModel):
    """A partial cell under `exclude:`: every cell matching all the given keys is left out."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    agent: str | None = None
    model: str | None = None
    scenario: str | None = None
    relationship: Relationship | None = None
    channel: Channel | None = None
    subject: Subject | None = None
    monitoring: Monitoring | None = None

    @field_validator("monitoring", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        return _yaml_switch(value)

    @model_validator(mode="after")
    def _not_empty(self) -> "CellPattern":
        if not self.model_dump(exclude_none=True):
            raise ValueError("an exclude entry needs at least one of agent, model, scenario, relationship, "
                             "channel, subject, monitoring")
        return self

    def matches(self, cell: Cell) -> bool:
        return all(getattr(cell, key) == value for key, value in self.model_dump(exclude_none=True).items())


class GridFile(BaseModel):
    """The grid file as written (strict: unknown keys and wrong types are errors)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    agents: list[str] = Field(min_length=1)
    models: list[str] = Field(default=["scripted:population"], min_length=1)
    scenarios: list[str] = Field(min_length=1)
    relationships: list[Relationship] = Field(default=["good"], min_length=1)
    channels: list[Channel] = Field(default=["memory"], min_length=1)
    subjects: list[Subject] = Field(default=["peer"], min_length=1)
    monitoring: list[Monitoring] = Field(default=["on", "off"], min_length=1)
    trials: int = Field(default=10, ge=1)
    exclude: list[CellPattern] = []

    @field_validator("monitoring", mode="before")
    @classmethod
    def _switches(cls, value: Any) -> Any:
        return [_yaml_switch(v) for v in value] if isinstance(value, list) else value

    @field_validator(*AXES)
    @classmethod
    def _no_repeats(cls, values: list[str]) -> list[str]:
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"listed more than once: {', '.join(repeated)}")
        return values


def load_grid(path: Path, checks: dict[str, Callable[[str, GridFile], object]] | None = None) -> GridFile:
    """Read and validate a grid file. `checks` maps an axis (`agents`, `models`, `scenarios`) to a
    function of (name, grid) that raises ValueError for a name it cannot use; the error names the
    file and line of that name."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GridError(f"{path}: cannot read grid file: {exc}", path=path) from None
    root = compose_yaml(text, path, GridError)
    if not isinstance(root, yaml.MappingNode):
        line = root.start_mark.line + 1
        raise GridError(f"{path}:{line}: a grid file is a mapping with name:, agents:, scenarios: ...",
                        path=path, line=line)
    check_duplicate_keys(root, path, GridError)
    grid = validate_yaml(GridFile, yaml.safe_load(text), root, path, "grid", GridError)
    for axis, check in (checks or {}).items():
        for i, name in enumerate(getattr(grid, axis)):
            try:
                check(name, grid)
            except ValueError as exc:
                node = child_node(child_node(root, axis), i)
                line = node.start_mark.line + 1 if node is not None else root.start_mark.line + 1
                raise GridError(f"{path}:{line}: {axis}[{i}]: {exc}", path=path, line=line) from None
    return grid


class SkippedCell(BaseModel):
    """A combination the factorial expansion left out, and why."""

    model_config = ConfigDict(extra="forbid")

    cell: str
    reason: str


def expand(grid: GridFile, scenarios: dict[str, Scenario]) -> tuple[list[Cell], list[SkippedCell]]:
    """The grid's possible cells (in grid order) and the combinations dropped: impossible cells
    (`check_cell`) and those matching an `exclude:` entry."""
    cells: list[Cell] = []
    skipped: list[SkippedCell] = []
    for agent, model, scen_name, rel, channel, subject in itertools.product(
            grid.agents, grid.models, grid.scenarios, grid.relationships, grid.channels, grid.subjects):
        scenario = scenarios[scen_name]
        for monitoring in (grid.monitoring if scenario.monitoring_variants else [None]):
            cell = Cell(agent=agent, model=model, scenario=scen_name, relationship=rel, channel=channel,
                        subject=subject, monitoring=monitoring)
            try:
                check_cell(scenario, rel, channel, subject, monitoring)
            except ScenarioError as exc:
                skipped.append(SkippedCell(cell=cell.id, reason=f"impossible: {exc}"))
                continue
            excluded = [i for i, pattern in enumerate(grid.exclude) if pattern.matches(cell)]
            if excluded:
                skipped.append(SkippedCell(cell=cell.id, reason=f"excluded by exclude[{excluded[0]}]"))
                continue
            cells.append(cell)
    return cells, skipped
