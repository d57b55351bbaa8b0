-- JSON encoding of Lua values (core.encode), whole batches
-- (core.encode_batch), and the id and time helpers.

local core = require("langfuse.core")
local cjson = require("cjson")

local null = cjson.null
local HAS_INTEGERS = math.type ~= nil
local TS = "2024-05-01T12:00:00.000000Z"
local UUID_V4 = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-"
  .. "%x%x%x%x%x%x%x%x%x%x%x%x$"
local ISO_UTC = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%d%d%dZ$"


-- The error core.encode raises for v, or nil when it encodes.
local function encode_error(v, opts)
  local ok, err = pcall(core.encode, v, opts)
  if ok then
    return nil
  end
  return err
end


local function span(fields, envelope)
  local body = { id = "span-1", traceId = "trace-1" }
  for k, v in pairs(fields or {}) do
    body[k] = v
  end
  local ev = { id = "ev-1", type = "span-create", timestamp = TS,
               body = body }
  for k, v in pairs(envelope or {}) do
    ev[k] = v
  end
  return ev
end


-- A table nested n levels deep: {x = {x = ... {}}}.
local function nest(n)
  local root = {}
  local t = root
  for _ = 2, n do
    t.x = {}
    t = t.x
  end
  return root
end


describe("langfuse.core", function()

  describe("encode()", function()

    describe("strings", function()

      local cases = {
        { "plain", '"plain"' },
        { "", '""' },
        { 'say "hi"', '"say \\"hi\\""' },
        { "back\\slash", '"back\\\\slash"' },
        { "a/b", '"a/b"' },
        { "line\nfeed\r\ttab", '"line\\nfeed\\r\\ttab"' },
        { "\b\f", '"\\b\\f"' },
        { "nul\0inside", '"nul\\u0000inside"' },
        { "\1\31\127", '"\\u0001\\u001f\127"' },
        { "caf\u{e9} \u{20ac} \u{1F600} \u{10FFFF}",
          '"caf\u{e9} \u{20ac} \u{1F600} \u{10FFFF}"' },
        { string.rep("long plain text ", 20),
          '"' .. string.rep("long plain text ", 20) .. '"' },
        { string.rep("x", 13) .. '"', '"' .. string.rep("x", 13) .. '\\""' },
      }

      it("escapes quotes, backslashes and controls, keeps UTF-8",
         function()
        for _, c in ipairs(cases) do
          assert.equal(c[2], core.encode(c[1]))
        end
      end)

      it("writes what cjson reads back to the same string", function()
        for _, c in ipairs(cases) do
          assert.equal(c[1], cjson.decode("[" .. core.encode(c[1]) .. "]")[1])
        end
      end)

      local invalid = {
        { "\xff", 1 },
        { "ok\x80", 3 },                    -- stray continuation byte
        { "\xc0\x80", 1 },                  -- overlong NUL
        { "\xe0\x80\x80", 1 },              -- overlong three bytes
        { "\xed\xa0\x80", 1 },              -- UTF-16 surrogate D800
        { "\xf4\x90\x80\x80", 1 },          -- past U+10FFFF
        { "\xf8\x88\x80\x80\x80", 1 },      -- five-byte form
        { "abc\xe2\x82", 4 },               -- cut short at the end
        { "\xe2\x28\xa1", 1 },              -- bad continuation
      }

      it("refuses invalid UTF-8, naming the byte", function()
        for _, c in ipairs(invalid) do
          local err = encode_error(c[1])
          assert.is_string(err, c[1])
          assert.matches("cannot encode value: invalid UTF-8 at byte "
                         .. c[2] .. " in ", err, 1, true)
        end
      end)

      it("checks keys as well as values", function()
        assert.matches('cannot encode value at ["\\xff"]: invalid UTF-8',
                       encode_error({ ["\xff"] = 1 }), 1, true)
      end)

    end)

    describe("numbers", function()

      it("writes integers exactly", function()
        assert.equal("0", core.encode(0))
        assert.equal("-17", core.encode(-17))
        assert.equal("9007199254740992", core.encode(2 ^ 53))
        if HAS_INTEGERS then
          assert.equal("9007199254740993", core.encode(9007199254740993))
          assert.equal("9223372036854775807", core.encode(math.maxinteger))
          assert.equal("-9223372036854775808", core.encode(math.mininteger))
        end
      end)

      it("writes integral floats as integers and -0.0 as 0", function()
        assert.equal("3", core.encode(3.0))
        assert.equal("-2", core.encode(-2.0))
        assert.equal("1125899906842624", core.encode(2.0 ^ 50))
        assert.equal("0", core.encode(-0.0))
      end)

      it("writes floats that read back as the same double", function()
        local values = {
          0.1, 0.7, 1 / 3, 2 / 3, 1e-7, 1.5e-8, 123.456, -0.000125,
          6.02214076e23, 1e300, -1e-300, 5e-324, 2 ^ 53 + 0.5 * 3,
          1.7976931348623157e308, 4.35, 0.30000000000000004,
          123456789.123, 1e15 + 0.5,
        }
        for _, x in ipairs(values) do
          local s = core.encode(x)
          assert.equal(x, tonumber(s), s)
          assert.is_nil(s:find(",", 1, true))
        end
      end)

      it("writes the shortest form for common decimals", function()
        assert.equal("0.1", core.encode(0.1))
        assert.equal("0.7", core.encode(0.7))
        assert.equal("0.0000063", core.encode(0.0000063))
        assert.equal("-12.5", core.encode(-12.5))
        assert.equal("0.30000000000000004", core.encode(0.1 + 0.2))
        assert.equal("1e+300", core.encode(1e300))
      end)

      it("refuses NaN and the infinities", function()
        assert.equal("langfuse.core.encode: cannot encode value: NaN is "
                     .. "not valid JSON", encode_error(0 / 0))
        assert.matches("inf is not valid JSON", encode_error(math.huge),
                       1, true)
        assert.matches("-inf is not valid JSON", encode_error(-math.huge),
                       1, true)
      end)

      -- A child interpreter switches to a German locale (decimal comma)
      -- built into a temporary directory with localedef.
      it("does not depend on the C locale's decimal point", function()
        local dir = os.tmpname()
        os.remove(dir)
        local function run(cmd)
          local ok = os.execute(cmd)
          return ok == true or ok == 0
        end
        if not run("mkdir " .. dir .. " && env -u LD_PRELOAD localedef "
                   .. "-i de_DE -f UTF-8 " .. dir .. "/de_DE.UTF-8 "
                   .. ">/dev/null 2>&1") then
          run("rm -rf " .. dir)
          pending("localedef could not build de_DE.UTF-8")
          return
        end
        local child = [[
          local core = require("langfuse.core")
          assert(os.setlocale("de_DE.UTF-8", "numeric"))
          io.write(core.encode({ 1.25, 0.1 + 0.2, 1e300, 1.5e-8 }))
        ]]
        -- (glibc's setlocale keeps an allocation LeakSanitizer reports)
        local f = io.popen("LOCPATH=" .. dir .. " ASAN_OPTIONS=detect_leaks=0"
                           .. " timeout 30 "
                           .. (arg and arg[-1] or "lua5.4") .. " -e '"
                           .. "package.cpath = [[" .. package.cpath
                           .. "]] " .. child:gsub("\n", " ") .. "' 2>&1")
        local out = f:read("*a")
        f:close()
        run("rm -rf " .. dir)
        assert.equal("[1.25,0.30000000000000004,1e+300,1.5e-08]", out)
      end)

    end)

    describe("tables", function()

      it("writes arrays and string-keyed objects", function()
        assert.equal("[1,2,3]", core.encode({ 1, 2, 3 }))
        assert.equal('{"a":1}', core.encode({ a = 1 }))
        assert.same({ a = { 1, { b = "c" } }, d = true },
                    cjson.decode(core.encode({ a = { 1, { b = "c" } },
                                               d = true })))
      end)

      it("writes an empty table as {}", function()
        assert.equal("{}", core.encode({}))
        assert.equal('{"a":{}}', core.encode({ a = {} }))
      end)

      it("writes cjson.null and nil at the top as null", function()
        assert.equal("null", core.encode(null))
        assert.equal("null", core.encode(nil))
        assert.equal('[1,null,3]', core.encode({ 1, null, 3 }))
        assert.equal("true", core.encode(true))
      end)

      it("writes arrays whose keys were set in any order", function()
        local t = {}
        for i = 50, 1, -1 do
          t[i] = i
        end
        local expect = {}
        for i = 1, 50 do
          expect[i] = i
        end
        assert.same(expect, cjson.decode(core.encode(t)))
        assert.equal("[1,2,3]", core.encode({ [3] = 3, [1] = 1, [2] = 2 }))
      end)

      it("refuses mixed, sparse and oddly keyed tables", function()
        assert.matches("table mixes array items and string keys",
                       encode_error({ 1, 2, x = 3 }), 1, true)
        local mixed = { x = 1 }
        mixed[10] = 2
        assert.matches("table mixes ", encode_error(mixed), 1, true)
        assert.matches("array with holes: 2 items, highest position 3",
                       encode_error({ [1] = 1, [3] = 3 }), 1, true)
        assert.matches("array with holes: 1 items, highest position 2",
                       encode_error({ [2] = 2 }), 1, true)
        assert.matches("(key true)", encode_error({ [true] = 1 }), 1, true)
        assert.matches("(key a table)", encode_error({ [{}] = 1 }), 1, true)
        assert.matches("not an array position", encode_error({ [1.5] = 1 }),
                       1, true)
        assert.matches("not an array position", encode_error({ [0] = 1 }),
                       1, true)
        assert.matches("not an array position", encode_error({ [-1] = 1 }),
                       1, true)
      end)

      it("writes a table shared in two places twice", function()
        local shared = { 1, 2 }
        assert.same({ a = { 1, 2 }, b = { 1, 2 }, c = { shared, shared } },
                    cjson.decode(core.encode({ a = shared, b = shared,
                                               c = { shared, shared } })))
      end)

      it("refuses cycles, naming both places", function()
        local t = { list = {} }
        t.list[1] = t
        assert.equal("langfuse.core.encode: cannot encode value at list[1]: "
                     .. "cycle: this table is also the outermost table",
                     encode_error(t))
        local a = { b = {} }
        a.b.c = { back = a.b }
        assert.matches("at b.c.back: cycle: this table is also at b",
                       encode_error(a), 1, true)
      end)

      it("nests up to max_depth levels, 64 by default", function()
        assert.is_string(core.encode(nest(64)))
        assert.matches("nested deeper than max_depth (64)",
                       encode_error(nest(65)), 1, true)
        assert.is_string(core.encode(nest(200), { max_depth = 200 }))
        assert.matches("nested deeper than max_depth (3)",
                       encode_error(nest(4), { max_depth = 3 }), 1, true)
      end)

      it("survives 10,000 levels of nesting", function()
        local deep = nest(10000)
        assert.matches("nested deeper than max_depth",
                       encode_error(deep, { max_depth = 1000 }), 1, true)
        assert.matches("x.x.x.x", encode_error(deep), 1, true)
      end)

      it("encodes a very wide table", function()
        local wide = {}
        for i = 1, 100000 do
          wide["k" .. i] = i
        end
        local back = cjson.decode(core.encode(wide))
        assert.equal(100000, back.k100000)
        local list = {}
        for i = 1, 100000 do
          list[i] = i
        end
        assert.equal(100000, #cjson.decode(core.encode(list)))
      end)

      it("ignores metatables, never running a metamethod", function()
        local boom = function() error("metamethod ran") end
        local t = setmetatable({ a = 1 }, {
          __index = boom, __newindex = boom, __pairs = boom, __len = boom,
          __tostring = boom, __call = boom, __eq = boom,
        })
        assert.equal('{"a":1}', core.encode(t))
        local empty = setmetatable({}, { __index = function() return 1 end })
        assert.equal("{}", core.encode({ empty }):sub(2, -2))
        local arr = setmetatable({ 1, 2 }, { __len = boom, __index = boom })
        assert.equal("[1,2]", core.encode(arr))
      end)

    end)

    describe("other values", function()

      it("refuses functions, threads and full userdata", function()
        assert.matches("cannot encode a function", encode_error(print),
                       1, true)
        assert.matches("at co: cannot encode a thread",
                       encode_error({ co = coroutine.create(print) }),
                       1, true)
        assert.matches("at [2]: cannot encode a userdata",
                       encode_error({ 1, io.stdout }), 1, true)
      end)

      it("says how many more problems there were", function()
        assert.matches("(and 2 more problems)",
                       encode_error({ 0 / 0, 0 / 0, 0 / 0 }), 1, true)
      end)

      it("raises for a missing value and bad options", function()
        assert.has_error(function() core.encode() end)
        assert.has_error(function() core.encode(1, { max_depth = "2" }) end)
        assert.has_error(function() core.encode(1, { nope = 1 }) end)
      end)

    end)

  end)

  describe("encode_batch()", function()

    it("returns the request body, the count and no problems", function()
      local json, n, problems = core.encode_batch({ span(), span() })
      assert.equal(2, n)
      assert.same({}, problems)
      local body = cjson.decode(json)
      assert.equal(2, #body.batch)
      assert.equal("span-create", body.batch[1].type)
      assert.equal("span-1", body.batch[2].body.id)
      assert.equal('{"batch":[]}', (core.encode_batch({})))
    end)

    it("leaves refused events out and reports them", function()
      local json, n, problems = core.encode_batch({
        span(), span({ level = "LOUD" }), span({ name = "third" }),
      })
      assert.equal(2, n)
      assert.equal(1, #problems)
      assert.same({ 2, "ev-1", "body.level" },
                  { problems[1].index, problems[1].id, problems[1].path })
      local body = cjson.decode(json)
      assert.equal("third", body.batch[2].body.name)
    end)

    it("fills in a missing id and timestamp and writes them back",
       function()
      local ev = span()
      ev.id, ev.timestamp = nil, nil
      local json = core.encode_batch({ ev })
      assert.matches(UUID_V4, ev.id)
      assert.matches(ISO_UTC, ev.timestamp)
      local out = cjson.decode(json).batch[1]
      assert.equal(ev.id, out.id)
      assert.equal(ev.timestamp, out.timestamp)
      -- a resend keeps them
      local again = cjson.decode((core.encode_batch({ ev }))).batch[1]
      assert.equal(ev.id, again.id)
      assert.equal(ev.timestamp, again.timestamp)
    end)

    it("does not write back into refused events", function()
      local ev = span({ level = "LOUD" })
      ev.id, ev.timestamp = nil, nil
      core.encode_batch({ ev })
      assert.is_nil(ev.id)
      assert.is_nil(ev.timestamp)
    end)

    it("writes epoch numbers as ISO 8601 UTC without writing them back",
       function()
      local ev = span({ startTime = 1680000000123, endTime = 1680000001.5 },
                      { timestamp = 1680000000 })
      local out = cjson.decode((core.encode_batch({ ev }))).batch[1]
      assert.equal("2023-03-28T10:40:00.000000Z", out.timestamp)
      assert.equal("2023-03-28T10:40:00.123000Z", out.body.startTime)
      assert.equal("2023-03-28T10:40:01.500000Z", out.body.endTime)
      assert.equal(1680000000123, ev.body.startTime)
    end)

    it("writes empty tags as [] and other empty tables as {}", function()
      local ev = {
        id = "t", type = "trace-create", timestamp = TS,
        body = { id = "trace-1", tags = {}, metadata = {} },
      }
      local json = core.encode_batch({ ev })
      assert.matches('"tags":[]', json, 1, true)
      assert.matches('"metadata":{}', json, 1, true)
    end)

    it("passes unknown fields through unchanged when strict is false",
       function()
      local ev = span({ colour = { "red", 1.5 } }, { extra = true })
      local json, n = core.encode_batch({ ev }, { strict = false })
      assert.equal(1, n)
      local out = cjson.decode(json).batch[1]
      assert.same({ "red", 1.5 }, out.body.colour)
      assert.is_true(out.extra)
      assert.equal(0, select(2, core.encode_batch({ ev })))
    end)

    it("writes null for cjson.null in nullable fields", function()
      local out = cjson.decode((core.encode_batch({
        span({ name = null, metadata = null }),
      }))).batch[1]
      assert.equal(null, out.body.name)
      assert.equal(null, out.body.metadata)
    end)

  end)

  describe("uuid()", function()

    it("returns distinct version 4 UUIDs", function()
      local seen = {}
      for _ = 1, 1000 do
        local id = core.uuid()
        assert.matches(UUID_V4, id)
        assert.is_nil(seen[id])
        seen[id] = true
      end
    end)

  end)

  describe("hex_id()", function()

    it("returns 16 or 32 random lowercase hex characters", function()
      assert.matches("^" .. string.rep("[0-9a-f]", 16) .. "$",
                     core.hex_id(16))
      assert.matches("^" .. string.rep("[0-9a-f]", 32) .. "$",
                     core.hex_id(32))
      assert.not_equal(core.hex_id(32), core.hex_id(32))
    end)

    it("raises for other lengths", function()
      assert.has_error(function() core.hex_id(8) end)
      assert.has_error(function() core.hex_id("x") end)
    end)

  end)

  describe("now()", function()

    it("returns the current UTC time with microseconds", function()
      local s = core.now()
      assert.matches(ISO_UTC, s)
      assert.equal(os.date("!%Y-%m-%dT%H", os.time()), s:sub(1, 13))
      assert.is_true(core.check_time(s))
    end)

  end)

  describe("iso_time()", function()

    local cases = {
      { 0, "1970-01-01T00:00:00.000000Z" },
      { 1680000000, "2023-03-28T10:40:00.000000Z" },
      { 1680000000.25, "2023-03-28T10:40:00.250000Z" },
      { 1680000000.0000004, "2023-03-28T10:40:00.000000Z" },
      { 1680000000123, "2023-03-28T10:40:00.123000Z" },
      { 1e11, "5138-11-16T09:46:40.000000Z" },
      { 1e11 + 1, "1973-03-03T09:46:40.001000Z" },
      { -1, "1969-12-31T23:59:59.000000Z" },
      { -0.5, "1969-12-31T23:59:59.500000Z" },
      { 951782400, "2000-02-29T00:00:00.000000Z" },
      { -62167219200, "0000-01-01T00:00:00.000000Z" },
      { 253402300799999, "9999-12-31T23:59:59.999000Z" },
    }

    it("writes epoch seconds, or milliseconds above 1e11", function()
      for _, c in ipairs(cases) do
        assert.equal(c[2], core.iso_time(c[1]), tostring(c[1]))
      end
    end)

    it("returns nil and a message outside the years 0000 to 9999",
       function()
      assert.same({ nil, "epoch time out of range (years 0000 to 9999)" },
                  { core.iso_time(-62167219201) })
      assert.same({ nil, "epoch time out of range (years 0000 to 9999)" },
                  { core.iso_time(253402300800000) })
      assert.same({ nil, "epoch time is NaN" }, { core.iso_time(0 / 0) })
      assert.is_nil(core.iso_time(math.huge))
      assert.has_error(function() core.iso_time("1680000000") end)
    end)

  end)

  describe("check_time()", function()

    it("returns true for a date-time the server accepts", function()
      assert.is_true(core.check_time("2023-03-28T10:40:00.123+05:30"))
    end)

    it("returns false and why for one it refuses", function()
      assert.same({ false, "expected an ISO 8601 date-time ending in Z or "
                           .. "\u{b1}HH:MM, got \"2023-02-30T00:00Z\" (no "
                           .. "such date)" },
                  { core.check_time("2023-02-30T00:00Z") })
      local ok, why = core.check_time(1680000000)
      assert.is_false(ok)
      assert.equal("expected an ISO 8601 date-time string, got number", why)
    end)

    it("quotes at most 60 bytes of a long bad value", function()
      local _, why = core.check_time(string.rep("y", 1000))
      assert.matches('got "' .. string.rep("y", 60) .. '"... (', why, 1,
                     true)
    end)

  end)

end)
