"""The eBPF syscall recorder's JSON-lines records (runner/ebpf) -> the lines `strace -f -ttt -yy
--pidns-translation` prints for the same calls, so runner.strace_parse.process_events reads a
trial's record exactly as it reads a strace -o file.

A record file holds one tag's records (one trial's process tree). Record types: `sys` (a completed
call; for execve only its result), `exec_enter` (execve's filename and argv, read at entry),
`fork` (a child's pids in every pid namespace), `exit`, `sigsys` (a seccomp trap), and the
recorder's own `lost` / `stats` (running totals of records the ring buffer dropped). Strings are
byte strings written as JSON code points 0-255 (latin-1). Timestamps are realtime ns, JSON integers
(exact; seconds as a float would lose the last digits). Each line is parsed and validated in one
pass by pydantic-core.
"""
from __future__ import annotations

import errno
import os
import signal
import time
from functools import cache
from pathlib import Path
from typing import Annotated, Callable, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter

# --- the record format ----------------------------------------------------------------------------


TimestampNs = Annotated[int, Field(strict=True, ge=0)]      # realtime ns
# Bytes as code points 0-255 (checked in pydantic-core: a Python validator per string cost ~3 us).
ByteText = Annotated[str, Field(pattern=r"^[\x00-\xff]*$")]
Endpoint = tuple[str, int]          # (address, port) as the loader prints them


class StrItem(BaseModel):
    k: Literal["str"]
    a: int
    v: ByteText
    truncated: bool = False
    error: bool = False


class PathItem(BaseModel):
    """A resolved path; a = 7: the task's cwd (for AT_FDCWD)."""
    k: Literal["path"]
    a: int
    path: ByteText
    unreachable: bool = False
    truncated: bool = False
    error: bool = False


class SocketState(BaseModel):
    family: int
    type: int
    proto: int
    state: int
    local: Endpoint
    peer: Endpoint


class FdItem(BaseModel):
    """What an fd (a = 6: the returned one) referred to: a path, a socket or nothing nameable."""
    k: Literal["fd"]
    a: int
    fd: int
    mode: int
    rdev: tuple[int, int]
    ino: int
    sock: SocketState | None = None
    deleted: bool = False
    path: ByteText | None = None
    unreachable: bool = False
    truncated: bool = False
    error: bool = False


class ArgvItem(BaseModel):
    k: Literal["argv"]
    v: list[ByteText]
    truncated: list[int] = []       # indexes of elements cut at the recorder's string limit


class MemItem(BaseModel):
    """A small struct copied from the caller's memory (utimensat times, clone3 args, SO_ERROR)."""
    k: Literal["mem"]
    a: int
    hex: str
    error: bool = False


class SockaddrValue(BaseModel):
    family: int
    addr: str | None = None
    port: int | None = None
    flowinfo: int = 0
    scope_id: int = 0
    abstract: bool = False
    path: ByteText | None = None
    hex: str


class SockaddrItem(BaseModel):
    k: Literal["sockaddr"]
    a: int
    v: SockaddrValue


class PidsItem(BaseModel):
    """A new task's (pid namespace inode, pid) at the tag's level and the three below it."""
    k: Literal["pids"]
    a: int
    v: list[tuple[int, int]]


Item = Annotated[Union[StrItem, PathItem, FdItem, ArgvItem, MemItem, SockaddrItem, PidsItem],
                 Field(discriminator="k")]


class TaskRecord(BaseModel):
    """Fields of every record a traced task makes: host tid/pid, the same in the tag's pid namespace
    (ntid/npid: what strace --pidns-translation prints), its own pid (vtid) and pid namespace."""
    ts: TimestampNs
    tag: str
    tid: int
    pid: int
    ntid: int
    npid: int
    vtid: int
    pidns: int
    items: list[Item] = []


Args = tuple[int, int, int, int, int, int]      # the six argument registers, unsigned


class SyscallRecord(TaskRecord):
    type: Literal["sys"]
    ts_exit: TimestampNs
    nr: int
    name: str
    args: Args
    ret: int
    child_npid: int = 0             # clone/fork: the child's pid in the tag's namespace


class ExecEnterRecord(TaskRecord):
    type: Literal["exec_enter"]
    nr: int
    name: Literal["execve", "execveat"]
    args: Args
    argv_truncated: bool = False


class ForkRecord(TaskRecord):
    type: Literal["fork"]
    child_tid: int
    child_pid: int
    child_ntid: int
    child_vtid: int


class ExitRecord(TaskRecord):
    type: Literal["exit"]
    exit_code: int                  # wait status: signal in the low 7 bits, else exit code << 8
    group_dead: bool


class SigsysRecord(TaskRecord):
    type: Literal["sigsys"]
    syscall: int
    arch: int
    si_code: int
    call_addr: int
    result: int


