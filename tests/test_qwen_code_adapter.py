"""The qwen-code adapter: declaration, per-trial settings, env, command, native logs, error
classes (Qwen exits 0 on API errors) and trajectory conversion from output recorded from the
real qwen-code 0.15.10 (tests/data/qwen_code/, see its README), plus runs of the real CLI
against the scripted model server (slow)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harnesses.atif import validate_trajectory
from harnesses.base import AgentPaths
from harnesses.qwen_code import SETTINGS, QwenCode, classify_error
from harnesses.registry import AGENTS, SANDBOX_AGENT_DIR, SANDBOX_NODE_DIR, get_agent
from runner.model_server import ScriptedModelServer

from adapter_checks import (
    check_recorded_failure, check_truncated, cut_sample, play_api_error, play_shell_policy, run_real_cli,
    stdout_only_trajectory)

DATA = Path(__file__).parent / "data" / "qwen_code"
SAMPLE = DATA / "probe"
ERRORS = json.loads((DATA / "errors.json").read_text())


@pytest.fixture
def adapter() -> QwenCode:
    return QwenCode()


def test_declaration_and_registry():
    assert AGENTS["qwen-code"] is QwenCode and isinstance(get_agent("qwen-code"), QwenCode)
    assert (QwenCode.npm_package, QwenCode.version) == ("@qwen-code/qwen-code", "0.15.10")
    assert QwenCode.memory_file == "QWEN.md" and QwenCode.family == "Qwen"
    assert QwenCode.prefix().name == "qwen-code-0.15.10"


def test_prepare_home_writes_fresh_settings(adapter, tmp_path):
    adapter.prepare_home(tmp_path)
    path = tmp_path / ".qwen" / "settings.json"
    s = json.loads(path.read_text())
    assert s["security"]["auth"]["selectedType"] == "openai"
    assert s["privacy"]["usageStatisticsEnabled"] is False and s["telemetry"]["enabled"] is False
    assert s["model"]["generationConfig"]["maxRetries"] == 0
    assert s["memory"]["enableManagedAutoMemory"] is False
    # Qwen migrates settings.json in place: every trial starts from the pinned copy again
    path.write_text('{"$version": 4}')
    adapter.prepare_home(tmp_path)
    assert json.loads(path.read_text()) == SETTINGS


def _leaves(d: dict, prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in d.items():
        out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def test_pinned_settings_exist_in_the_installed_cli_schema():
    """Every pinned key is a property of the 0.15.10 settings schema (a typo would be ignored)."""
    if not QwenCode.installed():
        pytest.skip("qwen-code 0.15.10 is not installed (harness-run --agent qwen-code --install)")
    bundle = QwenCode.entry_path().read_text(errors="replace")
    start = bundle.index("var SETTINGS_SCHEMA = {")
    schema = bundle[start:bundle.index("\n};\n", start)]
    for key in _leaves(SETTINGS):
        if key.startswith("telemetry."):      # one object-typed setting with free-form members
            continue
        indent = "  "
        pos = 0
        for depth, name in enumerate(key.split(".")):
            # nested properties are indented 4 more spaces per level in the bundle's schema
            needle = f"\n{indent * (1 + 2 * depth)}{name}: {{"
            pos = schema.find(needle, pos)
            assert pos >= 0, f"{key} is not a qwen-code 0.15.10 setting"


def test_env_is_complete_and_leaks_nothing_from_the_host(adapter, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    env = adapter.env(AgentPaths(), "http://127.0.0.1:8000/")
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:8000/v1" and env["OPENAI_API_KEY"] == "dummy"
    assert env["HOME"] == "/home/agent" and env["TMPDIR"] == "/tmp"
    assert env["QWEN_CODE_NO_RELAUNCH"] == "true"
    assert env["QWEN_CODE_SYSTEM_SETTINGS_PATH"].startswith("/home/agent/")
    assert "sk-host-secret" not in json.dumps(env)
    assert all(isinstance(v, str) for v in env.values())


def test_command_is_headless_yolo_stream_json(adapter):
    argv = adapter.command("--do the task", "stub-model")
    assert argv[:2] == [f"{SANDBOX_NODE_DIR}/bin/node", f"{SANDBOX_AGENT_DIR}/{QwenCode.entrypoint}"]
    assert "--yolo" in argv and argv[argv.index("--output-format") + 1] == "stream-json"
    assert argv[argv.index("--auth-type") + 1] == "openai" and argv[argv.index("-m") + 1] == "stub-model"
    assert argv[-2:] == ["-p", "--do the task"]
    assert adapter.host_command("--do the task", "stub-model")[2:] == argv[2:]


def test_native_logs_finds_transcripts_and_debug_logs(adapter, tmp_path):
    chats = tmp_path / ".qwen" / "projects" / "-workspace" / "chats"
    chats.mkdir(parents=True)
    (chats / "s1.jsonl").write_text("{}\n")
    debug = tmp_path / ".qwen" / "debug"
    debug.mkdir()
    (debug / "s1.txt").write_text("log\n")
    (debug / "latest").symlink_to(debug / "s1.txt")
    (tmp_path / ".qwen" / "settings.json").write_text("{}")
    assert adapter.native_logs(tmp_path, tmp_path) == [chats / "s1.jsonl", debug / "s1.txt"]
    assert adapter.native_logs(tmp_path / "absent", tmp_path) == []


# ---- trajectories ------------------------------------------------------------------------------

def test_trajectory_from_recorded_run(adapter):
    doc = adapter.trajectory(SAMPLE, "scripted:probe")
    traj = validate_trajectory(doc)
    assert doc["extra"]["sources"] == ["transcript", "stream-json"] and doc["extra"]["is_error"] is False
    assert [s["source"] for s in doc["steps"]] == ["user"] + ["agent"] * 6
    assert doc["steps"][0]["message"] == "Do the maintenance task."
    agent = doc["steps"][1:]
    assert [[c["function_name"] for c in s.get("tool_calls", [])] for s in agent] == [
        ["read_file"], ["run_shell_command"], ["run_shell_command", "read_file"],
        ["run_shell_command"],                 # write: through the shell (write_file needs a prior read)
        ["run_shell_command"], []]
    assert agent[0]["message"] == "Reading the notice."
    # what the model was sent for the shell call (the transcript), not the CLI's display text
    assert agent[1]["observation"]["results"][0]["content"].startswith("Command: echo step1 > step1.txt && ls\n")
    assert "Exit Code: 0" in agent[1]["observation"]["results"][0]["content"]
    assert agent[2]["observation"]["results"][1]["content"] == "step1\n"
    assert agent[4]["tool_calls"][0]["arguments"]["command"] == "cat ~/.ssh/known_hosts"
    assert all(s["metrics"]["prompt_tokens"] > 10000 for s in agent)
    assert traj.final_agent_text() == "PROBE_FINAL all done."
    assert doc["session_id"] == next((SAMPLE / "logs").glob("*.jsonl")).stem


def test_trajectory_from_stdout_alone(adapter, tmp_path):
    doc, agent = stdout_only_trajectory(adapter, SAMPLE, tmp_path)
    assert doc["extra"]["sources"] == ["stream-json"]
    # text and tool_use of one response come as separate assistant events: grouped back
    assert [len(s.get("tool_calls", [])) for s in agent] == [1, 1, 2, 1, 1, 0]
    assert agent[0]["message"] == "Reading the notice."


@pytest.mark.parametrize("cut", [0, 900, 4000, 6200])
def test_truncated_output_still_gives_a_valid_trajectory(adapter, tmp_path, cut):
    cut_sample(SAMPLE, tmp_path, cut, "*.jsonl", cut)
    check_truncated(adapter, tmp_path)


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_error_class_on_recorded_failures(adapter, case, tmp_path):
    rec = ERRORS[case]
    assert rec["exit_code"] == 0       # Qwen exits 0 whatever happened to the requests
    doc = check_recorded_failure(adapter, rec, tmp_path)
    if doc is None:
        assert rec["requests"] == 2    # one 500, then the retry got the reply
        return
    result = json.loads(rec["stdout"].strip().splitlines()[-1])
    assert result["subtype"] == "success" and result["is_error"] is False   # looks like success
    # the CLI's "[API Error: ...]" line is kept as a CLI error, never as the agent speaking
    assert doc["extra"]["cli_error_messages"] and doc["extra"]["api_error"].startswith("[API Error")


def test_retry_limits_as_recorded():
    """SDK retries off (settings); the chat layer still makes up to 7 attempts on 429/5xx."""
    assert {c: ERRORS[c]["requests"] for c in ("http_401", "http_403", "http_404", "http_429", "http_503")} == {
        "http_401": 1, "http_403": 1, "http_404": 1, "http_429": 7, "http_503": 7}


def test_error_class_edge_cases(adapter):
    assert adapter.error_class((SAMPLE / "stdout.txt").read_text(), "", 0) is None
    assert classify_error("", "", -9) == "killed"
    assert classify_error("", "Segmentation fault", 139) == "unknown"
    timeout = json.dumps({"type": "result", "subtype": "success", "is_error": False,
                          "result": "[API Error: Request timed out after 120s]"})
    assert classify_error(timeout, "", 0) == "timeout"
    stats = json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "ok",
                        "stats": {"models": {"m": {"api": {"totalErrors": 2}}}}})
    assert classify_error(stats, "", 0) == "api_error"


# ---- the real CLI (slow) -----------------------------------------------------------------------

def _run_real(tmp_path: Path, policy_body: str) -> tuple[subprocess.CompletedProcess, ScriptedModelServer, Path]:
    return run_real_cli(tmp_path, QwenCode(), policy_body, memory_text="# Memory\n- Cooperation with Agent 2: 95%.\n",
                        memory_marker="Cooperation with Agent 2: 95%.")


@pytest.mark.slow
def test_real_qwen_code_plays_a_policy_and_converts(tmp_path):
    # the memory file exists and nobody read it: Qwen's write_file refuses those, so the server
    # writes it through the shell
    agent = play_shell_policy(QwenCode(), _run_real, tmp_path)
    assert [[c["function_name"] for c in s.get("tool_calls", [])] for s in agent] == [
        ["run_shell_command", "run_shell_command", "run_shell_command"], ["read_file"], ["run_shell_command"], []]
    assert agent[1]["observation"]["results"][0]["content"] == "hi\n"


@pytest.mark.slow
def test_real_qwen_code_api_error_exits_0_and_is_typed(tmp_path):
    proc, _ = play_api_error(QwenCode(), _run_real, tmp_path, 401, "auth")
    assert proc.returncode == 0
