/*
** upload_test.c: the HTTP layer, the 207 reader and the uploader, run
** against the local test server (server/fakefuse.py) on loopback.
**
**   upload_test http://127.0.0.1:PORT [https://127.0.0.1:PORT CA-FILE]
**
** Each test resets the server, scripts its faults through /_test/faults
** and checks both what lf_upload decided and what the server saw.  Waits
** go through an injected sleep function that records them and returns at
** once, so backoff and Retry-After are checked without sleeping.  The
** last line is "N passed, N failed"; the exit status is 1 on a failure.
*/
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "../src/lf_buf.h"
#include "../src/lf_http.h"
#include "../src/lf_resp.h"
#include "../src/lf_upload.h"

/* Keys the test server is started with. */
#define PUBLIC_KEY "pk-lf-test"
#define SECRET_KEY "sk-lf-test"
/* base64("pk-lf-test:sk-lf-test"), as the Authorization header holds. */
#define CREDENTIAL "cGstbGYtdGVzdDpzay1sZi10ZXN0"
/* Most waits one upload may record in a test. */
#define MAX_WAITS 64
/* Backoff used by the tests: small, so windows are easy to check. */
#define BASE 0.01
#define CAP 0.08

static const char *server;
static const char *tls_server;     /* the server's https base, or NULL */
static const char *tls_ca;         /* its certificate */
#include "check.h"

static double now_mono(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the control API of the test server ---- */

static size_t collect(char *p, size_t size, size_t n, void *ud)
{
  return lf_buf_add(ud, p, size * n) ? 0 : size * n;
}

/* Sends a control request; out (emptied first) gets the answer.
   Returns the HTTP status, 0 on failure. */
static long control(const char *method, const char *path, const char *json,
                    struct lf_buf *out)
{
  char url[512];
  long status = 0;
  struct curl_slist *hdr;
  CURL *c = curl_easy_init();
  if(!c)
    return 0;
  lf_buf_reset(out);
  snprintf(url, sizeof(url), "%s%s", server, path);
  hdr = curl_slist_append(NULL, "Content-Type: application/json");
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
  if(!strcmp(method, "POST"))
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, json ? json : "{}");
  if(curl_easy_perform(c) == CURLE_OK)
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(hdr);
  curl_easy_cleanup(c);
  return status;
}

static void reset_server(void)
{
  struct lf_buf out;
  lf_buf_init(&out, 0);
  if(control("POST", "/_test/reset", NULL, &out) != 200)
    CHECK(0, "could not reset the test server");
  lf_buf_free(&out);
}

static void faults(const char *json)
{
  struct lf_buf out;
  lf_buf_init(&out, 0);
  if(control("POST", "/_test/faults", json, &out) != 200)
    CHECK(0, "faults refused: %s -> %s", json, lf_buf_cstr(&out));
  lf_buf_free(&out);
}

/* A number after "key": in a JSON text, or -1. */
static long json_number(const char *json, const char *key)
{
  char pat[64];
  const char *p;
  snprintf(pat, sizeof(pat), "\"%s\":", key);
  p = strstr(json, pat);
  return p ? strtol(p + strlen(pat), NULL, 10) : -1;
}

static long stat_of(const char *key)
{
  struct lf_buf out;
  long v = -1;
  lf_buf_init(&out, 0);
  if(control("GET", "/_test/stats", NULL, &out) == 200)
    v = json_number(lf_buf_cstr(&out), key);
  lf_buf_free(&out);
  return v;
}

/* The request log as JSON text; the caller frees it. */
static char *request_log(void)
{
  struct lf_buf out;
  lf_buf_init(&out, 0);
  control("GET", "/_test/requests", NULL, &out);
  return lf_buf_take(&out, NULL);
}

/* The last place needle occurs in hay, or "" (never NULL). */
static const char *last_of(const char *hay, const char *needle)
{
  const char *p = hay, *last = "";
  while(p && (p = strstr(p, needle)))
    last = p++;
  return last;
}

/* How many times needle occurs in hay. */
static int count_of(const char *hay, const char *needle)
{
  int n = 0;
  const char *p = hay;
  while(p && (p = strstr(p, needle))) {
    n++;
    p += strlen(needle);
  }
  return n;
}

/* ---- fixtures ---- */

struct batch {
  size_t n;
  struct lf_item *items;
  char **json;
  char **ids;
};

/* n trace-create events with ids <tag>-<i>, each padded with pad extra
   bytes in its name; kind "score" makes score-create events. */
static void batch_make(struct batch *b, size_t n, const char *tag,
                       size_t pad, const char *kind)
{
  size_t i;
  b->n = n;
  b->items = calloc(n, sizeof(*b->items));
  b->json = calloc(n, sizeof(*b->json));
  b->ids = calloc(n, sizeof(*b->ids));
  for(i = 0; i < n; i++) {
    struct lf_buf j;
    char *fill = malloc(pad + 1);
    memset(fill, 'x', pad);
    fill[pad] = '\0';
    b->ids[i] = malloc(64);
    snprintf(b->ids[i], 64, "%s-%zu", tag, i);
    lf_buf_init(&j, 0);
    if(kind && !strcmp(kind, "score"))
      (void)!lf_buf_printf(&j, "{\"id\":\"%s\",\"type\":\"score-create\","
                           "\"timestamp\":\"2024-01-01T00:00:00.000Z\","
                           "\"body\":{\"id\":\"s%s\",\"traceId\":\"t1\","
                           "\"name\":\"q%s\",\"value\":1}}", b->ids[i],
                           b->ids[i], fill);
    else
      (void)!lf_buf_printf(&j, "{\"id\":\"%s\",\"type\":\"trace-create\","
                           "\"timestamp\":\"2024-01-01T00:00:00.000Z\","
                           "\"body\":{\"id\":\"t%s\",\"name\":\"n%s\"}}",
                           b->ids[i], b->ids[i], fill);
    free(fill);
    b->json[i] = lf_buf_take(&j, &b->items[i].len);
    b->items[i].json = b->json[i];
    b->items[i].id = b->ids[i];
    b->items[i].index = i + 1;
  }
}

/* Replaces item i's JSON with text. */
static void batch_set(struct batch *b, size_t i, const char *text)
{
  free(b->json[i]);
  b->json[i] = lf_strndup(text, strlen(text));
  b->items[i].json = b->json[i];
  b->items[i].len = strlen(text);
}

static void batch_free(struct batch *b)
{
  size_t i;
  lf_items_clear(b->items, b->n);
  for(i = 0; i < b->n; i++) {
    free(b->json[i]);
    free(b->ids[i]);
  }
  free(b->items);
  free(b->json);
  free(b->ids);
}

struct sleeper {
  double waits[MAX_WAITS];
  int n;
  int abort_at;              /* wait number that aborts, or -1 */
};

static int record_sleep(void *ud, double seconds)
{
  struct sleeper *s = ud;
  if(s->n < MAX_WAITS)
    s->waits[s->n] = seconds;
  s->n++;
  return s->abort_at >= 0 && s->n > s->abort_at;
}

