-- Time on the caller's thread for one observation: trace:generation{...}
-- plus :finish{...}, with the local test server reachable and the
-- background sender delivering meanwhile.
--
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/5.4/?.so;;" \
--     lua5.4 bench/caller_cost.lua URL
--
-- Each of BENCH_ITERATIONS (100,000) observations is timed on its own
-- with the monotonic clock; the cost of reading the clock (the median of
-- an empty timed loop) is taken off.  Prints the median and the 99th
-- percentile, and the mean thread CPU time per observation (which leaves
-- out time the thread was preempted).  The content is the end-to-end
-- benchmark's generation.  The queue is made large enough that nothing
-- is dropped and nothing waits: this measures recording, not the queue
-- policy.

local langfuse = require("langfuse")
local core = require("langfuse.core")

local clock = core.clock
local fmt = string.format
local sort = table.sort
local floor = math.floor

local URL = assert(arg[1], "usage: caller_cost.lua URL")
local ITERATIONS = tonumber(os.getenv("BENCH_ITERATIONS")) or 100000
-- Observations recorded first, untimed: warms caches, the JIT and the
-- connection.
local WARMUP = 5000
-- The target per observation, in microseconds.
local TARGET_US = 5


local function percentile(sorted, p)
  return sorted[math.max(1, floor(#sorted * p + 0.5))]
end


local function main()
  local client = assert(langfuse.new{
    public_key = "pk-lf-test", secret_key = "sk-lf-test", base_url = URL,
    queue_max_events = ITERATIONS + WARMUP + 1000,
    queue_max_bytes = 1024 * 1024 * 1024,
  })
  local trace = client:trace{ name = "caller-cost" }
  local input = {
    { role = "system", content = "You are a terse assistant." },
    { role = "user", content = "Question number 7: what is 6 times 7?" },
  }
  local output = { role = "assistant", content = "The answer is 42." }
  local params = { temperature = 0, maxTokens = 64 }
  local metadata = { bench = "caller", index = 7 }
  local usage = { input = 23, output = 7 }

  local function one()
    trace:generation{
      name = "bench-generation", model = "gpt-4o-mini",
      model_parameters = params, input = input, metadata = metadata,
    }:finish{ output = output, usage_details = usage }
  end

  for _ = 1, WARMUP do
    one()
  end

  local empty = {}
  for i = 1, 10001 do
    local t0 = clock()
    empty[i] = clock() - t0
  end
  sort(empty)
  local overhead = percentile(empty, 0.5)

  local times = {}
  local cpu0 = clock("thread")
  for i = 1, ITERATIONS do
    local t0 = clock()
    one()
    times[i] = clock() - t0 - overhead
  end
  local cpu = (clock("thread") - cpu0) / ITERATIONS
  sort(times)
  local median = percentile(times, 0.5) * 1e6
  local p99 = percentile(times, 0.99) * 1e6
  trace:finish()
  client:shutdown(60)
  local st = client:stats()
  print(fmt("%s: trace:generation{...}:finish{...} over %d observations: "
            .. "median %.2f us, p99 %.2f us, thread CPU %.2f us (target "
            .. "<= %d us: %s); dropped %d", jit and jit.version or _VERSION,
            ITERATIONS, median, p99, cpu * 1e6, TARGET_US,
            median <= TARGET_US and "met" or "not met", st.dropped))
end


main()
