/*
** lf_upload.c: deliver encoded events to a Langfuse intake route.
**
** Items go out in rounds.  A round packs the undecided items, in order,
** into requests within the byte and count limits and sends them one
** after the other.  Each answer decides some items and leaves others for
** the next round; between rounds the sender waits, for the server's
** Retry-After when an answer carried one, else for a full-jitter
** backoff.  A 413 halves its request at once, without waiting, and so
** does a whole-request 400 from the ingestion route, within a budget, to
** isolate the event it refuses.  An answer that says the configuration
** is wrong (401, 403, 404, 405, a redirect, a TLS failure, a bad URL)
** ends the upload: every undecided item fails with that verdict.
**
** Caveats: items of one round that were left undecided travel together
** in the next round (they are not sent one per request).  A timeout or a
** cut answer after the server took a request makes its items go again:
** delivery is at least once.  The ingestion route dedupes by envelope
** id; a v4 server may store such OTLP spans twice.  A 2xx status line
** counts as delivery even when the rest of the answer never arrives.
*/
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "lf_jread.h"
#include "lf_resp.h"
#include "lf_upload.h"

/* Request body limit: the ingestion route documents 3.5 MB and refuses
   past 4.5 MB; Langfuse Cloud takes 5 MB on OTLP. */
#define DEFAULT_BATCH_BYTES (3500 * 1000)
/* Events per request: a 207 for this many stays well inside the
   response bytes the HTTP layer keeps. */
#define DEFAULT_BATCH_EVENTS 500
/* Retries after the first attempt: four tries in all, as advised. */
#define DEFAULT_RETRIES 3
/* Full-jitter backoff window of the first retry, doubling after. */
#define DEFAULT_BACKOFF_BASE 1.0
/* Largest backoff window: a retry never waits longer than this. */
#define DEFAULT_BACKOFF_MAX 30.0
/* The longest Retry-After honoured in one wait. */
#define DEFAULT_RETRY_AFTER_MAX 60.0
/* Bytes of the last answer kept in the report. */
#define REPORT_BODY_MAX 2048
/* Bytes of an answer quoted in a message. */
#define QUOTE_MAX 300
/* Requests a whole-request 400 may spend halving to find the event the
   server refuses; past it the rest of the request fails as is. */
#define BISECT_BUDGET 64
/* 2^53: turns the top 53 bits of a random number into [0, 1). */
#define TWO_POW_53 9007199254740992.0
/* Words a v4 server in events-only mode puts on trace events. */
#define EVENTS_ONLY_TEXT "Event type not accepted"

struct upload {
  struct lf_http *h;
  const struct lf_route *route;
  struct lf_item *items;
  size_t n;
  const struct lf_upload_opts *opts;
  struct lf_report *rep;
  size_t framing;           /* prefix and suffix bytes */
  struct lf_buf body;       /* the request being sent */
  struct lf_response resp;  /* its answer */
  struct lf_buf msg;        /* the message being composed */
  struct lf_buf msg2;       /* a message built around msg */
  struct lf_buf quote;      /* words of the server, for msg */
  size_t *cur;              /* items of this round */
  size_t *next;             /* items left for the next round */
  size_t nnext;
  int *fails;               /* failed attempts per item */
  double retry_after;       /* longest Retry-After this round, or -1 */
  int stopped;              /* a verdict for every undecided item */
  int stop_kind;
  int stop_status;
  char *stop_msg;
  int bisect_left;
  int nomem;                /* a message could not be kept */
  uint64_t rng;
};

const char *lf_kind_name(int kind)
{
  static const char *const names[LF_KIND_COUNT] = {
    "none", "config", "validation", "auth", "forbidden", "network",
    "timeout", "rate_limited", "server", "too_large", "rejected",
    "partial"
  };
  return kind >= 0 && kind < LF_KIND_COUNT ? names[kind] : "unknown";
}

/* Frees the messages lf_upload left on the items. */
void lf_items_clear(struct lf_item *items, size_t n)
{
  size_t i;
  for(i = 0; i < n; i++) {
    free(items[i].message);
    items[i].message = NULL;
  }
}

