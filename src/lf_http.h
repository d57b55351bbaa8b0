/*
** lf_http.h: one HTTP POST at a time over a reused libcurl handle.
**
** A struct lf_http owns one CURL easy handle (keep-alive between
** requests) and the authentication header.  It is used by one thread at
** a time.  It never follows redirects, always verifies TLS, bounds the
** response body it keeps, and never lets the secret key reach a
** message, a body it returns or a log line.
*/
#ifndef LF_HTTP_H
#define LF_HTTP_H

#include <stddef.h>

#include "lf_buf.h"

/* Response bytes kept for the caller; the rest is read and dropped so
   the connection can be reused, up to LF_HTTP_DRAIN_MAX. */
#define LF_HTTP_BODY_MAX (64 * 1024)
/* Past this many response bytes the transfer is aborted: an endless or
   gigabyte answer must not hold the sender. */
#define LF_HTTP_DRAIN_MAX (4 * 1024 * 1024)

struct lf_http_config {
  const char *public_key;
  const char *secret_key;
  double timeout;           /* seconds for a whole request */
  double connect_timeout;   /* seconds to connect */
  const char *sdk_name;     /* x-langfuse-sdk-name */
  const char *sdk_version;  /* x-langfuse-sdk-version */
  const char *ca_file;      /* NULL: the system's CA store */
};

/* How a request ended before any HTTP status could be read. */
enum lf_net {
  LF_NET_OK = 0,            /* a status line arrived */
  LF_NET_ERROR,             /* connect refused, reset, DNS, ... */
  LF_NET_TIMEOUT,           /* connect or total timeout, stalled drip */
  LF_NET_TLS,               /* certificate or handshake failure */
  LF_NET_CONFIG,            /* bad URL or unsupported scheme */
  LF_NET_TOO_LARGE          /* response longer than LF_HTTP_DRAIN_MAX */
};

struct lf_response {
  int net;                  /* enum lf_net */
  long status;              /* HTTP status, 0 when none */
  struct lf_buf body;       /* at most LF_HTTP_BODY_MAX bytes, redacted */
  int truncated;            /* 1 when the body was longer than kept */
  double retry_after;       /* seconds from Retry-After, -1 when absent
                               or unreadable */
  char location[256];       /* Location header of a 3xx, else "" */
  char error[256];          /* libcurl's words for a network failure */
};

void lf_response_init(struct lf_response *r);
void lf_response_free(struct lf_response *r);

/* Returns a new handle the caller owns (free with lf_http_free), or
   NULL when out of memory. */
struct lf_http *lf_http_new(const struct lf_http_config *cfg);
void lf_http_free(struct lf_http *h);

/*
** POSTs len bytes of body to url with Content-Type: application/json,
** Basic auth, the SDK headers, an empty Expect: and the extra headers
** (each "Name: value", NULL-ended list, may be NULL).  With gzip set the
** body is compressed and Content-Encoding: gzip added.  resp is reset
** first and filled in.  Returns LF_OK whenever the request ran (check
** resp->net and resp->status), LF_ENOMEM otherwise.
*/
int lf_http_post(struct lf_http *h, const char *url,
                 const char *body, size_t len, int gzip,
                 const char *const *headers,
                 struct lf_response *resp) LF_WARN_UNUSED;

/* Seconds to wait from a Retry-After value (delta seconds or an
   HTTP-date, RFC 9110), or -1 when it reads as neither. now is the
   current Unix time, for dates. */
double lf_parse_retry_after(const char *value, double now);

/* Replaces every occurrence of the secret key (and of the base64
   credential built from it) in buf with "***". */
void lf_http_redact(const struct lf_http *h, struct lf_buf *buf);

#endif
