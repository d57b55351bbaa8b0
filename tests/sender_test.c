/*
** sender_test.c: the background sender (src/lf_sender.c) against the
** local test server (server/fakefuse.py), over real HTTP on loopback.
**
**   sender_test URL      URL of a running fakefuse, e.g.
**                        http://127.0.0.1:3999
**
** Environment: SENDER_TEST_SKIP_FORK=1 skips the fork case (for
** ThreadSanitizer, which does not follow a multi-threaded fork);
** SENDER_TEST_PERF=1 also asserts that enqueue stays under a bound
** (only meaningful in an optimised build without sanitizers).
**
** Each case resets the server, runs one sender and checks both the
** sender's counters and what the server recorded.  The last line is
** "N passed, N failed"; the exit status is nonzero when a check failed.
*/
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "lf_sender.h"

/* Threads and events of the concurrency case. */
#define PRODUCERS 4
#define PER_PRODUCER 500
/* Events of the enqueue timing case, in rounds (the best round counts,
   the machine may be busy), and its bound in nanoseconds. */
#define PERF_EVENTS 50000
#define PERF_ROUNDS 5
#define PERF_NS_MAX 1000.0
/* Bytes of a control answer the test keeps. */
#define CONTROL_MAX (8 * 1024 * 1024)
/* Leftover ids the hook remembers. */
#define LEFTOVER_MAX 64

#define INGESTION_PATH "/api/public/ingestion"
#define OTLP_PATH "/api/public/otel/v1/traces"
#define BATCH_PREFIX "{\"batch\":["
#define BATCH_SUFFIX "]}"
#define OTLP_PREFIX "{\"resourceSpans\":[{\"resource\":{\"attributes\":" \
  "[{\"key\":\"service.name\",\"value\":{\"stringValue\":\"sender-test\"}}]}," \
  "\"scopeSpans\":[{\"scope\":{\"name\":\"sender-test\"},\"spans\":["
#define OTLP_SUFFIX "]}]}]}"

static char ingestion_url[256];
static char otlp_url[256];

#include "harness.h"

static void reset_server(void)
{
  control_do("/_test/reset", "{}");
}

/* The number after "key": in text, or -1. */
static double number_after(const char *text, const char *key)
{
  char pat[128];
  const char *p;
  snprintf(pat, sizeof(pat), "\"%s\":", key);
  p = text ? strstr(text, pat) : NULL;
  return p ? strtod(p + strlen(pat), NULL) : -1;
}

static long server_stat(const char *key)
{
  char *doc = control("/_test/stats", NULL);
  long n = (long)number_after(doc, key);
  free(doc);
  return n;
}

/* How often the server recorded each of ids (events or spans); the
   result holds how many ids were recorded exactly once. */
static size_t recorded_once(const char *what, char ids[][40], size_t n)
{
  char path[64], *doc, *counts;
  size_t i, once = 0;
  snprintf(path, sizeof(path), "/_test/%s", what);
  doc = control(path, NULL);
  counts = doc ? strstr(doc, "\"counts\":{") : NULL;
  for(i = 0; counts && i < n; i++) {
    if(number_after(counts, ids[i]) == 1)
      once++;
  }
  free(doc);
  return once;
}

/* Waits until the server logged at least n requests, up to limit s. */
static int wait_requests(long n, double limit)
{
  double end = now() + limit;
  while(now() < end) {
    if(server_stat("requests") >= n)
      return 1;
    nap(0.02);
  }
  return 0;
}

/* Wall-clock times of the logged requests, in order; returns the count. */
static size_t request_times(double *out, size_t max)
{
  char *doc = control("/_test/requests", NULL), *p = doc;
  size_t n = 0;
  while(p && n < max) {
    p = strstr(p, "{\"time\":");
    if(!p)
      break;
    out[n++] = strtod(p + 8, NULL);
    p += 8;
  }
  free(doc);
  return n;
}

/* ------------------------------------------------------------ events */

static void score_json(char *out, size_t cap, char *id, size_t idcap,
                       const char *tag, int n)
{
  snprintf(id, idcap, "%s-%d", tag, n);
  snprintf(out, cap, "{\"id\":\"%s\",\"type\":\"score-create\","
           "\"timestamp\":\"2024-01-01T00:00:00.000Z\",\"body\":{"
           "\"id\":\"%s-b\",\"traceId\":\"trace-%s\",\"name\":\"quality\","
           "\"value\":1}}", id, id, tag);
}

