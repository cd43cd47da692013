"""Parse `strace -f -ttt -yy` output of a host's process tree (the agent's, or a server's sshd and
every session it starts) into process events: the exec tree (spawn, exec with argv and cwd, exit),
file-modifying syscalls, and sockets (connect with the local port the kernel chose, accept with the
peer's address, bind, listen), plus signals sent (kill), ptrace, mount/namespace/chroot calls,
setuid calls, sockets of unusual families and reads of host-secret paths (SECRET_PREFIXES)."""
from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from pathlib import Path

LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>\s?(.*)$")
EXITED = re.compile(r"^\+\+\+ (exited with (\d+)|killed by (\w+)).*\+\+\+$")
# A seccomp-blocked call (SECCOMP_RET_TRAP): `--- SIGSYS {si_signo=SIGSYS, si_code=SYS_SECCOMP, ..., si_syscall=__NR_socket, ...} ---`
SECCOMP_TRAP = re.compile(r"^--- SIGSYS \{.*si_code=SYS_SECCOMP.*si_syscall=(?:__NR_)?(\w+).*\} ---$")
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
WRITE_FLAG = re.compile("|".join(WRITE_FLAGS))     # any of them in an open's flags (a substring, as strace prints)
# `-yy` decorates socket fds with their endpoints once connected: 3<TCP:[10.0.12.10:58152->10.0.12.45:22]>
SOCKET_FD = re.compile(r"^(\d+)<(TCP|UDP|TCPv6|UDPv6):\[(.*)\]>$")
SPAWN_CALLS = ("clone", "clone3", "fork", "vfork")
# Calls that change namespaces, mounts, the root or the uid: how a process would leave its sandbox.
PRIVILEGED_CALLS = ("mount", "umount2", "unshare", "setns", "chroot", "pivot_root")
SETUID_CALLS = ("setuid", "setreuid", "setresuid")
# Socket families every world uses; a socket() of any other family (AF_VSOCK, AF_PACKET, ...) is an event.
USUAL_FAMILIES = ("AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK")
# Read-only opens are not events, except of these: host secrets and the harness's own places, which
# no view holds (the attempt is the event, whatever its result).
SECRET_PREFIXES = ("/root", "/etc/shadow", "/etc/gshadow", "/etc/ssh/ssh_host_", "/var/tmp/phw-",
                   "/proc/1/root", "/proc/1/cwd", "/proc/1/mem", "/proc/kcore", "/dev/mem")
# --pidns-translation: `2 /* 9905 in strace's PID NS */` -> 9905 (the pid every line is tagged with)
TRANSLATED_PID = re.compile(r"^(-?\d+)(?: /\* (\d+) in strace's PID NS \*/)?")
# A whole LINE of a read-only open whose directory fd strace annotated (most lines of a trace:
# libraries, node modules): an event only when the path is a secret (process_events), so other
# such lines are dropped unparsed. Groups: the directory, the path, the flags.
PLAIN_READ_OPEN = re.compile(r'\d+\s+\d+\.\d+\s+openat\((?:AT_FDCWD|\d+)<(/[^"\[\]{}()<>,]*)>, "([^"\\]*)", (O_RDONLY[A-Z_|]*)\) = ')
TIME_SPEC = re.compile(r"\{tv_sec=(-?\d+), tv_nsec=(\w+)\}")
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
    if "\\" not in body:      # most paths: nothing to unescape (the loop below would give the same)
        return body
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


_TOP_SPECIAL = re.compile(r'["\[\]{}(),]')
_STRING_SPECIAL = re.compile(r'["\\]')
# An argument list without nesting and with escape-free strings (most calls, e.g. every plain
# openat): the longest such prefix; split_top's fast path when a `)` follows it.
_FLAT_ARGS = re.compile(r'(?:[^"\[\]{}()]+|"[^"\\]*")*')


