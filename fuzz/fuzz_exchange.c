/*
** fuzz_exchange.c: libFuzzer target for the fields of a proxied LLM
** request (lf_exchange_fields, src/lf_exchange.h) and so for the pull
** reader under it (src/lf_jread.h), then for the span writers that
** take those fields (src/lf_span.h).
**
** Input: a flag byte, a status byte, then five texts split at the first
** four NUL bytes: route, user, session, request body, answer body (the
** answer keeps any NUL after the fourth).  A text missing at the end is
** not given.  Flag bits: 0 the answer was cut (truncated), 1 capture_io,
** 2 a trace and a generation name, 3 tags, 4-5 metadata (none, empty,
** two members, members named route and status), 6 a header time, 7 the
** upstream's address and status.  The status byte picks one of
** STATUSES.
**
** Beyond "no crash, no leak, no undefined behaviour" the target checks:
** every fragment lies in the output buffer and is valid UTF-8; the ones
** the module builds are strict JSON (fuzz/json_check.c: no repeated
** key, no lone surrogate escape), the ones copied from a body (input
** and output) RFC 8259 JSON, found in that body, or an assistant message
** the module built; each field is set exactly when the exchange calls
** for it; and an output kept from one input to the next gives what a
** fresh one gives.  The OTLP span and the ingestion events written from
** the fields must be JSON too.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/lf_exchange.h"
#include "../src/lf_json.h"
#include "../src/lf_span.h"
#include "json_check.h"

/* Deepest nesting the lenient checker follows: raw values hold at most
   LF_JREAD_DEPTH_MAX levels, and a span wraps a few around them. */
#define LAX_DEPTH 256
/* The longest statusMessage: every kept byte of the message as a
   six-byte escape, and the quotes. */
#define MESSAGE_JSON_MAX (6 * LF_EXCHANGE_MESSAGE_MAX + 2)
/* What a stream's answer becomes. */
#define ASSISTANT "{\"role\":\"assistant\",\"content\":\""

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const int STATUSES[16] = {
  200, 201, 204, 301, 399, 400, 401, 404, 429, 499, 500, 502, 503, 504,
  529, 0
};

static const char *const METADATA[4] = {
  NULL, "{}", "{\"team\":\"a\",\"tier\":2}",
  "{\"route\":\"mine\",\"status\":\"x\"}"
};

/* The output kept from one input to the next, as the tracer keeps it. */
static struct lf_exchange_out kept;

/* Stops the run with a message: libFuzzer keeps the input. */
static void fail(const char *what, const char *field)
{
  fprintf(stderr, "fuzz_exchange: %s%s%s\n", what, field ? ": " : "",
          field ? field : "");
  abort();
}

/* ---- a lenient JSON checker: RFC 8259 grammar only, so a value
   copied from a body may repeat keys and hold lone surrogate escapes
   (as JSON.parse allows) ---- */

struct lax {
  const unsigned char *p, *end;
};

static void lax_ws(struct lax *l)
{
  while(l->p < l->end && (*l->p == ' ' || *l->p == '\t' ||
                          *l->p == '\n' || *l->p == '\r'))
    l->p++;
}

static int lax_string(struct lax *l)
{
  l->p++;
  while(l->p < l->end && *l->p != '"') {
    if(*l->p < 0x20)
      return 0;
    if(*l->p++ != '\\')
      continue;
    if(l->p == l->end)
      return 0;
    if(*l->p == 'u') {
      int k;
      for(k = 1; k <= 4; k++) {
        if(l->p + k >= l->end || !strchr("0123456789abcdefABCDEF",
                                         l->p[k]) || !l->p[k])
          return 0;
      }
      l->p += 5;
    } else if(strchr("\"\\/bfnrt", *l->p) && *l->p) {
      l->p++;
    } else {
      return 0;
    }
  }
  if(l->p == l->end)
    return 0;
  l->p++;
  return 1;
}

static int lax_digits(struct lax *l)
{
  const unsigned char *from = l->p;
  while(l->p < l->end && *l->p >= '0' && *l->p <= '9')
    l->p++;
  return l->p > from;
}

