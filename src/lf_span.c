/*
** lf_span.c: splitting the builders' JSON into fields, and writing a
** finished trace or observation as an OTLP span or an ingestion event
** (see lf_span.h).
**
** Attribute encoding follows what the Langfuse server reads (and what
** its own SDKs send): strings as stringValue, structured values as
** their JSON text in a stringValue, metadata split into one attribute
** per top-level key (strings kept, the rest as JSON text), tags as an
** arrayValue of strings, the prompt version as an intValue, public as a
** boolValue.  Trace-wide attributes go on every span: Langfuse v4 keeps
** one row per observation and filters on that row's own attributes.
**
** The fragments come from lf_validate_body, so they are valid JSON with
** no whitespace, and strings are already escaped: a string field is
** copied as it is, and JSON text only needs its quotes and backslashes
** escaped to become a string.
*/
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "lf_core.h"
#include "lf_json.h"
#include "lf_span.h"
#include "lf_time.h"

/* Seconds in a day. */
#define DAY 86400
/* Largest second whose nanoseconds fit an int64 (2262-04-11). */
#define MAX_SECONDS 9223372035LL
/* Digits of a nanosecond fraction. */
#define NANO_DIGITS 9

/* Appends a string literal, its length known at compile time. */
#define PUT(o, lit) put((o), (lit), sizeof(lit) - 1)

static const char *const field_names[LF_F_COUNT] = {
  "name", "input", "output", "metadata", "level",
  "statusMessage", "version", "startTime", "endTime",
  "completionStartTime", "model", "modelParameters",
  "usageDetails", "costDetails", "promptName",
  "promptVersion", "userId", "sessionId", "tags",
  "release", "environment", "public"
};

static const char *const type_names[] = { "span", "generation", "event" };
static const char *const type_json[] = {
  "\"span\"", "\"generation\"", "\"event\""
};

/* An output buffer with a sticky result: after the first failure every
   write is skipped, so a writer checks once at the end. */
struct out {
  struct lf_buf *b;
  int result;
  int items;              /* members written in the current list */
};

/* Appends n bytes.  The fast path copies into room already reserved
   and leaves the NUL to done(); the slow one grows the buffer. */
static inline void put(struct out *o, const char *s, size_t n)
{
  struct lf_buf *b = o->b;
  if(b->len + n < b->cap) {
    memcpy(b->data + b->len, s, n);
    b->len += n;
  } else if(!o->result) {
    o->result = lf_buf_add(b, s, n);
  }
}

/* Reserves room for about n more bytes, so that put() takes its fast
   path. */
static void reserve(struct out *o, size_t n)
{
  if(!o->result)
    o->result = lf_buf_reserve(o->b, n);
}

/* Ends a writer: NUL-terminates the text, or cuts the buffer back to
   start on failure.  Returns the result. */
static int done(struct out *o, size_t start)
{
  if(o->result)
    o->b->len = start;
  else if(o->b->data)
    o->b->data[o->b->len] = '\0';
  return o->result;
}

static inline void put_cstr(struct out *o, const char *s)
{
  put(o, s, strlen(s));
}

/* A comma before every list member but the first. */
static inline void sep(struct out *o)
{
  if(o->items++)
    PUT(o, ",");
}

/* Appends s (n bytes) as the inside of a JSON string: quotes and
   backslashes escaped, control bytes as \u00XX (the encoder's text has
   none, but a caller's might).  Room for the worst case is reserved
   first, so the loop writes without checks.  (JSON text has a quote
   every few bytes, so a byte loop beats testing eight at a time.) */
static void put_escaped(struct out *o, const char *s, size_t n)
{
  static const char hex[] = "0123456789abcdef";
  const unsigned char *p = (const unsigned char *)s, *end = p + n;
  char *w;
  if(n > ((size_t)-1) / 8)
    o->result = LF_ETOOBIG;
  reserve(o, 6 * n);
  if(o->result)
    return;
  w = o->b->data + o->b->len;
  while(p < end) {
    unsigned x = *p++;
    if(x >= 0x20 && x != '"' && x != '\\') {
      *w++ = (char)x;
    } else if(x >= 0x20) {
      *w++ = '\\';
      *w++ = (char)x;
    } else {
      memcpy(w, "\\u00", 4);
      w[4] = hex[x >> 4];
      w[5] = hex[x & 15];
      w += 6;
    }
  }
  o->b->len = (size_t)(w - o->b->data);
}