static void span_json(char *out, size_t cap, char *id, size_t idcap,
                      unsigned tag, int n)
{
  snprintf(id, idcap, "%08x%08x", tag, (unsigned)n + 1);
  snprintf(out, cap, "{\"traceId\":\"%032x\",\"spanId\":\"%s\","
           "\"name\":\"span\",\"kind\":1,"
           "\"startTimeUnixNano\":\"1700000000000000000\","
           "\"endTimeUnixNano\":\"1700000000100000000\"}", tag + 1, id);
}

static int add_score(struct lf_sender *s, char *id, const char *tag, int n)
{
  char json[512];
  score_json(json, sizeof(json), id, 40, tag, n);
  return lf_sender_enqueue(s, LF_ROUTE_INGESTION, json, strlen(json), id,
                           strlen(id));
}

static int add_span(struct lf_sender *s, char *id, unsigned tag, int n)
{
  char json[512];
  span_json(json, sizeof(json), id, 40, tag, n);
  return lf_sender_enqueue(s, LF_ROUTE_OTLP, json, strlen(json), id,
                           strlen(id));
}

/* ------------------------------------------------------------- hooks */

struct leftovers {
  pthread_mutex_t lock;
  int count;
  char ids[LEFTOVER_MAX][40];
};

static struct leftovers kept = { PTHREAD_MUTEX_INITIALIZER, 0, { "" } };

static void on_leftover(void *ud, int route, const char *json, size_t len,
                        const char *id)
{
  struct leftovers *k = ud;
  (void)route;
  (void)json;
  (void)len;
  pthread_mutex_lock(&k->lock);
  if(k->count < LEFTOVER_MAX)
    snprintf(k->ids[k->count], sizeof(k->ids[0]), "%s", id);
  k->count++;
  pthread_mutex_unlock(&k->lock);
}

static int leftover_count(void)
{
  int n;
  pthread_mutex_lock(&kept.lock);
  n = kept.count;
  kept.count = 0;
  pthread_mutex_unlock(&kept.lock);
  return n;
}

static int warnings;       /* atomic */

static void on_log(void *ud, int level, const char *message)
{
  (void)ud;
  if(level == LF_LOG_WARN)
    __atomic_add_fetch(&warnings, 1, __ATOMIC_RELAXED);
  if(strstr(message, "sk-lf-test"))
    __atomic_add_fetch(&warnings, 1000, __ATOMIC_RELAXED);
  if(getenv("SENDER_TEST_VERBOSE"))
    fprintf(stderr, "log %d: %s\n", level, message);
}

static void base_config(struct lf_sender_config *cfg)
{
  lf_sender_config_init(cfg);
  cfg->http.public_key = "pk-lf-test";
  cfg->http.secret_key = "sk-lf-test";
  cfg->http.timeout = 5;
  cfg->http.connect_timeout = 2;
  cfg->http.sdk_name = "langfuse-lua";
  cfg->http.sdk_version = "test";
  cfg->ingestion.url = ingestion_url;
  cfg->ingestion.prefix = BATCH_PREFIX;
  cfg->ingestion.suffix = BATCH_SUFFIX;
  cfg->otlp.url = otlp_url;
  cfg->otlp.prefix = OTLP_PREFIX;
  cfg->otlp.suffix = OTLP_SUFFIX;
  cfg->otlp.gzip = 1;
  cfg->upload.backoff_base = 0.01;
  cfg->upload.backoff_max = 0.05;
  cfg->upload.max_retries = 3;
  cfg->flush_interval = 0.2;
  cfg->on_leftover = on_leftover;
  cfg->leftover_ud = &kept;
  cfg->log = on_log;
}

/* -------------------------------------------------------------- cases */

struct producer {
  struct lf_sender *s;
  int index;
  int refused;
  char (*score_ids)[40];
  char (*span_ids)[40];
};

static void *produce(void *arg)
{
  struct producer *p = arg;
  char tag[16];
  int i;
  snprintf(tag, sizeof(tag), "t%d", p->index);
  for(i = 0; i < PER_PRODUCER / 2; i++) {
    if(add_score(p->s, p->score_ids[i], tag, i))
      p->refused++;
    if(add_span(p->s, p->span_ids[i], (unsigned)p->index + 1, i))
      p->refused++;
  }
  return NULL;
}

