-- Hostile input: values JSON cannot carry or that try to break the
-- walker.  Each case ends with a clear validation problem naming the
-- event and the path, or with a delivery, and every event of the call is
-- accounted for: delivered once (per the test server) or listed in
-- err.failed, never both, never neither.

local h = require("helpers")
local langfuse = require("langfuse")
local core = require("langfuse.core")

local INGESTION = "/api/public/ingestion"
-- The largest max_depth the client accepts.
local MAX_DEPTH_LIMIT = 1000


local function accounted(events, res, err)
  return h.accounted(events, res, err)
end


-- The event the test server stored under envelope id.
local function stored(id)
  for _, e in ipairs(h.events().events) do
    if e.id == id then
      return e
    end
  end
  return nil
end


-- Paths of the problems of one failure entry.
local function paths(f)
  local out = {}
  for _, p in ipairs(f.problems or {}) do
    out[#out + 1] = (p.path or "") .. ": " .. p.message
  end
  return table.concat(out, "\n")
end


-- Uploads a valid trace, an event carrying value at body.metadata.x,
-- and another valid trace.
local function upload_with(value, opts)
  local events = h.traces(3)
  events[2].body.metadata = { x = value }
  local res, err = h.client(opts):upload_events_batch(events)
  return events, res, err
end


local function nested(levels)
  local root = {}
  local cur = root
  for _ = 1, levels do
    cur.a = {}
    cur = cur.a
  end
  return root
end


local function raising()
  error("metamethod must not run")
end

local RAISING_MT = {
  __index = raising, __newindex = raising, __len = raising,
  __pairs = raising, __ipairs = raising, __call = raising,
  __tostring = raising, __concat = raising, __eq = raising,
}


describe("hostile input", function()
  before_each(function()
    h.reset()
  end)


  describe("strings", function()
    for _, case in ipairs{
      { "a lone 0xFF byte", "a\255b" },
      { "an overlong NUL", "\192\128" },
      { "an encoded surrogate", "\237\160\128" },
      { "a cut sequence", "caf\195" },
    } do
      it("refuses invalid UTF-8 (" .. case[1] .. ") and sends the rest",
         function()
        local events = h.traces(3)
        events[2].body.name = case[2]
        local res, err = h.client():upload_events_batch(events)
        assert.is_nil(res)
        assert.equal("validation", err.kind)
        local failed = accounted(events, res, err)
        assert.truthy(failed[2])
        assert.matches("body.name: invalid UTF%-8", paths(failed[2]))
      end)
    end

    it("delivers an embedded NUL as \\u0000, length intact", function()
      local events = h.traces(1)
      events[1].body.name = "a\0b\0"
      local res, err = h.client():upload_events_batch(events)
      assert.is_nil(err)
      accounted(events, res, err)
      assert.equal("a\0b\0", h.events().events[1].body.name)
      assert.equal('"a\\u0000b"', core.encode("a\0b"))
    end)
  end)


  describe("numbers", function()
    for _, case in ipairs{
      { "NaN", 0 / 0, "NaN is not valid JSON" },
      { "infinity", 1 / 0, "inf is not valid JSON" },
      { "minus infinity", -1 / 0, "%-inf is not valid JSON" },
    } do
      it("refuses " .. case[1] .. " with the path of the value", function()
        local events, res, err = upload_with(case[2])
        assert.is_nil(res)
        local failed = accounted(events, res, err)
        assert.matches("body.metadata.x: " .. case[3], paths(failed[2]))
      end)
    end

    it("never writes a nan or inf token", function()
      for _, v in ipairs{ 0 / 0, 1 / 0, -1 / 0 } do
        local ok, msg = pcall(core.encode, { v })
        assert.is_false(ok)
        assert.matches("not valid JSON", msg)
      end
    end)

    it("writes integers beyond 2^53 exactly in free-form fields",
       function()
      local big = math.maxinteger or 2 ^ 60
      local text = math.maxinteger and "9223372036854775807"
                   or "1152921504606846976"
      assert.equal("[" .. text .. "]", core.encode{ big })
      local events, res, err = upload_with(big)
      assert.is_nil(err)
      accounted(events, res, err)
    end)

    it("refuses integers beyond 2^53 where the schema wants an integer",
       function()
      local events = { h.event("generation-create",
                               { usageDetails = { input = 2 ^ 60 } }) }
      local res, err = h.client():upload_events_batch(events)
      assert.is_nil(res)
      local failed = accounted(events, res, err)
      assert.matches("body.usageDetails.input: expected an integer below "
                     .. "2%^53", paths(failed[1]))
    end)
  end)


  describe("tables", function()
    it("refuses nesting of 10,000 levels without overflowing the stack",
       function()
      local events, res, err = upload_with(nested(10000))
      assert.is_nil(res)
      local failed = accounted(events, res, err)
      assert.matches("nested deeper than max_depth %(64%)",
                     paths(failed[2]))
    end)

    it("refuses 10,000 levels at the largest max_depth too", function()
      local events, res, err = upload_with(nested(10000),
                                           { max_depth = MAX_DEPTH_LIMIT })
      assert.is_nil(res)
      local failed = accounted(events, res, err)
      assert.matches("max_depth %(1000%)", paths(failed[2]))
    end)

    it("refuses a cycle and names where it closes", function()
      local cyc = { name = "loop" }
      cyc.self = cyc
      local events, res, err = upload_with(cyc)
      assert.is_nil(res)
      local failed = accounted(events, res, err)
      assert.matches("body.metadata.x.self: cycle", paths(failed[2]))
    end)

    it("refuses an event that contains itself", function()
      local events = h.traces(2)
      events[1].body.metadata = { back = events[1] }
      local res, err = h.client():upload_events_batch(events)
      assert.is_nil(res)
      local failed = accounted(events, res, err)
      assert.matches("cycle", paths(failed[1]))
    end)

    it("accepts the same table in two places", function()
      local shared = { k = 1 }
      local events, res, err = upload_with{ a = shared, b = shared }
      assert.is_nil(err)
      accounted(events, res, err)
    end)

    it("never runs metamethods that raise, in values and events",
       function()
      local events = h.traces(3)
      events[2].body.metadata = setmetatable({ a = 1 }, RAISING_MT)
      setmetatable(events[2].body, RAISING_MT)
      setmetatable(events[3], RAISING_MT)
      local ok, valid = pcall(langfuse.validate, events)
      assert.is_true(ok)
      assert.is_true(valid)
      local res, err = h.client():upload_events_batch(events)
      assert.is_nil(err)
      accounted(events, res, err)
      assert.same({ a = 1 }, stored(events[2].id).body.metadata)
    end)

    it("validates an events array whose metamethods raise", function()
      local events = setmetatable(h.traces(2), RAISING_MT)
      local ok, valid = pcall(langfuse.validate, events)
      assert.is_true(ok)
      assert.is_true(valid)
    end)

    it("uploads an events array whose __len raises", function()
      local events = setmetatable(h.traces(2), RAISING_MT)
      local ok, res = pcall(h.client().upload_events_batch, h.client(),
                            events)
      assert.is_true(ok)
      assert.equal(2, res.accepted)
    end)

    it("refuses functions, userdata and threads as values", function()
      local events, res, err = upload_with{
        f = print, u = io.stdout, co = coroutine.create(print),
        n = core.null,
      }
      assert.is_nil(res)
      local failed = accounted(events, res, err)
      local p = paths(failed[2])
      assert.matches("body.metadata.x.f: cannot encode a function", p)
      assert.matches("body.metadata.x.u: cannot encode a userdata", p)
      assert.matches("body.metadata.x.co: cannot encode a thread", p)
      assert.not_matches("x.n:", p)
    end)

    it("refuses keys JSON cannot carry", function()
      local events, res, err = upload_with{ [true] = 1, [2.5] = 2 }
      assert.is_nil(res)
      local failed = accounted(events, res, err)
      assert.matches("body.metadata.x", paths(failed[2]))
    end)
  end)


  describe("size", function()
    it("refuses one event of 10 MB before sending anything", function()
      local events = h.traces(1)
      events[1].body.input = string.rep("x", 10 * 1024 * 1024)
      local res, err = h.client():upload_events_batch(events)
      assert.is_nil(res)
      local failed = accounted(events, res, err)
      assert.matches("over max_event_bytes", failed[1].message)
      assert.equal(0, #h.requests(INGESTION))
    end)

    it("sends the others of a call with a 10 MB event", function()
      local events = h.traces(3)
      events[2].body.output = string.rep("y", 10 * 1024 * 1024)
      local res, err = h.client():upload_events_batch(events)
      assert.is_nil(res)
      local failed = accounted(events, res, err)
      assert.truthy(failed[2])
      for _, r in ipairs(h.requests(INGESTION)) do
        assert.is_true(r.body_size < 4 * 1024 * 1024)
      end
    end)

    it("accounts for each of a million tiny events", function()
      local N, EVERY = 1000000, 1000
      local body = { id = "tiny" }
      local events = {}
      for i = 1, N do
        if i % EVERY == 0 then
          events[i] = { type = "trace-create", body = body, level = i }
        else
          events[i] = { type = "trace-create", body = body }
        end
      end
      local ok, problems = langfuse.validate(events)
      assert.is_false(ok)
      local bad = {}
      for _, p in ipairs(problems) do
        bad[p.index] = (bad[p.index] or 0) + 1
      end
      local n = 0
      for i, count in pairs(bad) do
        assert.equal(0, i % EVERY)
        assert.equal(1, count)
        n = n + 1
      end
      assert.equal(N / EVERY, n)
    end)
  end)
end)
