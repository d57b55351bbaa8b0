-- LuaRocks package of lua-langfuse: the C core (langfuse.core) and the
-- Lua layer (langfuse, langfuse.*), for Lua 5.4 and LuaJIT 2.1.
--
--   luarocks make rockspec/langfuse-0.1.0-1.rockspec
--   luarocks --lua-version=5.1 make rockspec/langfuse-0.1.0-1.rockspec
--
-- libcurl and zlib are external dependencies: on Debian install
-- libcurl4-openssl-dev and zlib1g-dev (or pass CURL_DIR / ZLIB_DIR).
package = "langfuse"
version = "0.1.0-1"
source = {
  url = "git+https://github.com/lua-langfuse/lua-langfuse.git",
  tag = "v0.1.0",
}
description = {
  summary = "Langfuse client for Lua and OpenResty with a C core",
  detailed = [[
Validates Langfuse events against the server's schema before sending,
uploads them in batches within the server's limits with careful retry,
reports every failure as an inspectable error object, and records traces
through a background sender over OTLP/HTTP JSON.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1, < 5.5",
}
external_dependencies = {
  -- Only the library is looked up: Debian keeps curl.h in a multiarch
  -- folder that the compiler searches but LuaRocks does not.
  CURL = { library = "curl" },
  ZLIB = { header = "zlib.h", library = "z" },
}
build = {
  type = "make",
  build_target = "rock",
  install_target = "rock-install",
  build_variables = {
    CFLAGS = "$(CFLAGS)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    CURL_INCDIR = "$(CURL_INCDIR)",
    ZLIB_INCDIR = "$(ZLIB_INCDIR)",
  },
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)",
    INST_LUADIR = "$(LUADIR)",
    INST_BINDIR = "$(BINDIR)",
  },
  -- The command-line tool; LuaRocks wraps it so that it finds the
  -- modules of this tree with the interpreter the rock was built for.
  install = {
    bin = { langfuse = "bin/langfuse" },
  },
}