static void test_threads_flush(void)
{
  static char score_ids[PRODUCERS * PER_PRODUCER / 2][40];
  static char span_ids[PRODUCERS * PER_PRODUCER / 2][40];
  struct producer prod[PRODUCERS];
  pthread_t th[PRODUCERS];
  struct lf_sender_config cfg;
  struct lf_sender_stats st;
  struct lf_sender *s;
  size_t half = PRODUCERS * PER_PRODUCER / 2;
  int i, refused = 0, result;
  reset_server();
  base_config(&cfg);
  cfg.flush_at = 100;
  s = lf_sender_new(&cfg);
  for(i = 0; i < PRODUCERS; i++) {
    prod[i].s = s;
    prod[i].index = i;
    prod[i].refused = 0;
    prod[i].score_ids = score_ids + i * (PER_PRODUCER / 2);
    prod[i].span_ids = span_ids + i * (PER_PRODUCER / 2);
    pthread_create(&th[i], NULL, produce, &prod[i]);
  }
  for(i = 0; i < PRODUCERS; i++) {
    pthread_join(th[i], NULL);
    refused += prod[i].refused;
  }
  result = lf_sender_flush(s, 20);
  lf_sender_stats(s, &st);
  check(!refused, "threads: every enqueue accepted", "%d refused", refused);
  check(result == LF_OK, "threads: flush returns LF_OK", "got %d", result);
  check(st.accepted == PRODUCERS * PER_PRODUCER && st.failed == 0 &&
        st.queued == 0 && st.enqueued == PRODUCERS * PER_PRODUCER,
        "threads: sender counts all accepted",
        "enqueued %llu accepted %llu failed %llu queued %zu",
        (unsigned long long)st.enqueued, (unsigned long long)st.accepted,
        (unsigned long long)st.failed, st.queued);
  check(server_stat("events") == (long)half &&
        recorded_once("events", score_ids, half) == half,
        "threads: each score recorded exactly once",
        "events %ld", server_stat("events"));
  check(server_stat("spans") == (long)half &&
        recorded_once("spans", span_ids, half) == half,
        "threads: each span recorded exactly once",
        "spans %ld", server_stat("spans"));
  check(st.requests >= 2 && st.requests < half,
        "threads: events travel in batches", "%llu requests",
        (unsigned long long)st.requests);
  lf_sender_free(s);
}

struct trickle {
  struct lf_sender *s;
  int stop;               /* atomic */
  int sent;
};

static void *trickle_main(void *arg)
{
  struct trickle *t = arg;
  char id[40];
  while(!__atomic_load_n(&t->stop, __ATOMIC_ACQUIRE) &&
        t->sent < 5000) {
    if(!add_score(t->s, id, "late", t->sent))
      t->sent++;
    nap(0.002);
  }
  return NULL;
}

static void test_flush_slow(void)
{
  struct lf_sender_config cfg;
  struct lf_sender *s;
  struct trickle t;
  pthread_t th;
  char ids[10][40];
  double t0, took;
  int i, result;
  reset_server();
  control_do("/_test/faults", "{\"delay_all\":1.0}");
  base_config(&cfg);
  cfg.flush_interval = 30;
  s = lf_sender_new(&cfg);
  for(i = 0; i < 10; i++)
    add_score(s, ids[i], "slow", i);
  t0 = now();
  result = lf_sender_flush(s, 0.3);
  took = now() - t0;
  check(result == LF_EABORT && took >= 0.28 && took < 0.9,
        "flush: a slow server makes it return at the timeout",
        "result %d after %.3f s", result, took);
  result = lf_sender_flush(s, 10);
  check(result == LF_OK && recorded_once("events", ids, 10) == 10,
        "flush: a later flush sees the delivery complete",
        "result %d", result);
  control_do("/_test/faults", "{\"delay_all\":0.3}");
  t.s = s;
  t.stop = 0;
  t.sent = 0;
  pthread_create(&th, NULL, trickle_main, &t);
  nap(0.05);
  t0 = now();
  result = lf_sender_flush(s, 5);
  took = now() - t0;
  __atomic_store_n(&t.stop, 1, __ATOMIC_RELEASE);
  pthread_join(th, NULL);
  check(result == LF_OK && took < 2.5,
        "flush: events enqueued meanwhile do not extend the wait",
        "result %d after %.3f s", result, took);
  control_do("/_test/faults", "{\"delay_all\":0}");
  result = lf_sender_shutdown(s, 10);
  check(result == LF_OK, "flush: shutdown then delivers the rest",
        "result %d", result);
  lf_sender_free(s);
}

