-- Prints the traces the local test server received, one line per
-- generation: trace id, model, usage, user, level, latency.
--
--   lua5.4 examples/nginx/show-traces.lua http://127.0.0.1:PORT

local http = require("socket.http")
local cjson = require("cjson")

local fmt = string.format

local url = assert(arg[1], "usage: show-traces.lua SERVER_URL")
http.TIMEOUT = 10


local function get(path)
  local body, code = http.request(url .. path)
  assert(code == 200, fmt("GET %s: %s", path, tostring(code)))
  return body
end


local function usage_text(raw)
  local ok, u = pcall(cjson.decode, raw or "null")
  if not ok or type(u) ~= "table" then
    return "-"
  end
  return fmt("%d in / %d out", u.input or 0, u.output or 0)
end


local doc = cjson.decode(get("/_test/spans"))
local rows = {}
for _, s in ipairs(doc.spans) do
  local a = s.attributes
  if a["langfuse.observation.type"] == "generation" then
    local ms = (tonumber(s.endTimeUnixNano) - tonumber(s.startTimeUnixNano))
               / 1e6
    rows[#rows + 1] = fmt("  %s  %-12s %-14s %-8s %-8s %7.1f ms",
      s.traceId, tostring(a["langfuse.observation.model.name"] or "-"),
      usage_text(a["langfuse.observation.usage_details"]),
      tostring(a["user.id"] or "-"),
      tostring(a["langfuse.observation.level"] or "DEFAULT"), ms)
  end
end

io.write(get("/"))
print()
print(fmt("generations (%d spans in all):", doc.total))
print(table.concat(rows, "\n"))
