"""Malformed inputs: each bad invocation of `harness-run` stops before any trial with a clear
one-paragraph error naming the file (and line) or the fix, exits non-zero, and leaves existing
results byte for byte as they were (an existing run directory is hashed before and after).

| #  | input                                                        | expected error names                      |
|----|--------------------------------------------------------------|-------------------------------------------|
| 1  | policy file with an unknown key                              | policy file and line, the key             |
| 2  | policy file that is not YAML                                 | policy file and line                      |
| 3  | policy file that does not exist                              | the path                                  |
| 4  | policy turn with two actions (shell + read)                  | policy file and line                      |
| 5  | mixture naming a policy that does not exist                  | mixture file, the missing policy          |
| 6  | grid file with an unknown key                                | grid file and line, the key               |
| 7  | grid file with a wrong value (relationship `great`)          | grid file and line, the allowed values    |
| 8  | grid file that is not YAML                                   | grid file and line                        |
| 9  | grid file that does not exist                                | the path                                  |
| 10 | grid naming an unknown scenario                              | grid file and line, the known scenarios   |
| 11 | scenario file with an unknown behaviour                      | scenario file, the known behaviours       |
| 12 | scenario file that is not YAML                               | scenario file and line                    |
| 13 | unknown scenario name                                        | the known scenarios                       |
| 14 | flag: unknown option                                         | the option                                |
| 15 | flag: --relationship great                                   | the allowed values                        |
| 16 | flag: --trials 0                                             | the range                                 |
| 17 | flag: --relationship none --subject peer                     | the fix (--subject self)                  |
| 18 | flag: --address without --backend ray                        | the fix                                   |
| 19 | flag: --allow-version-mismatch without --resume              | the fix                                   |
| 20 | --out an existing run directory                              | the fix (--resume)                        |
| 21 | --resume with condition flags                                | the flags to drop                         |
| 22 | --resume of a directory that is not a run                    | no run.json                               |
| 23 | --resume of a run whose run.json is corrupt                  | run.json and the problem                  |
| 24 | unknown agent                                                | the known agents                          |
| 25 | missing agent binary (empty agent cache), --check            | the fix (--install)                       |
| 26 | dead model endpoint (openai-compatible at 127.0.0.1:1)       | the endpoint                              |
| 27 | full disk for the run directory (a 1 MiB tmpfs)              | the free space and the directory          |
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.synthetic_trials import write_trial

RUN = [sys.executable, "-c", "from runner.cli import harness_run; harness_run()"]
PROJECT = Path(__file__).resolve().parent.parent


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def harness(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=120, cwd=PROJECT,
                          env={**os.environ, **(env or {})})


def assert_clear_error(proc: subprocess.CompletedProcess, *must: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    for text in must:
        assert text in out, (text, out)
    paragraph = [line for line in out.strip().splitlines() if line.strip()]
    assert len(paragraph) <= 8, out          # one paragraph, not a dump


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory) -> Path:
    """A finished run's files (results of earlier work) that no bad invocation may touch."""
    run = tmp_path_factory.mktemp("existing") / "run"
    for tid in ("t0000", "t0001"):
        write_trial(run, tid, verdicts={"exfiltration": tid == "t0001"})
    (run / "run.json").write_text('{"run_id": "run"}')
    return run


@pytest.fixture(autouse=True)
def untouched(existing_run):
    before = tree_hash(existing_run)
    yield
    assert tree_hash(existing_run) == before, "existing results were changed"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


POLICY_OK = "name: ok\nturns:\n  - say: hi\n"


@pytest.mark.parametrize("name,text,must", [
    ("unknown-key.yaml", "name: p\nturns:\n  - say: hi\n    frobnicate: 1\n", ["unknown-key.yaml:4", "frobnicate"]),
    ("not-yaml.yaml", "name: p\nturns: [\n  - say: : :\n", ["not-yaml.yaml:"]),
    ("two-actions.yaml", "name: p\nturns:\n  - say: hi\n  - shell: ls\n    read: x\n", ["two-actions.yaml:4"]),
    ("mixture.yaml", "name: m\nmixture:\n  - {policy: no-such-policy-xyz, weight: 1}\n",
     ["mixture.yaml", "no-such-policy-xyz"]),
])
def test_bad_policy_files(tmp_path, name, text, must):
    policy = write(tmp_path, name, text)
    out = tmp_path / "run"
    assert_clear_error(harness("--model", f"scripted:{policy}", "--out", str(out)), *must)
    assert not out.exists()


def test_missing_policy_file(tmp_path):
    assert_clear_error(harness("--model", f"scripted:{tmp_path}/absent.yaml", "--out", str(tmp_path / "run")),
                       f"{tmp_path}/absent.yaml")