/* Appends plain text s as a quoted JSON string. */
static void put_text(struct out *o, const char *s)
{
  if(!o->result)
    o->result = lf_json_string(o->b, s, strlen(s), NULL);
}

static void put_u64(struct out *o, uint64_t v)
{
  char d[24];
  size_t i = sizeof(d);
  do {
    d[--i] = (char)('0' + v % 10);
    v /= 10;
  } while(v);
  put(o, d + i, sizeof(d) - i);
}

/* ------------------------------------------------------------ reading */

void lf_fields_init(struct lf_fields *f)
{
  memset(f, 0, sizeof(*f));
}

const char *lf_field_name(int field)
{
  return field >= 0 && field < LF_F_COUNT ? field_names[field] : "?";
}

static int field_lookup(const char *s, size_t n)
{
  int i;
  for(i = 0; i < LF_F_COUNT; i++) {
    const char *name = field_names[i];
    if(name[0] == s[0] && !strncmp(name, s, n) && name[n] == '\0')
      return i;
  }
  return -1;
}

/* The end of the JSON string starting at p, or NULL.  A quote ends it
   unless an odd run of backslashes comes before it. */
static const char *skip_string(const char *p, const char *end)
{
  const char *from = ++p;
  for(;;) {
    const char *q = memchr(p, '"', (size_t)(end - p));
    const char *r;
    if(!q)
      return NULL;
    for(r = q; r > from && r[-1] == '\\'; r--)
      ;
    if(!((q - r) & 1))
      return q + 1;
    p = q + 1;
  }
}

/* The bytes skip_value stops at inside an object or array: 1 opens,
   2 closes, 3 starts a string. */
static const unsigned char structural[256] = {
  ['{'] = 1, ['['] = 1, ['}'] = 2, [']'] = 2, ['"'] = 3
};

/* The end of the JSON value starting at p, or NULL when it is cut. */
static const char *skip_value(const char *p, const char *end)
{
  int depth = 0;
  if(p >= end)
    return NULL;
  if(*p == '"')
    return skip_string(p, end);
  if(*p != '{' && *p != '[') {
    while(p < end && *p != ',' && *p != '}' && *p != ']')
      p++;
    return p;
  }
  while(p < end) {
    unsigned char c = structural[(unsigned char)*p];
    if(!c) {
      p++;
    } else if(c == 3) {
      p = skip_string(p, end);
      if(!p)
        return NULL;
    } else {
      depth += c == 1 ? 1 : -1;
      p++;
      if(!depth)
        return p;
    }
  }
  return NULL;
}

/* Reads one member "key":value at *pp; sets the key (without quotes)
   and the value.  Returns 0 when the text is not a member. */
static int read_member(const char **pp, const char *end, const char **k,
                       size_t *kn, const char **v, size_t *vn)
{
  const char *p = *pp, *q;
  if(p >= end || *p != '"')
    return 0;
  q = skip_string(p, end);
  if(!q || q >= end || *q != ':')
    return 0;
  *k = p + 1;
  *kn = (size_t)(q - 1 - *k);
  p = q + 1;
  q = skip_value(p, end);
  if(!q || q == p)
    return 0;
  *v = p;
  *vn = (size_t)(q - p);
  *pp = q;
  return 1;
}

int lf_fields_read(struct lf_fields *f, const char *json, size_t len)
{
  const char *p = json, *end;
  if(!len)
    return LF_OK;
  end = json + len;
  while(p < end) {
    if(*p++ != '{')
      return LF_EINVAL;
    if(p < end && *p == '}') {
      p++;
      continue;
    }
    for(;;) {
      const char *k, *v;
      size_t kn, vn;
      int field;
      if(!read_member(&p, end, &k, &kn, &v, &vn))
        return LF_EINVAL;
      field = field_lookup(k, kn);
      if(field < 0)
        return LF_EINVAL;
      f->v[field] = v;
      f->n[field] = vn;
      if(p < end && *p == ',') {
        p++;
        continue;
      }
      if(p < end && *p == '}') {
        p++;
        break;
      }
      return LF_EINVAL;
    }
  }
  return LF_OK;
}

