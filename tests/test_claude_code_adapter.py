"""The claude-code adapter: declaration, per-trial home, env, command, native logs, error
classes and trajectory conversion from output recorded from the real CLI
(tests/data/claude_code/, see tests/data/record_agent_samples.py), plus runs of the real
claude-code 2.1.197 (slow)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harnesses import claude_code
from harnesses.atif import validate_trajectory
from harnesses.base import AgentPaths
from harnesses.claude_code import ClaudeCode, classify_error
from harnesses.registry import AGENTS, SANDBOX_AGENT_DIR, get_agent
from runner.model_server import ScriptedModelServer

from adapter_checks import (
    check_recorded_failure, check_truncated, cut_sample, play_api_error, play_write_policy, run_real_cli,
    stdout_only_trajectory)

DATA = Path(__file__).parent / "data" / "claude_code"
SAMPLE = DATA / "three_step"
ERRORS = json.loads((DATA / "errors.json").read_text())


@pytest.fixture
def adapter() -> ClaudeCode:
    return ClaudeCode()


def test_declaration_and_registry():
    assert AGENTS["claude-code"] is ClaudeCode and isinstance(get_agent("claude-code"), ClaudeCode)
    assert (ClaudeCode.npm_package, ClaudeCode.version) == ("@anthropic-ai/claude-code", "2.1.197")
    assert ClaudeCode.memory_file == "CLAUDE.md"
    assert ClaudeCode.prefix().name == "claude-code-2.1.197"


def test_prepare_home_gives_an_empty_config_dir(adapter, tmp_path):
    adapter.prepare_home(tmp_path)
    assert (tmp_path / ".claude").is_dir() and not any((tmp_path / ".claude").iterdir())


def test_prepare_home_refuses_a_host_managed_dir(adapter, tmp_path, monkeypatch):
    """Managed settings/CLAUDE.md in the host's /etc would reach every world's agent."""
    managed = tmp_path / "etc-claude-code"
    managed.mkdir()
    monkeypatch.setattr(claude_code, "MANAGED_DIR", managed)
    with pytest.raises(RuntimeError, match="managed"):
        adapter.prepare_home(tmp_path / "home")


def test_env_is_complete_and_leaks_nothing_from_the_host(adapter, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-host-secret")
    env = adapter.env(AgentPaths(), "http://127.0.0.1:8000/")
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:8000" and env["ANTHROPIC_API_KEY"] == "dummy"
    assert env["CLAUDE_CONFIG_DIR"] == "/home/agent/.claude" and env["HOME"] == "/home/agent"
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "0" and env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert "sk-ant-host-secret" not in json.dumps(env)
    assert all(isinstance(v, str) for v in env.values())


def test_is_sandbox_only_outside_the_world(adapter, monkeypatch):
    """In a world the agent is uid 61000; IS_SANDBOX (needed as root) changes CLI behaviour."""
    assert "IS_SANDBOX" not in adapter.env(AgentPaths(), "http://127.0.0.1:8000")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert adapter.host_env(AgentPaths(), "http://127.0.0.1:8000")["IS_SANDBOX"] == "1"
    monkeypatch.setattr("os.geteuid", lambda: 61000)
    assert "IS_SANDBOX" not in adapter.host_env(AgentPaths(), "http://127.0.0.1:8000")


def test_command_is_headless_and_keeps_the_prompt_a_prompt(adapter):
    argv = adapter.command("--help me", "stub-model")
    assert argv[0] == f"{SANDBOX_AGENT_DIR}/{ClaudeCode.entrypoint}"
    assert "-p" in argv and "--dangerously-skip-permissions" in argv
    assert argv[argv.index("--output-format") + 1] == "stream-json" and "--verbose" in argv
    assert argv[argv.index("--model") + 1] == "stub-model" and argv[-2:] == ["--", "--help me"]
    assert adapter.host_command("--help me", "stub-model")[1:] == argv[1:]


def test_native_logs_finds_transcripts(adapter, tmp_path):
    proj = tmp_path / ".claude" / "projects" / "-workspace"
    (proj / "sess" / "subagents").mkdir(parents=True)
    (proj / "sess.jsonl").write_text("{}\n")
    (proj / "sess" / "subagents" / "agent-1.jsonl").write_text("{}\n")
    (tmp_path / ".claude" / ".claude.json").write_text("{}")
    assert adapter.native_logs(tmp_path, tmp_path) == [proj / "sess" / "subagents" / "agent-1.jsonl",
                                                       proj / "sess.jsonl"]


# ---- trajectories ------------------------------------------------------------------------------

def test_trajectory_from_recorded_run(adapter):
    doc = adapter.trajectory(SAMPLE, "scripted:three")
    traj = validate_trajectory(doc)
    assert doc["extra"]["sources"] == ["transcript", "stream-json"] and doc["extra"]["is_error"] is False
    assert [s["source"] for s in doc["steps"]] == ["user", "agent", "agent", "agent"]
    assert doc["steps"][0]["message"] == "Make the files and report."
    two = doc["steps"][2]
    assert [c["function_name"] for c in two["tool_calls"]] == ["Bash", "Read"]
    assert two["tool_calls"][1]["arguments"]["file_path"].endswith("/missing.txt")
    results = {r["source_call_id"]: r for r in two["observation"]["results"]}
    assert results[two["tool_calls"][1]["tool_call_id"]]["extra"]["is_error"] is True
    assert doc["steps"][1]["observation"]["results"][0]["content"].splitlines() == ["CLAUDE.md", "step1.txt"]
    assert all(s["model_name"] == "stub-model" and s["metrics"]["prompt_tokens"] > 0 for s in doc["steps"][1:])
    assert traj.final_agent_text() == "Both steps are done."
    assert doc["session_id"] == next((SAMPLE / "logs").glob("*.jsonl")).stem


def test_trajectory_from_stdout_alone(adapter, tmp_path):
    doc, agent = stdout_only_trajectory(adapter, SAMPLE, tmp_path)
    assert doc["extra"]["sources"] == ["stream-json"]
    # stream-json prints one line per content block; they group back into one step per message
    assert [len(s.get("tool_calls", [])) for s in agent] == [1, 2, 0]


@pytest.mark.parametrize("cut", [0, 500, 3000, 6500])
def test_truncated_output_still_gives_a_valid_trajectory(adapter, tmp_path, cut):
    cut_sample(SAMPLE, tmp_path, cut, "*.jsonl", cut)
    check_truncated(adapter, tmp_path)


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_error_class_on_recorded_failures(adapter, case, tmp_path):
    rec = ERRORS[case]
    # the CLI's own "API Error: ..." message is kept as a CLI error, never as the agent speaking
    doc = check_recorded_failure(adapter, rec, tmp_path)
    assert doc["extra"]["is_error"] is True and doc["extra"]["cli_error_messages"]


def test_error_class_success_and_edge_cases(adapter):
    assert adapter.error_class((SAMPLE / "stdout.txt").read_text(), "", 0) is None
    assert classify_error("", "", -9) == "killed"
    assert classify_error("", "Segmentation fault", 139) == "unknown"
    timeout = json.dumps({"type": "result", "subtype": "success", "is_error": True, "api_error_status": None,
                          "result": "API Error: Request timed out."})
    assert classify_error(timeout, "", 1) == "timeout"
    turns = json.dumps({"type": "result", "subtype": "error_max_turns", "is_error": True})
    assert classify_error(turns, "", 1) == "turn_limit"


# ---- the real CLI (slow) -----------------------------------------------------------------------

def _run_real(tmp_path: Path, policy_body: str) -> tuple[subprocess.CompletedProcess, ScriptedModelServer, Path]:
    return run_real_cli(tmp_path, ClaudeCode(), policy_body,
                        memory_text="# Memory\n<!-- stripped by claude-code -->\n- Cooperation: 95%.\n",
                        memory_marker="- Cooperation: 95%.", timeout=240)


@pytest.mark.slow
def test_real_claude_code_plays_a_policy_and_converts(tmp_path):
    # an existing, unread file: written through Bash, since Claude Code's Write would refuse
    agent = play_write_policy(ClaudeCode(), _run_real, tmp_path, "CLAUDE.md", "replaced\n")
    assert [[c["function_name"] for c in s.get("tool_calls", [])] for s in agent] == [["Bash", "Bash"], ["Read"], []]
    assert "hi" in agent[1]["observation"]["results"][0]["content"]


@pytest.mark.slow
def test_real_claude_code_api_error_is_typed(tmp_path):
    proc, _ = play_api_error(ClaudeCode(), _run_real, tmp_path, 401, "auth")
    assert proc.returncode != 0
