/*
** lf_compat.h: the few Lua C API differences between Lua 5.4 and
** LuaJIT 2.1 (the 5.1 API, with luaL_setfuncs and luaL_setmetatable
** from 5.2) that the core uses.
*/
#ifndef LF_COMPAT_H
#define LF_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM < 502
#define lua_rawlen(L, i) lua_objlen((L), (i))
#define lua_absindex(L, i) \
  ((i) > 0 || (i) <= LUA_REGISTRYINDEX ? (i) : lua_gettop(L) + (i) + 1)
#endif

#if LUA_VERSION_NUM < 503
#define lua_isinteger(L, i) 0
#define LF_HAS_INTEGERS 0
#else
#define LF_HAS_INTEGERS 1
#endif

#endif