class LossRecord(BaseModel):
    """The recorder's counters for this tag, running totals: `lost` when records went missing, `stats`
    once at the end. Three ways to miss records: the ring buffer was full (lost), a call found no room
    to keep its arguments (inflight_full), a new task found no room to be followed (traced_full)."""
    type: Literal["lost", "stats"]
    ts: TimestampNs
    lost: int
    inflight_full: int = 0
    traced_full: int = 0


Record = Annotated[Union[SyscallRecord, ExecEnterRecord, ForkRecord, ExitRecord, SigsysRecord, LossRecord],
                   Field(discriminator="type")]
RECORD = TypeAdapter(Record)


class RecordsSummary(BaseModel):
    records: int        # lines in the record file
    lines: int          # strace lines written
    processes: int      # distinct processes (host thread-group ids) that made a record
    lost: int           # records the recorder counted as missing (0: the record is complete)


# --- strace's names for numbers (x86_64) ----------------------------------------------------------

# strace's order (O_TMPFILE before O_DIRECTORY, which it contains)
O_FLAGS = [("O_CREAT", 0o100), ("O_EXCL", 0o200), ("O_NOCTTY", 0o400), ("O_TRUNC", 0o1000), ("O_APPEND", 0o2000),
           ("O_NONBLOCK", 0o4000), ("O_SYNC", 0o4010000), ("O_DSYNC", 0o10000), ("O_ASYNC", 0o20000),
           ("O_DIRECT", 0o40000), ("O_LARGEFILE", 0o100000), ("O_NOFOLLOW", 0o400000), ("O_NOATIME", 0o1000000),
           ("O_CLOEXEC", 0o2000000), ("O_PATH", 0o10000000), ("O_TMPFILE", 0o20200000), ("O_DIRECTORY", 0o200000)]
O_MODE_GIVEN = 0o20000100           # O_CREAT or O_TMPFILE: open takes a mode argument
MS_FLAGS = [("MS_RDONLY", 1), ("MS_NOSUID", 2), ("MS_NODEV", 4), ("MS_NOEXEC", 8), ("MS_SYNCHRONOUS", 16),
            ("MS_REMOUNT", 32), ("MS_MANDLOCK", 64), ("MS_DIRSYNC", 128), ("MS_NOSYMFOLLOW", 256),
            ("MS_NOATIME", 1024), ("MS_NODIRATIME", 2048), ("MS_BIND", 4096), ("MS_MOVE", 8192),
            ("MS_REC", 16384), ("MS_SILENT", 32768), ("MS_POSIXACL", 1 << 16), ("MS_UNBINDABLE", 1 << 17),
            ("MS_PRIVATE", 1 << 18), ("MS_SLAVE", 1 << 19), ("MS_SHARED", 1 << 20), ("MS_RELATIME", 1 << 21),
            ("MS_KERNMOUNT", 1 << 22), ("MS_I_VERSION", 1 << 23), ("MS_STRICTATIME", 1 << 24),
            ("MS_LAZYTIME", 1 << 25), ("MS_ACTIVE", 1 << 30), ("MS_NOUSER", 1 << 31)]
MS_MGC_VAL, MS_MGC_MASK = 0xC0ED0000, 0xFFFF0000
UMOUNT_FLAGS = [("MNT_FORCE", 1), ("MNT_DETACH", 2), ("MNT_EXPIRE", 4), ("UMOUNT_NOFOLLOW", 8)]
CLONE_FLAGS = [("CLONE_VM", 0x100), ("CLONE_FS", 0x200), ("CLONE_FILES", 0x400), ("CLONE_SIGHAND", 0x800),
               ("CLONE_PIDFD", 0x1000), ("CLONE_PTRACE", 0x2000), ("CLONE_VFORK", 0x4000),
               ("CLONE_PARENT", 0x8000), ("CLONE_THREAD", 0x10000), ("CLONE_NEWNS", 0x20000),
               ("CLONE_SYSVSEM", 0x40000), ("CLONE_SETTLS", 0x80000), ("CLONE_PARENT_SETTID", 0x100000),
               ("CLONE_CHILD_CLEARTID", 0x200000), ("CLONE_DETACHED", 0x400000), ("CLONE_UNTRACED", 0x800000),
               ("CLONE_CHILD_SETTID", 0x1000000), ("CLONE_NEWCGROUP", 0x2000000), ("CLONE_NEWUTS", 0x4000000),
               ("CLONE_NEWIPC", 0x8000000), ("CLONE_NEWUSER", 0x10000000), ("CLONE_NEWPID", 0x20000000),
               ("CLONE_NEWNET", 0x40000000), ("CLONE_IO", 0x80000000)]