void lf_upload_opts_init(struct lf_upload_opts *opts)
{
  opts->max_batch_bytes = DEFAULT_BATCH_BYTES;
  opts->max_batch_events = DEFAULT_BATCH_EVENTS;
  opts->max_retries = DEFAULT_RETRIES;
  opts->backoff_base = DEFAULT_BACKOFF_BASE;
  opts->backoff_max = DEFAULT_BACKOFF_MAX;
  opts->retry_after_max = DEFAULT_RETRY_AFTER_MAX;
  opts->sleep = NULL;
  opts->sleep_ud = NULL;
  opts->seed = 0;
}

void lf_report_init(struct lf_report *rep)
{
  memset(rep, 0, sizeof(*rep));
}

/* Frees the texts the report owns and leaves it empty. */
void lf_report_free(struct lf_report *rep)
{
  free(rep->last_body);
  free(rep->message);
  lf_report_init(rep);
}

/* Cuts b to at most max bytes, not inside a UTF-8 sequence. */
static void cut_utf8(struct lf_buf *b, size_t max)
{
  size_t n = b->len;
  if(n <= max)
    return;
  n = max;
  while(n > 0 && ((unsigned char)b->data[n] & 0xC0) == 0x80)
    n--;
  b->len = n;
  b->data[n] = '\0';
}

/* Replaces control bytes with spaces, so a message is one line. */
static void one_line(struct lf_buf *b)
{
  size_t i;
  for(i = 0; i < b->len; i++)
    if((unsigned char)b->data[i] < 0x20 || b->data[i] == 0x7F)
      b->data[i] = ' ';
}

/* Formats into b (emptied first), redacted and on one line; returns its
   text, or a fixed text when out of memory. */
static const char *compose(struct upload *u, struct lf_buf *b,
                           const char *fmt, ...) LF_PRINTF(3, 4);
