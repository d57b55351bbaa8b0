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

#include "lf_buf.h"
#include "lf_http.h"
#include "lf_upload.h"

/* The two intake routes, relative to base_url, and the header lines an
   OTLP request carries besides (NULL-ended). */
#define LF_INGESTION_PATH "/api/public/ingestion"
#define LF_OTLP_PATH "/api/public/otel/v1/traces"
/* What frames the events of an ingestion request. */
#define LF_BATCH_PREFIX "{\"batch\":["
#define LF_BATCH_SUFFIX "]}"
extern const char *const lf_otlp_headers[];

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

/* Sets b to base + path, the base's trailing slashes dropped, and
   returns its text; raises (naming who) when out of memory. */
const char *lf_cfg_url(lua_State *L, const char *who, struct lf_buf *b,
                       const char *base, const char *path);

/* Sets b to the text that opens an OTLP request body, with the table's
   service_name, environment and release and public_key as resource
   attributes, and returns it; raises (naming who) for text that is not
   UTF-8 or when out of memory. */
const char *lf_cfg_otlp_prefix(lua_State *L, const char *who,
                               struct lf_buf *b, const char *public_key);

#endif
