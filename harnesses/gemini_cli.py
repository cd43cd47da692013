"""Gemini CLI (@google/gemini-cli 0.61.0), headless against a local Gemini-API endpoint."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import ClassVar

from harnesses.base import AgentAdapter, AgentPaths, plain_env
from harnesses.native_output import (
    add_call, class_for_status, files_below, new_turn, read_jsonl, read_stdout_events, read_text, steps_from_items,
    sum_metrics, trajectory_doc)

# Settings pinned for every trial (verified against the 0.61.0 bundle's SETTINGS_SCHEMA).
SETTINGS: dict = {
    "security": {
        # GOOGLE_GEMINI_BASE_URL alone flips auth to "gateway", which headless rejects (exit 41).
        "auth": {"selectedType": "gemini-api-key"},
        # Folder trust on (the default) makes a headless run in a fresh dir exit 55.
        "folderTrust": {"enabled": False},
    },
    "privacy": {"usageStatisticsEnabled": False},          # Clearcut -> play.googleapis.com
    "telemetry": {"enabled": False},
    "general": {
        "enableAutoUpdate": False,
        "enableAutoUpdateNotification": False,
        "checkpointing": {"enabled": False},
        # One attempt per request: no 5 s..30 s exponential backoff on 429/5xx (default 10).
        "maxAttempts": 1,
        "retryFetchErrors": False,
    },
    "ide": {"enabled": False, "hasSeenNudge": True},
    "model": {
        "skipNextSpeakerCheck": True,      # default in 0.61; pinned: it is an extra model call
        # Loop detection asks a second model ("loop-detection" alias) after 30 turns and can
        # end a turn on its own; keep every request a main-chat request of the pinned model.
        "disableLoopDetection": True,
    },
    "tools": {
        "disableLLMCorrection": True,      # default in 0.61; pinned: edit fixes call a model
        # Same grep tool whether or not the host happens to have `rg` on a trusted path.
        "useRipgrep": False,
    },
}


class GeminiCli(AgentAdapter):
    name: ClassVar[str] = "gemini-cli"
    npm_package: ClassVar[str] = "@google/gemini-cli"
    version: ClassVar[str] = "0.61.0"
    memory_file: ClassVar[str] = "GEMINI.md"
    family: ClassVar[str] = "Gemini"
    wire_protocol: ClassVar[str] = "gemini"
    entrypoint: ClassVar[str] = "node_modules/@google/gemini-cli/bundle/gemini.js"
    node_script: ClassVar[bool] = True

    # --- per trial ----------------------------------------------------------------------
    def prepare_home(self, home: Path) -> None:
        gdir = Path(home) / ".gemini"
        gdir.mkdir(parents=True, exist_ok=True)
        (gdir / "settings.json").write_text(json.dumps(SETTINGS, indent=2) + "\n")

    def env(self, paths: AgentPaths, endpoint: str) -> dict[str, str]:
        base = plain_env(paths)
        home = base["HOME"]
        return {
            **base,
            "GEMINI_CLI_HOME": home,           # the CLI's own home override (same dir)
            "NO_BROWSER": "1",
            "GEMINI_API_KEY": "dummy",
            "GOOGLE_GEMINI_BASE_URL": endpoint.rstrip("/"),
            "GEMINI_CLI_NO_RELAUNCH": "1",
            # System-level settings/defaults default to /etc/gemini-cli/*.json (the host's /etc
            # is visible read-only in the sandbox): point them at files that do not exist.
            "GEMINI_CLI_SYSTEM_SETTINGS_PATH": f"{home}/.gemini/system-settings.json",
            "GEMINI_CLI_SYSTEM_DEFAULTS_PATH": f"{home}/.gemini/system-defaults.json",
        }

    def _argv(self, launcher: list[str], prompt: str, model: str) -> list[str]:
        return [*launcher, "-p", prompt, "--yolo", "--output-format", "stream-json", "-m", model]

    # --- after the run --------------------------------------------------------------------
    def native_logs(self, home: Path, tmp: Path) -> list[Path]:
        """Session transcripts (main and subagent), saved oversized tool outputs, the legacy
        logs.json if any, and the CLI's API error reports written to TMPDIR."""
        home, tmp = Path(home), Path(tmp)
        found: list[Path] = []
        projects = home / ".gemini" / "tmp"
        if projects.is_dir():
            for project in sorted(p for p in projects.iterdir() if p.is_dir()):
                found += sorted(p for p in (project / "chats").rglob("*.jsonl") if p.is_file())
                found += sorted(p for p in (project / "logs").glob("*.jsonl") if p.is_file())
                found += sorted(p for p in (project / "tool-outputs").rglob("*") if p.is_file())
                if (project / "logs.json").is_file():
                    found.append(project / "logs.json")
        if tmp.is_dir():
            found += sorted(p for p in tmp.glob("gemini-client-error-*.json") if p.is_file())
        return found

    def error_class(self, stdout: str, stderr: str, exit_code: int | None) -> str | None:
        return classify_error(stdout, stderr, exit_code)

    def trajectory(self, native_dir: Path, model: str) -> dict:
        return build_trajectory(Path(native_dir), model=model, version=self.version, agent_name=self.name)


