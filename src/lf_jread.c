/*
** lf_jread.c: the pull reader of lf_jread.h.
*/
#include <string.h>

#include "lf_jread.h"

/* Replacement for a lone UTF-16 surrogate. */
#define REPLACEMENT 0xFFFD
/* Largest count lf_jread_number gives: 2^53, the last integer a double
   (and so JavaScript) holds exactly. */
#define COUNT_MAX 9007199254740992LL

void lf_jread_init(struct lf_jread *r, const char *p, size_t len)
{
  r->p = (const unsigned char *)p;
  r->end = r->p + (p ? len : 0);
  lf_buf_init(&r->scratch, 0);
}

void lf_jread_free(struct lf_jread *r)
{
  lf_buf_free(&r->scratch);
}

int lf_jread_peek(struct lf_jread *r)
{
  while(r->p < r->end && (*r->p == ' ' || *r->p == '\t' ||
                            *r->p == '\n' || *r->p == '\r'))
    r->p++;
  return r->p < r->end ? *r->p : -1;
}

int lf_jread_take(struct lf_jread *r, int ch)
{
  int got = lf_jread_peek(r);
  if(got < 0)
    return LF_JS_END;
  if(got != ch)
    return LF_JS_BAD;
  r->p++;
  return LF_JS_OK;
}

int lf_jread_put(struct lf_jtext *t, const void *b, size_t n)
{
  if(t->out && t->full < t->keep) {
    size_t room = t->keep - t->full;
    if(lf_buf_add(t->out, b, n < room ? n : room))
      return LF_JS_NOMEM;
  }
  t->full += n;
  return LF_JS_OK;
}

/* Drops a UTF-8 sequence left incomplete at the end of a cut text. */
void lf_jread_trim_utf8(struct lf_buf *b, size_t from)
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