static int lax_number(struct lax *l)
{
  if(*l->p == '-')
    l->p++;
  if(l->p < l->end && *l->p == '0')
    l->p++;
  else if(l->p == l->end || *l->p < '1' || *l->p > '9' || !lax_digits(l))
    return 0;
  if(l->p < l->end && *l->p == '.') {
    l->p++;
    if(!lax_digits(l))
      return 0;
  }
  if(l->p < l->end && (*l->p == 'e' || *l->p == 'E')) {
    l->p++;
    if(l->p < l->end && (*l->p == '+' || *l->p == '-'))
      l->p++;
    if(!lax_digits(l))
      return 0;
  }
  return 1;
}

static int lax_word(struct lax *l, const char *w)
{
  size_t n = strlen(w);
  if((size_t)(l->end - l->p) < n || memcmp(l->p, w, n))
    return 0;
  l->p += n;
  return 1;
}

static int lax_value(struct lax *l, int depth);

/* The members of an object or the elements of an array, after the
   opening bracket. */
static int lax_list(struct lax *l, int depth, int close)
{
  lax_ws(l);
  if(l->p < l->end && *l->p == close) {
    l->p++;
    return 1;
  }
  for(;;) {
    if(close == '}') {
      lax_ws(l);
      if(l->p == l->end || *l->p != '"' || !lax_string(l))
        return 0;
      lax_ws(l);
      if(l->p == l->end || *l->p++ != ':')
        return 0;
    }
    if(!lax_value(l, depth + 1))
      return 0;
    lax_ws(l);
    if(l->p == l->end)
      return 0;
    if(*l->p == close) {
      l->p++;
      return 1;
    }
    if(*l->p++ != ',')
      return 0;
  }
}

static int lax_value(struct lax *l, int depth)
{
  if(depth > LAX_DEPTH)
    return 0;
  lax_ws(l);
  if(l->p == l->end)
    return 0;
  switch(*l->p) {
  case '{': l->p++; return lax_list(l, depth, '}');
  case '[': l->p++; return lax_list(l, depth, ']');
  case '"': return lax_string(l);
  case 't': return lax_word(l, "true");
  case 'f': return lax_word(l, "false");
  case 'n': return lax_word(l, "null");
  default:
    return (*l->p == '-' || (*l->p >= '0' && *l->p <= '9')) &&
           lax_number(l);
  }
}

/* 1 when s is one JSON value of valid UTF-8, as JSON.parse reads it. */
static int lax_json(const char *s, size_t n)
{
  struct lax l;
  l.p = (const unsigned char *)s;
  l.end = l.p + n;
  if(lf_utf8_check(s, n) != n || !lax_value(&l, 1))
    return 0;
  lax_ws(&l);
  return l.p == l.end;
}

/* ---- the fields ---- */

static int strict_json(const char *s, size_t n)
{
  const char *why;
  size_t at;
  return json_check(s, n, &why, &at);
}

/* 1 when fragment i of f is exactly the text s. */
static int is(const struct lf_fields *f, int i, const char *s)
{
  return f->v[i] && f->n[i] == strlen(s) && !memcmp(f->v[i], s, f->n[i]);
}

/* A piece of a body: the n bytes at v are found in it. */
static int inside(const char *v, size_t n, const struct lf_text *body)
{
  return body->s && n <= body->n && memmem(body->s, body->n, v, n);
}

/* Checks one side's fragments: where they lie, that they are JSON, and
   that only the fields an exchange gives are set. */
