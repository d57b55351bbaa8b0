/*
** spool_test.c: tests for the durable spool, src/lf_spool.[ch].
**
** tests/run-spool-test builds and runs it plain, under ASan/UBSan and
** under valgrind.  A failed check prints its line; the last line is
** "N passed, N failed" and the exit status is nonzero on failure.
** SPOOL_TEST_SEED=n repeats a run's random kill times and damage;
** SPOOL_TEST_VERBOSE=1 prints the spool's log lines.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "../src/lf_spool.h"

/* SIGKILLs the crash test deals out: the brief asks for at least 20. */
#define KILLS 24
/* Longest a crash-test child lives before its kill, in microseconds. */
#define KILL_MAX_US 30000
/* Records per process in the two-process test. */
#define TWO_PROC_RECORDS 300
/* Exit status of a child that could not set its test up (skip). */
#define SKIP_STATUS 77
/* Room for a directory path under the test root. */
#define DIR_LEN 1024

static char root[512];
/* A spool a child leaves open on purpose when it plays dead: kept
   reachable so that valgrind does not count it as leaked. */
static struct lf_spool *volatile abandoned;
static uint64_t rng;

#include "check.h"

static uint64_t rnd(void)
{
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

/* ---- log capture ---- */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_text[32768];
static size_t log_len;

static void log_hook(void *ud, int level, const char *msg)
{
  size_t n = strlen(msg);
  (void)ud;
  if(getenv("SPOOL_TEST_VERBOSE"))
    fprintf(stderr, "[spool %d] %s\n", level, msg);
  pthread_mutex_lock(&log_lock);
  if(log_len + n + 2 < sizeof(log_text)) {
    memcpy(log_text + log_len, msg, n);
    log_len += n;
    log_text[log_len++] = '\n';
    log_text[log_len] = '\0';
  }
  pthread_mutex_unlock(&log_lock);
}

static void log_reset(void)
{
  pthread_mutex_lock(&log_lock);
  log_len = 0;
  log_text[0] = '\0';
  pthread_mutex_unlock(&log_lock);
}

static int log_has(const char *s)
{
  int r;
  pthread_mutex_lock(&log_lock);
  r = strstr(log_text, s) != NULL;
  pthread_mutex_unlock(&log_lock);
  return r;
}

/* ---- files ---- */

static void mkpath(char *out, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));
static void mkpath(char *out, const char *fmt, ...)
{
  char rel[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(rel, sizeof(rel), fmt, ap);
  va_end(ap);
  snprintf(out, DIR_LEN, "%s/%s", root, rel);
}

static int rm_one(const char *p, const struct stat *st, int flag,
                  struct FTW *f)
{
  (void)st;
  (void)f;
  if(flag == FTW_DP)
    chmod(p, 0700);
  remove(p);
  return 0;
}

static void rm_rf(const char *p)
{
  nftw(p, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Entries of dir whose names end with suffix. */
static int count_suffix(const char *dir, const char *suffix)
{
  DIR *d = opendir(dir);
  struct dirent *de;
  size_t sl = strlen(suffix);
  int n = 0;
  if(!d)
    return -1;
  while((de = readdir(d)) != NULL) {
    size_t l = strlen(de->d_name);
    if(de->d_name[0] != '.' && l >= sl &&
       !strcmp(de->d_name + l - sl, suffix))
      n++;
  }
  closedir(d);
  return n;
}

/* The name (sorted first, i.e. oldest) in dir ending with suffix. */
static int oldest(const char *dir, const char *suffix, char *out)
{
  DIR *d = opendir(dir);
  struct dirent *de;
  size_t sl = strlen(suffix);
  int found = 0;
  if(!d)
    return 0;
  while((de = readdir(d)) != NULL) {
    size_t l = strlen(de->d_name);
    if(l < sl || strcmp(de->d_name + l - sl, suffix) ||
       strncmp(de->d_name, "seg-", 4))
      continue;
    if(!found || strcmp(de->d_name, out) < 0)
      snprintf(out, NAME_MAX + 1, "%s", de->d_name);
    found = 1;
  }
  closedir(d);
  return found;
}

/* Sum of the sizes of the spool's segment and ack files. */
static uint64_t spool_bytes(const char *dir)
{
  DIR *d = opendir(dir);
  struct dirent *de;
  uint64_t n = 0;
  char p[PATH_MAX];
  struct stat st;
  if(!d)
    return 0;
  while((de = readdir(d)) != NULL) {
    if(strncmp(de->d_name, "seg-", 4))
      continue;
    snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
    if(!lstat(p, &st))
      n += (uint64_t)st.st_size;
  }
  closedir(d);
  return n;
}

static int write_file(const char *path, const void *p, size_t n)
{
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ssize_t w;
  if(fd < 0)
    return -1;
  w = write(fd, p, n);
  close(fd);
  return w == (ssize_t)n ? 0 : -1;
}

/* Reads a whole file into a malloc'd buffer the caller frees. */
static unsigned char *read_file(const char *path, size_t *n)
{
  struct stat st;
  unsigned char *p;
  int fd = open(path, O_RDONLY);
  ssize_t r;
  if(fd < 0 || fstat(fd, &st)) {
    if(fd >= 0)
      close(fd);
    return NULL;
  }
  p = malloc((size_t)st.st_size + 1);
  r = p ? read(fd, p, (size_t)st.st_size) : -1;
  close(fd);
  if(r != st.st_size) {
    free(p);
    return NULL;
  }
  p[r] = '\0';
  *n = (size_t)r;
  return p;
}

/* ---- id sets ---- */

struct ids {
  char **v;
  size_t n;
  size_t cap;
};

static void ids_add(struct ids *s, const char *id)
{
  if(s->n == s->cap) {
    s->cap = s->cap ? s->cap * 2 : 64;
    s->v = realloc(s->v, s->cap * sizeof(*s->v));
    if(!s->v)
      abort();
  }
  s->v[s->n] = strdup(id);
  if(!s->v[s->n])
    abort();
  s->n++;
}

static int cmp_str(const void *a, const void *b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void ids_sort(struct ids *s)
{
  if(s->n)
    qsort(s->v, s->n, sizeof(*s->v), cmp_str);
}

static int ids_has(const struct ids *s, const char *id)
{
  return s->n && bsearch(&id, s->v, s->n, sizeof(*s->v), cmp_str);
}

static size_t ids_dups(const struct ids *s)
{
  size_t i, d = 0;
  for(i = 1; i < s->n; i++)
    d += !strcmp(s->v[i - 1], s->v[i]);
  return d;
}

static void ids_free(struct ids *s)
{
  size_t i;
  for(i = 0; i < s->n; i++)
    free(s->v[i]);
  free(s->v);
  memset(s, 0, sizeof(*s));
}

/* ---- spool helpers ---- */

static void opts_small(struct lf_spool_opts *o)
{
  lf_spool_opts_init(o);
  o->segment_bytes = 4096;
  o->log = log_hook;
}

static struct lf_spool *open_ok(const char *dir,
                                const struct lf_spool_opts *o)
{
  char eb[LF_SPOOL_ERRMAX] = "";
  struct lf_spool *sp = lf_spool_open(dir, o, eb);
  CHECK(sp, "open %s: %s", dir, eb);
  return sp;
}

/* The event JSON for id, padded to about pad bytes. */
static size_t payload(char *buf, size_t cap, const char *id, size_t pad)
{
  int n = snprintf(buf, cap, "{\"id\":\"%s\",\"pad\":\"", id);
  size_t i = (size_t)n;
  while(i < pad && i + 3 < cap) {
    buf[i] = (char)('a' + i % 26);
    i++;
  }
  buf[i++] = '"';
  buf[i++] = '}';
  buf[i] = '\0';
  return i;
}

static int append_id(struct lf_spool *sp, int route, const char *id,
                     size_t pad, struct lf_spool_ref *ref, char *eb)
{
  char data[4096];
  size_t n = payload(data, sizeof(data), id, pad);
  return lf_spool_append(sp, route, id, data, n, ref, eb);
}

/* 1 when the record's data is the payload made for its id. */
static int record_sound(const struct lf_spool_record *r)
{
  char want[256];
  snprintf(want, sizeof(want), "{\"id\":\"%s\",", r->id);
  return r->len > strlen(want) && !strncmp(r->data, want, strlen(want)) &&
         r->data[r->len] == '\0';
}

/*
** Claims and reads every segment it can; adds each id to got (when
** given), checks each payload, acks each record when ack is set.
** Returns the number of records read.
*/
static size_t drain(struct lf_spool *sp, struct ids *got, int ack)
{
  struct lf_spool_claim *c;
  struct lf_spool_record r;
  char eb[LF_SPOOL_ERRMAX] = "";
  size_t n = 0, rounds;
  int bad = 0, errors = 0, result = LF_OK;
  for(rounds = 0; rounds < 10000; rounds++) {
    result = lf_spool_claim(sp, &c, eb);
    if(result || !c)
      break;
    while(!(result = lf_spool_next(c, &r, eb)) && r.id) {
      n++;
      bad += !record_sound(&r);
      if(got)
        ids_add(got, r.id);
      errors += ack && lf_spool_ack(sp, r.ref, eb);
    }
    errors += result != LF_OK;
    lf_spool_claim_done(c);
  }
  CHECK(!result && !bad && !errors, "drain: %d bad payloads, %d errors, "
        "last: %s", bad, errors, eb);
  return n;
}

/* ---- hand-made segment files, in the documented format ---- */

static void le32(unsigned char *p, uint32_t v)
{
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

/* Encodes one record at out; dlen is the data length written in the
   header, 0 for the real one.  Returns the bytes written. */
static size_t enc_record(unsigned char *out, int version, const char *id,
                         const char *data, uint32_t dlen)
{
  size_t il = strlen(id), dl = strlen(data);
  uLong c;
  if(!dlen)
    dlen = (uint32_t)dl;
  c = crc32(0L, (const Bytef *)id, (uInt)il);
  c = crc32(c, (const Bytef *)data, (uInt)dl);
  memcpy(out, "\xfe" "LFR", 4);
  out[4] = (unsigned char)version;
  out[5] = 0;
  out[6] = (unsigned char)il;
  out[7] = (unsigned char)(il >> 8);
  le32(out + 8, dlen);
  le32(out + 12, (uint32_t)c);
  le32(out + 16, (uint32_t)crc32(0L, out, 16));
  memcpy(out + 20, id, il);
  memcpy(out + 20 + il, data, dl);
  return 20 + il + dl;
}

static size_t enc_seg_header(unsigned char *out, int version)
{
  memcpy(out, "LFSPOOL", 7);
  out[7] = (unsigned char)version;
  return 8;
}

/* ---- tests ---- */

static void test_basic(void)
{
  struct lf_spool_opts o;
  struct lf_spool_ref refs[10], bogus;
  struct lf_spool_stats st;
  struct lf_spool_claim *c;
  struct lf_spool *sp;
  struct ids got = { 0 };
  char dir[DIR_LEN], eb[LF_SPOOL_ERRMAX], id[32];
  struct stat sb;
  int i, ok = 1;
  opts_small(&o);
  mkpath(dir, "basic");
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  CHECK(!stat(dir, &sb) && (sb.st_mode & 0777) == 0700,
        "directory created with mode 0700 (got %o)", sb.st_mode & 0777);
  for(i = 0; i < 10; i++) {
    snprintf(id, sizeof(id), "b-%d", i);
    ok &= !append_id(sp, i % 2, id, 100, &refs[i], eb);
  }
  CHECK(ok, "10 appends: %s", eb);
  CHECK(!lf_spool_stats(sp, &st, 1) && st.appended == 10 &&
        st.records_held == 10 && st.records_pending == 10,
        "stats after appends: appended %" PRIu64 " held %" PRIu64
        " pending %" PRId64, st.appended, st.records_held,
        st.records_pending);
  ok = !lf_spool_ack(sp, refs[0], eb) && !lf_spool_ack(sp, refs[1], eb) &&
       !lf_spool_ack(sp, refs[2], eb) && !lf_spool_ack(sp, refs[0], eb);
  CHECK(ok, "acks (one twice): %s", eb);
  bogus.seg = 9999;
  bogus.off = 8;
  CHECK(lf_spool_ack(sp, bogus, eb) == LF_EINVAL, "ack of unknown seg");
  bogus = refs[3];
  bogus.off += 1;
  CHECK(lf_spool_ack(sp, bogus, eb) == LF_EINVAL, "ack of a bad offset");
  CHECK(!lf_spool_claim(sp, &c, eb) && !c,
        "our own live segment cannot be claimed");
  CHECK(!lf_spool_sync(sp, eb), "sync: %s", eb);
  CHECK(lf_spool_append(sp, 1, "x", NULL, 5, &bogus, eb) == LF_EINVAL &&
        lf_spool_append(sp, 256, "x", "{}", 2, &bogus, eb) == LF_EINVAL,
        "bad append arguments refused");
  lf_spool_close(sp);
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  CHECK(drain(sp, &got, 1) == 7, "7 unacked records replayed (got %zu)",
        got.n);
  for(i = 0; i < 7 && (size_t)i < got.n; i++) {
    snprintf(id, sizeof(id), "b-%d", i + 3);
    CHECK(!strcmp(got.v[i], id), "replay order: %s is %s", got.v[i], id);
  }
  CHECK(!lf_spool_stats(sp, &st, 1) && st.records_pending == 0 &&
        st.records_held == 0, "nothing pending after replay and acks");
  lf_spool_close(sp);
  CHECK(count_suffix(dir, ".seg") == 0 && count_suffix(dir, ".open") == 0 &&
        count_suffix(dir, ".ack") == 0, "all segment files deleted");
  ids_free(&got);
}

static void test_routes_and_ids(void)
{
  struct lf_spool_opts o;
  struct lf_spool_ref ref;
  struct lf_spool_claim *c = NULL;
  struct lf_spool_record r;
  struct lf_spool *sp;
  char dir[DIR_LEN], eb[LF_SPOOL_ERRMAX], id[LF_SPOOL_ID_MAX + 2];
  int result;
  opts_small(&o);
  mkpath(dir, "routes");
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  memset(id, 'i', sizeof(id));
  id[LF_SPOOL_ID_MAX + 1] = '\0';
  CHECK(lf_spool_append(sp, 0, id, "{}", 2, &ref, eb) == LF_EINVAL,
        "id over %d bytes refused", LF_SPOOL_ID_MAX);
  id[LF_SPOOL_ID_MAX] = '\0';
  CHECK(!lf_spool_append(sp, LF_SPOOL_ROUTE_OTLP, id, "{\"otlp\":1}", 10,
                         &ref, eb), "id of %d bytes: %s", LF_SPOOL_ID_MAX,
        eb);
  CHECK(!lf_spool_release(sp, eb), "release");
  result = lf_spool_claim(sp, &c, eb);
  CHECK(!result && c, "claim after release: %s", eb);
  if(c) {
    result = lf_spool_next(c, &r, eb);
    CHECK(!result && r.id && r.id_len == LF_SPOOL_ID_MAX &&
          !strcmp(r.id, id) && r.route == LF_SPOOL_ROUTE_OTLP &&
          r.len == 10 && !memcmp(r.data, "{\"otlp\":1}", 10),
          "route, long id and data come back");
    CHECK(!lf_spool_ack(sp, r.ref, eb), "ack: %s", eb);
    CHECK(!lf_spool_next(c, &r, eb) && !r.id, "end of segment");
    CHECK(!lf_spool_next(c, &r, eb) && !r.id, "end stays the end");
    lf_spool_claim_done(c);
  }
  CHECK(lf_spool_fsync_parse("always") == LF_SPOOL_FSYNC_ALWAYS &&
        lf_spool_fsync_parse("batch") == LF_SPOOL_FSYNC_BATCH &&
        lf_spool_fsync_parse("never") == LF_SPOOL_FSYNC_NEVER &&
        lf_spool_fsync_parse("sometimes") == -1 &&
        lf_spool_full_parse("drop_oldest") == LF_SPOOL_DROP_OLDEST &&
        lf_spool_full_parse("refuse") == LF_SPOOL_REFUSE &&
        lf_spool_full_parse("x") == -1, "option names");
  lf_spool_close(sp);
  CHECK(count_suffix(dir, ".seg") == 0, "acked segment deleted");
}

static void test_rotation(void)
{
  struct lf_spool_opts o;
  struct lf_spool_ref refs[40];
  struct lf_spool_claim *c;
  struct lf_spool *sp;
  struct ids got = { 0 };
  char dir[DIR_LEN], eb[LF_SPOOL_ERRMAX], id[32];
  int i, ok = 1, sealed;
  opts_small(&o);
  mkpath(dir, "rotation");
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  for(i = 0; i < 40; i++) {
    snprintf(id, sizeof(id), "r-%02d", i);
    ok &= !append_id(sp, 0, id, 300, &refs[i], eb);
  }
  CHECK(ok, "40 appends: %s", eb);
  sealed = count_suffix(dir, ".seg");
  CHECK(sealed >= 2 && count_suffix(dir, ".open") == 1,
        "rotated into %d sealed segments and one open", sealed);
  CHECK(!lf_spool_claim(sp, &c, eb) && !c,
        "sealed segments with records in flight are not claimable");
  for(i = 39, ok = 1; i >= 0; i--)
    ok &= !lf_spool_ack(sp, refs[i], eb);
  CHECK(ok, "acks in reverse order: %s", eb);
  CHECK(count_suffix(dir, ".seg") == 0 && count_suffix(dir, ".ack") <= 1,
        "fully acked sealed segments deleted");
  for(i = 0, ok = 1; i < 40; i++) {
    snprintf(id, sizeof(id), "s-%02d", i);
    ok &= !append_id(sp, 0, id, 300, &refs[i], eb);
  }
  CHECK(ok && !lf_spool_release(sp, eb), "append and release: %s", eb);
  CHECK(lf_spool_ack(sp, refs[0], eb) == LF_EINVAL,
        "released refs no longer ack");
  CHECK(drain(sp, &got, 1) == 40, "released records replayed here "
        "(got %zu)", got.n);
  for(i = 0, ok = 1; i < 40 && (size_t)i < got.n; i++) {
    snprintf(id, sizeof(id), "s-%02d", i);
    ok &= !strcmp(got.v[i], id);
  }
  CHECK(ok, "replayed oldest segment first, records in order");
  lf_spool_close(sp);
  CHECK(spool_bytes(dir) == 0, "nothing left (%" PRIu64 " bytes)",
        spool_bytes(dir));
  ids_free(&got);
}

/* A child appends and acks, then dies without closing the spool. */
static void test_crash_acks(void)
{
  struct lf_spool_opts o;
  struct lf_spool *sp;
  struct ids got = { 0 };
  char dir[DIR_LEN], id[32];
  int i, status = -1, ok = 1;
  pid_t pid;
  opts_small(&o);
  mkpath(dir, "crash-acks");
  fflush(NULL);
  pid = fork();
  if(pid == 0) {
    char eb[LF_SPOOL_ERRMAX];
    struct lf_spool_ref ref;
    sp = lf_spool_open(dir, &o, eb);
    if(!sp)
      _exit(2);
    for(i = 0; i < 30; i++) {
      snprintf(id, sizeof(id), "c-%02d", i);
      if(append_id(sp, 0, id, 300, &ref, eb))
        _exit(3);
      if(i % 2 == 0 && lf_spool_ack(sp, ref, eb))
        _exit(4);
    }
    if(lf_spool_sync(sp, eb))
      _exit(5);
    abandoned = sp;
    _exit(0);
  }
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d",
        status);
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  CHECK(drain(sp, &got, 1) == 15, "15 unacked records of the dead "
        "process replayed (got %zu)", got.n);
  ids_sort(&got);
  for(i = 0; i < 30; i++) {
    snprintf(id, sizeof(id), "c-%02d", i);
    ok &= ids_has(&got, id) == (i % 2 == 1);
  }
  CHECK(ok, "exactly the odd (unacked) records came back");
  lf_spool_close(sp);
  CHECK(spool_bytes(dir) == 0, "spool empty after replay");
  ids_free(&got);
}

static void test_torn_tail(void)
{
  struct lf_spool_opts o;
  struct lf_spool_stats st;
  struct lf_spool_ref ref;
  struct lf_spool *sp;
  struct ids got = { 0 };
  char dir[DIR_LEN], eb[LF_SPOOL_ERRMAX], id[32], name[NAME_MAX + 1];
  char p[PATH_MAX], q[PATH_MAX];
  struct stat sb;
  int i, ok = 1;
  opts_small(&o);
  o.segment_bytes = 1 << 20;
  mkpath(dir, "torn");
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  for(i = 0; i < 30; i++) {
    snprintf(id, sizeof(id), "t-%02d", i);
    ok &= !append_id(sp, 0, id, 200, &ref, eb);
    if(i == 9 || i == 19)
      ok &= !lf_spool_rotate(sp, eb);
  }
  CHECK(ok, "appends: %s", eb);
  lf_spool_close(sp);
  /* The first segment loses the end of its last record's body, the
     third the end of its last record's header. */
  CHECK(oldest(dir, ".seg", name), "first segment");
  snprintf(p, sizeof(p), "%s/%s", dir, name);
  CHECK(!stat(p, &sb) && !truncate(p, sb.st_size - 7), "truncate %s", p);
  {
    DIR *d = opendir(dir);
    struct dirent *de;
    char last[NAME_MAX + 1] = "";
    while(d && (de = readdir(d)) != NULL) {
      if(!strncmp(de->d_name, "seg-", 4) && strcmp(de->d_name, last) > 0)
        snprintf(last, sizeof(last), "%s", de->d_name);
    }
    if(d)
      closedir(d);
    snprintf(q, sizeof(q), "%s/%s", dir, last);
  }
  CHECK(!stat(q, &sb) && !truncate(q, sb.st_size - 220),
        "truncate %s", q);
  log_reset();
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  drain(sp, &got, 1);
  ids_sort(&got);
  for(i = 0, ok = 1; i < 30; i++) {
    snprintf(id, sizeof(id), "t-%02d", i);
    ok &= ids_has(&got, id) == (i != 9 && i != 29);
  }
  CHECK(ok && got.n == 28, "all but the two torn records read (%zu)",
        got.n);
  CHECK(!lf_spool_stats(sp, &st, 0) && st.corrupt == 2 &&
        st.quarantined == 2, "2 corrupt, 2 quarantined (%" PRIu64 ", %"
        PRIu64 ")", st.corrupt, st.quarantined);
  CHECK(log_has("runs past the end") && log_has("truncated record"),
        "log names the reasons:\n%s", log_text);
  mkpath(p, "torn/quarantine");
  CHECK(count_suffix(p, ".bad") == 2, "2 quarantine files");
  lf_spool_close(sp);
  ids_free(&got);
}

/* Offsets of the records of a segment file, walked by the test. */
static size_t record_offsets(const unsigned char *f, size_t n, size_t *off,
                             size_t max)
{
  size_t pos = 8, k = 0;
  while(pos + 20 <= n && k < max) {
    size_t il = (size_t)f[pos + 6] | (size_t)f[pos + 7] << 8;
    size_t dl = (size_t)f[pos + 8] | (size_t)f[pos + 9] << 8 |
                (size_t)f[pos + 10] << 16 | (size_t)f[pos + 11] << 24;
    off[k++] = pos;
    pos += 20 + il + dl;
  }
  off[k] = pos;
  return k;
}

static void test_corrupt_middle(void)
{
  struct lf_spool_opts o;
  struct lf_spool_stats st;
  struct lf_spool_ref ref;
  struct lf_spool *sp;
  struct ids got = { 0 };
  char dir[DIR_LEN], eb[LF_SPOOL_ERRMAX], id[32], name[NAME_MAX + 1];
  char p[PATH_MAX];
  unsigned char *f, *g = NULL;
  size_t n = 0, off[32], k, i;
  int ok = 1;
  opts_small(&o);
  o.segment_bytes = 1 << 20;
  mkpath(dir, "corrupt");
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  for(i = 0; i < 20; i++) {
    snprintf(id, sizeof(id), "m-%02zu", i);
    ok &= !append_id(sp, 0, id, 100 + i * 37, &ref, eb);
  }
  CHECK(ok, "appends: %s", eb);
  lf_spool_close(sp);
  CHECK(oldest(dir, ".seg", name), "segment");
  snprintf(p, sizeof(p), "%s/%s", dir, name);
  f = read_file(p, &n);
  if(!f)
    return;
  k = record_offsets(f, n, off, 30);
  CHECK(k == 20, "20 records in the file (%zu)", k);
  /* Random bytes inside record 7's data, a damaged length in record
     12's header, 100 random bytes pushed in between records 15, 16. */
  for(i = 0; i < 16; i++)
    f[off[7] + 40 + i] = (unsigned char)rnd();
  f[off[12] + 9] ^= 0x5a;
  g = malloc(n + 100);
  if(g) {
    memcpy(g, f, off[16]);
    for(i = 0; i < 100; i++)
      g[off[16] + i] = (unsigned char)rnd();
    memcpy(g + off[16] + 100, f + off[16], n - off[16]);
    CHECK(!write_file(p, g, n + 100), "rewrite %s", p);
  }
  log_reset();
  sp = open_ok(dir, &o);
  if(!sp)
    goto out;
  drain(sp, &got, 1);
  ids_sort(&got);
  for(i = 0, ok = 1; i < 20; i++) {
    snprintf(id, sizeof(id), "m-%02zu", i);
    ok &= ids_has(&got, id) == (i != 7 && i != 12);
  }
  CHECK(ok && got.n == 18, "18 records read around the damage (%zu)",
        got.n);
  CHECK(!lf_spool_stats(sp, &st, 0) && st.corrupt == 3 &&
        st.quarantined == 3, "3 damaged regions (%" PRIu64 ")",
        st.corrupt);
  CHECK(log_has("bad body checksum") && log_has("bad header checksum") &&
        log_has("bad magic"), "reasons logged:\n%s", log_text);
  lf_spool_close(sp);
  {
    char q[PATH_MAX + 64];
    struct stat sb;
    /* quarantine names use the base name, without ".seg" */
    snprintf(q, sizeof(q), "%s/quarantine/%.*s.%016zx.bad", dir, 38, name,
             off[7]);
    CHECK(!stat(q, &sb) && (size_t)sb.st_size == off[8] - off[7],
          "record 7's bytes quarantined exactly (%s)", q);
    snprintf(q, sizeof(q), "%s/quarantine/%.*s.%016zx.bad", dir, 38, name,
             off[16]);
    CHECK(!stat(q, &sb) && sb.st_size == 100,
          "the 100 inserted bytes quarantined exactly");
  }
out:
  free(f);
  free(g);
  ids_free(&got);
}

static void test_huge_length(void)
{
  struct lf_spool_opts o;
  struct lf_spool_stats st;
  struct lf_spool *sp;
  struct ids got = { 0 };
  char dir[DIR_LEN], p[PATH_MAX];
  unsigned char f[4096];
  size_t n;
  opts_small(&o);
  mkpath(dir, "huge");
  mkdir(dir, 0700);
  n = enc_seg_header(f, 1);
  n += enc_record(f + n, 1, "h-a", "{\"id\":\"h-a\",\"a\":1}", 0);
  /* Sound header CRC, 4 GB length: only the cap stops it. */
  n += enc_record(f + n, 1, "h-b", "{\"id\":\"h-b\"}", 0xfffffff0u);
  n += enc_record(f + n, 1, "h-c", "{\"id\":\"h-c\",\"c\":3}", 0);
  /* Under the cap but past the end of the file. */
  n += enc_record(f + n, 1, "h-d", "{\"id\":\"h-d\"}", 50u * 1024 * 1024);
  snprintf(p, sizeof(p), "%s/seg-0000000000000001-00000001-00000000.seg",
           dir);
  CHECK(!write_file(p, f, n), "write %s", p);
  log_reset();
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  drain(sp, &got, 1);
  CHECK(got.n == 2 && !strcmp(got.v[0], "h-a") && !strcmp(got.v[1], "h-c"),
        "the two sound records read (%zu)", got.n);
  CHECK(!lf_spool_stats(sp, &st, 0) && st.corrupt == 2,
        "2 corrupt (%" PRIu64 ")", st.corrupt);
  CHECK(st.read_buf_max < 4096, "no big read buffer (%zu bytes)",
        st.read_buf_max);
  CHECK(log_has("data length over the limit") &&
        log_has("runs past the end"), "reasons:\n%s", log_text);
  lf_spool_close(sp);
  ids_free(&got);
}

/* Files that are not sound segments: each handled on its own. */
static void test_bad_files(void)
{
  struct lf_spool_opts o;
  struct lf_spool_stats st;
  struct lf_spool *sp;
  struct ids got = { 0 };
  char dir[DIR_LEN], p[PATH_MAX], q[PATH_MAX];
  unsigned char f[4096];
  size_t n;
  int i;
  static const char *const names[] = {
    "seg-0000000000000002-00000001-00000000.seg",   /* empty */
    "seg-0000000000000003-00000001-00000000.seg",   /* version 9 */
    "seg-0000000000000004-00000001-00000000.seg",   /* not ours */
    "seg-0000000000000005-00000001-00000000.seg",   /* symlink */
    "seg-0000000000000006-00000001-00000000.seg",   /* directory */
  };
  opts_small(&o);
  mkpath(dir, "badfiles");
  mkdir(dir, 0700);
  n = enc_seg_header(f, 1);
  n += enc_record(f + n, 1, "g-a", "{\"id\":\"g-a\",\"a\":1}", 0);
  n += enc_record(f + n, 2, "g-v2", "{\"id\":\"g-v2\"}", 0);
  n += enc_record(f + n, 1, "g-b", "{\"id\":\"g-b\",\"b\":2}", 0);
  snprintf(p, sizeof(p), "%s/seg-0000000000000001-00000001-00000000.seg",
           dir);
  write_file(p, f, n);
  snprintf(p, sizeof(p), "%s/%s", dir, names[0]);
  write_file(p, "", 0);
  snprintf(p, sizeof(p), "%s/%s", dir, names[1]);
  write_file(p, "LFSPOOL\x09", 8);
  snprintf(p, sizeof(p), "%s/%s", dir, names[2]);
  write_file(p, "hello, world", 12);
  snprintf(p, sizeof(p), "%s/%s", dir, names[3]);
  symlink("/etc/hostname", p);
  snprintf(p, sizeof(p), "%s/%s", dir, names[4]);
  mkdir(p, 0700);
  snprintf(p, sizeof(p), "%s/README", dir);
  write_file(p, "x", 1);
  snprintf(p, sizeof(p), "%s/seg-xyz.seg", dir);
  write_file(p, "x", 1);
  snprintf(p, sizeof(p), "%s/seg-0000000000000007-00000001-00000000.ack",
           dir);
  write_file(p, "123456789012", 12);
  snprintf(p, sizeof(p), "%s/seg-0000000000000008-00000001-00000000.new",
           dir);
  write_file(p, "LFSPOOL\x01", 8);
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  lf_spool_close(sp);
  CHECK(count_suffix(dir, ".seg") == 7 && count_suffix(dir, ".ack") == 1 &&
        count_suffix(dir, ".new") == 1, "opening deleted nothing");
  log_reset();
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  drain(sp, &got, 1);
  CHECK(got.n == 2 && !strcmp(got.v[0], "g-a") && !strcmp(got.v[1], "g-b"),
        "sound records read, v2 record skipped (%zu)", got.n);
  CHECK(!lf_spool_stats(sp, &st, 0) && st.corrupt == 6 &&
        st.quarantined == 6, "6 corrupt (%" PRIu64 "), 6 quarantined (%"
        PRIu64 ")", st.corrupt, st.quarantined);
  for(i = 0; i < 5; i++) {
    struct stat sb;
    snprintf(q, sizeof(q), "%s/quarantine/%s", dir, names[i]);
    CHECK(!lstat(q, &sb), "%s quarantined", names[i]);
  }
  snprintf(p, sizeof(p), "%s/README", dir);
  snprintf(q, sizeof(q), "%s/seg-xyz.seg", dir);
  CHECK(!access(p, F_OK) && !access(q, F_OK), "foreign names left alone");
  CHECK(count_suffix(dir, ".ack") == 0 && count_suffix(dir, ".new") == 0,
        "orphan .ack and dead writer's .new removed");
  CHECK(log_has("empty segment file") && log_has("unknown segment version")
        && log_has("bad file header") && log_has("symbolic link") &&
        log_has("not a regular file") &&
        log_has("unknown record version"), "reasons:\n%s", log_text);
  lf_spool_close(sp);
  ids_free(&got);
}

static void test_bad_dirs(void)
{
  char dir[DIR_LEN], link[PATH_MAX], file[PATH_MAX];
  char eb[LF_SPOOL_ERRMAX] = "";
  struct lf_spool_opts o;
  struct lf_spool *sp;
  opts_small(&o);
  mkpath(dir, "real");
  mkpath(link, "link");
  mkpath(file, "plain-file");
  mkdir(dir, 0700);
  CHECK(!symlink(dir, link), "symlink");
  sp = lf_spool_open(link, &o, eb);
  CHECK(!sp && strstr(eb, "symbolic link"), "symlinked dir refused: %s",
        eb);
  lf_spool_close(sp);
  write_file(file, "x", 1);
  sp = lf_spool_open(file, &o, eb);
  CHECK(!sp && strstr(eb, "not a directory"), "file refused: %s", eb);
  lf_spool_close(sp);
  mkpath(dir, "missing/parent/spool");
  sp = lf_spool_open(dir, &o, eb);
  CHECK(!sp && strstr(eb, "No such file"), "missing parent: %s", eb);
  lf_spool_close(sp);
  o.segment_bytes = 10;
  mkpath(dir, "real");
  sp = lf_spool_open(dir, &o, eb);
  CHECK(!sp && strstr(eb, "segment_bytes"), "bad option: %s", eb);
  lf_spool_close(sp);
}

/* Runs fn in a child in a mount namespace of its own; the child exits
   0 (pass), SKIP_STATUS (no namespace here) or the failing line. */
static int in_namespace(int (*fn)(const char *), const char *dir,
                        char *msg, size_t msglen)
{
  int fds[2], status = -1;
  ssize_t r;
  pid_t pid;
  if(pipe(fds))
    return -1;
  fflush(NULL);
  pid = fork();
  if(pid == 0) {
    close(fds[0]);
    dup2(fds[1], STDOUT_FILENO);
    if(unshare(CLONE_NEWNS) ||
       mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL))
      _exit(SKIP_STATUS);
    r = fn(dir);
    fflush(stdout);
    _exit((int)r);
  }
  close(fds[1]);
  r = read(fds[0], msg, msglen - 1);
  msg[r > 0 ? r : 0] = '\0';
  close(fds[0]);
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 255;
}

static int ro_child(const char *dir)
{
  char spool[PATH_MAX], eb[LF_SPOOL_ERRMAX] = "";
  struct lf_spool *sp;
  if(mount("tmpfs", dir, "tmpfs", 0, "size=64k,mode=0700"))
    return SKIP_STATUS;
  snprintf(spool, sizeof(spool), "%s/spool", dir);
  mkdir(spool, 0700);
  if(mount("tmpfs", dir, "tmpfs", MS_REMOUNT | MS_RDONLY, NULL))
    return SKIP_STATUS;
  sp = lf_spool_open(spool, NULL, eb);
  printf("%s", eb);
  lf_spool_close(sp);
  return !sp && strstr(eb, "Read-only file system") ? 0 : __LINE__;
}

static int enospc_child(const char *dir)
{
  char spool[PATH_MAX], eb[LF_SPOOL_ERRMAX] = "", id[32];
  struct lf_spool_opts o;
  struct lf_spool_ref ref;
  struct lf_spool_stats st;
  struct lf_spool *sp;
  int i, ok = 0, result = LF_OK;
  size_t n;
  if(mount("tmpfs", dir, "tmpfs", 0, "size=32k,mode=0700"))
    return SKIP_STATUS;
  snprintf(spool, sizeof(spool), "%s/spool", dir);
  opts_small(&o);
  o.log = NULL;
  o.segment_bytes = 1 << 20;
  sp = lf_spool_open(spool, &o, eb);
  if(!sp)
    return __LINE__;
  for(i = 0; i < 1000; i++) {
    snprintf(id, sizeof(id), "f-%d", i);
    result = append_id(sp, 0, id, 700, &ref, eb);
    if(result)
      break;
    ok++;
  }
  printf("%d appended, then: %s", ok, eb);
  if(result != LF_EIO || !strstr(eb, "No space left on device"))
    return __LINE__;
  if(lf_spool_stats(sp, &st, 0) || st.write_errors != 1)
    return __LINE__;
  lf_spool_close(sp);
  sp = lf_spool_open(spool, &o, eb);
  if(!sp)
    return __LINE__;
  n = drain(sp, NULL, 0);
  if(lf_spool_stats(sp, &st, 0) || st.corrupt)
    return __LINE__;
  lf_spool_close(sp);
  return n == (size_t)ok && ok > 10 ? 0 : __LINE__;
}

/* A full disk through RLIMIT_FSIZE: the append fails, cleanly. */
static void test_disk_full_rlimit(void)
{
  char dir[DIR_LEN];
  struct lf_spool_opts o;
  struct lf_spool_stats st;
  struct lf_spool *sp;
  int fds[2], status = -1, count = -1;
  char msg[512] = "";
  ssize_t r;
  pid_t pid;
  opts_small(&o);
  o.segment_bytes = 1 << 20;
  mkpath(dir, "fsize");
  if(pipe(fds))
    return;
  fflush(NULL);
  pid = fork();
  if(pid == 0) {
    struct rlimit rl = { 16384, 16384 };
    struct lf_spool_ref ref;
    char eb[LF_SPOOL_ERRMAX] = "", id[32];
    int i, result = LF_OK, ok = 0;
    close(fds[0]);
    signal(SIGXFSZ, SIG_IGN);
    sp = lf_spool_open(dir, &o, eb);
    if(!sp || setrlimit(RLIMIT_FSIZE, &rl))
      _exit(2);
    for(i = 0; i < 1000 && !result; i++) {
      snprintf(id, sizeof(id), "z-%d", i);
      result = append_id(sp, 0, id, 500, &ref, eb);
      ok += !result;
    }
    r = snprintf(msg, sizeof(msg), "%d %d %s", ok, result, eb);
    if(write(fds[1], msg, (size_t)r) != r)
      _exit(3);
    result = append_id(sp, 0, "z-again", 500, &ref, eb);
    lf_spool_close(sp);
    _exit(result == LF_EIO ? 0 : 4);
  }
  close(fds[1]);
  r = read(fds[0], msg, sizeof(msg) - 1);
  msg[r > 0 ? r : 0] = '\0';
  close(fds[0]);
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d", status);
  CHECK(sscanf(msg, "%d", &count) == 1 && count > 10 &&
        strstr(msg, " 4 ") && strstr(msg, "File too large"),
        "append failed with LF_EIO and the reason: %s", msg);
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  CHECK(drain(sp, NULL, 1) == (size_t)count,
        "exactly the %d reported records are on disk", count);
  CHECK(!lf_spool_stats(sp, &st, 0) && st.corrupt == 0,
        "the failed write left nothing half-written (%" PRIu64 ")",
        st.corrupt);
  lf_spool_close(sp);
}

static void test_readonly_and_enospc(void)
{
  char dir[DIR_LEN], msg[512];
  int r;
  mkpath(dir, "mnt-ro");
  mkdir(dir, 0700);
  if(geteuid() != 0) {
    char eb[LF_SPOOL_ERRMAX] = "";
    struct lf_spool *sp;
    chmod(dir, 0500);
    sp = lf_spool_open(dir, NULL, eb);
    CHECK(!sp && strstr(eb, "Permission denied"), "chmod 0500: %s", eb);
    lf_spool_close(sp);
    chmod(dir, 0700);
  }
  r = in_namespace(ro_child, dir, msg, sizeof(msg));
  if(r == SKIP_STATUS)
    printf("skip: read-only mount (no mount namespace here)\n");
  else
    CHECK(r == 0, "read-only file system refused at open: line %d: %s",
          r, msg);
  mkpath(dir, "mnt-full");
  mkdir(dir, 0700);
  r = in_namespace(enospc_child, dir, msg, sizeof(msg));
  if(r == SKIP_STATUS)
    printf("skip: full tmpfs (no mount namespace here)\n");
  else
    CHECK(r == 0, "disk full on a small tmpfs: line %d: %s", r, msg);
}

static void test_cap_refuse(void)
{
  struct lf_spool_opts o;
  struct lf_spool_ref refs[200], ref;
  struct lf_spool_stats st;
  struct lf_spool *sp;
  char dir[DIR_LEN], eb[LF_SPOOL_ERRMAX] = "", id[32];
  int i, n = 0, result = LF_OK, ok = 1;
  opts_small(&o);
  o.max_bytes = 16384;
  mkpath(dir, "cap-refuse");
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  for(i = 0; i < 200 && !result; i++) {
    snprintf(id, sizeof(id), "q-%03d", i);
    result = append_id(sp, 0, id, 400, &refs[i], eb);
    n += !result;
  }
  CHECK(result == LF_ETOOBIG && strstr(eb, "full"),
        "refused when full: %d: %s", result, eb);
  CHECK(n > 20 && spool_bytes(dir) <= 16384, "%d appended, %" PRIu64
        " bytes on disk", n, spool_bytes(dir));
  CHECK(!lf_spool_stats(sp, &st, 0) && st.refused == 1 && st.dropped == 0,
        "refused counted (%" PRIu64 ")", st.refused);
  for(i = 0; i < n; i++)
    ok &= !lf_spool_ack(sp, refs[i], eb);
  CHECK(ok, "acks: %s", eb);
  CHECK(!append_id(sp, 0, "q-after", 400, &ref, eb),
        "room again after acks: %s", eb);
  lf_spool_close(sp);
}

static void test_cap_drop(void)
{
  struct lf_spool_opts o;
  struct lf_spool_ref ref;
  struct lf_spool_stats st;
  struct lf_spool *sp;
  struct ids got = { 0 };
  char dir[DIR_LEN], eb[LF_SPOOL_ERRMAX] = "", id[32];
  int i, ok = 1;
  uint64_t dropped = 0, most = 0;
  opts_small(&o);
  o.max_bytes = 16384;
  o.full_policy = LF_SPOOL_DROP_OLDEST;
  mkpath(dir, "cap-drop");
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  for(i = 0; i < 200; i++) {
    snprintf(id, sizeof(id), "d-%03d", i);
    ok &= !append_id(sp, 0, id, 400, &ref, eb);
    if(spool_bytes(dir) > most)
      most = spool_bytes(dir);
  }
  CHECK(ok, "all appends accepted: %s", eb);
  CHECK(most <= 16384, "never above the cap (%" PRIu64 ")", most);
  CHECK(!lf_spool_stats(sp, &st, 0) && st.dropped > 100 &&
        st.dropped_segments > 10 && st.refused == 0 &&
        st.dropped + st.records_held == 200, "dropped %" PRIu64
        " held %" PRIu64, st.dropped, st.records_held);
  dropped = st.dropped;
  CHECK(log_has("dropped"), "drops logged");
  lf_spool_close(sp);
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  CHECK(!lf_spool_stats(sp, &st, 1) &&
        st.records_pending == (int64_t)(200 - dropped),
        "pending %" PRId64 " == 200 - dropped", st.records_pending);
  drain(sp, &got, 1);
  ids_sort(&got);
  CHECK(got.n == 200 - dropped && ids_has(&got, "d-199") &&
        !ids_has(&got, "d-000"), "the newest kept, the oldest dropped");
  lf_spool_close(sp);
  ids_free(&got);
}

static void test_dead_letter(void)
{
  struct lf_spool *sp;
  struct lf_spool_opts o;
  char dir[DIR_LEN], p[PATH_MAX], eb[LF_SPOOL_ERRMAX] = "";
  unsigned char *f;
  size_t n = 0, lines = 0, i;
  struct stat sb;
  opts_small(&o);
  mkpath(dir, "dead");
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  CHECK(!lf_spool_dead_letter(sp, 0, "dl-1", "{\"a\":1}", 7,
                              "400: bad \"thing\"\nnext", eb) &&
        !lf_spool_dead_letter(sp, 1, "dl-\"2", "{\"a\":\n2}", 8,
                              "utf8 \xff\xfe end \xc3\xa9", eb) &&
        !lf_spool_dead_letter(sp, 7, "dl-3", "", 0, NULL, eb),
        "dead letters: %s", eb);
  lf_spool_close(sp);
  snprintf(p, sizeof(p), "%s/dead-letter.jsonl", dir);
  CHECK(!stat(p, &sb) && (sb.st_mode & 0777) == 0600, "file mode 0600");
  f = read_file(p, &n);
  if(!f)
    return;
  for(i = 0; i < n; i++)
    lines += f[i] == '\n';
  CHECK(lines == 3 && n && f[n - 1] == '\n', "3 lines (%zu)", lines);
  CHECK(strstr((char *)f, "{\"id\":\"dl-1\",\"route\":\"ingestion\","
               "\"reason\":\"400: bad \\\"thing\\\"\\nnext\",\"time\":\"") &&
        strstr((char *)f, "\"event\":{\"a\":1}}\n"), "line 1:\n%s", f);
  CHECK(strstr((char *)f, "{\"id\":\"dl-\\\"2\",\"route\":\"otlp\","
               "\"reason\":\"utf8 \\ufffd\\ufffd end \xc3\xa9\"") &&
        strstr((char *)f, "\"event\":\"{\\\"a\\\":\\n2}\"}\n"),
        "line 2:\n%s", f);
  CHECK(strstr((char *)f, "\"route\":\"7\",\"reason\":\"\"") &&
        strstr((char *)f, "\"event\":null}\n"), "line 3:\n%s", f);
  free(f);
}

struct thread_arg {
  struct lf_spool *sp;
  struct lf_spool_ref refs[250];
  int base;
  int errors;
};

static void *append_thread(void *p)
{
  struct thread_arg *a = p;
  char eb[LF_SPOOL_ERRMAX], id[32];
  struct lf_spool_stats st;
  int i;
  for(i = 0; i < 250; i++) {
    snprintf(id, sizeof(id), "th-%d-%03d", a->base, i);
    a->errors += append_id(a->sp, a->base % 2, id, 150, &a->refs[i], eb)
                 != LF_OK;
    if(i % 50 == 0)
      a->errors += lf_spool_sync(a->sp, eb) != LF_OK ||
                   lf_spool_stats(a->sp, &st, 0) != LF_OK;
  }
  return NULL;
}

static void *ack_thread(void *p)
{
  struct thread_arg *a = p;
  char eb[LF_SPOOL_ERRMAX];
  int i;
  for(i = 0; i < 250; i++)
    a->errors += lf_spool_ack(a->sp, a->refs[i], eb) != LF_OK;
  return NULL;
}

static void test_threads(void)
{
  struct lf_spool_opts o;
  struct lf_spool_stats st;
  struct thread_arg *args;
  pthread_t t[4];
  char dir[DIR_LEN];
  int i, errors = 0;
  opts_small(&o);
  mkpath(dir, "threads");
  args = calloc(4, sizeof(*args));
  if(!args)
    return;
  args[0].sp = open_ok(dir, &o);
  if(!args[0].sp) {
    free(args);
    return;
  }
  for(i = 0; i < 4; i++) {
    args[i].sp = args[0].sp;
    args[i].base = i;
    pthread_create(&t[i], NULL, append_thread, &args[i]);
  }
  for(i = 0; i < 4; i++)
    pthread_join(t[i], NULL);
  for(i = 0; i < 4; i++)
    pthread_create(&t[i], NULL, ack_thread, &args[3 - i]);
  for(i = 0; i < 4; i++)
    pthread_join(t[i], NULL);
  for(i = 0; i < 4; i++)
    errors += args[i].errors;
  CHECK(!errors, "%d errors in threads", errors);
  CHECK(!lf_spool_stats(args[0].sp, &st, 1) && st.appended == 1000 &&
        st.acked == 1000 && st.records_held == 0 &&
        st.records_pending == 0, "1000 appended and acked from threads");
  CHECK(count_suffix(dir, ".seg") == 0, "acked segments deleted");
  lf_spool_close(args[0].sp);
  CHECK(spool_bytes(dir) == 0, "empty after close");
  free(args);
}

/* Appender, replayer and acker threads sharing one spool. */
struct relay {
  struct lf_spool *sp;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  struct lf_spool_ref refs[64];
  size_t head, tail;          /* refs waiting for the acker */
  int appending, replaying;   /* threads still at work */
  struct ids got;             /* ids replayed, under lock */
  int errors;
};

static void *relay_append(void *p)
{
  struct relay *r = p;
  struct lf_spool_ref ref;
  char eb[LF_SPOOL_ERRMAX], id[32];
  int i, errors = 0;
  for(i = 0; i < 400; i++) {
    snprintf(id, sizeof(id), "rl-%03d", i);
    errors += append_id(r->sp, 0, id, 120, &ref, eb) != LF_OK;
    if(i % 50 == 49)
      errors += lf_spool_release(r->sp, eb) != LF_OK;
  }
  errors += lf_spool_release(r->sp, eb) != LF_OK;
  pthread_mutex_lock(&r->lock);
  r->errors += errors;
  r->appending = 0;
  pthread_mutex_unlock(&r->lock);
  return NULL;
}

static void *relay_replay(void *p)
{
  struct relay *r = p;
  struct lf_spool_claim *c;
  struct lf_spool_record rec;
  char eb[LF_SPOOL_ERRMAX];
  int rounds, last = 0;
  for(rounds = 0; rounds < 100000 && !last; rounds++) {
    pthread_mutex_lock(&r->lock);
    last = !r->appending;
    pthread_mutex_unlock(&r->lock);
    if(lf_spool_claim(r->sp, &c, eb) || !c) {
      last = last && !c;
      usleep(1000);
      continue;
    }
    last = 0;
    while(!lf_spool_next(c, &rec, eb) && rec.id) {
      pthread_mutex_lock(&r->lock);
      while(r->head - r->tail == 64)
        pthread_cond_wait(&r->cond, &r->lock);
      r->refs[r->head++ % 64] = rec.ref;
      ids_add(&r->got, rec.id);
      pthread_cond_broadcast(&r->cond);
      pthread_mutex_unlock(&r->lock);
    }
    lf_spool_claim_done(c);
  }
  pthread_mutex_lock(&r->lock);
  r->replaying = 0;
  pthread_cond_broadcast(&r->cond);
  pthread_mutex_unlock(&r->lock);
  return NULL;
}

static void *relay_ack(void *p)
{
  struct relay *r = p;
  char eb[LF_SPOOL_ERRMAX];
  pthread_mutex_lock(&r->lock);
  for(;;) {
    struct lf_spool_ref ref;
    while(r->head == r->tail && r->replaying)
      pthread_cond_wait(&r->cond, &r->lock);
    if(r->head == r->tail)
      break;
    ref = r->refs[r->tail++ % 64];
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    if(lf_spool_ack(r->sp, ref, eb)) {
      pthread_mutex_lock(&r->lock);
      r->errors++;
      continue;
    }
    pthread_mutex_lock(&r->lock);
  }
  pthread_mutex_unlock(&r->lock);
  return NULL;
}

static void test_threads_replay(void)
{
  struct lf_spool_opts o;
  struct relay *r = calloc(1, sizeof(*r));
  pthread_t t[3];
  char dir[DIR_LEN];
  int i, missing = 0;
  if(!r)
    return;
  opts_small(&o);
  mkpath(dir, "relay");
  r->sp = open_ok(dir, &o);
  if(!r->sp) {
    free(r);
    return;
  }
  pthread_mutex_init(&r->lock, NULL);
  pthread_cond_init(&r->cond, NULL);
  r->appending = r->replaying = 1;
  pthread_create(&t[0], NULL, relay_append, r);
  pthread_create(&t[1], NULL, relay_replay, r);
  pthread_create(&t[2], NULL, relay_ack, r);
  for(i = 0; i < 3; i++)
    pthread_join(t[i], NULL);
  ids_sort(&r->got);
  for(i = 0; i < 400; i++) {
    char id[32];
    snprintf(id, sizeof(id), "rl-%03d", i);
    missing += !ids_has(&r->got, id);
  }
  CHECK(!r->errors && !missing && r->got.n == 400 && !ids_dups(&r->got),
        "400 records replayed once while appending: %d errors, %d "
        "missing, %zu replayed", r->errors, missing, r->got.n);
  lf_spool_close(r->sp);
  CHECK(spool_bytes(dir) == 0, "spool empty");
  pthread_mutex_destroy(&r->lock);
  pthread_cond_destroy(&r->cond);
  ids_free(&r->got);
  free(r);
}

static void test_fork_guard(void)
{
  struct lf_spool_opts o;
  struct lf_spool_ref ref;
  struct lf_spool *sp;
  char dir[DIR_LEN], eb[LF_SPOOL_ERRMAX];
  int status = -1;
  pid_t pid;
  opts_small(&o);
  mkpath(dir, "fork");
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  CHECK(!append_id(sp, 0, "k-1", 50, &ref, eb), "append: %s", eb);
  fflush(NULL);
  pid = fork();
  if(pid == 0) {
    int r = append_id(sp, 0, "k-child", 50, &ref, eb);
    int bad = r != LF_EINVAL || !strstr(eb, "fork");
    lf_spool_close(sp);
    _exit(bad);
  }
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "an inherited spool refuses to append in the child");
  CHECK(!append_id(sp, 0, "k-2", 50, &ref, eb) &&
        count_suffix(dir, ".open") == 1,
        "the parent's segment untouched by the child's close: %s", eb);
  lf_spool_close(sp);
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  CHECK(drain(sp, NULL, 1) == 2, "both parent records replayed");
  lf_spool_close(sp);
}

/* One process of the two-process test: appends its records, and
   replays whatever it can claim, writing each replayed id to out. */
static int two_proc_child(const char *dir, int who, int out)
{
  struct lf_spool_opts o;
  struct lf_spool_ref ref;
  struct lf_spool_claim *c;
  struct lf_spool_record r;
  struct lf_spool *sp;
  char eb[LF_SPOOL_ERRMAX], id[32], line[64];
  int i, rounds, result;
  opts_small(&o);
  o.log = NULL;
  sp = lf_spool_open(dir, &o, eb);
  if(!sp)
    return 2;
  for(i = 0; i <= TWO_PROC_RECORDS; i++) {
    if(i < TWO_PROC_RECORDS) {
      snprintf(id, sizeof(id), "p%d-%03d", who, i);
      if(append_id(sp, who, id, 150, &ref, eb))
        return 3;
    }
    if(i % 25 != 24 && i != TWO_PROC_RECORDS)
      continue;
    if(lf_spool_release(sp, eb))
      return 4;
    for(rounds = 0; rounds < (i == TWO_PROC_RECORDS ? 1000 : 1); rounds++) {
      if(lf_spool_claim(sp, &c, eb))
        return 5;
      if(!c)
        break;
      while(!(result = lf_spool_next(c, &r, eb)) && r.id) {
        int n = snprintf(line, sizeof(line), "%s\n", r.id);
        if(write(out, line, (size_t)n) != n || lf_spool_ack(sp, r.ref, eb))
          return 6;
      }
      lf_spool_claim_done(c);
      if(result)
        return 7;
    }
  }
  lf_spool_close(sp);
  return 0;
}

/* Reads the ids, one a line, in path into s. */
static void ids_from_file(struct ids *s, const char *path)
{
  size_t n = 0;
  char *f = (char *)read_file(path, &n), *line, *save = NULL;
  if(!f)
    return;
  for(line = strtok_r(f, "\n", &save); line;
      line = strtok_r(NULL, "\n", &save))
    ids_add(s, line);
  free(f);
}

static void test_two_processes(void)
{
  struct lf_spool_opts o;
  struct lf_spool *sp;
  struct ids got = { 0 };
  char dir[DIR_LEN], out[2][PATH_MAX], id[32];
  int who, status[2] = { -1, -1 }, missing = 0, fd;
  pid_t pid[2];
  size_t own = 0, i;
  mkpath(dir, "two");
  mkdir(dir, 0700);
  fflush(NULL);
  for(who = 0; who < 2; who++) {
    mkpath(out[who], "two-%d.ids", who);
    pid[who] = fork();
    if(pid[who] == 0) {
      fd = open(out[who], O_WRONLY | O_CREAT | O_APPEND, 0600);
      _exit(fd < 0 ? 1 : two_proc_child(dir, who, fd));
    }
  }
  for(who = 0; who < 2; who++) {
    waitpid(pid[who], &status[who], 0);
    CHECK(WIFEXITED(status[who]) && WEXITSTATUS(status[who]) == 0,
          "process %d exit %d", who, status[who]);
    ids_from_file(&got, out[who]);
  }
  opts_small(&o);
  sp = open_ok(dir, &o);
  if(sp) {
    own = drain(sp, &got, 1);
    lf_spool_close(sp);
  }
  ids_sort(&got);
  for(who = 0; who < 2; who++) {
    for(i = 0; i < TWO_PROC_RECORDS; i++) {
      snprintf(id, sizeof(id), "p%d-%03zu", who, i);
      missing += !ids_has(&got, id);
    }
  }
  CHECK(!missing && got.n == 2 * TWO_PROC_RECORDS && !ids_dups(&got),
        "each of %d records replayed exactly once: %zu replayed, %d "
        "missing, %zu twice (%zu left for the parent)",
        2 * TWO_PROC_RECORDS, got.n, missing, ids_dups(&got), own);
  CHECK(spool_bytes(dir) == 0, "spool empty");
  ids_free(&got);
}

/* Writes "<tag> <id>\n" to the pipe in one write(). */
static void report(int out, char tag, const char *id)
{
  char line[64];
  int n = snprintf(line, sizeof(line), "%c %s\n", tag, id);
  if(write(out, line, (size_t)n) != n)
    _exit(4);
}

/* The crash-test child: appends with fsync=always, acks some records
   and replays segments of earlier victims.  Through the pipe it reports
   each append that returned ("A id"), each ack it is about to make
   ("k id": the record may vanish from then on) and each ack that
   returned ("K id"). */
static void kill_child(const char *dir, int round, int out)
{
  struct lf_spool_opts o;
  struct lf_spool_ref refs[4];
  struct lf_spool_claim *c;
  struct lf_spool_record r;
  struct lf_spool *sp;
  char eb[LF_SPOOL_ERRMAX], id[4][32];
  int i;
  opts_small(&o);
  o.log = NULL;
  o.fsync = LF_SPOOL_FSYNC_ALWAYS;
  o.segment_bytes = 2048;
  sp = lf_spool_open(dir, &o, eb);
  if(!sp)
    _exit(2);
  for(i = 0; i < 100000; i++) {
    int k = i % 4;
    snprintf(id[k], sizeof(id[k]), "x%02d-%05d", round, i);
    if(append_id(sp, 0, id[k], 60 + (i * 7) % 200, &refs[k], eb))
      _exit(3);
    report(out, 'A', id[k]);
    if(k == 3) {
      report(out, 'k', id[1]);
      if(!lf_spool_ack(sp, refs[1], eb))
        report(out, 'K', id[1]);
    }
    if(i % 16 != 15 || lf_spool_claim(sp, &c, eb) || !c)
      continue;
    while(!lf_spool_next(c, &r, eb) && r.id) {
      report(out, 'k', r.id);
      if(!lf_spool_ack(sp, r.ref, eb))
        report(out, 'K', r.id);
    }
    lf_spool_claim_done(c);
  }
  _exit(0);
}

/* Reads what a killed child reported: appends, acks begun, acks done. */
static void read_reports(int fd, struct ids *appended, struct ids *acking,
                         struct ids *acked)
{
  char buf[8192], line[64];
  size_t ll = 0;
  ssize_t r, i;
  while((r = read(fd, buf, sizeof(buf))) > 0) {
    for(i = 0; i < r; i++) {
      if(buf[i] != '\n') {
        if(ll < sizeof(line) - 1)
          line[ll++] = buf[i];
        continue;
      }
      line[ll] = '\0';
      if(ll > 2 && line[0] == 'A')
        ids_add(appended, line + 2);
      else if(ll > 2 && line[0] == 'k')
        ids_add(acking, line + 2);
      else if(ll > 2 && line[0] == 'K')
        ids_add(acked, line + 2);
      ll = 0;
    }
  }
}

static void test_kill_loop(void)
{
  struct lf_spool_opts o;
  struct lf_spool_stats st;
  struct lf_spool *sp;
  struct ids appended = { 0 }, acking = { 0 }, acked = { 0 }, got = { 0 };
  char dir[DIR_LEN];
  int round, kills = 0, lost = 0, back = 0;
  /* Under valgrind a child needs longer to get going. */
  int slow = getenv("SPOOL_TEST_SLOW") ? 4 : 1;
  size_t i;
  mkpath(dir, "kill");
  mkdir(dir, 0700);
  for(round = 0; round < KILLS; round++) {
    int fds[2], status;
    pid_t pid;
    if(pipe(fds))
      break;
    fflush(NULL);
    pid = fork();
    if(pid == 0) {
      close(fds[0]);
      kill_child(dir, round, fds[1]);
    }
    close(fds[1]);
    usleep((useconds_t)(rnd() % (KILL_MAX_US * slow)));
    kills += !kill(pid, SIGKILL);
    read_reports(fds[0], &appended, &acking, &acked);
    close(fds[0]);
    waitpid(pid, &status, 0);
  }
  CHECK(kills >= 20, "%d kills", kills);
  opts_small(&o);
  sp = open_ok(dir, &o);
  if(!sp)
    return;
  drain(sp, &got, 1);
  CHECK(!lf_spool_stats(sp, &st, 0), "stats");
  lf_spool_close(sp);
  ids_sort(&acking);
  ids_sort(&acked);
  ids_sort(&got);
  for(i = 0; i < appended.n; i++) {
    const char *id = appended.v[i];
    if(!ids_has(&acking, id) && !ids_has(&got, id)) {
      printf("lost: %s\n", id);
      lost++;
    }
    if(ids_has(&acked, id) && ids_has(&got, id)) {
      printf("acked but back: %s\n", id);
      back++;
    }
  }
  printf("kill loop: %d kills, %zu appends reported, %zu acks, %zu "
         "replayed at the end, %" PRIu64 " torn regions\n", kills,
         appended.n, acked.n, got.n, st.corrupt);
  CHECK(appended.n > 40, "children got work done (%zu)", appended.n);
  CHECK(!lost, "%d records whose append returned are missing", lost);
  CHECK(!back, "%d acked records came back", back);
  CHECK(!ids_dups(&got), "no record twice in the final replay");
  CHECK(spool_bytes(dir) == 0, "spool empty at the end");
  ids_free(&appended);
  ids_free(&acking);
  ids_free(&acked);
  ids_free(&got);
}

static double seconds(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs one test and prints its name, time and failures. */
static void run(const char *name, void (*fn)(void))
{
  double t0 = seconds();
  int before = failed;
  fn();
  printf("%-4s %-28s %.2f s\n", failed == before ? "ok" : "FAIL", name,
         seconds() - t0);
  fflush(stdout);
}

#define RUN(fn) run(#fn, fn)

int main(void)
{
  const char *seed = getenv("SPOOL_TEST_SEED");
  const char *tmp = getenv("TMPDIR");
  double t0 = seconds();
  rng = seed ? strtoull(seed, NULL, 10) : (uint64_t)time(NULL) ^
        ((uint64_t)getpid() << 20);
  if(!rng)
    rng = 1;
  printf("seed %" PRIu64 "\n", rng);
  snprintf(root, sizeof(root), "%s/spool-test-XXXXXX", tmp ? tmp : "/tmp");
  if(!mkdtemp(root)) {
    perror("mkdtemp");
    printf("0 passed, 1 failed\n");
    return 1;
  }
  RUN(test_basic);
  RUN(test_routes_and_ids);
  RUN(test_rotation);
  RUN(test_crash_acks);
  RUN(test_torn_tail);
  RUN(test_corrupt_middle);
  RUN(test_huge_length);
  RUN(test_bad_files);
  RUN(test_bad_dirs);
  RUN(test_disk_full_rlimit);
  RUN(test_readonly_and_enospc);
  RUN(test_cap_refuse);
  RUN(test_cap_drop);
  RUN(test_dead_letter);
  RUN(test_threads);
  RUN(test_threads_replay);
  RUN(test_fork_guard);
  RUN(test_two_processes);
  RUN(test_kill_loop);
  rm_rf(root);
  printf("%.1f s in all\n", seconds() - t0);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
