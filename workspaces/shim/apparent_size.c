/*
 * apparent_size.c - presents a large "apparent" size for chosen files, and a
 * large volume for chosen mount points, to a short list of display programs.
 *
 * Loaded through /etc/ld.so.preload in a fake server's filesystem view (or
 * through LD_PRELOAD in tests).  It wraps the stat and statfs families of libc
 * and, ONLY when the running program's short name is in the configured list
 * (by default ls, stat, du, df, find), rewrites two things in the results:
 *
 *   - for a regular file whose inode AND real size match a "file" line:
 *     st_size becomes the apparent size, st_blocks becomes the matching number
 *     of 512-byte blocks (so `du` agrees with `ls`).  Nothing else changes:
 *     inode, mode, owner, times and link count are the real ones.  A file that
 *     was rewritten (different size) or copied (different inode) is shown as
 *     it really is.
 *   - for statfs/statvfs (and the fd variants) of a path on a "volume" line:
 *     the block totals are recomputed from the configured total and used
 *     bytes.  Block size, inode counts, fs type and flags stay real.
 *
 * Every other program (sshd, sftp-server, scp, rsync, cat, cp, dd, tar, bash,
 * python, ...) gets the untouched results, so real bytes are read, copied and
 * counted honestly.
 *
 * Config: /etc/peer-harness/apparent_size.conf, read once per process.
 * The environment variable PEER_HARNESS_SIZE_CONF names another file, but it
 * is only honoured when the compiled-in file does not exist (tests run on a
 * host without it; inside a server the compiled-in file exists and the
 * variable is ignored).  Format, one directive per line, '#' starts a comment:
 *
 *   programs ls stat du df find
 *   file <inode> <real_size> <apparent_size>
 *   volume <mount_point> <total_bytes> <used_bytes>
 *
 * A missing or unreadable config means the library does nothing at all.
 * After the one-time parse (pthread_once) the state is read-only: the hooks
 * take no locks and allocate nothing.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef PH_CONF_PATH
#define PH_CONF_PATH "/etc/peer-harness/apparent_size.conf"
#endif
#define PH_CONF_ENV "PEER_HARNESS_SIZE_CONF"

#define EXPORT __attribute__((visibility("default")))

#define MAX_FILES 64
#define MAX_VOLUMES 8
#define MAX_PROGRAMS 16
#define PROG_LEN 32
#define CONF_MAX 65536

struct ph_file {
    unsigned long long ino, real_size, apparent_size;
};

struct ph_volume {
    char path[PATH_MAX];
    size_t len;
    unsigned long long total, used;
};

static pthread_once_t ph_once = PTHREAD_ONCE_INIT;
static int ph_active;                  /* config loaded and this program is listed */
static struct ph_file ph_files[MAX_FILES];
static int ph_nfiles;
static struct ph_volume ph_volumes[MAX_VOLUMES];
static int ph_nvolumes;
static char ph_programs[MAX_PROGRAMS][PROG_LEN];
static int ph_nprograms;
static char ph_conf_buf[CONF_MAX];

/* ---- pointers to the next definitions (normally libc's) ---------------- */

static int (*real_stat)(const char *, struct stat *);
static int (*real_lstat)(const char *, struct stat *);
static int (*real_fstat)(int, struct stat *);
static int (*real_fstatat)(int, const char *, struct stat *, int);
static int (*real_stat64)(const char *, struct stat64 *);
static int (*real_lstat64)(const char *, struct stat64 *);
static int (*real_fstat64)(int, struct stat64 *);
static int (*real_fstatat64)(int, const char *, struct stat64 *, int);
static int (*real_statx)(int, const char *, int, unsigned int, struct statx *);
static int (*real_xstat)(int, const char *, struct stat *);
static int (*real_lxstat)(int, const char *, struct stat *);
static int (*real_fxstat)(int, int, struct stat *);
static int (*real_fxstatat)(int, int, const char *, struct stat *, int);
static int (*real_xstat64)(int, const char *, struct stat64 *);
static int (*real_lxstat64)(int, const char *, struct stat64 *);
static int (*real_fxstat64)(int, int, struct stat64 *);
static int (*real_fxstatat64)(int, int, const char *, struct stat64 *, int);
static int (*real_statfs)(const char *, struct statfs *);
static int (*real_fstatfs)(int, struct statfs *);
static int (*real_statfs64)(const char *, struct statfs64 *);
static int (*real_fstatfs64)(int, struct statfs64 *);
static int (*real_statvfs)(const char *, struct statvfs *);
static int (*real_fstatvfs)(int, struct statvfs *);
static int (*real_statvfs64)(const char *, struct statvfs64 *);
static int (*real_fstatvfs64)(int, struct statvfs64 *);

