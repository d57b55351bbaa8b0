/*
** json_check.c: the strict JSON checker of json_check.h, a recursive
** descent over the bytes with a depth bound.
*/
#include <string.h>

#include "json_check.h"

/* Keys of one object compared for repeats; past it the check stops, so
   a very wide object costs linear time. */
#define KEYS_CHECKED 64

struct jc {
  const unsigned char *s;
  size_t n, i;
  const char *why;
};

struct span {
  size_t at, len;
};

static int bad(struct jc *c, const char *why)
{
  if(!c->why)
    c->why = why;
  return 0;
}

static void ws(struct jc *c)
{
  while(c->i < c->n && (c->s[c->i] == ' ' || c->s[c->i] == '\t' ||
                        c->s[c->i] == '\n' || c->s[c->i] == '\r'))
    c->i++;
}

static int hex4(struct jc *c, unsigned *u)
{
  size_t k;
  *u = 0;
  if(c->n - c->i < 4)
    return bad(c, "short \\u escape");
  for(k = 0; k < 4; k++) {
    unsigned ch = c->s[c->i++], d;
    if(ch >= '0' && ch <= '9')
      d = ch - '0';
    else if(ch >= 'a' && ch <= 'f')
      d = ch - 'a' + 10;
    else if(ch >= 'A' && ch <= 'F')
      d = ch - 'A' + 10;
    else
      return bad(c, "bad hex digit in \\u escape");
    *u = *u << 4 | d;
  }
  return 1;
}

static int escape(struct jc *c)
{
  unsigned u, lo;
  if(c->i >= c->n)
    return bad(c, "string ends inside an escape");
  switch(c->s[c->i++]) {
  case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r':
  case 't':
    return 1;
  case 'u':
    if(!hex4(c, &u))
      return 0;
    if(u >= 0xDC00 && u <= 0xDFFF)
      return bad(c, "lone low surrogate escape");
    if(u < 0xD800 || u > 0xDBFF)
      return 1;
    if(c->n - c->i < 2 || c->s[c->i] != '\\' || c->s[c->i + 1] != 'u')
      return bad(c, "high surrogate escape without its pair");
    c->i += 2;
    if(!hex4(c, &lo))
      return 0;
    if(lo < 0xDC00 || lo > 0xDFFF)
      return bad(c, "high surrogate escape without its pair");
    return 1;
  default:
    return bad(c, "unknown escape");
  }
}

