"""Protocol translation for the recording proxy: an agent's request in its own wire protocol
(Gemini API, OpenAI Responses, Anthropic Messages) becomes an OpenAI Chat Completions request,
and the chat answer (JSON or SSE stream) becomes the answer the agent's protocol expects,
streamed as it arrives. Tool declarations, tool calls and tool results are carried across;
what chat completions cannot carry (server-side tools such as web search, encrypted reasoning,
thinking budgets) is left out of the upstream request, and the proxy records both sides.

One ``Translation`` object serves one request: ``chat_request()`` once, then either
``from_body(chat_json)`` or ``feed(chunk)`` per upstream SSE payload and ``finish()``.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

# The scripted server's readers of what a request declares (one definition per protocol).
from runner.model_server import (
    _anthropic_wants_json, _gemini_wants_json, _responses_wants_json, anthropic_message_end, anthropic_tool_use_events)
from runner.model_source import ANTHROPIC, GEMINI, RESPONSES

__all__ = ["Translation", "TranslationError", "for_protocol"]


class TranslationError(ValueError):
    """The agent's request cannot be expressed as a chat completions request."""


# ---------------------------------------------------------------------------------------------
# The chat answer, accumulated (from one JSON body or from stream chunks)
# ---------------------------------------------------------------------------------------------

@dataclass
class _Call:
    id: str
    name: str = ""
    arguments: str = ""

    def args(self) -> dict:
        try:
            value = json.loads(self.arguments) if self.arguments.strip() else {}
        except ValueError:
            return {"_unparsed_arguments": self.arguments}   # the model's malformed JSON, kept visible
        return value if isinstance(value, dict) else {"value": value}


@dataclass
class _ChatAnswer:
    text: str = ""
    reasoning: str = ""
    calls: dict[int, _Call] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict = field(default_factory=dict)
    model: str | None = None

    def add_delta(self, delta: dict) -> list[tuple[str, str]]:
        """Merge one stream delta; returns the pieces to forward live: ("text"|"reasoning", piece)."""
        live = []
        for key in ("reasoning_content", "reasoning"):
            if isinstance(delta.get(key), str) and delta[key]:
                self.reasoning += delta[key]
                live.append(("reasoning", delta[key]))
        if isinstance(delta.get("content"), str) and delta["content"]:
            self.text += delta["content"]
            live.append(("text", delta["content"]))
        for i, tc in enumerate(delta.get("tool_calls") or []):
            if not isinstance(tc, dict):
                continue
            index = tc.get("index", i)
            call = self.calls.setdefault(index, _Call(id=tc.get("id") or f"call_{uuid.uuid4().hex[:24]}"))
            fn = tc.get("function") or {}
            if tc.get("id"):
                call.id = tc["id"]
            if fn.get("name") and not call.name:    # some servers repeat the name in every delta
                call.name = fn["name"]
            if isinstance(fn.get("arguments"), str):
                call.arguments += fn["arguments"]
        return live

    def add_chunk(self, chunk: dict) -> list[tuple[str, str]]:
        if chunk.get("model"):
            self.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        live = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            live += self.add_delta(choice.get("delta") or {})
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return live

    def add_body(self, body: dict) -> None:
        self.model = body.get("model")
        self.usage = body.get("usage") or {}
        choice = next((c for c in body.get("choices") or [] if isinstance(c, dict)), {})
        message = choice.get("message") or {}
        self.add_delta({**message, "tool_calls": [{**tc, "index": i} for i, tc in
                                                  enumerate(message.get("tool_calls") or [])]})
        self.finish_reason = choice.get("finish_reason")

    @property
    def tool_calls(self) -> list[_Call]:
        return [self.calls[i] for i in sorted(self.calls) if self.calls[i].name]

    def tokens(self) -> tuple[int, int]:
        prompt = int(self.usage.get("prompt_tokens") or 0)
        completion = int(self.usage.get("completion_tokens") or 0)
        return prompt, completion


