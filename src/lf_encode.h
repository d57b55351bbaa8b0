/*
** lf_encode.h: validate Lua values against the ingestion API's schemas
** and encode them as JSON, in one pass over the tables.
**
** Rules for every value (lf_encode_value and all event fields):
**  - strings must be valid UTF-8; they are length-counted, so a NUL is
**    fine and is written as \u0000;
**  - numbers must be finite; Lua 5.4 integers are written exactly,
**    floats with the fewest digits (15 to 17) that read back the same;
**  - a table is an array (keys exactly 1..n) or an object (string keys
**    only); mixed, sparse and other keys are problems; an empty table is
**    {} except where the schema wants an array (trace tags);
**  - a table that contains itself (a cycle) is a problem; the same table
**    in two places is fine;
**  - nesting deeper than max_depth is a problem (the event or value
**    itself is depth 1);
**  - functions, threads and full userdata are problems; the NULL
**    lightuserdata (cjson.null) is JSON null;
**  - only raw access is used: metatables are ignored and no metamethod
**    ever runs.
** Event fields follow the server's schemas (lf_schema.c); see the top
** of lf_encode.c for where the client is stricter.
** A problem names the path of the bad value, e.g. "body.input[2].role"
** (array positions are the Lua ones, from 1).
*/
#ifndef LF_ENCODE_H
#define LF_ENCODE_H

#include <stddef.h>

#include <lua.h>

#include "lf_buf.h"
#include "lf_upload.h"

/* Default nesting limit, the one sentry-native uses. */
#define LF_DEFAULT_MAX_DEPTH 64

/* Largest max_depth accepted: the walker recurses on the C stack, one
   small frame per level. */
#define LF_MAX_DEPTH_LIMIT 1000

/* Default per-event limit, the Langfuse SDKs' LANGFUSE_MAX_EVENT_SIZE. */
#define LF_DEFAULT_MAX_EVENT_BYTES 1000000

/* Problems kept per event; past it one last problem says more were
   found, so a table of a million bad values cannot flood memory. */
#define LF_MAX_EVENT_PROBLEMS 20

/* One reason an event (or value) was refused.  The strings are malloc'd
   and owned by the struct lf_problems holding it. */
struct lf_problem {
  size_t index;     /* 1-based position in the events array; 0: none */
  char *id;         /* the envelope id when it is a string, else NULL */
  char *path;       /* "body.startTime"; "" for the event itself */
  char *message;
};

struct lf_problems {
  struct lf_problem *v;
  size_t n, cap;
};

void lf_problems_init(struct lf_problems *p);
/* Frees every problem and the array; p is empty and reusable after. */
void lf_problems_free(struct lf_problems *p);
/* Appends a problem, copying id (idlen bytes, or NULL), path and
   message.  LF_OK or LF_ENOMEM (then p is unchanged). */
int lf_problems_add(struct lf_problems *p, size_t index, const char *id,
                    size_t idlen, const char *path, const char *message)
  LF_WARN_UNUSED;
/* Pushes the Lua array of {index=, id=, path=, message=} tables (index
   and id left out when 0 / NULL).  May raise on out-of-memory. */
void lf_problems_push(lua_State *L, const struct lf_problems *p);

struct lf_encode_opts {
  size_t max_depth;         /* nesting limit, 1..LF_MAX_DEPTH_LIMIT */
  size_t max_event_bytes;   /* largest encoded event */
  int strict;               /* unknown fields are problems (else kept) */
};

void lf_encode_opts_init(struct lf_encode_opts *o);
/* Reads the opts table at idx (none or nil: defaults) into o; raises
   luaL_argerror for a wrong option type or an unknown option name. */
void lf_encode_opts_read(lua_State *L, int idx, struct lf_encode_opts *o);

/* Encoded events ready for lf_upload.  items[i].json and .id point into
   text, which the batch owns; they stay valid until the next
   lf_encode_events or lf_batch_free on the batch. */
struct lf_batch {
  struct lf_item *items;
  size_t n;
  size_t cap;
  struct lf_buf text;       /* per event: JSON, NUL, envelope id, NUL */
  size_t *off;              /* per event: where its JSON starts in text */
};

void lf_batch_init(struct lf_batch *b);
/* Frees the items, their messages and the text; b is empty after. */
void lf_batch_free(struct lf_batch *b);

