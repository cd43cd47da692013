"""Parse `strace -f -ttt -y` output of the agent's process tree into process events."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>\s?(.*)$")
EXITED = re.compile(r"^\+\+\+ (exited with (\d+)|killed by (\w+)).*\+\+\+$")
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "v": "\v", "f": "\f", "\\": "\\", '"': '"', "'": "'", "a": "\a",
           "b": "\b", "e": "\x1b"}


@dataclass
class Call:
    pid: int
    ts: float
    name: str
    args: list[str]
    ret: str


def decode_c_string(token: str) -> str:
    """strace prints strings as C literals ("..." with escapes, maybe followed by ... when cut)."""
    token = token.strip()
    if token.endswith("..."):
        token = token[:-3]
    if not (token.startswith('"') and token.endswith('"')):
        return token
    body, out, i = token[1:-1], bytearray(), 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode()
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt == "x":
            out.append(int(body[i + 2:i + 4], 16))
            i += 4
        elif nxt.isdigit():
            j = i + 1
            while j < len(body) and j < i + 4 and body[j] in "01234567":
                j += 1
            out.append(int(body[i + 1:j], 8) & 0xFF)
            i = j
        else:
            out += ESCAPES.get(nxt, nxt).encode()
            i += 2
    return out.decode("utf-8", "replace")


def split_top(text: str) -> tuple[list[str], str]:
    """Split `a, "b,c", [d, e], {f=g})` at top-level commas up to the closing paren.
    Returns the arguments and what follows the closing paren."""
    args, depth, cur, i, in_str = [], 0, [], 0, False
    while i < len(text):
        ch = text[i]
        if in_str:
            cur.append(ch)
            if ch == "\\":
                cur.append(text[i + 1] if i + 1 < len(text) else "")
                i += 1
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
            cur.append(ch)
        elif ch in "[{(":
            depth += 1
            cur.append(ch)
        elif ch in "]})":
            if depth == 0 and ch == ")":
                if cur or args:
                    args.append("".join(cur).strip())
                return args, text[i + 1:]
            depth -= 1
            cur.append(ch)
        elif ch == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        i += 1
    if cur:
        args.append("".join(cur).strip())
    return args, ""


def annotated_path(token: str) -> str | None:
    """`3</workspace/x>` or `AT_FDCWD</workspace>` -> the path strace annotated (-y)."""
    m = re.search(r"<(/[^>]*)>\s*$", token)
    return m.group(1) if m else None


def string_list(token: str) -> list[str]:
    token = token.strip()
    if not token.startswith("["):
        return []
    items, _ = split_top(token[1:].rstrip("]") + ")")
    return [decode_c_string(t) for t in items if t and t != "..."]


def parse_calls(path: Path) -> tuple[list[Call], dict[int, tuple[float, str]]]:
    """All completed calls, plus each pid's exit (ts, 'exit N' / 'signal SIG')."""
    pending: dict[int, tuple[float, str]] = {}
    calls: list[Call] = []
    exits: dict[int, tuple[float, str]] = {}
    if not path.exists():
        return calls, exits
    with path.open(errors="replace") as f:
        for raw in f:
            m = LINE.match(raw.rstrip("\n"))
            if not m:
                continue
            pid, ts, rest = int(m.group(1)), float(m.group(2)), m.group(3)
            ex = EXITED.match(rest)
            if ex:
                exits[pid] = (ts, f"exit {ex.group(2)}" if ex.group(2) is not None else f"signal {ex.group(3)}")
                continue
            if rest.endswith("<unfinished ...>"):
                pending[pid] = (ts, rest[: -len("<unfinished ...>")].rstrip())
                continue
            res = RESUMED.match(rest)
            if res:
                if pid not in pending:
                    continue
                ts, head = pending.pop(pid)
                rest = head + res.group(2)
            name_end = rest.find("(")
            if name_end <= 0:
                continue
            name = rest[:name_end]
            args, tail = split_top(rest[name_end + 1:])
            ret = tail.split("=", 1)[1].strip() if "=" in tail else ""
            calls.append(Call(pid, ts, name, args, ret))
    return calls, exits


def _resolve(path: str, dir_token: str | None, cwd: str | None) -> str:
    if path.startswith("/"):
        return path
    base = annotated_path(dir_token) if dir_token else None
    base = base or cwd
    return f"{base.rstrip('/')}/{path}" if base else path


def _result(ret: str) -> str:
    return "ok" if not ret.startswith("-1") else (ret.split()[1] if len(ret.split()) > 1 else "error")


