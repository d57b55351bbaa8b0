/*
** lf_json.c: JSON text writers.
**
** Strings are the hot path of the encoder.  Runs of plain ASCII (no
** control character, quote or backslash) are found eight bytes at a time
** and copied with memcpy; only the bytes that need an escape or a UTF-8
** check go through the byte loop.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lf_json.h"

/* One in every byte of a 64-bit word, and the top bit of every byte. */
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

/* Enough for any long long in decimal, with its sign. */
#define INT_DIGITS 24

/* Enough for %.17g of any double, with sign, point and exponent. */
#define DOUBLE_CHARS 32

/* 2^63 as a double: integral doubles below it fit a long long. */
#define TWO_POW_63 9223372036854775808.0

/* 2^53: integers below it are exact doubles. */
#define TWO_POW_53 9007199254740992.0

/* Most decimals the fast path tries; 10^k stays exact up to 10^22. */
#define FAST_DECIMALS 17

/* Magnitudes the fast path writes in plain decimal notation; outside
   them %g's exponent form is shorter. */
#define FAST_MIN 1e-7
#define FAST_MAX 1e15

#define C16(x) x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x

/* 0: copied as is; 1: needs an escape; 2: starts a UTF-8 sequence. */
static const unsigned char char_class[256] = {
  C16(1), C16(1),                                   /* 0x00-0x1f */
  0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0x20-0x2f '"' */
  C16(0), C16(0),                                   /* 0x30-0x4f */
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,   /* 0x50-0x5f '\\' */
  C16(0), C16(0),                                   /* 0x60-0x7f */
  C16(2), C16(2), C16(2), C16(2),                   /* 0x80-0xbf */
  C16(2), C16(2), C16(2), C16(2)                    /* 0xc0-0xff */
};

static const char hex_digits[] = "0123456789abcdef";

/* Pairs of decimal digits "00" to "99", for writing two at a time. */
static const char digit_pairs[] =
  "00010203040506070809101112131415161718192021222324252627282930313233"
  "34353637383940414243444546474849505152535455565758596061626364656667"
  "6869707172737475767778798081828384858687888990919293949596979899";

/* Whether any of the eight bytes in v is < 0x20, '"', '\\' or >= 0x80:
   a top bit survives only for such a byte. */
static int word_special(uint64_t v)
{
  uint64_t q = v ^ (ONES * '"');
  uint64_t k = v ^ (ONES * '\\');
  return (((v - ONES * 0x20) & ~v) | ((q - ONES) & ~q) | ((k - ONES) & ~k) |
          v) & HIGHS ? 1 : 0;
}

/* Copies the bytes at the start of s (n bytes) that need no escape and
   no UTF-8 check to o, eight at a time while it can; returns how many. */
static size_t copy_plain(char *o, const unsigned char *s, size_t n)
{
  size_t i = 0;
  uint64_t v;
  while(i + 8 <= n) {
    memcpy(&v, s + i, 8);
    if(word_special(v))
      break;
    memcpy(o + i, &v, 8);
    i += 8;
  }
  if(i < n && i + 8 > n && n >= 8) {
    /* the last eight bytes, overlapping ones already copied */
    memcpy(&v, s + n - 8, 8);
    if(!word_special(v)) {
      memcpy(o + n - 8, &v, 8);
      return n;
    }
  }
  while(i < n && !char_class[s[i]]) {
    o[i] = (char)s[i];
    i++;
  }
  return i;
}

/* Length of the valid UTF-8 sequence at the start of s (n > 0 bytes,
   s[0] >= 0x80), or 0 when it is not one. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
  unsigned c = s[0];
  if(c < 0xc2)                  /* stray continuation, or overlong */
    return 0;
  if(c < 0xe0)
    return n >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
  if(c < 0xf0) {
    if(n < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80)
      return 0;
    if(c == 0xe0 && s[1] < 0xa0)          /* overlong */
      return 0;
    if(c == 0xed && s[1] >= 0xa0)         /* UTF-16 surrogate */
      return 0;
    return 3;
  }
  if(c < 0xf5) {
    if(n < 4 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 ||
       (s[3] & 0xc0) != 0x80)
      return 0;
    if(c == 0xf0 && s[1] < 0x90)          /* overlong */
      return 0;
    if(c == 0xf4 && s[1] >= 0x90)         /* past U+10FFFF */
      return 0;
    return 4;
  }
  return 0;
}

