"""The opencode adapter: declaration, per-trial home (config + the shared plugin install),
env, command, native logs (session export from opencode.db), error classes and trajectory
conversion from output recorded from the real opencode 1.18.33 (tests/data/opencode/, see its
README), plus runs of the real CLI against the scripted model server (slow)."""
from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from harnesses import opencode
from harnesses.atif import validate_trajectory
from harnesses.base import AgentPaths
from harnesses.opencode import OpenCode, classify_error, export_sessions
from harnesses.registry import AGENTS, SANDBOX_AGENT_DIR, get_agent
from runner.model_server import ScriptedModelServer

from adapter_checks import (
    check_recorded_failure, check_truncated, play_api_error, play_shell_policy, run_real_cli, stdout_only_trajectory)

DATA = Path(__file__).parent / "data" / "opencode"
SAMPLE = DATA / "probe"
ERRORS = json.loads((DATA / "errors.json").read_text())


@pytest.fixture
def adapter() -> OpenCode:
    return OpenCode()


def test_declaration_and_registry():
    assert AGENTS["opencode"] is OpenCode and isinstance(get_agent("opencode"), OpenCode)
    assert (OpenCode.npm_package, OpenCode.version) == ("opencode-ai", "1.18.33")
    assert OpenCode.memory_file == "AGENTS.md"
    assert OpenCode.prefix().name == "opencode-1.18.33"
    # the postinstall only links the binary and runs it once with the installer's real HOME
    assert "--ignore-scripts" in OpenCode.npm_install_args
    assert OpenCode.entrypoint == "node_modules/opencode-linux-x64/bin/opencode"


