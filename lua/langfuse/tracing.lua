-- langfuse.tracing: traces, spans, generations, events and scores,
-- recorded through builders and delivered by the client's background
-- sender.
--
--   local trace = client:trace{ name = "chat", user_id = "u-1" }
--   local gen = trace:generation{ name = "answer", model = "gpt-4o",
--                                 input = messages }
--   gen:finish{ output = reply, usage_details = { input = 12,
--                                                 output = 30 } }
--   trace:score{ name = "quality", value = 0.9 }
--   trace:finish{ output = reply }
--
-- Every builder checks its options when it is called: an unknown name,
-- a wrong type or a value the server's schema refuses raises at once,
-- naming the option.  finish (and event, which is finished when it is
-- made) encodes the span on the caller's thread and hands it to the
-- sender; the caller never waits for the network.  Values are taken
-- when they are given: changing a table after passing it changes
-- nothing.
--
-- Objects: trace.id (32 hex), obs.id (16 hex), obs.trace_id, obs.trace,
-- obs.kind ("span", "generation", "event").  Methods:
--   trace:span{}, trace:generation{}, trace:event{} (and the same on
--   spans and generations, for nesting), :update{}, :finish{},
--   :score{}.
--
-- A finished trace or observation is immutable over OTLP (Langfuse v4
-- stores each span once): update after finish raises.  With protocol
-- "ingestion" it is sent as a trace-create or *-update event instead.

local core = require("langfuse.core")
local errors = require("langfuse.error")

local setmetatable = setmetatable
local error = error
local ipairs = ipairs
local pairs = pairs
local gsub = string.gsub
local fmt = string.format

-- The tracer's methods, called as plain functions (no lookup through
-- the userdata's metatable on the hot path).
local T = core.tracer_methods
local tr_open = T.open
local tr_finish = T.finish
local tr_event = T.event
local tr_update = T.update
local tr_score = T.score

local KINDS = core.tracing_kinds
local SPAN = KINDS.span
local GENERATION = KINDS.generation
local EVENT = KINDS.event
local TRACE = KINDS.trace

local KIND_NAMES = {
  [SPAN] = "span", [GENERATION] = "generation", [EVENT] = "event",
  [TRACE] = "trace",
}

-- Body field names that problem messages may use, as option names.
local SNAKE = {
  userId = "user_id", sessionId = "session_id",
  statusMessage = "status_message", startTime = "start_time",
  endTime = "end_time", completionStartTime = "completion_start_time",
  modelParameters = "model_parameters", usageDetails = "usage_details",
  costDetails = "cost_details", promptName = "prompt_name",
  promptVersion = "prompt_version", dataType = "data_type",
  observationId = "observation_id", configId = "config_id",
  traceId = "trace_id", datasetRunId = "dataset_run_id",
}

-- Longest excerpt of a failure message repeated in a summary.
local SUMMARY_MAX = 300


-- Raises a caller mistake: where is the builder ("trace:generation"),
-- level counts from the function that calls raise.
local function raise(where, message, level)
  local head, rest = message:match('^(option "[^"]*": )(.*)$')
  if head then
    message = head .. gsub(rest, "%a+", SNAKE)
  elseif not message:find("option", 1, true) then
    message = gsub(message, "%a+", SNAKE)
  end
  error(where .. ": " .. message, level + 1)
end


-- An error object for failures the sender reports (see langfuse.error).
local function failures_error(fails)
  local kind, status, retryable, attempts = nil, nil, true, 0
  for _, f in ipairs(fails) do
    if kind == nil then
      kind = f.kind
    elseif kind ~= f.kind then
      kind = "partial"
    end
    if f.status and status == nil then
      status = f.status
    end
    retryable = retryable and f.retryable
    if f.attempts > attempts then
      attempts = f.attempts
    end
  end
  local first = fails[1]
  local text = first.message
  if #text > SUMMARY_MAX then
    text = text:sub(1, SUMMARY_MAX) .. "..."
  end
  local msg = fmt("%d %s not delivered; %s event %s: %s", #fails,
                  #fails == 1 and "event" or "events", first.route,
                  first.id, text)
  return setmetatable({
    kind = kind, status = status, message = msg, retryable = retryable,
    attempts = attempts, accepted = 0, failed = fails,
  }, errors.Error)
end


local _M = { _VERSION = core._VERSION, failures_error = failures_error }


-- Hands failures to the client's on_error (or its logger).
function _M.report(client, fails)
  client:_report(failures_error(fails))
end

local report = _M.report


local Trace = {}
Trace.__index = Trace

-- The methods of spans and generations; each kind gets its own copy
-- (below) that also answers obs.kind, so an observation's table holds
-- only its own state.
local Observation = {}

local Event = { kind = "event" }
Event.__index = Event


-- Opens a span or generation under parent_id (nil: the trace itself).
local METATABLES = {}

local function open(trace, parent_id, kind, opts, where)
  local body, id, start = tr_open(trace._tr, kind, opts)
  if not body then
    raise(where, id, 3)
  end
  return setmetatable({
    id = id, trace_id = trace.id, trace = trace, _parent = parent_id,
    _body = body, _start = start, _done = false,
  }, METATABLES[kind])
end


-- Records an event (finished when made) under parent_id.
local function event(trace, parent_id, opts, where)
  local id, fails = tr_event(trace._tr, trace.id, parent_id, opts,
                             trace._ctx, trace._ver, trace._rec)
  if not id then
    raise(where, fails, 3)
  end
  if fails then
    report(trace._c, fails)
  end
  return setmetatable({ id = id, trace_id = trace.id, trace = trace },
                      Event)
