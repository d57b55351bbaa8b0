/*
** lf_sender.c: the background sender (see lf_sender.h for the contract).
**
** Locking.  One mutex per sender guards its queues, counters, failure
** list and state.  The thread holds it except while it uploads, sleeps
** or calls a hook; hooks never run with it held.  Three condition
** variables, all on the monotonic clock: work (to the thread: events,
** a flush, stop), done (from the thread: a batch settled, or it left)
** and room (from the thread: events left, so blocked enqueuers retry).
**
** Order.  Each queued event gets a sequence number.  The thread sends a
** route's events when the route holds flush_at of them, or when their
** number is at most send_seq.  A flush raises send_seq to the last
** number handed out before it; so does the interval timer when it
** fires.  A flush is over when no event numbered at or below its own is
** queued, in a request, or in a settled batch whose hooks (on_leftover)
** still run.
**
** Fork.  A process-wide registry lists the live senders.  Before fork()
** an atfork handler takes the registry lock and the mutex of every
** sender this process owns, so the child's copy of each queue is whole;
** in the child it bumps a generation counter.  A public call that sees
** a new generation (or a new pid) resets the sender for the child: fresh
** mutex and condition variables over the inherited ones, no thread, the
** parent's events, counters and failures dropped, the parent's HTTP
** handle abandoned.  Abandoned handles stay listed in orphans[] so that
** they remain reachable; they are never cleaned up in the child.
**
** Spool.  Two handles (lf_durable.h) on the same directory: "spool"
** takes the events that are also queued, so their refs stay good until
** they are acked; "overflow" takes the events kept in the spool alone
** (no room in memory), and is given up every RELEASE_INTERVAL, which
** cannot cost a duplicate since none of its records is in memory.  The
** events of "spool" that leave memory unacked (failed, kept) are its
** orphans: the handle is given up when nothing is held in memory, or
** when nothing else is left to replay (a duplicate is then possible for
** what memory still holds).  The replay chunk (rp_head) and the claim
** it reads belong to the thread; the chunk's links change under the
** lock so that a child can free an inherited chunk.  Spool calls are
** never made with the lock held.  Appends are fsynced before each
** request and before the thread waits; acks alone at most every
** ACK_SYNC_INTERVAL, since a lost ack only sends an event again; dead
** letters before the ack that follows them.
**
** Priority.  On Linux the thread lowers its own priority by THREAD_NICE
** when it starts: in a CPU-bound process (a busy nginx worker) the
** event loop then runs first, and the thread, still given its share by
** the scheduler, sends bigger batches a little later.
**
** Caveats.  lf_upload checks for a stop only when it is about to wait,
** so a stop waits for the requests of the round in progress: one request
** normally (a batch never exceeds one request's limits), more when the
** server answers 413 or a whole-batch 400 and lf_upload splits.  Each is
** bounded by the HTTP timeout; libcurl gives no way to cut one short
** from another thread here.  The report of lf_upload does not carry the
** server's last Retry-After, so the pause after a final 429 lasts the
** longest wait lf_upload made in that call, or rate_limit_pause if that
** is longer.
*/
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/resource.h>
#include <sys/syscall.h>
#endif

#include "lf_durable.h"
#include "lf_sender.h"

/* Routes a sender serves: enum lf_route_kind indexes them. */
#define ROUTES 2
/* Longest single wait in seconds: math.huge from Lua must not overflow
   a timespec. */
#define WAIT_MAX (86400.0 * 366)
/* Abandoned HTTP handles kept reachable after forks; more are let go. */
#define ORPHANS_MAX 16
/* Seconds the thread rests after lf_upload ran out of memory, so that it
   does not spin on a starved heap. */
#define NOMEM_PAUSE 1.0
/* Bytes of one log message. */
#define LOG_MAX 512
/* Seconds between looks for segments that processes which died left in
   the spool, when nothing else asks for a replay. */
#define REPLAY_RESCAN 30.0
/* Seconds between give-ups of the overflow handle: each seals a segment
   (two fsyncs), so it is not done for every event. */
#define RELEASE_INTERVAL 1.0
/* Shortest wait in seconds between replay attempts that failed, whatever
   backoff_base says: a server that is down must not make a busy loop. */
#define REPLAY_WAIT_MIN 0.05
/* Orphans past which the "spool" handle is given up even with events in
   memory (each costs 8 bytes of offsets until then; a duplicate is the
   price for what memory holds). */
#define SPOOL_ORPHANS_MAX 65536
/* Times a replay that found only our own records waits RELEASE_PAUSE
   seconds for memory to empty (sending it at once) before it gives the
   "spool" handle up anyway, which risks duplicates. */
#define RELEASE_PATIENCE 20
#define RELEASE_PAUSE 0.05
/* Seconds between fsyncs of acks alone (appends are synced per batch):
   an ack lost to a power cut only sends an event again. */
#define ACK_SYNC_INTERVAL 1.0
/* Niceness the thread adds to its own (Linux): when the process is
   CPU-bound, as a busy nginx worker is, its event loop comes first and
   the thread sends bigger batches a moment later; CFS still gives the
   thread a share, so the queue drains under any load. */
#define THREAD_NICE 5
/* Bytes of written raw events kept between batches; a buffer grown past
   it by a huge batch is freed. */
#define BUILT_KEEP (4 * 1024 * 1024)
/* Marks in built_at: an event that is not raw, and one not written. */
#define NOT_RAW ((size_t)-1)
#define NOT_BUILT ((size_t)-2)

/* Bits of spool_dirty. */
#define SYNC_SPOOL 1            /* appends to "spool" */
#define SYNC_OVERFLOW 2         /* appends to "overflow" */
#define SYNC_ACKS 4             /* acks in "spool" */

enum state {
  ST_IDLE = 0,            /* no thread in this process */
  ST_RUNNING,             /* the thread runs */
  ST_CLOSING,             /* shutdown in progress */
  ST_CLOSED               /* stopped for good */
};

/* What the thread does with a settled event's spool record. */
enum fate {
  FATE_NONE = 0,          /* nothing: not spooled, or kept there */
  FATE_ACK,               /* delivered: ack it */
  FATE_DEAD               /* refused for good: dead-letter, then ack */
};

/* One queued event: a single allocation holding the JSON and the id. */
struct qitem {
  struct qitem *next;
  uint64_t seq;
  size_t len;
  const char *id;         /* points into data, after the JSON */
  struct lf_spool_ref ref; /* its record, when spooled */
  int spooled;            /* ref names a record of the "spool" handle */
  int route;              /* enum lf_route_kind */
  int fate;               /* enum fate, set when it settles */
  int raw;                /* data is what the build hook turns into the
                             JSON (lf_sender_enqueue_raw) */
  char *reason;           /* dead-letter reason (malloc'd), or NULL */
  char data[];            /* json, NUL, id, NUL */
};

struct queue {
  struct qitem *head;
  struct qitem *last;
  size_t count;
};

/* A route's copied configuration and its queue. */
struct sroute {
  struct lf_route route;  /* points at the copies below */
  char *url;
  char *prefix;
  char *suffix;
  char **headers;         /* NULL-ended copy, or NULL */
  struct queue q;
};

struct lf_sender {
  struct lf_sender *prev; /* registry links, under fork_lock */
  struct lf_sender *next;
  int pid;                /* owner process; atomic */
  unsigned long gen;      /* fork generation seen last; atomic */
  int fork_locked;        /* lock taken by fork_prepare; fork_lock */

  /* configuration, copied, read-only after lf_sender_new */
  struct lf_http_config http;
  char *public_key;
  char *secret_key;
  char *sdk_name;
  char *sdk_version;
  char *ca_file;
  struct sroute routes[ROUTES];
  struct lf_upload_opts upload;
  size_t flush_at;
  double flush_interval;
  size_t max_events;
  size_t max_bytes;
  int policy;
  double block_timeout;
  double rate_pause;
  lf_leftover_fn on_leftover;
  void *leftover_ud;
  lf_log_fn log;
  void *log_ud;
  char *spool_dir;        /* NULL: no spool */
  struct lf_durable *spool;    /* owned: records also held in memory */
  struct lf_durable *overflow; /* owned: records kept in the spool only */

  /* everything below is guarded by lock */
  pthread_mutex_t lock;
  pthread_cond_t work;
  pthread_cond_t done;
  pthread_cond_t room;
  pthread_t thread;
  int state;              /* enum state */
  int stop;               /* the thread must leave */
  int idle;               /* the thread waits with no deadline */
  int flush_waiters;
  int room_waiters;
  uint64_t seq;           /* last number handed out */
  uint64_t send_seq;      /* events up to this number go now */
  double due;             /* when the interval timer fires, 0: unset */
  double paused_until;    /* rate-limit pause, monotonic seconds */
  int last_route;         /* the route served last, for fairness */
  size_t held_events;     /* queued or in a request */
  size_t held_bytes;
  struct qitem *inflight; /* the batch in a request, in order */
  size_t inflight_n;
  uint64_t busy_seq;      /* first number of a settled batch whose hooks
                             still run, 0: none */
  struct lf_failure *fails; /* ring of fail_cap entries */
  size_t fail_cap;
  size_t fail_first;
  size_t fail_n;
  struct lf_sender_stats st;
  int backlog;            /* the spool may hold records to replay */
  int spool_dirty;        /* SYNC_* bits: what is not yet synced */
  double ack_sync_due;    /* acks are synced no sooner than this */
  int overflow_dirty;     /* appends to "overflow" not yet given up */
  uint64_t orphans;       /* records of "spool" no longer in memory */
  double replay_due;      /* monotonic time of the next replay step */
  double replay_wait;     /* the current wait after a failed replay */
  double rescan_due;      /* when to look for dead processes' segments */
  double release_due;     /* when to give up "overflow" next */
  int release_waits;      /* RELEASE_PATIENCE spent so far */
  struct qitem *rp_head;  /* the replay chunk, in spool order */