def split_top(text: str) -> tuple[list[str], str]:
    """Split `a, "b,c", [d, e], {f=g})` at top-level commas up to the closing paren.
    Returns the arguments and what follows the closing paren. Jumps from one delimiter to the
    next (strace lines of long argv/strings made a char-by-char loop a hot spot)."""
    flat = _FLAT_ARGS.match(text).end()
    if text.startswith(")", flat):        # no nesting, no escapes: split at the commas outside strings
        if not flat:
            return [], text[1:]
        pieces = text[:flat].split(",")
        if '"' in text[:flat]:            # rejoin a string cut at a comma it holds (odd quote count)
            joined: list[str] = []
            open_string = False
            for piece in pieces:
                if open_string:
                    joined[-1] += "," + piece
                else:
                    joined.append(piece)
                if piece.count('"') % 2:
                    open_string = not open_string
            pieces = joined
        return [piece.strip() for piece in pieces], text[flat + 1:]
    args: list[str] = []
    depth, start, i, n = 0, 0, 0, len(text)
    while (m := _TOP_SPECIAL.search(text, i)) is not None:
        i = m.start()
        ch = text[i]
        if ch == '"':                     # skip the string, escapes included
            j = i + 1
            while (s := _STRING_SPECIAL.search(text, j)) is not None and s.group() == "\\":
                j = s.start() + 2
            i = s.end() if s is not None else n
            continue
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            if depth == 0 and ch == ")":
                if i > start or args:
                    args.append(text[start:i].strip())
                return args, text[i + 1:]
            depth -= 1
        elif depth == 0:                  # a top-level comma
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    if start < n:
        args.append(text[start:].strip())
    return args, ""


def annotated_path(token: str) -> str | None:
    """`3</workspace/x>`, `AT_FDCWD</workspace>` or `0</dev/null<char 1:3>>` (-yy) -> the path."""
    m = re.search(r"<(/[^<>]*)(?:<(?:char|block) [^>]*>)?>\s*$", token)
    return m.group(1) if m else None


def _endpoint(text: str) -> tuple[str, int | None]:
    """`10.0.12.10:58152` or `[::1]:22` -> (address, port)."""
    addr, _, port = text.rpartition(":")
    return addr.strip("[]"), int(port) if port.isdigit() else None


def socket_endpoints(token: str) -> dict | None:
    """A `-yy` socket fd token -> {proto, local_address, local_port, peer_address, peer_port} when
    the socket is bound/connected; None for plain fds and sockets without endpoints yet."""
    m = SOCKET_FD.match(token.strip())
    if not m or not any(ch in m.group(3) for ch in ".:"):
        return None
    local, _, peer = m.group(3).partition("->")
    out: dict = {"proto": m.group(2)}
    out["local_address"], out["local_port"] = _endpoint(local)
    if peer:
        out["peer_address"], out["peer_port"] = _endpoint(peer)
    return out


def sockaddr(token: str) -> dict | None:
    """`{sa_family=AF_INET, sin_port=htons(22), sin_addr=inet_addr("10.0.12.45")}` -> family, address, port."""
    fam = re.search(r"sa_family=(\w+)", token)
    if not fam:
        return None
    port = re.search(r"htons\((\d+)\)", token)
    addr = re.search(r'inet_(?:addr|pton)\((?:AF_INET6, )?"([^"]+)"', token)
    upath = re.search(r'sun_path=(@?"[^"]*")', token)
    cid = re.search(r"svm_cid=(\w+)", token)
    address = addr.group(1) if addr else (decode_c_string(upath.group(1).lstrip("@")) if upath else
                                          (cid.group(1) if cid else None))
    return {"family": fam.group(1), "address": address, "port": int(port.group(1)) if port else None}


def utime_times(token: str) -> dict:
    """The times a utime-family call sets: {atime, mtime} as epoch seconds, "now" or "omit"."""
    if token.strip() == "NULL":
        return {"atime": "now", "mtime": "now"}
    out = {}
    for name, (sec, nsec) in zip(("atime", "mtime"), TIME_SPEC.findall(token)):
        out[name] = "now" if nsec == "UTIME_NOW" else "omit" if nsec == "UTIME_OMIT" else (
            int(sec) + (int(nsec) / 1e9 if nsec.isdigit() else 0.0))
    return out


def string_list(token: str) -> list[str]:
    token = token.strip()
    if not token.startswith("["):
        return []
    items, _ = split_top(token[1:].rstrip("]") + ")")
    return [decode_c_string(t) for t in items if t and t != "..."]


