-- Harness for the nginx tests: the local Langfuse test server
-- (server/fakefuse.py), the example gateway (examples/nginx/gateway),
-- HTTP calls with timing, and a tiny runner that prints one line per
-- test and "N passed, N failed" last.
--
-- Every process it starts is recorded under the work folder so that
-- tests/run-nginx-test can stop it even when a test dies halfway.

local socket = require("socket")
local http = require("socket.http")
local ltn12 = require("ltn12")
local cjson = require("cjson")

local fmt = string.format
local concat = table.concat

-- Seconds any single HTTP call may take before the harness gives up.
local HTTP_TIMEOUT = 15
-- Seconds to wait for a process to come up or go away.
local START_WAIT = 10
-- Polling step in seconds for every wait loop.
local POLL = 0.05

http.TIMEOUT = HTTP_TIMEOUT

local _M = {}

_M.now = socket.gettime
_M.sleep = socket.sleep
_M.json = cjson


function _M.setup(root, work)
  _M.root = root
  _M.work = work
end


local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end
_M.sh = sh


local function read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("a")
  f:close()
  return s
end
_M.read_file = read_file


local function quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end


-- Calls fn until it returns a true value or timeout seconds pass;
-- returns that value, or nil.
function _M.wait_for(fn, timeout)
  local deadline = _M.now() + timeout
  repeat
    local v = fn()
    if v then
      return v
    end
    _M.sleep(POLL)
  until _M.now() > deadline
  return nil
end


