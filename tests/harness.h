/*
** harness.h: what the C test programs share: pass/fail counting, a
** monotonic clock, and calls to the test server's /_test/ routes.
** Include it once, after defining CONTROL_MAX (bytes of a control answer
** kept) and the includes it needs (stdio, stdlib, string, stdarg, time,
** curl); set base_url before the first control call.
*/
#ifndef TESTS_HARNESS_H
#define TESTS_HARNESS_H

static const char *base_url;
static int passed;
static int failed;

/* ------------------------------------------------------------ checking */

static void check(int ok, const char *name, const char *fmt, ...)
  LF_PRINTF(3, 4);

static void check(int ok, const char *name, const char *fmt, ...)
{
  va_list ap;
  if(ok) {
    passed++;
    printf("ok - %s\n", name);
  } else {
    failed++;
    printf("not ok - %s: ", name);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
  }
  fflush(stdout);
}

static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void nap(double seconds)
{
  struct timespec ts;
  ts.tv_sec = (time_t)seconds;
  ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
  nanosleep(&ts, NULL);
}

/* ----------------------------------------------------- control routes */

struct answer {
  char *data;
  size_t len;
};

static size_t on_data(char *p, size_t size, size_t n, void *ud)
{
  struct answer *a = ud;
  size_t add = size * n;
  char *grown;
  if(a->len + add + 1 > CONTROL_MAX)
    return 0;
  grown = realloc(a->data, a->len + add + 1);
  if(!grown)
    return 0;
  a->data = grown;
  memcpy(a->data + a->len, p, add);
  a->len += add;
  a->data[a->len] = '\0';
  return add;
}

/* Calls a /_test/ route; returns the answer (caller frees) or NULL. */
static char *control(const char *path, const char *body)
{
  CURL *c = curl_easy_init();
  struct answer a = { NULL, 0 };
  struct curl_slist *hdr = NULL;
  char url[512];
  long status = 0;
  if(!c)
    return NULL;
  snprintf(url, sizeof(url), "%s%s", base_url, path);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &a);
  if(body) {
    hdr = curl_slist_append(hdr, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
  }
  if(curl_easy_perform(c) == CURLE_OK)
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(hdr);
  curl_easy_cleanup(c);
  if(status != 200 || !a.data) {
    fprintf(stderr, "control %s answered %ld\n", path, status);
    free(a.data);
    return NULL;
  }
  return a.data;
}

static void control_do(const char *path, const char *body)
{
  free(control(path, body));
}

#endif
