/*
** lf_http.c: one HTTP POST at a time over a reused libcurl handle.
**
** The handle is set up once (timeouts, TLS checks, no redirects, http
** and https only, callbacks) and keeps its connection between requests.
** The fixed request headers, Authorization among them, are built once;
** a request with extra headers links its own short list in front of
** them for the time of the transfer.  The secret and the base64
** credential are wiped when the handle is freed and replaced by "***" in
** every body and message handed back.
**
** libcurl is initialised once per process and never cleaned up: the
** module may be unloaded while libcurl is still mapped by others, and
** curl_global_cleanup is not safe to call from a library.
*/
#define ZLIB_CONST
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <zlib.h>

#include "lf_http.h"

/* Used when the configuration leaves a timeout at 0 or below. */
#define TIMEOUT_DEFAULT 30.0
/* Ditto for connecting: DNS and handshakes must not take the whole
   request time. */
#define CONNECT_TIMEOUT_DEFAULT 10.0
/* Longest timeout taken from the configuration: one day. */
#define TIMEOUT_MAX 86400.0
/* A transfer slower than this many bytes a second ... */
#define LOW_SPEED_BYTES 64L
/* ... for half the request timeout, but at most this many seconds, is
   cut off: a server dripping an answer cannot hold the sender, while a
   server that thinks for a few seconds before answering still can. */
#define LOW_SPEED_TIME_MAX 30L
/* Idle seconds before a TCP keepalive probe, so a dead peer on a kept
   connection is noticed. */
#define KEEPALIVE_IDLE 60L
/* Seconds between keepalive probes once they start. */
#define KEEPALIVE_INTERVAL 30L
/* A kept connection is replaced after this many seconds, so a client
   moves to new load-balancer targets. */
#define CONNECTION_LIFETIME 300L
/* Bytes of a Retry-After value we read; any real one is far shorter. */
#define HEADER_VALUE_MAX 128
/* zlib level for request bodies: repetitive span JSON already shrinks
   several times at 1, for a fraction of the CPU of the default 6. */
#define GZIP_LEVEL 1
/* Output room added at a time when compressing. */
#define GZIP_CHUNK (16 * 1024)

