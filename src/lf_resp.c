/*
** lf_resp.c: a bounded JSON reader for the answers of Langfuse.
**
** Only the shapes we need are read into memory, with the reader of
** lf_jread.h; every other value is passed over.  Trailing garbage makes
** the body malformed.
*/
#include <stdlib.h>
#include <string.h>

#include "lf_jread.h"
#include "lf_resp.h"

/* One list entry while it is read; freed unless moved into the result. */
struct entry {
  char *id;
  int status;
  char *message;
  char *error;
};

/* Reads a value as text into *dst (replacing what was there): a string
   decoded, null as NULL, anything else as its raw JSON, each cut at
   LF_RESP_TEXT_MAX bytes.  An id wants a whole string with no NUL. */
static int read_text(struct lf_jread *ps, char **dst, int is_id)
{
  struct lf_jtext t;
  const unsigned char *start;
  int ch = lf_jread_peek(ps), result;
  free(*dst);
  *dst = NULL;
  lf_buf_reset(&ps->scratch);
  t.out = &ps->scratch;
  t.keep = is_id ? (size_t)-1 : LF_RESP_TEXT_MAX;
  t.full = 0;
  t.nul = 0;
  if(ch == '"') {
    result = lf_jread_string(ps, &t);
    if(result || (is_id && t.nul))
      return result;
  } else {
    start = ps->p;
    result = ch == 'n' ? lf_jread_literal(ps, "null") : lf_jread_skip(ps);
    if(result || ch == 'n' || is_id)
      return result;
    if(lf_jread_put(&t, start, (size_t)(ps->p - start)))
      return LF_JS_NOMEM;
    if(t.full > t.keep)
      lf_jread_trim_utf8(t.out, 0);
  }
  *dst = lf_strndup(lf_buf_cstr(&ps->scratch), ps->scratch.len);
  return *dst ? LF_JS_OK : LF_JS_NOMEM;
}

static void entry_free(struct entry *e)
{
  free(e->id);
  free(e->message);
  free(e->error);
  memset(e, 0, sizeof(*e));
}

/* A per-event status: a whole number below 1000, else 0. */
static int read_status(struct lf_jread *ps, int *status)
{
  long long v;
  int result = lf_jread_number(ps, &v);
  *status = v >= 0 && v < 1000 ? (int)v : 0;
  return result;
}

static int entry_member(struct lf_jread *ps, int which, void *ud)
{
  struct entry *e = ud;
  int ch = lf_jread_peek(ps);
  switch(which) {
  case 0: return read_text(ps, &e->id, 1);
  case 1:
    if(ch == '-' || (ch >= '0' && ch <= '9'))
      return read_status(ps, &e->status);
    return lf_jread_skip(ps);
  case 2: return read_text(ps, &e->message, 0);
  case 3: return read_text(ps, &e->error, 0);
  default: return lf_jread_skip(ps);
  }
}

static int read_entry(struct lf_jread *ps, struct entry *e)
{
  static const char *const names[] = {
    "id", "status", "message", "error", NULL
  };
  return lf_jread_members(ps, names, entry_member, e);
}

/* Returns arr with room for element n (of size bytes), reallocated
   when full, or NULL when out of memory (arr is then still valid). */
static void *grow(void *arr, size_t *cap, size_t n, size_t size)
{
  size_t want;
  void *p;
  if(n < *cap)
    return arr;
  want = *cap ? *cap * 2 : 16;
  if(want > (size_t)-1 / size)
    return NULL;
  p = realloc(arr, want * size);
  if(p)
    *cap = want;
  return p;
}

/* The result being filled, the room in its lists, and how many lists
   were found. */
struct top {
  struct lf_resp *r;
  size_t capsucc;
  size_t caperr;
  int seen;
};

/* Moves a complete entry into top->r; an entry with no usable id stays with
   the caller, who frees it. */
static int keep_entry(struct top *top, struct entry *e, int is_error)
{
  struct lf_resp *r = top->r;
  struct lf_resp_error *d;
  void *p;
  if(!e->id)
    return LF_JS_OK;
  if(!is_error) {
    p = grow(r->successes, &top->capsucc, r->nsuccesses,
             sizeof(*r->successes));
    if(!p)
      return LF_JS_NOMEM;
    r->successes = p;
    r->successes[r->nsuccesses++] = e->id;
    e->id = NULL;
    return LF_JS_OK;
  }
  p = grow(r->errors, &top->caperr, r->nerrors, sizeof(*r->errors));
  if(!p)
    return LF_JS_NOMEM;
  r->errors = p;
  d = &r->errors[r->nerrors++];
  d->id = e->id;
  d->status = e->status;
  d->message = e->message;
  d->error = e->error;
  memset(e, 0, sizeof(*e));
  return LF_JS_OK;
}

/* The list and whether it holds errors, while its entries are read. */
struct list {
  struct top *top;
  int is_error;
};