  /* owned by the thread while it runs */
  struct lf_spool_claim *rp_claim; /* the segment replay reads */
  struct lf_item *items;  /* flush_at entries, the batch for lf_upload */
  lf_build_fn build;      /* writes raw events; NULL for none */
  void *build_ud;
  struct lf_buf built;    /* the JSON of the batch's raw events */
  size_t *built_at;       /* flush_at entries: where each one starts */
  double waited;          /* longest wait lf_upload asked for */
  struct lf_http *h;      /* made by the first enqueue */
};

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t fork_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long fork_gen;          /* atomic */
static struct lf_sender *registry;      /* under fork_lock */
static struct lf_http *volatile orphans[ORPHANS_MAX]; /* never read:
                                          it keeps them reachable */
static size_t orphan_count;

static const char *const route_names[ROUTES] = { "ingestion", "otlp" };

/* ---------------------------------------------------------------- time */

static double mono_now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* seconds bounded to [0, WAIT_MAX]; NaN reads as 0. */
static double clamp_wait(double seconds)
{
  if(!(seconds > 0))
    return 0;
  return seconds < WAIT_MAX ? seconds : WAIT_MAX;
}

/* Waits on c until the monotonic time deadline, or with no deadline when
   it is negative.  Returns ETIMEDOUT once the deadline passed, else 0. */
static int wait_until(pthread_cond_t *c, pthread_mutex_t *m,
                      double deadline)
{
  struct timespec ts;
  if(deadline < 0) {
    pthread_cond_wait(c, m);
    return 0;
  }
  ts.tv_sec = (time_t)deadline;
  ts.tv_nsec = (long)((deadline - (double)ts.tv_sec) * 1e9);
  if(ts.tv_nsec >= 1000000000L)
    ts.tv_nsec = 999999999L;
  return pthread_cond_timedwait(c, m, &ts) == ETIMEDOUT ? ETIMEDOUT : 0;
}

/* ------------------------------------------------------------- helpers */

/* Copies up to n bytes of src into dst (cap bytes), cut short and
   NUL-terminated. */
static void copy_text(char *dst, size_t cap, const char *src, size_t n)
{
  if(!src)
    n = 0;
  if(n > cap - 1)
    n = cap - 1;
  if(n)
    memcpy(dst, src, n);
  dst[n] = '\0';
}

static void sender_log(const struct lf_sender *s, int level,
                       const char *fmt, ...) LF_PRINTF(3, 4);

/* Formats a message and hands it to the log hook; call without lock. */
static void sender_log(const struct lf_sender *s, int level,
                       const char *fmt, ...)
{
  char msg[LOG_MAX];
  va_list ap;
  if(!s->log)
    return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  s->log(s->log_ud, level, msg);
}

/* Records a failure (lock held): into the ring, or into failures_lost
   when the ring is full.  last_error always takes the message.  spooled
   says the event stays in the spool; the message then says so too. */
static void add_failure(struct lf_sender *s, int route, int kind,
                        int status, int attempts, int retryable,
                        int spooled, const char *id, size_t idlen,
                        const char *msg)
{
  struct lf_failure *f;
  char text[LF_SENDER_MESSAGE_MAX];
  if(spooled) {
    snprintf(text, sizeof(text), "%s; kept in the spool", msg);
    msg = text;
  }
  copy_text(s->st.last_error, sizeof(s->st.last_error), msg,
            strlen(msg));
  if(s->fail_n == s->fail_cap) {
    s->st.failures_lost++;
    return;
  }
  f = &s->fails[(s->fail_first + s->fail_n) % s->fail_cap];
  /* atomic: lf_sender_drain_failures peeks at it without the lock */
  __atomic_store_n(&s->fail_n, s->fail_n + 1, __ATOMIC_RELAXED);
  f->route = route;
  f->kind = kind;
  f->status = status;
  f->attempts = attempts;
  f->retryable = retryable;
  f->spooled = spooled;
  copy_text(f->id, sizeof(f->id), id, idlen);
  copy_text(f->message, sizeof(f->message), msg, strlen(msg));
}

/* Counts and records an event that enqueue refused (lock held). */
static void drop_locked(struct lf_sender *s, int route, int result,
                        const char *id, size_t idlen)
{
  int kind = LF_KIND_INTERNAL;
  const char *msg = "out of memory";
  char text[LF_SENDER_MESSAGE_MAX];
  switch(result) {
  case LF_ETOOBIG:
    kind = LF_KIND_QUEUE_FULL;
    snprintf(text, sizeof(text),
             "queue full (%zu events, %zu bytes held)",
             s->held_events, s->held_bytes);
    msg = text;
    break;
  case LF_EABORT:
    kind = LF_KIND_SHUTDOWN;
    msg = "the sender is shut down";
    break;
  case LF_EINVAL:
    kind = LF_KIND_CONFIG;
    msg = "no URL for this route";
    break;
  case LF_EIO:
    msg = "the sender thread could not start";
    break;
  }
  s->st.dropped++;
  add_failure(s, route, kind, 0, 0, result != LF_EINVAL, 0, id, idlen,
              msg);
}

/* Frees a chain of items. */
static void free_chain(struct qitem *it)
{
  while(it) {
    struct qitem *next = it->next;
    free(it->reason);
    free(it);
    it = next;
  }
}

/* Detaches and returns a queue's whole chain (lock held). */
static struct qitem *queue_take_all(struct queue *q)
{
  struct qitem *all = q->head;
  q->head = NULL;
  q->last = NULL;
  q->count = 0;
  return all;
}

/* A new queue item holding copies of json and id, or NULL when out of
   memory or too big to count; the caller owns it (free()). */
static struct qitem *item_new(const char *json, size_t len,
                              const char *id, size_t idlen)
{
  struct qitem *it;
  if(len > (size_t)-1 / 4 || idlen > (size_t)-1 / 4)
    return NULL;
  it = malloc(sizeof(*it) + len + idlen + 2);
  if(!it)
    return NULL;
  memset(it, 0, sizeof(*it));
  it->len = len;
  if(len)
    memcpy(it->data, json, len);
  it->data[len] = '\0';
  if(idlen)
    memcpy(it->data + len + 1, id, idlen);
  it->data[len + 1 + idlen] = '\0';
  it->id = it->data + len + 1;
  return it;
}

/* ----------------------------------------------------- config and sync */

/* A malloc'd copy of s, or NULL for NULL; *bad set when out of memory. */
static char *dup_opt(const char *s, int *bad)
{
  char *p;
  if(!s)
    return NULL;
  p = lf_strndup(s, strlen(s));
  if(!p)
    *bad = 1;
  return p;
}

/* Frees a route's copies (the route struct itself is not freed). */
static void route_free(struct sroute *r)
{
  size_t i;
  free(r->url);
  free(r->prefix);
  free(r->suffix);
  for(i = 0; r->headers && r->headers[i]; i++)
    free(r->headers[i]);
  free(r->headers);
  memset(r, 0, sizeof(*r));
}

/* Copies src into dst, which then owns every string.  Returns LF_OK or
   LF_ENOMEM (dst is then freed by route_free). */
static int route_copy(struct sroute *dst, const struct lf_route *src,
                      int kind)
{
  size_t n = 0, i;
  int bad = 0;
  memset(dst, 0, sizeof(*dst));
  dst->route.kind = kind;
  if(!src->url)
    return LF_OK;
  dst->url = dup_opt(src->url, &bad);
  dst->prefix = dup_opt(src->prefix, &bad);
  dst->suffix = dup_opt(src->suffix, &bad);
  while(src->headers && src->headers[n])
    n++;
  if(src->headers) {
    dst->headers = calloc(n + 1, sizeof(char *));
    if(!dst->headers)
      bad = 1;
    for(i = 0; dst->headers && i < n; i++)
      dst->headers[i] = dup_opt(src->headers[i], &bad);
  }
  dst->route.url = dst->url;
  dst->route.prefix = dst->prefix;
  dst->route.suffix = dst->suffix;
  dst->route.gzip = src->gzip;
  dst->route.headers = (const char *const *)dst->headers;
  return bad ? LF_ENOMEM : LF_OK;
}

/* Frees the copied configuration; the secret is wiped first. */
static void config_free(struct lf_sender *s)
{
  int i;
  if(s->secret_key)
    explicit_bzero(s->secret_key, strlen(s->secret_key));
  free(s->public_key);
  free(s->secret_key);
  free(s->sdk_name);
  free(s->sdk_version);
  free(s->ca_file);
  free(s->spool_dir);
  for(i = 0; i < ROUTES; i++)
    route_free(&s->routes[i]);
}

