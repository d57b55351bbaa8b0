/*
** lf_exchange.c: the fields of a proxied LLM request (lf_exchange.h).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lf_exchange.h"
#include "lf_jread.h"
#include "lf_json.h"
#include "lf_time.h"

/* Bytes kept of a model name or a string model parameter: real ones are
   short, and a longer one is not worth its room in every span. */
#define SHORT_MAX 256
/* Characters of a number model parameter copied as it was written;
   longer ones are not parameters anybody sets. */
#define NUMBER_MAX 32
/* Bytes a kept buffer may hold on to between calls; one grown past it
   by a huge answer is freed. */
#define KEEP_MAX (256 * 1024)
/* The slots of a usage reading. */
enum { U_INPUT, U_OUTPUT, U_TOTAL, U_COUNT };

/* What one answer (or one event of a stream) says. */
struct answer {
  struct lf_buf model;        /* decoded, when have_model */
  int have_model;
  long long usage[U_COUNT];   /* -1 when absent */
  int usage_rank[U_COUNT];    /* the key that gave it: lower wins */
  int have_usage;
  struct lf_text message;     /* raw JSON of choices[0].message, or of
                                 its text (legacy completions) */
  struct lf_text choices;     /* raw JSON of the choices array */
  size_t nchoices;
  int first_is_object;        /* choices[0] is an object */
  struct lf_text output;      /* raw JSON of "output" (Responses API) */
  struct lf_buf error;        /* error.message, when have_error */
  int have_error;
  struct lf_buf delta;        /* choices[0].delta.content of an event */
  int have_delta;
};

/* What the request says, and the scratch of the reading. */
struct reading {
  struct lf_text input;       /* raw JSON of the prompt */
  int input_rank;             /* the key that gave it: lower wins */
  struct lf_buf model;        /* the model asked for, decoded */
  int have_model;
  struct lf_buf params;       /* modelParameters members, comma-joined */
  unsigned params_seen;       /* bit i: request key i is in params */
  struct lf_buf text;         /* a string being decoded */
  struct lf_buf content;      /* a stream's answer text */
  int have_content;
};

/* Request keys: the prompt (in order of preference), the model, and
   the model parameters from FIRST_PARAM on. */
static const char *const request_keys[] = {
  "messages", "input", "prompt", "model",
  "temperature", "top_p", "max_tokens", "max_completion_tokens",
  "presence_penalty", "frequency_penalty", "seed", "n", "stream",
  "reasoning_effort", "max_output_tokens", NULL
};
#define PROMPT_KEYS 3
#define FIRST_PARAM 4

/* Usage keys: Chat Completions names first, then the Responses API's;
   the slot of key i is usage_slot[i]. */
static const char *const usage_keys[] = {
  "prompt_tokens", "input_tokens", "completion_tokens", "output_tokens",
  "total_tokens", NULL
};
static const int usage_slot[] = { U_INPUT, U_INPUT, U_OUTPUT, U_OUTPUT,
                                  U_TOTAL };

enum { A_MODEL, A_USAGE, A_CHOICES, A_OUTPUT, A_ERROR, A_RESPONSE };
static const char *const answer_keys[] = {
  "model", "usage", "choices", "output", "error", "response", NULL
};

static const char *const message_key[] = { "message", NULL };
/* What a choice of a whole answer holds: a chat message, or a legacy
   completion's text. */
static const char *const choice_keys[] = { "message", "text", NULL };
static const char *const delta_key[] = { "delta", NULL };
static const char *const content_key[] = { "content", NULL };


/* {================================================================
** Reading the bodies
** ================================================================= */

/* Passes over the value at the cursor, keeping where its text is. */
static int raw_value(struct lf_jread *r, struct lf_text *t)
{
  int result;
  (void)lf_jread_peek(r);
  t->s = (const char *)r->p;
  result = lf_jread_skip(r);
  t->n = (size_t)((const char *)r->p - t->s);
  return result;
}

/* Decodes the string at the cursor into out, at most keep bytes
   (replacing what out held); *ok is 1 when it is a string with no NUL
   that was not cut.  Any other value is passed over. */
static int read_short(struct lf_jread *r, struct lf_buf *out, size_t keep,
                      int *ok)
{
  struct lf_jtext t;
  int result;
  *ok = 0;
  if(lf_jread_peek(r) != '"')
    return lf_jread_skip(r);
  lf_buf_reset(out);
  t.out = out;
  t.keep = keep;
  t.full = 0;
  t.nul = 0;
  result = lf_jread_string(r, &t);
  *ok = !result && !t.nul && t.full <= keep;
  return result;
}