/*
** Validates and encodes every event of the array at idx (positions 1 to
** its length) and appends the valid ones to b, the invalid ones' problems
** to probs: all problems of an event (up to LF_MAX_EVENT_PROBLEMS), each
** with path and message.  An event over max_event_bytes is one problem
** with path "" giving its size and the limit.
**
** An event without an envelope id gets a UUIDv4, one without timestamp
** the current time, and both are written back into the caller's event
** table (raw set) once the event is accepted, so a resend keeps them.
** Numeric date-times (epoch seconds, or milliseconds above 1e11) are
** encoded as YYYY-MM-DDTHH:MM:SS.ffffffZ and not written back.
**
** Returns LF_OK when every event was accepted, LF_EINVAL when some were
** refused, LF_ENOMEM when memory ran out (b and probs keep what was done,
** the rest is neither).  Never raises for bad event content; raises only
** for Lua out-of-memory, so b and probs must live in a userdata with
** __gc.
*/
int lf_encode_events(lua_State *L, int idx, const struct lf_encode_opts *o,
                     struct lf_batch *b, struct lf_problems *probs)
  LF_WARN_UNUSED;

/*
** Appends the JSON of any Lua value at idx to out, by the rules at the top
** of this file (strict and max_event_bytes do not apply).  Problems go to
** probs with index 0 and paths relative to the value ("" for the value
** itself).  Returns LF_OK, LF_EINVAL after problems (out is then cut back
** to its length on entry), or LF_ENOMEM.  Never raises, except when
** LuaJIT runs out of memory growing its stack (lua_checkstack).
*/
int lf_encode_value(lua_State *L, int idx, const struct lf_encode_opts *o,
                    struct lf_buf *out, struct lf_problems *probs)
  LF_WARN_UNUSED;

/* Flags for lf_validate_body. */
#define LF_BODY_PARTIAL 1   /* required fields may be missing */

/*
** Validates the body table at idx as the body of an event of the given
** type ("generation-create", "span-update", ...), by the same rules as
** lf_encode_events, and appends its JSON to out when out is not NULL.
** Problems have index 0 and paths relative to the body ("startTime").
** With LF_BODY_PARTIAL, missing required fields and the checks across
** fields that need them are skipped (for builders checking options
** before the ids exist).  An unknown type is one problem with path "".
** Returns LF_OK, LF_EINVAL or LF_ENOMEM.  Raises as lf_encode_value.
*/
int lf_validate_body(lua_State *L, int idx, const char *type,
                     const struct lf_encode_opts *o, int flags,
                     struct lf_buf *out, struct lf_problems *probs)
  LF_WARN_UNUSED;

/* How lf_validate_options names the body fields.  field looks at the
   key and value at kidx and vidx (a top-level option; it must leave the
   stack as it is) and returns 0 with *name and *len set to the body
   field it fills (a string that outlives the call), 1 to leave the
   option out of the body, or -1 to stop: the option is refused, and
   field keeps why for its caller. */
struct lf_rename {
  int (*field)(void *ud, lua_State *L, int kidx, int vidx,
               const char **name, size_t *len);
  void *ud;
};

/*
** lf_validate_body for a table keyed by option names rather than body
** fields: each top-level key goes through rn, and the body (and the
** problems' paths) use the field names it gives.  When rn stops the
** walk, returns LF_EINVAL at once, and the problems found so far are
** not the reason.
*/
int lf_validate_options(lua_State *L, int idx, const char *type,
                        const struct lf_encode_opts *o, int flags,
                        const struct lf_rename *rn, struct lf_buf *out,
                        struct lf_problems *probs)
  LF_WARN_UNUSED;

/*
** For the Lua binding (validate and encode_batch), same rules as
** lf_encode_events.  lf_encode_check_events writes nothing back and
** keeps no JSON (scratch is working space); lf_encode_batch_body appends
** {"batch":[...accepted events...]} to out.  *count gets the number of
** events accepted.  Same results as lf_encode_events.
*/
int lf_encode_check_events(lua_State *L, int idx,
                           const struct lf_encode_opts *o,
                           struct lf_buf *scratch, struct lf_problems *probs,
                           size_t *count) LF_WARN_UNUSED;
int lf_encode_batch_body(lua_State *L, int idx,
                         const struct lf_encode_opts *o, struct lf_buf *out,
                         struct lf_problems *probs, size_t *count)
  LF_WARN_UNUSED;

#endif
