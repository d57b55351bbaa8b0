/*
** lf_resp.h: read what the ingestion route says about each event.
**
** A 207 answer lists the envelope ids it accepted and the ones it
** refused, with a status and a message for each refusal.  The reader is
** a pure function over (bytes, len): it never recurses, bounds nesting
** and every kept text, ignores keys it does not know, and refuses
** anything that is not the expected shape.  Error bodies of other
** statuses ({"message": ..., "error": ...}) are read by the same code.
*/
#ifndef LF_RESP_H
#define LF_RESP_H

#include <stddef.h>

#include "lf_buf.h"

/* Bytes kept of one message or error detail; a server's explanation
   fits, a pasted stack trace or zod dump is cut. */
#define LF_RESP_TEXT_MAX 1024

/* Flag for lf_resp_parse: the input was cut short (the HTTP layer kept
   only the head of a long answer), so running out of bytes is not an
   error and the lists hold every entry read whole before the cut. */
#define LF_RESP_PREFIX 1

struct lf_resp_error {
  char *id;             /* envelope id the server named */
  int status;           /* per-event status, 0 when missing or odd */
  char *message;        /* bounded text, or NULL */
  char *error;          /* bounded detail (raw JSON if not a string),
                           or NULL */
};

struct lf_resp {
  char **successes;     /* accepted ids, sorted */
  size_t nsuccesses;
  struct lf_resp_error *errors;  /* refusals, sorted by id */
  size_t nerrors;
  int cut;              /* 1 when LF_RESP_PREFIX stopped at the cut */
};

void lf_resp_init(struct lf_resp *r);

/*
** Reads a 207 body of len bytes into r (which must be initialised, and
** is emptied first).  Returns LF_OK, LF_EINVAL when the body is empty,
** malformed, or has neither a "successes" nor an "errors" array, or
** LF_ENOMEM.  On any result r owns what it holds: free it with
** lf_resp_free.  Entries whose id is missing, not a string or holds a
** NUL are dropped.
*/
int lf_resp_parse(const char *p, size_t len, int flags,
                  struct lf_resp *r) LF_WARN_UNUSED;

/* Frees everything r holds and leaves it empty. */
void lf_resp_free(struct lf_resp *r);

/* 1 when id is among the successes of r. */
int lf_resp_succeeded(const struct lf_resp *r, const char *id);
/* The refusal naming id, or NULL; points into r. */
const struct lf_resp_error *lf_resp_error_for(const struct lf_resp *r,
                                              const char *id);

/*
** Appends to out the top-level "message" and "error" strings of a JSON
** error body ("message: error" when both), bounded by LF_RESP_TEXT_MAX
** each.  Returns LF_EINVAL when the body is not such an object (out is
** then unchanged), LF_ENOMEM or LF_ETOOBIG from the buffer, else LF_OK.
*/
int lf_resp_error_text(const char *p, size_t len,
                       struct lf_buf *out) LF_WARN_UNUSED;

#endif
