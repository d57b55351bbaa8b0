/*
** lf_spool.c: the durable spool.  lf_spool.h holds the contract and the
** file format; this file follows it.
**
** Inside, one mutex guards a struct lf_spool: the directory's fd (every
** file operation is relative to it, so a path swapped after open cannot
** redirect us), the list of segments this process owns (struct seg:
** the flock'ed file and the offsets of the records handed out from it,
** each with an acked bit), the open claims, and the counters.  The
** spool's idea of how many bytes the directory holds is refreshed by a
** directory scan now and then and kept up to date with our own writes
** in between.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "lf_spool.h"

/* Segment file header: "LFSPOOL" and the format version. */
#define SEG_MAGIC "LFSPOOL"
#define SEG_VERSION 1
#define SEG_HDR_LEN 8
/* Record header: magic, version, route, lengths, two CRCs. */
#define REC_MAGIC "\xfe" "LFR"
#define REC_VERSION 1
#define REC_HDR_LEN 20
/* Ack entry: an offset and its CRC. */
#define ACK_LEN 12
/* "seg-" + 16 + "-" + 8 + "-" + 8 hex digits. */
#define BASE_LEN 38
/* Room for a file name, quarantine/ prefix and suffixes included. */
#define NAME_LEN 128
/* Where damaged bytes and files go, to be looked at, never replayed. */
#define QDIR "quarantine"
/* Events the server refused for good, one JSON object a line. */
#define DEAD_LETTER "dead-letter.jsonl"

/* Defaults, see struct lf_spool_opts. */
#define DEFAULT_SEGMENT_BYTES (8u * 1024 * 1024)
#define DEFAULT_MAX_BYTES ((uint64_t)1024 * 1024 * 1024)
#define DEFAULT_RECORD_BYTES (8u * 1024 * 1024)
/* Smallest segment: a few records each, or rotation would dominate. */
#define SEGMENT_MIN 1024
/* Bytes a claim reads at once when looking for the next good record
   or copying damaged bytes to quarantine/. */
#define SCRATCH_LEN (64 * 1024)
/* Directory entries one scan considers: bounds the scan's memory; at
   8 MiB per segment it is far beyond any sane spool. */
#define SCAN_MAX 65536
/* Most bytes of one damaged region copied to quarantine/. */
#define QUARANTINE_COPY_MAX ((uint64_t)64 * 1024 * 1024)
/* Seconds between directory scans when the cap seems reached. */
#define RESCAN_INTERVAL 1.0
/* Attempts at creating a segment when a claimer races us. */
#define CREATE_TRIES 4
/* A write buffer grown past this is freed after use. */
#define WBUF_KEEP (1024 * 1024)
/* Longest reason kept in a dead-letter line. */
#define REASON_MAX 2048

enum kind { K_NONE = 0, K_NEW, K_OPEN, K_SEG, K_ACK };
static const char *const suffixes[] = { "", ".new", ".open", ".seg",
                                        ".ack" };

/* A segment this process owns. */
struct seg {
  struct seg *next;
  uint64_t id;               /* ref.seg; never reused */
  char base[BASE_LEN + 1];
  int active;                /* this process appends to it */
  int written;               /* this process wrote it (not a claim) */
  int kind;                  /* K_OPEN or K_SEG: its current name */
  int complete;              /* recs lists every unacked record */
  int broken;                /* a failed write left junk: rotate */
  int fd;                    /* the segment, flock'ed */
  int ack_fd;                /* -1 until needed */
  int data_dirty;
  int ack_dirty;
  uint64_t size;
  uint64_t ack_bytes;
  uint64_t *recs;            /* offset << 1 | acked, ascending */
  size_t nrecs;
  size_t caprecs;
  size_t live;               /* records handed out and not acked */
  struct lf_spool_claim *claim;
};

struct lf_spool {
  pthread_mutex_t lock;
  struct lf_spool_opts opts;
  char *dir;                 /* for messages */
  int dirfd;
  pid_t pid;
  uint32_t seq;
  uint64_t next_id;
  struct seg *segs;
  struct seg *active;
  struct lf_spool_claim *claims;
  int dl_fd;
  int dl_dirty;
  int dir_dirty;
  uint64_t disk_bytes;       /* last scan plus our changes since */
  uint64_t disk_segments;
  double last_scan;
  struct lf_buf wbuf;
  struct lf_spool_stats st;  /* the counters */
};

struct lf_spool_claim {
  struct lf_spool *sp;
  struct lf_spool_claim *next;
  struct seg *seg;           /* NULL once the segment is gone */
  uint64_t cursor;
  uint64_t *acked;           /* offsets acked before the claim, sorted */
  size_t nacked;
  char *buf;                 /* one record's id + data + NUL */
  size_t cap;
  unsigned char *scratch;    /* SCRATCH_LEN */
  char id[LF_SPOOL_ID_MAX + 1];
};

/* One directory entry with a spool name. */
struct entry {
  char base[BASE_LEN + 1];
  int kind;
  int regular;
  int symlink;
  uint64_t size;
};

struct listing {
  struct entry *e;
  size_t n;
  uint64_t bytes;            /* segment and ack bytes */
  uint64_t segments;
};

/* ---- small helpers ---- */

static void put16(unsigned char *p, unsigned v)
{
  p[0] = (unsigned char)(v & 0xff);
  p[1] = (unsigned char)((v >> 8) & 0xff);
}

static void put32(unsigned char *p, uint32_t v)
{
  put16(p, v & 0xffff);
  put16(p + 2, v >> 16);
}

static void put64(unsigned char *p, uint64_t v)
{
  put32(p, (uint32_t)(v & 0xffffffffu));
  put32(p + 4, (uint32_t)(v >> 32));
}

static unsigned get16(const unsigned char *p)
{
  return (unsigned)p[0] | (unsigned)p[1] << 8;
}

static uint32_t get32(const unsigned char *p)
{
  return (uint32_t)get16(p) | (uint32_t)get16(p + 2) << 16;
}

