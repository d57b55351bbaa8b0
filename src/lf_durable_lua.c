/*
** lf_durable_lua.c: reads the spool options of the client's
** configuration table, for the two users of a spool in langfuse.core
** (the tracer's sender and the synchronous batch upload).
*/
#include <string.h>

#include "lf_compat.h"
#include "lf_durable.h"

/* t[name] when it is a number, else dflt (the table is at idx). */
static double number_field(lua_State *L, int idx, const char *name,
                           double dflt)
{
  double v = dflt;
  lua_getfield(L, idx, name);                   /* value */
  if(lua_type(L, -1) == LUA_TNUMBER)
    v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

/* t[name] when it is a string, else NULL; the table keeps it alive. */
static const char *string_field(lua_State *L, int idx, const char *name)
{
  const char *s;
  lua_getfield(L, idx, name);                   /* value */
  s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  lua_pop(L, 1);
  return s;
}

const char *lf_durable_lua_config(lua_State *L, int idx,
                                  struct lf_spool_opts *opts)
{
  const char *dir, *s;
  int v;
  idx = lua_absindex(L, idx);
  lf_spool_opts_init(opts);
  dir = string_field(L, idx, "spool_dir");
  if(!dir || !*dir)
    return NULL;
  s = string_field(L, idx, "spool_fsync");
  if(s && (v = lf_spool_fsync_parse(s)) >= 0)
    opts->fsync = v;
  s = string_field(L, idx, "spool_full_policy");
  if(s && (v = lf_spool_full_parse(s)) >= 0)
    opts->full_policy = v;
  opts->max_bytes = (uint64_t)number_field(L, idx, "spool_max_bytes",
                                           (double)opts->max_bytes);
  opts->segment_bytes = (size_t)number_field(L, idx, "spool_segment_bytes",
                                  (double)opts->segment_bytes);
  return dir;
}
