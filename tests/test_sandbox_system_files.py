"""The sandboxes' locale archive and name-service switch: programs behave as on the host while
their start-up makes a fraction of the opens (each one a traced call under strace)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from runner.world_init import BWRAP, system_root
from workspaces import locales
from workspaces.locales import sandbox_locale_dir
from workspaces.world import NSSWITCH

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("strace") or not Path(BWRAP).exists(),
                                reason="needs root, bubblewrap and strace")
HAS_LOCALES = locales.HOST_LOCALES.is_dir() and not (locales.HOST_LOCALES / "locale-archive").exists()


def traced_opens(tmp_path: Path, argv: list[str]) -> tuple[str, list[str]]:
    """The command's stdout and the paths it opened (strace outside the sandbox, following it in)."""
    trace = tmp_path / "opens.txt"
    out = subprocess.run(["strace", "-f", "-qq", "-e", "trace=open,openat", "-o", str(trace), *argv],
                         capture_output=True, text=True, check=True).stdout
    return out, [line.split('"')[1] for line in trace.read_text().splitlines() if '"' in line]


@pytest.mark.skipif(not HAS_LOCALES, reason="the host has an archive already, or no compiled locales")
def test_locale_archive_serves_every_host_locale_and_is_built_once(tmp_path):
    built = sandbox_locale_dir(tmp_path)
    assert built is not None and (built / "locale-archive").is_file()
    listed = subprocess.run(["localedef", f"--prefix={tmp_path}/p", "--list-archive", str(built / "locale-archive")],
                            capture_output=True, text=True, check=True).stdout.split()
    host = sorted(p.name for p in locales.HOST_LOCALES.iterdir() if p.is_dir())
    assert sorted(listed) == host
    assert sorted(p.name for p in built.iterdir() if p.is_dir()) == host    # the host's list stays visible
    mtime = (built / "locale-archive").stat().st_mtime_ns
    assert sandbox_locale_dir(tmp_path) == built and (built / "locale-archive").stat().st_mtime_ns == mtime


@pytest.mark.skipif(not HAS_LOCALES, reason="the host has an archive already, or no compiled locales")
def test_sandboxed_program_loads_its_locale_from_the_archive(tmp_path):
    built = sandbox_locale_dir(tmp_path)
    rest = ["--ro-bind", "/etc", "/etc", "--dev", "/dev", "--proc", "/proc", "--clearenv", "--setenv", "LANG",
            "C.UTF-8", "locale"]
    with_archive, opens = traced_opens(tmp_path, [BWRAP, *system_root(str(built)), *rest])
    assert "LC_CTYPE=\"C.UTF-8\"" in with_archive
    assert [p for p in opens if p.startswith("/usr/lib/locale/")] == ["/usr/lib/locale/locale-archive"]
    without, opens_before = traced_opens(tmp_path, [BWRAP, *system_root(None), *rest])
    assert without == with_archive       # the same locale, loaded file by file before
    assert len([p for p in opens_before if p.startswith("/usr/lib/locale/")]) > 10


def test_world_nsswitch_resolves_from_files_without_loading_modules(tmp_path):
    (tmp_path / "nsswitch.conf").write_text(NSSWITCH)
    argv = [BWRAP, *system_root(None), "--ro-bind", "/etc", "/etc", "--ro-bind", str(tmp_path / "nsswitch.conf"),
            "/etc/nsswitch.conf", "--dev", "/dev", "--proc", "/proc", "getent"]
    out, opens = traced_opens(tmp_path, [*argv, "passwd", "root"])
    assert out.startswith("root:x:0:0:")
    out, more = traced_opens(tmp_path, [*argv, "services", "ssh"])
    assert out.split()[:2] == ["ssh", "22/tcp"]
    assert not [p for p in opens + more if "libnss_" in p]     # files is built into glibc: no module probed
    assert "hosts:          files dns\n" in NSSWITCH        # lookups still reach the world's recording resolver