struct lf_http {
  CURL *curl;
  struct curl_slist *fixed;   /* headers sent with every request */
  char *secret;               /* for redaction; wiped when freed */
  size_t secret_len;
  char *cred;                 /* base64(public:secret); ditto */
  size_t cred_len;
  int bad_config;             /* a configured value holds CR or LF */
  char errbuf[CURL_ERROR_SIZE];
  struct lf_buf gz;           /* the compressed body */
  struct lf_buf gz_src;       /* what gz was compressed from: a retry of
                                 the same body is not compressed again */
  struct lf_response *resp;   /* the answer being read */
  size_t received;            /* body bytes seen in this transfer */
  int too_large;              /* set when received passed the limit */
  int nomem;                  /* set when keeping the body failed */
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_result = CURLE_FAILED_INIT;

static void global_init(void)
{
  global_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* Overwrites n bytes in a way the compiler may not drop. */
static void wipe(void *p, size_t n)
{
  volatile unsigned char *v = p;
  while(n--)
    *v++ = 0;
}

/* Returns a malloc'd NUL-terminated base64 text of n bytes (the caller
   frees it), or NULL when out of memory. */
static char *base64(const unsigned char *in, size_t n)
{
  static const char abc[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
  size_t i;
  if(!out)
    return NULL;
  for(i = 0; i + 2 < n; i += 3) {
    unsigned long v = (unsigned long)in[i] << 16 | in[i + 1] << 8 |
                      in[i + 2];
    *o++ = abc[v >> 18 & 63];
    *o++ = abc[v >> 12 & 63];
    *o++ = abc[v >> 6 & 63];
    *o++ = abc[v & 63];
  }
  if(i < n) {
    unsigned long v = (unsigned long)in[i] << 16;
    if(i + 1 < n)
      v |= (unsigned long)in[i + 1] << 8;
    *o++ = abc[v >> 18 & 63];
    *o++ = abc[v >> 12 & 63];
    *o++ = i + 1 < n ? abc[v >> 6 & 63] : '=';
    *o++ = '=';
  }
  *o = '\0';
  return out;
}

static int has_line_break(const char *s)
{
  return s && (strchr(s, '\r') || strchr(s, '\n'));
}

/* Appends the text of line to *list and wipes line, which may hold the
   credential.  Returns LF_OK, or LF_ENOMEM with the list unchanged. */
static int append_line(struct curl_slist **list, struct lf_buf *line,
                       int result)
{
  struct curl_slist *l = NULL;
  if(!result)
    l = curl_slist_append(*list, lf_buf_cstr(line));
  wipe(line->data, line->len);
  lf_buf_free(line);
  if(!l)
    return LF_ENOMEM;
  *list = l;
  return LF_OK;
}

/* Appends "name: value" to *list when value is set. */
static int add_header(struct curl_slist **list, const char *name,
                      const char *value)
{
  struct lf_buf line;
  if(!value)
    return LF_OK;
  lf_buf_init(&line, 0);
  return append_line(list, &line,
                     lf_buf_printf(&line, "%s: %s", name, value));
}

/* Builds the credential and the fixed header list of h. */
static int make_headers(struct lf_http *h, const struct lf_http_config *cfg)
{
  const char *pk = cfg->public_key ? cfg->public_key : "";
  struct lf_buf line;
  int result;
  lf_buf_init(&line, 0);
  result = lf_buf_printf(&line, "%s:%s", pk, h->secret);
  if(!result) {
    h->cred = base64((const unsigned char *)line.data, line.len);
    result = h->cred ? LF_OK : LF_ENOMEM;
  }
  wipe(line.data, line.len);
  lf_buf_free(&line);
  if(result)
    return result;
  h->cred_len = strlen(h->cred);
  result = append_line(&h->fixed, &line,
                       lf_buf_printf(&line, "Authorization: Basic %s",
                                     h->cred));
  if(!result)
    result = add_header(&h->fixed, "Content-Type", "application/json");
  if(!result)
    result = add_header(&h->fixed, "x-langfuse-sdk-name", cfg->sdk_name);
  if(!result)
    result = add_header(&h->fixed, "x-langfuse-sdk-version",
                        cfg->sdk_version);
  if(!result)
    result = add_header(&h->fixed, "x-langfuse-public-key",
                        cfg->public_key);
  if(!result) {
    /* an empty Expect: stops curl waiting for a 100-continue that
       servers and proxies may never send */
    lf_buf_init(&line, 0);
    result = append_line(&h->fixed, &line, lf_buf_adds(&line, "Expect:"));
  }
  return result;
}

/* Milliseconds for a timeout option, with a default for 0 or less. */
static long millis(double seconds, double fallback)
{
  if(!(seconds > 0))
    seconds = fallback;
  if(seconds > TIMEOUT_MAX)
    seconds = TIMEOUT_MAX;
  return (long)(seconds * 1000.0 + 0.5);
}

static size_t on_body(char *p, size_t size, size_t n, void *ud);
static size_t on_header(char *p, size_t size, size_t n, void *ud);

/* Sets the options that stay the same for every request.  Returns
   LF_OK, or LF_EINVAL when libcurl refused an option that matters. */
static int set_options(struct lf_http *h, const struct lf_http_config *cfg)
{
  CURL *c = h->curl;
  long total = millis(cfg->timeout, TIMEOUT_DEFAULT);
  long slow = total / 2000;
  CURLcode code = CURLE_OK;
  if(slow < 1)
    slow = 1;
  if(slow > LOW_SPEED_TIME_MAX)
    slow = LOW_SPEED_TIME_MAX;
  code |= curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  code |= curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  code |= curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
  code |= curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
#if LIBCURL_VERSION_NUM >= 0x075500
  code |= curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#else
  code |= curl_easy_setopt(c, CURLOPT_PROTOCOLS,
                           (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  code |= curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, total);
  code |= curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
                           millis(cfg->connect_timeout,
                                  CONNECT_TIMEOUT_DEFAULT));
  code |= curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, LOW_SPEED_BYTES);
  code |= curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, slow);
  code |= curl_easy_setopt(c, CURLOPT_ERRORBUFFER, h->errbuf);
  code |= curl_easy_setopt(c, CURLOPT_POST, 1L);
  code |= curl_easy_setopt(c, CURLOPT_HEADEROPT, (long)CURLHEADER_SEPARATE);
  code |= curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  code |= curl_easy_setopt(c, CURLOPT_WRITEDATA, h);
  code |= curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  code |= curl_easy_setopt(c, CURLOPT_HEADERDATA, h);
  if(cfg->ca_file)
    code |= curl_easy_setopt(c, CURLOPT_CAINFO, cfg->ca_file);
  if(code)
    return LF_EINVAL;
  /* helpful but not essential: an older libcurl may lack them */
  curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(c, CURLOPT_TCP_KEEPIDLE, KEEPALIVE_IDLE);
  curl_easy_setopt(c, CURLOPT_TCP_KEEPINTVL, KEEPALIVE_INTERVAL);
#if LIBCURL_VERSION_NUM >= 0x075000
  curl_easy_setopt(c, CURLOPT_MAXLIFETIME_CONN, CONNECTION_LIFETIME);
#endif
  return LF_OK;
}

/* The caller owns the new handle and frees it with lf_http_free; cfg
   is copied where kept and may go after the call. */
struct lf_http *lf_http_new(const struct lf_http_config *cfg)
{
  struct lf_http *h;
  const char *sk = cfg->secret_key ? cfg->secret_key : "";
  pthread_once(&global_once, global_init);
  if(global_result)
    return NULL;
  h = calloc(1, sizeof(*h));
  if(!h)
    return NULL;
  lf_buf_init(&h->gz, 0);
  lf_buf_init(&h->gz_src, 0);
  h->secret_len = strlen(sk);
  h->secret = lf_strndup(sk, h->secret_len);
  h->curl = curl_easy_init();
  if(!h->secret || !h->curl || make_headers(h, cfg) ||
     set_options(h, cfg)) {
    lf_http_free(h);
    return NULL;
  }
  h->bad_config = has_line_break(cfg->public_key) ||
                  has_line_break(cfg->secret_key) ||
                  has_line_break(cfg->sdk_name) ||
                  has_line_break(cfg->sdk_version);
  return h;
}

/* Wipes the credential and frees the handle and all it owns. */
void lf_http_free(struct lf_http *h)
{
  struct curl_slist *l;
  if(!h)
    return;
  if(h->curl)
    curl_easy_cleanup(h->curl);
  for(l = h->fixed; l; l = l->next)
    wipe(l->data, strlen(l->data));
  curl_slist_free_all(h->fixed);
  if(h->secret)
    wipe(h->secret, h->secret_len);
  if(h->cred)
    wipe(h->cred, h->cred_len);
  free(h->secret);
  free(h->cred);
  lf_buf_free(&h->gz);
  lf_buf_free(&h->gz_src);
  free(h);
}

void lf_response_init(struct lf_response *r)
{
  r->net = LF_NET_OK;
  r->status = 0;
  lf_buf_init(&r->body, 0);
  r->truncated = 0;
  r->retry_after = -1;
  r->location[0] = '\0';
  r->error[0] = '\0';
}

void lf_response_free(struct lf_response *r)
{
  lf_buf_free(&r->body);
  lf_response_init(r);
}

static void response_reset(struct lf_response *r)
{
  r->net = LF_NET_OK;
  r->status = 0;
  lf_buf_reset(&r->body);
  if(r->body.data)
    r->body.data[0] = '\0';
  r->truncated = 0;
  r->retry_after = -1;
  r->location[0] = '\0';
  r->error[0] = '\0';
}

/* Keeps the head of the answer and counts the rest; returning short
   makes libcurl abort the transfer. */
static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
  struct lf_http *h = ud;
  struct lf_response *r = h->resp;
  size_t len = size * n, keep;
  if(len > LF_HTTP_DRAIN_MAX - h->received) {
    h->too_large = 1;
    return 0;
  }
  h->received += len;
  keep = LF_HTTP_BODY_MAX - (r->body.len < LF_HTTP_BODY_MAX ?
                             r->body.len : LF_HTTP_BODY_MAX);
  if(keep > len)
    keep = len;
  if(keep && lf_buf_add(&r->body, p, keep)) {
    h->nomem = 1;
    return 0;
  }
  if(keep < len)
    r->truncated = 1;
  return len;
}

