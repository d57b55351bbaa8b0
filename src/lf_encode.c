/*
** lf_encode.c: one pass over Lua tables that validates them against the
** ingestion schemas (lf_schema.c) and writes their JSON.
**
** The walk recurses on the C stack, one struct frame per level.  The
** frames form the path of the value being written (for problem messages)
** and hold the tables above it (for cycle checks), so the walker
** allocates nothing until it has a problem to report.  Problems do not
** stop the walk: every problem of an event is reported, up to
** LF_MAX_EVENT_PROBLEMS, and the JSON written for a refused event is cut
** off again.
**
** Tables are read with lua_next and lua_rawgeti only, so metatables are
** ignored and no Lua code runs.  A table whose first key is 1 is taken
** for an array and written as its keys come; if a key comes out of
** order, the table is checked key by key and written again with
** lua_rawgeti (the slow path, for arrays built in odd orders).
**
** Caveats:
**  - Object keys come out in lua_next order, which differs between runs
**    and Lua versions; nothing should depend on it.
**  - An empty table is {} except in trace tags: a Lua table cannot say
**    it is an empty array, and cjson.empty_array is not recognised.
**  - The client is stricter than the server where the server silently
**    drops data: unknown fields (strict) and bad usageDetails or
**    costDetails entries are problems.  It does not check environment,
**    which the server normalises and never refuses.
**  - An envelope id with a NUL byte is refused although the server
**    takes it: the upload matches the server's answers by C string.
*/
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "lf_compat.h"
#include "lf_encode.h"
#include "lf_json.h"
#include "lf_schema.h"
#include "lf_time.h"
#include "lf_uuid.h"

/* Lua stack slots reserved per level of the walk: key, value, an array
   element, the body slot of an event, and the two a problem report uses
   to find the envelope id, with room to spare. */
#define STACK_PER_LEVEL 8

/* Room for a problem message; longer ones are cut. */
#define MESSAGE_MAX 512

/* Largest array position accepted: past 2^53 a double skips integers. */
#define ARRAY_POS_MAX 9007199254740992.0

/* Largest integer zod's int() accepts: Number.MAX_SAFE_INTEGER. */
#define SAFE_INT_MAX 9007199254740991.0

/* Limits of the server's string fields, in UTF-16 code units. */
#define ID_MAX_UNITS 800
#define TRACE_NAME_MAX_UNITS 1000
#define TEXT_SCORE_MAX_UNITS 500

/* The id validate() writes in place of a missing one: it has the length
   of a real UUID, so the size check sees the same event size. */
#define PLACEHOLDER_ID "00000000-0000-4000-8000-000000000000"

/* Indexes of the score data types in lf_enum_values(LF_K_DATA_TYPE). */
enum { DT_NUMERIC, DT_CATEGORICAL, DT_BOOLEAN, DT_CORRECTION, DT_TEXT };

enum shape { SHAPE_ANY, SHAPE_ARRAY, SHAPE_OBJECT };

/* What happens to the encoded events. */
enum mode {
  MODE_VALIDATE,    /* check only: no write-back, JSON thrown away */
  MODE_JOIN,        /* {"batch":[e1,e2,...]} in one buffer */
  MODE_BATCH        /* struct lf_batch items */
};

/* One step of the path from the root value to the value being walked. */
struct frame {
  const struct frame *up;
  const char *key;        /* object key (Lua-owned), or NULL */
  size_t klen;
  size_t pos;             /* array position from 1 when key is NULL */
  const void *table;      /* the table at this step, for cycle checks */
  size_t depth;           /* nesting level; the root is 1 */
  int type;               /* lua_type of the value at this step */
};

struct walker {
  lua_State *L;
  struct lf_buf *out;
  const struct lf_encode_opts *o;
  struct lf_problems *probs;
  size_t index;           /* event position for problems; 0: none */
  int event;              /* stack index of the event table; 0: none */
  int id_known;           /* id and idlen are looked up for this event */
  const char *id;         /* the event's envelope id (Lua-owned) */
  size_t idlen;
  size_t nprob;           /* problems found in the current event */
  int partial;            /* LF_BODY_PARTIAL */
  const struct lf_rename *rename;   /* names the fields of rename_at */
  const struct frame *rename_at;
};

/* What an object's fields said, for the checks across fields. */
struct fields {
  uint64_t seen;          /* fields present, null included */
  uint64_t truthy;        /* fields present with a JavaScript-true value */
  size_t written;         /* fields written so far, for commas */
  int body_slot;          /* envelope: stack slot holding the body */
  const struct lf_schema *body;   /* envelope: schema its type names */
  const char *id;         /* envelope: the id string (Lua-owned) */
  size_t idlen;
  int data_type;          /* score: DT_*, or -1 */
  int value_type;         /* score: LUA_TNUMBER, LUA_TSTRING or -1 */
  double value_num;
  size_t value_units;
};

typedef int (*elem_fn)(struct walker *w, int idx, struct frame *f);

static int put_any(struct walker *w, int idx, struct frame *f);

/* ------------------------------------------------------------------ */
/* Output                                                              */

/* Appends n bytes; the fast path skips lf_buf_add when they fit. */
static int out_add(struct lf_buf *b, const char *s, size_t n)
{
  if(b->cap - b->len > n) {
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return LF_OK;
  }
  return lf_buf_add(b, s, n);
}

static int out_addc(struct lf_buf *b, char c)
{
  if(b->cap - b->len > 1) {
    b->data[b->len++] = c;
    b->data[b->len] = '\0';
    return LF_OK;
  }
  return lf_buf_add(b, &c, 1);
}

/* Writes "key": for a key known to be plain ASCII. */
static int out_key(struct lf_buf *b, const char *key, size_t n)
{
  int result = b->cap - b->len > n + 3 ? LF_OK : lf_buf_reserve(b, n + 3);
  if(result)
    return result;
  b->data[b->len] = '"';
  memcpy(b->data + b->len + 1, key, n);
  b->data[b->len + n + 1] = '"';
  b->data[b->len + n + 2] = ':';
  b->len += n + 3;
  b->data[b->len] = '\0';
  return LF_OK;
}

static void out_end(struct lf_buf *b)
{
  if(b->data)
    b->data[b->len] = '\0';
}

/* ------------------------------------------------------------------ */
/* Problems                                                            */

void lf_problems_init(struct lf_problems *p)
{
  p->v = NULL;
  p->n = 0;
  p->cap = 0;
}

void lf_problems_free(struct lf_problems *p)
{
  size_t i;
  for(i = 0; i < p->n; i++) {
    free(p->v[i].id);
    free(p->v[i].path);
    free(p->v[i].message);
  }
  free(p->v);
  lf_problems_init(p);
}

int lf_problems_add(struct lf_problems *p, size_t index, const char *id,
                    size_t idlen, const char *path, const char *message)
{
  struct lf_problem *q;
  if(p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 8;
    q = realloc(p->v, cap * sizeof(*q));
    if(!q)
      return LF_ENOMEM;
    p->v = q;
    p->cap = cap;
  }
  q = &p->v[p->n];
  q->index = index;
  q->id = id ? lf_strndup(id, idlen) : NULL;
  q->path = lf_strndup(path, strlen(path));
  q->message = lf_strndup(message, strlen(message));
  if((id && !q->id) || !q->path || !q->message) {
    free(q->id);
    free(q->path);
    free(q->message);
    return LF_ENOMEM;
  }
  p->n++;
  return LF_OK;
}

