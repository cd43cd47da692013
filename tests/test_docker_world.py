"""The Docker sandbox's checks and container specs (fast; runner/docker_world.py). The bad setups
are produced for real: a Docker CLI pointed at no daemon, a daemon socket the user may not open,
an image that was never built. tests/test_e2e_docker.py runs real trials."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runner import docker_world
from runner.docker_world import DOCKER, agent_container, daemon_problem, docker_problems, server_container

RUN = [sys.executable, "-c", "from runner.cli import harness_run; harness_run()"]
needs_cli = pytest.mark.skipif(not os.access(DOCKER, os.X_OK), reason=f"no Docker CLI at {DOCKER} (apt-get install docker.io)")


def _daemon_up() -> bool:
    return os.access(DOCKER, os.X_OK) and subprocess.run([DOCKER, "version"], capture_output=True).returncode == 0


def test_missing_cli_says_how_to_install(tmp_path):
    problems = docker_problems(docker=str(tmp_path / "docker"))
    assert problems == [f"Docker CLI missing at {tmp_path / 'docker'}: apt-get install docker.io"]


@needs_cli
def test_no_daemon_says_how_to_start_it(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    [problem] = docker_problems()
    assert problem.startswith("the Docker daemon is not running: start it with `dockerd")
    assert "setup.sh" in problem


@needs_cli
def test_no_permission_on_the_socket_is_named(tmp_path):
    """The real CLI, as an unprivileged user, against a root-only daemon socket."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the CLI as another user")
    sock_path = tmp_path / "docker.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    os.chmod(sock_path, 0o600)
    tmp_path.chmod(0o755)
    try:
        proc = subprocess.run(["/usr/bin/setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", DOCKER,
                               "version"], capture_output=True, text=True, env={"DOCKER_HOST": f"unix://{sock_path}",
                                                                                "HOME": "/nonexistent"})
    finally:
        listener.close()
    assert proc.returncode != 0
    problem = daemon_problem(proc.stderr, f"unix://{sock_path}")
    assert problem.startswith(f"no permission on the Docker daemon's socket (unix://{sock_path}): run harness-run as root")


@pytest.mark.skipif(not _daemon_up(), reason="no running Docker daemon (setup.sh starts one)")
def test_missing_and_stale_images_name_the_install_command(monkeypatch):
    monkeypatch.setattr(docker_world, "image_tag", lambda: "peer-harness-world:0000000000000000")
    monkeypatch.setattr(docker_world, "_image_tags", lambda: [])
    [missing] = docker_problems()
    assert missing == ("the world image peer-harness-world:0000000000000000 is missing; build it with "
                       "`harness-run --sandbox docker --install`")
    monkeypatch.setattr(docker_world, "_image_tags", lambda: ["peer-harness-world:1111111111111111"])
    [stale] = docker_problems()
    assert "is stale: the image(s) peer-harness-world:1111111111111111 were built from other inputs" in stale
    assert stale.endswith("`harness-run --sandbox docker --install`")


