#!/usr/bin/env bash
# One-time setup on Debian/Ubuntu (run as root): system packages, a Python venv with the project,
# the pinned Node runtime (PyPI) and every pinned agent CLI (npm), then the preflight check.
set -euo pipefail
cd "$(dirname "$0")"

# chromium: headless browser for the HTML report test (tests/test_report_chromium.py)
PKGS=(bubblewrap openssh-server openssh-client strace iproute2 util-linux bsdutils git gcc libc6-dev python3 python3-venv rsync chromium
      zip xxd zstd xz-utils openssl   # tools the validation suite's agents use on the servers
      docker.io                       # --sandbox docker (dockerd, runc)
      bpftrace)                       # for bench/cpu_by_component.py
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing Debian packages: ${missing[*]}"
  # openssh-server must not leave its system service running: the worlds start their own sshd.
  guard=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; guard=1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$guard" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
if pgrep -x sshd >/dev/null 2>&1 && [ -e /etc/init.d/ssh ]; then
  /etc/init.d/ssh stop >/dev/null 2>&1 || true
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
# Bytecode for the project's own modules: every trial starts Python processes (world_init and the
# modules it imports: limits, the filesystem watcher) and PYTHONDONTWRITEBYTECODE=1, where set,
# stops them writing it themselves (they still read it; a changed source file is recompiled in
# memory, never a stale .pyc used).
.venv/bin/python -m compileall -q runner analysis harnesses workspaces bench >/dev/null
# Every registered agent CLI at its pinned version (npm registry; a no-op once installed).
for agent in $(.venv/bin/harness-run --list-agents | cut -f1); do
  .venv/bin/harness-run --agent "$agent" --install
done
# Docker worlds (--sandbox docker): a running dockerd (started here when it is not; it needs no
# networking of its own, every world container has --network none) and the world image, built
# from this machine's files (no registry).
if ! /usr/bin/docker version >/dev/null 2>&1; then
  if [ -d /run/systemd/system ]; then
    systemctl start docker
  else
    echo "Starting dockerd (log: /var/log/peer-harness-dockerd.log)"
    setsid nohup dockerd --bridge=none --iptables=false >/var/log/peer-harness-dockerd.log 2>&1 </dev/null &
  fi
  for _ in $(seq 60); do /usr/bin/docker version >/dev/null 2>&1 && break; sleep 1; done
  /usr/bin/docker version >/dev/null || { echo "dockerd did not start; see /var/log/peer-harness-dockerd.log" >&2; exit 1; }
fi
.venv/bin/harness-run --sandbox docker --install
.venv/bin/harness-run --agent gemini-cli --check
.venv/bin/harness-run --agent gemini-cli --sandbox docker --check