CLONE_SETTLS, CLONE_PARENT_SETTID, CLONE_CHILD_TID = 0x80000, 0x100000, 0x1200000   # which pointers clone prints
AT_FLAGS = [("AT_SYMLINK_NOFOLLOW", 0x100), ("AT_REMOVEDIR", 0x200), ("AT_SYMLINK_FOLLOW", 0x400),
            ("AT_NO_AUTOMOUNT", 0x800), ("AT_EMPTY_PATH", 0x1000)]
AT_FDCWD = -100
RENAME_FLAGS = [("RENAME_NOREPLACE", 1), ("RENAME_EXCHANGE", 2), ("RENAME_WHITEOUT", 4)]
SOCK_FLAGS = [("SOCK_NONBLOCK", 0o4000), ("SOCK_CLOEXEC", 0o2000000)]
SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET", 6: "SOCK_DCCP",
              10: "SOCK_PACKET"}
AF_INET, AF_INET6, AF_UNIX, AF_VSOCK = 2, 10, 1, 40
AF_NAMES = {0: "AF_UNSPEC", 1: "AF_UNIX", 2: "AF_INET", 3: "AF_AX25", 4: "AF_IPX", 5: "AF_APPLETALK", 9: "AF_X25",
            10: "AF_INET6", 15: "AF_KEY", 16: "AF_NETLINK", 17: "AF_PACKET", 29: "AF_CAN", 31: "AF_BLUETOOTH",
            38: "AF_ALG", 40: "AF_VSOCK", 44: "AF_XDP"}
IPPROTO = {0: "IPPROTO_IP", 1: "IPPROTO_ICMP", 6: "IPPROTO_TCP", 17: "IPPROTO_UDP", 58: "IPPROTO_ICMPV6",
           132: "IPPROTO_SCTP", 255: "IPPROTO_RAW"}
SOL_SOCKET = 1
SOL_SOCKET_OPTS = {1: "SO_DEBUG", 2: "SO_REUSEADDR", 3: "SO_TYPE", 4: "SO_ERROR", 7: "SO_SNDBUF", 8: "SO_RCVBUF",
                   9: "SO_KEEPALIVE", 17: "SO_PEERCRED", 38: "SO_PROTOCOL", 39: "SO_DOMAIN"}
PTRACE_REQUESTS = {0: "PTRACE_TRACEME", 1: "PTRACE_PEEKTEXT", 2: "PTRACE_PEEKDATA", 3: "PTRACE_PEEKUSER",
                   4: "PTRACE_POKETEXT", 5: "PTRACE_POKEDATA", 6: "PTRACE_POKEUSER", 7: "PTRACE_CONT",
                   8: "PTRACE_KILL", 9: "PTRACE_SINGLESTEP", 12: "PTRACE_GETREGS", 13: "PTRACE_SETREGS",
                   16: "PTRACE_ATTACH", 17: "PTRACE_DETACH", 0x4200: "PTRACE_SETOPTIONS", 0x4206: "PTRACE_SEIZE",
                   0x4207: "PTRACE_INTERRUPT"}
S_IFMT, S_IFCHR, S_IFBLK = 0o170000, 0o020000, 0o060000
TCP_CLOSE, TCP_LISTEN = 7, 10
OTHER_SOCKET_NAMES = {AF_UNIX: "UNIX", 16: "NETLINK"}     # how -yy names a non-IP socket
IPPROTO_TCP, IPPROTO_UDP = 6, 17
SYS_SECCOMP = 1                     # si_code of a seccomp trap
AUDIT_ARCH_X86_64 = 0xC000003E
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
SYSCALL_HEADER = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


@cache
def syscall_names() -> dict[int, str]:
    """x86_64 syscall numbers -> names (a SIGSYS carries only the number), from linux-libc-dev's
    header (installed with libc6-dev, see setup.sh)."""
    if not SYSCALL_HEADER.exists():
        raise FileNotFoundError(f"{SYSCALL_HEADER} missing (install linux-libc-dev): needed to name SIGSYS calls")
    names = {}
    for line in SYSCALL_HEADER.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "#define" and parts[1].startswith("__NR_"):
            names[int(parts[2])] = parts[1][len("__NR_"):]
    return names


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        rt_min = signal.SIGRTMIN.value
        return f"SIGRT_{number - rt_min}" if rt_min < number < signal.SIGRTMAX.value else str(number)


def flag_names(value: int, table: list[tuple[str, int]]) -> str:
    names, rest = [], value
    for name, bits in table:
        if rest & bits == bits:
            names.append(name)
            rest &= ~bits
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


def open_flags(value: int) -> str:
    access = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR"}.get(value & 3, "O_ACCMODE")
    return access + ("|" + flag_names(value & ~3, O_FLAGS) if value & ~3 else "")


