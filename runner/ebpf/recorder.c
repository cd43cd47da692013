// SPDX-License-Identifier: GPL-2.0
/* syscall-recorder: loads recorder.bpf.c and writes what it records as JSON lines, one file per tag
 * (a tag: one followed process tree, e.g. one trial's agent). One recorder serves a whole harness
 * run: loading and verifying the programs costs 0.2-0.4 s of CPU, following a process costs a map
 * entry.
 *
 * Daemon (the harness's use): prints `ready` once the programs are attached, then reads one command
 * per line on stdin and answers each with one line on stdout:
 *   add <host_pid> <tag> <out_path>  ->  ok add <tag>                          | err add <tag> <reason>
 *   close <tag>                      ->  ok close <tag> records=<N> lost=<M>   | err close <tag> <reason>
 *   anything else                    ->  err <word> <reason>
 * N: lines written to the tag's file; M: records the kernel side failed to deliver while the tag was
 * open (counted globally, so charged to every tag open at the time). stdin EOF, SIGTERM, SIGINT or
 * the death of the parent: every tag is closed, totals go to stderr, exit 0 (1 if a file could not
 * be written).
 *
 * Like strace -f (tests compare the two): syscall-recorder [-o FILE] --run TAG -- cmd args...
 * runs cmd traced, ends once it and every task it started are gone; exit status: cmd's.
 * --ring-kb N: ring buffer size (a power of 2; default 16384, >= 1024 so an execve record fits).
 * Load failure (not root, no BTF, verifier): a message on stderr, exit 2.
 * RECORDER_VERIFIER_STATS=1: print each program's verifier statistics. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include "recorder.h"
#include "recorder.skel.h"

struct sysent { int nr; const char *name; unsigned int desc; };
#define MEM(arg, code) ((((arg) + 1) << D_MEM_SHIFT) | ((code) << (D_MEM_SHIFT + 3)))   /* code: 0=4 1=8 2=16 3=32 bytes */

/* The calls runner.world_init.TRACED_SYSCALLS names (less set_robust_list/rseq, there only for
 * strace's seccomp-bpf mode), with what each needs captured. x86_64 numbers. */
static const struct sysent SYSCALLS[] = {
	{2, "open", D_STR(0) | D_RETFD},
	{85, "creat", D_STR(0) | D_RETFD},
	{257, "openat", D_DIRFD(0) | D_STR(1) | D_RETFD},
	{437, "openat2", D_DIRFD(0) | D_STR(1) | D_RETFD | MEM(2, 3)},
	{59, "execve", D_STR(0) | D_EXEC},
	{322, "execveat", D_DIRFD(0) | D_STR(1) | D_EXEC},
	{80, "chdir", D_STR(0)},
	{82, "rename", D_STR(0) | D_STR(1)},
	{264, "renameat", D_DIRFD(0) | D_STR(1) | D_DIRFD(2) | D_STR(3)},
	{316, "renameat2", D_DIRFD(0) | D_STR(1) | D_DIRFD(2) | D_STR(3)},
	{87, "unlink", D_STR(0)},
	{263, "unlinkat", D_DIRFD(0) | D_STR(1)},
	{84, "rmdir", D_STR(0)},
	{83, "mkdir", D_STR(0)},
	{258, "mkdirat", D_DIRFD(0) | D_STR(1)},
	{76, "truncate", D_STR(0)},
	{77, "ftruncate", D_FD(0)},
	{132, "utime", D_STR(0) | MEM(1, 2)},
	{235, "utimes", D_STR(0) | MEM(1, 3)},
	{280, "utimensat", D_DIRFD(0) | D_STR(1) | MEM(2, 3)},
	{261, "futimesat", D_DIRFD(0) | D_STR(1) | MEM(2, 3)},
	{90, "chmod", D_STR(0)},
	{91, "fchmod", D_FD(0)},
	{268, "fchmodat", D_DIRFD(0) | D_STR(1)},
	{452, "fchmodat2", D_DIRFD(0) | D_STR(1)},
	{86, "link", D_STR(0) | D_STR(1)},
	{265, "linkat", D_DIRFD(0) | D_STR(1) | D_DIRFD(2) | D_STR(3)},
	{88, "symlink", D_STR(0) | D_STR(1)},
	{266, "symlinkat", D_STR(0) | D_DIRFD(1) | D_STR(2)},
	{42, "connect", D_FD(0) | D_SOCKADDR},
	{49, "bind", D_FD(0) | D_SOCKADDR},
	{50, "listen", D_FD(0)},
	{43, "accept", D_FD(0) | D_RETFD},
	{288, "accept4", D_FD(0) | D_RETFD},
	{51, "getsockname", D_FD(0)},
	{55, "getsockopt", D_FD(0) | MEM(3, 0)},
	{41, "socket", D_RETFD},
	{56, "clone", D_CLONE},
	{435, "clone3", D_CLONE | MEM(0, 1)},
	{57, "fork", D_CLONE},
	{58, "vfork", D_CLONE},
	{62, "kill", 0},
	{200, "tkill", 0},
	{234, "tgkill", 0},
	{101, "ptrace", 0},
	{165, "mount", D_STR(0) | D_STR(1) | D_STR(2) | D_STR(4)},
	{166, "umount2", D_STR(0)},
	{272, "unshare", 0},
	{308, "setns", D_FD(0)},
	{161, "chroot", D_STR(0)},
	{155, "pivot_root", D_STR(0) | D_STR(1)},
	{105, "setuid", 0},
	{113, "setreuid", 0},
	{117, "setresuid", 0},
};
static const char *sysname[NR_MAX];