static int config_copy(struct lf_sender *s,
                       const struct lf_sender_config *cfg)
{
  int bad = 0;
  s->http = cfg->http;
  s->http.public_key = s->public_key = dup_opt(cfg->http.public_key, &bad);
  s->http.secret_key = s->secret_key = dup_opt(cfg->http.secret_key, &bad);
  s->http.sdk_name = s->sdk_name = dup_opt(cfg->http.sdk_name, &bad);
  s->http.sdk_version = s->sdk_version =
    dup_opt(cfg->http.sdk_version, &bad);
  s->http.ca_file = s->ca_file = dup_opt(cfg->http.ca_file, &bad);
  if(!(s->http.timeout > 0))
    s->http.timeout = LF_SENDER_HTTP_TIMEOUT;
  if(route_copy(&s->routes[LF_ROUTE_INGESTION], &cfg->ingestion,
                LF_ROUTE_INGESTION) ||
     route_copy(&s->routes[LF_ROUTE_OTLP], &cfg->otlp, LF_ROUTE_OTLP))
    bad = 1;
  s->upload = cfg->upload;
  s->upload.sleep = NULL;
  s->upload.sleep_ud = NULL;
  s->flush_at = cfg->flush_at;
  s->flush_interval = clamp_wait(cfg->flush_interval);
  s->max_events = cfg->max_queue_events;
  s->max_bytes = cfg->max_queue_bytes;
  s->policy = cfg->full_policy;
  s->block_timeout = clamp_wait(cfg->block_timeout);
  s->rate_pause = clamp_wait(cfg->rate_limit_pause);
  s->on_leftover = cfg->on_leftover;
  s->leftover_ud = cfg->leftover_ud;
  s->log = cfg->log;
  s->log_ud = cfg->log_ud;
  s->build = cfg->build;
  s->build_ud = cfg->build_ud;
  s->spool_dir = dup_opt(cfg->spool_dir, &bad);
  if(s->spool_dir && !bad) {
    s->spool = lf_durable_new(s->spool_dir, &cfg->spool);
    s->overflow = lf_durable_new(s->spool_dir, &cfg->spool);
    bad = !s->spool || !s->overflow;
  }
  return bad ? LF_ENOMEM : LF_OK;
}

/* Initialises the mutex and the condition variables over whatever the
   memory held.  Returns nonzero when one could not be made. */
static int sync_init(struct lf_sender *s)
{
  pthread_condattr_t attr;
  int rc;
  if(pthread_condattr_init(&attr))
    return 1;
  rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  if(!rc)
    rc = pthread_mutex_init(&s->lock, NULL);
  if(!rc && pthread_cond_init(&s->work, &attr))
    rc = 2;
  if(!rc && pthread_cond_init(&s->done, &attr))
    rc = 3;
  if(!rc && pthread_cond_init(&s->room, &attr))
    rc = 4;
  pthread_condattr_destroy(&attr);
  if(rc > 3)
    pthread_cond_destroy(&s->done);
  if(rc > 2)
    pthread_cond_destroy(&s->work);
  if(rc > 1)
    pthread_mutex_destroy(&s->lock);
  return rc;
}

static void sync_destroy(struct lf_sender *s)
{
  pthread_cond_destroy(&s->room);
  pthread_cond_destroy(&s->done);
  pthread_cond_destroy(&s->work);
  pthread_mutex_destroy(&s->lock);
}

/* ---------------------------------------------------------------- fork */

/* Takes the mutex of every sender this process owns.  A sender still
   as inherited from a parent is skipped: its mutex is a locked copy,
   and its queues, untouched since, are still whole. */
static void fork_prepare(void)
{
  struct lf_sender *s;
  unsigned long gen;
  int pid;
  pthread_mutex_lock(&fork_lock);
  gen = __atomic_load_n(&fork_gen, __ATOMIC_ACQUIRE);
  pid = (int)getpid();
  for(s = registry; s; s = s->next) {
    s->fork_locked = __atomic_load_n(&s->gen, __ATOMIC_RELAXED) == gen &&
                     __atomic_load_n(&s->pid, __ATOMIC_RELAXED) == pid;
    if(s->fork_locked)
      pthread_mutex_lock(&s->lock);
  }
}

static void fork_parent(void)
{
  struct lf_sender *s;
  for(s = registry; s; s = s->next) {
    if(s->fork_locked)
      pthread_mutex_unlock(&s->lock);
  }
  pthread_mutex_unlock(&fork_lock);
}

/* In the child the senders' mutexes stay as inherited (locked): each
   sender gets fresh ones when it is first used there. */
static void fork_child(void)
{
  __atomic_add_fetch(&fork_gen, 1, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&fork_lock);
}

