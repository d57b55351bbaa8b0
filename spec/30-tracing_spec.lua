local h = require("helpers")

local cjson = h.cjson

-- Seconds a flush may take against the local server.
local FLUSH_WAIT = 10


local client = h.tracing_client


-- Flushes c and returns the spans the server holds, by span id.
local function delivered(c)
  assert.is_true(c:flush(FLUSH_WAIT))
  local by_id = {}
  for _, s in ipairs(h.spans().spans) do
    by_id[s.spanId] = s
  end
  return by_id
end


-- Whether the server holds any span of trace id.
local function has_spans(id)
  for _, s in ipairs(h.spans().spans) do
    if s.traceId == id then
      return true
    end
  end
  return false
end


-- JSON null (cjson.null) or missing.
local function absent(v)
  return v == nil or v == cjson.null
end


local function count(t)
  local n = 0
  for _ in pairs(t) do
    n = n + 1
  end
  return n
end


-- The error message of fn(...), which must raise.
local function raises(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end


describe("langfuse.tracing", function()
  before_each(function()
    -- Clients of earlier tests finish their work (and their finalisers
    -- run) before the server forgets everything.
    collectgarbage()
    collectgarbage()
    h.reset()
  end)

  describe("client:trace()", function()
    it("returns a trace with a 32 lowercase hex id", function()
      local c = client()
      local t = c:trace{ name = "a" }
      assert.matches("^[0-9a-f]+$", t.id)
      assert.equal(32, #t.id)
      assert.not_equal(t.id, c:trace{}.id)
    end)

    it("keeps an id the caller gives", function()
      local c = client()
      local id = string.rep("ab", 16)
      local t = c:trace{ id = id, name = "mine" }
      assert.equal(id, t.id)
      t:finish()
      local spans = delivered(c)
      assert.equal(1, count(spans))
      local _, root = next(spans)
      assert.equal(id, root.traceId)
    end)

    it("refuses an id that is not 32 lowercase hex characters", function()
      local c = client()
      for _, bad in ipairs{ string.rep("AB", 16), "abc", string.rep("0", 32),
                            string.rep("g", 32), 42 } do
        local msg = raises(c.trace, c, { id = bad })
        assert.matches('client:trace: option "id": expected 32 lowercase '
                       .. 'hex', msg, 1, true)
      end
    end)

    it("raises at the caller, naming an unknown option", function()
      local c = client()
      local ok, err = pcall(function()
        c:trace{ naem = "x" }
      end)
      assert.is_false(ok)
      assert.matches('30%-tracing_spec%.lua:%d+: client:trace: unknown '
                     .. 'option "naem"', err)
    end)

    it("suggests the snake_case name for a camelCase option", function()
      local c = client()
      local msg = raises(c.trace, c, { userId = "u" })
      assert.matches('unknown option "userId" (did you mean "user_id"?)',
                     msg, 1, true)
    end)

    it("names the option of a wrong type or value", function()
      local c = client()
      assert.matches('option "name": expected a string',
                     raises(c.trace, c, { name = 5 }), 1, true)
      assert.matches('option "tags[2]": expected a string',
                     raises(c.trace, c, { tags = { "a", 2 } }), 1, true)
      assert.matches('option "public": expected a boolean',
                     raises(c.trace, c, { public = "yes" }), 1, true)
      assert.matches('option "metadata.f": cannot encode a function',
                     raises(c.trace, c, { metadata = { f = print } }), 1,
                     true)
      assert.matches("expected a table of options, got string",
                     raises(c.trace, c, "name"), 1, true)
    end)

    it("exports the trace as a root span with its input and output",
       function()
      local c = client()
      local t = c:trace{ name = "chat", input = { q = "hi" },
                         output = "bye", version = "v9" }
      t:finish()
      local spans = delivered(c)
      assert.equal(1, count(spans))
      local _, root = next(spans)
      assert.is_true(absent(root.parentSpanId))
      assert.equal("chat", root.name)
      local a = root.attributes
      assert.equal("span", a["langfuse.observation.type"])
      assert.same({ q = "hi" }, cjson.decode(a["langfuse.observation.input"]))
      assert.equal("bye", a["langfuse.observation.output"])
      assert.equal("chat", a["langfuse.trace.name"])
      assert.equal("v9", a["langfuse.version"])
    end)

    it("puts the trace-wide fields on every span", function()
      local c = client{ environment = "staging", release = "r-1" }
      local t = c:trace{
        name = "checkout", user_id = "u-1", session_id = "s-1",
        tags = { "a", "b" }, metadata = { region = "eu", n = 3 },
        version = "v2", public = true,
      }
      local s = t:span{ name = "step" }
      s:generation{ name = "gen" }:finish()
      s:event{ name = "ev" }
      s:finish()
      t:event{ name = "top" }
      t:finish()
      local spans = delivered(c)
      assert.equal(5, count(spans))
      for _, sp in pairs(spans) do
        local a = sp.attributes
        assert.equal(t.id, sp.traceId)
        assert.equal("checkout", a["langfuse.trace.name"])
        assert.equal("u-1", a["user.id"])
        assert.equal("s-1", a["session.id"])
        assert.same({ "a", "b" }, a["langfuse.trace.tags"])
        assert.equal("eu", a["langfuse.trace.metadata.region"])
        assert.equal("3", a["langfuse.trace.metadata.n"])
        assert.equal("v2", a["langfuse.version"])
        assert.equal("r-1", a["langfuse.release"])
        assert.equal("staging", a["langfuse.environment"])
        assert.is_true(a["langfuse.trace.public"])
      end
    end)

    it("lets a trace's environment and release override the client's",
       function()
      local c = client{ environment = "staging", release = "r-1" }
      local t = c:trace{ environment = "prod", release = "r-2" }
      t:generation{}:finish()
      t:finish()
      for _, sp in pairs(delivered(c)) do
        assert.equal("prod", sp.attributes["langfuse.environment"])
        assert.equal("r-2", sp.attributes["langfuse.release"])
      end
    end)
  end)

  describe("trace:generation()", function()
    it("writes every generation field in Langfuse's attributes",
       function()
      local c = client()
      local t = c:trace{ name = "t" }
      local g = t:generation{
        name = "answer", model = "gpt-4o",
        model_parameters = { temperature = 0.5, stop = { "\n" } },
        input = { { role = "user", content = "say \"hi\"" } },
        metadata = { team = "search", attempt = 2, ok = true },
        level = "WARNING", status_message = "slow", version = "g1",
        prompt_name = "greeting", prompt_version = 3,
        completion_start_time = "2026-01-02T03:04:05.123Z",
      }
      g:finish{
        output = "hi",
        usage_details = { input = 12, output = 3 },
        cost_details = { total = 0.0015 },
      }
      local sp = delivered(c)[g.id]
      assert.is_table(sp)
      local a = sp.attributes
      assert.equal("answer", sp.name)
      assert.equal(t.id, sp.traceId)
      assert.equal(t._root, sp.parentSpanId)
      assert.equal("generation", a["langfuse.observation.type"])
      assert.equal("gpt-4o", a["langfuse.observation.model.name"])
      assert.same({ temperature = 0.5, stop = { "\n" } },
                  cjson.decode(a["langfuse.observation.model.parameters"]))
      assert.same({ { role = "user", content = 'say "hi"' } },
                  cjson.decode(a["langfuse.observation.input"]))
      assert.equal("hi", a["langfuse.observation.output"])
      assert.equal("search", a["langfuse.observation.metadata.team"])
      assert.equal("2", a["langfuse.observation.metadata.attempt"])
      assert.equal("true", a["langfuse.observation.metadata.ok"])
      assert.equal("WARNING", a["langfuse.observation.level"])
      assert.equal("slow", a["langfuse.observation.status_message"])
      assert.equal("g1", a["langfuse.version"])
      assert.equal("greeting", a["langfuse.observation.prompt.name"])
      assert.equal(3, a["langfuse.observation.prompt.version"])
      assert.equal("2026-01-02T03:04:05.123Z",
                   a["langfuse.observation.completion_start_time"])
      assert.same({ input = 12, output = 3 },
                  cjson.decode(a["langfuse.observation.usage_details"]))
      assert.same({ total = 0.0015 },
                  cjson.decode(a["langfuse.observation.cost_details"]))
      assert.same({}, sp.status)
    end)

    it("gives observations 16 lowercase hex ids, or the caller's",
       function()
      local c = client()
      local t = c:trace{}
      local g = t:generation{}
      assert.matches("^[0-9a-f]+$", g.id)
      assert.equal(16, #g.id)
      assert.equal(t.id, g.trace_id)
      assert.equal("generation", g.kind)
      local mine = t:span{ id = "00000000000000ff" }
      assert.equal("00000000000000ff", mine.id)
      assert.matches('option "id": expected 16 lowercase hex',
                     raises(t.span, t, { id = "ff" }), 1, true)
    end)

    it("raises naming the option for a value the schema refuses",
       function()
      local c = client()
      local t = c:trace{}
      assert.matches('trace:generation: option "level": expected one of '
                     .. 'DEBUG, DEFAULT, WARNING, ERROR',
                     raises(t.generation, t, { level = "LOUD" }), 1, true)
      assert.matches('option "usage_details.input": expected a '
                     .. 'non-negative integer, got 1.5',
                     raises(t.generation, t,
                            { usage_details = { input = 1.5 } }), 1, true)
      assert.matches('option "start_time": expected an ISO 8601',
                     raises(t.generation, t,
                            { start_time = "2026-13-01T00:00:00Z" }), 1,
                     true)
      assert.matches('option "prompt_version": expected',
                     raises(t.generation, t, { prompt_version = "3" }), 1,
                     true)
      assert.matches('unknown option "model"',
                     raises(t.span, t, { model = "x" }), 1, true)
      local g = t:generation{}
      assert.matches('generation:finish: option "usage_details.output"',
                     raises(g.finish, g,
                            { usage_details = { output = -1 } }), 1, true)
      assert.is_false(g._done)
    end)

    it("checks that prompt_name and prompt_version go together",
       function()
      local c = client()
      local t = c:trace{}
      local g = t:generation{ prompt_name = "p" }
      assert.matches('generation:finish: option "prompt_version": '
                     .. 'prompt_name and prompt_version must be set '
                     .. 'together', raises(g.finish, g), 1, true)
      g:finish{ prompt_version = 1 }
      assert.equal(1, count(delivered(c)))
    end)

    it("writes the times given, as epoch numbers or ISO text", function()
      local c = client()
      local t = c:trace{}
      local g = t:generation{ start_time = 1700000000.25 }
      g:finish{ end_time = "2023-11-14T22:13:21.5+00:00" }
      local e = t:event{ start_time = "2023-11-14T23:13:20+01:00" }
      local spans = delivered(c)
      assert.equal("1700000000250000000", spans[g.id].startTimeUnixNano)
      assert.equal("1700000001500000000", spans[g.id].endTimeUnixNano)
      assert.equal("1700000000000000000", spans[e.id].startTimeUnixNano)
      assert.equal("1700000000000000000", spans[e.id].endTimeUnixNano)
    end)

    it("ends now unless told, after its start", function()
      local c = client()
      local t = c:trace{}
      local before = h.now()
      local g = t:generation{}
      g:finish()
      local after = h.now()
      local sp = delivered(c)[g.id]
      local start = tonumber(sp.startTimeUnixNano) / 1e9
      local stop = tonumber(sp.endTimeUnixNano) / 1e9
      assert.is_true(start >= before - 0.01 and stop <= after + 0.01)
      assert.is_true(stop >= start)
    end)

    it("marks a span at level ERROR with status code 2", function()
      local c = client()
      local t = c:trace{}
      local s = t:span{ level = "ERROR", status_message = "boom" }
      s:finish()
      local sp = delivered(c)[s.id]
      assert.same({ code = 2, message = "boom" }, sp.status)
    end)

    it("passes a string input through and sends other values as JSON",
       function()
      local c = client()
      local t = c:trace{}
      local a = t:span{ input = "plain text", output = 42 }
      a:finish()
      local b = t:span{ input = { 1, 2 }, output = true,
                        metadata = { "x" } }
      b:finish()
      local spans = delivered(c)
      local aa, ba = spans[a.id].attributes, spans[b.id].attributes
      assert.equal("plain text", aa["langfuse.observation.input"])
      assert.equal("42", aa["langfuse.observation.output"])
      assert.equal("[1,2]", ba["langfuse.observation.input"])
      assert.equal("true", ba["langfuse.observation.output"])
      assert.equal('["x"]', ba["langfuse.observation.metadata"])
    end)
  end)

  describe("nesting", function()
    it("links children to their parents within one trace", function()
      local c = client()
      local t = c:trace{ name = "root" }
      local s1 = t:span{ name = "s1" }
      local g = s1:generation{ name = "g" }
      local s2 = g:span{ name = "s2" }
      local e = s2:event{ name = "e" }
      s2:finish()
      g:finish()
      s1:finish()
      t:finish()
      local spans = delivered(c)
      assert.equal(5, count(spans))
      assert.equal(t._root, spans[s1.id].parentSpanId)
      assert.equal(s1.id, spans[g.id].parentSpanId)
      assert.equal(g.id, spans[s2.id].parentSpanId)
      assert.equal(s2.id, spans[e.id].parentSpanId)
      assert.is_true(absent(spans[t._root].parentSpanId))
      for _, sp in pairs(spans) do
        assert.equal(t.id, sp.traceId)
      end
    end)

    it("exports each observation once, when it finishes", function()
      local c = client()
      local t = c:trace{}
      local s = t:span{ name = "open" }
      assert.is_nil(delivered(c)[s.id])
      s:update{ output = "x" }
      assert.is_nil(delivered(c)[s.id])
      s:finish()
      assert.is_table(delivered(c)[s.id])
      t:finish()
      delivered(c)
      assert.same({ [s.id] = 1, [t._root] = 1 }, h.spans().counts)
    end)
  end)

  describe("events", function()
    it("are finished when made, with no duration", function()
      local c = client()
      local t = c:trace{}
      local e = t:event{ name = "click", input = { x = 1 }, level = "DEBUG" }
      assert.equal("event", e.kind)
      local sp = delivered(c)[e.id]
      assert.equal("click", sp.name)
      assert.equal("event", sp.attributes["langfuse.observation.type"])
      assert.equal(sp.startTimeUnixNano, sp.endTimeUnixNano)
      assert.matches("finished when it is made", raises(e.finish, e), 1,
                     true)
      assert.matches("finished when it is made", raises(e.update, e), 1,
                     true)
    end)

    it("check their options like the other builders", function()
      local c = client()
      local t = c:trace{}
      assert.matches('trace:event: unknown option "end_time"',
                     raises(t.event, t, { end_time = 1 }), 1, true)
    end)
  end)

  describe("update and finish", function()
    it("let later values replace earlier ones", function()
      local c = client()
      local t = c:trace{}
      local g = t:generation{ name = "first", model = "a",
                              metadata = { x = "1", y = "2" } }
      g:update{ name = "second", metadata = { z = "3" } }
      g:finish{ model = "b" }
      local a = delivered(c)[g.id].attributes
      assert.equal("b", a["langfuse.observation.model.name"])
      assert.equal("3", a["langfuse.observation.metadata.z"])
      assert.is_nil(a["langfuse.observation.metadata.x"])
      assert.equal("second", delivered(c)[g.id].name)
    end)

    it("take values when given: a later change to a table is not sent",
       function()
      local c = client()
      local t = c:trace{}
      local input = { n = 1 }
      local s = t:span{ input = input }
      input.n = 2
      s:finish()
      local a = delivered(c)[s.id].attributes
      assert.same({ n = 1 }, cjson.decode(a["langfuse.observation.input"]))
    end)

    it("refuse a second finish and an update after finish over OTLP",
       function()
      local c = client()
      local t = c:trace{}
      local s = t:span{}
      s:finish()
      assert.matches("span:finish: the span is already finished",
                     raises(s.finish, s), 1, true)
      assert.matches("span:update: the span is finished",
                     raises(s.update, s, { output = 1 }), 1, true)
      t:finish()
      assert.matches("trace:finish: the trace is already finished",
                     raises(t.finish, t), 1, true)
      assert.matches("trace:update: the trace is finished",
                     raises(t.update, t, {}), 1, true)
    end)

    it("returns the object from finish, for chaining", function()
      local c = client()
      local t = c:trace{}
      local g = t:generation{ name = "x" }:finish{ output = "y" }
      assert.equal("generation", g.kind)
      assert.is_true(g._done)
    end)

    it("apply trace updates to spans finished later and to the root",
       function()
      local c = client()
      local t = c:trace{ name = "before" }
      local a = t:span{}
      a:finish()
      t:update{ name = "after", user_id = "u" }
      local b = t:span{}
      b:finish()
      t:finish{ output = "done", end_time = 1900000000 }
      local spans = delivered(c)
      assert.equal("before", spans[a.id].attributes["langfuse.trace.name"])
      assert.equal("after", spans[b.id].attributes["langfuse.trace.name"])
      assert.equal("u", spans[b.id].attributes["user.id"])
      local root = spans[t._root]
      assert.equal("after", root.name)
      assert.equal("done", root.attributes["langfuse.observation.output"])
      assert.equal("1900000000000000000", root.endTimeUnixNano)
    end)

    it("name the option of a bad end time", function()
      local c = client()
      local t = c:trace{}
      assert.matches('trace:finish: option "end_time": expected',
                     raises(t.finish, t, { end_time = "soon" }), 1, true)
      local s = t:span{}
      assert.matches('span:finish: option "end_time"',
                     raises(s.finish, s, { end_time = {} }), 1, true)
      local old = t:span{ start_time = "1969-12-31T23:59:59Z" }
      assert.matches('span:finish: option "start_time": cannot be sent',
                     raises(old.finish, old), 1, true)
    end)
  end)

  describe("scores", function()
    it("go to the ingestion API as score-create events", function()
      local c = client()
      local t = c:trace{}
      local g = t:generation{}
      local id1 = t:score{ name = "quality", value = 0.9,
                           comment = "good" }
      local id2 = g:score{ name = "correct", value = 1,
                           data_type = "BOOLEAN" }
      local id3 = t:score{ name = "label", value = "ok",
                           data_type = "CATEGORICAL",
                           observation_id = g.id }
      assert.is_true(c:flush(FLUSH_WAIT))
      local by_body = {}
      for _, e in ipairs(h.events().events) do
        assert.equal("score-create", e.type)
        by_body[e.body.id] = e.body
      end
      assert.equal(3, count(by_body))
      assert.same({ id = id1, name = "quality", value = 0.9,
                    comment = "good", traceId = t.id }, by_body[id1])
      assert.same({ id = id2, name = "correct", value = 1,
                    dataType = "BOOLEAN", traceId = t.id,
                    observationId = g.id }, by_body[id2])
      assert.equal(g.id, by_body[id3].observationId)
      assert.is_false(has_spans(t.id))
    end)

    it("take a trace, a session or a dataset run from client:score",
       function()
      local c = client{ environment = "prod" }
      c:score{ name = "a", value = 1, trace_id = "t-1" }
      c:score{ name = "b", value = 2, session_id = "s-1" }
      c:score{ name = "c", value = 3, dataset_run_id = "d-1" }
      assert.is_true(c:flush(FLUSH_WAIT))
      local got = {}
      for _, e in ipairs(h.events().events) do
        got[e.body.name] = e.body
      end
      assert.equal("t-1", got.a.traceId)
      assert.equal("s-1", got.b.sessionId)
      assert.equal("d-1", got.c.datasetRunId)
      assert.equal("prod", got.a.environment)
    end)

    it("raise naming the options when the score is incomplete or wrong",
       function()
      local c = client()
      assert.matches("client:score: give exactly one of trace_id, "
                     .. "session_id and dataset_run_id",
                     raises(c.score, c, { name = "x", value = 1,
                                          trace_id = "a",
                                          session_id = "b" }), 1, true)
      assert.matches("one of trace_id, session_id or dataset_run_id is "
                     .. "required", raises(c.score, c, { name = "x",
                                                         value = 1 }), 1,
                     true)
      local t = c:trace{}
      assert.matches('trace:score: option "value": data_type NUMERIC '
                     .. 'needs a number value',
                     raises(t.score, t, { name = "x", value = "a",
                                          data_type = "NUMERIC" }), 1,
                     true)
      assert.matches('option "name": required field is missing',
                     raises(t.score, t, { value = 1 }), 1, true)
      assert.matches('unknown option "trace_id"',
                     raises(t.score, t, { name = "x", value = 1,
                                          trace_id = "t" }), 1, true)
    end)
  end)

  describe("protocol ingestion", function()
    it("emits trace-create and *-create events", function()
      local c = client{ protocol = "ingestion", environment = "dev" }
      local t = c:trace{ name = "t", user_id = "u", tags = { "x" } }
      local s = t:span{ name = "s" }
      local g = s:generation{ name = "g", model = "m",
                              usage_details = { input = 1 } }
      g:finish{ output = "o" }
      local e = t:event{ name = "e" }
      s:finish()
      t:finish{ output = "done" }
      assert.is_true(c:flush(FLUSH_WAIT))
      local by_type = {}
      for _, ev in ipairs(h.events().events) do
        by_type[ev.type] = ev.body
      end
      assert.same({ id = t.id, name = "t", userId = "u", tags = { "x" },
                    output = "done", environment = "dev",
                    timestamp = by_type["trace-create"].timestamp },
                  by_type["trace-create"])
      local gb = by_type["generation-create"]
      assert.equal(g.id, gb.id)
      assert.equal(t.id, gb.traceId)
      assert.equal(s.id, gb.parentObservationId)
      assert.equal("m", gb.model)
      assert.equal("o", gb.output)
      assert.same({ input = 1 }, gb.usageDetails)
      assert.equal("dev", gb.environment)
      assert.is_string(gb.startTime)
      assert.is_string(gb.endTime)
      assert.is_nil(by_type["span-create"].parentObservationId)
      assert.equal(e.id, by_type["event-create"].id)
      assert.is_nil(by_type["event-create"].endTime)
      assert.is_false(has_spans(t.id))
    end)

    it("sends an update after the end as *-update or trace-create",
       function()
      local c = client{ protocol = "ingestion" }
      local t = c:trace{ name = "t" }
      local g = t:generation{ name = "g" }
      g:finish()
      t:finish()
      g:update{ output = "late" }
      t:update{ output = "late too" }
      assert.is_true(c:flush(FLUSH_WAIT))
      local updates, traces = {}, {}
      for _, ev in ipairs(h.events().events) do
        if ev.type == "generation-update" then
          updates[#updates + 1] = ev.body
        elseif ev.type == "trace-create" then
          traces[#traces + 1] = ev.body
        end
      end
      assert.same({ { id = g.id, traceId = t.id, output = "late" } },
                  updates)
      assert.equal(2, #traces)
      assert.equal("late too", traces[2].output)
    end)
  end)
end)