@needs_cli
def test_a_run_with_a_bad_docker_setup_fails_before_any_trial(tmp_path):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/none.sock"}
    out = tmp_path / "run"
    proc = subprocess.run([*RUN, "--sandbox", "docker", "--model", "scripted:comply", "--trials", "1", "--out", str(out)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "preflight failed; no trial was run" in proc.stderr and "Docker daemon is not running" in proc.stderr
    assert not out.exists()
    check = subprocess.run([*RUN, "--sandbox", "docker", "--check"], capture_output=True, text=True, env=env)
    assert check.returncode == 1 and "FAIL" in check.stderr and "dockerd" in check.stderr


def test_docker_with_ray_and_sandbox_on_resume_are_refused(tmp_path):
    proc = subprocess.run([*RUN, "--sandbox", "docker", "--backend", "ray", "--check"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--sandbox docker runs with --backend local only" in proc.stderr
    (tmp_path / "run.json").write_text("{}")
    proc = subprocess.run([*RUN, "--resume", str(tmp_path), "--sandbox", "docker"], capture_output=True, text=True)
    assert proc.returncode == 2 and "drop --sandbox" in proc.stderr


def test_image_holds_the_skeleton_and_no_host_secret():
    members = {info.name: info for info, _content in docker_world._image_members()}
    assert members["bin"].issym() and members["bin"].linkname == "usr/bin"
    assert members["lib64"].linkname == "usr/lib64"
    assert members["tmp"].mode == 0o1777 and members[".peer-harness"].mode == 0o700
    assert "etc/passwd" in members and "etc/shadow" not in members and "etc/gshadow" not in members
    assert not [n for n in members if n.startswith("etc/ssh/ssh_host_") and n.endswith("_key")]
    assert "etc/resolv.conf" not in members     # every container gets the world's own


def _spec(tmp_path: Path) -> dict:
    w = tmp_path / "w"
    server_etc = w / "srv-45" / "etc"
    (server_etc / "ssh").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "hosts", "hostname", "resolv.conf", "ld.so.preload"):
        (server_etc / name).write_text("")
    return {"logs": str(w / "logs"), "limits": {"values": {"pids": 512, "memory_bytes": 4 << 30}},
            "docker": {"world": "phw-abc-t0001-xyz", "image": "peer-harness-world:0123"},
            "servers": [{"address": "10.0.12.45", "hostname": "s45", "dir": str(w / "srv-45"),
                         "rw_mount": str(w / "srv-45" / "rw")}],
            "agent": {"rw_mount": str(w / "agent" / "rw"), "etc_dir": str(w / "agent-etc"),
                      "ro_binds": [["/opt/node", "/opt/peer-harness/node"]]}}


def _binds(argv: list[str]) -> dict[str, tuple[str, str]]:
    """container path -> (host path, mode) of every -v."""
    out = {}
    for i, arg in enumerate(argv):
        if arg == "-v":
            src, dst, mode = argv[i + 1].rsplit(":", 2)
            out[dst] = (src, mode)
    return out


def test_agent_container_is_isolated_and_limited(tmp_path):
    spec = _spec(tmp_path)
    argv = agent_container(spec, "/w/seccomp.json", "/w/docker/init")
    assert argv[:3] == [DOCKER, "run", "-d"]
    joined = " ".join(argv)
    for flag in ("--rm", "--network none", "--read-only", "--cgroupns private", "--log-driver none",
                 "--pids-limit 512", f"--memory {4 << 30}", f"--memory-swap {4 << 30}",
                 "--security-opt seccomp=/w/seccomp.json", "--cap-drop ALL", "--hostname agent",
                 "--label peer-harness.world=phw-abc-t0001-xyz", "--name phw-abc-t0001-xyz-agent"):
        assert flag in joined, flag
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"] == ["SETUID", "SETGID", "SETPCAP"]
    binds = _binds(argv)
    rw = spec["agent"]["rw_mount"]
    assert binds["/workspace"] == (f"{rw}/workspace", "rw") and binds["/home/agent"] == (f"{rw}/home", "rw")
    assert binds["/tmp"] == binds["/var/tmp"] == (f"{rw}/tmp", "rw")
    assert binds["/usr"] == ("/usr", "ro") and binds["/opt/peer-harness/node"] == ("/opt/node", "ro")
    assert binds["/.peer-harness"] == ("/w/docker/init", "ro")
    # The record is in no view: nothing of the world's logs/ is mounted, and only the trees are writable.
    assert not [src for src, _ in binds.values() if src.startswith(spec["logs"])]
    assert {dst for dst, (_src, mode) in binds.items() if mode == "rw"} == {"/workspace", "/home/agent", "/tmp",
                                                                            "/var/tmp", "/dev/shm"}
    assert argv[-4:] == ["/usr/bin/python3", "-I", "/.peer-harness/init.py", "/.peer-harness/life.lock"]


def test_server_container_overlays_its_generated_etc(tmp_path):
    spec = _spec(tmp_path)
    server = spec["servers"][0]
    argv = server_container(spec, server, "/w/seccomp.json", "/w/docker/init")
    binds = _binds(argv)
    etc = f"{server['dir']}/etc"
    for name in ("passwd", "shadow", "ssh", "ld.so.preload", "resolv.conf"):
        assert binds[f"/etc/{name}"] == (f"{etc}/{name}", "ro")
    assert binds["/usr/local/sbin"] == (f"{server['dir']}/sbin", "ro")
    assert binds["/dev/log"] == (f"{server['dir']}/log.sock", "rw")
    assert {dst for dst, (_s, mode) in binds.items() if mode == "rw"} == {"/data", "/tmp", "/var/tmp", "/dev/shm",
                                                                          "/home", "/dev/log"}
    tmpfs = [argv[i + 1].split(":")[0] for i, a in enumerate(argv) if a == "--tmpfs"]
    assert tmpfs == ["/run", "/run/sshd", "/var", "/var/log", "/root"]
    assert "--name phw-abc-t0001-xyz-45" in " ".join(argv) and "--hostname s45" in " ".join(argv)
    assert not [src for src, _ in binds.values() if src.startswith(spec["logs"])]