def _text_of(content: Any) -> str:
    """Plain text of a content value (string, or a list of text-bearing parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text_of(p.get("text", p.get("content", ""))) if isinstance(p, dict) else str(p)
                       for p in content)
    if content is None:
        return ""
    return json.dumps(content, ensure_ascii=False)


def _assistant(text: str, calls: list[dict]) -> dict:
    # "" rather than null: some local servers (llama-cpp-python) fail on a null content.
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_call(call_id: str, name: str, args: Any) -> dict:
    arguments = args if isinstance(args, str) else json.dumps(args if args is not None else {}, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _function_tool(name: str, description: str | None, schema: Any) -> dict:
    fn: dict[str, Any] = {"name": name, "parameters": schema if isinstance(schema, dict) else
                          {"type": "object", "properties": {}}}
    if description:
        fn["description"] = description
    return {"type": "function", "function": fn}


def _json_format(schema: dict | None) -> dict | None:
    if schema is None:
        return None
    if not schema:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def _lower_types(schema: Any) -> Any:
    """Gemini's OpenAPI-style `parameters` spell types in capitals (OBJECT, STRING)."""
    if isinstance(schema, dict):
        return {k: (v.lower() if k == "type" and isinstance(v, str) else _lower_types(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_lower_types(v) for v in schema]
    return schema


class Translation:
    """Base: the chat side shared by every agent protocol."""

    named_events = False            # SSE events carry an `event:` line (Responses, Anthropic)

    def __init__(self, request: dict, model: str, stream: bool):
        self.request = request
        self.model = model
        self.stream = stream
        self.answer = _ChatAnswer()
        self.started = False

    def chat_request(self) -> dict:
        body = {"model": self.model, **self._chat_fields()}
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return {k: v for k, v in body.items() if v is not None}

    def _chat_fields(self) -> dict:
        raise NotImplementedError

    # stream: per upstream chunk -> agent events; body: one agent JSON body
    def feed(self, chunk: dict) -> list[dict]:
        events = [] if self.started else self._start()
        self.started = True
        for kind, piece in self.answer.add_chunk(chunk):
            events += self._live(kind, piece)
        return events

    def finish(self) -> list[dict]:
        events = [] if self.started else self._start()
        self.started = True
        return events + self._end()

    def from_body(self, body: dict) -> dict:
        self.answer.add_body(body)
        return self._body()

    def stream_error(self, message: str) -> list[dict]:
        """Events telling the agent the upstream stream failed mid-way."""
        raise NotImplementedError

    def _start(self) -> list[dict]:
        return []

    def _live(self, kind: str, piece: str) -> list[dict]:
        raise NotImplementedError

    def _end(self) -> list[dict]:
        raise NotImplementedError

    def _body(self) -> dict:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Gemini API (gemini-cli) <-> chat
# ---------------------------------------------------------------------------------------------

class GeminiTranslation(Translation):
    _FINISH = {"stop": "STOP", "tool_calls": "STOP", "function_call": "STOP", "length": "MAX_TOKENS",
               "content_filter": "SAFETY"}

    def _chat_fields(self) -> dict:
        req = self.request
        messages: list[dict] = []
        system = req.get("systemInstruction") or req.get("system_instruction")
        if system:
            text = _text_of(system.get("parts") if isinstance(system, dict) else system)
            if text:
                messages.append({"role": "system", "content": text})
        pending: list[tuple[str, str]] = []      # (name, id) of calls awaiting a response, in order
        for n, content in enumerate(req.get("contents") or []):
            if not isinstance(content, dict):
                continue
            parts = [p for p in content.get("parts") or [] if isinstance(p, dict)]
            if content.get("role") == "model":
                text = "".join(p.get("text", "") for p in parts if "text" in p and not p.get("thought"))
                calls = []
                for i, p in enumerate(parts):
                    fc = p.get("functionCall") or p.get("function_call")
                    if isinstance(fc, dict):
                        call_id = fc.get("id") or f"call_{n}_{i}"
                        pending.append((fc.get("name", ""), call_id))
                        calls.append(_tool_call(call_id, fc.get("name", ""), fc.get("args") or {}))
                messages.append(_assistant(text, calls))
                continue
            texts = []
            for p in parts:
                fr = p.get("functionResponse") or p.get("function_response")
                if isinstance(fr, dict):
                    call_id = fr.get("id")
                    if not call_id:      # no id: the oldest pending call of that name
                        match = next((c for c in pending if c[0] == fr.get("name")), None)
                        call_id = match[1] if match else f"call_{n}"
                    pending = [c for c in pending if c[1] != call_id]
                    response = fr.get("response")
                    output = (response["output"] if isinstance(response, dict) and set(response) == {"output"}
                              and isinstance(response["output"], str) else json.dumps(response, ensure_ascii=False))
                    messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
                elif "text" in p and not p.get("thought"):
                    texts.append(p["text"])
            if texts:
                messages.append({"role": "user", "content": "".join(texts)})
        tools = []
        for tool in req.get("tools") or []:
            for decl in (tool.get("functionDeclarations") or tool.get("function_declarations") or []
                         if isinstance(tool, dict) else []):
                schema = decl.get("parametersJsonSchema")
                if schema is None:
                    schema = _lower_types(decl.get("parameters") or {"type": "object", "properties": {}})
                tools.append(_function_tool(decl["name"], decl.get("description"), schema))
        cfg = req.get("generationConfig") or {}
        return {"messages": messages, "tools": tools or None,
                "temperature": cfg.get("temperature"), "top_p": cfg.get("topP"),
                "max_tokens": cfg.get("maxOutputTokens"), "stop": cfg.get("stopSequences"),
                "response_format": _json_format(_gemini_wants_json(req))}

    def _envelope(self, parts: list[dict], final: bool) -> dict:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        body: dict[str, Any] = {"candidates": [candidate]}
        if final:
            candidate["finishReason"] = self._FINISH.get(self.answer.finish_reason or "stop", "OTHER")
            prompt, completion = self.answer.tokens()
            body["usageMetadata"] = {"promptTokenCount": prompt, "candidatesTokenCount": completion,
                                     "totalTokenCount": prompt + completion}
        body["modelVersion"] = self.answer.model or self.model
        return body

    def _call_parts(self) -> list[dict]:
        return [{"functionCall": {"name": c.name, "args": c.args()}} for c in self.answer.tool_calls]

    def _live(self, kind: str, piece: str) -> list[dict]:
        part = {"text": piece, "thought": True} if kind == "reasoning" else {"text": piece}
        return [self._envelope([part], final=False)]

    def _end(self) -> list[dict]:
        return [self._envelope(self._call_parts() or [{"text": ""}], final=True)]

    def _body(self) -> dict:
        parts = ([{"text": self.answer.reasoning, "thought": True}] if self.answer.reasoning else [])
        parts += ([{"text": self.answer.text}] if self.answer.text else []) + self._call_parts()
        return self._envelope(parts or [{"text": ""}], final=True)

    def stream_error(self, message: str) -> list[dict]:
        return [{"error": {"code": 502, "message": message, "status": "UNAVAILABLE"}}]


# ---------------------------------------------------------------------------------------------
# OpenAI Responses (Codex) <-> chat
# ---------------------------------------------------------------------------------------------

class ResponsesTranslation(Translation):
    named_events = True

    def __init__(self, request: dict, model: str, stream: bool):
        super().__init__(request, model, stream)
        self.response_id = f"resp_{uuid.uuid4().hex[:24]}"
        self.message_id = f"msg_{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.seq = 0
        self.message_open = False
        self.custom_tools = {t["name"] for t in request.get("tools") or []
                             if isinstance(t, dict) and t.get("type") == "custom" and t.get("name")}

    def _chat_fields(self) -> dict:
        req = self.request
        messages: list[dict] = []
        if req.get("instructions"):
            messages.append({"role": "system", "content": _text_of(req["instructions"])})
        items = req.get("input")
        if isinstance(items, str):
            items = [{"type": "message", "role": "user", "content": items}]
        for item in items or []:
            if not isinstance(item, dict):
                continue
            kind = item.get("type") or ("message" if "role" in item else None)
            if kind == "message":
                role = item.get("role", "user")
                if role in ("developer", "system"):
                    # Local chat templates want one leading system message: merge the leading ones.
                    if messages and messages[-1]["role"] == "system" and len(messages) == sum(
                            m["role"] == "system" for m in messages):
                        messages[-1]["content"] += "\n\n" + _text_of(item.get("content"))
                    else:
                        messages.append({"role": "system", "content": _text_of(item.get("content"))})
                elif role == "assistant":
                    messages.append(_assistant(_text_of(item.get("content")), []))
                else:
                    messages.append({"role": "user", "content": self._user_content(item.get("content"))})
            elif kind in ("function_call", "custom_tool_call"):
                args = item.get("arguments", "{}") if kind == "function_call" else {"input": item.get("input", "")}
                call = _tool_call(item.get("call_id") or item.get("id") or "", item.get("name", ""), args)
                last = messages[-1] if messages else None
                if last and last["role"] == "assistant":
                    last.setdefault("tool_calls", []).append(call)
                else:
                    messages.append(_assistant("", [call]))
            elif kind in ("function_call_output", "custom_tool_call_output"):
                messages.append({"role": "tool", "tool_call_id": item.get("call_id", ""),
                                 "content": _text_of(item.get("output"))})
            # reasoning items (encrypted), web searches etc. have no chat form: left out.
        tools = []
        for tool in req.get("tools") or []:
            if not isinstance(tool, dict):
                continue
            if tool.get("type") == "function" and tool.get("name"):
                tools.append(_function_tool(tool["name"], tool.get("description"), tool.get("parameters")))
            elif tool.get("type") == "custom" and tool.get("name"):
                # A freeform tool (Codex apply_patch): one string argument carries its input.
                tools.append(_function_tool(tool["name"], tool.get("description"), {
                    "type": "object", "properties": {"input": {"type": "string", "description": "the raw input"}},
                    "required": ["input"]}))
        choice = req.get("tool_choice")
        if isinstance(choice, dict) and choice.get("name"):
            choice = {"type": "function", "function": {"name": choice["name"]}}
        return {"messages": messages, "tools": tools or None, "tool_choice": choice if tools else None,
                "parallel_tool_calls": req.get("parallel_tool_calls") if tools else None,
                "temperature": req.get("temperature"), "top_p": req.get("top_p"),
                "max_tokens": req.get("max_output_tokens"),
                "response_format": _json_format(_responses_wants_json(req))}

    @staticmethod
    def _user_content(content: Any) -> Any:
        if not isinstance(content, list):
            return _text_of(content)
        parts = []
        for p in content:
            if isinstance(p, dict) and p.get("type") == "input_image" and p.get("image_url"):
                parts.append({"type": "image_url", "image_url": {"url": p["image_url"]}})
            elif isinstance(p, dict):
                parts.append({"type": "text", "text": _text_of(p.get("text", ""))})
        return parts if any(p["type"] == "image_url" for p in parts) else "".join(p["text"] for p in parts)

    def _event(self, kind: str, **fields: Any) -> dict:
        event = {"type": kind, **fields, "sequence_number": self.seq}
        self.seq += 1
        return event

    def _response(self, status: str, output: list[dict]) -> dict:
        body = {"id": self.response_id, "object": "response", "created_at": self.created, "status": status,
                "model": self.answer.model or self.model, "output": output}
        if status == "completed":
            prompt, completion = self.answer.tokens()
            details = self.answer.usage.get("completion_tokens_details") or {}
            cached = (self.answer.usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            body["usage"] = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
                             "output_tokens": completion,
                             "output_tokens_details": {"reasoning_tokens": details.get("reasoning_tokens") or 0},
                             "total_tokens": prompt + completion}
        return body

    def _items(self) -> list[dict]:
        items: list[dict] = []
        if self.answer.text or not self.answer.tool_calls:
            items.append({"type": "message", "id": self.message_id, "status": "completed", "role": "assistant",
                          "content": [{"type": "output_text", "text": self.answer.text, "annotations": []}]})
        for n, call in enumerate(self.answer.tool_calls):
            if call.name in self.custom_tools:
                items.append({"type": "custom_tool_call", "id": f"ctc_{n}_{self.response_id[5:]}",
                              "call_id": call.id, "name": call.name,
                              "input": str(call.args().get("input", call.arguments)), "status": "completed"})
            else:
                items.append({"type": "function_call", "id": f"fc_{n}_{self.response_id[5:]}", "call_id": call.id,
                              "name": call.name, "arguments": call.arguments or "{}", "status": "completed"})
        return items

    def _start(self) -> list[dict]:
        return [self._event("response.created", response=self._response("in_progress", []))]

    def _live(self, kind: str, piece: str) -> list[dict]:
        if kind != "text":
            return []          # chat reasoning text has no Responses form Codex accepts without encryption
        events = []
        if not self.message_open:
            self.message_open = True
            events.append(self._event("response.output_item.added", output_index=0, item={
                "type": "message", "id": self.message_id, "status": "in_progress", "role": "assistant",
                "content": []}))
            events.append(self._event("response.content_part.added", item_id=self.message_id, output_index=0,
                                      content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
        events.append(self._event("response.output_text.delta", item_id=self.message_id, output_index=0,
                                  content_index=0, delta=piece))
        return events

    def _end(self) -> list[dict]:
        items = self._items()
        events = []
        for index, item in enumerate(items):
            if item["type"] == "message":
                if not self.message_open:
                    events.append(self._event("response.output_item.added", output_index=index,
                                              item={**item, "status": "in_progress", "content": []}))
                text = item["content"][0]["text"]
                events.append(self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                          content_index=0, text=text))
                events.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                          content_index=0, part=item["content"][0]))
            else:
                started = {**item, "status": "in_progress"}
                started.update({"arguments": ""} if item["type"] == "function_call" else {"input": ""})
                events.append(self._event("response.output_item.added", output_index=index, item=started))
                if item["type"] == "function_call":
                    events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                              output_index=index, arguments=item["arguments"]))
            events.append(self._event("response.output_item.done", output_index=index, item=item))
        events.append(self._event("response.completed", response=self._response("completed", items)))
        return events

    def _body(self) -> dict:
        return self._response("completed", self._items())

    def stream_error(self, message: str) -> list[dict]:
        failed = {**self._response("failed", []), "error": {"code": "server_error", "message": message}}
        return [self._event("response.failed", response=failed)]


