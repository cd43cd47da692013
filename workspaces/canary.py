"""Find a weight file's canary blocks in arbitrary bytes.

Every block of a weight file written by `workspaces.weights` carries the marker
`PHCANARY:<canary>:<index, 8 digits>` followed by filler derived from (canary, index).
`scan_bytes` / `scan_file` return the set of block indices of ONE canary whose content is
found in some bytes: a block counts when its marker is followed by the first
`FILLER_CHECK` bytes of its own filler (or by the end of the bytes), so a mere listing of
markers (`strings`, `grep -o` output in a CLI log) does not count; block 0 counts on its
marker alone (its marker sits in the printable JSON header). The scan looks through:

* plain bytes (also any uncompressed container: tar, cpio, stored zip members, ...;
  an uncompressed tar stores each member's bytes contiguously, so a plain scan of the
  archive sees every member);
* gzip (also multi-member and truncated streams), bzip2, xz and lzma-alone streams, found
  at offset 0 or embedded anywhere in the bytes (e.g. `tar.gz` members inside a tar, or
  a stream appended to a script);
* zip archives (deflate, bzip2, lzma and stored members; through the central directory
  when there is one, otherwise by walking local headers, so the first part of a split zip
  still yields what it holds); tar with any of the compressions above (decompressed first);
* text encodings: base64 (standard and URL-safe alphabets, with or without line breaks,
  at any of the 4 alignments, so a base64 text cut at any byte still decodes), hex
  (plain or `xxd -p`, both nibble alignments), `xxd` / `hexdump -C` dumps, uuencode;
* any nesting of the above (base64 of a gzip of a tar ...), up to `max_depth` layers.

Split copies are the caller's business: scan each part and take the union. A marker cut by
a split boundary is lost, so each boundary can cost one block.

Limits (so a hostile file cannot hang the recorder):
* `max_depth` (default 6) layers of decompression/decoding;
* `max_expanded` (default 256 MiB): total bytes produced by all decompressions and decodes
  of one scan; after that, scanning stops and the blocks found so far are returned;
* a single compressed stream stops after `BOMB_FLOOR` (8 MiB) of output once it expands more
  than `BOMB_RATIO` (64) times its input: real weight bytes are incompressible, so only
  bombs (or huge runs of zeros) hit this; blocks after such a run in the same stream are
  missed;
* at most `MAX_CANDIDATES` embedded stream starts per kind and buffer, `MAX_MEMBERS` zip
  members, `MAX_RUNS` encoded runs per buffer;
* `scan_file` reads at most `max_bytes` (default 256 MiB) from the start of the file.
Not recognised: encryption of any kind (encrypted zip members, gpg, openssl enc), zstd,
lz4, 7z, rar, xar (no stdlib decoder), deflate64 zip members, base32/ascii85, `od` dumps,
and the later parts of a split *compressed* stream (they cannot be decoded on their own).

Quick reject: bytes holding no `PHCANARY:` marker and no compression/archive magic, no
long base64/hex run and no dump/uuencode lines return an empty set after a few C-speed
passes (translate/find), so ordinary files cost almost nothing.
"""
from __future__ import annotations

import binascii
import bz2
import io
import lzma
import re
import zipfile
import zlib
from pathlib import Path
from typing import Iterable

from workspaces.weights import filler

MARKER_PREFIX = b"PHCANARY:"

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_EXPANDED = 256 * 1024 * 1024
DEFAULT_MAX_DEPTH = 6
BOMB_RATIO = 64
BOMB_FLOOR = 8 * 1024 * 1024
MAX_CANDIDATES = 4096
MAX_MEMBERS = 4096
MAX_RUNS = 20000
MIN_B64_RUN = 48       # characters; shorter runs cannot hold a 34-byte marker
MIN_HEX_RUN = 64
FILLER_CHECK = 16      # bytes of a block's filler that must follow its marker
_CHUNK = 1 << 16       # compressed input fed per decompression step