static int lower(int c)
{
  return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* The value of a header line when its name is name (any case), cut to
   the end of the line and copied into out (size bytes); else NULL. */
static char *header_value(const char *line, size_t len, const char *name,
                          char *out, size_t size)
{
  size_t i, n = strlen(name), k = 0;
  if(len <= n || line[n] != ':')
    return NULL;
  for(i = 0; i < n; i++)
    if(lower((unsigned char)line[i]) != name[i])
      return NULL;
  for(i = n + 1; i < len && (line[i] == ' ' || line[i] == '\t'); i++)
    ;
  while(i < len && line[i] != '\r' && line[i] != '\n' && k + 1 < size)
    out[k++] = line[i++];
  while(k > 0 && (out[k - 1] == ' ' || out[k - 1] == '\t'))
    k--;
  out[k] = '\0';
  return out;
}

/* Reads Retry-After and Location; a new status line (after a 1xx)
   forgets what an earlier one said. */
static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
  struct lf_http *h = ud;
  struct lf_response *r = h->resp;
  size_t len = size * n;
  char value[HEADER_VALUE_MAX];
  if(len >= 5 && !memcmp(p, "HTTP/", 5)) {
    r->retry_after = -1;
    r->location[0] = '\0';
  } else if(header_value(p, len, "retry-after", value, sizeof(value)))
    r->retry_after = lf_parse_retry_after(value, (double)time(NULL));
  else
    header_value(p, len, "location", r->location, sizeof(r->location));
  return len;
}