/* Appends the JSON string of n bytes of s to b, with each byte that is
   not part of valid UTF-8 replaced by U+FFFD. */
static int put_mended(struct lf_buf *b, struct lf_buf *tmp, const char *s,
                      size_t n)
{
  static const char replacement[] = "\xEF\xBF\xBD";
  size_t good = lf_utf8_check(s, n);
  int result;
  if(good == n)
    return lf_json_string(b, s, n, NULL);
  lf_buf_reset(tmp);
  while(n > 0) {
    good = lf_utf8_check(s, n);
    result = lf_buf_add(tmp, s, good);
    if(!result && good < n)
      result = lf_buf_add(tmp, replacement, 3);
    if(result)
      return result;
    if(good < n)
      good++;
    s += good;
    n -= good;
  }
  return lf_json_string(b, tmp->data ? tmp->data : "", tmp->len, NULL);
}

/* Appends "key": to b, after a comma unless *first (then cleared). */
static int put_key(struct lf_buf *b, const char *key, int *first)
{
  int result = *first ? LF_OK : lf_buf_addc(b, ',');
  *first = 0;
  if(!result)
    result = lf_buf_addc(b, '"');
  if(!result)
    result = lf_buf_adds(b, key);
  if(!result)
    result = lf_buf_add(b, "\":", 2);
  return result;
}

/* One model parameter: a number as written, a string (UTF-8), a
   boolean as the string "true" or "false"; anything else is passed
   over. */
static int read_param(struct lf_jread *r, const char *key,
                      struct reading *rd)
{
  struct lf_text raw;
  size_t mark = rd->params.len;
  int ch = lf_jread_peek(r), first = mark == 0, ok, result;
  if(ch == '"') {
    result = read_short(r, &rd->text, SHORT_MAX, &ok);
    if(result || !ok)
      return result;
    result = put_key(&rd->params, key, &first);
    if(!result)
      result = lf_json_string(&rd->params, lf_buf_cstr(&rd->text),
                              rd->text.len, NULL);
    if(result == LF_EINVAL) {
      rd->params.len = mark;           /* not UTF-8: left out */
      result = LF_OK;
    }
    return result ? LF_JS_NOMEM : LF_JS_OK;
  }
  if(ch == 't' || ch == 'f') {
    result = lf_jread_literal(r, ch == 't' ? "true" : "false");
    if(!result && (put_key(&rd->params, key, &first) ||
                   lf_buf_adds(&rd->params, ch == 't' ? "\"true\""
                                                      : "\"false\"")))
      return LF_JS_NOMEM;
    return result;
  }
  if(ch != '-' && (ch < '0' || ch > '9'))
    return lf_jread_skip(r);
  result = raw_value(r, &raw);
  if(result || raw.n > NUMBER_MAX)
    return result;
  if(put_key(&rd->params, key, &first) ||
     lf_buf_add(&rd->params, raw.s, raw.n))
    return LF_JS_NOMEM;
  return LF_JS_OK;
}

static int request_member(struct lf_jread *r, int which, void *ud)
{
  struct reading *rd = ud;
  struct lf_text raw;
  size_t mark;
  int result, ok;
  if(which < 0)
    return lf_jread_skip(r);
  if(which < PROMPT_KEYS) {
    result = raw_value(r, &raw);
    if(!result && which < rd->input_rank &&
       !(raw.n == 4 && !memcmp(raw.s, "null", 4))) {
      rd->input = raw;                 /* null is no prompt */
      rd->input_rank = which;
    }
    return result;
  }
  if(which == FIRST_PARAM - 1) {
    result = read_short(r, &rd->text, SHORT_MAX, &ok);
    if(!result && ok) {
      lf_buf_reset(&rd->model);
      if(lf_buf_add(&rd->model, rd->text.data, rd->text.len))
        return LF_JS_NOMEM;
      rd->have_model = 1;
    }
    return result;
  }
  if(rd->params_seen >> which & 1)
    return lf_jread_skip(r);           /* a repeated key: the first stays */
  mark = rd->params.len;
  result = read_param(r, request_keys[which], rd);
  if(rd->params.len > mark)
    rd->params_seen |= 1u << which;
  return result;
}

