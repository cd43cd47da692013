"""Qwen Code (@qwen-code/qwen-code 0.15.10), headless (`qwen PROMPT --yolo -o stream-json`)
against a local OpenAI Chat Completions endpoint. Qwen is a gemini-cli fork: one esbuild bundle
(cli.js) run by the pinned Node; its stream-json output is shaped like Claude Code's."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import ClassVar

from harnesses.base import AgentAdapter, AgentPaths, plain_env
from harnesses.native_output import (
    add_call, add_message_blocks, class_for_message, class_for_status, new_turn, note_session_log, owner_of,
    pick_session_log, read_jsonl, read_stream_json, read_text, session_logs, stream_json_trajectory)

# Settings pinned for every trial (keys checked against the 0.15.10 bundle's settings schema).
# Qwen rewrites settings.json in place (migration to "$version"), so each trial gets a fresh copy.
SETTINGS: dict = {
    "security": {
        "auth": {"selectedType": "openai"},      # OPENAI_* env: the OpenAI-compatible provider
        "folderTrust": {"enabled": False},
    },
    "privacy": {"usageStatisticsEnabled": False},   # RUM telemetry -> *.rum.aliyuncs.com
    "telemetry": {"enabled": False},
    "general": {
        "enableAutoUpdate": False,
        "checkpointing": {"enabled": False},
    },
    "ide": {"enabled": False, "hasSeenNudge": True},
    # Shell commands through child_process, not node-pty: no pseudo-terminal (/dev/pts/ptmx) per
    # command, as gemini-cli runs them here (its optional node-pty is not built).
    "tools": {"shell": {"enableInteractiveShell": False}},
    "model": {
        # 0 retries: no SDK retry and no rate-limit loop (default 10 retries, first after 60 s).
        "generationConfig": {"maxRetries": 0},
        "skipNextSpeakerCheck": True,      # default in 0.15; pinned: it is an extra model call
        "skipLoopDetection": True,         # loop detection can end a turn on its own
    },
    # Background memory extraction / "dream" would send extra model requests after a session.
    "memory": {"enableManagedAutoMemory": False, "enableManagedAutoDream": False, "enableAutoSkill": False},
}


class QwenCode(AgentAdapter):
    name: ClassVar[str] = "qwen-code"
    npm_package: ClassVar[str] = "@qwen-code/qwen-code"
    version: ClassVar[str] = "0.15.10"
    memory_file: ClassVar[str] = "QWEN.md"
    family: ClassVar[str] = "Qwen"
    wire_protocol: ClassVar[str] = "openai-chat"
    entrypoint: ClassVar[str] = "node_modules/@qwen-code/qwen-code/cli.js"
    node_script: ClassVar[bool] = True

    # --- per trial ----------------------------------------------------------------------
    def prepare_home(self, home: Path) -> None:
        qdir = Path(home) / ".qwen"
        qdir.mkdir(parents=True, exist_ok=True)
        (qdir / "settings.json").write_text(json.dumps(SETTINGS, indent=2) + "\n")

    def env(self, paths: AgentPaths, endpoint: str) -> dict[str, str]:
        base = plain_env(paths)
        home = base["HOME"]
        return {
            **base,
            "SHELL": "/bin/bash",
            "NO_BROWSER": "1",
            "OPENAI_API_KEY": "dummy",
            "OPENAI_BASE_URL": endpoint.rstrip("/") + "/v1",
            "QWEN_CODE_NO_RELAUNCH": "true",   # no self-respawn with a bigger heap
            # System settings/defaults default to /etc/qwen-code/*.json (the host's /etc is visible
            # read-only in the sandbox): point them at files that do not exist.
            "QWEN_CODE_SYSTEM_SETTINGS_PATH": f"{home}/.qwen/system-settings.json",
            "QWEN_CODE_SYSTEM_DEFAULTS_PATH": f"{home}/.qwen/system-defaults.json",
        }

    def _argv(self, launcher: list[str], prompt: str, model: str) -> list[str]:
        return [*launcher, "--yolo", "--output-format", "stream-json", "--auth-type", "openai", "-m", model,
                "-p", prompt]

    # --- after the run --------------------------------------------------------------------
    def native_logs(self, home: Path, tmp: Path) -> list[Path]:
        """Chat transcripts (~/.qwen/projects/<cwd slug>/chats/<session>.jsonl) and the
        per-session debug logs (~/.qwen/debug/<session>.txt; `latest` is a link to one)."""
        qdir = Path(home) / ".qwen"
        found: list[Path] = []
        if (qdir / "projects").is_dir():
            found += sorted(p for p in (qdir / "projects").glob("*/chats/*.jsonl") if p.is_file())
        if (qdir / "debug").is_dir():
            found += sorted(p for p in (qdir / "debug").glob("*.txt") if p.is_file() and not p.is_symlink())
        return found

    def error_class(self, stdout: str, stderr: str, exit_code: int | None) -> str | None:
        return classify_error(stdout, stderr, exit_code)

    def trajectory(self, native_dir: Path, model: str) -> dict:
        return build_trajectory(Path(native_dir), model=model, version=self.version, agent_name=self.name)


# ------------------------------------------------------------------------------------------
# Error classes
# ------------------------------------------------------------------------------------------
# Qwen turns a failed request into a normal-looking end of the run: exit 0, `result` with
# subtype "success", is_error false and result text "[API Error: <status> <message>]". Only
# that prefix (or stats.models.*.api.totalErrors) tells it from a model that just stopped.
_API_ERROR_RE = re.compile(r"\[API Error: (?:(\d{3})\b)?")
_STATUS_RE = re.compile(r"(?:status(?: code)?:?|\bcode\b\W{0,3})\s*([45]\d\d)\b|^([45]\d\d)\s", re.I | re.M)


def _api_errors(stats) -> int:
    models = stats.get("models") if isinstance(stats, dict) else None
    if not isinstance(models, dict):
        return 0
    return sum(int(((m or {}).get("api") or {}).get("totalErrors") or 0) for m in models.values()
               if isinstance(m, dict))


def classify_error(stdout: str, stderr: str, exit_code: int | None) -> str | None:
    """Typed failure of a `qwen -o stream-json` run, or None when it succeeded."""
    events, _ = read_jsonl(stdout or "")
    result = next((e for e in reversed(events) if e.get("type") == "result"), None)
    text = str((result or {}).get("result") or "") if result is not None else ""
    api = _API_ERROR_RE.search(text)
    if result is not None and exit_code == 0 and not result.get("is_error") and not api \
            and not _api_errors(result.get("stats")):
        return None
    if result is None and exit_code is not None and exit_code < 0:
        return "killed"
    detail = "\n".join(x for x in (text, str((result or {}).get("error") or ""), stderr or "") if x)
    named = class_for_message(detail)
    if named == "context_overflow":
        return named
    status = None
    if api and api.group(1):
        status = int(api.group(1))
    else:
        m = _STATUS_RE.search(detail)
        if m:
            status = int(m.group(1) or m.group(2))
    if status is not None:
        return class_for_status(status)
    if named:
        return named
    if api or _api_errors((result or {}).get("stats")) or "fetch failed" in detail or "ECONNREFUSED" in detail:
        return "api_error"
    return "unknown"


# ------------------------------------------------------------------------------------------
# Trajectory
# ------------------------------------------------------------------------------------------
def _parts_text(parts) -> str:
    if isinstance(parts, str):
        return parts
    return "".join(str(p.get("text", "")) for p in parts or ()
                   if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought"))


def _thoughts(parts) -> str:
    return "\n".join(str(p.get("text", "")) for p in parts or ()
                     if isinstance(p, dict) and p.get("thought") and p.get("text"))


def _response_text(response) -> str:
    """What the model was sent for one tool call ({"output": ...} or {"error": ...})."""
    if isinstance(response, dict):
        if isinstance(response.get("output"), str):
            return response["output"]
        if isinstance(response.get("error"), str):
            return f"Error: {response['error']}"
    return json.dumps(response, ensure_ascii=False)


def _transcript_items(records: list[dict], notes: dict) -> list[dict]:
    """User prompts, one agent turn per model response (its text, thoughts and functionCalls)
    and the functionResponses exactly as they were sent back to the model."""
    items: list[dict] = []
    for rec in records:
        kind, ts, msg = rec.get("type"), rec.get("timestamp"), rec.get("message")
        if not isinstance(msg, dict):
            continue
        parts = msg.get("parts")
        if kind == "user":
            items.append({"kind": "user", "timestamp": ts, "text": _parts_text(parts)})
        elif kind == "assistant":
            turn = new_turn(ts)
            turn["text"] = _parts_text(parts)
            turn["reasoning"] = _thoughts(parts)
            turn["model_name"] = rec.get("model")
            for part in parts or ():
                call = part.get("functionCall") if isinstance(part, dict) else None
                if isinstance(call, dict):
                    add_call(turn, str(call.get("id")), str(call.get("name")), call.get("args"), ts)
            usage = rec.get("usageMetadata")
            if isinstance(usage, dict) and isinstance(usage.get("promptTokenCount"), int):
                turn["metrics"] = {"prompt_tokens": usage["promptTokenCount"],
                                   "completion_tokens": int(usage.get("candidatesTokenCount") or 0),
                                   "cached_tokens": int(usage.get("cachedContentTokenCount") or 0)}
            items.append(turn)
        elif kind == "tool_result":
            for part in parts or ():
                fr = part.get("functionResponse") if isinstance(part, dict) else None
                if not isinstance(fr, dict):
                    continue
                call_id = str(fr.get("id"))
                owner = owner_of(items, call_id, notes)
                if owner is None:
                    continue
                status = (rec.get("toolCallResult") or {}).get("status") if isinstance(rec.get("toolCallResult"),
                                                                                       dict) else None
                owner["results"][call_id] = {"content": _response_text(fr.get("response")),
                                             "extra": {"timestamp": ts, "status": status}}
    return items


def _stream_items(events: list[dict], notes: dict) -> list[dict]:
    """Fallback from stdout: consecutive assistant events (text, then tool_use blocks, each in
    its own event) are one model response; user events carry the tool results."""
    items: list[dict] = []
    turn: dict | None = None
    for ev in events:
        kind, msg = ev.get("type"), ev.get("message")
        if kind not in ("user", "assistant") or not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if kind == "assistant":
            text = "".join(str(b.get("text", "")) for b in content or () if isinstance(b, dict))
            if _API_ERROR_RE.match(text):
                # The CLI's own notice of a failed request, printed as if the model said it.
                notes.setdefault("cli_error_messages", []).append(text)
                turn = None
                continue
            if turn is None:
                turn = new_turn(None)
                turn["model_name"] = msg.get("model")
                items.append(turn)
            add_message_blocks(turn, content)
            usage = msg.get("usage")
            if isinstance(usage, dict) and usage.get("input_tokens"):
                turn["metrics"] = {"prompt_tokens": int(usage["input_tokens"]),
                                   "completion_tokens": int(usage.get("output_tokens") or 0),
                                   "cached_tokens": int(usage.get("cache_read_input_tokens") or 0)}
            continue
        turn = None
        for block in content if isinstance(content, list) else ():
            if not isinstance(block, dict) or block.get("type") != "tool_result":
                continue
            call_id = str(block.get("tool_use_id"))
            owner = owner_of(items, call_id, notes)
            if owner is None:
                continue
            body = block.get("content")
            text = body if isinstance(body, str) else _parts_text(
                [{"text": b.get("text")} for b in body or () if isinstance(b, dict)])
            owner["results"][call_id] = {"content": text, "extra": {"is_error": block.get("is_error")}}
    return items


def build_trajectory(native_dir: Path, model: str, version: str = QwenCode.version,
                     agent_name: str = QwenCode.name) -> dict:
    """ATIF v1.7 from native_dir/logs/<session>.jsonl (the chat transcript: prompt, turns, what
    each tool call sent back) and native_dir/stdout.txt (stream-json: init, result, stats;
    fallback for the turns when the transcript is missing or behind)."""
    notes: dict = {}
    events, init, result, session_id = read_stream_json(native_dir, notes)
    transcripts = session_logs(native_dir)
    chosen = pick_session_log(transcripts, session_id)
    stream_notes: dict = {}
    items = _stream_items(events, stream_notes)
    sources = ["stream-json"] if events else []
    if chosen is not None:
        records, bad = read_jsonl(read_text(chosen))
        log_notes: dict = {}
        log_items = _transcript_items(records, log_notes)
        if sum(i["kind"] == "agent" for i in log_items) >= sum(i["kind"] == "agent" for i in items):
            items, sources = log_items, ["transcript"] + sources
            notes.update(log_notes)
            session_id = session_id or next((r.get("sessionId") for r in records if r.get("sessionId")), None)
        else:
            notes["transcript_behind_stdout"] = True
            notes.update(stream_notes)
        note_session_log(notes, native_dir, chosen, transcripts, bad)
    else:
        notes.update(stream_notes)
    if "cli_error_messages" in stream_notes:
        notes["cli_error_messages"] = stream_notes["cli_error_messages"]
    if result is not None:
        text = str(result.get("result") or "")
        if _API_ERROR_RE.match(text) or _api_errors(result.get("stats")):
            # Exit 0 and "success", yet the run ended on a failed request (see classify_error).
            notes["api_error"] = text
    return stream_json_trajectory(items=items, sources=sources, notes=notes, init=init, result=result,
                                  session_id=session_id, agent_name=agent_name, version=version, model=model,
                                  init_keys=("model", "qwen_code_version", "permission_mode"),
                                  result_keys=("num_turns", "duration_ms", "duration_api_ms", "usage", "stats"))