static void test_opts(struct lf_upload_opts *o, struct sleeper *s)
{
  lf_upload_opts_init(o);
  o->max_retries = 3;
  o->backoff_base = BASE;
  o->backoff_max = CAP;
  o->retry_after_max = 10;
  o->sleep = record_sleep;
  o->sleep_ud = s;
  o->seed = 42;
  memset(s, 0, sizeof(*s));
  s->abort_at = -1;
}

static struct lf_http *new_http(const char *secret, double timeout)
{
  struct lf_http_config cfg;
  memset(&cfg, 0, sizeof(cfg));
  cfg.public_key = PUBLIC_KEY;
  cfg.secret_key = secret;
  cfg.timeout = timeout;
  cfg.connect_timeout = 2;
  cfg.sdk_name = "lua-test";
  cfg.sdk_version = "9.9.9";
  return lf_http_new(&cfg);
}

static char url_ingestion[256], url_otlp[256];

static void route_ingestion(struct lf_route *r)
{
  memset(r, 0, sizeof(*r));
  r->kind = LF_ROUTE_INGESTION;
  r->url = url_ingestion;
  r->prefix = "{\"batch\":[";
  r->suffix = "]}";
}

static void route_otlp(struct lf_route *r, int gzip)
{
  static const char *const headers[] = {
    "x-langfuse-ingestion-version: 4", NULL
  };
  memset(r, 0, sizeof(*r));
  r->kind = LF_ROUTE_OTLP;
  r->url = url_otlp;
  r->prefix = "{\"resourceSpans\":[{\"resource\":{\"attributes\":[]},"
              "\"scopeSpans\":[{\"scope\":{\"name\":\"t\"},\"spans\":[";
  r->suffix = "]}]}]}";
  r->gzip = gzip;
  r->headers = headers;
}

/* n valid OTLP spans of one trace. */
static void spans_make(struct batch *b, size_t n)
{
  size_t i;
  batch_make(b, n, "span", 0, NULL);
  for(i = 0; i < n; i++) {
    char text[512];
    snprintf(text, sizeof(text),
             "{\"traceId\":\"0123456789abcdef0123456789abcdef\","
             "\"spanId\":\"%016zx\",\"name\":\"s%zu\",\"kind\":1,"
             "\"startTimeUnixNano\":\"1700000000000000000\","
             "\"endTimeUnixNano\":\"1700000001000000000\","
             "\"attributes\":[]}", i + 1, i);
    batch_set(b, i, text);
  }
}

/* Runs one upload with a fresh report; the caller frees rep. */
static int run_upload(struct lf_http *h, const struct lf_route *route,
                      struct batch *b, const struct lf_upload_opts *o,
                      struct lf_report *rep)
{
  lf_report_init(rep);
  return lf_upload(h, route, b->items, b->n, o, rep);
}

/* ---- tests without the server ---- */

static void test_retry_after(void)
{
  double now = 784111777.0 - 10;
  CHECK(lf_parse_retry_after("120", 0) == 120, "delta seconds");
  CHECK(lf_parse_retry_after(" 7 \r\n", 0) == 7, "delta with spaces");
  CHECK(lf_parse_retry_after("0", 0) == 0, "zero");
  CHECK(lf_parse_retry_after("-5", 0) == -1, "negative");
  CHECK(lf_parse_retry_after("1.5", 0) == -1, "fraction");
  CHECK(lf_parse_retry_after("soon", 0) == -1, "garbage");
  CHECK(lf_parse_retry_after("", 0) == -1, "empty");
  CHECK(lf_parse_retry_after(NULL, 0) == -1, "NULL");
  CHECK(lf_parse_retry_after("12abc", 0) == -1, "digits then junk");
  CHECK(lf_parse_retry_after("99999999999", 0) == 99999999999.0,
        "huge delta is kept for the caller to cap");
  CHECK(lf_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now) == 10,
        "IMF-fixdate");
  CHECK(lf_parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now) == 10,
        "RFC 850 date");
  CHECK(lf_parse_retry_after("Sun Nov  6 08:49:37 1994", now) == 10,
        "asctime date");
  CHECK(lf_parse_retry_after("sun, 06 nov 1994 08:49:37 gmt", now) == 10,
        "any case");
  CHECK(lf_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now + 100)
        == 0, "a past date means now");
  CHECK(lf_parse_retry_after("Thu, 29 Feb 2024 00:00:00 GMT",
                             1709164800.0 - 1) == 1, "leap day");
  CHECK(lf_parse_retry_after("Fri, 30 Feb 2024 00:00:00 GMT", 0) == -1,
        "no such day");
  CHECK(lf_parse_retry_after("Sun, 06 Foo 1994 08:49:37 GMT", 0) == -1,
        "bad month");
  CHECK(lf_parse_retry_after("Sun, 06 Nov 1994 24:49:37 GMT", 0) == -1,
        "bad hour");
  CHECK(lf_parse_retry_after("Sun, 06 Nov 1994 08:49:37 CET", 0) == -1,
        "not GMT");
  CHECK(lf_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT x", 0) == -1,
        "trailing junk");
  CHECK(lf_parse_retry_after("Sun, 06 Nov 1994", 0) == -1, "cut date");
  CHECK(lf_parse_retry_after("Xyz, 06 Nov 1994 08:49:37 GMT", 0) == -1,
        "bad weekday");
}

static void test_redact(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  struct lf_buf b;
  lf_buf_init(&b, 0);
  CHECK(h != NULL, "lf_http_new");
  if(!h)
    return;
  (void)!lf_buf_adds(&b, "a " SECRET_KEY " b Basic " CREDENTIAL " c "
                     SECRET_KEY);
  lf_http_redact(h, &b);
  CHECK(!strcmp(lf_buf_cstr(&b), "a *** b Basic *** c ***"),
        "redacted: %s", lf_buf_cstr(&b));
  lf_buf_reset(&b);
  (void)!lf_buf_adds(&b, "nothing to hide");
  lf_http_redact(h, &b);
  CHECK(!strcmp(lf_buf_cstr(&b), "nothing to hide"), "untouched");
  lf_http_free(h);
  h = new_http("ab", 5);
  lf_buf_reset(&b);
  (void)!lf_buf_adds(&b, "xaby");
  lf_http_redact(h, &b);
  CHECK(!strcmp(lf_buf_cstr(&b), "x**y"), "short secret: %s",
        lf_buf_cstr(&b));
  lf_http_free(h);
  lf_buf_free(&b);
}

/* Parses text whole; returns the result code. */
static int parse(const char *text, int flags, struct lf_resp *r)
{
  return lf_resp_parse(text, strlen(text), flags, r);
}

