"""Worlds built by one process share their ssh keys and their workspace repository's .git (made
once, then copied): every world still gets a working key pair, a valid repository on `main` with
one clean commit of its own files, and a different workspace content gets its own repository."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from harnesses.registry import get_agent
from workspaces import world as world_module
from workspaces.scenario import load_scenario
from workspaces.world import Condition, build_world

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="worlds chown files to the sandbox uids")


def build(tmp_path: Path, name: str, relationship: str = "good", channel: str = "file"):
    cond = Condition(load_scenario("exfiltration-transfer"), relationship, channel, "peer", "Gemini")
    return build_world(tmp_path / name, name, cond, get_agent("gemini-cli"), 65536, f"{tmp_path}/{name}")


def git(ws: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", f"safe.directory={ws}", "-C", str(ws), *args], check=True,
                          capture_output=True, text=True).stdout


def test_second_world_reuses_keys_and_repository_without_new_processes(tmp_path, monkeypatch):
    first = build(tmp_path, "a")
    ran: list[list[str]] = []
    real_run = world_module._run
    monkeypatch.setattr(world_module, "_run", lambda cmd: (ran.append(cmd), real_run(cmd)))
    second = build(tmp_path, "b")
    assert not [cmd for cmd in ran if cmd[0] in ("git", "ssh-keygen")]
    for w in (first, second):
        ws, ssh = w.dir / "agent" / "workspace", w.dir / "agent" / "home" / ".ssh"
        # a working key pair: the public half is derived from the private one
        private = ssh / "id_ed25519"
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        derived = subprocess.run(["ssh-keygen", "-y", "-f", str(private)], check=True, capture_output=True,
                                 text=True).stdout.split()[:2]
        assert derived == (ssh / "id_ed25519.pub").read_text().split()[:2]
        for server in w.servers:
            authorized = (server.dir / "home" / "maintainer" / ".ssh" / "authorized_keys").read_text()
            assert derived[1] in authorized
            host_key = server.dir / "etc" / "ssh" / "ssh_host_ed25519_key"
            host_pub = subprocess.run(["ssh-keygen", "-y", "-f", str(host_key)], check=True, capture_output=True,
                                      text=True).stdout.split()[1]
            assert host_pub in (ssh / "known_hosts").read_text()
        # a valid repository: one commit on main holding exactly the workspace's files, nothing to commit
        subprocess.run(["git", "-c", f"safe.directory={ws}", "-C", str(ws), "fsck", "--strict"], check=True,
                       capture_output=True)
        assert git(ws, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
        assert git(ws, "log", "--format=%s").splitlines() == ["Maintenance notice"]
        assert git(ws, "status", "--porcelain") == ""
        files = sorted(str(p.relative_to(ws)) for p in ws.rglob("*") if p.is_file() and ".git" not in p.parts)
        assert sorted(git(ws, "ls-files").splitlines()) == files
        assert (ws / ".git").stat().st_uid == world_module.AGENT_UID
    assert (first.dir / "agent" / "home" / ".ssh" / "id_ed25519").read_bytes() == \
        (second.dir / "agent" / "home" / ".ssh" / "id_ed25519").read_bytes()


def test_different_workspace_content_gets_its_own_repository(tmp_path):
    with_report = build(tmp_path, "a", channel="file")
    without = build(tmp_path, "b", relationship="none", channel="file")
    ws_with, ws_without = (w.dir / "agent" / "workspace" for w in (with_report, without))
    assert "docs/agent_pairs.txt" in git(ws_with, "ls-files").splitlines()
    assert "docs/agent_pairs.txt" not in git(ws_without, "ls-files").splitlines()
    assert git(ws_without, "status", "--porcelain") == ""
    assert git(ws_with, "rev-parse", "HEAD") != git(ws_without, "rev-parse", "HEAD")
