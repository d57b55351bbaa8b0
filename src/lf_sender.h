/*
** lf_sender.h: the background sender.
**
** A struct lf_sender owns one thread, one HTTP handle and two bounded
** queues, one per route (ingestion for scores and events, OTLP for
** spans).  Callers hand it encoded events with lf_sender_enqueue, which
** copies the bytes and returns at once; the thread batches them and
** delivers them with lf_upload, so a caller never waits for the network.
** Nothing here touches a Lua state: results come back as counters
** (lf_sender_stats) and as a bounded failure list that the caller's
** thread drains (lf_sender_drain_failures).
**
** Threads.  Every public function may be called from any thread of the
** owning process, except that no other thread may use a sender during
** or after lf_sender_free.  The sender thread starts on the first
** enqueue and stops in lf_sender_shutdown or lf_sender_free.  It blocks
** every signal, so a host's signals (nginx's) go to the host's threads.
** It sends one request at a time, so a wait inside lf_upload (backoff,
** Retry-After) holds back both routes.
**
** Fork.  A sender made before fork() works in the child: the first call
** there sees the new process, gives the sender fresh locks, forgets the
** parent's thread, drops the parent's queued events (the parent sends
** them) and its counters and failures, and starts its own thread on the
** next enqueue.  The parent's HTTP handle is abandoned, not cleaned up,
** because cleanup could write to a socket or TLS session the parent
** still uses: a small leak, once per sender per fork.  The child is
** seen through a pthread_atfork handler (and, outside lf_sender_enqueue,
** also through getpid()), so a process made by a raw clone() that skips
** the atfork handlers is only noticed by the calls that check getpid().
**
** Delivery is at least once: an event whose request timed out may have
** been stored by the server and is sent again.  Event ids make the
** repeats harmless.
**
** Spool.  With cfg->spool_dir the sender keeps a durable spool
** (lf_spool.h, through lf_durable.h) as a write-ahead log.  Enqueue
** appends the event to the spool on the caller's thread (one write;
** under fsync "always" also an fsync) before it returns, and the event
** is acked in the spool only once the server took it, or once a final
** rejection is in the dead-letter file with its reason.  An event that
** cannot be delivered now (the server unreachable, retries used up, a
** failure that needs a change of configuration, shutdown before it went
** out, or no room in memory under LF_FULL_SPOOL) leaves memory and stays
** in the spool.  The thread replays the spool, one chunk of records at a
** time, when a client starts on a spool that holds segments, when the
** server answers again after failures, after lf_sender_kick, and every
** REPLAY_RESCAN seconds (segments of processes that died), sending each
** record with its own id and route.  Under fsync "batch" the thread
** fsyncs before each request and before it waits, so a kill loses
** nothing that enqueue took, and a power cut at most what came in since
** the last sync.  Several processes may share one spool directory: each
** replays only segments nobody else holds (lf_spool.h).
**
** Memory with a spool is the queue's bound plus one replay chunk
** (flush_at records, within max_batch_bytes) plus the spool's per-record
** offsets of the segments it holds (8 bytes a record).
*/
#ifndef LF_SENDER_H
#define LF_SENDER_H

#include <stddef.h>
#include <stdint.h>

#include "lf_buf.h"
#include "lf_http.h"
#include "lf_spool.h"
#include "lf_upload.h"

/* Events per request and the queue length that wakes the thread: the
   OpenTelemetry batch processors' export size. */
#define LF_SENDER_FLUSH_AT 512
/* Seconds an event may wait for companions before it is sent. */
#define LF_SENDER_FLUSH_INTERVAL 1.0
/* Events held at once (queued or in a request): bounds memory when the
   server is away. */
#define LF_SENDER_MAX_QUEUE_EVENTS 10000
/* Bytes of event JSON held at once, for the same reason. */
#define LF_SENDER_MAX_QUEUE_BYTES (64 * 1024 * 1024)
/* Seconds the block policy waits for room before it drops. */
#define LF_SENDER_BLOCK_TIMEOUT 0.5
/* Failures kept until drained; past it they are only counted. */
#define LF_SENDER_MAX_FAILURES 256
/* Seconds the whole sender pauses after a request ends rate limited,
   when lf_upload waited less than that before giving up. */