/* The fragment of field i when it was given and is not null. */
static int has(const struct lf_fields *f, int i)
{
  return f->v[i] && !(f->n[i] == 4 && !memcmp(f->v[i], "null", 4));
}

/* Bytes a span or event of s takes, about: its fragments, escaped at
   worst, plus the attribute names and ids around them. */
static size_t span_room(const struct lf_span *s)
{
  size_t n = s->ctx_len + 1024;
  int i;
  for(i = 0; i < LF_F_COUNT; i++)
    n += 2 * s->f->n[i];
  return n;
}

/* -------------------------------------------------------------- times */

/* Reads count digits at *i into *v. */
static int num(const char *s, size_t n, size_t *i, int count, int *v)
{
  int x = 0;
  while(count--) {
    if(*i >= n || s[*i] < '0' || s[*i] > '9')
      return 0;
    x = x * 10 + (s[(*i)++] - '0');
  }
  *v = x;
  return 1;
}

static int lit(const char *s, size_t n, size_t *i, char c)
{
  if(*i >= n || s[*i] != c)
    return 0;
  (*i)++;
  return 1;
}

/* Days from 1970-01-01 to a date of the proleptic Gregorian calendar,
   counted in 400-year eras of 146097 days that start on March 1st. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
  int64_t era, yoe, doy, doe;
  y -= m <= 2;
  era = (y >= 0 ? y : y - 399) / 400;
  yoe = y - era * 400;
  doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

int lf_iso_to_ns(const char *s, size_t n, int64_t *ns)
{
  size_t i = 0;
  int y, mo, d, h, mi, sec = 0, oh = 0, om = 0, sign = 0, fd = 0;
  int64_t frac = 0, secs;
  if(!num(s, n, &i, 4, &y) || !lit(s, n, &i, '-') ||
     !num(s, n, &i, 2, &mo) || !lit(s, n, &i, '-') ||
     !num(s, n, &i, 2, &d) || i >= n || (s[i] != 'T' && s[i] != 't'))
    return LF_EINVAL;
  i++;
  if(!num(s, n, &i, 2, &h) || !lit(s, n, &i, ':') ||
     !num(s, n, &i, 2, &mi))
    return LF_EINVAL;
  if(lit(s, n, &i, ':')) {
    if(!num(s, n, &i, 2, &sec))
      return LF_EINVAL;
    if(lit(s, n, &i, '.')) {
      size_t from = i;
      for(; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
        if(fd < NANO_DIGITS) {
          frac = frac * 10 + (s[i] - '0');
          fd++;
        }
      }
      if(i == from)
        return LF_EINVAL;
    }
  }
  for(; fd < NANO_DIGITS; fd++)
    frac *= 10;
  if(lit(s, n, &i, 'Z') || lit(s, n, &i, 'z')) {
    sign = 0;
  } else if(i < n && (s[i] == '+' || s[i] == '-')) {
    sign = s[i++] == '+' ? 1 : -1;
    if(!num(s, n, &i, 2, &oh))
      return LF_EINVAL;
    (void)lit(s, n, &i, ':');
    if(!num(s, n, &i, 2, &om))
      return LF_EINVAL;
  } else {
    return LF_EINVAL;
  }
  if(i != n || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 ||
     mi > 59 || sec > 60)
    return LF_EINVAL;
  secs = days_from_civil(y, mo, d) * DAY + h * 3600 + mi * 60 + sec -
         (int64_t)sign * (oh * 3600 + om * 60);
  if(secs < 0 || secs > MAX_SECONDS)
    return LF_EINVAL;
  *ns = secs * 1000000000LL + frac;
  return LF_OK;
}

int lf_epoch_to_ns(double t, int64_t *ns)
{
  if(!(t >= 0) || t > (double)MAX_SECONDS)
    return LF_EINVAL;
  *ns = (int64_t)llround(t * 1e6) * 1000;
  return LF_OK;
}

/* The nanoseconds of a time field (a JSON string), or of dflt when the
   field is absent. */
static int time_ns(const struct lf_fields *f, int field, double dflt,
                   int64_t *ns)
{
  if(has(f, field))
    return lf_iso_to_ns(f->v[field] + 1, f->n[field] - 2, ns);
  return lf_epoch_to_ns(dflt, ns);
}

