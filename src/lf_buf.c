/*
** lf_buf.c: growable byte buffers with a size limit.
*/
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lf_buf.h"

/* Smallest allocation, so that short buffers do not grow byte by byte. */
#define LF_BUF_MIN 64

void lf_buf_init(struct lf_buf *b, size_t max)
{
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
  b->max = max;
}

void lf_buf_free(struct lf_buf *b)
{
  free(b->data);
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}

/* Makes room for extra more bytes plus a NUL. */
int lf_buf_reserve(struct lf_buf *b, size_t extra)
{
  size_t need, cap;
  char *p;
  if(extra > (size_t)-1 - b->len - 1)
    return LF_ETOOBIG;
  need = b->len + extra;
  if(b->max && need > b->max)
    return LF_ETOOBIG;
  if(need + 1 <= b->cap)
    return LF_OK;
  cap = b->cap ? b->cap : LF_BUF_MIN;
  while(cap < need + 1)
    cap = cap > (size_t)-1 / 2 ? need + 1 : cap * 2;
  p = realloc(b->data, cap);
  if(!p)
    return LF_ENOMEM;
  b->data = p;
  b->cap = cap;
  return LF_OK;
}

int lf_buf_add(struct lf_buf *b, const void *p, size_t n)
{
  int result = lf_buf_reserve(b, n);
  if(result)
    return result;
  if(n)
    memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
  return LF_OK;
}

int lf_buf_addc(struct lf_buf *b, char c)
{
  return lf_buf_add(b, &c, 1);
}

int lf_buf_adds(struct lf_buf *b, const char *s)
{
  return lf_buf_add(b, s, strlen(s));
}

int lf_buf_printf(struct lf_buf *b, const char *fmt, ...)
{
  va_list ap;
  int n, result;
  char small[256];
  va_start(ap, fmt);
  n = vsnprintf(small, sizeof(small), fmt, ap);
  va_end(ap);
  if(n < 0)
    return LF_EINVAL;
  if((size_t)n < sizeof(small))
    return lf_buf_add(b, small, (size_t)n);
  result = lf_buf_reserve(b, (size_t)n);
  if(result)
    return result;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return LF_OK;
}

const char *lf_buf_cstr(struct lf_buf *b)
{
  return b->data ? b->data : "";
}

char *lf_buf_take(struct lf_buf *b, size_t *len)
{
  char *p = b->data;
  if(len)
    *len = b->len;
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
  return p;
}

char *lf_strndup(const char *s, size_t n)
{
  char *p = malloc(n + 1);
  if(!p)
    return NULL;
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}