/* Writes the escape for c (a class-1 byte) at o; returns its length. */
static size_t put_escape(char *o, unsigned char c)
{
  o[0] = '\\';
  switch(c) {
  case '"': o[1] = '"'; return 2;
  case '\\': o[1] = '\\'; return 2;
  case '\n': o[1] = 'n'; return 2;
  case '\r': o[1] = 'r'; return 2;
  case '\t': o[1] = 't'; return 2;
  case '\b': o[1] = 'b'; return 2;
  case '\f': o[1] = 'f'; return 2;
  default:
    o[1] = 'u';
    o[2] = '0';
    o[3] = '0';
    o[4] = hex_digits[c >> 4];
    o[5] = hex_digits[c & 15];
    return 6;
  }
}

/*
** The buffer always has room for the rest of the input copied as is,
** the closing quote and the NUL; an escape, which can grow one byte to
** six, first reserves that room again.
*/
int lf_json_string(struct lf_buf *b, const char *str, size_t n, size_t *bad)
{
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  char *o;
  int result = b->cap - b->len > n + 2 ? LF_OK : lf_buf_reserve(b, n + 2);
  if(result)
    return result;
  o = b->data + b->len;
  *o++ = '"';
  while(i < n) {
    size_t run = copy_plain(o, s + i, n - i);
    o += run;
    i += run;
    if(i == n)
      break;
    if(char_class[s[i]] == 1) {
      b->len = (size_t)(o - b->data);
      result = lf_buf_reserve(b, n - i + 6 + 1);
      if(result)
        return result;
      o = b->data + b->len;
      o += put_escape(o, s[i]);
      i++;
    } else {
      size_t k = utf8_seq(s + i, n - i);
      if(!k) {
        b->len = (size_t)(o - b->data);
        if(bad)
          *bad = i;
        return LF_EINVAL;
      }
      memcpy(o, s + i, k);
      o += k;
      i += k;
    }
  }
  *o++ = '"';
  b->len = (size_t)(o - b->data);
  b->data[b->len] = '\0';
  return LF_OK;
}

size_t lf_utf8_check(const char *str, size_t n)
{
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  while(i < n) {
    size_t k;
    if(i + 8 <= n) {
      uint64_t v;
      memcpy(&v, s + i, 8);
      if(!(v & HIGHS)) {
        i += 8;
        continue;
      }
    }
    if(s[i] < 0x80) {
      i++;
      continue;
    }
    k = utf8_seq(s + i, n - i);
    if(!k)
      return i;
    i += k;
  }
  return n;
}

/* Every byte that is not a continuation byte starts one code point, and
   the four-byte ones need a surrogate pair in UTF-16. */
size_t lf_utf16_len(const char *str, size_t n)
{
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0, units = 0;
  for(; i + 8 <= n; i += 8) {
    uint64_t v;
    memcpy(&v, s + i, 8);
    if(v & HIGHS)
      break;
    units += 8;
  }
  for(; i < n; i++) {
    units += (s[i] & 0xc0) != 0x80;
    units += s[i] >= 0xf0;
  }
  return units;
}

/* Writes the digits of v ending just before end; returns the start. */
static char *put_digits(char *end, unsigned long long v)
{
  while(v >= 100) {
    unsigned k = (unsigned)(v % 100) * 2;
    v /= 100;
    *--end = digit_pairs[k + 1];
    *--end = digit_pairs[k];
  }
  if(v >= 10) {
    unsigned k = (unsigned)v * 2;
    *--end = digit_pairs[k + 1];
    *--end = digit_pairs[k];
  } else
    *--end = (char)('0' + v);
  return end;
}

int lf_json_int(struct lf_buf *b, long long v)
{
  char tmp[INT_DIGITS];
  char *end = tmp + sizeof(tmp);
  char *p;
  size_t n;
  unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v
                               : (unsigned long long)v;
  p = put_digits(end, u);
  if(v < 0)
    *--p = '-';
  n = (size_t)(end - p);
  if(b->cap - b->len <= n)
    return lf_buf_add(b, p, n);
  memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
  return LF_OK;
}