# ------------------------------------------------------------------------------------------
# Error classes
# ------------------------------------------------------------------------------------------
ERROR_CLASSES = (
    "rate_limit", "auth", "model_not_found", "api_error", "context_overflow", "bad_input",
    "turn_limit", "untrusted_folder", "tool_error", "config_error", "cancelled", "killed", "unknown",
)

# FatalError subclasses and their exit codes in 0.61 (cli/core "Fatal*Error" classes).
_FATAL_EXIT_CODES = {
    41: "auth",              # FatalAuthenticationError, e.g. "Invalid auth method selected."
    42: "bad_input",         # FatalInputError, e.g. "No input provided via stdin..."
    44: "config_error",      # FatalSandboxError
    52: "config_error",      # FatalConfigError
    53: "turn_limit",        # FatalTurnLimitedError (model.maxSessionTurns)
    54: "tool_error",        # FatalToolExecutionError (e.g. no space left)
    55: "untrusted_folder",  # FatalUntrustedWorkspaceError
    130: "cancelled",        # FatalCancellationError (also SIGINT)
}
_OVERFLOW_RE = re.compile(
    r"exceeds the maximum number of tokens|input token count|context window will overflow"
    r"|context length|maximum context|too many tokens|request payload size exceeds", re.I)
_API_ERROR_RE = re.compile(r"\[API Error|Error when talking to Gemini API|fetch failed", re.I)
_STATUS_RES = (
    re.compile(r'"code"\s*:\s*([45]\d\d)\b'),
    re.compile(r"\bstatus:?\s*([45]\d\d)\b"),
    re.compile(r"\bcode:\s*([45]\d\d)\b"),
)
_RATE_RE = re.compile(r"RESOURCE_EXHAUSTED|quota|rate.?limit|too many requests", re.I)
_AUTH_RE = re.compile(r"UNAUTHENTICATED|PERMISSION_DENIED|API key not valid|Invalid auth method", re.I)
_NOT_FOUND_RE = re.compile(r"ModelNotFoundError|\bNOT_FOUND\b|is not found for API version", re.I)


def _http_status(text: str, exit_code: int | None, api_error: bool) -> int | None:
    # Fatal API errors exit with error.status, truncated to 8 bits by the OS
    # (429 -> 173, 401 -> 145, 403 -> 147, 400 -> 144, 500 -> 244, 503 -> 247).
    if api_error and exit_code is not None and 144 <= exit_code <= 255:
        return exit_code + 256
    for rx in _STATUS_RES:
        m = rx.search(text)
        if m:
            return int(m.group(1))
    return None


