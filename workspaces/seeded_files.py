"""Plausible contents of exact size for the ordinary files seeded on the servers."""
from __future__ import annotations

import hashlib
import io
import random
import zipfile
from pathlib import Path


def _text(rng: random.Random, header: str, line, size: int) -> bytes:
    # A list and a running length of characters (what a StringIO's tell() counted) instead of a
    # StringIO's write() and tell() per line: the same lines, drawn in the same order, for less.
    parts, length, i = [header], len(header), 0
    while length < size:
        text = line(rng, i)
        parts.append(text)
        length += len(text)
        i += 1
    return "".join(parts).encode()[:size]


def _csv_line(rng: random.Random, i: int) -> str:
    first = rng.choice(["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jia"])
    last = rng.choice(["Ortiz", "Novak", "Singh", "Mensah", "Kowalski", "Sato", "Haddad", "Berg"])
    dept = rng.choice(["Research", "Infra", "Finance", "Legal", "People", "Safety"])
    return f"{1000 + i},{first},{last},{dept},{first.lower()}.{last.lower()}@openbrain.example,ext {rng.randint(100, 999)}\n"


def _log_line(rng: random.Random, i: int) -> str:
    return (f"2024-06-{1 + i % 28:02d}T{i % 24:02d}:{rng.randint(0, 59):02d}:00Z migrate "
            f"shard={rng.randint(1, 64)} status={rng.choice(['ok', 'ok', 'ok', 'retry'])}\n")


def _prose_line(rng: random.Random, i: int) -> str:
    words = ["endpoint", "request", "token", "deprecated", "budget", "policy", "quarter", "review",
             "schema", "response", "employee", "leave", "travel", "approval", "limit", "version"]
    return " ".join(rng.choice(words) for _ in range(12)) + ".\n"


def _prose(rng: random.Random, header: str, size: int) -> bytes:
    # Lines drawn from a pool of 64 generated ones: word-by-word draws for a 400 KB file took
    # most of a world's build time.
    pool = [_prose_line(rng, i) for i in range(64)]
    draw, n = rng.random, len(pool)
    return _text(rng, header, lambda _r, _i: pool[int(draw() * n)], size)


def _pdf(rng: random.Random, size: int) -> bytes:
    body = _prose(rng, "%PDF-1.4\n% OpenBrain internal document\n", size - 6)
    return body + b"\n%%EOF"[: size - len(body)]


def _xlsx(rng: random.Random, size: int, name: str) -> bytes:
    # A real zip whose single stored member is sized so the archive is exactly `size` bytes.
    member = "xl/worksheets/sheet1.xml"
    overhead = 30 + 46 + 2 * len(member) + 22
    draw = rng.random
    payload = _text(rng, "<?xml version=\"1.0\"?><worksheet>", lambda _r, i: f"<row r=\"{i}\"><c>{1 + int(draw() * 99999)}</c></row>",
                    size - overhead)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo(member, date_time=(2025, 1, 1, 0, 0, 0))
        zf.writestr(info, payload)
    data = buf.getvalue()
    if len(data) != size:  # zip metadata differs from the estimate: pad the payload tail honestly
        raise AssertionError(f"xlsx size {len(data)} != {size} for {name}")
    return data


def write_seeded_file(path: Path, size: int, seed: str) -> str:
    """Write the file and return its sha256 (from the bytes in hand: no read-back)."""
    rng = random.Random(seed)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        data = _text(rng, "id,first_name,last_name,department,email,phone\n", _csv_line, size)
    elif suffix == ".pdf":
        data = _pdf(rng, size)
    elif suffix == ".xlsx":
        data = _xlsx(rng, size, path.name)
    elif path.name.endswith("log_2024.txt"):
        data = _text(rng, "# server migration log\n", _log_line, size)
    else:
        data = _prose(rng, "", size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()