static const double powers_of_ten[FAST_DECIMALS + 1] = {
  1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12,
  1e13, 1e14, 1e15, 1e16, 1e17
};

/*
** Writes the non-integral d in plain notation with the fewest decimals
** that read back as d, into out (at least DOUBLE_CHARS bytes); returns
** the length, or 0 to leave d to the printf path.  For k decimals the
** candidate is m / 10^k with m = round(|d| * 10^k); when m < 2^53 both m
** and 10^k are exact doubles and IEEE division rounds correctly, so the
** quotient equals |d| exactly when strtod would read "m e-k" back as d.
*/
static size_t fast_decimal(double d, char *out)
{
  char digits[INT_DIGITS];
  char *end = digits + sizeof(digits), *p;
  double a = d < 0 ? -d : d;
  size_t len, n = 0;
  int k;
  if(a < FAST_MIN || a >= FAST_MAX)
    return 0;
  for(k = 1; k <= FAST_DECIMALS; k++) {
    double scaled = a * powers_of_ten[k], m;
    if(scaled >= TWO_POW_53)
      return 0;
    m = (double)(long long)(scaled + 0.5);
    if(m / powers_of_ten[k] != a)
      continue;
    p = put_digits(end, (unsigned long long)m);
    len = (size_t)(end - p);
    if(d < 0)
      out[n++] = '-';
    if(len <= (size_t)k) {
      out[n++] = '0';
      out[n++] = '.';
      memset(out + n, '0', (size_t)k - len);
      n += (size_t)k - len;
      memcpy(out + n, p, len);
      return n + len;
    }
    memcpy(out + n, p, len - (size_t)k);
    n += len - (size_t)k;
    out[n++] = '.';
    memcpy(out + n, end - k, (size_t)k);
    return n + (size_t)k;
  }
  return 0;
}

/* Rewrites the locale's decimal point (one or more bytes) in the
   number text t as '.'; returns the new length. */
static size_t fix_point(char *t, size_t n)
{
  size_t i, o = 0;
  int in_point = 0;
  for(i = 0; i < n; i++) {
    char c = t[i];
    if((c >= '0' && c <= '9') || c == '-' || c == '+' || c == 'e' ||
       c == 'E') {
      t[o++] = c;
      in_point = 0;
    } else if(!in_point) {
      t[o++] = '.';
      in_point = 1;
    }
  }
  return o;
}

int lf_json_double(struct lf_buf *b, double d)
{
  char tmp[DOUBLE_CHARS];
  int prec, n = 0;
  if(d != d || d - d != 0)              /* NaN, or an infinity */
    return LF_EINVAL;
  if(d > -TWO_POW_63 && d < TWO_POW_63 && (double)(long long)d == d)
    return lf_json_int(b, (long long)d);
  n = (int)fast_decimal(d, tmp);
  if(n)
    return lf_buf_add(b, tmp, (size_t)n);
  /* strtod reads what snprintf wrote in the same locale */
  for(prec = 15; prec <= 17; prec++) {
    n = snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
    if(n <= 0 || (size_t)n >= sizeof(tmp))
      return LF_EINVAL;
    if(prec == 17 || strtod(tmp, NULL) == d)
      break;
  }
  return lf_buf_add(b, tmp, fix_point(tmp, (size_t)n));
}

int lf_json_snippet(struct lf_buf *b, const char *str, size_t n, size_t max)
{
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  int result = lf_buf_addc(b, '"');
  while(!result && i < n && i < max) {
    unsigned char c = s[i];
    char esc[6];
    size_t k;
    if(c < 0x80) {
      if(char_class[c])
        result = lf_buf_add(b, esc, put_escape(esc, c));
      else
        result = lf_buf_addc(b, (char)c);
      i++;
      continue;
    }
    k = utf8_seq(s + i, n - i);
    if(k && i + k <= max) {
      result = lf_buf_add(b, s + i, k);
      i += k;
      continue;
    }
    if(k)
      break;                     /* a whole character would not fit */
    result = lf_buf_printf(b, "\\x%02x", c);
    i++;
  }
  if(!result)
    result = lf_buf_addc(b, '"');
  if(!result && i < n)
    result = lf_buf_adds(b, "...");
  return result;
}
