-- Shared helpers for the specs: talk to the local test server that
-- tools/run-tests starts (LANGFUSE_TEST_URL) and make clients for it.

local http = require("socket.http")
local ltn12 = require("ltn12")
local socket = require("socket")
local cjson = require("cjson")
local langfuse = require("langfuse")
local luassert = require("luassert")

local _M = {}

_M.url = os.getenv("LANGFUSE_TEST_URL") or "http://127.0.0.1:3999"
_M.public_key = os.getenv("LANGFUSE_TEST_PUBLIC_KEY") or "pk-lf-test"
_M.secret_key = os.getenv("LANGFUSE_TEST_SECRET_KEY") or "sk-lf-test"
_M.now = socket.gettime


local function call(method, path, body)
  local out = {}
  local src = body and cjson.encode(body) or nil
  local ok, code = http.request{
    url = _M.url .. path,
    method = method,
    source = src and ltn12.source.string(src) or nil,
    headers = src and {
      ["content-type"] = "application/json",
      ["content-length"] = tostring(#src),
    } or nil,
    sink = ltn12.sink.table(out),
  }
  assert(ok, "test server unreachable: " .. tostring(code))
  assert(code == 200, "test server answered " .. tostring(code))
  local text = table.concat(out)
  return text ~= "" and cjson.decode(text) or {}
end


function _M.reset()
  return call("POST", "/_test/reset", {})
end


-- Sets fault injection on the server; see server/fakefuse.py.
function _M.faults(f)
  return call("POST", "/_test/faults", f)
end


function _M.events()
  return call("GET", "/_test/events")
end


function _M.spans()
  return call("GET", "/_test/spans")
end


function _M.requests(path)
  local all = call("GET", "/_test/requests").requests
  if not path then
    return all
  end
  local out = {}
  for _, r in ipairs(all) do
    if r.path == path then
      out[#out + 1] = r
    end
  end
  return out
end


-- A client for the test server with fast retries.
function _M.client(opts)
  local o = {
    public_key = _M.public_key,
    secret_key = _M.secret_key,
    base_url = _M.url,
    backoff_base = 0.01,
    backoff_max = 0.05,
    timeout = 5,
  }
  for k, v in pairs(opts or {}) do
    o[k] = v
  end
  return assert(langfuse.new(o))
end


-- A client as _M.client makes, whose sender flushes every 50 ms.
function _M.tracing_client(opts)
  local o = { flush_interval = 0.05 }
  for k, v in pairs(opts or {}) do
    o[k] = v
  end
  return _M.client(o)
end


local seq = 0

-- A valid event of the given type with a fresh id.
function _M.event(kind, body)
  seq = seq + 1
  local id = string.format("evt-%d-%d", os.time(), seq)
  kind = kind or "trace-create"
  body = body or {}
  if body.id == nil then
    body.id = "body-" .. id
  end
  if kind ~= "trace-create" and kind ~= "score-create"
      and body.traceId == nil then
    body.traceId = "trace-" .. id
  end
  if kind == "score-create" then
    body.name = body.name or "quality"
    body.value = body.value or 1
    body.traceId = body.traceId or "trace-" .. id
  end
  return {
    id = id,
    type = kind,
    timestamp = "2026-12-03T10:00:00.000Z",
    body = body,
  }
end


function _M.traces(n)
  local out = {}
  for i = 1, n do
    out[i] = _M.event("trace-create", { name = "trace " .. i })
  end
  return out
end


-- How many times the server accepted each of these events.
function _M.delivered_counts(events)
  local counts = _M.events().counts or {}
  local out = {}
  for i, e in ipairs(events) do
    out[i] = counts[e.id] or 0
  end
  return out
end


function _M.ones(n)
  local out = {}
  for i = 1, n do
    out[i] = 1
  end
  return out
end


-- Asserts that every event of a call is accounted for: listed once in
-- err.failed and never seen by the server, or delivered -- exactly once,
-- or at least once when resends are allowed (at_least_once).  Returns
-- the failure entries by event index.
function _M.accounted(events, res, err, at_least_once)
  local failed, nfailed = {}, 0
  if err then
    for _, f in ipairs(err.failed) do
      luassert.is_nil(failed[f.index], "event listed twice in err.failed")
      failed[f.index] = f
      nfailed = nfailed + 1
    end
  end
  local counts = _M.delivered_counts(events)
  local delivered = 0
  for i = 1, #events do
    if failed[i] and not at_least_once then
      luassert.equal(0, counts[i], "a failed event reached the server")
    elseif not failed[i] then
      if at_least_once then
        luassert.is_true(counts[i] >= 1, "event " .. i .. " never arrived")
      else
        luassert.equal(1, counts[i], "event " .. i .. " not delivered once")
      end
      delivered = delivered + 1
    end
  end
  luassert.equal(#events, delivered + nfailed)
  luassert.equal(delivered, res and res.accepted or err.accepted)
  return failed
end


_M.cjson = cjson

return _M