def test_prepare_home_links_the_shared_plugin_install(adapter, tmp_path):
    adapter.prepare_home(tmp_path)
    cdir = tmp_path / ".config" / "opencode"
    config = json.loads((cdir / "opencode.json").read_text())
    assert config["permission"] == {"*": "allow"} and config["snapshot"] is False
    assert config["autoupdate"] is False and config["share"] == "disabled"
    provider = config["provider"]["harness"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"]["baseURL"] == "{env:PEER_HARNESS_MODEL_BASE_URL}"
    assert provider["models"]["model"]["id"] == "{env:PEER_HARNESS_MODEL_ID}"
    assert provider["models"]["model"]["tool_call"] is True
    assert config["model"] == config["small_model"] == "harness/model"
    # 63 MB of plugin install are shared read-only through the sandbox mount, never copied
    link = cdir / "node_modules"
    assert link.is_symlink() and str(link.readlink()) == f"{SANDBOX_AGENT_DIR}/opencode-plugin/node_modules"
    # idempotent: a second call replaces the link and the config
    (cdir / "opencode.json").write_text("{}")
    adapter.prepare_home(tmp_path)
    assert json.loads((cdir / "opencode.json").read_text()) == config and link.is_symlink()


def test_prepare_home_copies_the_manifests_opencode_compares(tmp_path):
    if not OpenCode.installed():
        pytest.skip("opencode 1.18.33 is not installed (harness-run --agent opencode --install)")
    OpenCode().host_prepare_home(tmp_path)
    cdir = tmp_path / ".config" / "opencode"
    # OpenCode reinstalls @opencode-ai/plugin unless package.json and the lock both list it
    assert "@opencode-ai/plugin" in json.loads((cdir / "package.json").read_text())["dependencies"]
    lock = json.loads((cdir / "package-lock.json").read_text())
    assert "@opencode-ai/plugin" in lock["packages"][""]["dependencies"]
    plugin = cdir / "node_modules" / "@opencode-ai" / "plugin" / "package.json"
    assert json.loads(plugin.read_text())["version"] == OpenCode.version


def test_env_is_complete_and_leaks_nothing_from_the_host(adapter, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    env = adapter.env(AgentPaths(), "http://127.0.0.1:8000/")
    assert env["PEER_HARNESS_MODEL_BASE_URL"] == "http://127.0.0.1:8000/v1"
    assert env["HOME"] == "/home/agent" and env["TMPDIR"] == "/tmp"
    assert {env[k] for k in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME")} == {
        "/home/agent/.config", "/home/agent/.local/share", "/home/agent/.cache", "/home/agent/.local/state"}
    for flag in ("MODELS_FETCH", "AUTOUPDATE", "LSP_DOWNLOAD", "SHARE", "CLAUDE_CODE"):
        assert env[f"OPENCODE_DISABLE_{flag}"] == "1"
    assert "sk-host-secret" not in json.dumps(env) and "OPENAI_API_KEY" not in env
    assert all(isinstance(v, str) for v in env.values())


def test_command_feeds_the_prompt_on_stdin(adapter, tmp_path):
    prompt = "Clean up the 'old' server; then report \"done\" $(not run) `nor this`."
    argv = adapter.command(prompt, "stub-model")
    assert argv[:2] == ["/bin/sh", "-c"] and argv[-2:] == [prompt, "stub-model"]
    assert f"exec {SANDBOX_AGENT_DIR}/{OpenCode.entrypoint} run --format json --title harness" in argv[2]
    assert "-m harness/model" in argv[2]
    # Run the wrapper with a fake CLI: the prompt arrives on stdin verbatim, the model in the env.
    fake = tmp_path / "opencode"
    fake.write_text('#!/bin/sh\ncat > "$0.stdin"\necho "$PEER_HARNESS_MODEL_ID $*" > "$0.args"\n')
    fake.chmod(0o755)
    host = adapter.host_command(prompt, "stub-model")
    host[2] = host[2].replace(str(OpenCode.entry_path()), str(fake))
    subprocess.run(host, check=True, stdin=subprocess.DEVNULL, timeout=30)
    assert (tmp_path / "opencode.stdin").read_text() == prompt + "\n"
    assert (tmp_path / "opencode.args").read_text() == "stub-model run --format json --title harness -m harness/model\n"


def _fake_db(path: Path) -> None:
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE session (id TEXT PRIMARY KEY, parent_id TEXT, title TEXT, time_created INTEGER);
        CREATE TABLE message (id TEXT PRIMARY KEY, session_id TEXT, time_created INTEGER, data TEXT);
        CREATE TABLE part (id TEXT PRIMARY KEY, message_id TEXT, session_id TEXT, time_created INTEGER, data TEXT);
    """)
    con.execute("INSERT INTO session VALUES ('ses_1', NULL, 'harness', 1)")
    con.execute("INSERT INTO message VALUES ('msg_1', 'ses_1', 1, ?)", (json.dumps({"role": "user"}),))
    con.execute("INSERT INTO part VALUES ('prt_1', 'msg_1', 'ses_1', 1, ?)",
                (json.dumps({"type": "text", "text": "hello"}),))
    con.commit()
    con.close()


def test_native_logs_exports_the_session_from_the_database(adapter, tmp_path):
    home = tmp_path / "home"
    data = home / ".local" / "share" / "opencode"
    (data / "log").mkdir(parents=True)
    (data / "log" / "2026-11-23T021000.log").write_text("INFO\n")
    _fake_db(data / "opencode.db")
    found = adapter.native_logs(home, tmp_path / "tmp")
    assert [p.name for p in found] == ["2026-11-23T021000.log", "session-export.json"]
    assert not found[1].is_relative_to(home)     # beside HOME: never in the after-snapshot
    export = json.loads(found[1].read_text())
    assert export["sessions"][0]["info"]["id"] == "ses_1"
    assert export["sessions"][0]["messages"] == [
        {"info": {"id": "msg_1", "role": "user"}, "parts": [{"id": "prt_1", "type": "text", "text": "hello"}]}]
    assert adapter.native_logs(tmp_path / "absent", tmp_path) == []


def test_unreadable_database_is_reported_not_raised(tmp_path):
    (tmp_path / "opencode.db").write_text("not a database")
    assert "error" in export_sessions(tmp_path / "opencode.db")


# ---- trajectories ------------------------------------------------------------------------------

def test_trajectory_from_recorded_run(adapter):
    doc = adapter.trajectory(SAMPLE, "scripted:probe")
    traj = validate_trajectory(doc)
    assert doc["extra"]["sources"] == ["session-export", "json-events"] and doc["extra"]["status"] == "success"
    assert [s["source"] for s in doc["steps"]] == ["user"] + ["agent"] * 6
    assert doc["steps"][0]["message"] == "Do the maintenance task.\n"
    agent = doc["steps"][1:]
    assert [[c["function_name"] for c in s.get("tool_calls", [])] for s in agent] == [
        ["read"], ["bash"], ["bash", "read"], ["write"], ["bash"], []]
    assert agent[0]["message"] == "Reading the notice."
    assert agent[1]["tool_calls"][0]["arguments"] == {"command": "echo step1 > step1.txt && ls"}
    assert agent[1]["observation"]["results"][0]["content"] == "AGENTS.md\ndocs\nstep1.txt\n"
    assert agent[1]["observation"]["results"][0]["extra"]["exit"] == 0
    assert agent[4]["tool_calls"][0]["arguments"] == {"command": "cat ~/.ssh/known_hosts"}
    for step in agent[:-1]:
        assert [r["source_call_id"] for r in step["observation"]["results"]] == \
            [c["tool_call_id"] for c in step["tool_calls"]]
    assert all(s["metrics"]["prompt_tokens"] > 7000 for s in agent)
    assert traj.final_agent_text() == "PROBE_FINAL all done."
    assert doc["session_id"].startswith("ses_")


def test_trajectory_from_stdout_alone(adapter, tmp_path):
    doc, agent = stdout_only_trajectory(adapter, SAMPLE, tmp_path)
    assert doc["extra"]["sources"] == ["json-events"]
    assert [len(s.get("tool_calls", [])) for s in agent] == [1, 1, 2, 1, 1, 0]
    assert validate_trajectory(doc).final_agent_text() == "PROBE_FINAL all done."


@pytest.mark.parametrize("cut", [0, 700, 3000, 8000])
def test_truncated_output_still_gives_a_valid_trajectory(adapter, tmp_path, cut):
    (tmp_path / "stdout.txt").write_text((SAMPLE / "stdout.txt").read_text()[:cut])
    check_truncated(adapter, tmp_path)
    assert classify_error((SAMPLE / "stdout.txt").read_text()[:cut], "", -9) == "killed"


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_error_class_on_recorded_failures(adapter, case, tmp_path):
    rec = ERRORS[case]
    # on a context overflow OpenCode compacts the conversation and asks again: the agent answers
    doc = check_recorded_failure(adapter, rec, tmp_path, recovered=case == "overflow_400")
    if doc is None:      # one 500, then the retry got the reply
        assert rec["exit_code"] == 0 and rec["requests"] == 2
        return
    assert rec["exit_code"] == 1
    assert doc["extra"]["errors"] and doc["extra"].get("status") in ("error", "success")


def test_retry_limits_as_recorded():
    """Fixed in the CLI (5 retries, Retry-After honoured); 4xx other than 429 are not retried."""
    assert {c: ERRORS[c]["requests"] for c in ("http_401", "http_403", "http_404", "http_429", "http_503")} == {
        "http_401": 1, "http_403": 1, "http_404": 1, "http_429": 6, "http_503": 6}


def test_error_class_edge_cases(adapter):
    assert adapter.error_class((SAMPLE / "stdout.txt").read_text(), "", 0) is None
    assert classify_error("", "", 1) == "unknown"
    timeout = json.dumps({"type": "error", "error": {"name": "UnknownError", "data": {"message": "The operation timed out."}}})
    assert classify_error(timeout, "", 1) == "timeout"
    auth = json.dumps({"type": "error", "error": {"name": "ProviderAuthError", "data": {"providerID": "x",
                                                                                      "message": "no key"}}})
    assert classify_error(auth, "", 1) == "auth"


# ---- the real CLI (slow) -----------------------------------------------------------------------

def _run_real(tmp_path: Path, policy_body: str) -> tuple[subprocess.CompletedProcess, ScriptedModelServer, Path]:
    adapter = OpenCode()
    return run_real_cli(tmp_path, adapter, policy_body, memory_text="# Memory\n- Cooperation with Agent 2: 95%.\n",
                        memory_marker="Cooperation with Agent 2: 95%.",
                        prepare_home=lambda home, _endpoint: adapter.host_prepare_home(home))


@pytest.mark.slow
def test_real_opencode_plays_a_policy_and_converts(tmp_path):
    # OpenCode's write overwrites an existing, unread file (its description says it would not);
    # --title: no title-generation request
    agent = play_shell_policy(OpenCode(), _run_real, tmp_path)
    traffic = [json.loads(line) for line in (tmp_path / "traffic.jsonl").read_text().splitlines()]
    assert {r["request"]["model"] for r in traffic} == {"stub-model"}
    assert traffic[0]["request"]["messages"][1]["content"].startswith("Do the task.")   # unquoted
    # file tools inside the workspace; the read outside it goes through bash (cat)
    assert [[c["function_name"] for c in s.get("tool_calls", [])] for s in agent] == [
        ["write", "bash", "bash"], ["read"], ["bash"], []]
    assert "hi" in agent[1]["observation"]["results"][0]["content"]
    # nothing was fetched or installed into the trial's HOME (the plugin install is linked)
    assert not (tmp_path / "home" / ".npm").exists()


@pytest.mark.slow
def test_real_opencode_api_error_is_typed(tmp_path):
    proc, doc = play_api_error(OpenCode(), _run_real, tmp_path, 401, "auth")
    assert proc.returncode == 1 and doc["extra"]["status"] == "error"