def classify_error(stdout: str, stderr: str, exit_code: int | None) -> str | None:
    """Typed failure of a headless `-o stream-json` run, or None when it succeeded."""
    events, _ = read_jsonl(stdout or "")
    result = next((e for e in reversed(events) if e.get("type") == "result"), None)
    texts = [stderr or ""]
    if result and isinstance(result.get("error"), dict):
        texts.append(str(result["error"].get("message", "")))
    texts += [str(e.get("message", "")) for e in events if e.get("type") == "error"]
    text = "\n".join(texts)

    if _OVERFLOW_RE.search(text):
        return "context_overflow"
    if exit_code == 0:
        if result is None:
            return "unknown"
        if result.get("status") != "success":
            return "api_error"        # INVALID_STREAM: empty / blocked / malformed model reply
        # 0.61's non-interactive loop ends the turn silently (exit 0, "success") when the next
        # request would not fit the context window: a success right after tool results.
        last = next((e for e in reversed(events) if e.get("type") not in ("result", "error")), None)
        if last is not None and last.get("type") == "tool_result":
            return "context_overflow"
        return None
    if exit_code in _FATAL_EXIT_CODES:
        return _FATAL_EXIT_CODES[exit_code]
    if result is None and exit_code is not None and (exit_code < 0 or 129 <= exit_code <= 143):
        return "killed"                   # signal (subprocess: -N, shells: 128+N) before a result
    api_error = bool(_API_ERROR_RE.search(text))
    status = _http_status(text, exit_code, api_error)
    if status is not None:
        return class_for_status(status)
    if _RATE_RE.search(text):
        return "rate_limit"
    if _AUTH_RE.search(text):
        return "auth"
    if _NOT_FOUND_RE.search(text):
        return "model_not_found"
    if api_error:
        return "api_error"
    return "unknown"


# ------------------------------------------------------------------------------------------
# Session transcript (<home>/.gemini/tmp/<project>/chats/session-*.jsonl)
# ------------------------------------------------------------------------------------------
def _load_session(path: Path) -> tuple[dict, list[dict], int]:
    """Replay a 0.61 session file: a header {sessionId, projectHash, ...}, message records
    (upserted by `id`, keeping first-seen order), {"$set": {...}} patches (a `messages` key
    replaces the whole list) and {"$rewindTo": id} (drops that message and later ones)."""
    records, bad = read_jsonl(read_text(path))
    meta: dict = {}
    messages: dict[str, dict] = {}
    for rec in records:
        if isinstance(rec.get("$rewindTo"), str):
            ids = list(messages)
            cut = ids.index(rec["$rewindTo"]) if rec["$rewindTo"] in ids else 0
            for mid in ids[cut:]:
                del messages[mid]
        elif isinstance(rec.get("id"), str):
            messages[rec["id"]] = rec
        elif isinstance(rec.get("$set"), dict):
            patch = rec["$set"]
            if isinstance(patch.get("messages"), list):
                messages = {m["id"]: m for m in patch["messages"]
                            if isinstance(m, dict) and isinstance(m.get("id"), str)}
            meta.update({k: v for k, v in patch.items() if k != "messages"})
        elif isinstance(rec.get("sessionId"), str):
            meta.update({k: v for k, v in rec.items() if k != "messages"})
    return meta, list(messages.values()), bad


def _parts_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought"))
    return ""


def _function_response_text(response) -> str:
    """What the model was sent for one tool call ({"output": ...} or {"error": ...})."""
    if isinstance(response, dict):
        if set(response) == {"output"} and isinstance(response["output"], str):
            return response["output"]
        if set(response) == {"error"} and isinstance(response["error"], str):
            return f"Error: {response['error']}"
    return json.dumps(response, ensure_ascii=False)


