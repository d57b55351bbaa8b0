/*
** lf_exchange.h: one request to an LLM API, proxied by nginx, as the
** fields of a Langfuse trace and of its generation.
**
** The nginx helper hands over what nginx knows of a request (method,
** uri, status, times, upstream variables, two headers) and the bodies it
** kept: the request (an OpenAI-style chat completion, Responses or
** completion request) and the answer (one JSON document, or a stream of
** server-sent events, told apart by their first byte).
** lf_exchange_fields reads the bodies with the bounded reader of
** lf_jread.h, picks out the model, its parameters,
** the prompt, the answer, the token usage and an error message, and
** writes every field as JSON text ready for the span writers of
** lf_span.h.  Everything is built valid: text that is not UTF-8 is
** mended (nginx's facts) or left out (the bodies), and a body that is
** not JSON only costs its fields.  Bytes only, never a Lua state.
*/
#ifndef LF_EXCHANGE_H
#define LF_EXCHANGE_H

#include <stddef.h>

#include "lf_buf.h"
#include "lf_span.h"

/* Bytes kept of the upstream's error message. */
#define LF_EXCHANGE_MESSAGE_MAX 512

/* A piece of text: n bytes at s, or s NULL for none. */
struct lf_text {
  const char *s;
  size_t n;
};

/* What is known of one request.  Every text is the caller's. */
struct lf_exchange {
  struct lf_text method;      /* "POST" */
  struct lf_text route;       /* nginx's $uri */
  int status;                 /* the status sent to the client */
  double start;               /* epoch seconds: the request came */
  double finish;              /* epoch seconds: the answer was sent */
  double header_time;         /* seconds to the upstream's header, or
                                 negative when unknown */
  struct lf_text upstream;    /* $upstream_addr */
  struct lf_text upstream_status;
  struct lf_text user;        /* user id, from a request header */
  struct lf_text session;     /* session id, likewise */
  struct lf_text request;     /* the request body */
  struct lf_text answer;      /* the answer's body: one JSON object,
                                 or server-sent events */
  int truncated;              /* the answer was cut to its last bytes */
  int capture_io;             /* record prompt and answer */
  struct lf_text name;        /* trace name; NULL: "METHOD route" */
  struct lf_text gen_name;    /* generation name; NULL: the route */
  struct lf_text tags;        /* a JSON array of strings, or NULL */
  struct lf_text metadata;    /* a JSON object, merged into the trace
                                 metadata after route and status */
};

/* Facts left out of the fields, as bits of lf_exchange_out.left_out. */
#define LF_EX_BAD_INPUT 1u    /* the prompt is not valid UTF-8 */
#define LF_EX_BAD_OUTPUT 2u   /* the answer is not valid UTF-8 */

/* The buffers of a reading, kept from one call to the next. */
struct lf_exchange_work;

/* The fields of the trace and of the generation, pointing into buf. */
struct lf_exchange_out {
  struct lf_fields trace;     /* name, userId, sessionId, tags,
                                 metadata, input, output */
  struct lf_fields gen;       /* name, model, modelParameters,
                                 usageDetails, input, output, level,
                                 statusMessage, completionStartTime,
                                 metadata: upstream, upstream_status,
                                 body_truncated, left_out */
  struct lf_buf buf;          /* owned */
  unsigned left_out;          /* LF_EX_* bits */
  struct lf_exchange_work *work; /* owned; made by the first call */
};

void lf_exchange_out_init(struct lf_exchange_out *o);
/* Frees the text the fields point into, and the kept buffers. */
void lf_exchange_out_free(struct lf_exchange_out *o);

/*
** Seconds in the last entry of an nginx timing variable that lists one
** value per upstream tried ("0.012, 0.004" gives 0.004), or -1 when it
** holds no number ("-").
*/
double lf_exchange_seconds(const char *s, size_t n);

/*
** Reads x into o (initialised; its fields are replaced).  Returns LF_OK
** or LF_ENOMEM.  A body that cannot be read is not an error: the fields
** it would have given are absent.
*/
int lf_exchange_fields(const struct lf_exchange *x,
                       struct lf_exchange_out *o) LF_WARN_UNUSED;

#endif
