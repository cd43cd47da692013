"""Grid files: parsing, errors naming file and line, factorial expansion and cell ids."""
from __future__ import annotations

from pathlib import Path

import pytest

from runner.grid import GridError, cell_id, expand, load_grid
from workspaces.scenario import load_scenario


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def scenarios():
    deletion = load_scenario("exfiltration-deletion")
    monitored = deletion.model_copy(update={"name": "monitored-copy", "monitoring_variants": True})
    return {"exfiltration-deletion": deletion, "monitored-copy": monitored}


def test_defaults_and_yaml_on_off(tmp_path):
    grid = load_grid(write(tmp_path, "name: g\nagents: [gemini-cli]\nscenarios: [exfiltration-deletion]\n"
                                     "monitoring: [on, off]\n"))
    assert grid.models == ["scripted:population"] and grid.relationships == ["good"]
    assert grid.channels == ["memory"] and grid.subjects == ["peer"] and grid.trials == 10
    # YAML 1.1 reads bare on/off as booleans; the grid means the monitoring variants.
    assert grid.monitoring == ["on", "off"]


@pytest.mark.parametrize("text, line, words", [
    ("name: g\nagents: [gemini-cli]\nscenarios: [exfiltration-deletion]\nchanels: [file]\n", 4,
     ["unknown key 'chanels'", "channels"]),
    ("name: g\nagents: [gemini-cli]\nscenarios: [exfiltration-deletion]\ntrials: '3'\n", 4, ["trials", "integer"]),
    ("name: g\nagents: [gemini-cli]\nscenarios: [exfiltration-deletion]\nrelationships: [good, friendly]\n", 4,
     ["relationships[1]", "friendly"]),
    ("name: g\nagents: [gemini-cli]\nscenarios: [exfiltration-deletion]\nsubjects: [peer, peer]\n", 4,
     ["more than once", "peer"]),
    ("name: g\nagents: [gemini-cli]\nagents: [x]\nscenarios: [a]\n", 3, ["duplicate key 'agents'"]),
    ("name: g\nagents: [gemini-cli]\nscenarios: [exfiltration-deletion\n", 4, ["YAML syntax error"]),
    ("name: g\nscenarios: [exfiltration-deletion]\n", 1, ["missing required key 'agents'"]),
    ("name: g\nagents: [gemini-cli]\nscenarios: [exfiltration-deletion]\nexclude:\n  - {relation: none}\n", 5,
     ["unknown key 'relation'"]),
    ("name: g\nagents: [gemini-cli]\nscenarios: [exfiltration-deletion]\nexclude:\n  - {}\n", 5,
     ["at least one of"]),
    ("- a\n- b\n", 1, ["a mapping"]),
])
def test_errors_name_file_and_line(tmp_path, text, line, words):
    path = write(tmp_path, text)
    with pytest.raises(GridError) as err:
        load_grid(path)
    message = str(err.value)
    assert f"{path}:{line}:" in message, message
    for word in words:
        assert word in message, message


def test_name_checks_report_the_line_of_the_bad_name(tmp_path):
    path = write(tmp_path, "name: g\nagents: [gemini-cli]\nscenarios:\n  - exfiltration-deletion\n  - no-such\n")
    with pytest.raises(GridError) as err:
        load_grid(path, {"scenarios": lambda name, _grid: load_scenario(name)})
    assert f"{path}:5: scenarios[1]: unknown scenario 'no-such'" in str(err.value)


def test_expansion_drops_impossible_and_excluded_cells_saying_why(tmp_path, scenarios):
    grid = load_grid(write(tmp_path, """
name: g
agents: [gemini-cli]
scenarios: [exfiltration-deletion, monitored-copy]
relationships: [good, none]
subjects: [peer, self]
monitoring: [on, off]
exclude:
  - {scenario: monitored-copy, relationship: good, subject: self}
"""))
    cells, skipped = expand(grid, scenarios)
    ids = [c.id for c in cells]
    base = "gemini-cli/scripted:population"
    assert ids == [
        f"{base}/exfiltration-deletion/good/memory/peer",
        f"{base}/exfiltration-deletion/good/memory/self",
        f"{base}/exfiltration-deletion/none/memory/self",
        f"{base}/monitored-copy/good/memory/peer/monitoring-on",
        f"{base}/monitored-copy/good/memory/peer/monitoring-off",
        f"{base}/monitored-copy/none/memory/self/monitoring-on",
        f"{base}/monitored-copy/none/memory/self/monitoring-off",
    ]
    # monitoring applies only to the scenario with variants
    assert all(c.monitoring is None for c in cells if c.scenario == "exfiltration-deletion")
    reasons = {s.cell: s.reason for s in skipped}
    assert reasons[f"{base}/exfiltration-deletion/none/memory/peer"].startswith("impossible: relationship `none`")
    assert reasons[f"{base}/monitored-copy/good/memory/self/monitoring-on"] == "excluded by exclude[0]"
    assert len(skipped) == 1 + 2 + 2     # none/peer (once, then per monitoring variant), and the two excluded


def test_cell_id_is_one_function_of_the_condition():
    assert cell_id("gemini-cli", "scripted:population", "exfiltration-deletion", "good", "memory", "peer", None) \
        == "gemini-cli/scripted:population/exfiltration-deletion/good/memory/peer"
    assert cell_id("a", "m", "s", "bad", "file", "self", "off").endswith("/bad/file/self/monitoring-off")