/* The __xstat family only exists as versioned compat symbols in glibc >= 2.33,
 * which plain dlsym does not return; try the usual base versions as well. */
static void *next_sym(const char *name)
{
    static const char *const versions[] = {"GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.0", "GLIBC_2.27"};
    void *p = dlsym(RTLD_NEXT, name);
    for (size_t i = 0; !p && i < sizeof versions / sizeof versions[0]; i++)
        p = dlvsym(RTLD_NEXT, name, versions[i]);
    return p;
}

#define RESOLVE(var, name) (*(void **)(&(var)) = next_sym(name))

static void resolve_all(void)
{
    RESOLVE(real_stat, "stat");
    RESOLVE(real_lstat, "lstat");
    RESOLVE(real_fstat, "fstat");
    RESOLVE(real_fstatat, "fstatat");
    RESOLVE(real_stat64, "stat64");
    RESOLVE(real_lstat64, "lstat64");
    RESOLVE(real_fstat64, "fstat64");
    RESOLVE(real_fstatat64, "fstatat64");
    RESOLVE(real_statx, "statx");
    RESOLVE(real_xstat, "__xstat");
    RESOLVE(real_lxstat, "__lxstat");
    RESOLVE(real_fxstat, "__fxstat");
    RESOLVE(real_fxstatat, "__fxstatat");
    RESOLVE(real_xstat64, "__xstat64");
    RESOLVE(real_lxstat64, "__lxstat64");
    RESOLVE(real_fxstat64, "__fxstat64");
    RESOLVE(real_fxstatat64, "__fxstatat64");
    RESOLVE(real_statfs, "statfs");
    RESOLVE(real_fstatfs, "fstatfs");
    RESOLVE(real_statfs64, "statfs64");
    RESOLVE(real_fstatfs64, "fstatfs64");
    RESOLVE(real_statvfs, "statvfs");
    RESOLVE(real_fstatvfs, "fstatvfs");
    RESOLVE(real_statvfs64, "statvfs64");
    RESOLVE(real_fstatvfs64, "fstatvfs64");
}

/* ---- path helpers (no allocation) ---------------------------------------- */

/* Canonical absolute path of an open fd, via /proc/self/fd. Returns length or -1. */
static ssize_t fd_path(int fd, char *out, size_t outlen)
{
    static const char prefix[] = "/proc/self/fd/";
    char link[sizeof prefix + 12];
    char digits[12];
    int nd = 0;
    unsigned int v = (unsigned int)fd;
    if (fd < 0)
        return -1;
    do {
        digits[nd++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    memcpy(link, prefix, sizeof prefix - 1);
    for (int i = 0; i < nd; i++)
        link[sizeof prefix - 1 + i] = digits[nd - 1 - i];
    link[sizeof prefix - 1 + nd] = '\0';
    ssize_t n = readlink(link, out, outlen - 1);
    if (n <= 0 || out[0] != '/')
        return -1;
    out[n] = '\0';
    return n;
}

/* Canonical path of `path` (symlinks and relative parts resolved by the kernel). */
static ssize_t canon_path(const char *path, char *out, size_t outlen)
{
    int saved = errno;
    ssize_t n = -1;
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd >= 0) {
        n = fd_path(fd, out, outlen);
        close(fd);
    }
    if (n < 0 && path[0] == '/' && strlen(path) < outlen) {
        strcpy(out, path);
        n = (ssize_t)strlen(out);
    }
    errno = saved;
    return n;
}

/* ---- config -------------------------------------------------------------- */

static char *next_token(char **cursor)
{
    char *s = *cursor;
    while (*s == ' ' || *s == '\t' || *s == '\r')
        s++;
    if (*s == '\0') {
        *cursor = s;
        return NULL;
    }
    char *start = s;
    while (*s && *s != ' ' && *s != '\t' && *s != '\r')
        s++;
    if (*s)
        *s++ = '\0';
    *cursor = s;
    return start;
}

static int parse_u64(const char *s, unsigned long long *out)
{
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || s[0] == '-')
        return -1;
    *out = v;
    return 0;
}