def file_mode(mode: int) -> str:
    return f"0{mode & 0o7777:03o}" if mode & 0o7777 else "000"


def signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def pointer(value: int) -> str:
    return hex(value) if value else "NULL"


C_ESCAPES = {ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r", ord("\v"): "\\v", ord("\f"): "\\f",
             ord('"'): '\\"', ord("\\"): "\\\\"}


def c_string(text: str, cut: bool = False) -> str:
    """A C string literal as strace prints it (text: bytes as latin-1 code points)."""
    if text.isprintable() and text.isascii() and '"' not in text and "\\" not in text:
        return f'"{text}"' + ("..." if cut else "")        # most paths: nothing to escape
    out = []
    for i, code in enumerate(map(ord, text)):
        if code in C_ESCAPES:
            out.append(C_ESCAPES[code])
        elif 0x20 <= code < 0x7F:
            out.append(chr(code))
        elif i + 1 < len(text) and text[i + 1] in "01234567":   # \1 followed by a digit would read as \1N
            out.append(f"\\{code:03o}")
        else:
            out.append(f"\\{code:o}")
    return '"' + "".join(out) + '"' + ("..." if cut else "")


def result_text(ret: int) -> str:
    if -4096 < ret < 0:
        return f"-1 {errno.errorcode.get(-ret, str(-ret))} ({os.strerror(-ret)})"
    return str(ret)


def endpoint_text(family: int, endpoint: Endpoint) -> str:
    return f"[{endpoint[0]}]:{endpoint[1]}" if family == AF_INET6 else f"{endpoint[0]}:{endpoint[1]}"


def fd_text(item: FdItem | None, fd: int) -> str:
    """An fd as -yy decorates it."""
    if item is None:
        return str(fd)
    if (sock := item.sock) is not None:
        if sock.family in (AF_INET, AF_INET6):
            name = {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP"}.get(sock.proto, "RAW") + ("v6" if sock.family == AF_INET6 else "")
            if sock.proto == IPPROTO_TCP and sock.state == TCP_CLOSE or not sock.local[1]:
                return f"{fd}<{name}:[{item.ino}]>"
            if sock.state == TCP_LISTEN or not sock.peer[1]:
                return f"{fd}<{name}:[{endpoint_text(sock.family, sock.local)}]>"
            return f"{fd}<{name}:[{endpoint_text(sock.family, sock.local)}->{endpoint_text(sock.family, sock.peer)}]>"
        return f"{fd}<{OTHER_SOCKET_NAMES.get(sock.family, 'socket')}:[{item.ino}]>"
    if item.path is None:
        return str(fd)
    # strace -yy prints readlink's " (deleted)" after the brackets: 3</workspace/gone>(deleted)
    deleted = "(deleted)" if item.deleted else ""
    kind = {S_IFCHR: "char", S_IFBLK: "block"}.get(item.mode & S_IFMT)
    if kind:
        return f"{fd}<{item.path}<{kind} {item.rdev[0]}:{item.rdev[1]}>>{deleted}"
    return f"{fd}<{item.path}>{deleted}"


def sockaddr_text(sa: SockaddrValue | None, address: int) -> str:
    if sa is None:
        return pointer(address)
    family = AF_NAMES.get(sa.family, str(sa.family))
    if sa.family == AF_INET and sa.addr is not None:
        return f'{{sa_family={family}, sin_port=htons({sa.port}), sin_addr=inet_addr("{sa.addr}")}}'
    if sa.family == AF_INET6 and sa.addr is not None:
        return (f"{{sa_family={family}, sin6_port=htons({sa.port}), sin6_flowinfo=htonl({sa.flowinfo}), "
                f'inet_pton(AF_INET6, "{sa.addr}", &sin6_addr), sin6_scope_id={sa.scope_id}}}')
    if sa.family == AF_UNIX and sa.path is not None:
        return f"{{sa_family={family}, sun_path={'@' if sa.abstract else ''}{c_string(sa.path)}}}"
    raw = bytes.fromhex(sa.hex)
    if sa.family == AF_VSOCK:      # struct sockaddr_vm: family, reserved, port, cid
        port, cid = int.from_bytes(raw[4:8], "little"), int.from_bytes(raw[8:12], "little")
        return f"{{sa_family={family}, svm_cid={cid}, svm_port={port}}}"
    return f"{{sa_family={family}, sa_data={c_string(raw[2:].decode('latin-1'))}}}"


def endpoint_sockaddr(sock: SocketState, address: int, endpoint: Endpoint) -> str:
    return sockaddr_text(SockaddrValue(family=sock.family, addr=endpoint[0], port=endpoint[1], hex=""), address)


def times_text(raw_hex: str | None, address: int, microseconds: bool) -> str:
    """utimensat's timespec[2] (futimesat/utimes: timeval[2]) as strace prints them."""
    if not address:
        return "NULL"
    raw = bytes.fromhex(raw_hex or "")
    if len(raw) < 32:
        return hex(address)
    unit = "usec" if microseconds else "nsec"
    out = []
    for i in (0, 16):
        sec = int.from_bytes(raw[i:i + 8], "little", signed=True)
        frac = int.from_bytes(raw[i + 8:i + 16], "little", signed=True)
        if not microseconds and frac in (UTIME_NOW, UTIME_OMIT):
            out.append(f"{{tv_sec={sec}, tv_nsec={'UTIME_NOW' if frac == UTIME_NOW else 'UTIME_OMIT'}}}")
            continue
        when = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(sec))
        digits = f".{frac:06d}" if microseconds else f".{frac:09d}"
        out.append(f"{{tv_sec={sec}, tv_{unit}={frac}}} /* {when[:19]}{digits if frac else ''}{when[19:]} */")
    return "[" + ", ".join(out) + "]"


