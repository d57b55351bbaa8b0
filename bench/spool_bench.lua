-- The spool under load: BENCH_SPOOL_EVENTS (1,000,000) events recorded
-- with spool_dir set while the server is down, with a small queue bound,
-- then replayed once the server is up; the same events then sent the
-- normal way (no spool, server up) for comparison.  Also the caller's
-- cost of recording with and without the spool.
--
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/5.4/?.so;;" \
--     lua5.4 bench/spool_bench.lua URL SPOOL_DIR READY_FILE
--
-- URL is where the test server will listen; nothing may listen there
-- when this starts.  After recording, this writes READY_FILE and waits
-- for the server to come up (tools/run-bench starts it), then measures
-- the replay.  Prints one JSON line with the figures on stdout, and a
-- readable report on stderr.

local langfuse = require("langfuse")
local core = require("langfuse.core")
local cjson = require("cjson")
local http = require("socket.http")
local ltn12 = require("ltn12")
local socket = require("socket")

local clock = core.clock
local fmt = string.format

local URL, DIR, READY = arg[1], arg[2], arg[3]
assert(URL and DIR and READY, "usage: spool_bench.lua URL DIR READY_FILE")

local EVENTS = tonumber(os.getenv("BENCH_SPOOL_EVENTS")) or 1000000
-- Spans per trace; the trace's root span makes one more event.
local SPANS = 9
-- The queue bound of the spooled client: small, so that nearly
-- everything goes to the spool.
local QUEUE_EVENTS = 1000
local QUEUE_BYTES = 1024 * 1024
-- Events timed for the caller's cost, each way.
local COST_EVENTS = tonumber(os.getenv("BENCH_SPOOL_COST_EVENTS")) or
                    100000
-- Seconds to wait for the server, and for a delivery to complete.
local SERVER_WAIT = 30
local DELIVERY_WAIT = tonumber(os.getenv("BENCH_SPOOL_WAIT")) or 300
-- Seconds without progress after which a delivery is given up.
local STALL_WAIT = 30


local function log(...)
  io.stderr:write(fmt(...), "\n")
end


local function status_kb(field)
  local f = assert(io.open("/proc/self/status"))
  local text = f:read("a")
  f:close()
  return tonumber(text:match(field .. ":%s*(%d+)"))
end


local function call(method, path)
  local out = {}
  local ok, code = http.request{
    url = URL .. path, method = method, sink = ltn12.sink.table(out),
    source = method == "POST" and ltn12.source.string("{}") or nil,
    headers = method == "POST" and { ["content-length"] = "2" } or nil,
  }
  if not ok or code ~= 200 then
    return nil
  end
  return cjson.decode(table.concat(out))
end


-- Distinct span ids and spans the server holds.
local function server_spans()
  local st = call("GET", "/_test/stats")
  return st and st.distinct_span_ids or 0, st and st.spans or 0
end


-- Records n events (traces of SPANS spans plus the root).
local function record(client, n)
  local traces = math.floor(n / (SPANS + 1))
  for i = 1, traces do
    local trace = client:trace{ name = "spool-bench" }
    for j = 1, SPANS do
      trace:span{ name = "step", metadata = { i = i, j = j } }:finish()
    end
    trace:finish()
  end
  return traces * (SPANS + 1)
end


-- Polls until the server holds want distinct spans; returns the seconds
-- it took from t0, or nil on timeout or when nothing moves for a while.
local function wait_delivered(want, t0)
  local deadline = clock() + DELIVERY_WAIT
  local last, moved = -1, clock()
  while clock() < deadline and clock() - moved < STALL_WAIT do
    local have = server_spans()
    if have >= want then
      return clock() - t0
    end
    if have ~= last then
      last, moved = have, clock()
    end
    socket.sleep(0.05)
  end
  log("delivery stopped at %d of %d spans", last, want)
  return nil
end


local function new_client(opts)
  local o = {
    public_key = "pk-lf-test", secret_key = "sk-lf-test", base_url = URL,
    on_error = function() end,
  }
  for k, v in pairs(opts) do
    o[k] = v
  end
  return assert(langfuse.new(o))
end


-- Microseconds per event on the caller's thread, server up: wall time,
-- and the thread's CPU time (which leaves out time it was preempted or
-- waited for a lock the sender thread held).
local function caller_cost(opts)
  local client = new_client(opts)
  record(client, 10000)                 -- warm up
  local t0, c0 = clock(), clock("thread")
  local n = record(client, COST_EVENTS)
  local us = (clock() - t0) / n * 1e6
  local cpu = (clock("thread") - c0) / n * 1e6
  client:shutdown(60)
  return us, cpu
