-- A process for the crash test (tests/run-crash-test) to kill: it
-- records events through a client with a spool while the server is
-- down, and after each call that returned it writes the ids the call
-- took to a file, one line each, flushed at once:
--
--   s <span id>    an observation whose finish returned
--   e <event id>   an event of an upload_events_batch call that returned
--                  with the event kept in the spool
--   x <event id>   such an event NOT kept in the spool (a test failure)
--
--   lua5.4 tests/crash/victim.lua URL SPOOL_DIR IDS_FILE SEED
--
-- It runs until it is killed (or CRASH_VICTIM_MAX_SECONDS, 30, pass).

local langfuse = require("langfuse")
local core = require("langfuse.core")
local socket = require("socket")

local URL, DIR, IDS, SEED = arg[1], arg[2], arg[3], tonumber(arg[4])
assert(URL and DIR and IDS and SEED, "usage: victim.lua URL DIR IDS SEED")

-- Seconds this victim lives at most if nobody kills it.
local MAX_SECONDS = tonumber(os.getenv("CRASH_VICTIM_MAX_SECONDS")) or 30
-- Events recorded between two pauses, and the pause in seconds: keeps
-- the spool at a size the test server replays in a few seconds.
local BURST = 6
local PAUSE = 0.002

local out = assert(io.open(IDS, "a"))
out:setvbuf("no")

math.randomseed(SEED)
local client = assert(langfuse.new{
  public_key = "pk-lf-test", secret_key = "sk-lf-test", base_url = URL,
  spool_dir = DIR,
  -- small segments and a small queue: rotations and the spool-only path
  -- happen many times in each victim's short life
  spool_segment_bytes = 4096 * math.random(1, 4),
  queue_max_events = math.random(5, 200),
  flush_interval = 0.05, flush_at = 50,
  max_retries = 0, backoff_base = 0.01, backoff_max = 0.05,
  timeout = 2,
  on_error = function() end,
})

local seq = 0
local start = core.clock()


local function record_spans()
  local trace = client:trace{ name = "crash-victim" }
  for i = 1, math.random(1, 4) do
    local span = trace:span{ name = "step " .. i, input = { n = i } }
    span:finish{ output = "done" }
    out:write("s ", span.id, "\n")
  end
  trace:finish()
end


local function upload_batch()
  local events = {}
  for i = 1, math.random(1, 5) do
    seq = seq + 1
    local id = string.format("crash-%d-%d-%d", SEED, seq, i)
    events[i] = {
      id = id, type = "trace-create",
      timestamp = "2026-12-03T10:00:00.000Z",
      body = { id = "trace-" .. id, name = "crash batch" },
    }
  end
  local ok, err = client:upload_events_batch(events)
  if ok then
    for _, e in ipairs(events) do
      out:write("e ", e.id, "\n")
    end
    return
  end
  for _, f in ipairs(err.failed) do
    out:write(f.spooled and "e " or "x ", f.id, "\n")
  end
end


while core.clock() - start < MAX_SECONDS do
  for _ = 1, BURST do
    if math.random() < 0.8 then
      record_spans()
    else
      upload_batch()
    end
  end
  socket.sleep(PAUSE)
end
client:shutdown(1)