static uint64_t get64(const unsigned char *p)
{
  return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* zlib's CRC-32, for lengths past what one call takes. */
static uint32_t crc(uint32_t c, const void *p, size_t n)
{
  const unsigned char *s = p;
  while(n) {
    uInt k = n > 0x40000000u ? 0x40000000u : (uInt)n;
    c = (uint32_t)crc32(c, s, k);
    s += k;
    n -= k;
  }
  return c;
}

static double now_mono(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_us(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* strerror, without its shared buffer. */
static const char *errtext(int e, char *buf, size_t n)
{
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
  return strerror_r(e, buf, n);
#else
  if(strerror_r(e, buf, n))
    snprintf(buf, n, "error %d", e);
  return buf;
#endif
}

/* Writes the message to errbuf (when given) and returns result. */
static int fail(char *errbuf, int result, const char *fmt, ...)
  LF_PRINTF(3, 4);
static int fail(char *errbuf, int result, const char *fmt, ...)
{
  va_list ap;
  if(errbuf) {
    va_start(ap, fmt);
    vsnprintf(errbuf, LF_SPOOL_ERRMAX, fmt, ap);
    va_end(ap);
  }
  return result;
}

/* fail() with "what: strerror(e)". */
static int fail_errno(char *errbuf, int e, const char *what,
                      const char *name)
{
  char eb[128];
  return fail(errbuf, LF_EIO, "%s %s: %s", what, name,
              errtext(e, eb, sizeof(eb)));
}

/* Hands one line to the log hook, if there is one. */
static void say(struct lf_spool *sp, int level, const char *fmt, ...)
  LF_PRINTF(3, 4);
static void say(struct lf_spool *sp, int level, const char *fmt, ...)
{
  char msg[512];
  va_list ap;
  if(!sp->opts.log)
    return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  sp->opts.log(sp->opts.log_ud, level, msg);
}

/* Writes all n bytes at off; 0 or an errno. */
static int pwrite_all(int fd, const void *p, size_t n, uint64_t off)
{
  const char *s = p;
  while(n) {
    ssize_t w = pwrite(fd, s, n, (off_t)off);
    if(w < 0 && errno == EINTR)
      continue;
    if(w < 0)
      return errno;
    if(w == 0)
      return EIO;
    s += w;
    n -= (size_t)w;
    off += (uint64_t)w;
  }
  return 0;
}

/* Reads up to n bytes at off into p; *got says how many (fewer only at
   the end of the file).  0 or an errno. */
static int pread_all(int fd, void *p, size_t n, uint64_t off, size_t *got)
{
  char *s = p;
  *got = 0;
  while(n) {
    ssize_t r = pread(fd, s, n, (off_t)off);
    if(r < 0 && errno == EINTR)
      continue;
    if(r < 0)
      return errno;
    if(r == 0)
      break;
    s += r;
    n -= (size_t)r;
    off += (uint64_t)r;
    *got += (size_t)r;
  }
  return 0;
}

static int sync_fd(int fd)
{
  while(fsync(fd)) {
    if(errno != EINTR)
      return errno;
  }
  return 0;
}

/* ---- names ---- */

static int ishex(const char *s, size_t n)
{
  size_t i;
  for(i = 0; i < n; i++) {
    if(!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return 0;
  }
  return 1;
}

/* The kind of a spool file name, with its base copied out, or K_NONE
   for a name that is not ours. */
static int parse_name(const char *name, char *base)
{
  int k;
  if(strlen(name) <= BASE_LEN || memcmp(name, "seg-", 4) ||
     !ishex(name + 4, 16) || name[20] != '-' || !ishex(name + 21, 8) ||
     name[29] != '-' || !ishex(name + 30, 8))
    return K_NONE;
  for(k = K_NEW; k <= K_ACK; k++) {
    if(!strcmp(name + BASE_LEN, suffixes[k])) {
      memcpy(base, name, BASE_LEN);
      base[BASE_LEN] = '\0';
      return k;
    }
  }
  return K_NONE;
}

static void name_of(char *out, const char *base, int kind)
{
  snprintf(out, NAME_LEN, "%s%s", base, suffixes[kind]);
}

/* ---- records ---- */

struct rhdr {
  int route;
  size_t id_len;
  size_t data_len;
  uint32_t body_crc;
};

/* Checks the record header h found at off in a file of size bytes
   (size - off >= REC_HDR_LEN).  NULL when sound, else what is wrong. */
static const char *check_header(const unsigned char *h, uint64_t off,
                                uint64_t size, struct rhdr *r)
{
  if(memcmp(h, REC_MAGIC, 4))
    return "bad magic";
  if(h[4] != REC_VERSION)
    return "unknown record version";
  if(get32(h + 16) != crc(0, h, 16))
    return "bad header checksum";
  r->route = h[5];
  r->id_len = get16(h + 6);
  r->data_len = get32(h + 8);
  r->body_crc = get32(h + 12);
  if(r->id_len > LF_SPOOL_ID_MAX)
    return "id length over the limit";
  if(r->data_len > LF_SPOOL_DATA_MAX)
    return "data length over the limit";
  if(REC_HDR_LEN + r->id_len + r->data_len > size - off)
    return "record runs past the end of the file";
  return NULL;
}

static void fill_header(unsigned char *h, int route, size_t id_len,
                        size_t len, uint32_t body_crc)
{
  memcpy(h, REC_MAGIC, 4);
  h[4] = REC_VERSION;
  h[5] = (unsigned char)route;
  put16(h + 6, (unsigned)id_len);
  put32(h + 8, (uint32_t)len);
  put32(h + 12, body_crc);
  put32(h + 16, crc(0, h, 16));
}

/* CRC of n bytes at off, read in small pieces; 0 on success. */
static int crc_range(int fd, uint64_t off, uint64_t n, uint32_t *out)
{
  unsigned char piece[4096];
  uint32_t c = 0;
  while(n) {
    size_t want = n > sizeof(piece) ? sizeof(piece) : (size_t)n, got;
    if(pread_all(fd, piece, want, off, &got) || got != want)
      return -1;
    c = crc(c, piece, got);
    off += got;
    n -= got;
  }
  *out = c;
  return 0;
}

/* 1 when a complete, sound record starts at off. */
static int record_at(int fd, uint64_t off, uint64_t size)
{
  unsigned char h[REC_HDR_LEN];
  struct rhdr r;
  size_t got;
  uint32_t c;
  if(off >= size || size - off < REC_HDR_LEN ||
     pread_all(fd, h, REC_HDR_LEN, off, &got) || got != REC_HDR_LEN ||
     check_header(h, off, size, &r))
    return 0;
  if(crc_range(fd, off + REC_HDR_LEN, r.id_len + r.data_len, &c))
    return 0;
  return c == r.body_crc;
}

/* The first offset past from where a sound record starts, or size.
   Reads SCRATCH_LEN bytes at a time into scratch. */
static uint64_t resync(int fd, uint64_t from, uint64_t size,
                       unsigned char *scratch)
{
  uint64_t pos = from;
  while(pos + REC_HDR_LEN <= size) {
    size_t got, i;
    if(pread_all(fd, scratch, SCRATCH_LEN, pos, &got) || got < 4)
      break;
    for(i = 0; i + 4 <= got; i++) {
      if(scratch[i] == 0xfe && !memcmp(scratch + i, REC_MAGIC, 4) &&
         record_at(fd, pos + i, size))
        return pos + i;
    }
    pos += got - 3;
  }
  return size;
}

/* Walks record headers from the segment header on; the number of sound
   headers before the first bad one.  For counts, not for replay. */
static uint64_t count_records(int fd, uint64_t size)
{
  unsigned char h[REC_HDR_LEN];
  uint64_t pos = SEG_HDR_LEN, n = 0;
  struct rhdr r;
  size_t got;
  while(pos + REC_HDR_LEN <= size) {
    if(pread_all(fd, h, REC_HDR_LEN, pos, &got) || got != REC_HDR_LEN ||
       check_header(h, pos, size, &r))
      break;
    pos += REC_HDR_LEN + r.id_len + r.data_len;
    n++;
  }
  return n;
}

/* ---- ack files ---- */

static int cmp_u64(const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static int has_u64(const uint64_t *v, size_t n, uint64_t x)
{
  size_t lo = 0, hi = n;
  while(lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if(v[mid] == x)
      return 1;
    if(v[mid] < x)
      lo = mid + 1;
    else
      hi = mid;
  }
  return 0;
}

/*
** Reads the sound entries of base's ack file into a sorted malloc'd
** array the caller owns (*out, NULL when there are none).  At most
** limit entries are kept: more than a segment can hold records means
** the file is damaged, and ignoring entries only causes duplicates.
*/
static int load_acks(struct lf_spool *sp, const char *base, uint64_t limit,
                     uint64_t **out, size_t *n, uint64_t *bytes)
{
  char name[NAME_LEN];
  unsigned char e[ACK_LEN * 256];
  uint64_t off = 0, *v = NULL;
  size_t cap = 0, got, i;
  int fd;
  *out = NULL;
  *n = 0;
  *bytes = 0;
  name_of(name, base, K_ACK);
  fd = openat(sp->dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if(fd < 0)
    return LF_OK;
  while(!pread_all(fd, e, sizeof(e), off, &got) && got >= ACK_LEN) {
    for(i = 0; i + ACK_LEN <= got && *n < limit; i += ACK_LEN) {
      if(get32(e + i + 8) != crc(0, e + i, 8))
        continue;
      if(*n == cap) {
        uint64_t *nv;
        cap = cap ? cap * 2 : 64;
        nv = realloc(v, cap * sizeof(*v));
        if(!nv) {
          free(v);
          close(fd);
          return LF_ENOMEM;
        }
        v = nv;
      }
      v[(*n)++] = get64(e + i);
    }
    off += got;
  }
  *bytes = off;
  close(fd);
  if(v)
    qsort(v, *n, sizeof(*v), cmp_u64);
  *out = v;
  return LF_OK;
}

/* Counts the distinct sound entries of base's ack file, for stats and
   drops; seg_size bounds how many can be real. */
static uint64_t count_acks(struct lf_spool *sp, const char *base,
                           uint64_t seg_size)
{
  uint64_t *v, bytes;
  size_t n = 0, i, distinct = 0;
  if(load_acks(sp, base, seg_size / REC_HDR_LEN + 1, &v, &n, &bytes))
    return 0;
  for(i = 0; i < n; i++) {
    if(!i || v[i] != v[i - 1])
      distinct++;
  }
  free(v);
  return distinct;
}

/* Opens s's ack file for appending, trimming a torn last entry so the
   entries after it stay aligned.  Called with the lock held. */
static int ack_open(struct lf_spool *sp, struct seg *s, char *errbuf)
{
  char name[NAME_LEN];
  struct stat st;
  int created = 0;
  name_of(name, s->base, K_ACK);
  s->ack_fd = openat(sp->dirfd, name, O_WRONLY | O_APPEND | O_NOFOLLOW |
                     O_CLOEXEC);
  if(s->ack_fd < 0 && errno == ENOENT) {
    s->ack_fd = openat(sp->dirfd, name, O_WRONLY | O_APPEND | O_CREAT |
                       O_NOFOLLOW | O_CLOEXEC, 0600);
    created = 1;
  }
  if(s->ack_fd < 0)
    return fail_errno(errbuf, errno, "cannot open ack file", name);
  if(!fstat(s->ack_fd, &st) && st.st_size % ACK_LEN) {
    if(ftruncate(s->ack_fd, st.st_size - st.st_size % ACK_LEN))
      say(sp, LF_SPOOL_LOG_WARN, "spool: cannot trim torn entry of %s",
          name);
  }
  if(created && sp->opts.fsync == LF_SPOOL_FSYNC_ALWAYS)
    (void)sync_fd(sp->dirfd);
  else if(created && sp->opts.fsync == LF_SPOOL_FSYNC_BATCH)
    sp->dir_dirty = 1;
  return LF_OK;
}

/* Records off as acked in s's ack file.  Lock held. */
static int ack_write(struct lf_spool *sp, struct seg *s, uint64_t off,
                     char *errbuf)
{
  unsigned char e[ACK_LEN];
  char name[NAME_LEN];
  ssize_t w;
  int err;
  if(s->ack_fd < 0) {
    int result = ack_open(sp, s, errbuf);
    if(result)
      return result;
  }
  put64(e, off);
  put32(e + 8, crc(0, e, 8));
  do {
    w = write(s->ack_fd, e, ACK_LEN);
  } while(w < 0 && errno == EINTR);
  name_of(name, s->base, K_ACK);
  if(w != ACK_LEN)
    return fail_errno(errbuf, w < 0 ? errno : ENOSPC,
                      "cannot write ack file", name);
  s->ack_bytes += ACK_LEN;
  sp->disk_bytes += ACK_LEN;
  if(sp->opts.fsync == LF_SPOOL_FSYNC_ALWAYS) {
    err = sync_fd(s->ack_fd);
    if(err)
      return fail_errno(errbuf, err, "cannot fsync ack file", name);
  }
  else if(sp->opts.fsync == LF_SPOOL_FSYNC_BATCH) {
    s->ack_dirty = 1;
  }
  return LF_OK;
}

/* ---- owned segments (all with the lock held) ---- */

/* Makes a seg that owns fd (closed by seg_free), linked into sp. */
static struct seg *seg_new(struct lf_spool *sp, const char *base, int fd,
                           int kind, uint64_t size)
{
  struct seg *s = calloc(1, sizeof(*s));
  if(!s)
    return NULL;
  s->id = ++sp->next_id;
  memcpy(s->base, base, BASE_LEN + 1);
  s->kind = kind;
  s->fd = fd;
  s->ack_fd = -1;
  s->size = size;
  s->next = sp->segs;
  sp->segs = s;
  return s;
}

/* Unlinks s from sp, closes its files (which gives up the flock) and
   frees it.  Pending acks are fsynced first unless fsync is "never". */
static void seg_free(struct lf_spool *sp, struct seg *s)
{
  struct seg **pp;
  for(pp = &sp->segs; *pp; pp = &(*pp)->next) {
    if(*pp == s) {
      *pp = s->next;
      break;
    }
  }
  if(sp->active == s)
    sp->active = NULL;
  if(s->claim)
    s->claim->seg = NULL;
  if(s->ack_fd >= 0) {
    if(s->ack_dirty && sp->opts.fsync != LF_SPOOL_FSYNC_NEVER)
      (void)sync_fd(s->ack_fd);
    close(s->ack_fd);
  }
  if(s->data_dirty && sp->opts.fsync != LF_SPOOL_FSYNC_NEVER)
    (void)sync_fd(s->fd);
  close(s->fd);
  free(s->recs);
  free(s);
}

static struct seg *seg_find(struct lf_spool *sp, uint64_t id)
{
  struct seg *s;
  for(s = sp->segs; s; s = s->next) {
    if(s->id == id)
      return s;
  }
  return NULL;
}

static struct seg *seg_by_base(struct lf_spool *sp, const char *base)
{
  struct seg *s;
  for(s = sp->segs; s; s = s->next) {
    if(!strcmp(s->base, base))
      return s;
  }
  return NULL;
}

/* Makes room for one more record offset. */
static int seg_reserve(struct seg *s)
{
  uint64_t *v;
  size_t cap;
  if(s->nrecs < s->caprecs)
    return LF_OK;
  cap = s->caprecs ? s->caprecs * 2 : 64;
  v = realloc(s->recs, cap * sizeof(*v));
  if(!v)
    return LF_ENOMEM;
  s->recs = v;
  s->caprecs = cap;
  return LF_OK;
}

/* Index of the record at off in s->recs, or -1. */
static long seg_index(const struct seg *s, uint64_t off)
{
  size_t lo = 0, hi = s->nrecs;
  while(lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    uint64_t at = s->recs[mid] >> 1;
    if(at == off)
      return (long)mid;
    if(at < off)
      lo = mid + 1;
    else
      hi = mid;
  }
  return -1;
}

/* Deletes s's files (the segment first: a leftover ack file is only
   litter, a leftover segment without its acks only duplicates) and
   frees s. */
static void seg_delete(struct lf_spool *sp, struct seg *s)
{
  char name[NAME_LEN], eb[128];
  uint64_t freed = s->size + s->ack_bytes;
  name_of(name, s->base, s->kind);
  if(unlinkat(sp->dirfd, name, 0) && errno != ENOENT)
    say(sp, LF_SPOOL_LOG_WARN, "spool: cannot delete %s: %s", name,
        errtext(errno, eb, sizeof(eb)));
  name_of(name, s->base, K_ACK);
  if(unlinkat(sp->dirfd, name, 0) && errno != ENOENT)
    say(sp, LF_SPOOL_LOG_WARN, "spool: cannot delete %s: %s", name,
        errtext(errno, eb, sizeof(eb)));
  sp->disk_bytes = sp->disk_bytes > freed ? sp->disk_bytes - freed : 0;
  if(sp->disk_segments)
    sp->disk_segments--;
  s->ack_dirty = 0;
  s->data_dirty = 0;
  seg_free(sp, s);
}

/* Deletes s when nothing in it is left to deliver, gives it up when it
   was not read to the end and nobody reads it any more. */
static void seg_settle(struct lf_spool *sp, struct seg *s)
{
  if(s->active || s->live)
    return;
  if(s->complete)
    seg_delete(sp, s);
  else if(!s->claim)
    seg_free(sp, s);
}

/* Makes a new active segment: created as .new, locked, given its
   header, then renamed to .open, so that a claimer never takes a live
   writer's segment for a dead one's. */
static int seg_create(struct lf_spool *sp, char *errbuf)
{
  unsigned char h[SEG_HDR_LEN];
  char base[BASE_LEN + 1], nname[NAME_LEN], oname[NAME_LEN];
  int tries, fd, err, sync = sp->opts.fsync != LF_SPOOL_FSYNC_NEVER;
  memcpy(h, SEG_MAGIC, 7);
  h[7] = SEG_VERSION;
  for(tries = 0; tries < CREATE_TRIES; tries++) {
    snprintf(base, sizeof(base), "seg-%016" PRIx64 "-%08x-%08x",
             now_us(), (unsigned)sp->pid, (unsigned)sp->seq++);
    name_of(nname, base, K_NEW);
    name_of(oname, base, K_OPEN);
    fd = openat(sp->dirfd, nname, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW |
                O_CLOEXEC, 0600);
    if(fd < 0)
      return fail_errno(errbuf, errno, "cannot create spool segment in",
                        sp->dir);
    if(flock(fd, LOCK_EX | LOCK_NB)) {
      close(fd);                /* a claimer took it for litter */
      continue;
    }
    err = pwrite_all(fd, h, sizeof(h), 0);
    if(!err && sync)
      err = sync_fd(fd);
    if(!err && renameat(sp->dirfd, nname, sp->dirfd, oname)) {
      err = errno;
      if(err == ENOENT) {
        close(fd);
        continue;
      }
    }
    if(err) {
      (void)unlinkat(sp->dirfd, nname, 0);
      close(fd);
      return fail_errno(errbuf, err, "cannot create spool segment",
                        oname);
    }
    if(sync)
      (void)sync_fd(sp->dirfd);
    sp->active = seg_new(sp, base, fd, K_OPEN, SEG_HDR_LEN);
    if(!sp->active) {
      (void)unlinkat(sp->dirfd, oname, 0);
      close(fd);
      return fail(errbuf, LF_ENOMEM, "out of memory");
    }
    sp->active->active = 1;
    sp->active->written = 1;
    sp->disk_bytes += SEG_HDR_LEN;
    sp->disk_segments++;
    return LF_OK;
  }
  return fail(errbuf, LF_EIO, "cannot create a spool segment in %s "
              "(raced %d times)", sp->dir, CREATE_TRIES);
}

/* Seals the active segment: fsync, rename .open to .seg, fsync the
   directory.  The segment stays owned until its records are acked. */
static void seg_seal(struct lf_spool *sp)
{
  struct seg *s = sp->active;
  char oname[NAME_LEN], sname[NAME_LEN], eb[128];
  int sync = sp->opts.fsync != LF_SPOOL_FSYNC_NEVER;
  if(!s)
    return;
  sp->active = NULL;
  s->active = 0;
  s->complete = 1;
  if(!s->live) {
    seg_settle(sp, s);          /* everything acked: just delete it */
    return;
  }
  if(sync && !sync_fd(s->fd))
    s->data_dirty = 0;
  name_of(oname, s->base, K_OPEN);
  name_of(sname, s->base, K_SEG);
  if(renameat(sp->dirfd, oname, sp->dirfd, sname)) {
    say(sp, LF_SPOOL_LOG_WARN, "spool: cannot seal %s: %s", oname,
        errtext(errno, eb, sizeof(eb)));
    return;
  }
  s->kind = K_SEG;
  if(sync)
    (void)sync_fd(sp->dirfd);
}

/* ---- directory scans ---- */

static int cmp_entry(const void *a, const void *b)
{
  const struct entry *x = a, *y = b;
  int c = strcmp(x->base, y->base);
  return c ? c : x->kind - y->kind;
}

/* Lists the spool's files, oldest first, into l (l->e malloc'd, the
   caller frees it).  Lock held. */
static int list_dir(struct lf_spool *sp, struct listing *l, char *errbuf)
{
  struct dirent *de;
  struct stat st;
  size_t cap = 0;
  DIR *d;
  int fd = openat(sp->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  memset(l, 0, sizeof(*l));
  d = fd < 0 ? NULL : fdopendir(fd);
  if(!d) {
    int e = errno;
    if(fd >= 0)
      close(fd);
    return fail_errno(errbuf, e, "cannot read spool directory", sp->dir);
  }
  while((de = readdir(d)) != NULL) {
    struct entry e;
    e.kind = parse_name(de->d_name, e.base);
    if(!e.kind || fstatat(sp->dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW))
      continue;
    if(l->n == SCAN_MAX)
      break;
    if(l->n == cap) {
      struct entry *ne;
      cap = cap ? cap * 2 : 64;
      ne = realloc(l->e, cap * sizeof(*ne));
      if(!ne) {
        closedir(d);
        free(l->e);
        l->e = NULL;
        return fail(errbuf, LF_ENOMEM, "out of memory");
      }
      l->e = ne;
    }
    e.regular = S_ISREG(st.st_mode);
    e.symlink = S_ISLNK(st.st_mode);
    e.size = e.regular ? (uint64_t)st.st_size : 0;
    l->bytes += e.size;
    if(e.kind != K_ACK)
      l->segments++;
    l->e[l->n++] = e;
  }
  closedir(d);
  if(l->n)
    qsort(l->e, l->n, sizeof(*l->e), cmp_entry);
  return LF_OK;
}

/* Refreshes the byte and segment counts from the directory. */
static void rescan(struct lf_spool *sp)
{
  struct listing l;
  char eb[LF_SPOOL_ERRMAX];
  sp->last_scan = now_mono();
  if(list_dir(sp, &l, eb)) {
    say(sp, LF_SPOOL_LOG_WARN, "spool: %s", eb);
    return;
  }
  sp->disk_bytes = l.bytes;
  sp->disk_segments = l.segments;
  free(l.e);
}

/*
** Opens the spool file name and takes its flock without waiting.
** Returns the fd (the caller closes it, which gives up the lock) with
** *st filled, or -1: gone, a symlink (errno ELOOP), owned by a live
** process, or renamed or replaced between the listing and the lock.
*/
static int lock_file(struct lf_spool *sp, const char *name,
                     struct stat *st)
{
  struct stat now;
  int fd = openat(sp->dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if(fd < 0)
    return -1;
  if(flock(fd, LOCK_EX | LOCK_NB) || fstat(fd, st) || !st->st_nlink ||
     fstatat(sp->dirfd, name, &now, AT_SYMLINK_NOFOLLOW) ||
     now.st_ino != st->st_ino || now.st_dev != st->st_dev) {
    close(fd);
    errno = EBUSY;
    return -1;
  }
  return fd;
}

/* ---- quarantine ---- */

/* Makes sure quarantine/ exists as a directory of its own. */
static int qdir_ready(struct lf_spool *sp)
{
  struct stat st;
  if(mkdirat(sp->dirfd, QDIR, 0700) && errno != EEXIST)
    return -1;
  if(fstatat(sp->dirfd, QDIR, &st, AT_SYMLINK_NOFOLLOW) ||
     !S_ISDIR(st.st_mode))
    return -1;
  return 0;
}

/* Moves a whole bad file (or symlink) into quarantine/.  Lock held. */
static void quarantine_file(struct lf_spool *sp, const char *name,
                            const char *why)
{
  char to[NAME_LEN * 2], eb[128];
  sp->st.corrupt++;
  snprintf(to, sizeof(to), QDIR "/%s", name);
  if(!qdir_ready(sp) && !renameat(sp->dirfd, name, sp->dirfd, to)) {
    sp->st.quarantined++;
    say(sp, LF_SPOOL_LOG_WARN, "spool: %s/%s: %s; moved to %s", sp->dir,
        name, why, to);
    return;
  }
  say(sp, LF_SPOOL_LOG_WARN, "spool: %s/%s: %s; cannot move it to "
      QDIR "/ (%s), ignoring it", sp->dir, name, why,
      errtext(errno, eb, sizeof(eb)));
}

/* Copies bytes [from, to) of the claim's segment to a file in
   quarantine/; 0 on success. */
static int quarantine_copy(struct lf_spool_claim *c, const char *qname,
                           uint64_t from, uint64_t to)
{
  struct lf_spool *sp = c->sp;
  uint64_t off = from, end = to;
  int out, err = 0;
  if(end - from > QUARANTINE_COPY_MAX)
    end = from + QUARANTINE_COPY_MAX;
  if(qdir_ready(sp))
    return -1;
  out = openat(sp->dirfd, qname, O_WRONLY | O_CREAT | O_TRUNC |
               O_NOFOLLOW | O_CLOEXEC, 0600);
  if(out < 0)
    return -1;
  while(!err && off < end) {
    size_t want = end - off > SCRATCH_LEN ? SCRATCH_LEN
                                          : (size_t)(end - off), got;
    err = pread_all(c->seg->fd, c->scratch, want, off, &got);
    if(!err && got != want)
      err = EIO;
    if(!err)
      err = pwrite_all(out, c->scratch, got, off - from);
    off += got;
  }
  if(close(out))
    err = err ? err : errno;
  return err ? -1 : 0;
}

/* Reports the damaged bytes [from, to) of the claim's segment and
   copies them to quarantine/.  Called without the lock. */
static void damaged(struct lf_spool_claim *c, uint64_t from, uint64_t to,
                    const char *why)
{
  struct lf_spool *sp = c->sp;
  char qname[NAME_LEN];
  int copied;
  snprintf(qname, sizeof(qname), QDIR "/%s.%016" PRIx64 ".bad",
           c->seg->base, from);
  copied = !quarantine_copy(c, qname, from, to);
  pthread_mutex_lock(&sp->lock);
  sp->st.corrupt++;
  if(copied)
    sp->st.quarantined++;
  pthread_mutex_unlock(&sp->lock);
  say(sp, LF_SPOOL_LOG_WARN, "spool: %s/%s%s: %s at offset %" PRIu64
      ", %" PRIu64 " bytes skipped%s%s", sp->dir, c->seg->base,
      suffixes[c->seg->kind], why, from, to - from,
      copied ? ", copied to " : ", could not copy them to " QDIR "/",
      copied ? qname : "");
}

/* Refuses use of a spool inherited through fork(): its flocks belong
   to the parent. */
static int forked(struct lf_spool *sp, char *errbuf)
{
  if(getpid() == sp->pid)
    return LF_OK;
  return fail(errbuf, LF_EINVAL, "spool opened in another process; "
              "open it again after fork()");
}

/* ---- options ---- */

void lf_spool_opts_init(struct lf_spool_opts *opts)
{
  memset(opts, 0, sizeof(*opts));
  opts->fsync = LF_SPOOL_FSYNC_BATCH;
  opts->segment_bytes = DEFAULT_SEGMENT_BYTES;
  opts->max_bytes = DEFAULT_MAX_BYTES;
  opts->full_policy = LF_SPOOL_REFUSE;
  opts->max_record_bytes = DEFAULT_RECORD_BYTES;
}

int lf_spool_fsync_parse(const char *s)
{
  if(!s)
    return -1;
  if(!strcmp(s, "batch"))
    return LF_SPOOL_FSYNC_BATCH;
  if(!strcmp(s, "always"))
    return LF_SPOOL_FSYNC_ALWAYS;
  if(!strcmp(s, "never"))
    return LF_SPOOL_FSYNC_NEVER;
  return -1;
}

int lf_spool_full_parse(const char *s)
{
  if(!s)
    return -1;
  if(!strcmp(s, "refuse"))
    return LF_SPOOL_REFUSE;
  if(!strcmp(s, "drop_oldest"))
    return LF_SPOOL_DROP_OLDEST;
  return -1;
}

static int check_opts(const struct lf_spool_opts *o, char *errbuf)
{
  if(o->fsync < LF_SPOOL_FSYNC_BATCH || o->fsync > LF_SPOOL_FSYNC_NEVER)
    return fail(errbuf, LF_EINVAL, "bad spool fsync policy %d", o->fsync);
  if(o->full_policy != LF_SPOOL_REFUSE &&
     o->full_policy != LF_SPOOL_DROP_OLDEST)
    return fail(errbuf, LF_EINVAL, "bad spool full policy %d",
                o->full_policy);
  if(o->segment_bytes < SEGMENT_MIN)
    return fail(errbuf, LF_EINVAL, "spool segment_bytes must be at "
                "least %d", SEGMENT_MIN);
  if(!o->max_record_bytes ||
     o->max_record_bytes > (size_t)LF_SPOOL_DATA_MAX)
    return fail(errbuf, LF_EINVAL, "spool max_record_bytes must be "
                "between 1 and %d", LF_SPOOL_DATA_MAX);
  if(o->max_bytes < o->segment_bytes)
    return fail(errbuf, LF_EINVAL, "spool max_bytes must be at least "
                "segment_bytes");
  return LF_OK;
}

/* ---- open and close ---- */

/* Opens dir as a directory fd, creating it first when missing. */
static int open_dir(const char *dir, int *out, char *errbuf)
{
  struct stat st, fst;
  char eb[128];
  int fd;
  if(lstat(dir, &st) && errno == ENOENT) {
    if(mkdir(dir, 0700) && errno != EEXIST)
      return fail(errbuf, LF_EIO, "cannot create spool directory %s: %s",
                  dir, errtext(errno, eb, sizeof(eb)));
  }
  if(lstat(dir, &st))
    return fail(errbuf, LF_EIO, "cannot use spool directory %s: %s",
                dir, errtext(errno, eb, sizeof(eb)));
  if(S_ISLNK(st.st_mode))
    return fail(errbuf, LF_EINVAL, "spool directory %s is a symbolic "
                "link; refusing to follow it", dir);
  if(!S_ISDIR(st.st_mode))
    return fail(errbuf, LF_EINVAL, "spool directory %s is not a "
                "directory", dir);
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if(fd < 0)
    return fail(errbuf, LF_EIO, "cannot open spool directory %s: %s",
                dir, errtext(errno, eb, sizeof(eb)));
  if(fstat(fd, &fst) || fst.st_ino != st.st_ino ||
     fst.st_dev != st.st_dev) {
    close(fd);
    return fail(errbuf, LF_EIO, "spool directory %s changed while "
                "being opened", dir);
  }
  if(faccessat(fd, ".", W_OK | X_OK, 0)) {
    int e = errno;
    close(fd);
    return fail(errbuf, LF_EIO, "spool directory %s is not writable: %s",
                dir, errtext(e, eb, sizeof(eb)));
  }
  *out = fd;
  return LF_OK;
}

/* The new spool belongs to the caller: lf_spool_close frees it. */
struct lf_spool *lf_spool_open(const char *dir,
                               const struct lf_spool_opts *opts,
                               char *errbuf)
{
  struct lf_spool_opts defaults;
  struct lf_spool *sp;
  struct stat st;
  int fd = -1;
  if(!opts) {
    lf_spool_opts_init(&defaults);
    opts = &defaults;
  }
  if(!dir || !*dir) {
    fail(errbuf, LF_EINVAL, "no spool directory given");
    return NULL;
  }
  if(check_opts(opts, errbuf) || open_dir(dir, &fd, errbuf))
    return NULL;
  sp = calloc(1, sizeof(*sp));
  if(sp)
    sp->dir = lf_strndup(dir, strlen(dir));
  if(!sp || !sp->dir || pthread_mutex_init(&sp->lock, NULL)) {
    if(sp)
      free(sp->dir);
    free(sp);
    close(fd);
    fail(errbuf, LF_ENOMEM, "out of memory");
    return NULL;
  }
  sp->opts = *opts;
  sp->dirfd = fd;
  sp->dl_fd = -1;
  sp->pid = getpid();
  lf_buf_init(&sp->wbuf, 0);
  if(!fstat(fd, &st) && (st.st_mode & 077))
    say(sp, LF_SPOOL_LOG_WARN, "spool: directory %s is open to other "
        "users (mode %03o)", dir, (unsigned)(st.st_mode & 0777));
  pthread_mutex_lock(&sp->lock);
  rescan(sp);
  pthread_mutex_unlock(&sp->lock);
  return sp;
}

/* Frees a claim's memory (not its segment). */
static void claim_free(struct lf_spool_claim *c)
{
  free(c->acked);
  free(c->buf);
  free(c->scratch);
  free(c);
}

static void unlink_claim(struct lf_spool *sp, struct lf_spool_claim *c)
{
  struct lf_spool_claim **pp;
  for(pp = &sp->claims; *pp; pp = &(*pp)->next) {
    if(*pp == c) {
      *pp = c->next;
      break;
    }
  }
  if(c->seg)
    c->seg->claim = NULL;
  c->seg = NULL;
}

/* Frees sp and everything it owns.  In a child after fork() only the
   memory and this process's copies of the fds are released: the files
   belong to the parent. */
void lf_spool_close(struct lf_spool *sp)
{
  int mine;
  char eb[LF_SPOOL_ERRMAX];
  if(!sp)
    return;
  mine = getpid() == sp->pid;
  pthread_mutex_lock(&sp->lock);
  while(sp->claims) {
    struct lf_spool_claim *c = sp->claims;
    unlink_claim(sp, c);
    claim_free(c);
  }
  if(!mine)
    sp->opts.fsync = LF_SPOOL_FSYNC_NEVER;
  if(mine)
    seg_seal(sp);
  while(sp->segs)
    seg_free(sp, sp->segs);
  if(sp->dl_fd >= 0) {
    if(mine && sp->dl_dirty && sp->opts.fsync != LF_SPOOL_FSYNC_NEVER)
      (void)sync_fd(sp->dl_fd);
    close(sp->dl_fd);
  }
  if(mine && sp->dir_dirty && sync_fd(sp->dirfd))
    say(sp, LF_SPOOL_LOG_WARN, "spool: cannot fsync %s: %s", sp->dir,
        errtext(errno, eb, sizeof(eb)));
  pthread_mutex_unlock(&sp->lock);
  pthread_mutex_destroy(&sp->lock);
  close(sp->dirfd);
  lf_buf_free(&sp->wbuf);
  free(sp->dir);
  free(sp);
}

/* ---- append ---- */

/* Checks the caller's side of an append.  Lock not needed. */
static int check_append(struct lf_spool *sp, int route, const char *id,
                        const char *data, size_t len, char *errbuf)
{
  size_t id_len;
  if(route < 0 || route > 255)
    return fail(errbuf, LF_EINVAL, "bad spool route %d", route);
  if(!id || (!data && len))
    return fail(errbuf, LF_EINVAL, "spool record without id or data");
  id_len = strlen(id);
  if(id_len > LF_SPOOL_ID_MAX)
    return fail(errbuf, LF_EINVAL, "event id of %zu bytes is longer "
                "than %d", id_len, LF_SPOOL_ID_MAX);
  if(id_len > sp->opts.max_record_bytes ||
     len > sp->opts.max_record_bytes - id_len)
    return fail(errbuf, LF_ETOOBIG, "event of %zu bytes is larger than "
                "the spool's max_record_bytes (%zu)", len,
                sp->opts.max_record_bytes);
  return LF_OK;
}

/* Drops one segment nobody else owns (ours only when no claim reads
   it): deletes its files and counts its unacked records as dropped. */
static void drop_entry(struct lf_spool *sp, const struct entry *e)
{
  char name[NAME_LEN];
  struct seg *s = seg_by_base(sp, e->base);
  struct stat st;
  uint64_t recs, acks, ackb = 0;
  int fd;
  if(s) {
    if(s->active || s->claim)
      return;
    sp->st.dropped += s->live;
    sp->st.dropped_segments++;
    say(sp, LF_SPOOL_LOG_WARN, "spool: full, dropped %s%s with %zu "
        "unacked records", e->base, suffixes[s->kind], s->live);
    s->complete = 1;
    seg_delete(sp, s);
    return;
  }
  name_of(name, e->base, e->kind);
  fd = lock_file(sp, name, &st);
  if(fd < 0)
    return;
  recs = count_records(fd, (uint64_t)st.st_size);
  acks = count_acks(sp, e->base, (uint64_t)st.st_size);
  recs = recs > acks ? recs - acks : 0;
  (void)unlinkat(sp->dirfd, name, 0);
  name_of(name, e->base, K_ACK);
  if(!fstatat(sp->dirfd, name, &st, AT_SYMLINK_NOFOLLOW))
    ackb = (uint64_t)st.st_size;
  (void)unlinkat(sp->dirfd, name, 0);
  close(fd);
  sp->st.dropped += recs;
  sp->st.dropped_segments++;
  ackb += e->size;
  sp->disk_bytes = sp->disk_bytes > ackb ? sp->disk_bytes - ackb : 0;
  if(sp->disk_segments)
    sp->disk_segments--;
  say(sp, LF_SPOOL_LOG_WARN, "spool: full, dropped %s%s with %" PRIu64
      " unacked records", e->base, suffixes[e->kind], recs);
}

/* Deletes the oldest droppable segments until need more bytes fit. */
static int drop_oldest(struct lf_spool *sp, uint64_t need, char *errbuf)
{
  struct listing l;
  size_t i;
  int result = list_dir(sp, &l, errbuf);
  if(result)
    return result;
  sp->last_scan = now_mono();
  sp->disk_bytes = l.bytes;
  sp->disk_segments = l.segments;
  for(i = 0; i < l.n && sp->disk_bytes + need > sp->opts.max_bytes; i++) {
    if(l.e[i].kind == K_OPEN || l.e[i].kind == K_SEG)
      drop_entry(sp, &l.e[i]);
  }
  free(l.e);
  if(sp->disk_bytes + need <= sp->opts.max_bytes)
    return LF_OK;
  sp->st.refused++;
  return fail(errbuf, LF_ETOOBIG, "spool %s is full (%" PRIu64 " of %"
              PRIu64 " bytes) and holds nothing it may drop", sp->dir,
              sp->disk_bytes, sp->opts.max_bytes);
}

/* Makes sure need more bytes fit under max_bytes, by the full policy. */
static int make_room(struct lf_spool *sp, uint64_t need, char *errbuf)
{
  if(sp->disk_bytes + need <= sp->opts.max_bytes)
    return LF_OK;
  if(sp->opts.full_policy == LF_SPOOL_DROP_OLDEST)
    return drop_oldest(sp, need, errbuf);
  if(now_mono() - sp->last_scan >= RESCAN_INTERVAL) {
    rescan(sp);
    if(sp->disk_bytes + need <= sp->opts.max_bytes)
      return LF_OK;
  }
  sp->st.refused++;
  return fail(errbuf, LF_ETOOBIG, "spool %s is full (%" PRIu64 " of %"
              PRIu64 " bytes)", sp->dir, sp->disk_bytes,
              sp->opts.max_bytes);
}

/* Rotates when the next record would not fit, and makes sure there is
   an active segment with room in its offset list. */
static int prepare_active(struct lf_spool *sp, uint64_t reclen,
                          char *errbuf)
{
  struct seg *s = sp->active;
  int result;
  if(s && (s->broken ||
           (s->nrecs && s->size + reclen > sp->opts.segment_bytes))) {
    seg_seal(sp);
    rescan(sp);
  }
  result = make_room(sp, reclen + (sp->active ? 0 : SEG_HDR_LEN), errbuf);
  if(!result && !sp->active)
    result = seg_create(sp, errbuf);
  if(!result && seg_reserve(sp->active))
    result = fail(errbuf, LF_ENOMEM, "out of memory");
  return result;
}

/* Writes the record in wbuf at the end of the active segment.  On
   failure the file is cut back so nothing partial stays behind (if even
   that fails, the CRC catches it and the segment is sealed next). */
static int write_record(struct lf_spool *sp, char *errbuf)
{
  struct seg *s = sp->active;
  char name[NAME_LEN];
  int err = pwrite_all(s->fd, sp->wbuf.data, sp->wbuf.len, s->size);
  if(!err && sp->opts.fsync == LF_SPOOL_FSYNC_ALWAYS)
    err = sync_fd(s->fd);
  if(!err)
    return LF_OK;
  sp->st.write_errors++;
  if(ftruncate(s->fd, (off_t)s->size))
    s->broken = 1;
  name_of(name, s->base, s->kind);
  return fail_errno(errbuf, err, "cannot write spool segment", name);
}

int lf_spool_append(struct lf_spool *sp, int route, const char *id,
                    const char *data, size_t len,
                    struct lf_spool_ref *ref, char *errbuf)
{
  unsigned char h[REC_HDR_LEN];
  size_t id_len;
  uint64_t reclen;
  uint32_t c;
  int result = check_append(sp, route, id, data, len, errbuf);
  if(result)
    return result;
  id_len = strlen(id);
  reclen = REC_HDR_LEN + id_len + len;
  c = crc(crc(0, id, id_len), data ? data : "", len);
  fill_header(h, route, id_len, len, c);
  pthread_mutex_lock(&sp->lock);
  result = forked(sp, errbuf);
  if(!result)
    result = prepare_active(sp, reclen, errbuf);
  lf_buf_reset(&sp->wbuf);
  if(!result && (lf_buf_add(&sp->wbuf, h, sizeof(h)) ||
                 lf_buf_add(&sp->wbuf, id, id_len) ||
                 lf_buf_add(&sp->wbuf, data ? data : "", len)))
    result = fail(errbuf, LF_ENOMEM, "out of memory");
  if(!result)
    result = write_record(sp, errbuf);
  if(!result) {
    struct seg *s = sp->active;
    ref->seg = s->id;
    ref->off = s->size;
    s->recs[s->nrecs++] = s->size << 1;
    s->live++;
    s->size += reclen;
    s->data_dirty = sp->opts.fsync == LF_SPOOL_FSYNC_BATCH;
    sp->disk_bytes += reclen;
    sp->st.appended++;
    sp->st.appended_bytes += len;
  }
  if(sp->wbuf.cap > WBUF_KEEP)
    lf_buf_free(&sp->wbuf);
  pthread_mutex_unlock(&sp->lock);
  return result;
}

/* ---- sync, ack, rotate, release ---- */

int lf_spool_sync(struct lf_spool *sp, char *errbuf)
{
  struct seg *s;
  int err = 0;
  const char *what = sp->dir;
  char name[NAME_LEN];
  if(forked(sp, errbuf))
    return LF_EINVAL;
  pthread_mutex_lock(&sp->lock);
  for(s = sp->segs; s && !err; s = s->next) {
    if(s->data_dirty && !(err = sync_fd(s->fd)))
      s->data_dirty = 0;
    if(!err && s->ack_dirty && !(err = sync_fd(s->ack_fd)))
      s->ack_dirty = 0;
    if(err) {
      name_of(name, s->base, s->kind);
      what = name;
    }
  }
  if(!err && sp->dl_dirty && !(err = sync_fd(sp->dl_fd)))
    sp->dl_dirty = 0;
  if(!err && sp->dir_dirty && !(err = sync_fd(sp->dirfd)))
    sp->dir_dirty = 0;
  pthread_mutex_unlock(&sp->lock);
  return err ? fail_errno(errbuf, err, "cannot fsync spool", what) : LF_OK;
}

int lf_spool_ack(struct lf_spool *sp, struct lf_spool_ref ref,
                 char *errbuf)
{
  struct seg *s;
  long i;
  int result = LF_OK;
  pthread_mutex_lock(&sp->lock);
  s = seg_find(sp, ref.seg);
  i = s ? seg_index(s, ref.off) : -1;
  if(getpid() != sp->pid)
    result = forked(sp, errbuf);
  else if(!s)
    result = fail(errbuf, LF_EINVAL, "spool no longer owns the segment "
                  "of this record; it may be replayed");
  else if(i < 0)
    result = fail(errbuf, LF_EINVAL, "no spool record at offset %"
                  PRIu64, ref.off);
  else if(!(s->recs[i] & 1)) {
    s->recs[i] |= 1;
    s->live--;
    sp->st.acked++;
    if(s->live || !s->complete)
      result = ack_write(sp, s, ref.off, errbuf);
    seg_settle(sp, s);
  }
  pthread_mutex_unlock(&sp->lock);
  return result;
}

int lf_spool_rotate(struct lf_spool *sp, char *errbuf)
{
  (void)errbuf;
  pthread_mutex_lock(&sp->lock);
  if(sp->active && sp->active->nrecs && getpid() == sp->pid)
    seg_seal(sp);
  pthread_mutex_unlock(&sp->lock);
  return LF_OK;
}

int lf_spool_release(struct lf_spool *sp, char *errbuf)
{
  struct seg *s, *next;
  (void)errbuf;
  pthread_mutex_lock(&sp->lock);
  if(getpid() == sp->pid)
    seg_seal(sp);
  for(s = sp->segs; s; s = next) {
    next = s->next;
    if(s->written && !s->active)
      seg_free(sp, s);
  }
  pthread_mutex_unlock(&sp->lock);
  return LF_OK;
}

/* ---- claims ---- */

/* Deletes base's ack file when no segment of that base exists.  The
   names are checked in the order a segment goes through them, so a
   segment renamed meanwhile is still seen. */
static void drop_orphan_ack(struct lf_spool *sp, const char *base)
{
  char name[NAME_LEN];
  struct stat st;
  int k;
  for(k = K_NEW; k <= K_SEG; k++) {
    name_of(name, base, k);
    if(!fstatat(sp->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) ||
       errno != ENOENT)
      return;
  }
  name_of(name, base, K_ACK);
  if(!unlinkat(sp->dirfd, name, 0))
    say(sp, LF_SPOOL_LOG_DEBUG, "spool: removed %s, left by a deleted "
        "segment", name);
}

/* Checks the 8-byte segment header of a claimed file; NULL when good. */
static const char *check_seg_header(int fd, uint64_t size)
{
  unsigned char h[SEG_HDR_LEN];
  size_t got;
  if(size == 0)
    return "empty segment file";
  if(pread_all(fd, h, sizeof(h), 0, &got) || got != sizeof(h) ||
     memcmp(h, SEG_MAGIC, 7))
    return "not a spool segment (bad file header)";
  if(h[7] != SEG_VERSION)
    return "unknown segment version";
  return NULL;
}

/*
** Tries to take entry e: 1 and *out when it is now ours, 0 to move on.
** Files that are not sound segments go to quarantine/, leftovers of
** dead writers (.new) are deleted.  Lock held.
*/
static int try_claim(struct lf_spool *sp, const struct entry *e,
                     struct seg **out)
{
  char name[NAME_LEN], sname[NAME_LEN];
  struct stat st;
  const char *why;
  int fd, kind = e->kind;
  name_of(name, e->base, kind);
  if(!e->regular) {
    quarantine_file(sp, name, e->symlink ? "symbolic link"
                                         : "not a regular file");
    return 0;
  }
  fd = lock_file(sp, name, &st);
  if(fd < 0) {
    if(errno == ELOOP)
      quarantine_file(sp, name, "symbolic link");
    return 0;                   /* owned by a live process, or gone */
  }
  if(kind == K_NEW) {
    (void)unlinkat(sp->dirfd, name, 0);
    close(fd);
    say(sp, LF_SPOOL_LOG_DEBUG, "spool: removed %s, left by a dead "
        "process", name);
    return 0;
  }
  why = check_seg_header(fd, (uint64_t)st.st_size);
  if(why) {
    quarantine_file(sp, name, why);
    close(fd);
    return 0;
  }
  if(kind == K_OPEN) {
    name_of(sname, e->base, K_SEG);
    if(!renameat(sp->dirfd, name, sp->dirfd, sname))
      kind = K_SEG;
    say(sp, LF_SPOOL_LOG_INFO, "spool: replaying %s of a dead process",
        name);
  }
  *out = seg_new(sp, e->base, fd, kind, (uint64_t)st.st_size);
  if(!*out)
    close(fd);
  return 1;
}

/* Finds and takes the oldest segment nobody owns.  Lock held. */
static int claim_scan(struct lf_spool *sp, struct seg **out, char *errbuf)
{
  struct listing l;
  size_t i;
  int result = list_dir(sp, &l, errbuf);
  *out = NULL;
  if(result)
    return result;
  for(i = 0; i < l.n; i++) {
    if(l.e[i].kind == K_ACK && !seg_by_base(sp, l.e[i].base) &&
       (i == 0 || strcmp(l.e[i - 1].base, l.e[i].base)))
      drop_orphan_ack(sp, l.e[i].base);
  }
  for(i = 0; i < l.n; i++) {
    if(l.e[i].kind == K_ACK || seg_by_base(sp, l.e[i].base))
      continue;
    if(try_claim(sp, &l.e[i], out)) {
      if(!*out)
        result = fail(errbuf, LF_ENOMEM, "out of memory");
      break;
    }
  }
  free(l.e);
  return result;
}

/* Builds the claim for s, taking over s (freed on failure). */
static int claim_make(struct lf_spool *sp, struct seg *s,
                      struct lf_spool_claim **out, char *errbuf)
{
  struct lf_spool_claim *c = calloc(1, sizeof(*c));
  uint64_t bytes = 0;
  int result = c ? LF_OK : LF_ENOMEM;
  if(c)
    c->scratch = malloc(SCRATCH_LEN);
  if(c && !c->scratch)
    result = LF_ENOMEM;
  if(!result)
    result = load_acks(sp, s->base, s->size / REC_HDR_LEN + 1, &c->acked,
                       &c->nacked, &bytes);
  if(result) {
    if(c)
      claim_free(c);
    seg_free(sp, s);
    return fail(errbuf, result, "out of memory");
  }
  s->ack_bytes = bytes;
  s->claim = c;
  c->sp = sp;
  c->seg = s;
  c->cursor = SEG_HDR_LEN;
  c->next = sp->claims;
  sp->claims = c;
  *out = c;
  return LF_OK;
}

/* The claim belongs to the caller until lf_spool_claim_done. */
int lf_spool_claim(struct lf_spool *sp, struct lf_spool_claim **out,
                   char *errbuf)
{
  struct seg *s = NULL;
  int result = LF_OK;
  *out = NULL;
  pthread_mutex_lock(&sp->lock);
  result = forked(sp, errbuf);
  if(!result)
    result = claim_scan(sp, &s, errbuf);
  if(!result && s)
    result = claim_make(sp, s, out, errbuf);
  pthread_mutex_unlock(&sp->lock);
  return result;
}

/* Grows the claim's record buffer to n bytes; bounded by the caller's
   checks (a sound header and a record inside the file). */
static int claim_reserve(struct lf_spool_claim *c, size_t n)
{
  char *p;
  if(n <= c->cap)
    return LF_OK;
  p = realloc(c->buf, n);
  if(!p)
    return LF_ENOMEM;
  c->buf = p;
  c->cap = n;
  pthread_mutex_lock(&c->sp->lock);
  if(n > c->sp->st.read_buf_max)
    c->sp->st.read_buf_max = n;
  pthread_mutex_unlock(&c->sp->lock);
  return LF_OK;
}

/*
** Reads the record at the cursor into the claim's buffer.  Returns
** LF_OK with *why NULL for a sound record (r filled), LF_OK with *why
** set for damage (the cursor is left alone), or an error.
*/
static int read_at_cursor(struct lf_spool_claim *c, struct rhdr *r,
                          const char **why, char *errbuf)
{
  struct seg *s = c->seg;
  unsigned char h[REC_HDR_LEN];
  size_t got, n;
  int err;
  *why = NULL;
  if(s->size - c->cursor < REC_HDR_LEN) {
    *why = "truncated record at the end of the file";
    return LF_OK;
  }
  err = pread_all(s->fd, h, REC_HDR_LEN, c->cursor, &got);
  if(!err && got == REC_HDR_LEN)
    *why = check_header(h, c->cursor, s->size, r);
  else
    *why = "file shorter than when claimed";
  if(err || *why)
    return err ? fail_errno(errbuf, err, "cannot read", s->base) : LF_OK;
  n = r->id_len + r->data_len;
  if(claim_reserve(c, n + 1))
    return fail(errbuf, LF_ENOMEM, "out of memory");
  err = pread_all(s->fd, c->buf, n, c->cursor + REC_HDR_LEN, &got);
  if(err)
    return fail_errno(errbuf, err, "cannot read", s->base);
  if(got != n)
    *why = "file shorter than when claimed";
  else if(crc(0, c->buf, n) != r->body_crc)
    *why = "bad body checksum";
  return LF_OK;
}

/* Marks the claim's segment read to the end; settles it. */
static void claim_end(struct lf_spool_claim *c)
{
  struct lf_spool *sp = c->sp;
  pthread_mutex_lock(&sp->lock);
  if(c->seg) {
    c->seg->complete = 1;
    seg_settle(sp, c->seg);
  }
  pthread_mutex_unlock(&sp->lock);
}

/* Hands out the record at off: remembers it as unacked, fills rec. */
static int claim_emit(struct lf_spool_claim *c, const struct rhdr *r,
                      uint64_t off, struct lf_spool_record *rec)
{
  struct lf_spool *sp = c->sp;
  struct seg *s = c->seg;
  pthread_mutex_lock(&sp->lock);
  if(seg_reserve(s)) {
    pthread_mutex_unlock(&sp->lock);
    return LF_ENOMEM;
  }
  s->recs[s->nrecs++] = off << 1;
  s->live++;
  sp->st.replayed++;
  pthread_mutex_unlock(&sp->lock);
  memcpy(c->id, c->buf, r->id_len);
  c->id[r->id_len] = '\0';
  c->buf[r->id_len + r->data_len] = '\0';
  rec->route = r->route;
  rec->id = c->id;
  rec->id_len = r->id_len;
  rec->data = c->buf + r->id_len;
  rec->len = r->data_len;
  rec->ref.seg = s->id;
  rec->ref.off = off;
  return LF_OK;
}

/* One record at a time: see lf_spool.h.  The segment cannot go away
   under us: nothing deletes or gives up a segment that a claim is
   reading before that claim has read it to the end. */
int lf_spool_next(struct lf_spool_claim *c, struct lf_spool_record *rec,
                  char *errbuf)
{
  struct rhdr r;
  const char *why;
  int result, done;
  memset(rec, 0, sizeof(*rec));
  pthread_mutex_lock(&c->sp->lock);
  done = !c->seg || c->seg->complete;
  pthread_mutex_unlock(&c->sp->lock);
  if(done)
    return LF_OK;
  for(;;) {
    uint64_t off = c->cursor;
    if(off >= c->seg->size) {
      claim_end(c);
      return LF_OK;
    }
    result = read_at_cursor(c, &r, &why, errbuf);
    if(result)
      return result;
    if(why) {
      uint64_t next = resync(c->seg->fd, off + 1, c->seg->size,
                             c->scratch);
      damaged(c, off, next, why);
      c->cursor = next;
      continue;
    }
    c->cursor = off + REC_HDR_LEN + r.id_len + r.data_len;
    if(has_u64(c->acked, c->nacked, off))
      continue;
    if(claim_emit(c, &r, off, rec)) {
      c->cursor = off;
      return fail(errbuf, LF_ENOMEM, "out of memory");
    }
    return LF_OK;
  }
}

void lf_spool_claim_done(struct lf_spool_claim *c)
{
  struct lf_spool *sp;
  struct seg *s;
  if(!c)
    return;
  sp = c->sp;
  pthread_mutex_lock(&sp->lock);
  s = c->seg;
  unlink_claim(sp, c);
  if(s)
    seg_settle(sp, s);
  pthread_mutex_unlock(&sp->lock);
  claim_free(c);
}

/* ---- dead letters ---- */

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
  size_t len, i;
  uint32_t cp;
  if(s[0] < 0xc2 || s[0] > 0xf4)
    return 0;
  len = s[0] < 0xe0 ? 2 : s[0] < 0xf0 ? 3 : 4;
  if(len > n)
    return 0;
  cp = s[0] & (0xff >> (len + 1));
  for(i = 1; i < len; i++) {
    if((s[i] & 0xc0) != 0x80)
      return 0;
    cp = cp << 6 | (s[i] & 0x3f);
  }
  if((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
     (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
    return 0;
  return len;
}

/* Appends s as a JSON string; bad UTF-8 becomes U+FFFD. */
static int json_str(struct lf_buf *b, const char *s, size_t n)
{
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0, k;
  int result = lf_buf_addc(b, '"');
  while(!result && i < n) {
    unsigned char ch = p[i];
    if(ch == '"' || ch == '\\') {
      char esc[2] = { '\\', (char)ch };
      result = lf_buf_add(b, esc, 2);
      i++;
    }
    else if(ch == '\n' || ch == '\r' || ch == '\t') {
      char esc[2] = { '\\', ch == '\n' ? 'n' : ch == '\r' ? 'r' : 't' };
      result = lf_buf_add(b, esc, 2);
      i++;
    }
    else if(ch < 0x20 || ch == 0x7f) {
      result = lf_buf_printf(b, "\\u%04x", ch);
      i++;
    }
    else if(ch < 0x80) {
      result = lf_buf_addc(b, (char)ch);
      i++;
    }
    else if((k = utf8_len(p + i, n - i)) != 0) {
      result = lf_buf_add(b, p + i, k);
      i += k;
    }
    else {
      result = lf_buf_adds(b, "\\ufffd");
      i++;
    }
  }
  return result ? result : lf_buf_addc(b, '"');
}

static const char *route_name(int route, char *buf, size_t n)
{
  if(route == LF_SPOOL_ROUTE_INGESTION)
    return "ingestion";
  if(route == LF_SPOOL_ROUTE_OTLP)
    return "otlp";
  snprintf(buf, n, "%d", route);
  return buf;
}

/* Builds one dead-letter line (with its newline) in b. */
static int dead_line(struct lf_buf *b, int route, const char *id,
                     const char *data, size_t len, const char *reason)
{
  char rb[16], tb[96];
  struct tm tm;
  uint64_t us = now_us();
  time_t t = (time_t)(us / 1000000u);
  size_t rlen = reason ? strlen(reason) : 0;
  const char *rn = route_name(route, rb, sizeof(rb));
  int result;
  gmtime_r(&t, &tm);
  snprintf(tb, sizeof(tb), "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ",
           tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
           tm.tm_min, tm.tm_sec, (unsigned)(us / 1000u % 1000u));
  result = lf_buf_adds(b, "{\"id\":");
  if(!result)
    result = json_str(b, id, strlen(id));
  if(!result)
    result = lf_buf_printf(b, ",\"route\":\"%s\",\"reason\":", rn);
  if(!result)
    result = json_str(b, reason ? reason : "",
                      rlen > REASON_MAX ? REASON_MAX : rlen);
  if(!result)
    result = lf_buf_printf(b, ",\"time\":\"%s\",\"event\":", tb);
  if(!result && !len)
    result = lf_buf_adds(b, "null");
  else if(!result && (memchr(data, '\n', len) || memchr(data, '\r', len)))
    result = json_str(b, data, len);
  else if(!result)
    result = lf_buf_add(b, data, len);
  return result ? result : lf_buf_adds(b, "}\n");
}

int lf_spool_dead_letter(struct lf_spool *sp, int route, const char *id,
                         const char *data, size_t len,
                         const char *reason, char *errbuf)
{
  struct lf_buf line;
  ssize_t w;
  int result;
  if(!id || (!data && len))
    return fail(errbuf, LF_EINVAL, "dead letter without id or data");
  lf_buf_init(&line, 0);
  if(dead_line(&line, route, id, data, len, reason)) {
    lf_buf_free(&line);
    return fail(errbuf, LF_ENOMEM, "out of memory");
  }
  pthread_mutex_lock(&sp->lock);
  if(sp->dl_fd < 0)
    sp->dl_fd = openat(sp->dirfd, DEAD_LETTER, O_WRONLY | O_APPEND |
                       O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if(sp->dl_fd < 0) {
    result = fail_errno(errbuf, errno, "cannot open", DEAD_LETTER);
  }
  else {
    do {
      w = write(sp->dl_fd, line.data, line.len);
    } while(w < 0 && errno == EINTR);
    if(w == (ssize_t)line.len)
      result = LF_OK;
    else
      result = fail_errno(errbuf, w < 0 ? errno : ENOSPC,
                          "cannot write a whole line to", DEAD_LETTER);
  }
  if(!result && sp->opts.fsync == LF_SPOOL_FSYNC_ALWAYS &&
     sync_fd(sp->dl_fd))
    result = fail_errno(errbuf, errno, "cannot fsync", DEAD_LETTER);
  else if(!result && sp->opts.fsync == LF_SPOOL_FSYNC_BATCH)
    sp->dl_dirty = 1;
  if(!result)
    sp->st.dead_lettered++;
  pthread_mutex_unlock(&sp->lock);
  lf_buf_free(&line);
  return result;
}

/* ---- stats ---- */

/* Unacked records in the directory, counted from the files. */
static int64_t count_pending(struct lf_spool *sp)
{
  struct listing l;
  char eb[LF_SPOOL_ERRMAX], name[NAME_LEN];
  uint64_t total = 0;
  size_t i;
  if(list_dir(sp, &l, eb))
    return -1;
  sp->disk_bytes = l.bytes;
  sp->disk_segments = l.segments;
  sp->last_scan = now_mono();
  for(i = 0; i < l.n; i++) {
    struct stat st;
    uint64_t recs, acks;
    int fd;
    if((l.e[i].kind != K_OPEN && l.e[i].kind != K_SEG) || !l.e[i].regular)
      continue;
    name_of(name, l.e[i].base, l.e[i].kind);
    fd = openat(sp->dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if(fd < 0)
      continue;
    if(fstat(fd, &st))
      st.st_size = 0;
    recs = count_records(fd, (uint64_t)st.st_size);
    close(fd);
    acks = count_acks(sp, l.e[i].base, (uint64_t)st.st_size);
    total += recs > acks ? recs - acks : 0;
  }
  free(l.e);
  return (int64_t)total;
}

int lf_spool_stats(struct lf_spool *sp, struct lf_spool_stats *st,
                   int count_records_too)
{
  struct seg *s;
  pthread_mutex_lock(&sp->lock);
  *st = sp->st;
  st->records_pending = count_records_too ? count_pending(sp) : -1;
  st->bytes_pending = sp->disk_bytes;
  st->segments = sp->disk_segments;
  st->records_held = 0;
  for(s = sp->segs; s; s = s->next)
    st->records_held += s->live;
  pthread_mutex_unlock(&sp->lock);
  return LF_OK;
}
