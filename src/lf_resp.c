/*
** lf_resp.c: a bounded JSON reader for the answers of Langfuse.
**
** Only the shapes we need are read into memory.  Every other value is
** passed over by an iterative scanner with a fixed bracket stack, so no
** input can overflow the C stack, and memory use stays proportional to
** the input.  Strings are decoded (escapes, surrogate pairs); raw control
** bytes, bad escapes and trailing garbage make the body malformed.
*/
#include <stdlib.h>
#include <string.h>

#include "lf_resp.h"

/* How one step of the scan ended. */
enum scan {
  SCAN_OK = 0,
  SCAN_BAD,           /* not JSON, or not the shape we read */
  SCAN_END,           /* the bytes ran out */
  SCAN_NOMEM
};

/* Longest key we compare; longer keys are passed over. */
#define KEY_MAX 16
/* Replacement for a lone UTF-16 surrogate. */
#define REPLACEMENT 0xFFFD

struct parser {
  const unsigned char *p;
  const unsigned char *end;
  struct lf_buf scratch;      /* the string being decoded */
  size_t capsucc;             /* allocated slots in the result lists */
  size_t caperr;
};

/* Where a decoded string goes: at most keep bytes into out (NULL to
   drop it all), with its full length and whether it held a NUL. */
struct text {
  struct lf_buf *out;
  size_t keep;
  size_t full;
  int nul;
};

/* One list entry while it is read; freed unless moved into the result. */
struct entry {
  char *id;
  int status;
  char *message;
  char *error;
};

static int peek(struct parser *ps)
{
  while(ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' ||
                            *ps->p == '\n' || *ps->p == '\r'))
    ps->p++;
  return ps->p < ps->end ? *ps->p : -1;
}

static int take(struct parser *ps, int ch)
{
  int got = peek(ps);
  if(got < 0)
    return SCAN_END;
  if(got != ch)
    return SCAN_BAD;
  ps->p++;
  return SCAN_OK;
}

static int put_bytes(struct text *t, const void *b, size_t n)
{
  if(t->out && t->full < t->keep) {
    size_t room = t->keep - t->full;
    if(lf_buf_add(t->out, b, n < room ? n : room))
      return SCAN_NOMEM;
  }
  t->full += n;
  return SCAN_OK;
}

/* Drops a UTF-8 sequence left incomplete at the end of a cut text. */
static void trim_utf8(struct lf_buf *b, size_t from)
{
  size_t i = b->len, back = 0, need;
  unsigned char lead;
  while(i > from && back < 4 && (b->data[i - 1] & 0xC0) == 0x80) {
    i--;
    back++;
  }
  if(i == from)
    return;
  lead = (unsigned char)b->data[i - 1];
  need = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : lead >= 0xC0 ? 1 : 0;
  if(need > back) {
    b->len = i - 1;
    b->data[b->len] = '\0';
  }
}