def _tool_call_results(call: dict) -> str | None:
    texts = []
    for item in call.get("result") or ():
        fr = item.get("functionResponse") if isinstance(item, dict) else None
        if isinstance(fr, dict) and "response" in fr:
            texts.append(_function_response_text(fr["response"]))
    return "\n".join(texts) if texts else None


def _thoughts_text(thoughts) -> str | None:
    lines = []
    for t in thoughts or ():
        if not isinstance(t, dict):
            continue
        subject, desc = t.get("subject") or "", t.get("description") or ""
        lines.append(f"{subject}: {desc}" if subject and desc else subject or desc)
    text = "\n".join(x for x in lines if x)
    return text or None


def _token_metrics(tokens) -> dict | None:
    if not isinstance(tokens, dict):
        return None
    ints = {k: v for k, v in tokens.items() if isinstance(v, int)}
    if not ints:
        return None
    out, thoughts = ints.get("output", 0), ints.get("thoughts", 0)
    metrics: dict = {"prompt_tokens": ints.get("input"), "completion_tokens": out + thoughts,
                     "cached_tokens": ints.get("cached")}
    extra = {f"{k}_tokens": ints[k] for k in ("output", "thoughts", "tool", "total") if k in ints}
    if extra:
        metrics["extra"] = extra
    return {k: v for k, v in metrics.items() if v is not None}


def _pick_session(native_dir: Path, session_id: str | None) -> tuple[Path | None, dict, list[dict], int, list[str]]:
    files = files_below(native_dir / "logs", "*.jsonl")
    best: tuple | None = None
    others: list[str] = []
    for path in files:
        meta, messages, bad = _load_session(path)
        if not meta.get("sessionId"):
            continue                      # not a session transcript
        rank = (meta.get("sessionId") == session_id, meta.get("kind", "main") == "main", len(messages))
        if best is None or rank > best[0]:
            if best is not None:
                others.append(str(best[1].relative_to(native_dir)))
            best = (rank, path, meta, messages, bad)
        else:
            others.append(str(path.relative_to(native_dir)))
    if best is None:
        return None, {}, [], 0, others
    return best[1], best[2], best[3], best[4], others


# ------------------------------------------------------------------------------------------
# Trajectory
# ------------------------------------------------------------------------------------------
def _new_turn(ts: str | None) -> dict:
    return {"kind": "agent", "timestamp": ts, "text": "", "calls": [], "results": {}}


def _stream_items(events: list[dict], notes: dict) -> tuple[list[dict], dict]:
    """Group stream-json events into user items and agent turns (one per model response:
    its text deltas and tool calls; a turn closes once any of its tool results arrived)."""
    items: list[dict] = []
    info: dict = {"errors": [], "result": None, "init": None}
    turn: dict | None = None
    for ev in events:
        kind, ts = ev.get("type"), ev.get("timestamp")
        if kind == "init":
            info["init"] = ev
        elif kind == "message" and ev.get("role") == "user":
            turn = None
            items.append({"kind": "user", "timestamp": ts, "text": str(ev.get("content", ""))})
        elif kind == "message" and ev.get("role") == "assistant":
            if turn is None or turn["results"]:
                turn = _new_turn(ts)
                items.append(turn)
            turn["text"] += str(ev.get("content") or "")
        elif kind == "tool_use":
            if turn is None or turn["results"]:
                turn = _new_turn(ts)
                items.append(turn)
            args = ev.get("parameters")
            turn["calls"].append({
                "tool_call_id": str(ev.get("tool_id") or f"call_{len(turn['calls'])}"),
                "function_name": str(ev.get("tool_name") or "unknown"),
                "arguments": args if isinstance(args, dict) else ({} if args is None else {"value": args}),
                "timestamp": ts,
            })
        elif kind == "tool_result":
            call_id = str(ev.get("tool_id"))
            owner = next((t for t in reversed(items) if t["kind"] == "agent"
                          and any(c["tool_call_id"] == call_id for c in t["calls"])), None)
            if owner is None:
                notes.setdefault("unmatched_tool_results", []).append(ev)
                continue
            owner["results"][call_id] = ev
        elif kind == "error":
            info["errors"].append({k: ev.get(k) for k in ("timestamp", "severity", "message")})
        elif kind == "result":
            info["result"] = ev
        else:
            notes["unknown_stream_events"] = notes.get("unknown_stream_events", 0) + 1
    return items, info


