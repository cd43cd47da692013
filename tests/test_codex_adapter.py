"""The codex adapter: declaration, per-trial config, env, command, native logs, error classes
and trajectory conversion from output recorded from the real CLI (tests/data/codex/, see
tests/data/record_agent_samples.py), plus runs of the real codex 0.169.0 (slow)."""
from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from harnesses.atif import validate_trajectory
from harnesses.base import AgentPaths
from harnesses.codex import API_KEY_ENV, PROVIDER, Codex, classify_error
from harnesses.registry import AGENTS, SANDBOX_AGENT_DIR, SANDBOX_MODEL_ENDPOINT, get_agent
from runner.model_server import ScriptedModelServer

from adapter_checks import (
    check_recorded_failure, check_truncated, cut_sample, play_api_error, play_write_policy, run_real_cli,
    stdout_only_trajectory)

DATA = Path(__file__).parent / "data" / "codex"
SAMPLE = DATA / "three_step"
ERRORS = json.loads((DATA / "errors.json").read_text())


@pytest.fixture
def adapter() -> Codex:
    return Codex()


def test_declaration_and_registry():
    assert AGENTS["codex"] is Codex and isinstance(get_agent("codex"), Codex)
    assert (Codex.npm_package, Codex.version, Codex.memory_file) == ("@openai/codex", "0.169.0", "AGENTS.md")
    assert Codex.prefix().name == "codex-0.169.0"
    assert Codex.entry_path() == Codex.prefix() / Codex.entrypoint


def test_sandbox_endpoint_is_the_bridge_port():
    from runner.sandbox import MODEL_PORT
    assert SANDBOX_MODEL_ENDPOINT == f"http://127.0.0.1:{MODEL_PORT}"


def test_prepare_home_pins_provider_and_headless_config(adapter, tmp_path):
    adapter.prepare_home(tmp_path)
    config = tomllib.loads((tmp_path / ".codex" / "config.toml").read_text())
    assert config["model_provider"] == PROVIDER
    provider = config["model_providers"][PROVIDER]
    assert provider["base_url"] == f"{SANDBOX_MODEL_ENDPOINT}/v1"
    assert provider["wire_api"] == "responses" and provider["env_key"] == API_KEY_ENV
    assert provider["request_max_retries"] == 0 and provider["stream_max_retries"] == 0
    assert config["approval_policy"] == "never" and config["sandbox_mode"] == "danger-full-access"
    assert config["features"]["plugins"] is False and config["analytics"]["enabled"] is False
    adapter.prepare_home(tmp_path, endpoint="http://127.0.0.1:4321/")
    config = tomllib.loads((tmp_path / ".codex" / "config.toml").read_text())
    assert config["model_providers"][PROVIDER]["base_url"] == "http://127.0.0.1:4321/v1"


