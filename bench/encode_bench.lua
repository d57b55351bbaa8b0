-- Validate+encode throughput of langfuse.core against lua-cjson.
--
-- Builds BENCH_EVENTS (100,000) realistic generation-create events, then
-- times, over BENCH_ROUNDS rounds (best round wins):
--   cjson.encode({batch = events})     encoding only, no checks
--   core.encode_batch(events)          schema validation + encoding
--   core.validate(events)              validation alone (for reference)
-- and prints events/s for each and the ratio of the first two.
--
--   LUA_CPATH="build/5.4/?.so;;" lua5.4 bench/encode_bench.lua
--   LUA_CPATH="build/jit/?.so;;" luajit bench/encode_bench.lua

local core = require("langfuse.core")
local cjson = require("cjson")

local clock = os.clock
local collectgarbage = collectgarbage
local floor = math.floor
local format = string.format
local tonumber = tonumber

-- Events per round and rounds, overridable from the environment.
local EVENTS = tonumber(os.getenv("BENCH_EVENTS")) or 100000
local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS")) or 5

-- The throughput ratio the encoder is expected to reach over cjson.
local TARGET_RATIO = 1.5

local SYSTEM_PROMPT = "You are a helpful assistant. Answer questions "
  .. "about the weather briefly, in the user's language, and say when "
  .. "you are not sure."


local function iso(base, ms)
  return format("2024-05-01T12:%02d:%02d.%03d000Z", floor(base / 60) % 60,
                base % 60, ms % 1000)
end


local function uuid(i, salt)
  return format("%08x-%04x-4%03x-8%03x-%012x", i, salt, i % 4096,
                (i * 7) % 4096, i * 7919)
end


-- One generation-create event as an SDK would queue it.
local function make_event(i)
  local t = i % 3600
  return {
    id = uuid(i, 1),
    type = "generation-create",
    timestamp = iso(t, i),
    body = {
      id = uuid(i, 2),
      traceId = uuid(floor(i / 10), 3),
      parentObservationId = uuid(i, 4),
      name = "chat-completion",
      startTime = iso(t, i),
      completionStartTime = iso(t, i + 180),
      endTime = iso(t + 1, i + 20),
      model = "gpt-4o-mini",
      modelParameters = { temperature = 0.7, max_tokens = 512, top_p = 0.9 },
      input = {
        { role = "system", content = SYSTEM_PROMPT },
        { role = "user", content = "What is the weather like in city "
          .. i .. " today? \"Short\" answers, please." },
      },
      output = {
        role = "assistant",
        content = "Sunny with a light breeze in city " .. i
          .. ", around 21 \u{b0}C this afternoon.",
      },
      usageDetails = {
        input = 40 + i % 100, output = 15 + i % 50,
        total = 55 + i % 100 + i % 50, input_cached_tokens = i % 2 * 32,
      },
      costDetails = { input = 0.0000063, output = 0.0000102,
                      total = 0.0000165 },
      metadata = {
        user = "user-" .. i % 1000, region = "eu-west-1",
        tags = { "prod", "chat" }, attempt = 1,
      },
      level = "DEFAULT",
      environment = "production",
      version = "1.4.2",
    },
  }
end


-- Best CPU time of fn over ROUNDS rounds, and the size of the string
-- it returned.
local function best_of(fn)
  local best, size = math.huge, 0
  for _ = 1, ROUNDS do
    collectgarbage("collect")
    local t0 = clock()
    local out = fn()
    local dt = clock() - t0
    if dt < best then
      best = dt
    end
    size = #out
  end
  return best, size
end


-- Checks that every event validates and both encoders agree.
local function check(events)
  local json, count, problems = core.encode_batch(events)
  assert(count == EVENTS and #problems == 0,
         "events do not validate: " .. (problems[1] and
           problems[1].path .. ": " .. problems[1].message or "?"))
  local ours = cjson.decode(json)
  local theirs = cjson.decode(cjson.encode({ batch = events }))
  assert(#ours.batch == #theirs.batch
         and ours.batch[EVENTS].body.id == theirs.batch[EVENTS].body.id,
         "outputs differ")
end


local function main()
  local interp = jit and jit.version or _VERSION
  local events = {}
  for i = 1, EVENTS do
    events[i] = make_event(i)
  end
  check(events)

  local t_cjson, n_cjson = best_of(function()
    return cjson.encode({ batch = events })
  end)
  local t_core, n_core = best_of(function()
    return (core.encode_batch(events))
  end)
  local t_validate = best_of(function()
    return core.validate(events) and "" or nil
  end)

  local rate_cjson = EVENTS / t_cjson
  local rate_core = EVENTS / t_core
  print(format("%s: %d generation-create events, best of %d rounds",
               interp, EVENTS, ROUNDS))
  print(format("  %-34s %10.0f events/s  %6.3f s  %5.1f MB",
               "cjson.encode({batch = events})", rate_cjson, t_cjson,
               n_cjson / 1e6))
  print(format("  %-34s %10.0f events/s  %6.3f s  %5.1f MB",
               "core.encode_batch(events)", rate_core, t_core,
               n_core / 1e6))
  print(format("  %-34s %10.0f events/s  %6.3f s",
               "core.validate(events)", EVENTS / t_validate, t_validate))
  print(format("  ratio encode_batch / cjson: %.2fx (target %.1fx)",
               rate_core / rate_cjson, TARGET_RATIO))
end


main()
