"""OpenCode (opencode-ai 1.18.33), headless (`opencode run --format json`, prompt on stdin)
against a local OpenAI Chat Completions endpoint. The npm package ships a bun-compiled binary in
its platform package; the adapter runs it directly, so the postinstall (which only links the
binary, and runs it once with the installer's real HOME) is skipped."""
from __future__ import annotations

import json
import shlex
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

from harnesses.base import AgentAdapter, AgentNotInstalled, AgentPaths, npm_install, plain_env, sandbox_dirs
from harnesses.native_output import (
    add_call, class_for_message, class_for_status, new_turn, read_jsonl, read_stdout_events, read_text,
    steps_from_items, sum_metrics, trajectory_doc)

PROVIDER, MODEL_ALIAS = "harness", "model"   # OpenCode addresses models as provider/model
# Substituted into the config text by OpenCode ({env:NAME}) when it loads it.
BASE_URL_ENV = "PEER_HARNESS_MODEL_BASE_URL"
MODEL_ID_ENV = "PEER_HARNESS_MODEL_ID"        # set by the command: the model the run asks for
PLUGIN_DIR = "opencode-plugin"                # in the install prefix, shared read-only by all trials
SESSION_EXPORT = "session-export.json"


# Per-trial config ($XDG_CONFIG_HOME/opencode/opencode.json). `-m harness/model` selects the one
# model, whose id (sent in every request) is the model the run asks for.
def _config() -> dict:
    return {
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
        "model": f"{PROVIDER}/{MODEL_ALIAS}",
        "small_model": f"{PROVIDER}/{MODEL_ALIAS}",
        "provider": {PROVIDER: {
            "npm": "@ai-sdk/openai-compatible",      # bundled in the binary: nothing is fetched
            "name": "peer-harness model endpoint",
            "options": {"baseURL": f"{{env:{BASE_URL_ENV}}}", "apiKey": "dummy"},
            "models": {MODEL_ALIAS: {"id": f"{{env:{MODEL_ID_ENV}}}", "name": "model under test",
                                     "tool_call": True}},
        }},
        "permission": {"*": "allow"},                  # headless: nothing may wait for approval
        "snapshot": False,                              # no per-step git snapshot of the workspace
        "lsp": False,
        "formatter": False,
    }