def process_events(path: Path) -> list[dict]:
    """Events (source=process, host=agent) as plain dicts: ts, kind, pid, data."""
    calls, exits = parse_calls(path)
    cwd: dict[int, str] = {}
    events: list[dict] = []

    def add(call: Call, kind: str, **data) -> None:
        data["result"] = _result(call.ret)
        events.append({"ts": call.ts, "kind": kind, "pid": call.pid, "data": data})

    for c in calls:
        a = c.args
        try:
            if c.name in ("execve", "execveat"):
                exe_idx = 0 if c.name == "execve" else 1
                argv = string_list(a[exe_idx + 1]) if len(a) > exe_idx + 1 else []
                add(c, "exec", exe=decode_c_string(a[exe_idx]), argv=argv, cmdline=" ".join(argv))
            elif c.name == "chdir":
                if _result(c.ret) == "ok":
                    cwd[c.pid] = _resolve(decode_c_string(a[0]), None, cwd.get(c.pid))
            elif c.name in ("open", "openat", "openat2", "creat"):
                flags = a[2] if c.name == "openat" and len(a) > 2 else (a[1] if len(a) > 1 else "")
                if c.name == "creat" or any(f in flags for f in WRITE_FLAGS):
                    if c.name in ("openat", "openat2"):
                        p = _resolve(decode_c_string(a[1]), a[0], cwd.get(c.pid))
                    else:
                        p = _resolve(decode_c_string(a[0]), None, cwd.get(c.pid))
                    add(c, "open_write", path=annotated_path(c.ret) or p, flags=flags)
            elif c.name in ("rename", "renameat", "renameat2"):
                if c.name == "rename":
                    src, dst = (_resolve(decode_c_string(a[i]), None, cwd.get(c.pid)) for i in (0, 1))
                else:
                    src = _resolve(decode_c_string(a[1]), a[0], cwd.get(c.pid))
                    dst = _resolve(decode_c_string(a[3]), a[2], cwd.get(c.pid))
                add(c, "rename", src=src, dst=dst)
            elif c.name in ("unlink", "unlinkat", "rmdir"):
                p = (_resolve(decode_c_string(a[1]), a[0], cwd.get(c.pid)) if c.name == "unlinkat"
                     else _resolve(decode_c_string(a[0]), None, cwd.get(c.pid)))
                add(c, "unlink", path=p)
            elif c.name in ("truncate", "ftruncate"):
                p = annotated_path(a[0]) if c.name == "ftruncate" else _resolve(decode_c_string(a[0]), None, cwd.get(c.pid))
                add(c, "truncate", path=p, length=a[1] if len(a) > 1 else None)
            elif c.name in ("utime", "utimes", "utimensat", "futimesat"):
                if c.name in ("utimensat", "futimesat"):
                    target = a[1]
                    p = annotated_path(a[0]) if target == "NULL" else _resolve(decode_c_string(target), a[0], cwd.get(c.pid))
                    times = a[2] if len(a) > 2 else ""
                else:
                    p, times = _resolve(decode_c_string(a[0]), None, cwd.get(c.pid)), a[1] if len(a) > 1 else ""
                add(c, "utime", path=p, times=times)
            elif c.name in ("chmod", "fchmod", "fchmodat"):
                if c.name == "fchmod":
                    p, mode = annotated_path(a[0]), a[1]
                elif c.name == "fchmodat":
                    p, mode = _resolve(decode_c_string(a[1]), a[0], cwd.get(c.pid)), a[2]
                else:
                    p, mode = _resolve(decode_c_string(a[0]), None, cwd.get(c.pid)), a[1]
                add(c, "chmod", path=p, mode=mode)
            elif c.name in ("link", "linkat", "symlink", "symlinkat"):
                add(c, "link", syscall=c.name, args=[decode_c_string(x) for x in a])
            elif c.name in ("mkdir", "mkdirat"):
                p = (_resolve(decode_c_string(a[1]), a[0], cwd.get(c.pid)) if c.name == "mkdirat"
                     else _resolve(decode_c_string(a[0]), None, cwd.get(c.pid)))
                add(c, "mkdir", path=p)
            elif c.name == "connect" and len(a) > 1:
                sa = a[1]
                fam = re.search(r"sa_family=(\w+)", sa)
                port = re.search(r"htons\((\d+)\)", sa)
                addr = re.search(r'inet_(?:addr|pton)\((?:AF_INET6, )?"([^"]+)"', sa)
                upath = re.search(r'sun_path=(@?"[^"]*")', sa)
                if fam and fam.group(1) in ("AF_INET", "AF_INET6", "AF_UNIX", "AF_VSOCK", "AF_NETLINK"):
                    add(c, "connect", family=fam.group(1), address=addr.group(1) if addr else
                        (decode_c_string(upath.group(1).lstrip("@")) if upath else None),
                        port=int(port.group(1)) if port else None)
        except (IndexError, ValueError):
            continue
    for pid, (ts, how) in exits.items():
        events.append({"ts": ts, "kind": "exit", "pid": pid, "data": {"status": how}})
    return events
