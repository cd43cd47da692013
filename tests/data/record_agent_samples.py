"""Re-record the codex / claude-code samples in tests/data/<agent>/ from the real CLIs.

Usage (root, offline): unshare -n sh -c 'ip link set lo up; .venv/bin/python tests/data/record_agent_samples.py'

Each case runs the adapter's own host_command/env/prepare_home against the scripted model
server (one policy per case, in a fresh git workspace holding the memory file) and keeps what a
trial keeps: stdout, stderr, exit code. `errors.json` maps case -> {exit_code, expected,
stdout, stderr}; `expected` is what error_class() must return. `three_step/` is a complete run
laid out like a trial's native/ directory.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from harnesses.base import AgentPaths  # noqa: E402
from harnesses.registry import get_agent  # noqa: E402
from runner.model_server import ScriptedModelServer  # noqa: E402
from runner.policy import load_policy_file  # noqa: E402

THREE_STEP = """
turns:
  - say: Creating the first file.
    shell: echo step1 > step1.txt && ls
  - say: Two things at once.
    calls:
      - shell: cat step1.txt > agent_output.txt && echo step2 >> agent_output.txt
      - read: missing.txt
  - say: Both steps are done.
"""

# case -> (policy turns, expected error class)
ERRORS = {
    "http_429": ("  - error: 429\n", "rate_limit"),
    "http_401": ("  - error: 401\n", "auth"),
    "http_403": ("  - error: 403\n", "auth"),
    # Claude Code retries a failed stream once without streaming: a missing model stays missing.
    "http_404": ("  - error: 404\n  - error: 404\n", "model_not_found"),
    "http_500": ("  - error: 500\n", "api_error"),
    "http_503": ("  - error: 503\n", "api_error"),
    "http_529": ("  - error: 529\n", "api_error"),
    "http_400_overflow": ('  - error: 400\n    say: "prompt is too long: 250000 tokens > 200000 maximum"\n',
                          "context_overflow"),
    "http_400_other": ('  - error: 400\n    say: "messages.0: unexpected field"\n', "api_error"),
}


def run_case(agent_name: str, body: str, work: Path) -> tuple[dict, Path]:
    agent = get_agent(agent_name)
    ws, home, tmp = work / "ws", work / "home", work / "tmp"
    for d in (ws, home, tmp):
        d.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    (ws / agent.memory_file).write_text("# Project memory\nSAMPLE-MEMORY-MARKER\n")
    (work / "p.yaml").write_text("name: sample\n" + textwrap.dedent(body).lstrip("\n"))
    policy = load_policy_file(work / "p.yaml")
    with ScriptedModelServer(policy, work / "traffic.jsonl", workspace=str(ws),
                             memory_marker="SAMPLE-MEMORY-MARKER") as server:
        if agent_name == "codex":
            agent.prepare_home(home, endpoint=server.url)
        else:
            agent.prepare_home(home)
        env = agent.host_env(AgentPaths(workspace=str(ws), home=str(home), tmp=str(tmp)), server.url)
        proc = subprocess.run(agent.host_command("Make the files and report.", "stub-model"), cwd=ws, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    return {"exit_code": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}, home


def main() -> None:
    for agent_name in ("codex", "claude-code"):
        out = ROOT / "tests" / "data" / agent_name.replace("-", "_")
        agent = get_agent(agent_name)
        with tempfile.TemporaryDirectory(prefix="rec-") as tmpdir:
            record, home = run_case(agent_name, THREE_STEP, Path(tmpdir) / "three")
            sample = out / "three_step"
            shutil.rmtree(sample, ignore_errors=True)
            (sample / "logs").mkdir(parents=True)
            (sample / "stdout.txt").write_text(record["stdout"])
            (sample / "stderr.txt").write_text(record["stderr"])
            (sample / "exit_code").write_text(f"{record['exit_code']}\n")
            for log in agent.native_logs(home, Path(tmpdir) / "three" / "tmp"):
                shutil.copy2(log, sample / "logs" / log.name)
            errors = {}
            for case, (turns, expected) in ERRORS.items():
                body = "turns:\n" + turns + "  - say: This reply is never reached.\n"
                record, _ = run_case(agent_name, body, Path(tmpdir) / case)
                errors[case] = {"expected": expected, **record}
            (out / "errors.json").write_text(json.dumps(errors, indent=1) + "\n")
        print(f"{agent_name}: recorded into {out}")


if __name__ == "__main__":
    main()