static void test_shutdown_backoff(void)
{
  struct lf_sender_config cfg;
  struct lf_sender_stats st;
  struct lf_sender *s;
  char id[40];
  double t0, took;
  int result;
  reset_server();
  control_do("/_test/faults", "{\"script\":[{\"status\":503,"
             "\"headers\":{\"Retry-After\":\"30\"},\"times\":20}]}");
  base_config(&cfg);
  cfg.upload.max_retries = 10;
  cfg.upload.retry_after_max = 60;
  s = lf_sender_new(&cfg);
  add_score(s, id, "backoff", 0);
  (void)leftover_count();
  (void)lf_sender_flush(s, 0);
  check(wait_requests(1, 5), "shutdown: the first attempt went out", "-");
  nap(0.1);
  t0 = now();
  result = lf_sender_shutdown(s, 0.2);
  took = now() - t0;
  lf_sender_stats(s, &st);
  check(result == LF_EABORT && took < 1.0,
        "shutdown: a 30 s backoff wait is cut short",
        "result %d after %.3f s", result, took);
  check(st.undelivered == 1 && leftover_count() == 1 && st.queued == 0,
        "shutdown: the event is handed back as undelivered",
        "undelivered %llu", (unsigned long long)st.undelivered);
  check(server_stat("requests") == 1, "shutdown: no request after stop",
        "%ld requests", server_stat("requests"));
  result = add_score(s, id, "backoff", 1);
  check(result == LF_EABORT, "shutdown: enqueue afterwards is refused",
        "result %d", result);
  lf_sender_free(s);
}

static void test_shutdown_no_hook(void)
{
  struct lf_sender_config cfg;
  struct lf_failure f[4];
  struct lf_sender *s;
  char id[40];
  size_t n;
  reset_server();
  control_do("/_test/faults", "{\"script\":[{\"status\":503,"
             "\"headers\":{\"Retry-After\":\"30\"},\"times\":20}]}");
  base_config(&cfg);
  cfg.upload.max_retries = 10;
  cfg.on_leftover = NULL;
  s = lf_sender_new(&cfg);
  add_score(s, id, "nohook", 0);
  (void)lf_sender_flush(s, 0);
  wait_requests(1, 5);
  (void)lf_sender_shutdown(s, 0.1);
  n = lf_sender_drain_failures(s, f, 4);
  check(n == 1 && f[0].kind == LF_KIND_SHUTDOWN && !strcmp(f[0].id, id) &&
        !strcmp(lf_sender_kind_name(f[0].kind), "shutdown"),
        "shutdown: without on_leftover the event is listed as a failure",
        "%zu failures", n);
  lf_sender_free(s);
}

static void test_free_in_flight(void)
{
  struct lf_sender_config cfg;
  struct lf_sender *s;
  char id[40];
  double t0, took;
  reset_server();
  control_do("/_test/faults", "{\"delay_all\":4}");
  base_config(&cfg);
  cfg.http.timeout = 1;
  cfg.upload.max_retries = 0;
  cfg.on_leftover = NULL;
  s = lf_sender_new(&cfg);
  add_score(s, id, "gc", 0);
  (void)lf_sender_flush(s, 0);
  check(wait_requests(1, 5), "free: a request is in flight", "-");
  t0 = now();
  lf_sender_free(s);
  took = now() - t0;
  check(took < 2.0, "free: bounded by the HTTP timeout",
        "took %.3f s", took);
  control_do("/_test/faults", "{\"delay_all\":0}");
}

static void test_drop_newest(void)
{
  struct lf_sender_config cfg;
  struct lf_sender_stats st;
  struct lf_failure f[8];
  struct lf_sender *s;
  char ids[8][40];
  int i, refused = 0, kinds = 0;
  size_t n;
  reset_server();
  base_config(&cfg);
  cfg.flush_interval = 30;
  cfg.max_queue_events = 5;
  s = lf_sender_new(&cfg);
  for(i = 0; i < 8; i++)
    refused += add_score(s, ids[i], "full", i) == LF_ETOOBIG;
  lf_sender_stats(s, &st);
  n = lf_sender_drain_failures(s, f, 8);
  for(i = 0; i < (int)n; i++)
    kinds += f[i].kind == LF_KIND_QUEUE_FULL &&
             !strcmp(f[i].id, ids[5 + i]);
  check(refused == 3 && st.dropped == 3 && st.queued == 5,
        "drop_newest: three refused and counted",
        "refused %d dropped %llu queued %zu", refused,
        (unsigned long long)st.dropped, st.queued);
  check(n == 3 && kinds == 3 &&
        !strcmp(lf_sender_kind_name(f[0].kind), "queue_full"),
        "drop_newest: each drop is a queue_full failure with its id",
        "%zu failures, %d match", n, kinds);
  check(lf_sender_flush(s, 10) == LF_OK &&
        recorded_once("events", ids, 5) == 5 &&
        server_stat("events") == 5,
        "drop_newest: the five kept are delivered", "-");
  lf_sender_free(s);
}

