-- The second half of the crash test (tests/run-crash-test): a new
-- process on the spool the killed victims left, with the server up.  It
-- reads the ids each victim said it had been given back, starts a
-- client on the spool (which replays it), waits until the server holds
-- every one of those ids, and prints one line per check and then
-- "N passed, N failed".
--
--   lua5.4 tests/crash/replay.lua URL SPOOL_DIR IDS_FILE...

local langfuse = require("langfuse")
local core = require("langfuse.core")
local http = require("socket.http")
local socket = require("socket")
local cjson = require("cjson")

local URL, DIR = arg[1], arg[2]
assert(URL and DIR and arg[3], "usage: replay.lua URL DIR IDS_FILE...")

-- Seconds the replay may take at most.
local DEADLINE = tonumber(os.getenv("CRASH_REPLAY_SECONDS")) or 30

local passed, failed = 0, 0


local function check(ok, what)
  if ok then
    passed = passed + 1
    print("ok - " .. what)
  else
    failed = failed + 1
    print("not ok - " .. what)
  end
end


-- The ids in one victim's file; a last line without its newline was cut
-- by the kill and does not count.
local function read_ids(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  local spans, events, unspooled = {}, {}, {}
  for kind, id in text:gmatch("([sex]) ([%w%-]+)\n") do
    if kind == "s" then
      spans[#spans + 1] = id
    elseif kind == "e" then
      events[#events + 1] = id
    else
      unspooled[#unspooled + 1] = id
    end
  end
  return spans, events, unspooled
end


-- The server's counts per id: spans by span id, events by event id.
local function counts(route)
  local body, code = http.request(URL .. "/_test/" .. route ..
                                  "?since=1000000000")
  assert(code == 200, "test server: " .. tostring(code))
  return cjson.decode(body).counts
end


local function missing(ids, have)
  local n, first = 0, nil
  for _, id in ipairs(ids) do
    if not have[id] then
      n = n + 1
      first = first or id
    end
  end
  return n, first
end


local victims, all_spans, all_events = {}, {}, {}
for i = 3, #arg do
  local spans, events, unspooled = read_ids(arg[i])
  victims[#victims + 1] = { file = arg[i], spans = spans,
                            events = events, unspooled = unspooled }
  for _, id in ipairs(spans) do
    all_spans[#all_spans + 1] = id
  end
  for _, id in ipairs(events) do
    all_events[#all_events + 1] = id
  end
end
print(string.format("# %d victims said they were given %d spans and %d "
                    .. "events", #victims, #all_spans, #all_events))

local t0 = core.clock()
local client = assert(langfuse.new{
  public_key = "pk-lf-test", secret_key = "sk-lf-test", base_url = URL,
  spool_dir = DIR, flush_interval = 0.05, backoff_base = 0.05,
  backoff_max = 0.5,
})
-- Records still in the spool, ours included until they are acked.
local function pending()
  local sp = assert(core.spool_open(DIR))
  local n = sp:status().records_pending
  sp:close()
  return n
end

local spans, events
repeat
  socket.sleep(0.2)
  spans, events = counts("spans"), counts("events")
until (missing(all_spans, spans) == 0 and missing(all_events, events) == 0
       and pending() == 0) or core.clock() - t0 > DEADLINE
local took = core.clock() - t0
local st = client:stats()
client:shutdown(5)
print(string.format("# replay took %.1f s: %d records replayed, %d "
                    .. "delivered", took, st.replayed or 0,
                    st.replay_delivered or 0))

local dups = 0
for _, v in ipairs(victims) do
  local ms, fs = missing(v.spans, spans)
  local me, fe = missing(v.events, events)
  check(ms == 0 and me == 0 and #v.unspooled == 0, string.format(
        "%s: %d spans and %d events delivered, %d missing%s%s", v.file,
        #v.spans, #v.events, ms + me,
        (fs or fe) and " (first " .. (fs or fe) .. ")" or "",
        #v.unspooled > 0 and (", " .. #v.unspooled .. " not spooled")
        or ""))
  for _, id in ipairs(v.spans) do
    dups = dups + ((spans[id] or 1) - 1)
  end
  for _, id in ipairs(v.events) do
    dups = dups + ((events[id] or 1) - 1)
  end
end
print(string.format("# %d duplicates on the server (allowed)", dups))
check(#all_spans + #all_events > 0, "the victims recorded something")
check(took <= DEADLINE, string.format("replay within %d s", DEADLINE))

local sp = assert(core.spool_open(DIR))
local status = sp:status()
sp:close()
check(status.records_pending == 0, string.format(
      "nothing left in the spool (%d records pending, %d quarantined)",
      status.records_pending, status.quarantined))

print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