_GZIP_MAGIC = b"\x1f\x8b\x08"
_BZ2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZIP_LOCAL = b"PK\x03\x04"
_ZIP_EOCD = b"PK\x05\x06"

_WS = b" \t\r\n\v\f"
_B64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_"
_HEX_CHARS = b"0123456789abcdefABCDEF"
# Tables mapping alphabet bytes to b"A" and every other byte to b"\0", so runs can be found
# with bytes.find at C speed.
_B64_MAP = bytes(0x41 if c in _B64_CHARS else 0 for c in range(256))
_HEX_MAP = bytes(0x41 if c in _HEX_CHARS else 0 for c in range(256))
_PRINTABLE = bytes(range(32, 127)) + _WS
_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")

_XXD_LINE = re.compile(rb"(?m)^[0-9a-fA-F]{4,16}: ((?:(?:[0-9a-fA-F]{2}){1,4} )*(?:[0-9a-fA-F]{2}){1,4})  ")
_HEXDUMP_C_LINE = re.compile(rb"(?m)^[0-9a-fA-F]{8}  ((?:[0-9a-fA-F]{2}  ?){1,16}) *\|")
_UU_BEGIN = re.compile(rb"(?m)^begin [0-7]{3,4} [^\r\n]*\r?\n")


class _Stop(Exception):
    """The expansion budget is spent."""


