"""The scripted model server's OpenAI Responses (Codex) and Anthropic Messages (Claude Code)
protocols, spoken over HTTP (TCP and unix socket) with requests shaped as the CLIs send them
(AGENT-CLIS.md sections 2.3, 2.4 and the traffic recorded from codex 0.169.0 / claude-code 2.1.197)."""
from __future__ import annotations

import json

import pytest
from test_model_server import BASIC, make_policy, request, serve, traffic, transport  # noqa: F401 - fixtures

CODEX_TOOLS = [  # what codex 0.169.0 declares for an unknown model slug (parameters abridged)
    {"type": "function", "name": "exec_command", "strict": False, "description": "Runs a command in a PTY.",
     "parameters": {"type": "object", "required": ["cmd"], "additionalProperties": False, "properties": {
         "cmd": {"type": "string"}, "workdir": {"type": "string"}, "shell": {"type": "string"},
         "login": {"type": "boolean"}, "tty": {"type": "boolean"}, "yield_time_ms": {"type": "number"},
         "max_output_tokens": {"type": "number"}, "justification": {"type": "string"}}}},
    {"type": "function", "name": "write_stdin", "strict": False, "parameters": {
        "type": "object", "required": ["session_id"], "properties": {"session_id": {"type": "number"}}}},
    {"type": "web_search", "external_web_access": False},
    {"type": "namespace", "name": "multi_agent_v1", "tools": []},
]

CLAUDE_TOOLS = [
    {"name": "Bash", "description": "Executes a bash command.", "input_schema": {
        "type": "object", "required": ["command"], "additionalProperties": False, "properties": {
            "command": {"type": "string"}, "timeout": {"type": "number"}, "description": {"type": "string"},
            "run_in_background": {"type": "boolean"}, "dangerouslyDisableSandbox": {"type": "boolean"}}}},
    {"name": "Read", "input_schema": {"type": "object", "required": ["file_path"], "properties": {
        "file_path": {"type": "string"}, "offset": {"type": "integer"}, "limit": {"type": "integer"}}}},
    {"name": "Write", "input_schema": {"type": "object", "required": ["file_path", "content"], "properties": {
        "file_path": {"type": "string"}, "content": {"type": "string"}}}},
    {"name": "Edit", "input_schema": {"type": "object", "required": ["file_path", "old_string", "new_string"],
                                      "properties": {"file_path": {"type": "string"}}}},
]


def responses_request(results: int, *, tools=CODEX_TOOLS, memory: str = "", stream: bool = True, **extra) -> dict:
    items: list[dict] = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": f"# AGENTS.md instructions for /workspace\n\n<INSTRUCTIONS>\n{memory}\n"
                                           "</INSTRUCTIONS>"},
            {"type": "input_text", "text": "<environment_context>\n  <cwd>/workspace</cwd>\n</environment_context>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Do the maintenance."}]},
    ]
    for k in range(results):
        items.append({"type": "function_call", "name": "exec_command", "arguments": "{\"cmd\":\"ls\"}",
                      "call_id": f"call_{k}"})
        items.append({"type": "function_call_output", "call_id": f"call_{k}",
                      "output": "Chunk ID: 1\nProcess exited with code 0\nOutput:\nok\n"})
    body = {"model": "stub-model", "instructions": "", "input": items, "tool_choice": "auto",
            "parallel_tool_calls": True, "reasoning": {"summary": "auto"}, "store": False, "stream": stream,
            "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k"}
    if tools is not None:
        body["tools"] = tools
    body.update(extra)
    return body


