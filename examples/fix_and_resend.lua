-- Inspect, fix and resend: upload a batch where some events are wrong
-- and the server is unreliable, then handle each kind of failure.
--
--   lua5.4 examples/fix_and_resend.lua      (keys and host from the env)

local langfuse = require("langfuse")

local client = assert(langfuse.new{ max_retries = 4 })
local run = "resend-" .. os.time()

local events = {}
for i = 1, 20 do
  events[i] = {
    type = "trace-create",
    timestamp = os.time(),                   -- epoch seconds are fine
    body = { id = run .. "-" .. i, name = "request " .. i },
  }
end
events[5].body.tags = "not-a-list"           -- tags must be strings
events[9].timestamp = "09/03/2026"           -- not ISO 8601
events[13].body.name = string.rep("n", 1200) -- names stop at 1000

local function fix(ev)
  if type(ev.body.tags) == "string" then
    ev.body.tags = { ev.body.tags }
  end
  if type(ev.timestamp) == "string"
      and not ev.timestamp:match("^%d%d%d%d%-") then
    ev.timestamp = os.time()
  end
  if #(ev.body.name or "") > 1000 then
    ev.body.name = ev.body.name:sub(1, 1000)
  end
end

local pending, round = events, 1
while #pending > 0 and round <= 3 do
  local res, err = client:upload_events_batch(pending)
  if res then
    print(("round %d: all %d delivered"):format(round, res.accepted))
    break
  end
  print(("round %d: %s"):format(round, tostring(err)))
  print(("  delivered %d, kind %s, retryable %s, attempts %d")
        :format(err.accepted, err.kind, tostring(err.retryable),
                err.attempts))
  for _, f in ipairs(err.failed) do
    print(("  #%d %s: %s"):format(f.index, f.kind, f.message))
    if f.kind == "validation" then
      fix(f.event)
    end
  end
  if err.kind == "auth" or err.kind == "config" then
    os.exit(1)                               -- retrying cannot help
  end
  pending, round = err:events(), round + 1
end