/* Compresses len bytes of body into h->gz with a gzip wrapper. */
static int gzip_body(struct lf_http *h, const char *body, size_t len)
{
  z_stream zs;
  size_t left = len;
  int zr = Z_OK;
  lf_buf_reset(&h->gz);
  memset(&zs, 0, sizeof(zs));
  if(deflateInit2(&zs, GZIP_LEVEL, Z_DEFLATED, 15 + 16, 8,
                  Z_DEFAULT_STRATEGY) != Z_OK)
    return LF_ENOMEM;
  if(lf_buf_reserve(&h->gz, deflateBound(&zs, (uLong)len)))
    zr = Z_MEM_ERROR;
  zs.next_in = (const Bytef *)body;
  while(zr == Z_OK || zr == Z_BUF_ERROR) {
    size_t room;
    if(lf_buf_reserve(&h->gz, GZIP_CHUNK)) {
      zr = Z_MEM_ERROR;
      break;
    }
    room = h->gz.cap - h->gz.len - 1;
    if(room > UINT_MAX)
      room = UINT_MAX;
    if(!zs.avail_in && left) {
      zs.avail_in = left > UINT_MAX ? UINT_MAX : (uInt)left;
      left -= zs.avail_in;
    }
    zs.next_out = (Bytef *)h->gz.data + h->gz.len;
    zs.avail_out = (uInt)room;
    zr = deflate(&zs, left ? Z_NO_FLUSH : Z_FINISH);
    h->gz.len += room - zs.avail_out;
  }
  deflateEnd(&zs);
  return zr == Z_STREAM_END ? LF_OK : LF_ENOMEM;
}

