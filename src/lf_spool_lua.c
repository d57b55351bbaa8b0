/*
** lf_spool_lua.c: the Lua face of the spool (lf_spool.h) and a raw
** uploader for replaying what it holds, in langfuse.core:
**
**   core.spool_open(dir [, opts])  -> spool | nil, message
**     opts: fsync ("batch" | "always" | "never"), segment_bytes,
**     max_bytes, full ("refuse" | "drop_oldest"), max_record_bytes,
**     logger (function(level, message), level "error" | "warn" |
**     "info" | "debug")
**   spool:status()        -> { dir, segments, records_pending,
**                              bytes_pending, dead_letters,
**                              quarantined, ...counters }
**   spool:claim()         -> records: call it (or use it in a generic
**                            for) for the next { route, id, data, ref }
**                            until nil; records:error() says why it
**                            stopped early, if it did
**   spool:ack(ref)        -> true | nil, message
**   spool:append(route, id, data) -> ref | nil, message
**   spool:sync()          -> true | nil, message
**   spool:dead_letter(route, id, data, reason) -> true | nil, message
**   spool:release()  spool:rotate()  -> true | nil, message
**   spool:close()
**
**   core.raw_client(cfg)  -> uploader of events already encoded
**   raw:upload(records [, route]) -> report, as client:upload gives it
**     records: array of { id = event or span id, data = its JSON }
**
** route is "ingestion" (the default for raw:upload) or "otlp": an OTLP
** upload frames the spans with the resource that cfg's service_name,
** environment and release give, as the tracer does.  ref is an opaque
** string naming one record, good in this process and this spool only.
**
** The spool's log hook may run with the spool's mutex held, so it only
** queues the lines; they reach the Lua logger when the method returns.
** Claims keep their spool alive; closing the spool ends its claims.
*/
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lf_compat.h"
#include "lf_cfg.h"
#include "lf_core.h"
#include "lf_http.h"
#include "lf_span.h"
#include "lf_spool.h"
#include "lf_upload.h"

#define SPOOL_MT "langfuse.core.spool"
#define CLAIM_MT "langfuse.core.spool_claim"
#define RAW_MT "langfuse.core.raw_client"
#define RAW_WORK_MT "langfuse.core.raw_work"

/* Log lines queued during one call; past it they are counted and one
   line says how many were dropped, so a damaged spool cannot flood
   memory. */
#define LOG_QUEUE_MAX 64
/* Longest log line kept. */
#define LOG_LINE_MAX 512
/* Room for a ref string: two 64-bit numbers in decimal and a colon. */
#define REF_LEN 48

struct log_line {
  int level;
  char text[LOG_LINE_MAX];
};

struct spool_ud {
  struct lf_spool *sp;            /* owned; NULL once closed */
  char *dir;                      /* owned copy, for status() */
  struct claim_ud *claims;        /* live claims, to end them on close */
  int has_logger;
  struct log_line *lines;         /* owned, LOG_QUEUE_MAX slots */
  int nlines;
  unsigned dropped;
};

struct claim_ud {
  struct spool_ud *owner;         /* NULL once the spool is closed */
  struct claim_ud *next;
  struct lf_spool_claim *claim;   /* the segment being read, or NULL */
  int done;                       /* nothing more to claim */
  char error[LF_SPOOL_ERRMAX];    /* why it stopped early, or "" */
};

struct raw_client {
  struct lf_http *http;           /* owned; NULL once closed */
  struct lf_buf ingestion_url;    /* owned */
  struct lf_buf otlp_url;         /* owned */
  struct lf_buf otlp_prefix;      /* owned */
  int gzip;
  struct lf_upload_opts upload;
};

/* Items and report of one raw upload, in a userdata so that a Lua error
   half-way frees them through __gc. */
struct raw_work {
  struct lf_item *items;          /* owned */
  size_t n;
  struct lf_report report;
  int live;
};


/* {================================================================
** Small helpers
** ================================================================= */

/* Makes the value on top the uservalue of the userdata at idx, and pops
   it.  LuaJIT keeps it in a one-slot environment table. */