/* Reads a whole document at r: one object, then nothing. */
static int read_document(struct lf_jread *r, const char *const *names,
                         int (*f)(struct lf_jread *, int, void *),
                         void *ud)
{
  int result;
  if(lf_jread_peek(r) != '{')
    return LF_JS_BAD;
  result = lf_jread_members(r, names, f, ud);
  if(!result && lf_jread_peek(r) >= 0)
    return LF_JS_BAD;
  return result;
}

/* Reads the request body.  A body that is not one JSON object leaves
   the reading as it was. */
static int read_request(struct reading *rd, const struct lf_text *body)
{
  struct lf_jread r;
  int result;
  lf_jread_init(&r, body->s, body->n);
  result = read_document(&r, request_keys, request_member, rd);
  lf_jread_free(&r);
  if(result) {
    rd->input.s = NULL;
    rd->have_model = 0;
    rd->params.len = 0;
  }
  return result == LF_JS_NOMEM ? LF_ENOMEM : LF_OK;
}

static void answer_reset(struct answer *a)
{
  int i;
  a->have_model = a->have_usage = a->have_error = a->have_delta = 0;
  for(i = 0; i < U_COUNT; i++) {
    a->usage[i] = -1;
    a->usage_rank[i] = 0;
  }
  a->message.s = a->choices.s = a->output.s = NULL;
  lf_buf_reset(&a->error);
  a->nchoices = 0;
  a->first_is_object = 0;
}

static int usage_member(struct lf_jread *r, int which, void *ud)
{
  struct answer *a = ud;
  long long count;
  int ch = lf_jread_peek(r), slot, result;
  if(which < 0 || ch == '-' || ch < '0' || ch > '9')
    return lf_jread_skip(r);
  result = lf_jread_number(r, &count);
  slot = usage_slot[which];
  if(!result && count >= 0 &&
     (a->usage[slot] < 0 || which < a->usage_rank[slot])) {
    a->usage[slot] = count;
    a->usage_rank[slot] = which;
  }
  return result;
}

static int message_member(struct lf_jread *r, int which, void *ud)
{
  struct answer *a = ud;
  struct lf_text t;
  int result;
  if(which < 0 || (which == 1 && a->message.s))
    return lf_jread_skip(r);
  result = raw_value(r, &t);
  if(!result && (which == 0 || !a->message.s))
    a->message = t;                 /* a message wins over a text */
  return result;
}

static int content_member(struct lf_jread *r, int which, void *ud)
{
  struct answer *a = ud;
  struct lf_jtext t;
  int result;
  if(which < 0 || lf_jread_peek(r) != '"')
    return lf_jread_skip(r);
  lf_buf_reset(&a->delta);
  t.out = &a->delta;
  t.keep = (size_t)-1;
  t.full = 0;
  t.nul = 0;
  result = lf_jread_string(r, &t);
  a->have_delta = !result;
  return result;
}

static int delta_member(struct lf_jread *r, int which, void *ud)
{
  if(which < 0 || lf_jread_peek(r) != '{')
    return lf_jread_skip(r);
  return lf_jread_members(r, content_key, content_member, ud);
}

/* An element of choices: the first one's message (whole answers) or
   delta content (stream events) is kept. */
static int choice_element(struct lf_jread *r, size_t i, void *ud)
{
  struct answer *a = ud;
  int result;
  a->nchoices = i + 1;
  if(i > 0 || lf_jread_peek(r) != '{')
    return lf_jread_skip(r);
  a->first_is_object = 1;
  result = lf_jread_members(r, choice_keys, message_member, a);
  return result;
}

static int stream_choice(struct lf_jread *r, size_t i, void *ud)
{
  if(i > 0 || lf_jread_peek(r) != '{')
    return lf_jread_skip(r);
  return lf_jread_members(r, delta_key, delta_member, ud);
}

static int error_member(struct lf_jread *r, int which, void *ud)
{
  struct answer *a = ud;
  return which < 0 ? lf_jread_skip(r) :
    read_short(r, &a->error, LF_EXCHANGE_MESSAGE_MAX, &a->have_error);
}

static int whole_member(struct lf_jread *r, int which, void *ud);

/* A member of an answer; stream events share it (their choices carry
   deltas). */
