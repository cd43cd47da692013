"""Codex CLI (@openai/codex 0.169.0), headless (`codex exec --json`) against a local OpenAI
Responses endpoint. The npm package's JS launcher only execs the platform binary, so the
adapter runs that binary directly (one process less, no Node in the sandbox)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from harnesses.base import AgentAdapter, AgentPaths, plain_env
from harnesses.native_output import (
    add_call, class_for_message, class_for_status, files_below, new_turn, note_session_log, owner_of, read_jsonl,
    read_stdout_events, read_text, steps_from_items, sum_metrics, trajectory_doc)

PROVIDER = "scripted"          # the model provider the config defines (any name but the built-ins)
API_KEY_ENV = "MODEL_API_KEY"  # env var holding the (dummy) key; sent as "Authorization: Bearer"


def config_toml(endpoint: str) -> str:
    """$CODEX_HOME/config.toml pinned for every trial (all keys accepted by --strict-config)."""
    base_url = json.dumps(endpoint.rstrip("/") + "/v1")
    return f"""\
model_provider = "{PROVIDER}"
# Auto-approve everything and run commands unsandboxed: the world is the sandbox (Codex's own
# bwrap sandbox refuses a CODEX_HOME under /tmp and would double-wrap the agent).
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false

[model_providers.{PROVIDER}]
name = "peer-harness model endpoint"
base_url = {base_url}
env_key = "{API_KEY_ENV}"
wire_api = "responses"          # "chat" was removed in 0.169
# One attempt per request (defaults: 4 request and 5 stream retries with backoff), so an API
# failure ends the run at once with its error instead of being retried for ~30 s.
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[otel]
exporter = "none"