/* ------------------------------------------------------- OTLP writing */

/* How a field's fragment becomes an AnyValue. */
enum form {
  F_STRING,               /* a JSON string: a stringValue as it is */
  F_ANY,                  /* a string as it is, anything else as JSON text */
  F_INT,                  /* an integer: an intValue */
  F_BOOL                  /* true or false: a boolValue */
};

/* One attribute of a field: the KeyValue's text up to its value (a
   literal, so its length is known at compile time) and the form. */
struct attr {
  int field;
  int form;
  const char *head;
  size_t len;
};

/* The text of a KeyValue up to its AnyValue, for key k. */
#define HEAD(k) "{\"key\":\"" k "\",\"value\":{"
#define ATTR(field, form, k) { field, form, HEAD(k), sizeof(HEAD(k)) - 1 }

/* An observation's own attributes, but metadata and version. */
static const struct attr obs_attrs[] = {
  ATTR(LF_F_INPUT, F_ANY, "langfuse.observation.input"),
  ATTR(LF_F_OUTPUT, F_ANY, "langfuse.observation.output"),
  ATTR(LF_F_LEVEL, F_STRING, "langfuse.observation.level"),
  ATTR(LF_F_STATUS_MESSAGE, F_STRING,
       "langfuse.observation.status_message"),
  ATTR(LF_F_COMPLETION_START_TIME, F_STRING,
       "langfuse.observation.completion_start_time"),
  ATTR(LF_F_MODEL, F_STRING, "langfuse.observation.model.name"),
  ATTR(LF_F_MODEL_PARAMETERS, F_ANY,
       "langfuse.observation.model.parameters"),
  ATTR(LF_F_USAGE_DETAILS, F_ANY, "langfuse.observation.usage_details"),
  ATTR(LF_F_COST_DETAILS, F_ANY, "langfuse.observation.cost_details"),
  ATTR(LF_F_PROMPT_NAME, F_STRING, "langfuse.observation.prompt.name"),
  ATTR(LF_F_PROMPT_VERSION, F_INT, "langfuse.observation.prompt.version")
};

/* A trace's span: its input and output. */
static const struct attr root_attrs[] = {
  ATTR(LF_F_INPUT, F_ANY, "langfuse.observation.input"),
  ATTR(LF_F_OUTPUT, F_ANY, "langfuse.observation.output")
};

static const struct attr version_attr =
  ATTR(LF_F_VERSION, F_STRING, "langfuse.version");
static const struct attr release_attr =
  ATTR(LF_F_RELEASE, F_STRING, "langfuse.release");
static const struct attr env_attr =
  ATTR(LF_F_ENVIRONMENT, F_STRING, "langfuse.environment");
static const struct attr type_attr =
  ATTR(-1, F_STRING, "langfuse.observation.type");