static int answer_member(struct lf_jread *r, int which, void *ud,
                         int stream)
{
  struct answer *a = ud;
  int ch = lf_jread_peek(r), result;
  switch(which) {
  case A_MODEL:
    return read_short(r, &a->model, SHORT_MAX, &a->have_model);
  case A_USAGE:
    if(ch != '{')
      return lf_jread_skip(r);
    a->have_usage = 1;
    return lf_jread_members(r, usage_keys, usage_member, a);
  case A_CHOICES:
    if(ch != '[')
      return lf_jread_skip(r);
    if(stream)
      return lf_jread_elements(r, stream_choice, a);
    a->choices.s = (const char *)r->p;
    result = lf_jread_elements(r, choice_element, a);
    a->choices.n = (size_t)((const char *)r->p - a->choices.s);
    return result;
  case A_OUTPUT:
    return stream ? lf_jread_skip(r) : raw_value(r, &a->output);
  case A_ERROR:
    if(ch != '{')
      return lf_jread_skip(r);
    /* a cut message is still worth showing */
    result = lf_jread_members(r, message_key, error_member, a);
    a->have_error = a->error.len > 0;    /* "" says nothing */
    return result;
  case A_RESPONSE:
    /* the Responses API's last stream event holds the whole answer */
    if(!stream || ch != '{')
      return lf_jread_skip(r);
    return lf_jread_members(r, answer_keys, whole_member, a);
  default:
    return lf_jread_skip(r);
  }
}

static int whole_member(struct lf_jread *r, int which, void *ud)
{
  return answer_member(r, which, ud, 0);
}

static int event_member(struct lf_jread *r, int which, void *ud)
{
  return answer_member(r, which, ud, 1);
}

/* Reads the data line of one stream event into a (reset first).
   Returns the reader's result. */
static int read_event(struct answer *a, const char *p, size_t n)
{
  struct lf_jread r;
  int result;
  answer_reset(a);
  lf_jread_init(&r, p, n);
  result = read_document(&r, answer_keys, event_member, a);
  lf_jread_free(&r);
  return result;
}

/* Takes what one stream event says into the final answer: the last
   model, usage, error and whole output, and the text of its delta.  The
   output stays a piece of the answer's text, which outlives both. */
static int merge_event(struct answer *res, struct reading *rd,
                       const struct answer *ev)
{
  int i;
  if(ev->have_model) {
    lf_buf_reset(&res->model);
    if(lf_buf_add(&res->model, ev->model.data, ev->model.len))
      return LF_ENOMEM;
    res->have_model = 1;
  }
  if(ev->have_usage) {
    res->have_usage = 1;
    for(i = 0; i < U_COUNT; i++)
      res->usage[i] = ev->usage[i];
  }
  if(ev->have_error) {
    lf_buf_reset(&res->error);
    if(lf_buf_add(&res->error, ev->error.data, ev->error.len))
      return LF_ENOMEM;
    res->have_error = 1;
  }
  if(ev->output.s)
    res->output = ev->output;
  if(ev->have_delta) {
    if(lf_buf_add(&rd->content, ev->delta.data, ev->delta.len))
      return LF_ENOMEM;
    rd->have_content = 1;
  }
  return LF_OK;
}

/* Reads the server-sent events of a stream: each "data:" line that holds
   a JSON object.  Other lines, and lines cut by the size bound, are
   passed over. */
static int read_stream(struct answer *res, struct answer *ev,
                       struct reading *rd, const struct lf_text *body)
{
  const char *p = body->s, *end = body->s + body->n;
  int result;
  while(p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *line = p;
    if(!eol)
      eol = end;
    p = eol + (eol < end);
    if(eol - line < 5 || memcmp(line, "data:", 5))
      continue;
    line += 5;
    result = read_event(ev, line, (size_t)(eol - line));
    if(result == LF_JS_NOMEM ||
       (result == LF_JS_OK && merge_event(res, rd, ev)))
      return LF_ENOMEM;
  }
  return LF_OK;
}

/* Reads an answer that is one JSON object into res.  Returns the
   reader's result; res is left empty unless it is LF_JS_OK. */
static int read_answer(struct answer *res, const struct lf_text *body)
{
  struct lf_jread r;
  int result;
  lf_jread_init(&r, body->s, body->n);
  result = read_document(&r, answer_keys, whole_member, res);
  lf_jread_free(&r);
  if(result)
    answer_reset(res);
  return result;
}