static void set_uservalue(lua_State *L, int idx)
{
  idx = lua_absindex(L, idx);
#if LUA_VERSION_NUM >= 504
  lua_setiuservalue(L, idx, 1);
#elif LUA_VERSION_NUM >= 502
  lua_setuservalue(L, idx);
#else
  lua_createtable(L, 1, 0);                     /* v env */
  lua_insert(L, -2);                            /* env v */
  lua_rawseti(L, -2, 1);                        /* env */
  lua_setfenv(L, idx);
#endif
}

static void new_metatable(lua_State *L, const char *name, lua_CFunction gc,
                          const luaL_Reg *methods)
{
  luaL_newmetatable(L, name);                   /* mt */
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
  if(methods) {
    lua_newtable(L);                            /* mt methods */
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
}

/* Pushes nil and message; returns 2 for the caller to return. */
static int fail(lua_State *L, const char *message)
{
  lua_pushnil(L);
  lua_pushstring(L, message[0] ? message : "spool operation failed");
  return 2;
}

static int route_of(lua_State *L, int arg)
{
  static const char *const names[] = { "ingestion", "otlp", NULL };
  int r = luaL_checkoption(L, arg, NULL, names);
  return r == 0 ? LF_SPOOL_ROUTE_INGESTION : LF_SPOOL_ROUTE_OTLP;
}

static void push_route(lua_State *L, int route)
{
  if(route == LF_SPOOL_ROUTE_INGESTION)
    lua_pushliteral(L, "ingestion");
  else if(route == LF_SPOOL_ROUTE_OTLP)
    lua_pushliteral(L, "otlp");
  else
    lua_pushfstring(L, "route %d", route);
}

static void push_ref(lua_State *L, struct lf_spool_ref ref)
{
  char s[REF_LEN];
  snprintf(s, sizeof(s), "%" PRIu64 ":%" PRIu64, ref.seg, ref.off);
  lua_pushstring(L, s);
}

/* Reads the ref string at arg; raises for anything else. */
static struct lf_spool_ref check_ref(lua_State *L, int arg)
{
  struct lf_spool_ref ref;
  size_t n;
  const char *s = luaL_checklstring(L, arg, &n);
  char tail;
  if(n >= REF_LEN || sscanf(s, "%" SCNu64 ":%" SCNu64 "%c", &ref.seg,
                            &ref.off, &tail) != 2 || !ref.seg)
    luaL_argerror(L, arg, "not a spool record ref");
  return ref;
}

/* }================================================================ */


/* {================================================================
** Spool
** ================================================================= */

static void log_hook(void *ud, int level, const char *msg)
{
  struct spool_ud *s = ud;
  struct log_line *l;
  if(!s->has_logger)
    return;
  if(s->nlines == LOG_QUEUE_MAX) {
    s->dropped++;
    return;
  }
  l = &s->lines[s->nlines++];
  l->level = level;
  snprintf(l->text, sizeof(l->text), "%s", msg);
}

/* Calls the logger kept as the uservalue of the spool userdata at idx
   with level and "[langfuse] " .. text.  May raise if the
   logger does. */
static void call_logger(lua_State *L, int idx, int level, const char *text)
{
  static const char *const levels[] = { "error", "warn", "info",
                                         "debug" };
#if LUA_VERSION_NUM >= 504
  lua_getiuservalue(L, idx, 1);                 /* logger */
#else
  lua_getfenv(L, idx);                          /* env */
  lua_rawgeti(L, -1, 1);                        /* env logger */
  lua_remove(L, -2);                            /* logger */
#endif
  lua_pushstring(L, levels[level >= 0 && level <= 3 ? level : 1]);
  lua_pushfstring(L, "[langfuse] %s", text);
  lua_call(L, 2, 0);
}

/* Hands the queued lines to the logger (the spool userdata is at idx),
   then one line for those dropped, if any. */
static void flush_log(lua_State *L, int idx, struct spool_ud *s)
{
  int i, n = s->nlines;
  unsigned dropped = s->dropped;
  char text[LOG_LINE_MAX];
  if(!n)
    return;
  s->nlines = 0;
  s->dropped = 0;
  idx = lua_absindex(L, idx);
  for(i = 0; i < n; i++) {
    memcpy(text, s->lines[i].text, sizeof(text));
    call_logger(L, idx, s->lines[i].level, text);
  }
  if(dropped) {
    snprintf(text, sizeof(text), "%u more log lines dropped", dropped);
    call_logger(L, idx, LF_SPOOL_LOG_WARN, text);
  }
}

/* Ends every claim of s (the spool frees them itself on close). */
static void orphan_claims(struct spool_ud *s)
{
  struct claim_ud *c = s->claims;
  while(c) {
    struct claim_ud *next = c->next;
    c->owner = NULL;
    c->claim = NULL;
    c->done = 1;
    c->next = NULL;
    c = next;
  }
  s->claims = NULL;
}

/* Closes the spool (its unacked records stay on disk) and frees the
   line queue; safe to call twice. */
static int spool_gc(lua_State *L)
{
  struct spool_ud *s = luaL_checkudata(L, 1, SPOOL_MT);
  if(s->sp) {
    orphan_claims(s);
    lf_spool_close(s->sp);
    s->sp = NULL;
  }
  free(s->lines);
  s->lines = NULL;
  free(s->dir);
  s->dir = NULL;
  s->has_logger = 0;
  return 0;
}

static struct spool_ud *check_spool(lua_State *L)
{
  struct spool_ud *s = luaL_checkudata(L, 1, SPOOL_MT);
  if(!s->sp)
    luaL_error(L, "langfuse spool is closed");
  return s;
}

static uint64_t opt_count(lua_State *L, const char *name, uint64_t dflt)
{
  double x;
  if(lua_isnil(L, -1))
    return dflt;
  x = lua_tonumber(L, -1);
  if(lua_type(L, -1) != LUA_TNUMBER || !(x >= 1) || x > 9.0e15 ||
     x != (double)(uint64_t)x)
    luaL_argerror(L, 2, lua_pushfstring(L, "'%s' must be a positive "
                                        "integer", name));
  return (uint64_t)x;
}

static int opt_enum(lua_State *L, const char *name, int (*parse)(const
                    char *), int dflt)
{
  int v;
  if(lua_isnil(L, -1))
    return dflt;
  v = lua_type(L, -1) == LUA_TSTRING ? parse(lua_tostring(L, -1)) : -1;
  if(v < 0)
    luaL_argerror(L, 2, lua_pushfstring(L, "bad value for '%s'", name));
  return v;
}

/* Reads the opts table at 2 into o; leaves the logger (or nil) on top
   of the stack.  Raises for a wrong type or an unknown name. */
static void read_spool_opts(lua_State *L, struct lf_spool_opts *o)
{
  static const char *const known[] = {
    "fsync", "segment_bytes", "max_bytes", "full", "max_record_bytes",
    "logger", NULL
  };
  int i;
  lf_spool_opts_init(o);
  if(lua_isnoneornil(L, 2)) {
    lua_pushnil(L);                             /* logger */
    return;
  }
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_pushnil(L);                               /* nil */
  while(lua_next(L, 2)) {                       /* key value */
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2)
                    : NULL;
    for(i = 0; k && known[i] && strcmp(k, known[i]); i++)
      ;
    if(!k || !known[i])
      luaL_argerror(L, 2, lua_pushfstring(L, "unknown option '%s'",
                                          k ? k : "?"));
    lua_pop(L, 1);                              /* key */
  }
  lua_getfield(L, 2, "fsync");                  /* v */
  o->fsync = opt_enum(L, "fsync", lf_spool_fsync_parse, o->fsync);
  lua_getfield(L, 2, "full");                   /* v v */
  o->full_policy = opt_enum(L, "full", lf_spool_full_parse,
                            o->full_policy);
  lua_getfield(L, 2, "segment_bytes");          /* v v v */
  o->segment_bytes = (size_t)opt_count(L, "segment_bytes",
                                       o->segment_bytes);
  lua_getfield(L, 2, "max_bytes");              /* v v v v */
  o->max_bytes = opt_count(L, "max_bytes", o->max_bytes);
  lua_getfield(L, 2, "max_record_bytes");       /* v v v v v */
  o->max_record_bytes = (size_t)opt_count(L, "max_record_bytes",
                                          o->max_record_bytes);
  lua_pop(L, 5);
  lua_getfield(L, 2, "logger");                 /* logger */
  if(!lua_isnil(L, -1) && !lua_isfunction(L, -1))
    luaL_argerror(L, 2, "'logger' must be a function");
}