#define TAGS_MAX 64          /* tags open at once: a run has a few trials going */

/* An open tag. Its id (the value the kernel side stamps on records) is seq * TAGS_MAX + slot with
 * seq never reused, so a record still under way when its tag closed cannot land in the file of a
 * later tag that took the same slot. */
struct tag {
	unsigned long long id;     /* 0: slot free */
	char name[256];
	char *path;
	FILE *file;
	unsigned long long lines;  /* lines written to file */
	unsigned long long reported[ST_MAX];   /* its losses as last written to its file */
};
static struct tag tags[TAGS_MAX];
static unsigned long long next_seq = 1;
static unsigned long long strays;   /* records of already closed tags (dropped) */

static FILE *out;              /* the file the JSON writers below write to: the record's tag's */
static volatile sig_atomic_t stopping;
static long long mono_to_real_ns;
static struct recorder_bpf *skel;
static struct ring_buffer *rb;
static double startup_cpu;     /* CPU seconds to load and attach (verifier included) */

static double self_cpu(void)
{
	struct rusage u;
	getrusage(RUSAGE_SELF, &u);
	return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static int print_all(enum libbpf_print_level level, const char *fmt, va_list args)
{
	(void)level;
	return vfprintf(stderr, fmt, args);
}

static void on_stop_signal(int sig) { (void)sig; stopping = 1; }
static void on_sigchld(int sig) { (void)sig; }   /* only to wake ppoll */

static long long now_ns(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static struct tag *tag_by_id(unsigned long long id)
{
	struct tag *t = &tags[id % TAGS_MAX];
	return id && t->id == id ? t : NULL;
}

static struct tag *tag_by_name(const char *name)
{
	for (int i = 0; i < TAGS_MAX; i++)
		if (tags[i].id && !strcmp(tags[i].name, name))
			return &tags[i];
	return NULL;
}

/* One reply line on stdout in a single write, so a client never reads half of one. */
static void reply(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	for (int off = 0; off < n;) {
		ssize_t w = write(1, buf + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {          /* the client is gone: nobody is left to give records to */
			stopping = 1;
			return;
		}
		off += w;
	}
}

/* JSON string of raw bytes: bytes >= 0x80 as \u00XX (code point = byte; decode with latin-1). */
static void jstr(const unsigned char *s, size_t n)
{
	fputc('"', out);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = s[i];
		if (c == '"' || c == '\\')
			fprintf(out, "\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			fprintf(out, "\\u%04x", c);
		else
			fputc(c, out);
	}
	fputc('"', out);
}

static void jts(const char *key, unsigned long long mono)
{
	long long real = (long long)mono + mono_to_real_ns;
	fprintf(out, "\"%s\":%lld", key, real);     /* realtime ns: an exact JSON integer */
}

/* An IT_PATH item: components leaf->root -> "/a/b/c". */
static void jpath(const struct item *it)
{
	const char *data = (const char *)(it + 1);
	const char *comp[PATH_DEPTH + 1];
	size_t lens[PATH_DEPTH + 1];
	int n = 0;
	size_t off = 0;
	while (off < it->len && n <= PATH_DEPTH) {
		size_t l = strnlen(data + off, it->len - off);
		comp[n] = data + off;
		lens[n++] = l;
		off += l + 1;
	}
	char buf[PATH_DEPTH * 256 + 2];
	size_t pos = 0;
	if (!n)
		buf[pos++] = '/';
	for (int i = n - 1; i >= 0; i--) {
		buf[pos++] = '/';
		memcpy(buf + pos, comp[i], lens[i]);
		pos += lens[i];
	}
	fprintf(out, "\"path\":");
	jstr((unsigned char *)buf, pos);
	if (it->flags & F_UNREACH)
		fprintf(out, ",\"unreachable\":true");
	if (it->flags & F_TRUNC)
		fprintf(out, ",\"truncated\":true");
	if (it->flags & F_ERR)
		fprintf(out, ",\"error\":true");
}

static void jaddr(int family, const unsigned char *addr, int port)
{
	char txt[INET6_ADDRSTRLEN] = "";
	inet_ntop(family == 10 ? AF_INET6 : AF_INET, addr, txt, sizeof(txt));
	fprintf(out, "\"%s\",%d", txt, port);
}

static void jsockaddr(const unsigned char *sa, unsigned int len)
{
	unsigned short fam = len >= 2 ? *(unsigned short *)sa : 0;
	fprintf(out, "{\"family\":%u", fam);
	if (fam == AF_INET && len >= 8) {
		char txt[INET_ADDRSTRLEN];
		inet_ntop(AF_INET, sa + 4, txt, sizeof(txt));
		fprintf(out, ",\"addr\":\"%s\",\"port\":%u", txt, ntohs(*(unsigned short *)(sa + 2)));
	} else if (fam == AF_INET6 && len >= 24) {
		char txt[INET6_ADDRSTRLEN];
		inet_ntop(AF_INET6, sa + 8, txt, sizeof(txt));
		fprintf(out, ",\"addr\":\"%s\",\"port\":%u,\"flowinfo\":%u,\"scope_id\":%u", txt,
			ntohs(*(unsigned short *)(sa + 2)), ntohl(*(unsigned int *)(sa + 4)),
			len >= 28 ? *(unsigned int *)(sa + 24) : 0);
	} else if (fam == AF_UNIX && len > 2) {
		int abstract = sa[2] == 0;
		size_t n = abstract ? len - 3 : strnlen((const char *)sa + 2, len - 2);
		fprintf(out, ",\"abstract\":%s,\"path\":", abstract ? "true" : "false");
		jstr(sa + 2 + abstract, n);
	}
	fprintf(out, ",\"hex\":\"");
	for (unsigned int i = 0; i < len; i++)
		fprintf(out, "%02x", sa[i]);
	fprintf(out, "\"}");
}

static void end_argv(const int *trunc, int n)
{
	fprintf(out, "],\"truncated\":[");
	for (int i = 0; i < n; i++)
		fprintf(out, "%s%d", i ? "," : "", trunc[i]);
	fprintf(out, "]}");
}

static int on_record(void *ctx, void *data, size_t size)
{
	(void)ctx;
	const struct rec_hdr *h = data;
	static const char *types[] = {"", "sys", "exec_enter", "fork", "exit", "sigsys"};
	if (size < sizeof(*h) || h->type < REC_SYS || h->type > REC_SIGSYS)
		return 0;
	struct tag *t = tag_by_id(h->tag);
	if (!t) {       /* a call that was under way when its tag was closed */
		strays++;
		return 0;
	}
	out = t->file;
	t->lines++;
	fprintf(out, "{\"type\":\"%s\",", types[h->type]);
	jts("ts", h->ts);
	if (h->ts_exit) {
		fputc(',', out);
		jts("ts_exit", h->ts_exit);
	}
	fprintf(out, ",\"tag\":");
	jstr((const unsigned char *)t->name, strlen(t->name));
	fprintf(out, ",\"tid\":%u,\"pid\":%u,\"ntid\":%d,\"npid\":%d,\"vtid\":%d,\"pidns\":%u",
		h->tid, h->tgid, h->ntid, h->ntgid, h->vtid, h->pidns);
	if (h->type == REC_SYS || h->type == REC_EXEC_ENTER) {
		fprintf(out, ",\"nr\":%d,\"name\":\"%s\",\"args\":[", h->nr,
			h->nr >= 0 && h->nr < NR_MAX && sysname[h->nr] ? sysname[h->nr] : "?");
		for (int i = 0; i < 6; i++)
			fprintf(out, "%s%llu", i ? "," : "", h->args[i]);
		fprintf(out, "]");
		if (h->type == REC_SYS)
			fprintf(out, ",\"ret\":%lld", h->ret);
	}
	if (h->type == REC_SYS && h->aux[0])
		fprintf(out, ",\"child_npid\":%d", h->aux[0]);
	if (h->type == REC_FORK)
		fprintf(out, ",\"child_tid\":%d,\"child_pid\":%d,\"child_ntid\":%d,\"child_vtid\":%d",
			h->aux[0], h->aux[1], h->aux[2], h->aux[3]);
	if (h->type == REC_EXIT)
		fprintf(out, ",\"exit_code\":%d,\"group_dead\":%s", h->aux[0], h->aux[1] ? "true" : "false");
	if (h->type == REC_SIGSYS)
		fprintf(out, ",\"syscall\":%d,\"arch\":%u,\"si_code\":%d,\"call_addr\":%llu,\"result\":%d",
			h->aux[0], (unsigned)h->aux[1], h->aux[2], h->args[0], h->aux[3]);
	if (h->flags & R_ARGV_TRUNC)
		fprintf(out, ",\"argv_truncated\":true");

	/* items */
	size_t off = sizeof(*h);
	int first = 1, in_argv = 0, ntrunc = 0;
	int trunc[ARGV_MAX];   /* argv elements cut at STR_MAX */
	fprintf(out, ",\"items\":[");
	while (off + sizeof(struct item) <= size && off + sizeof(struct item) <= h->len) {
		const struct item *it = (const void *)((const char *)data + off);
		const unsigned char *d = (const unsigned char *)(it + 1);
		size_t next = (off + sizeof(*it) + it->len + 7) & ~7ul;
		if (off + sizeof(*it) + it->len > size)
			break;
		if (it->kind == IT_ARGV) {     /* argv elements as one list */
			if (!in_argv) {
				fprintf(out, "%s{\"k\":\"argv\",\"v\":[", first ? "" : ",");
				first = 0;
				in_argv = 1;
			} else {
				fputc(',', out);
			}
			jstr(d, it->len ? it->len - 1 : 0);
			if ((it->flags & F_TRUNC) && ntrunc < ARGV_MAX)
				trunc[ntrunc++] = it->argi;
			off = next;
			continue;
		}
		if (in_argv) {
			end_argv(trunc, ntrunc);
			in_argv = 0;
		}
		fprintf(out, "%s{\"a\":%d,", first ? "" : ",", it->argi);
		first = 0;
		switch (it->kind) {
		case IT_STR:
			fprintf(out, "\"k\":\"str\",\"v\":");
			jstr(d, it->len ? it->len - 1 : 0);
			if (it->flags & F_TRUNC)
				fprintf(out, ",\"truncated\":true");
			if (it->flags & F_ERR)
				fprintf(out, ",\"error\":true");
			break;
		case IT_PATH:
			fprintf(out, "\"k\":\"path\",");
			jpath(it);
			break;
		case IT_FDINFO: {
			const struct fdinfo *fi = (const void *)d;
			fprintf(out, "\"k\":\"fd\",\"fd\":%d,\"mode\":%u,\"rdev\":[%u,%u],\"ino\":%llu", fi->fd, fi->mode,
				fi->rdev >> 20, fi->rdev & 0xfffff, fi->ino);
			if ((fi->mode & 0170000) == 0140000) {
				fprintf(out, ",\"sock\":{\"family\":%u,\"type\":%u,\"proto\":%u,\"state\":%u,\"local\":[",
					fi->sk_family, fi->sk_type, fi->sk_proto, fi->sk_state);
				jaddr(fi->sk_family, fi->laddr, fi->lport);
				fprintf(out, "],\"peer\":[");
				jaddr(fi->sk_family, fi->raddr, fi->rport);
				fprintf(out, "]}");
			}
			if (it->flags & F_ERR)
				fprintf(out, ",\"deleted\":true");
			size_t pnext = next;
			const struct item *p = (const void *)((const char *)data + pnext);
			if ((it->flags & F_PATHITEM) && pnext + sizeof(*p) <= size && p->kind == IT_PATH &&
			    pnext + sizeof(*p) + p->len <= size) {
				fputc(',', out);
				jpath(p);
				next = (pnext + sizeof(*p) + p->len + 7) & ~7ul;
			}
			break;
		}
		case IT_SOCKADDR:
			fprintf(out, "\"k\":\"sockaddr\",\"v\":");
			jsockaddr(d, it->len);
			break;
		case IT_MEM:
			fprintf(out, "\"k\":\"mem\",\"hex\":\"");
			for (unsigned int i = 0; i < it->len; i++)
				fprintf(out, "%02x", d[i]);
			fprintf(out, "\"%s", it->flags & F_ERR ? ",\"error\":true" : "");
			break;
		case IT_PIDS: {
			const int *pairs = (const int *)d;
			fprintf(out, "\"k\":\"pids\",\"v\":[");
			for (int i = 0; i < PIDS_MAX; i++)
				fprintf(out, "%s[%u,%d]", i ? "," : "", (unsigned)pairs[2 * i], pairs[2 * i + 1]);
			fprintf(out, "]");
			break;
		}
		default:
			fprintf(out, "\"k\":\"unknown%d\"", it->kind);
		}
		fputc('}', out);
		off = next;
	}
	if (in_argv)
		end_argv(trunc, ntrunc);
	fprintf(out, "]}\n");
	return 0;
}

static void read_stats(unsigned long long *v)
{
	int ncpu = libbpf_num_possible_cpus();
	unsigned long long vals[ncpu];
	for (unsigned int i = 0; i < ST_MAX; i++) {
		v[i] = 0;
		if (bpf_map_lookup_elem(bpf_map__fd(skel->maps.stats), &i, vals) == 0)
			for (int c = 0; c < ncpu; c++)
				v[i] += vals[c];
	}
}

/* The tag's own loss counters (kernel side, map `tag_losses`). */
static void read_tag_losses(const struct tag *t, unsigned long long *v)
{
	struct tag_losses l = {};
	bpf_map_lookup_elem(bpf_map__fd(skel->maps.tag_losses), &t->id, &l);
	memcpy(v, l.n, sizeof(l.n));
}

/* Every way a record goes missing: the ring was full, a call found the `inflight` map full (its
 * record is never built), a child found `traced` full (nothing of it is followed). */
static unsigned long long losses_of(const unsigned long long *v)
{
	return v[ST_LOST] + v[ST_INFLIGHT_FULL] + v[ST_TRACED_FULL];
}

/* A "lost" or "stats" line in a tag's file with its losses `v` so far. */
static void write_losses(struct tag *t, const unsigned long long *v, int final)
{
	out = t->file;
	fprintf(out, "{\"type\":\"%s\",", final ? "stats" : "lost");
	jts("ts", now_ns(CLOCK_MONOTONIC));
	fprintf(out, ",\"lost\":%llu,\"lost_bytes\":%llu,\"inflight_full\":%llu,\"traced_full\":%llu",
		v[ST_LOST], v[ST_LOST_BYTES], v[ST_INFLIGHT_FULL], v[ST_TRACED_FULL]);
	if (final)
		fprintf(out, ",\"cpu_startup_s\":%.6f,\"cpu_total_s\":%.6f", startup_cpu, self_cpu());
	fprintf(out, "}\n");
	memcpy(t->reported, v, sizeof(t->reported));
	t->lines++;
}

/* A tag's new losses are written into its file as soon as they are seen: a reader of the file knows
 * it has a gap, and from when. */
static void report_losses(void)
{
	unsigned long long v[ST_MAX];
	for (int i = 0; i < TAGS_MAX; i++) {
		if (!tags[i].id)
			continue;
		read_tag_losses(&tags[i], v);
		if (memcmp(v, tags[i].reported, sizeof(v)))
			write_losses(&tags[i], v, 0);
	}
}

/* The pid namespace level of a task: NSpid in /proc/PID/status lists one pid per level. */
static int ns_level(int pid)
{
	char path[64], line[512];
	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	FILE *f = fopen(path, "re");
	int level = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, "NSpid:", 6)) {
			level = 0;
			for (char *p = line + 6; (p = strchr(p, '\t')); p++)
				level++;
			level--;
		}
	fclose(f);
	return level;
}

static unsigned int tag_keys[TRACED_MAX];

/* Keys (tids) of the entries of `map` whose tag is `id`, into tag_keys; `tag_off`: where the tag id
 * sits in the map's value. Collected before any deletion: deleting the key get_next_key stands on
 * restarts the walk. Tasks exiting meanwhile restart it too, hence the bound on steps. */
static int keys_of_tag(int map, size_t tag_off, unsigned long long id)
{
	unsigned int key, next, *prev = NULL;
	unsigned char val[sizeof(struct inflight) > sizeof(struct traced_val) ? sizeof(struct inflight)
									      : sizeof(struct traced_val)];
	unsigned long long tag;
	int n = 0;
	for (int steps = 0; steps < 4 * TRACED_MAX && bpf_map_get_next_key(map, prev, &next) == 0; steps++) {
		key = next;
		prev = &key;
		if (bpf_map_lookup_elem(map, &key, val) == 0 && n < TRACED_MAX) {
			memcpy(&tag, val + tag_off, sizeof(tag));
			if (tag == id)
				tag_keys[n++] = key;
		}
	}
	return n;
}

/* Stop following tag `id`: delete its tasks from `traced` until a pass finds none (a task forking
 * during the walk can add a child behind it), and its calls under way from `inflight` (their
 * records would only be dropped as strays). */
static void unfollow(unsigned long long id)
{
	int traced = bpf_map__fd(skel->maps.traced), inflight = bpf_map__fd(skel->maps.inflight), n;
	for (int pass = 0; pass < 100 && (n = keys_of_tag(traced, offsetof(struct traced_val, tag), id)) > 0; pass++)
		for (int i = 0; i < n; i++)
			bpf_map_delete_elem(traced, &tag_keys[i]);
	n = keys_of_tag(inflight, offsetof(struct inflight, tag), id);
	for (int i = 0; i < n; i++)
		bpf_map_delete_elem(inflight, &tag_keys[i]);
}

static int traced_left(unsigned long long id)
{
	return keys_of_tag(bpf_map__fd(skel->maps.traced), offsetof(struct traced_val, tag), id);
}

/* Undo a half-opened tag: its file closed and removed, its slot free; NULL for open_tag to return. */
static struct tag *discard_tag(struct tag *t, const char *path)
{
	fclose(t->file);
	t->file = NULL;
	if (path)
		unlink(path);
	t->id = 0;
	return NULL;
}

/* Register a tag writing to `path` (stdout if NULL) and follow `pid` for it. On failure: the reason
 * in `why`, NULL, and nothing left registered. */
static struct tag *open_tag(const char *pidtxt, const char *name, const char *path, char *why, size_t whylen)
{
	char *end;
	long pid = strtol(pidtxt, &end, 10);
	struct tag *t = NULL;
	int level, fd;
	if (*end || pid <= 0 || pid > INT32_MAX) {
		snprintf(why, whylen, "bad pid %s", pidtxt);
		return NULL;
	}
	for (const char *c = name; *c; c++)
		if (!isgraph((unsigned char)*c) || c - name >= (long)sizeof(t->name) - 1) {
			snprintf(why, whylen, "bad tag (printable ASCII, no spaces, < %zu bytes)", sizeof(t->name));
			return NULL;
		}
	if (tag_by_name(name)) {
		snprintf(why, whylen, "tag already open");
		return NULL;
	}
	for (int i = 0; i < TAGS_MAX && !t; i++)
		if (!tags[i].id)
			t = &tags[i];
	if (!t) {
		snprintf(why, whylen, "too many tags open (%d)", TAGS_MAX);
		return NULL;
	}
	level = ns_level(pid);
	if (level < 0) {
		snprintf(why, whylen, "no such process %ld", pid);
		return NULL;
	}
	fd = path ? open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : dup(1);
	if (fd < 0 || (path && fchmod(fd, 0600)) || !(t->file = fdopen(fd, "w"))) {
		snprintf(why, whylen, "%s: %s", path ? path : "stdout", strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	setvbuf(t->file, NULL, _IOFBF, 256 << 10);
	t->id = next_seq++ * TAGS_MAX + (t - tags);
	memset(t->reported, 0, sizeof(t->reported));
	struct traced_val v = {.tag = t->id, .level = level};
	int losses = bpf_map__fd(skel->maps.tag_losses);
	if (bpf_map_update_elem(losses, &t->id, &(struct tag_losses){}, BPF_NOEXIST)) {
		snprintf(why, whylen, "loss counter: %s", strerror(errno));
		return discard_tag(t, path);
	}
	if (bpf_map_update_elem(bpf_map__fd(skel->maps.traced), &(unsigned int){pid}, &v, BPF_NOEXIST)) {
		snprintf(why, whylen, errno == EEXIST ? "pid %ld is already followed" : "pid %ld: %s", pid,
			 strerror(errno));
		bpf_map_delete_elem(losses, &t->id);
		return discard_tag(t, path);
	}
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->path = path ? strdup(path) : NULL;
	t->lines = 0;
	return t;
}

/* Close a tag: stop following it, write out every record the kernel has committed, end its file
 * with a stats line and free the slot. Lines written and losses in *lines, *lost; 0, or -1 with the
 * reason in `why`. */
static int close_tag(struct tag *t, unsigned long long *lines, unsigned long long *lost, char *why, size_t whylen)
{
	unsigned long long now[ST_MAX];
	int err = 0;
	unfollow(t->id);
	ring_buffer__consume(rb);
	read_tag_losses(t, now);
	bpf_map_delete_elem(bpf_map__fd(skel->maps.tag_losses), &t->id);
	write_losses(t, now, 1);
	*lines = t->lines;
	*lost = losses_of(now);
	if (ferror(t->file) | fclose(t->file)) {
		snprintf(why, whylen, "%s: write failed: %s", t->path ? t->path : "stdout", strerror(errno));
		err = -1;
	}
	free(t->path);
	t->path = NULL;
	t->file = NULL;
	t->id = 0;
	return err;
}

static void command(char *line)
{
	char *words[5], *save, why[600];
	int n = 0;
	for (char *w = strtok_r(line, " \t\r", &save); w && n < 5; w = strtok_r(NULL, " \t\r", &save))
		words[n++] = w;
	if (!n) {
		reply("err - empty command");
	} else if (!strcmp(words[0], "add")) {
		if (n != 4)
			reply("err add %s usage: add <host_pid> <tag> <out_path>", n > 2 ? words[2] : "-");
		else if (open_tag(words[1], words[2], words[3], why, sizeof(why)))
			reply("ok add %s", words[2]);
		else
			reply("err add %s %s", words[2], why);
	} else if (!strcmp(words[0], "close")) {
		struct tag *t = n == 2 ? tag_by_name(words[1]) : NULL;
		unsigned long long lost, lines;
		if (n != 2)
			reply("err close %s usage: close <tag>", n > 1 ? words[1] : "-");
		else if (!t)
			reply("err close %s unknown tag", words[1]);
		else if (close_tag(t, &lines, &lost, why, sizeof(why)))
			reply("err close %s %s", words[1], why);
		else
			reply("ok close %s records=%llu lost=%llu", words[1], lines, lost);
	} else {
		reply("err %s unknown command (add <host_pid> <tag> <out_path> | close <tag>)", words[0]);
	}
}

/* Complete lines from stdin, each run as a command; 1 at EOF. An overlong line is answered with an
 * error and skipped. */
static int read_commands(void)
{
	static char line[8192];
	static size_t len;
	static int skipping;
	ssize_t n = read(0, line + len, sizeof(line) - 1 - len);
	if (n < 0)
		return errno == EINTR || errno == EAGAIN ? 0 : 1;
	if (n == 0) {
		if (len && !skipping) {   /* a last command without its newline */
			line[len] = 0;
			command(line);
		}
		return 1;
	}
	len += n;
	line[len] = 0;
	char *start = line, *nl;
	while ((nl = memchr(start, '\n', line + len - start))) {
		*nl = 0;
		if (!skipping)
			command(start);
		skipping = 0;
		start = nl + 1;
	}
	len -= start - line;
	memmove(line, start, len);
	if (len == sizeof(line) - 1) {
		if (!skipping)
			reply("err - command longer than %zu bytes", sizeof(line) - 2);
		skipping = 1;
		len = 0;
	}
	return 0;
}

static void flush_tags(void)
{
	for (int i = 0; i < TAGS_MAX; i++)
		if (tags[i].id)
			fflush(tags[i].file);
}

static int usage(const char *argv0)
{
	fprintf(stderr, "usage: %s [--ring-kb N]                       (commands on stdin)\n"
			"       %s [--ring-kb N] [-o FILE] --run TAG -- cmd args...\n", argv0, argv0);
	return 2;
}

int main(int argc, char **argv)
{
	const char *outpath = NULL, *run_tag = NULL;
	int i, run_argi = -1, ring_kb = 16384;
	pid_t parent = getppid();
	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-o") && i + 1 < argc)
			outpath = argv[++i];
		else if (!strcmp(argv[i], "--ring-kb") && i + 1 < argc)
			ring_kb = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--run") && i + 1 < argc)
			run_tag = argv[++i];
		else if (!strcmp(argv[i], "--") && i + 1 < argc) {
			run_argi = i + 1;
			break;
		} else
			return usage(argv[0]);
	}
	if (!run_tag != (run_argi < 0) || (outpath && !run_tag))
		return usage(argv[0]);
	if (ring_kb < 1024 || (ring_kb & (ring_kb - 1))) {
		fprintf(stderr, "syscall-recorder: --ring-kb must be a power of 2 >= 1024\n");
		return 2;
	}
	/* The recorder must not outlive whoever started it: records would go nowhere and every
	 * syscall on the machine would keep paying for the attached programs. */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		return 0;
	/* SIGINT/SIGTERM/SIGCHLD are delivered only inside ppoll, so none is lost between a check of
	 * `stopping` and the wait. */
	sigset_t stop_sigs, wait_mask;
	sigemptyset(&stop_sigs);
	sigaddset(&stop_sigs, SIGINT);
	sigaddset(&stop_sigs, SIGTERM);
	sigaddset(&stop_sigs, SIGCHLD);
	sigprocmask(SIG_BLOCK, &stop_sigs, &wait_mask);
	sigaction(SIGINT, &(struct sigaction){.sa_handler = on_stop_signal}, NULL);
	sigaction(SIGTERM, &(struct sigaction){.sa_handler = on_stop_signal}, NULL);
	sigaction(SIGCHLD, &(struct sigaction){.sa_handler = on_sigchld}, NULL);
	signal(SIGPIPE, SIG_IGN);   /* a closed reply pipe shows as a write error: drain and exit */

	for (i = 0; i < (int)(sizeof(SYSCALLS) / sizeof(SYSCALLS[0])); i++)
		sysname[SYSCALLS[i].nr] = SYSCALLS[i].name;
	LIBBPF_OPTS(bpf_object_open_opts, open_opts);
	if (getenv("RECORDER_VERIFIER_STATS")) {
		open_opts.kernel_log_level = 4;
		libbpf_set_print(print_all);
	}
	skel = recorder_bpf__open_opts(&open_opts);
	if (!skel) {
		fprintf(stderr, "syscall-recorder: cannot open the BPF object: %s\n", strerror(errno));
		return 2;
	}
	bpf_map__set_max_entries(skel->maps.scratch, libbpf_num_possible_cpus());
	bpf_map__set_max_entries(skel->maps.events, ring_kb * 1024);
	if (recorder_bpf__load(skel)) {
		fprintf(stderr, "syscall-recorder: loading the BPF programs failed (%s; needs root and a kernel "
				"with BTF, /sys/kernel/btf/vmlinux; libbpf's log above)\n", strerror(errno));
		return 2;
	}
	for (i = 0; i < (int)(sizeof(SYSCALLS) / sizeof(SYSCALLS[0])); i++) {
		unsigned int nr = SYSCALLS[i].nr, d = SYSCALLS[i].desc | D_ON;
		bpf_map_update_elem(bpf_map__fd(skel->maps.sysdesc), &nr, &d, BPF_ANY);
	}
	if (recorder_bpf__attach(skel)) {
		fprintf(stderr, "syscall-recorder: attaching the BPF programs failed: %s\n", strerror(errno));
		return 2;
	}
	mono_to_real_ns = now_ns(CLOCK_REALTIME) - now_ns(CLOCK_MONOTONIC);
	rb = ring_buffer__new(bpf_map__fd(skel->maps.events), on_record, NULL, NULL);
	if (!rb) {
		fprintf(stderr, "syscall-recorder: ring buffer: %s\n", strerror(errno));
		return 2;
	}
	startup_cpu = self_cpu();

	pid_t child = -1;
	int child_status = 0, child_done = 0;
	struct tag *run = NULL;
	char why[600];
	if (run_tag) {
		int go[2];
		if (pipe2(go, O_CLOEXEC))   /* the command inherits none of the recorder's fds */
			return 2;
		child = fork();
		if (child == 0) {     /* held until it is followed, so its first call is recorded */
			char c;
			sigprocmask(SIG_SETMASK, &wait_mask, NULL);
			signal(SIGPIPE, SIG_DFL);
			if (read(go[0], &c, 1) != 1)
				_exit(127);
			execvp(argv[run_argi], argv + run_argi);
			perror(argv[run_argi]);
			_exit(127);
		}
		close(go[0]);
		char pidtxt[16];
		snprintf(pidtxt, sizeof(pidtxt), "%d", child);
		run = open_tag(pidtxt, run_tag, outpath, why, sizeof(why));
		if (!run) {
			fprintf(stderr, "syscall-recorder: %s\n", why);
			return 2;
		}
		if (write(go[1], "g", 1) != 1)
			return 2;
		close(go[1]);
	} else {
		reply("ready");
	}

	struct pollfd pfd[2] = {{.fd = ring_buffer__epoll_fd(rb), .events = POLLIN},
				{.fd = run_tag ? -1 : 0, .events = POLLIN}};
	long long drain_deadline = 0;
	while (!stopping) {
		/* The kernel side wakes us only when the ring is 1/8 full; the timeout bounds how stale
		 * the files get otherwise. */
		int r = ppoll(pfd, 2, &(struct timespec){0, 100000000}, &wait_mask);
		if (r > 0 && (pfd[1].revents & (POLLIN | POLLHUP | POLLERR)) && read_commands())
			stopping = 1;
		ring_buffer__consume(rb);
		report_losses();
		flush_tags();
		if (run && !child_done && waitpid(child, &child_status, WNOHANG) == child) {
			child_done = 1;
			drain_deadline = now_ns(CLOCK_MONOTONIC) + 10000000000LL;
		}
		/* --run ends when every task of the tag has exited (as strace -f), or 10 s after the
		 * command (a daemon it left behind is not waited for) */
		if (child_done && (traced_left(run->id) == 0 || now_ns(CLOCK_MONOTONIC) > drain_deadline))
			break;
	}
	ring_buffer__consume(rb);
	int status = 0;
	for (i = 0; i < TAGS_MAX; i++) {
		unsigned long long lines, lost;
		char name[sizeof(tags[i].name)];
		if (!tags[i].id)
			continue;
		memcpy(name, tags[i].name, sizeof(name));
		if (close_tag(&tags[i], &lines, &lost, why, sizeof(why))) {
			fprintf(stderr, "syscall-recorder: closing %s: %s\n", name, why);
			status = 1;
		} else {
			fprintf(stderr, "syscall-recorder: closed %s at exit: records=%llu lost=%llu\n", name, lines, lost);
		}
	}
	unsigned long long v[ST_MAX];
	read_stats(v);
	fprintf(stderr, "syscall-recorder: exit: lost=%llu lost_bytes=%llu inflight_full=%llu traced_full=%llu "
			"strays=%llu cpu_startup_s=%.3f cpu_total_s=%.3f\n", v[ST_LOST], v[ST_LOST_BYTES],
		v[ST_INFLIGHT_FULL], v[ST_TRACED_FULL], strays, startup_cpu, self_cpu());
	ring_buffer__free(rb);
	recorder_bpf__destroy(skel);
	if (run)
		return WIFEXITED(child_status) ? WEXITSTATUS(child_status) : 128 + WTERMSIG(child_status);
	return status;
}