/* Reads the answer: as one JSON object when it starts like one and was
   not cut, else (or when that fails) as server-sent events. */
static int read_any_answer(struct answer *res, struct answer *ev,
                           struct reading *rd, const struct lf_exchange *x)
{
  struct lf_jread r;
  int first, result;
  lf_jread_init(&r, x->answer.s, x->answer.n);
  first = lf_jread_peek(&r);
  lf_jread_free(&r);
  if(!x->truncated && first == '{') {
    result = read_answer(res, &x->answer);
    if(result != LF_JS_BAD && result != LF_JS_END)
      return result == LF_JS_NOMEM ? LF_ENOMEM : LF_OK;
  }
  return read_stream(res, ev, rd, &x->answer);
}

/* }================================================================ */


/* {================================================================
** Writing the fields
** ================================================================= */

/* Where each field's text lies in the output buffer while it grows. */
struct spans {
  size_t off[2][LF_F_COUNT];
  size_t len[2][LF_F_COUNT];
  int set[2][LF_F_COUNT];
};

enum { TRACE, GEN };

/* The writer's state: the output, where fields lie, a scratch buffer. */
struct writer {
  struct lf_buf *b;
  struct lf_buf tmp;
  struct spans sp;
  size_t start;                     /* where the open field began */
};

static void open_field(struct writer *w)
{
  w->start = w->b->len;
}

static void close_field(struct writer *w, int who, int field)
{
  w->sp.off[who][field] = w->start;
  w->sp.len[who][field] = w->b->len - w->start;
  w->sp.set[who][field] = 1;
}

/* The field as a copy of another's text. */
static void same_field(struct writer *w, int who, int field, int from,
                       int from_field)
{
  w->sp.off[who][field] = w->sp.off[from][from_field];
  w->sp.len[who][field] = w->sp.len[from][from_field];
  w->sp.set[who][field] = w->sp.set[from][from_field];
}

/* A string field from text, mended to UTF-8. */
static int text_field(struct writer *w, int who, int field,
                      const struct lf_text *t)
{
  int result;
  open_field(w);
  result = put_mended(w->b, &w->tmp, t->s ? t->s : "", t->s ? t->n : 0);
  if(!result)
    close_field(w, who, field);
  return result;
}

/* A JSON field taken as it is (the caller checked it). */
static int raw_field(struct writer *w, int who, int field, const char *s,
                     size_t n)
{
  int result;
  open_field(w);
  result = lf_buf_add(w->b, s, n);
  if(!result)
    close_field(w, who, field);
  return result;
}

/* Raw JSON from a body: kept when it is valid UTF-8; *bad notes why
   not. */
static int body_field(struct writer *w, int who, int field,
                      const struct lf_text *t, unsigned flag,
                      unsigned *bad)
{
  if(lf_utf8_check(t->s, t->n) != t->n) {
    *bad |= flag;
    return LF_OK;
  }
  return raw_field(w, who, field, t->s, t->n);
}

/* "key":<mended string> as a member, after a comma unless first. */
static int member_text(struct writer *w, const char *key,
                       const struct lf_text *t, int *first)
{
  int result;
  if(!t->s)
    return LF_OK;
  result = put_key(w->b, key, first);
  return result ? result : put_mended(w->b, &w->tmp, t->s, t->n);
}

static int own_key(struct lf_jread *r, int which, void *ud)
{
  unsigned *seen = ud;
  if(which >= 0)
    *seen |= 1u << which;
  return lf_jread_skip(r);
}

/* Which of route (bit 0) and status (bit 1) the caller's metadata
   object has. */
static unsigned caller_keys(const struct lf_text *m)
{
  static const char *const names[] = { "route", "status", NULL };
  struct lf_jread r;
  unsigned seen = 0;
  lf_jread_init(&r, m->s, m->n);
  (void)lf_jread_members(&r, names, own_key, &seen);
  lf_jread_free(&r);
  return seen;
}

/* The trace's metadata: route and status, then the caller's members; a
   key the caller gives replaces ours. */