static void test_resp_shapes(void)
{
  struct lf_resp r;
  const struct lf_resp_error *e;
  lf_resp_init(&r);
  CHECK(parse("{\"successes\":[{\"id\":\"b\",\"status\":201},"
              "{\"id\":\"a\",\"status\":201}],\"errors\":[{\"id\":\"c\","
              "\"status\":400,\"message\":\"Invalid request data\","
              "\"error\":{\"issues\":[1,2]}}],\"_deprecation\":"
              "{\"note\":[{\"x\":null}]}}", 0, &r) == LF_OK, "good body");
  CHECK(r.nsuccesses == 2 && r.nerrors == 1, "counts");
  CHECK(lf_resp_succeeded(&r, "a") && lf_resp_succeeded(&r, "b") &&
        !lf_resp_succeeded(&r, "c"), "success lookups");
  e = lf_resp_error_for(&r, "c");
  CHECK(e && e->status == 400 && !strcmp(e->message,
        "Invalid request data") && !strcmp(e->error,
        "{\"issues\":[1,2]}"), "error entry, raw detail");
  CHECK(parse("{\"errors\":[{\"id\":\"x\\u00e9\\ud83d\\ude00\","
              "\"status\":500}]}", 0, &r) == LF_OK &&
        lf_resp_error_for(&r, "x\xc3\xa9\xf0\x9f\x98\x80"),
        "escapes decode to UTF-8");
  CHECK(parse("{\"successes\":[{\"id\":\"a\\u0000b\"},{\"id\":7},{}]}",
              0, &r) == LF_OK && r.nsuccesses == 0,
        "ids with NUL, numbers or missing are dropped");
  CHECK(parse("{\"errors\":[{\"id\":\"x\",\"status\":\"400\"}]}", 0, &r)
        == LF_OK && r.errors[0].status == 0, "odd status reads as 0");
  CHECK(parse("  {\"successes\":[]}  ", 0, &r) == LF_OK, "white space");
}

static void test_resp_bad(void)
{
  static const char *const bad[] = {
    "", " ", "null", "[]", "{}", "{\"other\":1}", "{\"successes\":{}}",
    "{\"successes\":null}", "{\"successes\":[1]}", "{\"successes\":[]",
    "{\"successes\":[]}x", "{\"successes\":[],}", "{successes:[]}",
    "{\"successes\":[{\"id\":\"a\"}]]}", "{\"successes\":[{\"id\":\"a\n\"}]}",
    "{\"errors\":[{\"id\":\"a\",\"status\":01}]}",
    "{\"errors\":[{\"id\":\"a\",\"status\":-}]}",
    "{\"x\":tru,\"successes\":[]}", "{\"x\":\"\\q\",\"successes\":[]}",
    "{\"x\":\"\\u12g4\",\"successes\":[]}", "<html>413</html>", NULL
  };
  struct lf_resp r;
  struct lf_buf deep;
  int i;
  lf_resp_init(&r);
  for(i = 0; bad[i]; i++)
    CHECK(parse(bad[i], 0, &r) == LF_EINVAL && !r.nsuccesses,
          "malformed body %d refused: %s", i, bad[i]);
  lf_buf_init(&deep, 0);
  (void)!lf_buf_adds(&deep, "{\"x\":");
  for(i = 0; i < 100000; i++)
    (void)!lf_buf_addc(&deep, '[');
  CHECK(lf_resp_parse(deep.data, deep.len, 0, &r) == LF_EINVAL,
        "deep nesting refused without recursion");
  CHECK(lf_resp_parse(deep.data, deep.len, LF_RESP_PREFIX, &r)
        == LF_EINVAL, "deep nesting refused in prefix mode");
  lf_buf_free(&deep);
  CHECK(lf_resp_parse("{\"successes\":[]}", 5, 0, &r) == LF_EINVAL,
        "length is honoured");
  lf_resp_free(&r);
}

static void test_resp_prefix(void)
{
  const char *text = "{\"successes\":[{\"id\":\"a\",\"status\":201},"
                     "{\"id\":\"b\",\"status\":201}],\"errors\":[{\"id\":"
                     "\"c\",\"status\":400,\"message\":\"no\"}]}";
  size_t len = strlen(text), cut;
  struct lf_resp r;
  int ok = 1;
  lf_resp_init(&r);
  for(cut = 0; cut < len; cut++) {
    int result = lf_resp_parse(text, cut, LF_RESP_PREFIX, &r);
    if(result == LF_OK && (!r.cut || r.nsuccesses > 2 || r.nerrors > 1))
      ok = 0;
    if(result == LF_OK && r.nerrors && strcmp(r.errors[0].message, "no"))
      ok = 0;
    if(cut < 13 && result != LF_EINVAL)
      ok = 0;
    if(lf_resp_parse(text, cut, 0, &r) != LF_EINVAL)
      ok = 0;
  }
  CHECK(ok, "every cut of a body reads as a prefix or is refused");
  CHECK(lf_resp_parse(text, 60, LF_RESP_PREFIX, &r) == LF_OK &&
        r.nsuccesses == 1 && lf_resp_succeeded(&r, "a"),
        "complete entries before the cut are kept");
  lf_resp_free(&r);
}

static void test_error_text(void)
{
  struct lf_buf b;
  const char *both = "{\"message\":\"Invalid credentials\","
                     "\"error\":\"UnauthorizedError\"}";
  lf_buf_init(&b, 0);
  CHECK(lf_resp_error_text(both, strlen(both), &b)
        == LF_OK && !strcmp(lf_buf_cstr(&b),
        "Invalid credentials: UnauthorizedError"), "message: error");
  lf_buf_reset(&b);
  CHECK(lf_resp_error_text("{\"error\":\"bad span\",\"x\":[1]}", 28, &b)
        == LF_OK && !strcmp(lf_buf_cstr(&b), "bad span"), "error only");
  lf_buf_reset(&b);
  CHECK(lf_resp_error_text("Body exceeded 4.5mb limit", 25, &b)
        == LF_EINVAL && b.len == 0, "plain text refused");
  CHECK(lf_resp_error_text("{\"code\":1}", 10, &b) == LF_EINVAL,
        "no message");
  lf_buf_free(&b);
}

/* ---- the HTTP layer ---- */

static void test_http_basics(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  struct lf_response resp;
  const char *body = "{\"batch\":[]}";
  char *log;
  int result;
  reset_server();
  lf_response_init(&resp);
  result = lf_http_post(h, url_ingestion, body, strlen(body), 0, NULL,
                        &resp);
  CHECK(result == LF_OK && resp.net == LF_NET_OK && resp.status == 207,
        "empty batch answered 207 (net %d status %ld)", resp.net,
        resp.status);
  CHECK(!strcmp(lf_buf_cstr(&resp.body),
                "{\"successes\":[],\"errors\":[]}"), "body kept: %s",
        lf_buf_cstr(&resp.body));
  log = request_log();
  CHECK(log && strstr(log, "\"authorization\":\"Basic " CREDENTIAL "\""),
        "Basic credential sent");
  CHECK(log && strstr(log, "\"x-langfuse-sdk-name\":\"lua-test\"") &&
        strstr(log, "\"x-langfuse-sdk-version\":\"9.9.9\"") &&
        strstr(log, "\"x-langfuse-public-key\":\"" PUBLIC_KEY "\""),
        "SDK headers sent with hyphens");
  CHECK(log && strstr(log, "\"content-type\":\"application/json\""),
        "content type");
  CHECK(log && !strstr(log, "\"expect\""), "no Expect header");
  free(log);

  faults("{\"script\":[{\"status\":429,\"headers\":{\"Retry-After\":\"3\"}},"
         "{\"redirect\":\"https://elsewhere.invalid/x\",\"status\":301}]}");
  result = lf_http_post(h, url_ingestion, body, strlen(body), 0, NULL,
                        &resp);
  CHECK(!result && resp.status == 429 && resp.retry_after == 3,
        "Retry-After read: %g", resp.retry_after);
  result = lf_http_post(h, url_ingestion, body, strlen(body), 0, NULL,
                        &resp);
  CHECK(!result && resp.status == 301 && resp.retry_after == -1 &&
        !strcmp(resp.location, "https://elsewhere.invalid/x"),
        "Location read, redirect not followed: %s", resp.location);
  CHECK(stat_of("requests") == 3, "no request followed the redirect");
  lf_response_free(&resp);
  lf_http_free(h);
}

