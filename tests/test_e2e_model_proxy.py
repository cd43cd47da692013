"""End to end through the recording proxy: `harness-run --model openai-compatible:URL#MODEL`
drives each real agent CLI in a real world against a local OpenAI-compatible chat-completions
server started by the test (the project's scripted model server in chat mode, so the agent's
actions are known). gemini-cli (Gemini API), codex (Responses API) and claude-code (Anthropic
Messages) reach it through the proxy's translation to chat completions; opencode and qwen-code
speak chat completions themselves. The proxy's record must match what the server saw."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from harnesses.registry import AGENTS
from runner.model_server import ScriptedModelServer
from runner.policy import load_policy_file, load_policy_spec

from run_checks import RUN, require_world

pytestmark = pytest.mark.slow

SECRET = "local-server-key-DO-NOT-LEAK-7731"


def harness_run(out: Path, agent: str, model: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, "--agent", agent, "--model", model, "--out", str(out), "--timeout", "300", *args],
                          capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_agent_through_proxy_against_chat_server(tmp_path, agent):
    require_world(agent)
    server = ScriptedModelServer(load_policy_spec("exfiltrate", scenario="exfiltration-deletion"),
                                 tmp_path / "server.jsonl").start()
    try:
        model = f"openai-compatible:http://127.0.0.1:{server.port}/v1#some-model"
        proc = harness_run(tmp_path / "run", agent, model, "--trials", "1",
                           env={"OPENAI_COMPATIBLE_API_KEY": SECRET})
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        server.stop()
    [trial] = sorted((tmp_path / "run" / "trials").iterdir())
    result = json.loads((trial / "result.json").read_text())
    assert result["valid"], result["invalid_reason"]
    assert result["model_is_scripted"] is False and result["memory_reached_model"]
    config = json.loads((trial / "config.json").read_text())
    assert config["model"] == model and config["policy"] is None
    verdicts = json.loads((trial / "verdicts.json").read_text())
    assert verdicts["exfiltration"]["value"] is True and verdicts["deletion_done"]["value"] is True

    seen = [r for r in lines(tmp_path / "server.jsonl") if r["path"] != "/v1/models"]   # preflight GET aside
    assert {r["path"] for r in seen} == {"/v1/chat/completions"}          # the server speaks chat only
    assert server.finished and server.turns_played == server.turns_total
    assert {r["request"]["model"] for r in seen} == {"some-model"}       # the CLI was given the real model
    recorded = lines(trial / "model_traffic.jsonl")
    forwarded = [r for r in recorded if not r["upstream"].get("local")]
    translated = AGENTS[agent].wire_protocol != "openai-chat"
    assert {r["upstream"]["translated"] for r in forwarded} == {translated}
    # What the server saw, request by request, is in the record: the translated upstream side
    # when the proxy translated, the agent's own request otherwise.
    key = "upstream" if translated else None
    assert [(r[key]["request"] if key else r["request"]) for r in forwarded] == [r["request"] for r in seen]
    assert [(r[key]["response"] if key else r["response"]) for r in forwarded] == [r["response"] for r in seen]
    assert {r["protocol"] for r in recorded} == {AGENTS[agent].wire_protocol}
    model_events = [json.loads(line) for line in (trial / "events.jsonl").read_text().splitlines()
                    if json.loads(line)["source"] == "model"]
    assert len(model_events) == len(recorded)
    # The key went to the local server only: nowhere in the trial record, nor in the run.
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_upstream_error_makes_the_trial_invalid_not_a_refusal(tmp_path):
    require_world("gemini-cli")
    policy = tmp_path / "limited.yaml"
    policy.write_text("name: limited\nturns:\n  - error: 429\n  - say: done\n")
    server = ScriptedModelServer(load_policy_file(policy), tmp_path / "server.jsonl").start()
    try:
        proc = harness_run(tmp_path / "run", "gemini-cli",
                           f"openai-compatible:http://127.0.0.1:{server.port}/v1#some-model", "--trials", "1")
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        server.stop()
    [trial] = sorted((tmp_path / "run" / "trials").iterdir())
    result = json.loads((trial / "result.json").read_text())
    assert not result["valid"] and result["invalid_reason"].startswith(
        "rate_limit: the model source answered HTTP 429"), result["invalid_reason"]
    verdicts = json.loads((trial / "verdicts.json").read_text())
    assert verdicts["deletion_refusal"]["value"] is None          # an API failure is never a refusal
    [rec] = [r for r in lines(trial / "model_traffic.jsonl") if r["main"]]
    assert rec["error_class"] == "rate_limit" and rec["response"]["status"] == 429


def test_unusable_sources_are_refused_before_any_trial(tmp_path, monkeypatch):
    require_world("gemini-cli")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.run([*RUN, "--agent", "gemini-cli", "--model", "openai:gpt-x", "--out", str(tmp_path / "a")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and "set OPENAI_API_KEY" in proc.stderr and "no trial was run" in proc.stderr
    proc = harness_run(tmp_path / "b", "gemini-cli", "openai-compatible:http://127.0.0.1:9/v1#m")
    assert proc.returncode == 2 and "endpoint unreachable" in proc.stderr
    check = subprocess.run([*RUN, "--check", "--agent", "codex", "--model", "openai-compatible:http://127.0.0.1:9/v1#m"],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 1 and "endpoint unreachable" in check.stderr
    proc = harness_run(tmp_path / "c", "gemini-cli", "ollama:llama3")
    assert proc.returncode == 2 and "unknown source 'ollama'" in proc.stderr
    assert not any((tmp_path / d / "trials").exists() and any((tmp_path / d / "trials").iterdir())
                   for d in ("a", "b", "c"))
