/*
** lf_durable.c: the spool handle that follows the process, and batch
** upload through the spool (see lf_durable.h for the contract).
**
** Fork.  A process-wide registry lists the live handles.  Before fork()
** an atfork handler takes the registry lock and every handle's mutex,
** so no spool call is in progress in any thread; the parent's handler
** lets them go; the child's handler closes each inherited spool with
** lf_spool_close, which in a child only frees memory and closes this
** process's copies of the descriptors (the files and their locks stay
** the parent's), and then lets the mutexes go.  The next call in the
** child opens the spool afresh.  A child made by a raw clone() that
** skips the atfork handlers is caught by the spool itself, whose calls
** then fail with LF_EINVAL.
*/
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lf_durable.h"

/* Seconds between attempts at opening a spool that failed to open, so
   that a broken directory costs one failed open a second, not one per
   event. */
#define DURABLE_RETRY 1.0
/* Bytes of a dead-letter reason built here. */
#define REASON_MAX 512

struct lf_durable {
  struct lf_durable *prev;    /* registry links, under reg_lock */
  struct lf_durable *next;
  pthread_mutex_t lock;       /* guards everything below */
  char *dir;
  struct lf_spool_opts opts;
  struct lf_spool *sp;        /* NULL until opened in this process */
  unsigned long gen;          /* fork generation sp was opened in */
  int closed;                 /* lf_durable_close was called */
  double retry_at;            /* no open attempt before this */
  char open_err[LF_SPOOL_ERRMAX]; /* why the last open failed */
  unsigned warnings;          /* warnings of the spool not yet taken */
  char warning[LF_SPOOL_ERRMAX];  /* the first of them */
};

static pthread_once_t reg_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct lf_durable *registry;
static unsigned long fork_gen;          /* bumped in each child; atomic */

static double mono_now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------- fork */

static void fork_prepare(void)
{
  struct lf_durable *d;
  pthread_mutex_lock(&reg_lock);
  for(d = registry; d; d = d->next)
    pthread_mutex_lock(&d->lock);
}

static void fork_parent(void)
{
  struct lf_durable *d;
  for(d = registry; d; d = d->next)
    pthread_mutex_unlock(&d->lock);
  pthread_mutex_unlock(&reg_lock);
}

/* The inherited spools are closed here: nobody was inside one (the
   prepare handler saw to it), and a spool left open would keep the
   parent's segment locks alive in this process. */
static void fork_child(void)
{
  struct lf_durable *d;
  __atomic_add_fetch(&fork_gen, 1, __ATOMIC_RELEASE);
  for(d = registry; d; d = d->next) {
    if(d->sp)
      lf_spool_close(d->sp);
    d->sp = NULL;
    d->retry_at = 0;
    pthread_mutex_unlock(&d->lock);
  }
  pthread_mutex_unlock(&reg_lock);
}

