-- Tests of langfuse.ngx against a real nginx: the example gateway in
-- examples/nginx, tracing to the local test server.
--
--   lua5.4 tests/nginx/nginx_test.lua ROOT WORK
--
-- Each test starts its own nginx (and, where it needs one, its own test
-- server), and after each one the error log must hold no line at level
-- error or worse.

local h = require("harness")

local fmt = string.format
local json = h.json

local root, work = arg[1], arg[2]
h.setup(root, work)

-- Requests per round in the field test, and rounds: the second round
-- runs on workers whose sender already runs.
local N = 16
local ROUNDS = 2
-- Seconds of the test server's delay before each answer in the slow
-- test; each proxied request must finish well within it.
local SLOW_DELAY = 2
-- Seconds a proxied request may take while Langfuse is slow or down:
-- far less than SLOW_DELAY, far more than a loopback request needs.
local PROMPT = 0.5
-- Seconds to wait for traces that should arrive.
local ARRIVAL_WAIT = 20

local server = h.start_server(0)


local function check(cond, ...)
  if not cond then
    error(fmt(...), 2)
  end
end


-- Starts the example gateway for this test; after it, nginx must have
-- logged no line at level error or worse, except those matching
-- allowed (a Lua pattern), of which there must be at least one.
local function gateway(extra, allowed)
  local env = {
    LANGFUSE_PUBLIC_KEY = "pk-lf-test",
    LANGFUSE_SECRET_KEY = "sk-lf-test",
    LANGFUSE_BASE_URL = server.url,
    LANGFUSE_FLUSH_INTERVAL = "0.1",
    LOG_LEVEL = "info",
  }
  for k, v in pairs(extra or {}) do
    env[k] = v
  end
  local g = h.start_gateway(env)
  h.defer(function()
    g:stop("QUIT", 30)
    local bad, seen = {}, 0
    for _, line in ipairs(g:bad_lines()) do
      if allowed and line:match(allowed) then
        seen = seen + 1
      else
        bad[#bad + 1] = line
      end
    end
    check(#bad == 0, "error log has %d bad lines:\n%s", #bad,
          table.concat(bad, "\n"))
    check(not allowed or seen > 0, "no line matches %s", allowed)
  end)
  return g
end


local function attr(span, key)
  return span.attributes[key]
end


-- A metadata value, whether sent flat (prefix.key) or as a JSON object.
local function meta(span, prefix, key)
  local v = span.attributes[prefix .. "." .. key]
  if v ~= nil then
    return v
  end
  local whole = span.attributes[prefix]
  if type(whole) == "string" then
    local ok, doc = pcall(json.decode, whole)
    if ok and type(doc) == "table" then
      return doc[key]
    end
  end
  return nil
end


local function generation_of(spans)
  local found
  for _, s in ipairs(spans) do
    if attr(s, "langfuse.observation.type") == "generation" then
      check(not found, "trace %s has two generations", s.traceId)
      found = s
    end
  end
  return found
end


local function seconds(nanos)
  return tonumber(nanos) / 1e9
end


-- The requests of one round: what to send and what the trace must say.
local function round_cases()
  local cases = {}
  for i = 1, N do
    local c = { model = "model-" .. (i % 3), text = ("word "):rep(i),
                headers = {}, level = nil, status = 200 }
    if i % 8 == 0 then
      c.headers["x-fake-status"] = "503"
      c.status, c.level = 503, "ERROR"
    elseif i % 8 == 4 then
      c.headers["x-fake-status"] = "429"
      c.status, c.level = 429, "WARNING"
    elseif i % 8 == 2 then
      c.headers["x-fake-delay"] = "0.15"
      c.delay = 0.15
    elseif i % 8 == 6 then
      c.stream = true
    end
    cases[i] = c
  end
  return cases
end


local function check_trace(c, spans)
  local g = generation_of(spans)
  check(g, "trace %s has no generation", c.id)
  check(attr(g, "langfuse.trace.name") == "POST /v1/chat/completions",
        "trace name %s", tostring(attr(g, "langfuse.trace.name")))
  check(meta(g, "langfuse.trace.metadata", "route")
        == "/v1/chat/completions", "route %s",
        tostring(meta(g, "langfuse.trace.metadata", "route")))
  check(attr(g, "langfuse.observation.model.name") == c.model,
        "model %s, expected %s",
        tostring(attr(g, "langfuse.observation.model.name")), c.model)
  local level = attr(g, "langfuse.observation.level")
  if c.level then
    check(level == c.level, "level %s, expected %s", tostring(level),
          c.level)
    local msg = attr(g, "langfuse.observation.status_message") or ""
    check(#msg > 0, "no status message for HTTP %d", c.status)
  else
    check(level == nil or level == "DEFAULT", "level %s for HTTP 200",
          tostring(level))
    local usage = json.decode(attr(g, "langfuse.observation.usage_details")
                              or "null")
    check(type(usage) == "table", "no usage for %s", c.id)
    check(usage.input == c.usage.prompt_tokens
          and usage.output == c.usage.completion_tokens
          and usage.total == c.usage.total_tokens,
          "usage %s, upstream said %s", json.encode(usage),
          json.encode(c.usage))
  end
  local t0 = seconds(g.startTimeUnixNano)
  local t1 = seconds(g.endTimeUnixNano)
  check(t1 >= t0, "generation ends before it starts")
  check(math.abs(t0 - c.sent) < 2, "start time %.3f, sent at %.3f", t0,
        c.sent)
  if c.delay then
    check(t1 - t0 >= c.delay - 0.01, "latency %.3f s, upstream waited %.2f",
          t1 - t0, c.delay)
  end
  -- nginx's clock has milliseconds; the client's wait includes more.
  check(t1 - t0 <= c.took + 0.002, "latency %.4f s, the client waited %.4f",
        t1 - t0, c.took)
end


-- Sends one round of cases; fills in id, usage and sent.
local function send_round(g, cases)
  for i, c in ipairs(cases) do
    c.sent = h.now()
    local status, doc, hdr, took = g:chat(c)
    c.took = took
    check(status == c.status, "request %d: status %s", i, tostring(status))
    c.id = hdr["x-request-id"]
    check(c.id and #c.id == 32, "request %d: no request id", i)
    if c.status == 200 and not c.stream then
      c.usage = doc.usage
    elseif c.stream then
      local usage = doc:match('"usage":(%b{})')
      c.usage = json.decode(usage)
    end
  end
end


h.test("N requests produce exactly N traces with the right fields",
       function()
  server:reset()
  local g = gateway()
  local seen = {}
  for round = 1, ROUNDS do
    local cases = round_cases()
    send_round(g, cases)
    local want = round * N
    local got = server:wait_traces(want, ARRIVAL_WAIT)
    check(got >= want, "round %d: %d traces of %d arrived", round, got, want)
    h.sleep(0.5)                       -- anything extra would show now
    local traces, n, dups = server:traces()
    check(n == want, "round %d: %d traces, expected %d", round, n, want)
    check(#dups == 0, "spans sent twice: %s", table.concat(dups, " "))
    for _, c in ipairs(cases) do
      check(traces[c.id], "no trace for request %s", c.id)
      check(not seen[c.id], "trace id %s reused", c.id)
      seen[c.id] = true
      check_trace(c, traces[c.id])
    end
  end
end)


-- Sends n plain requests; returns their trace ids.
local function send_plain(g, n)
  local ids = {}
  for i = 1, n do
    local status, _, hdr = g:chat{ text = "queued " .. i }
    check(status == 200, "request %d: status %s", i, tostring(status))
    ids[#ids + 1] = hdr["x-request-id"]
  end
  return ids
end


local function check_all_arrived(ids, label)
  local want = #ids
  local got = server:wait_traces(want, ARRIVAL_WAIT)
  check(got >= want, "%s: %d of %d traces arrived", label, got, want)
  local traces, n, dups = server:traces()
  check(n == want, "%s: %d traces, expected %d", label, n, want)
  check(#dups == 0, "%s: spans sent twice", label)
  for _, id in ipairs(ids) do
    check(traces[id], "%s: trace %s lost", label, id)
  end
end


-- The sender waits this long for companions, so events sent by the
-- test are still in its queue when the signal comes.
local QUEUED = { LANGFUSE_FLUSH_INTERVAL = "60", LANGFUSE_FLUSH_AT = "100000" }


h.test("HUP reload with events queued loses nothing", function()
  server:reset()
  local g = gateway(QUEUED)
  local before = g:workers()
  local ids = send_plain(g, 10)
  h.sleep(0.3)
  local _, n = server:traces()
  check(n == 0, "%d traces arrived before the reload: not queued", n)

  check(g:signal("HUP"), "could not send HUP")
  check_all_arrived(ids, "after HUP")
  -- The old workers are gone, new ones serve.
  local gone = h.wait_for(function()
    for _, old in ipairs(before) do
      if h.sh(fmt("kill -0 %d 2>/dev/null", old)) then
        return false
      end
    end
    return true
  end, 10)
  check(gone, "old workers still run after the reload")
  check(g:alive(), "the master died on HUP")

  local more = send_plain(g, 5)
  for _, id in ipairs(more) do
    ids[#ids + 1] = id
  end
  check(g:stop("QUIT"), "nginx did not exit on QUIT")
  check_all_arrived(ids, "after QUIT")
end)


h.test("QUIT with events queued loses nothing", function()
  server:reset()
  local g = gateway(QUEUED)
  local ids = send_plain(g, 12)
  h.sleep(0.3)
  local _, n = server:traces()
  check(n == 0, "%d traces arrived before QUIT: not queued", n)
  check(g:stop("QUIT"), "nginx did not exit on QUIT")
  check_all_arrived(ids, "after QUIT")
end)


h.test("TERM with events queued loses nothing", function()
  server:reset()
  local g = gateway(QUEUED)
  local ids = send_plain(g, 12)
  h.sleep(0.3)
  check(g:stop("TERM"), "nginx did not exit on TERM")
  check_all_arrived(ids, "after TERM")
end)


-- Sends n requests and checks each finished promptly.
local function send_prompt(g, n, label)
  local ids, worst = {}, 0
  for i = 1, n do
    local status, _, hdr, took = g:chat{ text = label .. " " .. i }
    check(status == 200, "%s request %d: status %s", label, i,
          tostring(status))
    check(took < PROMPT, "%s request %d took %.3f s", label, i, took)
    if took > worst then
      worst = took
    end
    ids[#ids + 1] = hdr["x-request-id"]
    h.sleep(0.02)                    -- spread over several batches
  end
  return ids, worst
end


-- Stops the test server until the test restarts it, or until the test
-- ends.
local function server_down()
  server:stop()
  h.defer(function()
    if not server.pid then
      server:restart()
    end
  end)
end


h.test("a slow Langfuse server leaves requests fast; events arrive",
       function()
  server:reset()
  server:faults{ delay_all = SLOW_DELAY }
  h.defer(function() server:faults{ delay_all = 0 } end)
  local g = gateway()
  local ids, worst = send_prompt(g, 20, "slow")
  print(fmt("  slowest request %.1f ms with the server %d s slow",
            worst * 1000, SLOW_DELAY))
  server:faults{ delay_all = 0 }
  check_all_arrived(ids, "slow server")
end)


h.test("a Langfuse server down leaves requests fast; events arrive " ..
       "when it is back", function()
  server:reset()
  -- Enough retries to outlast the outage below.
  local g = gateway{
    LANGFUSE_INIT_OPTS = "max_retries = 10, backoff_base = 0.5, " ..
                         "backoff_max = 2",
  }
  server_down()
  local ids, worst = send_prompt(g, 20, "down")
  print(fmt("  slowest request %.1f ms with the server down",
            worst * 1000))
  h.sleep(1)
  server:restart()
  check_all_arrived(ids, "server back")
end)


h.test("with a spool, traces recorded while Langfuse is down outlive " ..
       "nginx and arrive when both are back, with no new request",
       function()
  server:reset()
  local opts = {
    LANGFUSE_INIT_OPTS = fmt('spool_dir = "%s/spool", max_retries = 1, ' ..
                             'backoff_base = 0.05, backoff_max = 0.1', work),
    EXIT_TIMEOUT = "1",
  }
  server_down()
  local g = gateway(opts)
  local ids, worst = send_prompt(g, 12, "spooled")
  print(fmt("  slowest request %.1f ms with the server down and a spool",
            worst * 1000))
  check(g:stop("QUIT"), "nginx did not exit on QUIT")
  check(h.sh(fmt("ls %s/spool/seg-* >/dev/null 2>&1", work)),
        "no segment in the spool after QUIT with the server down")
  server:restart()
  local _, n = server:traces()
  check(n == 0, "%d traces arrived while the server was down", n)
  gateway(opts)
  check_all_arrived(ids, "spool replayed by the next nginx")
end)


h.test("with a spool, workers killed with events queued lose nothing: " ..
       "the workers nginx starts again send them", function()
  server:reset()
  local g = gateway({
    LANGFUSE_INIT_OPTS = fmt('spool_dir = "%s/spool-kill"', work),
    LANGFUSE_FLUSH_INTERVAL = "60", LANGFUSE_FLUSH_AT = "100000",
  }, "exited on signal 9")
  local before = g:workers()
  local ids = send_plain(g, 12)
  h.sleep(0.3)
  local _, n = server:traces()
  check(n == 0, "%d traces arrived before the kill: not queued", n)
  for _, pid in ipairs(before) do
    h.sh(fmt("kill -KILL %d", pid))
  end
  check_all_arrived(ids, "after KILL")
  check(g:alive(), "the master died")
end)


h.test("a long stream keeps its usage; a JSON answer over " ..
       "max_body_bytes is recorded without it", function()
  server:reset()
  local g = gateway{ LANGFUSE_INIT_OPTS = "max_body_bytes = 4096" }
  local big = { ["x-fake-words"] = "3000" }
  local s1, text, h1 = g:chat{ stream = true, headers = big }
  check(s1 == 200 and #text > 8 * 4096, "stream: %s, %d bytes",
        tostring(s1), #tostring(text))
  local s2, doc, h2 = g:chat{ headers = big }
  check(s2 == 200 and doc.usage, "json: %s", tostring(s2))
  local ids = { h1["x-request-id"], h2["x-request-id"] }
  check_all_arrived(ids, "large answers")
  local traces = server:traces()
  local gs = generation_of(traces[ids[1]])
  local usage = json.decode(attr(gs, "langfuse.observation.usage_details"))
  check(usage.output == 3000, "stream usage %s", json.encode(usage))
  local gj = generation_of(traces[ids[2]])
  check(attr(gj, "langfuse.observation.usage_details") == nil,
        "usage read from a cut answer")
  check(meta(gj, "langfuse.observation.metadata", "body_truncated"),
        "no body_truncated mark")
end)


h.test("a user header that is not UTF-8 is recorded mended; a prompt " ..
       "that is not is left out, and the trace says so", function()
  server:reset()
  local g = gateway()
  local _, _, hdr = g:chat{ headers = { ["x-user-id"] = "bad \255 id" } }
  local id = hdr["x-request-id"]
  local _, _, hdr2 = g:chat{ text = "broken \255 prompt" }
  local id2 = hdr2["x-request-id"]
  check_all_arrived({ id, id2 }, "bad bytes")
  local traces = server:traces()
  local gen = generation_of(traces[id])
  check(attr(gen, "user.id") == "bad \239\191\189 id", "user.id %s",
        tostring(attr(gen, "user.id")))
  check(attr(gen, "langfuse.observation.usage_details"), "no usage")
  local gen2 = generation_of(traces[id2])
  check(attr(gen2, "langfuse.observation.input") == nil,
        "a prompt that is not UTF-8 was sent")
  check(attr(gen2, "langfuse.observation.usage_details"), "no usage")
  check(meta(gen2, "langfuse.observation.metadata", "left_out")
        == "the prompt: not valid UTF-8", "left_out %s",
        tostring(meta(gen2, "langfuse.observation.metadata", "left_out")))
end)


h.test("a score recorded from content_by_lua arrives", function()
  server:reset()
  local g = gateway()
  local _, _, hdr = g:chat{ text = "rate me" }
  local id = hdr["x-request-id"]
  local body = json.encode({ trace_id = id, value = 1, comment = "good" })
  local status, text = h.request("POST", g.url .. "/v1/feedback", body)
  check(status == 202, "feedback: %s %s", tostring(status), tostring(text))
  local bad = h.request("POST", g.url .. "/v1/feedback", "{}")
  check(bad == 400, "a bad document got %s", tostring(bad))
  local ev = h.wait_for(function()
    for _, e in ipairs(server:events().events) do
      if e.type == "score-create" then
        return e
      end
    end
  end, ARRIVAL_WAIT)
  check(ev, "no score arrived")
  check(ev.body.traceId == id and ev.body.value == 1
        and ev.body.name == "user-feedback", "score %s", json.encode(ev))
end)


h.test("a full queue drops and counts; requests stay fast; the log " ..
       "says so in warnings", function()
  local g = gateway{
    LANGFUSE_BASE_URL = "http://127.0.0.1:9",     -- nothing listens
    LANGFUSE_INIT_OPTS = "queue_max_events = 4, max_retries = 0, " ..
                         "report_interval = 0.2",
  }
  send_prompt(g, 30, "full")
  local dropped = h.wait_for(function()
    local total = 0
    for _ = 1, 8 do
      local _, body = h.request("GET", g.url .. "/_langfuse/stats")
      total = math.max(total, json.decode(body).dropped or 0)
    end
    return total > 0 and total
  end, 5)
  check(dropped, "no drop counted")
  h.sleep(0.5)
  local log = g:error_log()
  check(log:match("%[warn%][^\n]*%[langfuse%][^\n]*queue full"),
        "no warning about the full queue")
end)


h.test("a bad configuration turns tracing off; nginx still serves",
       function()
  local g = gateway({ LANGFUSE_PUBLIC_KEY = "" },
                    "%[langfuse%] tracing off: .*public key")
  send_plain(g, 3)
end)


h.test("the gateway works with tracing turned off", function()
  server:reset()
  local g = gateway{ LANGFUSE_TRACING_ENABLED = "false" }
  send_plain(g, 5)
  check(g:stop("QUIT"), "nginx did not exit on QUIT")
  local _, n = server:traces()
  check(n == 0, "%d traces arrived with tracing off", n)
end)


server:stop()
os.exit(h.finish() and 0 or 1)
