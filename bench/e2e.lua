-- End-to-end throughput of lua-langfuse against the local test server:
-- BENCH_TRACES traces (100,000), each with one generation, recorded
-- through the builders and delivered by the background sender.
--
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/5.4/?.so;;" \
--     lua5.4 bench/e2e.lua URL [TRACES]
--
-- Prints one JSON line on stdout: events sent (each trace is two spans,
-- the trace's own and its generation's, as the JS benchmark's two
-- events), seconds from the first record to the end of shutdown,
-- events/s, peak RSS (VmHWM), CPU seconds, and from the server's
-- counters the duplicates and the lost events.  The caller resets the
-- server before the run.
--
-- The content of each trace matches bench/js/e2e.mjs (same names,
-- messages, metadata, usage), so the two runs send the same data.
-- Settings, each from the environment: BENCH_PROTOCOL (otlp), BENCH_GZIP
-- (1), BENCH_FLUSH_AT (512).  The queue uses the block policy, the one
-- for a batch job that must not lose events: when the server falls
-- behind, the producer waits instead of dropping.

local langfuse = require("langfuse")
local core = require("langfuse.core")
local cjson = require("cjson")
local http = require("socket.http")

local clock = core.clock
local fmt = string.format
local tonumber = tonumber
local getenv = os.getenv

local URL = assert(arg[1], "usage: e2e.lua URL [TRACES]")
local TRACES = tonumber(arg[2] or getenv("BENCH_TRACES")) or 100000
local PROTOCOL = getenv("BENCH_PROTOCOL") or "otlp"
local GZIP = (getenv("BENCH_GZIP") or "1") ~= "0"
local FLUSH_AT = tonumber(getenv("BENCH_FLUSH_AT")) or 512

-- Seconds shutdown may take to deliver what is queued.
local SHUTDOWN_WAIT = 600
-- Events each trace produces (the trace's span, the generation's).
local EVENTS_PER_TRACE = 2


-- Peak resident set of this process in MB, from /proc.
local function peak_rss_mb()
  local f = io.open("/proc/self/status")
  if not f then
    return nil
  end
  local text = f:read("a")
  f:close()
  local kb = text:match("VmHWM:%s*(%d+)")
  return kb and tonumber(kb) / 1024 or nil
end


local function server_stats()
  local body, code = http.request(URL .. "/_test/stats")
  assert(code == 200, "GET /_test/stats: " .. tostring(code))
  return cjson.decode(body)
end


local function record(client, i)
  local trace = client:trace{
    name = "bench-trace",
    user_id = "user-" .. i % 100,
    session_id = "session-" .. i % 1000,
    tags = { "bench", "e2e" },
    metadata = { bench = "e2e", index = i },
  }
  trace:generation{
    name = "bench-generation",
    model = "gpt-4o-mini",
    model_parameters = { temperature = 0, maxTokens = 64 },
    input = {
      { role = "system", content = "You are a terse assistant." },
      { role = "user", content = "Question number " .. i
        .. ": what is 6 times 7?" },
    },
    metadata = { bench = "e2e", index = i },
  }:finish{
    output = { role = "assistant", content = "The answer is 42." },
    usage_details = { input = 23, output = 7 },
  }
  trace:finish()
end


local function main()
  local failures = 0
  local client = assert(langfuse.new{
    public_key = "pk-lf-test", secret_key = "sk-lf-test", base_url = URL,
    protocol = PROTOCOL, gzip = GZIP, flush_at = FLUSH_AT,
    queue_full_policy = "block", queue_block_timeout = 60,
    queue_max_events = tonumber(getenv("BENCH_QUEUE_EVENTS")) or 10000,
    on_error = function(err)
      failures = failures + #err.failed
    end,
  })
  local cpu0 = os.clock()
  local t0 = clock()
  local caller0 = clock("thread")
  for i = 1, TRACES do
    record(client, i)
  end
  local caller = clock("thread") - caller0
  local recorded = clock() - t0
  local done = client:shutdown(SHUTDOWN_WAIT)
  local seconds = clock() - t0
  local cpu = os.clock() - cpu0
  local st = client:stats()
  local events = TRACES * EVENTS_PER_TRACE
  local result = {
    sdk = "langfuse-lua",
    interp = jit and jit.version or _VERSION,
    protocol = PROTOCOL,
    gzip = GZIP,
    flush_at = FLUSH_AT,
    traces = TRACES,
    events_sent = events,
    seconds = tonumber(fmt("%.3f", seconds)),
    record_seconds = tonumber(fmt("%.3f", recorded)),
    events_per_s = math.floor(events / seconds + 0.5),
    peak_rss_mb = tonumber(fmt("%.1f", peak_rss_mb() or 0)),
    cpu_s = tonumber(fmt("%.3f", cpu)),
    caller_us_per_trace = tonumber(fmt("%.2f", caller / TRACES * 1e6)),
    shutdown_complete = done,
    requests = st.requests,
    retried = st.retried,
    dropped = st.dropped,
    failed = st.failed + failures,
  }
  local server = server_stats()
  local stored, distinct
  if PROTOCOL == "otlp" then
    stored, distinct = server.spans, server.distinct_span_ids
  else
    stored, distinct = server.events, server.distinct_event_ids
  end
  result.server_events = stored
  result.duplicates = stored - distinct
  result.lost = events - distinct
  io.write(cjson.encode(result), "\n")
end


main()