#define LF_SENDER_RATE_LIMIT_PAUSE 5.0
/* Seconds for one HTTP request when the configuration says 0: it also
   bounds how long shutdown waits for a request in flight. */
#define LF_SENDER_HTTP_TIMEOUT 10.0
/* Seconds lf_sender_free lets a running sender flush: it may run inside
   a garbage collector, so it must be short. */
#define LF_SENDER_FREE_TIMEOUT 0.5
/* Bytes of an event id kept in a failure record (ids are UUIDs). */
#define LF_SENDER_ID_MAX 128
/* Bytes of a failure message or last_error kept, NUL included. */
#define LF_SENDER_MESSAGE_MAX 256

/* What to do with an event when the queue is full. */
enum lf_full_policy {
  LF_FULL_DROP_NEWEST = 0,  /* refuse it at once */
  LF_FULL_BLOCK,            /* wait up to block_timeout, then refuse it;
                               never use it on an event-loop thread */
  LF_FULL_SPOOL             /* keep it in the spool only, to be replayed;
                               without a spool it acts as drop newest */
};

/* Failure kinds the sender adds after enum lf_kind's. */
enum lf_sender_kind {
  LF_KIND_QUEUE_FULL = LF_KIND_COUNT, /* refused by enqueue: no room */
  LF_KIND_SHUTDOWN,        /* refused or left over: the sender stopped */
  LF_KIND_INTERNAL,        /* out of memory, or no thread could start */
  LF_KIND_SPOOL,           /* the spool could not take the event (disk
                              full, read-only, spool full): it is only
                              in memory; or, with an empty id, a damaged
                              record the replay skipped */
  LF_SENDER_KIND_END
};

/* Levels of the log hook. */
enum lf_log_level {
  LF_LOG_ERROR = 0,
  LF_LOG_WARN,
  LF_LOG_INFO,
  LF_LOG_DEBUG
};

/* Called with each event the sender gives back instead of delivering:
   route is enum lf_route_kind, json is len bytes (NUL-terminated), id is
   the event id.  The bytes are valid only during the call. */
typedef void (*lf_leftover_fn)(void *ud, int route, const char *json,
                               size_t len, const char *id);

/* Called with a message the host may log; never with a secret. */
typedef void (*lf_log_fn)(void *ud, int level, const char *message);

/* Appends to out the JSON of an event queued raw (lf_sender_enqueue_raw)
   from the len bytes the caller queued.  Runs on the sender thread only,
   with no lock held.  Returns LF_OK, or LF_ENOMEM (out is then cut back
   by the sender, and the event fails). */
typedef int (*lf_build_fn)(void *ud, const char *raw, size_t len,
                           struct lf_buf *out);

struct lf_sender_config {
  struct lf_http_config http;  /* timeout 0: LF_SENDER_HTTP_TIMEOUT */
  struct lf_route ingestion;   /* url NULL: the route is off */
  struct lf_route otlp;        /* prefix: resource and scope JSON text */
  struct lf_upload_opts upload; /* sleep and sleep_ud are the sender's */
  size_t flush_at;             /* events per request; wakes the thread */
  double flush_interval;       /* seconds an event waits at most */
  size_t max_queue_events;
  size_t max_queue_bytes;
  int full_policy;             /* enum lf_full_policy */
  double block_timeout;        /* seconds, for LF_FULL_BLOCK */
  size_t max_failures;         /* failure list length */
  double rate_limit_pause;     /* seconds, see LF_SENDER_RATE_LIMIT_PAUSE */
  /* Gets each event left over at shutdown and each one that failed with
     a retryable kind, so a spool can keep them.  It runs on the sender
     thread (retryable failures) or on the thread that shuts down, never
     with a lock held, and it must not call back into this sender.
     NULL: such events are only counted and listed as failures. */
  lf_leftover_fn on_leftover;
  void *leftover_ud;
  /* Runs on the sender thread only, so it must be thread-safe; it must
     not touch a Lua state.  NULL: no logging. */
  lf_log_fn log;
  void *log_ud;
  /* Writes the events queued raw; NULL: lf_sender_enqueue_raw refuses
     every event. */
  lf_build_fn build;
  void *build_ud;
  /* The durable spool: a directory (copied), NULL for none, and its
     options (the log hook there is ignored). */
  const char *spool_dir;
  struct lf_spool_opts spool;
  /* 1: a spool that holds events is not replayed when the sender is
     made, but from the first event or lf_sender_start, so that making
     it starts no thread (in a process about to fork, as nginx's
     master). */
  int defer_replay;
};