def utime_text(raw_hex: str | None, address: int) -> str:
    if not address:
        return "NULL"
    raw = bytes.fromhex(raw_hex or "")
    if len(raw) < 16:
        return hex(address)
    return f"{{actime={int.from_bytes(raw[0:8], 'little')}, modtime={int.from_bytes(raw[8:16], 'little')}}}"


# --- records -> lines -----------------------------------------------------------------------------


class SyscallView:
    """One `sys` record's items by argument index, with the argument renderings strace uses."""

    def __init__(self, rec: SyscallRecord | ExecEnterRecord):
        self.rec, self.a = rec, rec.args
        self.strs: dict[int, str] = {}
        self.paths: dict[int, PathItem] = {}
        self.fds: dict[int, FdItem] = {}
        self.argv: ArgvItem | None = None
        self.mem: str | None = None
        self.sockaddr: SockaddrValue | None = None
        for item in rec.items:
            if isinstance(item, StrItem):
                self.strs[item.a] = c_string(item.v, item.truncated)
            elif isinstance(item, PathItem):
                self.paths[item.a] = item
            elif isinstance(item, FdItem):
                self.fds[item.a] = item
            elif isinstance(item, ArgvItem):
                self.argv = item
            elif isinstance(item, MemItem):
                self.mem = item.hex
            elif isinstance(item, SockaddrItem):
                self.sockaddr = item.v

    def string(self, i: int) -> str:
        return self.strs.get(i, pointer(self.a[i]))

    def fd(self, i: int) -> str:
        return fd_text(self.fds.get(i), signed32(self.a[i]))

    def dirfd(self, i: int) -> str:
        if signed32(self.a[i]) == AT_FDCWD:
            cwd = self.paths.get(i)
            return f"AT_FDCWD<{cwd.path}>" if cwd else "AT_FDCWD"
        return self.fd(i)

    def unconnected_fd(self, i: int) -> str:
        """connect/bind's socket as strace decorates it, at entry: not yet bound or connected."""
        item = self.fds.get(i)
        if item is not None and item.sock is not None:
            item = item.model_copy(update={"sock": item.sock.model_copy(update={"state": TCP_CLOSE})})
        return fd_text(item, signed32(self.a[i]))


def _open_args(v: SyscallView) -> str:
    a = v.a
    if v.rec.name == "creat":
        return f"{v.string(0)}, {file_mode(a[1])}"
    if v.rec.name == "open":
        return f"{v.string(0)}, {open_flags(a[1])}" + (f", {file_mode(a[2])}" if a[1] & O_MODE_GIVEN else "")
    return f"{v.dirfd(0)}, {v.string(1)}, {open_flags(a[2])}" + (f", {file_mode(a[3])}" if a[2] & O_MODE_GIVEN else "")


def _openat2_args(v: SyscallView) -> str:
    how = bytes.fromhex(v.mem or "")         # struct open_how: flags, mode, resolve
    flags, mode = int.from_bytes(how[0:8], "little"), int.from_bytes(how[8:16], "little")
    return (f"{v.dirfd(0)}, {v.string(1)}, {{flags={open_flags(flags)}"
            + (f", mode={file_mode(mode)}" if mode else "") + f"}}, {v.a[3]}")


def _accept_args(v: SyscallView) -> str:
    a, ret_fd = v.a, v.fds.get(6)
    peer = ret_fd.sock if ret_fd is not None else None
    if a[1] and peer is not None:
        address = endpoint_sockaddr(peer, a[1], peer.peer)
        length = f"[{16 if peer.family == AF_INET else 28}]"
    else:
        address, length = pointer(a[1]), pointer(a[2])
    return f"{v.fd(0)}, {address}, {length}" + (f", {flag_names(a[3], SOCK_FLAGS)}" if v.rec.name == "accept4" else "")