static void test_http_limits(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 3);
  struct lf_response resp;
  const char *body = "{\"batch\":[]}";
  double t0;
  int result;
  reset_server();
  lf_response_init(&resp);
  faults("{\"script\":[{\"huge\":100000},{\"huge\":6000000},"
         "{\"drip\":1.0,\"body\":\"0123456789012345678901234567890\"},"
         "{\"delay\":5},{\"reset\":true},{\"drop\":true},"
         "{\"endless\":true}]}");
  result = lf_http_post(h, url_ingestion, body, strlen(body), 0, NULL,
                        &resp);
  CHECK(!result && resp.net == LF_NET_OK && resp.truncated &&
        resp.body.len == LF_HTTP_BODY_MAX, "long answer kept in part");
  result = lf_http_post(h, url_ingestion, body, strlen(body), 0, NULL,
                        &resp);
  CHECK(!result && resp.net == LF_NET_TOO_LARGE && resp.status == 200 &&
        resp.body.len == LF_HTTP_BODY_MAX, "huge answer aborted (net %d)",
        resp.net);
  t0 = now_mono();
  result = lf_http_post(h, url_ingestion, body, strlen(body), 0, NULL,
                        &resp);
  CHECK(!result && resp.net == LF_NET_TIMEOUT && now_mono() - t0 < 4.5,
        "dripping answer cut off in %.1f s (net %d)", now_mono() - t0,
        resp.net);
  t0 = now_mono();
  result = lf_http_post(h, url_ingestion, body, strlen(body), 0, NULL,
                        &resp);
  CHECK(!result && resp.net == LF_NET_TIMEOUT && resp.status == 0 &&
        now_mono() - t0 < 4.5 && resp.error[0], "silent server: %s",
        resp.error);
  result = lf_http_post(h, url_ingestion, body, strlen(body), 0, NULL,
                        &resp);
  CHECK(!result && resp.net == LF_NET_ERROR && resp.status == 0,
        "reset connection (net %d): %s", resp.net, resp.error);
  result = lf_http_post(h, url_ingestion, body, strlen(body), 0, NULL,
                        &resp);
  CHECK(!result && resp.net == LF_NET_ERROR && resp.status == 0,
        "dropped connection (net %d): %s", resp.net, resp.error);
  t0 = now_mono();
  result = lf_http_post(h, url_ingestion, body, strlen(body), 0, NULL,
                        &resp);
  CHECK(!result && resp.net == LF_NET_TIMEOUT && now_mono() - t0 < 4.5,
        "endless answer cut off (net %d)", resp.net);
  lf_response_free(&resp);
  lf_http_free(h);
}

static void test_http_refusals(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 3);
  struct lf_http_config cfg;
  struct lf_response resp;
  const char *bad_headers[] = { "x-a: b\r\nx-evil: 1", NULL };
  char url[300];
  int result;
  lf_response_init(&resp);
  result = lf_http_post(h, "ftp://127.0.0.1/x", "{}", 2, 0, NULL, &resp);
  CHECK(!result && resp.net == LF_NET_CONFIG, "ftp refused (net %d)",
        resp.net);
  result = lf_http_post(h, "not a url", "{}", 2, 0, NULL, &resp);
  CHECK(!result && (resp.net == LF_NET_CONFIG || resp.net == LF_NET_ERROR),
        "bad URL refused (net %d)", resp.net);
  /* the plain server may answer the handshake or just close: either
     way no status line comes back */
  snprintf(url, sizeof(url), "https%s", strchr(server, ':'));
  result = lf_http_post(h, url, "{}", 2, 0, NULL, &resp);
  CHECK(!result && resp.status == 0 && (resp.net == LF_NET_TLS ||
        resp.net == LF_NET_ERROR), "TLS to a plain port fails (net %d): %s",
        resp.net, resp.error);
  result = lf_http_post(h, url_ingestion, "{}", 2, 0, bad_headers, &resp);
  CHECK(!result && resp.net == LF_NET_CONFIG, "header with CR LF refused");
  result = lf_http_post(h, "http://127.0.0.1:1/x", "{}", 2, 0, NULL, &resp);
  CHECK(!result && resp.net == LF_NET_ERROR && resp.error[0],
        "connection refused: %s", resp.error);
  lf_http_free(h);
  memset(&cfg, 0, sizeof(cfg));
  cfg.public_key = PUBLIC_KEY;
  cfg.secret_key = "sk\nx";
  h = lf_http_new(&cfg);
  result = lf_http_post(h, url_ingestion, "{}", 2, 0, NULL, &resp);
  CHECK(!result && resp.net == LF_NET_CONFIG && !strstr(resp.error, "sk"),
        "secret with a line break refused: %s", resp.error);
  lf_http_free(h);
  lf_response_free(&resp);
}

/* ---- the uploader ---- */

static void test_deliver_and_pack(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  size_t i, one;
  int result, ok = 1;
  reset_server();
  route_ingestion(&route);
  test_opts(&o, &s);
  o.max_batch_events = 3;
  batch_make(&b, 7, "pack", 0, NULL);
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.delivered == 7 && rep.requests == 3 &&
        rep.failed == 0 && rep.pending == 0 && rep.attempts == 1,
        "7 items in 3 requests (%d)", rep.requests);
  for(i = 0; i < b.n; i++)
    ok &= b.items[i].outcome == LF_DELIVERED && b.items[i].attempts == 1 &&
          !b.items[i].message;
  CHECK(ok, "every item delivered once");
  CHECK(stat_of("events") == 7 && stat_of("requests") == 3,
        "server saw 7 events in 3 requests");
  CHECK(s.n == 0 && rep.waited == 0, "no waits");
  lf_report_free(&rep);
  batch_free(&b);

  /* byte limit: framing + two items and a comma fit, three do not */
  reset_server();
  batch_make(&b, 5, "bytes", 0, NULL);
  one = b.items[0].len;
  o.max_batch_events = 100;
  o.max_batch_bytes = strlen("{\"batch\":[]}") + 2 * one + 1;
  b.items[4].len = o.max_batch_bytes - strlen("{\"batch\":[]}") + 1;
  b.json[4] = realloc(b.json[4], b.items[4].len + 1);
  memset(b.json[4], ' ', b.items[4].len);
  b.json[4][b.items[4].len] = '\0';
  b.items[4].json = b.json[4];
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.requests == 2 && rep.delivered == 4 &&
        rep.failed == 1, "byte limit with framing: %d requests",
        rep.requests);
  CHECK(b.items[4].outcome == LF_FAILED &&
        b.items[4].kind == LF_KIND_TOO_LARGE && b.items[4].attempts == 0 &&
        b.items[4].retryable == 0 && b.items[4].message &&
        strstr(b.items[4].message, "cannot fit"),
        "an item that cannot fit fails at once: %s",
        b.items[4].message ? b.items[4].message : "(none)");
  CHECK(stat_of("events") == 4, "the big item was never sent");
  lf_report_free(&rep);
  batch_free(&b);
  lf_http_free(h);
}