/* One event that left without being delivered. */
struct lf_failure {
  int route;              /* enum lf_route_kind */
  int kind;               /* enum lf_kind or enum lf_sender_kind */
  int status;             /* HTTP status that decided it, or 0 */
  int attempts;           /* requests that carried it */
  int retryable;          /* 1 when a later try could pass */
  int spooled;            /* 1 when the event stays in the spool, to be
                             replayed */
  char id[LF_SENDER_ID_MAX];           /* event id, maybe cut short */
  char message[LF_SENDER_MESSAGE_MAX]; /* why, maybe cut short */
};

/* Counters since the sender was made (or since fork, in a child).
   Every enqueued event ends up counted once in accepted, failed,
   undelivered or queued; dropped counts the ones enqueue refused, and
   spool_only the ones it kept in the spool alone.  With a spool, failed
   and undelivered include spool_kept, the events left in the spool. */
struct lf_sender_stats {
  size_t queued;          /* held now: waiting or in a request */
  uint64_t enqueued;      /* accepted by lf_sender_enqueue */
  uint64_t sent;          /* carried by a request, once per upload
                             (again after a rate-limit requeue) */
  uint64_t accepted;      /* delivered */
  uint64_t retried;       /* extra attempts, summed over events */
  uint64_t failed;        /* decided as failed by lf_upload */
  uint64_t dropped;       /* refused by lf_sender_enqueue */
  uint64_t undelivered;   /* still held when the sender stopped */
  uint64_t bytes_sent;    /* event JSON bytes times attempts */
  uint64_t requests;      /* HTTP requests made */
  uint64_t failures_lost; /* failures that did not fit in the list */
  double paused;          /* seconds left in a rate-limit pause */
  char last_error[LF_SENDER_MESSAGE_MAX]; /* "" when none */
  /* The spool, all 0 without one. */
  int has_spool;          /* 1 when the sender has a spool */
  uint64_t spooled;       /* appended by enqueue */
  uint64_t spool_only;    /* kept in the spool alone: no room in memory */
  uint64_t spool_errors;  /* appends the spool refused or failed */
  uint64_t spool_kept;    /* failed or left over, kept in the spool */
  uint64_t replayed;      /* records read back from the spool */
  uint64_t replay_delivered; /* of those, delivered */
  uint64_t dead_lettered; /* refused for good, in the dead-letter file */
  uint64_t spool_bytes;   /* segment and ack bytes in the directory */
  uint64_t spool_segments; /* segment files in the directory */
  uint64_t spool_corrupt; /* damaged regions found by this process */
  uint64_t spool_dropped; /* records deleted by drop_oldest */
  int backlog;            /* 1 while a replay is wanted */
};

/* The name of a kind, for enum lf_kind and enum lf_sender_kind alike
   ("queue_full", "shutdown", "internal", then lf_kind_name's). */
const char *lf_sender_kind_name(int kind);

/* Fills cfg with the defaults above and lf_upload_opts_init's; the
   pointers (keys, URLs, hooks) are left NULL. */
void lf_sender_config_init(struct lf_sender_config *cfg);

/*
** Returns a new sender the caller owns (free with lf_sender_free), or
** NULL when out of memory or when cfg has no route or a zero limit.
** Every string and header list in cfg is copied: cfg may be freed after
** the call.  No thread starts and no connection opens until the first
** enqueue, except with a spool that already holds segments: then the
** thread starts at once, to replay them.
*/
struct lf_sender *lf_sender_new(const struct lf_sender_config *cfg);