def _session_items(messages: list[dict]) -> list[dict]:
    """Fallback when stdout has no turns: rebuild items from the session transcript."""
    items: list[dict] = []
    for msg in messages:
        if msg.get("type") == "user":
            content = msg.get("content")
            if isinstance(content, list) and any(isinstance(p, dict) and "functionResponse" in p for p in content):
                continue                  # tool results travel with the calls below
            text = _parts_text(content)
            if text.startswith("<session_context>"):
                continue
            items.append({"kind": "user", "timestamp": msg.get("timestamp"), "text": text})
        elif msg.get("type") == "gemini":
            turn = _new_turn(msg.get("timestamp"))
            turn["text"] = _parts_text(msg.get("content"))
            for call in msg.get("toolCalls") or ():
                if not isinstance(call, dict):
                    continue
                args = call.get("args")
                turn["calls"].append({"tool_call_id": str(call.get("id")), "function_name": str(call.get("name")),
                                      "arguments": args if isinstance(args, dict) else {},
                                      "timestamp": call.get("timestamp")})
                if call.get("result") is not None or call.get("status"):
                    turn["results"][str(call.get("id"))] = {"status": call.get("status"),
                                                            "output": call.get("resultDisplay")
                                                            if isinstance(call.get("resultDisplay"), str) else None}
            items.append(turn)
    return items


def _match_session(turns: list[dict], gemini_msgs: list[dict]) -> int:
    """Attach each agent turn's session record (same tool call ids; text-only turns in order).
    Returns the index after the last matched record."""
    j = 0
    for turn in turns:
        ids = {c["tool_call_id"] for c in turn["calls"]}
        for k in range(j, len(gemini_msgs)):
            msg = gemini_msgs[k]
            msg_ids = {str(c.get("id")) for c in msg.get("toolCalls") or () if isinstance(c, dict)}
            if (ids and ids & msg_ids) or (not ids and not msg_ids):
                turn["session"] = msg
                j = k + 1
                break
    return j


def _atif_turn(item: dict) -> dict:
    """An agent turn from stdout completed from its transcript message, if matched (the whole
    text, model, thoughts, tokens and what each call sent back to the model), in the form
    steps_from_items takes."""
    session = item.get("session") or {}
    session_calls = {str(c.get("id")): c for c in session.get("toolCalls") or () if isinstance(c, dict)}
    turn = new_turn(item.get("timestamp"))
    turn["text"] = item["text"]
    full = _parts_text(session.get("content"))
    if full and full != item["text"] and full.startswith(item["text"]):
        turn["text"] = full               # stream cut mid-answer; the transcript has it all
    if session.get("model"):
        turn["model_name"] = str(session["model"])
    turn["reasoning"] = _thoughts_text(session.get("thoughts")) or ""
    turn["metrics"] = _token_metrics(session.get("tokens"))
    for call in item["calls"]:
        cid = call["tool_call_id"]
        add_call(turn, cid, call["function_name"], call["arguments"], call.get("timestamp"))
        res, scall = item["results"].get(cid), session_calls.get(cid)
        if res is None and not (scall or {}).get("result"):
            continue                      # never answered (run killed mid-call)
        sent = _tool_call_results(scall) if scall else None
        display = res.get("output") if res else None
        extra = {"status": (res or {}).get("status") or (scall or {}).get("status")}
        if isinstance(display, str) and display != sent:
            extra["display"] = display
        if res and isinstance(res.get("error"), dict):
            extra["error"] = res["error"]
        if res and res.get("timestamp"):
            extra["timestamp"] = res["timestamp"]
        turn["results"][cid] = {"content": sent if sent is not None else display, "extra": extra}
    return turn