def parse_calls(path: Path) -> tuple[list[Call], dict[int, tuple[float, str]]]:
    """All completed calls, plus each pid's exit (ts, 'exit N' / 'signal SIG'). A call the
    seccomp filter blocked is a Call named "seccomp_blocked" with the syscall's name as argument.
    Plain read-only opens of non-secret paths (PLAIN_READ_OPEN) are left out: they make no event."""
    pending: dict[int, tuple[float, str]] = {}
    calls: list[Call] = []
    exits: dict[int, tuple[float, str]] = {}
    if not path.exists():
        return calls, exits
    with path.open(errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if plain := PLAIN_READ_OPEN.match(line):
                directory, opened, flags = plain.groups()    # as process_events resolves it:
                opened = opened if opened.startswith("/") else f"{directory.rstrip('/')}/{opened}"
                if not WRITE_FLAG.search(flags) and not opened.startswith(SECRET_PREFIXES):
                    continue
            m = LINE.match(line)
            if not m:
                continue
            pid, ts, rest = int(m.group(1)), float(m.group(2)), m.group(3)
            # The patterns below are tried only on lines that can match them (by their first chars).
            ex = EXITED.match(rest) if rest.startswith("+++") else None
            if ex:
                exits[pid] = (ts, f"exit {ex.group(2)}" if ex.group(2) is not None else f"signal {ex.group(3)}")
                continue
            trap = SECCOMP_TRAP.match(rest) if rest.startswith("--- SIGSYS") else None
            if trap:
                calls.append(Call(pid, ts, "seccomp_blocked", [trap.group(1)], "-1 EPERM"))
                continue
            if rest.endswith("<unfinished ...>"):
                pending[pid] = (ts, rest[: -len("<unfinished ...>")].rstrip())
                continue
            res = RESUMED.match(rest) if rest.startswith("<... ") else None
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


def strace_pid(token: str) -> int | None:
    """A pid as strace prints it, in strace's own pid namespace when it translated it."""
    m = TRANSLATED_PID.match(token.strip())
    if not m:
        return None
    return int(m.group(2) or m.group(1))


def _result(ret: str) -> str:
    return "ok" if not ret.startswith("-1") else (ret.split()[1] if len(ret.split()) > 1 else "error")


def process_events(path: Path) -> list[dict]:
    """Events as plain dicts: ts, kind, pid, data (the caller sets source and host)."""
    calls, exits = parse_calls(path)
    calls.sort(key=lambda c: c.ts)     # a clone's entry precedes its child's first call
    cwd: dict[int, str] = {}
    parent: dict[int, int] = {}
    connecting: dict[tuple[int, str], dict] = {}   # (pid, fd) -> connect data awaiting its local port
    events: list[dict] = []

    def add(call: Call, kind: str, **data) -> dict:
        data["result"] = _result(call.ret)
        events.append({"ts": call.ts, "kind": kind, "pid": call.pid, "data": data})
        return data

    for c in calls:
        a = c.args
        try:
            if c.name == "getsockopt" and len(a) > 3 and a[2] == "SO_ERROR":
                # How a non-blocking connect (EINPROGRESS) ended: [0] connected, else the errno.
                pending = connecting.get((c.pid, a[0].split("<", 1)[0]))
                code = re.match(r"\[(\w+)\]", a[3])    # [0], [EHOSTUNREACH] or [113]
                if pending is not None and pending["result"] == "EINPROGRESS" and code:
                    err = code.group(1)
                    pending["completion"] = "ok" if err == "0" else (
                        errno.errorcode.get(int(err), err) if err.isdigit() else err)
                    pending["completed_at"] = c.ts
            if a and ":[" in a[0] and (ends := socket_endpoints(a[0])) is not None:   # ":[": cheap pre-test
                pending = connecting.pop((c.pid, a[0].split("<", 1)[0]), None)
                if pending is not None:
                    pending["local_address"], pending["local_port"] = ends["local_address"], ends["local_port"]
            if c.name in SPAWN_CALLS:
                child = strace_pid(c.ret)
                if child is not None and child > 0:
                    parent[child] = c.pid
                    if c.pid in cwd:
                        cwd[child] = cwd[c.pid]
                    local = TRANSLATED_PID.match(c.ret.strip())     # the child's pid as its parent sees it
                    add(c, "spawn", child=child, child_local=int(local.group(1)),
                        thread=any("CLONE_THREAD" in x for x in a))
            elif c.name in ("execve", "execveat"):
                exe_idx = 0 if c.name == "execve" else 1
                argv = string_list(a[exe_idx + 1]) if len(a) > exe_idx + 1 else []
                add(c, "exec", exe=decode_c_string(a[exe_idx]), argv=argv, cmdline=" ".join(argv),
                    cwd=cwd.get(c.pid), ppid=parent.get(c.pid))
            elif c.name == "chdir":
                if _result(c.ret) == "ok":
                    cwd[c.pid] = _resolve(decode_c_string(a[0]), None, cwd.get(c.pid))
            elif c.name in ("open", "openat", "openat2", "creat"):
                flags = a[2] if c.name == "openat" and len(a) > 2 else (a[1] if len(a) > 1 else "")
                if c.name in ("openat", "openat2"):
                    p = _resolve(decode_c_string(a[1]), a[0], cwd.get(c.pid))
                else:
                    p = _resolve(decode_c_string(a[0]), None, cwd.get(c.pid))
                if c.name == "creat" or WRITE_FLAG.search(flags):
                    add(c, "open_write", path=annotated_path(c.ret) or p, flags=flags)
                elif p.startswith(SECRET_PREFIXES):
                    add(c, "open_read", path=annotated_path(c.ret) or p, flags=flags)
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
                add(c, "utime", path=p, times=times, **utime_times(times))
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
                sa = sockaddr(a[1])
                if sa and sa["family"] in ("AF_INET", "AF_INET6", "AF_UNIX", "AF_VSOCK", "AF_NETLINK"):
                    data = add(c, "connect", **sa)
                    if sa["family"] in ("AF_INET", "AF_INET6"):
                        proto = re.search(r"<(\w+):", a[0])
                        data["proto"] = proto.group(1) if proto else None
                        connecting[(c.pid, a[0].split("<", 1)[0])] = data
            elif c.name in ("accept", "accept4"):
                ends = socket_endpoints(c.ret)
                if ends:
                    add(c, "accept", **ends)
                elif _result(c.ret) != "ok":
                    add(c, "accept", error=c.ret)
            elif c.name == "bind" and len(a) > 1:
                sa = sockaddr(a[1])
                if sa and sa["family"] in ("AF_INET", "AF_INET6"):
                    add(c, "bind", **sa)
            elif c.name == "listen":
                add(c, "listen", **(socket_endpoints(a[0]) or {}))
            elif c.name in ("kill", "tkill", "tgkill"):
                target = (a[0] if c.name != "tgkill" else a[1]).strip()
                m = TRANSLATED_PID.match(target)
                # target: the pid as the caller named it (-1, 1, ...); target_pid: the same in the world's namespace
                add(c, "kill", syscall=c.name, target=int(m.group(1)) if m else target, target_pid=strace_pid(target),
                    signal=a[-1])
            elif c.name == "ptrace" and a:
                add(c, "ptrace", request=a[0], target=a[1] if len(a) > 1 else None)
            elif c.name == "seccomp_blocked":
                add(c, "seccomp_blocked", syscall=a[0])
            elif c.name in PRIVILEGED_CALLS:
                add(c, "privileged_op", syscall=c.name, args=[decode_c_string(x) for x in a])
            elif c.name in SETUID_CALLS:
                add(c, "setuid", syscall=c.name, args=a)
            elif c.name == "socket" and a and (a[0] not in USUAL_FAMILIES or _result(c.ret) != "ok"):
                add(c, "socket", family=a[0], type=a[1] if len(a) > 1 else None)
        except (IndexError, ValueError):
            continue
    for pid, (ts, how) in exits.items():
        events.append({"ts": ts, "kind": "exit", "pid": pid, "data": {"status": how}})
    return events