def test_env_is_complete_and_leaks_nothing_from_the_host(adapter, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    env = adapter.env(AgentPaths(), SANDBOX_MODEL_ENDPOINT)
    assert env["HOME"] == "/home/agent" and env["CODEX_HOME"] == "/home/agent/.codex"
    assert env["TMPDIR"] == "/tmp" and env[API_KEY_ENV] == "dummy"
    assert "sk-host-secret" not in json.dumps(env) and "OPENAI_API_KEY" not in env
    assert set(env) == {"PATH", "HOME", "CODEX_HOME", "TMPDIR", "SHELL", "TERM", "LANG", "NO_COLOR", API_KEY_ENV}


def test_command_is_headless_and_keeps_the_prompt_a_prompt(adapter):
    argv = adapter.command("-rm everything", "stub-model")
    assert argv[0] == f"{SANDBOX_AGENT_DIR}/{Codex.entrypoint}"
    assert argv[1:3] == ["exec", "--json"] and argv[argv.index("-m") + 1] == "stub-model"
    assert argv[-2:] == ["--", "-rm everything"]
    host = adapter.host_command("-rm everything", "stub-model")
    assert host[0] == str(Codex.entry_path()) and host[1:] == argv[1:]


def test_native_logs_finds_rollouts(adapter, tmp_path):
    day = tmp_path / ".codex" / "sessions" / "2026" / "11" / "23"
    day.mkdir(parents=True)
    (day / "rollout-2026-11-23T01-00-00-abc.jsonl").write_text("{}\n")
    (tmp_path / ".codex" / "state_5.sqlite").write_text("")
    assert adapter.native_logs(tmp_path, tmp_path / "tmp") == [day / "rollout-2026-11-23T01-00-00-abc.jsonl"]
    assert adapter.native_logs(tmp_path / "missing", tmp_path) == []


# ---- trajectories ------------------------------------------------------------------------------

def test_trajectory_from_recorded_run(adapter):
    doc = adapter.trajectory(SAMPLE, "scripted:three")
    traj = validate_trajectory(doc)
    assert doc["agent"] == {"name": "codex", "version": "0.169.0", "model_name": "scripted:three"}
    assert doc["extra"]["sources"] == ["rollout", "exec-json"] and doc["extra"]["status"] == "completed"
    assert [s["source"] for s in doc["steps"]] == ["user", "agent", "agent", "agent"]
    assert doc["steps"][0]["message"] == "Make the files and report."
    assert "SAMPLE-MEMORY-MARKER" in doc["steps"][0]["extra"]["session_context"]   # AGENTS.md reached the model
    two = doc["steps"][2]
    assert two["message"] == "Two things at once."
    assert [c["function_name"] for c in two["tool_calls"]] == ["exec_command", "exec_command"]
    assert two["tool_calls"][1]["arguments"]["cmd"].endswith("/missing.txt")
    results = {r["source_call_id"]: r["content"] for r in two["observation"]["results"]}
    assert "No such file or directory" in results[two["tool_calls"][1]["tool_call_id"]]
    assert all(s["metrics"]["prompt_tokens"] > 0 for s in doc["steps"][1:])
    assert doc["final_metrics"]["total_prompt_tokens"] == sum(s["metrics"]["prompt_tokens"] for s in doc["steps"][1:])
    assert traj.final_agent_text() == "Both steps are done."
    assert doc["session_id"] in next((SAMPLE / "logs").glob("rollout-*.jsonl")).name


def test_trajectory_from_stdout_alone(adapter, tmp_path):
    doc, agent = stdout_only_trajectory(adapter, SAMPLE, tmp_path)
    assert doc["extra"]["rebuilt_from_stdout"]
    assert [s["message"] for s in agent] == ["Creating the first file.", "Two things at once.", "Both steps are done."]
    assert len(agent[1]["tool_calls"]) == 2
    # the two calls ran in parallel: the failing read finished first
    assert sorted(r["extra"]["exit_code"] for r in agent[1]["observation"]["results"]) == [0, 1]


@pytest.mark.parametrize("cut", [0, 300, 1200, 2000])
def test_truncated_output_still_gives_a_valid_trajectory(adapter, tmp_path, cut):
    cut_sample(SAMPLE, tmp_path, cut, "rollout-*.jsonl", cut * 8)
    check_truncated(adapter, tmp_path)


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_error_class_on_recorded_failures(adapter, case, tmp_path):
    rec = ERRORS[case]
    # a failed run is never an agent that spoke (and so never a refusal)
    doc = check_recorded_failure(adapter, rec, tmp_path)
    assert doc["extra"]["status"] == "failed" and doc["extra"]["errors"]


def test_error_class_success_and_edge_cases(adapter):
    assert adapter.error_class((SAMPLE / "stdout.txt").read_text(), "", 0) is None
    assert classify_error("", "", -9) == "killed"
    assert classify_error("", "thread panicked", 101) == "unknown"
    failed = json.dumps({"type": "turn.failed", "error": {"message": "stream disconnected before completion: "
                                                                      "idle timeout waiting for SSE"}})
    assert classify_error(failed, "", 1) == "timeout"
    overflow = json.dumps({"type": "error", "message": "Codex ran out of room in the model's context window."})
    assert classify_error(overflow, "", 1) == "context_overflow"


# ---- the real CLI (slow) -----------------------------------------------------------------------

def _run_real(tmp_path: Path, policy_body: str) -> tuple[subprocess.CompletedProcess, ScriptedModelServer, Path]:
    adapter = Codex()
    argv = adapter.host_command("Do the task.", "stub-model")
    argv.insert(2, "--strict-config")     # every pinned config key is known to this version
    return run_real_cli(tmp_path, adapter, policy_body, memory_text="# Memory\n- Cooperation: 95%.\n",
                        memory_marker="- Cooperation: 95%.",
                        prepare_home=lambda home, endpoint: adapter.prepare_home(home, endpoint=endpoint),
                        argv=argv, timeout=240)


@pytest.mark.slow
def test_real_codex_plays_a_policy_and_converts(tmp_path):
    agent = play_write_policy(Codex(), _run_real, tmp_path, "notes/plan.txt", "it's step one\n")
    assert [len(s.get("tool_calls", [])) for s in agent] == [2, 1, 0]
    assert agent[1]["observation"]["results"][0]["content"].endswith("hi\n")


@pytest.mark.slow
def test_real_codex_api_error_is_typed(tmp_path):
    proc, _ = play_api_error(Codex(), _run_real, tmp_path, 429, "rate_limit")
    assert proc.returncode != 0