def build_trajectory(native_dir: Path, model: str, version: str = GeminiCli.version,
                     agent_name: str = GeminiCli.name) -> dict:
    """ATIF v1.7 dict from native_dir/stdout.txt (-o stream-json) and native_dir/logs/ (copies
    of the session transcript; optional). Tolerates truncated or garbled output."""
    notes: dict = {}
    events = read_stdout_events(native_dir, notes)
    items, info = _stream_items(events, notes)
    init, result = info["init"] or {}, info["result"]
    session_id = init.get("session_id")

    session_path, session_meta, session_msgs, bad_session, other_logs = _pick_session(native_dir, session_id)
    if session_path is not None:
        notes["session_log"] = str(session_path.relative_to(native_dir))
        session_id = session_id or session_meta.get("sessionId")
    if bad_session:
        notes["skipped_session_lines"] = bad_session
    if other_logs:
        notes["other_session_logs"] = other_logs

    sources = ["stream-json"] if events else []
    if not any(i["kind"] == "agent" for i in items) and session_msgs:
        stream_users = [i for i in items if i["kind"] == "user"]
        items = _session_items(session_msgs)
        if stream_users and not any(i["kind"] == "user" for i in items):
            items = stream_users + items
        notes["rebuilt_from_session_log"] = True
    if session_msgs:
        sources.append("session-log")
    turns = [i for i in items if i["kind"] == "agent"]
    gemini_msgs = [m for m in session_msgs if m.get("type") == "gemini"]
    matched = _match_session(turns, gemini_msgs)
    if turns and matched < len(gemini_msgs):
        # The transcript is appended as the run goes; stdout of a killed CLI can lag behind it.
        later = _session_items(gemini_msgs[matched:])
        for turn, msg in zip(later, gemini_msgs[matched:]):
            turn["session"] = msg
        items += later
        notes["turns_only_in_session_log"] = len(later)

    context = next((_parts_text(m.get("content")) for m in session_msgs if m.get("type") == "user"
                    and _parts_text(m.get("content")).startswith("<session_context>")), None)
    if not any(i["kind"] == "user" for i in items):
        notes["prompt_missing"] = True

    first_user = next((i for i in items if i["kind"] == "user"), None)
    if first_user is not None and context:
        first_user["extra"] = {"session_context": context}
    if not items:
        notes["empty"] = True
    steps = steps_from_items([_atif_turn(i) if i["kind"] == "agent" else i for i in items])

    stats = result.get("stats") if isinstance(result, dict) else None
    final = sum_metrics(steps)
    if not final and isinstance(stats, dict):
        for ours, theirs in (("total_prompt_tokens", "input_tokens"), ("total_completion_tokens", "output_tokens"),
                             ("total_cached_tokens", "cached")):
            if isinstance(stats.get(theirs), int):
                final[ours] = stats[theirs]
    if isinstance(stats, dict):
        final["extra"] = {"cli_stats": stats}

    if result is None:
        notes["truncated"] = True         # no final `result` event: killed, crashed or cut off
    else:
        notes["status"] = result.get("status")
        if result.get("error") is not None:
            notes["error"] = result.get("error")
    if info["errors"]:
        notes["stream_errors"] = info["errors"]
    notes["sources"] = sources

    agent: dict = {"name": agent_name, "version": version, "model_name": model}
    init_model = init.get("model")
    if init_model and init_model != model:
        agent["extra"] = {"cli_model": init_model}
    return trajectory_doc(agent=agent, steps=steps, final=final, notes=notes, session_id=session_id,
                          note_text="gemini-cli output ended without a result event (run killed or cut off)."
                          if notes.get("truncated") else None)
