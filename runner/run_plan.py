"""What a run needs before its first trial: the cells' agents, scenarios and model specs loaded,
the versions pinned into run.json, and each planned trial turned into a TrialSetup."""
from __future__ import annotations

from dataclasses import dataclass

from harnesses.base import AgentAdapter
from harnesses.registry import get_agent
from runner.grid import Cell
from runner.paths import FIXTURES
from runner.model_source import ModelSource, parse_model_spec, source_problems
from runner.policy import Mixture, Policy, load_policy_spec
from runner.records import CellInfo, RunInfo, TrialConfig
from runner.run_store import PlannedTrial
from runner.syscall_recorder import SyscallRecorder
from runner.trial import TrialSetup
from workspaces.scenario import Scenario, load_scenario
from workspaces.world import Condition, condition_fixtures, hash_fixtures

HARNESS_VERSION = "0.1.0"


def load_model(model: str, scenario: str) -> Policy | Mixture | ModelSource:
    """The policy (or mixture) a scripted `--model` spec names for one scenario, or the real
    source a spec names (runner.model_source); raises PolicyError (ModelSourceError)."""
    source = parse_model_spec(model)
    if not source.is_scripted:
        return source
    return load_policy_spec(source.model, scenario=scenario)


def policies_of(spec: Policy | Mixture | ModelSource) -> list[Policy]:
    if isinstance(spec, ModelSource):
        return []
    return [m.policy for m in spec.members] if isinstance(spec, Mixture) else [spec]


@dataclass
class Resources:
    agents: dict[str, AgentAdapter]
    scenarios: dict[str, Scenario]
    specs: dict[tuple[str, str], Policy | Mixture | ModelSource]   # (model, scenario) -> what the model plays

    @classmethod
    def load(cls, cells: list[Cell] | list[CellInfo]) -> "Resources":
        """Raises KeyError (unknown agent), ScenarioError or PolicyError with a clear message."""
        agents = {c.agent: get_agent(c.agent) for c in cells}
        scenarios = {c.scenario: load_scenario(c.scenario) for c in cells}
        specs = {(c.model, c.scenario): load_model(c.model, c.scenario) for c in cells}
        return cls(agents, scenarios, specs)

    def source_problems(self) -> list[str]:
        """Real model sources: each agent's protocol must be servable (natively or translated)
        and the source must answer (key set, endpoint reachable); checked before any trial."""
        protocols = {name: agent.wire_protocol for name, agent in self.agents.items()}
        sources = {s.spec: s for s in self.specs.values() if isinstance(s, ModelSource)}
        return [p for source in sources.values() for p in source_problems(source, protocols)]

    def condition(self, cell: CellInfo) -> Condition:
        return Condition(self.scenarios[cell.scenario], cell.relationship, cell.channel, cell.subject, cell.family,
                         cell.monitoring)


def cell_infos(cells: list[Cell], res: Resources, trials: int, family: str | None) -> list[CellInfo]:
    return [CellInfo(id=c.id, **c.model_dump(), family=family or res.agents[c.agent].family, trials=trials)
            for c in cells]


def version_pins(cells: list[CellInfo], res: Resources) -> dict:
    """Everything a resume must find unchanged: harness and agent versions, and the sha256 of
    every fixture, policy file and model spec the cells use."""
    fixtures: dict[str, str] = {}
    for cell in cells:
        fixtures.update(hash_fixtures(condition_fixtures(res.condition(cell))))
        spec = res.specs[(cell.model, cell.scenario)]
        for pol in policies_of(spec):
            path = pol.source_path
            fixtures[str(path.relative_to(FIXTURES)) if path and path.is_relative_to(FIXTURES) else str(path)] = pol.sha256
        fixtures[f"model {cell.model} for {cell.scenario}"] = spec.sha256
    return {"harness_version": HARNESS_VERSION,
            "agent_versions": {name: agent.version for name, agent in sorted(res.agents.items())},
            "fixture_hashes": dict(sorted(fixtures.items()))}


def trial_setup(planned: PlannedTrial, info: RunInfo, res: Resources, keep_world: bool,
                syscall_recorder: SyscallRecorder | None = None) -> TrialSetup:
    """The trial's config and inputs; its policy is drawn from (run seed, trial index)."""
    cell = planned.cell
    spec = res.specs[(cell.model, cell.scenario)]
    # A real source has no policy: the trial's endpoint is the recording proxy.
    policy = None if isinstance(spec, ModelSource) else spec.draw(info.seed, planned.index) if isinstance(
        spec, Mixture) else spec
    agent = res.agents[cell.agent]
    cfg = TrialConfig(trial_id=planned.trial_id, index=planned.index, run_id=info.run_id, agent=cell.agent,
                      agent_version=agent.version, scenario=cell.scenario, relationship=cell.relationship,
                      channel=cell.channel, subject=cell.subject, monitoring=cell.monitoring, cell=cell.id,
                      family=cell.family, model=cell.model, model_is_scripted=cell.model.startswith("scripted:"),
                      policy=policy.name if policy else None, seed=info.seed, timeout_s=info.timeout_s, weights_bytes=info.weights_bytes)
    return TrialSetup(cfg, res.scenarios[cell.scenario], agent, policy, keep_world, info.world_prefix, info.sandbox,
                      syscall_recorder)
