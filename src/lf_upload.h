/*
** lf_upload.h: deliver encoded events to a Langfuse intake route.
**
** The caller hands over an array of items, each one event already
** validated and encoded as JSON.  lf_upload packs them into requests
** within the byte and count limits, POSTs them, retries what can succeed
** on retry, splits on 413, reads per-event results (207) and leaves a
** verdict on every item: delivered, or failed with a kind, a status and
** a message.  It never touches a Lua state, so the background sender can
** call it from its own thread.
*/
#ifndef LF_UPLOAD_H
#define LF_UPLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "lf_buf.h"
#include "lf_http.h"

/* What went wrong, as err.kind names it on the Lua side. */
enum lf_kind {
  LF_KIND_NONE = 0,
  LF_KIND_CONFIG,        /* redirect, TLS, bad URL: fix the configuration */
  LF_KIND_VALIDATION,    /* refused before sending */
  LF_KIND_AUTH,          /* 401 */
  LF_KIND_FORBIDDEN,     /* 403 */
  LF_KIND_NETWORK,       /* connect, reset, DNS */
  LF_KIND_TIMEOUT,       /* no complete answer in time */
  LF_KIND_RATE_LIMITED,  /* 429 after the last retry */
  LF_KIND_SERVER,        /* 5xx after the last retry, or another status */
  LF_KIND_TOO_LARGE,     /* 413 for a single event */
  LF_KIND_REJECTED,      /* per-event 4xx in a 207, or a 400 from OTLP */
  LF_KIND_PARTIAL,       /* several kinds at once (only for a summary) */
  LF_KIND_COUNT
};

/* The err.kind string for a kind ("config", "rate_limited", ...). */
const char *lf_kind_name(int kind);

enum lf_outcome {
  LF_PENDING = 0,
  LF_DELIVERED,
  LF_FAILED
};

/* One event to deliver.  The caller owns json and id; lf_upload only
   reads them.  message is set by lf_upload (malloc'd, caller frees with
   lf_items_clear or free()). */
struct lf_item {
  const char *json;      /* the encoded event, no trailing separator;
                            NULL: it could not be written, and fails */
  size_t len;
  const char *id;        /* envelope id, NUL-terminated; matches 207s */
  size_t index;          /* the caller's 1-based position, for reports */
  int outcome;           /* enum lf_outcome */
  int kind;              /* enum lf_kind when outcome is LF_FAILED */
  int status;            /* HTTP status that decided a failure, or 0 */
  int retryable;         /* 1 when the failure could pass on a later try */
  int attempts;          /* how many requests carried this item */
  char *message;         /* why it failed, or NULL */
};

/* Frees every item's message and sets it to NULL. */
void lf_items_clear(struct lf_item *items, size_t n);

/* How a route frames a request and reads its answer. */
enum lf_route_kind {
  LF_ROUTE_INGESTION,    /* {"batch":[...]} -> 207 per-event results */
  LF_ROUTE_OTLP          /* prefix + spans + suffix -> 200 for all */
};

struct lf_route {
  int kind;              /* enum lf_route_kind */
  const char *url;       /* full URL of the route */
  const char *prefix;    /* body text before the first item */
  const char *suffix;    /* body text after the last item */
  int gzip;              /* compress the body (OTLP only) */
  const char *const *headers; /* extra "Name: value" lines, NULL-ended */
};

/* Sleeps for seconds; returns nonzero to stop waiting and abort the
   upload (the remaining items stay LF_PENDING). */
typedef int (*lf_sleep_fn)(void *ud, double seconds);

struct lf_upload_opts {
  size_t max_batch_bytes;   /* request body limit, framing included */
  size_t max_batch_events;  /* items per request */
  int max_retries;          /* retries after the first attempt */
  double backoff_base;      /* seconds; wait n is U(0, base * 2^n) */
  double backoff_max;       /* seconds; cap on one computed wait */
  double retry_after_max;   /* seconds; cap on an honoured Retry-After */
  lf_sleep_fn sleep;        /* NULL: nanosleep */
  void *sleep_ud;
  uint64_t seed;            /* jitter source; 0 picks one */
};

/* Fills opts with the defaults: 3,500,000 bytes and 500 events per
   request, 3 retries, backoff base 1 s and cap 30 s, Retry-After
   honoured up to 60 s, nanosleep, a random seed.  A byte or event
   limit of 0 means no limit. */
void lf_upload_opts_init(struct lf_upload_opts *opts);

/* What the requests as a whole did, for the error object. */
struct lf_report {
  int requests;          /* HTTP requests made */
  int attempts;          /* rounds for the item that took the most */
  int last_status;       /* status of the last answer, 0 when none */
  char *last_body;       /* bounded, secret-redacted text, or NULL */
  char *message;         /* summary of the last failure, or NULL */
  size_t delivered;
  size_t failed;
  size_t pending;        /* left undecided by an abort */
  double waited;         /* seconds spent in backoff */
};

void lf_report_init(struct lf_report *rep);
void lf_report_free(struct lf_report *rep);

/*
** Uploads n items over route through h.  On return every item is
** LF_DELIVERED or LF_FAILED, except after an abort from opts->sleep,
** which leaves the undecided ones LF_PENDING.  Returns LF_OK when it
** ran to the end (whatever the items' fate), LF_EABORT after an abort,
** LF_ENOMEM when memory ran out, LF_EINVAL for a NULL h, route or rep.
** Every item's result fields are reset first (its message freed), so
** message must be NULL or from an earlier lf_upload.  A pending item
** that failed an attempt keeps that attempt's kind, status and message.
** opts may be NULL for the defaults.
*/
int lf_upload(struct lf_http *h, const struct lf_route *route,
              struct lf_item *items, size_t n,
              const struct lf_upload_opts *opts,
              struct lf_report *rep) LF_WARN_UNUSED;

#endif