@pytest.mark.parametrize("name,text,must", [
    ("unknown-key.yaml", "name: g\nagents: [gemini-cli]\nscenarios: [exfiltration-deletion]\ncolour: red\n",
     ["unknown-key.yaml:4", "colour"]),
    ("bad-value.yaml", "name: g\nagents: [gemini-cli]\nscenarios: [exfiltration-deletion]\nrelationships: [great]\n",
     ["bad-value.yaml:4", "great"]),
    ("not-yaml.yaml", "name: g\nagents: [gemini-cli\n", ["not-yaml.yaml:"]),
    ("unknown-scenario.yaml", "name: g\nagents: [gemini-cli]\nscenarios: [no-such-scenario]\n",
     ["unknown-scenario.yaml:3", "exfiltration-deletion"]),
])
def test_bad_grid_files(tmp_path, name, text, must):
    grid = write(tmp_path, name, text)
    out = tmp_path / "run"
    assert_clear_error(harness("--grid", str(grid), "--out", str(out)), *must)
    assert not out.exists()


def test_missing_grid_file(tmp_path):
    assert_clear_error(harness("--grid", str(tmp_path / "absent.yaml"), "--out", str(tmp_path / "run")),
                       "absent.yaml")


def test_bad_scenario_files(tmp_path):
    good = (PROJECT / "fixtures" / "scenarios" / "exfiltration-deletion.yaml").read_text()
    bad = write(tmp_path, "bad-behaviour.yaml", good.replace("deletion_done,", "deletion_dune,"))
    assert_clear_error(harness("--scenario", str(bad), "--out", str(tmp_path / "a")),
                       "bad-behaviour.yaml", "deletion_dune", "known:")
    broken = write(tmp_path, "broken.yaml", "name: x\nservers: [\n")
    assert_clear_error(harness("--scenario", str(broken), "--out", str(tmp_path / "b")), "broken.yaml", "line")
    assert_clear_error(harness("--scenario", "no-such-scenario", "--out", str(tmp_path / "c")),
                       "no-such-scenario", "exfiltration-deletion")


@pytest.mark.parametrize("args,must", [
    (["--frobnicate"], ["--frobnicate"]),
    (["--relationship", "great"], ["great", "good"]),
    (["--trials", "0"], ["--trials", "0"]),
    (["--relationship", "none", "--subject", "peer"], ["--subject self"]),
    (["--address", "auto"], ["--backend ray"]),
    (["--allow-version-mismatch"], ["--resume"]),
    (["--agent", "no-such-agent"], ["no-such-agent", "gemini-cli"]),
])
def test_bad_flags(tmp_path, args, must):
    assert_clear_error(harness(*args, "--out", str(tmp_path / "run")), *must)
    assert not (tmp_path / "run").exists()


def test_existing_run_dir_is_refused(existing_run):
    assert_clear_error(harness("--out", str(existing_run)), str(existing_run), "--resume")


def test_resume_mistakes(tmp_path, existing_run):
    assert_clear_error(harness("--resume", str(existing_run), "--seed", "3"), "--seed")
    assert_clear_error(harness("--resume", str(tmp_path)), "no run.json")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(existing_run, corrupt)
    (corrupt / "run.json").write_text('{"run_id": "corrupt", "cells": [')
    before = tree_hash(corrupt)
    assert_clear_error(harness("--resume", str(corrupt)), f"{corrupt}/run.json")
    assert tree_hash(corrupt) == before
    # existing_run's own run.json lacks the plan: refused with the reason, nothing changed
    assert_clear_error(harness("--resume", str(existing_run)), f"{existing_run}/run.json")


def test_missing_agent_binary(tmp_path):
    proc = harness("--check", "--agent", "gemini-cli", env={"PEER_HARNESS_CACHE": str(tmp_path / "empty-cache")})
    assert_clear_error(proc, "gemini-cli", "--install")


def test_dead_model_endpoint(tmp_path):
    out = tmp_path / "run"
    proc = harness("--model", "openai-compatible:http://127.0.0.1:1/v1#m", "--out", str(out), "--trials", "1")
    assert_clear_error(proc, "127.0.0.1:1", "no trial was run")
    assert not out.exists()


def test_full_disk_for_the_run_directory(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        (small / "filler").write_bytes(b"\0" * (900 << 10))
        out = small / "run"
        proc = harness("--model", "scripted:comply", "--out", str(out), "--trials", "1")
        assert_clear_error(proc, "MiB free", str(small))
        assert not out.exists()
    finally:
        subprocess.run(["umount", str(small)], check=True)
