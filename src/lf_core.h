/*
** lf_core.h: how the stages register their functions in langfuse.core.
** Each *_open function expects the module table on top of the stack,
** adds its fields to it, and leaves the stack as it found it.
*/
#ifndef LF_CORE_H
#define LF_CORE_H

#include <lua.h>

#define LF_VERSION "0.1.0"
#define LF_SDK_NAME "langfuse-lua"

#if defined(__GNUC__)
#define LF_HIDDEN __attribute__((visibility("hidden")))
#else
#define LF_HIDDEN
#endif

LF_HIDDEN void lf_encode_open(lua_State *L);
LF_HIDDEN void lf_client_open(lua_State *L);
LF_HIDDEN void lf_tracer_open(lua_State *L);
LF_HIDDEN void lf_spool_lua_open(lua_State *L);

#if defined(__GNUC__)
#define LF_EXPORT __attribute__((visibility("default")))
#else
#define LF_EXPORT
#endif

LF_EXPORT int luaopen_langfuse_core(lua_State *L);

#endif