static void check_side(const struct lf_exchange_out *o,
                       const struct lf_fields *f, unsigned allowed)
{
  int i;
  for(i = 0; i < LF_F_COUNT; i++) {
    const char *name = lf_field_name(i);
    if(!f->v[i])
      continue;
    if(!(allowed >> i & 1))
      fail("a field no exchange gives is set", name);
    if(f->v[i] < o->buf.data || f->n[i] > o->buf.len ||
       f->v[i] + f->n[i] > o->buf.data + o->buf.len)
      fail("a fragment lies outside the buffer", name);
    if(lf_utf8_check(f->v[i], f->n[i]) != f->n[i])
      fail("a fragment is not UTF-8", name);
    if(i == LF_F_INPUT || i == LF_F_OUTPUT) {
      if(!lax_json(f->v[i], f->n[i]))
        fail("a copied fragment is not JSON", name);
    } else if(!strict_json(f->v[i], f->n[i])) {
      fail("a built fragment is not strict JSON", name);
    }
  }
}

/* A built JSON string field. */
static void check_string(const struct lf_fields *f, int i)
{
  if(f->v[i] && (f->n[i] < 2 || f->v[i][0] != '"'))
    fail("not a JSON string", lf_field_name(i));
}

/* Checks what the exchange x calls for against the fields of o. */
static void check_fields(const struct lf_exchange *x,
                         const struct lf_exchange_out *o)
{
  const struct lf_fields *t = &o->trace, *g = &o->gen;
  unsigned trace_ok = 1u << LF_F_NAME | 1u << LF_F_INPUT |
    1u << LF_F_OUTPUT | 1u << LF_F_METADATA | 1u << LF_F_USER_ID |
    1u << LF_F_SESSION_ID | 1u << LF_F_TAGS;
  unsigned gen_ok = 1u << LF_F_NAME | 1u << LF_F_INPUT |
    1u << LF_F_OUTPUT | 1u << LF_F_METADATA | 1u << LF_F_LEVEL |
    1u << LF_F_STATUS_MESSAGE | 1u << LF_F_COMPLETION_START_TIME |
    1u << LF_F_MODEL | 1u << LF_F_MODEL_PARAMETERS |
    1u << LF_F_USAGE_DETAILS;
  check_side(o, t, trace_ok);
  check_side(o, g, gen_ok);
  check_string(t, LF_F_NAME);
  check_string(t, LF_F_USER_ID);
  check_string(t, LF_F_SESSION_ID);
  check_string(g, LF_F_NAME);
  check_string(g, LF_F_MODEL);
  check_string(g, LF_F_STATUS_MESSAGE);
  check_string(g, LF_F_COMPLETION_START_TIME);
  if(!t->v[LF_F_NAME] || !t->v[LF_F_METADATA] || !g->v[LF_F_NAME])
    fail("a name or the trace metadata is missing", NULL);
  if(t->v[LF_F_METADATA][0] != '{')
    fail("the trace metadata is no object", NULL);
  if(!t->v[LF_F_USER_ID] != !x->user.s)
    fail("userId set unlike the user", NULL);
  if(!t->v[LF_F_SESSION_ID] != !x->session.s)
    fail("sessionId set unlike the session", NULL);
  if(!t->v[LF_F_TAGS] != !x->tags.s)
    fail("tags set unlike the exchange's", NULL);
  if(t->v[LF_F_INPUT] != g->v[LF_F_INPUT] ||
     t->n[LF_F_INPUT] != g->n[LF_F_INPUT] ||
     t->v[LF_F_OUTPUT] != g->v[LF_F_OUTPUT] ||
     t->n[LF_F_OUTPUT] != g->n[LF_F_OUTPUT])
    fail("the trace's input or output is not the generation's", NULL);
  if(!x->capture_io && (g->v[LF_F_INPUT] || g->v[LF_F_OUTPUT] ||
                        o->left_out))
    fail("a body captured without capture_io", NULL);
  if(o->left_out & ~(LF_EX_BAD_INPUT | LF_EX_BAD_OUTPUT))
    fail("unknown left_out bits", NULL);
  if((o->left_out & LF_EX_BAD_INPUT) && g->v[LF_F_INPUT])
    fail("input left out but set", NULL);
  if((o->left_out & LF_EX_BAD_OUTPUT) && g->v[LF_F_OUTPUT])
    fail("output left out but set", NULL);
  if(g->v[LF_F_INPUT] && !inside(g->v[LF_F_INPUT], g->n[LF_F_INPUT],
                                 &x->request))
    fail("the input is not a piece of the request", NULL);
  if(g->v[LF_F_OUTPUT] &&
     !inside(g->v[LF_F_OUTPUT], g->n[LF_F_OUTPUT], &x->answer) &&
     (g->n[LF_F_OUTPUT] < sizeof(ASSISTANT) ||
      memcmp(g->v[LF_F_OUTPUT], ASSISTANT, sizeof(ASSISTANT) - 1)))
    fail("the output is neither a piece of the answer nor a message",
         NULL);
  if(!x->request.s && (g->v[LF_F_INPUT] || g->v[LF_F_MODEL_PARAMETERS]))
    fail("request fields without a request", NULL);
  if(!x->answer.s && (g->v[LF_F_OUTPUT] || g->v[LF_F_USAGE_DETAILS]))
    fail("answer fields without an answer", NULL);
  if(g->v[LF_F_MODEL_PARAMETERS] && g->v[LF_F_MODEL_PARAMETERS][0] != '{')
    fail("modelParameters is no object", NULL);
  if(g->v[LF_F_USAGE_DETAILS] && g->v[LF_F_USAGE_DETAILS][0] != '{')
    fail("usageDetails is no object", NULL);
  if(x->status >= 500 ? !is(g, LF_F_LEVEL, "\"ERROR\"") :
     x->status >= 400 ? !is(g, LF_F_LEVEL, "\"WARNING\"") :
     g->v[LF_F_LEVEL] != NULL)
    fail("level unlike the status", NULL);
  if(!g->v[LF_F_STATUS_MESSAGE] != !g->v[LF_F_LEVEL])
    fail("statusMessage without level, or level without it", NULL);
  if(g->v[LF_F_STATUS_MESSAGE] &&
     g->n[LF_F_STATUS_MESSAGE] > MESSAGE_JSON_MAX)
    fail("statusMessage longer than its bound", NULL);
  if(g->v[LF_F_COMPLETION_START_TIME] &&
     (x->header_time < 0 || g->n[LF_F_COMPLETION_START_TIME] != 29))
    fail("completionStartTime unlike the header time", NULL);
  if(!g->v[LF_F_METADATA] != !(x->upstream.s || x->upstream_status.s ||
                                x->truncated || o->left_out))
    fail("generation metadata unlike the upstream", NULL);
  if(g->v[LF_F_METADATA] && g->v[LF_F_METADATA][0] != '{')
    fail("the generation metadata is no object", NULL);
}