[features]
plugins = false                 # else `git ls-remote https://github.com/openai/plugins.git` at startup
remote_plugin = false
apps = false
"""


class Codex(AgentAdapter):
    name: ClassVar[str] = "codex"
    npm_package: ClassVar[str] = "@openai/codex"
    version: ClassVar[str] = "0.169.0"
    memory_file: ClassVar[str] = "AGENTS.md"
    family: ClassVar[str] = "GPT"
    wire_protocol: ClassVar[str] = "openai-responses"
    entrypoint: ClassVar[str] = "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"

    # --- per trial ----------------------------------------------------------------------
    def prepare_home(self, home: Path, endpoint: str | None = None) -> None:
        """Write $CODEX_HOME/config.toml. Codex reads the provider's base URL only from its
        config, so the endpoint is fixed here (default: the sandbox's)."""
        from harnesses.registry import SANDBOX_MODEL_ENDPOINT  # noqa: PLC0415 - registry imports adapters

        cdir = Path(home) / ".codex"
        cdir.mkdir(parents=True, exist_ok=True)
        (cdir / "config.toml").write_text(config_toml(endpoint or SANDBOX_MODEL_ENDPOINT))

    def env(self, paths: AgentPaths, endpoint: str) -> dict[str, str]:
        base = plain_env(paths)
        return {
            **base,
            "CODEX_HOME": f"{base['HOME']}/.codex",
            "SHELL": "/bin/bash",
            API_KEY_ENV: "dummy",
        }

    def _argv(self, launcher: list[str], prompt: str, model: str) -> list[str]:
        # `--` keeps a prompt that starts with "-" (or names a subcommand) a prompt.
        return [*launcher, "exec", "--json", "--color", "never", "-m", model, "--", prompt]

    # --- after the run --------------------------------------------------------------------
    def native_logs(self, home: Path, tmp: Path) -> list[Path]:
        """The session rollouts ($CODEX_HOME/sessions/YYYY/MM/DD/rollout-*.jsonl): every item
        sent to and received from the model, with per-response token usage."""
        return files_below(Path(home) / ".codex" / "sessions", "rollout-*.jsonl")

    def error_class(self, stdout: str, stderr: str, exit_code: int | None) -> str | None:
        return classify_error(stdout, stderr, exit_code)

    def trajectory(self, native_dir: Path, model: str) -> dict:
        return build_trajectory(Path(native_dir), model=model, version=self.version, agent_name=self.name)


# ------------------------------------------------------------------------------------------
# Error classes
# ------------------------------------------------------------------------------------------
def _stream_errors(events: list[dict]) -> list[str]:
    """Error messages of an `exec --json` stream: top-level `error` events and `turn.failed`.
    (Items of type "error", such as the unknown-model metadata warning, are not failures.)"""
    out = [str(e.get("message", "")) for e in events if e.get("type") == "error"]
    out += [str((e.get("error") or {}).get("message", "")) for e in events if e.get("type") == "turn.failed"]
    return [m for m in out if m]


def classify_error(stdout: str, stderr: str, exit_code: int | None) -> str | None:
    """Typed failure of a `codex exec --json` run, or None when it succeeded."""
    events, _ = read_jsonl(stdout or "")
    failed = any(e.get("type") == "turn.failed" for e in events)
    completed = any(e.get("type") == "turn.completed" for e in events)
    if exit_code == 0 and completed and not failed:
        return None
    messages = _stream_errors(events)
    text = "\n".join(messages) or (stderr or "")
    if exit_code is not None and exit_code < 0 and not messages:
        return "killed"
    for marker in ("last status: ", "unexpected status "):
        at = text.find(marker)
        if at >= 0 and text[at + len(marker):at + len(marker) + 3].isdigit():
            status = int(text[at + len(marker):at + len(marker) + 3])
            overflow = class_for_message(text) == "context_overflow"
            return "context_overflow" if overflow else class_for_status(status)
    if messages:
        # Codex prints the provider's message, or its own text for 5xx ("high demand").
        return class_for_message(text) or "api_error"
    return "unknown"


# ------------------------------------------------------------------------------------------
# Trajectory
# ------------------------------------------------------------------------------------------
def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for part in content or ():
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append(part["text"])
    return "".join(parts)


def _arguments(raw) -> dict:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {"raw": raw}
    return value if isinstance(value, dict) else {"value": value}


_CONTEXT_PREFIXES = ("# AGENTS.md instructions", "<environment_context>", "<user_instructions>")


def _rollout_items(records: list[dict], notes: dict) -> tuple[list[dict], dict]:
    """Items from a rollout: user messages, and one agent turn per model response (closed by
    the response's token_usage_record). Developer messages (system prompt, skills) are counted."""
    items: list[dict] = []
    info: dict = {"meta": {}, "context": [], "errors": [], "last_message": None}
    turn: dict | None = None

    def open_turn(ts):
        nonlocal turn
        if turn is None or turn.get("closed") or turn["results"]:
            turn = new_turn(ts)
            items.append(turn)
        return turn

    for rec in records:
        kind, ts, payload = rec.get("type"), rec.get("timestamp"), rec.get("payload") or {}
        ptype = payload.get("type")
        if kind == "session_meta":
            info["meta"] = payload
        elif kind == "token_usage_record" and turn is not None and not turn.get("closed"):
            usage = payload.get("usage") or {}
            turn["closed"] = True
            turn["metrics"] = {"prompt_tokens": usage.get("input_tokens", 0),
                               "completion_tokens": usage.get("output_tokens", 0),
                               "cached_tokens": usage.get("cached_input_tokens", 0),
                               "extra": {"response_id": payload.get("response_id"),
                                         "reasoning_tokens": usage.get("reasoning_output_tokens", 0)}}
        elif kind == "event_msg" and ptype in ("error", "stream_error", "turn_aborted"):
            info["errors"].append({"timestamp": ts, "type": ptype, "message": payload.get("message")
                                   or payload.get("reason")})
        elif kind == "event_msg" and ptype == "task_complete":
            info["last_message"] = payload.get("last_agent_message")
        elif kind != "response_item":
            continue
        elif ptype == "message" and payload.get("role") == "developer":
            notes["developer_messages"] = notes.get("developer_messages", 0) + 1
        elif ptype == "message" and payload.get("role") == "user":
            text = _content_text(payload.get("content"))
            if text.startswith(_CONTEXT_PREFIXES):
                info["context"].append(text)
            else:
                turn = None
                items.append({"kind": "user", "timestamp": ts, "text": text})
        elif ptype == "message" and payload.get("role") == "assistant":
            open_turn(ts)["text"] += _content_text(payload.get("content"))
        elif ptype == "reasoning":
            summary = "\n".join(_content_text([s]) for s in payload.get("summary") or ())
            if summary:
                t = open_turn(ts)
                t["reasoning"] = "\n".join(x for x in (t["reasoning"], summary) if x)
        elif ptype in ("function_call", "custom_tool_call", "local_shell_call"):
            t = open_turn(ts)
            if ptype == "custom_tool_call":
                args = {"input": payload.get("input")}
            elif ptype == "local_shell_call":
                args = payload.get("action") or {}
            else:
                args = _arguments(payload.get("arguments"))
            call_id = str(payload.get("call_id") or payload.get("id") or f"call_{len(t['calls'])}")
            add_call(t, call_id, str(payload.get("name") or ptype), args, ts)
        elif ptype in ("function_call_output", "custom_tool_call_output", "local_shell_call_output"):
            call_id = str(payload.get("call_id"))
            owner = owner_of(items, call_id, notes)
            if owner is None:
                continue
            output = payload.get("output")
            if not isinstance(output, str):
                output = _content_text(output) if isinstance(output, list) else json.dumps(output)
            owner["results"][call_id] = {"content": output, "extra": {"timestamp": ts}}
    for item in items:
        item.pop("closed", None)
    return items, info


def _stdout_items(events: list[dict], notes: dict) -> list[dict]:
    """Fallback when no rollout was kept: agent messages and command executions of the
    `exec --json` stream (the CLI's view: commands as it ran them, outputs as it got them).
    The stream marks no response boundaries: a turn is a message and the commands after it."""
    items: list[dict] = []
    turn: dict | None = None
    for ev in events:
        item = ev.get("item") if ev.get("type") == "item.completed" else None
        if not isinstance(item, dict):
            continue
        if item.get("type") == "agent_message":
            if turn is None or turn["results"]:
                turn = new_turn(None)
                items.append(turn)
            turn["text"] += str(item.get("text") or "")
        elif item.get("type") in ("command_execution", "file_change", "mcp_tool_call", "web_search"):
            if turn is None:
                turn = new_turn(None)
                items.append(turn)
            call_id = str(item.get("id") or f"call_{len(turn['calls'])}")
            args = {"command": item["command"]} if "command" in item else {
                k: v for k, v in item.items() if k not in ("id", "type", "status")}
            add_call(turn, call_id, str(item["type"]), args)
            turn["results"][call_id] = {"content": item.get("aggregated_output"),
                                        "extra": {"exit_code": item.get("exit_code"), "status": item.get("status")}}
        elif item.get("type") == "reasoning" and item.get("text"):
            if turn is None or turn["results"]:
                turn = new_turn(None)
                items.append(turn)
            turn["reasoning"] = "\n".join(x for x in (turn["reasoning"], str(item["text"])) if x)
    if items:
        notes["rebuilt_from_stdout"] = True
    return items


def build_trajectory(native_dir: Path, model: str, version: str = Codex.version,
                     agent_name: str = Codex.name) -> dict:
    """ATIF v1.7 from native_dir/logs/rollout-*.jsonl (preferred: exactly what the model saw
    and answered) and native_dir/stdout.txt (`exec --json`; status, usage, fallback)."""
    notes: dict = {}
    events = read_stdout_events(native_dir, notes)
    thread = next((e for e in events if e.get("type") == "thread.started"), {})

    logs = native_dir / "logs"
    rollouts = sorted(p for p in logs.glob("rollout-*.jsonl") if p.is_file()) if logs.is_dir() else []
    chosen = next((p for p in rollouts if thread.get("thread_id") and str(thread["thread_id"]) in p.name),
                  rollouts[-1] if rollouts else None)
    records: list[dict] = []
    if chosen is not None:
        records, bad = read_jsonl(read_text(chosen))
        note_session_log(notes, native_dir, chosen, rollouts, bad)
    items, info = _rollout_items(records, notes)
    sources = (["rollout"] if records else []) + (["exec-json"] if events else [])
    if not any(i["kind"] == "agent" for i in items):
        stdout_items = _stdout_items(events, notes)
        if stdout_items:
            items = [i for i in items if i["kind"] == "user"] + stdout_items
    if not any(i["kind"] == "user" for i in items):
        notes["prompt_missing"] = True
    first_user = next((i for i in items if i["kind"] == "user"), None)
    if first_user is not None and info["context"]:
        first_user["extra"] = {"session_context": "\n\n".join(info["context"])}

    steps = steps_from_items(items)
    final = sum_metrics(steps)
    done = next((e for e in reversed(events) if e.get("type") in ("turn.completed", "turn.failed")), None)
    if done is not None and done.get("type") == "turn.completed" and isinstance(done.get("usage"), dict):
        usage = done["usage"]
        final = final or {"total_prompt_tokens": usage.get("input_tokens"),
                          "total_completion_tokens": usage.get("output_tokens"),
                          "total_cached_tokens": usage.get("cached_input_tokens")}
        final["extra"] = {"cli_usage": usage}
    final = {k: v for k, v in final.items() if v is not None}

    errors = _stream_errors(events)
    if errors:
        notes["errors"] = errors
    if info["errors"]:
        notes["session_errors"] = info["errors"]
    if done is None:
        notes["truncated"] = True          # no turn.completed/turn.failed: killed or cut off
    else:
        notes["status"] = "completed" if done["type"] == "turn.completed" else "failed"
    notes["sources"] = sources
    meta = info["meta"]
    agent: dict = {"name": agent_name, "version": version, "model_name": model}
    if meta.get("cli_version") and meta["cli_version"] != version:
        agent["extra"] = {"cli_version": meta["cli_version"]}
    session_id = meta.get("id") or meta.get("session_id") or thread.get("thread_id")
    return trajectory_doc(agent=agent, steps=steps, final=final, notes=notes, session_id=session_id,
                          note_text="codex output ended without turn.completed or turn.failed (run killed or "
                                    "cut off)." if notes.get("truncated") else None)