static void test_207_mixed(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  char *log;
  int result;
  reset_server();
  route_ingestion(&route);
  test_opts(&o, &s);
  batch_make(&b, 6, "mix", 0, NULL);
  faults("{\"script\":[{\"status\":207,\"body\":\"{\\\"_deprecation\\\":"
         "{\\\"a\\\":[1]},\\\"successes\\\":[{\\\"id\\\":\\\"mix-0\\\","
         "\\\"status\\\":201},{\\\"id\\\":\\\"mix-1\\\",\\\"status\\\":201},"
         "{\\\"id\\\":\\\"ghost\\\",\\\"status\\\":201}],\\\"errors\\\":["
         "{\\\"id\\\":\\\"mix-2\\\",\\\"status\\\":400,\\\"message\\\":"
         "\\\"Invalid request data\\\",\\\"error\\\":\\\"name: expected "
         "string\\\"},{\\\"id\\\":\\\"mix-3\\\",\\\"status\\\":500,"
         "\\\"message\\\":\\\"boom\\\"},{\\\"id\\\":\\\"mix-5\\\","
         "\\\"status\\\":401,\\\"message\\\":\\\"Authentication error\\\","
         "\\\"error\\\":\\\"Access Scope Denied\\\"},{\\\"id\\\":\\\"other\\\","
         "\\\"status\\\":400}]}\"}]}");
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.requests == 2 && rep.delivered == 4 &&
        rep.failed == 2, "mixed 207: %d requests, %zu delivered",
        rep.requests, rep.delivered);
  CHECK(b.items[0].outcome == LF_DELIVERED &&
        b.items[1].outcome == LF_DELIVERED && b.items[0].attempts == 1,
        "successes delivered and not sent again");
  CHECK(b.items[2].outcome == LF_FAILED &&
        b.items[2].kind == LF_KIND_REJECTED && b.items[2].status == 400 &&
        !b.items[2].retryable && b.items[2].message &&
        strstr(b.items[2].message, "Invalid request data: name: expected "
               "string"), "per-event 400 rejected with its detail: %s",
        b.items[2].message ? b.items[2].message : "(none)");
  CHECK(b.items[5].outcome == LF_FAILED && b.items[5].status == 401 &&
        b.items[5].kind == LF_KIND_REJECTED, "per-event 401 rejected");
  CHECK(b.items[3].outcome == LF_DELIVERED && b.items[3].attempts == 2,
        "per-event 500 retried and delivered");
  CHECK(b.items[4].outcome == LF_DELIVERED && b.items[4].attempts == 2,
        "event missing from the 207 retried and delivered");
  CHECK(s.n == 1 && s.waits[0] >= 0 && s.waits[0] <= BASE,
        "one jittered wait within [0, base]: %g", s.n ? s.waits[0] : -1);
  log = request_log();
  CHECK(log && json_number(last_of(log, "\"events\":"), "events") == 2,
        "the second request carried only the two undecided events");
  free(log);
  lf_report_free(&rep);
  batch_free(&b);
  lf_http_free(h);
}

static void test_207_per_event(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  int result;
  reset_server();
  route_ingestion(&route);
  test_opts(&o, &s);
  o.max_retries = 1;
  batch_make(&b, 4, "pe", 0, NULL);
  faults("{\"per_event\":{\"pe-1\":{\"status\":400,\"message\":\"bad\","
         "\"error\":\"detail\"},\"pe-2\":{\"status\":503,\"times\":1},"
         "\"pe-3\":{\"status\":500}},\"extra_errors\":[{\"id\":\"never\","
         "\"status\":400,\"message\":\"x\"}]}");
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && b.items[0].outcome == LF_DELIVERED &&
        b.items[0].attempts == 1, "good event delivered once");
  CHECK(b.items[1].kind == LF_KIND_REJECTED && b.items[1].message &&
        !strcmp(b.items[1].message, "rejected by the server (HTTP 400): "
                "bad: detail"), "message: %s",
        b.items[1].message ? b.items[1].message : "(none)");
  CHECK(b.items[2].outcome == LF_DELIVERED && b.items[2].attempts == 2,
        "transient per-event 503 retried");
  CHECK(b.items[3].outcome == LF_FAILED &&
        b.items[3].kind == LF_KIND_SERVER && b.items[3].status == 500 &&
        b.items[3].retryable && b.items[3].attempts == 2 &&
        strstr(b.items[3].message, "gave up after 2 attempts"),
        "per-event 500 given up after max_retries: %s",
        b.items[3].message ? b.items[3].message : "(none)");
  CHECK(rep.requests == 2 && stat_of("distinct_event_ids") == 2,
        "ids the server invented were ignored");
  lf_report_free(&rep);
  batch_free(&b);
  lf_http_free(h);
}

static void test_events_only(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b, scores;
  int result;
  reset_server();
  route_ingestion(&route);
  test_opts(&o, &s);
  faults("{\"events_only\":true}");
  batch_make(&b, 2, "eo", 0, NULL);
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.failed == 2 && rep.requests == 1 &&
        b.items[0].kind == LF_KIND_REJECTED && b.items[0].message &&
        strstr(b.items[0].message, "Event type not accepted") &&
        strstr(b.items[0].message, "use protocol \"otlp\"") &&
        strstr(b.items[0].message, "scores over the ingestion API"),
        "events-only server explained: %s",
        b.items[0].message ? b.items[0].message : "(none)");
  lf_report_free(&rep);
  batch_make(&scores, 2, "sc", 0, "score");
  result = run_upload(h, &route, &scores, &o, &rep);
  CHECK(result == LF_OK && rep.delivered == 2, "scores still delivered");
  lf_report_free(&rep);
  batch_free(&scores);
  batch_free(&b);
  lf_http_free(h);
}

static void test_207_unreadable(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  int result;
  reset_server();
  route_ingestion(&route);
  test_opts(&o, &s);
  batch_make(&b, 3, "mal", 0, NULL);
  faults("{\"script\":[{\"status\":207,\"body\":\"\"},"
         "{\"status\":207,\"body\":\"{\\\"successes\\\":{}}\"}]}");
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.delivered == 3 && rep.requests == 3 &&
        s.n == 2 && b.items[0].attempts == 3,
        "empty and wrong-shaped 207 retried (%d requests)", rep.requests);
  lf_report_free(&rep);
  reset_server();
  faults("{\"malformed_207\":\"{\\\"successes\\\":[{\\\"id\\\"\"}");
  o.max_retries = 2;
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.failed == 3 && rep.requests == 3 &&
        b.items[0].kind == LF_KIND_SERVER && b.items[0].status == 207 &&
        b.items[0].retryable && strstr(b.items[0].message, "unreadable"),
        "a 207 that never reads fails after the retries: %s",
        b.items[0].message ? b.items[0].message : "(none)");
  lf_report_free(&rep);
  batch_free(&b);
  lf_http_free(h);
}

