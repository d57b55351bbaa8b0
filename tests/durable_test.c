/*
** durable_test.c: the background sender with a spool (src/lf_sender.c
** over src/lf_durable.c and src/lf_spool.c) against the local test
** server (server/fakefuse.py), from several threads, so that the
** sanitizers (ThreadSanitizer above all) watch the spool's paths.
**
**   durable_test URL     URL of a running fakefuse
**
** Environment: DURABLE_TEST_SKIP_FORK=1 skips the fork case (for
** ThreadSanitizer, which does not follow a multi-threaded fork).
** Spools go to fresh directories under $TMPDIR (or /tmp), removed at
** the end.  The last line is "N passed, N failed".
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

#include "lf_durable.h"
#include "lf_sender.h"

/* Producer threads, and events each records. */
#define PRODUCERS 4
#define PER_PRODUCER 300
/* Seconds a delivery or a replay may take. */
#define WAIT 20.0
/* Bytes of a control answer kept. */
#define CONTROL_MAX (16 * 1024 * 1024)

#define BATCH_PREFIX "{\"batch\":["
#define BATCH_SUFFIX "]}"
#define DOWN "{\"script\":[{\"route\":\"ingestion\",\"status\":503," \
  "\"times\":100000}]}"

static char ingestion_url[256];
static char otlp_url[256];

#include "harness.h"

/* The number after "key": in the server's /_test/stats, or -1. */
static long server_stat(const char *key)
{
  char *doc = control("/_test/stats", NULL), pat[64];
  const char *p;
  long n = -1;
  snprintf(pat, sizeof(pat), "\"%s\":", key);
  p = doc ? strstr(doc, pat) : NULL;
  if(p)
    n = strtol(p + strlen(pat), NULL, 10);
  free(doc);
  return n;
}

/* Waits until the server holds n distinct events; returns 1 if so. */
static int wait_distinct(long n)
{
  double end = now() + WAIT;
  while(now() < end) {
    if(server_stat("distinct_event_ids") >= n)
      return 1;
    nap(0.02);
  }
  return server_stat("distinct_event_ids") >= n;
}

/* ---------------------------------------------------------- the spool */

/* A fresh spool directory name in dir (PATH_MAX bytes); made by the
   spool when it opens. */
static void new_dir(char *dir, size_t cap, const char *tag)
{
  static int seq;
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, cap, "%s/durable-test-%d-%s-%d", tmp ? tmp : "/tmp",
           (int)getpid(), tag, ++seq);
}

/* Removes a spool directory and what it holds (one level, plus
   quarantine/). */
static void remove_dir(const char *dir)
{
  char cmd[600];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if(system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
}

/* Records left in the spool in dir, whoever holds them. */
static long left_in(const char *dir)
{
  struct lf_spool *sp = lf_spool_open(dir, NULL, NULL);
  struct lf_spool_stats st;
  long n = -1;
  if(sp && !lf_spool_stats(sp, &st, 1))
    n = (long)st.records_pending;
  lf_spool_close(sp);
  return n;
}

static void base_config(struct lf_sender_config *cfg, const char *dir)
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
  cfg->otlp.prefix = "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[";
  cfg->otlp.suffix = "]}]}]}";
  cfg->upload.backoff_base = 0.01;
  cfg->upload.backoff_max = 0.05;
  cfg->upload.max_retries = 1;
  cfg->flush_interval = 0.05;
  cfg->spool_dir = dir;
}

/* A sender on a fresh spool directory (named in dir) with the server
   answering 503 to every ingestion request. */
static struct lf_sender *down_sender(struct lf_sender_config *cfg,
                                     char *dir, size_t cap,
                                     const char *tag)
{
  control_do("/_test/reset", "{}");
  control_do("/_test/faults", DOWN);
  new_dir(dir, cap, tag);
  base_config(cfg, dir);
  return lf_sender_new(cfg);
}

