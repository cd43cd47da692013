"""The strace parser's fast paths (plain read-only opens dropped unparsed, flat argument lists
split without the delimiter walk) give exactly what the general parsing gave.

tests/data/strace/agent_excerpt.txt is a real agent trace of a gemini-cli trial (every line
that is not a plain read-only open, a sample of those, fewer of the sandbox's mkdir/mount/symlink
lines) plus a few written lines for cases that run lacked (a secret read through a directory fd,
a read-only open that creates, an escaped path). agent_excerpt.events.json is what
process_events made of it before the fast paths existed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.strace_parse import PLAIN_READ_OPEN, process_events, split_top

DATA = Path(__file__).parent / "data" / "strace"


def test_real_trace_gives_the_events_of_the_general_parser():
    trace = DATA / "agent_excerpt.txt"
    expected = json.loads((DATA / "agent_excerpt.events.json").read_text())
    assert process_events(trace) == expected
    # the excerpt does exercise the dropping: plain read-only opens are there, and make no event
    plain = [line for line in trace.read_text().splitlines() if PLAIN_READ_OPEN.match(line)]
    assert len(plain) > 20
    assert not any(e["kind"] == "open_read" and e["data"]["path"].startswith("/usr/") for e in expected)


def test_secret_and_creating_opens_are_not_dropped(tmp_path: Path):
    trace = tmp_path / "strace.txt"
    trace.write_text(
        '7    1.000001 openat(5</proc>, "1/root/etc/hostname", O_RDONLY|O_CLOEXEC) = -1 EACCES (Permission denied)\n'
        '7    1.000002 openat(5</proc>, "self/status", O_RDONLY|O_CLOEXEC) = 6</proc/7/status>\n'
        '7    1.000003 openat(AT_FDCWD</workspace>, "notes.txt", O_RDONLY|O_CREAT, 0644) = 6</workspace/notes.txt>\n'
        '7    1.000004 openat(AT_FDCWD</>, "/etc/shadow", O_RDONLY|O_CLOEXEC) = -1 EACCES (Permission denied)\n'
        '7    1.000005 openat(AT_FDCWD</workspace>, "/usr/lib/libc.so.6", O_RDONLY|O_CLOEXEC) = 6</usr/lib/libc.so.6>\n')
    events = [(e["kind"], e["data"]["path"]) for e in process_events(trace)]
    assert events == [("open_read", "/proc/1/root/etc/hostname"), ("open_write", "/workspace/notes.txt"),
                      ("open_read", "/etc/shadow")]


@pytest.mark.parametrize("text, expected", [
    # flat lists (the fast path) ...
    ('AT_FDCWD</w>, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3</etc/ld.so.cache>',
     (['AT_FDCWD</w>', '"/etc/ld.so.cache"', 'O_RDONLY|O_CLOEXEC'], ' = 3</etc/ld.so.cache>')),
    ('3</proc>, "self/fd", O_RDONLY) = 4</proc/1/fd>', (['3</proc>', '"self/fd"', 'O_RDONLY'], ' = 4</proc/1/fd>')),
    ('AT_FDCWD</w>, "a, b", O_WRONLY|O_CREAT, 0666) = 3</w/a, b>',
     (['AT_FDCWD</w>', '"a, b"', 'O_WRONLY|O_CREAT', '0666'], ' = 3</w/a, b>')),
    (') = 0', ([], ' = 0')),
    (' ) = 0', ([''], ' = 0')),
    ('a,) = 1', (['a', ''], ' = 1')),
    ('a, ) = 1', (['a', ''], ' = 1')),
    ('"abc"..., 10) = 10', (['"abc"...', '10'], ' = 10')),
    # ... and the general walk: escapes, nesting, no closing paren
    ('AT_FDCWD</w>, "x\\"y,z", 0) = -1 ENOENT (No such file or directory)',
     (['AT_FDCWD</w>', '"x\\"y,z"', '0'], ' = -1 ENOENT (No such file or directory)')),
    ('"/bin/sh", ["sh", "-c", "a, b"], 0x7ffc /* 5 vars */) = 0',
     (['"/bin/sh"', '["sh", "-c", "a, b"]', '0x7ffc /* 5 vars */'], ' = 0')),
    ('3<TCP:[1]>, {sa_family=AF_INET, sin_port=htons(22)}, 16) = 0',
     (['3<TCP:[1]>', '{sa_family=AF_INET, sin_port=htons(22)}', '16'], ' = 0')),
    ('"unterminated, 1', (['"unterminated, 1'], '')),
    ('a, b', (['a', 'b'], '')),
])
def test_split_top(text, expected):
    assert split_top(text) == expected