static int hex4(struct parser *ps, unsigned *v)
{
  int i;
  *v = 0;
  for(i = 0; i < 4; i++) {
    unsigned char ch;
    if(ps->p == ps->end)
      return SCAN_END;
    ch = *ps->p++;
    if(ch >= '0' && ch <= '9')
      *v = *v * 16 + (ch - '0');
    else if((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f')
      *v = *v * 16 + ((ch | 0x20) - 'a' + 10);
    else
      return SCAN_BAD;
  }
  return SCAN_OK;
}

static int put_codepoint(struct text *t, unsigned cp)
{
  unsigned char u[4];
  size_t n;
  if(cp == 0) {
    t->nul = 1;
    return SCAN_OK;
  }
  if(cp < 0x80) {
    u[0] = (unsigned char)cp;
    n = 1;
  } else if(cp < 0x800) {
    u[0] = (unsigned char)(0xC0 | (cp >> 6));
    u[1] = (unsigned char)(0x80 | (cp & 0x3F));
    n = 2;
  } else if(cp < 0x10000) {
    u[0] = (unsigned char)(0xE0 | (cp >> 12));
    u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    u[2] = (unsigned char)(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    u[0] = (unsigned char)(0xF0 | (cp >> 18));
    u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    u[3] = (unsigned char)(0x80 | (cp & 0x3F));
    n = 4;
  }
  return put_bytes(t, u, n);
}

/* Reads the four hex digits after \u, and a low surrogate after a high
   one; a lone surrogate becomes U+FFFD. */
static int read_unicode(struct parser *ps, struct text *t)
{
  unsigned cp, lo;
  int result = hex4(ps, &cp);
  if(result)
    return result;
  if(cp >= 0xDC00 && cp < 0xE000)
    cp = REPLACEMENT;
  else if(cp >= 0xD800 && cp < 0xDC00) {
    if(ps->p == ps->end || (ps->p[0] == '\\' && ps->end - ps->p < 2))
      return SCAN_END;
    if(ps->p[0] == '\\' && ps->p[1] == 'u') {
      ps->p += 2;
      result = hex4(ps, &lo);
      if(result)
        return result;
      if(lo >= 0xDC00 && lo < 0xE000)
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      else {
        ps->p -= 6;               /* read that escape on its own */
        cp = REPLACEMENT;
      }
    } else
      cp = REPLACEMENT;
  }
  return put_codepoint(t, cp);
}

static int read_escape(struct parser *ps, struct text *t)
{
  char ch;
  ps->p++;                          /* the backslash */
  if(ps->p == ps->end)
    return SCAN_END;
  switch(*ps->p++) {
  case '"': ch = '"'; break;
  case '\\': ch = '\\'; break;
  case '/': ch = '/'; break;
  case 'b': ch = '\b'; break;
  case 'f': ch = '\f'; break;
  case 'n': ch = '\n'; break;
  case 'r': ch = '\r'; break;
  case 't': ch = '\t'; break;
  case 'u': return read_unicode(ps, t);
  default: return SCAN_BAD;
  }
  return put_bytes(t, &ch, 1);
}

/* Reads a string at the cursor into t. */
static int read_string(struct parser *ps, struct text *t)
{
  int result = take(ps, '"');
  size_t start = t->out ? t->out->len : 0;
  while(!result) {
    const unsigned char *run = ps->p;
    while(ps->p < ps->end && *ps->p != '"' && *ps->p != '\\' &&
          *ps->p >= 0x20)
      ps->p++;
    if(ps->p > run)
      result = put_bytes(t, run, (size_t)(ps->p - run));
    if(result)
      break;
    if(ps->p == ps->end)
      return SCAN_END;
    if(*ps->p == '"') {
      ps->p++;
      if(t->out && t->full > t->keep)
        trim_utf8(t->out, start);
      return SCAN_OK;
    }
    if(*ps->p < 0x20)
      return SCAN_BAD;
    result = read_escape(ps, t);
  }
  return result;
}

static int read_number(struct parser *ps, int *value)
{
  long v = 0;
  int whole = 1;
  if(peek(ps) == '-') {
    ps->p++;
    whole = 0;
  }
  if(ps->p == ps->end)
    return SCAN_END;
  if(*ps->p == '0')
    ps->p++;
  else if(*ps->p >= '1' && *ps->p <= '9') {
    while(ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
      if(v < 1000)
        v = v * 10 + (*ps->p - '0');
      ps->p++;
    }
  } else
    return SCAN_BAD;
  if(ps->p < ps->end && *ps->p == '.') {
    ps->p++;
    whole = 0;
    if(ps->p == ps->end)
      return SCAN_END;
    if(*ps->p < '0' || *ps->p > '9')
      return SCAN_BAD;
    while(ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
      ps->p++;
  }
  if(ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
    ps->p++;
    whole = 0;
    if(ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
      ps->p++;
    if(ps->p == ps->end)
      return SCAN_END;
    if(*ps->p < '0' || *ps->p > '9')
      return SCAN_BAD;
    while(ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
      ps->p++;
  }
  /* a number touching the end of the bytes may have gone on */
  if(ps->p == ps->end)
    return SCAN_END;
  *value = whole && v < 1000 ? (int)v : 0;
  return SCAN_OK;
}

static int read_literal(struct parser *ps, const char *word)
{
  size_t i, n = strlen(word);
  peek(ps);
  for(i = 0; i < n; i++) {
    if(ps->p + i == ps->end)
      return SCAN_END;
    if(ps->p[i] != (unsigned char)word[i])
      return SCAN_BAD;
  }
  ps->p += n;
  return SCAN_OK;
}

static int skip_scalar(struct parser *ps, int ch)
{
  struct text none = { NULL, 0, 0, 0 };
  int value;
  switch(ch) {
  case '"': return read_string(ps, &none);
  case 't': return read_literal(ps, "true");
  case 'f': return read_literal(ps, "false");
  case 'n': return read_literal(ps, "null");
  default:
    if(ch == '-' || (ch >= '0' && ch <= '9'))
      return read_number(ps, &value);
    return SCAN_BAD;
  }
}

/* Reads an object key and its colon, keeping nothing. */
static int skip_key(struct parser *ps)
{
  struct text none = { NULL, 0, 0, 0 };
  int result = read_string(ps, &none);
  return result ? result : take(ps, ':');
}

/* Passes over one value of any shape, nested at most LF_RESP_DEPTH_MAX
   deep, without recursion. */
static int skip_value(struct parser *ps)
{
  char want[LF_RESP_DEPTH_MAX];  /* closing bracket per level */
  int depth = 0, ch, result;
  for(;;) {
    ch = peek(ps);
    if(ch < 0)
      return SCAN_END;
    if(ch == '{' || ch == '[') {
      if(depth == LF_RESP_DEPTH_MAX)
        return SCAN_BAD;
      want[depth++] = ch == '{' ? '}' : ']';
      ps->p++;
      ch = peek(ps);
      if(ch < 0)
        return SCAN_END;
      if(ch != want[depth - 1]) {
        if(want[depth - 1] == '}' && (result = skip_key(ps)))
          return result;
        continue;                   /* to the first member */
      }
      ps->p++;
      depth--;
    } else if((result = skip_scalar(ps, ch)))
      return result;
    for(;;) {                       /* after a value */
      if(depth == 0)
        return SCAN_OK;
      ch = peek(ps);
      if(ch < 0)
        return SCAN_END;
      if(ch == want[depth - 1]) {
        ps->p++;
        depth--;
        continue;
      }
      if(ch != ',')
        return SCAN_BAD;
      ps->p++;
      if(want[depth - 1] == '}' && (result = skip_key(ps)))
        return result;
      break;
    }
  }
}

/* Reads a key and its colon; *which is the index of the key in names,
   or -1 for another key. */
static int read_key(struct parser *ps, const char *const *names,
                    int *which)
{
  struct text t;
  int i, result;
  lf_buf_reset(&ps->scratch);
  t.out = &ps->scratch;
  t.keep = KEY_MAX;
  t.full = 0;
  t.nul = 0;
  result = read_string(ps, &t);
  if(result)
    return result;
  *which = -1;
  for(i = 0; names[i]; i++) {
    if(t.full == strlen(names[i]) && !t.nul &&
       !memcmp(lf_buf_cstr(&ps->scratch), names[i], t.full)) {
      *which = i;
      break;
    }
  }
  return take(ps, ':');
}

/* Reads a value as text into *dst (replacing what was there): a string
   decoded, null as NULL, anything else as its raw JSON, each cut at
   LF_RESP_TEXT_MAX bytes.  An id wants a whole string with no NUL. */
static int read_text(struct parser *ps, char **dst, int is_id)
{
  struct text t;
  const unsigned char *start;
  int ch = peek(ps), result;
  free(*dst);
  *dst = NULL;
  lf_buf_reset(&ps->scratch);
  t.out = &ps->scratch;
  t.keep = is_id ? (size_t)-1 : LF_RESP_TEXT_MAX;
  t.full = 0;
  t.nul = 0;
  if(ch == '"') {
    result = read_string(ps, &t);
    if(result || (is_id && t.nul))
      return result;
  } else {
    start = ps->p;
    result = ch == 'n' ? read_literal(ps, "null") : skip_value(ps);
    if(result || ch == 'n' || is_id)
      return result;
    if(put_bytes(&t, start, (size_t)(ps->p - start)))
      return SCAN_NOMEM;
    if(t.full > t.keep)
      trim_utf8(t.out, 0);
  }
  *dst = lf_strndup(lf_buf_cstr(&ps->scratch), ps->scratch.len);
  return *dst ? SCAN_OK : SCAN_NOMEM;
}

static void entry_free(struct entry *e)
{
  free(e->id);
  free(e->message);
  free(e->error);
  memset(e, 0, sizeof(*e));
}

/* Reads an object member by member: f gets each value, with the index
   of its key in names (-1 for another key, which f may skip). */
static int read_members(struct parser *ps, const char *const *names,
                        int (*f)(struct parser *, int, void *), void *ud)
{
  int ch, which, result = take(ps, '{');
  if(result)
    return result;
  if(peek(ps) == '}') {
    ps->p++;
    return SCAN_OK;
  }
  for(;;) {
    result = read_key(ps, names, &which);
    if(!result)
      result = f(ps, which, ud);
    if(result)
      return result;
    ch = peek(ps);
    if(ch < 0)
      return SCAN_END;
    ps->p++;
    if(ch == '}')
      return SCAN_OK;
    if(ch != ',')
      return SCAN_BAD;
  }
}

static int entry_member(struct parser *ps, int which, void *ud)
{
  struct entry *e = ud;
  int ch = peek(ps);
  switch(which) {
  case 0: return read_text(ps, &e->id, 1);
  case 1:
    if(ch == '-' || (ch >= '0' && ch <= '9'))
      return read_number(ps, &e->status);
    return skip_value(ps);
  case 2: return read_text(ps, &e->message, 0);
  case 3: return read_text(ps, &e->error, 0);
  default: return skip_value(ps);
  }
}

static int read_entry(struct parser *ps, struct entry *e)
{
  static const char *const names[] = {
    "id", "status", "message", "error", NULL
  };
  return read_members(ps, names, entry_member, e);
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

/* Moves a complete entry into r; an entry with no usable id stays with
   the caller, who frees it. */
static int keep_entry(struct parser *ps, struct lf_resp *r,
                      struct entry *e, int is_error)
{
  struct lf_resp_error *d;
  void *p;
  if(!e->id)
    return SCAN_OK;
  if(!is_error) {
    p = grow(r->successes, &ps->capsucc, r->nsuccesses,
             sizeof(*r->successes));
    if(!p)
      return SCAN_NOMEM;
    r->successes = p;
    r->successes[r->nsuccesses++] = e->id;
    e->id = NULL;
    return SCAN_OK;
  }
  p = grow(r->errors, &ps->caperr, r->nerrors, sizeof(*r->errors));
  if(!p)
    return SCAN_NOMEM;
  r->errors = p;
  d = &r->errors[r->nerrors++];
  d->id = e->id;
  d->status = e->status;
  d->message = e->message;
  d->error = e->error;
  memset(e, 0, sizeof(*e));
  return SCAN_OK;
}

static int read_list(struct parser *ps, struct lf_resp *r, int is_error)
{
  int ch = peek(ps), result;
  if(ch < 0)
    return SCAN_END;
  if(ch != '[')
    return SCAN_BAD;
  ps->p++;
  if(peek(ps) == ']') {
    ps->p++;
    return SCAN_OK;
  }
  for(;;) {
    struct entry e = { NULL, 0, NULL, NULL };
    result = read_entry(ps, &e);
    if(!result)
      result = keep_entry(ps, r, &e, is_error);
    entry_free(&e);
    if(result)
      return result;
    ch = peek(ps);
    if(ch < 0)
      return SCAN_END;
    ps->p++;
    if(ch == ']')
      return SCAN_OK;
    if(ch != ',')
      return SCAN_BAD;
  }
}

/* The result being filled and how many lists were found. */
struct top {
  struct lf_resp *r;
  int seen;
};

static int top_member(struct parser *ps, int which, void *ud)
{
  struct top *top = ud;
  if(which < 0)
    return skip_value(ps);
  top->seen++;
  return read_list(ps, top->r, which == 1);
}

/* Reads a whole body as one object with nothing after it. */
static int read_body(struct parser *ps, const char *const *names,
                     int (*f)(struct parser *, int, void *), void *ud)
{
  int result;
  if(peek(ps) < 0)
    return SCAN_BAD;                /* empty */
  result = read_members(ps, names, f, ud);
  if(!result && peek(ps) >= 0)
    return SCAN_BAD;                /* trailing bytes */
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

static void parser_init(struct parser *ps, const char *p, size_t len)
{
  ps->p = (const unsigned char *)p;
  ps->end = ps->p + (p ? len : 0);
  lf_buf_init(&ps->scratch, 0);
  ps->capsucc = 0;
  ps->caperr = 0;
}

int lf_resp_parse(const char *p, size_t len, int flags, struct lf_resp *r)
{
  static const char *const names[] = { "successes", "errors", NULL };
  struct parser ps;
  struct top top;
  int result;
  lf_resp_free(r);
  parser_init(&ps, p, len);
  top.r = r;
  top.seen = 0;
  result = read_body(&ps, names, top_member, &top);
  lf_buf_free(&ps.scratch);
  if(result == SCAN_END && (flags & LF_RESP_PREFIX)) {
    r->cut = 1;
    result = SCAN_OK;
  }
  if(!result && !top.seen)
    result = SCAN_BAD;
  if(result) {
    lf_resp_free(r);
    return result == SCAN_NOMEM ? LF_ENOMEM : LF_EINVAL;
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

static int text_member(struct parser *ps, int which, void *ud)
{
  char **text = ud;
  return which < 0 ? skip_value(ps) : read_text(ps, &text[which], 0);
}

int lf_resp_error_text(const char *p, size_t len, struct lf_buf *out)
{
  static const char *const names[] = { "message", "error", NULL };
  struct parser ps;
  char *text[2] = { NULL, NULL };
  int result;
  parser_init(&ps, p, len);
  result = read_body(&ps, names, text_member, text);
  lf_buf_free(&ps.scratch);
  if(!result && !text[0] && !text[1])
    result = SCAN_BAD;
  if(!result && text[0] && text[1])
    result = lf_buf_printf(out, "%s: %s", text[0], text[1]);
  else if(!result)
    result = lf_buf_adds(out, text[0] ? text[0] : text[1]);
  else
    result = result == SCAN_NOMEM ? LF_ENOMEM : LF_EINVAL;
  free(text[0]);
  free(text[1]);
  return result;
}