static void parse_line(char *line)
{
    char *hash = strchr(line, '#');
    if (hash)
        *hash = '\0';
    char *cur = line;
    char *kw = next_token(&cur);
    if (!kw)
        return;
    if (strcmp(kw, "programs") == 0) {
        ph_nprograms = 0;
        for (char *t; (t = next_token(&cur)) && ph_nprograms < MAX_PROGRAMS;) {
            if (strlen(t) < PROG_LEN)
                strcpy(ph_programs[ph_nprograms++], t);
        }
    } else if (strcmp(kw, "file") == 0 && ph_nfiles < MAX_FILES) {
        struct ph_file f;
        if (parse_u64(next_token(&cur), &f.ino) == 0 &&
            parse_u64(next_token(&cur), &f.real_size) == 0 &&
            parse_u64(next_token(&cur), &f.apparent_size) == 0)
            ph_files[ph_nfiles++] = f;
    } else if (strcmp(kw, "volume") == 0 && ph_nvolumes < MAX_VOLUMES) {
        struct ph_volume *v = &ph_volumes[ph_nvolumes];
        char *p = next_token(&cur);
        if (!p || p[0] != '/')
            return;
        if (parse_u64(next_token(&cur), &v->total) != 0 ||
            parse_u64(next_token(&cur), &v->used) != 0 || v->used > v->total)
            return;
        ssize_t n = canon_path(p, v->path, sizeof v->path);
        if (n <= 0)
            return;
        while (n > 1 && v->path[n - 1] == '/')
            v->path[--n] = '\0';
        v->len = (size_t)n;
        ph_nvolumes++;
    }
}