static void test_block(void)
{
  struct lf_sender_config cfg;
  struct lf_sender_stats st;
  struct lf_sender *s;
  char id[40];
  double t0, took;
  int result;
  reset_server();
  control_do("/_test/faults", "{\"delay_all\":1.0}");
  base_config(&cfg);
  cfg.flush_at = 2;
  cfg.max_queue_events = 2;
  cfg.full_policy = LF_FULL_BLOCK;
  cfg.block_timeout = 0.3;
  s = lf_sender_new(&cfg);
  add_score(s, id, "block", 0);
  add_score(s, id, "block", 1);
  wait_requests(1, 5);
  t0 = now();
  result = add_score(s, id, "block", 2);
  took = now() - t0;
  lf_sender_stats(s, &st);
  check(result == LF_ETOOBIG && took >= 0.28 && took < 0.8 &&
        st.dropped == 1,
        "block: waits block_timeout for room, then drops",
        "result %d after %.3f s", result, took);
  lf_sender_free(s);

  reset_server();
  control_do("/_test/faults", "{\"delay_all\":0.5}");
  cfg.block_timeout = 5;
  s = lf_sender_new(&cfg);
  add_score(s, id, "wait", 0);
  add_score(s, id, "wait", 1);
  wait_requests(1, 5);
  t0 = now();
  result = add_score(s, id, "wait", 2);
  took = now() - t0;
  check(result == LF_OK && took > 0.1 && took < 2.0,
        "block: waits for room and then queues",
        "result %d after %.3f s", result, took);
  control_do("/_test/faults", "{\"delay_all\":0}");
  check(lf_sender_flush(s, 10) == LF_OK && server_stat("events") == 3,
        "block: all three delivered", "events %ld", server_stat("events"));
  lf_sender_free(s);
}

/* A process forked from a fork child that had not used the inherited
   sender yet: it sends one event.  Returns the exit status. */
static int fork_grandchild_run(struct lf_sender *s)
{
  char id[40];
  int bad = add_score(s, id, "grandchild", 0) != LF_OK;
  bad |= lf_sender_flush(s, 10) != LF_OK;
  lf_sender_free(s);
  return bad;
}

/* The child of the fork case: first forks a grandchild before touching
   the inherited sender, then sends its own events through it.  Returns
   the exit status. */
static int fork_child_run(struct lf_sender *s)
{
  struct lf_sender_stats st;
  char ids[3][40];
  int i, bad = 0, status = -1;
  pid_t pid = fork();
  if(pid == 0)
    _exit(fork_grandchild_run(s));
  if(pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
     WEXITSTATUS(status))
    bad = 1;
  for(i = 0; i < 3; i++)
    bad |= add_score(s, ids[i], "child", i) != LF_OK;
  bad |= lf_sender_flush(s, 10) != LF_OK;
  lf_sender_stats(s, &st);
  bad |= st.enqueued != 3 || st.accepted != 3 || st.queued != 0;
  lf_sender_free(s);
  return bad ? 1 : 0;
}

