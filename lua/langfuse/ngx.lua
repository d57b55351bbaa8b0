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
-- Langfuse server never holds up a request.  trace_request is one call
-- into the C core, which only copies nginx's facts and the two bodies;
-- the sender thread reads the bodies (in C, no Lua tables) and writes
-- the trace as one span: the generation, as the trace's root
-- observation, carrying the trace's name, user, session and metadata.
-- Delivery problems reach on_error from the report timer that
-- init_worker starts, not from the requests.
--
-- The client made in init_by_lua lives in the master; each worker
-- inherits it through fork() and starts its own sender thread when it
-- first records.  On exit (HUP reload, QUIT, TERM) exit_worker sends
-- what is queued, for at most the given
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
--
-- Problems are logged through ngx.log with a "[langfuse]" tag, never
-- raised into nginx: a broken trace costs a log line, not a request.
-- The module keeps its client in a module upvalue, so it needs
-- lua_code_cache on (nginx's default).

local langfuse = require("langfuse")
local core = require("langfuse.core")

local ngx = ngx
local type = type
local pairs = pairs
local pcall = pcall
local tostring = tostring
local concat = table.concat
local fmt = string.format
local sub = string.sub
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
-- Options that belong to this module, not to langfuse.new.
local OWN_OPTIONS = {
  report_interval = "number",
  max_body_bytes = "number",
  capture_io = "boolean",
}
local EMPTY = {}
-- The OTLP service.name when neither the options nor OTEL_SERVICE_NAME
-- give one.
local SERVICE_NAME = "nginx"
-- Spans per request when neither the options nor LANGFUSE_FLUSH_AT say:
-- smaller batches than langfuse.new's keep each turn of the sender
-- thread short (well under a millisecond of CPU), so that it does not
-- hold a core the event loops are waiting for.
local FLUSH_AT = 64

local client                 -- made by init, inherited by the workers
local tracer                 -- its C half
local exchange = core.tracer_methods.exchange
local get_body_data = ngx.req.get_body_data
local get_method = ngx.req.get_method
local start_time = ngx.req.start_time
local settings = {
  report_interval = REPORT_INTERVAL,
  max_body_bytes = MAX_BODY_BYTES,
  capture_io = true,
}


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


-- Adds a chunk of the answer to kept, a table of chunks.  Past max
-- bytes only the last max are kept (a stream's usage comes last, and a
-- cut JSON answer cannot be read anyway), trimming when it holds twice
-- that, so that each byte is copied a bounded number of times.
local function keep_chunk(kept, chunk, max)
  local n, size = kept.n + 1, kept.size + #chunk
  if size > 2 * max then
    local tail = sub(concat(kept, "", 1, kept.n) .. chunk, -max)
    for i = kept.n, 2, -1 do
      kept[i] = nil
    end
    kept[1], kept.n, kept.size, kept.truncated = tail, 1, #tail, true
    return
  end
  kept[n], kept.n, kept.size = chunk, n, size
end


-- Keeps the answer in ngx.ctx.langfuse_body: the chunk itself while
-- there is one (the usual case), else a table of chunks.
local function capture(chunk)
  local ctx = ngx.ctx
  local kept = ctx.langfuse_body
  if kept == nil then
    ctx.langfuse_body = chunk
    return
  end
  if type(kept) == "string" then
    kept = { kept, n = 1, size = #kept }
    ctx.langfuse_body = kept
  end
  keep_chunk(kept, chunk, settings.max_body_bytes)
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


-- The kept answer, at most max bytes (its end), and whether it was cut.
local function answer_of(kept, max)
  local text = kept
  if type(kept) == "table" then
    text = concat(kept, "", 1, kept.n)
  end
  if text and #text > max then
    return sub(text, -max), true
  end
  return text, type(kept) == "table" and kept.truncated or false
end


-- Records the current request as a trace with a generation: hands
-- nginx's facts and the kept bodies to the C core, which copies them
-- into the sender's queue; the sender thread reads the bodies and writes
-- the span.  With a spool the span is written here, before the call
-- returns, so that the spool holds it.
local function record_request(opts)
  local var = ngx.var
  local max = settings.max_body_bytes
  local body = get_body_data()
  if body and #body > max then
    body = nil
  end
  local answer, truncated = answer_of(ngx.ctx.langfuse_body, max)
  local ok, note = exchange(tracer, var.request_id,
    get_method(), var.uri, ngx.status, start_time(), ngx.now(),
    var.upstream_header_time, var.upstream_addr, var.upstream_status,
    header(opts.user_header), header(opts.session_header), body, answer,
    truncated, settings.capture_io and opts.capture_io ~= false,
    opts ~= EMPTY and opts or nil)
  if not ok then
    failure("trace_request", note)
  elseif note then
    log(WARN, TAG, "request ", var.request_id, ": ", note)
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
  -- No thread in the master (nginx forks, and may daemonize, after
  -- init_by_lua): each worker replays the spool from init_worker.
  if copts.replay_at_start == nil then
    copts.replay_at_start = false
  end
  if copts.flush_at == nil and not os.getenv("LANGFUSE_FLUSH_AT") then
    copts.flush_at = FLUSH_AT
  end
  if copts.service_name == nil and not os.getenv("OTEL_SERVICE_NAME") then
    copts.service_name = SERVICE_NAME
  end
  local c, err = langfuse.new(copts)
  if not c then
    log(ERR, TAG, "tracing off: ", tostring(err))
    return nil, err
  end
  client, tracer = c, c._tracer
  return c
end


-- In init_worker_by_lua*: starts the worker's sender when the spool
-- holds events (left by workers that were stopped while Langfuse was
-- away), and the report timer.  Optional without a spool: recording
-- works the same and problems are still counted.
function _M.init_worker()
  if not client then
    return true
  end
  local ok, err = client:start()
  if not ok then
    failure("init_worker", err)
  end
  if settings.report_interval <= 0 then
    return ok, err
  end
  ok, err = ngx.timer.every(settings.report_interval, report_timer)
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
  local chunk = ngx.arg[1]
  if chunk == "" then
    return                       -- the end of the answer, or a flush
  end
  local ok, err = pcall(capture, chunk)
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
-- What the trace holds: the model (the answer's, else the request's),
-- its parameters (temperature, top_p, max_tokens, ...), the prompt
-- (messages, input or prompt) and the answer (the only choice's message,
-- all the choices, the Responses API's output, or a stream's text) as
-- input and output, usage_details from the answer's usage (Chat
-- Completions or Responses names), the level (WARNING for 4xx, ERROR for
-- 5xx) with the upstream's error message, the time to the upstream's
-- first byte as completion_start_time, and the upstream's address and
-- status as metadata.
function _M.trace_request(opts)
  if not client then
    return
  end
  local ok, err = pcall(record_request, opts or EMPTY)
  if not ok then
    failure("trace_request", err)
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
  return st
end


-- Sends what is queued, for at most timeout seconds (default 3), and
-- stops the sender, in exit_worker_by_lua*.  Returns true when nothing
-- was left behind.
function _M.exit_worker(timeout)
  if not client then
    return true
  end
  local ok, done = pcall(client.shutdown, client, timeout or EXIT_TIMEOUT)
  if not ok then
    failure("exit_worker", done)
    return false
  end
  local _, st = pcall(client.stats, client)
  st = type(st) == "table" and st or {}
  local lost = (st.failed or 0) + (st.dropped or 0)
  local line = fmt("exit: %d events delivered, %d failed, %d dropped, "
                   .. "%d left undelivered", st.accepted or 0,
                   st.failed or 0, st.dropped or 0, st.undelivered or 0)
  if done and lost == 0 then
    log(INFO, TAG, line)
  else
    log(WARN, TAG, line)
  end
  return done
end


return _M
