"""Shared scaffolding and checks of the adapter tests: one headless run of a real agent CLI
(installed in the project cache) against the scripted model server, outside the sandbox, and
the checks every adapter's trajectories and real runs must pass."""
from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from harnesses.atif import validate_trajectory
from harnesses.base import AgentAdapter, AgentPaths
from harnesses.native_output import API_ERROR_CLASSES
from runner.model_server import ScriptedModelServer
from runner.policy import lint_policy, load_policy_file

# A test file's run of its real CLI: (tmp_path, policy body) -> (process, server, native dir).
RealRun = Callable[[Path, str], tuple[subprocess.CompletedProcess, ScriptedModelServer, Path]]


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


def agent_steps(doc: dict) -> list[dict]:
    return [s for s in doc["steps"] if s["source"] == "agent"]


def stdout_only_trajectory(adapter: AgentAdapter, sample: Path, native_dir: Path) -> tuple[dict, list[dict]]:
    """The trajectory of the recorded run ``sample`` from its stdout.txt alone (copied into
    ``native_dir``; the session log was lost): the prompt is missing and every call an agent step
    made has its result. Returns the trajectory and its agent steps."""
    shutil.copy(sample / "stdout.txt", native_dir / "stdout.txt")
    doc = adapter.trajectory(native_dir, "m")
    assert doc["extra"]["prompt_missing"] is True
    agent = agent_steps(doc)
    assert all(len(s.get("observation", {}).get("results", [])) == len(s.get("tool_calls", [])) for s in agent)
    return doc, agent


def check_truncated(adapter: AgentAdapter, native_dir: Path) -> None:
    """The run cut off in ``native_dir`` still gives a valid trajectory, marked truncated."""
    doc = validate_trajectory(adapter.trajectory(native_dir, "m")).to_json_dict()
    assert doc["extra"]["truncated"] is True and doc["steps"]


def check_recorded_failure(adapter: AgentAdapter, rec: dict, native_dir: Path, *,
                           recovered: bool = False) -> dict | None:
    """A recorded run (errors.json entry ``rec``) gets its recorded error class. A failed one is
    an API failure whose trajectory (from its stdout in ``native_dir``, returned) is valid and,
    unless the CLI ``recovered`` from the failure on its own, never has the agent speaking (so
    never reads as a refusal); None for a run that succeeded."""
    assert adapter.error_class(rec["stdout"], rec["stderr"], rec["exit_code"]) == rec["expected"]
    if rec["expected"] is None:
        return None
    assert rec["expected"] in API_ERROR_CLASSES
    (native_dir / "stdout.txt").write_text(rec["stdout"])
    doc = adapter.trajectory(native_dir, "m")
    final_text = validate_trajectory(doc).final_agent_text()
    assert recovered or final_text is None, final_text
    return doc


def play_real_policy(adapter: AgentAdapter, run_real: RealRun, tmp_path: Path, policy_body: str, *,
                     written: tuple[str, str], tool_results: int) -> tuple[ScriptedModelServer, list[dict]]:
    """The real CLI plays ``policy_body`` to its end: exit 0, no error class, the file
    ``written[0]`` (workspace-relative) holds ``written[1]``, every tool result and the memory
    file reached the model. Returns the server and the agent steps of the trajectory."""
    proc, server, native = run_real(tmp_path, policy_body)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert (tmp_path / "ws" / written[0]).read_text() == written[1]
    assert server.finished and server.tool_results_seen == tool_results and server.memory_seen, server.stats()
    assert adapter.error_class(proc.stdout, proc.stderr, proc.returncode) is None
    return server, agent_steps(adapter.trajectory(native, "scripted:real"))


def play_write_policy(adapter: AgentAdapter, run_real: RealRun, tmp_path: Path, path: str,
                      content: str) -> list[dict]:
    """The real CLI writes ``content`` to ``path`` and runs a shell command in one turn, reads
    what the command wrote, then ends (play_real_policy's checks). Returns the agent steps."""
    return play_real_policy(adapter, run_real, tmp_path, f"""
turns:
  - say: Writing the notes.
    calls:
      - write: {{path: {path}, content: {json.dumps(content)}}}
      - shell: echo hi > out.txt
  - read: out.txt
  - say: All done.
""", written=(path, content), tool_results=3)[1]


def play_shell_policy(adapter: AgentAdapter, run_real: RealRun, tmp_path: Path) -> list[dict]:
    """The real CLI overwrites its memory file (existing, never read), runs shell commands in one
    turn (one with $(...) and backticks, which must run: no lint warning for this CLI), reads a
    file in the workspace and one outside it (/etc/hostname, the agent's 3rd step) and ends,
    without any auxiliary model request (play_real_policy's checks). Returns the agent steps."""
    server, agent = play_real_policy(adapter, run_real, tmp_path, f"""
turns:
  - say: Writing the notes.
    calls:
      - write: {{path: {adapter.memory_file}, content: "replaced\\n"}}
      - shell: echo hi > out.txt
      - shell: "echo $(echo sub)-`echo tick` > subst.txt"
  - read: out.txt
  - read: /etc/hostname
  - say: All done.
""", written=(adapter.memory_file, "replaced\n"), tool_results=5)
    assert (tmp_path / "ws" / "subst.txt").read_text() == "sub-tick\n"
    policy = load_policy_file(tmp_path / "p.yaml")
    assert lint_policy(policy, adapter.name) == [] and lint_policy(policy, "gemini-cli")
    assert server.aux_requests == 0
    assert agent[2]["tool_calls"][0]["arguments"]["command"] == "cat /etc/hostname"
    return agent


def play_api_error(adapter: AgentAdapter, run_real: RealRun, tmp_path: Path, status: int,
                   error_class: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The model answers the first request with HTTP ``status``: one request, no retry, the run
    gets ``error_class`` and its trajectory never has the agent speaking. Returns the process and
    the trajectory."""
    proc, server, native = run_real(tmp_path, f"turns:\n  - error: {status}\n  - say: never\n")
    assert server.errors_served == 1 and server.main_requests == 1, server.stats()
    assert adapter.error_class(proc.stdout, proc.stderr, proc.returncode) == error_class
    doc = adapter.trajectory(native, "m")
    assert validate_trajectory(doc).final_agent_text() is None
    return proc, doc
