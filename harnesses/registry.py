"""The known agent adapters. Adding an agent CLI = one module in harnesses/ + one line in AGENTS."""
from __future__ import annotations

# Where the sandbox bind-mounts (read-only) the pinned Node runtime directory
# (harnesses.base.node_bin_dir().parent) and the adapter's npm prefix (Adapter.prefix()).
# Adapters build their argv against these paths; the sandbox builder mounts them.
SANDBOX_NODE_DIR = "/opt/peer-harness/node"
SANDBOX_AGENT_DIR = "/opt/peer-harness/agent"
# The model endpoint as the agent sees it (runner.sandbox bridges 127.0.0.1:MODEL_PORT to the
# host's model server). For CLIs that take the endpoint from a config file written before launch.
SANDBOX_MODEL_ENDPOINT = "http://127.0.0.1:8000"

from harnesses.base import AgentAdapter  # noqa: E402
from harnesses.claude_code import ClaudeCode  # noqa: E402
from harnesses.codex import Codex  # noqa: E402
from harnesses.gemini_cli import GeminiCli  # noqa: E402
from harnesses.opencode import OpenCode  # noqa: E402
from harnesses.qwen_code import QwenCode  # noqa: E402

AGENTS: dict[str, type[AgentAdapter]] = {
    "gemini-cli": GeminiCli,
    "codex": Codex,
    "claude-code": ClaudeCode,
    "opencode": OpenCode,
    "qwen-code": QwenCode,
}


class UnknownAgent(KeyError):
    """Asked for an agent name that has no adapter."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown agent"


def get_agent(name: str) -> AgentAdapter:
    """A fresh adapter instance for `name`; raises UnknownAgent listing the known names."""
    try:
        cls = AGENTS[name]
    except KeyError:
        known = ", ".join(sorted(AGENTS)) or "(none)"
        raise UnknownAgent(f"unknown agent {name!r}; known agents: {known}") from None
    return cls()
