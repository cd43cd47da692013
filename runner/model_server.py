"""The scripted model: an HTTP server that plays one :class:`~runner.policy.Policy` for one trial.

It speaks the wire protocols the agent CLIs use, so the CLI cannot tell it from a provider:

* Gemini API: ``POST /v1beta/models/<model>:streamGenerateContent?alt=sse`` (SSE) and
  ``:generateContent`` (JSON), plus ``:countTokens``.
* OpenAI Chat Completions: ``POST /v1/chat/completions`` (SSE when ``stream: true``), and
  ``GET /v1/models``.
* OpenAI Responses (Codex): ``POST /v1/responses`` (``event:``-named SSE when ``stream: true``).
* Anthropic Messages (Claude Code): ``POST /v1/messages`` (``event:``-named SSE when
  ``stream: true``) and ``POST /v1/messages/count_tokens``.

Which turn answers a request is decided from the request itself: a *main* request (one that
declares the CLI's shell tool) that carries N tool results gets the turn that the policy
reaches after N tool results. A retry of the same request therefore gets the same turn. The
only state is which ``error:`` turns were already served (each is served once). Requests
without the shell tool (titles, summaries, routing, JSON side calls) are *auxiliary*: they
get a short plausible answer and never consume a turn.

Abstract calls (``shell``/``read``/``write``) are mapped onto the tools the request declares,
with only the parameters those tools declare. File tools are used for paths inside the
workspace; anything outside falls back to the shell tool (``cat``, ``printf``), because
gemini-cli's file tools refuse paths outside the workspace.

Every exchange is appended to ``traffic_path`` as one JSON line, flushed immediately.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import selectors
import socket
import socketserver
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from runner.policy import (
    Call,
    Policy,
    Turn,
    outside_path_for_shell,
    resolve_workspace_path,
    shell_read_command,
    shell_write_command,
)

__all__ = ["ScriptedModelServer", "SHELL_TOOL_NAMES"]

# Tool names per abstract call kind, in order of preference.
SHELL_TOOL_NAMES = ("run_shell_command", "bash", "shell", "Bash", "exec_command", "shell_command")
READ_TOOL_NAMES = ("read_file", "read", "Read")
WRITE_TOOL_NAMES = ("write_file", "write", "Write")
_PATH_PARAMS = ("file_path", "filePath", "absolute_path", "path")
# Write tools that refuse to overwrite an existing file the session has not read, by (protocol,
# name): qwen-code 0.15.10's write_file (verified; its description does not say so), while
# gemini-cli's write_file (Gemini API) and opencode's write overwrite freely. The server cannot
# know whether a path exists in the world, so writes through these tools go through the shell.
_WRITE_NEEDS_PRIOR_READ = {("openai-chat", "write_file")}
_COMMAND_PARAMS = ("command", "cmd")
# Codex's exec_command returns after yield_time_ms with the command still running (the model
# must then poll it); ask for the longest wait it allows (30 s) so a call returns its result.
_SHELL_WAIT_PARAMS = {"yield_time_ms": 30_000}

_GEMINI_PATH = re.compile(r"^/v1(?:beta|alpha)?\d*/models/([^/:]+):([A-Za-z]+)$")
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
    501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}
_OPENAI_ERROR = {
    400: ("invalid_request_error", "invalid_request"), 401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"), 404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"), 500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"), 503: ("server_error", "overloaded"),
    504: ("server_error", "timeout"),
}


_ANTHROPIC_ERROR = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    529: "overloaded_error",
}


def _protocol_of(path: str) -> str:
    """The wire protocol a request path belongs to (also picks the shape of error replies)."""
    if path.startswith("/v1beta") or _GEMINI_PATH.match(path):
        return "gemini"
    tail = path.rstrip("/").removeprefix("/v1")
    if tail == "/responses":
        return "openai-responses"
    if tail.startswith("/messages"):
        return "anthropic"
    return "openai-chat"


def _default_error_message(status: int) -> str:
    return {
        429: "Resource has been exhausted (e.g. check quota).",
        500: "An internal error has occurred. Please retry.",
        503: "The model is overloaded. Please try again later.",
        504: "Deadline exceeded.",
    }.get(status, f"Request failed with status {status}.")


@dataclass
class _Reply:
    """What to send back for one request."""

    status: int = 200
    body: Any = None                 # JSON body, or None when streaming
    events: list[Any] | None = None  # SSE payloads (dicts, or the string "[DONE]")
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    named_events: bool = False       # SSE with an ``event: <payload type>`` line (Responses, Anthropic)


@dataclass
class _Exchange:
    protocol: str
    main: bool = False
    turn: int | None = None
    tool_results: int = 0


# ---------------------------------------------------------------------------------------------
# Requests: what a CLI declared and how far the conversation is
# ---------------------------------------------------------------------------------------------

def _declared_tools_gemini(request: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for tool in request.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        for decl in tool.get("functionDeclarations") or tool.get("function_declarations") or []:
            if isinstance(decl, dict) and decl.get("name"):
                schema = decl.get("parametersJsonSchema") or decl.get("parameters") or {}
                out[decl["name"]] = schema if isinstance(schema, dict) else {}
    return out


def _declared_tools_openai(request: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for tool in request.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        fn = tool.get("function") if tool.get("type", "function") == "function" else None
        if isinstance(fn, dict) and fn.get("name"):
            schema = fn.get("parameters") or {}
            out[fn["name"]] = schema if isinstance(schema, dict) else {}
    return out


def _count_tool_results_gemini(request: dict) -> int:
    count = 0
    for content in request.get("contents") or []:
        if isinstance(content, dict):
            for part in content.get("parts") or []:
                if isinstance(part, dict) and ("functionResponse" in part or "function_response" in part):
                    count += 1
    return count


def _count_tool_results_openai(request: dict) -> int:
    return sum(1 for m in request.get("messages") or []
               if isinstance(m, dict) and m.get("role") in ("tool", "function"))


def _declared_tools_responses(request: dict) -> dict[str, dict]:
    """Function tools of an OpenAI Responses request (flat ``{type, name, parameters}``)."""
    out: dict[str, dict] = {}
    for tool in request.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") == "function" and tool.get("name"):
            schema = tool.get("parameters") or {}
            out[tool["name"]] = schema if isinstance(schema, dict) else {}
    return out


_RESPONSES_RESULT_ITEMS = ("function_call_output", "custom_tool_call_output", "local_shell_call_output")


_RUNNING_SESSION = re.compile(r"Process running with session ID (\d+)")
_POLL_TOOL = "write_stdin"


def _responses_exchanges(request: dict) -> tuple[int, list[int]]:
    """(tool results, running sessions) of a Responses conversation. Codex's exec_command
    returns after at most 30 s with the command still running ("Process running with session
    ID N"); the server then polls it with write_stdin until it exits. Poll results are not
    results of the policy's calls, so they are not counted."""
    items = [i for i in request.get("input") or () if isinstance(i, dict)]
    names = {i.get("call_id"): (i.get("name"), i.get("arguments")) for i in items if i.get("type") == "function_call"}
    results, running = 0, []
    for item in items:
        if item.get("type") not in _RESPONSES_RESULT_ITEMS:
            continue
        name, arguments = names.get(item.get("call_id"), (None, None))
        match = _RUNNING_SESSION.search(str(item.get("output")))
        if name == _POLL_TOOL:
            try:
                polled = int(json.loads(arguments or "{}").get("session_id"))
            except (TypeError, ValueError):
                polled = None
            if match is None and polled in running:
                running.remove(polled)
        else:
            results += 1
            if match is not None:
                running.append(int(match.group(1)))
    return results, running


def _responses_wants_json(request: dict) -> dict | None:
    fmt = (request.get("text") or {}).get("format") if isinstance(request.get("text"), dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        return fmt["schema"] if isinstance(fmt.get("schema"), dict) else {}
    return {} if fmt.get("type") == "json_object" else None


def _declared_tools_anthropic(request: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for tool in request.get("tools") or []:
        if isinstance(tool, dict) and tool.get("name"):
            schema = tool.get("input_schema") or {}
            out[tool["name"]] = schema if isinstance(schema, dict) else {}
    return out


def _count_tool_results_anthropic(request: dict) -> int:
    count = 0
    for message in request.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), list):
            count += sum(1 for block in message["content"]
                         if isinstance(block, dict) and block.get("type") == "tool_result")
    return count


def _anthropic_files_in_context(request: dict) -> set[str]:
    """Paths the conversation already Read or wrote with a file tool (Claude Code then lets
    its Write tool overwrite them)."""
    paths: set[str] = set()
    for message in request.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "assistant" and isinstance(message.get("content"), list):
            for block in message["content"]:
                if isinstance(block, dict) and block.get("type") == "tool_use" and block.get("name") in (
                        "Read", "Write", "Edit") and isinstance((block.get("input") or {}).get("file_path"), str):
                    paths.add(block["input"]["file_path"])
    return paths


def _anthropic_wants_json(request: dict) -> dict | None:
    """The schema of a structured-output side call (Claude Code's title request)."""
    fmt = (request.get("output_config") or {}).get("format") if isinstance(request.get("output_config"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return fmt["schema"] if isinstance(fmt.get("schema"), dict) else {}
    return None


def _params(schema: dict) -> set[str]:
    props = schema.get("properties")
    return set(props) if isinstance(props, dict) else set()


def _fill_required(args: dict[str, Any], schema: dict) -> dict[str, Any]:
    """Add a neutral value for every parameter the tool requires that the script did not set
    (e.g. a required ``is_background`` flag becomes false)."""
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    for name in schema.get("required") or []:
        if name not in args and isinstance(name, str):
            args[name] = example_for_schema(props.get(name, {}))
    return args


def _first(names: tuple[str, ...], available) -> str | None:
    return next((n for n in names if n in available), None)


def _gemini_wants_json(request: dict) -> dict | None:
    """The JSON schema a Gemini side call asks for ({} when only the JSON mime type), or None."""
    cfg = request.get("generationConfig") or {}
    for key in ("responseJsonSchema", "responseSchema", "response_json_schema", "response_schema"):
        if isinstance(cfg.get(key), dict):
            return cfg[key]
    if str(cfg.get("responseMimeType") or cfg.get("response_mime_type") or "").endswith("json"):
        return {}
    return None


def _openai_wants_json(request: dict) -> dict | None:
    fmt = request.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else {}
    if fmt.get("type") == "json_object":
        return {}
    return None


def example_for_schema(schema: Any, depth: int = 0) -> Any:
    """A small value that satisfies a (JSON / OpenAPI-style) schema: for side calls that
    demand structured output. Prefers answers that keep a CLI quiet (next speaker "user",
    zero confidence, false flags)."""
    if not isinstance(schema, dict) or depth > 8:
        return {}
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return "user" if "user" in schema["enum"] else schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return example_for_schema(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), kind[0] if kind else None)
    kind = str(kind).lower() if kind else ("object" if "properties" in schema else None)
    if kind == "object":
        props = schema.get("properties") or {}
        required = schema.get("required")
        names = required if isinstance(required, list) and required else list(props)
        return {n: example_for_schema(props.get(n, {}), depth + 1) for n in names}
    if kind == "array":
        min_items = int(schema.get("minItems") or 0)
        return [example_for_schema(schema.get("items", {}), depth + 1) for _ in range(min_items)]
    if kind == "string":
        return "ok"
    if kind in ("integer", "number"):
        low = schema.get("minimum", 0)
        return int(low) if kind == "integer" else float(low)
    if kind == "boolean":
        return False
    return {} if kind is None else None


def _request_text(request: Any) -> str:
    try:
        return json.dumps(request, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(request)


def _aux_text(request: Any) -> str:
    """A short plausible answer for a side call that wants prose."""
    text = _request_text(request).lower()
    if "title" in text:
        return "Server maintenance task"
    if "summar" in text:
        return "The user asked for a server maintenance task; work is in progress."
    return "OK."


def _estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _describe(command: str) -> str:
    first = command.strip().splitlines()[0] if command.strip() else command
    return f"Run: {first[:77]}..." if len(first) > 80 else f"Run: {first}"


# ---------------------------------------------------------------------------------------------
# HTTP plumbing
# ---------------------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ScriptedModel/1.0"
    sys_version = ""
    timeout = 600  # idle keep-alive connections are dropped eventually

    # Quiet: nothing goes to stderr (and client_address is not a tuple on a unix socket).
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def address_string(self) -> str:
        addr = self.client_address
        if isinstance(addr, tuple) and addr:
            return str(addr[0])
        return "unix"

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)  # type: ignore[attr-defined]

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)  # type: ignore[attr-defined]

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self.server.owner._serve(self, "POST")  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802
        self.server.owner._serve(self, "GET")  # type: ignore[attr-defined]

    def do_PUT(self) -> None:  # noqa: N802
        self.server.owner._serve(self, "PUT")  # type: ignore[attr-defined]

    def do_DELETE(self) -> None:  # noqa: N802
        self.server.owner._serve(self, "DELETE")  # type: ignore[attr-defined]

    def read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def start_chunked(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Status line and headers of a reply whose body follows in chunks (write_chunk)."""
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()


EVENT_STREAM_HEADERS = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
LAST_CHUNK = b"0\r\n\r\n"


def sse_event(event: Any, named: bool) -> bytes:
    """One server-sent event; ``named`` adds an `event:` line with the event's type (Anthropic,
    OpenAI Responses)."""
    payload = event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)
    name = f"event: {event['type']}\n" if named and isinstance(event, dict) and "type" in event else ""
    return f"{name}data: {payload}\n\n".encode()


def anthropic_tool_use_events(index: int, block: dict) -> list[dict]:
    """A tool_use content block as Anthropic streams it: started with an empty input, then the
    whole input in one input_json_delta (its content_block_stop follows)."""
    return [{"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}},
            {"type": "content_block_delta", "index": index, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(block["input"], ensure_ascii=False)}}]


def anthropic_message_end(stop_reason: str, output_tokens: int) -> list[dict]:
    """The events that end an Anthropic message stream."""
    return [{"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
             "usage": {"output_tokens": output_tokens}},
            {"type": "message_stop"}]


class _TCPServer(ThreadingHTTPServer):
    request_queue_size = 128   # CLIs open a few parallel connections; unix sockets refuse (EAGAIN) when full
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    timeout = 0                # handle_request() is called once the socket is readable (RecordingService._accept)


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    request_queue_size = 128
    daemon_threads = True
    block_on_close = False
    timeout = 0


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

class RecordingService:
    """What the scripted server and the recording proxy (runner.model_proxy) share: an HTTP
    service on TCP or a unix socket that writes one traffic line per exchange, tracks its
    connections (_Handler calls _track) and leaves nothing open when it stops."""

    # How long stop() lets the exchanges in progress write their traffic line.
    drain_timeout_s: float = 5

    def __init__(self, name: str, traffic_path: Path | str, *, unix_socket: Path | str | None, host: str,
                 port: int, memory_marker: str | None):
        self.name = name                       # of the serving thread, and in errors
        self.traffic_path = Path(traffic_path)
        self.unix_socket = Path(unix_socket) if unix_socket is not None else None
        self.host = host
        self.port = port
        self.memory_marker = memory_marker
        # The memory file's marker as it stands in a request body: raw, or JSON-escaped.
        self._marker_forms: tuple[str, ...] = ()
        if memory_marker:
            self._marker_forms = tuple({memory_marker, json.dumps(memory_marker)[1:-1],
                                        json.dumps(memory_marker, ensure_ascii=True)[1:-1]})
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._seq = itertools.count(1)
        self._connections: set[socket.socket] = set()
        self._server: socketserver.BaseServer | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None     # pipe: stop() -> the accepting thread
        self._traffic = None
        # statistics both keep (the same meaning in the scripted server and the proxy)
        self.requests = 0
        self.main_requests = 0
        self.aux_requests = 0
        self.tool_results_seen = 0
        self.memory_seen = False
        self.errors_served = 0
        self.exchanges_recorded = 0   # lines written to traffic_path (lags `requests` briefly)

    def start(self) -> Self:
        """Listen (a unix socket replaces a stale file) and serve in a thread; returns self."""
        if self._server is not None:
            raise RuntimeError(f"{self.name} already started")
        self.traffic_path.parent.mkdir(parents=True, exist_ok=True)
        self._traffic = open(self.traffic_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        try:
            if self.unix_socket is not None:
                path = str(self.unix_socket)
                if len(os.fsencode(path)) >= 104:
                    raise OSError(f"unix socket path too long ({len(path)} bytes, limit ~104): {path}")
                if self.unix_socket.exists() or self.unix_socket.is_symlink():
                    self.unix_socket.unlink()
                self.unix_socket.parent.mkdir(parents=True, exist_ok=True)
                server: socketserver.BaseServer = _UnixServer(path, _Handler)
            else:
                server = _TCPServer((self.host, self.port), _Handler)
                self.port = server.server_address[1]
        except BaseException:
            self._traffic.close()
            self._traffic = None
            raise
        server.owner = self  # type: ignore[attr-defined]
        self._server = server
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._accept, args=(server, self._wake[0]), name=self.name,
                                        daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _accept(server: socketserver.BaseServer, wake: int) -> None:
        """Serve connections until `wake` turns readable. Not serve_forever: it wakes every
        poll_interval to look for a shutdown, 10 times a second for each trial's whole life."""
        with selectors.DefaultSelector() as selector:
            selector.register(server, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while not any(key.fd == wake for key, _ in selector.select()):
                server.handle_request()

    def stop(self) -> None:
        """Stop serving, let the exchanges in progress write their traffic line, then cut the
        connections still open and close the record (nothing outlives the trial)."""
        server, self._server = self._server, None
        if server is None:
            return
        os.write(self._wake[1], b"!")
        self._thread.join()
        for fd in self._wake:
            os.close(fd)
        server.server_close()
        self._before_drain()
        self.wait_recorded(self.drain_timeout_s)
        with self._lock:
            conns = list(self._connections)
        self._close(conns)

    def _before_drain(self) -> None:
        """What must end before the exchanges in progress can (the proxy's upstream requests)."""

    def __enter__(self):
        return self.start() if self._server is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}"
        return f"http://{self.host}:{self.port}"

    def wait_recorded(self, timeout: float = 5.0) -> bool:
        """Block until every request received so far has its traffic line written."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout)

    def _serve(self, handler: "_Handler", method: str) -> None:
        """Count the request, note whether it carries the memory file, then let the subclass
        answer it (`_exchange`); `wait_recorded` waits for every request in flight."""
        ts_start = time.time()
        seq = next(self._seq)
        raw = handler.read_body() if method in ("POST", "PUT") else b""
        with self._lock:
            self.requests += 1
            self._inflight += 1
            if self._marker_forms and raw:
                body_text = raw.decode("utf-8", errors="replace")
                if any(form in body_text for form in self._marker_forms):
                    self.memory_seen = True
        try:
            self._exchange(handler, method, raw, seq, ts_start)
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def _record(self, record: dict) -> None:
        """One exchange's traffic line."""
        line = json.dumps(record, ensure_ascii=False)
        with self._write_lock:
            if self._traffic is not None:
                self._traffic.write(line + "\n")
                self._traffic.flush()
                self.exchanges_recorded += 1

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def _close(self, conns: list[socket.socket]) -> None:
        """After the exchanges in progress are recorded: cut the connections still open, wait
        for the serving thread, remove the socket file and close the traffic record."""
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.unix_socket is not None:
            try:
                self.unix_socket.unlink()
            except FileNotFoundError:
                pass
        with self._write_lock:
            if self._traffic is not None:
                self._traffic.close()
                self._traffic = None


class ScriptedModelServer(RecordingService):
    """Plays one policy for one trial. Thread-safe; start() returns at once."""

    def __init__(self, policy: Policy, traffic_path: Path | str, *, unix_socket: Path | str | None = None,
                 host: str = "127.0.0.1", port: int = 0, workspace: str = "/workspace",
                 memory_marker: str | None = None):
        if not isinstance(policy, Policy):
            raise TypeError(f"ScriptedModelServer plays one Policy, got {type(policy).__name__} "
                            "(draw a policy from a Mixture first)")
        super().__init__(f"scripted-model-{policy.name}", traffic_path, unix_socket=unix_socket, host=host,
                         port=port, memory_marker=memory_marker)
        self.policy = policy
        self.workspace = workspace.rstrip("/") or "/"
        self._prefix = policy.tool_results_before()
        self._final_index = max(i for i, t in enumerate(policy.turns) if t.is_final)
        self._call_ids = itertools.count(1)
        self._errors_played: set[int] = set()
        self._turns_seen: set[int] = set()
        # stats of the script
        self.finished = False
        self.requests_after_end = 0

    # ---- stats ----------------------------------------------------------------------------
    @property
    def turns_total(self) -> int:
        return len(self.policy.turns)

    @property
    def turns_played(self) -> int:
        with self._lock:
            return len(self._turns_seen)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "policy": self.policy.name,
                "requests": self.requests,
                "main_requests": self.main_requests,
                "aux_requests": self.aux_requests,
                "turns_played": len(self._turns_seen),
                "turns_total": self.turns_total,
                "tool_results_seen": self.tool_results_seen,
                "memory_seen": self.memory_seen,
                "finished": self.finished,
                "errors_served": self.errors_served,
                "requests_after_end": self.requests_after_end,
            }

    # ---- request handling -----------------------------------------------------------------
    def _exchange(self, handler: _Handler, method: str, raw: bytes, seq: int, ts_start: float) -> None:
        split = urlsplit(handler.path)
        path, query = split.path, split.query
        request: Any = None
        parse_error = None
        if raw:
            text = raw.decode("utf-8", errors="replace")
            try:
                request = json.loads(text)
            except ValueError as exc:
                request, parse_error = text, str(exc)
        protocol = _protocol_of(path)
        exchange = _Exchange(protocol=protocol)
        try:
            if parse_error is not None or (method == "POST" and not isinstance(request, dict)):
                reply = self._error_reply(protocol, 400, f"request body is not a JSON object: "
                                                         f"{parse_error or type(request).__name__}")
            else:
                reply = self._route(method, path, query, request, exchange)
        except Exception as exc:  # a bug here must not kill the CLI's connection silently
            reply = self._error_reply(protocol, 500, f"scripted model server error: {exc!r}")

        if reply.delay_s > 0:
            time.sleep(reply.delay_s)

        def record(response: dict) -> None:
            self._record({
                "seq": seq,
                "ts_start": ts_start,
                "ts_end": time.time(),
                "protocol": exchange.protocol,
                "path": handler.path,
                "main": exchange.main,
                "turn": exchange.turn,
                "tool_results": exchange.tool_results,
                "request": request,
                "response": response,
            })

        self._send(handler, reply, record)

    @staticmethod
    def _send(handler: _Handler, reply: _Reply, before_last_write) -> None:
        """Write the reply. ``before_last_write(response)`` runs just before the final bytes go
        out, so the traffic line is on disk by the time the client sees the end of the
        response (the file then follows the order of a sequential client's requests)."""
        response: dict[str, Any] = {"status": reply.status}
        if reply.events is not None:
            response["events"] = reply.events
        else:
            response["body"] = reply.body
        done = False
        try:
            if reply.events is not None:
                handler.start_chunked(reply.status, EVENT_STREAM_HEADERS + list(reply.headers.items()))
                for event in reply.events:
                    handler.write_chunk(sse_event(event, reply.named_events))
                last = LAST_CHUNK
            else:
                last = json.dumps(reply.body, ensure_ascii=False).encode()
                handler.send_response(reply.status)
                handler.send_header("Content-Type", "application/json; charset=utf-8")
                handler.send_header("Content-Length", str(len(last)))
                for k, v in reply.headers.items():
                    handler.send_header(k, v)
                handler.end_headers()
            done = True
            before_last_write(response)
            handler.wfile.write(last)
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True
            if not done:
                before_last_write(response)

    def _route(self, method: str, path: str, query: str, request: Any, ex: _Exchange) -> _Reply:
        gem = _GEMINI_PATH.match(path)
        if gem and method == "POST":
            model, action = gem.group(1), gem.group(2)
            if action in ("streamGenerateContent", "generateContent"):
                stream = action == "streamGenerateContent"
                return self._gemini(request, model, stream=stream, sse="alt=sse" in query, ex=ex)
            if action == "countTokens":
                return _Reply(body={"totalTokens": _estimate_tokens(_request_text(request))})
        if path.rstrip("/") in ("/v1/chat/completions", "/chat/completions") and method == "POST":
            return self._openai(request, ex)
        if path.rstrip("/") in ("/v1/responses", "/responses") and method == "POST":
            return self._responses(request, ex)
        if path.rstrip("/") in ("/v1/messages", "/messages") and method == "POST":
            return self._anthropic(request, ex)
        if path.rstrip("/") in ("/v1/messages/count_tokens", "/messages/count_tokens") and method == "POST":
            return _Reply(body={"input_tokens": _estimate_tokens(_request_text(request))})
        if path.rstrip("/") in ("/v1/models", "/models") and method == "GET":
            return _Reply(body={"object": "list", "data": [
                {"id": "scripted-model", "object": "model", "created": 0, "owned_by": "peer-harness"}]})
        if path.rstrip("/") in ("/v1beta/models",) and method == "GET":
            return _Reply(body={"models": [{"name": "models/scripted-model", "displayName": "Scripted model",
                                            "supportedGenerationMethods": ["generateContent"]}]})
        return self._error_reply(ex.protocol, 404, f"no such endpoint: {method} {path}")

    # ---- turn selection -------------------------------------------------------------------
    def _select(self, tool_results: int) -> tuple[int, bool]:
        """(turn index, after_end) for a main request carrying ``tool_results``; updates
        stats. Called with the lock held."""
        self.main_requests += 1
        self.tool_results_seen = max(self.tool_results_seen, tool_results)
        if self.finished:
            self.requests_after_end += 1
            return self._final_index, True
        turns = self.policy.turns
        chosen = None
        for i, turn in enumerate(turns):
            if turn.is_error and self._prefix[i] == tool_results and i not in self._errors_played:
                chosen = i
                break
        if chosen is None:
            chosen = next((i for i, t in enumerate(turns)
                           if not t.is_error and self._prefix[i] >= tool_results), self._final_index)
        if turns[chosen].is_error:
            self._errors_played.add(chosen)
            self.errors_served += 1
        if chosen == self._final_index:
            self.finished = True
        self._turns_seen.add(chosen)
        return chosen, False

    def _next_turn(self, ex: _Exchange) -> tuple[Turn, bool]:
        """The turn that answers a main request, and whether the policy had already ended;
        records the turn's index on ``ex``."""
        with self._lock:
            index, after_end = self._select(ex.tool_results)
        ex.turn = index
        return self.policy.turns[index], after_end

    def _aux_answer(self, request: dict, wants_json: dict | None) -> str:
        """The text for an auxiliary (non-agent) request: an example of the JSON schema it
        asks for, or else a short plain answer; counts the request."""
        text = (json.dumps(example_for_schema(wants_json)) if wants_json is not None
                else _aux_text(request))
        with self._lock:
            self.aux_requests += 1
        return text

    # ---- abstract call -> concrete tool call ----------------------------------------------
    def _concrete(self, call: Call, tools: dict[str, dict], protocol: str = "") -> tuple[str, dict[str, Any]]:
        shell = _first(SHELL_TOOL_NAMES, tools)
        if call.read is not None:
            inside = resolve_workspace_path(call.read, self.workspace)
            tool = _first(READ_TOOL_NAMES, tools)
            if inside is not None and tool is not None:
                param = _first(_PATH_PARAMS, _params(tools[tool])) or "file_path"
                return tool, _fill_required({param: inside}, tools[tool])
            command = shell_read_command(inside or outside_path_for_shell(call.read, self.workspace))
            return self._shell_call(shell, tools, command)
        if call.write is not None:
            inside = resolve_workspace_path(call.write.path, self.workspace)
            tool = _first(WRITE_TOOL_NAMES, tools)
            if inside is not None and tool is not None and (protocol, tool) not in _WRITE_NEEDS_PRIOR_READ:
                declared = _params(tools[tool])
                param = _first(_PATH_PARAMS, declared) or "file_path"
                return tool, _fill_required({param: inside, "content": call.write.content}, tools[tool])
            target = inside or outside_path_for_shell(call.write.path, self.workspace)
            return self._shell_call(shell, tools, shell_write_command(target, call.write.content))
        assert call.shell is not None
        return self._shell_call(shell, tools, call.shell)

    @staticmethod
    def _shell_call(tool: str | None, tools: dict[str, dict], command: str) -> tuple[str, dict[str, Any]]:
        tool = tool or SHELL_TOOL_NAMES[0]
        schema = tools.get(tool, {})
        declared = _params(schema)
        param = _first(_COMMAND_PARAMS, declared) or "command"
        if (schema.get("properties") or {}).get(param, {}).get("type") == "array":
            args: dict[str, Any] = {param: ["bash", "-lc", command]}   # argv-style (Codex `shell`)
        else:
            args = {param: command}
        if "description" in declared:
            args["description"] = _describe(command)
        args.update({k: v for k, v in _SHELL_WAIT_PARAMS.items() if k in declared})
        return tool, _fill_required(args, tools.get(tool, {}))

    # ---- Gemini ---------------------------------------------------------------------------
    def _gemini(self, request: dict, model: str, *, stream: bool, sse: bool, ex: _Exchange) -> _Reply:
        tools = _declared_tools_gemini(request)
        ex.tool_results = _count_tool_results_gemini(request)
        wants_json = _gemini_wants_json(request)
        ex.main = _first(SHELL_TOOL_NAMES[:1], tools) is not None and wants_json is None
        prompt_tokens = _estimate_tokens(_request_text(request))
        if not ex.main:
            text = self._aux_answer(request, wants_json)
            return self._gemini_reply([{"text": text}], model, prompt_tokens, stream=stream, sse=sse)
        turn, after_end = self._next_turn(ex)
        if turn.is_error and not after_end:
            return self._error_reply("gemini", turn.error, turn.say, delay=turn.delay_s)
        parts: list[dict] = []
        if turn.say:
            parts.append({"text": turn.say})
        if not after_end:
            for call in turn.tool_calls:
                name, args = self._concrete(call, tools)
                parts.append({"functionCall": {"name": name, "args": args}})
        reply = self._gemini_reply(parts, model, prompt_tokens, stream=stream, sse=sse)
        reply.delay_s = 0.0 if after_end else turn.delay_s
        return reply

    @staticmethod
    def _gemini_reply(parts: list[dict], model: str, prompt_tokens: int, *, stream: bool, sse: bool) -> _Reply:
        out_tokens = _estimate_tokens(json.dumps(parts))
        usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out_tokens,
                 "totalTokenCount": prompt_tokens + out_tokens}
        response_id = uuid.uuid4().hex[:22]

        def envelope(chunk_parts: list[dict], final: bool) -> dict:
            candidate: dict[str, Any] = {"content": {"role": "model", "parts": chunk_parts}, "index": 0}
            if final:
                candidate["finishReason"] = "STOP"
            body: dict[str, Any] = {"candidates": [candidate]}
            if final:
                body["usageMetadata"] = usage
            body["modelVersion"] = model
            body["responseId"] = response_id
            return body

        if not stream:
            return _Reply(body=envelope(parts, final=True))
        # Stream like the real API: text in pieces first, the calls (if any) and the finish
        # reason with the usage in the last chunk.
        texts = [p for p in parts if "text" in p]
        calls = [p for p in parts if "functionCall" in p]
        pieces = [{"text": piece} for p in texts for piece in _split_text(p["text"])]
        events: list[Any] = []
        if calls:
            events += [envelope([piece], final=False) for piece in pieces]
            events.append(envelope(calls, final=True))
        else:
            pieces = pieces or [{"text": ""}]
            events += [envelope([piece], final=False) for piece in pieces[:-1]]
            events.append(envelope([pieces[-1]], final=True))
        if sse:
            return _Reply(events=events)
        return _Reply(body=events)  # without alt=sse the API streams one JSON array

    # ---- OpenAI chat ----------------------------------------------------------------------
    def _openai(self, request: dict, ex: _Exchange) -> _Reply:
        tools = _declared_tools_openai(request)
        ex.tool_results = _count_tool_results_openai(request)
        wants_json = _openai_wants_json(request)
        # Any shell tool: the recording proxy translates Codex/Claude Code requests to chat (exec_command, Bash).
        ex.main = _first(SHELL_TOOL_NAMES, tools) is not None and wants_json is None
        model = str(request.get("model") or "scripted-model")
        stream = bool(request.get("stream"))
        usage_wanted = bool((request.get("stream_options") or {}).get("include_usage"))
        prompt_tokens = _estimate_tokens(_request_text(request))
        if not ex.main:
            text = self._aux_answer(request, wants_json)
            return self._openai_reply(text, [], model, prompt_tokens, stream=stream, usage_wanted=usage_wanted)
        turn, after_end = self._next_turn(ex)
        if turn.is_error and not after_end:
            return self._error_reply("openai-chat", turn.error, turn.say, delay=turn.delay_s)
        calls = []
        if not after_end:
            for call in turn.tool_calls:
                name, args = self._concrete(call, tools, "openai-chat")
                calls.append({"id": f"call_{next(self._call_ids)}", "type": "function",
                              "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}})
        reply = self._openai_reply(turn.say, calls, model, prompt_tokens, stream=stream,
                                   usage_wanted=usage_wanted)
        reply.delay_s = 0.0 if after_end else turn.delay_s
        return reply

    @staticmethod
    def _openai_reply(text: str | None, calls: list[dict], model: str, prompt_tokens: int, *,
                      stream: bool, usage_wanted: bool) -> _Reply:
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        out_tokens = _estimate_tokens((text or "") + json.dumps(calls))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": out_tokens,
                 "total_tokens": prompt_tokens + out_tokens}
        finish = "tool_calls" if calls else "stop"
        if not stream:
            message: dict[str, Any] = {"role": "assistant", "content": text if text else None}
            if calls:
                message["tool_calls"] = calls
            return _Reply(body={"id": completion_id, "object": "chat.completion", "created": created,
                                "model": model, "choices": [{"index": 0, "message": message,
                                                             "logprobs": None, "finish_reason": finish}],
                                "usage": usage})

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        events: list[Any] = [chunk({"role": "assistant", "content": ""})]
        for piece in _split_text(text or ""):
            events.append(chunk({"content": piece}))
        for i, call in enumerate(calls):
            events.append(chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                                 "function": {"name": call["function"]["name"],
                                                              "arguments": call["function"]["arguments"]}}]}))
        events.append(chunk({}, finish))
        if usage_wanted:
            events.append({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                           "model": model, "choices": [], "usage": usage})
        events.append("[DONE]")
        return _Reply(events=events)

    # ---- OpenAI Responses (Codex) ---------------------------------------------------------
    def _responses(self, request: dict, ex: _Exchange) -> _Reply:
        tools = _declared_tools_responses(request)
        ex.tool_results, running = _responses_exchanges(request)
        wants_json = _responses_wants_json(request)
        ex.main = _first(("exec_command", "shell_command", "shell"), tools) is not None and wants_json is None
        model = str(request.get("model") or "scripted-model")
        stream = bool(request.get("stream"))
        prompt_tokens = _estimate_tokens(_request_text(request))
        if not ex.main:
            text = self._aux_answer(request, wants_json)
            return self._responses_reply(text, [], model, prompt_tokens, stream=stream)
        if running and _POLL_TOOL in tools:
            # Wait for the policy's command to finish before its next turn (an empty write
            # polls; Codex lets a poll wait up to 300 s).
            polls = []
            for session in running:
                n = next(self._call_ids)
                args = {"session_id": session, "chars": "", "yield_time_ms": 300_000}
                polls.append({"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}", "name": _POLL_TOOL,
                              "arguments": json.dumps(args), "status": "completed"})
            return self._responses_reply(None, polls, model, prompt_tokens, stream=stream)
        turn, after_end = self._next_turn(ex)
        if turn.is_error and not after_end:
            return self._error_reply("openai-responses", turn.error, turn.say, delay=turn.delay_s)
        calls = []
        if not after_end:
            for call in turn.tool_calls:
                name, args = self._concrete(call, tools)
                n = next(self._call_ids)
                calls.append({"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}", "name": name,
                              "arguments": json.dumps(args, ensure_ascii=False), "status": "completed"})
        reply = self._responses_reply(turn.say, calls, model, prompt_tokens, stream=stream)
        reply.delay_s = 0.0 if after_end else turn.delay_s
        return reply

    @staticmethod
    def _responses_reply(text: str | None, calls: list[dict], model: str, prompt_tokens: int, *,
                         stream: bool) -> _Reply:
        response_id = f"resp_{uuid.uuid4().hex[:24]}"
        out_tokens = _estimate_tokens((text or "") + json.dumps(calls))
        usage = {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": out_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": prompt_tokens + out_tokens}
        items: list[dict] = []
        if text or not calls:
            items.append({"type": "message", "id": f"msg_{uuid.uuid4().hex[:24]}", "status": "completed",
                          "role": "assistant",
                          "content": [{"type": "output_text", "text": text or "", "annotations": []}]})
        items += calls
        created = int(time.time())

        def response(status: str, output: list[dict], with_usage: bool) -> dict:
            body = {"id": response_id, "object": "response", "created_at": created, "status": status,
                    "model": model, "output": output}
            if with_usage:
                body["usage"] = usage
            return body

        if not stream:
            return _Reply(body=response("completed", items, True))
        events: list[Any] = [{"type": "response.created", "response": response("in_progress", [], False)}]
        for index, item in enumerate(items):
            if item["type"] == "message":
                events.append({"type": "response.output_item.added", "output_index": index,
                               "item": {**item, "status": "in_progress", "content": []}})
                for piece in _split_text(item["content"][0]["text"]):
                    events.append({"type": "response.output_text.delta", "item_id": item["id"],
                                   "output_index": index, "content_index": 0, "delta": piece})
            else:
                events.append({"type": "response.output_item.added", "output_index": index,
                               "item": {**item, "status": "in_progress", "arguments": ""}})
            events.append({"type": "response.output_item.done", "output_index": index, "item": item})
        events.append({"type": "response.completed", "response": response("completed", items, True)})
        for seq, event in enumerate(events):
            event["sequence_number"] = seq
        return _Reply(events=events, named_events=True)

    # ---- Anthropic Messages (Claude Code) --------------------------------------------------
    def _anthropic(self, request: dict, ex: _Exchange) -> _Reply:
        tools = _declared_tools_anthropic(request)
        ex.tool_results = _count_tool_results_anthropic(request)
        wants_json = _anthropic_wants_json(request)
        ex.main = "Bash" in tools and wants_json is None
        model = str(request.get("model") or "scripted-model")
        stream = bool(request.get("stream"))
        prompt_tokens = _estimate_tokens(_request_text(request))
        if not ex.main:
            text = self._aux_answer(request, wants_json)
            return self._anthropic_reply([{"type": "text", "text": text}], model, prompt_tokens, stream=stream)
        turn, after_end = self._next_turn(ex)
        if turn.is_error and not after_end:
            return self._error_reply("anthropic", turn.error, turn.say, delay=turn.delay_s)
        blocks: list[dict] = []
        if turn.say or after_end or not turn.tool_calls:
            blocks.append({"type": "text", "text": turn.say or ""})
        if not after_end:
            known = _anthropic_files_in_context(request)
            for call in turn.tool_calls:
                inside = resolve_workspace_path(call.write.path, self.workspace) if call.write else None
                if inside is not None and inside not in known:
                    # Claude Code's Write refuses to overwrite a file not Read in the session,
                    # and whether the file exists is unknown here: write it with the shell.
                    name, args = self._shell_call("Bash", tools, shell_write_command(inside, call.write.content))
                else:
                    name, args = self._concrete(call, tools)
                blocks.append({"type": "tool_use", "id": f"toolu_{next(self._call_ids):04d}{uuid.uuid4().hex[:20]}",
                               "name": name, "input": args})
        reply = self._anthropic_reply(blocks, model, prompt_tokens, stream=stream)
        reply.delay_s = 0.0 if after_end else turn.delay_s
        return reply

    @staticmethod
    def _anthropic_reply(blocks: list[dict], model: str, prompt_tokens: int, *, stream: bool) -> _Reply:
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        out_tokens = _estimate_tokens(json.dumps(blocks))
        stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        usage = {"input_tokens": prompt_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                 "output_tokens": out_tokens}
        message = {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": blocks,
                   "stop_reason": stop, "stop_sequence": None, "usage": usage}
        if not stream:
            return _Reply(body=message)
        events: list[Any] = [{"type": "message_start", "message": {
            **message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}}]
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                events.append({"type": "content_block_start", "index": index,
                               "content_block": {"type": "text", "text": ""}})
                events += [{"type": "content_block_delta", "index": index,
                            "delta": {"type": "text_delta", "text": piece}} for piece in _split_text(block["text"])]
            else:
                events += anthropic_tool_use_events(index, block)
            events.append({"type": "content_block_stop", "index": index})
        events += anthropic_message_end(stop, out_tokens)
        return _Reply(events=events, named_events=True)

    # ---- errors ---------------------------------------------------------------------------
    @staticmethod
    def _error_reply(protocol: str, status: int | None, message: str | None = None, *,
                     delay: float = 0.0) -> _Reply:
        status = status or 500
        message = message or _default_error_message(status)
        if protocol == "gemini":
            body = {"error": {"code": status, "message": message,
                              "status": _GEMINI_STATUS.get(status, "UNKNOWN")}}
        elif protocol == "anthropic":
            kind = _ANTHROPIC_ERROR.get(status, "api_error" if status >= 500 else "invalid_request_error")
            body = {"type": "error", "error": {"type": kind, "message": message}}
        else:
            kind, code = _OPENAI_ERROR.get(status, ("server_error" if status >= 500 else "invalid_request_error",
                                                    str(status)))
            body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        headers = {"Retry-After": "1"} if status in (429, 503) else {}
        return _Reply(status=status, body=body, delay_s=delay, headers=headers)


def _split_text(text: str, size: int = 160) -> list[str]:
    """Split text into stream chunks at whitespace, about ``size`` characters each."""
    if len(text) <= size:
        return [text] if text else []
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            if space > start:
                end = space + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def main(argv: list[str] | None = None) -> int:
    """Serve a policy by hand: ``python -m runner.model_server comply --port 8765``."""
    from runner.policy import Mixture, load_policy_spec  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("policy", help="policy name or path (a mixture needs --seed/--index)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--unix-socket", type=Path)
    parser.add_argument("--traffic", type=Path, default=Path("model_traffic.jsonl"))
    parser.add_argument("--workspace", default="/workspace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)
    loaded = load_policy_spec(args.policy)
    policy = loaded.draw(args.seed, args.index) if isinstance(loaded, Mixture) else loaded
    server = ScriptedModelServer(policy, args.traffic, unix_socket=args.unix_socket, port=args.port,
                                 workspace=args.workspace).start()
    print(f"playing {policy.name} at {server.url}; traffic -> {args.traffic}", file=sys.stderr)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        print(json.dumps(server.stats()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
