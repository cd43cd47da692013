"""The recording proxy: the model endpoint of a trial whose model is real (a provider or a
local server), the counterpart of the scripted model server.

It listens where the scripted server would (the trial's unix socket, bridged into the world as
127.0.0.1:8000), forwards each request of the agent to the source, streams the answer back as
it arrives, and appends every exchange to ``model_traffic.jsonl`` in the scripted server's
record format (``seq, ts_start, ts_end, protocol, path, main, turn, tool_results, request,
response{status, events|body}``), plus:

* ``headers``: the agent's request headers, credentials redacted;
* ``upstream``: ``{url, protocol, translated}``; when the request was translated also the
  upstream ``request`` and ``response`` exactly as parsed from the wire (what the source saw);
  ``error`` when the source could not be reached;
* ``error_class``: rate_limit | auth | model_not_found | api_error | context_overflow | timeout
  for a failed exchange, else null.

The key is read from the environment once, added to upstream requests only, and never written
anywhere: the agent holds a dummy key and the record redacts every credential header.
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit

from harnesses.native_output import class_for_message, class_for_status
# The scripted server's HTTP plumbing, error bodies and readers of structured-output requests.
from runner.model_server import (
    EVENT_STREAM_HEADERS,
    LAST_CHUNK,
    RecordingService,
    ScriptedModelServer,
    _anthropic_wants_json,
    _estimate_tokens,
    _gemini_wants_json,
    _Handler,
    _openai_wants_json,
    _protocol_of,
    _responses_wants_json,
    sse_event,
)
from runner.model_source import ANTHROPIC, CHAT, GEMINI, RESPONSES, ModelSource
from runner.model_translate import Translation, TranslationError, for_protocol

__all__ = ["ModelProxy", "redact_headers"]

CONNECT_TIMEOUT_S = 30
# A local model's first (cold, long) prompt can take minutes; the trial's own limit bounds it.
READ_TIMEOUT_S = 900
SECRET_HEADERS = {"authorization", "proxy-authorization", "x-api-key", "x-goog-api-key", "api-key", "cookie",
                  "x-auth-token"}
SECRET_QUERY = {"key", "api_key", "apikey", "access_token"}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "host", "content-length", "accept-encoding", "content-encoding"}
REDACTED = "[redacted]"

def _conversation(protocol: str, request: dict) -> tuple[bool, int]:
    """(declares tools, tool results carried) of an agent's request. A request declaring tools
    is a *main* request of the agent loop; others are side calls (titles, summaries)."""
    if protocol == GEMINI:
        tools = any((t.get("functionDeclarations") or t.get("function_declarations"))
                    for t in request.get("tools") or [] if isinstance(t, dict))
        results = sum(1 for c in request.get("contents") or [] if isinstance(c, dict)
                      for p in c.get("parts") or [] if isinstance(p, dict)
                      and ("functionResponse" in p or "function_response" in p))
    elif protocol == ANTHROPIC:
        tools = bool(request.get("tools"))
        results = sum(1 for m in request.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"
                      and isinstance(m.get("content"), list)
                      for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_result")
    elif protocol == RESPONSES:
        tools = bool(request.get("tools"))
        items = request.get("input") if isinstance(request.get("input"), list) else []
        results = sum(1 for i in items if isinstance(i, dict) and str(i.get("type", "")).endswith("_call_output"))
    else:
        tools = bool(request.get("tools"))
        results = sum(1 for m in request.get("messages") or [] if isinstance(m, dict)
                      and m.get("role") in ("tool", "function"))
    wants_json = {GEMINI: _gemini_wants_json, CHAT: _openai_wants_json, RESPONSES: _responses_wants_json,
                  ANTHROPIC: _anthropic_wants_json}[protocol](request) is not None
    return tools and not wants_json, results


def _is_model_call(protocol: str, path: str) -> bool:
    """A generation request (the only kind a translated route sends upstream)."""
    if protocol == GEMINI:
        return path.endswith((":generateContent", ":streamGenerateContent"))
    tail = path.rstrip("/").removeprefix("/v1")
    return tail == ("/responses" if protocol == RESPONSES else "/messages" if protocol == ANTHROPIC
                    else "/chat/completions")


def redact_headers(headers) -> dict[str, str]:
    """Request headers as recorded: every credential replaced by "[redacted]"."""
    return {k: (REDACTED if k.lower() in SECRET_HEADERS else v) for k, v in headers.items()}


def redact_path(path: str) -> str:
    split = urlsplit(path)
    if not split.query:
        return path
    query = [(k, REDACTED if k.lower() in SECRET_QUERY else v) for k, v in parse_qsl(split.query, keep_blank_values=True)]
    return f"{split.path}?{urlencode(query, safe='[]')}"


def parse_sse(text: str) -> list[Any]:
    """SSE payloads as the scripted server records them: each event's data, parsed as JSON
    when it is JSON (``[DONE]`` and other text stay strings)."""
    events: list[Any] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:"))
        if data:
            events.append(_payload(data))
    return events


def _sse_payloads(resp: http.client.HTTPResponse) -> Iterator[Any]:
    """The payload of each SSE event of a streaming response as it arrives (JSON parsed when
    it is JSON)."""
    data_lines: list[str] = []
    while True:
        line = resp.readline()
        if not line:
            break
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if text.startswith("data:"):
            data_lines.append(text[5:].removeprefix(" "))
        elif not text and data_lines:
            yield _payload("\n".join(data_lines))
            data_lines = []
    if data_lines:
        yield _payload("\n".join(data_lines))


def _payload(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data


def error_class(status: int, text: str) -> str:
    """Typed class of an upstream failure: a 400's message decides (context overflow is often a
    400), otherwise the status."""
    if status in (400, 422):
        return class_for_message(text) or "api_error"
    return class_for_status(status)


class _Exchange:
    """What the proxy learns about one request while serving it."""

    def __init__(self, protocol: str):
        self.protocol = protocol
        self.main = False
        self.tool_results = 0
        self.upstream: dict[str, Any] = {}
        self.error_class: str | None = None
        self.status: int = 0
        self.error_message: str = ""


class ModelProxy(RecordingService):
    """Forwards one trial's model traffic to a real source and records it. Thread-safe; the
    attributes mirror the scripted server's statistics where they mean the same."""

    drain_timeout_s = 10     # an exchange whose upstream reply stop() cut still writes its line

    def __init__(self, source: ModelSource, agent_protocol: str, traffic_path: Path | str, *,
                 unix_socket: Path | str | None = None, host: str = "127.0.0.1", port: int = 0,
                 memory_marker: str | None = None):
        super().__init__(f"model-proxy-{source.provider}", traffic_path, unix_socket=unix_socket, host=host,
                         port=port, memory_marker=memory_marker)
        self.source = source
        self.route = source.route(agent_protocol)
        self._auth = source.auth_headers(self.route)       # memory only
        self._upstreams: set[http.client.HTTPConnection] = set()
        # stats beyond the scripted server's (errors_served: upstream errors and unreachable)
        self.error_classes: dict[str, int] = {}
        self.last_main_error: str | None = None   # "<class>: <message>" if the last main exchange failed

    def _before_drain(self) -> None:
        """Cut the upstream connections still open: their exchanges then end at once."""
        with self._lock:
            upstreams = list(self._upstreams)
        for upstream in upstreams:
            if upstream.sock is not None:
                try:
                    upstream.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"source": self.source.spec, "route": f"{self.route.agent_protocol}->{self.route.upstream_protocol}",
                    "requests": self.requests, "main_requests": self.main_requests,
                    "aux_requests": self.aux_requests, "tool_results_seen": self.tool_results_seen,
                    "memory_seen": self.memory_seen, "errors_served": self.errors_served,
                    "error_classes": dict(self.error_classes), "last_main_error": self.last_main_error}

    # ---- one exchange ---------------------------------------------------------------------
    def _exchange(self, handler: _Handler, method: str, raw: bytes, seq: int, ts_start: float) -> None:
        split = urlsplit(handler.path)
        protocol = _protocol_of(split.path)
        ex = _Exchange(protocol)
        request: Any = None
        if raw:
            try:
                request = json.loads(raw)
            except ValueError:
                request = raw.decode("utf-8", "replace")
        if isinstance(request, dict):
            ex.main, ex.tool_results = _conversation(protocol, request)
        response: dict[str, Any] = {}
        try:
            response = self._forward(handler, method, split, raw, request, ex)
        finally:
            self._account(ex)
            record = {"seq": seq, "ts_start": ts_start, "ts_end": time.time(), "protocol": protocol,
                      "path": redact_path(handler.path), "main": ex.main, "turn": None,
                      "tool_results": ex.tool_results, "request": request, "response": response,
                      "headers": redact_headers(handler.headers), "upstream": ex.upstream,
                      "error_class": ex.error_class}
            self._record(record)

    def _account(self, ex: _Exchange) -> None:
        with self._lock:
            if ex.main:
                self.main_requests += 1
                self.tool_results_seen = max(self.tool_results_seen, ex.tool_results)
                self.last_main_error = (f"{ex.error_class}: the model source answered HTTP {ex.status}: "
                                        f"{ex.error_message.strip()[:300]}" if ex.error_class else None)
            else:
                self.aux_requests += 1
            if ex.error_class:
                self.errors_served += 1
                self.error_classes[ex.error_class] = self.error_classes.get(ex.error_class, 0) + 1

    def _upstream_url(self, split, translated: bool) -> str:
        base = self.route.base_url
        if translated:
            return f"{base}/chat/completions"
        path = split.path
        if self.route.upstream_protocol in (CHAT, RESPONSES):
            path = path.removeprefix("/v1")      # the agent's /v1/... under the source's OpenAI base URL
        query = [(k, v) for k, v in parse_qsl(split.query, keep_blank_values=True) if k.lower() not in SECRET_QUERY]
        return f"{base}{path}" + (f"?{urlencode(query)}" if query else "")

    def _forward(self, handler: _Handler, method: str, split, raw: bytes, request: Any,
                 ex: _Exchange) -> dict[str, Any]:
        """Serve one request; returns the response as recorded (what the agent received)."""
        translated = self.route.translated
        if translated and not (method == "POST" and isinstance(request, dict) and _is_model_call(ex.protocol, split.path)
                               and ex.protocol == self.route.agent_protocol):
            return self._local(handler, ex, request, split.path)
        translation: Translation | None = None
        if translated:
            stream = bool(request.get("stream")) or ":streamGenerateContent" in split.path
            try:
                translation = for_protocol(ex.protocol, request, self.source.model, stream)
                body = json.dumps(translation.chat_request(), ensure_ascii=False).encode()
            except (TranslationError, KeyError, TypeError, AttributeError) as exc:
                return self._fail(handler, ex, 400, f"request cannot be translated to chat completions: {exc!r}",
                                  "api_error")
            ex.upstream["request"] = json.loads(body)
            headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else
                       "application/json", "User-Agent": handler.headers.get("User-Agent", "peer-harness-proxy")}
        else:
            body = raw
            headers = {k: v for k, v in handler.headers.items()
                       if k.lower() not in HOP_BY_HOP and k.lower() not in SECRET_HEADERS}
        headers.update(self._auth)
        headers["Accept-Encoding"] = "identity"        # the record needs the plain bytes
        url = self._upstream_url(split, translated)
        ex.upstream.update(url=url, protocol=self.route.upstream_protocol, translated=translated)
        target = urlsplit(url)
        conn_cls = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
        kwargs = {"context": ssl.create_default_context()} if target.scheme == "https" else {}
        conn = conn_cls(target.hostname, target.port, timeout=CONNECT_TIMEOUT_S, **kwargs)
        with self._lock:
            self._upstreams.add(conn)
        try:
            try:
                conn.request(method, target.path + (f"?{target.query}" if target.query else ""),
                             body=body if method in ("POST", "PUT") else None, headers=headers)
                conn.sock.settimeout(READ_TIMEOUT_S)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                timed_out = isinstance(exc, TimeoutError)
                ex.upstream["error"] = f"{type(exc).__name__}: {exc}"
                return self._fail(handler, ex, 504 if timed_out else 502,
                                  f"model source {url} {'timed out' if timed_out else 'unreachable'}: {exc}",
                                  "timeout" if timed_out else "api_error")
            try:
                if translation is not None:
                    return self._relay_translated(handler, resp, translation, ex)
                return self._relay(handler, resp, ex)
            except BrokenPipeError as exc:
                # Only writes to the agent can break a pipe here: the agent closed its connection
                # while the answer was still being written (codex stops reading once it has
                # `response.completed`). That is the agent's doing, not the source's: no error.
                ex.upstream["agent_disconnected"] = f"{type(exc).__name__}: {exc}"
                handler.close_connection = True
                return {"status": ex.status or resp.status, "note": "the agent closed the connection"}
            except (OSError, http.client.HTTPException) as exc:
                # The upstream broke off mid-answer (or the agent went away): typed, recorded.
                timed_out = isinstance(exc, TimeoutError)
                ex.upstream["error"] = f"{type(exc).__name__}: {exc}"
                ex.status = ex.status or 502
                ex.error_class = ex.error_class or ("timeout" if timed_out else "api_error")
                ex.error_message = ex.error_message or str(exc)
                handler.close_connection = True
                return {"status": ex.status, "error": ex.upstream["error"]}
        finally:
            conn.close()
            with self._lock:
                self._upstreams.discard(conn)

    def _local(self, handler: _Handler, ex: _Exchange, request: Any, path: str) -> dict[str, Any]:
        """Requests a translated route answers itself: token counts (estimated; no chat
        equivalent), anything else is an error naming the route."""
        ex.upstream = {"local": True}
        if isinstance(request, dict) and (path.endswith(":countTokens") or path.endswith("/count_tokens")):
            tokens = _estimate_tokens(json.dumps(request))
            body = {"totalTokens": tokens} if ex.protocol == GEMINI else {"input_tokens": tokens}
            self._send_json(handler, 200, body)
            return {"status": 200, "body": body}
        return self._fail(handler, ex, 404, f"the proxy translates {self.route.agent_protocol} to "
                          f"{self.route.upstream_protocol}; {path} is not served on this route", None)

    def _fail(self, handler: _Handler, ex: _Exchange, status: int, message: str,
              kind: str | None) -> dict[str, Any]:
        """An error the proxy itself answers, in the agent's protocol."""
        ex.status, ex.error_class, ex.error_message = status, kind, message
        reply = ScriptedModelServer._error_reply(ex.protocol, status, message)
        self._send_json(handler, status, reply.body)
        return {"status": status, "body": reply.body}

    @staticmethod
    def _send_json(handler: _Handler, status: int, body: Any) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json; charset=utf-8")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True

    def _note_error(self, ex: _Exchange, status: int, text: str) -> None:
        ex.status = status
        if status >= 400:
            ex.error_class = error_class(status, text)
            ex.error_message = text

    def _relay(self, handler: _Handler, resp: http.client.HTTPResponse, ex: _Exchange) -> dict[str, Any]:
        """Passthrough: the source's answer byte for byte (streams as they arrive)."""
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
        content_type = resp.getheader("Content-Type") or ""
        streaming = "text/event-stream" in content_type or resp.getheader("Content-Length") is None
        if streaming:
            handler.start_chunked(resp.status, headers)
            received = bytearray()
            while chunk := resp.read1(65536):
                received += chunk
                handler.write_chunk(chunk)
            handler.wfile.write(LAST_CHUNK)
            handler.wfile.flush()
            data = bytes(received)
        else:
            data = resp.read()
            handler.send_response(resp.status)
            for k, v in headers:
                handler.send_header(k, v)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            handler.wfile.flush()
        text = data.decode("utf-8", "replace")
        self._note_error(ex, resp.status, text)
        if "text/event-stream" in content_type:
            events = parse_sse(text)
            errors = [e for e in events if isinstance(e, dict) and ("error" in e or e.get("type") in (
                "error", "response.failed"))]
            if errors and ex.error_class is None:    # a stream that failed after HTTP 200
                message = json.dumps(errors[0], ensure_ascii=False)
                ex.status, ex.error_class, ex.error_message = resp.status, class_for_message(message) or "api_error", message
            return {"status": resp.status, "events": events}
        try:
            return {"status": resp.status, "body": json.loads(text)}
        except ValueError:
            return {"status": resp.status, "body": text}

    def _relay_translated(self, handler: _Handler, resp: http.client.HTTPResponse, translation: Translation,
                          ex: _Exchange) -> dict[str, Any]:
        content_type = resp.getheader("Content-Type") or ""
        if resp.status >= 400:
            text = resp.read().decode("utf-8", "replace")
            try:
                upstream_body: Any = json.loads(text)
                message = (upstream_body.get("error") or {}).get("message") if isinstance(
                    upstream_body.get("error"), dict) else None
            except (ValueError, AttributeError):
                upstream_body, message = text, None
            ex.upstream["response"] = {"status": resp.status, "body": upstream_body}
            self._note_error(ex, resp.status, text)
            reply = ScriptedModelServer._error_reply(ex.protocol, resp.status, message or text[:500])
            self._send_json(handler, resp.status, reply.body)
            return {"status": resp.status, "body": reply.body}
        ex.status = resp.status
        if not translation.stream or "text/event-stream" not in content_type:
            text = resp.read().decode("utf-8", "replace")
            try:
                upstream_body = json.loads(text)
            except ValueError:
                upstream_body = text
            ex.upstream["response"] = {"status": resp.status, "body": upstream_body}
            if not isinstance(upstream_body, dict) or not upstream_body.get("choices"):
                return self._fail(handler, ex, 502, f"model source answered no chat completion: {text[:300]}",
                                  "api_error")
            body = translation.from_body(upstream_body)
            if translation.stream:     # the agent asked for a stream, the source answered JSON: replay it
                return self._send_events(handler, translation, translation.finish(), ex)
            self._send_json(handler, 200, body)
            return {"status": 200, "body": body}
        # Stream in, stream out: each chat chunk becomes the agent protocol's events at once.
        sse = "alt=sse" in (urlsplit(handler.path).query or "") or ex.protocol != GEMINI
        upstream_events: list[Any] = []
        agent_events: list[Any] = []
        if sse:
            handler.start_chunked(200, EVENT_STREAM_HEADERS)
        for payload in _sse_payloads(resp):
            upstream_events.append(payload)
            if payload == "[DONE]":
                break
            if isinstance(payload, dict) and "error" in payload:
                message = json.dumps(payload["error"], ensure_ascii=False)
                ex.status, ex.error_class, ex.error_message = 200, class_for_message(message) or "api_error", message
                events = translation.stream_error(message)
                agent_events += events
                self._write_events(handler, translation, events, sse)
                break
            if isinstance(payload, dict):
                events = translation.feed(payload)
                agent_events += events
                self._write_events(handler, translation, events, sse)
        if upstream_events and upstream_events[-1] == "[DONE]":
            resp.read()    # the stream's end: closing on unread bytes would reset the connection
        elif ex.error_class is None and translation.answer.finish_reason is None:
            # Cut off mid-answer: the agent must not take a partial answer for a whole one.
            ex.status, ex.error_class = 502, "api_error"
            ex.error_message = "the model source's stream ended before the answer was finished"
            events = translation.stream_error(ex.error_message)
            agent_events += events
            self._write_events(handler, translation, events, sse)
        ex.upstream["response"] = {"status": resp.status, "events": upstream_events}
        if ex.error_class is None:
            events = translation.finish()
            agent_events += events
            self._write_events(handler, translation, events, sse)
        if sse:
            handler.wfile.write(LAST_CHUNK)
            handler.wfile.flush()
            return {"status": 200, "events": agent_events}
        # Gemini without alt=sse streams one JSON array.
        self._send_json(handler, 200, agent_events)
        return {"status": 200, "body": agent_events}

    def _send_events(self, handler: _Handler, translation: Translation, events: list[dict],
                     ex: _Exchange) -> dict[str, Any]:
        sse = ex.protocol != GEMINI or "alt=sse" in (urlsplit(handler.path).query or "")
        if not sse:
            self._send_json(handler, 200, events)
            return {"status": 200, "body": events}
        handler.start_chunked(200, EVENT_STREAM_HEADERS)
        self._write_events(handler, translation, events, True)
        handler.wfile.write(LAST_CHUNK)
        handler.wfile.flush()
        return {"status": 200, "events": events}

    def _write_events(self, handler: _Handler, translation: Translation, events: list[dict], sse: bool) -> None:
        if not sse:
            return
        for event in events:
            handler.write_chunk(sse_event(event, translation.named_events))