static int trace_metadata(struct writer *w, const struct lf_exchange *x)
{
  unsigned theirs = x->metadata.s ? caller_keys(&x->metadata) : 0;
  int first = 1, result;
  open_field(w);
  result = lf_buf_addc(w->b, '{');
  if(!result && !(theirs & 1))
    result = member_text(w, "route", &x->route, &first);
  if(!result && !(theirs & 2)) {
    result = put_key(w->b, "status", &first);
    if(!result)
      result = lf_json_int(w->b, x->status);
  }
  if(!result && x->metadata.s && x->metadata.n > 2) {
    result = first ? LF_OK : lf_buf_addc(w->b, ',');
    if(!result)
      result = lf_buf_add(w->b, x->metadata.s + 1, x->metadata.n - 2);
  }
  if(!result)
    result = lf_buf_addc(w->b, '}');
  if(!result)
    close_field(w, TRACE, LF_F_METADATA);
  return result;
}

/* The generation's metadata: where the answer came from, whether it
   was cut, and what was left out (bad, LF_EX_* bits). */
static int gen_metadata(struct writer *w, const struct lf_exchange *x,
                        unsigned bad)
{
  static const char *const left_out[] = {
    NULL, "\"the prompt: not valid UTF-8\"",
    "\"the answer: not valid UTF-8\"",
    "\"the prompt and the answer: not valid UTF-8\""
  };
  int first = 1, result;
  if(!x->upstream.s && !x->upstream_status.s && !x->truncated && !bad)
    return LF_OK;
  open_field(w);
  result = lf_buf_addc(w->b, '{');
  if(!result)
    result = member_text(w, "upstream", &x->upstream, &first);
  if(!result)
    result = member_text(w, "upstream_status", &x->upstream_status,
                         &first);
  if(!result && x->truncated) {
    result = put_key(w->b, "body_truncated", &first);
    if(!result)
      result = lf_buf_adds(w->b, "true");
  }
  if(!result && (bad & 3)) {
    result = put_key(w->b, "left_out", &first);
    if(!result)
      result = lf_buf_adds(w->b, left_out[bad & 3]);
  }
  if(!result)
    result = lf_buf_addc(w->b, '}');
  if(!result)
    close_field(w, GEN, LF_F_METADATA);
  return result;
}

static int usage_field(struct writer *w, const struct answer *a)
{
  static const char *const names[U_COUNT] = { "input", "output", "total" };
  int i, first = 1, result = LF_OK;
  if(!a->have_usage)
    return LF_OK;
  for(i = 0; i < U_COUNT; i++)
    first = first && a->usage[i] < 0;
  if(first)
    return LF_OK;                   /* no count the server can use */
  first = 1;
  open_field(w);
  result = lf_buf_addc(w->b, '{');
  for(i = 0; i < U_COUNT && !result; i++) {
    if(a->usage[i] < 0)
      continue;
    result = put_key(w->b, names[i], &first);
    if(!result)
      result = lf_json_int(w->b, a->usage[i]);
  }
  if(!result)
    result = lf_buf_addc(w->b, '}');
  if(!result)
    close_field(w, GEN, LF_F_USAGE_DETAILS);
  return result;
}

/* The answer as output: a stream's text as an assistant message, the
   only choice's message, all the choices, or the Responses output. */
static int output_field(struct writer *w, const struct answer *a,
                        const struct reading *rd, unsigned *bad)
{
  struct lf_text t;
  int result;
  if(rd->have_content) {
    size_t mark = w->b->len;
    open_field(w);
    result = lf_buf_adds(w->b, "{\"role\":\"assistant\",\"content\":");
    if(!result)
      result = lf_json_string(w->b, rd->content.data ? rd->content.data
                              : "", rd->content.len, NULL);
    if(result == LF_EINVAL) {
      w->b->len = mark;
      *bad |= LF_EX_BAD_OUTPUT;
      return LF_OK;
    }
    if(!result)
      result = lf_buf_addc(w->b, '}');
    if(!result)
      close_field(w, GEN, LF_F_OUTPUT);
    return result;
  }
  if(a->choices.s && a->first_is_object)
    t = a->nchoices == 1 ? a->message : a->choices;
  else
    t = a->output;
  if(!t.s)
    return LF_OK;
  return body_field(w, GEN, LF_F_OUTPUT, &t, LF_EX_BAD_OUTPUT, bad);
}