/* Enqueues score event n of tag; returns the enqueue result. */
static int add_score(struct lf_sender *s, const char *tag, int n)
{
  char json[512], id[64];
  snprintf(id, sizeof(id), "%s-%d", tag, n);
  snprintf(json, sizeof(json), "{\"id\":\"%s\",\"type\":\"score-create\","
           "\"timestamp\":\"2024-01-01T00:00:00.000Z\",\"body\":{"
           "\"id\":\"%s-b\",\"traceId\":\"trace-%s\",\"name\":\"quality\","
           "\"value\":1}}", id, id, tag);
  return lf_sender_enqueue(s, LF_ROUTE_INGESTION, json, strlen(json), id,
                           strlen(id));
}

struct producer {
  struct lf_sender *s;
  char tag[32];
  int refused;
};

static void *produce(void *arg)
{
  struct producer *p = arg;
  int i;
  for(i = 0; i < PER_PRODUCER; i++) {
    if(add_score(p->s, p->tag, i))
      p->refused++;
    if(i % 50 == 0)
      nap(0.001);
  }
  return NULL;
}

/* Runs PRODUCERS threads tagged with round; returns how many refused. */
static int produce_all(struct lf_sender *s, const char *round)
{
  pthread_t th[PRODUCERS];
  struct producer p[PRODUCERS];
  int i, refused = 0;
  for(i = 0; i < PRODUCERS; i++) {
    memset(&p[i], 0, sizeof(p[i]));
    p[i].s = s;
    snprintf(p[i].tag, sizeof(p[i].tag), "%s%d", round, i);
    pthread_create(&th[i], NULL, produce, &p[i]);
  }
  for(i = 0; i < PRODUCERS; i++) {
    pthread_join(th[i], NULL);
    refused += p[i].refused;
  }
  return refused;
}

/* -------------------------------------------------------------- cases */

static void test_threads_up(void)
{
  struct lf_sender_config cfg;
  struct lf_sender_stats st;
  struct lf_sender *s;
  char dir[512];
  int refused;
  long total = PRODUCERS * PER_PRODUCER;
  control_do("/_test/reset", "{}");
  new_dir(dir, sizeof(dir), "up");
  base_config(&cfg, dir);
  s = lf_sender_new(&cfg);
  refused = produce_all(s, "up");
  check(lf_sender_flush(s, WAIT) == LF_OK, "up: flushed", "timeout");
  lf_sender_stats(s, &st);
  check(!refused && st.spooled == (uint64_t)total, "up: every event "
        "spooled", "%d refused, %llu spooled", refused,
        (unsigned long long)st.spooled);
  lf_sender_free(s);
  check(server_stat("distinct_event_ids") == total &&
        server_stat("events") == total, "up: each delivered once",
        "%ld distinct, %ld events", server_stat("distinct_event_ids"),
        server_stat("events"));
  check(left_in(dir) == 0, "up: the spool is empty", "%ld left",
        left_in(dir));
  remove_dir(dir);
}