/* core.spool_open(dir [, opts]) -> spool | nil, message.  The spool
   userdata owns the lf_spool and closes it on close() or __gc. */
static int spool_open(lua_State *L)
{
  const char *dir = luaL_checkstring(L, 1);
  struct lf_spool_opts o;
  struct spool_ud *s;
  char err[LF_SPOOL_ERRMAX];
  read_spool_opts(L, &o);                       /* logger */
  s = lua_newuserdata(L, sizeof(*s));           /* logger spool */
  memset(s, 0, sizeof(*s));
  luaL_setmetatable(L, SPOOL_MT);
  lua_insert(L, -2);                            /* spool logger */
  s->has_logger = !lua_isnil(L, -1);
  set_uservalue(L, -2);                         /* spool */
  s->lines = malloc(LOG_QUEUE_MAX * sizeof(*s->lines));
  s->dir = lf_strndup(dir, strlen(dir));
  if(!s->lines || !s->dir)
    return luaL_error(L, "langfuse: out of memory");
  o.log = log_hook;
  o.log_ud = s;
  err[0] = '\0';
  s->sp = lf_spool_open(dir, &o, err);
  if(!s->sp) {
    flush_log(L, -1, s);
    return fail(L, err);
  }
  flush_log(L, -1, s);
  return 1;
}