static void test_207_cut(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 20);
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  int result;
  reset_server();
  route_ingestion(&route);
  test_opts(&o, &s);
  o.max_batch_events = 5000;
  batch_make(&b, 1500, "a-rather-long-event-identifier-here", 0, NULL);
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.delivered == 1500 && rep.requests == 2 &&
        s.n == 1, "a 207 longer than the kept bytes is read in part, the "
        "rest sent again (%d requests, %zu delivered)", rep.requests,
        rep.delivered);
  lf_report_free(&rep);
  batch_free(&b);
  lf_http_free(h);
}

static void test_retry_statuses(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  double window = BASE;
  int result, i, ok = 1;
  reset_server();
  route_ingestion(&route);
  test_opts(&o, &s);
  o.max_retries = 5;
  batch_make(&b, 2, "rs", 0, NULL);
  faults("{\"script\":[{\"status\":500},{\"status\":502},{\"status\":504},"
         "{\"status\":408},{\"status\":503}]}");
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.delivered == 2 && rep.requests == 6 &&
        b.items[0].attempts == 6 && s.n == 5,
        "500, 502, 504, 408, 503 retried, then delivered");
  for(i = 0; i < s.n && i < MAX_WAITS; i++) {
    ok &= s.waits[i] >= 0 && s.waits[i] <= window;
    window = window * 2 > CAP ? CAP : window * 2;
  }
  CHECK(ok, "every wait inside its full-jitter window");
  CHECK(rep.waited > 0 && rep.last_status == 207, "report");
  lf_report_free(&rep);

  reset_server();
  faults("{\"script\":[{\"status\":503,\"times\":4,\"body\":"
         "\"{\\\"message\\\":\\\"Service Unavailable\\\"}\"}]}");
  o.max_retries = 3;
  s.n = 0;
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.failed == 2 && rep.requests == 4 &&
        b.items[0].kind == LF_KIND_SERVER && b.items[0].status == 503 &&
        b.items[0].retryable && b.items[0].attempts == 4 && s.n == 3,
        "503 four times: failed server after 3 retries");
  CHECK(b.items[0].message && strstr(b.items[0].message,
        "HTTP 503 from") && strstr(b.items[0].message,
        "Service Unavailable") && strstr(b.items[0].message, "gave up"),
        "message: %s", b.items[0].message ? b.items[0].message : "(none)");
  CHECK(rep.message && rep.last_status == 503 && rep.last_body &&
        strstr(rep.last_body, "Service Unavailable"), "report of failure");
  lf_report_free(&rep);

  reset_server();
  faults("{\"script\":[{\"status\":429,\"times\":2}]}");
  o.max_retries = 1;
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && b.items[0].kind == LF_KIND_RATE_LIMITED &&
        b.items[0].status == 429 && b.items[0].retryable,
        "429 twice: rate_limited");
  lf_report_free(&rep);

  reset_server();
  faults("{\"script\":[{\"status\":408,\"times\":2}]}");
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && b.items[0].kind == LF_KIND_TIMEOUT &&
        b.items[0].status == 408, "408 twice: timeout");
  lf_report_free(&rep);
  batch_free(&b);
  lf_http_free(h);
}

/* One upload where the first answer is the given 429/503 step. */
static double waited_for(struct lf_http *h, const char *step,
                         double retry_after_max)
{
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  char doc[512];
  int result;
  reset_server();
  route_ingestion(&route);
  test_opts(&o, &s);
  o.retry_after_max = retry_after_max;
  snprintf(doc, sizeof(doc), "{\"script\":[%s]}", step);
  faults(doc);
  batch_make(&b, 1, "ra", 0, NULL);
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.delivered == 1 && s.n == 1 &&
        rep.waited == s.waits[0], "delivered after one wait: %s", step);
  lf_report_free(&rep);
  batch_free(&b);
  return s.n == 1 ? s.waits[0] : -1;
}

static void test_retry_after_waits(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  char step[256], date[64];
  time_t when = time(NULL) + 4;
  struct tm tm;
  double w;
  w = waited_for(h, "{\"status\":429,\"headers\":{\"Retry-After\":\"2\"}}",
                 10);
  CHECK(w == 2, "Retry-After: 2 waited 2 s: %g", w);
  w = waited_for(h, "{\"status\":503,\"headers\":{\"Retry-After\":"
                 "\"99999999999\"}}", 10);
  CHECK(w == 10, "huge Retry-After capped at retry_after_max: %g", w);
  w = waited_for(h, "{\"status\":429,\"headers\":{\"Retry-After\":"
                 "\"soon\"}}", 10);
  CHECK(w >= 0 && w <= BASE, "garbage Retry-After: jittered backoff %g", w);
  w = waited_for(h, "{\"status\":429,\"headers\":{\"Retry-After\":\"0\"}}",
                 10);
  CHECK(w == 0, "Retry-After: 0 waits nothing: %g", w);
  gmtime_r(&when, &tm);
  strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  snprintf(step, sizeof(step), "{\"status\":429,\"headers\":{"
           "\"Retry-After\":\"%s\"}}", date);
  w = waited_for(h, step, 10);
  CHECK(w >= 2 && w <= 4, "Retry-After as an HTTP-date: %g", w);
  lf_http_free(h);
}

static void test_network_failures(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 1);
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  double t0;
  int result;
  reset_server();
  route_ingestion(&route);
  test_opts(&o, &s);
  batch_make(&b, 3, "net", 0, NULL);
  faults("{\"script\":[{\"drop\":true},{\"reset\":true},{\"delay\":2.5}]}");
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.delivered == 3 && rep.requests == 4 &&
        s.n == 3, "drop, reset and timeout retried, then delivered "
        "(%d requests)", rep.requests);
  CHECK(stat_of("distinct_event_ids") == 3,
        "events the slow answer stored arrive once more, same ids");
  lf_report_free(&rep);

  reset_server();
  faults("{\"script\":[{\"delay\":2.5,\"times\":2}]}");
  o.max_retries = 1;
  t0 = now_mono();
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.failed == 3 &&
        b.items[0].kind == LF_KIND_TIMEOUT && b.items[0].status == 0 &&
        b.items[0].retryable && now_mono() - t0 < 4,
        "a server that never answers: timeout after the retries (%.1f s)",
        now_mono() - t0);
  lf_report_free(&rep);

  route.url = "http://127.0.0.1:1/api/public/ingestion";
  s.n = 0;
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.failed == 3 && rep.requests == 2 &&
        b.items[0].kind == LF_KIND_NETWORK && s.n == 1 &&
        rep.last_status == 0, "connection refused: network after retries");
  lf_report_free(&rep);
  batch_free(&b);
  lf_http_free(h);
}