static void test_down_then_up(void)
{
  struct lf_sender_config cfg;
  struct lf_sender_stats st;
  struct lf_sender *s;
  char dir[512];
  int refused;
  long total = 2 * PRODUCERS * PER_PRODUCER;
  double end;
  control_do("/_test/reset", "{}");
  control_do("/_test/faults", DOWN);
  new_dir(dir, sizeof(dir), "down");
  base_config(&cfg, dir);
  cfg.max_queue_events = 50;            /* overflow: the spool alone */
  cfg.full_policy = LF_FULL_SPOOL;
  s = lf_sender_new(&cfg);
  refused = produce_all(s, "down");
  end = now() + WAIT;
  do {
    nap(0.02);
    lf_sender_stats(s, &st);
  } while(st.queued && now() < end);
  check(!refused && st.spool_only > 0 && st.spool_kept > 0 &&
        server_stat("events") == 0, "down: kept in the spool",
        "%d refused, %llu spool only, %llu kept", refused,
        (unsigned long long)st.spool_only,
        (unsigned long long)st.spool_kept);
  control_do("/_test/reset", "{}");     /* the server answers again */
  refused = produce_all(s, "again");    /* while the replay runs */
  check(!refused, "down: nothing refused during the replay", "%d",
        refused);
  check(wait_distinct(total), "down: all delivered after the replay",
        "%ld of %ld", server_stat("distinct_event_ids"), total);
  lf_sender_stats(s, &st);
  printf("# %ld duplicates, %llu replayed\n",
         server_stat("events") - server_stat("distinct_event_ids"),
         (unsigned long long)st.replay_delivered);
  end = now() + WAIT;
  while(left_in(dir) && now() < end)
    nap(0.05);
  check(left_in(dir) == 0, "down: the spool empties", "%ld left",
        left_in(dir));
  lf_sender_free(s);
  remove_dir(dir);
}

static void test_upload_kick(void)
{
  struct lf_sender_config cfg;
  struct lf_sender *s;
  struct lf_durable *d;
  struct lf_http *h;
  struct lf_http_config hc;
  struct lf_route route;
  struct lf_upload_opts opts;
  struct lf_report rep;
  struct lf_item items[3];
  char json[3][256], id[3][32], dir[512], err[LF_SPOOL_ERRMAX];
  unsigned char kept[3];
  size_t bad, i;
  int result;
  s = down_sender(&cfg, dir, sizeof(dir), "kick");
  memset(&hc, 0, sizeof(hc));
  hc.public_key = "pk-lf-test";
  hc.secret_key = "sk-lf-test";
  hc.timeout = 5;
  h = lf_http_new(&hc);
  d = lf_durable_new(dir, NULL);
  memset(&route, 0, sizeof(route));
  route.kind = LF_ROUTE_INGESTION;
  route.url = ingestion_url;
  route.prefix = BATCH_PREFIX;
  route.suffix = BATCH_SUFFIX;
  lf_upload_opts_init(&opts);
  opts.max_retries = 0;
  memset(items, 0, sizeof(items));
  for(i = 0; i < 3; i++) {
    snprintf(id[i], sizeof(id[i]), "kick-%zu", i);
    snprintf(json[i], sizeof(json[i]), "{\"id\":\"%s\",\"type\":"
             "\"trace-create\",\"timestamp\":\"2024-01-01T00:00:00.000Z\","
             "\"body\":{\"id\":\"t-%s\"}}", id[i], id[i]);
    items[i].json = json[i];
    items[i].len = strlen(json[i]);
    items[i].id = id[i];
    items[i].index = i + 1;
  }
  lf_report_init(&rep);
  result = lf_durable_upload(d, h, &route, items, 3, &opts, &rep, kept,
                             &bad, err);
  check(result == LF_OK && kept[0] && kept[1] && kept[2] && !bad,
        "upload: kept in the spool while the server is down",
        "result %d, kept %d%d%d, %zu bad (%s)", result, kept[0], kept[1],
        kept[2], bad, err);
  lf_items_clear(items, 3);
  lf_report_free(&rep);
  check(left_in(dir) == 3, "upload: three records left", "%ld",
        left_in(dir));
  control_do("/_test/reset", "{}");
  lf_sender_kick_dir(dir);
  check(wait_distinct(3), "upload: the kicked sender replays them",
        "%ld of 3", server_stat("distinct_event_ids"));
  lf_durable_free(d);
  lf_http_free(h);
  lf_sender_free(s);
  remove_dir(dir);
}

