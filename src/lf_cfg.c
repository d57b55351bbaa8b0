/*
** lf_cfg.c: reading the resolved configuration table (see lf_cfg.h).
*/
#include <string.h>

#include "lf_compat.h"
#include "lf_cfg.h"
#include "lf_core.h"
#include "lf_span.h"

const char *const lf_otlp_headers[] = {
  "x-langfuse-ingestion-version: 4", NULL
};

const char *lf_cfg_string(lua_State *L, const char *name)
{
  const char *s;
  lua_getfield(L, 1, name);                     /* value */
  s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  lua_pop(L, 1);                                /* the table keeps it */
  return s;
}

double lf_cfg_number(lua_State *L, const char *name, double dflt)
{
  double v = dflt;
  lua_getfield(L, 1, name);                     /* value */
  if(lua_type(L, -1) == LUA_TNUMBER)
    v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

int lf_cfg_bool(lua_State *L, const char *name, int dflt)
{
  int v = dflt;
  lua_getfield(L, 1, name);                     /* value */
  if(lua_type(L, -1) == LUA_TBOOLEAN)
    v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

const char *lf_cfg_http(lua_State *L, const char *who,
                        struct lf_http_config *hc)
{
  const char *base = lf_cfg_string(L, "base_url");
  memset(hc, 0, sizeof(*hc));
  hc->public_key = lf_cfg_string(L, "public_key");
  hc->secret_key = lf_cfg_string(L, "secret_key");
  if(!hc->public_key || !hc->secret_key || !base)
    luaL_error(L, "%s: public_key, secret_key and base_url are required",
               who);
  hc->timeout = lf_cfg_number(L, "timeout", 5);
  hc->connect_timeout = lf_cfg_number(L, "connect_timeout", hc->timeout);
  hc->sdk_name = LF_SDK_NAME;
  hc->sdk_version = LF_VERSION;
  hc->ca_file = lf_cfg_string(L, "ca_file");
  return base;
}

void lf_cfg_upload(lua_State *L, struct lf_upload_opts *u)
{
  u->max_batch_bytes = (size_t)lf_cfg_number(L, "max_batch_bytes",
                                             (double)u->max_batch_bytes);
  u->max_batch_events = (size_t)lf_cfg_number(L, "max_batch_events",
                                              (double)u->max_batch_events);
  u->max_retries = (int)lf_cfg_number(L, "max_retries", u->max_retries);
  u->backoff_base = lf_cfg_number(L, "backoff_base", u->backoff_base);
  u->backoff_max = lf_cfg_number(L, "backoff_max", u->backoff_max);
  u->retry_after_max = lf_cfg_number(L, "retry_after_max",
                                     u->retry_after_max);
}

const char *lf_cfg_url(lua_State *L, const char *who, struct lf_buf *b,
                       const char *base, const char *path)
{
  size_t n = strlen(base);
  while(n && base[n - 1] == '/')
    n--;
  lf_buf_reset(b);
  if(lf_buf_add(b, base, n) || lf_buf_adds(b, path))
    luaL_error(L, "%s: out of memory", who);
  return b->data;
}

const char *lf_cfg_otlp_prefix(lua_State *L, const char *who,
                               struct lf_buf *b, const char *public_key)
{
  lf_buf_reset(b);
  if(lf_span_otlp_prefix(b, lf_cfg_string(L, "service_name"), public_key,
                         lf_cfg_string(L, "environment"),
                         lf_cfg_string(L, "release")))
    luaL_error(L, "%s: bad service_name, environment or release text",
               who);
  return b->data;
}
