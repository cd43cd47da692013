// SPDX-License-Identifier: GPL-2.0
/* In-kernel half of syscall-recorder: records the calls recorder.c's table names, for the process
 * trees in map `traced`, without stopping them (strace stops the tracee at every recorded call).
 * BTF tracepoints only (raw syscall enter/exit, sched fork/exec/exit, signal_generate): they need no
 * kprobes/fentry, which some kernels (this VM's) lack. Every process on the machine passes through
 * sys_enter/sys_exit while this is loaded, so an untraced task costs only an array lookup on the
 * syscall number, plus one hash lookup for the ~55 recorded calls. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "recorder.h"

char LICENSE[] SEC("license") = "GPL";

/* A kernel address as a typed, read-only BTF pointer: fields then load directly (a faulting load
 * reads 0) instead of through a bpf_probe_read_kernel call each. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#define KCAST(type, addr) ((type *)bpf_rdonly_cast((void *)(addr), bpf_core_type_id_kernel(type)))

#define AT_FDCWD -100
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define SIGSYS 31

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TRACED_MAX);
	__type(key, u32);
	__type(value, struct traced_val);
} traced SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TRACED_MAX);
	__type(key, u32);
	__type(value, struct inflight);
} inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NR_MAX);
	__type(key, u32);
	__type(value, u32);
} sysdesc SEC(".maps");

/* Per-CPU record under construction. The write position and walk state live here, not on the stack:
 * values loaded from a map are unknown to the verifier, so the bpf_loop callbacks that advance them
 * converge instead of being explored once per possible value. */
struct scratch {
	u32 pos;
	u16 wflags;
	u16 pad;
	u64 dentry, vfsmnt, root_d, root_m;
	u64 argv;
	u32 argv_flags;
	u32 pad2;
	u8 buf[SCRATCH_SZ];
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);      /* resized by the loader to the number of possible CPUs */
	__type(key, u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, u32);
	__type(value, u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 * 1024 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TAG_LOSSES_MAX);
	__type(key, u64);
	__type(value, struct tag_losses);
} tag_losses SEC(".maps");

/* A loss of `n` (records, or bytes) of kind `idx`, counted for the whole run and for `tag`. */
static __always_inline void count(u64 tag, u32 idx, u64 n)
{
	u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += n;
	struct tag_losses *t = bpf_map_lookup_elem(&tag_losses, &tag);
	if (t && idx < ST_MAX)
		__sync_fetch_and_add(&t->n[idx], n);
}

static __always_inline struct scratch *get_scratch(void)
{
	u32 cpu = bpf_get_smp_processor_id();
	return bpf_map_lookup_elem(&scratch, &cpu);
}

/* The pid number of `p` at namespace level `level` (0 when the task is not that deep), and that
 * namespace's inode number. */
static __always_inline s32 pid_at(struct pid *p, u32 level, u32 *inum)
{
	struct upid up = {};
	if (!p || level > p->level || level > 31)
		return 0;
	bpf_core_read(&up, sizeof(up), &p->numbers[level]);   /* variable index: not a direct load */
	if (inum)
		*inum = up.ns ? KCAST(struct pid_namespace, up.ns)->ns.inum : 0;
	return up.nr;
}

static __always_inline void fill_hdr(struct rec_hdr *h, struct task_struct *task, u32 level, u64 tag)
{
	struct pid *tp = task->thread_pid;
	struct pid *gp = task->signal->pids[PIDTYPE_TGID];
	h->tid = task->pid;
	h->tgid = task->tgid;
	h->ntid = pid_at(tp, level, NULL);
	h->ntgid = pid_at(gp, level, NULL);
	h->vtid = pid_at(tp, tp->level, &h->pidns);
	h->tag = tag;
}

static __always_inline void emit(u8 *buf, u32 len)
{
	/* wake the reader only once an eighth of the ring is full (it also polls every 100 ms) */
	long avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	long size = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE);
	u64 flags = avail > (size >> 3) ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	len &= REC_MASK;
	if (len < sizeof(struct rec_hdr))
		return;
	((struct rec_hdr *)buf)->len = len;
	if (bpf_ringbuf_output(&events, buf, len, flags)) {
		u64 tag = ((struct rec_hdr *)buf)->tag;
		count(tag, ST_LOST, 1);
		count(tag, ST_LOST_BYTES, len);
	}
}