static const char *compose(struct upload *u, struct lf_buf *b,
                           const char *fmt, ...)
{
  va_list ap;
  int n;
  lf_buf_reset(b);
  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if(n < 0 || lf_buf_reserve(b, (size_t)n)) {
    u->nomem = 1;
    return "out of memory while describing a failure";
  }
  va_start(ap, fmt);
  vsnprintf(b->data, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len = (size_t)n;
  lf_http_redact(u->h, b);
  one_line(b);
  return b->data;
}

/* ": <what the server said>" for a message, or "" when it said
   nothing; a JSON error body gives its message, else the raw text. */
static const char *said(struct upload *u, int raw)
{
  struct lf_buf *q = &u->quote;
  const struct lf_buf *body = &u->resp.body;
  int result;
  lf_buf_reset(q);
  result = lf_buf_adds(q, ": ");
  if(!result && (raw || lf_resp_error_text(body->data, body->len, q)))
    result = lf_buf_add(q, body->data, body->len < QUOTE_MAX + 4 ?
                                       body->len : QUOTE_MAX + 4);
  if(result || q->len == 2)
    return "";
  cut_utf8(q, QUOTE_MAX);
  one_line(q);
  return q->data;
}

/* Replaces *dst with a copy of text (NULL when out of memory). */
static void keep_text(struct upload *u, char **dst, const char *text)
{
  free(*dst);
  *dst = lf_strndup(text, strlen(text));
  if(!*dst)
    u->nomem = 1;
}

static void deliver(struct lf_item *it)
{
  it->outcome = LF_DELIVERED;
  it->kind = LF_KIND_NONE;
  it->status = 0;
  it->retryable = 0;
  free(it->message);
  it->message = NULL;
}

static void fail(struct upload *u, struct lf_item *it, int kind,
                 int status, int retryable, const char *msg)
{
  it->outcome = LF_FAILED;
  it->kind = kind;
  it->status = status;
  it->retryable = retryable;
  keep_text(u, &it->message, msg);
}

static void fail_all(struct upload *u, const size_t *idx, size_t count,
                     int kind, int status, int retryable, const char *msg)
{
  size_t i;
  for(i = 0; i < count; i++)
    fail(u, &u->items[idx[i]], kind, status, retryable, msg);
  keep_text(u, &u->rep->message, msg);
}

/* Counts a failed attempt for item i: it goes again next round, or
   fails for good once the retries are spent. */
static void retry(struct upload *u, size_t i, int kind, int status,
                  const char *msg)
{
  struct lf_item *it = &u->items[i];
  int spent = ++u->fails[i] > u->opts->max_retries;
  it->kind = kind;
  it->status = status;
  it->retryable = 1;
  if(spent) {
    msg = compose(u, &u->msg2, "%s (gave up after %d attempts)", msg,
                  it->attempts);
    fail(u, it, kind, status, 1, msg);
  } else {
    keep_text(u, &it->message, msg);
    u->next[u->nnext++] = i;
  }
  keep_text(u, &u->rep->message, msg);
}

static void retry_all(struct upload *u, const size_t *idx, size_t count,
                      int kind, int status, const char *msg)
{
  size_t i;
  if(u->resp.retry_after > u->retry_after)
    u->retry_after = u->resp.retry_after;
  for(i = 0; i < count; i++)
    retry(u, idx[i], kind, status, msg);
}

/* Ends the upload: this request's items fail now, every other
   undecided item when the round ends. */
static void stop(struct upload *u, const size_t *idx, size_t count,
                 int kind, int status, const char *msg)
{
  u->stopped = 1;
  u->stop_kind = kind;
  u->stop_status = status;
  keep_text(u, &u->stop_msg, msg);
  fail_all(u, idx, count, kind, status, 1, msg);
}

static int send_range(struct upload *u, const size_t *idx, size_t count);

/* Sends each half of a request on its own. */
static int halve(struct upload *u, const size_t *idx, size_t count)
{
  size_t left = count / 2;
  int result = send_range(u, idx, left);
  if(!result && !u->stopped)
    result = send_range(u, idx + left, count - left);
  return result;
}

/* The verdict of one refusal in a 207. */
static void event_error(struct upload *u, size_t i,
                        const struct lf_resp_error *e)
{
  const char *text = e->message ? e->message : "no reason given";
  const char *msg;
  if(e->status < 400 || e->status > 499) {
    msg = compose(u, &u->msg, "the server answered %d for this event: %s",
                  e->status, text);
    retry(u, i, LF_KIND_SERVER, e->status ? e->status : 207, msg);
    return;
  }
  if(strstr(text, EVENTS_ONLY_TEXT))
    msg = compose(u, &u->msg, "rejected by the server (HTTP %d): %s: "
                  "this server takes traces and observations only over "
                  "OTLP (use protocol \"otlp\"), and scores over the "
                  "ingestion API", e->status, text);
  else
    msg = compose(u, &u->msg, "rejected by the server (HTTP %d): %s%s%s",
                  e->status, text, e->error ? ": " : "",
                  e->error ? e->error : "");
  fail(u, &u->items[i], LF_KIND_REJECTED, e->status, 0, msg);
  keep_text(u, &u->rep->message, msg);
}

/* lf_jread_members callback for is_sdk_log: sets *ud when the type is
   "sdk-log". */
static int type_member(struct lf_jread *r, int which, void *ud)
{
  struct lf_buf text;
  struct lf_jtext t;
  int result;
  if(which != 0)
    return lf_jread_skip(r);
  lf_buf_init(&text, 0);
  memset(&t, 0, sizeof(t));
  t.out = &text;
  t.keep = 16;
  result = lf_jread_string(r, &t);
  if(!result && t.full == 7 && text.len == 7 &&
     !memcmp(text.data, "sdk-log", 7))
    *(int *)ud = 1;
  lf_buf_free(&text);
  return result;
}

/* Whether json, an encoded event, is an sdk-log event.  The server logs
   those and leaves them out of both lists of its 207. */
static int is_sdk_log(const char *json, size_t len)
{
  static const char *const names[] = { "type", NULL };
  struct lf_jread r;
  int yes = 0;
  if(!json)
    return 0;
  lf_jread_init(&r, json, len);
  if(lf_jread_members(&r, names, type_member, &yes))
    yes = 0;
  lf_jread_free(&r);
  return yes;
}

/* A 207: per-event verdicts; what it does not mention goes again, but
   for sdk-log events, which a whole 207 never mentions. */
static int by_events(struct upload *u, const size_t *idx, size_t count)
{
  struct lf_response *r = &u->resp;
  struct lf_resp parsed;
  const struct lf_resp_error *e;
  const char *msg;
  int cut = r->truncated || r->net != LF_NET_OK, result;
  int kind = r->net == LF_NET_TIMEOUT ? LF_KIND_TIMEOUT :
             r->net == LF_NET_ERROR ? LF_KIND_NETWORK : LF_KIND_SERVER;
  size_t i, queued;
  lf_resp_init(&parsed);
  result = lf_resp_parse(r->body.data, r->body.len,
                         cut ? LF_RESP_PREFIX : 0, &parsed);
  if(result == LF_ENOMEM)
    return result;
  if(result) {
    msg = compose(u, &u->msg, "unreadable 207 answer from %s%s",
                  u->route->url, said(u, 1));
    retry_all(u, idx, count, LF_KIND_SERVER, 207, msg);
    return LF_OK;
  }
  queued = u->nnext;
  for(i = 0; i < count; i++) {
    const char *id = u->items[idx[i]].id;
    if(lf_resp_succeeded(&parsed, id))
      deliver(&u->items[idx[i]]);
    else if((e = lf_resp_error_for(&parsed, id)))
      event_error(u, idx[i], e);
    else if(r->net == LF_NET_OK && !parsed.cut &&
            is_sdk_log(u->items[idx[i]].json, u->items[idx[i]].len))
      deliver(&u->items[idx[i]]);
    else if(r->net != LF_NET_OK) {
      msg = compose(u, &u->msg, "the 207 answer from %s broke off before "
                    "naming this event: %s", u->route->url, r->error);
      retry(u, idx[i], kind, 207, msg);
    } else {
      msg = compose(u, &u->msg, "the 207 answer from %s did not mention "
                    "this event%s", u->route->url,
                    parsed.cut ? " (the answer was cut short)" : "");
      retry(u, idx[i], LF_KIND_SERVER, 207, msg);
    }
  }
  if(u->nnext > queued && r->retry_after > u->retry_after)
    u->retry_after = r->retry_after;
  lf_resp_free(&parsed);
  return LF_OK;
}

/* No status line: the transfer failed or was refused. */
static int by_net(struct upload *u, const size_t *idx, size_t count)
{
  const struct lf_response *r = &u->resp;
  const char *url = u->route->url;
  const char *msg;
  switch(r->net) {
  case LF_NET_TLS:
    msg = compose(u, &u->msg, "TLS failure talking to %s: %s (check "
                  "base_url and the CA bundle)", url, r->error);
    stop(u, idx, count, LF_KIND_CONFIG, 0, msg);
    break;
  case LF_NET_CONFIG:
    msg = compose(u, &u->msg, "cannot send to %s: %s (check base_url)",
                  url, r->error);
    stop(u, idx, count, LF_KIND_CONFIG, 0, msg);
    break;
  case LF_NET_TIMEOUT:
    msg = compose(u, &u->msg, "no answer from %s in time: %s", url,
                  r->error);
    retry_all(u, idx, count, LF_KIND_TIMEOUT, 0, msg);
    break;
  default:
    msg = compose(u, &u->msg, "network error talking to %s: %s", url,
                  r->error[0] ? r->error : "no status line");
    retry_all(u, idx, count, LF_KIND_NETWORK, 0, msg);
    break;
  }
  return LF_OK;
}

/* A whole-request 400. */
static int refused(struct upload *u, const size_t *idx, size_t count)
{
  const char *msg;
  int otlp = u->route->kind == LF_ROUTE_OTLP;
  if(!otlp && count > 1 && u->bisect_left >= 2) {
    u->bisect_left -= 2;
    return halve(u, idx, count);
  }
  msg = compose(u, &u->msg, "rejected by the server (HTTP 400)%s",
                said(u, !otlp));
  fail_all(u, idx, count, LF_KIND_REJECTED, 400, 0, msg);
  return LF_OK;
}

/* Decides the items of a request from its answer. */
static int classify(struct upload *u, const size_t *idx, size_t count)
{
  const struct lf_response *r = &u->resp;
  const char *url = u->route->url;
  const char *msg;
  int st = (int)r->status, kind;
  size_t i;
  if(st < 100 || st > 999)
    return by_net(u, idx, count);
  if(st >= 200 && st <= 299) {
    if(st == 207 && u->route->kind == LF_ROUTE_INGESTION)
      return by_events(u, idx, count);
    /* An ingestion answer that broke off after its status line says
       nothing per event: send again (the server dedupes by id).  An
       OTLP status line is the server's whole verdict, and a resend
       would store the spans twice. */
    if(r->net != LF_NET_OK && u->route->kind == LF_ROUTE_INGESTION)
      return by_net(u, idx, count);
    for(i = 0; i < count; i++)
      deliver(&u->items[idx[i]]);
    return LF_OK;
  }
  if(st >= 300 && st <= 399) {
    msg = compose(u, &u->msg, "HTTP %d redirect to %s not followed: check "
                  "base_url", st, r->location[0] ? r->location : "nowhere");
    stop(u, idx, count, LF_KIND_CONFIG, st, msg);
    return LF_OK;
  }
  switch(st) {
  case 400:
    return refused(u, idx, count);
  case 401:
    msg = compose(u, &u->msg, "HTTP 401 from %s: check the public and "
                  "secret keys and the host (base_url)%s", url, said(u, 0));
    stop(u, idx, count, LF_KIND_AUTH, st, msg);
    return LF_OK;
  case 403:
    msg = compose(u, &u->msg, "HTTP 403 from %s: access forbidden%s", url,
                  said(u, 0));
    stop(u, idx, count, LF_KIND_FORBIDDEN, st, msg);
    return LF_OK;
  case 404:
  case 405:
    msg = compose(u, &u->msg, "HTTP %d from %s: wrong base_url or route%s",
                  st, url, said(u, 0));
    stop(u, idx, count, LF_KIND_CONFIG, st, msg);
    return LF_OK;
  case 413:
    if(count > 1)
      return halve(u, idx, count);
    msg = compose(u, &u->msg, "HTTP 413 from %s: the server refuses an "
                  "event of %zu bytes as too large%s", url,
                  u->items[idx[0]].len, said(u, 0));
    fail_all(u, idx, count, LF_KIND_TOO_LARGE, st, 0, msg);
    return LF_OK;
  case 408:
  case 429:
  case 500:
  case 502:
  case 503:
  case 504:
    kind = st == 429 ? LF_KIND_RATE_LIMITED :
           st == 408 ? LF_KIND_TIMEOUT : LF_KIND_SERVER;
    msg = compose(u, &u->msg, "HTTP %d from %s%s", st, url, said(u, 0));
    retry_all(u, idx, count, kind, st, msg);
    return LF_OK;
  default:
    msg = compose(u, &u->msg, "HTTP %d from %s, not retried%s", st, url,
                  said(u, 0));
    fail_all(u, idx, count, LF_KIND_SERVER, st, st >= 500, msg);
    return LF_OK;
  }
}

/* Keeps the status and the head of the last answer in the report. */
static void note_answer(struct upload *u)
{
  struct lf_report *rep = u->rep;
  const struct lf_buf *body = &u->resp.body;
  struct lf_buf copy;
  rep->last_status = (int)u->resp.status;
  free(rep->last_body);
  rep->last_body = NULL;
  if(!body->len)
    return;
  lf_buf_init(&copy, 0);
  if(lf_buf_add(&copy, body->data,
                body->len < REPORT_BODY_MAX + 4 ? body->len
                                                : REPORT_BODY_MAX + 4)) {
    u->nomem = 1;
    return;
  }
  cut_utf8(&copy, REPORT_BODY_MAX);
  rep->last_body = lf_buf_take(&copy, NULL);
}

static int build_body(struct upload *u, const size_t *idx, size_t count)
{
  const struct lf_route *route = u->route;
  size_t i;
  int result;
  lf_buf_reset(&u->body);
  result = lf_buf_adds(&u->body, route->prefix ? route->prefix : "");
  for(i = 0; i < count && !result; i++) {
    const struct lf_item *it = &u->items[idx[i]];
    if(i)
      result = lf_buf_addc(&u->body, ',');
    if(!result)
      result = lf_buf_add(&u->body, it->json, it->len);
  }
  if(!result)
    result = lf_buf_adds(&u->body, route->suffix ? route->suffix : "");
  return result;
}

/* Sends the count items at idx in one request and decides them. */
static int send_range(struct upload *u, const size_t *idx, size_t count)
{
  size_t i;
  int result = build_body(u, idx, count);
  if(result)
    return LF_ENOMEM;
  for(i = 0; i < count; i++)
    u->items[idx[i]].attempts++;
  u->rep->requests++;
  result = lf_http_post(u->h, u->route->url, u->body.data, u->body.len,
                        u->route->gzip, u->route->headers, &u->resp);
  if(result)
    return result;
  note_answer(u);
  return classify(u, idx, count);
}

/* How many of the avail items at idx fit in one request. */
static size_t pack(const struct upload *u, const size_t *idx, size_t avail)
{
  size_t max_bytes = u->opts->max_batch_bytes;
  size_t max_events = u->opts->max_batch_events;
  size_t bytes = u->framing, count = 0;
  while(count < avail && (!max_events || count < max_events)) {
    size_t add = u->items[idx[count]].len + (count ? 1 : 0);
    if(max_bytes && count && add > max_bytes - bytes)
      break;
    bytes += add;
    count++;
  }
  return count;
}

/* Fails every item still undecided with the verdict that stopped. */
static void fail_undecided(struct upload *u)
{
  size_t i;
  for(i = 0; i < u->n; i++)
    if(u->items[i].outcome == LF_PENDING)
      fail(u, &u->items[i], u->stop_kind, u->stop_status, 1,
           u->stop_msg ? u->stop_msg : "upload stopped");
  u->nnext = 0;
}

static int run_round(struct upload *u, const size_t *cur, size_t ncur)
{
  size_t at = 0, count;
  int result = LF_OK;
  u->nnext = 0;
  u->retry_after = -1;
  while(at < ncur && !u->stopped && !result) {
    count = pack(u, cur + at, ncur - at);
    result = send_range(u, cur + at, count);
    at += count;
  }
  if(!result && u->stopped)
    fail_undecided(u);
  return result;
}

static uint64_t next_random(struct upload *u)
{
  uint64_t x = u->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  u->rng = x;
  return x;
}

static void seed_random(struct upload *u, uint64_t seed)
{
  if(!seed && getrandom(&seed, sizeof(seed), GRND_NONBLOCK) !=
              (ssize_t)sizeof(seed))
    seed = (uint64_t)time(NULL) ^ (uint64_t)getpid() << 32 ^
           (uint64_t)(size_t)u;
  /* spread a small seed over all bits; xorshift needs a nonzero state */
  seed = (seed + 0x9E3779B97F4A7C15ULL) * 0xBF58476D1CE4E5B9ULL;
  u->rng = seed ^ seed >> 31;
  if(!u->rng)
    u->rng = 0x9E3779B97F4A7C15ULL;
}

static void nap(double seconds)
{
  struct timespec ts, rest;
  if(!(seconds > 0))
    return;
  ts.tv_sec = (time_t)seconds;
  ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
  while(nanosleep(&ts, &rest) == -1 && errno == EINTR)
    ts = rest;
}

/* Waits before retry round `round` (0 for the first retry). */
static int backoff(struct upload *u, int round)
{
  const struct lf_upload_opts *o = u->opts;
  double wait, cap;
  int i;
  if(u->retry_after >= 0) {
    wait = u->retry_after;
    if(wait > o->retry_after_max)
      wait = o->retry_after_max;
  } else {
    cap = o->backoff_base;
    for(i = 0; i < round && cap < o->backoff_max; i++)
      cap *= 2;
    if(cap > o->backoff_max)
      cap = o->backoff_max;
    wait = cap * ((double)(next_random(u) >> 11) / TWO_POW_53);
  }
  if(!(wait > 0))
    wait = 0;
  u->rep->waited += wait;
  if(o->sleep)
    return o->sleep(o->sleep_ud, wait) ? LF_EABORT : LF_OK;
  nap(wait);
  return LF_OK;
}

/* Puts each item in its starting state; those that cannot fit in any
   request fail at once.  Returns how many go into the first round. */
static size_t start_items(struct upload *u, size_t *cur)
{
  size_t i, ncur = 0, max = u->opts->max_batch_bytes;
  const char *msg;
  for(i = 0; i < u->n; i++) {
    struct lf_item *it = &u->items[i];
    free(it->message);
    it->message = NULL;
    it->outcome = LF_PENDING;
    it->kind = LF_KIND_NONE;
    it->status = 0;
    it->retryable = 0;
    it->attempts = 0;
    if(!it->json) {
      msg = "the event could not be written: out of memory";
      fail(u, it, LF_KIND_VALIDATION, 0, 0, msg);
      keep_text(u, &u->rep->message, msg);
    } else if(max && (u->framing > max || it->len > max - u->framing)) {
      msg = compose(u, &u->msg, "event of %zu bytes cannot fit in a "
                    "request of at most %zu bytes", it->len, max);
      fail(u, it, LF_KIND_TOO_LARGE, 0, 0, msg);
      keep_text(u, &u->rep->message, msg);
    } else
      cur[ncur++] = i;
  }
  return ncur;
}

static void tally(struct upload *u)
{
  struct lf_report *rep = u->rep;
  size_t i;
  rep->delivered = rep->failed = rep->pending = 0;
  rep->attempts = 0;
  for(i = 0; i < u->n; i++) {
    const struct lf_item *it = &u->items[i];
    if(it->outcome == LF_DELIVERED)
      rep->delivered++;
    else if(it->outcome == LF_FAILED)
      rep->failed++;
    else
      rep->pending++;
    if(it->attempts > rep->attempts)
      rep->attempts = it->attempts;
  }
}

static void upload_free(struct upload *u)
{
  lf_buf_free(&u->body);
  lf_buf_free(&u->msg);
  lf_buf_free(&u->msg2);
  lf_buf_free(&u->quote);
  lf_response_free(&u->resp);
  free(u->cur);
  free(u->next);
  free(u->fails);
  free(u->stop_msg);
}

/* Runs rounds until nothing is left to retry, starting with the ncur
   items in u->cur. */
static int run(struct upload *u, size_t ncur)
{
  int round, result = LF_OK;
  size_t *swap;
  for(round = 0; ncur; round++) {
    result = run_round(u, u->cur, ncur);
    if(result || !u->nnext)
      break;
    swap = u->next;
    u->next = u->cur;
    u->cur = swap;
    ncur = u->nnext;
    result = backoff(u, round);
    if(result)
      break;
  }
  return result;
}

int lf_upload(struct lf_http *h, const struct lf_route *route,
              struct lf_item *items, size_t n,
              const struct lf_upload_opts *opts,
              struct lf_report *rep)
{
  struct lf_upload_opts defaults;
  struct upload u;
  size_t slots = n ? n : 1;
  int result;
  if(!h || !route || !rep || (n && !items))
    return LF_EINVAL;
  if(!opts) {
    lf_upload_opts_init(&defaults);
    opts = &defaults;
  }
  memset(&u, 0, sizeof(u));
  u.h = h;
  u.route = route;
  u.items = items;
  u.n = n;
  u.opts = opts;
  u.rep = rep;
  u.framing = (route->prefix ? strlen(route->prefix) : 0) +
              (route->suffix ? strlen(route->suffix) : 0);
  u.bisect_left = BISECT_BUDGET;
  lf_buf_init(&u.body, 0);
  lf_buf_init(&u.msg, 0);
  lf_buf_init(&u.msg2, 0);
  lf_buf_init(&u.quote, 0);
  lf_response_init(&u.resp);
  seed_random(&u, opts->seed);
  u.cur = malloc(slots * sizeof(*u.cur));
  u.next = malloc(slots * sizeof(*u.next));
  u.fails = calloc(slots, sizeof(*u.fails));
  if(!u.cur || !u.next || !u.fails)
    result = LF_ENOMEM;
  else
    result = run(&u, start_items(&u, u.cur));
  tally(&u);
  upload_free(&u);
  if(!result && u.nomem)
    result = LF_ENOMEM;
  return result;
}
