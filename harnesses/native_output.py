"""Reading what agent CLIs print and log, shared by the adapters: JSONL readers, the typed API
error classes, and turning an adapter's grouped turns into ATIF steps."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from harnesses.atif import SCHEMA_VERSION, validate_trajectory

# Typed failures an adapter's error_class() may return (None = the run succeeded). The first
# six are API failures, which must never be mistaken for an agent's own choice (a refusal).
API_ERROR_CLASSES = ("rate_limit", "auth", "model_not_found", "api_error", "context_overflow", "timeout")

# Message patterns shared by the CLIs that print provider errors as text (Codex, Claude Code).
OVERFLOW_RE = re.compile(
    r"context.?length|context window|prompt is too long|maximum context|too many tokens"
    r"|exceeds the (?:maximum|context)|input is too long|request too large|request_too_large", re.I)
RATE_RE = re.compile(r"\b429\b|too many requests|rate.?limit|quota|usage limit|resource has been exhausted", re.I)
AUTH_RE = re.compile(r"\b40[13]\b|unauthori[sz]ed|forbidden|authenticat|invalid.{0,12}api.?key|permission_error",
                     re.I)
NOT_FOUND_RE = re.compile(r"\b404\b|model_not_found|not_found_error|does not exist|model .{0,80}not found", re.I)
TIMEOUT_RE = re.compile(r"timed? ?out|timeout|deadline exceeded|idle timeout", re.I)


def read_jsonl(text: str) -> tuple[list[dict], int]:
    """JSON objects, one per line; blank lines ignored; returns (records, bad_line_count)."""
    records: list[dict] = []
    bad = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(obj, dict):
            records.append(obj)
        else:
            bad += 1
    return records, bad


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def files_below(root: Path, pattern: str) -> list[Path]:
    """The files below ``root`` that match the rglob ``pattern``, sorted; none if root is missing."""
    return sorted(p for p in root.rglob(pattern) if p.is_file()) if root.is_dir() else []


def read_stdout_events(native_dir: Path, notes: dict) -> list[dict]:
    """The JSON events of native_dir/stdout.txt; notes a missing file and garbled lines."""
    stdout_path = native_dir / "stdout.txt"
    events, bad_stdout = read_jsonl(read_text(stdout_path))
    if not stdout_path.exists():
        notes["stdout_missing"] = True
    if bad_stdout:
        notes["skipped_stdout_lines"] = bad_stdout
    return events


def read_stream_json(native_dir: Path, notes: dict) -> tuple[list[dict], dict, dict | None, str | None]:
    """The events of a stream-json stdout (Claude Code and the CLIs shaped like it): (events, the
    init event or {}, the closing result event or None when the run was cut off, session id)."""
    events = read_stdout_events(native_dir, notes)
    init = next((e for e in events if e.get("type") == "system" and e.get("subtype") == "init"), {})
    result = next((e for e in reversed(events) if e.get("type") == "result"), None)
    return events, init, result, init.get("session_id") or (result or {}).get("session_id")


def session_logs(native_dir: Path) -> list[Path]:
    """The kept session transcripts, native_dir/logs/*.jsonl, sorted."""
    logs = native_dir / "logs"
    return sorted(p for p in logs.glob("*.jsonl") if p.is_file()) if logs.is_dir() else []


def pick_session_log(logs: list[Path], session_id: str | None) -> Path | None:
    """The transcript named after the session, else the largest one (the main session)."""
    chosen = next((p for p in logs if session_id and p.stem == session_id), None)
    if chosen is None and logs:
        chosen = max(logs, key=lambda p: p.stat().st_size)
    return chosen


def note_session_log(notes: dict, native_dir: Path, chosen: Path, logs: list[Path], bad_lines: int) -> None:
    """Which kept session log the trajectory was read from, its garbled lines and the others."""
    notes["session_log"] = str(chosen.relative_to(native_dir))
    if bad_lines:
        notes["skipped_session_lines"] = bad_lines
    if len(logs) > 1:
        notes["other_session_logs"] = [str(p.relative_to(native_dir)) for p in logs if p != chosen]


def class_for_status(status: int) -> str:
    """The error class of an HTTP status a provider answered with."""
    if status == 429:
        return "rate_limit"
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "model_not_found"
    if status == 413:
        return "context_overflow"
    if status in (408, 504):
        return "timeout"
    return "api_error"


def class_for_message(text: str) -> str | None:
    """The error class a provider error message names, or None if it names none."""
    for rx, kind in ((OVERFLOW_RE, "context_overflow"), (RATE_RE, "rate_limit"), (AUTH_RE, "auth"),
                     (NOT_FOUND_RE, "model_not_found"), (TIMEOUT_RE, "timeout")):
        if rx.search(text):
            return kind
    return None


# ------------------------------------------------------------------------------------------
# Turns -> ATIF
# ------------------------------------------------------------------------------------------
def new_turn(timestamp: str | None) -> dict:
    """One agent turn (one model response) as adapters collect it before conversion."""
    return {"kind": "agent", "timestamp": timestamp, "text": "", "reasoning": "", "calls": [], "results": {},
            "metrics": None, "model_name": None}


def add_call(turn: dict, call_id: str, name: str, arguments: Any, timestamp: str | None = None) -> None:
    if not isinstance(arguments, dict):
        arguments = {} if arguments is None else {"value": arguments}
    call = {"tool_call_id": call_id, "function_name": name, "arguments": arguments}
    if timestamp:
        call["extra"] = {"timestamp": timestamp}
    turn["calls"].append(call)


def add_message_blocks(turn: dict, content: Any, timestamp: str | None = None) -> None:
    """The text, thinking and tool_use blocks of an Anthropic-shaped assistant message (Claude
    Code, and Qwen Code's stream-json) into ``turn``."""
    for block in content or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            turn["text"] += str(block.get("text", ""))
        elif block.get("type") == "thinking" and block.get("thinking"):
            turn["reasoning"] = "\n".join(x for x in (turn["reasoning"], str(block["thinking"])) if x)
        elif block.get("type") == "tool_use":
            add_call(turn, str(block.get("id")), str(block.get("name")), block.get("input"), timestamp)


def owner_of(items: list[dict], call_id: str, notes: dict) -> dict | None:
    """The latest agent turn that made the call ``call_id``; a result for a call no turn made is
    counted in notes["unmatched_tool_results"]."""
    owner = next((t for t in reversed(items) if t["kind"] == "agent"
                  and any(c["tool_call_id"] == call_id for c in t["calls"])), None)
    if owner is None:
        notes["unmatched_tool_results"] = notes.get("unmatched_tool_results", 0) + 1
    return owner


def steps_from_items(items: list[dict]) -> list[dict]:
    """ATIF steps from user items ({kind: user, timestamp, text, extra?}) and agent turns
    (new_turn() dicts whose results map call ids to {content?, extra?})."""
    steps: list[dict] = []
    for item in items:
        step: dict = {"step_id": len(steps) + 1, "source": item["kind"], "message": item["text"]}
        if item.get("timestamp"):
            step["timestamp"] = item["timestamp"]
        if item["kind"] != "agent":
            if item.get("extra"):
                step["extra"] = item["extra"]
            steps.append(step)
            continue
        if item.get("model_name"):
            step["model_name"] = item["model_name"]
        if item.get("reasoning"):
            step["reasoning_content"] = item["reasoning"]
        if item["calls"]:
            step["tool_calls"] = item["calls"]
        results = []
        for call in item["calls"]:
            res = item["results"].get(call["tool_call_id"])
            if res is None:
                continue
            entry: dict = {"source_call_id": call["tool_call_id"]}
            if res.get("content") is not None:
                entry["content"] = res["content"]
            extra = {k: v for k, v in (res.get("extra") or {}).items() if v is not None}
            if extra:
                entry["extra"] = extra
            results.append(entry)
        if results:
            step["observation"] = {"results": results}
        if item.get("metrics"):
            step["metrics"] = item["metrics"]
        step["llm_call_count"] = 1
        pending = [c["tool_call_id"] for c in item["calls"] if c["tool_call_id"] not in item["results"]]
        if pending:
            step["extra"] = {"tool_calls_without_result": pending}
        steps.append(step)
    if not steps:
        # Nothing usable at all (e.g. the CLI died before printing): keep the document valid.
        steps.append({"step_id": 1, "source": "system", "message": "",
                      "extra": {"note": "no prompt or agent output was recorded"}})
    return steps


def trajectory_doc(*, agent: dict, steps: list[dict], final: dict, notes: dict, session_id: str | None,
                   note_text: str | None = None) -> dict:
    """Assemble and validate an ATIF document (raises TrajectoryValidationError)."""
    doc: dict = {"schema_version": SCHEMA_VERSION, "agent": agent, "steps": steps,
                 "final_metrics": {"total_steps": len(steps), **final}, "extra": notes}
    if session_id:
        doc["session_id"] = str(session_id)
    if note_text:
        doc["notes"] = note_text
    return validate_trajectory(doc).to_json_dict()


def stream_json_trajectory(*, items: list[dict], sources: list[str], notes: dict, init: dict,
                           result: dict | None, session_id: str | None, agent_name: str, version: str,
                           model: str, init_keys: tuple[str, ...], result_keys: tuple[str, ...]) -> dict:
    """The ATIF document of a stream-json run (Claude Code and the CLIs shaped like it) from its
    grouped turns: final metrics and run status from the `result` event that ends the run (its
    usage stands in when the steps carry no metrics; no result: the run was cut off), the
    ``result_keys`` of that event as final extra and the ``init_keys`` of the init event as the
    agent's extra."""
    if not any(i["kind"] == "user" for i in items):
        notes["prompt_missing"] = True
    steps = steps_from_items(items)
    final = sum_metrics(steps)
    if result is not None:
        usage = result.get("usage") if isinstance(result.get("usage"), dict) else {}
        if not final and usage:
            final = {"total_prompt_tokens": usage.get("input_tokens"),
                     "total_completion_tokens": usage.get("output_tokens"),
                     "total_cached_tokens": usage.get("cache_read_input_tokens")}
        final["extra"] = {k: result.get(k) for k in result_keys if result.get(k) is not None}
        notes["status"] = result.get("subtype")
        notes["is_error"] = bool(result.get("is_error"))
        if result.get("permission_denials"):
            notes["permission_denials"] = result["permission_denials"]
    else:
        notes["truncated"] = True
    final = {k: v for k, v in final.items() if v is not None}
    notes["sources"] = sources
    agent: dict = {"name": agent_name, "version": version, "model_name": model}
    extra = {k: init[k] for k in init_keys if init.get(k) is not None}
    if extra:
        agent["extra"] = extra
    return trajectory_doc(agent=agent, steps=steps, final=final, notes=notes, session_id=session_id,
                          note_text=f"{agent_name} output ended without a result event (run killed or cut off)."
                          if notes.get("truncated") else None)


def sum_metrics(steps: list[dict]) -> dict:
    """Token totals over the agent steps, when every agent step has metrics."""
    metrics = [s.get("metrics") for s in steps if s["source"] == "agent"]
    if not metrics or not all(metrics):
        return {}
    return {"total_prompt_tokens": sum(m.get("prompt_tokens", 0) for m in metrics),
            "total_completion_tokens": sum(m.get("completion_tokens", 0) for m in metrics),
            "total_cached_tokens": sum(m.get("cached_tokens", 0) for m in metrics)}
