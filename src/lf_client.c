/*
** lf_client.c: the client object of langfuse.core and its synchronous
** batch upload.
**
** core.new_client(cfg) takes a table the Lua layer has already resolved
** (options merged with the environment, every field present and of the
** right type) and returns a userdata that owns one lf_http handle.
** client:upload(events) validates and encodes the events in C, uploads
** the valid ones on the caller's thread and returns a plain report table
** that the Lua layer turns into a result or an error object.  With
** spool_dir the spool is the upload's write-ahead log (lf_durable.h):
** the report then counts what it keeps (spooled) and what it could not
** take (spool_failed, spool_error), and each failure entry says whether
** its event stays in the spool.
*/
#include <stdlib.h>
#include <string.h>

#include "lf_compat.h"
#include "lf_cfg.h"
#include "lf_core.h"
#include "lf_durable.h"
#include "lf_encode.h"
#include "lf_http.h"
#include "lf_sender.h"
#include "lf_upload.h"

#define CLIENT_MT "langfuse.core.client"
#define WORK_MT "langfuse.core.work"

struct lf_client {
  struct lf_http *http;         /* owned; NULL once closed */
  struct lf_buf ingestion_url;  /* owned */
  struct lf_upload_opts upload;
  struct lf_encode_opts encode;
  struct lf_durable *durable;   /* owned; NULL without spool_dir */
};

/* Scratch state of one upload, kept in a userdata so that a memory
   error raised by the Lua API frees it through __gc. */
struct lf_work {
  struct lf_batch batch;
  struct lf_problems problems;
  struct lf_report report;
  unsigned char *kept;          /* per item: in the spool; or NULL */
  size_t spool_failed;
  char spool_err[LF_SPOOL_ERRMAX];
  int live;
};


static struct lf_client *check_client(lua_State *L)
{
  struct lf_client *c = luaL_checkudata(L, 1, CLIENT_MT);
  if(!c->http)
    luaL_error(L, "langfuse client is closed");
  return c;
}

/* Frees what the client owns; safe to call twice. */
static void client_release(struct lf_client *c)
{
  lf_http_free(c->http);
  c->http = NULL;
  lf_buf_free(&c->ingestion_url);
  lf_durable_free(c->durable);
  c->durable = NULL;
}

static int client_close(lua_State *L)
{
  struct lf_client *c = luaL_checkudata(L, 1, CLIENT_MT);
  client_release(c);
  return 0;
}

/* core.new_client(cfg) -> client userdata.  The Lua layer checked the
   table; a missing key here is a bug in that layer, so it raises. */
static int new_client(lua_State *L)
{
  struct lf_client *c;
  struct lf_http_config hc;
  const char *base;
  luaL_checktype(L, 1, LUA_TTABLE);
  base = lf_cfg_http(L, "new_client", &hc);
  c = lua_newuserdata(L, sizeof(*c));           /* client */
  memset(c, 0, sizeof(*c));
  luaL_setmetatable(L, CLIENT_MT);
  lf_upload_opts_init(&c->upload);
  lf_cfg_upload(L, &c->upload);
  lf_encode_opts_init(&c->encode);
  c->encode.max_event_bytes = (size_t)lf_cfg_number(L,
      "max_event_bytes", (double)c->encode.max_event_bytes);
  c->encode.max_depth = (size_t)lf_cfg_number(L, "max_depth",
                                              (double)c->encode.max_depth);
  c->encode.strict = lf_cfg_bool(L, "strict", c->encode.strict);

  lf_buf_init(&c->ingestion_url, 0);
  (void)lf_cfg_url(L, "new_client", &c->ingestion_url, base,
                   LF_INGESTION_PATH);
  c->http = lf_http_new(&hc);
  if(c->http) {
    struct lf_spool_opts so;
    const char *dir = lf_durable_lua_config(L, 1, &so);
    if(dir && !(c->durable = lf_durable_new(dir, &so))) {
      lf_http_free(c->http);
      c->http = NULL;
    }
  }
  if(!c->http) {
    client_release(c);
    return luaL_error(L, "new_client: out of memory");
  }
  return 1;
}


/* {================================================================
** Upload
** ================================================================= */

static int work_gc(lua_State *L)
{
  struct lf_work *w = luaL_checkudata(L, 1, WORK_MT);
  if(w->live) {
    lf_batch_free(&w->batch);
    lf_problems_free(&w->problems);
    lf_items_clear(w->batch.items, w->batch.n);
    lf_report_free(&w->report);
    free(w->kept);
    w->kept = NULL;
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

/* Counts are integers on the Lua side (2, not 2.0, on Lua 5.4). */
static void set_integer(lua_State *L, const char *k, double v)
{
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

static void set_number(lua_State *L, const char *k, double v)
{
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}

/* Pushes the failure entry of one item that was not delivered; spooled
   says it stays in the spool. */
static void push_item_failure(lua_State *L, const struct lf_item *it,
                              int spooled)
{
  lua_createtable(L, 0, 8);                     /* entry */
  set_integer(L, "index", (double)it->index);
  set_string(L, "id", it->id);
  set_string(L, "kind", lf_kind_name(it->kind));
  if(it->status)
    set_integer(L, "status", it->status);
  set_string(L, "message", it->message ? it->message
             : (it->outcome == LF_PENDING ? "not sent: upload stopped"
                : "not delivered"));
  lua_pushboolean(L, it->retryable || it->outcome == LF_PENDING);
  lua_setfield(L, -2, "retryable");
  set_integer(L, "attempts", it->attempts);
  if(spooled) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "spooled");
  }
}

/* Pushes the failure entry of an event refused by validation. */
static void push_problem(lua_State *L, const struct lf_problem *p)
{
  lua_createtable(L, 0, 7);                     /* entry */
  set_integer(L, "index", (double)p->index);
  set_string(L, "id", p->id);
  set_string(L, "kind", "validation");
  set_string(L, "path", p->path);
  set_string(L, "message", p->message);
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "retryable");
  set_integer(L, "attempts", 0);
}

