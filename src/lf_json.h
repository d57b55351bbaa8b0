/*
** lf_json.h: JSON text writers shared by the event encoder and the OTLP
** writer: strings (UTF-8 checked, NULs allowed), integers, doubles, and
** short quoted snippets of bad values for problem messages.
**
** Every writer appends to a struct lf_buf.  On failure the buffer may
** hold part of the value; the caller remembers the length it started
** from and cuts back to it.
*/
#ifndef LF_JSON_H
#define LF_JSON_H

#include <stddef.h>

#include "lf_buf.h"

/* Longest piece of a bad value quoted in a message, in bytes: enough to
   recognise the value, short enough to keep a message on one line. */
#define LF_SNIPPET_MAX 60

/*
** Appends the n bytes at s as a quoted JSON string.  s may hold NULs
** (written as \u0000) and must be valid UTF-8: no stray continuation
** bytes, overlong forms, surrogates or code points past U+10FFFF.
** Returns LF_OK, LF_ENOMEM, or LF_EINVAL for invalid UTF-8, with the
** offset of the first bad byte in *bad when bad is not NULL.
*/
int lf_json_string(struct lf_buf *b, const char *s, size_t n, size_t *bad)
  LF_WARN_UNUSED;

/* Offset of the first byte of s that is not part of a valid UTF-8
   sequence, or n when all of s is valid. */
size_t lf_utf8_check(const char *s, size_t n);

/* Length of valid UTF-8 s in UTF-16 code units, the way JavaScript (and
   so the server's length limits) counts a string. */
size_t lf_utf16_len(const char *s, size_t n);

/* Appends v in decimal. */
int lf_json_int(struct lf_buf *b, long long v) LF_WARN_UNUSED;

/*
** Appends d as the shortest of %.15g, %.16g and %.17g that reads back as
** the same double, with '.' as the decimal point whatever the locale.
** Integral values below 2^63 in magnitude are written as integers (so
** -0.0 is written 0).  NaN and infinities give LF_EINVAL: JSON has no
** token for them.
*/
int lf_json_double(struct lf_buf *b, double d) LF_WARN_UNUSED;

/*
** Appends a double-quoted view of at most max bytes of s for a message:
** JSON escapes for controls, \xNN for bytes that are not valid UTF-8,
** and "..." after the closing quote when s was cut.
*/
int lf_json_snippet(struct lf_buf *b, const char *s, size_t n, size_t max)
  LF_WARN_UNUSED;

#endif
