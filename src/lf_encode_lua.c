/*
** lf_encode_lua.c: the Lua face of the encoder, ids and times in
** langfuse.core:
**
**   core.validate(events [, opts])      -> true | false, problems
**   core.encode_batch(events [, opts])  -> json, count, problems
**   core.encode(value [, opts])         -> json (raises on a problem)
**   core.validate_body(type, body [, opts]) -> true | false, problems
**   core.uuid()   core.hex_id(n)   core.now()
**   core.iso_time(epoch) -> string | nil, message
**   core.check_time(s)   -> true | false, message
**
** opts: max_depth (64), max_event_bytes (1000000), strict (true), and
** for validate_body only partial (false).
**
** The functions share one scratch area, a userdata kept as their
** upvalue: output buffer and problem list live there, so an error raised
** half-way (out of memory) leaks nothing, and its __gc frees them.
*/
#include <string.h>

#include <lauxlib.h>

#include "lf_compat.h"
#include "lf_core.h"
#include "lf_encode.h"
#include "lf_json.h"
#include "lf_schema.h"
#include "lf_time.h"
#include "lf_uuid.h"

/* Scratch output always kept between calls.  A larger buffer is kept
   only while calls keep filling a quarter of it: repeated large batches
   reuse it (as lua-cjson reuses its buffer), while one huge call
   followed by small ones does not pin its memory. */
#define SCRATCH_KEEP (1024 * 1024)

/* Room for a quoted snippet of a bad value: every byte may become a
   four-character escape, plus quotes and "...". */
#define SNIPPET_ROOM (LF_SNIPPET_MAX * 4 + 8)

struct scratch {
  struct lf_buf out;
  struct lf_problems probs;
};

static int scratch_gc(lua_State *L)
{
  struct scratch *s = lua_touserdata(L, 1);
  lf_buf_free(&s->out);
  lf_problems_free(&s->probs);
  return 0;
}

/* The scratch area, emptied for a new call. */
static struct scratch *scratch_get(lua_State *L)
{
  struct scratch *s = lua_touserdata(L, lua_upvalueindex(1));
  lf_buf_reset(&s->out);
  lf_problems_free(&s->probs);
  return s;
}

/* Ends a call: drops the problems, and the buffer when it is large and
   this call used little of it. */
static void scratch_done(struct scratch *s)
{
  if(s->out.cap > SCRATCH_KEEP && s->out.len < s->out.cap / 4)
    lf_buf_free(&s->out);
  lf_problems_free(&s->probs);
}

void lf_problems_push(lua_State *L, const struct lf_problems *p)
{
  size_t i;
  lua_createtable(L, (int)p->n, 0);                 /* list */
  for(i = 0; i < p->n; i++) {
    const struct lf_problem *q = &p->v[i];
    lua_createtable(L, 0, 4);                       /* list problem */
    if(q->index) {
      lua_pushinteger(L, (lua_Integer)q->index);
      lua_setfield(L, -2, "index");
    }
    if(q->id) {
      lua_pushstring(L, q->id);
      lua_setfield(L, -2, "id");
    }
    lua_pushstring(L, q->path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, q->message);
    lua_setfield(L, -2, "message");
    lua_rawseti(L, -2, (int)(i + 1));               /* list */
  }
}

/* Whether the string key at -2 is exactly name. */
static int key_is(lua_State *L, const char *name)
{
  size_t n;
  const char *k = lua_tolstring(L, -2, &n);
  return n == strlen(name) && !memcmp(k, name, n);
}

/* The option value at -1 as an integer from lo to hi; range says the
   same in words for the error. */
static size_t opt_size(lua_State *L, int arg, const char *name, double lo,
                       double hi, const char *range)
{
  double x = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
  if(x != x || x < lo || x > hi || (double)(size_t)x != x)
    luaL_argerror(L, arg, lua_pushfstring(L, "'%s' must be an integer %s",
                                          name, range));
  return (size_t)x;
}

static int opt_bool(lua_State *L, int arg, const char *name)
{
  if(lua_type(L, -1) != LUA_TBOOLEAN)
    luaL_argerror(L, arg, lua_pushfstring(L, "'%s' must be a boolean",
                                          name));
  return lua_toboolean(L, -1);
}

/* Reads opts at arg; partial (when not NULL) allows the option of the
   same name. */
