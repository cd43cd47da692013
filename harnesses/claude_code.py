"""Claude Code (@anthropic-ai/claude-code 2.1.197), headless (`claude -p --output-format
stream-json`) against a local Anthropic Messages endpoint. The npm package ships a native
binary in its platform package; the adapter runs it directly (its postinstall, which only
links the binary, need not run)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from harnesses.base import AgentAdapter, AgentPaths, plain_env
from harnesses.native_output import (
    add_message_blocks, class_for_message, class_for_status, files_below, new_turn, note_session_log, owner_of,
    pick_session_log, read_jsonl, read_stream_json, read_text, session_logs, stream_json_trajectory)

# Managed settings and managed CLAUDE.md live here on Linux (hard-coded in the CLI). The sandbox
# shows the host's /etc read-only, so anything there would reach the agent's context.
MANAGED_DIR = Path("/etc/claude-code")


class ClaudeCode(AgentAdapter):
    name: ClassVar[str] = "claude-code"
    npm_package: ClassVar[str] = "@anthropic-ai/claude-code"
    version: ClassVar[str] = "2.1.197"
    memory_file: ClassVar[str] = "CLAUDE.md"
    family: ClassVar[str] = "Claude"
    wire_protocol: ClassVar[str] = "anthropic"
    entrypoint: ClassVar[str] = "node_modules/@anthropic-ai/claude-code-linux-x64/claude"

    # --- per trial ----------------------------------------------------------------------
    def prepare_home(self, home: Path) -> None:
        """Claude Code reads CLAUDE.md from the managed dir, the config dir and every directory
        from the cwd up to (not including) /. In a world that is /workspace (its memory file)
        and this fresh, empty config dir; the managed dir must not exist on the host."""
        if MANAGED_DIR.exists():
            raise RuntimeError(f"{MANAGED_DIR} exists on this host; claude-code would load its managed "
                               "settings/CLAUDE.md inside every world (the sandbox shows the host's /etc). "
                               "Move it away before running claude-code trials.")
        (Path(home) / ".claude").mkdir(parents=True, exist_ok=True)

    def env(self, paths: AgentPaths, endpoint: str) -> dict[str, str]:
        base = plain_env(paths)
        return {
            **base,
            "CLAUDE_CONFIG_DIR": f"{base['HOME']}/.claude",
            "SHELL": "/bin/bash",
            "ANTHROPIC_BASE_URL": endpoint.rstrip("/"),   # the CLI appends /v1/messages
            "ANTHROPIC_API_KEY": "dummy",                   # sent as x-api-key
            # Without it the CLI resolves api.anthropic.com and sends a title-generation request.
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
            # One attempt per request (default 10 with backoff): an API failure ends the run.
            "CLAUDE_CODE_MAX_RETRIES": "0",
        }

    def host_env(self, paths: AgentPaths, endpoint: str) -> dict[str, str]:
        """env() for a run outside the sandbox (tests, benches). As root, the CLI refuses
        --dangerously-skip-permissions unless IS_SANDBOX=1; in a world the agent is not root,
        and IS_SANDBOX also changes other behaviour (e.g. on HTTP 529), so only here."""
        env = self.env(paths, endpoint)
        if os.geteuid() == 0:
            env["IS_SANDBOX"] = "1"
        return env

    def _argv(self, launcher: list[str], prompt: str, model: str) -> list[str]:
        return [*launcher, "-p", "--output-format", "stream-json", "--verbose", "--dangerously-skip-permissions",
                "--model", model, "--", prompt]

    # --- after the run --------------------------------------------------------------------
    def native_logs(self, home: Path, tmp: Path) -> list[Path]:
        """Session transcripts ($CLAUDE_CONFIG_DIR/projects/<cwd slug>/<session>.jsonl, and
        subagent transcripts below them)."""
        return files_below(Path(home) / ".claude" / "projects", "*.jsonl")

    def error_class(self, stdout: str, stderr: str, exit_code: int | None) -> str | None:
        return classify_error(stdout, stderr, exit_code)

    def trajectory(self, native_dir: Path, model: str) -> dict:
        return build_trajectory(Path(native_dir), model=model, version=self.version, agent_name=self.name)


# ------------------------------------------------------------------------------------------
# Error classes
# ------------------------------------------------------------------------------------------
SYNTHETIC_MODEL = "<synthetic>"   # the CLI's own assistant messages (API errors), never the model's


def _synthetic_texts(events: list[dict]) -> list[str]:
    out = []
    for ev in events:
        msg = ev.get("message") if ev.get("type") == "assistant" else None
        if isinstance(msg, dict) and msg.get("model") == SYNTHETIC_MODEL:
            out += [str(b.get("text", "")) for b in msg.get("content") or () if isinstance(b, dict)]
    return out


def classify_error(stdout: str, stderr: str, exit_code: int | None) -> str | None:
    """Typed failure of a `claude -p --output-format stream-json` run, or None when it succeeded."""
    events, _ = read_jsonl(stdout or "")
    result = next((e for e in reversed(events) if e.get("type") == "result"), None)
    if result is not None and not result.get("is_error") and exit_code == 0:
        return None
    texts = _synthetic_texts(events) + [stderr or ""]
    if result is not None:
        texts.append(str(result.get("result") or ""))
        texts += [str(e) for e in result.get("errors") or ()]
    text = "\n".join(texts)
    named = class_for_message(text)
    status = result.get("api_error_status") if result is not None else None
    if isinstance(status, int):
        return "context_overflow" if named == "context_overflow" else class_for_status(status)
    if result is None and exit_code is not None and exit_code < 0:
        return "killed"
    if result is not None and result.get("subtype") == "error_max_turns":
        return "turn_limit"
    if named:
        return named
    return "api_error" if "API Error" in text else "unknown"


# ------------------------------------------------------------------------------------------
# Trajectory
# ------------------------------------------------------------------------------------------
def _blocks_text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(str(b.get("text", "")) for b in content or () if isinstance(b, dict) and b.get("type") == "text")


def _metrics(usage) -> dict | None:
    if not isinstance(usage, dict) or not isinstance(usage.get("input_tokens"), int):
        return None
    cached = int(usage.get("cache_read_input_tokens") or 0)
    created = int(usage.get("cache_creation_input_tokens") or 0)
    return {"prompt_tokens": usage["input_tokens"] + cached + created,
            "completion_tokens": int(usage.get("output_tokens") or 0), "cached_tokens": cached}


def _items(records: list[dict], notes: dict) -> list[dict]:
    """User items and one agent turn per model message (stream-json and the transcript write
    one record per content block, all with the message's id)."""
    items: list[dict] = []
    turn: dict | None = None
    for rec in records:
        kind, ts, msg = rec.get("type"), rec.get("timestamp"), rec.get("message")
        if kind not in ("user", "assistant") or not isinstance(msg, dict):
            continue
        if rec.get("isSidechain"):
            notes["sidechain_records"] = notes.get("sidechain_records", 0) + 1
            continue
        content = msg.get("content")
        if kind == "assistant":
            if msg.get("model") == SYNTHETIC_MODEL:
                # The CLI's own error notice ("API Error: ..."), not something the model said.
                notes.setdefault("cli_error_messages", []).append(_blocks_text(content))
                turn = None
                continue
            if turn is None or turn["message_id"] != msg.get("id"):
                turn = new_turn(ts)
                turn["message_id"] = msg.get("id")
                turn["model_name"] = msg.get("model")
                items.append(turn)
            add_message_blocks(turn, content, ts)
            turn["metrics"] = _metrics(msg.get("usage")) or turn["metrics"]
            continue
        if rec.get("isMeta"):
            continue
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"] \
            if isinstance(content, list) else []
        for block in results:
            call_id = str(block.get("tool_use_id"))
            owner = owner_of(items, call_id, notes)
            if owner is None:
                continue
            owner["results"][call_id] = {"content": _blocks_text(block.get("content")),
                                         "extra": {"is_error": block.get("is_error"), "timestamp": ts}}
        text = _blocks_text(content)
        if not results and text:
            turn = None
            items.append({"kind": "user", "timestamp": ts, "text": text})
    for item in items:
        item.pop("message_id", None)
    return items


def build_trajectory(native_dir: Path, model: str, version: str = ClaudeCode.version,
                     agent_name: str = ClaudeCode.name) -> dict:
    """ATIF v1.7 from native_dir/logs/<session>.jsonl (the transcript: prompt, timestamps) and
    native_dir/stdout.txt (stream-json: init, result, usage; fallback for the turns)."""
    notes: dict = {}
    events, init, result, session_id = read_stream_json(native_dir, notes)
    transcripts = session_logs(native_dir)
    chosen = pick_session_log(transcripts, session_id)
    stream_items = _items(events, {})
    items, sources = stream_items, ["stream-json"] if events else []
    if chosen is not None:
        records, bad = read_jsonl(read_text(chosen))
        log_notes: dict = {}
        log_items = _items(records, log_notes)
        turns = sum(1 for i in log_items if i["kind"] == "agent")
        if turns >= sum(1 for i in stream_items if i["kind"] == "agent"):
            items, sources = log_items, ["transcript"] + sources
            notes.update(log_notes)
        else:
            notes["transcript_behind_stdout"] = True
        note_session_log(notes, native_dir, chosen, transcripts, bad)
    if "cli_error_messages" not in notes:
        errors = _synthetic_texts(events)
        if errors:
            notes["cli_error_messages"] = errors
    if result is not None and result.get("api_error_status") is not None:
        notes["api_error_status"] = result["api_error_status"]
    # The CLI prices tokens by its own table even for a scripted model: its cost is kept as reported.
    return stream_json_trajectory(items=items, sources=sources, notes=notes, init=init, result=result,
                                  session_id=session_id, agent_name=agent_name, version=version, model=model,
                                  init_keys=("model", "claude_code_version", "permissionMode"),
                                  result_keys=("num_turns", "duration_ms", "total_cost_usd", "usage"))