static void test_413(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b, big;
  char doc[128];
  size_t one;
  int result, html;
  for(html = 0; html < 2; html++) {
    reset_server();
    route_ingestion(&route);
    test_opts(&o, &s);
    batch_make(&b, 8, "split", 200, NULL);
    one = b.items[0].len;
    batch_make(&big, 1, "split-big", 600, NULL);
    batch_set(&b, 5, big.json[0]);
    batch_free(&big);
    snprintf(doc, sizeof(doc), "{\"max_body_bytes\":%zu,\"html_413\":%s}",
             strlen("{\"batch\":[]}") + 2 * one + 1, html ? "true"
                                                          : "false");
    faults(doc);
    result = run_upload(h, &route, &b, &o, &rep);
    CHECK(result == LF_OK && rep.delivered == 7 && rep.failed == 1 &&
          s.n == 0, "413 halves until each part fits (%s)",
          html ? "html" : "text");
    CHECK(b.items[5].kind == LF_KIND_TOO_LARGE &&
          b.items[5].status == 413 && !b.items[5].retryable &&
          b.items[5].message && strstr(b.items[5].message, "too large"),
          "a lone event still refused fails too_large: %s",
          b.items[5].message ? b.items[5].message : "(none)");
    CHECK(stat_of("events") == 7 && rep.requests <= 15,
          "the rest stored once each (%d requests)", rep.requests);
    lf_report_free(&rep);
    batch_free(&b);
  }
  lf_http_free(h);
}

static void test_400(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  int result;
  reset_server();
  route_ingestion(&route);
  test_opts(&o, &s);
  batch_make(&b, 6, "bad", 0, NULL);
  batch_set(&b, 4, "{\"id\":\"bad-4\",\"type\":\"trace-create\","
            "\"timestamp\":\"2024-01-01T00:00:00.000Z\",\"body\":{\"id\":"
            "\"t\",\"value\":NaN}}");
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.delivered == 5 && rep.failed == 1 &&
        b.items[4].kind == LF_KIND_REJECTED && b.items[4].status == 400 &&
        !b.items[4].retryable && strstr(b.items[4].message,
        "Invalid JSON"), "whole-request 400 halved to the bad event: %s",
        b.items[4].message ? b.items[4].message : "(none)");
  CHECK(stat_of("events") == 5 && s.n == 0, "the good ones stored once");
  lf_report_free(&rep);
  batch_free(&b);

  reset_server();
  route_otlp(&route, 0);
  spans_make(&b, 3);
  batch_set(&b, 1, "{\"traceId\":\"XYZ\",\"spanId\":\"0000000000000001\","
            "\"name\":\"s\",\"startTimeUnixNano\":\"1\","
            "\"endTimeUnixNano\":\"2\"}");
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.failed == 3 && rep.requests == 1 &&
        b.items[0].kind == LF_KIND_REJECTED && b.items[0].status == 400 &&
        strstr(b.items[0].message, "Invalid OTLP trace export"),
        "OTLP 400 rejects the whole export: %s",
        b.items[0].message ? b.items[0].message : "(none)");
  lf_report_free(&rep);
  batch_free(&b);
  lf_http_free(h);
}

static void test_otlp(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  char *log;
  int result, gz;
  for(gz = 0; gz < 2; gz++) {
    reset_server();
    route_otlp(&route, gz);
    test_opts(&o, &s);
    spans_make(&b, 5);
    o.max_batch_events = 2;
    faults("{\"script\":[{\"route\":\"otlp\",\"status\":502}]}");
    result = run_upload(h, &route, &b, &o, &rep);
    CHECK(result == LF_OK && rep.delivered == 5 && rep.requests == 4 &&
          stat_of("spans") == 5, "OTLP spans delivered (gzip %d)", gz);
    log = request_log();
    CHECK(log && count_of(log, "\"content-encoding\":\"gzip\"") ==
          (gz ? 4 : 0) && count_of(log, "\"x-langfuse-ingestion-version\""
          ":\"4\"") == 4, "route headers and gzip (%d)", gz);
    free(log);
    lf_report_free(&rep);
    batch_free(&b);
  }
  lf_http_free(h);
}

static void test_stops(void)
{
  struct lf_http *h = new_http("sk-lf-wrong", 5);
  char nowhere[300];
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  int result;
  reset_server();
  route_ingestion(&route);
  test_opts(&o, &s);
  o.max_batch_events = 2;
  batch_make(&b, 6, "stop", 0, NULL);
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.failed == 6 && rep.requests == 1 &&
        b.items[0].kind == LF_KIND_AUTH && b.items[0].status == 401 &&
        b.items[5].kind == LF_KIND_AUTH && b.items[5].attempts == 0 &&
        s.n == 0, "401 fails every item and stops sending");
  CHECK(b.items[0].message && strstr(b.items[0].message,
        "public and secret keys") && strstr(b.items[0].message,
        "base_url") && !strstr(b.items[0].message, "sk-lf-wrong"),
        "401 message: %s", b.items[0].message ? b.items[0].message : "");
  lf_report_free(&rep);
  lf_http_free(h);
  h = new_http(SECRET_KEY, 5);

  reset_server();
  faults("{\"script\":[{\"status\":403,\"body\":\"{\\\"message\\\":"
         "\\\"Ingestion suspended: Usage threshold exceeded.\\\"}\"}]}");
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.failed == 6 && rep.requests == 1 &&
        b.items[3].kind == LF_KIND_FORBIDDEN && strstr(b.items[3].message,
        "Ingestion suspended"), "403 forbidden: %s",
        b.items[3].message ? b.items[3].message : "(none)");
  lf_report_free(&rep);

  reset_server();
  faults("{\"script\":[{\"redirect\":\"https://cloud.example/api\","
         "\"status\":308}]}");
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.failed == 6 && rep.requests == 1 &&
        b.items[0].kind == LF_KIND_CONFIG && b.items[0].status == 308 &&
        b.items[0].retryable && strstr(b.items[0].message,
        "redirect to https://cloud.example/api not followed: check "
        "base_url"), "redirect: %s",
        b.items[0].message ? b.items[0].message : "(none)");
  CHECK(stat_of("requests") == 1, "the redirect was not followed");
  lf_report_free(&rep);

  reset_server();
  faults("{\"script\":[{\"status\":405}]}");
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && b.items[0].kind == LF_KIND_CONFIG &&
        b.items[0].status == 405 && rep.requests == 1, "405 config");
  lf_report_free(&rep);

  snprintf(nowhere, sizeof(nowhere), "%s/api/public/nothing", server);
  route.url = nowhere;
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && b.items[0].kind == LF_KIND_CONFIG &&
        b.items[0].status == 404 && strstr(b.items[0].message,
        "wrong base_url"), "404: %s",
        b.items[0].message ? b.items[0].message : "(none)");
  lf_report_free(&rep);

  batch_free(&b);
  lf_http_free(h);
}

static struct lf_http *new_https(const char *ca_file)
{
  struct lf_http_config cfg;
  memset(&cfg, 0, sizeof(cfg));
  cfg.public_key = PUBLIC_KEY;
  cfg.secret_key = SECRET_KEY;
  cfg.timeout = 10;
  cfg.connect_timeout = 5;
  cfg.ca_file = ca_file;
  return lf_http_new(&cfg);
}