static void test_fork(void)
{
  struct lf_sender_config cfg;
  struct lf_sender_stats st;
  struct lf_sender *s;
  char parent_ids[2][40], child_ids[3][40], grand_id[1][40];
  int i, status = -1;
  pid_t pid;
  if(getenv("SENDER_TEST_SKIP_FORK") &&
     !strcmp(getenv("SENDER_TEST_SKIP_FORK"), "1")) {
    printf("# fork case skipped (SENDER_TEST_SKIP_FORK=1)\n");
    return;
  }
  reset_server();
  base_config(&cfg);
  cfg.flush_interval = 30;
  s = lf_sender_new(&cfg);
  add_score(s, parent_ids[0], "parent", 0);
  check(lf_sender_flush(s, 10) == LF_OK,
        "fork: the parent sends before forking", "-");
  add_score(s, parent_ids[1], "parent", 1);
  fflush(stdout);
  pid = fork();
  if(pid == 0)
    _exit(fork_child_run(s));
  if(pid > 0)
    waitpid(pid, &status, 0);
  check(pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "fork: child and grandchild send only their own events",
        "status %d", status);
  check(lf_sender_flush(s, 10) == LF_OK,
        "fork: the parent's sender still works", "-");
  lf_sender_stats(s, &st);
  for(i = 0; i < 3; i++)
    snprintf(child_ids[i], sizeof(child_ids[i]), "child-%d", i);
  snprintf(grand_id[0], sizeof(grand_id[0]), "grandchild-0");
  check(recorded_once("events", parent_ids, 2) == 2 &&
        recorded_once("events", child_ids, 3) == 3 &&
        recorded_once("events", grand_id, 1) == 1 &&
        server_stat("events") == 6 && st.accepted == 2,
        "fork: parent's, child's and grandchild's events each arrive once",
        "events %ld accepted %llu", server_stat("events"),
        (unsigned long long)st.accepted);
  lf_sender_free(s);
}

static void test_rate_limit(void)
{
  struct lf_sender_config cfg;
  struct lf_sender_stats st;
  struct lf_sender *s;
  char score[40], span[40];
  double times[8];
  size_t n;
  int result;
  reset_server();
  control_do("/_test/faults", "{\"script\":[{\"status\":429,"
             "\"route\":\"ingestion\",\"headers\":{\"Retry-After\":\"1\"}}]}");
  base_config(&cfg);
  s = lf_sender_new(&cfg);
  add_score(s, score, "rl", 0);
  add_span(s, span, 77, 0);
  result = lf_sender_flush(s, 10);
  n = request_times(times, 8);
  check(result == LF_OK && n == 3 && times[1] - times[0] >= 0.9 &&
        times[2] - times[0] >= 0.9,
        "429: Retry-After holds back every route",
        "result %d, %zu requests, gaps %.3f %.3f", result, n,
        n > 1 ? times[1] - times[0] : -1, n > 2 ? times[2] - times[0] : -1);
  lf_sender_free(s);

  reset_server();
  control_do("/_test/faults", "{\"script\":[{\"status\":429,"
             "\"route\":\"ingestion\",\"headers\":{\"Retry-After\":\"1\"}}]}");
  cfg.upload.max_retries = 0;
  cfg.rate_limit_pause = 1.0;
  s = lf_sender_new(&cfg);
  add_score(s, score, "rl", 1);
  (void)lf_sender_flush(s, 0);
  wait_requests(1, 5);
  nap(0.1);
  lf_sender_stats(s, &st);
  check(st.paused > 0.5 && st.queued == 1 && st.failed == 0,
        "429: after the last retry the sender pauses and keeps the event",
        "paused %.3f queued %zu failed %llu", st.paused, st.queued,
        (unsigned long long)st.failed);
  add_span(s, span, 78, 0);
  result = lf_sender_flush(s, 10);
  n = request_times(times, 8);
  lf_sender_stats(s, &st);
  check(result == LF_OK && n == 3 && times[1] - times[0] >= 0.9 &&
        st.accepted == 2 && server_stat("events") == 1,
        "429: the pause holds other routes, then all is delivered",
        "result %d, %zu requests, accepted %llu", result, n,
        (unsigned long long)st.accepted);
  lf_sender_free(s);
}

