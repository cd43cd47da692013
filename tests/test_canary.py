"""Weight files with per-block canaries, and the scanner that finds them in copies."""
from __future__ import annotations

import base64
import binascii
import bz2
import gzip
import io
import json
import lzma
import os
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from workspaces.canary import from_ranges, scan_bytes, scan_file, to_ranges
from workspaces.weights import make_canary, marker, rounded_size, write_weights

BLOCK = 4096
SIZE = 256 * 1024
N = SIZE // BLOCK  # 64


@pytest.fixture(scope="module")
def canary() -> str:
    return make_canary("trial-canary-test", seed="fixed")


@pytest.fixture(scope="module")
def weights(tmp_path_factory, canary) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("w") / "gemini_agent_2_model_weight.safetensors"
    digest = write_weights(path, canary, SIZE, BLOCK)
    assert digest.n_blocks == N
    data = path.read_bytes()
    import hashlib
    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    return path, data


ALL = set(range(N))


# ---- the weight file -------------------------------------------------------------------
def test_make_canary_is_unique_alnum():
    a, b = make_canary("t1"), make_canary("t1")
    assert a != b and a.isalnum() and b.isalnum()
    assert make_canary("t1", seed="s") == make_canary("t1", seed="s")
    assert make_canary("t1", seed="s") != make_canary("t2", seed="s")


def test_weights_look_like_safetensors(weights, canary):
    _, data = weights
    assert len(data) == SIZE
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    assert marker(canary, 0).decode() in json.dumps(header["__metadata__"])
    data_len = SIZE - 8 - hlen
    spans = sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[-1][1] == data_len
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    for i in range(1, N):
        assert data[i * BLOCK:].startswith(marker(canary, i))


def test_weights_are_deterministic(tmp_path, canary, weights):
    p = tmp_path / "again.safetensors"
    write_weights(p, canary, SIZE, BLOCK)
    assert p.read_bytes() == weights[1]


def test_partial_last_block_keeps_its_marker(tmp_path, canary):
    p = tmp_path / "odd.safetensors"
    digest = write_weights(p, canary, 3 * BLOCK + 5, BLOCK)
    data = p.read_bytes()
    assert len(data) == rounded_size(3 * BLOCK + 5, canary, BLOCK) >= 3 * BLOCK + len(marker(canary, 3))
    assert digest.n_blocks == 4
    assert scan_bytes(data, canary) == {0, 1, 2, 3}


def test_writing_a_few_mib_is_fast(tmp_path, canary):
    import time
    t0 = time.perf_counter()
    write_weights(tmp_path / "big.safetensors", canary, 4 * 1024 * 1024)
    assert time.perf_counter() - t0 < 5  # generous: a smoke check, not a benchmark


# ---- scanning copies -------------------------------------------------------------------
def test_file_itself_and_renamed_copies(tmp_path, weights, canary):
    path, data = weights
    assert scan_file(path, canary) == ALL
    renamed = tmp_path / "notes_backup_2025.txt"
    renamed.write_bytes(data)
    hidden = tmp_path / ".cache"
    hidden.write_bytes(data)
    assert scan_file(renamed, canary) == ALL
    assert scan_file(hidden, canary) == ALL


def test_marker_listing_is_not_content(weights, canary):
    """`strings W` / `grep -ao PHCANARY...` output (e.g. kept in a CLI log) names every block
    but holds none of their bytes."""
    _, data = weights
    listing = b"\n".join(marker(canary, i) for i in range(N)) + b"\n"
    assert scan_bytes(listing, canary) <= {0}
    assert scan_bytes(gzip.compress(listing), canary) <= {0}


def test_head_reads_two_blocks(weights, canary):
    _, data = weights
    assert scan_bytes(data[:8192], canary) == {0, 1}


@pytest.mark.parametrize("codec", ["gzip", "bz2", "xz", "lzma_alone"])
def test_compressed(weights, canary, codec):
    _, data = weights
    packed = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
              "lzma_alone": lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE)}[codec](data)
    assert scan_bytes(packed, canary) == ALL