static __always_inline u32 align8(u32 x) { return (x + 7) & ~7u; }

static __always_inline struct item *item_at(struct scratch *s, u32 pos)
{
	return (struct item *)(s->buf + (pos & REC_MASK));
}

static __always_inline void put_item(struct scratch *s, u32 start, u8 kind, u8 argi, u16 flags, u32 len)
{
	struct item *it = item_at(s, start);
	it->kind = kind;
	it->argi = argi;
	it->flags = flags;
	it->len = len;
	s->pos = align8(start + sizeof(*it) + len);
}

struct loop_ctx { struct scratch *s; };

/* One step of a path walk (bpf_loop callback): up one dentry, or across one mount. */
static long path_step(u32 i, struct loop_ctx *c)
{
	struct scratch *s = c->s;
	if (s->dentry == s->root_d && s->vfsmnt == s->root_m) {
		s->wflags = F_ROOT;
		return 1;
	}
	struct dentry *dentry = KCAST(struct dentry, s->dentry);
	struct vfsmount *vfsmnt = KCAST(struct vfsmount, s->vfsmnt);
	u64 parent = (u64)dentry->d_parent;
	if (s->dentry == (u64)vfsmnt->mnt_root || s->dentry == parent) {
		u64 mnt_addr = s->vfsmnt - bpf_core_field_offset(struct mount, mnt);
		struct mount *mnt = KCAST(struct mount, mnt_addr);
		u64 up = (u64)mnt->mnt_parent;
		if (up == mnt_addr || !up) {     /* its namespace's root mount, not the task's root */
			s->wflags = F_UNREACH;
			return 1;
		}
		s->dentry = (u64)mnt->mnt_mountpoint;
		s->vfsmnt = up + bpf_core_field_offset(struct mount, mnt);
		return 0;
	}
	u32 pos = s->pos;
	if (pos > REC_MAX - 512) {
		s->wflags = F_TRUNC;
		return 1;
	}
	long n = bpf_probe_read_kernel_str(s->buf + (pos & REC_MASK), 256, dentry->d_name.name);
	if (n <= 0) {
		s->wflags = F_ERR;
		return 1;
	}
	s->pos = pos + n;
	s->dentry = parent;
	return 0;
}

/* Path of (dentry, vfsmnt) as `task` sees it: components leaf->root, walking d_parent and crossing
 * mounts (mnt_mountpoint in mnt_parent) up to the task's root, as d_path does. */
static __always_inline void put_path(struct scratch *s, u8 argi, struct dentry *dentry,
				     struct vfsmount *vfsmnt, struct task_struct *task)
{
	u32 start = s->pos;
	if (start > REC_MAX - 2048)
		return;
	s->pos = start + sizeof(struct item);
	s->dentry = (u64)dentry;
	s->vfsmnt = (u64)vfsmnt;
	s->root_d = (u64)task->fs->root.dentry;
	s->root_m = (u64)task->fs->root.mnt;
	s->wflags = F_TRUNC;
	struct loop_ctx c = { .s = s };
	bpf_loop(PATH_DEPTH, path_step, &c, 0);
	put_item(s, start, IT_PATH, argi, s->wflags, s->pos - start - sizeof(struct item));
}

static __always_inline struct file *fd_file(struct task_struct *task, s64 fd)
{
	struct fdtable *fdt = task->files->fdt;
	struct file *f = NULL;
	if (fd < 0 || fd >= fdt->max_fds)
		return NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fdt->fd[fd]);   /* variable index */
	return f;
}