class OpenCode(AgentAdapter):
    name: ClassVar[str] = "opencode"
    npm_package: ClassVar[str] = "opencode-ai"
    version: ClassVar[str] = "1.18.33"
    memory_file: ClassVar[str] = "AGENTS.md"
    family: ClassVar[str] = "OpenCode"
    wire_protocol: ClassVar[str] = "openai-chat"
    entrypoint: ClassVar[str] = "node_modules/opencode-linux-x64/bin/opencode"
    npm_install_args: ClassVar[tuple[str, ...]] = ("--ignore-scripts",)

    # --- installation -------------------------------------------------------------------
    @classmethod
    def plugin_dir(cls) -> Path:
        return cls.prefix() / PLUGIN_DIR

    @classmethod
    def installed(cls) -> bool:
        plugin = cls.plugin_dir() / "node_modules" / "@opencode-ai" / "plugin" / "package.json"
        return super().installed() and plugin.exists()

    @classmethod
    def install(cls, echo=print) -> Path:
        """The CLI, plus @opencode-ai/plugin at the same version in PLUGIN_DIR. At startup OpenCode
        installs that package into its config dir unless node_modules there already lists it
        (63 MB, from the npm registry, unreachable in a world); every trial links to this copy."""
        if cls.installed():
            return cls.prefix()
        prefix = super().install(echo)
        proc = npm_install(cls.plugin_dir(), f"@opencode-ai/plugin@{cls.version}", "--ignore-scripts", "--save")
        if proc.returncode != 0 or not cls.installed():
            raise AgentNotInstalled(f"npm install of @opencode-ai/plugin@{cls.version} failed "
                                    f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return prefix

    # --- per trial ----------------------------------------------------------------------
    def prepare_home(self, home: Path, plugin_root: str | None = None) -> None:
        """Config dir with the config, and the shared plugin install linked in (package.json and
        package-lock.json copied: OpenCode compares them to decide whether to reinstall).
        `plugin_root` is where PLUGIN_DIR is visible to the CLI (the sandbox mount by default)."""
        if plugin_root is None:
            plugin_root = f"{sandbox_dirs()[1]}/{PLUGIN_DIR}"
        cdir = Path(home) / ".config" / "opencode"
        cdir.mkdir(parents=True, exist_ok=True)
        (cdir / "opencode.json").write_text(json.dumps(_config(), indent=2) + "\n")
        for name in ("package.json", "package-lock.json"):
            src = self.plugin_dir() / name
            if src.exists():
                (cdir / name).write_bytes(src.read_bytes())
        link = cdir / "node_modules"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f"{plugin_root}/node_modules")

    def host_prepare_home(self, home: Path) -> None:
        """prepare_home for a run outside the sandbox (tests, bench)."""
        self.prepare_home(home, plugin_root=str(self.plugin_dir()))

    def env(self, paths: AgentPaths, endpoint: str) -> dict[str, str]:
        base = plain_env(paths)     # bun drops a 5.5 MB .so in its TMPDIR on every run
        home = base["HOME"]
        return {
            **base,
            "XDG_CONFIG_HOME": f"{home}/.config",
            "XDG_DATA_HOME": f"{home}/.local/share",
            "XDG_CACHE_HOME": f"{home}/.cache",
            "XDG_STATE_HOME": f"{home}/.local/state",
            "SHELL": "/bin/bash",
            BASE_URL_ENV: endpoint.rstrip("/") + "/v1",
            "OPENCODE_DISABLE_MODELS_FETCH": "1",    # models.dev catalog
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
            "OPENCODE_DISABLE_SHARE": "1",
            "OPENCODE_DISABLE_CLAUDE_CODE": "1",     # no ~/.claude, no CLAUDE.md fallback
        }

    def _argv(self, launcher: list[str], prompt: str, model: str) -> list[str]:
        # Arguments with spaces reach the model wrapped in literal quotes, so the prompt goes on
        # stdin (which must be closed: with an open stdin `opencode run` waits forever). The
        # sandbox starts the CLI with stdin /dev/null, hence the pipe from a shell builtin.
        # --title: no extra title-generation request.
        run = [*launcher, "run", "--format", "json", "--title", "harness", "-m", f"{PROVIDER}/{MODEL_ALIAS}"]
        script = f'printf "%s\\n" "$1" | {MODEL_ID_ENV}="$2" exec {shlex.join(run)}'
        return ["/bin/sh", "-c", script, "opencode-prompt", prompt, model]

    # --- after the run --------------------------------------------------------------------
    def native_logs(self, home: Path, tmp: Path) -> list[Path]:
        """The CLI's log ($XDG_DATA_HOME/opencode/log/*.log) and the session as `opencode export`
        shapes it ({info, messages: [{info, parts}]}), read from opencode.db (the database itself
        is 2.5 MB of schema per trial). The export is written beside HOME, not into it: HOME is
        snapshotted after this, and the export is the harness's file, not the agent's."""
        data = Path(home) / ".local" / "share" / "opencode"
        found = sorted(p for p in (data / "log").glob("*.log") if p.is_file()) if (data / "log").is_dir() else []
        db = data / "opencode.db"
        if db.is_file():
            export = Path(home).parent / SESSION_EXPORT
            export.write_text(json.dumps(export_sessions(db), ensure_ascii=False, indent=1))
            found.append(export)
        return found

    def error_class(self, stdout: str, stderr: str, exit_code: int | None) -> str | None:
        return classify_error(stdout, stderr, exit_code)

    def trajectory(self, native_dir: Path, model: str) -> dict:
        return build_trajectory(Path(native_dir), model=model, version=self.version, agent_name=self.name)


