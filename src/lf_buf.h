/*
** lf_buf.h: growable byte buffers with a size limit, and the result
** codes shared by every stage of the C core.
**
** A buffer owns its bytes.  Every append either succeeds or leaves the
** buffer as it was and returns an error; it never frees the buffer on
** failure, so the owner frees it once, in one place.
*/
#ifndef LF_BUF_H
#define LF_BUF_H

#include <stddef.h>

#if defined(__GNUC__)
#define LF_WARN_UNUSED __attribute__((warn_unused_result))
#define LF_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define LF_WARN_UNUSED
#define LF_PRINTF(f, a)
#endif

/* Result codes carried through the C core in a variable named result. */
enum lf_result {
  LF_OK = 0,
  LF_ENOMEM,      /* an allocation failed */
  LF_ETOOBIG,     /* a buffer would grow past its limit */
  LF_EINVAL,      /* bad input: the problem list says what */
  LF_EIO,         /* a file or network operation failed */
  LF_EABORT       /* stopped on request (shutdown, timeout) */
};

struct lf_buf {
  char *data;     /* NUL-terminated when len > 0 or after lf_buf_cstr */
  size_t len;
  size_t cap;
  size_t max;     /* largest len allowed; 0 means no limit */
};

void lf_buf_init(struct lf_buf *b, size_t max);
/* Frees the bytes and leaves an empty buffer that can be used again. */
void lf_buf_free(struct lf_buf *b);
/* Forgets the content, keeps the memory. */
#define lf_buf_reset(b) ((b)->len = 0)

int lf_buf_reserve(struct lf_buf *b, size_t extra) LF_WARN_UNUSED;
int lf_buf_add(struct lf_buf *b, const void *p, size_t n) LF_WARN_UNUSED;
int lf_buf_addc(struct lf_buf *b, char c) LF_WARN_UNUSED;
int lf_buf_adds(struct lf_buf *b, const char *s) LF_WARN_UNUSED;
int lf_buf_printf(struct lf_buf *b, const char *fmt, ...)
  LF_PRINTF(2, 3) LF_WARN_UNUSED;
/* A NUL-terminated view of the content ("" for an empty buffer). */
const char *lf_buf_cstr(struct lf_buf *b);
/* Hands the bytes to the caller, who frees them with free(); the buffer
   is left empty.  Returns NULL for an empty buffer. */
char *lf_buf_take(struct lf_buf *b, size_t *len);

/* A malloc'd copy of n bytes plus a NUL, or NULL when out of memory. */
char *lf_strndup(const char *s, size_t n);

#endif
