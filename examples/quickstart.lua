-- Quick start: send a trace with a generation and a score in one batch,
-- catch what the client refuses, inspect it, fix it and send it again.
--
--   LANGFUSE_PUBLIC_KEY=pk-lf-... LANGFUSE_SECRET_KEY=sk-lf-... \
--   LANGFUSE_BASE_URL=https://cloud.langfuse.com lua5.4 examples/quickstart.lua
--
-- (make demo runs it against the project's local test server.)

local langfuse = require("langfuse")

local client, err = langfuse.new()          -- keys and host from the env
if not client then
  io.stderr:write(tostring(err), "\n")
  os.exit(2)
end

local trace_id = "quickstart-" .. os.time()
local events = {
  { type = "trace-create", timestamp = os.time(),
    body = { id = trace_id, name = "quickstart", userId = "user-1" } },
  { type = "generation-create",
    body = { id = trace_id .. "-gen", traceId = trace_id, name = "answer",
             model = "gpt-4o-mini", startTime = os.time(),
             usageDetails = { input = 12, output = 30 },
             level = "LOUD" } },                   -- not a level
  { type = "score-create",
    body = { id = trace_id .. "-score", traceId = trace_id,
             name = "helpful", value = 1, dataType = "BOOLEAN" } },
}

local res
res, err = client:upload_events_batch(events)
if not res then
  print(tostring(err))
  print("kind:", err.kind, "accepted:", err.accepted)
  for _, f in ipairs(err.failed) do
    print(("  event %d: %s"):format(f.index, f.message))
  end
  -- Fix what was wrong and send only the events that were not delivered.
  local again = err:events()
  for _, ev in ipairs(again) do
    if ev.body.level == "LOUD" then
      ev.body.level = "WARNING"
    end
  end
  res, err = client:upload_events_batch(again)
  if not res then
    io.stderr:write("still failing: ", tostring(err), "\n")
    os.exit(1)
  end
end
print(("delivered: %d event(s) in %d request(s)"):format(res.accepted,
                                                        res.requests))