/* 1 when the two sides have the same fields with the same text. */
static int same(const struct lf_fields *a, const struct lf_fields *b)
{
  int i;
  for(i = 0; i < LF_F_COUNT; i++) {
    if(!a->v[i] != !b->v[i] || a->n[i] != b->n[i])
      return 0;
    if(a->v[i] && memcmp(a->v[i], b->v[i], a->n[i]))
      return 0;
  }
  return 1;
}

/* Writes the fields as the tracer sends them (one OTLP span with the
   trace-wide attributes; a trace-create and a generation-create event)
   and checks that each is JSON. */
static void check_writers(const struct lf_exchange *x,
                          const struct lf_exchange_out *o)
{
  struct lf_buf b, ctx;
  struct lf_span s;
  int why, result;
  lf_buf_init(&b, 0);
  lf_buf_init(&ctx, 0);
  memset(&s, 0, sizeof(s));
  s.trace_id = "0123456789abcdef0123456789abcdef";
  s.span_id = "0123456789abcdef";
  s.start = x->start;
  s.end = x->finish;
  result = lf_span_trace_ctx(&ctx, &o->trace, "\"fuzz\"", NULL);
  if(result)
    fail("lf_span_trace_ctx failed", NULL);
  s.type = LF_OBS_GENERATION;
  s.f = &o->gen;
  s.ctx = ctx.data;
  s.ctx_len = ctx.len;
  if(lf_span_otlp(&b, &s, &why))
    fail("lf_span_otlp failed", NULL);
  if(!lax_json(b.data, b.len))
    fail("the OTLP span is not JSON", NULL);
  lf_buf_reset(&b);
  s.root = 1;
  s.type = LF_OBS_SPAN;
  s.f = &o->trace;
  s.ctx = NULL;
  s.ctx_len = 0;
  if(lf_span_trace_event(&b, &s, "e1", "\"fuzz\"", NULL, &why))
    fail("lf_span_trace_event failed", NULL);
  if(!lax_json(b.data, b.len))
    fail("the trace-create event is not JSON", NULL);
  lf_buf_reset(&b);
  s.root = 0;
  s.type = LF_OBS_GENERATION;
  s.f = &o->gen;
  if(lf_span_event(&b, &s, "e2", "2023-11-14T22:13:20.000000Z", &why))
    fail("lf_span_event failed", NULL);
  if(!lax_json(b.data, b.len))
    fail("the generation-create event is not JSON", NULL);
  lf_buf_free(&b);
  lf_buf_free(&ctx);
}