/* A child records through a sender (and its spool) made before fork. */
static void test_fork(void)
{
  struct lf_sender_config cfg;
  struct lf_sender *s;
  char dir[512];
  int status = -1, i;
  pid_t pid;
  control_do("/_test/reset", "{}");
  new_dir(dir, sizeof(dir), "fork");
  base_config(&cfg, dir);
  s = lf_sender_new(&cfg);
  for(i = 0; i < 20; i++)
    (void)add_score(s, "parent", i);
  pid = fork();
  if(pid == 0) {
    int bad = 0;
    for(i = 0; i < 20; i++)
      bad += add_score(s, "child", i) != LF_OK;
    bad += lf_sender_flush(s, WAIT) != LF_OK;
    lf_sender_free(s);
    _exit(bad ? 1 : 0);
  }
  for(i = 20; i < 40; i++)
    (void)add_score(s, "parent", i);
  check(lf_sender_flush(s, WAIT) == LF_OK, "fork: the parent flushes",
        "timeout");
  if(pid > 0)
    waitpid(pid, &status, 0);
  check(pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "fork: the child records and flushes", "status %d", status);
  check(wait_distinct(60), "fork: parent's and child's events delivered",
        "%ld of 60", server_stat("distinct_event_ids"));
  lf_sender_free(s);
  check(left_in(dir) == 0, "fork: the spool is empty", "%ld left",
        left_in(dir));
  remove_dir(dir);
}

/* With defer_replay a sender made on a spool that holds events starts
   no thread; the process that calls lf_sender_start (here a child, as
   an nginx worker) replays them. */
static void test_deferred_replay(int use_fork)
{
  struct lf_sender_config cfg;
  struct lf_sender *s;
  char dir[512];
  int status = -1, i;
  pid_t pid = -1;
  double end;
  s = down_sender(&cfg, dir, sizeof(dir), "deferred");
  for(i = 0; i < 10; i++)
    (void)add_score(s, "left", i);
  (void)lf_sender_shutdown(s, 1);
  lf_sender_free(s);
  check(left_in(dir) == 10, "deferred: the spool holds what failed",
        "%ld left", left_in(dir));
  control_do("/_test/reset", "{}");     /* the server answers again */
  cfg.defer_replay = 1;
  s = lf_sender_new(&cfg);
  nap(0.3);
  check(server_stat("events") == 0 && left_in(dir) == 10,
        "deferred: nothing replayed before lf_sender_start",
        "%ld sent, %ld left", server_stat("events"), left_in(dir));
  if(use_fork)
    pid = fork();
  if(pid <= 0) {
    int bad = lf_sender_start(s) != LF_OK;
    end = now() + WAIT;
    while(left_in(dir) && now() < end)
      nap(0.02);
    if(pid == 0) {
      lf_sender_free(s);
      _exit(bad || left_in(dir) ? 1 : 0);
    }
    check(!bad, "deferred: lf_sender_start", "failed");
  } else {
    waitpid(pid, &status, 0);
    check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "deferred: the child replays the spool", "status %d", status);
  }
  check(wait_distinct(10), "deferred: every event delivered",
        "%ld of 10", server_stat("distinct_event_ids"));
  check(lf_sender_start(s) == LF_OK, "deferred: a second start",
        "failed");
  lf_sender_free(s);
  check(left_in(dir) == 0, "deferred: the spool is empty", "%ld left",
        left_in(dir));
  remove_dir(dir);
}

int main(int argc, char **argv)
{
  if(argc != 2) {
    fprintf(stderr, "usage: %s URL\n", argv[0]);
    return 2;
  }
  base_url = argv[1];
  snprintf(ingestion_url, sizeof(ingestion_url),
           "%s/api/public/ingestion", base_url);
  snprintf(otlp_url, sizeof(otlp_url), "%s/api/public/otel/v1/traces",
           base_url);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  test_threads_up();
  test_down_then_up();
  test_upload_kick();
  test_deferred_replay(!getenv("DURABLE_TEST_SKIP_FORK"));
  if(!getenv("DURABLE_TEST_SKIP_FORK"))
    test_fork();
  control_do("/_test/reset", "{}");
  curl_global_cleanup();
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