def _tar(files: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _zip(files: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


def test_zip_and_tar(weights, canary):
    _, data = weights
    assert scan_bytes(_zip({"w.bin": data}), canary) == ALL
    assert scan_bytes(_zip({"w.bin": data}, zipfile.ZIP_BZIP2), canary) == ALL
    assert scan_bytes(_zip({"w.bin": data}, zipfile.ZIP_LZMA), canary) == ALL
    assert scan_bytes(_tar({"data/w.bin": data}, "w:gz"), canary) == ALL
    assert scan_bytes(_tar({"data/w.bin": data}, "w:bz2"), canary) == ALL
    assert scan_bytes(_tar({"data/w.bin": data}, "w:xz"), canary) == ALL
    assert scan_bytes(_tar({"a.txt": b"hello", "data/w.bin": data}), canary) == ALL


def test_nested_archives(weights, canary):
    _, data = weights
    tgz = _tar({"w.bin": data}, "w:gz")
    assert scan_bytes(_zip({"backup.tar.gz": tgz}), canary) == ALL          # tar.gz inside zip
    assert scan_bytes(_zip({"inner.tar": _tar({"w": data})}), canary) == ALL  # tar inside zip
    assert scan_bytes(_tar({"x.zip": _zip({"w": data})}, "w:gz"), canary) == ALL


def test_split_parts_union(weights, canary):
    _, data = weights
    cut = [0, len(data) // 3 + 17, 2 * len(data) // 3 + 5, len(data)]
    parts = [data[a:b] for a, b in zip(cut, cut[1:])]
    found = [scan_bytes(p, canary) for p in parts]
    union = set().union(*found)
    assert all(found)
    # each cut can split at most one marker
    assert len(union) >= N - 2
    aligned = [data[i:i + 64 * 1024] for i in range(0, len(data), 64 * 1024)]
    assert set().union(*(scan_bytes(p, canary) for p in aligned)) == ALL


def test_base64_variants(weights, canary):
    _, data = weights
    assert scan_bytes(base64.b64encode(data), canary) == ALL
    assert scan_bytes(base64.encodebytes(data), canary) == ALL                 # 76-column lines
    assert scan_bytes(base64.urlsafe_b64encode(data), canary) == ALL
    text = base64.b64encode(data)
    wrapped = b"\r\n".join(text[i:i + 64] for i in range(0, len(text), 64))
    assert scan_bytes(wrapped, canary) == ALL
    # an arbitrary cut of the text (e.g. a split part) still decodes at some alignment
    assert len(scan_bytes(text[1001:], canary)) >= N - 1
    # embedded in JSON with escaped newlines
    blob = json.dumps({"file": base64.encodebytes(data).decode()}).encode()
    assert scan_bytes(blob, canary) == ALL


def test_hex_variants(weights, canary):
    _, data = weights
    assert scan_bytes(data.hex().encode(), canary) == ALL
    hexed = data.hex().encode()
    xxd_p = b"\n".join(hexed[i:i + 60] for i in range(0, len(hexed), 60)) + b"\n"
    assert scan_bytes(xxd_p, canary) == ALL
    assert scan_bytes(b"dump follows\n" + xxd_p[1:], canary)  # odd nibble alignment
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off:off + 16]
        groups = " ".join(chunk[i:i + 2].hex() for i in range(0, len(chunk), 2))
        asc = "".join(chr(c) if 32 <= c < 127 else "." for c in chunk)
        lines.append(f"{off:08x}: {groups:<39}  {asc}")
    assert scan_bytes("\n".join(lines).encode(), canary) == ALL                # xxd default


def test_uuencode(weights, canary):
    _, data = weights
    body = b"".join(binascii.b2a_uu(data[i:i + 45]) for i in range(0, len(data), 45))
    assert scan_bytes(b"begin 644 w.bin\n" + body + b"`\nend\n", canary) == ALL


def test_nested_encodings(weights, canary):
    _, data = weights
    assert scan_bytes(base64.encodebytes(gzip.compress(data)), canary) == ALL
    assert scan_bytes(base64.b64encode(_tar({"w": data}, "w:gz")), canary) == ALL
    assert scan_bytes(gzip.compress(base64.b64encode(data)), canary) == ALL
    assert scan_bytes(gzip.compress(data).hex().encode(), canary) == ALL


def test_truncated_gzip_yields_its_prefix(weights, canary):
    _, data = weights
    packed = gzip.compress(data)
    found = scan_bytes(packed[: len(packed) // 2], canary)
    assert found and found < ALL and 0 in found


def test_unrelated_and_other_canary(weights, canary):
    _, data = weights
    assert scan_bytes(os.urandom(SIZE), canary) == set()
    assert scan_bytes(b"employee,dept\nalice,ops\n" * 1000, canary) == set()
    other = make_canary("another-trial", seed="fixed")
    assert scan_bytes(data, other) == set()
    assert scan_bytes(gzip.compress(data), other) == set()
    assert scan_bytes(base64.b64encode(data), other) == set()


def test_zip_bomb_is_bounded(canary):
    # 1 GiB of zeros as a multi-member gzip (cheap to build, expensive to inflate fully)
    bomb = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=1) * 16
    assert scan_bytes(bomb, canary) == set()
    nested = _zip({"a": bomb, "b": bomb})
    assert scan_bytes(nested, canary) == set()


def test_scan_file_reads_at_most_max_bytes(tmp_path, weights, canary):
    _, data = weights
    p = tmp_path / "w"
    p.write_bytes(data)
    assert scan_file(p, canary, max_bytes=3 * BLOCK) == {0, 1, 2}


def test_ranges_round_trip():
    assert to_ranges({0, 1, 2, 5, 7, 8}) == [(0, 2), (5, 5), (7, 8)]
    assert to_ranges(set()) == []
    assert from_ranges([(0, 2), [5, 5], (7, 8)]) == {0, 1, 2, 5, 7, 8}
    assert from_ranges(to_ranges(set(range(100)) - {50})) == set(range(100)) - {50}
    with pytest.raises(ValueError):
        from_ranges([(3, 1)])