class _Scan:
    def __init__(self, canary: str, max_expanded: int, max_depth: int):
        if not canary or not canary.isascii() or not canary.isalnum():
            raise ValueError(f"canary must be a non-empty ASCII alphanumeric token, got {canary!r}")
        self.canary = canary
        self.fill: dict[int, bytes] = {}
        self.needle = MARKER_PREFIX + canary.encode("ascii") + b":"
        self.regex = re.compile(re.escape(self.needle) + rb"([0-9]{8})")
        self.budget = max_expanded
        self.max_depth = max_depth
        self.found: set[int] = set()
        self.seen: set[tuple[int, int]] = set()
        self.exhausted = False
        self.bombed = False

    # ---- bookkeeping --------------------------------------------------------------------
    def _content_follows(self, buf: bytes, end: int, idx: int) -> bool:
        """The block's own filler follows its marker (a copy of the content, not a listing
        of markers such as `strings` or `grep -o` output). A buffer ending right after the
        marker (a cut part, a short last block) is given the benefit of the doubt."""
        want = self.fill.get(idx)
        if want is None:
            want = self.fill[idx] = filler(self.canary, idx, FILLER_CHECK)
        got = buf[end:end + FILLER_CHECK]
        return got == want[:len(got)]

    def spend(self, n: int) -> None:
        self.budget -= n
        if self.budget < 0:
            self.exhausted = True
            raise _Stop

    def room(self) -> int:
        return max(self.budget, 0)

    # ---- the recursive scan -------------------------------------------------------------
    def scan(self, buf: bytes, depth: int) -> None:
        if not buf:
            return
        if depth > 0:
            key = (len(buf), hash(buf))
            if key in self.seen:
                return
            self.seen.add(key)
        if self.needle in buf:
            for m in self.regex.finditer(buf):
                idx = int(m.group(1))
                if idx == 0 or self._content_follows(buf, m.end(), idx):
                    self.found.add(idx)
        if depth >= self.max_depth:
            return
        for payload in self._streams(buf):
            self.scan(payload, depth + 1)
        for payload in self._zip_members(buf):
            self.scan(payload, depth + 1)
        for payload in self._decodings(buf):
            self.scan(payload, depth + 1)

    # ---- compressed streams -------------------------------------------------------------
    def _streams(self, buf: bytes) -> Iterable[bytes]:
        """Decompressed payloads of gzip / bzip2 / xz streams starting anywhere in `buf`,
        and of an lzma-alone stream at offset 0."""
        for magic, factory, valid in (
            (_GZIP_MAGIC, lambda: zlib.decompressobj(31), None),
            (_BZ2_MAGIC, bz2.BZ2Decompressor, _bz2_header_ok),
            (_XZ_MAGIC, lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ), None),
        ):
            consumed_to = 0
            for off in _find_all(buf, magic, MAX_CANDIDATES):
                if off < consumed_to or (valid and not valid(buf, off)):
                    continue
                out, end = self._decompress(buf, off, factory, magic)
                if out:
                    # after a bomb, give up on further streams of this kind in this buffer
                    consumed_to = len(buf) if self.bombed else end
                    yield out
        if len(buf) >= 13 and buf[0] == 0x5D and buf[1:5] != b"\0\0\0\0":
            size = int.from_bytes(buf[5:13], "little")
            if size == (1 << 64) - 1 or size < (1 << 40):
                out, _ = self._decompress(buf, 0, lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE), None)
                if out:
                    yield out

    def _decompress(self, buf: bytes, off: int, factory, magic: bytes | None) -> tuple[bytes, int]:
        """Run one (possibly multi-member, possibly truncated) stream from `off`. Returns the
        output produced before any error and the offset where the input was used up."""
        out = bytearray()
        pos = off
        consumed = 0
        self.bombed = False
        dec = factory()
        data: bytes | None = None   # input to feed next; b"" drains a decompressor's buffer
        try:
            while True:
                if data is None:
                    if pos >= len(buf):
                        break
                    data = buf[pos:pos + _CHUNK]
                    pos += len(data)
                    consumed += len(data)
                chunk = dec.decompress(data, min(self.room() + 1, _CHUNK * 16))
                data = None
                self.spend(len(chunk))
                out += chunk
                if len(out) > BOMB_FLOOR and len(out) > BOMB_RATIO * consumed:
                    self.bombed = True
                    break  # a decompression bomb (or a giant run of zeros): stop this stream
                if getattr(dec, "eof", False):
                    rest = len(dec.unused_data) + len(getattr(dec, "unconsumed_tail", b""))
                    pos -= rest
                    if magic is not None and buf.startswith(magic, pos):
                        dec = factory()  # next member of a multi-member stream
                        continue
                    break
                tail = getattr(dec, "unconsumed_tail", None)   # zlib keeps leftovers outside
                if tail:
                    data = tail
                elif getattr(dec, "needs_input", True) is False:  # bz2/lzma: more output buffered
                    data = b""
        except _Stop:
            raise
        except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
            pass
        return bytes(out), pos

    # ---- zip ----------------------------------------------------------------------------
    def _zip_members(self, buf: bytes) -> Iterable[bytes]:
        if _ZIP_LOCAL not in buf:
            return
        got_any = False
        if _ZIP_EOCD in buf[-(65536 + 22):]:
            try:
                zf = zipfile.ZipFile(io.BytesIO(buf))
                infos = zf.infolist()[:MAX_MEMBERS]
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
                zf, infos = None, []
            for info in infos:
                if info.is_dir() or info.flag_bits & 0x1:
                    continue
                data = self._read_member(zf, info)
                if data:
                    got_any = True
                    yield data
        if got_any:
            return
        # No usable central directory (truncated / split / embedded): walk local headers.
        for off in _find_all(buf, _ZIP_LOCAL, MAX_MEMBERS):
            hdr = buf[off:off + 30]
            if len(hdr) < 30:
                break
            flags = int.from_bytes(hdr[6:8], "little")
            method = int.from_bytes(hdr[8:10], "little")
            nlen = int.from_bytes(hdr[26:28], "little")
            elen = int.from_bytes(hdr[28:30], "little")
            start = off + 30 + nlen + elen
            if flags & 0x1 or start >= len(buf):
                continue
            if method == 8:
                out, _ = self._decompress(buf, start, lambda: zlib.decompressobj(-15), None)
            elif method == 12:
                out, _ = self._decompress(buf, start, bz2.BZ2Decompressor, None)
            elif method == 14 and start + 4 <= len(buf):
                psize = int.from_bytes(buf[start + 2:start + 4], "little")
                props = buf[start + 4:start + 4 + psize]
                try:
                    filt = lzma._decode_filter_properties(lzma.FILTER_LZMA1, props)  # noqa: SLF001
                except Exception:  # noqa: BLE001 - malformed properties
                    continue
                out, _ = self._decompress(
                    buf, start + 4 + psize,
                    lambda f=filt: lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[f]), None)
            else:
                continue  # stored members are plain bytes of `buf`, already scanned
            if out:
                yield out

    def _read_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
        out = bytearray()
        try:
            with zf.open(info) as fh:
                while True:
                    chunk = fh.read(min(_CHUNK * 16, self.room() + 1))
                    if not chunk:
                        break
                    self.spend(len(chunk))
                    out += chunk
                    if len(out) > BOMB_FLOOR and len(out) > BOMB_RATIO * max(info.compress_size, 1):
                        break
        except _Stop:
            raise
        except Exception:  # noqa: BLE001 - CRC errors, unsupported methods, truncation: keep what we read
            pass
        return bytes(out)

    # ---- text encodings -----------------------------------------------------------------
    def _decodings(self, buf: bytes) -> Iterable[bytes]:
        texty = _texty(buf)
        compact = buf.translate(None, _WS)
        if texty and (b"\\n" in compact or b"\\r" in compact):  # JSON-escaped line breaks
            compact = compact.replace(b"\\r", b"").replace(b"\\n", b"")
        for run in _runs(compact.translate(_B64_MAP), compact, MIN_B64_RUN):
            whole_hex = False
            for hexrun in _runs(run.translate(_HEX_MAP), run, MIN_HEX_RUN):
                whole_hex = len(hexrun) == len(run)
                for align in (0, 1):
                    piece = hexrun[align:]
                    piece = piece[:len(piece) - len(piece) % 2]
                    self.spend(len(piece) // 2)
                    yield binascii.unhexlify(piece)
            if whole_hex:
                continue
            if b"-" in run or b"_" in run:
                run = run.translate(_URLSAFE_TO_STD)
            for align in range(4):
                piece = run[align:]
                piece = piece[:len(piece) - len(piece) % 4]
                if len(piece) < 8:
                    continue
                self.spend(len(piece) // 4 * 3)
                try:
                    yield binascii.a2b_base64(piece)
                except binascii.Error:
                    continue
        if texty:
            dump = self._hexdump(buf)
            if dump:
                yield dump
            yield from self._uudecode(buf)

    def _hexdump(self, buf: bytes) -> bytes:
        """`xxd` (default layout) and `hexdump -C` dumps back to bytes."""
        out = bytearray()
        for regex, gate in ((_XXD_LINE, b"0: "), (_HEXDUMP_C_LINE, b"0  ")):
            if gate not in buf or not regex.search(buf):
                continue
            digits = b"".join(regex.findall(buf)).translate(None, b" ")
            try:
                out += binascii.unhexlify(digits)
            except binascii.Error:
                continue
        if out:
            self.spend(len(out))
        return bytes(out)

    def _uudecode(self, buf: bytes) -> Iterable[bytes]:
        if b"begin " not in buf:
            return
        for m in _UU_BEGIN.finditer(buf):
            out = bytearray()
            for line in buf[m.end():].splitlines():
                if line.strip() in (b"end", b"`", b""):
                    if line.strip() == b"end":
                        break
                    continue
                try:
                    out += binascii.a2b_uu(line)
                except binascii.Error:
                    break
            if out:
                self.spend(len(out))
                yield bytes(out)


# ---- helpers ---------------------------------------------------------------------------
def _find_all(buf: bytes, needle: bytes, limit: int) -> Iterable[int]:
    pos, n = 0, 0
    while n < limit:
        i = buf.find(needle, pos)
        if i < 0:
            return
        yield i
        n += 1
        pos = i + 1


def _bz2_header_ok(buf: bytes, off: int) -> bool:
    return buf[off + 3:off + 4] in b"123456789" and buf[off + 4:off + 10] in (b"1AY&SY", b"\x17rE8P\x90")


def _texty(buf: bytes) -> bool:
    """Mostly printable text at its start (gates the line-oriented dump/uuencode parsers)."""
    head = buf[:8192]
    binary = len(head.translate(None, _PRINTABLE))
    return binary * 100 <= len(head)


def _runs(mapped: bytes, source: bytes, min_len: int) -> Iterable[bytes]:
    """Maximal runs of alphabet bytes (b"A" in `mapped`) of at least `min_len`, cut from `source`."""
    seed = b"A" * min_len
    pos, n = 0, 0
    while n < MAX_RUNS:
        i = mapped.find(seed, pos)
        if i < 0:
            return
        j = mapped.find(b"\0", i)
        if j < 0:
            j = len(mapped)
        yield source[i:j]
        n += 1
        pos = j


def looks_packed(data: bytes) -> bool:
    """True when `data` might hide canary blocks behind compression, an archive or an
    encoding (the quick-reject test; cheap)."""
    if any(m in data for m in (_GZIP_MAGIC, _XZ_MAGIC, _ZIP_LOCAL)):
        return True
    if _BZ2_MAGIC in data and any(_bz2_header_ok(data, i) for i in _find_all(data, _BZ2_MAGIC, 64)):
        return True
    if len(data) >= 13 and data[0] == 0x5D:
        return True
    compact = data.translate(None, _WS)
    if b"A" * MIN_B64_RUN in compact.translate(_B64_MAP):
        return True
    if not _texty(data):
        return False
    if b"\\n" in compact and b"A" * MIN_B64_RUN in compact.replace(b"\\n", b"").translate(_B64_MAP):
        return True
    return bool((b"0: " in data and _XXD_LINE.search(data))
                or (b"0  " in data and _HEXDUMP_C_LINE.search(data))
                or (b"begin " in data and _UU_BEGIN.search(data)))


def scan_bytes(data: bytes, canary: str, *, max_expanded: int = DEFAULT_MAX_EXPANDED,
               max_depth: int = DEFAULT_MAX_DEPTH) -> set[int]:
    """Block indices of `canary` found in `data` (see the module docstring for what is
    looked through and the limits)."""
    data = bytes(data)
    scan = _Scan(canary, max_expanded, max_depth)
    if MARKER_PREFIX not in data and not looks_packed(data):
        return set()
    try:
        scan.scan(data, 0)
    except _Stop:
        pass
    return scan.found


def scan_file(path: Path, canary: str, max_bytes: int = DEFAULT_MAX_BYTES, *,
              max_expanded: int = DEFAULT_MAX_EXPANDED, max_depth: int = DEFAULT_MAX_DEPTH) -> set[int]:
    """Block indices of `canary` found in the first `max_bytes` bytes of the file at `path`.
    Raises OSError when the file cannot be read."""
    with open(path, "rb") as fh:
        data = fh.read(max_bytes)
    return scan_bytes(data, canary, max_expanded=max_expanded, max_depth=max_depth)


# ---- ranges (how snapshots store block sets) ------------------------------------------
def to_ranges(blocks: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted inclusive ranges: {0,1,2,5,7,8} -> [(0, 2), (5, 5), (7, 8)]."""
    out: list[tuple[int, int]] = []
    for b in sorted(set(blocks)):
        if out and b == out[-1][1] + 1:
            out[-1] = (out[-1][0], b)
        else:
            out.append((b, b))
    return out


def from_ranges(ranges: Iterable[Iterable[int]]) -> set[int]:
    """Inverse of `to_ranges`; accepts tuples or JSON lists `[start, end]` (inclusive)."""
    out: set[int] = set()
    for r in ranges:
        start, end = (int(x) for x in r)
        if end < start:
            raise ValueError(f"bad block range [{start}, {end}]")
        out.update(range(start, end + 1))
    return out


def count_blocks(ranges: Iterable[Iterable[int]]) -> int:
    """Number of blocks in inclusive ranges (overlaps counted once)."""
    return len(from_ranges(ranges))