def _getsockname_args(v: SyscallView) -> str:
    item = v.fds.get(0)
    sock = item.sock if item is not None else None
    address = hex(v.a[1])
    if sock is not None and v.rec.ret == 0 and sock.family in (AF_INET, AF_INET6):
        address = endpoint_sockaddr(sock, v.a[1], sock.local)
    return f"{v.fd(0)}, {address}, {hex(v.a[2])}"


def _getsockopt_args(v: SyscallView) -> str:
    a = v.a
    level = "SOL_SOCKET" if a[1] == SOL_SOCKET else str(a[1])
    option = SOL_SOCKET_OPTS.get(a[2], str(a[2])) if a[1] == SOL_SOCKET else str(a[2])
    value = hex(a[3])
    if v.mem and v.rec.ret == 0:
        number = int.from_bytes(bytes.fromhex(v.mem)[:4], "little", signed=True)
        value = f"[{errno.errorcode.get(number, number) if option == 'SO_ERROR' and number else number}]"
    return f"{v.fd(0)}, {level}, {option}, {value}, {hex(a[4])}"


def _socket_args(v: SyscallView) -> str:
    a = v.a
    sock_type = SOCK_TYPES.get(a[1] & 0xF, str(a[1] & 0xF)) + "".join(f"|{n}" for n, bit in SOCK_FLAGS if a[1] & bit)
    proto = IPPROTO.get(a[2], str(a[2])) if a[0] in (AF_INET, AF_INET6) else str(a[2])
    return f"{AF_NAMES.get(a[0], str(a[0]))}, {sock_type}, {proto}"


def _clone_args(v: SyscallView) -> str:
    flags, sig = v.a[0] & ~0xFF, v.a[0] & 0xFF        # x86_64 clone: flags, stack, parent_tid, child_tid, tls
    text = f"child_stack={pointer(v.a[1])}, flags={flag_names(flags, CLONE_FLAGS)}" + (f"|{signal_name(sig)}" if sig else "")
    if flags & CLONE_PARENT_SETTID:
        text += f", parent_tid={hex(v.a[2])}"
    if flags & CLONE_CHILD_TID:
        text += f", child_tidptr={hex(v.a[3])}"
    if flags & CLONE_SETTLS:
        text += f", tls={hex(v.a[4])}"
    return text


def _clone3_args(v: SyscallView) -> str:
    flags = int.from_bytes(bytes.fromhex(v.mem or "")[:8], "little")
    return f"{{flags={flag_names(flags, CLONE_FLAGS)}}}, {v.a[1]}"


def _mount_args(v: SyscallView) -> str:
    flags, magic = v.a[3], ""
    if flags & MS_MGC_MASK == MS_MGC_VAL:
        flags, magic = flags & ~MS_MGC_MASK, "MS_MGC_VAL|"
    return f"{v.string(0)}, {v.string(1)}, {v.string(2)}, {magic}{flag_names(flags, MS_FLAGS)}, {v.string(4)}"


def _signal_arg(number: int) -> str:
    return signal_name(number) if number else "0"