/* Level and status message from the status and the upstream's error. */
static int level_fields(struct writer *w, const struct lf_exchange *x,
                        const struct answer *a)
{
  const char *level = x->status >= 500 ? "\"ERROR\"" :
                      x->status >= 400 ? "\"WARNING\"" : NULL;
  struct lf_text msg;
  char status[32];
  int result;
  if(!level)
    return LF_OK;
  result = raw_field(w, GEN, LF_F_LEVEL, level, strlen(level));
  if(result)
    return result;
  if(a->have_error) {
    msg.s = a->error.data;
    msg.n = a->error.len;
  } else {
    msg.n = (size_t)snprintf(status, sizeof(status), "HTTP %d",
                             x->status);
    msg.s = status;
  }
  return text_field(w, GEN, LF_F_STATUS_MESSAGE, &msg);
}

static int time_field(struct writer *w, double epoch)
{
  char iso[LF_TIME_LEN + 1];
  if(lf_time_format(epoch, iso))
    return LF_OK;                   /* out of range: left out */
  open_field(w);
  if(lf_buf_addc(w->b, '"') || lf_buf_add(w->b, iso, LF_TIME_LEN) ||
     lf_buf_addc(w->b, '"'))
    return LF_ENOMEM;
  close_field(w, GEN, LF_F_COMPLETION_START_TIME);
  return LF_OK;
}

/* "METHOD route" as the trace's name. */
static int default_name(struct writer *w, const struct lf_exchange *x)
{
  struct lf_buf both;
  struct lf_text t;
  int result;
  lf_buf_init(&both, 0);
  result = lf_buf_add(&both, x->method.s ? x->method.s : "",
                      x->method.s ? x->method.n : 0);
  if(!result)
    result = lf_buf_addc(&both, ' ');
  if(!result && x->route.s)
    result = lf_buf_add(&both, x->route.s, x->route.n);
  t.s = both.data;
  t.n = both.len;
  if(!result)
    result = text_field(w, TRACE, LF_F_NAME, &t);
  lf_buf_free(&both);
  return result;
}

static int write_fields(struct writer *w, const struct lf_exchange *x,
                        const struct reading *rd, const struct answer *a,
                        unsigned *bad)
{
  int result;
  if(x->name.s)
    result = text_field(w, TRACE, LF_F_NAME, &x->name);
  else
    result = default_name(w, x);
  if(!result && x->user.s)
    result = text_field(w, TRACE, LF_F_USER_ID, &x->user);
  if(!result && x->session.s)
    result = text_field(w, TRACE, LF_F_SESSION_ID, &x->session);
  if(!result && x->tags.s)
    result = raw_field(w, TRACE, LF_F_TAGS, x->tags.s, x->tags.n);
  if(!result)
    result = trace_metadata(w, x);
  if(!result)
    result = text_field(w, GEN, LF_F_NAME,
                        x->gen_name.s ? &x->gen_name : &x->route);
  if(!result && (a->have_model || rd->have_model)) {
    struct lf_text m;
    const struct lf_buf *mb = a->have_model ? &a->model : &rd->model;
    m.s = mb->data ? mb->data : "";
    m.n = mb->len;
    result = text_field(w, GEN, LF_F_MODEL, &m);
  }
  if(!result && rd->params.len) {
    open_field(w);
    result = lf_buf_addc(w->b, '{');
    if(!result)
      result = lf_buf_add(w->b, rd->params.data, rd->params.len);
    if(!result)
      result = lf_buf_addc(w->b, '}');
    if(!result)
      close_field(w, GEN, LF_F_MODEL_PARAMETERS);
  }
  if(!result)
    result = usage_field(w, a);
  if(!result && x->capture_io && rd->input.s)
    result = body_field(w, GEN, LF_F_INPUT, &rd->input, LF_EX_BAD_INPUT,
                        bad);
  if(!result && x->capture_io)
    result = output_field(w, a, rd, bad);
  if(!result)
    result = level_fields(w, x, a);
  if(!result && x->header_time >= 0)
    result = time_field(w, x->start + x->header_time);
  if(!result)
    result = gen_metadata(w, x, *bad);
  same_field(w, TRACE, LF_F_INPUT, GEN, LF_F_INPUT);
  same_field(w, TRACE, LF_F_OUTPUT, GEN, LF_F_OUTPUT);
  return result;
}

/* }================================================================ */