/* The trace-wide attributes with one fragment each. */
static const struct attr trace_attrs[] = {
  ATTR(LF_F_NAME, F_STRING, "langfuse.trace.name"),
  ATTR(LF_F_USER_ID, F_STRING, "user.id"),
  ATTR(LF_F_SESSION_ID, F_STRING, "session.id"),
  ATTR(LF_F_PUBLIC, F_BOOL, "langfuse.trace.public")
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* The AnyValue of fragment v (n bytes) in form, and the KeyValue's end. */
static void put_value(struct out *o, int form, const char *v, size_t n)
{
  if(form == F_INT) {
    PUT(o, "\"intValue\":\"");
    put(o, v, n);
    PUT(o, "\"}}");
  } else if(form == F_BOOL) {
    PUT(o, "\"boolValue\":");
    put(o, v, n);
    PUT(o, "}}");
  } else if(form == F_STRING || v[0] == '"') {
    PUT(o, "\"stringValue\":");
    put(o, v, n);
    PUT(o, "}}");
  } else {
    PUT(o, "\"stringValue\":\"");
    put_escaped(o, v, n);
    PUT(o, "\"}}");
  }
}

/* The KeyValue of a with the fragment v. */
static void kv_put(struct out *o, const struct attr *a, const char *v,
                   size_t n)
{
  sep(o);
  put(o, a->head, a->len);
  put_value(o, a->form, v, n);
}

/* The KeyValues of the fields of f that attrs lists and f has. */
static void kv_fields(struct out *o, const struct lf_fields *f,
                      const struct attr *attrs, size_t count)
{
  size_t i;
  for(i = 0; i < count; i++) {
    int field = attrs[i].field;
    if(has(f, field))
      kv_put(o, &attrs[i], f->v[field], f->n[field]);
  }
}

/* Metadata: an object becomes one KeyValue per top-level key, named
   prefix + key (prefix ends with a dot; plain ASCII); anything else
   one KeyValue named prefix without its dot, holding JSON text. */
static void kv_metadata(struct out *o, const char *v, size_t n,
                        const char *prefix)
{
  const char *p = v + 1, *end = v + n - 1;
  size_t plen = strlen(prefix);
  if(v[0] != '{') {
    sep(o);
    PUT(o, "{\"key\":\"");
    put(o, prefix, plen - 1);
    PUT(o, "\",\"value\":{");
    put_value(o, F_ANY, v, n);
    return;
  }
  while(p < end) {
    const char *k, *x;
    size_t kn, xn;
    if(!read_member(&p, end, &k, &kn, &x, &xn))
      break;
    sep(o);
    PUT(o, "{\"key\":\"");
    put(o, prefix, plen);
    put(o, k, kn);
    PUT(o, "\",\"value\":{");
    put_value(o, F_ANY, x, xn);
    if(p < end && *p == ',')
      p++;
  }
}

/* Tags: a JSON array of strings as an arrayValue of stringValues. */
static void kv_tags(struct out *o, const char *v, size_t n)
{
  const char *p = v + 1, *end = v + n - 1;
  int first = 1;
  sep(o);
  PUT(o, HEAD("langfuse.trace.tags") "\"arrayValue\":{\"values\":[");
  while(p < end && *p == '"') {
    const char *q = skip_string(p, end);
    if(!q)
      break;
    if(!first)
      PUT(o, ",");
    first = 0;
    PUT(o, "{\"stringValue\":");
    put(o, p, (size_t)(q - p));
    PUT(o, "}");
    p = q < end && *q == ',' ? q + 1 : q;
  }
  PUT(o, "]}}}");
}

/* Field i of f under a, or else dflt (a JSON string or NULL). */
static void kv_or(struct out *o, const struct lf_fields *f, int i,
                  const struct attr *a, const char *dflt)
{
  if(has(f, i))
    kv_put(o, a, f->v[i], f->n[i]);
  else if(dflt)
    kv_put(o, a, dflt, strlen(dflt));
}

int lf_span_trace_ctx(struct lf_buf *b, const struct lf_fields *f,
                      const char *env, const char *release)
{
  struct out o = { b, LF_OK, 0 };
  size_t start = b->len;
  kv_fields(&o, f, trace_attrs, COUNT(trace_attrs));
  if(has(f, LF_F_TAGS))
    kv_tags(&o, f->v[LF_F_TAGS], f->n[LF_F_TAGS]);
  if(has(f, LF_F_METADATA))
    kv_metadata(&o, f->v[LF_F_METADATA], f->n[LF_F_METADATA],
                "langfuse.trace.metadata.");
  kv_or(&o, f, LF_F_RELEASE, &release_attr, release);
  kv_or(&o, f, LF_F_ENVIRONMENT, &env_attr, env);
  return done(&o, start);
}

/* "status":{"code":2,...} for a span at level ERROR. */
static void put_status(struct out *o, const struct lf_fields *f)
{
  if(!has(f, LF_F_LEVEL) || f->n[LF_F_LEVEL] != 7 ||
     memcmp(f->v[LF_F_LEVEL], "\"ERROR\"", 7))
    return;
  PUT(o, ",\"status\":{\"code\":2");
  if(has(f, LF_F_STATUS_MESSAGE)) {
    PUT(o, ",\"message\":");
    put(o, f->v[LF_F_STATUS_MESSAGE], f->n[LF_F_STATUS_MESSAGE]);
  }
  PUT(o, "}");
}

/* Resolves the start and end of s in nanoseconds. */
static int span_times(const struct lf_span *s, int64_t *start,
                      int64_t *end, int *why)
{
  if(time_ns(s->f, LF_F_START_TIME, s->start, start)) {
    *why = LF_SPAN_BAD_START;
    return LF_EINVAL;
  }
  if(s->type == LF_OBS_EVENT) {
    *end = *start;
    return LF_OK;
  }
  if(time_ns(s->f, LF_F_END_TIME, s->end, end)) {
    *why = LF_SPAN_BAD_END;
    return LF_EINVAL;
  }
  return LF_OK;
}

int lf_span_otlp(struct lf_buf *b, const struct lf_span *s, int *why)
{
  struct out o = { b, LF_OK, 0 };
  const struct lf_fields *f = s->f;
  size_t start = b->len;
  int64_t t0, t1;
  *why = LF_SPAN_OK;
  if(span_times(s, &t0, &t1, why))
    return LF_EINVAL;
  reserve(&o, span_room(s));
  PUT(&o, "{\"traceId\":\"");
  put(&o, s->trace_id, 32);
  PUT(&o, "\",\"spanId\":\"");
  put(&o, s->span_id, 16);
  if(s->parent_id) {
    PUT(&o, "\",\"parentSpanId\":\"");
    put(&o, s->parent_id, 16);
  }
  PUT(&o, "\",\"name\":");
  if(has(f, LF_F_NAME)) {
    put(&o, f->v[LF_F_NAME], f->n[LF_F_NAME]);
  } else {
    PUT(&o, "\"");
    put_cstr(&o, s->root ? "trace" : type_names[s->type]);
    PUT(&o, "\"");
  }
  PUT(&o, ",\"kind\":1,\"startTimeUnixNano\":\"");
  put_u64(&o, (uint64_t)t0);
  PUT(&o, "\",\"endTimeUnixNano\":\"");
  put_u64(&o, (uint64_t)t1);
  PUT(&o, "\",\"attributes\":[");
  kv_put(&o, &type_attr, type_json[s->type], strlen(type_json[s->type]));
  if(s->root) {
    kv_fields(&o, f, root_attrs, COUNT(root_attrs));
    kv_or(&o, f, LF_F_VERSION, &version_attr, NULL);
  } else {
    kv_fields(&o, f, obs_attrs, COUNT(obs_attrs));
    if(has(f, LF_F_METADATA))
      kv_metadata(&o, f->v[LF_F_METADATA], f->n[LF_F_METADATA],
                  "langfuse.observation.metadata.");
    if(has(f, LF_F_VERSION))
      kv_put(&o, &version_attr, f->v[LF_F_VERSION], f->n[LF_F_VERSION]);
    else if(s->version)
      kv_put(&o, &version_attr, s->version, s->version_len);
  }
  if(s->ctx_len) {
    PUT(&o, ",");
    put(&o, s->ctx, s->ctx_len);
  }
  PUT(&o, "]");
  if(!s->root)
    put_status(&o, f);
  PUT(&o, "}");
  return done(&o, start);
}

/* -------------------------------------------------- ingestion writing */

/* "name":<fragment> for every field of f that is set (null included),
   except the times, which the caller writes. */
static void put_members(struct out *o, const struct lf_fields *f)
{
  int i;
  for(i = 0; i < LF_F_COUNT; i++) {
    if(!f->v[i] || i == LF_F_START_TIME || i == LF_F_END_TIME)
      continue;
    sep(o);
    PUT(o, "\"");
    put_cstr(o, field_names[i]);
    PUT(o, "\":");
    put(o, f->v[i], f->n[i]);
  }
}

/* "name":"<ISO time>" from the field when set, else from dflt. */
static int put_time(struct out *o, const char *name,
                    const struct lf_fields *f, int field, double dflt)
{
  char iso[LF_TIME_LEN + 1];
  sep(o);
  PUT(o, "\"");
  put_cstr(o, name);
  PUT(o, "\":");
  if(f->v[field]) {
    put(o, f->v[field], f->n[field]);
    return LF_OK;
  }
  if(lf_time_format(dflt, iso))
    return LF_EINVAL;
  PUT(o, "\"");
  put(o, iso, LF_TIME_LEN);
  PUT(o, "\"");
  return LF_OK;
}

/* {"id":"<event id>","type":"<type>","timestamp":"<ts>","body":{ */
static void put_envelope(struct out *o, const char *event_id,
                         const char *type, const char *ts)
{
  PUT(o, "{\"id\":\"");
  put_cstr(o, event_id);
  PUT(o, "\",\"type\":\"");
  put_cstr(o, type);
  PUT(o, "\",\"timestamp\":\"");
  put_cstr(o, ts);
  PUT(o, "\",\"body\":{");
}

int lf_span_event(struct lf_buf *b, const struct lf_span *s,
                  const char *event_id, const char *timestamp, int *why)
{
  struct out o = { b, LF_OK, 0 };
  char type[32];
  size_t start = b->len;
  *why = LF_SPAN_OK;
  snprintf(type, sizeof(type), "%s-create", type_names[s->type]);
  reserve(&o, span_room(s));
  put_envelope(&o, event_id, type, timestamp);
  sep(&o);
  PUT(&o, "\"id\":\"");
  put(&o, s->span_id, 16);
  PUT(&o, "\",\"traceId\":\"");
  put(&o, s->trace_id, 32);
  PUT(&o, "\"");
  if(s->parent_id) {
    PUT(&o, ",\"parentObservationId\":\"");
    put(&o, s->parent_id, 16);
    PUT(&o, "\"");
  }
  if(put_time(&o, "startTime", s->f, LF_F_START_TIME, s->start))
    *why = LF_SPAN_BAD_START;
  else if(s->type != LF_OBS_EVENT &&
          put_time(&o, "endTime", s->f, LF_F_END_TIME, s->end))
    *why = LF_SPAN_BAD_END;
  if(s->ctx_len) {
    sep(&o);
    put(&o, s->ctx, s->ctx_len);
  }
  put_members(&o, s->f);
  PUT(&o, "}}");
  if(!o.result && *why)
    o.result = LF_EINVAL;
  return done(&o, start);
}

int lf_span_trace_event(struct lf_buf *b, const struct lf_span *s,
                        const char *event_id, const char *env,
                        const char *release, int *why)
{
  struct out o = { b, LF_OK, 0 };
  char ts[LF_TIME_LEN + 1];
  size_t start = b->len;
  *why = LF_SPAN_OK;
  if(lf_time_format(s->start, ts)) {
    *why = LF_SPAN_BAD_START;
    return LF_EINVAL;
  }
  put_envelope(&o, event_id, "trace-create", ts);
  sep(&o);
  PUT(&o, "\"id\":\"");
  put(&o, s->trace_id, 32);
  PUT(&o, "\",\"timestamp\":\"");
  put(&o, ts, LF_TIME_LEN);
  PUT(&o, "\"");
  put_members(&o, s->f);
  if(!s->f->v[LF_F_ENVIRONMENT] && env) {
    PUT(&o, ",\"environment\":");
    put_cstr(&o, env);
  }
  if(!s->f->v[LF_F_RELEASE] && release) {
    PUT(&o, ",\"release\":");
    put_cstr(&o, release);
  }
  PUT(&o, "}}");
  return done(&o, start);
}

/* A resource or scope attribute with a plain-text value. */
static void kv_text(struct out *o, const char *key, const char *value)
{
  sep(o);
  PUT(o, "{\"key\":\"");
  put_cstr(o, key);
  PUT(o, "\",\"value\":{");
  PUT(o, "\"stringValue\":");
  put_text(o, value);
  PUT(o, "}}");
}

int lf_span_otlp_prefix(struct lf_buf *b, const char *service,
                        const char *public_key, const char *env,
                        const char *release)
{
  struct out o = { b, LF_OK, 0 };
  size_t start = b->len;
  PUT(&o, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
  kv_text(&o, "service.name", service ? service : "unknown_service:lua");
  kv_text(&o, "telemetry.sdk.name", LF_SDK_NAME);
  kv_text(&o, "telemetry.sdk.language", "lua");
  kv_text(&o, "telemetry.sdk.version", LF_VERSION);
  if(env)
    kv_text(&o, "langfuse.environment", env);
  if(release)
    kv_text(&o, "langfuse.release", release);
  PUT(&o, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"langfuse-sdk\","
      "\"version\":\"" LF_VERSION "\",\"attributes\":[");
  o.items = 0;
  if(public_key)
    kv_text(&o, "public_key", public_key);
  PUT(&o, "]},\"spans\":[");
  return done(&o, start);
}