/* An fd: inode type, device, socket endpoints, and (not for sockets) its path. */
static __noinline void put_fd(struct scratch *s, u8 argi, s64 fd, struct task_struct *task)
{
	struct file *fp = fd_file(task, fd);
	u32 start = s->pos;
	if (!fp || start > REC_MAX - 4096)
		return;
	struct file *f = KCAST(struct file, fp);
	struct item *it = item_at(s, start);
	struct fdinfo *fi = (void *)(it + 1);
	struct inode *ino = f->f_inode;
	__builtin_memset(fi, 0, sizeof(*fi));
	fi->fd = fd;
	fi->mode = ino->i_mode;
	fi->rdev = ino->i_rdev;
	fi->ino = ino->i_ino;
	if ((fi->mode & S_IFMT) == S_IFSOCK) {
		struct sock *sk = KCAST(struct socket, f->private_data)->sk;
		fi->sk_family = sk->__sk_common.skc_family;
		fi->sk_type = sk->sk_type;
		fi->sk_proto = sk->sk_protocol;
		fi->sk_state = sk->__sk_common.skc_state;
		fi->lport = sk->__sk_common.skc_num;
		fi->rport = bpf_ntohs(sk->__sk_common.skc_dport);
		if (fi->sk_family == 10) {
			bpf_core_read(fi->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
			bpf_core_read(fi->raddr, 16, &sk->__sk_common.skc_v6_daddr);
		} else {
			bpf_core_read(fi->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
			bpf_core_read(fi->raddr, 4, &sk->__sk_common.skc_daddr);
		}
		put_item(s, start, IT_FDINFO, argi, 0, sizeof(*fi));
		return;
	}
	struct dentry *d = f->f_path.dentry;
	/* unlinked but open: d_path adds " (deleted)" */
	u16 deleted = !d->d_hash.pprev && d->d_parent != d ? F_ERR : 0;
	put_item(s, start, IT_FDINFO, argi, F_PATHITEM | deleted, sizeof(*fi));
	put_path(s, argi, d, f->f_path.mnt, task);
}

static __noinline void put_cwd(struct scratch *s, u8 argi, struct task_struct *task)
{
	put_path(s, argi, task->fs->pwd.dentry, task->fs->pwd.mnt, task);
}

static __always_inline void put_dirfd(struct scratch *s, u8 argi, s64 fd, struct task_struct *task)
{
	if ((int)fd == AT_FDCWD)
		put_cwd(s, argi, task);
	else
		put_fd(s, argi, (int)fd, task);
}

static __noinline void put_ustr(struct scratch *s, u8 kind, u8 argi, u64 uptr)
{
	u32 start = s->pos;
	if (!uptr || start > REC_MAX - STR_MAX - 64)
		return;
	long n = bpf_probe_read_user_str(s->buf + ((start + sizeof(struct item)) & REC_MASK), STR_MAX,
					 (void *)uptr);
	put_item(s, start, kind, argi, n <= 0 ? F_ERR : (n == STR_MAX ? F_TRUNC : 0), n > 0 ? n : 0);
}

static __always_inline void put_umem(struct scratch *s, u8 kind, u8 argi, u64 uptr, u32 len)
{
	u32 start = s->pos;
	if (!uptr || start > REC_MAX - 256)
		return;
	asm volatile("" : "+r"(len));   /* keep the mask: the verifier cannot bound a variable shift */
	len &= 127;
	if (bpf_probe_read_user(s->buf + ((start + sizeof(struct item)) & REC_MASK), len, (void *)uptr))
		put_item(s, start, kind, argi, F_ERR, 0);
	else
		put_item(s, start, kind, argi, 0, len);
}

static __always_inline void start_rec(struct scratch *s, u16 type, struct task_struct *task, u32 level, u64 tag)
{
	struct rec_hdr *h = (void *)s->buf;
	__builtin_memset(h, 0, sizeof(*h));
	h->type = type;
	fill_hdr(h, task, level, tag);
	s->pos = sizeof(*h);
}

/* ---- execve/execveat at entry: the old image's memory is gone at exit ---------------------- */

static long argv_one(u32 i, struct loop_ctx *c)
{
	struct scratch *s = c->s;
	u64 p = 0;
	if (bpf_probe_read_user(&p, sizeof(p), (void *)(s->argv + i * 8)) || !p)
		return 1;
	if (i >= ARGV_MAX || s->pos > REC_MAX - STR_MAX - 64) {
		s->argv_flags |= R_ARGV_TRUNC;
		return 1;
	}
	put_ustr(s, IT_ARGV, i, p);
	return 0;
}

static __always_inline void exec_enter(struct inflight *v, u32 desc, struct task_struct *task)
{
	struct scratch *s = get_scratch();
	if (!s)
		return;
	start_rec(s, REC_EXEC_ENTER, task, v->level, v->tag);
	struct rec_hdr *h = (void *)s->buf;
	h->ts = v->ts;
	h->nr = v->nr;
	#pragma unroll
	for (int i = 0; i < 6; i++)
		h->args[i] = v->args[i];
	int fa = (desc & D_STR(1)) ? 1 : 0;     /* execveat: dirfd, path, argv */
	if (desc & D_DIRFD(0))
		put_dirfd(s, 0, v->args[0], task);
	put_ustr(s, IT_STR, fa, v->args[fa]);
	put_cwd(s, ARGI_CWD, task);
	s->argv = v->args[fa + 1];
	s->argv_flags = 0;
	struct loop_ctx c = { .s = s };
	if (s->argv)
		bpf_loop(ARGV_MAX + 1, argv_one, &c, 0);
	h->flags = s->argv_flags;
	emit(s->buf, s->pos);
}

SEC("tp_btf/sys_enter")
int BPF_PROG(on_sys_enter, struct pt_regs *regs, long id)
{
	u32 nr = id;
	if ((u64)id >= NR_MAX)
		return 0;
	u32 *d = bpf_map_lookup_elem(&sysdesc, &nr);
	if (!d || !*d)
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct traced_val *t = bpf_map_lookup_elem(&traced, &tid);
	if (!t)
		return 0;
	struct inflight v = {};
	v.ts = bpf_ktime_get_ns();
	v.nr = nr;
	v.tag = t->tag;
	v.level = t->level;
	v.args[0] = regs->di;      /* tp_btf: direct loads */
	v.args[1] = regs->si;
	v.args[2] = regs->dx;
	v.args[3] = regs->r10;
	v.args[4] = regs->r8;
	v.args[5] = regs->r9;
	if (bpf_map_update_elem(&inflight, &tid, &v, BPF_ANY))
		count(v.tag, ST_INFLIGHT_FULL, 1);
	if (*d & D_EXEC)
		exec_enter(&v, *d, bpf_get_current_task_btf());
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(on_sys_exit, struct pt_regs *regs, long ret)
{
	u32 nr = regs->orig_ax;
	if (nr >= NR_MAX)
		return 0;
	u32 *d = bpf_map_lookup_elem(&sysdesc, &nr);
	if (!d || !*d)
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct inflight *v = bpf_map_lookup_elem(&inflight, &tid);
	if (!v)
		return 0;
	u32 desc = *d;
	struct scratch *s = get_scratch();
	if (!s || v->nr != nr)
		goto out;
	struct task_struct *task = bpf_get_current_task_btf();
	start_rec(s, REC_SYS, task, v->level, v->tag);
	struct rec_hdr *h = (void *)s->buf;
	h->ts = v->ts;
	h->ts_exit = bpf_ktime_get_ns();
	h->nr = nr;
	h->ret = ret;
	#pragma unroll
	for (int i = 0; i < 6; i++)
		h->args[i] = v->args[i];
	h->aux[0] = v->child_n;
	if (!(desc & D_EXEC)) {
		#pragma unroll
		for (int i = 0; i < 6; i++) {
			if (desc & D_DIRFD(i))
				put_dirfd(s, i, v->args[i], task);
			if (desc & D_FD(i))
				put_fd(s, i, (int)v->args[i], task);
			if (desc & D_STR(i))
				put_ustr(s, IT_STR, i, v->args[i]);
		}
		if ((desc & D_RETFD) && ret >= 0)
			put_fd(s, ARGI_RET, ret, task);
		if (desc & D_SOCKADDR)
			put_umem(s, IT_SOCKADDR, 1, v->args[1], v->args[2] > 112 ? 112 : v->args[2]);
		u32 ma = D_MEM_ARG(desc);
		if (ma && ma <= 6)
			put_umem(s, IT_MEM, ma - 1, v->args[(ma - 1) & 7], D_MEM_LEN(desc));
	}
	emit(s->buf, s->pos);
out:
	bpf_map_delete_elem(&inflight, &tid);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	u32 ptid = parent->pid;
	struct traced_val *t = bpf_map_lookup_elem(&traced, &ptid);
	if (!t)
		return 0;
	u32 ctid = child->pid;
	struct traced_val ct = *t;
	if (bpf_map_update_elem(&traced, &ctid, &ct, BPF_ANY))
		count(ct.tag, ST_TRACED_FULL, 1);
	struct pid *cp = child->thread_pid;
	s32 child_n = pid_at(cp, ct.level, NULL);
	struct inflight *v = bpf_map_lookup_elem(&inflight, &ptid);
	if (v)
		v->child_n = child_n;
	struct scratch *s = get_scratch();
	if (!s)
		return 0;
	start_rec(s, REC_FORK, bpf_get_current_task_btf(), ct.level, ct.tag);
	struct rec_hdr *h = (void *)s->buf;
	h->ts = bpf_ktime_get_ns();
	h->aux[0] = ctid;
	h->aux[1] = child->tgid;
	h->aux[2] = child_n;
	h->aux[3] = pid_at(cp, cp->level, NULL);
	struct item *it = (void *)(h + 1);
	s32 *pairs = (void *)(it + 1);
	it->kind = IT_PIDS;
	it->argi = 0;
	it->flags = 0;
	it->len = PIDS_MAX * 8;
	#pragma unroll
	for (int i = 0; i < PIDS_MAX; i++) {
		u32 inum = 0;
		pairs[2 * i + 1] = pid_at(cp, ct.level + i, &inum);
		pairs[2 * i] = inum;
	}
	emit(s->buf, sizeof(*h) + sizeof(*it) + PIDS_MAX * 8);
	return 0;
}

/* exec by a non-leader thread: it takes the leader's pid (the old leader's exit already removed
 * that pid's entry); move its entries to the new pid. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	u32 old = old_pid, now = p->pid;
	if (old == now)
		return 0;
	struct traced_val *t = bpf_map_lookup_elem(&traced, &old);
	if (!t)
		return 0;
	struct traced_val tv = *t;
	bpf_map_update_elem(&traced, &now, &tv, BPF_ANY);
	bpf_map_delete_elem(&traced, &old);
	struct inflight *v = bpf_map_lookup_elem(&inflight, &old);
	if (v) {
		struct inflight iv = *v;
		bpf_map_update_elem(&inflight, &now, &iv, BPF_ANY);
		bpf_map_delete_elem(&inflight, &old);
	}
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p, bool group_dead)
{
	u32 tid = p->pid;
	struct traced_val *t = bpf_map_lookup_elem(&traced, &tid);
	if (!t)
		return 0;
	struct scratch *s = get_scratch();
	if (s) {
		start_rec(s, REC_EXIT, p, t->level, t->tag);
		struct rec_hdr *h = (void *)s->buf;
		h->ts = bpf_ktime_get_ns();
		h->aux[0] = p->exit_code;
		h->aux[1] = group_dead;
		emit(s->buf, sizeof(*h));
	}
	bpf_map_delete_elem(&traced, &tid);
	bpf_map_delete_elem(&inflight, &tid);
	return 0;
}

/* A seccomp SECCOMP_RET_TRAP: SIGSYS with si_code SYS_SECCOMP carries the syscall number. Not
 * through the scratch buffer: signals can be generated from interrupts. */
SEC("tp_btf/signal_generate")
int BPF_PROG(on_signal, int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)
{
	if (sig != SIGSYS || (unsigned long)info <= 1)
		return 0;
	u32 tid = task->pid;
	struct traced_val *t = bpf_map_lookup_elem(&traced, &tid);
	if (!t)
		return 0;
	struct rec_hdr *h = bpf_ringbuf_reserve(&events, sizeof(*h), 0);
	if (!h) {
		count(t->tag, ST_LOST, 1);
		return 0;
	}
	__builtin_memset(h, 0, sizeof(*h));
	h->len = sizeof(*h);
	h->type = REC_SIGSYS;
	h->ts = bpf_ktime_get_ns();
	fill_hdr(h, task, t->level, t->tag);
	h->aux[0] = BPF_CORE_READ(info, _sifields._sigsys._syscall);
	h->aux[1] = BPF_CORE_READ(info, _sifields._sigsys._arch);
	h->aux[2] = BPF_CORE_READ(info, si_code);
	h->args[0] = (u64)BPF_CORE_READ(info, _sifields._sigsys._call_addr);
	h->aux[3] = result;
	bpf_ringbuf_submit(h, 0);
	return 0;
}