static void fork_setup(void)
{
  (void)pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* Makes the sender this process's own (fork_lock held).  whole says the
   inherited queues were copied whole (the atfork handlers ran), so they
   can be walked and freed; otherwise they are let go unread. */
static void reset_for_child(struct lf_sender *s, int whole)
{
  int i;
  (void)sync_init(s);
  if(s->state == ST_RUNNING)
    s->state = ST_IDLE;
  else if(s->state == ST_CLOSING)
    s->state = ST_CLOSED;
  s->stop = 0;
  s->idle = 0;
  s->flush_waiters = 0;
  s->room_waiters = 0;
  for(i = 0; i < ROUTES; i++) {
    struct qitem *all = queue_take_all(&s->routes[i].q);
    if(whole)
      free_chain(all);
  }
  if(whole) {
    free_chain(s->inflight);
    free_chain(s->rp_head);
  }
  s->inflight = NULL;
  s->rp_head = NULL;
  s->rp_claim = NULL;     /* the parent's spool, closed in the child */
  s->backlog = s->spool != NULL;
  s->spool_dirty = 0;
  s->overflow_dirty = 0;
  s->orphans = 0;
  s->replay_due = 0;
  s->replay_wait = 0;
  s->rescan_due = 0;
  s->release_due = 0;
  s->inflight_n = 0;
  s->busy_seq = 0;
  /* messages lf_upload left in a batch in flight are abandoned: the
     parent's thread may have been writing them */
  memset(s->items, 0, s->flush_at * sizeof(*s->items));
  s->held_events = 0;
  s->held_bytes = 0;
  s->seq = 0;
  s->send_seq = 0;
  s->due = 0;
  s->paused_until = 0;
  s->fail_first = 0;
  __atomic_store_n(&s->fail_n, 0, __ATOMIC_RELAXED);
  memset(&s->st, 0, sizeof(s->st));
  if(s->h && orphan_count < ORPHANS_MAX)
    orphans[orphan_count++] = s->h;
  s->h = NULL;
}

static void after_fork(struct lf_sender *s)
{
  unsigned long gen;
  int pid;
  pthread_mutex_lock(&fork_lock);
  gen = __atomic_load_n(&fork_gen, __ATOMIC_ACQUIRE);
  pid = (int)getpid();
  if(__atomic_load_n(&s->gen, __ATOMIC_RELAXED) != gen)
    reset_for_child(s, 1);
  else if(__atomic_load_n(&s->pid, __ATOMIC_RELAXED) != pid)
    reset_for_child(s, 0);
  __atomic_store_n(&s->pid, pid, __ATOMIC_RELEASE);
  __atomic_store_n(&s->gen, gen, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&fork_lock);
}

/* Resets the sender when this is a child process.  The fast check reads
   the atfork generation only; full also compares getpid(). */
static void check_fork(struct lf_sender *s, int full)
{
  unsigned long gen = __atomic_load_n(&fork_gen, __ATOMIC_ACQUIRE);
  if(__atomic_load_n(&s->gen, __ATOMIC_ACQUIRE) != gen ||
     (full && __atomic_load_n(&s->pid, __ATOMIC_ACQUIRE) != (int)getpid()))
    after_fork(s);
}

static void registry_add(struct lf_sender *s)
{
  pthread_mutex_lock(&fork_lock);
  s->pid = (int)getpid();
  s->gen = __atomic_load_n(&fork_gen, __ATOMIC_ACQUIRE);
  s->prev = NULL;
  s->next = registry;
  if(registry)
    registry->prev = s;
  registry = s;
  pthread_mutex_unlock(&fork_lock);
}

static void registry_remove(struct lf_sender *s)
{
  pthread_mutex_lock(&fork_lock);
  if(s->prev)
    s->prev->next = s->next;
  else
    registry = s->next;
  if(s->next)
    s->next->prev = s->prev;
  pthread_mutex_unlock(&fork_lock);
}

/* --------------------------------------------------------------- spool */

/* fsyncs the spool handles that took appends since the last sync (no
   lock held).  A failure is logged: the records stay in the files, so
   only a power cut could lose them. */
static void spool_sync(struct lf_sender *s)
{
  char eb[LF_SPOOL_ERRMAX];
  double now = mono_now();
  int dirty;
  if(!s->spool)
    return;
  pthread_mutex_lock(&s->lock);
  dirty = s->spool_dirty;
  if((dirty & SYNC_ACKS) && !(dirty & SYNC_SPOOL) &&
     now < s->ack_sync_due)
    dirty &= ~SYNC_ACKS;                /* not yet */
  if(dirty & (SYNC_SPOOL | SYNC_ACKS))
    s->ack_sync_due = now + ACK_SYNC_INTERVAL;
  s->spool_dirty &= ~dirty;
  pthread_mutex_unlock(&s->lock);
  if((dirty & (SYNC_SPOOL | SYNC_ACKS)) && lf_durable_sync(s->spool, eb))
    sender_log(s, LF_LOG_WARN, "langfuse sender: %s", eb);
  if((dirty & SYNC_OVERFLOW) && lf_durable_sync(s->overflow, eb))
    sender_log(s, LF_LOG_WARN, "langfuse sender: %s", eb);
}

/* Syncs, and gives up the overflow handle's segments when that is due,
   so that a replay can claim them (no lock held). */
static void spool_chores(struct lf_sender *s)
{
  char eb[LF_SPOOL_ERRMAX];
  double now = mono_now();
  int release, give_up;
  pthread_mutex_lock(&s->lock);
  release = s->overflow_dirty && now >= s->release_due;
  if(release) {
    s->overflow_dirty = 0;
    s->release_due = now + RELEASE_INTERVAL;
    s->backlog = 1;
  }
  give_up = s->orphans >= SPOOL_ORPHANS_MAX;
  if(give_up)
    s->orphans = 0;
  pthread_mutex_unlock(&s->lock);
  spool_sync(s);
  if(release && lf_durable_release(s->overflow, eb))
    sender_log(s, LF_LOG_WARN, "langfuse sender: %s", eb);
  if(give_up && lf_durable_release(s->spool, eb))
    sender_log(s, LF_LOG_WARN, "langfuse sender: %s", eb);
}

/* Sets the time of the next replay attempt after one that delivered
   nothing (lock held): backoff_base doubling up to backoff_max. */
static void replay_backoff(struct lf_sender *s, double now)
{
  double lo = s->upload.backoff_base, hi = s->upload.backoff_max;
  if(!(lo > REPLAY_WAIT_MIN))
    lo = REPLAY_WAIT_MIN;
  if(!(hi > lo))
    hi = lo;
  s->replay_wait = s->replay_wait > 0 ? s->replay_wait * 2 : lo;
  if(s->replay_wait > hi)
    s->replay_wait = hi;
  s->replay_due = now + s->replay_wait;
}

/* -------------------------------------------------------------- thread */

/* lf_upload's sleep: waits on work so that stop cuts it short.  Returns
   nonzero (abort the upload) once the sender stops. */
static int sender_sleep(void *ud, double seconds)
{
  struct lf_sender *s = ud;
  double deadline;
  int stop;
  if(seconds > s->waited)
    s->waited = seconds;
  spool_chores(s);
  pthread_mutex_lock(&s->lock);
  deadline = mono_now() + clamp_wait(seconds);
  while(!s->stop && !wait_until(&s->work, &s->lock, deadline))
    ;
  stop = s->stop;
  pthread_mutex_unlock(&s->lock);
  return stop;
}

/* Picks the route to send now (lock held), or returns -1 with *wait set
   to the seconds until something is due (-1: nothing is queued). */
static int next_route(struct lf_sender *s, double now, double *wait)
{
  int i;
  *wait = -1;
  if(!s->routes[0].q.count && !s->routes[1].q.count) {
    s->due = 0;
    return -1;
  }
  if(s->due > 0 && now >= s->due) {
    s->send_seq = s->seq;               /* the interval ran out */
    s->due = 0;
  }
  if(s->due == 0)
    s->due = now + s->flush_interval;
  if(s->paused_until > now) {
    *wait = s->paused_until - now;
    return -1;
  }
  for(i = 1; i <= ROUTES; i++) {
    int r = (s->last_route + i) % ROUTES;
    struct queue *q = &s->routes[r].q;
    if(q->count && (q->count >= s->flush_at ||
                    q->head->seq <= s->send_seq)) {
      s->last_route = r;
      return r;
    }
  }
  *wait = s->due - now;
  return -1;
}

/* Moves up to a request's worth of a route's events into the batch
   (lock held).  Returns how many. */
static size_t take_batch(struct lf_sender *s, int route)
{
  struct queue *q = &s->routes[route].q;
  struct qitem *it = q->head, *last = NULL;
  size_t n = 0, bytes = 0, limit = s->upload.max_batch_bytes;
  size_t most = s->flush_at;
  if(s->upload.max_batch_events && s->upload.max_batch_events < most)
    most = s->upload.max_batch_events;
  while(it && n < most) {
    struct lf_item *x = &s->items[n];
    if(n && limit && bytes + it->len > limit)
      break;
    memset(x, 0, sizeof(*x));
    x->json = it->data;
    x->len = it->len;
    x->id = it->id;
    x->index = n + 1;
    bytes += it->len;
    last = it;
    it = it->next;
    n++;
  }
  s->inflight = q->head;
  s->inflight_n = n;
  q->head = it;
  if(!it)
    q->last = NULL;
  last->next = NULL;
  q->count -= n;
  return n;
}

/* What settling a batch leaves to do once the lock is let go. */
struct settled {
  struct qitem *dispose;  /* to free */
  struct qitem *leftover; /* to hand to on_leftover in order, then free */
  struct qitem **leftover_end;
  size_t delivered;
  size_t failed;
  size_t requeued;
  double pause;           /* > 0: rate limited, paused this long */
  char first_error[LF_SENDER_MESSAGE_MAX];
};

/* Puts a chain back at the head of a queue, order kept (lock held). */
static void requeue(struct queue *q, struct qitem *head, struct qitem *tail,
                    size_t n)
{
  tail->next = q->head;
  if(!q->head)
    q->last = tail;
  q->head = head;
  q->count += n;
}

/* Counts the requests that carried one event (lock held). */
static void count_attempts(struct lf_sender *s, const struct qitem *it,
                           const struct lf_item *x)
{
  if(x->attempts <= 0)
    return;
  s->st.sent++;
  s->st.bytes_sent += (uint64_t)it->len * (uint64_t)x->attempts;
  s->st.retried += (uint64_t)x->attempts - 1;
}

/* A malloc'd dead-letter reason for a failure, or NULL. */
static char *final_reason(int kind, int status, const char *msg)
{
  char text[LF_SENDER_MESSAGE_MAX + 64];
  if(status)
    snprintf(text, sizeof(text), "%s (%d): %s", lf_kind_name(kind),
             status, msg);
  else
    snprintf(text, sizeof(text), "%s: %s", lf_kind_name(kind), msg);
  return lf_strndup(text, strlen(text));
}

/* Books a failed event that is in the spool (lock held): refused for
   good, it goes to the dead-letter file; otherwise it stays in the spool
   for a replay. */
static void settle_spooled(struct lf_sender *s, int route, struct qitem *it,
                           int kind, const struct lf_item *x,
                           const char *msg)
{
  int final = x->outcome == LF_FAILED && lf_durable_is_final(kind);
  if(final) {
    it->fate = FATE_DEAD;
    it->reason = final_reason(kind, x->status, msg);
  } else {
    s->st.spool_kept++;
    s->orphans++;
    s->backlog = 1;
  }
  add_failure(s, route, kind, x->status, x->attempts, !final && x->retryable,
              !final, it->id, strlen(it->id), msg);
}

/* Books one event that leaves: delivered, or failed (lock held). */
static void settle_one(struct lf_sender *s, int route, struct qitem *it,
                       const struct lf_item *x, struct settled *out)
{
  const char *msg = x->message ? x->message : lf_kind_name(x->kind);
  int kind = x->kind, retryable = x->retryable;
  s->held_events--;
  s->held_bytes -= it->len;
  if(x->outcome == LF_DELIVERED) {
    s->st.accepted++;
    out->delivered++;
    it->fate = it->spooled ? FATE_ACK : FATE_NONE;
    it->next = out->dispose;
    out->dispose = it;
    return;
  }
  if(x->outcome != LF_FAILED) {
    kind = LF_KIND_INTERNAL;              /* lf_upload left it undecided */
    retryable = 1;
    msg = "left undecided by the upload";
  }
  s->st.failed++;
  out->failed++;
  if(!out->first_error[0])
    copy_text(out->first_error, sizeof(out->first_error), msg,
              strlen(msg));
  if(it->spooled) {
    settle_spooled(s, route, it, kind, x, msg);
    it->next = out->dispose;
    out->dispose = it;
    return;
  }
  add_failure(s, route, kind, x->status, x->attempts, retryable, 0,
              it->id, strlen(it->id), msg);
  if(retryable && s->on_leftover) {
    it->next = NULL;
    *out->leftover_end = it;
    out->leftover_end = &it->next;
  } else {
    it->next = out->dispose;
    out->dispose = it;
  }
}

/* Books the batch after lf_upload (lock held): delivered and failed
   events leave; rate-limited events, and undecided ones after an abort,
   go back to the head of their queue; counters move; blocked enqueuers
   wake.  Flush waiters wake once the hooks ran (send_batch). */
static void settle(struct lf_sender *s, int route, int result,
                   const struct lf_report *rep, struct settled *out)
{
  struct qitem *it = s->inflight, *back = NULL, *back_tail = NULL;
  uint64_t first = it->seq;
  size_t i, n = s->inflight_n;
  int limited = 0;
  for(i = 0; i < n; i++) {
    struct qitem *next = it->next;
    const struct lf_item *x = &s->items[i];
    int rate = x->outcome == LF_FAILED && x->kind == LF_KIND_RATE_LIMITED;
    count_attempts(s, it, x);
    if(rate || (x->outcome == LF_PENDING &&
                (result == LF_EABORT || result == LF_ENOMEM))) {
      limited |= rate;
      it->next = NULL;
      if(back_tail)
        back_tail->next = it;
      else
        back = it;
      back_tail = it;
      out->requeued++;
    } else {
      settle_one(s, route, it, x, out);
    }
    it = next;
  }
  s->busy_seq = first;
  s->inflight = NULL;
  s->inflight_n = 0;
  if(back)
    requeue(&s->routes[route].q, back, back_tail, out->requeued);
  s->st.requests += (uint64_t)(rep->requests > 0 ? rep->requests : 0);
  if(out->delivered && s->backlog) {
    s->replay_due = 0;                  /* the server answers again */
    s->replay_wait = 0;
  }
  if(limited) {
    double pause = s->waited > s->rate_pause ? s->waited : s->rate_pause;
    if(s->upload.retry_after_max > 0 && pause > s->upload.retry_after_max)
      pause = s->upload.retry_after_max;
    s->paused_until = mono_now() + pause;
    out->pause = pause;
    snprintf(s->st.last_error, sizeof(s->st.last_error),
             "rate limited (429) on %s: paused %.1f s", route_names[route],
             pause);
  } else if(result == LF_ENOMEM) {
    s->paused_until = mono_now() + NOMEM_PAUSE;
    snprintf(s->st.last_error, sizeof(s->st.last_error),
             "out of memory while sending");
  }
  if(s->room_waiters)
    pthread_cond_broadcast(&s->room);
}

/* Logs the outcome of a batch (no lock held). */
static void log_batch(const struct lf_sender *s, int route, int result,
                      const struct lf_report *rep,
                      const struct settled *out)
{
  const char *name = route_names[route];
  if(out->pause > 0)
    sender_log(s, LF_LOG_WARN, "langfuse sender: rate limited on %s, "
               "pausing %.1f s with %zu events kept", name, out->pause,
               out->requeued);
  if(result == LF_ENOMEM)
    sender_log(s, LF_LOG_ERROR, "langfuse sender: out of memory while "
               "sending on %s", name);
  if(out->failed)
    sender_log(s, LF_LOG_WARN, "langfuse sender: %zu events failed on "
               "%s: %s", out->failed, name, out->first_error);
  if(out->delivered)
    sender_log(s, LF_LOG_DEBUG, "langfuse sender: %zu events delivered "
               "on %s in %d requests", out->delivered, name,
               rep->requests);
}

/*
** Dead-letters the spooled events of a settled batch that were refused
** for good, fsyncs the dead letters, then acks those and the delivered
** ones (no lock held).  The acks are not fsynced here: a lost ack only
** sends an event again, so spool_sync does it at most every
** ACK_SYNC_INTERVAL.  Returns how many were dead-lettered; *acked says
** whether anything was acked.
*/
static uint64_t spool_settle(struct lf_sender *s, int route,
                             struct qitem *chain, int *acked)
{
  char eb[LF_SPOOL_ERRMAX];
  struct qitem *it;
  uint64_t dead = 0;
  *acked = 0;
  for(it = chain; it; it = it->next) {
    if(it->fate != FATE_DEAD)
      continue;
    if(lf_durable_dead_letter(s->spool, route, it->id, it->data, it->len,
                              it->reason ? it->reason : "rejected", eb)) {
      sender_log(s, LF_LOG_ERROR, "langfuse sender: %s", eb);
      it->fate = FATE_NONE;     /* not dead-lettered: keep it spooled */
    } else {
      dead++;
    }
  }
  if(dead && lf_durable_sync(s->spool, eb))
    sender_log(s, LF_LOG_WARN, "langfuse sender: %s", eb);
  for(it = chain; it; it = it->next) {
    if(it->fate == FATE_NONE)
      continue;
    *acked = 1;
    if(lf_durable_ack(s->spool, it->ref, eb))
      sender_log(s, LF_LOG_DEBUG, "langfuse sender: %s", eb);
  }
  return dead;
}

/*
** Writes the JSON of the raw events among the n of the batch in flight
** (lock not held: the batch is the thread's own) into s->built, and
** points their items at it.  One the hook cannot write is left with no
** JSON, and lf_upload fails it.  A batch rate-limited back into the
** queue is written again when it next goes.
*/
static void build_raw(struct lf_sender *s, size_t n)
{
  const struct qitem *it = s->inflight;
  size_t i, start;
  int any = 0;
  if(s->built.cap > BUILT_KEEP)
    lf_buf_free(&s->built);
  lf_buf_reset(&s->built);
  for(i = 0; i < n && it; i++, it = it->next) {
    s->built_at[i] = NOT_RAW;
    if(!it->raw)
      continue;
    any = 1;
    start = s->built.len;
    if(s->build && !s->build(s->build_ud, it->data, it->len, &s->built))
      s->built_at[i] = start;
    else
      s->built_at[i] = NOT_BUILT;
    if(s->built_at[i] == NOT_BUILT)
      s->built.len = start;
    s->items[i].len = s->built.len - start;
  }
  for(i = 0; any && i < n; i++) {
    if(s->built_at[i] == NOT_BUILT)
      s->items[i].json = NULL;
    else if(s->built_at[i] != NOT_RAW)
      s->items[i].json = s->built.data + s->built_at[i];
  }
}

/* Sends one batch of a route (lock held on entry and on return; let go
   while uploading and while calling the hooks). */
static void send_batch(struct lf_sender *s, int route)
{
  struct lf_upload_opts opts = s->upload;
  struct lf_report rep;
  struct settled out;
  struct qitem *it;
  size_t n = take_batch(s, route);
  uint64_t dead = 0;
  int result, acked = 0;
  pthread_mutex_unlock(&s->lock);
  build_raw(s, n);
  spool_sync(s);
  opts.sleep = sender_sleep;
  opts.sleep_ud = s;
  s->waited = 0;
  lf_report_init(&rep);
  result = lf_upload(s->h, &s->routes[route].route, s->items, n, &opts,
                     &rep);
  memset(&out, 0, sizeof(out));
  out.leftover_end = &out.leftover;
  pthread_mutex_lock(&s->lock);
  settle(s, route, result, &rep, &out);
  pthread_mutex_unlock(&s->lock);
  lf_items_clear(s->items, n);
  for(it = out.leftover; it; it = it->next)
    s->on_leftover(s->leftover_ud, route, it->data, it->len, it->id);
  if(s->spool)
    dead = spool_settle(s, route, out.dispose, &acked);
  free_chain(out.leftover);
  free_chain(out.dispose);
  log_batch(s, route, result, &rep, &out);
  lf_report_free(&rep);
  pthread_mutex_lock(&s->lock);
  s->st.dead_lettered += dead;
  if(acked)
    s->spool_dirty |= SYNC_ACKS;
  s->busy_seq = 0;
  if(s->flush_waiters)
    pthread_cond_broadcast(&s->done);
}

/* ------------------------------------------------------------- replay */

/* Gives up the "spool" handle's segments, so that the records that left
   memory unacked can be claimed (lock held, let go inside). */
static void release_orphans(struct lf_sender *s)
{
  char eb[LF_SPOOL_ERRMAX];
  s->orphans = 0;
  s->release_waits = 0;
  pthread_mutex_unlock(&s->lock);
  if(lf_durable_release(s->spool, eb))
    sender_log(s, LF_LOG_WARN, "langfuse sender: %s", eb);
  pthread_mutex_lock(&s->lock);
}

/*
** Reads the next chunk to replay (no lock held): up to flush_at records
** and max_batch_bytes, from the claim in progress and then from new
** claims.  Records of a route this sender has no URL for stay in the
** spool, handed out and unacked, so nobody else takes them before this
** process gives the segment up.  Returns the chain, which the caller
** owns; *failed is set when the spool could not be read.
*/
static struct qitem *replay_fill(struct lf_sender *s, int *failed)
{
  struct qitem *head = NULL, **tail = &head;
  struct lf_spool_record rec;
  char eb[LF_SPOOL_ERRMAX];
  size_t n = 0, bytes = 0, skipped = 0;
  size_t limit = s->upload.max_batch_bytes;
  unsigned warned;
  *failed = 0;
  while(n < s->flush_at && (!limit || bytes < limit) && !*failed) {
    struct qitem *it;
    memset(&rec, 0, sizeof(rec));
    if(!s->rp_claim && lf_durable_claim(s->spool, &s->rp_claim, eb))
      *failed = 1;
    else if(!s->rp_claim)
      break;                            /* nothing left to claim */
    else if(lf_durable_next(s->spool, s->rp_claim, &rec, eb))
      *failed = 1;
    if(*failed || !rec.id) {
      lf_durable_claim_done(s->spool, s->rp_claim);
      s->rp_claim = NULL;
      continue;
    }
    if(rec.route < 0 || rec.route >= ROUTES || !s->routes[rec.route].url) {
      skipped++;
      continue;
    }
    it = item_new(rec.data, rec.len, rec.id, rec.id_len);
    if(!it) {
      snprintf(eb, sizeof(eb), "out of memory");
      *failed = 1;
      continue;
    }
    it->ref = rec.ref;
    it->spooled = 1;
    it->route = rec.route;
    *tail = it;
    tail = &it->next;
    n++;
    bytes += rec.len;
  }
  if(*failed)
    sender_log(s, LF_LOG_ERROR, "langfuse sender: replay: %s", eb);
  if(skipped)
    sender_log(s, LF_LOG_WARN, "langfuse sender: replay: %zu records of "
               "a route this client does not send left in the spool",
               skipped);
  warned = lf_durable_warnings(s->spool, eb);
  if(warned)
    sender_log(s, LF_LOG_WARN, "langfuse sender: %s", eb);
  pthread_mutex_lock(&s->lock);
  s->st.replayed += n;
  if(warned)
    add_failure(s, LF_ROUTE_INGESTION, LF_KIND_SPOOL, 0, 0, 0, 0, "", 0,
                eb);
  pthread_mutex_unlock(&s->lock);
  return head;
}

/* Points the batch at the chunk's records of route (the thread owns the
   chunk).  Returns how many. */
static size_t replay_items(struct lf_sender *s, int route)
{
  struct qitem *it;
  size_t n = 0;
  for(it = s->rp_head; it && n < s->flush_at; it = it->next) {
    struct lf_item *x;
    if(it->route != route)
      continue;
    x = &s->items[n];
    memset(x, 0, sizeof(*x));
    x->json = it->data;
    x->len = it->len;
    x->id = it->id;
    x->index = ++n;
    it->fate = FATE_NONE;
  }
  return n;
}

/* Decides each replayed record of route after the upload: ack what was
   delivered, dead-letter what was refused for good, keep the rest.  Sets
   *limited when the server rate limited us. */
static void replay_fates(struct lf_sender *s, int route, size_t n,
                         int *limited)
{
  struct qitem *it;
  size_t i = 0;
  *limited = 0;
  for(it = s->rp_head; it && i < n; it = it->next) {
    const struct lf_item *x;
    if(it->route != route)
      continue;
    x = &s->items[i++];
    if(x->outcome == LF_DELIVERED) {
      it->fate = FATE_ACK;
    } else if(x->outcome == LF_FAILED && lf_durable_is_final(x->kind)) {
      it->fate = FATE_DEAD;
      free(it->reason);
      it->reason = final_reason(x->kind, x->status, x->message ?
                                x->message : lf_kind_name(x->kind));
    } else if(x->outcome == LF_FAILED &&
              x->kind == LF_KIND_RATE_LIMITED) {
      *limited = 1;
    }
  }
}

/* Takes the settled records out of the chunk and books them (lock held).
   Returns the chain of those taken out, for the caller to free. */
static struct qitem *replay_book(struct lf_sender *s, int route, size_t n,
                                 size_t *delivered, size_t *kept)
{
  struct qitem *done = NULL, **pp = &s->rp_head;
  size_t i = 0;
  *delivered = 0;
  *kept = 0;
  while(*pp) {
    struct qitem *it = *pp;
    const struct lf_item *x;
    if(it->route != route || i >= n) {
      pp = &it->next;
      continue;
    }
    x = &s->items[i++];
    if(it->fate == FATE_NONE) {
      if(!(*kept)++)
        snprintf(s->st.last_error, sizeof(s->st.last_error), "replay: "
                 "kept in the spool: %s", x->message ? x->message
                 : lf_kind_name(x->kind));
      pp = &it->next;
      continue;
    }
    if(it->fate == FATE_ACK) {
      s->st.replay_delivered++;
      (*delivered)++;
    } else {
      add_failure(s, route, x->kind, x->status, x->attempts, 0, 0, it->id,
                  strlen(it->id), it->reason ? it->reason : "rejected");
    }
    *pp = it->next;
    it->next = done;
    done = it;
  }
  return done;
}

/* Sends the chunk's records of one route with a single attempt (lock held
   on entry and return; let go while uploading and acking). */
static void replay_route(struct lf_sender *s, int route)
{
  struct lf_upload_opts opts = s->upload;
  struct lf_report rep;
  struct qitem *done;
  size_t n = replay_items(s, route), delivered, kept;
  uint64_t dead;
  double now;
  int result, limited, acked;
  if(!n)
    return;
  pthread_mutex_unlock(&s->lock);
  opts.max_retries = 0;                 /* replay_backoff paces retries */
  opts.sleep = sender_sleep;
  opts.sleep_ud = s;
  s->waited = 0;
  lf_report_init(&rep);
  result = lf_upload(s->h, &s->routes[route].route, s->items, n, &opts,
                     &rep);
  replay_fates(s, route, n, &limited);
  dead = spool_settle(s, route, s->rp_head, &acked);
  pthread_mutex_lock(&s->lock);
  if(acked)
    s->spool_dirty |= SYNC_ACKS;
  now = mono_now();
  done = replay_book(s, route, n, &delivered, &kept);
  s->st.dead_lettered += dead;
  s->st.requests += (uint64_t)(rep.requests > 0 ? rep.requests : 0);
  if(delivered || !kept) {
    s->replay_wait = 0;
    s->replay_due = now;
  } else {
    replay_backoff(s, now);
  }
  if(limited) {
    double pause = s->waited > s->rate_pause ? s->waited : s->rate_pause;
    s->paused_until = now + pause;
  }
  pthread_mutex_unlock(&s->lock);
  if(result == LF_ENOMEM)
    sender_log(s, LF_LOG_ERROR, "langfuse sender: replay: out of memory");
  else if(delivered)
    sender_log(s, LF_LOG_DEBUG, "langfuse sender: replayed %zu events on "
               "%s", delivered, route_names[route]);
  lf_items_clear(s->items, n);
  lf_report_free(&rep);
  free_chain(done);
  pthread_mutex_lock(&s->lock);
}

/* One step of replay (lock held on entry and return, let go inside):
   reads a chunk when none is left, then sends it route by route. */
static void replay_step(struct lf_sender *s)
{
  int failed = 0, r;
  if(s->orphans && !s->held_events)
    release_orphans(s);
  if(!s->rp_head) {
    struct qitem *chain;
    pthread_mutex_unlock(&s->lock);
    chain = replay_fill(s, &failed);
    pthread_mutex_lock(&s->lock);
    if(!chain && !failed && s->orphans && s->held_events &&
       s->release_waits < RELEASE_PATIENCE) {
      s->release_waits++;              /* only our own records are left: */
      s->send_seq = s->seq;            /* empty memory first */
      s->replay_due = mono_now() + RELEASE_PAUSE;
      return;
    }
    if(!chain && !failed && s->orphans) {
      release_orphans(s);
      pthread_mutex_unlock(&s->lock);
      chain = replay_fill(s, &failed);
      pthread_mutex_lock(&s->lock);
    }
    s->rp_head = chain;
  }
  if(!s->rp_head) {
    if(failed)
      replay_backoff(s, mono_now());
    else
      s->backlog = s->orphans > 0 || s->overflow_dirty;
    return;
  }
  for(r = 0; r < ROUTES && !s->stop; r++)
    replay_route(s, r);
}

/* Does one piece of the spool's background work that is due (lock held
   on entry and return, let go inside): sync, give up the overflow
   handle, replay, look for segments of dead processes.  Returns 1 when
   it did something, else 0 with *wait lowered to when something is. */
static int spool_work(struct lf_sender *s, double now, double *wait)
{
  double due, replay_at;
  int sync = (s->spool_dirty & ~SYNC_ACKS) ||
             (s->spool_dirty && now >= s->ack_sync_due);
  if(sync || (s->overflow_dirty && now >= s->release_due)) {
    pthread_mutex_unlock(&s->lock);
    spool_chores(s);
    pthread_mutex_lock(&s->lock);
    return 1;
  }
  if(s->rescan_due == 0)
    s->rescan_due = now + REPLAY_RESCAN;
  if(!s->backlog && now >= s->rescan_due) {
    s->backlog = 1;
    s->rescan_due = now + REPLAY_RESCAN;
  }
  replay_at = s->replay_due > s->paused_until ? s->replay_due
                                              : s->paused_until;
  if(s->backlog && now >= replay_at) {
    replay_step(s);
    return 1;
  }
  due = s->rescan_due;
  if(s->backlog && replay_at < due)
    due = replay_at;
  if(s->overflow_dirty && s->release_due < due)
    due = s->release_due;
  if(s->spool_dirty && s->ack_sync_due < due)
    due = s->ack_sync_due;
  due -= now;
  if(*wait < 0 || due < *wait)
    *wait = due > 0 ? due : 0;
  return 0;
}

/* Lowers the calling thread's priority by THREAD_NICE.  On Linux
   setpriority() on a thread id affects that thread alone; elsewhere it
   would affect the whole process, so it is not done.  A refusal is
   harmless: the thread runs at the process's priority. */
static void lower_priority(void)
{
#ifdef __linux__
  id_t tid = (id_t)syscall(SYS_gettid);
  int nice;
  errno = 0;
  nice = getpriority(PRIO_PROCESS, tid);
  if(nice == -1 && errno)
    return;
  (void)setpriority(PRIO_PROCESS, tid, nice + THREAD_NICE);
#endif
}

static void *sender_main(void *arg)
{
  struct lf_sender *s = arg;
  lower_priority();
  pthread_mutex_lock(&s->lock);
  while(!s->stop) {
    double wait, now = mono_now();
    int route = next_route(s, now, &wait), empty;
    if(route >= 0) {
      send_batch(s, route);
      continue;
    }
    empty = wait < 0;                   /* nothing queued: wake on one */
    if(s->spool && spool_work(s, now, &wait))
      continue;
    s->idle = empty;
    if(wait < 0)
      pthread_cond_wait(&s->work, &s->lock);
    else
      (void)wait_until(&s->work, &s->lock, now + wait);
    s->idle = 0;
  }
  pthread_cond_broadcast(&s->done);
  pthread_mutex_unlock(&s->lock);
  return NULL;
}

/* Starts the thread (lock held), making the HTTP handle first.  The
   thread blocks every signal. */
static int start_thread(struct lf_sender *s)
{
  sigset_t all, old;
  int rc;
  if(!s->h) {
    s->h = lf_http_new(&s->http);
    if(!s->h)
      return LF_ENOMEM;
  }
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = pthread_create(&s->thread, NULL, sender_main, s);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if(rc)
    return LF_EIO;
  s->state = ST_RUNNING;
  s->stop = 0;
  return LF_OK;
}

/* ---------------------------------------------------------- public API */

const char *lf_sender_kind_name(int kind)
{
  switch(kind) {
  case LF_KIND_QUEUE_FULL:
    return "queue_full";
  case LF_KIND_SHUTDOWN:
    return "shutdown";
  case LF_KIND_INTERNAL:
    return "internal";
  case LF_KIND_SPOOL:
    return "spool";
  }
  return lf_kind_name(kind);
}

void lf_sender_config_init(struct lf_sender_config *cfg)
{
  memset(cfg, 0, sizeof(*cfg));
  cfg->http.timeout = LF_SENDER_HTTP_TIMEOUT;
  cfg->ingestion.kind = LF_ROUTE_INGESTION;
  cfg->otlp.kind = LF_ROUTE_OTLP;
  lf_upload_opts_init(&cfg->upload);
  cfg->flush_at = LF_SENDER_FLUSH_AT;
  cfg->flush_interval = LF_SENDER_FLUSH_INTERVAL;
  cfg->max_queue_events = LF_SENDER_MAX_QUEUE_EVENTS;
  cfg->max_queue_bytes = LF_SENDER_MAX_QUEUE_BYTES;
  cfg->full_policy = LF_FULL_DROP_NEWEST;
  cfg->block_timeout = LF_SENDER_BLOCK_TIMEOUT;
  cfg->max_failures = LF_SENDER_MAX_FAILURES;
  cfg->rate_limit_pause = LF_SENDER_RATE_LIMIT_PAUSE;
  lf_spool_opts_init(&cfg->spool);
}

/* Starts the thread of a sender when its spool holds segments, to
   replay them; a spool that cannot be read now is left for later.
   Returns what start_thread gave, LF_OK when it did not run. */
static int replay_at_start(struct lf_sender *s)
{
  struct lf_spool_stats st;
  int result = LF_OK;
  if(lf_durable_stats(s->spool, &st, 0) || !st.segments)
    return LF_OK;
  pthread_mutex_lock(&s->lock);
  s->backlog = 1;
  if(s->state == ST_IDLE && (result = start_thread(s)) != LF_OK)
    sender_log(s, LF_LOG_ERROR, "langfuse sender: the thread could not "
               "start to replay the spool");
  pthread_mutex_unlock(&s->lock);
  return result;
}

int lf_sender_start(struct lf_sender *s)
{
  check_fork(s, 1);
  return s->spool ? replay_at_start(s) : LF_OK;
}

/* The caller owns the result; on failure everything made is freed. */
struct lf_sender *lf_sender_new(const struct lf_sender_config *cfg)
{
  struct lf_sender *s;
  if(!cfg || !cfg->flush_at || !cfg->max_queue_events ||
     !cfg->max_queue_bytes || !cfg->max_failures ||
     !(cfg->flush_interval > 0) ||
     (!cfg->ingestion.url && !cfg->otlp.url))
    return NULL;
  if(cfg->flush_at > (size_t)-1 / sizeof(struct lf_item) ||
     cfg->max_failures > (size_t)-1 / sizeof(struct lf_failure))
    return NULL;
  (void)pthread_once(&fork_once, fork_setup);
  s = calloc(1, sizeof(*s));
  if(!s)
    return NULL;
  if(config_copy(s, cfg))
    goto fail;
  s->items = calloc(s->flush_at, sizeof(*s->items));
  s->built_at = calloc(s->flush_at, sizeof(*s->built_at));
  s->fails = calloc(cfg->max_failures, sizeof(*s->fails));
  s->fail_cap = cfg->max_failures;
  s->last_route = ROUTES - 1;
  lf_buf_init(&s->built, 0);
  if(!s->items || !s->built_at || !s->fails)
    goto fail;
  if(sync_init(s))
    goto fail;
  registry_add(s);
  s->backlog = s->spool != NULL;
  if(s->spool && !cfg->defer_replay)
    (void)replay_at_start(s);
  return s;
fail:
  free(s->items);
  free(s->built_at);
  free(s->fails);
  lf_durable_free(s->spool);
  lf_durable_free(s->overflow);
  config_free(s);
  free(s);
  return NULL;
}

/* Makes room for one more event of len bytes (lock held), waiting under
   the block policy.  Returns LF_OK, LF_ETOOBIG or LF_EABORT. */
static int wait_room(struct lf_sender *s, size_t len)
{
  double deadline = -1;
  while(s->held_events >= s->max_events ||
        len > s->max_bytes - s->held_bytes) {
    int timed;
    if(s->policy != LF_FULL_BLOCK)
      return LF_ETOOBIG;
    if(deadline < 0)
      deadline = mono_now() + s->block_timeout;
    s->room_waiters++;
    timed = wait_until(&s->room, &s->lock, deadline);
    s->room_waiters--;
    if(s->state >= ST_CLOSING)
      return LF_EABORT;
    if(timed && (s->held_events >= s->max_events ||
                 len > s->max_bytes - s->held_bytes))
      return LF_ETOOBIG;
  }
  return LF_OK;
}

/*
** Takes room in memory for one event of len bytes (lock held), waiting
** under the block policy, and starts the thread if need be.  LF_OK with
** *room 1: the room is reserved (held counts it); LF_OK with *room 0:
** there is none, and the policy keeps the event in the spool alone;
** otherwise why the event cannot be taken.
*/
static int reserve(struct lf_sender *s, size_t len, int *room)
{
  int result = LF_ETOOBIG;
  *room = 0;
  if(s->state >= ST_CLOSING)
    return LF_EABORT;
  if(len <= s->max_bytes)
    result = wait_room(s, len);
  if(result == LF_ETOOBIG && s->policy == LF_FULL_SPOOL && s->spool)
    result = LF_OK;
  else if(!result)
    *room = 1;
  if(!result && s->state == ST_IDLE)
    result = start_thread(s);
  if(result)
    return result;
  if(*room) {
    s->held_events++;
    s->held_bytes += len;
  }
  return LF_OK;
}

/* Queues an event whose room is reserved (lock held); the sender owns
   it from here on. */
static void commit(struct lf_sender *s, int route, struct qitem *it)
{
  struct queue *q = &s->routes[route].q;
  it->seq = ++s->seq;
  if(q->last)
    q->last->next = it;
  else
    q->head = it;
  q->last = it;
  q->count++;
  s->st.enqueued++;
  if(s->idle || q->count == s->flush_at) {
    s->idle = 0;
    pthread_cond_signal(&s->work);
  }
}

/* Queues it (lock held), or returns why not; the caller frees it then. */
static int admit(struct lf_sender *s, int route, struct qitem *it)
{
  int room, result = reserve(s, it->len, &room);
  if(!result && !room)
    result = LF_ETOOBIG;                /* no spool to keep it in */
  if(!result)
    commit(s, route, it);
  return result;
}

/*
** Books an event after its append (lock held): queued in the room
** reserved for it, or kept in the spool alone.  why is the spool's
** reason when the append failed, else NULL.  Returns LF_OK (*queued
** says whether the sender took it) or, when the event is lost, why.
*/
static int place(struct lf_sender *s, int route, struct qitem *it,
                 int room, const char *why, int *queued)
{
  char text[LF_SENDER_MESSAGE_MAX + LF_SPOOL_ERRMAX];
  size_t idlen = strlen(it->id);
  *queued = 0;
  if(why)
    s->st.spool_errors++;
  else
    s->st.spooled++;
  if(room && s->state >= ST_CLOSING) {
    s->held_events--;                   /* a shutdown began meanwhile */
    s->held_bytes -= it->len;
    if(why) {
      drop_locked(s, route, LF_EABORT, it->id, idlen);
      return LF_EABORT;
    }
    s->st.spool_only++;
    s->orphans++;
    return LF_OK;
  }
  if(room) {
    it->spooled = !why;
    if(why) {
      snprintf(text, sizeof(text), "not in the spool, kept in memory "
               "only: %s", why);
      add_failure(s, route, LF_KIND_SPOOL, 0, 0, 1, 0, it->id, idlen,
                  text);
    } else {
      s->spool_dirty |= SYNC_SPOOL;
    }
    commit(s, route, it);
    *queued = 1;
    return LF_OK;
  }
  if(why) {
    s->st.dropped++;
    snprintf(text, sizeof(text), "queue full (%zu events, %zu bytes "
             "held) and the spool failed: %s", s->held_events,
             s->held_bytes, why);
    add_failure(s, route, LF_KIND_QUEUE_FULL, 0, 0, 1, 0, it->id, idlen,
                text);
    return LF_ETOOBIG;
  }
  s->st.spool_only++;
  s->spool_dirty |= SYNC_OVERFLOW;
  s->overflow_dirty = 1;
  if(s->idle) {
    s->idle = 0;
    pthread_cond_signal(&s->work);
  }
  return LF_OK;
}

/* enqueue with a spool: reserves room, appends to the handle that fits
   (no lock held), then queues the event or keeps it in the spool alone.
   Takes it over: frees it unless it is queued. */
static int enqueue_spooled(struct lf_sender *s, int route, struct qitem *it)
{
  char eb[LF_SPOOL_ERRMAX];
  int room = 0, queued = 0, appended = 0, result;
  pthread_mutex_lock(&s->lock);
  result = reserve(s, it->len, &room);
  pthread_mutex_unlock(&s->lock);
  if(!result)
    appended = !lf_durable_append(room ? s->spool : s->overflow, route,
                                  it->id, it->data, it->len, &it->ref, eb);
  pthread_mutex_lock(&s->lock);
  if(result)
    drop_locked(s, route, result, it->id, strlen(it->id));
  else
    result = place(s, route, it, room, appended ? NULL : eb, &queued);
  pthread_mutex_unlock(&s->lock);
  if(!queued)
    free(it);
  return result;
}

/* The copy is made before the lock is taken; on any refusal it is freed
   here.  The caller's bytes are never kept. */
/* lf_sender_enqueue and lf_sender_enqueue_raw. */
static int enqueue(struct lf_sender *s, int route, const char *json,
                   size_t len, const char *id, size_t idlen, int raw)
{
  struct qitem *it = NULL;
  int result = LF_EINVAL;
  check_fork(s, 0);
  if(!id)
    idlen = 0;
  if(route >= 0 && route < ROUTES && s->routes[route].url &&
     (!raw || (s->build && !s->spool))) {
    it = item_new(json, len, id, idlen);
    result = it ? LF_OK : LF_ENOMEM;
  }
  if(it)
    it->raw = raw;
  if(it && s->spool) {
    it->route = route;
    return enqueue_spooled(s, route, it);
  }
  pthread_mutex_lock(&s->lock);
  if(it)
    result = admit(s, route, it);
  if(result)
    drop_locked(s, route, result, id, idlen);
  pthread_mutex_unlock(&s->lock);
  if(result)
    free(it);
  return result;
}

int lf_sender_enqueue(struct lf_sender *s, int route,
                      const char *json, size_t len,
                      const char *id, size_t idlen)
{
  return enqueue(s, route, json, len, id, idlen, 0);
}

int lf_sender_enqueue_raw(struct lf_sender *s, int route,
                          const char *raw, size_t len,
                          const char *id, size_t idlen)
{
  return enqueue(s, route, raw, len, id, idlen, 1);
}

/* Whether an event numbered at most target is still held (lock held). */
static int outstanding(const struct lf_sender *s, uint64_t target)
{
  int i;
  if(s->inflight && s->inflight->seq <= target)
    return 1;
  if(s->busy_seq && s->busy_seq <= target)
    return 1;
  for(i = 0; i < ROUTES; i++) {
    const struct qitem *head = s->routes[i].q.head;
    if(head && head->seq <= target)
      return 1;
  }
  return 0;
}

/* Waits (lock held) until no event numbered at most target is held, or
   until deadline.  Returns LF_OK or LF_EABORT. */
static int flush_locked(struct lf_sender *s, uint64_t target,
                        double deadline)
{
  if(!outstanding(s, target))
    return LF_OK;
  if(s->state != ST_RUNNING && s->state != ST_CLOSING)
    return LF_EABORT;
  if(s->send_seq < target)
    s->send_seq = target;
  pthread_cond_signal(&s->work);
  s->flush_waiters++;
  while(outstanding(s, target) && !s->stop &&
        !wait_until(&s->done, &s->lock, deadline))
    ;
  s->flush_waiters--;
  return outstanding(s, target) ? LF_EABORT : LF_OK;
}

int lf_sender_flush(struct lf_sender *s, double timeout)
{
  int result;
  double deadline;
  check_fork(s, 1);
  deadline = mono_now() + clamp_wait(timeout);
  pthread_mutex_lock(&s->lock);
  result = flush_locked(s, s->seq, deadline);
  pthread_mutex_unlock(&s->lock);
  return result;
}

/* Hands every event still held to on_leftover, or records it as a
   failure (lock held on entry, let go and taken again around the
   hook).  The thread has stopped.  Returns how many were left. */
static size_t leftovers(struct lf_sender *s)
{
  struct qitem *chains[ROUTES], *it;
  size_t n = 0;
  int i;
  for(i = 0; i < ROUTES; i++) {
    chains[i] = queue_take_all(&s->routes[i].q);
    for(it = chains[i]; it; it = it->next) {
      n++;
      s->st.undelivered++;
      s->held_events--;
      s->held_bytes -= it->len;
      if(it->spooled)
        s->st.spool_kept++;
      if(it->spooled || !s->on_leftover)
        add_failure(s, i, LF_KIND_SHUTDOWN, 0, 0, 1, it->spooled, it->id,
                    strlen(it->id), "not delivered before shutdown");
    }
  }
  if(!n)
    return 0;
  pthread_mutex_unlock(&s->lock);
  for(i = 0; i < ROUTES; i++) {
    for(it = chains[i]; s->on_leftover && it; it = it->next) {
      if(!it->spooled)
        s->on_leftover(s->leftover_ud, i, it->data, it->len, it->id);
    }
    free_chain(chains[i]);
  }
  pthread_mutex_lock(&s->lock);
  return n;
}

/* Closes the spool after the thread stopped (no lock held): the replay
   chunk is dropped (its records stay unacked) and both handles give up
   their segments, so that another process may replay them. */
static void spool_close(struct lf_sender *s)
{
  struct qitem *chain;
  if(!s->spool)
    return;
  pthread_mutex_lock(&s->lock);
  chain = s->rp_head;
  s->rp_head = NULL;
  pthread_mutex_unlock(&s->lock);
  free_chain(chain);
  lf_durable_claim_done(s->spool, s->rp_claim);
  s->rp_claim = NULL;
  lf_durable_close(s->spool);
  lf_durable_close(s->overflow);
}

int lf_sender_shutdown(struct lf_sender *s, double timeout)
{
  double deadline;
  size_t left;
  check_fork(s, 1);
  deadline = mono_now() + clamp_wait(timeout);
  pthread_mutex_lock(&s->lock);
  if(s->state >= ST_CLOSING) {
    while(s->state != ST_CLOSED)
      pthread_cond_wait(&s->done, &s->lock);
    pthread_mutex_unlock(&s->lock);
    return LF_OK;
  }
  pthread_cond_broadcast(&s->room);
  if(s->state == ST_RUNNING) {
    s->state = ST_CLOSING;
    (void)flush_locked(s, s->seq, deadline);
    s->stop = 1;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    pthread_mutex_lock(&s->lock);
  }
  s->state = ST_CLOSING;
  left = leftovers(s);
  pthread_mutex_unlock(&s->lock);
  spool_close(s);
  pthread_mutex_lock(&s->lock);
  s->state = ST_CLOSED;
  pthread_cond_broadcast(&s->done);
  pthread_cond_broadcast(&s->room);
  pthread_mutex_unlock(&s->lock);
  return left ? LF_EABORT : LF_OK;
}

/* Frees s and everything it owns, after stopping its thread. */
void lf_sender_free(struct lf_sender *s)
{
  int i;
  if(!s)
    return;
  (void)lf_sender_shutdown(s, LF_SENDER_FREE_TIMEOUT);
  registry_remove(s);
  for(i = 0; i < ROUTES; i++)
    free_chain(queue_take_all(&s->routes[i].q));
  if(s->h)
    lf_http_free(s->h);
  lf_items_clear(s->items, s->flush_at);
  free(s->items);
  free(s->built_at);
  lf_buf_free(&s->built);
  free(s->fails);
  lf_durable_free(s->spool);
  lf_durable_free(s->overflow);
  config_free(s);
  sync_destroy(s);
  free(s);
}

size_t lf_sender_drain_failures(struct lf_sender *s,
                                struct lf_failure *out, size_t max)
{
  size_t n = 0;
  /* Called after each recorded event: when nothing failed, no lock and
     no getpid() system call.  A count copied by fork() is at worst
     stale; a nonzero one takes the full path, which resets a child. */
  if(!__atomic_load_n(&s->fail_n, __ATOMIC_RELAXED))
    return 0;
  check_fork(s, 1);
  pthread_mutex_lock(&s->lock);
  while(n < max && s->fail_n) {
    out[n++] = s->fails[s->fail_first];
    s->fail_first = (s->fail_first + 1) % s->fail_cap;
    __atomic_store_n(&s->fail_n, s->fail_n - 1, __ATOMIC_RELAXED);
  }
  pthread_mutex_unlock(&s->lock);
  return n;
}

void lf_sender_stats(struct lf_sender *s, struct lf_sender_stats *st)
{
  struct lf_spool_stats a, b;
  double left;
  check_fork(s, 1);
  pthread_mutex_lock(&s->lock);
  *st = s->st;
  st->queued = s->held_events;
  left = s->paused_until - mono_now();
  st->paused = left > 0 ? left : 0;
  st->backlog = s->backlog || s->rp_head;
  pthread_mutex_unlock(&s->lock);
  if(!s->spool)
    return;
  st->has_spool = 1;
  if(!lf_durable_stats(s->spool, &a, 0)) {
    st->spool_bytes = a.bytes_pending;
    st->spool_segments = a.segments;
    st->spool_corrupt = a.corrupt;
    st->spool_dropped = a.dropped;
  }
  if(!lf_durable_stats(s->overflow, &b, 0))
    st->spool_dropped += b.dropped;
}

/* Asks s to replay now (fork_lock held, s is this process's). */
static void kick(struct lf_sender *s)
{
  pthread_mutex_lock(&s->lock);
  if(s->state < ST_CLOSING) {
    s->backlog = 1;
    s->replay_due = 0;
    s->replay_wait = 0;
    if(s->state == ST_IDLE)
      (void)start_thread(s);
    else
      pthread_cond_signal(&s->work);
  }
  pthread_mutex_unlock(&s->lock);
}

void lf_sender_kick_dir(const char *dir)
{
  struct lf_sender *s;
  unsigned long gen;
  int pid;
  if(!dir)
    return;
  pthread_mutex_lock(&fork_lock);
  gen = __atomic_load_n(&fork_gen, __ATOMIC_ACQUIRE);
  pid = (int)getpid();
  for(s = registry; s; s = s->next) {
    if(s->spool_dir && !strcmp(s->spool_dir, dir) &&
       __atomic_load_n(&s->gen, __ATOMIC_RELAXED) == gen &&
       __atomic_load_n(&s->pid, __ATOMIC_RELAXED) == pid)
      kick(s);
  }
  pthread_mutex_unlock(&fork_lock);
}