-- One HTTP exchange.  Returns status, body, headers (lowercase names)
-- and the seconds it took; status is nil and body the error when the
-- exchange failed.
function _M.request(method, url, body, headers)
  local out = {}
  local h = {}
  for k, v in pairs(headers or {}) do
    h[k] = v
  end
  if body then
    h["content-type"] = h["content-type"] or "application/json"
    h["content-length"] = tostring(#body)
  end
  local t0 = _M.now()
  local ok, code, rh = http.request{
    url = url,
    method = method,
    headers = h,
    source = body and ltn12.source.string(body) or nil,
    sink = ltn12.sink.table(out),
  }
  local took = _M.now() - t0
  if not ok then
    return nil, code, nil, took
  end
  return code, concat(out), rh or {}, took
end


-- The local Langfuse test server --------------------------------------

local Server = {}
Server.__index = Server


-- Starts the server on port (0: a free one) and waits for it.
function _M.start_server(port)
  local dir = _M.work .. "/server"
  sh("mkdir -p " .. quote(dir))
  local pfile = dir .. "/port"
  os.remove(pfile)
  local cmd = fmt("python3 %s/server/fakefuse.py --port %d --port-file %s"
                  .. " --public-key pk-lf-test --secret-key sk-lf-test"
                  .. " >>%s/server.log 2>&1 & echo $! >%s/pid",
                  quote(_M.root), port or 0, quote(pfile), quote(dir),
                  quote(dir))
  assert(sh(cmd), "could not start the test server")
  local got = _M.wait_for(function()
    local s = read_file(pfile)
    return s and tonumber(s:match("%d+"))
  end, START_WAIT)
  assert(got, "the test server did not start: " ..
              tostring(read_file(dir .. "/server.log")))
  local self = setmetatable({ port = got, dir = dir }, Server)
  self.url = fmt("http://127.0.0.1:%d", got)
  self.pid = tonumber(read_file(dir .. "/pid"):match("%d+"))
  return self
end


-- Stops the server process and waits until it is gone.
function Server:stop()
  if not self.pid then
    return
  end
  sh(fmt("kill %d 2>/dev/null", self.pid))
  _M.wait_for(function()
    return not sh(fmt("kill -0 %d 2>/dev/null", self.pid))
  end, START_WAIT)
  self.pid = nil
end


-- Starts it again on the same port.
function Server:restart()
  self:stop()
  local again = _M.start_server(self.port)
  self.pid = again.pid
end


function Server:call(method, path, doc)
  local status, body = _M.request(method, self.url .. path,
                                  doc and cjson.encode(doc) or nil)
  assert(status == 200, fmt("test server %s %s: %s %s", method, path,
                            tostring(status), tostring(body)))
  return cjson.decode(body)
end


function Server:reset()
  return self:call("POST", "/_test/reset", {})
end


function Server:faults(f)
  return self:call("POST", "/_test/faults", f)
end


function Server:spans()
  return self:call("GET", "/_test/spans")
end


function Server:events()
  return self:call("GET", "/_test/events")
end


-- Spans grouped by trace id: { [trace id] = { span, ... } }, the number
-- of traces, and the span ids the server got more than once.
function Server:traces()
  local doc = self:spans()
  local traces, n = {}, 0
  for _, s in ipairs(doc.spans) do
    local t = traces[s.traceId]
    if not t then
      t = {}
      traces[s.traceId] = t
      n = n + 1
    end
    t[#t + 1] = s
  end
  local dups = {}
  for id, count in pairs(doc.counts) do
    if count > 1 then
      dups[#dups + 1] = id
    end
  end
  return traces, n, dups
end


-- Waits until the server holds at least n traces; returns how many.
function Server:wait_traces(n, timeout)
  local got = 0
  _M.wait_for(function()
    local _, c = self:traces()
    got = c
    return c >= n
  end, timeout)
  return got
end


-- The example gateway --------------------------------------------------

local Gateway = {}
Gateway.__index = Gateway

local gateway_count = 0


-- Starts the example gateway in a new prefix.  env: variables for the
-- gateway script and the client (LANGFUSE_INIT_OPTS, EXIT_TIMEOUT, ...).
function _M.start_gateway(env)
  gateway_count = gateway_count + 1
  local prefix = fmt("%s/nginx%d", _M.work, gateway_count)
  local vars = {}
  for k, v in pairs(env or {}) do
    vars[#vars + 1] = k .. "=" .. quote(v)
  end
  local cmd = fmt("env %s %s/examples/nginx/gateway start %s >>%s 2>&1",
                  concat(vars, " "), quote(_M.root), quote(prefix),
                  quote(_M.work .. "/gateway.log"))
  sh("mkdir -p " .. quote(prefix))
  -- Recorded first, so that the runner can stop it whatever happens.
  sh(fmt("echo %s >>%s", quote(prefix), quote(_M.work .. "/prefixes")))
  if not sh(cmd) then
    error("the gateway did not start:\n" ..
          tostring(read_file(_M.work .. "/gateway.log")) ..
          tostring(read_file(prefix .. "/logs/error.log")))
  end
  local self = setmetatable({ prefix = prefix }, Gateway)
  self.port = tonumber(read_file(prefix .. "/gateway.port"):match("%d+"))
  self.url = fmt("http://127.0.0.1:%d", self.port)
  self.pid = tonumber(read_file(prefix .. "/logs/nginx.pid"):match("%d+"))
  return self
end


-- POSTs a chat completion.  opts: model, text (the user message),
-- stream, headers.  Returns status, decoded body (or raw text for a
-- stream), headers, seconds.
function Gateway:chat(opts, path)
  opts = opts or {}
  local body = cjson.encode({
    model = opts.model,
    stream = opts.stream,
    messages = { { role = "user", content = opts.text or "hello" } },
  })
  local status, text, h, took = _M.request("POST",
    self.url .. (path or "/v1/chat/completions"), body, opts.headers)
  local doc = text
  if status and not opts.stream then
    local ok, d = pcall(cjson.decode, text)
    doc = ok and d or text
  end
  return status, doc, h, took
end


function Gateway:signal(name)
  return sh(fmt("kill -%s %d", name, self.pid))
end


-- Children of the master: the worker processes now.
function Gateway:workers()
  local p = io.popen(fmt("ps -o pid= --ppid %d", self.pid))
  local out = {}
  for pid in p:read("a"):gmatch("%d+") do
    out[#out + 1] = tonumber(pid)
  end
  p:close()
  return out
end


function Gateway:alive()
  return sh(fmt("kill -0 %d 2>/dev/null", self.pid))
end


-- Sends QUIT (or how = "TERM") and waits until nginx has exited.
function Gateway:stop(how, timeout)
  if not self:alive() then
    return true
  end
  self:signal(how or "QUIT")
  return _M.wait_for(function()
    return not self:alive()
  end, timeout or 30) ~= nil
end


function Gateway:error_log()
  return read_file(self.prefix .. "/logs/error.log") or ""
end


-- Lines at level error or worse, as a list.
function Gateway:bad_lines()
  local bad = {}
  for line in self:error_log():gmatch("[^\n]+") do
    if line:match("%[error%]") or line:match("%[crit%]")
       or line:match("%[alert%]") or line:match("%[emerg%]") then
      bad[#bad + 1] = line
    end
  end
  return bad
end


-- Runner -----------------------------------------------------------------

local passed, failed = 0, 0
local after = {}


-- Registers fn to run after the current test, pass or fail.
function _M.defer(fn)
  after[#after + 1] = fn
end


function _M.test(name, fn)
  local t0 = _M.now()
  local ok, err = xpcall(fn, debug.traceback)
  for i = #after, 1, -1 do
    local aok, aerr = pcall(after[i])
    if not aok and ok then
      ok, err = false, aerr
    end
  end
  after = {}
  if ok then
    passed = passed + 1
    print(fmt("ok - %s (%.1f s)", name, _M.now() - t0))
  else
    failed = failed + 1
    print(fmt("not ok - %s\n  %s", name, tostring(err):gsub("\n", "\n  ")))
  end
end


function _M.finish()
  print(fmt("%d passed, %d failed", passed, failed))
  return failed == 0
end


return _M
