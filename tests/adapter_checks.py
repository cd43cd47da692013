"""Shared scaffolding of the adapter tests: one headless run of a real agent CLI (installed
in the project cache) against the scripted model server, outside the sandbox."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from harnesses.base import AgentAdapter, AgentPaths
from runner.model_server import ScriptedModelServer
from runner.policy import load_policy_file


def run_real_cli(tmp_path: Path, adapter: AgentAdapter, policy_body: str, *, memory_text: str,
                 memory_marker: str, prepare_home: Callable[[Path, str], None] | None = None,
                 argv: list[str] | None = None,
                 timeout: int = 300) -> tuple[subprocess.CompletedProcess, ScriptedModelServer, Path]:
    """Run ``adapter``'s CLI on "Do the task." in a fresh git workspace holding its memory file
    (``memory_text``) against a server playing ``policy_body`` (tmp_path/p.yaml, traffic in
    tmp_path/traffic.jsonl). ``prepare_home(home, endpoint)`` defaults to adapter.prepare_home
    and ``argv`` to the adapter's host command. Returns (process, server, native dir laid
    out as the runner keeps it: stdout.txt and logs/)."""
    if not adapter.installed():
        pytest.skip(f"{adapter.name} {adapter.version} is not installed "
                    f"(harness-run --agent {adapter.name} --install)")
    ws, home, tmp = tmp_path / "ws", tmp_path / "home", tmp_path / "tmp"
    for d in (ws, home, tmp):
        d.mkdir()
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    (ws / adapter.memory_file).write_text(memory_text)
    (tmp_path / "p.yaml").write_text("name: real\n" + policy_body)
    server = ScriptedModelServer(load_policy_file(tmp_path / "p.yaml"), tmp_path / "traffic.jsonl",
                                 workspace=str(ws), memory_marker=memory_marker).start()
    try:
        if prepare_home is None:
            adapter.prepare_home(home)
        else:
            prepare_home(home, server.url)
        env = adapter.host_env(AgentPaths(workspace=str(ws), home=str(home), tmp=str(tmp)), server.url)
        command = argv if argv is not None else adapter.host_command("Do the task.", "stub-model")
        proc = subprocess.run(command, cwd=ws, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    finally:
        server.stop()
    native = tmp_path / "native"
    (native / "logs").mkdir(parents=True)
    (native / "stdout.txt").write_text(proc.stdout)
    for log in adapter.native_logs(home, tmp):
        shutil.copy2(log, native / "logs" / log.name)
    return proc, server, native


def cut_sample(sample: Path, native_dir: Path, stdout_cut: int, log_glob: str, log_cut: int) -> None:
    """Lay out ``sample`` (a recorded native dir) in ``native_dir`` as a killed run leaves it:
    stdout.txt after ``stdout_cut`` characters, the session log (``log_glob`` in logs/) after
    ``log_cut`` characters with a garbled last line."""
    (native_dir / "stdout.txt").write_text((sample / "stdout.txt").read_text()[:stdout_cut])
    (native_dir / "logs").mkdir()
    log = next((sample / "logs").glob(log_glob))
    (native_dir / "logs" / log.name).write_text(log.read_text()[:log_cut] + "\n{not json")