double lf_exchange_seconds(const char *s, size_t n)
{
  double v = 0, scale = 1;
  size_t i = n, digits = 0;
  int fraction = 0;
  while(i > 0 && (s[i - 1] == ' ' || s[i - 1] == ','))
    i--;
  n = i;
  while(i > 0 && ((s[i - 1] >= '0' && s[i - 1] <= '9') || s[i - 1] == '.'))
    i--;
  for(; i < n; i++) {
    if(s[i] == '.') {
      if(fraction)
        return -1;
      fraction = 1;
      continue;
    }
    digits++;
    if(fraction) {
      scale /= 10;
      v += (s[i] - '0') * scale;
    } else {
      v = v * 10 + (s[i] - '0');
    }
  }
  return digits ? v : -1;
}

struct lf_exchange_work {
  struct reading rd;
  struct answer a;            /* the answer */
  struct answer ev;           /* one event of a stream */
  struct lf_buf tmp;          /* the writer's scratch */
};

void lf_exchange_out_init(struct lf_exchange_out *o)
{
  lf_fields_init(&o->trace);
  lf_fields_init(&o->gen);
  lf_buf_init(&o->buf, 0);
  o->left_out = 0;
  o->work = NULL;
}

static void answer_free(struct answer *a)
{
  lf_buf_free(&a->model);
  lf_buf_free(&a->error);
  lf_buf_free(&a->delta);
}

void lf_exchange_out_free(struct lf_exchange_out *o)
{
  struct lf_exchange_work *k = o->work;
  if(k) {
    lf_buf_free(&k->rd.model);
    lf_buf_free(&k->rd.params);
    lf_buf_free(&k->rd.text);
    lf_buf_free(&k->rd.content);
    answer_free(&k->a);
    answer_free(&k->ev);
    lf_buf_free(&k->tmp);
    free(k);
  }
  lf_buf_free(&o->buf);
  lf_exchange_out_init(o);
}

/* Readies o's kept buffers for a reading (made zeroed the first time:
   empty buffers).  Returns NULL when out of memory. */
static struct lf_exchange_work *work_start(struct lf_exchange_out *o)
{
  struct lf_exchange_work *k = o->work;
  struct reading *rd;
  if(!k) {
    k = calloc(1, sizeof(*k));
    if(!k)
      return NULL;
    o->work = k;
  }
  rd = &k->rd;
  if(rd->content.cap > KEEP_MAX)
    lf_buf_free(&rd->content);
  if(k->ev.delta.cap > KEEP_MAX)
    lf_buf_free(&k->ev.delta);
  if(k->tmp.cap > KEEP_MAX)
    lf_buf_free(&k->tmp);
  rd->input.s = NULL;
  rd->input_rank = PROMPT_KEYS;
  rd->have_model = rd->have_content = 0;
  rd->params_seen = 0;
  lf_buf_reset(&rd->model);
  lf_buf_reset(&rd->params);
  lf_buf_reset(&rd->content);
  answer_reset(&k->a);
  answer_reset(&k->ev);
  return k;
}

/* Points the fields of o into its buffer, now that it is written. */
static void resolve(struct lf_exchange_out *o, const struct spans *sp)
{
  struct lf_fields *f[2];
  int who, i;
  f[TRACE] = &o->trace;
  f[GEN] = &o->gen;
  for(who = 0; who < 2; who++) {
    lf_fields_init(f[who]);
    for(i = 0; i < LF_F_COUNT; i++) {
      if(!sp->set[who][i])
        continue;
      f[who]->v[i] = o->buf.data + sp->off[who][i];
      f[who]->n[i] = sp->len[who][i];
    }
  }
}

int lf_exchange_fields(const struct lf_exchange *x,
                       struct lf_exchange_out *o)
{
  struct lf_exchange_work *k = work_start(o);
  struct writer w;
  int result = k ? LF_OK : LF_ENOMEM;
  lf_buf_reset(&o->buf);
  o->left_out = 0;
  if(!result && x->request.s)
    result = read_request(&k->rd, &x->request);
  if(!result && x->answer.s)
    result = read_any_answer(&k->a, &k->ev, &k->rd, x);
  memset(&w.sp, 0, sizeof(w.sp));
  w.b = &o->buf;
  if(k) {
    w.tmp = k->tmp;
    if(!result)
      result = write_fields(&w, x, &k->rd, &k->a, &o->left_out);
    k->tmp = w.tmp;
  }
  if(!result && !o->buf.data)
    result = lf_buf_addc(&o->buf, ' ');     /* never a NULL base */
  if(result) {
    lf_exchange_out_free(o);
    return LF_ENOMEM;
  }
  resolve(o, &w.sp);
  return LF_OK;
}