/* Pushes the report table: counts, the last answer, and one entry per
   undelivered event (validation problems first grouped per event). */
static void push_report(lua_State *L, struct lf_work *w)
{
  const struct lf_report *r = &w->report;
  size_t i, k = 0, kept = 0;
  lua_createtable(L, 0, 10);                    /* report */
  set_integer(L, "accepted", (double)r->delivered);
  set_integer(L, "requests", r->requests);
  set_integer(L, "attempts", r->attempts);
  set_number(L, "waited", r->waited);
  if(r->last_status)
    set_integer(L, "status", r->last_status);
  set_string(L, "body", r->last_body);
  set_string(L, "message", r->message);
  lua_createtable(L, (int)(r->failed + r->pending +
                           w->problems.n), 0);  /* report failed */
  for(i = 0; i < w->problems.n; i++) {
    push_problem(L, &w->problems.v[i]);
    lua_rawseti(L, -2, (int)++k);
  }
  for(i = 0; i < w->batch.n; i++) {
    const struct lf_item *it = &w->batch.items[i];
    if(it->outcome == LF_DELIVERED)
      continue;
    push_item_failure(L, it, w->kept && w->kept[i]);
    kept += w->kept && w->kept[i];
    lua_rawseti(L, -2, (int)++k);
  }
  lua_setfield(L, -2, "failed");                /* report */
  if(w->kept) {
    set_integer(L, "spooled", (double)kept);
    set_integer(L, "spool_failed", (double)w->spool_failed);
    if(w->spool_err[0])
      set_string(L, "spool_error", w->spool_err);
  }
}

/* Uploads the batch, through the spool when there is one; a sender of
   this process on the same spool is asked to replay what stays. */
static int upload_batch(struct lf_client *c, const struct lf_route *route,
                        struct lf_work *w)
{
  size_t i, n = w->batch.n;
  int result;
  if(!c->durable)
    return lf_upload(c->http, route, w->batch.items, n, &c->upload,
                     &w->report);
  w->kept = calloc(n, 1);
  if(!w->kept)
    return LF_ENOMEM;
  result = lf_durable_upload(c->durable, c->http, route, w->batch.items,
                             n, &c->upload, &w->report, w->kept,
                             &w->spool_failed, w->spool_err);
  for(i = 0; i < n && !w->kept[i]; i++)
    ;
  if(i < n)
    lf_sender_kick_dir(lf_durable_dir(c->durable));
  return result;
}

/* client:upload(events) -> report.  Blocks the calling thread for the
   whole upload, retries and backoff waits included. */
static int client_upload(lua_State *L)
{
  struct lf_client *c = check_client(L);
  struct lf_work *w;
  struct lf_route route;
  int result;
  luaL_checktype(L, 2, LUA_TTABLE);
  w = lua_newuserdata(L, sizeof(*w));           /* work */
  memset(w, 0, sizeof(*w));
  lf_batch_init(&w->batch);
  lf_problems_init(&w->problems);
  lf_report_init(&w->report);
  w->live = 1;
  luaL_setmetatable(L, WORK_MT);

  result = lf_encode_events(L, 2, &c->encode, &w->batch, &w->problems);
  if(result == LF_ENOMEM)
    return luaL_error(L, "langfuse: out of memory while encoding");

  memset(&route, 0, sizeof(route));
  route.kind = LF_ROUTE_INGESTION;
  route.url = c->ingestion_url.data;
  route.prefix = LF_BATCH_PREFIX;
  route.suffix = LF_BATCH_SUFFIX;
  if(w->batch.n) {
    result = upload_batch(c, &route, w);
    if(result == LF_ENOMEM)
      return luaL_error(L, "langfuse: out of memory while uploading");
  }
  push_report(L, w);                            /* work report */
  set_integer(L, "total", (double)lua_rawlen(L, 2));
  return 1;
}

/* }================================================================ */


static const luaL_Reg client_methods[] = {
  {"upload", client_upload},
  {"close", client_close},
  {NULL, NULL}
};

static void new_metatable(lua_State *L, const char *name,
                          lua_CFunction gc, const luaL_Reg *methods)
{
  luaL_newmetatable(L, name);                   /* mt */
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__close");
  if(methods) {
    lua_newtable(L);                            /* mt methods */
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

void lf_client_open(lua_State *L)
{
  new_metatable(L, CLIENT_MT, client_close, client_methods);
  new_metatable(L, WORK_MT, work_gc, NULL);
  lua_pushcfunction(L, new_client);
  lua_setfield(L, -2, "new_client");
  lua_pushlightuserdata(L, NULL);               /* JSON null, as cjson */
  lua_setfield(L, -2, "null");
}