static void fork_setup(void)
{
  (void)pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* ------------------------------------------------------------- handles */

/* The spool's log hook: it runs inside a spool call, so under d->lock;
   keeps the warnings for lf_durable_warnings. */
static void durable_log(void *ud, int level, const char *msg)
{
  struct lf_durable *d = ud;
  if(level > LF_SPOOL_LOG_WARN)
    return;
  if(!d->warnings++)
    snprintf(d->warning, sizeof(d->warning), "%s", msg);
}

/* The caller owns the result (lf_durable_free). */
struct lf_durable *lf_durable_new(const char *dir,
                                  const struct lf_spool_opts *opts)
{
  struct lf_durable *d;
  if(!dir)
    return NULL;
  (void)pthread_once(&reg_once, fork_setup);
  d = calloc(1, sizeof(*d));
  if(!d)
    return NULL;
  d->dir = lf_strndup(dir, strlen(dir));
  if(!d->dir || pthread_mutex_init(&d->lock, NULL)) {
    free(d->dir);
    free(d);
    return NULL;
  }
  if(opts)
    d->opts = *opts;
  else
    lf_spool_opts_init(&d->opts);
  d->opts.log = durable_log;
  d->opts.log_ud = d;
  pthread_mutex_lock(&reg_lock);
  d->next = registry;
  if(registry)
    registry->prev = d;
  registry = d;
  pthread_mutex_unlock(&reg_lock);
  return d;
}

/* Closes this process's spool (lock held). */
static void close_locked(struct lf_durable *d)
{
  if(d->sp)
    lf_spool_close(d->sp);
  d->sp = NULL;
}

void lf_durable_close(struct lf_durable *d)
{
  pthread_mutex_lock(&d->lock);
  close_locked(d);
  d->closed = 1;
  pthread_mutex_unlock(&d->lock);
}

/* Unlinks d, closes its spool and frees it; d is invalid afterwards. */
void lf_durable_free(struct lf_durable *d)
{
  if(!d)
    return;
  pthread_mutex_lock(&reg_lock);
  if(d->prev)
    d->prev->next = d->next;
  else
    registry = d->next;
  if(d->next)
    d->next->prev = d->prev;
  pthread_mutex_unlock(&reg_lock);
  pthread_mutex_lock(&d->lock);
  close_locked(d);
  pthread_mutex_unlock(&d->lock);
  pthread_mutex_destroy(&d->lock);
  free(d->dir);
  free(d);
}

const char *lf_durable_dir(const struct lf_durable *d)
{
  return d->dir;
}

/* Copies msg into errbuf (LF_SPOOL_ERRMAX bytes, may be NULL). */
static int say(char *errbuf, int result, const char *msg)
{
  if(errbuf)
    snprintf(errbuf, LF_SPOOL_ERRMAX, "%s", msg);
  return result;
}

/* The spool of this process (lock held), opened when need be; NULL with
   the reason in errbuf when closed or not openable now. */
static struct lf_spool *spool_of(struct lf_durable *d, char *errbuf,
                                 int *result)
{
  double now;
  *result = LF_OK;
  if(d->closed) {
    *result = say(errbuf, LF_EABORT, "the spool is closed");
    return NULL;
  }
  if(d->sp && d->gen == __atomic_load_n(&fork_gen, __ATOMIC_ACQUIRE))
    return d->sp;
  close_locked(d);              /* a child's handle opened before fork */
  now = mono_now();
  if(now < d->retry_at) {
    *result = say(errbuf, LF_EIO, d->open_err);
    return NULL;
  }
  d->sp = lf_spool_open(d->dir, &d->opts, d->open_err);
  if(!d->sp) {
    d->retry_at = now + DURABLE_RETRY;
    *result = say(errbuf, LF_EIO, d->open_err);
    return NULL;
  }
  d->gen = __atomic_load_n(&fork_gen, __ATOMIC_ACQUIRE);
  return d->sp;
}

/* Takes the lock and returns the spool of this process, or NULL with
   *result and errbuf saying why.  The caller lets the lock go. */
static struct lf_spool *begin(struct lf_durable *d, char *errbuf,
                              int *result)
{
  pthread_mutex_lock(&d->lock);
  return spool_of(d, errbuf, result);
}

int lf_durable_append(struct lf_durable *d, int route, const char *id,
                      const char *data, size_t len,
                      struct lf_spool_ref *ref, char *errbuf)
{
  int result;
  struct lf_spool *sp = begin(d, errbuf, &result);
  if(sp)
    result = lf_spool_append(sp, route, id, data, len, ref, errbuf);
  pthread_mutex_unlock(&d->lock);
  return result;
}

int lf_durable_sync(struct lf_durable *d, char *errbuf)
{
  int result;
  struct lf_spool *sp = begin(d, errbuf, &result);
  if(sp)
    result = lf_spool_sync(sp, errbuf);
  pthread_mutex_unlock(&d->lock);
  return result;
}

int lf_durable_ack(struct lf_durable *d, struct lf_spool_ref ref,
                   char *errbuf)
{
  int result;
  struct lf_spool *sp = begin(d, errbuf, &result);
  if(sp)
    result = lf_spool_ack(sp, ref, errbuf);
  pthread_mutex_unlock(&d->lock);
  return result;
}

int lf_durable_release(struct lf_durable *d, char *errbuf)
{
  int result;
  struct lf_spool *sp = begin(d, errbuf, &result);
  if(sp)
    result = lf_spool_release(sp, errbuf);
  pthread_mutex_unlock(&d->lock);
  return result;
}

int lf_durable_dead_letter(struct lf_durable *d, int route,
                           const char *id, const char *data, size_t len,
                           const char *reason, char *errbuf)
{
  int result;
  struct lf_spool *sp = begin(d, errbuf, &result);
  if(sp)
    result = lf_spool_dead_letter(sp, route, id, data, len, reason,
                                  errbuf);
  pthread_mutex_unlock(&d->lock);
  return result;
}

/* The claim belongs to the caller until lf_durable_claim_done. */
int lf_durable_claim(struct lf_durable *d, struct lf_spool_claim **out,
                     char *errbuf)
{
  int result;
  struct lf_spool *sp = begin(d, errbuf, &result);
  *out = NULL;
  if(sp)
    result = lf_spool_claim(sp, out, errbuf);
  pthread_mutex_unlock(&d->lock);
  return result;
}

int lf_durable_next(struct lf_durable *d, struct lf_spool_claim *c,
                    struct lf_spool_record *rec, char *errbuf)
{
  int result;
  struct lf_spool *sp = begin(d, errbuf, &result);
  if(sp)
    result = lf_spool_next(c, rec, errbuf);
  pthread_mutex_unlock(&d->lock);
  return result;
}

/* Frees the claim, unless the spool it came from is gone (closed, or a
   parent's), which freed it already. */
void lf_durable_claim_done(struct lf_durable *d, struct lf_spool_claim *c)
{
  if(!c)
    return;
  pthread_mutex_lock(&d->lock);
  if(d->sp && d->gen == __atomic_load_n(&fork_gen, __ATOMIC_ACQUIRE))
    lf_spool_claim_done(c);
  pthread_mutex_unlock(&d->lock);
}

int lf_durable_stats(struct lf_durable *d, struct lf_spool_stats *st,
                     int count_records)
{
  int result;
  struct lf_spool *sp = begin(d, NULL, &result);
  memset(st, 0, sizeof(*st));
  st->records_pending = -1;
  if(sp)
    result = lf_spool_stats(sp, st, count_records);
  pthread_mutex_unlock(&d->lock);
  return result;
}

unsigned lf_durable_warnings(struct lf_durable *d, char *buf)
{
  unsigned n;
  pthread_mutex_lock(&d->lock);
  n = d->warnings;
  if(n)
    snprintf(buf, LF_SPOOL_ERRMAX, "%s", d->warning);
  d->warnings = 0;
  pthread_mutex_unlock(&d->lock);
  return n;
}

int lf_durable_is_final(int kind)
{
  return kind == LF_KIND_REJECTED || kind == LF_KIND_VALIDATION ||
         kind == LF_KIND_TOO_LARGE;
}

/* --------------------------------------------------------- batch upload */

/* Writes the reason an item was refused for good into buf. */
static void final_reason(const struct lf_item *it, char *buf, size_t n)
{
  const char *msg = it->message ? it->message : "rejected";
  if(it->status)
    snprintf(buf, n, "%s (%d): %s", lf_kind_name(it->kind), it->status,
             msg);
  else
    snprintf(buf, n, "%s: %s", lf_kind_name(it->kind), msg);
}

/* Keeps the first spool problem of an upload in err. */
static void note(char *err, const char *eb)
{
  if(!err[0])
    snprintf(err, LF_SPOOL_ERRMAX, "%s", eb);
}

/* Appends every item, keeping the refs; counts what the spool refused.
   Then syncs, so the events are on the disk before any request. */
static void append_all(struct lf_durable *d, int route,
                       const struct lf_item *items, size_t n,
                       struct lf_spool_ref *refs, unsigned char *kept,
                       size_t *failed, char *err)
{
  char eb[LF_SPOOL_ERRMAX];
  size_t i, ok = 0;
  for(i = 0; i < n; i++) {
    kept[i] = !lf_durable_append(d, route, items[i].id, items[i].json,
                                 items[i].len, &refs[i], eb);
    if(kept[i]) {
      ok++;
    } else {
      note(err, eb);
      (*failed)++;
    }
  }
  if(ok && lf_durable_sync(d, eb))
    note(err, eb);              /* appended, maybe not on the disk yet */
}

/* Acks, dead-letters or keeps each spooled item after the upload, then
   gives up what is kept.  A failed ack only means the event may be sent
   again; it is noted in err all the same. */
static void settle_all(struct lf_durable *d, int route,
                       const struct lf_item *items, size_t n,
                       const struct lf_spool_ref *refs,
                       unsigned char *kept, char *err)
{
  char eb[LF_SPOOL_ERRMAX], reason[REASON_MAX];
  size_t i, left = 0, acked = 0;
  for(i = 0; i < n; i++) {
    const struct lf_item *it = &items[i];
    if(!kept[i])
      continue;
    if(it->outcome == LF_FAILED && lf_durable_is_final(it->kind)) {
      final_reason(it, reason, sizeof(reason));
      if(lf_durable_dead_letter(d, route, it->id, it->json, it->len,
                                reason, eb)) {
        note(err, eb);
        left++;                 /* no dead letter: keep it spooled */
        continue;
      }
    } else if(it->outcome != LF_DELIVERED) {
      left++;
      continue;
    }
    kept[i] = 0;
    if(lf_durable_ack(d, refs[i], eb))
      note(err, eb);
    acked++;
  }
  if(acked && lf_durable_sync(d, eb))
    note(err, eb);
  if(left && lf_durable_release(d, eb))
    note(err, eb);
}

/* refs are this call's own; kept is the caller's. */
int lf_durable_upload(struct lf_durable *d, struct lf_http *h,
                      const struct lf_route *route, struct lf_item *items,
                      size_t n, const struct lf_upload_opts *opts,
                      struct lf_report *rep, unsigned char *kept,
                      size_t *spool_failed, char *spool_err)
{
  struct lf_spool_ref *refs;
  int result;
  *spool_failed = 0;
  spool_err[0] = '\0';
  memset(kept, 0, n);
  if(!n)
    return lf_upload(h, route, items, n, opts, rep);
  refs = calloc(n, sizeof(*refs));
  if(!refs)
    return LF_ENOMEM;
  append_all(d, route->kind, items, n, refs, kept, spool_failed,
             spool_err);
  result = lf_upload(h, route, items, n, opts, rep);
  settle_all(d, route->kind, items, n, refs, kept, spool_err);
  free(refs);
  return result;
}
