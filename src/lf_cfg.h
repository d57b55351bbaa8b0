/*
** lf_cfg.h: reading the resolved configuration table that the Lua layer
** hands to core.new_client, core.new_tracer and core.raw_client.
**
** The table is always at stack index 1 and was checked in Lua, so a
** field of the wrong type reads as absent.  Strings returned point into
** the table and live as long as it does.
*/
#ifndef LF_CFG_H
#define LF_CFG_H

#include <lua.h>

#include "lf_http.h"
#include "lf_upload.h"

const char *lf_cfg_string(lua_State *L, const char *name);
double lf_cfg_number(lua_State *L, const char *name, double dflt);
int lf_cfg_bool(lua_State *L, const char *name, int dflt);

/* Fills hc from public_key, secret_key, timeout, connect_timeout and
   ca_file, with this library's SDK name and version.  Returns base_url,
   or raises (naming who) when a key or base_url is missing: the Lua
   layer guarantees them, so that is a bug there. */
const char *lf_cfg_http(lua_State *L, const char *who,
                        struct lf_http_config *hc);

/* Overrides u's limits and retry policy with max_batch_bytes,
   max_batch_events, max_retries, backoff_base, backoff_max and
   retry_after_max where the table has them. */
void lf_cfg_upload(lua_State *L, struct lf_upload_opts *u);

#endif