/* The next text of the input, up to a NUL (last: to the end), or none
   when the input is used up. */
static struct lf_text next_text(const char **p, const char *end, int last)
{
  struct lf_text t;
  const char *nul;
  t.s = NULL;
  t.n = 0;
  if(!*p)
    return t;
  nul = last ? NULL : memchr(*p, '\0', (size_t)(end - *p));
  t.s = *p;
  t.n = (size_t)((nul ? nul : end) - *p);
  *p = nul ? nul + 1 : NULL;
  return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct lf_exchange x;
  struct lf_exchange_out fresh;
  const char *p, *end;
  int flags, result;
  if(size < 2)
    return 0;
  flags = data[0];
  memset(&x, 0, sizeof(x));
  x.status = STATUSES[data[1] & 15];
  p = (const char *)data + 2;
  end = (const char *)data + size;
  x.method.s = "POST";
  x.method.n = 4;
  x.route = next_text(&p, end, 0);
  x.user = next_text(&p, end, 0);
  x.session = next_text(&p, end, 0);
  x.request = next_text(&p, end, 0);
  x.answer = next_text(&p, end, 1);
  x.start = 1700000000.0;
  x.finish = 1700000002.5;
  x.truncated = flags & 1;
  x.capture_io = (flags >> 1) & 1;
  if(flags & 4) {
    x.name.s = "custom \xFF name";
    x.name.n = strlen(x.name.s);
    x.gen_name.s = "generation";
    x.gen_name.n = strlen(x.gen_name.s);
  }
  if(flags & 8) {
    x.tags.s = "[\"a\",\"b\"]";
    x.tags.n = strlen(x.tags.s);
  }
  x.metadata.s = METADATA[(flags >> 4) & 3];
  x.metadata.n = x.metadata.s ? strlen(x.metadata.s) : 0;
  x.header_time = flags & 64 ? (double)(data[1] >> 4) / 8 : -1;
  if(flags & 128) {
    x.upstream.s = "127.0.0.1:8080, 127.0.0.1:8081";
    x.upstream.n = strlen(x.upstream.s);
    x.upstream_status.s = "502, 200";
    x.upstream_status.n = strlen(x.upstream_status.s);
  }

  lf_exchange_out_init(&fresh);
  result = lf_exchange_fields(&x, &fresh);
  if(result == LF_ENOMEM) {
    lf_exchange_out_free(&fresh);
    return 0;
  }
  if(result != LF_OK)
    fail("lf_exchange_fields gave neither LF_OK nor LF_ENOMEM", NULL);
  check_fields(&x, &fresh);
  check_writers(&x, &fresh);

  /* an output used before gives the same fields */
  if(lf_exchange_fields(&x, &kept) == LF_OK &&
     (!same(&kept.trace, &fresh.trace) || !same(&kept.gen, &fresh.gen) ||
      kept.left_out != fresh.left_out))
    fail("a kept output differs from a fresh one", NULL);
  lf_exchange_out_free(&fresh);
  return 0;
}