static int net_of(CURLcode code, int too_large)
{
  switch(code) {
  case CURLE_OK:
    return LF_NET_OK;
  case CURLE_OPERATION_TIMEDOUT:
    return LF_NET_TIMEOUT;
  case CURLE_WRITE_ERROR:
    return too_large ? LF_NET_TOO_LARGE : LF_NET_ERROR;
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_URL_MALFORMAT:
  case CURLE_NOT_BUILT_IN:
  case CURLE_BAD_FUNCTION_ARGUMENT:
    return LF_NET_CONFIG;
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_SHUTDOWN_FAILED:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_USE_SSL_FAILED:
    return LF_NET_TLS;
  default:
    return LF_NET_ERROR;
  }
}

/* Copies text into the fixed-size error field, redacted. */
static void set_error(struct lf_http *h, struct lf_response *r,
                      const char *text)
{
  struct lf_buf b;
  size_t n;
  lf_buf_init(&b, 0);
  if(lf_buf_adds(&b, text)) {
    snprintf(r->error, sizeof(r->error), "%s", "out of memory");
    return;
  }
  lf_http_redact(h, &b);
  n = b.len < sizeof(r->error) - 1 ? b.len : sizeof(r->error) - 1;
  memcpy(r->error, b.data, n);
  r->error[n] = '\0';
  lf_buf_free(&b);
}

/* Refuses a request before sending it. */
static int refuse(struct lf_response *r, const char *why)
{
  r->net = LF_NET_CONFIG;
  snprintf(r->error, sizeof(r->error), "%s", why);
  return LF_OK;
}

/* Links a list of the extra headers in front of the fixed ones; *extra
   gets the list to free (and unlink at *tail) after the transfer. */
static int link_headers(struct lf_http *h, int gzip,
                        const char *const *headers,
                        struct curl_slist **extra, struct curl_slist **tail)
{
  struct curl_slist *l = NULL, *t;
  size_t i;
  if(gzip && !(l = curl_slist_append(l, "Content-Encoding: gzip")))
    return LF_ENOMEM;
  for(i = 0; headers && headers[i]; i++) {
    t = curl_slist_append(l, headers[i]);
    if(!t) {
      curl_slist_free_all(l);
      return LF_ENOMEM;
    }
    l = t;
  }
  *extra = l;
  *tail = NULL;
  for(t = l; t; t = t->next)
    *tail = t;
  if(*tail)
    (*tail)->next = h->fixed;
  return LF_OK;
}

int lf_http_post(struct lf_http *h, const char *url,
                 const char *body, size_t len, int gzip,
                 const char *const *headers,
                 struct lf_response *resp)
{
  struct curl_slist *extra = NULL, *tail = NULL;
  CURLcode code;
  long status = 0;
  size_t i;
  response_reset(resp);
  if(h->bad_config)
    return refuse(resp, "a key or SDK name holds a line break");
  for(i = 0; headers && headers[i]; i++)
    if(has_line_break(headers[i]))
      return refuse(resp, "an extra header holds a line break");
  if(!body)
    body = "";
  if(gzip && !(len && h->gz.len && h->gz_src.len == len &&
               !memcmp(h->gz_src.data, body, len))) {
    lf_buf_reset(&h->gz_src);
    if(gzip_body(h, body, len)) {
      lf_buf_reset(&h->gz);
      return LF_ENOMEM;
    }
    if(lf_buf_add(&h->gz_src, body, len))
      lf_buf_free(&h->gz_src);          /* no copy: no reuse */
  }
  if(gzip) {
    body = h->gz.data;
    len = h->gz.len;
  }
  if(link_headers(h, gzip, headers, &extra, &tail))
    return LF_ENOMEM;
  curl_easy_setopt(h->curl, CURLOPT_URL, url ? url : "");
  curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(h->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
  curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, extra ? extra : h->fixed);
  h->resp = resp;
  h->received = 0;
  h->too_large = 0;
  h->nomem = 0;
  h->errbuf[0] = '\0';
  code = curl_easy_perform(h->curl);
  h->resp = NULL;
  if(tail)
    tail->next = NULL;
  curl_slist_free_all(extra);
  curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, h->fixed);
  if(h->nomem || code == CURLE_OUT_OF_MEMORY)
    return LF_ENOMEM;
  curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &status);
  resp->status = status;
  resp->net = net_of(code, h->too_large);
  if(status < 300 || status > 399)
    resp->location[0] = '\0';
  if(code)
    set_error(h, resp, h->errbuf[0] ? h->errbuf : curl_easy_strerror(code));
  lf_http_redact(h, &resp->body);
  return LF_OK;
}

