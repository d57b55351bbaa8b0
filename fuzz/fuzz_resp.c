/*
** fuzz_resp.c: libFuzzer target for what the server says back: the 207
** reader (lf_resp_parse, lf_resp_error_text, src/lf_resp.h) and
** lf_parse_retry_after (src/lf_http.h).
**
** Input: one flag byte, then the body.  Flag bit 0 asks for
** LF_RESP_PREFIX (a body cut short by the HTTP layer); bit 1 also feeds
** the body, NUL-terminated and cut at RETRY_AFTER_MAX bytes, to
** lf_parse_retry_after.  Beyond "no crash, no leak, no undefined
** behaviour" the target checks what the header promises: sorted lists,
** ids without NUL that lookups find again, texts within their bound.
*/
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/lf_http.h"
#include "../src/lf_resp.h"

/* Longest Retry-After value tried: header lines are short. */
#define RETRY_AFTER_MAX 256
/* The "now" handed to the date parser: a fixed 2026 instant, so a run
   is repeatable. */
#define FIXED_NOW 1796212800.0

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Stops the run with a message: libFuzzer keeps the input. */
static void fail(const char *what)
{
  fprintf(stderr, "fuzz_resp: %s\n", what);
  abort();
}

static void check_resp(const struct lf_resp *r)
{
  size_t i;
  for(i = 0; i < r->nsuccesses; i++) {
    if(!r->successes[i])
      fail("NULL success id");
    if(i && strcmp(r->successes[i - 1], r->successes[i]) > 0)
      fail("successes not sorted");
    if(!lf_resp_succeeded(r, r->successes[i]))
      fail("lf_resp_succeeded misses a listed id");
  }
  for(i = 0; i < r->nerrors; i++) {
    const struct lf_resp_error *e = &r->errors[i];
    const struct lf_resp_error *found;
    if(!e->id)
      fail("NULL error id");
    if(i && strcmp(r->errors[i - 1].id, e->id) > 0)
      fail("errors not sorted");
    found = lf_resp_error_for(r, e->id);
    if(!found || strcmp(found->id, e->id))
      fail("lf_resp_error_for misses a listed id");
    if(e->message && strlen(e->message) > LF_RESP_TEXT_MAX)
      fail("message longer than LF_RESP_TEXT_MAX");
    if(e->error && strlen(e->error) > LF_RESP_TEXT_MAX)
      fail("error longer than LF_RESP_TEXT_MAX");
  }
}

static void check_error_text(const char *p, size_t len)
{
  struct lf_buf out;
  int result;
  lf_buf_init(&out, 0);
  if(lf_buf_adds(&out, "x"))
    fail("out of memory");
  result = lf_resp_error_text(p, len, &out);
  if(result == LF_EINVAL && out.len != 1)
    fail("lf_resp_error_text changed out on LF_EINVAL");
  if(out.len > 1 + 2 * LF_RESP_TEXT_MAX + 2)
    fail("error text longer than its bound");
  lf_buf_free(&out);
}

static void check_retry_after(const uint8_t *data, size_t size)
{
  char value[RETRY_AFTER_MAX + 1];
  double v;
  if(size > RETRY_AFTER_MAX)
    size = RETRY_AFTER_MAX;
  memcpy(value, data, size);
  value[size] = '\0';
  v = lf_parse_retry_after(value, FIXED_NOW);
  if(v != -1 && !(v >= 0 && isfinite(v)))
    fail("lf_parse_retry_after gave neither -1 nor a finite wait");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct lf_resp r;
  int flags, result;
  const char *body;
  size_t len;
  if(size < 1)
    return 0;
  flags = data[0];
  body = (const char *)data + 1;
  len = size - 1;
  lf_resp_init(&r);
  result = lf_resp_parse(body, len, flags & 1 ? LF_RESP_PREFIX : 0, &r);
  if(result != LF_OK && (r.nsuccesses || r.nerrors))
    fail("a refused body left entries behind");
  if(result != LF_OK && result != LF_EINVAL && result != LF_ENOMEM)
    fail("unexpected result from lf_resp_parse");
  check_resp(&r);
  lf_resp_free(&r);
  check_error_text(body, len);
  if(flags & 2)
    check_retry_after(data + 1, len);
  return 0;
}
