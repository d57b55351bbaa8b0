-- langfuse.ngx: Langfuse tracing inside nginx, for Debian's nginx with
-- libnginx-mod-http-lua and for OpenResty (LuaJIT).
--
--   http {
--     init_by_lua_block {             # in the master: make the client
--       require("langfuse.ngx").init{ flush_interval = 1 }
--     }
--     init_worker_by_lua_block {      # optional: report problems
--       require("langfuse.ngx").init_worker()
--     }
--     exit_worker_by_lua_block {      # reload, quit, stop: send the rest
--       require("langfuse.ngx").exit_worker(3)
--     }
--     server {
--       location /v1/ {
--         proxy_pass http://llm;
--         body_filter_by_lua_block {  # keep the answer, size-bounded
--           require("langfuse.ngx").capture_body()
--         }
--         log_by_lua_block {          # one trace with one generation
--           require("langfuse.ngx").trace_request{ name = "chat" }
--         }
--       }
--     }
--   }
--
-- Recording your own traces, in any phase (log_by_lua* included):
--
--   local client = require("langfuse.ngx").client()
--   if client then
--     local trace = client:trace{ name = "checkout" }
--     ...
--   end
--
-- How it stays off the event loop: recording validates and encodes on
-- the worker's thread (microseconds) and hands the bytes to the client's
-- sender thread, which does every network exchange; a slow or dead
-- Langfuse server never holds up a request.  trace_request does even
-- less in the log phase: it keeps the request's facts (strings) and a
-- timer builds the traces of a batch of requests a moment later.
--
-- The client made in init_by_lua lives in the master; each worker
-- inherits it through fork() and starts its own sender thread when it
-- first records.  On exit (HUP reload, QUIT, TERM) exit_worker builds
-- what is pending and sends what is queued, for at most the given
-- seconds (plus, with a hung server, the HTTP timeout of the request in
-- flight).  After TERM, nginx kills workers that are still there about
-- 3 s later: stop with QUIT (nginx -s quit) to keep the whole bound.
--
-- init(opts) takes the options of langfuse.new (keys, base_url,
-- flush_at, flush_interval, ...; each also from its LANGFUSE_*
-- variable, listed in nginx's env directives) plus:
--   report_interval  seconds between a worker's reports of dropped or
--                    failed events (5; 0 turns the timer off)
--   max_body_bytes   bytes of a request or response body kept for
--                    trace_request (65536)
--   capture_io       record prompts and answers as input and output
--                    (true)
--   batch_delay      seconds trace_request's requests wait to be built
--                    into traces, as a batch (0.01)
--   batch_max        requests one timer run builds at most (32)
--   max_pending      requests waiting to be built at most; more are
--                    counted, reported and not recorded (10000)
--
-- Problems are logged through ngx.log with a "[langfuse]" tag, never
-- raised into nginx: a broken trace costs a log line, not a request.
-- The module keeps its client in a module upvalue, so it needs
-- lua_code_cache on (nginx's default).

local langfuse = require("langfuse")
local cjson = require("cjson.safe")

local ngx = ngx
local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local concat = table.concat
local floor = math.floor
local min = math.min
local fmt = string.format
local sub = string.sub
local find = string.find
local log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local INFO = ngx.INFO

local TAG = "[langfuse] "
-- Seconds exit_worker waits for the queue to drain when not told: what
-- a reload may take longer when Langfuse is slow, and about what nginx
-- waits after TERM before it kills a worker.
local EXIT_TIMEOUT = 3
-- Seconds between a worker's problem reports: often enough to notice,
-- rarely enough not to flood the error log.
local REPORT_INTERVAL = 5
-- Bytes of a body kept for parsing: an LLM answer with its usage fits,
-- a runaway download does not cost memory.
local MAX_BODY_BYTES = 65536
-- Seconds between two problem lines from the default on_error.
local ERROR_LOG_INTERVAL = 1
-- Characters of an upstream error message kept as status_message.
local MAX_MESSAGE = 512
-- Seconds trace_request lets requests gather before a timer builds
-- their traces: a batch is cheaper than one request at a time (the code
-- and data stay in the CPU's caches).
local BATCH_DELAY = 0.01
-- Requests one timer run builds at most (about 20 us each), so that the
-- event loop never waits long for it; the rest go to the next run.
local BATCH_MAX = 32
-- Requests waiting for that timer at most; past it they are counted
-- and not recorded (the sender's queue has its own bound).
local MAX_PENDING = 10000
-- Options that belong to this module, not to langfuse.new.
local OWN_OPTIONS = {
  report_interval = "number",
  max_body_bytes = "number",
  capture_io = "boolean",
  batch_delay = "number",
  batch_max = "number",
  max_pending = "number",
}
local EMPTY = {}
-- The OTLP service.name when neither the options nor OTEL_SERVICE_NAME
-- give one.
local SERVICE_NAME = "nginx"
-- Request fields kept as model parameters.
local MODEL_PARAMETERS = {
  "temperature", "top_p", "max_tokens", "max_completion_tokens",
  "presence_penalty", "frequency_penalty", "seed", "n", "stream",
  "reasoning_effort",
}

local client                 -- made by init, inherited by the workers
local settings = {
  report_interval = REPORT_INTERVAL,
  max_body_bytes = MAX_BODY_BYTES,
  capture_io = true,
  batch_delay = BATCH_DELAY,
  batch_max = BATCH_MAX,
  max_pending = MAX_PENDING,
}
local dropped_pending = 0    -- requests not recorded: too many pending
local reported_pending = 0   -- dropped_pending at the last report


local function failure(where, err)
  log(ERR, TAG, where, ": ", tostring(err))
end


-- Splits opts into this module's settings and the client's options.
-- Returns the client options, or nil and a reason.
local function split_options(opts)
  local rest = {}
  for k, v in pairs(opts) do
    local kind = OWN_OPTIONS[k]
    if kind then
      if type(v) ~= kind or (kind == "number" and (v ~= v or v < 0)) then
        return nil, fmt("option %s must be a %s%s", k,
                        kind == "number" and "non-negative " or "", kind)
      end
      settings[k] = v
    else
      rest[k] = v
    end
  end
  if settings.batch_max < 1 then
    return nil, "option batch_max must be at least 1"
  end
  return rest
end


-- Asks for the counters, which hands failures collected by the sender
-- thread to on_error: problems reach the log even when no request
-- comes to record.
local function report_timer(premature)
  if premature then
    return
  end
  local ok, err = pcall(client.stats, client)
  if not ok then
    failure("report", err)
  end
  if dropped_pending > reported_pending then
    log(WARN, TAG, dropped_pending - reported_pending, " requests not ",
        "recorded: more than max_pending were waiting to be built")
    reported_pending = dropped_pending
  end
end


-- The default on_error: a warning, at most one per ERROR_LOG_INTERVAL,
-- so that a dead server does not fill the error log.
local last_logged, suppressed = -ERROR_LOG_INTERVAL, 0
local function on_error(err)
  local now = ngx.now()
  if now - last_logged < ERROR_LOG_INTERVAL then
    suppressed = suppressed + 1
    return
  end
  log(WARN, TAG, tostring(err), suppressed > 0
      and fmt(" (and %d more since the last)", suppressed) or "")
  last_logged, suppressed = now, 0
end


-- Keeps a body chunk in state.  A JSON answer keeps its first max
-- bytes, and is marked done past them (cut JSON cannot be read); an
-- event stream keeps its last max bytes, where the usage chunk is,
-- trimming only when it holds twice as much, so that each byte is
-- copied a bounded number of times.
local function keep_chunk(state, chunk, max)
  local n, size = state.n + 1, state.size + #chunk
  if size > max then
    state.truncated = true
    if not state.stream then
      state.done = true
      return
    end
    if size > 2 * max then
      local tail = sub(concat(state, "", 1, state.n) .. chunk, -max)
      for i = state.n, 2, -1 do
        state[i] = nil
      end
      state[1], state.n, state.size = tail, 1, #tail
      return
    end
  end
  state[n], state.n, state.size = chunk, n, size
end


local function capture(chunk)
  local ctx = ngx.ctx
  local state = ctx.langfuse_body
  if not state then
    local enc = ngx.header["Content-Encoding"]
    local ctype = ngx.header["Content-Type"]
    state = { n = 0, size = 0 }
    state.done = enc ~= nil and enc ~= "identity"
    state.stream = type(ctype) == "string"
                   and find(ctype, "text/event-stream", 1, true) ~= nil
    ctx.langfuse_body = state
  end
  if not state.done and chunk ~= "" then
    keep_chunk(state, chunk, settings.max_body_bytes)
  end
end


local function is_count(v)
  return type(v) == "number" and v >= 0 and v == floor(v) and v < 2^53
end


-- A count from the first of two names that has one.
local function count(u, a, b)
  local v = u[a]
  if v == nil then
    v = u[b]
  end
  return is_count(v) and v or nil
end


-- OpenAI-style usage to Langfuse usage_details, or nil.  Chat
-- completions say prompt_tokens, the Responses API input_tokens.
local function usage_details(u)
  if type(u) ~= "table" then
    return nil
  end
  local input = count(u, "prompt_tokens", "input_tokens")
  local output = count(u, "completion_tokens", "output_tokens")
  local total = count(u, "total_tokens", "total_tokens")
  if not (input or output or total) then
    return nil
  end
  return { input = input, output = output, total = total }
end


local function model_parameters(req)
  local p, any = {}, false
  for _, k in ipairs(MODEL_PARAMETERS) do
    local v = req[k]
    local t = type(v)
    if t == "number" or t == "string" then
      p[k], any = v, true
    elseif t == "boolean" then
      p[k], any = tostring(v), true
    end
  end
  return any and p or nil
end


-- The request body as JSON, or an empty table.
local function read_request(body)
  local req = body and cjson.decode(body)
  return type(req) == "table" and req or {}
end


local function parse_stream(text, res)
  local content, any = {}, false
  for line in text:gmatch("data: ([^\n]+)") do
    local c = cjson.decode(line)
    if type(c) == "table" then
      if type(c.model) == "string" then
        res.model = c.model
      end
      if type(c.usage) == "table" then
        res.usage = c.usage
      end
      local choice = type(c.choices) == "table" and c.choices[1]
      local delta = type(choice) == "table" and choice.delta
      if type(delta) == "table" and type(delta.content) == "string" then
        content[#content + 1] = delta.content
        any = true
      end
    end
  end
  if any then
    res.output = { role = "assistant", content = concat(content) }
  end
end


local function parse_json(text, res)
  local body = cjson.decode(text)
  if type(body) ~= "table" then
    return
  end
  if type(body.model) == "string" then
    res.model = body.model
  end
  res.usage = body.usage
  local choices = body.choices
  if type(choices) == "table" and type(choices[1]) == "table" then
    res.output = #choices == 1 and choices[1].message or choices
  elseif body.output ~= nil then
    res.output = body.output         -- the Responses API
  end
  local e = body.error
  if type(e) == "table" and type(e.message) == "string" then
    res.error = sub(e.message, 1, MAX_MESSAGE)
  end
end


-- What the captured answer says: { model, usage, output, error }.
local function read_response(text, stream, whole)
  local res = {}
  if not text then
    return res
  end
  if stream then
    parse_stream(text, res)
  elseif whole then
    parse_json(text, res)
  end
  return res
end


-- A number from an $upstream_* variable, which holds one value per
-- upstream tried ("0.010, 0.004"): the last one.
local function last_number(v)
  if type(v) ~= "string" then
    return nil
  end
  return tonumber(v) or tonumber(v:match("([%d.]+)%s*$"))
end


-- The value of request header name, read through its $http_ variable
-- (cheaper than building the table of all headers).
local header_vars = {}
local function header(name)
  if not name then
    return nil
  end
  local var = header_vars[name]
  if not var then
    var = "http_" .. name:lower():gsub("-", "_")
    header_vars[name] = var
  end
  return ngx.var[var]
end


local function level_of(status)
  if status >= 500 then
    return "ERROR"
  elseif status >= 400 then
    return "WARNING"
  end
  return nil
end


-- What the log phase keeps of a request for build_trace, as cheap to
-- take as it can be: strings and numbers, no parsing.
local function collect(opts)
  local var = ngx.var
  local r = {
    opts = opts,
    status = ngx.status,
    route = var.uri,
    method = ngx.req.get_method(),
    start = ngx.req.start_time(),
    finish = ngx.now(),        -- the time this event loop turn began
    id = var.request_id,
    header_time = var.upstream_header_time,
    upstream = var.upstream_addr,
    upstream_status = var.upstream_status,
    user = header(opts.user_header),
    session = header(opts.session_header),
  }
  local ok, body = pcall(ngx.req.get_body_data)
  if ok and type(body) == "string" and #body <= settings.max_body_bytes
  then
    r.req_body = body
  end
  local state = ngx.ctx.langfuse_body
  if not state then
    return r
  end
  r.truncated = state.truncated
  if state.n > 0 then
    local text = state.n == 1 and state[1] or concat(state, "", 1, state.n)
    if #text > settings.max_body_bytes then
      text = sub(text, -settings.max_body_bytes)
    end
    r.res_body = text
    r.stream = state.stream
    r.whole = not state.done
  end
  return r
end


-- Records one collected request as a trace with a generation.  lean:
-- without what came from the client, the upstream or opts (user,
-- session, input, output, model parameters, tags, opts.metadata), for a
-- second try when one of those was refused (invalid UTF-8 in a header,
-- say): the request is still counted, with its latency and usage.
local function build_trace(r, lean)
  local opts = r.opts
  local status = r.status
  local req = read_request(r.req_body)
  local res = read_response(r.res_body, r.stream, r.whole)
  local keep_io = not lean and settings.capture_io
                  and opts.capture_io ~= false
  local header_time = last_number(r.header_time)
  local level = level_of(status)

  local metadata = { route = r.route, status = status }
  if opts.metadata and not lean then
    for k, v in pairs(opts.metadata) do
      metadata[k] = v
    end
  end
  local input = keep_io and (req.messages or req.input or req.prompt)
                or nil
  local output = keep_io and res.output or nil

  local trace = client:trace{
    id = r.id,
    name = opts.name or (r.method .. " " .. r.route),
    user_id = not lean and r.user or nil,
    session_id = not lean and r.session or nil,
    tags = not lean and opts.tags or nil,
    metadata = metadata,
    input = input,
    output = output,
  }
  trace:generation{
    name = opts.generation_name or r.route,
    model = res.model or (type(req.model) == "string" and req.model)
            or nil,
    model_parameters = not lean and model_parameters(req) or nil,
    usage_details = usage_details(res.usage),
    input = input,
    output = output,
    level = level,
    status_message = level and (res.error or fmt("HTTP %d", status)),
    start_time = r.start,
    completion_start_time = header_time and r.start + header_time,
    metadata = {
      upstream = r.upstream,
      upstream_status = r.upstream_status,
      body_truncated = r.truncated,
    },
  }:finish{ end_time = r.finish }
  trace:finish()
end


-- Requests collected and not built yet: pending[head..tail]; and
-- whether a timer will build them.
local pending, head, tail = {}, 1, 0
local scheduled = false

local build_pending


-- Arms the timer that builds pending requests; builds them at once when
-- no timer can be made.
local function schedule(delay)
  if ngx.worker.exiting() then
    delay = 0            -- only 0-delay timers are allowed now
  end
  local ok, err = ngx.timer.at(delay, build_pending)
  if ok then
    scheduled = true
    return
  end
  failure("trace_request", err)
  build_pending(true)
end


-- Builds pending requests, in a timer: batch_max of them, then the
-- rest in the next timer, so that the event loop is never held for
-- long.  premature (the worker exits) or all: every one of them.
function build_pending(premature, all)
  scheduled = false
  local last = tail
  if not (premature or all) then
    last = min(tail, head + settings.batch_max - 1)
  end
  for i = head, last do
    local r = pending[i]
    pending[i] = nil
    local ok, err = pcall(build_trace, r)
    if not ok then
      local why = err
      ok, err = pcall(build_trace, r, true)
      if ok then
        log(WARN, TAG, "request ", r.id, " recorded without user, ",
            "session, input, output and tags: ", tostring(why))
      else
        failure("trace_request", err)
      end
    end
  end
  head = last + 1
  if head > tail then
    head, tail = 1, 0
  elseif not scheduled then
    schedule(0)
  end
end


local _M = { _VERSION = "0.1.0" }


-- Makes the client in init_by_lua*.  Returns it, or nil and an error
-- after logging it: a bad configuration turns tracing off and leaves
-- nginx running.
function _M.init(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error('bad "opts" argument: expected a table', 2)
  end
  local copts, why = split_options(opts or {})
  if not copts then
    log(ERR, TAG, "tracing off: ", why)
    return nil, why
  end
  if copts.on_error == nil then
    copts.on_error = on_error
  end
  if copts.service_name == nil and not os.getenv("OTEL_SERVICE_NAME") then
    copts.service_name = SERVICE_NAME
  end
  local c, err = langfuse.new(copts)
  if not c then
    log(ERR, TAG, "tracing off: ", tostring(err))
    return nil, err
  end
  client = c
  return c
end


-- Starts the worker's report timer in init_worker_by_lua*.  Optional:
-- without it, recording works the same and problems are still counted.
function _M.init_worker()
  if not client or settings.report_interval <= 0 then
    return true
  end
  local ok, err = ngx.timer.every(settings.report_interval, report_timer)
  if not ok then
    failure("init_worker", err)
  end
  return ok, err
end


-- The client made by init, or nil when tracing is off.
function _M.client()
  return client
end


-- Runs fn(client, ...) when tracing is on, logging instead of raising.
-- Returns fn's first result, or nil.
function _M.record(fn, ...)
  if not client then
    return nil
  end
  local ok, res = pcall(fn, client, ...)
  if not ok then
    failure("record", res)
    return nil
  end
  return res
end


-- Keeps the response body for trace_request, in body_filter_by_lua*.
function _M.capture_body()
  if not client then
    return
  end
  local ok, err = pcall(capture, ngx.arg[1])
  if not ok then
    failure("capture_body", err)
  end
end


-- Records the current request, in log_by_lua*, as a trace with one
-- generation.  opts (all optional): name (trace name, default "METHOD
-- /uri"), generation_name (default the uri), user_header and
-- session_header (request headers holding a user or session id), tags,
-- metadata (merged into the trace's), capture_io (false: no input or
-- output).  The trace id is nginx's $request_id.
--
-- The log phase only collects strings; parsing the bodies and building
-- the trace happen in a timer, batch_delay seconds later, for all the
-- requests that came meanwhile.
function _M.trace_request(opts)
  if not client then
    return
  end
  local ok, r = pcall(collect, opts or EMPTY)
  if not ok then
    failure("trace_request", r)
    return
  end
  if tail - head + 1 >= settings.max_pending then
    dropped_pending = dropped_pending + 1
    return
  end
  tail = tail + 1
  pending[tail] = r
  if not scheduled then
    schedule(settings.batch_delay)
  end
end


-- The client's counters in this worker (see client:stats()), or nil.
function _M.stats()
  if not client then
    return nil
  end
  local ok, st = pcall(client.stats, client)
  if not ok then
    failure("stats", st)
    return nil
  end
  st.pending = tail - head + 1
  st.pending_dropped = dropped_pending
  return st
end


-- Sends what is queued, for at most timeout seconds (default 3), and
-- stops the sender, in exit_worker_by_lua*.  Returns true when nothing
-- was left behind.
function _M.exit_worker(timeout)
  if not client then
    return true
  end
  build_pending(true)
  local ok, done = pcall(client.shutdown, client, timeout or EXIT_TIMEOUT)
  if not ok then
    failure("exit_worker", done)
    return false
  end
  local _, st = pcall(client.stats, client)
  st = type(st) == "table" and st or {}
  local lost = (st.failed or 0) + (st.dropped or 0) + dropped_pending
  local line = fmt("exit: %d events delivered, %d failed, %d dropped, "
                   .. "%d left undelivered, %d requests not recorded",
                   st.accepted or 0, st.failed or 0, st.dropped or 0,
                   st.undelivered or 0, dropped_pending)
  if done and lost == 0 then
    log(INFO, TAG, line)
  else
    log(WARN, TAG, line)
  end
  return done
end


return _M
