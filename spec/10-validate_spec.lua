-- Schema validation of ingestion events: core.validate and
-- core.validate_body, against the server's rules for each event type.

local core = require("langfuse.core")
local cjson = require("cjson")

local null = cjson.null
local TS = "2024-05-01T12:00:00.000000Z"


-- A valid event of the given type, with fields copied over a minimal
-- valid body.
local BASE_BODIES = {
  ["trace-create"] = { id = "trace-1" },
  ["score-create"] = { name = "quality", value = 1, traceId = "trace-1" },
  ["event-create"] = { id = "obs-1", traceId = "trace-1" },
  ["span-create"] = { id = "obs-1", traceId = "trace-1" },
  ["span-update"] = { id = "obs-1" },
  ["generation-create"] = { id = "obs-1", traceId = "trace-1" },
  ["generation-update"] = { id = "obs-1" },
  ["agent-create"] = { id = "obs-1" },
  ["tool-create"] = { id = "obs-1" },
  ["chain-create"] = { id = "obs-1" },
  ["retriever-create"] = { id = "obs-1" },
  ["evaluator-create"] = { id = "obs-1" },
  ["embedding-create"] = { id = "obs-1" },
  ["guardrail-create"] = { id = "obs-1" },
  ["sdk-log"] = { log = { message = "hello" } },
  ["observation-create"] = { type = "SPAN" },
  ["observation-update"] = { type = "GENERATION", id = "obs-1" },
}


local function event(type, fields, envelope)
  local body = {}
  for k, v in pairs(BASE_BODIES[type] or {}) do
    body[k] = v
  end
  for k, v in pairs(fields or {}) do
    body[k] = v
  end
  local ev = { id = "ev-1", type = type, timestamp = TS, body = body }
  for k, v in pairs(envelope or {}) do
    ev[k] = v
  end
  return ev
end


-- The problems of validating events, as a path -> message map (and the
-- raw list).
local function problems(events, opts)
  local ok, list = core.validate(events, opts)
  local by_path = {}
  if ok then
    return by_path, {}
  end
  for _, p in ipairs(list) do
    by_path[p.path] = p.message
  end
  return by_path, list
end


-- The problems of one event of the given type and body fields.
local function body_problems(type, fields, opts)
  return problems({ event(type, fields) }, opts)
end


local function count(t)
  local n = 0
  for _ in pairs(t) do
    n = n + 1
  end
  return n
end


local function deep_copy(v)
  if type(v) ~= "table" then
    return v
  end
  local t = {}
  for k, x in pairs(v) do
    t[k] = deep_copy(x)
  end
  return t
end


