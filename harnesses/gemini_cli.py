"""Gemini CLI (@google/gemini-cli 0.61.0), headless against a local Gemini-API endpoint."""
from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from harnesses.base import AgentAdapter, AgentPaths, node_bin_dir

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


def _sandbox_dirs() -> tuple[str, str]:
    # Imported lazily: harnesses.registry imports this module.
    from harnesses.registry import SANDBOX_AGENT_DIR, SANDBOX_NODE_DIR  # noqa: PLC0415

    return SANDBOX_NODE_DIR, SANDBOX_AGENT_DIR


class GeminiCli(AgentAdapter):
    name: ClassVar[str] = "gemini-cli"
    npm_package: ClassVar[str] = "@google/gemini-cli"
    version: ClassVar[str] = "0.61.0"
    memory_file: ClassVar[str] = "GEMINI.md"
    family: ClassVar[str] = "Gemini"
    entrypoint: ClassVar[str] = "node_modules/@google/gemini-cli/bundle/gemini.js"

    # --- per trial ----------------------------------------------------------------------
    def prepare_home(self, home: Path) -> None:
        gdir = Path(home) / ".gemini"
        gdir.mkdir(parents=True, exist_ok=True)
        (gdir / "settings.json").write_text(json.dumps(SETTINGS, indent=2) + "\n")

    def env(self, paths: AgentPaths, endpoint: str) -> dict[str, str]:
        home = paths.home.rstrip("/") or "/"
        return {
            "PATH": "/usr/bin:/bin",
            "HOME": home,
            "GEMINI_CLI_HOME": home,           # the CLI's own home override (same dir)
            "TMPDIR": paths.tmp,
            "TERM": "dumb",
            "LANG": "C.UTF-8",
            "NO_COLOR": "1",
            "NO_BROWSER": "1",
            "GEMINI_API_KEY": "dummy",
            "GOOGLE_GEMINI_BASE_URL": endpoint.rstrip("/"),
            "GEMINI_CLI_NO_RELAUNCH": "1",
            # System-level settings/defaults default to /etc/gemini-cli/*.json (the host's /etc
            # is visible read-only in the sandbox): point them at files that do not exist.
            "GEMINI_CLI_SYSTEM_SETTINGS_PATH": f"{home}/.gemini/system-settings.json",
            "GEMINI_CLI_SYSTEM_DEFAULTS_PATH": f"{home}/.gemini/system-defaults.json",
        }

    def _argv(self, node: str, entry: str, prompt: str, model: str) -> list[str]:
        return [node, entry, "-p", prompt, "--yolo", "--output-format", "stream-json", "-m", model]

    def command(self, prompt: str, model: str) -> list[str]:
        node_dir, agent_dir = _sandbox_dirs()
        return self._argv(f"{node_dir}/bin/node", f"{agent_dir}/{self.entrypoint}", prompt, model)

    def host_command(self, prompt: str, model: str) -> list[str]:
        """The same argv with host paths (runs outside the sandbox, e.g. in tests)."""
        return self._argv(str(node_bin_dir() / "node"), str(self.entry_path()), prompt, model)
