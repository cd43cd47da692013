/* Shared by recorder.bpf.c and recorder.c: the capture table bits, the record layout in the ring
 * buffer and the map values both sides read. A record is a rec_hdr followed by items (item header +
 * data, each padded to 8 bytes) so one record can carry any mix of strings, paths and fds. */
#ifndef RECORDER_H
#define RECORDER_H

#define NR_MAX 512            /* syscall numbers covered by the sysdesc table */
#define REC_MAX (1u << 19)    /* biggest record (an execve with 64 args of 4 KiB fits) */
#define REC_MASK (REC_MAX - 1)
#define SCRATCH_SZ (REC_MAX + 8192)   /* slack: a masked offset plus one bounded read stays inside */
#define STR_MAX 4096          /* one path or argv element */
#define ARGV_MAX 64
#define PATH_DEPTH 256        /* dentry/mount steps of a path walk (bpf_loop: verifier cost does not grow) */
#define PIDS_MAX 4            /* pid numbers recorded per fork: levels L..L+3 */
#define TRACED_MAX 65536      /* tasks followed, and recorded calls under way, at once */

/* sysdesc bits: what to capture for a syscall (filled by the loader, indexed by number) */
#define D_ON          (1u << 31)
#define D_STR(i)      (1u << (i))          /* arg i is a user C string (path) */
#define D_DIRFD(i)    (1u << (6 + (i)))    /* arg i is a dirfd: AT_FDCWD -> cwd, else the fd's path */
#define D_FD(i)       (1u << (12 + (i)))   /* arg i is an fd: its path / socket / device */
#define D_RETFD       (1u << 18)           /* the return value is an fd */
#define D_EXEC        (1u << 19)           /* execve(at): strings and argv read at entry */
#define D_SOCKADDR    (1u << 20)           /* arg1 is a sockaddr, arg2 its length */
#define D_CLONE       (1u << 21)           /* the return value is a child pid */
#define D_MEM_SHIFT   22                   /* 3 bits: arg index + 1 of a struct to copy; 2 bits: size code */
#define D_MEM_ARG(d)  (((d) >> D_MEM_SHIFT) & 7)
#define D_MEM_LEN(d)  (4u << (((d) >> (D_MEM_SHIFT + 3)) & 3))   /* 4, 8, 16, 32 bytes */

enum rec_type {
	REC_SYS = 1,        /* a completed syscall (for execve: the return only) */
	REC_EXEC_ENTER = 2, /* execve/execveat at entry: filename, argv, cwd */
	REC_FORK = 3,       /* sched_process_fork: aux = child tid, child tgid, child pid at L, child's own pid */
	REC_EXIT = 4,       /* sched_process_exit: aux[0] = task->exit_code */
	REC_SIGSYS = 5,     /* seccomp trap: aux[0] = syscall, aux[1] = arch, aux[2] = si_code */
};

enum item_kind {
	IT_STR = 1,     /* user string of arg argi */
	IT_PATH = 2,    /* path components leaf->root, each NUL-terminated; argi: which arg (7 = cwd) */
	IT_FDINFO = 3,  /* struct fdinfo for arg argi (6 = the return value) */
	IT_ARGV = 4,    /* argv element argi */
	IT_MEM = 5,     /* struct copied from user memory of arg argi */
	IT_SOCKADDR = 6,
	IT_PIDS = 7,    /* PIDS_MAX x {u32 ns inum, s32 nr} */
};
#define ARGI_RET 6
#define ARGI_CWD 7

/* item flags */
#define F_ROOT      1   /* path walk reached the task's root */
#define F_UNREACH   2   /* reached its mount namespace's root instead (as d_path: path from there) */
#define F_TRUNC     4   /* cut: too deep, too long, too many args */
#define F_ERR       8   /* could not be read */
#define F_PATHITEM  16  /* fdinfo: an IT_PATH item for the same argi follows */

/* record flags */
#define R_ARGV_TRUNC 1  /* more than ARGV_MAX args */
#define R_REC_TRUNC  2  /* the record hit REC_MAX */

struct rec_hdr {
	unsigned int len;          /* whole record, items included */
	unsigned short type;
	unsigned short flags;
	unsigned long long ts;     /* entry (CLOCK_MONOTONIC ns) */
	unsigned long long ts_exit;
	unsigned long long tag;    /* tag id (recorder.c: slot + generation) */
	unsigned int tid, tgid;    /* host */
	int ntid, ntgid;           /* in the pid namespace at level L (the tag's) */
	int vtid;                  /* in the task's own pid namespace */
	unsigned int pidns;        /* inum of the task's own pid namespace */
	int nr;
	int pad;
	long long ret;
	unsigned long long args[6];
	int aux[4];
};

struct item {
	unsigned char kind;
	unsigned char argi;
	unsigned short flags;
	unsigned int len;          /* data bytes (the next item starts at the 8-aligned end) */
};

struct fdinfo {
	int fd;
	unsigned int mode;         /* inode i_mode */
	unsigned int rdev;         /* kernel dev_t: major << 20 | minor */
	unsigned short sk_family, sk_type, sk_proto, lport, rport, sk_state;
	unsigned long long ino;
	unsigned char laddr[16], raddr[16];
};

/* map `traced`, host tid -> this: the task is followed, for that tag, with pids at that level */
struct traced_val {
	unsigned long long tag;
	unsigned int level;        /* pid namespace level L whose pids records carry */
	unsigned int pad;
};

/* map `inflight`, host tid -> this: a recorded call under way (its record is built at exit) */
struct inflight {
	unsigned long long ts;
	unsigned long long args[6];
	unsigned long long tag;
	unsigned int nr;
	unsigned int level;
	int child_n;               /* sched_process_fork: the child's pid at level L */
	int pad;
};

enum stat_idx { ST_LOST = 0, ST_LOST_BYTES, ST_INFLIGHT_FULL, ST_TRACED_FULL, ST_MAX };

/* map `tag_losses`, tag id -> this: the losses of one open tag (the loader adds the entry when it
 * opens the tag and removes it when it closes it), so a trial that floods the ring is charged with
 * its own losses and not its neighbours' */
#define TAG_LOSSES_MAX 1024
struct tag_losses {
	unsigned long long n[ST_MAX];
};

#endif