static void test_failures(void)
{
  struct lf_sender_config cfg;
  struct lf_sender_stats st;
  struct lf_failure f[16];
  struct lf_sender *s;
  char ids[10][40], doc[2048];
  size_t n, len = 0;
  int i, match = 0;
  reset_server();
  len += (size_t)snprintf(doc + len, sizeof(doc) - len, "{\"per_event\":{");
  for(i = 0; i < 10; i++)
    len += (size_t)snprintf(doc + len, sizeof(doc) - len,
                            "%s\"bad-%d\":{\"status\":400,"
                            "\"message\":\"no good\"}", i ? "," : "", i);
  snprintf(doc + len, sizeof(doc) - len, "}}");
  control_do("/_test/faults", doc);
  base_config(&cfg);
  cfg.max_failures = 4;
  s = lf_sender_new(&cfg);
  for(i = 0; i < 10; i++)
    add_score(s, ids[i], "bad", i);
  (void)leftover_count();
  (void)lf_sender_flush(s, 10);
  lf_sender_stats(s, &st);
  n = lf_sender_drain_failures(s, f, 16);
  for(i = 0; i < (int)n; i++)
    match += f[i].status == 400 && f[i].kind == LF_KIND_REJECTED &&
             !f[i].retryable && !strcmp(f[i].id, ids[i]) &&
             strstr(f[i].message, "no good") != NULL;
  check(st.failed == 10 && n == 4 && match == 4 && st.failures_lost == 6,
        "failures: four listed with id, status and message, six lost",
        "failed %llu listed %zu match %d lost %llu",
        (unsigned long long)st.failed, n, match,
        (unsigned long long)st.failures_lost);
  check(lf_sender_drain_failures(s, f, 16) == 0 && leftover_count() == 0,
        "failures: drained once; rejections are not handed back", "-");
  check(strstr(st.last_error, "no good") != NULL,
        "failures: last_error holds the message", "'%s'", st.last_error);
  i = __atomic_load_n(&warnings, __ATOMIC_RELAXED);
  check(i > 0 && i < 1000, "failures: the log hook got a warning, no secret",
        "%d", i);

  control_do("/_test/faults", "{\"script\":[{\"status\":503,\"times\":4}]}");
  add_score(s, ids[0], "retry", 0);
  add_score(s, ids[1], "retry", 1);
  (void)lf_sender_flush(s, 10);
  n = lf_sender_drain_failures(s, f, 16);
  pthread_mutex_lock(&kept.lock);
  match = !strcmp(kept.ids[0], "retry-0") && !strcmp(kept.ids[1], "retry-1");
  pthread_mutex_unlock(&kept.lock);
  check(n == 2 && f[0].retryable && f[0].status == 503 &&
        f[0].attempts == 4 && leftover_count() == 2 && match,
        "failures: a retryable failure is listed and handed to on_leftover",
        "%zu failures", n);
  lf_sender_free(s);
}

static void test_perf(void)
{
  struct lf_sender_config cfg;
  struct lf_sender_stats st;
  struct lf_sender *s;
  char json[256], id[40];
  double t0, ns, best = 1e9;
  int i, round, refused = 0;
  base_config(&cfg);
  cfg.ingestion.url = "http://127.0.0.1:1/api/public/ingestion";
  cfg.upload.max_retries = 0;
  cfg.on_leftover = NULL;
  cfg.max_queue_events = PERF_EVENTS + 1;
  s = lf_sender_new(&cfg);
  score_json(json, sizeof(json), id, sizeof(id), "perf", 0);
  add_score(s, id, "perf", 0);
  for(round = 0; round < PERF_ROUNDS; round++) {
    t0 = now();
    for(i = 0; i < PERF_EVENTS / PERF_ROUNDS; i++)
      refused += lf_sender_enqueue(s, LF_ROUTE_INGESTION, json,
                                   strlen(json), id, strlen(id)) != LF_OK;
    ns = (now() - t0) * 1e9 / (PERF_EVENTS / PERF_ROUNDS);
    if(ns < best)
      best = ns;
  }
  printf("# enqueue: %.0f ns per event, best of %d rounds (%d refused)\n",
         best, PERF_ROUNDS, refused);
  lf_sender_stats(s, &st);
  if(getenv("SENDER_TEST_PERF"))
    check(best < PERF_NS_MAX, "enqueue: cheap", "%.0f ns", best);
  check(st.enqueued + st.dropped == PERF_EVENTS + 1,
        "enqueue: every event counted as queued or dropped", "-");
  lf_sender_free(s);
}

int main(int argc, char **argv)
{
  base_url = argc > 1 ? argv[1] : getenv("LANGFUSE_TEST_URL");
  if(!base_url) {
    fprintf(stderr, "usage: sender_test URL\n");
    return 2;
  }
  snprintf(ingestion_url, sizeof(ingestion_url), "%s%s", base_url,
           INGESTION_PATH);
  snprintf(otlp_url, sizeof(otlp_url), "%s%s", base_url, OTLP_PATH);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  test_threads_flush();
  test_flush_slow();
  test_shutdown_backoff();
  test_shutdown_no_hook();
  test_free_in_flight();
  test_drop_newest();
  test_block();
  test_fork();
  test_rate_limit();
  test_failures();
  test_perf();
  reset_server();
  curl_global_cleanup();
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