/* One UTF-8 sequence starting with a byte >= 0x80. */
static int utf8(struct jc *c)
{
  unsigned b = c->s[c->i], need, cp, min;
  size_t k;
  if(b >= 0xC2 && b <= 0xDF) {
    need = 1; cp = b & 0x1F; min = 0x80;
  } else if(b >= 0xE0 && b <= 0xEF) {
    need = 2; cp = b & 0x0F; min = 0x800;
  } else if(b >= 0xF0 && b <= 0xF4) {
    need = 3; cp = b & 0x07; min = 0x10000;
  } else {
    return bad(c, "invalid UTF-8 lead byte");
  }
  if(c->n - c->i <= need)
    return bad(c, "truncated UTF-8 sequence");
  for(k = 1; k <= need; k++) {
    unsigned t = c->s[c->i + k];
    if((t & 0xC0) != 0x80)
      return bad(c, "invalid UTF-8 continuation");
    cp = cp << 6 | (t & 0x3F);
  }
  if(cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
    return bad(c, "overlong, surrogate or too large UTF-8");
  c->i += need + 1;
  return 1;
}

static int string(struct jc *c)
{
  c->i++;                                   /* the opening quote */
  while(c->i < c->n) {
    unsigned b = c->s[c->i];
    if(b == '"') {
      c->i++;
      return 1;
    }
    if(b < 0x20)
      return bad(c, "raw control byte in a string");
    if(b == '\\') {
      c->i++;
      if(!escape(c))
        return 0;
    } else if(b >= 0x80) {
      if(!utf8(c))
        return 0;
    } else {
      c->i++;
    }
  }
  return bad(c, "unterminated string");
}

static int digits(struct jc *c)
{
  size_t from = c->i;
  while(c->i < c->n && c->s[c->i] >= '0' && c->s[c->i] <= '9')
    c->i++;
  return c->i > from;
}

static int number(struct jc *c)
{
  if(c->s[c->i] == '-')
    c->i++;
  if(c->i < c->n && c->s[c->i] == '0')
    c->i++;
  else if(!(c->i < c->n && c->s[c->i] >= '1' && c->s[c->i] <= '9') ||
          !digits(c))
    return bad(c, "bad number");
  if(c->i < c->n && c->s[c->i] == '.') {
    c->i++;
    if(!digits(c))
      return bad(c, "no digits after the decimal point");
  }
  if(c->i < c->n && (c->s[c->i] == 'e' || c->s[c->i] == 'E')) {
    c->i++;
    if(c->i < c->n && (c->s[c->i] == '+' || c->s[c->i] == '-'))
      c->i++;
    if(!digits(c))
      return bad(c, "no digits in the exponent");
  }
  return 1;
}

static int literal(struct jc *c, const char *w)
{
  size_t n = strlen(w);
  if(c->n - c->i < n || memcmp(c->s + c->i, w, n))
    return bad(c, "unknown literal");
  c->i += n;
  return 1;
}

static int value(struct jc *c, int depth);

static int repeated(const struct jc *c, const struct span *keys,
                    size_t nkeys, size_t at, size_t len)
{
  size_t k;
  for(k = 0; k < nkeys; k++) {
    if(keys[k].len == len && !memcmp(c->s + keys[k].at, c->s + at, len))
      return 1;
  }
  return 0;
}

static int object(struct jc *c, int depth)
{
  struct span keys[KEYS_CHECKED];
  size_t nkeys = 0;
  c->i++;
  ws(c);
  if(c->i < c->n && c->s[c->i] == '}') {
    c->i++;
    return 1;
  }
  for(;;) {
    size_t at;
    ws(c);
    if(c->i >= c->n || c->s[c->i] != '"')
      return bad(c, "object key is not a string");
    at = c->i;
    if(!string(c))
      return 0;
    if(repeated(c, keys, nkeys, at, c->i - at))
      return bad(c, "repeated object key");
    if(nkeys < KEYS_CHECKED) {
      keys[nkeys].at = at;
      keys[nkeys++].len = c->i - at;
    }
    ws(c);
    if(c->i >= c->n || c->s[c->i] != ':')
      return bad(c, "missing colon");
    c->i++;
    if(!value(c, depth + 1))
      return 0;
    ws(c);
    if(c->i < c->n && c->s[c->i] == ',') {
      c->i++;
      continue;
    }
    if(c->i < c->n && c->s[c->i] == '}') {
      c->i++;
      return 1;
    }
    return bad(c, "missing comma or closing brace");
  }
}

static int array(struct jc *c, int depth)
{
  c->i++;
  ws(c);
  if(c->i < c->n && c->s[c->i] == ']') {
    c->i++;
    return 1;
  }
  for(;;) {
    if(!value(c, depth + 1))
      return 0;
    ws(c);
    if(c->i < c->n && c->s[c->i] == ',') {
      c->i++;
      continue;
    }
    if(c->i < c->n && c->s[c->i] == ']') {
      c->i++;
      return 1;
    }
    return bad(c, "missing comma or closing bracket");
  }
}

static int value(struct jc *c, int depth)
{
  if(depth > JSON_CHECK_DEPTH)
    return bad(c, "nested too deep");
  ws(c);
  if(c->i >= c->n)
    return bad(c, "value missing");
  switch(c->s[c->i]) {
  case '{':
    return object(c, depth);
  case '[':
    return array(c, depth);
  case '"':
    return string(c);
  case 't':
    return literal(c, "true");
  case 'f':
    return literal(c, "false");
  case 'n':
    return literal(c, "null");
  default:
    if(c->s[c->i] == '-' || (c->s[c->i] >= '0' && c->s[c->i] <= '9'))
      return number(c);
    return bad(c, "unexpected byte");
  }
}

int json_check(const char *p, size_t len, const char **why, size_t *at)
{
  struct jc c;
  c.s = (const unsigned char *)p;
  c.n = len;
  c.i = 0;
  c.why = NULL;
  if(value(&c, 1)) {
    ws(&c);
    if(c.i == c.n)
      return 1;
    bad(&c, "bytes after the value");
  }
  *why = c.why;
  *at = c.i;
  return 0;
}
