/*
** lf_span.h: the two wire forms of a finished trace or observation.
**
** The builders validate their options once, when they are given, and
** keep them as the JSON text lf_validate_body wrote: one object per call
** (creation, each update, the finish), concatenated.  lf_fields_read
** splits that text into one JSON fragment per field, later calls
** overriding earlier ones, without reading the values again.  The
** writers then put the fragments into the wire form:
**
**   OTLP       one span of an ExportTraceServiceRequest: Langfuse's
**              attributes (langfuse.observation.*, langfuse.trace.*,
**              user.id, session.id), structured values as JSON text in
**              a stringValue, times as decimal nanosecond strings;
**   ingestion  one event of the batch API: trace-create, span-create,
**              generation-create or event-create, with its envelope.
**
** Everything here works on bytes only, never on a Lua state.
*/
#ifndef LF_SPAN_H
#define LF_SPAN_H

#include <stddef.h>
#include <stdint.h>

#include "lf_buf.h"

/* The fields a trace or an observation carries. */
enum lf_field {
  LF_F_NAME, LF_F_INPUT, LF_F_OUTPUT, LF_F_METADATA, LF_F_LEVEL,
  LF_F_STATUS_MESSAGE, LF_F_VERSION, LF_F_START_TIME, LF_F_END_TIME,
  LF_F_COMPLETION_START_TIME, LF_F_MODEL, LF_F_MODEL_PARAMETERS,
  LF_F_USAGE_DETAILS, LF_F_COST_DETAILS, LF_F_PROMPT_NAME,
  LF_F_PROMPT_VERSION, LF_F_USER_ID, LF_F_SESSION_ID, LF_F_TAGS,
  LF_F_RELEASE, LF_F_ENVIRONMENT, LF_F_PUBLIC,
  LF_F_COUNT
};

/* What a span is, as langfuse.observation.type names it. */
enum lf_obs_type {
  LF_OBS_SPAN,
  LF_OBS_GENERATION,
  LF_OBS_EVENT
};

/* One JSON fragment per field, pointing into the caller's text; NULL
   when the field was never given.  A fragment may be the text null. */
struct lf_fields {
  const char *v[LF_F_COUNT];
  size_t n[LF_F_COUNT];
};

void lf_fields_init(struct lf_fields *f);

/*
** Reads len bytes of JSON objects written back to back by the encoder
** ({"name":"a"}{"output":1}) into f, a later key replacing an earlier
** one.  The fragments point into json, which must outlive f.  Returns
** LF_OK, or LF_EINVAL for text that is not such objects or has a key
** that is not a field.
*/
int lf_fields_read(struct lf_fields *f, const char *json, size_t len)
  LF_WARN_UNUSED;

/* The camelCase name of a field ("statusMessage"). */
const char *lf_field_name(int field);

/*
** Nanoseconds since the epoch of an ISO 8601 date-time that
** lf_time_check accepts (fraction digits past nanoseconds are cut).
** LF_EINVAL for other text and for times outside what an unsigned
** 64-bit count of nanoseconds holds from 1970 on (1970 to 2262).
*/
int lf_iso_to_ns(const char *s, size_t n, int64_t *ns) LF_WARN_UNUSED;

/* Epoch seconds as nanoseconds, rounded to the microsecond; LF_EINVAL
   for NaN and outside 1970 to 2262. */
int lf_epoch_to_ns(double t, int64_t *ns) LF_WARN_UNUSED;

/* A finished trace or observation, ready for a writer. */
struct lf_span {
  int type;                 /* enum lf_obs_type */
  int root;                 /* 1: the trace itself; f holds its fields */
  const char *trace_id;     /* 32 lowercase hex characters */
  const char *span_id;      /* 16 for observations and the root span */
  const char *parent_id;    /* 16, or NULL for none */
  double start;             /* epoch seconds, unless f has startTime */
  double end;               /* epoch seconds, unless f has endTime */
  const struct lf_fields *f;
  /* OTLP: the trace-wide KeyValues (lf_span_trace_ctx), comma-joined;
     ingestion: an "environment":"..." member, or nothing. */
  const char *ctx;
  size_t ctx_len;
  /* OTLP: the trace's version as a JSON string, for an observation that
     has none of its own; NULL for none. */
  const char *version;
  size_t version_len;
};

/* Why a writer refused a span; LF_OK when it did not. */
enum lf_span_problem {
  LF_SPAN_OK = 0,
  LF_SPAN_BAD_START,        /* start time outside 1970 to 2262 */
  LF_SPAN_BAD_END           /* end time likewise */
};

/*
** Appends the OTLP/JSON span of s.  Returns LF_OK, LF_ENOMEM, or
** LF_EINVAL with *why set when a time cannot be written in nanoseconds.
** On failure b is cut back to its length on entry.
*/
int lf_span_otlp(struct lf_buf *b, const struct lf_span *s, int *why)
  LF_WARN_UNUSED;

/*
** Appends the trace-wide KeyValues of the trace fields f, comma-joined
** with no comma before the first: langfuse.trace.name, user.id,
** session.id, langfuse.trace.tags, langfuse.trace.metadata.<key>,
** langfuse.release, langfuse.environment and langfuse.trace.public.
** env and release are JSON strings used when f has none (or NULL).
*/
int lf_span_trace_ctx(struct lf_buf *b, const struct lf_fields *f,
                      const char *env, const char *release)
  LF_WARN_UNUSED;

/*
** Appends the ingestion event of an observation: envelope id and
** timestamp (both NUL-terminated text), then the body with id, traceId,
** parentObservationId, startTime, endTime (not for events), every
** field of s->f, and s->ctx.  LF_OK, LF_ENOMEM or LF_EINVAL (a time out
** of range, *why set); b is cut back on failure.
*/
int lf_span_event(struct lf_buf *b, const struct lf_span *s,
                  const char *event_id, const char *timestamp, int *why)
  LF_WARN_UNUSED;

/*
** Appends the trace-create event of a trace: its fields, id and
** timestamp (the start), with env and release (JSON strings or NULL)
** when the fields have none.  Same results as lf_span_event.
*/
int lf_span_trace_event(struct lf_buf *b, const struct lf_span *s,
                        const char *event_id, const char *env,
                        const char *release, int *why) LF_WARN_UNUSED;

/*
** Appends the text of an OTLP export before its first span: the
** resource (service.name, telemetry.sdk.*, and langfuse.environment and
** langfuse.release when given) and the langfuse-sdk scope with the
** public key.  Every argument is plain text (NULL: left out), escaped
** here.  LF_SPAN_SUFFIX closes what it opens.
*/
int lf_span_otlp_prefix(struct lf_buf *b, const char *service,
                        const char *public_key, const char *env,
                        const char *release) LF_WARN_UNUSED;

#define LF_SPAN_SUFFIX "]}]}]}"

#endif