static int load_config(void)
{
    const char *path = PH_CONF_PATH;
    if (access(PH_CONF_PATH, F_OK) != 0) {
        const char *env = secure_getenv(PH_CONF_ENV);
        if (env && *env)
            path = env;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t got = 0;
    while (got < CONF_MAX - 1) {
        ssize_t n = read(fd, ph_conf_buf + got, CONF_MAX - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    ph_conf_buf[got] = '\0';

    static const char *const defaults[] = {"ls", "stat", "du", "df", "find"};
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
        strcpy(ph_programs[ph_nprograms++], defaults[i]);

    char *line = ph_conf_buf;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        parse_line(line);
        line = nl ? nl + 1 : NULL;
    }
    return 0;
}

static void ph_init(void)
{
    int saved = errno;
    resolve_all();
    if (load_config() == 0 && (ph_nfiles > 0 || ph_nvolumes > 0)) {
        const char *me = program_invocation_short_name;
        for (int i = 0; me && i < ph_nprograms; i++)
            if (strcmp(me, ph_programs[i]) == 0)
                ph_active = 1;
    }
    errno = saved;
}

static inline int active(void)
{
    pthread_once(&ph_once, ph_init);
    return ph_active;
}

/* ---- rewriting results ---------------------------------------------------- */

static const struct ph_file *match_file(unsigned long long ino, unsigned long long size)
{
    for (int i = 0; i < ph_nfiles; i++)
        if (ph_files[i].ino == ino && ph_files[i].real_size == size)
            return &ph_files[i];
    return NULL;
}

#define BLOCKS_512(bytes) (((bytes) + 511ULL) / 512ULL)

#define FIX_STAT(st)                                                              \
    do {                                                                          \
        if (S_ISREG((st)->st_mode)) {                                             \
            const struct ph_file *f_ = match_file((unsigned long long)(st)->st_ino, \
                                                  (unsigned long long)(st)->st_size); \
            if (f_) {                                                             \
                (st)->st_size = (off_t)f_->apparent_size;                         \
                (st)->st_blocks = (blkcnt_t)BLOCKS_512(f_->apparent_size);        \
            }                                                                     \
        }                                                                         \
    } while (0)

static const struct ph_volume *match_volume_path(const char *canon, size_t len)
{
    const struct ph_volume *best = NULL;
    for (int i = 0; i < ph_nvolumes; i++) {
        const struct ph_volume *v = &ph_volumes[i];
        int under = (v->len == 1) /* "/" */ ||
                    (len >= v->len && memcmp(canon, v->path, v->len) == 0 &&
                     (canon[v->len] == '\0' || canon[v->len] == '/'));
        if (under && (!best || v->len > best->len))
            best = v;
    }
    return best;
}

static const struct ph_volume *volume_for_path(const char *path)
{
    char buf[PATH_MAX];
    if (!path || ph_nvolumes == 0)
        return NULL;
    ssize_t n = canon_path(path, buf, sizeof buf);
    return n > 0 ? match_volume_path(buf, (size_t)n) : NULL;
}

static const struct ph_volume *volume_for_fd(int fd)
{
    char buf[PATH_MAX];
    if (ph_nvolumes == 0)
        return NULL;
    int saved = errno;
    ssize_t n = fd_path(fd, buf, sizeof buf);
    errno = saved;
    return n > 0 ? match_volume_path(buf, (size_t)n) : NULL;
}

/* Works for statfs, statfs64, statvfs and statvfs64 (same field names). */
#define FIX_FS(sf, vol)                                                           \
    do {                                                                          \
        unsigned long long unit_ = (unsigned long long)(sf)->f_frsize;            \
        if (unit_ == 0)                                                           \
            unit_ = (unsigned long long)(sf)->f_bsize;                            \
        if (unit_ == 0)                                                           \
            unit_ = 4096;                                                         \
        unsigned long long blocks_ = (vol)->total / unit_;                        \
        unsigned long long used_ = ((vol)->used + unit_ / 2) / unit_;             \
        if (used_ > blocks_)                                                      \
            used_ = blocks_;                                                      \
        (sf)->f_blocks = blocks_;                                                 \
        (sf)->f_bfree = blocks_ - used_;                                          \
        (sf)->f_bavail = blocks_ - used_;                                         \
    } while (0)

/* ---- the hooks ------------------------------------------------------------ */

#define NOT_FOUND() (errno = ENOSYS, -1)

EXPORT int stat(const char *path, struct stat *st)
{
    int on = active();
    if (!real_stat)
        return NOT_FOUND();
    int r = real_stat(path, st);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

EXPORT int lstat(const char *path, struct stat *st)
{
    int on = active();
    if (!real_lstat)
        return NOT_FOUND();
    int r = real_lstat(path, st);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

EXPORT int fstat(int fd, struct stat *st)
{
    int on = active();
    if (!real_fstat)
        return NOT_FOUND();
    int r = real_fstat(fd, st);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

EXPORT int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
    int on = active();
    if (!real_fstatat)
        return NOT_FOUND();
    int r = real_fstatat(dirfd, path, st, flags);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

EXPORT int stat64(const char *path, struct stat64 *st)
{
    int on = active();
    if (!real_stat64)
        return NOT_FOUND();
    int r = real_stat64(path, st);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

EXPORT int lstat64(const char *path, struct stat64 *st)
{
    int on = active();
    if (!real_lstat64)
        return NOT_FOUND();
    int r = real_lstat64(path, st);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

EXPORT int fstat64(int fd, struct stat64 *st)
{
    int on = active();
    if (!real_fstat64)
        return NOT_FOUND();
    int r = real_fstat64(fd, st);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
    int on = active();
    if (!real_fstatat64)
        return NOT_FOUND();
    int r = real_fstatat64(dirfd, path, st, flags);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *stx)
{
    int on = active();
    if (!real_statx)
        return NOT_FOUND();
    int r = real_statx(dirfd, path, flags, mask, stx);
    if (r == 0 && on && (stx->stx_mask & (STATX_INO | STATX_SIZE)) == (STATX_INO | STATX_SIZE) &&
        (!(stx->stx_mask & STATX_TYPE) || S_ISREG(stx->stx_mode))) {
        const struct ph_file *f = match_file(stx->stx_ino, stx->stx_size);
        if (f) {
            stx->stx_size = f->apparent_size;
            if (stx->stx_mask & STATX_BLOCKS)
                stx->stx_blocks = BLOCKS_512(f->apparent_size);
        }
    }
    return r;
}

/* Legacy entry points of binaries linked against glibc < 2.33. */
EXPORT int __xstat(int ver, const char *path, struct stat *st)
{
    int on = active();
    if (!real_xstat)
        return NOT_FOUND();
    int r = real_xstat(ver, path, st);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

EXPORT int __lxstat(int ver, const char *path, struct stat *st)
{
    int on = active();
    if (!real_lxstat)
        return NOT_FOUND();
    int r = real_lxstat(ver, path, st);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

EXPORT int __fxstat(int ver, int fd, struct stat *st)
{
    int on = active();
    if (!real_fxstat)
        return NOT_FOUND();
    int r = real_fxstat(ver, fd, st);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags)
{
    int on = active();
    if (!real_fxstatat)
        return NOT_FOUND();
    int r = real_fxstatat(ver, dirfd, path, st, flags);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

EXPORT int __xstat64(int ver, const char *path, struct stat64 *st)
{
    int on = active();
    if (!real_xstat64)
        return NOT_FOUND();
    int r = real_xstat64(ver, path, st);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

EXPORT int __lxstat64(int ver, const char *path, struct stat64 *st)
{
    int on = active();
    if (!real_lxstat64)
        return NOT_FOUND();
    int r = real_lxstat64(ver, path, st);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

EXPORT int __fxstat64(int ver, int fd, struct stat64 *st)
{
    int on = active();
    if (!real_fxstat64)
        return NOT_FOUND();
    int r = real_fxstat64(ver, fd, st);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

EXPORT int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags)
{
    int on = active();
    if (!real_fxstatat64)
        return NOT_FOUND();
    int r = real_fxstatat64(ver, dirfd, path, st, flags);
    if (r == 0 && on)
        FIX_STAT(st);
    return r;
}

/* statfs / statvfs families. */
#define FS_HOOK_PATH(name, type, realp)                                           \
    EXPORT int name(const char *path, type *sf)                                   \
    {                                                                             \
        int on = active();                                                        \
        if (!realp)                                                               \
            return NOT_FOUND();                                                   \
        int r = realp(path, sf);                                                  \
        if (r == 0 && on) {                                                       \
            const struct ph_volume *v = volume_for_path(path);                    \
            if (v)                                                                \
                FIX_FS(sf, v);                                                    \
        }                                                                         \
        return r;                                                                 \
    }

#define FS_HOOK_FD(name, type, realp)                                             \
    EXPORT int name(int fd, type *sf)                                             \
    {                                                                             \
        int on = active();                                                        \
        if (!realp)                                                               \
            return NOT_FOUND();                                                   \
        int r = realp(fd, sf);                                                    \
        if (r == 0 && on) {                                                       \
            const struct ph_volume *v = volume_for_fd(fd);                        \
            if (v)                                                                \
                FIX_FS(sf, v);                                                    \
        }                                                                         \
        return r;                                                                 \
    }

FS_HOOK_PATH(statfs, struct statfs, real_statfs)
FS_HOOK_PATH(statfs64, struct statfs64, real_statfs64)
FS_HOOK_PATH(statvfs, struct statvfs, real_statvfs)
FS_HOOK_PATH(statvfs64, struct statvfs64, real_statvfs64)
FS_HOOK_FD(fstatfs, struct statfs, real_fstatfs)
FS_HOOK_FD(fstatfs64, struct statfs64, real_fstatfs64)
FS_HOOK_FD(fstatvfs, struct statvfs, real_fstatvfs)
FS_HOOK_FD(fstatvfs64, struct statvfs64, real_fstatvfs64)