static int hex4(struct lf_jread *r, unsigned *v)
{
  int i;
  *v = 0;
  for(i = 0; i < 4; i++) {
    unsigned char ch;
    if(r->p == r->end)
      return LF_JS_END;
    ch = *r->p++;
    if(ch >= '0' && ch <= '9')
      *v = *v * 16 + (ch - '0');
    else if((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f')
      *v = *v * 16 + ((ch | 0x20) - 'a' + 10);
    else
      return LF_JS_BAD;
  }
  return LF_JS_OK;
}

static int put_codepoint(struct lf_jtext *t, unsigned cp)
{
  unsigned char u[4];
  size_t n;
  if(cp == 0) {
    t->nul = 1;
    return LF_JS_OK;
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
  return lf_jread_put(t, u, n);
}

/* Reads the four hex digits after \u, and a low surrogate after a high
   one; a lone surrogate becomes U+FFFD. */
static int read_unicode(struct lf_jread *r, struct lf_jtext *t)
{
  unsigned cp, lo;
  int result = hex4(r, &cp);
  if(result)
    return result;
  if(cp >= 0xDC00 && cp < 0xE000)
    cp = REPLACEMENT;
  else if(cp >= 0xD800 && cp < 0xDC00) {
    if(r->p == r->end || (r->p[0] == '\\' && r->end - r->p < 2))
      return LF_JS_END;
    if(r->p[0] == '\\' && r->p[1] == 'u') {
      r->p += 2;
      result = hex4(r, &lo);
      if(result)
        return result;
      if(lo >= 0xDC00 && lo < 0xE000)
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      else {
        r->p -= 6;               /* read that escape on its own */
        cp = REPLACEMENT;
      }
    } else
      cp = REPLACEMENT;
  }
  return put_codepoint(t, cp);
}

static int read_escape(struct lf_jread *r, struct lf_jtext *t)
{
  char ch;
  r->p++;                          /* the backslash */
  if(r->p == r->end)
    return LF_JS_END;
  switch(*r->p++) {
  case '"': ch = '"'; break;
  case '\\': ch = '\\'; break;
  case '/': ch = '/'; break;
  case 'b': ch = '\b'; break;
  case 'f': ch = '\f'; break;
  case 'n': ch = '\n'; break;
  case 'r': ch = '\r'; break;
  case 't': ch = '\t'; break;
  case 'u': return read_unicode(r, t);
  default: return LF_JS_BAD;
  }
  return lf_jread_put(t, &ch, 1);
}

/* Reads a string at the cursor into t. */
int lf_jread_string(struct lf_jread *r, struct lf_jtext *t)
{
  int result = lf_jread_take(r, '"');
  size_t start = t->out ? t->out->len : 0;
  while(!result) {
    const unsigned char *run = r->p;
    while(r->p < r->end && *r->p != '"' && *r->p != '\\' &&
          *r->p >= 0x20)
      r->p++;
    if(r->p > run)
      result = lf_jread_put(t, run, (size_t)(r->p - run));
    if(result)
      break;
    if(r->p == r->end)
      return LF_JS_END;
    if(*r->p == '"') {
      r->p++;
      if(t->out && t->full > t->keep)
        lf_jread_trim_utf8(t->out, start);
      return LF_JS_OK;
    }
    if(*r->p < 0x20)
      return LF_JS_BAD;
    result = read_escape(r, t);
  }
  return result;
}

int lf_jread_number(struct lf_jread *r, long long *count)
{
  long long v = 0;
  int whole = 1;
  *count = -1;
  if(lf_jread_peek(r) == '-') {
    r->p++;
    whole = 0;
  }
  if(r->p == r->end)
    return LF_JS_END;
  if(*r->p == '0')
    r->p++;
  else if(*r->p >= '1' && *r->p <= '9') {
    while(r->p < r->end && *r->p >= '0' && *r->p <= '9') {
      if(v <= COUNT_MAX)
        v = v * 10 + (*r->p - '0');
      r->p++;
    }
  } else
    return LF_JS_BAD;
  if(r->p < r->end && *r->p == '.') {
    r->p++;
    whole = 0;
    if(r->p == r->end)
      return LF_JS_END;
    if(*r->p < '0' || *r->p > '9')
      return LF_JS_BAD;
    while(r->p < r->end && *r->p >= '0' && *r->p <= '9')
      r->p++;
  }
  if(r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
    r->p++;
    whole = 0;
    if(r->p < r->end && (*r->p == '+' || *r->p == '-'))
      r->p++;
    if(r->p == r->end)
      return LF_JS_END;
    if(*r->p < '0' || *r->p > '9')
      return LF_JS_BAD;
    while(r->p < r->end && *r->p >= '0' && *r->p <= '9')
      r->p++;
  }
  /* a number touching the end of the bytes may have gone on */
  if(r->p == r->end)
    return LF_JS_END;
  if(whole && v <= COUNT_MAX)
    *count = v;
  return LF_JS_OK;
}

int lf_jread_literal(struct lf_jread *r, const char *word)
{
  size_t i, n = strlen(word);
  lf_jread_peek(r);
  for(i = 0; i < n; i++) {
    if(r->p + i == r->end)
      return LF_JS_END;
    if(r->p[i] != (unsigned char)word[i])
      return LF_JS_BAD;
  }
  r->p += n;
  return LF_JS_OK;
}

static int skip_scalar(struct lf_jread *r, int ch)
{
  struct lf_jtext none = { NULL, 0, 0, 0 };
  long long value;
  switch(ch) {
  case '"': return lf_jread_string(r, &none);
  case 't': return lf_jread_literal(r, "true");
  case 'f': return lf_jread_literal(r, "false");
  case 'n': return lf_jread_literal(r, "null");
  default:
    if(ch == '-' || (ch >= '0' && ch <= '9'))
      return lf_jread_number(r, &value);
    return LF_JS_BAD;
  }
}

/* Reads an object key and its colon, keeping nothing. */
static int skip_key(struct lf_jread *r)
{
  struct lf_jtext none = { NULL, 0, 0, 0 };
  int result = lf_jread_string(r, &none);
  return result ? result : lf_jread_take(r, ':');
}

/* Passes over one value of any shape, nested at most LF_JREAD_DEPTH_MAX
   deep, without recursion. */
int lf_jread_skip(struct lf_jread *r)
{
  char want[LF_JREAD_DEPTH_MAX];  /* closing bracket per level */
  int depth = 0, ch, result;
  for(;;) {
    ch = lf_jread_peek(r);
    if(ch < 0)
      return LF_JS_END;
    if(ch == '{' || ch == '[') {
      if(depth == LF_JREAD_DEPTH_MAX)
        return LF_JS_BAD;
      want[depth++] = ch == '{' ? '}' : ']';
      r->p++;
      ch = lf_jread_peek(r);
      if(ch < 0)
        return LF_JS_END;
      if(ch != want[depth - 1]) {
        if(want[depth - 1] == '}' && (result = skip_key(r)))
          return result;
        continue;                   /* to the first member */
      }
      r->p++;
      depth--;
    } else if((result = skip_scalar(r, ch)))
      return result;
    for(;;) {                       /* after a value */
      if(depth == 0)
        return LF_JS_OK;
      ch = lf_jread_peek(r);
      if(ch < 0)
        return LF_JS_END;
      if(ch == want[depth - 1]) {
        r->p++;
        depth--;
        continue;
      }
      if(ch != ',')
        return LF_JS_BAD;
      r->p++;
      if(want[depth - 1] == '}' && (result = skip_key(r)))
        return result;
      break;
    }
  }
}

/* Reads a key and its colon; *which is the index of the key in names,
   or -1 for another key. */
/* The index in names of the n bytes at k, or -1. */
static int key_index(const char *const *names, const char *k, size_t n)
{
  int i;
  for(i = 0; names[i]; i++) {
    if(names[i][0] == k[0] && !strncmp(names[i], k, n) && !names[i][n])
      return i;
  }
  return -1;
}

int lf_jread_key(struct lf_jread *r, const char *const *names,
                 int *which)
{
  const unsigned char *q;
  struct lf_jtext t;
  int result;
  if(lf_jread_peek(r) == '"') {
    /* most keys hold no escape: compare them where they lie */
    for(q = r->p + 1; q < r->end && *q != '"' && *q != '\\' && *q >= 0x20;
        q++)
      ;
    if(q < r->end && *q == '"') {
      *which = q == r->p + 1 ? -1 :
        key_index(names, (const char *)r->p + 1, (size_t)(q - r->p - 1));
      r->p = q + 1;
      return lf_jread_take(r, ':');
    }
  }
  lf_buf_reset(&r->scratch);
  t.out = &r->scratch;
  t.keep = LF_JREAD_KEY_MAX;
  t.full = 0;
  t.nul = 0;
  result = lf_jread_string(r, &t);
  if(result)
    return result;
  *which = -1;
  if(t.full && t.full == r->scratch.len && !t.nul)
    *which = key_index(names, r->scratch.data, t.full);
  return lf_jread_take(r, ':');
}

/* What open_items and next_item give when another item follows. */
#define MORE (-1)

/* Takes a container's opening byte; gives LF_JS_OK when close follows at
   once (taken too), MORE when items follow, or an error. */
static int open_items(struct lf_jread *r, int open, int close)
{
  int result = lf_jread_take(r, open);
  if(result)
    return result;
  if(lf_jread_peek(r) == close) {
    r->p++;
    return LF_JS_OK;
  }
  return MORE;
}

/* Takes what follows an item: LF_JS_OK at close, MORE after a comma. */
static int next_item(struct lf_jread *r, int close)
{
  int ch = lf_jread_peek(r);
  if(ch < 0)
    return LF_JS_END;
  r->p++;
  if(ch == close)
    return LF_JS_OK;
  return ch == ',' ? MORE : LF_JS_BAD;
}

/* Reads an object member by member: f gets each value, with the index
   of its key in names (-1 for another key, which f may skip). */
int lf_jread_members(struct lf_jread *r, const char *const *names,
                     int (*f)(struct lf_jread *, int, void *), void *ud)
{
  int which, result = open_items(r, '{', '}');
  while(result == MORE) {
    result = lf_jread_key(r, names, &which);
    if(!result)
      result = f(r, which, ud);
    if(!result)
      result = next_item(r, '}');
  }
  return result;
}

int lf_jread_elements(struct lf_jread *r,
                      int (*f)(struct lf_jread *, size_t, void *),
                      void *ud)
{
  size_t i = 0;
  int result = open_items(r, '[', ']');
  while(result == MORE) {
    result = f(r, i++, ud);
    if(!result)
      result = next_item(r, ']');
  }
  return result;
}