def export_sessions(db: Path) -> dict:
    """Every session of an opencode.db: {"sessions": [{info, messages: [{info, parts}]}]}
    (the `opencode export` shape; ids added to each info and part). A database that cannot be
    read gives {"error": ...}."""
    try:
        con = sqlite3.connect(str(db))
        try:
            con.row_factory = sqlite3.Row
            sessions = []
            for srow in con.execute("SELECT * FROM session ORDER BY time_created"):
                info = {k: srow[k] for k in srow.keys()}
                messages = []
                for mrow in con.execute("SELECT id, data FROM message WHERE session_id = ? ORDER BY id", (srow["id"],)):
                    parts = [{"id": prow["id"], **json.loads(prow["data"])} for prow in con.execute(
                        "SELECT id, data FROM part WHERE message_id = ? ORDER BY id", (mrow["id"],))]
                    messages.append({"info": {"id": mrow["id"], **json.loads(mrow["data"])}, "parts": parts})
                sessions.append({"info": info, "messages": messages})
        finally:
            con.close()
    except (sqlite3.Error, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"sessions": sessions}


# ------------------------------------------------------------------------------------------
# Error classes
# ------------------------------------------------------------------------------------------
def _error_events(events: list[dict]) -> list[dict]:
    return [e.get("error") if isinstance(e.get("error"), dict) else e for e in events if e.get("type") == "error"]


def classify_error(stdout: str, stderr: str, exit_code: int | None) -> str | None:
    """Typed failure of an `opencode run --format json` run, or None when it succeeded. API
    failures print an `error` event ({name, data: {message, statusCode, isRetryable,
    responseBody}}) on stdout and exit 1."""
    events, _ = read_jsonl(stdout or "")
    errors = _error_events(events)
    finished = any(e.get("type") == "step_finish" and (e.get("part") or {}).get("reason") == "stop" for e in events)
    if exit_code == 0 and not errors and finished:
        return None
    if exit_code is not None and exit_code < 0 and not errors:
        return "killed"
    for err in errors:
        data = err.get("data") if isinstance(err.get("data"), dict) else {}
        name = str(err.get("name") or "")
        text = " ".join(str(x) for x in (name, data.get("message"), data.get("responseBody")) if x)
        if name == "ContextOverflowError" or class_for_message(text) == "context_overflow":
            return "context_overflow"
        if name == "ProviderAuthError":
            return "auth"
        if isinstance(data.get("statusCode"), int):
            return class_for_status(data["statusCode"])
        named = class_for_message(text)
        if named:
            return named
        if name == "APIError" or "fetch failed" in text or "Unable to connect" in text:
            return "api_error"
    named = class_for_message(stderr or "")
    if named:
        return named
    if errors:
        return "api_error"
    return "unknown"


# ------------------------------------------------------------------------------------------
# Trajectory
# ------------------------------------------------------------------------------------------
def _iso(ms) -> str | None:
    if not isinstance(ms, (int, float)) or isinstance(ms, bool):
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _metrics(tokens) -> dict | None:
    if not isinstance(tokens, dict) or not isinstance(tokens.get("input"), int):
        return None
    cache = tokens.get("cache") if isinstance(tokens.get("cache"), dict) else {}
    return {"prompt_tokens": tokens["input"] + int(cache.get("read") or 0),
            "completion_tokens": int(tokens.get("output") or 0) + int(tokens.get("reasoning") or 0),
            "cached_tokens": int(cache.get("read") or 0)}


def _tool_result(state: dict) -> dict | None:
    status = state.get("status")
    if status not in ("completed", "error"):
        return None                             # pending / running: never answered
    content = state.get("output") if status == "completed" else state.get("error")
    metadata = state.get("metadata") if isinstance(state.get("metadata"), dict) else {}
    extra = {"status": status, "exit": metadata.get("exit"), "title": state.get("title"),
             "timestamp": _iso((state.get("time") or {}).get("end"))}
    return {"content": content if isinstance(content, str) else json.dumps(content), "extra": extra}


def _add_part(items: list[dict], turn: dict | None, part: dict, ts: str | None) -> dict | None:
    """Fold one assistant part into the current turn; a step-start opens a new turn. Returns the
    current turn."""
    kind = part.get("type")
    if kind == "step-start" or turn is None:
        turn = new_turn(ts)
        items.append(turn)
    if kind == "text" and not part.get("synthetic"):
        turn["text"] += str(part.get("text") or "")
    elif kind == "reasoning":
        turn["reasoning"] = "\n".join(x for x in (turn["reasoning"], str(part.get("text") or "")) if x)
    elif kind == "tool":
        state = part.get("state") if isinstance(part.get("state"), dict) else {}
        call_id = str(part.get("callID") or part.get("id"))
        add_call(turn, call_id, str(part.get("tool")), state.get("input"), ts)
        result = _tool_result(state)
        if result is not None:
            turn["results"][call_id] = result
    elif kind == "step-finish":
        turn["metrics"] = _metrics(part.get("tokens")) or turn["metrics"]
        turn["finish"] = part.get("reason")
    return turn


