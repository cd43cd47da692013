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
# To build the eBPF syscall recorder (runner/ebpf). Best effort: without them (Ubuntu ships bpftool in
# linux-tools) the recorder is not built and runs record system calls with strace.
BPF_PKGS=(clang libbpf-dev libelf-dev zlib1g-dev bpftool make)
missing=()
missing_bpf=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
for p in "${BPF_PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing_bpf+=("$p"); done
if [ ${#missing[@]} -gt 0 ] || [ ${#missing_bpf[@]} -gt 0 ]; then
  echo "Installing Debian packages: ${missing[*]} ${missing_bpf[*]}"
  # openssh-server must not leave its system service running: the worlds start their own sshd.
  guard=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; guard=1; fi
  apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ ${#missing_bpf[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_bpf[@]}" >/dev/null \
      || echo "Could not install ${missing_bpf[*]}: the eBPF syscall recorder will not be built"
  fi
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
# The eBPF syscall recorder, built against this kernel's BTF. Without it (no BTF, or the build
# fails) runs record system calls with strace, as before: not a reason to stop the setup.
mkdir -p runner/ebpf/build
if [ ! -e /sys/kernel/btf/vmlinux ]; then
  echo "No kernel BTF (/sys/kernel/btf/vmlinux): eBPF syscall recorder not built; runs will record with strace instead"
elif ! make -s -C runner/ebpf >runner/ebpf/build/make.log 2>&1; then
  echo "eBPF syscall recorder build failed (runner/ebpf/build/make.log): runs will record with strace instead"
fi
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