/* Counts the lines of dir/dead-letter.jsonl, or 0 when there is none. */
static uint64_t count_dead_letters(const char *dir)
{
  char path[4096], buf[8192];
  uint64_t n = 0;
  size_t got, i;
  FILE *f;
  snprintf(path, sizeof(path), "%s/dead-letter.jsonl", dir);
  f = fopen(path, "rb");
  if(!f)
    return 0;
  while((got = fread(buf, 1, sizeof(buf), f)) > 0) {
    for(i = 0; i < got; i++)
      n += buf[i] == '\n';
  }
  fclose(f);
  return n;
}

/* Counts the entries of dir/quarantine, or 0 when there is none. */
static uint64_t count_quarantined(const char *dir)
{
  char path[4096];
  uint64_t n = 0;
  struct dirent *e;
  DIR *d;
  snprintf(path, sizeof(path), "%s/quarantine", dir);
  d = opendir(path);
  if(!d)
    return 0;
  while((e = readdir(d))) {
    if(strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
      n++;
  }
  closedir(d);
  return n;
}

/* Sets field k of the table on top to the count v, an integer where
   the Lua has them. */
static void set_number(lua_State *L, const char *k, double v)
{
#if LF_HAS_INTEGERS
  if(v >= -9.0e15 && v <= 9.0e15 && v == (double)(lua_Integer)v)
    lua_pushinteger(L, (lua_Integer)v);
  else
    lua_pushnumber(L, v);
#else
  lua_pushnumber(L, v);
#endif
  lua_setfield(L, -2, k);
}

/* spool:status() -> table (see the top of the file).  Walks every
   record header in the directory: meant for tools, not hot paths. */
static int spool_status(lua_State *L)
{
  struct spool_ud *s = check_spool(L);
  struct lf_spool_stats st;
  if(lf_spool_stats(s->sp, &st, 1) != LF_OK) {
    flush_log(L, 1, s);
    return fail(L, "cannot read the spool directory");
  }
  flush_log(L, 1, s);
  lua_createtable(L, 0, 20);                    /* st */
  lua_pushstring(L, s->dir);
  lua_setfield(L, -2, "dir");
  set_number(L, "segments", (double)st.segments);
  set_number(L, "records_pending", (double)st.records_pending);
  set_number(L, "bytes_pending", (double)st.bytes_pending);
  set_number(L, "records_held", (double)st.records_held);
  set_number(L, "dead_letters", (double)count_dead_letters(s->dir));
  set_number(L, "quarantined", (double)count_quarantined(s->dir));
  set_number(L, "appended", (double)st.appended);
  set_number(L, "appended_bytes", (double)st.appended_bytes);
  set_number(L, "replayed", (double)st.replayed);
  set_number(L, "acked", (double)st.acked);
  set_number(L, "corrupt", (double)st.corrupt);
  set_number(L, "dropped", (double)st.dropped);
  set_number(L, "refused", (double)st.refused);
  set_number(L, "write_errors", (double)st.write_errors);
  set_number(L, "dead_lettered", (double)st.dead_lettered);
  return 1;
}

static int spool_ack(lua_State *L)
{
  struct spool_ud *s = check_spool(L);
  struct lf_spool_ref ref = check_ref(L, 2);
  char err[LF_SPOOL_ERRMAX] = "";
  int result = lf_spool_ack(s->sp, ref, err);
  flush_log(L, 1, s);
  if(result != LF_OK)
    return fail(L, err);
  lua_pushboolean(L, 1);
  return 1;
}

static int spool_append(lua_State *L)
{
  struct spool_ud *s = check_spool(L);
  int route = route_of(L, 2);
  const char *id = luaL_checkstring(L, 3);
  size_t len;
  const char *data = luaL_checklstring(L, 4, &len);
  struct lf_spool_ref ref;
  char err[LF_SPOOL_ERRMAX] = "";
  int result = lf_spool_append(s->sp, route, id, data, len, &ref, err);
  flush_log(L, 1, s);
  if(result != LF_OK)
    return fail(L, err);
  push_ref(L, ref);
  return 1;
}

static int spool_dead_letter(lua_State *L)
{
  struct spool_ud *s = check_spool(L);
  int route = route_of(L, 2);
  const char *id = luaL_checkstring(L, 3);
  size_t len;
  const char *data = luaL_checklstring(L, 4, &len);
  const char *reason = luaL_checkstring(L, 5);
  char err[LF_SPOOL_ERRMAX] = "";
  int result = lf_spool_dead_letter(s->sp, route, id, data, len, reason,
                                    err);
  flush_log(L, 1, s);
  if(result != LF_OK)
    return fail(L, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* sync, release and rotate: same shape, one lf_spool call each. */
static int spool_simple(lua_State *L, int (*f)(struct lf_spool *, char *))
{
  struct spool_ud *s = check_spool(L);
  char err[LF_SPOOL_ERRMAX] = "";
  int result = f(s->sp, err);
  flush_log(L, 1, s);
  if(result != LF_OK)
    return fail(L, err);
  lua_pushboolean(L, 1);
  return 1;
}

static int spool_sync(lua_State *L)
{
  return spool_simple(L, lf_spool_sync);
}

static int spool_release(lua_State *L)
{
  return spool_simple(L, lf_spool_release);
}

static int spool_rotate(lua_State *L)
{
  return spool_simple(L, lf_spool_rotate);
}

static int spool_close(lua_State *L)
{
  struct spool_ud *s = luaL_checkudata(L, 1, SPOOL_MT);
  if(s->sp) {
    orphan_claims(s);
    lf_spool_close(s->sp);
    s->sp = NULL;
    flush_log(L, 1, s);
  }
  return 0;
}

/* }================================================================ */


/* {================================================================
** Claims
** ================================================================= */

static void unlink_claim(struct claim_ud *c)
{
  struct claim_ud **p;
  if(!c->owner)
    return;
  for(p = &c->owner->claims; *p; p = &(*p)->next) {
    if(*p == c) {
      *p = c->next;
      break;
    }
  }
  c->owner = NULL;
  c->next = NULL;
}

/* Gives the current segment back (handed-out records stay owned until
   acked) and stops; safe to call twice. */
static void claim_finish(struct claim_ud *c)
{
  if(c->claim && c->owner && c->owner->sp)
    lf_spool_claim_done(c->claim);
  c->claim = NULL;
  c->done = 1;
  unlink_claim(c);
}

static int claim_gc(lua_State *L)
{
  claim_finish(luaL_checkudata(L, 1, CLAIM_MT));
  return 0;
}

/* spool:claim() -> records object; it keeps the spool alive. */
static int spool_claim(lua_State *L)
{
  struct spool_ud *s = check_spool(L);
  struct claim_ud *c = lua_newuserdata(L, sizeof(*c)); /* spool claim */
  memset(c, 0, sizeof(*c));
  luaL_setmetatable(L, CLAIM_MT);
  lua_pushvalue(L, 1);                          /* spool claim spool */
  set_uservalue(L, -2);                         /* spool claim */
  c->owner = s;
  c->next = s->claims;
  s->claims = c;
  return 1;
}

/* Pushes the spool userdata a claim at idx keeps as its uservalue. */
static void push_claim_spool(lua_State *L, int idx)
{
#if LUA_VERSION_NUM >= 504
  lua_getiuservalue(L, idx, 1);                 /* spool */
#else
  lua_getfenv(L, idx);                          /* env */
  lua_rawgeti(L, -1, 1);                        /* env spool */
  lua_remove(L, -2);                            /* spool */
#endif
}

/* Reads the next record into rec, claiming the next segment when one
   runs out.  1 with a record, 0 at the end or on an error (c->error). */
static int claim_step(struct claim_ud *c, struct lf_spool_record *rec)
{
  struct lf_spool *sp;
  while(!c->done) {
    sp = c->owner ? c->owner->sp : NULL;
    if(!sp) {
      c->done = 1;
      break;
    }
    if(!c->claim) {
      if(lf_spool_claim(sp, &c->claim, c->error) != LF_OK ||
         !c->claim) {
        c->claim = NULL;
        c->done = 1;
        break;
      }
    }
    if(lf_spool_next(c->claim, rec, c->error) != LF_OK) {
      lf_spool_claim_done(c->claim);
      c->claim = NULL;
      c->done = 1;
      break;
    }
    if(rec->id)
      return 1;
    lf_spool_claim_done(c->claim);
    c->claim = NULL;
  }
  return 0;
}

/* records() -> { route, id, data, ref } or nil at the end.  Also the
   __call of the records object, so that "for rec in records do" works
   (the extra arguments of the generic for are ignored). */
static int claim_next(lua_State *L)
{
  struct claim_ud *c = luaL_checkudata(L, 1, CLAIM_MT);
  struct lf_spool_record rec;
  int got = claim_step(c, &rec);
  if(c->owner) {
    push_claim_spool(L, 1);                     /* spool */
    flush_log(L, -1, c->owner);
    lua_pop(L, 1);
  }
  if(!got) {
    claim_finish(c);
    lua_pushnil(L);
    return 1;
  }
  lua_createtable(L, 0, 4);                     /* rec */
  push_route(L, rec.route);
  lua_setfield(L, -2, "route");
  lua_pushlstring(L, rec.id, rec.id_len);
  lua_setfield(L, -2, "id");
  lua_pushlstring(L, rec.data, rec.len);
  lua_setfield(L, -2, "data");
  push_ref(L, rec.ref);
  lua_setfield(L, -2, "ref");
  return 1;
}

static int claim_error(lua_State *L)
{
  struct claim_ud *c = luaL_checkudata(L, 1, CLAIM_MT);
  if(!c->error[0])
    return 0;
  lua_pushstring(L, c->error);
  return 1;
}

static int claim_close(lua_State *L)
{
  claim_finish(luaL_checkudata(L, 1, CLAIM_MT));
  return 0;
}

/* }================================================================ */


/* {================================================================
** Raw uploader
** ================================================================= */

static void raw_release(struct raw_client *r)
{
  lf_http_free(r->http);
  r->http = NULL;
  lf_buf_free(&r->ingestion_url);
  lf_buf_free(&r->otlp_url);
  lf_buf_free(&r->otlp_prefix);
}

static int raw_gc(lua_State *L)
{
  raw_release(luaL_checkudata(L, 1, RAW_MT));
  return 0;
}

/* core.raw_client(cfg) -> uploader.  cfg has the fields of the client's
   resolved configuration; public_key, secret_key and base_url are
   required (a caller mistake raises), the rest have defaults. */
static int raw_new(lua_State *L)
{
  struct lf_http_config hc;
  struct raw_client *r;
  const char *base;
  luaL_checktype(L, 1, LUA_TTABLE);
  base = lf_cfg_http(L, "raw_client", &hc);
  r = lua_newuserdata(L, sizeof(*r));           /* raw */
  memset(r, 0, sizeof(*r));
  lf_buf_init(&r->ingestion_url, 0);
  lf_buf_init(&r->otlp_url, 0);
  lf_buf_init(&r->otlp_prefix, 0);
  luaL_setmetatable(L, RAW_MT);
  lf_upload_opts_init(&r->upload);
  lf_cfg_upload(L, &r->upload);
  r->gzip = lf_cfg_bool(L, "gzip", 1);
  (void)lf_cfg_url(L, "raw_client", &r->ingestion_url, base,
                   LF_INGESTION_PATH);
  (void)lf_cfg_url(L, "raw_client", &r->otlp_url, base, LF_OTLP_PATH);
  (void)lf_cfg_otlp_prefix(L, "raw_client", &r->otlp_prefix,
                           hc.public_key);
  r->http = lf_http_new(&hc);
  if(!r->http) {
    raw_release(r);
    return luaL_error(L, "langfuse: out of memory");
  }
  return 1;
}

static int raw_work_gc(lua_State *L)
{
  struct raw_work *w = luaL_checkudata(L, 1, RAW_WORK_MT);
  if(w->live) {
    lf_items_clear(w->items, w->n);
    free(w->items);
    lf_report_free(&w->report);
    w->live = 0;
  }
  return 0;
}

static void set_string(lua_State *L, const char *k, const char *v)
{
  if(v) {
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
  }
}

/* Pushes the report: accepted, requests, attempts, status, body,
   message and one failed entry per record not delivered. */
static void push_raw_report(lua_State *L, const struct raw_work *w)
{
  const struct lf_report *rep = &w->report;
  size_t i;
  int k = 0;
  lua_createtable(L, 0, 8);                     /* report */
  set_number(L, "accepted", (double)rep->delivered);
  set_number(L, "requests", rep->requests);
  set_number(L, "attempts", rep->attempts);
  if(rep->last_status)
    set_number(L, "status", rep->last_status);
  set_string(L, "body", rep->last_body);
  set_string(L, "message", rep->message);
  lua_newtable(L);                              /* report failed */
  for(i = 0; i < w->n; i++) {
    const struct lf_item *it = &w->items[i];
    if(it->outcome == LF_DELIVERED)
      continue;
    lua_createtable(L, 0, 7);                   /* report failed f */
    set_number(L, "index", (double)it->index);
    set_string(L, "id", it->id);
    set_string(L, "kind", it->outcome == LF_PENDING ? "network"
               : lf_kind_name(it->kind));
    if(it->status)
      set_number(L, "status", it->status);
    set_string(L, "message", it->message ? it->message : "not delivered");
    lua_pushboolean(L, it->retryable || it->outcome == LF_PENDING);
    lua_setfield(L, -2, "retryable");
    set_number(L, "attempts", it->attempts);
    lua_rawseti(L, -2, ++k);                    /* report failed */
  }
  lua_setfield(L, -2, "failed");                /* report */
}

/* raw:upload(records [, route]) -> report.  Blocks for the whole
   upload, retries and backoff included.  The record strings stay on
   the Lua stack (in the records table) while libcurl reads them. */
static int raw_upload(lua_State *L)
{
  static const char *const routes[] = { "ingestion", "otlp", NULL };
  struct raw_client *r = luaL_checkudata(L, 1, RAW_MT);
  size_t n, i;
  struct raw_work *w;
  int result, otlp;
  if(!r->http)
    return luaL_error(L, "langfuse raw client is closed");
  luaL_checktype(L, 2, LUA_TTABLE);
  otlp = luaL_checkoption(L, 3, "ingestion", routes) == 1;
  n = lua_rawlen(L, 2);
  w = lua_newuserdata(L, sizeof(*w));           /* work */
  memset(w, 0, sizeof(*w));
  lf_report_init(&w->report);
  luaL_setmetatable(L, RAW_WORK_MT);
  w->items = calloc(n ? n : 1, sizeof(*w->items));
  if(!w->items)
    return luaL_error(L, "langfuse: out of memory");
  w->live = 1;
  for(i = 0; i < n; i++) {
    struct lf_item *it = &w->items[i];
    lua_rawgeti(L, 2, (int)i + 1);              /* work rec */
    if(!lua_istable(L, -1))
      return luaL_argerror(L, 2, "records must be tables");
    lua_getfield(L, -1, "id");                  /* work rec id */
    lua_getfield(L, -2, "data");                /* work rec id data */
    if(lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      return luaL_argerror(L, 2, "each record needs string id and data");
    it->id = lua_tostring(L, -2);
    it->json = lua_tolstring(L, -1, &it->len);
    it->index = i + 1;
    w->n = i + 1;
    lua_pop(L, 3);                              /* work */
  }
  if(n) {
    struct lf_route route;
    memset(&route, 0, sizeof(route));
    if(otlp) {
      route.kind = LF_ROUTE_OTLP;
      route.url = r->otlp_url.data;
      route.prefix = r->otlp_prefix.data;
      route.suffix = LF_SPAN_SUFFIX;
      route.gzip = r->gzip;
      route.headers = lf_otlp_headers;
    } else {
      route.kind = LF_ROUTE_INGESTION;
      route.url = r->ingestion_url.data;
      route.prefix = LF_BATCH_PREFIX;
      route.suffix = LF_BATCH_SUFFIX;
    }
    result = lf_upload(r->http, &route, w->items, n, &r->upload,
                       &w->report);
    if(result == LF_ENOMEM)
      return luaL_error(L, "langfuse: out of memory while uploading");
  }
  push_raw_report(L, w);                        /* work report */
  return 1;
}

static int raw_close(lua_State *L)
{
  raw_release(luaL_checkudata(L, 1, RAW_MT));
  return 0;
}

/* }================================================================ */


static const luaL_Reg spool_methods[] = {
  {"status", spool_status},
  {"claim", spool_claim},
  {"ack", spool_ack},
  {"append", spool_append},
  {"sync", spool_sync},
  {"dead_letter", spool_dead_letter},
  {"release", spool_release},
  {"rotate", spool_rotate},
  {"close", spool_close},
  {NULL, NULL}
};

static const luaL_Reg claim_methods[] = {
  {"next", claim_next},
  {"error", claim_error},
  {"close", claim_close},
  {NULL, NULL}
};

static const luaL_Reg raw_methods[] = {
  {"upload", raw_upload},
  {"close", raw_close},
  {NULL, NULL}
};

void lf_spool_lua_open(lua_State *L)
{
  new_metatable(L, SPOOL_MT, spool_gc, spool_methods);
  lua_pop(L, 1);
  new_metatable(L, CLAIM_MT, claim_gc, claim_methods);
  lua_pushcfunction(L, claim_next);
  lua_setfield(L, -2, "__call");
  lua_pop(L, 1);
  new_metatable(L, RAW_MT, raw_gc, raw_methods);
  lua_pop(L, 1);
  new_metatable(L, RAW_WORK_MT, raw_work_gc, NULL);
  lua_pop(L, 1);
  lua_pushcfunction(L, spool_open);
  lua_setfield(L, -2, "spool_open");
  lua_pushcfunction(L, raw_new);
  lua_setfield(L, -2, "raw_client");
}
