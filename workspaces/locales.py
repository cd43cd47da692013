"""The sandboxes' /usr/lib/locale: the host's compiled locales plus a locale archive holding them.

Every sandboxed process runs with LANG=C.UTF-8. Without /usr/lib/locale/locale-archive (Debian
has none unless the `locales` package generated one), glibc's setlocale() opens each category's
file apart, trying two spellings of the name: about 26 failed and real opens per process start.
Under strace every one of them is a traced call, and they were a quarter of a trial's trace. With
an archive it is one open and an mmap. The archive is built once into the cache (`localedef
--add-to-archive` of the host's own compiled locales) and bound read-only over the sandboxes'
/usr/lib/locale beside copies of those locales, so an agent sees the host's list plus the archive
and every program behaves as before.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HOST_LOCALES = Path("/usr/lib/locale")
LOCALEDEF = "/usr/bin/localedef"


def _host_key() -> str:
    h = hashlib.sha256()
    for path in sorted(HOST_LOCALES.rglob("*")):
        if path.is_file():
            st = path.stat()
            h.update(f"{path.relative_to(HOST_LOCALES)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


@functools.cache    # once per process: every world build asks, and the host's locales do not change in a run
def sandbox_locale_dir(cache_dir: Path) -> Path | None:
    """The directory to bind over the sandboxes' /usr/lib/locale, built once per host locale set;
    None when there is nothing to gain (the host has an archive already, no compiled locales, or no
    localedef), and the sandboxes then see the host's own directory."""
    if not HOST_LOCALES.is_dir() or (HOST_LOCALES / "locale-archive").exists() or not os.access(LOCALEDEF, os.X_OK):
        return None
    compiled = sorted(p for p in HOST_LOCALES.iterdir() if p.is_dir())
    if not compiled:
        return None
    target = Path(cache_dir) / f"locale-{_host_key()}"
    if target.is_dir():
        return target
    # Built under a private name and renamed into place: concurrent builders never see half an archive.
    tmp = Path(tempfile.mkdtemp(prefix=".locale-", dir=cache_dir))
    try:
        for locale in compiled:
            shutil.copytree(locale, tmp / locale.name, symlinks=True)
        (tmp / "usr" / "lib" / "locale").mkdir(parents=True)
        for locale in compiled:
            subprocess.run([LOCALEDEF, f"--prefix={tmp}", "--add-to-archive", str(locale)], check=True,
                           capture_output=True)
        os.replace(tmp / "usr" / "lib" / "locale" / "locale-archive", tmp / "locale-archive")
        shutil.rmtree(tmp / "usr")
        tmp.chmod(0o755)
        try:
            os.rename(tmp, target)
        except OSError:        # another builder's rename won: same content
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target