# Argument text per syscall (strace's own layout). kill/ptrace/clone need the converter's pid table.
ARGS_TEXT: dict[str, Callable[[SyscallView], str]] = {
    "open": _open_args, "openat": _open_args, "creat": _open_args, "openat2": _openat2_args,
    "chdir": lambda v: v.string(0), "unlink": lambda v: v.string(0), "rmdir": lambda v: v.string(0),
    "chroot": lambda v: v.string(0),
    "rename": lambda v: f"{v.string(0)}, {v.string(1)}", "link": lambda v: f"{v.string(0)}, {v.string(1)}",
    "symlink": lambda v: f"{v.string(0)}, {v.string(1)}", "pivot_root": lambda v: f"{v.string(0)}, {v.string(1)}",
    "renameat": lambda v: f"{v.dirfd(0)}, {v.string(1)}, {v.dirfd(2)}, {v.string(3)}",
    "linkat": lambda v: f"{v.dirfd(0)}, {v.string(1)}, {v.dirfd(2)}, {v.string(3)}, {flag_names(v.a[4], AT_FLAGS)}",
    "renameat2": lambda v: f"{v.dirfd(0)}, {v.string(1)}, {v.dirfd(2)}, {v.string(3)}, {flag_names(v.a[4], RENAME_FLAGS)}",
    "symlinkat": lambda v: f"{v.string(0)}, {v.dirfd(1)}, {v.string(2)}",
    "unlinkat": lambda v: f"{v.dirfd(0)}, {v.string(1)}, {flag_names(v.a[2], AT_FLAGS)}",
    "mkdir": lambda v: f"{v.string(0)}, {file_mode(v.a[1])}", "chmod": lambda v: f"{v.string(0)}, {file_mode(v.a[1])}",
    "mkdirat": lambda v: f"{v.dirfd(0)}, {v.string(1)}, {file_mode(v.a[2])}",
    "fchmod": lambda v: f"{v.fd(0)}, {file_mode(v.a[1])}",
    "fchmodat": lambda v: f"{v.dirfd(0)}, {v.string(1)}, {file_mode(v.a[2])}",
    "fchmodat2": lambda v: f"{v.dirfd(0)}, {v.string(1)}, {file_mode(v.a[2])}, {flag_names(v.a[3], AT_FLAGS)}",
    "truncate": lambda v: f"{v.string(0)}, {signed64(v.a[1])}", "ftruncate": lambda v: f"{v.fd(0)}, {signed64(v.a[1])}",
    "utimensat": lambda v: f"{v.dirfd(0)}, {v.string(1)}, {times_text(v.mem, v.a[2], False)}, {flag_names(v.a[3], AT_FLAGS)}",
    "futimesat": lambda v: f"{v.dirfd(0)}, {v.string(1)}, {times_text(v.mem, v.a[2], True)}",
    "utimes": lambda v: f"{v.string(0)}, {times_text(v.mem, v.a[1], True)}",
    "utime": lambda v: f"{v.string(0)}, {utime_text(v.mem, v.a[1])}",
    "connect": lambda v: f"{v.unconnected_fd(0)}, {sockaddr_text(v.sockaddr, v.a[1])}, {v.a[2]}",
    "bind": lambda v: f"{v.unconnected_fd(0)}, {sockaddr_text(v.sockaddr, v.a[1])}, {v.a[2]}",
    "listen": lambda v: f"{v.fd(0)}, {signed32(v.a[1])}",
    "accept": _accept_args, "accept4": _accept_args, "getsockname": _getsockname_args,
    "getsockopt": _getsockopt_args, "socket": _socket_args,
    "clone": _clone_args, "clone3": _clone3_args, "fork": lambda v: "", "vfork": lambda v: "",
    "mount": _mount_args, "umount2": lambda v: f"{v.string(0)}, {flag_names(v.a[1], UMOUNT_FLAGS)}",
    "unshare": lambda v: flag_names(v.a[0], CLONE_FLAGS),
    "setns": lambda v: f"{v.fd(0)}, {flag_names(v.a[1], CLONE_FLAGS)}",
    "setuid": lambda v: str(signed32(v.a[0])), "setreuid": lambda v: f"{signed32(v.a[0])}, {signed32(v.a[1])}",
    "setresuid": lambda v: f"{signed32(v.a[0])}, {signed32(v.a[1])}, {signed32(v.a[2])}",
}
SPAWN_CALLS = ("clone", "clone3", "fork", "vfork")