end


local function main()
  assert(not call("GET", "/_test/health"), "a server already listens")
  collectgarbage()
  local base_rss = status_kb("VmRSS")

  -- 1. the server is down: everything goes to the spool
  local client = new_client{
    spool_dir = DIR, queue_max_events = QUEUE_EVENTS,
    queue_max_bytes = QUEUE_BYTES, max_retries = 0,
    backoff_base = 0.05, backoff_max = 0.2,
  }
  local t0 = clock()
  local n = record(client, EVENTS)
  local rec_s = clock() - t0
  local st = client:stats()
  local hwm = status_kb("VmHWM")
  log("recorded %d events with the server down in %.1f s (%.2f us "
      .. "each): %d spooled, %d of them in the spool only, %d dropped",
      n, rec_s, rec_s / n * 1e6, st.spooled, st.spool_only, st.dropped)
  log("peak RSS %.1f MB (%.1f MB before the client), queue bound %d "
      .. "events / %.1f MB; spool %.0f MB on disk", hwm / 1024,
      base_rss / 1024, QUEUE_EVENTS, QUEUE_BYTES / 1048576,
      st.spool_bytes / 1048576)

  -- 2. the server comes up: the sender replays the spool
  local f = assert(io.open(READY, "w"))
  f:close()
  local deadline = clock() + SERVER_WAIT
  while not call("GET", "/_test/health") and clock() < deadline do
    socket.sleep(0.02)
  end
  local up = clock()
  local replay_s = wait_delivered(n, up)
  local _, replay_total = server_spans()
  st = client:stats()
  client:shutdown(30)
  local replay_hwm = status_kb("VmHWM")
  log("replayed %d events in %s s (%s events/s), %d duplicates; peak "
      .. "RSS %.1f MB", st.replay_delivered,
      replay_s and fmt("%.1f", replay_s) or "timeout",
      replay_s and fmt("%.0f", n / replay_s) or "-", replay_total - n,
      replay_hwm / 1024)

  -- 3. the same events, sent the normal way
  call("POST", "/_test/reset")
  -- the "block" policy keeps every event: the caller waits for room
  local plain = new_client{ queue_max_events = 100000,
                            queue_max_bytes = 256 * 1024 * 1024,
                            queue_full_policy = "block",
                            queue_block_timeout = 60 }
  t0 = clock()
  record(plain, EVENTS)
  local send_s = wait_delivered(n, t0)
  plain:shutdown(30)
  log("sent the same %d events without a spool in %s s (%s events/s)",
      n, send_s and fmt("%.1f", send_s) or "timeout",
      send_s and fmt("%.0f", n / send_s) or "-")
  call("POST", "/_test/reset")

  -- 4. the caller's cost, server up
  local cost_plain, cpu_plain = caller_cost{ queue_max_events = COST_EVENTS * 2,
                                  queue_max_bytes = 512 * 1024 * 1024 }
  call("POST", "/_test/reset")
  os.execute("rm -rf '" .. DIR .. "-cost'")
  local cost_spool, cpu_spool = caller_cost{ spool_dir = DIR .. "-cost",
                                  queue_max_events = COST_EVENTS * 2,
                                  queue_max_bytes = 512 * 1024 * 1024 }
  os.execute("rm -rf '" .. DIR .. "-cost'")
  log("caller's cost per event: %.2f us with the spool (fsync batch), "
      .. "%.2f us without (x%.2f); thread CPU %.2f us and %.2f us",
      cost_spool, cost_plain, cost_spool / cost_plain, cpu_spool,
      cpu_plain)

  print(cjson.encode{
    events = n, record_s = rec_s, peak_rss_mb = hwm / 1024,
    base_rss_mb = base_rss / 1024, queue_events = QUEUE_EVENTS,
    queue_mb = QUEUE_BYTES / 1048576, spool_only = st.spool_only,
    replay_s = replay_s or -1, replay_per_s = replay_s and n / replay_s
    or 0, duplicates = replay_total - n, send_s = send_s or -1,
    send_per_s = send_s and n / send_s or 0,
    cost_spool_us = cost_spool, cost_plain_us = cost_plain,
    cpu_spool_us = cpu_spool, cpu_plain_us = cpu_plain,
  })
end

main()
