"""The recording proxy (runner.model_proxy) and model sources (runner.model_source), over real
HTTP: the upstream is the project's scripted model server in chat-completions mode (a real
local OpenAI-compatible server as far as the proxy can tell) or, for credential handling, a
small header-recording HTTP server started by the test. Never the internet."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_model_server import GEMINI_TOOLS, gemini_request, make_policy, openai_request, request
from test_model_server_protocols import CLAUDE_TOOLS, CODEX_TOOLS, anthropic_request, responses_request

from runner.model_proxy import ModelProxy, parse_sse
from runner.model_server import ScriptedModelServer
from runner.model_source import (
    ANTHROPIC, CHAT, GEMINI, RESPONSES, ModelSourceError, check_source, parse_model_spec)
from runner.run_plan import load_model

POLICY = """
turns:
  - say: Looking around first.
    shell: ls -la /data
  - say: All done here.
"""


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def upstream(tmp_path):
    """A scripted model server on TCP, used as a local OpenAI-compatible chat server."""
    servers = []

    def start(body: str = POLICY) -> ScriptedModelServer:
        server = ScriptedModelServer(make_policy(tmp_path, body, name=f"p{len(servers)}"),
                                     tmp_path / f"server{len(servers)}.jsonl").start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def proxies(tmp_path):
    started = []

    def start(spec: str, protocol: str, **kwargs) -> ModelProxy:
        proxy = ModelProxy(parse_model_spec(spec), protocol, tmp_path / f"traffic{len(started)}.jsonl",
                           **kwargs).start()
        started.append(proxy)
        return proxy

    yield start
    for p in started:
        p.stop()


def compat(server: ScriptedModelServer, model: str = "local-model") -> str:
    return f"openai-compatible:http://127.0.0.1:{server.port}/v1#{model}"


# ---- specs and preflight -----------------------------------------------------------------

def test_parse_model_specs(monkeypatch):
    monkeypatch.delenv("PEER_HARNESS_BASE_URL_GEMINI", raising=False)
    src = parse_model_spec("openai-compatible:http://127.0.0.1:8080/v1/#qwen2.5:7b")
    assert (src.provider, src.model, src.root) == ("openai-compatible", "qwen2.5:7b", "http://127.0.0.1:8080/v1")
    gem = parse_model_spec("gemini:gemini-3.1-pro-preview")
    assert (gem.model, gem.root, gem.is_scripted) == ("gemini-3.1-pro-preview",
                                                       "https://generativelanguage.googleapis.com", False)
    assert parse_model_spec("scripted:comply").is_scripted
    for bad, says in (("gpt-5", "use scripted:NAME"), ("mistral:large", "unknown source 'mistral'"),
                      ("openai-compatible:localhost:8080#m", "openai-compatible:http://HOST:PORT/v1#MODEL"),
                      ("openai-compatible:http://127.0.0.1:8080/v1", "openai-compatible:http://HOST:PORT/v1#MODEL"),
                      ("openai:", "use scripted:NAME")):
        with pytest.raises(ModelSourceError, match=says.replace("(", r"\(").replace(")", r"\)")):
            parse_model_spec(bad)
    # The run layer's model loader hands real sources through (scripted ones stay policies).
    assert load_model("openai:gpt-5.5", "exfiltration-deletion").provider == "openai"


def test_routes_passthrough_or_translate_to_chat(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.delenv("OPENAI_COMPATIBLE_API_KEY", raising=False)
    gem = parse_model_spec("gemini:m")
    native = gem.route(GEMINI)
    assert (native.upstream_protocol, native.translated, native.key_header) == (GEMINI, False, "x-goog-api-key")
    via_chat = gem.route(CHAT)      # chat agents use Gemini's OpenAI-compatible endpoint
    assert via_chat.base_url == "https://generativelanguage.googleapis.com/v1beta/openai"
    assert via_chat.key_header == "authorization" and not via_chat.translated
    claude = parse_model_spec("anthropic:m")
    assert claude.route(ANTHROPIC).key_header == "x-api-key"
    assert claude.route(RESPONSES).upstream_protocol == CHAT and claude.route(RESPONSES).translated
    local = parse_model_spec("openai-compatible:http://127.0.0.1:1/v1#m")
    for protocol in (GEMINI, RESPONSES, ANTHROPIC):
        assert local.route(protocol).upstream_protocol == CHAT
    assert local.route(CHAT).key_header is None          # no OPENAI_COMPATIBLE_API_KEY: no auth header
    with pytest.raises(ModelSourceError, match="cannot translate"):
        local.route("openai-realtime")


def test_preflight_missing_key_unreachable_and_reachable(monkeypatch, upstream):
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    [problem] = check_source(parse_model_spec("openrouter:meta/llama"))
    assert "set OPENROUTER_API_KEY" in problem
    closed = parse_model_spec("openai-compatible:http://127.0.0.1:9/v1#m")
    [problem] = check_source(closed)
    assert "endpoint unreachable" in problem and "127.0.0.1:9/v1/models" in problem
    server = upstream()
    assert check_source(parse_model_spec(compat(server))) == []
    # A provider with a wrong key: the local server answers 404 for a path it does not serve,
    # typed as such (the base URL override is how a gateway or a test stands in for the provider).
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    monkeypatch.setenv("PEER_HARNESS_BASE_URL_OPENAI", f"http://127.0.0.1:{server.port}")
    [problem] = check_source(parse_model_spec("openai:gpt-x"))
    assert "HTTP 404 (model_not_found)" in problem and "sk-test-secret" not in problem


# ---- passthrough -------------------------------------------------------------------------

def test_chat_passthrough_records_what_the_server_saw(upstream, proxies):
    server = upstream()
    proxy = proxies(compat(server), CHAT, memory_marker="MEMORY-MARK-7")
    first = request(proxy, "POST", "/v1/chat/completions", openai_request(0, memory="MEMORY-MARK-7"))
    assert first[0] == 200 and first[2][-1] == (None, "[DONE]")
    second = request(proxy, "POST", "/v1/chat/completions", openai_request(1, stream=False))
    assert second[2]["choices"][0]["message"]["content"] == "All done here."
    proxy.stop()
    server.stop()
    mine, theirs = records(proxy.traffic_path), records(server.traffic_path)
    assert [r["request"] for r in mine] == [r["request"] for r in theirs]
    assert [r["response"] for r in mine] == [r["response"] for r in theirs]
    assert [(r["main"], r["tool_results"], r["protocol"]) for r in mine] == [(True, 0, CHAT), (True, 1, CHAT)]
    assert mine[0]["upstream"] == {"url": f"http://127.0.0.1:{server.port}/v1/chat/completions",
                                   "protocol": CHAT, "translated": False}
    assert proxy.memory_seen and proxy.main_requests == 2 and proxy.last_main_error is None


@pytest.mark.parametrize("provider,protocol,path,build", [
    ("gemini", GEMINI, "/v1beta/models/gemini-x:streamGenerateContent?alt=sse", gemini_request),
    ("openai", RESPONSES, "/v1/responses", responses_request),
    ("anthropic", ANTHROPIC, "/v1/messages?beta=true", anthropic_request),
])
def test_native_passthrough_streams_and_records(upstream, proxies, monkeypatch, provider, protocol, path, build):
    """A source that speaks the agent's protocol gets the agent's request unchanged (here the
    scripted server stands in for the provider through the base-URL override)."""
    server = upstream()
    monkeypatch.setenv(f"{provider.upper()}_API_KEY", "k")
    monkeypatch.setenv(f"PEER_HARNESS_BASE_URL_{provider.upper()}", f"http://127.0.0.1:{server.port}")
    proxy = proxies(f"{provider}:m", protocol)
    status, ctype, events = request(proxy, "POST", path, build(0))
    assert status == 200 and ctype.startswith("text/event-stream") and len(events) >= 2
    proxy.stop()
    server.stop()
    [mine], [theirs] = records(proxy.traffic_path), records(server.traffic_path)
    assert mine["upstream"] == {"url": f"http://127.0.0.1:{server.port}{path}", "protocol": protocol,
                                "translated": False}
    assert (mine["request"], mine["response"]) == (theirs["request"], theirs["response"])
    assert [data for _, data in events] == theirs["response"]["events"]     # the agent got the bytes the server sent
    assert mine["main"] and mine["turn"] is None and theirs["turn"] == 0


def test_every_agent_reaches_every_source():
    """The supported agent x source pairs: every registered agent reaches every kind of source,
    natively where the source speaks its protocol, else translated to chat completions."""
    from harnesses.registry import AGENTS  # noqa: PLC0415

    native = {"gemini": {GEMINI, CHAT}, "openai": {CHAT, RESPONSES}, "anthropic": {ANTHROPIC, CHAT},
              "openrouter": {CHAT}, "openai-compatible": {CHAT}}
    specs = {"gemini": "gemini:m", "openai": "openai:m", "anthropic": "anthropic:m", "openrouter": "openrouter:m",
             "openai-compatible": "openai-compatible:http://127.0.0.1:1/v1#m"}
    for provider, spec in specs.items():
        source = parse_model_spec(spec)
        for name, adapter in AGENTS.items():
            route = source.route(adapter.wire_protocol)
            assert route.translated == (adapter.wire_protocol not in native[provider]), (name, provider)
            assert route.upstream_protocol == (adapter.wire_protocol if not route.translated else CHAT)


# ---- translation -------------------------------------------------------------------------

def responses_items(events) -> tuple[str, list[dict], dict]:
    names = [name for name, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert all(name == data["type"] for name, data in events)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    done = [d["item"] for name, d in events if name == "response.output_item.done"]
    text = "".join(d["delta"] for name, d in events if name == "response.output_text.delta")
    return text, done, events[-1][1]["response"]


def test_codex_responses_tool_turn_against_chat_only_server(upstream, proxies):
    server = upstream()
    proxy = proxies(compat(server), RESPONSES, memory_marker="MEM-CODEX")
    status, ctype, events = request(proxy, "POST", "/v1/responses",
                                 responses_request(0, memory="MEM-CODEX", model="local-model"))
    assert status == 200 and ctype.startswith("text/event-stream")
    text, items, completed = responses_items(events)
    assert text == "Looking around first."
    [message, fc] = items
    assert message["type"] == "message" and message["content"][0]["text"] == "Looking around first."
    assert fc["type"] == "function_call" and fc["name"] == "exec_command"
    assert json.loads(fc["arguments"])["cmd"] == "ls -la /data"
    assert completed["status"] == "completed" and completed["usage"]["input_tokens"] > 0
    # Codex sends the call and its output back; the chat server sees a tool result and ends.
    body = responses_request(0, model="local-model")
    body["input"] += [{"type": "function_call", "name": "exec_command", "arguments": fc["arguments"],
                       "call_id": fc["call_id"]},
                      {"type": "function_call_output", "call_id": fc["call_id"], "output": "total 0\n"}]
    _, _, events = request(proxy, "POST", "/v1/responses", body)
    text, items, _ = responses_items(events)
    assert text == "All done here." and [i["type"] for i in items] == ["message"]
    proxy.stop()
    server.stop()
    theirs, mine = records(server.traffic_path), records(proxy.traffic_path)
    assert {r["path"] for r in theirs} == {"/v1/chat/completions"}         # chat only upstream
    assert [r["turn"] for r in theirs] == [0, 1] and server.finished
    sent = [r["upstream"]["request"] for r in mine]
    assert sent == [r["request"] for r in theirs]
    assert [r["upstream"]["response"] for r in mine] == [r["response"] for r in theirs]
    assert sent[0]["messages"][0]["role"] == "system" and sent[0]["messages"][0]["content"] == "You are Codex."
    assert sent[1]["messages"][-2]["tool_calls"][0]["id"] == fc["call_id"]
    assert sent[1]["messages"][-1] == {"role": "tool", "tool_call_id": fc["call_id"], "content": "total 0\n"}
    # web_search and the namespace tool have no chat form; the function tools go across.
    assert [t["function"]["name"] for t in sent[0]["tools"]] == ["exec_command", "write_stdin"]
    assert [r["main"] for r in mine] == [True, True] and proxy.memory_seen


def test_codex_non_streaming_and_custom_tool(upstream, proxies):
    server = upstream("""
        turns:
          - shell: echo hi
          - say: ok
        """)
    proxy = proxies(compat(server), RESPONSES)
    tools = [*CODEX_TOOLS, {"type": "custom", "name": "apply_patch", "description": "patch",
                            "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}]
    status, _, body = request(proxy, "POST", "/v1/responses", responses_request(0, tools=tools, stream=False))
    assert status == 200 and body["object"] == "response" and body["status"] == "completed"
    [fc] = body["output"]
    assert fc["type"] == "function_call" and json.loads(fc["arguments"])["cmd"] == "echo hi"
    assert proxy.wait_recorded()
    sent = records(proxy.traffic_path)[0]["upstream"]["request"]
    patch = next(t for t in sent["tools"] if t["function"]["name"] == "apply_patch")
    assert patch["function"]["parameters"]["required"] == ["input"]


def test_gemini_cli_requests_against_chat_server(upstream, proxies):
    server = upstream()
    proxy = proxies(compat(server, "some-model"), GEMINI, memory_marker="MEM-GEMINI")
    status, _, events = request(proxy, "POST", "/v1beta/models/some-model:streamGenerateContent?alt=sse",
                             gemini_request(0, memory="MEM-GEMINI"))
    assert status == 200
    chunks = [data for _, data in events]
    text = "".join(p.get("text", "") for c in chunks for p in c["candidates"][0]["content"]["parts"])
    calls = [p["functionCall"] for c in chunks for p in c["candidates"][0]["content"]["parts"] if "functionCall" in p]
    assert text == "Looking around first."
    assert calls == [{"name": "run_shell_command", "args": {"command": "ls -la /data",
                                                            "description": "Run: ls -la /data"}}]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP" and chunks[-1]["usageMetadata"]["totalTokenCount"]
    status, _, body = request(proxy, "POST", "/v1beta/models/some-model:generateContent", gemini_request(1))
    assert body["candidates"][0]["content"]["parts"] == [{"text": "All done here."}]
    status, _, counted = request(proxy, "POST", "/v1beta/models/some-model:countTokens", {"contents": []})
    assert status == 200 and counted["totalTokens"] >= 1
    proxy.stop()
    server.stop()
    mine, theirs = records(proxy.traffic_path), records(server.traffic_path)
    assert len(theirs) == 2 and mine[2]["upstream"] == {"local": True}     # token counts never go upstream
    assert [r["upstream"]["request"] for r in mine[:2]] == [r["request"] for r in theirs]
    sent = theirs[1]["request"]
    assert sent["model"] == "some-model" and [t["function"]["name"] for t in sent["tools"]] == [
        d["name"] for d in GEMINI_TOOLS[0]["functionDeclarations"]]
    assert sent["messages"][-2]["tool_calls"][0]["id"] == "c0"
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": "c0", "content": "ok"}


def test_claude_code_requests_against_chat_server(upstream, proxies):
    server = upstream()
    proxy = proxies(compat(server), ANTHROPIC, memory_marker="MEM-CLAUDE")
    status, _, events = request(proxy, "POST", "/v1/messages?beta=true", anthropic_request(0, memory="MEM-CLAUDE"))
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    tool = next(d["content_block"] for n, d in events if n == "content_block_start"
                and d["content_block"]["type"] == "tool_use")
    partial = "".join(d["delta"].get("partial_json", "") for n, d in events if n == "content_block_delta")
    assert tool["name"] == "Bash" and json.loads(partial)["command"] == "ls -la /data"
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    _, _, body = request(proxy, "POST", "/v1/messages", anthropic_request(1, stream=False))
    assert body["content"] == [{"type": "text", "text": "All done here."}] and body["stop_reason"] == "end_turn"
    proxy.stop()
    server.stop()
    sent = records(server.traffic_path)[1]["request"]
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "system"]
    assert [t["function"]["name"] for t in sent["tools"]] == [t["name"] for t in CLAUDE_TOOLS]
    assert proxy.memory_seen


# ---- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("status,kind", [(429, "rate_limit"), (401, "auth"), (404, "model_not_found"),
                                         (500, "api_error")])
def test_upstream_errors_are_typed(upstream, proxies, status, kind):
    server = upstream(f"""
        turns:
          - error: {status}
          - say: recovered
        """)
    proxy = proxies(compat(server), RESPONSES)
    got, _, body = request(proxy, "POST", "/v1/responses", responses_request(0))
    assert got == status and "error" in body and proxy.wait_recorded()
    assert proxy.last_main_error.startswith(f"{kind}: the model source answered HTTP {status}")
    assert proxy.error_classes == {kind: 1}
    # A retry that succeeds clears the last error (a transient failure does not spoil a trial).
    assert request(proxy, "POST", "/v1/responses", responses_request(0))[0] == 200
    assert proxy.wait_recorded()        # the agent has its answer a moment before the proxy's books
    assert proxy.last_main_error is None and proxy.errors_served == 1
    proxy.stop()
    assert [r["error_class"] for r in records(proxy.traffic_path)] == [kind, None]


def test_context_overflow_and_unreachable_source(upstream, proxies):
    server = upstream("""
        turns:
          - error: 400
            say: "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens."
          - say: fine
        """)
    proxy = proxies(compat(server), CHAT)
    assert request(proxy, "POST", "/v1/chat/completions", openai_request(0))[0] == 400
    assert proxy.wait_recorded() and proxy.last_main_error.startswith("context_overflow:")
    gone = proxies("openai-compatible:http://127.0.0.1:9/v1#m", GEMINI)
    status, _, body = request(gone, "POST", "/v1beta/models/m:streamGenerateContent?alt=sse", gemini_request(0))
    assert status == 502 and body["error"]["code"] == 502 and gone.wait_recorded()
    assert gone.last_main_error.startswith("api_error:") and "unreachable" in gone.last_main_error
    gone.stop()
    [rec] = records(gone.traffic_path)
    assert rec["error_class"] == "api_error" and "ConnectionRefusedError" in rec["upstream"]["error"]


# ---- credentials -----------------------------------------------------------------------------

class _HeaderRecorder(BaseHTTPRequestHandler):
    """A minimal chat server that keeps the headers it received (to check what the proxy sends)."""

    seen: list[dict] = []

    def log_message(self, *args):  # quiet
        return

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        body = json.dumps({"id": "x", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_key_reaches_upstream_only_and_is_never_written(tmp_path, monkeypatch, proxies):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _HeaderRecorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    secret = "sk-live-DO-NOT-LEAK-4242"
    try:
        monkeypatch.setenv("OPENAI_API_KEY", secret)
        monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
        monkeypatch.setenv("PEER_HARNESS_BASE_URL_OPENAI", f"http://127.0.0.1:{httpd.server_port}")
        monkeypatch.setenv("PEER_HARNESS_BASE_URL_ANTHROPIC", f"http://127.0.0.1:{httpd.server_port}")
        _HeaderRecorder.seen = []
        chat = proxies("openai:gpt-x", CHAT)
        status, _, body = request(chat, "POST", "/v1/chat/completions?key=dummy-from-agent",
                                  openai_request(0, stream=False),
                                  headers={"Authorization": "Bearer dummy", "x-api-key": "dummy"})
        assert status == 200 and body["choices"][0]["message"]["content"] == "hi"
        native = proxies("anthropic:claude-x", ANTHROPIC)       # passthrough: the key goes as x-api-key
        assert request(native, "POST", "/v1/messages?beta=true", anthropic_request(0, stream=False),
                       headers={"x-api-key": "dummy", "anthropic-version": "2023-06-01"})[0] == 200
        codex = proxies("anthropic:claude-x", RESPONSES)        # translated: Anthropic's OpenAI-compatible endpoint
        status, _, body = request(codex, "POST", "/v1/responses", responses_request(0, stream=False),
                                  headers={"Authorization": "Bearer dummy"})
        assert status == 200 and body["output"][0]["content"][0]["text"] == "hi"
        for proxy in (chat, native, codex):
            proxy.stop()
    finally:
        httpd.shutdown()
        httpd.server_close()
    chat_seen, native_seen, codex_seen = _HeaderRecorder.seen
    assert chat_seen["authorization"] == codex_seen["authorization"] == f"Bearer {secret}"
    assert "x-api-key" not in chat_seen and "x-api-key" not in codex_seen   # the agent's dummy credentials are dropped
    assert native_seen["x-api-key"] == secret and "authorization" not in native_seen
    assert native_seen["anthropic-version"] == "2023-06-01"                  # other headers pass through
    written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert secret not in written
    rec = records(chat.traffic_path)[0]
    assert rec["headers"]["Authorization"] == "[redacted]" and rec["headers"]["x-api-key"] == "[redacted]"
    assert rec["path"] == "/v1/chat/completions?key=[redacted]"
    assert rec["upstream"]["url"].endswith("/v1/chat/completions")    # the agent's ?key= is not forwarded


class _CutOff(BaseHTTPRequestHandler):
    """A chat server whose stream breaks off mid-answer (no finish_reason, no [DONE])."""

    def log_message(self, *args):  # quiet
        return

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        chunk = {"choices": [{"index": 0, "delta": {"content": "I will now"}, "finish_reason": None}]}
        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.close_connection = True


def test_stream_cut_off_is_an_error_not_a_short_answer(proxies):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _CutOff)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        proxy = proxies(f"openai-compatible:http://127.0.0.1:{httpd.server_port}/v1#m", RESPONSES)
        status, _, events = request(proxy, "POST", "/v1/responses", responses_request(0))
        assert status == 200 and proxy.wait_recorded()
    finally:
        httpd.shutdown()
        httpd.server_close()
    names = [name for name, _ in events]
    assert "response.output_text.delta" in names and names[-1] == "response.failed"
    assert "response.completed" not in names
    assert proxy.last_main_error.startswith("api_error:") and "ended before the answer" in proxy.last_main_error


def test_parse_sse_matches_scripted_record_format():
    text = 'event: response.created\ndata: {"type": "response.created"}\n\ndata: [DONE]\n\n: comment\n\n'
    assert parse_sse(text) == [{"type": "response.created"}, "[DONE]"]