end


-- Records a score on the trace (and observation, when given).
local function score(trace, observation_id, opts, where)
  local id, fails = tr_score(trace._tr, false, opts, trace.id,
                             observation_id, trace._rec)
  if not id then
    raise(where, fails, 3)
  end
  if fails then
    report(trace._c, fails)
  end
  return id
end


-- Starts a trace for client; called by client:trace.
function _M.trace(client, opts)
  local tr = client._tracer
  local body, id, start, root, rec, ctx, ver = tr:open_trace(opts)
  if not body then
    raise("client:trace", id, 2)
  end
  return setmetatable({
    id = id, _c = client, _tr = tr, _late = client._late, _body = body,
    _start = start, _root = root, _rec = rec, _ctx = ctx, _ver = ver,
    _done = false,
  }, Trace)
end


-- Records a score of a trace, session or dataset run; client:score.
function _M.score(client, opts)
  local id, fails = client._tracer:score(true, opts, nil, nil, true)
  if not id then
    raise("client:score", fails, 2)
  end
  if fails then
    report(client, fails)
  end
  return id
end


function Trace:span(opts)
  local o = open(self, self._root, SPAN, opts, "trace:span")
  return o
end


function Trace:generation(opts)
  local o = open(self, self._root, GENERATION, opts, "trace:generation")
  return o
end


function Trace:event(opts)
  local o = event(self, self._root, opts, "trace:event")
  return o
end


function Trace:score(opts)
  local id = score(self, nil, opts, "trace:score")
  return id
end


-- Changes trace fields: on every span finished from now on, and on the
-- trace's own span at finish.
function Trace:update(opts)
  local tr = self._tr
  if self._done then
    if not self._late then
      error("trace:update: the trace is finished; with protocol \"otlp\" "
            .. "its spans are immutable", 2)
    end
    local ok, fails = tr:late(TRACE, self.id, nil, opts, self._rec)
    if not ok then
      raise("trace:update", fails, 2)
    end
    if fails then
      report(self._c, fails)
    end
    return self
  end
  local body, why = tr:update(TRACE, opts)
  if not body then
    raise("trace:update", why, 2)
  end
  if body ~= "" then
    self._body = self._body .. body
    if self._rec then
      self._ctx, self._ver = tr:trace_ctx(self._body)
    end
  end
  return self
end


-- Ends the trace: its own span (OTLP) or its trace-create event
-- (ingestion) goes to the sender.
function Trace:finish(opts)
  if self._done then
    error("trace:finish: the trace is already finished", 2)
  end
  local ok, fails = self._tr:finish(TRACE, self.id, self._root, nil,
                                    self._start, self._body, opts, nil,
                                    nil, self._rec)
  if not ok then
    raise("trace:finish", fails, 2)
  end
  self._done = true
  if fails then
    report(self._c, fails)
  end
  return self
end


function Observation:span(opts)
  local o = open(self.trace, self.id, SPAN, opts, self.kind .. ":span")
  return o
end


function Observation:generation(opts)
  local o = open(self.trace, self.id, GENERATION, opts,
                 self.kind .. ":generation")
  return o
end


function Observation:event(opts)
  local o = event(self.trace, self.id, opts, self.kind .. ":event")
  return o
end


function Observation:score(opts)
  local id = score(self.trace, self.id, opts, self.kind .. ":score")
  return id
end


-- Changes fields before the end; an option given again replaces the
-- earlier value (metadata as a whole).
function Observation:update(opts)
  local trace = self.trace
  local tr = trace._tr
  if self._done then
    if not trace._late then
      error(self.kind .. ":update: the " .. self.kind .. " is finished; "
            .. "with protocol \"otlp\" its span is immutable", 2)
    end
    local ok, fails = tr:late(self._kind, trace.id, self.id, opts,
                              trace._rec)
    if not ok then
      raise(self.kind .. ":update", fails, 2)
    end
    if fails then
      report(trace._c, fails)
    end
    return self
  end
  local body, why = tr_update(tr, self._kind, opts)
  if not body then
    raise(self.kind .. ":update", why, 2)
  end
  if body ~= "" then
    self._body = self._body .. body
  end
  return self
end


-- Ends the observation (now, unless end_time is given) and hands it to
-- the sender.
function Observation:finish(opts)
  if self._done then
    error(self.kind .. ":finish: the " .. self.kind
          .. " is already finished", 2)
  end
  local trace = self.trace
  local ok, fails = tr_finish(trace._tr, self._kind, trace.id, self.id,
                              self._parent, self._start, self._body, opts,
                              trace._ctx, trace._ver, trace._rec)
  if not ok then
    raise(self.kind .. ":finish", fails, 2)
  end
  self._done = true
  if fails then
    report(trace._c, fails)
  end
  return self
end


function Event:score(opts)
  local id = score(self.trace, self.id, opts, "event:score")
  return id
end


function Event.update()
  error("event:update: an event is finished when it is made", 2)
end


function Event.finish()
  error("event:finish: an event is finished when it is made", 2)
end


for kind, name in pairs(KIND_NAMES) do
  if kind == SPAN or kind == GENERATION then
    local mt = { kind = name, _kind = kind }
    for k, f in pairs(Observation) do
      mt[k] = f
    end
    mt.__index = mt
    METATABLES[kind] = mt
  end
end


_M.Trace = Trace
_M.Span = METATABLES[SPAN]
_M.Generation = METATABLES[GENERATION]
_M.Event = Event

return _M
