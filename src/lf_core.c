/*
** lf_core.c: the langfuse.core module, the only symbol this library
** exports.  Each stage adds its functions to the module table.
*/
#include "lf_compat.h"
#include "lf_core.h"

LF_EXPORT int luaopen_langfuse_core(lua_State *L)
{
  lua_newtable(L);                              /* module */
  lf_encode_open(L);
  lf_client_open(L);
  lf_tracer_open(L);
  lf_spool_lua_open(L);
  lua_pushliteral(L, LF_VERSION);
  lua_setfield(L, -2, "_VERSION");
  return 1;
}