static int list_entry(struct lf_jread *ps, size_t i, void *ud)
{
  struct list *l = ud;
  struct entry e = { NULL, 0, NULL, NULL };
  int result = read_entry(ps, &e);
  (void)i;
  if(!result)
    result = keep_entry(l->top, &e, l->is_error);
  entry_free(&e);
  return result;
}

static int read_list(struct lf_jread *ps, struct top *top, int is_error)
{
  struct list l;
  l.top = top;
  l.is_error = is_error;
  return lf_jread_elements(ps, list_entry, &l);
}

static int top_member(struct lf_jread *ps, int which, void *ud)
{
  struct top *top = ud;
  if(which < 0)
    return lf_jread_skip(ps);
  top->seen++;
  return read_list(ps, top, which == 1);
}

/* Reads a whole body as one object with nothing after it. */
static int read_body(struct lf_jread *ps, const char *const *names,
                     int (*f)(struct lf_jread *, int, void *), void *ud)
{
  int result;
  if(lf_jread_peek(ps) < 0)
    return LF_JS_BAD;                /* empty */
  result = lf_jread_members(ps, names, f, ud);
  if(!result && lf_jread_peek(ps) >= 0)
    return LF_JS_BAD;                /* trailing bytes */
  return result;
}

static int cmp_id(const void *a, const void *b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_error(const void *a, const void *b)
{
  return strcmp(((const struct lf_resp_error *)a)->id,
                ((const struct lf_resp_error *)b)->id);
}

/* bsearch comparisons: the key is the id itself. */
static int find_id(const void *key, const void *elem)
{
  return strcmp(key, *(char *const *)elem);
}

static int find_error(const void *key, const void *elem)
{
  return strcmp(key, ((const struct lf_resp_error *)elem)->id);
}

void lf_resp_init(struct lf_resp *r)
{
  memset(r, 0, sizeof(*r));
}

void lf_resp_free(struct lf_resp *r)
{
  size_t i;
  for(i = 0; i < r->nsuccesses; i++)
    free(r->successes[i]);
  for(i = 0; i < r->nerrors; i++) {
    free(r->errors[i].id);
    free(r->errors[i].message);
    free(r->errors[i].error);
  }
  free(r->successes);
  free(r->errors);
  lf_resp_init(r);
}

int lf_resp_parse(const char *p, size_t len, int flags, struct lf_resp *r)
{
  static const char *const names[] = { "successes", "errors", NULL };
  struct lf_jread ps;
  struct top top;
  int result;
  lf_resp_free(r);
  lf_jread_init(&ps, p, len);
  memset(&top, 0, sizeof(top));
  top.r = r;
  result = read_body(&ps, names, top_member, &top);
  lf_jread_free(&ps);
  if(result == LF_JS_END && (flags & LF_RESP_PREFIX)) {
    r->cut = 1;
    result = LF_JS_OK;
  }
  if(!result && !top.seen)
    result = LF_JS_BAD;
  if(result) {
    lf_resp_free(r);
    return result == LF_JS_NOMEM ? LF_ENOMEM : LF_EINVAL;
  }
  if(r->nsuccesses)
    qsort(r->successes, r->nsuccesses, sizeof(*r->successes), cmp_id);
  if(r->nerrors)
    qsort(r->errors, r->nerrors, sizeof(*r->errors), cmp_error);
  return LF_OK;
}

int lf_resp_succeeded(const struct lf_resp *r, const char *id)
{
  if(!id || !r->nsuccesses)
    return 0;
  return bsearch(id, r->successes, r->nsuccesses, sizeof(*r->successes),
                 find_id) != NULL;
}

const struct lf_resp_error *lf_resp_error_for(const struct lf_resp *r,
                                              const char *id)
{
  if(!id || !r->nerrors)
    return NULL;
  return bsearch(id, r->errors, r->nerrors, sizeof(*r->errors),
                 find_error);
}

static int text_member(struct lf_jread *ps, int which, void *ud)
{
  char **text = ud;
  return which < 0 ? lf_jread_skip(ps) : read_text(ps, &text[which], 0);
}

int lf_resp_error_text(const char *p, size_t len, struct lf_buf *out)
{
  static const char *const names[] = { "message", "error", NULL };
  struct lf_jread ps;
  char *text[2] = { NULL, NULL };
  int result;
  lf_jread_init(&ps, p, len);
  result = read_body(&ps, names, text_member, text);
  lf_jread_free(&ps);
  if(!result && !text[0] && !text[1])
    result = LF_JS_BAD;
  if(!result && text[0] && text[1])
    result = lf_buf_printf(out, "%s: %s", text[0], text[1]);
  else if(!result)
    result = lf_buf_adds(out, text[0] ? text[0] : text[1]);
  else
    result = result == LF_JS_NOMEM ? LF_ENOMEM : LF_EINVAL;
  free(text[0]);
  free(text[1]);
  return result;
}