/* Whether key can follow a dot in a path: a Lua-style name. */
static int plain_key(const char *s, size_t n)
{
  size_t i;
  if(n == 0 || n > LF_SNIPPET_MAX || (s[0] >= '0' && s[0] <= '9'))
    return 0;
  for(i = 0; i < n; i++) {
    char c = s[i];
    if(!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_'))
      return 0;
  }
  return 1;
}

/* Appends the path of f: body.input[2].content, or ["odd key"]. */
static int put_path(struct lf_buf *b, const struct frame *f)
{
  int result;
  if(!f)
    return LF_OK;
  result = put_path(b, f->up);
  if(result)
    return result;
  if(f->key && plain_key(f->key, f->klen)) {
    if(b->len)
      result = lf_buf_addc(b, '.');
    if(!result)
      result = lf_buf_add(b, f->key, f->klen);
  } else if(f->key) {
    result = lf_buf_addc(b, '[');
    if(!result)
      result = lf_json_snippet(b, f->key, f->klen, LF_SNIPPET_MAX);
    if(!result)
      result = lf_buf_addc(b, ']');
  } else if(f->up)
    result = lf_buf_printf(b, "[%zu]", f->pos);
  return result;
}

/*
** The envelope id of the current event when it is a string, found with
** lua_next (which allocates nothing, so it cannot raise while callers
** hold memory) and kept for the event's other problems.
*/
static void find_event_id(struct walker *w)
{
  lua_State *L = w->L;
  int base = lua_gettop(L);
  w->id_known = 1;
  w->id = NULL;
  w->idlen = 0;
  if(!w->event || !lua_checkstack(L, 2))
    return;
  lua_pushnil(L);                                   /* nil */
  while(lua_next(L, w->event)) {                    /* key value */
    size_t n;
    const char *k;
    if(lua_type(L, base + 1) == LUA_TSTRING) {
      k = lua_tolstring(L, base + 1, &n);
      if(n == 2 && k[0] == 'i' && k[1] == 'd') {
        if(lua_type(L, base + 2) == LUA_TSTRING)
          w->id = lua_tolstring(L, base + 2, &w->idlen);
        break;
      }
    }
    lua_settop(L, base + 1);                        /* key */
  }
  lua_settop(L, base);                              /* */
}

/* Records a problem at f for the current event. */
static int problem(struct walker *w, const struct frame *f,
                   const char *fmt, ...) LF_PRINTF(3, 4);

static int problem(struct walker *w, const struct frame *f,
                   const char *fmt, ...)
{
  struct lf_buf path;
  char message[MESSAGE_MAX];
  int result;
  va_list ap;
  if(w->nprob > LF_MAX_EVENT_PROBLEMS)
    return LF_OK;
  if(!w->id_known)
    find_event_id(w);
  lf_buf_init(&path, 0);
  if(++w->nprob > LF_MAX_EVENT_PROBLEMS) {
    result = lf_problems_add(w->probs, w->index, w->id, w->idlen, "",
                             "more problems in this event are not listed");
  } else {
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    result = put_path(&path, f);
    if(!result)
      result = lf_problems_add(w->probs, w->index, w->id, w->idlen,
                               lf_buf_cstr(&path), message);
  }
  lf_buf_free(&path);
  return result;
}

/* Describes the value at idx for a message: "abc" in quotes, 42, true,
   null, or "a table" / "a function" and so on. */
static int describe(lua_State *L, int idx, struct lf_buf *d)
{
  size_t n;
  const char *s;
  double x;
  switch(lua_type(L, idx)) {
  case LUA_TSTRING:
    s = lua_tolstring(L, idx, &n);
    return lf_json_snippet(d, s, n, LF_SNIPPET_MAX);
  case LUA_TNUMBER:
#if LF_HAS_INTEGERS
    if(lua_isinteger(L, idx))
      return lf_json_int(d, (long long)lua_tointeger(L, idx));
#endif
    x = lua_tonumber(L, idx);
    if(x != x)
      return lf_buf_adds(d, "NaN");
    if(x - x != 0)
      return lf_buf_adds(d, x > 0 ? "inf" : "-inf");
    return lf_json_double(d, x);
  case LUA_TBOOLEAN:
    return lf_buf_adds(d, lua_toboolean(L, idx) ? "true" : "false");
  case LUA_TNIL:
    return lf_buf_adds(d, "nil");
  case LUA_TLIGHTUSERDATA:
    if(!lua_touserdata(L, idx))
      return lf_buf_adds(d, "null");
    return lf_buf_adds(d, "a light userdata");
  default:
    return lf_buf_printf(d, "a %s", lua_typename(L, lua_type(L, idx)));
  }
}

/* Records "<what>, got <the value at idx>". */
static int problem_got(struct walker *w, const struct frame *f, int idx,
                       const char *what)
{
  struct lf_buf d;
  int result;
  lf_buf_init(&d, 0);
  result = describe(w->L, idx, &d);
  if(!result)
    result = problem(w, f, "%s, got %s", what, lf_buf_cstr(&d));
  lf_buf_free(&d);
  return result;
}

/* Records "<what><sep><s quoted>[ (<why>)]" for the n-byte string s. */
static int problem_str(struct walker *w, const struct frame *f,
                       const char *what, const char *sep, const char *s,
                       size_t n, const char *why)
{
  struct lf_buf d;
  int result;
  lf_buf_init(&d, 0);
  result = lf_json_snippet(&d, s, n, LF_SNIPPET_MAX);
  if(!result)
    result = problem(w, f, "%s%s%s%s%s%s", what, sep, lf_buf_cstr(&d),
                     why ? " (" : "", why ? why : "", why ? ")" : "");
  lf_buf_free(&d);
  return result;
}

/* ------------------------------------------------------------------ */
/* Scalars                                                             */

/* Writes s as a JSON string; *ok is 0 after a UTF-8 problem. */
static int put_str(struct walker *w, const char *s, size_t n,
                   struct frame *f, int *ok)
{
  size_t bad = 0;
  int result = lf_json_string(w->out, s, n, &bad);
  char what[MESSAGE_MAX];
  *ok = result == LF_OK;
  if(result != LF_EINVAL)
    return result;
  snprintf(what, sizeof(what), "invalid UTF-8 at byte %zu", bad + 1);
  return problem_str(w, f, what, " in ", s, n, NULL);
}

static int put_lua_string(struct walker *w, int idx, struct frame *f)
{
  size_t n;
  const char *s = lua_tolstring(w->L, idx, &n);
  int ok;
  return put_str(w, s, n, f, &ok);
}

/* Writes the number at idx; NaN and infinities are problems. */
static int put_number(struct walker *w, int idx, struct frame *f)
{
  double x;
#if LF_HAS_INTEGERS
  if(lua_isinteger(w->L, idx))
    return lf_json_int(w->out, (long long)lua_tointeger(w->L, idx));
#endif
  x = lua_tonumber(w->L, idx);
  if(x != x)
    return problem(w, f, "NaN is not valid JSON");
  if(x - x != 0)
    return problem(w, f, "%s is not valid JSON", x > 0 ? "inf" : "-inf");
  return lf_json_double(w->out, x);
}

static int is_null(lua_State *L, int idx, const struct frame *f)
{
  return f->type == LUA_TLIGHTUSERDATA && !lua_touserdata(L, idx);
}

/* Whether JavaScript would find the value at idx (of type t) true. */
static int truthy(lua_State *L, int idx, int t)
{
  size_t n;
  double x;
  switch(t) {
  case LUA_TSTRING:
    lua_tolstring(L, idx, &n);
    return n > 0;
  case LUA_TNUMBER:
    x = lua_tonumber(L, idx);
    return x != 0 && x == x;
  case LUA_TBOOLEAN:
    return lua_toboolean(L, idx);
  case LUA_TTABLE:
    return 1;
  default:
    return 0;
  }
}

/* The number at idx when it is an integer zod accepts (|v| < 2^53),
   else a problem. *ok tells which. */
static int check_int(struct walker *w, int idx, struct frame *f,
                     int nonneg, int *ok)
{
  double x;
  *ok = 0;
  if(f->type != LUA_TNUMBER)
    return problem_got(w, f, idx, nonneg ? "expected a non-negative integer"
                                         : "expected an integer");
#if LF_HAS_INTEGERS
  if(lua_isinteger(w->L, idx)) {
    lua_Integer i = lua_tointeger(w->L, idx);
    if(nonneg && i < 0)
      return problem_got(w, f, idx, "expected a non-negative integer");
    if(i > (lua_Integer)SAFE_INT_MAX || i < -(lua_Integer)SAFE_INT_MAX)
      return problem_got(w, f, idx,
                         "expected an integer below 2^53 in magnitude");
    *ok = 1;
    return LF_OK;
  }
#endif
  x = lua_tonumber(w->L, idx);
  if(x != x || x - x != 0)
    return problem_got(w, f, idx, nonneg ? "expected a non-negative integer"
                                         : "expected an integer");
  if(nonneg && x < 0)
    return problem_got(w, f, idx, "expected a non-negative integer");
  if(x > SAFE_INT_MAX || x < -SAFE_INT_MAX)
    return problem_got(w, f, idx,
                       "expected an integer below 2^53 in magnitude");
  if((double)(long long)x != x)
    return problem_got(w, f, idx, nonneg ? "expected a non-negative integer"
                                         : "expected an integer");
  *ok = 1;
  return LF_OK;
}

static int put_int(struct walker *w, int idx, struct frame *f, int nonneg)
{
  int ok;
  int result = check_int(w, idx, f, nonneg, &ok);
  if(result || !ok)
    return result;
  return put_number(w, idx, f);
}

/* A finite number, optionally >= 0. */
static int put_num(struct walker *w, int idx, struct frame *f, int nonneg)
{
  if(f->type != LUA_TNUMBER)
    return problem_got(w, f, idx, nonneg ? "expected a non-negative number"
                                         : "expected a number");
  if(nonneg && lua_tonumber(w->L, idx) < 0)
    return problem_got(w, f, idx, "expected a non-negative number");
  return put_number(w, idx, f);
}

/*
** A string field: kind LF_K_STRING, or one with the server's length
** limits (LF_K_ID, LF_K_NAME, LF_K_NONEMPTY).  *units gets its length in
** UTF-16 code units when it was valid.
*/
static int put_string_field(struct walker *w, int idx, struct frame *f,
                            int kind, size_t *units)
{
  size_t n, u;
  const char *s;
  int ok, result;
  if(f->type != LUA_TSTRING)
    return problem_got(w, f, idx, "expected a string");
  s = lua_tolstring(w->L, idx, &n);
  result = put_str(w, s, n, f, &ok);
  if(result || !ok || (kind == LF_K_STRING && !units))
    return result;
  u = lf_utf16_len(s, n);
  if(units)
    *units = u;
  if(kind == LF_K_ID && (u < 1 || u > ID_MAX_UNITS))
    return problem(w, f, "an id must be 1 to %d characters, got %zu",
                   ID_MAX_UNITS, u);
  if(kind == LF_K_ID && memchr(s, '\r', n))
    return problem(w, f, "an id must not contain a carriage return (\\r)");
  if(kind == LF_K_NAME && u > TRACE_NAME_MAX_UNITS)
    return problem(w, f, "must be at most %d characters, got %zu",
                   TRACE_NAME_MAX_UNITS, u);
  if(kind == LF_K_NONEMPTY && u < 1)
    return problem(w, f, "must not be empty");
  return LF_OK;
}

/* One of the values of an enum kind; *which gets its index or -1. */
static int put_enum(struct walker *w, int idx, struct frame *f, int kind,
                    int *which)
{
  const char *const *v = lf_enum_values(kind);
  char what[MESSAGE_MAX];
  const char *s;
  size_t n;
  int i;
  *which = -1;
  if(f->type == LUA_TSTRING) {
    s = lua_tolstring(w->L, idx, &n);
    for(i = 0; v[i]; i++) {
      if(strlen(v[i]) == n && !memcmp(v[i], s, n)) {
        *which = i;
        return lf_json_string(w->out, s, n, NULL);
      }
    }
  }
  snprintf(what, sizeof(what), "expected one of %s", lf_enum_list(kind));
  return problem_got(w, f, idx, what);
}

/* A date-time: a string the server accepts, or an epoch number written
   as YYYY-MM-DDTHH:MM:SS.ffffffZ. */
static int put_time(struct walker *w, int idx, struct frame *f)
{
  static const char *const what =
    "expected an ISO 8601 date-time ending in Z or \xc2\xb1HH:MM";
  char t[LF_TIME_LEN + 3];
  const char *s, *why;
  size_t n;
  if(f->type == LUA_TSTRING) {
    s = lua_tolstring(w->L, idx, &n);
    why = lf_time_check(s, n);
    if(why)
      return problem_str(w, f, what, ", got ", s, n, why);
    return lf_json_string(w->out, s, n, NULL);
  }
  if(f->type == LUA_TNUMBER) {
    t[0] = '"';
    if(lf_time_format(lua_tonumber(w->L, idx), t + 1))
      return problem_got(w, f, idx, "epoch time out of range (years 0000 "
                         "to 9999)");
    t[LF_TIME_LEN + 1] = '"';
    return out_add(w->out, t, LF_TIME_LEN + 2);
  }
  return problem_got(w, f, idx, "expected an ISO 8601 date-time string "
                     "or an epoch number");
}

/* ------------------------------------------------------------------ */
/* Tables                                                              */

/* Copies size_t i into the type lua_rawgeti takes. */
static void rawgeti(lua_State *L, int idx, size_t i)
{
#if LUA_VERSION_NUM >= 503
  lua_rawgeti(L, idx, (lua_Integer)i);
#else
  lua_rawgeti(L, idx, (int)i);
#endif
}

/* Starts the walk of the table at idx for frame f: checks depth, cycles
   and Lua stack room.  Returns 1 to go on; 0 after a problem, with the
   result of recording it in *result. */
static int enter_table(struct walker *w, int idx, struct frame *f,
                       int *result)
{
  const void *p = lua_topointer(w->L, idx);
  const struct frame *up;
  f->table = p;
  *result = LF_OK;
  if(f->depth > w->o->max_depth) {
    *result = problem(w, f, "nested deeper than max_depth (%zu)",
                      w->o->max_depth);
    return 0;
  }
  for(up = f->up; up; up = up->up) {
    if(up->table == p) {
      struct lf_buf path;
      lf_buf_init(&path, 0);
      *result = put_path(&path, up);
      if(!*result)
        *result = problem(w, f, "cycle: this table is also %s%s",
                          path.len ? "at " : "the outermost table",
                          lf_buf_cstr(&path));
      lf_buf_free(&path);
      return 0;
    }
  }
  if(!lua_checkstack(w->L, STACK_PER_LEVEL)) {
    *result = problem(w, f, "nested too deep for the Lua stack");
    return 0;
  }
  return 1;
}

/* Where a key that does not fit was found. */
enum { IN_ARRAY, IN_OBJECT, IN_FIELDS };

/* Records a problem for the key at kidx that does not fit the table
   being walked: an array, an object, or a schema's fields. */
static int problem_key(struct walker *w, struct frame *f, int kidx,
                       int where)
{
  struct lf_buf d;
  int t = lua_type(w->L, kidx), result;
  const char *what;
  if(where == IN_FIELDS)
    what = "field names must be strings";
  else if(t == LUA_TSTRING)
    what = "table mixes array items and string keys";
  else if(t == LUA_TNUMBER && where == IN_OBJECT)
    what = "table mixes string keys and array items";
  else if(t == LUA_TNUMBER)
    what = "not an array position (1, 2, ...) nor a string key";
  else
    what = "keys must be strings (objects) or 1..n (arrays)";
  lf_buf_init(&d, 0);
  result = describe(w->L, kidx, &d);
  if(!result)
    result = problem(w, f, "%s (key %s)", what, lf_buf_cstr(&d));
  lf_buf_free(&d);
  return result;
}

/* Fills the frame of the value at stack index v, a child of f under the
   key c->key (NULL for array position pos). */
static void child_frame(lua_State *L, struct frame *c, struct frame *f,
                        int v, size_t pos)
{
  c->up = f;
  c->pos = pos;
  c->table = NULL;
  c->depth = f->depth + 1;
  c->type = lua_type(L, v);
}

/* Writes the rest of an object whose first key and value are at base + 1
   and base + 2; every element goes through fn. */
static int put_object(struct walker *w, int idx, struct frame *f, int base,
                      elem_fn fn)
{
  lua_State *L = w->L;
  struct lf_buf *b = w->out;
  int result = out_addc(b, '{'), first = 1, ok;
  while(!result) {
    struct frame c;
    if(lua_type(L, base + 1) != LUA_TSTRING) {
      result = problem_key(w, f, base + 1, IN_OBJECT);
      break;
    }
    c.key = lua_tolstring(L, base + 1, &c.klen);
    child_frame(L, &c, f, base + 2, 0);
    if(!first)
      result = out_addc(b, ',');
    first = 0;
    if(!result)
      result = put_str(w, c.key, c.klen, &c, &ok);
    if(!result)
      result = out_addc(b, ':');
    if(!result)
      result = fn(w, base + 2, &c);
    lua_settop(L, base + 1);                        /* key */
    if(result || !lua_next(L, idx))                 /* key value */
      break;
  }
  if(!result)
    result = out_addc(b, '}');
  return result;
}

/* The array walk for tables whose keys did not come as 1, 2, 3...:
   checks every key, then writes positions 1..n with lua_rawgeti. */
static int put_array_slow(struct walker *w, int idx, struct frame *f,
                          int shape, elem_fn fn)
{
  lua_State *L = w->L;
  size_t count = 0, max = 0, i;
  int base = lua_gettop(L), result = LF_OK;
  lua_pushnil(L);                                   /* nil */
  while(lua_next(L, idx)) {                         /* key value */
    double k;
    lua_settop(L, base + 1);                        /* key */
    k = lua_type(L, base + 1) == LUA_TNUMBER ? lua_tonumber(L, base + 1)
                                             : 0;
    if(k < 1 || k > ARRAY_POS_MAX || (double)(size_t)k != k) {
      result = problem_key(w, f, base + 1, IN_ARRAY);
      lua_settop(L, base);                          /* */
      return result;
    }
    count++;
    if((size_t)k > max)
      max = (size_t)k;
  }
  if(count != max)
    return problem(w, f, "array with holes: %zu items, highest position "
                   "%zu", count, max);
  if(shape == SHAPE_OBJECT)
    return problem(w, f, "expected an object (string keys), got an array");
  result = out_addc(w->out, '[');
  for(i = 1; !result && i <= max; i++) {
    struct frame c;
    if(i > 1)
      result = out_addc(w->out, ',');
    rawgeti(L, idx, i);                             /* value */
    c.key = NULL;
    c.klen = 0;
    child_frame(L, &c, f, base + 1, i);
    if(!result)
      result = fn(w, base + 1, &c);
    lua_settop(L, base);                            /* */
  }
  if(!result)
    result = out_addc(w->out, ']');
  return result;
}

/*
** Writes the table at idx as an array or an object, each element through
** fn.  shape says which the schema wants; an empty table is [] for
** SHAPE_ARRAY, {} otherwise.
*/
static int put_table(struct walker *w, int idx, struct frame *f,
                     int shape, elem_fn fn)
{
  lua_State *L = w->L;
  struct lf_buf *b = w->out;
  size_t start = b->len, pos = 0;
  int base = lua_gettop(L), result;
  if(!enter_table(w, idx, f, &result))
    return result;
  lua_pushnil(L);                                   /* nil */
  if(!lua_next(L, idx))                             /* key value */
    return out_add(b, shape == SHAPE_ARRAY ? "[]" : "{}", 2);
  if(lua_type(L, base + 1) == LUA_TSTRING) {
    if(shape == SHAPE_ARRAY)
      result = problem(w, f, "expected an array, got an object");
    else
      result = put_object(w, idx, f, base, fn);
    lua_settop(L, base);                            /* */
    return result;
  }
  if(shape == SHAPE_OBJECT) {
    result = lua_type(L, base + 1) == LUA_TNUMBER
             ? problem(w, f, "expected an object (string keys), got an "
                       "array")
             : problem_key(w, f, base + 1, IN_OBJECT);
    lua_settop(L, base);                            /* */
    return result;
  }
  result = out_addc(b, '[');
  while(!result) {
    struct frame c;
    if(lua_type(L, base + 1) != LUA_TNUMBER ||
       lua_tonumber(L, base + 1) != (lua_Number)(pos + 1)) {
      lua_settop(L, base);                          /* */
      b->len = start;
      return put_array_slow(w, idx, f, shape, fn);
    }
    c.key = NULL;
    c.klen = 0;
    child_frame(L, &c, f, base + 2, ++pos);
    if(pos > 1)
      result = out_addc(b, ',');
    if(!result)
      result = fn(w, base + 2, &c);
    lua_settop(L, base + 1);                        /* key */
    if(result || !lua_next(L, idx))                 /* key value */
      break;
  }
  lua_settop(L, base);                              /* */
  if(result)
    return result;
  return out_addc(b, ']');
}

/* Any JSON value. */
static int put_any(struct walker *w, int idx, struct frame *f)
{
  lua_State *L = w->L;
  switch(f->type) {
  case LUA_TSTRING:
    return put_lua_string(w, idx, f);
  case LUA_TNUMBER:
    return put_number(w, idx, f);
  case LUA_TBOOLEAN:
    return lua_toboolean(L, idx) ? out_add(w->out, "true", 4)
                                 : out_add(w->out, "false", 5);
  case LUA_TTABLE:
    return put_table(w, idx, f, SHAPE_ANY, put_any);
  case LUA_TNIL:
    return out_add(w->out, "null", 4);
  case LUA_TLIGHTUSERDATA:
    if(!lua_touserdata(L, idx))
      return out_add(w->out, "null", 4);
    return problem(w, f, "cannot encode a light userdata other than null");
  default:
    return problem(w, f, "cannot encode a %s", lua_typename(L, f->type));
  }
}

/* Elements of the typed containers. */

static int put_string_elem(struct walker *w, int idx, struct frame *f)
{
  if(f->type != LUA_TSTRING)
    return problem_got(w, f, idx, "expected a string");
  return put_lua_string(w, idx, f);
}

static int put_count_elem(struct walker *w, int idx, struct frame *f)
{
  if(is_null(w->L, idx, f))
    return out_add(w->out, "null", 4);
  return put_int(w, idx, f, 1);
}

/* A usageDetails value: a token count, or for the OpenAI usage objects'
   *_tokens_details keys an object of token counts. */
static int put_usage_detail(struct walker *w, int idx, struct frame *f)
{
  static const char *const nested[] = {
    "prompt_tokens_details", "completion_tokens_details",
    "input_tokens_details", "output_tokens_details", NULL
  };
  int i;
  if(f->type == LUA_TTABLE) {
    for(i = 0; nested[i]; i++) {
      if(strlen(nested[i]) == f->klen && !memcmp(nested[i], f->key, f->klen))
        return put_table(w, idx, f, SHAPE_OBJECT, put_count_elem);
    }
  }
  return put_count_elem(w, idx, f);
}

static int put_cost_elem(struct walker *w, int idx, struct frame *f)
{
  if(is_null(w->L, idx, f))
    return out_add(w->out, "null", 4);
  return put_num(w, idx, f, 1);
}

/* A scalar: string, number, boolean or null. */
static int put_scalar(struct walker *w, int idx, struct frame *f,
                      const char *what)
{
  switch(f->type) {
  case LUA_TSTRING:
  case LUA_TNUMBER:
  case LUA_TBOOLEAN:
    return put_any(w, idx, f);
  default:
    if(is_null(w->L, idx, f))
      return out_add(w->out, "null", 4);
    return problem_got(w, f, idx, what);
  }
}

static int put_model_param(struct walker *w, int idx, struct frame *f)
{
  if(f->type == LUA_TTABLE)
    return put_table(w, idx, f, SHAPE_ANY, put_string_elem);
  return put_scalar(w, idx, f, "expected a string, number, boolean, "
                    "array of strings or object of strings");
}

static int put_model_scalar(struct walker *w, int idx, struct frame *f)
{
  return put_scalar(w, idx, f, "expected a string, number or boolean");
}

/* ------------------------------------------------------------------ */
/* Schema objects                                                      */

static int put_object_fields(struct walker *w, int idx, struct frame *f,
                             const struct lf_schema *sc, struct fields *st);
static void fields_init(struct fields *st);

/* Whether key can be quoted in single quotes as it is. */
static int printable_key(const char *s, size_t n)
{
  size_t i;
  if(n > LF_SNIPPET_MAX)
    return 0;
  for(i = 0; i < n; i++) {
    if(s[i] < 0x20 || s[i] > 0x7e || s[i] == '\'' || s[i] == '\\')
      return 0;
  }
  return 1;
}

/* Records a problem for an unknown field, with a hint when the key looks
   like a known field spelt another way. */
static int problem_unknown(struct walker *w, struct frame *f,
                           const struct lf_schema *sc)
{
  struct lf_buf d;
  int hint = lf_schema_suggest(sc, f->key, f->klen), result;
  lf_buf_init(&d, 0);
  if(printable_key(f->key, f->klen))
    result = lf_buf_printf(&d, "'%.*s'", (int)f->klen, f->key);
  else
    result = lf_json_snippet(&d, f->key, f->klen, LF_SNIPPET_MAX);
  if(!result && hint >= 0)
    result = problem(w, f, "unknown field %s (did you mean '%s'?)",
                     lf_buf_cstr(&d), lf_name_text(hint));
  else if(!result)
    result = problem(w, f, "unknown field %s in the %s", lf_buf_cstr(&d),
                     sc->what);
  lf_buf_free(&d);
  return result;
}

/* The envelope's type: one of the known event types. */
static int put_type(struct walker *w, int idx, struct frame *f,
                    struct fields *st)
{
  const char *s;
  size_t n;
  int internal;
  char what[MESSAGE_MAX];
  if(f->type != LUA_TSTRING)
    return problem_got(w, f, idx, "expected an event type string");
  s = lua_tolstring(w->L, idx, &n);
  st->body = n ? lf_schema_for_type(s, n, &internal) : NULL;
  if(st->body)
    return lf_json_string(w->out, s, n, NULL);
  if(n && internal)
    return problem(w, f, "type dataset-run-item-create is for Langfuse's "
                   "internal use; the server refuses it from clients");
  snprintf(what, sizeof(what), "unknown event type; expected one of %s",
           lf_type_list);
  return problem_str(w, f, what, ", got ", s, n, NULL);
}

/* Writes one known field of a schema object; null was handled. */
static int put_field(struct walker *w, int idx, struct frame *f, int kind,
                     struct fields *st)
{
  int which;
  switch(kind) {
  case LF_K_ANY:
    return put_any(w, idx, f);
  case LF_K_ID:
  case LF_K_STRING:
  case LF_K_NAME:
  case LF_K_NONEMPTY:
    return put_string_field(w, idx, f, kind, NULL);
  case LF_K_TIME:
    return put_time(w, idx, f);
  case LF_K_BOOL:
    if(f->type != LUA_TBOOLEAN)
      return problem_got(w, f, idx, "expected a boolean");
    return put_any(w, idx, f);
  case LF_K_INT:
    return put_int(w, idx, f, 0);
  case LF_K_NUMBER:
    return put_num(w, idx, f, 0);
  case LF_K_TAGS:
    if(f->type != LUA_TTABLE)
      return problem_got(w, f, idx, "expected an array of strings");
    return put_table(w, idx, f, SHAPE_ARRAY, put_string_elem);
  case LF_K_LEVEL:
  case LF_K_UNIT:
  case LF_K_SOURCE:
  case LF_K_OBS_TYPE:
    return put_enum(w, idx, f, kind, &which);
  case LF_K_DATA_TYPE:
    return put_enum(w, idx, f, kind, &st->data_type);
  case LF_K_USAGE: {
    struct fields u;
    fields_init(&u);
    if(f->type != LUA_TTABLE)
      return problem_got(w, f, idx, "expected a usage table");
    return put_object_fields(w, idx, f, &lf_schema_usage, &u);
  }
  case LF_K_USAGE_DETAILS:
    if(f->type != LUA_TTABLE)
      return problem_got(w, f, idx, "expected a table of token counts");
    return put_table(w, idx, f, SHAPE_OBJECT, put_usage_detail);
  case LF_K_COST_DETAILS:
    if(f->type != LUA_TTABLE)
      return problem_got(w, f, idx, "expected a table of costs");
    return put_table(w, idx, f, SHAPE_OBJECT, put_cost_elem);
  case LF_K_MODEL_PARAMS:
  case LF_K_MODEL_SCALARS:
    if(f->type != LUA_TTABLE)
      return problem_got(w, f, idx, "expected a table of parameters");
    return put_table(w, idx, f, SHAPE_OBJECT,
                     kind == LF_K_MODEL_PARAMS ? put_model_param
                                               : put_model_scalar);
  case LF_K_SCORE_VALUE:
    if(f->type == LUA_TNUMBER) {
      st->value_type = LUA_TNUMBER;
      st->value_num = lua_tonumber(w->L, idx);
      return put_number(w, idx, f);
    }
    if(f->type == LUA_TSTRING) {
      st->value_type = LUA_TSTRING;
      return put_string_field(w, idx, f, LF_K_STRING, &st->value_units);
    }
    return problem_got(w, f, idx, "expected a number or a string");
  case LF_K_TYPE:
    return put_type(w, idx, f, st);
  default:
    return problem(w, f, "BUG: field kind %d not handled", kind);
  }
}

/* Writes a field that is not in the schema (strict off). */
static int put_extra(struct walker *w, int idx, struct frame *f,
                     struct fields *st)
{
  int ok, result = LF_OK;
  if(st->written++)
    result = out_addc(w->out, ',');
  if(!result)
    result = put_str(w, f->key, f->klen, f, &ok);
  if(!result)
    result = out_addc(w->out, ':');
  if(!result)
    result = put_any(w, idx, f);
  return result;
}

/* Writes "name":"text" for a field the encoder fills in. */
static int put_made(struct walker *w, struct fields *st, const char *name,
                    const char *text, size_t n)
{
  int result = LF_OK;
  if(st->written++)
    result = out_addc(w->out, ',');
  if(!result)
    result = out_key(w->out, name, strlen(name));
  if(!result)
    result = lf_json_string(w->out, text, n, NULL);
  return result;
}

/* Writes the value at idx of a known field; null only where allowed. */
static int put_known(struct walker *w, int idx, struct frame *f,
                     const struct lf_schema *sc, int name,
                     struct fields *st)
{
  if(!is_null(w->L, idx, f))
    return put_field(w, idx, f, sc->kind[name], st);
  if(sc->nonnull & LF_BIT(name))
    return problem(w, f, "must not be null");
  return out_add(w->out, "null", 4);
}

/* Fields whose truthiness the checks across fields look at. */
#define TRUTHY_FIELDS \
  (LF_BIT(LF_N_PROMPT_NAME) | LF_BIT(LF_N_PROMPT_VERSION) | \
   LF_BIT(LF_N_TRACE_ID) | LF_BIT(LF_N_SESSION_ID) | \
   LF_BIT(LF_N_DATASET_RUN_ID) | LF_BIT(LF_N_OBSERVATION_ID) | \
   LF_BIT(LF_N_CONFIG_ID))

/* Walks the fields of the object at idx (a table) by schema sc, writing
   each (with commas, without braces) and noting them in st. */
static int walk_fields(struct walker *w, int idx, struct frame *f,
                       const struct lf_schema *sc, struct fields *st)
{
  lua_State *L = w->L;
  int base = lua_gettop(L), v = base + 2, result = LF_OK;
  lua_pushnil(L);                                   /* nil */
  while(!result && lua_next(L, idx)) {              /* key value */
    struct frame c;
    int name, kind;
    uint64_t bit;
    if(w->rename && f == w->rename_at) {
      int r = w->rename->field(w->rename->ud, L, base + 1, v, &c.key,
                               &c.klen);
      if(r) {
        if(r < 0)
          result = LF_EINVAL;
        lua_settop(L, base + 1);                    /* key */
        continue;
      }
    } else if(lua_type(L, base + 1) != LUA_TSTRING) {
      result = problem_key(w, f, base + 1, IN_FIELDS);
      lua_settop(L, base + 1);                      /* key */
      continue;
    } else {
      c.key = lua_tolstring(L, base + 1, &c.klen);
    }
    child_frame(L, &c, f, v, 0);
    name = lf_name_lookup(c.key, c.klen);
    kind = name >= 0 ? sc->kind[name] : LF_K_NONE;
    bit = name >= 0 ? LF_BIT(name) : 0;
    st->seen |= bit;
    if(kind == LF_K_NONE)
      result = w->o->strict ? problem_unknown(w, &c, sc)
                            : put_extra(w, v, &c, st);
    else if(kind == LF_K_BODY) {
      lua_pushvalue(L, v);                          /* key value body */
      lua_replace(L, st->body_slot);                /* key value */
    } else {
      if((bit & TRUTHY_FIELDS) && truthy(L, v, c.type))
        st->truthy |= bit;
      if(name == LF_N_ID && c.type == LUA_TSTRING)
        st->id = lua_tolstring(L, v, &st->idlen);
      if(st->written++)
        result = out_addc(w->out, ',');
      if(!result)
        result = out_key(w->out, c.key, c.klen);
      if(!result)
        result = put_known(w, v, &c, sc, name, st);
      if(!result && st->id && sc == &lf_schema_envelope &&
         name == LF_N_ID && memchr(st->id, '\0', st->idlen))
        result = problem(w, &c, "an envelope id must not contain a NUL "
                         "byte (the server's answers could not be "
                         "matched to it)");
    }
    lua_settop(L, base + 1);                        /* key */
  }
  lua_settop(L, base);                              /* */
  return result;
}

/* A frame for the field name of the object at f, for problems about a
   field that is missing or conflicts with another. */
static void field_frame(struct frame *c, struct frame *f, int name)
{
  c->up = f;
  c->key = lf_name_text(name);
  c->klen = strlen(c->key);
  c->pos = 0;
  c->table = NULL;
  c->depth = f->depth + 1;
  c->type = LUA_TNONE;
}

/* promptName and promptVersion: both set (JavaScript-true) or neither. */
static int check_prompt(struct walker *w, struct frame *f,
                        struct fields *st)
{
  struct frame c;
  int has_name = (st->truthy & LF_BIT(LF_N_PROMPT_NAME)) != 0;
  int has_version = (st->truthy & LF_BIT(LF_N_PROMPT_VERSION)) != 0;
  if(w->partial || has_name == has_version)
    return LF_OK;
  field_frame(&c, f, has_name ? LF_N_PROMPT_VERSION : LF_N_PROMPT_NAME);
  return problem(w, &c, "promptName and promptVersion must be set "
                 "together");
}

/* The value must agree with dataType. */
static int check_score_value(struct walker *w, struct frame *f,
                             struct fields *st)
{
  struct frame c;
  int dt = st->data_type;
  field_frame(&c, f, LF_N_VALUE);
  if(st->value_type < 0 || dt < 0)
    return LF_OK;
  if((dt == DT_NUMERIC || dt == DT_BOOLEAN) &&
     st->value_type != LUA_TNUMBER)
    return problem(w, &c, "dataType %s needs a number value, got a "
                   "string", lf_enum_values(LF_K_DATA_TYPE)[dt]);
  if(dt == DT_BOOLEAN && st->value_num != 0 && st->value_num != 1)
    return problem(w, &c, "dataType BOOLEAN needs the value 0 or 1, "
                   "got %.17g", st->value_num);
  if(dt != DT_NUMERIC && dt != DT_BOOLEAN && st->value_type != LUA_TSTRING)
    return problem(w, &c, "dataType %s needs a string value, got a "
                   "number", lf_enum_values(LF_K_DATA_TYPE)[dt]);
  if(dt == DT_TEXT && (st->value_units < 1 ||
                       st->value_units > TEXT_SCORE_MAX_UNITS))
    return problem(w, &c, "dataType TEXT needs 1 to %d characters, got "
                   "%zu", TEXT_SCORE_MAX_UNITS, st->value_units);
  return LF_OK;
}

/* A score belongs to exactly one of a trace, a session or a dataset run;
   observationId needs traceId. */
static int check_score(struct walker *w, struct frame *f, struct fields *st)
{
  struct frame c;
  uint64_t t = st->truthy;
  int owners = ((t & LF_BIT(LF_N_TRACE_ID)) != 0) +
               ((t & LF_BIT(LF_N_SESSION_ID)) != 0) +
               ((t & LF_BIT(LF_N_DATASET_RUN_ID)) != 0);
  int result = check_score_value(w, f, st);
  if(!result && st->data_type == DT_CORRECTION &&
     (t & LF_BIT(LF_N_CONFIG_ID))) {
    field_frame(&c, f, LF_N_CONFIG_ID);
    result = problem(w, &c, "configId is not allowed with dataType "
                     "CORRECTION");
  }
  if(!result && owners > 1)
    result = problem(w, f, "give exactly one of traceId, sessionId and "
                     "datasetRunId, not %d", owners);
  if(!result && owners == 0 && !w->partial)
    result = problem(w, f, "one of traceId, sessionId or datasetRunId "
                     "is required");
  if(!result && (t & LF_BIT(LF_N_OBSERVATION_ID)) &&
     !(t & LF_BIT(LF_N_TRACE_ID)) && !w->partial) {
    field_frame(&c, f, LF_N_OBSERVATION_ID);
    result = problem(w, &c, "observationId needs traceId");
  }
  return result;
}

/* Required fields and the checks across fields of a complete object. */
static int check_fields(struct walker *w, struct frame *f,
                        const struct lf_schema *sc, struct fields *st)
{
  uint64_t missing = w->partial ? 0 : sc->required & ~st->seen;
  int name, result = LF_OK;
  for(name = 0; missing && !result && name < LF_N_COUNT; name++) {
    if(missing & LF_BIT(name)) {
      struct frame c;
      field_frame(&c, f, name);
      result = problem(w, &c, "required field is missing");
    }
  }
  if(!result && sc->check == LF_CHECK_PROMPT)
    result = check_prompt(w, f, st);
  if(!result && sc->check == LF_CHECK_SCORE)
    result = check_score(w, f, st);
  return result;
}

static void fields_init(struct fields *st)
{
  memset(st, 0, sizeof(*st));
  st->data_type = -1;
  st->value_type = -1;
}

/* Writes the table at idx as an object of schema sc, with braces. */
static int put_object_fields(struct walker *w, int idx, struct frame *f,
                             const struct lf_schema *sc, struct fields *st)
{
  int result;
  if(!enter_table(w, idx, f, &result))
    return result;
  result = out_addc(w->out, '{');
  if(!result)
    result = walk_fields(w, idx, f, sc, st);
  if(!result)
    result = check_fields(w, f, sc, st);
  if(!result)
    result = out_addc(w->out, '}');
  return result;
}

/* ------------------------------------------------------------------ */
/* Events                                                              */

struct event_out {
  int accepted;
  const char *id;                 /* envelope id; Lua-owned or made_id */
  size_t idlen;
  char made_id[LF_UUID_LEN + 1];
};

/* Writes the body kept in slot: by its type's schema, or as any JSON
   when the type is unknown (its values are still checked). */
static int put_body(struct walker *w, int slot, struct frame *root,
                    struct fields *st)
{
  struct frame c;
  struct fields body;
  int result;
  field_frame(&c, root, LF_N_BODY);
  c.type = lua_type(w->L, slot);
  if(st->written++ && (result = out_addc(w->out, ',')))
    return result;
  result = out_key(w->out, "body", 4);
  if(result)
    return result;
  if(c.type != LUA_TTABLE)
    return problem_got(w, &c, slot, "expected a table (the event body)");
  if(!st->body)
    return put_any(w, slot, &c);
  fields_init(&body);
  return put_object_fields(w, slot, &c, st->body, &body);
}

/* Fills in a missing envelope id and timestamp; *made says which. */
static int put_defaults(struct walker *w, int mode, struct frame *root,
                        struct fields *st, struct event_out *eo,
                        char *ts, int *made)
{
  int result = LF_OK;
  *made = 0;
  if(!(st->seen & LF_BIT(LF_N_ID))) {
    if(mode == MODE_VALIDATE)
      memcpy(eo->made_id, PLACEHOLDER_ID, sizeof(PLACEHOLDER_ID));
    else if(lf_uuid4(eo->made_id))
      return problem(w, root, "no random bytes to make an envelope id");
    st->id = eo->made_id;
    st->idlen = LF_UUID_LEN;
    *made |= 1;
    result = put_made(w, st, "id", eo->made_id, LF_UUID_LEN);
  }
  if(!result && !(st->seen & LF_BIT(LF_N_TIMESTAMP))) {
    if(lf_time_now(ts))
      return problem(w, root, "the clock cannot be read for a timestamp");
    *made |= 2;
    result = put_made(w, st, "timestamp", ts, LF_TIME_LEN);
  }
  return result;
}

/*
** Writes the event at stack index ev.  An accepted event's JSON stays in
** the output; a refused one's is cut off and its problems are recorded.
** Returns LF_OK or LF_ENOMEM; eo->accepted tells the event's fate.
*/
static int put_event(struct walker *w, int ev, int mode,
                     struct event_out *eo)
{
  lua_State *L = w->L;
  struct lf_buf *b = w->out;
  struct frame root = { NULL, NULL, 0, 0, NULL, 1, LUA_TNONE };
  struct fields st;
  char ts[LF_TIME_LEN + 1];
  size_t start = b->len;
  int top = lua_gettop(L), result, made = 0;
  eo->accepted = 0;
  w->nprob = 0;
  w->event = 0;
  w->id_known = 0;
  root.type = lua_type(L, ev);
  if(root.type != LUA_TTABLE)
    return problem_got(w, &root, ev, "expected an event table");
  if(!enter_table(w, ev, &root, &result))
    return result;
  w->event = ev;
  fields_init(&st);
  lua_pushnil(L);                                   /* body slot */
  st.body_slot = lua_gettop(L);
  result = out_addc(b, '{');
  if(!result)
    result = walk_fields(w, ev, &root, &lf_schema_envelope, &st);
  if(!result)
    result = put_defaults(w, mode, &root, &st, eo, ts, &made);
  if(!result && (st.seen & LF_BIT(LF_N_BODY)))
    result = put_body(w, st.body_slot, &root, &st);
  if(!result)
    result = check_fields(w, &root, &lf_schema_envelope, &st);
  if(!result)
    result = out_addc(b, '}');
  lua_settop(L, top);                               /* */
  if(!result && !w->nprob && b->len - start > w->o->max_event_bytes)
    result = problem(w, &root, "event is %zu bytes as JSON, over "
                     "max_event_bytes (%zu)", b->len - start,
                     w->o->max_event_bytes);
  if(result || w->nprob) {
    b->len = start;
    return result;
  }
  eo->accepted = 1;
  eo->id = st.id;
  eo->idlen = st.idlen;
  if(mode != MODE_VALIDATE && (made & 1)) {
    lua_pushliteral(L, "id");                       /* "id" */
    lua_pushlstring(L, eo->made_id, LF_UUID_LEN);   /* "id" id */
    lua_rawset(L, ev);                              /* */
  }
  if(mode != MODE_VALIDATE && (made & 2)) {
    lua_pushliteral(L, "timestamp");                /* "timestamp" */
    lua_pushlstring(L, ts, LF_TIME_LEN);            /* "timestamp" ts */
    lua_rawset(L, ev);                              /* */
  }
  return LF_OK;
}

static void walker_init(struct walker *w, lua_State *L,
                        const struct lf_encode_opts *o, struct lf_buf *out,
                        struct lf_problems *probs)
{
  lf_schema_init();
  w->L = L;
  w->out = out;
  w->o = o;
  w->probs = probs;
  w->index = 0;
  w->event = 0;
  w->id_known = 0;
  w->id = NULL;
  w->idlen = 0;
  w->nprob = 0;
  w->partial = 0;
  w->rename = NULL;
  w->rename_at = NULL;
}

/* Appends an accepted event, whose JSON starts at off in b->text, with
   its envelope id after it. */
static int batch_add(struct lf_batch *b, size_t index, size_t off,
                     const struct event_out *eo)
{
  size_t len = b->text.len - off;
  struct lf_item *it;
  int result;
  if(b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 16;
    size_t *o = realloc(b->off, cap * sizeof(*o));
    if(!o)
      return LF_ENOMEM;
    b->off = o;
    it = realloc(b->items, cap * sizeof(*it));
    if(!it)
      return LF_ENOMEM;
    b->items = it;
    b->cap = cap;
  }
  result = lf_buf_addc(&b->text, '\0');
  if(!result)
    result = lf_buf_add(&b->text, eo->id, eo->idlen);
  if(!result)
    result = lf_buf_addc(&b->text, '\0');
  if(result) {
    b->text.len = off;
    return result;
  }
  it = &b->items[b->n];
  memset(it, 0, sizeof(*it));
  it->len = len;
  it->index = index;
  it->outcome = LF_PENDING;
  b->off[b->n++] = off;
  return LF_OK;
}

/* Points the items into the text again after it may have moved. */
static void batch_fix(struct lf_batch *b)
{
  size_t i;
  for(i = 0; i < b->n; i++) {
    b->items[i].json = b->text.data + b->off[i];
    b->items[i].id = b->items[i].json + b->items[i].len + 1;
  }
}

/*
** Walks the events array at idx.  MODE_VALIDATE throws the JSON away;
** MODE_JOIN writes {"batch":[...]} to out; MODE_BATCH appends items to
** batch (whose text is out).  *count gets the number of events accepted.
*/
static int encode_list(lua_State *L, int idx, const struct lf_encode_opts *o,
                       int mode, struct lf_buf *out, struct lf_batch *batch,
                       struct lf_problems *probs, size_t *count)
{
  struct walker w;
  size_t n, i;
  int result = LF_OK, refused = 0;
  idx = lua_absindex(L, idx);
  walker_init(&w, L, o, out, probs);
  *count = 0;
  if(lua_type(L, idx) != LUA_TTABLE) {
    struct frame root = { NULL, NULL, 0, 0, NULL, 1, LUA_TNONE };
    result = problem_got(&w, &root, idx, "expected an array of events");
    return result ? result : LF_EINVAL;
  }
  if(!lua_checkstack(L, STACK_PER_LEVEL))
    return LF_ENOMEM;
  n = lua_rawlen(L, idx);
  if(mode == MODE_JOIN)
    result = out_add(out, "{\"batch\":[", 10);
  for(i = 1; !result && i <= n; i++) {
    struct event_out eo;
    size_t mark = out->len;
    w.index = i;
    rawgeti(L, idx, i);                             /* event */
    if(mode == MODE_JOIN && *count)
      result = out_addc(out, ',');
    if(!result)
      result = put_event(&w, lua_gettop(L), mode, &eo);
    if(!result && eo.accepted && mode == MODE_BATCH)
      result = batch_add(batch, i, mark, &eo);
    lua_pop(L, 1);                                  /* */
    if(result)
      break;
    if(!eo.accepted || mode == MODE_VALIDATE)
      out->len = mark;
    if(eo.accepted)
      (*count)++;
    else
      refused = 1;
  }
  if(!result && mode == MODE_JOIN)
    result = out_add(out, "]}", 2);
  if(batch)
    batch_fix(batch);
  out_end(out);
  return result ? result : refused ? LF_EINVAL : LF_OK;
}

/* ------------------------------------------------------------------ */
/* Public API                                                          */

void lf_encode_opts_init(struct lf_encode_opts *o)
{
  o->max_depth = LF_DEFAULT_MAX_DEPTH;
  o->max_event_bytes = LF_DEFAULT_MAX_EVENT_BYTES;
  o->strict = 1;
}

void lf_batch_init(struct lf_batch *b)
{
  b->items = NULL;
  b->n = 0;
  b->cap = 0;
  b->off = NULL;
  lf_buf_init(&b->text, 0);
}

void lf_batch_free(struct lf_batch *b)
{
  size_t i;
  for(i = 0; i < b->n; i++)
    free(b->items[i].message);
  free(b->items);
  free(b->off);
  lf_buf_free(&b->text);
  lf_batch_init(b);
}

int lf_encode_events(lua_State *L, int idx, const struct lf_encode_opts *o,
                     struct lf_batch *b, struct lf_problems *probs)
{
  size_t count;
  return encode_list(L, idx, o, MODE_BATCH, &b->text, b, probs, &count);
}

int lf_encode_check_events(lua_State *L, int idx,
                           const struct lf_encode_opts *o,
                           struct lf_buf *scratch, struct lf_problems *probs,
                           size_t *count)
{
  return encode_list(L, idx, o, MODE_VALIDATE, scratch, NULL, probs, count);
}

int lf_encode_batch_body(lua_State *L, int idx,
                         const struct lf_encode_opts *o, struct lf_buf *out,
                         struct lf_problems *probs, size_t *count)
{
  return encode_list(L, idx, o, MODE_JOIN, out, NULL, probs, count);
}

int lf_encode_value(lua_State *L, int idx, const struct lf_encode_opts *o,
                    struct lf_buf *out, struct lf_problems *probs)
{
  struct walker w;
  struct frame root = { NULL, NULL, 0, 0, NULL, 1, LUA_TNONE };
  size_t start = out->len;
  int result;
  walker_init(&w, L, o, out, probs);
  idx = lua_absindex(L, idx);
  root.type = lua_type(L, idx);
  result = put_any(&w, idx, &root);
  if(!result && w.nprob) {
    out->len = start;
    result = LF_EINVAL;
  }
  out_end(out);
  return result;
}

/* lf_validate_body and lf_validate_options: the body's field names are
   mapped by rn when it is not NULL. */
static int validate_body(lua_State *L, int idx, const char *type,
                         const struct lf_encode_opts *o, int flags,
                         const struct lf_rename *rn, struct lf_buf *out,
                         struct lf_problems *probs)
{
  struct walker w;
  struct frame root = { NULL, NULL, 0, 0, NULL, 2, LUA_TNONE };
  struct fields st;
  struct lf_buf scratch;
  const struct lf_schema *sc;
  size_t start;
  int internal, result;
  lf_buf_init(&scratch, 0);
  if(!out)
    out = &scratch;
  start = out->len;
  walker_init(&w, L, o, out, probs);
  w.partial = (flags & LF_BODY_PARTIAL) != 0;
  w.rename = rn;
  w.rename_at = &root;
  idx = lua_absindex(L, idx);
  root.type = lua_type(L, idx);
  sc = lf_schema_for_type(type, strlen(type), &internal);
  fields_init(&st);
  if(!sc)
    result = problem(&w, &root, "unknown event type '%s'", type);
  else if(lua_type(L, idx) != LUA_TTABLE)
    result = problem_got(&w, &root, idx, "expected a body table");
  else
    result = put_object_fields(&w, idx, &root, sc, &st);
  if(!result && w.nprob)
    result = LF_EINVAL;
  if(result)
    out->len = start;
  out_end(out);
  lf_buf_free(&scratch);
  return result;
}

int lf_validate_body(lua_State *L, int idx, const char *type,
                     const struct lf_encode_opts *o, int flags,
                     struct lf_buf *out, struct lf_problems *probs)
{
  return validate_body(L, idx, type, o, flags, NULL, out, probs);
}

int lf_validate_options(lua_State *L, int idx, const char *type,
                        const struct lf_encode_opts *o, int flags,
                        const struct lf_rename *rn, struct lf_buf *out,
                        struct lf_problems *probs)
{
  return validate_body(L, idx, type, o, flags, rn, out, probs);
}