def _stream_items(events: list[dict], notes: dict) -> list[dict]:
    items: list[dict] = []
    turn = None
    for ev in events:
        part = ev.get("part")
        if ev.get("type") == "error" or not isinstance(part, dict):
            if ev.get("type") != "error":
                notes["unknown_stream_events"] = notes.get("unknown_stream_events", 0) + 1
            continue
        turn = _add_part(items, turn, part, _iso(ev.get("timestamp")))
    return items


def _export_items(session: dict) -> list[dict]:
    items: list[dict] = []
    for message in session.get("messages") or ():
        info, parts = message.get("info") or {}, [p for p in message.get("parts") or () if isinstance(p, dict)]
        ts = _iso((info.get("time") or {}).get("created"))
        if info.get("role") == "user":
            text = "".join(str(p.get("text") or "") for p in parts if p.get("type") == "text" and not p.get("synthetic"))
            items.append({"kind": "user", "timestamp": ts, "text": text})
            continue
        # (info.modelID is the config's alias for the model, not the id sent on the wire)
        turn = None
        for part in parts:
            turn = _add_part(items, turn, part, _iso((part.get("time") or {}).get("start")) or ts)
    return items


def build_trajectory(native_dir: Path, model: str, version: str = OpenCode.version,
                     agent_name: str = OpenCode.name) -> dict:
    """ATIF v1.7 from native_dir/logs/session-export.json (the session from opencode.db: prompt,
    every step's parts) and native_dir/stdout.txt (`--format json` events: the same assistant
    parts, and the error events; fallback for the turns)."""
    notes: dict = {}
    events = read_stdout_events(native_dir, notes)
    session_id = next((e.get("sessionID") for e in events if e.get("sessionID")), None)
    stream_notes: dict = {}
    items = _stream_items(events, stream_notes)
    sources = ["json-events"] if events else []

    export_path = native_dir / "logs" / SESSION_EXPORT
    export = {}
    if export_path.is_file():
        try:
            export = json.loads(read_text(export_path))
        except ValueError:
            notes["session_export_unreadable"] = True
    if export.get("error"):
        notes["session_export_error"] = export["error"]
    sessions = [s for s in export.get("sessions") or () if isinstance(s, dict)]
    main = [s for s in sessions if not (s.get("info") or {}).get("parent_id")]
    chosen = next((s for s in main if session_id and (s.get("info") or {}).get("id") == session_id),
                  main[-1] if main else None)
    if chosen is not None:
        export_items = _export_items(chosen)
        if sum(i["kind"] == "agent" for i in export_items) >= sum(i["kind"] == "agent" for i in items):
            items, sources = export_items, ["session-export"] + sources
            session_id = session_id or (chosen.get("info") or {}).get("id")
        else:
            notes["session_export_behind_stdout"] = True
            user = [i for i in export_items if i["kind"] == "user"][:1]
            items = user + items
            notes.update(stream_notes)
        if len(sessions) > 1:
            notes["other_sessions"] = [(s.get("info") or {}).get("id") for s in sessions if s is not chosen]
    else:
        notes.update(stream_notes)
    if not any(i["kind"] == "user" for i in items):
        notes["prompt_missing"] = True
    finishes = [i.pop("finish", None) for i in items if i["kind"] == "agent"]

    steps = steps_from_items(items)
    final = sum_metrics(steps)
    errors = _error_events(events)
    if errors:
        notes["errors"] = errors
    if finishes and finishes[-1] == "stop":
        notes["status"] = "success"
    elif errors:
        notes["status"] = "error"
    else:
        notes["truncated"] = True           # no final step: killed, crashed or cut off
    notes["sources"] = sources
    return trajectory_doc(agent={"name": agent_name, "version": version, "model_name": model}, steps=steps,
                          final=final, notes=notes, session_id=session_id,
                          note_text="opencode output ended without a final step (run killed or cut off)."
                          if notes.get("truncated") else None)