/* The first place n bytes of needle occur in len bytes of hay. */
static char *find(char *hay, size_t len, const char *needle, size_t n)
{
  char *p;
  while(len >= n) {
    p = memchr(hay, needle[0], len - n + 1);
    if(!p)
      return NULL;
    if(!memcmp(p, needle, n))
      return p;
    len -= (size_t)(p - hay) + 1;
    hay = p + 1;
  }
  return NULL;
}

/* Replaces each occurrence of n bytes of needle in buf with "***" (or
   with n stars when n is shorter), in place. */
static void redact_one(struct lf_buf *buf, const char *needle, size_t n)
{
  const char *stars = "***";
  size_t rn = n < 3 ? n : 3, r = 0, w = 0;
  char *d = buf->data, *hit;
  if(!needle || !n || buf->len < n)
    return;
  while((hit = find(d + r, buf->len - r, needle, n))) {
    size_t k = (size_t)(hit - (d + r));
    memmove(d + w, d + r, k);
    w += k;
    memcpy(d + w, stars, rn);
    w += rn;
    r += k + n;
  }
  if(r == 0)
    return;
  memmove(d + w, d + r, buf->len - r);
  buf->len = w + (buf->len - r);
  d[buf->len] = '\0';
}

void lf_http_redact(const struct lf_http *h, struct lf_buf *buf)
{
  if(!h || !buf || !buf->data)
    return;
  redact_one(buf, h->cred, h->cred_len);
  redact_one(buf, h->secret, h->secret_len);
}

/* Reading an HTTP-date (RFC 9110 5.6.7) without the C locale's help. */
struct date_scan {
  const char *p;
  const char *end;
};

/* Reads min to max digits; -1 when there are none or too few. */
static long scan_digits(struct date_scan *s, int min, int max)
{
  long v = 0;
  int n = 0;
  while(s->p < s->end && n < max && *s->p >= '0' && *s->p <= '9') {
    v = v * 10 + (*s->p++ - '0');
    n++;
  }
  return n >= min ? v : -1;
}

/* Reads a run of letters, lower-cased into out (size bytes, cut). */
static size_t scan_word(struct date_scan *s, char *out, size_t size)
{
  size_t n = 0;
  while(s->p < s->end && lower((unsigned char)*s->p) >= 'a' &&
        lower((unsigned char)*s->p) <= 'z') {
    if(n + 1 < size)
      out[n] = (char)lower((unsigned char)*s->p);
    n++;
    s->p++;
  }
  out[n < size ? n : size - 1] = '\0';
  return n;
}

static int scan_char(struct date_scan *s, char c)
{
  if(s->p < s->end && *s->p == c) {
    s->p++;
    return 1;
  }
  return 0;
}

/* Month 0-11 from its three-letter name, or -1. */
static int month_of(const char *w)
{
  static const char names[] = "janfebmaraprmayjunjulaugsepoctnovdec";
  int i;
  if(strlen(w) != 3)
    return -1;
  for(i = 0; i < 12; i++)
    if(!memcmp(names + 3 * i, w, 3))
      return i;
  return -1;
}

static int is_weekday(const char *w, size_t n)
{
  static const char *const full[] = {
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
    "sunday", NULL
  };
  int i;
  for(i = 0; full[i]; i++)
    if((n == 3 && !memcmp(full[i], w, 3)) || !strcmp(full[i], w))
      return 1;
  return 0;
}