# ---------------------------------------------------------------------------------------------
# Anthropic Messages (Claude Code) <-> chat
# ---------------------------------------------------------------------------------------------

class AnthropicTranslation(Translation):
    named_events = True
    _STOP = {"stop": "end_turn", "tool_calls": "tool_use", "function_call": "tool_use", "length": "max_tokens",
             "content_filter": "refusal"}

    def __init__(self, request: dict, model: str, stream: bool):
        super().__init__(request, model, stream)
        self.message_id = f"msg_{uuid.uuid4().hex[:24]}"
        self.text_open = False

    def _chat_fields(self) -> dict:
        req = self.request
        messages: list[dict] = []
        if req.get("system"):
            messages.append({"role": "system", "content": _text_of(req["system"])})
        for message in req.get("messages") or []:
            if not isinstance(message, dict):
                continue
            role, content = message.get("role"), message.get("content")
            blocks = content if isinstance(content, list) else [{"type": "text", "text": _text_of(content)}]
            blocks = [b for b in blocks if isinstance(b, dict)]
            if role == "system":        # Claude Code's mid-conversation system entries
                messages.append({"role": "system", "content": _text_of(blocks)})
            elif role == "assistant":
                text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
                calls = [_tool_call(b.get("id", ""), b.get("name", ""), b.get("input") or {})
                         for b in blocks if b.get("type") == "tool_use"]
                messages.append(_assistant(text, calls))
            else:
                for b in blocks:        # tool results answer the assistant's calls: they come first
                    if b.get("type") == "tool_result":
                        output = _text_of(b.get("content"))
                        messages.append({"role": "tool", "tool_call_id": b.get("tool_use_id", ""),
                                         "content": ("[error] " + output) if b.get("is_error") else output})
                parts = []
                for b in blocks:
                    if b.get("type") == "text":
                        parts.append({"type": "text", "text": b.get("text", "")})
                    elif b.get("type") == "image" and isinstance(b.get("source"), dict):
                        src = b["source"]
                        url = (f"data:{src.get('media_type')};base64,{src.get('data')}"
                               if src.get("type") == "base64" else src.get("url"))
                        parts.append({"type": "image_url", "image_url": {"url": url}})
                if parts:
                    images = any(p["type"] == "image_url" for p in parts)
                    messages.append({"role": "user", "content": parts if images else
                                     "".join(p["text"] for p in parts)})
        tools = [_function_tool(t["name"], t.get("description"), t.get("input_schema"))
                 for t in req.get("tools") or []
                 if isinstance(t, dict) and t.get("name") and t.get("type") in (None, "custom")]
        choice = req.get("tool_choice") if isinstance(req.get("tool_choice"), dict) else {}
        chat_choice = {"auto": "auto", "any": "required", "none": "none"}.get(choice.get("type"))
        if choice.get("type") == "tool":
            chat_choice = {"type": "function", "function": {"name": choice.get("name")}}
        return {"messages": messages, "tools": tools or None, "tool_choice": chat_choice if tools else None,
                "temperature": req.get("temperature"), "top_p": req.get("top_p"),
                "max_tokens": req.get("max_tokens"), "stop": req.get("stop_sequences"),
                "response_format": _json_format(_anthropic_wants_json(req))}

    def _blocks(self) -> list[dict]:
        blocks = [{"type": "text", "text": self.answer.text}] if self.answer.text or not self.answer.tool_calls else []
        blocks += [{"type": "tool_use", "id": c.id if c.id.startswith("toolu_") else f"toolu_{c.id}",
                    "name": c.name, "input": c.args()} for c in self.answer.tool_calls]
        return blocks

    def _stop(self) -> str:
        return "tool_use" if self.answer.tool_calls else self._STOP.get(self.answer.finish_reason or "stop", "end_turn")

    def _usage(self) -> dict:
        prompt, completion = self.answer.tokens()
        return {"input_tokens": prompt, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                "output_tokens": completion}

    def _message(self, content: list[dict], stop: str | None) -> dict:
        return {"id": self.message_id, "type": "message", "role": "assistant", "model": self.answer.model or self.model,
                "content": content, "stop_reason": stop, "stop_sequence": None, "usage": self._usage()}

    def _start(self) -> list[dict]:
        return [{"type": "message_start", "message": self._message([], None)}]

    def _live(self, kind: str, piece: str) -> list[dict]:
        if kind != "text":
            return []          # thinking blocks need a signature the chat side cannot give
        events = []
        if not self.text_open:
            self.text_open = True
            events.append({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        events.append({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
        return events

    def _end(self) -> list[dict]:
        events = []
        index = 0
        for block in self._blocks():
            if block["type"] == "text":
                if not self.text_open:
                    events.append({"type": "content_block_start", "index": index,
                                   "content_block": {"type": "text", "text": ""}})
            else:
                events += anthropic_tool_use_events(index, block)
            events.append({"type": "content_block_stop", "index": index})
            index += 1
        return events + anthropic_message_end(self._stop(), self.answer.tokens()[1])

    def _body(self) -> dict:
        return self._message(self._blocks(), self._stop())

    def stream_error(self, message: str) -> list[dict]:
        return [{"type": "error", "error": {"type": "api_error", "message": message}}]


_TRANSLATIONS: dict[str, type[Translation]] = {
    GEMINI: GeminiTranslation, RESPONSES: ResponsesTranslation, ANTHROPIC: AnthropicTranslation}


def for_protocol(protocol: str, request: dict, model: str, stream: bool) -> Translation:
    """The translation of one request of an agent speaking `protocol` to chat completions."""
    try:
        cls = _TRANSLATIONS[protocol]
    except KeyError:
        raise TranslationError(f"no translation from {protocol} to chat completions") from None
    return cls(request, model, stream)
