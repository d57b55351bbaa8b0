-- langfuse.error: the error object every runtime failure returns.
--
--   local res, err = client:upload_events_batch(events)
--   if not res then
--     print(err.kind, err.status, err.message)
--     for _, f in ipairs(err.failed) do
--       print(f.index, f.id, f.path, f.message)
--     end
--     local again = err:events()   -- the undelivered events, to fix
--   end
--
-- Fields: kind, status, body, message, retryable, attempts, accepted,
-- failed (one entry per undelivered event: index, id, event, kind,
-- status, message, path, problems, retryable, attempts).

local core = require("langfuse.core")

local setmetatable = setmetatable
local getmetatable = getmetatable
local ipairs = ipairs
local pcall = pcall
local type = type
local concat = table.concat
local sort = table.sort
local fmt = string.format

-- Longest excerpt of a message repeated in a summary.
local SUMMARY_MAX = 300

-- Kinds that the same request cannot get past without a change of
-- configuration, whatever the C core says about keeping the events.
local NEEDS_CHANGE = { auth = true, forbidden = true, config = true }


local Error = {}
Error.__index = Error
Error.__name = "LangfuseBatchUploadError"


function Error.__tostring(e)
  if e.status then
    return fmt("LangfuseBatchUploadError: Batch upload failed with "
               .. "status %d: %s", e.status, e.message)
  end
  return "LangfuseBatchUploadError: Batch upload failed: " .. e.message
end


-- The undelivered events, in the order they were given, ready to be
-- fixed and sent again.
function Error:events()
  local out = {}
  for _, f in ipairs(self.failed or {}) do
    if f.event ~= nil then
      out[#out + 1] = f.event
    end
  end
  return out
end


-- The undelivered events as JSON text, or nil and a reason when an
-- event holds something JSON cannot carry (NaN, a function, ...).
function Error:payload()
  local ok, json = pcall(core.encode, self:events(), { strict = false })
  if not ok then
    return nil, json
  end
  return json
end


local _M = { _VERSION = core._VERSION }


function _M.is_error(x)
  return getmetatable(x) == Error
end


-- Makes an error of one kind with no per-event detail (configuration,
-- argument problems found before any event was looked at).
function _M.simple(kind, message)
  return setmetatable({
    kind = kind, message = message, retryable = false, attempts = 0,
    accepted = 0, failed = {},
  }, Error)
end


local function clip(s)
  if #s > SUMMARY_MAX then
    return s:sub(1, SUMMARY_MAX) .. "..."
  end
  return s
end


-- Folds the validation problems of one event into one failure entry,
-- keeping each problem in entry.problems.
local function group_problems(failed)
  local out, by_index = {}, {}
  for _, f in ipairs(failed) do
    if f.kind == "validation" then
      local g = by_index[f.index]
      if not g then
        g = { index = f.index, id = f.id, kind = "validation",
              path = f.path, retryable = false, attempts = 0,
              problems = {} }
        by_index[f.index] = g
        out[#out + 1] = g
      end
      local p = f.path ~= "" and f.path or nil
      g.problems[#g.problems + 1] = { path = p, message = f.message }
    else
      out[#out + 1] = f
    end
  end
  for _, g in ipairs(out) do
    if g.problems then
      local parts = {}
      for i, p in ipairs(g.problems) do
        parts[i] = p.path and (p.path .. ": " .. p.message) or p.message
      end
      g.message = concat(parts, "; ")
    end
  end
  return out
end


local function describe_failure(f)
  local who = fmt("event %d", f.index)
  if type(f.id) == "string" then
    who = fmt("event %d (id %s)", f.index, f.id)
  end
  return who .. ": " .. clip(f.message or "not delivered")
end


-- Builds the error for an upload report that has undelivered events.
-- events is the caller's array, so each entry can point at its event.
function _M.from_report(rep, events, total)
  local failed = group_problems(rep.failed)
  sort(failed, function(a, b) return a.index < b.index end)
  local kind, status, retryable = nil, nil, true
  local same_status = true
  for _, f in ipairs(failed) do
    f.event = events[f.index]
    if NEEDS_CHANGE[f.kind] then
      f.retryable = false
    end
    if kind == nil then
      kind = f.kind
    elseif kind ~= f.kind then
      kind = "partial"
    end
    if f.status then
      if status == nil then
        status = f.status
      elseif status ~= f.status then
        same_status = false
      end
    end
    retryable = retryable and f.retryable and true or false
  end
  if not same_status or status == nil then
    status = rep.status
  end
  if kind == "validation" then
    status = nil
  end
  local head = fmt("%d of %d events not delivered", #failed, total)
  local msg = head .. "; " .. describe_failure(failed[1])
  if #failed > 1 then
    msg = msg .. fmt(" (and %d more)", #failed - 1)
  end
  return setmetatable({
    kind = kind,
    status = status,
    body = rep.body,
    message = msg,
    retryable = retryable,
    attempts = rep.attempts or 0,
    accepted = rep.accepted or 0,
    requests = rep.requests or 0,
    failed = failed,
  }, Error)
end


_M.Error = Error

return _M
