/*
** lf_jread.h: a pull reader for JSON that other programs wrote: the
** answers of Langfuse, and the requests and answers of an LLM API that
** the nginx helper traces.
**
** The reader walks bytes in place.  It never recurses: values it does
** not keep are passed over with a fixed bracket stack, so no input can
** overflow the C stack.  Strings are decoded (escapes, surrogate pairs;
** a lone surrogate becomes U+FFFD) into a bounded buffer.  Raw control
** bytes and bad escapes make the text malformed; raw bytes that are not
** UTF-8 are passed through, so a caller that copies text on checks it.
*/
#ifndef LF_JREAD_H
#define LF_JREAD_H

#include <stddef.h>

#include "lf_buf.h"

/* How one step of the reader ended. */
enum lf_jscan {
  LF_JS_OK = 0,
  LF_JS_BAD,          /* not JSON, or not the shape the caller reads */
  LF_JS_END,          /* the bytes ran out */
  LF_JS_NOMEM
};

/* Nesting accepted inside values that are passed over; real documents
   nest a handful of levels. */
#define LF_JREAD_DEPTH_MAX 64
/* Longest object key compared by lf_jread_key; longer keys never match
   (the longest key read anywhere is shorter). */
#define LF_JREAD_KEY_MAX 32

struct lf_jread {
  const unsigned char *p;     /* the cursor */
  const unsigned char *end;
  struct lf_buf scratch;      /* keys being compared; owned */
};

/* Where a decoded string goes: at most keep bytes into out (NULL to
   drop it all), with its full length and whether it held a NUL (a NUL
   is never written to out). */
struct lf_jtext {
  struct lf_buf *out;
  size_t keep;
  size_t full;
  int nul;
};

/* Starts reading the len bytes at p (NULL reads nothing).  The reader
   owns a scratch buffer: free it with lf_jread_free. */
void lf_jread_init(struct lf_jread *r, const char *p, size_t len);
void lf_jread_free(struct lf_jread *r);

/* The next byte after white space, not taken; -1 at the end. */
int lf_jread_peek(struct lf_jread *r);
/* Takes ch after white space. */
int lf_jread_take(struct lf_jread *r, int ch);

/* Decodes the string at the cursor into t.  A text cut at t->keep loses
   no more than an incomplete UTF-8 sequence at the cut. */
int lf_jread_string(struct lf_jread *r, struct lf_jtext *t);

/* Reads a number.  *count is its value when it is written as a whole
   number from 0 to 2^53 (no fraction, no exponent), else -1.  A number
   that touches the end of the bytes gives LF_JS_END: it may go on. */
int lf_jread_number(struct lf_jread *r, long long *count);

/* Reads the literal word (true, false, null) after white space. */
int lf_jread_literal(struct lf_jread *r, const char *word);

/* Passes over one value of any shape, nested at most
   LF_JREAD_DEPTH_MAX deep. */
int lf_jread_skip(struct lf_jread *r);

/* Reads an object key and its colon; *which is the index of the key in
   names (NULL-terminated), or -1 for any other key. */
int lf_jread_key(struct lf_jread *r, const char *const *names,
                 int *which);

/*
** Reads an object member by member: f is called at each value with the
** index of its key in names (-1 for another key, which f must read or
** pass over with lf_jread_skip).  A result other than LF_JS_OK from f
** stops the walk and is returned.
*/
int lf_jread_members(struct lf_jread *r, const char *const *names,
                     int (*f)(struct lf_jread *, int, void *), void *ud);

/*
** Reads an array element by element: f is called at each element with
** its index, and must read it or pass over it.  A result other than
** LF_JS_OK from f stops the walk and is returned.
*/
int lf_jread_elements(struct lf_jread *r,
                      int (*f)(struct lf_jread *, size_t, void *),
                      void *ud);

/* Appends n bytes to t within its bound, counting them in t->full. */
int lf_jread_put(struct lf_jtext *t, const void *b, size_t n);

/* Drops a UTF-8 sequence left incomplete at the end of b, looking no
   further back than offset from. */
void lf_jread_trim_utf8(struct lf_buf *b, size_t from);

#endif