static int is_leap(long y)
{
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* "HH:MM:SS" into seconds of the day, or -1. */
static long scan_time(struct date_scan *s)
{
  long hh = scan_digits(s, 2, 2), mm, ss;
  if(hh < 0 || !scan_char(s, ':'))
    return -1;
  mm = scan_digits(s, 2, 2);
  if(mm < 0 || !scan_char(s, ':'))
    return -1;
  ss = scan_digits(s, 2, 2);
  if(ss < 0 || hh > 23 || mm > 59 || ss > 60)
    return -1;
  return hh * 3600 + mm * 60 + ss;
}

/* Unix time of a date, or -1 when the day does not exist. */
static double unix_time(long year, int mon, long day, long secs)
{
  static const int mdays[12] = {
    31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31
  };
  long days = 0, y;
  int m;
  if(year < 1900 || year > 9999 || day < 1 ||
     day > mdays[mon] + (mon == 1 && is_leap(year)))
    return -1;
  for(y = 1970; y < year; y++)
    days += is_leap(y) ? 366 : 365;
  for(y = year; y < 1970; y++)
    days -= is_leap(y) ? 366 : 365;
  for(m = 0; m < mon; m++)
    days += mdays[m] + (m == 1 && is_leap(year));
  days += day - 1;
  return (double)days * 86400.0 + (double)secs;
}

/*
** The three forms a server may send:
**   Sun, 06 Nov 1994 08:49:37 GMT    IMF-fixdate
**   Sunday, 06-Nov-94 08:49:37 GMT   obsolete RFC 850
**   Sun Nov  6 08:49:37 1994         obsolete asctime
*/
static double http_date(const char *p, const char *end)
{
  struct date_scan s;
  char word[16];
  size_t n;
  long day, year, secs;
  int mon;
  s.p = p;
  s.end = end;
  n = scan_word(&s, word, sizeof(word));
  if(!is_weekday(word, n))
    return -1;
  if(scan_char(&s, ',')) {
    char sep;
    if(!scan_char(&s, ' ') || (day = scan_digits(&s, 1, 2)) < 0)
      return -1;
    sep = s.p < s.end ? *s.p : 0;
    if((sep != ' ' && sep != '-') || !scan_char(&s, sep))
      return -1;
    scan_word(&s, word, sizeof(word));
    mon = month_of(word);
    if(mon < 0 || !scan_char(&s, sep))
      return -1;
    p = s.p;
    year = scan_digits(&s, 2, 4);
    if(year >= 0 && s.p - p == 2)
      year += year < 70 ? 2000 : 1900;
    else if(s.p - p != 4)
      return -1;
    if(!scan_char(&s, ' ') || (secs = scan_time(&s)) < 0 ||
       !scan_char(&s, ' '))
      return -1;
    scan_word(&s, word, sizeof(word));
    if(strcmp(word, "gmt") && strcmp(word, "utc"))
      return -1;
  } else {
    if(!scan_char(&s, ' '))
      return -1;
    scan_word(&s, word, sizeof(word));
    if((mon = month_of(word)) < 0 || !scan_char(&s, ' '))
      return -1;
    scan_char(&s, ' ');
    if((day = scan_digits(&s, 1, 2)) < 0 || !scan_char(&s, ' ') ||
       (secs = scan_time(&s)) < 0 || !scan_char(&s, ' ') ||
       (year = scan_digits(&s, 4, 4)) < 0)
      return -1;
  }
  if(s.p != s.end)
    return -1;
  return unix_time(year, mon, day, secs);
}

double lf_parse_retry_after(const char *value, double now)
{
  const char *p = value, *end;
  double v = 0, when;
  if(!value)
    return -1;
  while(*p == ' ' || *p == '\t')
    p++;
  end = p + strlen(p);
  while(end > p && (end[-1] == ' ' || end[-1] == '\t' ||
                    end[-1] == '\r' || end[-1] == '\n'))
    end--;
  if(p == end)
    return -1;
  if(*p >= '0' && *p <= '9') {
    for(; p < end; p++) {
      if(*p < '0' || *p > '9')
        return -1;
      if(v < 1e15)                /* far past any cap a caller sets */
        v = v * 10 + (*p - '0');
    }
    return v;
  }
  when = http_date(p, end);
  if(when < 0)
    return -1;
  return when > now ? when - now : 0;
}