class StraceLines:
    """Collects the strace lines of one tag's records, fed in file order (= the order the calls
    returned: a fork record always precedes any call naming the child)."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, int, str]] = []        # (entry ts in ns, arrival, text): sorted at the end
        # (pid namespace inode, pid there) -> the same task's pid in the tag's namespace
        self.tag_pids: dict[tuple[int, int], int] = {}
        self.exec_entries: dict[tuple[int, int], ExecEnterRecord] = {}   # (host pid, entry ts) -> entry

    def add(self, rec: TaskRecord, text: str, result: str | None = None) -> None:
        # -ttt: seconds with microseconds; strace aligns " = result" at column 40
        line = f"{rec.ntid:<5} {rec.ts // 1_000_000_000}.{rec.ts // 1000 % 1_000_000:06d} {text}"
        if result is not None:
            line = f"{line:<39} = {result}"
        self.lines.append((rec.ts, len(self.lines), line))

    def feed(self, rec: TaskRecord) -> None:
        if isinstance(rec, SyscallRecord):
            self.syscall(rec)
        elif isinstance(rec, ExecEnterRecord):
            self.exec_entries[(rec.pid, rec.ts)] = rec
        elif isinstance(rec, ForkRecord):
            for item in rec.items:
                if isinstance(item, PidsItem):
                    self.tag_pids.update({(inode, pid): rec.child_ntid for inode, pid in item.v if inode})
        elif isinstance(rec, ExitRecord):
            sig = rec.exit_code & 0x7F
            if sig:
                self.add(rec, f"+++ killed by {signal_name(sig)}{' (core dumped)' if rec.exit_code & 0x80 else ''} +++")
            else:
                self.add(rec, f"+++ exited with {(rec.exit_code >> 8) & 0xFF} +++")
        elif isinstance(rec, SigsysRecord):
            if rec.si_code == SYS_SECCOMP:
                name = syscall_names().get(rec.syscall, str(rec.syscall))
                arch = "AUDIT_ARCH_X86_64" if rec.arch == AUDIT_ARCH_X86_64 else hex(rec.arch)
                self.add(rec, f"--- SIGSYS {{si_signo=SIGSYS, si_code=SYS_SECCOMP, si_call_addr={hex(rec.call_addr)}, "
                              f"si_syscall=__NR_{name}, si_arch={arch}}} ---")
            else:
                self.add(rec, "--- SIGSYS {si_signo=SIGSYS, si_code=SI_USER} ---")

    def pid_arg(self, rec: SyscallRecord, value: int) -> str:
        """A pid argument (in the caller's namespace) with --pidns-translation's comment."""
        pid = signed32(value)
        in_tag_ns = self.tag_pids.get((rec.pidns, pid)) if pid > 0 else None
        return f"{pid} /* {in_tag_ns} in strace's PID NS */" if in_tag_ns not in (None, pid) else str(pid)

    def syscall(self, rec: SyscallRecord) -> None:
        if rec.name in ("execve", "execveat"):
            entry = self.exec_entries.pop((rec.pid, rec.ts), None)
            if entry is not None:       # else its entry record went missing: counted in the summary's `lost`
                self.exec_line(entry, result_text(rec.ret))
            return
        view = SyscallView(rec)
        result = result_text(rec.ret)
        if rec.ret >= 0 and 6 in view.fds:
            result = fd_text(view.fds[6], rec.ret)
        a = rec.args
        if rec.name in ("kill", "tkill"):
            args = f"{self.pid_arg(rec, a[0])}, {_signal_arg(a[1])}"
        elif rec.name == "tgkill":
            args = f"{self.pid_arg(rec, a[0])}, {self.pid_arg(rec, a[1])}, {_signal_arg(a[2])}"
        elif rec.name == "ptrace":
            args = f"{PTRACE_REQUESTS.get(a[0], hex(a[0]))}, {self.pid_arg(rec, a[1])}"
        elif rec.name in ARGS_TEXT:
            args = ARGS_TEXT[rec.name](view)
        else:
            args = ", ".join(map(hex, a))
        if rec.name in SPAWN_CALLS and rec.ret > 0 and rec.child_npid not in (0, rec.ret):
            result = f"{rec.ret} /* {rec.child_npid} in strace's PID NS */"
        self.add(rec, f"{rec.name}({args})", result)

    def exec_line(self, entry: ExecEnterRecord, result: str) -> None:
        view = SyscallView(entry)
        cut = set(view.argv.truncated) if view.argv else set()
        argv = [c_string(arg, i in cut) for i, arg in enumerate(view.argv.v)] if view.argv else []
        argv_text = "[" + ", ".join(argv + (["..."] if entry.argv_truncated else [])) + "]"
        a = entry.args
        if entry.name == "execve":
            args = f"{view.strs.get(0, 'NULL')}, {argv_text}, {hex(a[2])} /* ? vars */"
        else:
            args = (f"{view.dirfd(0)}, {view.strs.get(1, 'NULL')}, {argv_text}, {hex(a[3])} /* ? vars */, "
                    f"{flag_names(a[4], AT_FLAGS)}")
        self.add(entry, f"{entry.name}({args})", result)

    def finish(self) -> list[str]:
        for entry in self.exec_entries.values():    # an exec that never returned (killed meanwhile): strace's `= ?`
            self.exec_line(entry, "?")
        self.exec_entries.clear()
        return [text for _, _, text in sorted(self.lines)]


def records_to_strace(records_path: Path, out_path: Path) -> RecordsSummary:
    """Convert one tag's record file into strace -o output at out_path (lines in entry-time order,
    as process_events expects). A malformed record raises ValueError naming the file and line."""
    converter = StraceLines()
    records = lost = 0
    processes: set[int] = set()
    with records_path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                rec = RECORD.validate_json(line)
            except ValueError as exc:       # JSONDecodeError and pydantic's ValidationError are ValueErrors
                raise ValueError(f"{records_path}:{number}: malformed syscall record: {exc}") from exc
            records += 1
            if isinstance(rec, LossRecord):
                lost = max(lost, rec.lost + rec.inflight_full + rec.traced_full)
                continue
            processes.add(rec.pid)
            try:
                converter.feed(rec)
            except ValueError as exc:       # e.g. a mem item that is not hex
                raise ValueError(f"{records_path}:{number}: malformed syscall record: {exc}") from exc
    lines = converter.finish()
    # latin-1: every code point is one of the recorded bytes, written back as that byte (as strace would)
    out_path.write_text("".join(f"{line}\n" for line in lines), encoding="latin-1")
    return RecordsSummary(records=records, lines=len(lines), processes=len(processes), lost=lost)