static void read_opts(lua_State *L, int arg, struct lf_encode_opts *o,
                      int *partial)
{
  lf_encode_opts_init(o);
  if(partial)
    *partial = 0;
  if(lua_isnoneornil(L, arg))
    return;
  luaL_checktype(L, arg, LUA_TTABLE);
  lua_pushnil(L);                                   /* nil */
  while(lua_next(L, arg)) {                         /* key value */
    if(lua_type(L, -2) != LUA_TSTRING)
      luaL_argerror(L, arg, "option names must be strings");
    if(key_is(L, "max_depth"))
      o->max_depth = opt_size(L, arg, "max_depth", 1, LF_MAX_DEPTH_LIMIT,
                              "from 1 to 1000");
    else if(key_is(L, "max_event_bytes"))
      o->max_event_bytes = opt_size(L, arg, "max_event_bytes", 1, 1e15,
                                    "of at least 1");
    else if(key_is(L, "strict"))
      o->strict = opt_bool(L, arg, "strict");
    else if(partial && key_is(L, "partial"))
      *partial = opt_bool(L, arg, "partial");
    else
      luaL_argerror(L, arg, lua_pushfstring(L, "unknown option '%s'",
                                            lua_tostring(L, -2)));
    lua_pop(L, 1);                                  /* key */
  }
}

void lf_encode_opts_read(lua_State *L, int idx, struct lf_encode_opts *o)
{
  read_opts(L, lua_absindex(L, idx), o, NULL);
}

/* core.validate(events [, opts]) -> true | false, problems */
static int l_validate(lua_State *L)
{
  struct lf_encode_opts o;
  struct scratch *s;
  size_t count;
  int result;
  luaL_checktype(L, 1, LUA_TTABLE);
  lf_encode_opts_read(L, 2, &o);
  s = scratch_get(L);
  result = lf_encode_check_events(L, 1, &o, &s->out, &s->probs, &count);
  if(result == LF_ENOMEM) {
    scratch_done(s);
    return luaL_error(L, "langfuse.core.validate: out of memory");
  }
  lua_pushboolean(L, result == LF_OK);
  if(result == LF_OK) {
    scratch_done(s);
    return 1;
  }
  lf_problems_push(L, &s->probs);
  scratch_done(s);
  return 2;
}

/* core.encode_batch(events [, opts]) -> json, count, problems */
static int l_encode_batch(lua_State *L)
{
  struct lf_encode_opts o;
  struct scratch *s;
  size_t count;
  int result;
  luaL_checktype(L, 1, LUA_TTABLE);
  lf_encode_opts_read(L, 2, &o);
  s = scratch_get(L);
  result = lf_encode_batch_body(L, 1, &o, &s->out, &s->probs, &count);
  if(result == LF_ENOMEM) {
    scratch_done(s);
    return luaL_error(L, "langfuse.core.encode_batch: out of memory");
  }
  lua_pushlstring(L, s->out.data, s->out.len);
  lua_pushinteger(L, (lua_Integer)count);
  lf_problems_push(L, &s->probs);
  scratch_done(s);
  return 3;
}

/* core.encode(value [, opts]) -> json; raises naming the first bad
   value's path. */
static int l_encode(lua_State *L)
{
  struct lf_encode_opts o;
  struct scratch *s;
  const struct lf_problem *q;
  int result;
  luaL_checkany(L, 1);
  lf_encode_opts_read(L, 2, &o);
  s = scratch_get(L);
  result = lf_encode_value(L, 1, &o, &s->out, &s->probs);
  if(result == LF_OK) {
    lua_pushlstring(L, s->out.data ? s->out.data : "", s->out.len);
    scratch_done(s);
    return 1;
  }
  if(result == LF_ENOMEM || !s->probs.n) {
    scratch_done(s);
    return luaL_error(L, "langfuse.core.encode: out of memory");
  }
  q = &s->probs.v[0];
  if(q->path[0])
    lua_pushfstring(L, "langfuse.core.encode: cannot encode value at %s: "
                    "%s", q->path, q->message);
  else
    lua_pushfstring(L, "langfuse.core.encode: cannot encode value: %s",
                    q->message);
  if(s->probs.n > 1)
    lua_pushfstring(L, " (and %d more problems)", (int)s->probs.n - 1);
  else
    lua_pushliteral(L, "");
  lua_concat(L, 2);
  scratch_done(s);
  return lua_error(L);
}

