"""The gemini-cli adapter: config, env, argv, native logs, error classes and trajectories.

Samples under tests/data/gemini_cli/ were recorded from the real gemini-cli 0.61.0 (host paths,
`-o stream-json`, `-m stub-model`) against a throwaway scripted Gemini-API stub:
- three_step/: a shell call, then a two-call turn (shell + a read_file that fails), then text;
  stdout.txt, stderr.txt, exit_code and logs/ (the session transcript), as a trial keeps them;
- errors.json: stdout/stderr/exit code of failing runs (HTTP errors, overflow, exit 41/42/53/55...).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harnesses.atif import validate_trajectory
from harnesses.base import AgentAdapter, AgentPaths, node_bin_dir
from harnesses.gemini_cli import ERROR_CLASSES, SETTINGS, GeminiCli, classify_error
from harnesses.registry import AGENTS, SANDBOX_AGENT_DIR, SANDBOX_NODE_DIR, UnknownAgent, get_agent

DATA = Path(__file__).parent / "data" / "gemini_cli"
SAMPLE = DATA / "three_step"
ERRORS = json.loads((DATA / "errors.json").read_text())


@pytest.fixture
def adapter() -> GeminiCli:
    return GeminiCli()


def _native(tmp_path: Path, stdout: str | None, with_logs: bool = True) -> Path:
    nd = tmp_path / "native"
    nd.mkdir()
    if stdout is not None:
        (nd / "stdout.txt").write_text(stdout)
    if with_logs:
        shutil.copytree(SAMPLE / "logs", nd / "logs")
    return nd


# --- declaration / registry -----------------------------------------------------------------
def test_declaration_and_registry():
    assert GeminiCli.name == "gemini-cli" and GeminiCli.version == "0.61.0"
    assert GeminiCli.npm_package == "@google/gemini-cli"
    assert GeminiCli.memory_file == "GEMINI.md" and GeminiCli.family == "Gemini"
    assert GeminiCli.entrypoint == "node_modules/@google/gemini-cli/bundle/gemini.js"
    assert AGENTS["gemini-cli"] is GeminiCli
    agent = get_agent("gemini-cli")
    assert isinstance(agent, GeminiCli) and isinstance(agent, AgentAdapter)
    with pytest.raises(UnknownAgent) as info:
        get_agent("nope")
    assert "nope" in str(info.value) and "gemini-cli" in str(info.value)


def test_install_is_idempotent_when_present(monkeypatch):
    if not GeminiCli.installed():
        pytest.skip("gemini-cli 0.61.0 not installed in the project cache")

    def no_npm(*a, **k):
        raise AssertionError("install() ran npm although the CLI is installed")

    monkeypatch.setattr(subprocess, "run", no_npm)
    assert GeminiCli.install(echo=lambda *_: None) == GeminiCli.prefix()


# --- home / env / argv ----------------------------------------------------------------------
def test_prepare_home_pins_headless_settings(adapter, tmp_path):
    adapter.prepare_home(tmp_path)
    s = json.loads((tmp_path / ".gemini" / "settings.json").read_text())
    assert s["security"]["auth"]["selectedType"] == "gemini-api-key"
    assert s["security"]["folderTrust"]["enabled"] is False
    assert s["privacy"]["usageStatisticsEnabled"] is False
    assert s["telemetry"]["enabled"] is False
    assert s["general"]["enableAutoUpdate"] is False
    assert s["general"]["enableAutoUpdateNotification"] is False
    assert s["general"]["maxAttempts"] == 1 and s["general"]["retryFetchErrors"] is False
    assert s["general"]["checkpointing"]["enabled"] is False
    assert s["ide"] == {"enabled": False, "hasSeenNudge": True}
    assert s["model"]["skipNextSpeakerCheck"] is True and s["model"]["disableLoopDetection"] is True
    # idempotent, and a fresh copy each time
    (tmp_path / ".gemini" / "settings.json").write_text("{}")
    adapter.prepare_home(tmp_path)
    assert json.loads((tmp_path / ".gemini" / "settings.json").read_text()) == s


def _leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_pinned_settings_exist_in_the_installed_cli_schema(tmp_path):
    """Every pinned key is a real 0.61 setting of the right type (a typo would be ignored)."""
    if not GeminiCli.installed():
        pytest.skip("gemini-cli 0.61.0 not installed in the project cache")
    bundle = GeminiCli.entry_path().parent
    chunk = next((p for p in sorted(bundle.glob("chunk-*.js"))
                  if "function getSettingsSchema()" in p.read_text(errors="replace")), None)
    assert chunk is not None, "settings schema not found in the bundle"
    script = tmp_path / "schema.mjs"
    script.write_text(
        f"const m = await import({json.dumps(chunk.as_uri())});\n"
        "const out = {};\n"
        "const walk = (o, p) => { for (const [k, v] of Object.entries(o)) {\n"
        "  out[p + k] = v.type; if (v.properties) walk(v.properties, p + k + '.'); } };\n"
        "walk(m.getSettingsSchema(), '');\n"
        "process.stdout.write(JSON.stringify(out));\n")
    proc = subprocess.run([str(node_bin_dir() / "node"), str(script)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    kinds = {bool: "boolean", int: "number", str: ("string", "enum")}
    for key, value in _leaves(SETTINGS).items():
        # telemetry is one object-typed setting (ref TelemetrySettings) with free-form members
        if key.startswith("telemetry."):
            assert schema["telemetry"] == "object"
            continue
        assert key in schema, f"{key} is not a gemini-cli 0.61 setting"
        assert schema[key] in kinds[type(value)], f"{key}: schema type {schema[key]}"


def test_env_is_complete_and_leaks_nothing_from_the_host(adapter):
    paths = AgentPaths(workspace="/workspace", home="/home/agent", tmp="/tmp")
    env = adapter.env(paths, "http://127.0.0.1:8000")
    assert env["PATH"] == "/usr/bin:/bin"
    assert env["HOME"] == env["GEMINI_CLI_HOME"] == "/home/agent"
    assert env["TMPDIR"] == "/tmp"
    assert env["TERM"] == "dumb" and env["LANG"] == "C.UTF-8" and env["NO_COLOR"] == "1"
    assert env["GEMINI_API_KEY"] == "dummy"
    assert env["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:8000"
    assert env["GEMINI_CLI_NO_RELAUNCH"] == "1"
    # system-wide settings (/etc/gemini-cli/...) redirected into the trial HOME
    assert env["GEMINI_CLI_SYSTEM_SETTINGS_PATH"].startswith("/home/agent/")
    assert env["GEMINI_CLI_SYSTEM_DEFAULTS_PATH"].startswith("/home/agent/")
    host_bits = {"/root", str(Path.home()), str(Path(__file__).resolve().parents[1]),
                 str(node_bin_dir()), str(GeminiCli.prefix())}
    for key, value in env.items():
        assert isinstance(value, str)
        for bit in host_bits:
            assert bit not in value, f"{key}={value} leaks host path {bit}"
    for key in ("USER", "LOGNAME", "SSH_AUTH_SOCK", "GOOGLE_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS",
                "HTTPS_PROXY", "HTTP_PROXY", "NODE_OPTIONS"):
        assert key not in env
    assert adapter.env(paths, "http://127.0.0.1:8000/")["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:8000"


def test_command_uses_sandbox_paths(adapter):
    argv = adapter.command("do the task", "stub-model")
    assert argv[0] == f"{SANDBOX_NODE_DIR}/bin/node" == "/opt/peer-harness/node/bin/node"
    assert argv[1] == f"{SANDBOX_AGENT_DIR}/{GeminiCli.entrypoint}"
    assert argv[1] == "/opt/peer-harness/agent/node_modules/@google/gemini-cli/bundle/gemini.js"
    assert argv[2:] == ["-p", "do the task", "--yolo", "--output-format", "stream-json", "-m", "stub-model"]
    joined = " ".join(argv)
    assert str(node_bin_dir()) not in joined and str(GeminiCli.prefix()) not in joined


def test_host_command_is_the_same_argv_with_host_paths(adapter):
    host, sandboxed = adapter.host_command("p", "m"), adapter.command("p", "m")
    assert host[2:] == sandboxed[2:]
    assert host[0] == str(node_bin_dir() / "node")
    assert host[1] == str(GeminiCli.entry_path())


def test_native_logs_finds_transcripts_and_error_reports(adapter, tmp_path):
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    chats = home / ".gemini" / "tmp" / "workspace" / "chats"
    (chats / "parent-id").mkdir(parents=True)
    (chats / "session-2026-11-23T01-02-abcdef12.jsonl").write_text("{}\n")
    (chats / "parent-id" / "sub.jsonl").write_text("{}\n")
    (home / ".gemini" / "tmp" / "workspace" / "logs.json").write_text("[]")
    (home / ".gemini" / "settings.json").write_text("{}")
    (home / ".gemini" / "projects.json").write_text("{}")
    tmp.mkdir()
    (tmp / "gemini-client-error-Turn.run-sendMessageStream-2026.json").write_text("{}")
    (tmp / "unrelated.json").write_text("{}")
    found = {p.relative_to(tmp_path).as_posix() for p in adapter.native_logs(home, tmp)}
    assert found == {
        "home/.gemini/tmp/workspace/chats/session-2026-11-23T01-02-abcdef12.jsonl",
        "home/.gemini/tmp/workspace/chats/parent-id/sub.jsonl",
        "home/.gemini/tmp/workspace/logs.json",
        "tmp/gemini-client-error-Turn.run-sendMessageStream-2026.json",
    }
    assert adapter.native_logs(tmp_path / "absent", tmp_path / "absent") == []


# --- trajectories from the recorded sample --------------------------------------------------
def _check_three_step(traj: dict) -> None:
    t = validate_trajectory(traj)
    assert t.schema_version == "ATIF-v1.7"
    assert t.agent.name == "gemini-cli" and t.agent.version == "0.61.0" and t.agent.model_name == "stub-model"
    assert [s.source for s in t.steps] == ["user", "agent", "agent", "agent"]
    assert t.steps[0].message.startswith("Create step1.txt")
    first, second, final = t.steps[1:]
    assert [tc.function_name for tc in first.tool_calls] == ["run_shell_command"]
    assert first.tool_calls[0].arguments["command"] == "echo step1 > step1.txt && ls"
    assert [tc.function_name for tc in second.tool_calls] == ["run_shell_command", "read_file"]
    for step in (first, second):
        ids = [tc.tool_call_id for tc in step.tool_calls]
        assert [r.source_call_id for r in step.observation.results] == ids
    assert "step1" in first.observation.results[0].content
    assert "step2" in second.observation.results[0].content
    assert second.observation.results[1].extra["status"] == "error"
    assert final.tool_calls is None and final.observation is None
    assert t.final_agent_text() == "STUB_FINAL: three tool calls done."
    assert len({tc.tool_call_id for tc in t.tool_calls()}) == 3


def test_trajectory_from_sample_with_session_log(adapter, tmp_path):
    nd = _native(tmp_path, (SAMPLE / "stdout.txt").read_text())
    traj = adapter.trajectory(nd, "stub-model")
    _check_three_step(traj)
    t = validate_trajectory(traj)
    first, second, final = t.steps[1:]
    assert t.session_id and t.session_id[:8] in traj["extra"]["session_log"]
    assert first.message == "I will create step1.txt and list the directory."
    assert first.reasoning_content == "Planning: I should create step1.txt first."
    # what the model was sent (session log), with the CLI's display text kept aside
    assert first.observation.results[0].content.startswith("<untrusted_context>")
    assert first.observation.results[0].extra["display"] == "GEMINI.md\nstep1.txt"
    assert second.observation.results[1].content.startswith("Error: File not found")
    assert [s.metrics.prompt_tokens for s in (first, second, final)] == [100, 200, 302]
    assert t.final_metrics.total_prompt_tokens == 602 and t.final_metrics.total_completion_tokens == 37
    assert t.final_metrics.total_steps == 4
    assert "GEMINI.md" in t.steps[0].extra["session_context"]   # the memory file reached the model
    assert traj["extra"]["status"] == "success" and "truncated" not in traj["extra"]
    assert traj["extra"]["sources"] == ["stream-json", "session-log"]


def test_trajectory_from_stdout_alone(adapter, tmp_path):
    nd = _native(tmp_path, (SAMPLE / "stdout.txt").read_text(), with_logs=False)
    traj = adapter.trajectory(nd, "stub-model")
    _check_three_step(traj)
    t = validate_trajectory(traj)
    assert t.steps[1].observation.results[0].content == "GEMINI.md\nstep1.txt"
    assert t.steps[1].metrics is None
    assert t.final_metrics.total_prompt_tokens == 602      # from the result event's stats


def test_trajectory_from_session_log_when_stdout_is_lost(adapter, tmp_path):
    traj = adapter.trajectory(_native(tmp_path, None), "stub-model")
    _check_three_step(traj)
    assert traj["extra"]["rebuilt_from_session_log"] is True and traj["extra"]["stdout_missing"] is True


STDOUT = (SAMPLE / "stdout.txt").read_text()


RESULT_AT = STDOUT.index('{"type":"result"')


@pytest.mark.parametrize("cut", [0, 1, 150, 400, 900, 1500, 2000, RESULT_AT, RESULT_AT + 30, len(STDOUT) - 3])
@pytest.mark.parametrize("with_logs", [False, True])
def test_truncated_stdout_still_gives_a_valid_trajectory(adapter, tmp_path, cut, with_logs):
    traj = adapter.trajectory(_native(tmp_path, STDOUT[:cut], with_logs), "stub-model")
    t = validate_trajectory(traj)
    assert traj["extra"]["truncated"] is True
    assert t.steps, "always at least one step"
    if 0 < cut and not STDOUT[:cut].endswith("\n"):
        assert traj["extra"].get("skipped_stdout_lines") == 1
    if with_logs:
        # the session transcript fills in whatever the cut stream lacks once the turns are known
        assert any(s.source == "agent" for s in t.steps)


def test_session_log_completes_a_stream_that_lags_behind(adapter, tmp_path):
    lines = STDOUT.splitlines()
    first_result = next(i for i, l in enumerate(lines) if '"tool_result"' in l)
    cut_mid_answer = STDOUT.index("three tool calls done.")
    for stdout in ("\n".join(lines[: first_result + 1]) + "\n", STDOUT[:cut_mid_answer]):
        traj = adapter.trajectory(_native(tmp_path, stdout), "stub-model")
        _check_three_step(traj)
        assert traj["extra"]["truncated"] is True
        shutil.rmtree(tmp_path / "native")


def test_garbage_lines_are_skipped_and_counted(adapter, tmp_path):
    lines = STDOUT.splitlines()
    noisy = "\n".join(lines[:3] + ["not json at all", "[1,2]", '{"type": "mystery"}'] + lines[3:]) + "\n"
    traj = adapter.trajectory(_native(tmp_path, noisy, with_logs=False), "stub-model")
    _check_three_step(traj)
    assert traj["extra"]["skipped_stdout_lines"] == 2
    assert traj["extra"]["unknown_stream_events"] == 1


def test_trajectory_of_killed_run_records_pending_calls(adapter, tmp_path):
    # stop right after the two-call turn's tool_use events: no results, no final text
    lines = STDOUT.splitlines()
    last_use = max(i for i, l in enumerate(lines) if '"tool_use"' in l)
    traj = adapter.trajectory(_native(tmp_path, "\n".join(lines[: last_use + 1]) + "\n", False), "stub-model")
    t = validate_trajectory(traj)
    assert t.steps[-1].observation is None
    assert len(t.steps[-1].extra["tool_calls_without_result"]) == 2
    assert classify_error("\n".join(lines[: last_use + 1]), "", -9) == "killed"


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_trajectory_of_failed_runs_is_valid(adapter, tmp_path, name):
    case = ERRORS[name]
    traj = adapter.trajectory(_native(tmp_path, case["stdout"], with_logs=False), "stub-model")
    validate_trajectory(traj)
    if '"type":"result"' in case["stdout"] and case["exit_code"] != 0:
        assert traj["extra"]["status"] == "error"


# --- error classes --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_class_on_recorded_failures(adapter, name):
    case = ERRORS[name]
    got = adapter.error_class(case["stdout"], case["stderr"], case["exit_code"])
    assert got == case["expected"], f"{name}: exit {case['exit_code']}"
    assert got in ERROR_CLASSES


def test_error_class_success_is_none(adapter):
    assert adapter.error_class(STDOUT, (SAMPLE / "stderr.txt").read_text(),
                               int((SAMPLE / "exit_code").read_text())) is None


def test_client_error_report_sample_shape():
    report = json.loads((DATA / "gemini-client-error-sample.json").read_text())
    assert "429" in report["error"]["message"]
    assert report["context"][0]["role"] == "user"        # the conversation it tried to send
    assert all(c["client_error_report"] for n, c in ERRORS.items() if n.startswith("http_"))


def test_recorded_exit_codes_are_http_status_mod_256():
    assert {n: ERRORS[n]["exit_code"] for n in ("http_429", "http_401", "http_403", "http_500", "http_503")} == {
        "http_429": 429 % 256, "http_401": 401 % 256, "http_403": 403 % 256,
        "http_500": 500 % 256, "http_503": 503 % 256}
    assert ERRORS["http_404"]["exit_code"] == 1
    assert ERRORS["context_window_full"]["exit_code"] == 0      # silent stop, see classify_error


@pytest.mark.parametrize("stdout,stderr,code,expected", [
    ("", "", -9, "killed"),
    ("", "", 137, "killed"),
    ("", "Invalid auth method selected.\n", 41, "auth"),
    ("", "", 130, "cancelled"),
    ("", "", 52, "config_error"),
    ("", "[API Error: got status: 429 Too Many Requests]", 1, "rate_limit"),
    ("", "something odd", 3, "unknown"),
    ('{"type":"result","status":"error","error":{"type":"unknown","message":"[API Error: Context window will '
     'overflow (estimated: 9, remaining: 1)]"}}', "", 1, "context_overflow"),
])
def test_error_class_edge_cases(adapter, stdout, stderr, code, expected):
    assert adapter.error_class(stdout, stderr, code) == expected


# --- the real CLI against an in-test stub (slow) --------------------------------------------
SCRIPT = [
    [("run_shell_command", {"command": "echo step1 > step1.txt && ls", "description": "step 1"})],
    [("run_shell_command", {"command": "cat step1.txt > agent_output.txt && echo step2 >> agent_output.txt",
                            "description": "step 2"}),
     ("read_file", {"file_path": "step1.txt"})],  # the two calls of a turn run concurrently
    "TEST_FINAL: all done.",
]


class _GeminiStub(BaseHTTPRequestHandler):
    """Minimal stateless Gemini API: plays SCRIPT[number of model turns with calls so far]."""

    protocol_version = "HTTP/1.1"
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        type(self).requests.append(self.path)
        done = sum(1 for c in body.get("contents", []) if c.get("role") == "model"
                   and any("functionCall" in p for p in c.get("parts", [])))
        step = SCRIPT[min(done, len(SCRIPT) - 1)]
        parts = ([{"text": step}] if isinstance(step, str)
                 else [{"functionCall": {"name": n, "args": a}} for n, a in step])
        event = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                 "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 5, "totalTokenCount": 55},
                 "modelVersion": "stub-model"}
        data = f"data: {json.dumps(event)}\n\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n")


@pytest.mark.slow
def test_real_cli_against_stub_produces_valid_trajectory(adapter, tmp_path):
    if not GeminiCli.installed():
        pytest.skip("gemini-cli 0.61.0 not installed (GeminiCli.install() fetches it)")
    ws, home, tmp = tmp_path / "workspace", tmp_path / "home", tmp_path / "tmp"
    for d in (ws, home, tmp):
        d.mkdir()
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    (ws / "GEMINI.md").write_text("Remember: MEMORY-MARKER-7.\n")
    adapter.prepare_home(home)

    _GeminiStub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GeminiStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = adapter.env(AgentPaths(str(ws), str(home), str(tmp)), f"http://127.0.0.1:{server.server_address[1]}")
        proc = subprocess.run(adapter.host_command("Make the files.", "stub-model"), env=env, cwd=ws,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert adapter.error_class(proc.stdout, proc.stderr, proc.returncode) is None
    assert _GeminiStub.requests == ["/v1beta/models/stub-model:streamGenerateContent?alt=sse"] * 3
    assert (ws / "agent_output.txt").read_text() == "step1\nstep2\n"

    native = tmp_path / "native"
    (native / "logs").mkdir(parents=True)
    (native / "stdout.txt").write_text(proc.stdout)
    (native / "stderr.txt").write_text(proc.stderr)
    logs = adapter.native_logs(home, tmp)
    assert any(p.name.startswith("session-") and p.suffix == ".jsonl" for p in logs)
    for p in logs:
        shutil.copy(p, native / "logs" / p.name)

    t = validate_trajectory(adapter.trajectory(native, "stub-model"))
    assert [s.source for s in t.steps] == ["user", "agent", "agent", "agent"]
    for step in t.steps[1:3]:
        assert [r.source_call_id for r in step.observation.results] == [tc.tool_call_id for tc in step.tool_calls]
    assert "step1" in t.steps[2].observation.results[1].content
    assert t.final_agent_text() == "TEST_FINAL: all done."
    assert "MEMORY-MARKER-7" in t.steps[0].extra["session_context"]
    assert not any(p.name.startswith("gemini-client-error") for p in logs)
    assert os.listdir(tmp) == [] or all(not n.startswith("gemini-client-error") for n in os.listdir(tmp))