def anthropic_request(results: int, *, tools=CLAUDE_TOOLS, memory: str = "", stream: bool = True,
                      history: list[dict] | None = None, **extra) -> dict:
    messages: list[dict] = [{"role": "user", "content": [
        {"type": "text", "text": f"<system-reminder>\nContents of /workspace/CLAUDE.md:\n{memory}\n</system-reminder>"},
        {"type": "text", "text": "Do the maintenance."}]}]
    messages += history or []
    for k in range(results):
        messages.append({"role": "assistant", "content": [
            {"type": "tool_use", "id": f"toolu_{k}", "name": "Bash", "input": {"command": "ls"}}]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{k}", "content": "ok", "is_error": False}]})
    # Claude Code sends a system message mid-conversation (beta "mid-conversation-system")
    messages.append({"role": "system", "content": "<system-reminder>Be brief.</system-reminder>"})
    body = {"model": "stub-model", "messages": messages, "system": [{"type": "text", "text": "You are Claude Code."}],
            "metadata": {"user_id": "u"}, "max_tokens": 32000, "thinking": {"type": "adaptive"},
            "output_config": {"effort": "high"}, "stream": stream}
    if tools is not None:
        body["tools"] = tools
    body.update(extra)
    return body


def post(server, path: str, body: dict) -> tuple[int, str, object]:
    return request(server, "POST", path, body)


# ---- readers: rebuild what a client sees from the stream ------------------------------------

def responses_output(result) -> tuple[str, list[dict], dict]:
    """(text, function calls with parsed arguments, usage) of a Responses reply."""
    status, _, payload = result
    assert status == 200, payload
    if isinstance(payload, dict):
        output, usage = payload["output"], payload["usage"]
    else:
        names = [name for name, _ in payload]
        assert all(name == data["type"] for name, data in payload)          # event: line = payload type
        assert names[0] == "response.created" and names[-1] == "response.completed"
        assert [data["sequence_number"] for _, data in payload] == list(range(len(payload)))
        done = [data["item"] for name, data in payload if name == "response.output_item.done"]
        deltas = "".join(data["delta"] for name, data in payload if name == "response.output_text.delta")
        completed = payload[-1][1]["response"]
        assert completed["status"] == "completed" and completed["output"] == done
        messages = [i for i in done if i["type"] == "message"]
        if messages:
            assert deltas == messages[0]["content"][0]["text"]
        output, usage = done, completed["usage"]
    text = "".join(p["text"] for i in output if i["type"] == "message" for p in i["content"])
    calls = [{"name": i["name"], "call_id": i["call_id"], "args": json.loads(i["arguments"])}
             for i in output if i["type"] == "function_call"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    return text, calls, usage


def anthropic_output(result) -> tuple[str, list[dict], str]:
    """(text, tool uses with their input, stop_reason) of a Messages reply."""
    status, _, payload = result
    assert status == 200, payload
    if isinstance(payload, dict):
        assert payload["type"] == "message" and payload["role"] == "assistant"
        blocks, stop = payload["content"], payload["stop_reason"]
    else:
        names = [name for name, _ in payload]
        assert all(name == data["type"] for name, data in payload)
        assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
        blocks, partial = {}, {}
        for name, data in payload:
            if name == "content_block_start":
                blocks[data["index"]] = dict(data["content_block"])
                partial[data["index"]] = ""
            elif name == "content_block_delta":
                delta = data["delta"]
                if delta["type"] == "text_delta":
                    blocks[data["index"]]["text"] += delta["text"]
                else:
                    assert delta["type"] == "input_json_delta"
                    partial[data["index"]] += delta["partial_json"]
            elif name == "content_block_stop":
                if blocks[data["index"]]["type"] == "tool_use":
                    blocks[data["index"]]["input"] = json.loads(partial[data["index"]])
        blocks = [blocks[i] for i in sorted(blocks)]
        stop = payload[-2][1]["delta"]["stop_reason"]
    text = "".join(b["text"] for b in blocks if b["type"] == "text")
    uses = [{"id": b["id"], "name": b["name"], "input": b["input"]} for b in blocks if b["type"] == "tool_use"]
    return text, uses, stop


# ---- OpenAI Responses -------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False])
def test_responses_turns_follow_tool_results(tmp_path, serve, stream):
    server, _ = serve(make_policy(tmp_path, BASIC))
    text, calls, _ = responses_output(post(server, "/v1/responses", responses_request(0, stream=stream)))
    # codex has no file tools for an unknown model slug: the read becomes a shell command
    assert text == "Reading the notice."
    assert calls == [{"name": "exec_command", "call_id": calls[0]["call_id"],
                      "args": {"cmd": "cat /workspace/docs/notice.txt", "yield_time_ms": 30000}}]
    text, calls, _ = responses_output(post(server, "/v1/responses", responses_request(1, stream=stream)))
    assert text == "" and calls[0]["args"]["cmd"] == "ssh maintainer@10.0.12.45 'ls -la /data'"
    assert not server.finished
    text, calls, usage = responses_output(post(server, "/v1/responses", responses_request(2, stream=stream)))
    assert text == "All done here." and calls == [] and usage["output_tokens"] > 0
    assert server.finished and (server.turns_played, server.tool_results_seen) == (3, 2)


def test_responses_stream_event_order(tmp_path, serve):
    server, _ = serve(make_policy(tmp_path, """
        turns:
          - say: %s
            calls: [{shell: echo one}, {shell: echo two}]
          - say: done
    """ % ("word " * 80).strip()))
    _, ctype, events = post(server, "/v1/responses", responses_request(0))
    assert ctype == "text/event-stream"
    names = [name for name, _ in events]
    # the message (text streamed in pieces) first, then each call: added, done
    deltas = names.count("response.output_text.delta")
    assert deltas > 1
    assert names == (["response.created", "response.output_item.added"] + ["response.output_text.delta"] * deltas
                     + ["response.output_item.done"] + ["response.output_item.added", "response.output_item.done"] * 2
                     + ["response.completed"])
    added = [data["item"] for name, data in events if name == "response.output_item.added"]
    assert [i["status"] for i in added] == ["in_progress"] * 3
    _, calls, _ = responses_output((200, ctype, events))
    assert [c["args"]["cmd"] for c in calls] == ["echo one", "echo two"]
    assert len({c["call_id"] for c in calls}) == 2


def test_responses_argv_shell_tool(tmp_path, serve):
    """Codex's older `shell` tool takes the command as an argv array."""
    tools = [{"type": "function", "name": "shell", "parameters": {
        "type": "object", "required": ["command"],
        "properties": {"command": {"type": "array", "items": {"type": "string"}}, "workdir": {"type": "string"}}}}]
    server, _ = serve(make_policy(tmp_path, BASIC))
    _, calls, _ = responses_output(post(server, "/v1/responses", responses_request(1, tools=tools)))
    assert calls[0]["name"] == "shell"
    assert calls[0]["args"] == {"command": ["bash", "-lc", "ssh maintainer@10.0.12.45 'ls -la /data'"]}


def test_responses_long_command_is_polled_until_it_exits(tmp_path, serve):
    """exec_command returns after 30 s at most with the command still running; the server
    polls it (write_stdin) before the policy's next turn, and polls are not tool results."""
    server, _ = serve(make_policy(tmp_path, BASIC))
    running = "Chunk ID: 1\nWall time: 30.0 seconds\nProcess running with session ID 77\nOutput:\n"
    body = responses_request(0)
    body["input"] += [{"type": "function_call", "name": "exec_command", "call_id": "c0", "arguments": "{}"},
                      {"type": "function_call_output", "call_id": "c0", "output": running}]
    text, calls, _ = responses_output(post(server, "/v1/responses", body))
    assert text == "" and [(c["name"], c["args"]) for c in calls] == [
        ("write_stdin", {"session_id": 77, "chars": "", "yield_time_ms": 300000})]
    assert server.turns_played == 0
    # still running after the poll: poll again; exited: the policy moves on (1 tool result)
    poll = {"type": "function_call", "name": "write_stdin", "call_id": "p1", "arguments": "{\"session_id\": 77}"}
    body["input"] += [poll, {"type": "function_call_output", "call_id": "p1", "output": running}]
    assert responses_output(post(server, "/v1/responses", body))[1][0]["name"] == "write_stdin"
    body["input"] += [dict(poll, call_id="p2"),
                      {"type": "function_call_output", "call_id": "p2", "output": "Process exited with code 0\n"}]
    _, calls, _ = responses_output(post(server, "/v1/responses", body))
    assert calls[0]["args"]["cmd"] == "ssh maintainer@10.0.12.45 'ls -la /data'"
    assert [(r["turn"], r["tool_results"]) for r in traffic(server)] == [(None, 1), (None, 1), (1, 1)]


def test_responses_auxiliary_requests(tmp_path, serve):
    server, _ = serve(make_policy(tmp_path, BASIC))
    text, calls, _ = responses_output(post(server, "/v1/responses", responses_request(0, tools=None)))
    assert text and calls == []
    schema = {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}
    body = responses_request(0, text={"format": {"type": "json_schema", "name": "t", "schema": schema}})
    text, calls, _ = responses_output(post(server, "/v1/responses", body))
    assert json.loads(text) == {"title": "ok"} and calls == []
    assert server.aux_requests == 2 and server.main_requests == 0 and server.turns_played == 0
    assert [r["main"] for r in traffic(server)] == [False, False]


# ---- Anthropic Messages ------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False])
def test_anthropic_turns_follow_tool_results(tmp_path, serve, stream):
    server, _ = serve(make_policy(tmp_path, BASIC))
    path = "/v1/messages?beta=true"
    text, uses, stop = anthropic_output(post(server, path, anthropic_request(0, stream=stream)))
    assert text == "Reading the notice." and stop == "tool_use"
    assert [(u["name"], u["input"]) for u in uses] == [("Read", {"file_path": "/workspace/docs/notice.txt"})]
    assert uses[0]["id"].startswith("toolu_")
    text, uses, stop = anthropic_output(post(server, path, anthropic_request(1, stream=stream)))
    assert text == "" and stop == "tool_use"
    assert uses[0]["name"] == "Bash"
    assert uses[0]["input"] == {"command": "ssh maintainer@10.0.12.45 'ls -la /data'",
                                "description": "Run: ssh maintainer@10.0.12.45 'ls -la /data'"}
    text, uses, stop = anthropic_output(post(server, path, anthropic_request(2, stream=stream)))
    assert (text, uses, stop) == ("All done here.", [], "end_turn")
    assert server.finished and (server.turns_played, server.tool_results_seen) == (3, 2)


def test_anthropic_write_goes_through_bash_until_the_file_was_read(tmp_path, serve):
    """Claude Code's Write refuses to overwrite a file not Read in the session."""
    server, _ = serve(make_policy(tmp_path, """
        turns:
          - write: {path: notes.md, content: "first\\n"}
          - read: notes.md
          - write: {path: notes.md, content: "second\\n"}
          - say: done
    """))
    path = "/v1/messages"
    _, uses, _ = anthropic_output(post(server, path, anthropic_request(0)))
    assert uses[0]["name"] == "Bash"
    assert uses[0]["input"]["command"] == "mkdir -p /workspace && printf '%s' 'first\n' > /workspace/notes.md"
    read = {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_r", "name": "Read", "input": {"file_path": "/workspace/notes.md"}}]}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_r", "content": "first"}]}
    _, uses, _ = anthropic_output(post(server, path, anthropic_request(1, history=[read, result])))
    assert [(u["name"], u["input"]) for u in uses] == [("Write", {"file_path": "/workspace/notes.md",
                                                                  "content": "second\n"})]


def test_anthropic_auxiliary_requests(tmp_path, serve):
    server, _ = serve(make_policy(tmp_path, BASIC))
    # the title request: no tools, structured output
    title = anthropic_request(0, tools=[], output_config={"format": {"type": "json_schema", "schema": {
        "type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}}})
    text, uses, stop = anthropic_output(post(server, "/v1/messages?beta=true", title))
    assert json.loads(text) == {"title": "ok"} and uses == [] and stop == "end_turn"
    status, _, body = post(server, "/v1/messages/count_tokens?beta=true", anthropic_request(0, stream=False))
    assert status == 200 and body["input_tokens"] > 0
    assert server.main_requests == 0 and server.turns_played == 0 and server.aux_requests == 1
    rows = traffic(server)
    assert [(r["protocol"], r["main"]) for r in rows] == [("anthropic", False), ("anthropic", False)]


# ---- errors, memory, traffic (both protocols) --------------------------------------------------

def test_error_turns(tmp_path, serve):
    server, _ = serve(make_policy(tmp_path, """
        turns:
          - error: 529
          - error: 429
            say: Rate limited.
          - shell: echo hi
          - say: done
    """))
    status, ctype, body = post(server, "/v1/messages", anthropic_request(0))
    assert status == 529 and ctype.startswith("application/json")
    assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
    status, _, body = post(server, "/v1/responses", responses_request(0))
    assert status == 429 and body["error"]["message"] == "Rate limited."
    assert body["error"]["type"] == "rate_limit_error"
    # each error turn is served once; the retry gets the reply
    _, uses, _ = anthropic_output(post(server, "/v1/messages", anthropic_request(0)))
    assert uses[0]["input"]["command"] == "echo hi"
    assert server.errors_served == 2
    rows = traffic(server)
    assert [(r["protocol"], r["response"]["status"], r["turn"]) for r in rows] == [
        ("anthropic", 529, 0), ("openai-responses", 429, 1), ("anthropic", 200, 2)]


def test_anthropic_error_types(tmp_path, serve):
    server, _ = serve(make_policy(tmp_path, """
        turns:
          - error: 401
          - error: 404
          - error: 500
          - say: done
    """))
    kinds = [post(server, "/v1/messages", anthropic_request(0))[2]["error"]["type"] for _ in range(3)]
    assert kinds == ["authentication_error", "not_found_error", "api_error"]


@pytest.mark.parametrize("protocol", ["responses", "anthropic"])
def test_memory_seen(tmp_path, serve, protocol):
    marker = "- Cooperation: 95% \"trusted\"."
    server, _ = serve(make_policy(tmp_path, BASIC), memory_marker=marker)
    build, path = ((responses_request, "/v1/responses") if protocol == "responses"
                   else (anthropic_request, "/v1/messages"))
    post(server, path, build(0, memory="nothing"))
    assert server.memory_seen is False
    post(server, path, build(0, memory=f"# Memory\n{marker}\n"))
    assert server.memory_seen is True


def test_traffic_records_both_protocols(tmp_path, serve):
    server, _ = serve(make_policy(tmp_path, BASIC))
    post(server, "/v1/responses", responses_request(0))
    post(server, "/v1/messages?beta=true", anthropic_request(1, stream=False))
    rows = traffic(server)
    assert [(r["protocol"], r["main"], r["turn"], r["tool_results"]) for r in rows] == [
        ("openai-responses", True, 0, 0), ("anthropic", True, 1, 1)]
    assert rows[0]["request"] == responses_request(0)
    assert rows[0]["response"]["events"][-1]["type"] == "response.completed"
    assert rows[1]["path"] == "/v1/messages?beta=true"
    assert rows[1]["response"]["body"]["stop_reason"] == "tool_use"