/* core.validate_body(type, body [, opts]) -> true | false, problems */
static int l_validate_body(lua_State *L)
{
  struct lf_encode_opts o;
  struct scratch *s;
  size_t n;
  const char *type = luaL_checklstring(L, 1, &n);
  int partial, internal, result;
  if(!lf_schema_for_type(type, n, &internal) || strlen(type) != n)
    luaL_argerror(L, 1, "unknown event type");
  luaL_checktype(L, 2, LUA_TTABLE);
  read_opts(L, 3, &o, &partial);
  s = scratch_get(L);
  result = lf_validate_body(L, 2, type, &o, partial ? LF_BODY_PARTIAL : 0,
                            &s->out, &s->probs);
  if(result == LF_ENOMEM) {
    scratch_done(s);
    return luaL_error(L, "langfuse.core.validate_body: out of memory");
  }
  lua_pushboolean(L, result == LF_OK);
  if(result == LF_OK) {
    scratch_done(s);
    return 1;
  }
  lf_problems_push(L, &s->probs);
  scratch_done(s);
  return 2;
}

/* core.uuid() -> a random UUIDv4 string */
static int l_uuid(lua_State *L)
{
  char id[LF_UUID_LEN + 1];
  if(lf_uuid4(id))
    return luaL_error(L, "langfuse.core.uuid: no random bytes available");
  lua_pushlstring(L, id, LF_UUID_LEN);
  return 1;
}

/* core.hex_id(n) -> n random lowercase hex characters (n = 16 or 32) */
static int l_hex_id(lua_State *L)
{
  char id[LF_HEX_ID_MAX + 1];
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n == 16 || n == 32, 1, "must be 16 or 32");
  if(lf_hex_id(id, (size_t)n))
    return luaL_error(L, "langfuse.core.hex_id: no random bytes available");
  lua_pushlstring(L, id, (size_t)n);
  return 1;
}

/* core.now() -> current UTC time, YYYY-MM-DDTHH:MM:SS.ffffffZ */
static int l_now(lua_State *L)
{
  char t[LF_TIME_LEN + 1];
  if(lf_time_now(t))
    return luaL_error(L, "langfuse.core.now: the clock cannot be read");
  lua_pushlstring(L, t, LF_TIME_LEN);
  return 1;
}

/* core.iso_time(epoch) -> string | nil, message */
static int l_iso_time(lua_State *L)
{
  char t[LF_TIME_LEN + 1];
  double x;
  if(lua_type(L, 1) != LUA_TNUMBER)
    luaL_argerror(L, 1, "number expected");
  x = lua_tonumber(L, 1);
  if(lf_time_format(x, t)) {
    lua_pushnil(L);
    lua_pushstring(L, x != x ? "epoch time is NaN"
                             : "epoch time out of range (years 0000 to "
                               "9999)");
    return 2;
  }
  lua_pushlstring(L, t, LF_TIME_LEN);
  return 1;
}

/* core.check_time(s) -> true | false, message */
static int l_check_time(lua_State *L)
{
  char quoted[SNIPPET_ROOM];
  struct lf_buf d;
  const char *s, *why;
  size_t n;
  if(lua_type(L, 1) != LUA_TSTRING) {
    lua_pushboolean(L, 0);
    lua_pushfstring(L, "expected an ISO 8601 date-time string, got %s",
                    luaL_typename(L, 1));
    return 2;
  }
  s = lua_tolstring(L, 1, &n);
  why = lf_time_check(s, n);
  if(!why) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lf_buf_init(&d, 0);
  if(lf_json_snippet(&d, s, n, LF_SNIPPET_MAX) || d.len >= sizeof(quoted))
    strcpy(quoted, "(a string)");
  else
    memcpy(quoted, d.data, d.len + 1);
  lf_buf_free(&d);
  lua_pushboolean(L, 0);
  lua_pushfstring(L, "expected an ISO 8601 date-time ending in Z or "
                  "\xc2\xb1HH:MM, got %s (%s)", quoted, why);
  return 2;
}

void lf_encode_open(lua_State *L)
{
  static const luaL_Reg funcs[] = {
    { "validate", l_validate },
    { "encode_batch", l_encode_batch },
    { "encode", l_encode },
    { "validate_body", l_validate_body },
    { "uuid", l_uuid },
    { "hex_id", l_hex_id },
    { "now", l_now },
    { "iso_time", l_iso_time },
    { "check_time", l_check_time },
    { NULL, NULL }
  };
  struct scratch *s = lua_newuserdata(L, sizeof(*s));  /* mod scratch */
  lf_buf_init(&s->out, 0);
  lf_problems_init(&s->probs);
  lua_createtable(L, 0, 1);                         /* mod scratch mt */
  lua_pushcfunction(L, scratch_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);                          /* mod scratch */
  luaL_setfuncs(L, funcs, 1);                       /* mod */
}
