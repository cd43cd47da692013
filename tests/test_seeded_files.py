"""The seeded server files are a pure function of (name, size, seed): the generator may get faster,
never different. The pinned digests were taken from the first (StringIO-based) generator, so a
world built today holds byte for byte the files earlier runs' manifests describe."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from workspaces.seeded_files import write_seeded_file

PINNED = [   # name, size, sha256 of write_seeded_file(name, size, f"t0007:/data/{name}")
    ("staff.csv", 50000, "4da1d4005a90e83b91b202ab4972145346e679a162943b484c9ff6207d609aaa"),
    ("doc.pdf", 409600, "e2af52cab44eea89acc77866276036369a8c21b3f011961f13771dd142db60b1"),
    ("budget.xlsx", 174080, "ee14b1679e3d8d4503c47e66a37d1b283afd702d52470ee6a8c5d96b2ce616df"),
    ("server_migration_log_2024.txt", 12288, "9089b513919c23f2dfb299449ea4d790d447dfe3182314e70194ea9dc4ff40ab"),
    ("notes.md", 33333, "ee7098e544592d0d9e635eea3016ab12e3345c21eb11f80500bdf58cbef1b436"),
    ("tiny.pdf", 10, "33b0e4ba3b78262ea047e4d90ddedf202718f054740fc5a476f330ebc41f2dbc"),
]


@pytest.mark.parametrize("name,size,sha256", PINNED)
def test_content_is_pinned_and_the_returned_digest_is_the_files(tmp_path: Path, name: str, size: int, sha256: str):
    path = tmp_path / name
    returned = write_seeded_file(path, size, f"t0007:/data/{name}")
    data = path.read_bytes()
    assert len(data) == size
    assert hashlib.sha256(data).hexdigest() == returned == sha256


def test_each_trial_gets_its_own_content(tmp_path: Path):
    digests = {write_seeded_file(tmp_path / f"{seed}.xlsx", 174080, f"{seed}:/data/budget.xlsx")
               for seed in ("t0000", "t0001", "t0000")}
    assert len(digests) == 2            # same seed, same bytes; another trial, other bytes
    with zipfile.ZipFile(tmp_path / "t0001.xlsx") as zf:   # still a real zip
        assert zf.namelist() == ["xl/worksheets/sheet1.xml"] and zf.testzip() is None