/* Against the server's TLS port, whose certificate is for 127.0.0.1 and
   signed by nobody the system trusts. */
static void test_tls(void)
{
  struct lf_http *trusting = new_https(tls_ca), *plain = new_https(NULL);
  struct lf_response resp;
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  char url[300], other[300];
  int result;
  reset_server();
  lf_response_init(&resp);
  snprintf(url, sizeof(url), "%s/api/public/ingestion", tls_server);
  snprintf(other, sizeof(other), "https://localhost%s",
           strrchr(tls_server, ':'));
  strcat(other, "/api/public/ingestion");
  result = lf_http_post(trusting, url, "{\"batch\":[]}", 12, 0, NULL,
                        &resp);
  CHECK(!result && resp.net == LF_NET_OK && resp.status == 207,
        "TLS with the right CA file (net %d): %s", resp.net, resp.error);
  result = lf_http_post(plain, url, "{\"batch\":[]}", 12, 0, NULL, &resp);
  CHECK(!result && resp.net == LF_NET_TLS && resp.status == 0,
        "unknown certificate refused (net %d): %s", resp.net, resp.error);
  result = lf_http_post(trusting, other, "{\"batch\":[]}", 12, 0, NULL,
                        &resp);
  CHECK(!result && resp.net == LF_NET_TLS && resp.status == 0,
        "certificate for another host refused (net %d): %s", resp.net,
        resp.error);
  CHECK(stat_of("requests") == 1, "no request went past a bad TLS check");
  lf_response_free(&resp);

  route_ingestion(&route);
  route.url = url;
  test_opts(&o, &s);
  batch_make(&b, 3, "tls", 0, NULL);
  result = run_upload(plain, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.failed == 3 && rep.requests == 1 &&
        b.items[0].kind == LF_KIND_CONFIG && b.items[0].status == 0 &&
        b.items[0].retryable && s.n == 0 &&
        strstr(b.items[0].message, "TLS failure"), "TLS failure: %s",
        b.items[0].message ? b.items[0].message : "(none)");
  lf_report_free(&rep);
  result = run_upload(trusting, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.delivered == 3 && stat_of("events") == 3,
        "delivered over TLS");
  lf_report_free(&rep);
  batch_free(&b);
  lf_http_free(trusting);
  lf_http_free(plain);
}

static void test_other_status(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  int result;
  reset_server();
  route_ingestion(&route);
  test_opts(&o, &s);
  o.max_batch_events = 1;
  batch_make(&b, 2, "odd", 0, NULL);
  faults("{\"script\":[{\"status\":418},{\"status\":501}]}");
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.failed == 2 && rep.requests == 2 &&
        s.n == 0, "other statuses are not retried");
  CHECK(b.items[0].kind == LF_KIND_SERVER && b.items[0].status == 418 &&
        !b.items[0].retryable && b.items[1].status == 501 &&
        b.items[1].retryable, "418 and 501 fail as server");
  lf_report_free(&rep);
  batch_free(&b);
  lf_http_free(h);
}

static void test_abort(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  int result;
  reset_server();
  route_ingestion(&route);
  test_opts(&o, &s);
  s.abort_at = 0;
  batch_make(&b, 3, "ab", 0, NULL);
  faults("{\"script\":[{\"status\":503}]}");
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_EABORT && rep.pending == 3 && rep.requests == 1 &&
        b.items[0].outcome == LF_PENDING && s.n == 1,
        "an abort while waiting leaves the items pending");
  lf_report_free(&rep);
  batch_free(&b);
  lf_http_free(h);
}

static void test_secret_never_shown(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  int result;
  reset_server();
  route_ingestion(&route);
  test_opts(&o, &s);
  o.max_retries = 0;
  batch_make(&b, 1, "sec", 0, NULL);
  faults("{\"script\":[{\"status\":500,\"body\":\"{\\\"message\\\":\\\"key "
         SECRET_KEY " auth Basic " CREDENTIAL "\\\"}\"}]}");
  result = run_upload(h, &route, &b, &o, &rep);
  CHECK(result == LF_OK && rep.failed == 1 && b.items[0].message &&
        !strstr(b.items[0].message, SECRET_KEY) &&
        !strstr(b.items[0].message, CREDENTIAL) &&
        strstr(b.items[0].message, "key *** auth Basic ***"),
        "secret redacted in the message: %s",
        b.items[0].message ? b.items[0].message : "(none)");
  CHECK(rep.last_body && !strstr(rep.last_body, SECRET_KEY) &&
        !strstr(rep.last_body, CREDENTIAL) && rep.message &&
        !strstr(rep.message, SECRET_KEY), "secret redacted in the report");
  lf_report_free(&rep);
  batch_free(&b);
  lf_http_free(h);
}

static void test_seeded_jitter(void)
{
  struct lf_http *h = new_http(SECRET_KEY, 5);
  struct lf_route route;
  struct lf_upload_opts o;
  struct lf_report rep;
  struct sleeper s;
  struct batch b;
  double first[3];
  int run, ok = 1, i;
  route_ingestion(&route);
  batch_make(&b, 1, "seed", 0, NULL);
  for(run = 0; run < 2; run++) {
    reset_server();
    test_opts(&o, &s);
    o.backoff_max = 100;
    faults("{\"script\":[{\"status\":500,\"times\":3}]}");
    if(run_upload(h, &route, &b, &o, &rep) != LF_OK || s.n != 3)
      ok = 0;
    for(i = 0; i < 3 && i < s.n; i++) {
      if(!run)
        first[i] = s.waits[i];
      else if(first[i] != s.waits[i])
        ok = 0;
    }
    lf_report_free(&rep);
  }
  CHECK(ok && first[0] != first[1], "the same seed gives the same waits");
  batch_free(&b);
  lf_http_free(h);
}

int main(int argc, char **argv)
{
  if(argc != 2 && argc != 4) {
    fprintf(stderr, "usage: %s http://127.0.0.1:PORT "
            "[https://127.0.0.1:PORT CA-FILE]\n", argv[0]);
    return 2;
  }
  server = argv[1];
  if(argc == 4) {
    tls_server = argv[2];
    tls_ca = argv[3];
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  snprintf(url_ingestion, sizeof(url_ingestion), "%s/api/public/ingestion",
           server);
  snprintf(url_otlp, sizeof(url_otlp), "%s/api/public/otel/v1/traces",
           server);
  test_retry_after();
  test_redact();
  test_resp_shapes();
  test_resp_bad();
  test_resp_prefix();
  test_error_text();
  test_http_basics();
  test_http_limits();
  test_http_refusals();
  test_deliver_and_pack();
  test_207_mixed();
  test_207_per_event();
  test_events_only();
  test_207_unreadable();
  test_207_cut();
  test_retry_statuses();
  test_retry_after_waits();
  test_network_failures();
  test_413();
  test_400();
  test_otlp();
  test_stops();
  if(tls_server)
    test_tls();
  else
    printf("TLS tests skipped: no TLS server given\n");
  test_other_status();
  test_abort();
  test_secret_never_shown();
  test_seeded_jitter();
  curl_global_cleanup();
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