describe("langfuse.core", function()

  describe("validate()", function()

    it("refuses the event {event, timestamp = 'not-a-timestamp'}",
       function()
      local p, list = problems({
        { event = "start", timestamp = "not-a-timestamp" },
      })
      assert.same({ "body", "event", "timestamp", "type" },
                  (function()
                    local paths = {}
                    for path in pairs(p) do
                      paths[#paths + 1] = path
                    end
                    table.sort(paths)
                    return paths
                  end)())
      for _, problem in ipairs(list) do
        assert.equal(1, problem.index)
        assert.is_nil(problem.id)
      end
      assert.equal("expected an ISO 8601 date-time ending in Z or "
                   .. "\u{b1}HH:MM, got \"not-a-timestamp\" (not of the form "
                   .. "YYYY-MM-DDTHH:MM[:SS[.fraction]])", p.timestamp)
      assert.equal("unknown field 'event' in the event envelope", p.event)
      assert.equal("required field is missing", p.type)
      assert.equal("required field is missing", p.body)
    end)

    it("accepts that event once it has a type, a body and an epoch "
       .. "timestamp", function()
      local ev = {
        type = "span-create", body = { id = "span-1", traceId = "t-1" },
        timestamp = 1680000000,
      }
      assert.is_true(core.validate({ ev }))
      local json, n, list = core.encode_batch({ ev })
      assert.equal(1, n)
      assert.same({}, list)
      local out = cjson.decode(json).batch[1]
      assert.equal("2023-03-28T10:40:00.000000Z", out.timestamp)
      assert.equal(1680000000, ev.timestamp)
    end)

    it("accepts a minimal valid event of every known type", function()
      for type in pairs(BASE_BODIES) do
        local ok, list = core.validate({ event(type) })
        assert.is_true(ok, type .. ": "
                       .. (list and list[1] and list[1].path .. " "
                           .. list[1].message or ""))
      end
    end)

    it("returns true alone for an empty array", function()
      assert.same({ true }, { core.validate({}) })
    end)

    it("does not modify the events, not even to fill in id and "
       .. "timestamp", function()
      local ev = event("generation-create", {
        startTime = 1680000000, metadata = { a = { 1, 2 } },
      })
      ev.id, ev.timestamp = nil, nil
      local before = deep_copy(ev)
      assert.is_true(core.validate({ ev }))
      assert.same(before, ev)
    end)

    it("gives the index of each refused event and its envelope id",
       function()
      local bad = event("span-create", { level = "LOUD" })
      bad.id = "ev-bad"
      local anonymous = event("span-create", { level = "LOUD" })
      anonymous.id = nil
      local ok, list = core.validate({
        event("span-create"), bad, event("trace-create"), anonymous,
      })
      assert.is_false(ok)
      assert.equal(2, #list)
      assert.same({ 2, "ev-bad", "body.level" },
                  { list[1].index, list[1].id, list[1].path })
      assert.same({ 4, nil, "body.level" },
                  { list[2].index, list[2].id, list[2].path })
    end)

    it("refuses an event that is not a table, with path \"\"", function()
      local _, list = problems({ event("span-create"), "event", 42 })
      assert.equal(2, #list)
      assert.same({ 2, "", "expected an event table, got \"event\"" },
                  { list[1].index, list[1].path, list[1].message })
      assert.same({ 3, "", "expected an event table, got 42" },
                  { list[2].index, list[2].path, list[2].message })
    end)

    it("raises when events is not a table or an option is wrong",
       function()
      assert.has_error(function() core.validate("x") end)
      assert.has_error(function() core.validate({}, { depth = 3 }) end)
      assert.has_error(function() core.validate({}, { strict = 1 }) end)
      assert.has_error(function() core.validate({}, { max_depth = 0 }) end)
      assert.has_error(function()
        core.validate({}, { max_depth = 1001 })
      end)
      assert.has_error(function()
        core.validate({}, { max_event_bytes = 1.5 })
      end)
      assert.has_error(function() core.validate({}, "strict") end)
    end)

    it("refuses unknown event types and the internal dataset type",
       function()
      local p = problems({ event("span-make") })
      assert.matches("unknown event type; expected one of trace-create, ",
                     p.type, 1, true)
      assert.matches("got \"span-make\"", p.type, 1, true)
      p = problems({ event("dataset-run-item-create") })
      assert.matches("internal use", p.type, 1, true)
      p = problems({ event(42) })
      assert.equal("expected an event type string, got 42", p.type)
    end)

    it("still checks the values of a body whose type is unknown",
       function()
      local p = problems({ event("nope", { x = 0 / 0 }) })
      assert.equal("NaN is not valid JSON", p["body.x"])
    end)

    it("refuses a body that is not a table, and a null body", function()
      local ev = event("span-create")
      ev.body = "body"
      assert.equal("expected a table (the event body), got \"body\"",
                   problems({ ev }).body)
      ev.body = null
      assert.equal("expected a table (the event body), got null",
                   problems({ ev }).body)
    end)

    it("refuses null for the envelope id, type and timestamp", function()
      for _, field in ipairs({ "id", "type", "timestamp" }) do
        local ev = event("span-create")
        ev[field] = null
        assert.equal("must not be null", problems({ ev })[field], field)
      end
    end)

    it("accepts any JSON as envelope metadata", function()
      assert.same({}, problems({
        event("span-create", nil, { metadata = { sdk = { "lua", 1 } } }),
      }))
    end)

    describe("required fields", function()

      it("requires body.id on every observation type", function()
        for _, type in ipairs({
          "event-create", "span-create", "span-update",
          "generation-create", "generation-update", "agent-create",
          "tool-create", "chain-create", "retriever-create",
          "evaluator-create", "embedding-create", "guardrail-create",
        }) do
          local ev = event(type)
          ev.body.id = nil
          assert.equal("required field is missing",
                       problems({ ev })["body.id"], type)
        end
      end)

      it("requires body.id on a trace, but not on a score", function()
        local ev = event("trace-create")
        ev.body.id = nil
        assert.equal("required field is missing",
                     problems({ ev })["body.id"])
        assert.same({}, body_problems("score-create", { id = nil }))
      end)

      it("refuses a null body.id", function()
        assert.equal("must not be null",
                     body_problems("span-create", { id = null })["body.id"])
      end)

      it("requires log on sdk-log and type on legacy observations",
         function()
        local ev = event("sdk-log")
        ev.body.log = nil
        assert.equal("required field is missing",
                     problems({ ev })["body.log"])
        ev = event("observation-create")
        ev.body.type = nil
        assert.equal("required field is missing",
                     problems({ ev })["body.type"])
        assert.matches("expected one of SPAN, GENERATION, EVENT",
                       body_problems("observation-create",
                                     { type = "AGENT" })["body.type"],
                       1, true)
      end)

    end)

    describe("unknown fields", function()

      it("reports snake_case fields with the camelCase name", function()
        local cases = {
          { "span-create", "start_time", "startTime" },
          { "span-create", "trace_id", "traceId" },
          { "generation-create", "model_parameters", "modelParameters" },
          { "generation-create", "usage_details", "usageDetails" },
          { "trace-create", "user_id", "userId" },
          { "score-create", "data_type", "dataType" },
          { "span-create", "TraceId", "traceId" },
          { "span-create", "status-message", "statusMessage" },
        }
        for _, c in ipairs(cases) do
          local p = body_problems(c[1], { [c[2]] = "x" })
          local path = c[2]:find("-") and 'body["' .. c[2] .. '"]'
                       or "body." .. c[2]
          assert.equal("unknown field '" .. c[2] .. "' (did you mean '"
                       .. c[3] .. "'?)", p[path])
        end
      end)

      it("reports fields no schema knows, naming the schema", function()
        assert.equal("unknown field 'colour' in the span body",
                     body_problems("span-create",
                                   { colour = "red" })["body.colour"])
        assert.equal("unknown field 'endTime' in the event body",
                     body_problems("event-create",
                                   { endTime = TS })["body.endTime"])
        assert.equal("unknown field 'environment' in the observation "
                     .. "body",
                     body_problems("observation-create",
                                   { environment = "x" })
                       ["body.environment"])
      end)

      it("checks the fields of usage too", function()
        local p = body_problems("generation-create",
                                { usage = { prompt_tokens = 3 } })
        assert.equal("unknown field 'prompt_tokens' (did you mean "
                     .. "'promptTokens'?)", p["body.usage.prompt_tokens"])
      end)

      it("quotes odd keys in the path and the message", function()
        local p = body_problems("span-create", {
          ["a b"] = 1, ["x\n"] = 2,
        })
        assert.equal("unknown field 'a b' in the span body",
                     p['body["a b"]'])
        assert.equal("unknown field \"x\\n\" in the span body",
                     p['body["x\\n"]'])
      end)

      it("refuses field names that are not strings", function()
        local p = body_problems("span-create", { [1] = "x" })
        assert.equal("field names must be strings (key 1)", p.body)
        local ev = event("span-create")
        ev[true] = 1
        assert.equal("field names must be strings (key true)",
                     problems({ ev })[""])
      end)

      it("lets unknown fields through when strict is false", function()
        local ev = event("span-create", { colour = "red" },
                         { extra = { 1 } })
        assert.is_true(core.validate({ ev }, { strict = false }))
      end)

    end)

    describe("ids", function()

      local function n_chars(c, n)
        return string.rep(c, n)
      end

      local cases = {
        { "x", true },
        { n_chars("a", 800), true },
        { n_chars("\u{1F600}", 400), true },   -- 800 UTF-16 units
        { "", false, "an id must be 1 to 800 characters, got 0" },
        { n_chars("a", 801), false,
          "an id must be 1 to 800 characters, got 801" },
        { n_chars("\u{1F600}", 401), false,
          "an id must be 1 to 800 characters, got 802" },
        { "a\rb", false,
          "an id must not contain a carriage return (\\r)" },
        { 42, false, "expected a string, got 42" },
      }

      it("checks envelope id, body.id and body.traceId alike", function()
        for _, c in ipairs(cases) do
          for _, where in ipairs({ "id", "body.id", "body.traceId" }) do
            local ev = event("span-create")
            if where == "id" then
              ev.id = c[1]
            elseif where == "body.id" then
              ev.body.id = c[1]
            else
              ev.body.traceId = c[1]
            end
            local p = problems({ ev })
            assert.equal(c[3], p[where], where)
            assert.equal(c[2] and 0 or 1, count(p), where)
          end
        end
      end)

      it("refuses a NUL byte in the envelope id only", function()
        local p = problems({ event("span-create", nil, { id = "a\0b" }) })
        assert.matches("an envelope id must not contain a NUL byte", p.id,
                       1, true)
        assert.same({}, body_problems("span-create", { traceId = "a\0b" }))
      end)

      it("takes parentObservationId and score ids as plain strings",
         function()
        assert.same({}, body_problems("span-create", {
          parentObservationId = n_chars("a", 900),
        }))
        assert.same({}, body_problems("score-create", {
          traceId = "a\rb", observationId = n_chars("a", 900),
        }))
      end)

    end)

    describe("strings", function()

      it("limits a trace name to 1000 characters", function()
        assert.same({}, body_problems("trace-create",
                                      { name = string.rep("n", 1000) }))
        assert.equal("must be at most 1000 characters, got 1001",
                     body_problems("trace-create",
                                   { name = string.rep("n", 1001) })
                       ["body.name"])
      end)

      it("refuses values that are not strings in string fields",
         function()
        local p = body_problems("span-create", {
          name = 1, version = true, statusMessage = {},
        })
        assert.equal("expected a string, got 1", p["body.name"])
        assert.equal("expected a string, got true", p["body.version"])
        assert.equal("expected a string, got a table",
                     p["body.statusMessage"])
      end)

      it("takes null for optional fields but not for environment",
         function()
        assert.same({}, body_problems("generation-create", {
          name = null, level = null, model = null, usage = null,
          startTime = null, metadata = null, input = null,
        }))
        assert.equal("must not be null",
                     body_problems("span-create", { environment = null })
                       ["body.environment"])
      end)

      it("refuses invalid UTF-8 anywhere in an event", function()
        local p = body_problems("span-create", {
          name = "ok\xff", metadata = { ["k\xc0\x80"] = "v" },
        })
        assert.equal("invalid UTF-8 at byte 3 in \"ok\\xff\"",
                     p["body.name"])
        assert.equal("invalid UTF-8 at byte 2 in \"k\\xc0\\x80\"",
                     p['body.metadata["k\\xc0\\x80"]'])
      end)

    end)

    describe("date-times", function()

      local valid = {
        "2023-03-28T10:40:00Z", "2023-03-28T10:40Z",
        "2023-03-28T10:40:00.1Z", "2023-03-28T10:40:00.123456789Z",
        "2023-03-28T10:40:00+02:00", "2023-03-28T10:40:00-11:30",
        "2024-02-29T00:00:00Z", "2000-02-29T23:59:59Z",
        "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z",
      }
      local invalid = {
        { "2023-03-28T10:40:00", "missing time zone" },
        { "2023-03-28T10:40:00z", "lowercase z" },
        { "2023-03-28 10:40:00Z", "a space separates" },
        { "2023-03-28T10:40:00+0200", "must be +HH:MM" },
        { "2023-03-28T10:40:00+24:00", "offset out of range" },
        { "2023-02-29T10:40:00Z", "no such date" },
        { "1900-02-29T10:40:00Z", "no such date" },
        { "2023-13-01T10:40:00Z", "no such date" },
        { "2023-04-31T10:40:00Z", "no such date" },
        { "2023-03-28T24:00:00Z", "time of day out of range" },
        { "2023-03-28T10:60:00Z", "time of day out of range" },
        { "2023-03-28T10:40:60Z", "time of day out of range" },
        { "2023-03-28T10:40:00.Z", "no digits after" },
        { "2023-03-28", "not of the form" },
        { "23-03-28T10:40:00Z", "not of the form" },
        { "2023-03-28T10:40:00Z ", "unexpected text after" },
        { "", "not of the form" },
      }

      it("accepts the forms zod's iso.datetime({offset: true}) accepts",
         function()
        for _, s in ipairs(valid) do
          assert.same({}, body_problems("span-create",
                                        { startTime = s, endTime = s }), s)
        end
      end)

      it("refuses the other forms, saying why", function()
        for _, c in ipairs(invalid) do
          local p = body_problems("generation-create",
                                  { completionStartTime = c[1] })
          local m = p["body.completionStartTime"]
          assert.is_string(m, c[1])
          assert.matches("expected an ISO 8601 date-time ending in Z or "
                         .. "\u{b1}HH:MM, got ", m, 1, true)
          assert.matches(c[2], m, 1, true)
        end
      end)

      it("takes epoch seconds and milliseconds, refuses other types",
         function()
        assert.same({}, body_problems("trace-create", {
          timestamp = 1680000000.25,
        }))
        assert.same({}, body_problems("span-create", {
          startTime = 1680000000250,
        }))
        assert.equal("epoch time out of range (years 0000 to 9999), got "
                     .. "1e+20",
                     body_problems("span-create", { startTime = 1e20 })
                       ["body.startTime"])
        assert.equal("expected an ISO 8601 date-time string or an epoch "
                     .. "number, got true",
                     body_problems("span-create", { endTime = true })
                       ["body.endTime"])
      end)

    end)

    describe("enums and scalars", function()

      it("checks level, usage unit, source and dataType values",
         function()
        local p = body_problems("span-create", { level = "debug" })
        assert.equal("expected one of DEBUG, DEFAULT, WARNING, ERROR, got "
                     .. "\"debug\"", p["body.level"])
        p = body_problems("generation-create",
                          { usage = { unit = "WORDS" } })
        assert.matches("expected one of CHARACTERS, TOKENS",
                       p["body.usage.unit"], 1, true)
        p = body_problems("score-create", { source = "HUMAN" })
        assert.matches("expected one of API, EVAL, ANNOTATION",
                       p["body.source"], 1, true)
        p = body_problems("score-create", { dataType = "FLOAT" })
        assert.matches("expected one of NUMERIC, CATEGORICAL, BOOLEAN, "
                       .. "CORRECTION, TEXT", p["body.dataType"], 1, true)
        for _, level in ipairs({ "DEBUG", "DEFAULT", "WARNING", "ERROR" }) do
          assert.same({}, body_problems("event-create", { level = level }))
        end
      end)

      it("takes a boolean for public and strings for tags", function()
        assert.same({}, body_problems("trace-create", {
          public = true, tags = { "a", "b" },
        }))
        assert.same({}, body_problems("trace-create", { tags = {} }))
        local p = body_problems("trace-create", {
          public = "yes", tags = { "a", 2 },
        })
        assert.equal("expected a boolean, got \"yes\"", p["body.public"])
        assert.equal("expected a string, got 2", p["body.tags[2]"])
        p = body_problems("trace-create", { tags = { a = "b" } })
        assert.equal("expected an array, got an object", p["body.tags"])
        p = body_problems("trace-create", { tags = "a,b" })
        assert.equal("expected an array of strings, got \"a,b\"",
                     p["body.tags"])
      end)

    end)

    describe("generation fields", function()

      it("takes integer token counts and numeric costs in usage",
         function()
        assert.same({}, body_problems("generation-create", {
          usage = { input = 3, output = 4, total = 7, unit = "TOKENS",
                    inputCost = 0.5, outputCost = 1, totalCost = 1.5 },
        }))
        assert.same({}, body_problems("generation-create", {
          usage = { promptTokens = 3, completionTokens = 4,
                    totalTokens = 7 },
        }))
        local p = body_problems("generation-create", {
          usage = { input = 1.5, totalCost = "1" },
        })
        assert.equal("expected an integer, got 1.5", p["body.usage.input"])
        assert.equal("expected a number, got \"1\"",
                     p["body.usage.totalCost"])
      end)

      it("takes non-negative integers in usageDetails", function()
        assert.same({}, body_problems("generation-create", {
          usageDetails = { input = 10, output = 0, cache_read = 2,
                           total = null },
        }))
        local p = body_problems("generation-create", {
          usageDetails = { a = -1, b = 1.5, c = "3", d = { 1 } },
        })
        assert.equal("expected a non-negative integer, got -1",
                     p["body.usageDetails.a"])
        assert.equal("expected a non-negative integer, got 1.5",
                     p["body.usageDetails.b"])
        assert.equal("expected a non-negative integer, got \"3\"",
                     p["body.usageDetails.c"])
        assert.equal("expected a non-negative integer, got a table",
                     p["body.usageDetails.d"])
        assert.equal("expected an integer below 2^53 in magnitude, got "
                     .. "9007199254740992",
                     body_problems("generation-create", {
                       usageDetails = { a = 2 ^ 53 },
                     })["body.usageDetails.a"])
      end)

      it("takes the OpenAI usage objects with their nested details",
         function()
        assert.same({}, body_problems("generation-create", {
          usageDetails = {
            prompt_tokens = 10, completion_tokens = 5, total_tokens = 15,
            prompt_tokens_details = { cached_tokens = 2, audio = null },
            completion_tokens_details = { reasoning_tokens = 1 },
          },
        }))
        local p = body_problems("generation-create", {
          usageDetails = { input_tokens_details = { cached = -2 } },
        })
        assert.equal("expected a non-negative integer, got -2",
                     p["body.usageDetails.input_tokens_details.cached"])
      end)

      it("refuses a usageDetails or costDetails that is not a map",
         function()
        local p = body_problems("generation-create", {
          usageDetails = { 1, 2 }, costDetails = 3,
        })
        assert.equal("expected an object (string keys), got an array",
                     p["body.usageDetails"])
        assert.equal("expected a table of costs, got 3",
                     p["body.costDetails"])
      end)

      it("takes non-negative numbers in costDetails", function()
        assert.same({}, body_problems("generation-create", {
          costDetails = { input = 0.000125, output = 2, total = null },
        }))
        local p = body_problems("generation-create", {
          costDetails = { input = -0.5, output = "1" },
        })
        assert.equal("expected a non-negative number, got -0.5",
                     p["body.costDetails.input"])
        assert.equal("expected a non-negative number, got \"1\"",
                     p["body.costDetails.output"])
      end)

      it("takes modelParameters of scalars, string arrays and string "
         .. "maps", function()
        assert.same({}, body_problems("generation-create", {
          modelParameters = {
            temperature = 0.7, max_tokens = 100, stream = false,
            model = "x", stop = { "\n", "END" },
            logit_bias = { ["50256"] = "-100" }, seed = null, tools = {},
          },
        }))
        local p = body_problems("generation-create", {
          modelParameters = {
            nested = { a = 1 }, list = { { role = "x" } },
            fn = print,
          },
        })
        assert.equal("expected a string, got 1",
                     p["body.modelParameters.nested.a"])
        assert.equal("expected a string, got a table",
                     p["body.modelParameters.list[1]"])
        assert.equal("expected a string, number, boolean, array of strings "
                     .. "or object of strings, got a function",
                     p["body.modelParameters.fn"])
      end)

      it("takes only scalars in legacy observation modelParameters",
         function()
        local p = body_problems("observation-create", {
          modelParameters = { t = 0.5, stop = { "x" } },
        })
        assert.equal("expected a string, number or boolean, got a table",
                     p["body.modelParameters.stop"])
        assert.equal(1, count(p))
      end)

      it("wants promptName and promptVersion together", function()
        assert.same({}, body_problems("generation-create", {
          promptName = "p", promptVersion = 3,
        }))
        assert.equal("promptName and promptVersion must be set together",
                     body_problems("generation-create",
                                   { promptName = "p" })
                       ["body.promptVersion"])
        assert.equal("promptName and promptVersion must be set together",
                     body_problems("generation-update",
                                   { promptVersion = 2 })
                       ["body.promptName"])
        -- zero is not a version for the server's truthiness check
        assert.equal("promptName and promptVersion must be set together",
                     body_problems("generation-create", {
                       promptName = "p", promptVersion = 0,
                     })["body.promptVersion"])
        assert.equal("expected an integer, got 1.5",
                     body_problems("generation-create", {
                       promptName = "p", promptVersion = 1.5,
                     })["body.promptVersion"])
      end)

      it("takes an integral float as an integer", function()
        assert.same({}, body_problems("generation-create", {
          promptName = "p", promptVersion = 3.0,
          usage = { input = 2.0 },
        }))
      end)

    end)

    describe("scores", function()

      it("requires a non-empty name and a value", function()
        local ev = event("score-create")
        ev.body.name, ev.body.value = nil, nil
        local p = problems({ ev })
        assert.equal("required field is missing", p["body.name"])
        assert.equal("required field is missing", p["body.value"])
        assert.equal("must not be empty",
                     body_problems("score-create", { name = "" })
                       ["body.name"])
        assert.equal("expected a number or a string, got true",
                     body_problems("score-create", { value = true })
                       ["body.value"])
      end)

      it("wants exactly one of traceId, sessionId and datasetRunId",
         function()
        assert.same({}, body_problems("score-create",
                                      { traceId = null, sessionId = "s" }))
        assert.same({}, body_problems("score-create",
                                      { traceId = null,
                                        datasetRunId = "d" }))
        local ev = event("score-create")
        ev.body.traceId = nil
        assert.equal("one of traceId, sessionId or datasetRunId is "
                     .. "required", problems({ ev }).body)
        assert.equal("give exactly one of traceId, sessionId and "
                     .. "datasetRunId, not 2",
                     body_problems("score-create", { sessionId = "s" })
                       .body)
        -- an empty string counts as absent, as in the server's check
        assert.equal("one of traceId, sessionId or datasetRunId is "
                     .. "required",
                     body_problems("score-create", { traceId = "" }).body)
      end)

      it("takes observationId only with traceId", function()
        assert.same({}, body_problems("score-create",
                                      { observationId = "o" }))
        assert.equal("observationId needs traceId",
                     body_problems("score-create", {
                       traceId = null, sessionId = "s",
                       observationId = "o",
                     })["body.observationId"])
      end)

      local cases = {
        { "NUMERIC", 0.5, nil },
        { "NUMERIC", "0.5", "dataType NUMERIC needs a number value, got "
                            .. "a string" },
        { "BOOLEAN", 1, nil },
        { "BOOLEAN", 0, nil },
        { "BOOLEAN", 2, "dataType BOOLEAN needs the value 0 or 1, got 2" },
        { "BOOLEAN", "true", "dataType BOOLEAN needs a number value, got "
                             .. "a string" },
        { "CATEGORICAL", "good", nil },
        { "CATEGORICAL", 1, "dataType CATEGORICAL needs a string value, "
                            .. "got a number" },
        { "CORRECTION", "fixed text", nil },
        { "TEXT", string.rep("t", 500), nil },
        { "TEXT", string.rep("t", 501), "dataType TEXT needs 1 to 500 "
                                        .. "characters, got 501" },
        { "TEXT", "", "dataType TEXT needs 1 to 500 characters, got 0" },
        { "TEXT", 3, "dataType TEXT needs a string value, got a number" },
      }

      it("checks the value against dataType", function()
        for _, c in ipairs(cases) do
          local p = body_problems("score-create",
                                  { dataType = c[1], value = c[2] })
          assert.equal(c[3], p["body.value"], c[1] .. " " .. tostring(c[2]))
          assert.equal(c[3] and 1 or 0, count(p))
        end
        assert.same({}, body_problems("score-create", { value = "any" }))
        assert.equal("must not be null",
                     body_problems("score-create", { dataType = null })
                       ["body.dataType"])
      end)

      it("refuses configId with dataType CORRECTION", function()
        assert.equal("configId is not allowed with dataType CORRECTION",
                     body_problems("score-create", {
                       dataType = "CORRECTION", value = "x", configId = "c",
                     })["body.configId"])
        assert.same({}, body_problems("score-create", {
          dataType = "NUMERIC", value = 1, configId = "c",
        }))
      end)

    end)

    describe("values", function()

      it("refuses NaN, infinities and functions with their path",
         function()
        local p = body_problems("span-create", {
          metadata = { a = { 1, 0 / 0 }, b = math.huge, c = -math.huge,
                       d = print },
          input = { coroutine.create(print) },
        })
        assert.equal("NaN is not valid JSON", p["body.metadata.a[2]"])
        assert.equal("inf is not valid JSON", p["body.metadata.b"])
        assert.equal("-inf is not valid JSON", p["body.metadata.c"])
        assert.equal("cannot encode a function", p["body.metadata.d"])
        assert.equal("cannot encode a thread", p["body.input[1]"])
      end)

      it("refuses cycles, mixed and sparse tables in an event", function()
        local cyc = {}
        cyc.me = cyc
        local p = body_problems("span-create", {
          metadata = { cyc = cyc, mixed = { 1, x = 2 },
                       sparse = { [1] = 1, [3] = 3 } },
        })
        assert.equal("cycle: this table is also at body.metadata.cyc",
                     p["body.metadata.cyc.me"])
        assert.equal("table mixes array items and string keys (key \"x\")",
                     p["body.metadata.mixed"])
        assert.equal("array with holes: 2 items, highest position 3",
                     p["body.metadata.sparse"])
      end)

      it("refuses a body that is its own event", function()
        local ev = event("span-create")
        ev.body = ev
        assert.equal("cycle: this table is also the outermost table",
                     problems({ ev }).body)
      end)

      it("counts max_depth from the event table", function()
        local ev = event("span-create", { metadata = { a = { b = {} } } })
        -- event 1, body 2, metadata 3, a 4, b 5
        assert.same({}, problems({ ev }, { max_depth = 5 }))
        assert.equal("nested deeper than max_depth (4)",
                     problems({ ev }, { max_depth = 4 })
                       ["body.metadata.a.b"])
      end)

    end)

    describe("limits", function()

      it("refuses an event over max_event_bytes with one problem",
         function()
        local ev = event("span-create", { input = string.rep("x", 2000) })
        assert.same({}, problems({ ev }, { max_event_bytes = 3000 }))
        local _, list = problems({ ev }, { max_event_bytes = 1000 })
        assert.equal(1, #list)
        assert.equal("", list[1].path)
        assert.matches("^event is %d+ bytes as JSON, over max_event_bytes "
                       .. "%(1000%)$", list[1].message)
      end)

      it("refuses an event of 10 MB under the default limit", function()
        local ev = event("span-create",
                         { input = string.rep("x", 10 * 1000 * 1000) })
        local _, list = problems({ ev })
        assert.equal(1, #list)
        assert.matches("over max_event_bytes (1000000)", list[1].message,
                       1, true)
      end)

      it("lists at most 20 problems per event, then says there are more",
         function()
        local bad = {}
        for i = 1, 100 do
          bad[i] = 0 / 0
        end
        local _, list = problems({
          event("span-create", { input = bad }),
          event("span-create", { input = { 0 / 0 } }),
        })
        assert.equal(22, #list)
        assert.equal("body.input[20]", list[20].path)
        assert.same({ 1, "", "more problems in this event are not listed" },
                    { list[21].index, list[21].path, list[21].message })
        assert.same({ 2, "body.input[1]" }, { list[22].index, list[22].path })
      end)

    end)

  end)

  describe("validate_body()", function()

    it("checks a body by its event type, with paths from the body",
       function()
      assert.is_true(core.validate_body("generation-create", {
        id = "g", model = "m", usageDetails = { input = 1 },
      }))
      local ok, list = core.validate_body("generation-create", {
        id = "g", start_time = 1, level = "x",
      })
      assert.is_false(ok)
      local p = {}
      for _, problem in ipairs(list) do
        p[problem.path] = problem.message
        assert.is_nil(problem.index)
      end
      assert.equal("unknown field 'start_time' (did you mean "
                   .. "'startTime'?)", p.start_time)
      assert.matches("expected one of DEBUG", p.level, 1, true)
    end)

    it("skips required fields with partial = true", function()
      assert.is_false(core.validate_body("span-create", { name = "n" }))
      assert.is_true(core.validate_body("span-create", { name = "n" },
                                        { partial = true }))
      assert.is_true(core.validate_body("score-create", { comment = "c" },
                                        { partial = true }))
      assert.is_false(core.validate_body("score-create",
                                         { traceId = "t", sessionId = "s" },
                                         { partial = true }))
    end)

    it("raises for an unknown type, a body that is not a table and "
       .. "unknown options", function()
      assert.has_error(function() core.validate_body("span", {}) end)
      assert.has_error(function() core.validate_body("span-create", 1) end)
      assert.has_error(function()
        core.validate_body("span-create", {}, { partal = true })
      end)
      assert.has_error(function()
        core.validate({}, { partial = true })
      end)
    end)

  end)

end)