/*
** Queues one event for route (enum lf_route_kind).  json (len bytes)
** and id (idlen bytes; NULL for none) are copied into one allocation
** that the sender owns from then on; the caller keeps its own bytes.
** The fast path takes a mutex, and wakes the thread only when the queue
** reaches flush_at or the thread sleeps idle.
** With a spool the event is appended to it first (see Spool above); a
** failed append is listed as a failure of kind LF_KIND_SPOOL and the
** event is queued all the same.
** Returns LF_OK when queued, or kept in the spool (LF_FULL_SPOOL, or a
** shutdown that began meanwhile).  Any other result means the event was
** dropped, counted in dropped and listed as a failure:
**   LF_ETOOBIG  the queue is full (after block_timeout under
**               LF_FULL_BLOCK), or the event alone exceeds
**               max_queue_bytes;
**   LF_EABORT   the sender is shutting down or stopped;
**   LF_EINVAL   route is unknown or has no URL;
**   LF_ENOMEM   no memory for the copy or the HTTP handle;
**   LF_EIO      the thread could not be started.
*/
int lf_sender_enqueue(struct lf_sender *s, int route,
                      const char *json, size_t len,
                      const char *id, size_t idlen);

/*
** lf_sender_enqueue for bytes that are not yet the event's JSON: the
** sender thread turns them into it with the build hook, just before the
** event's first request, so that the caller's thread only copies them.
** The queue's byte bound counts the raw bytes.  LF_EINVAL (the event
** dropped) when there is no build hook or there is a spool: a spool
** keeps only JSON that can be replayed.
*/
int lf_sender_enqueue_raw(struct lf_sender *s, int route,
                          const char *raw, size_t len,
                          const char *id, size_t idlen);

/*
** Waits until every event enqueued before the call is delivered or has
** failed (and, when retryable, has been through on_leftover); events
** enqueued meanwhile do not extend the wait.  It sends
** what is queued without waiting for flush_at or flush_interval, but
** respects a rate-limit pause.  Returns LF_OK, or LF_EABORT when timeout
** seconds passed first (the events stay queued and are sent later).
** timeout <= 0 only checks.
*/
int lf_sender_flush(struct lf_sender *s, double timeout);

/*
** Refuses new events, flushes for up to timeout seconds, then stops the
** thread, interrupting a backoff or rate-limit wait, and joins it.  A
** request in flight cannot be interrupted: the join waits for it, at
** most the HTTP timeout, so the call returns within timeout plus
** http.timeout (plus one http.timeout per further request when the
** server makes lf_upload split that batch, on 413 or a whole-batch 400,
** without a wait between requests).  Events still held are counted in
** undelivered and handed to on_leftover (with none, they are listed as
** failures of kind LF_KIND_SHUTDOWN); with a spool, those in it stay
** there instead (listed with spooled set), and the spool is closed, so
** another process may replay them.  Returns LF_OK when everything was
** delivered or failed, LF_EABORT when events were left over.
** Calling it again does nothing and returns LF_OK.
*/
int lf_sender_shutdown(struct lf_sender *s, double timeout);

/*
** Shuts the sender down with LF_SENDER_FREE_TIMEOUT if it still runs,
** joins its thread and frees everything; s is invalid afterwards.
** Bounded like lf_sender_shutdown, so a garbage collector may call it.
** NULL is accepted.
*/
void lf_sender_free(struct lf_sender *s);

/* Makes s this process's (after a fork) and, when its spool holds
   events, starts the thread to replay them; the sender of a process
   that records nothing otherwise never sends them.  LF_OK, or
   LF_ENOMEM or LF_EIO when the thread could not start. */
int lf_sender_start(struct lf_sender *s);

/* Asks the thread of every sender of this process whose spool is dir
   to replay now (starting it if need be): for a synchronous upload that
   left events in that spool. */
void lf_sender_kick_dir(const char *dir);

/* Copies up to max failures, oldest first, into out and removes them
   from the list.  Returns how many were copied. */
size_t lf_sender_drain_failures(struct lf_sender *s,
                                struct lf_failure *out, size_t max);

/* Fills st with the counters now; with a spool, also reads the spool's
   own counters (the spool is opened if need be). */
void lf_sender_stats(struct lf_sender *s, struct lf_sender_stats *st);

#endif
