-- The Lua face of the spool: core.spool_open and its methods, and
-- core.raw_client used to replay what a spool holds.

local h = require("helpers")
local core = require("langfuse.core")


local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -m 700 " .. p))
  return p
end


local function fill(dir, n)
  local sp = assert(core.spool_open(dir))
  for i = 1, n do
    assert(sp:append("ingestion", "id-" .. i, '{"n":' .. i .. '}'))
  end
  assert(sp:sync())
  sp:close()
end


local function all(sp)
  local out = {}
  for rec in sp:claim() do
    out[#out + 1] = rec
  end
  return out
end


describe("langfuse.core spool", function()
  local dir

  before_each(function()
    dir = tmpdir()
  end)

  after_each(function()
    os.execute("rm -rf '" .. dir .. "'")
  end)


  describe("spool_open()", function()
    it("raises for unknown options and bad values", function()
      assert.has_error(function()
        core.spool_open(dir, { nope = 1 })
      end)
      assert.has_error(function()
        core.spool_open(dir, { fsync = "sometimes" })
      end)
      assert.has_error(function()
        core.spool_open(dir, { max_bytes = -1 })
      end)
      assert.has_error(function()
        core.spool_open(dir, { logger = "not a function" })
      end)
    end)

    it("returns nil and a reason when the directory cannot be made",
       function()
      local sp, err = core.spool_open(dir .. "/no/such/parent")
      assert.is_nil(sp)
      assert.is_string(err)
    end)
  end)


  describe("claim()", function()
    it("hands out every record with route, id, data and ref", function()
      fill(dir, 3)
      local sp = assert(core.spool_open(dir))
      local recs = all(sp)
      assert.equal(3, #recs)
      for i, r in ipairs(recs) do
        assert.equal("ingestion", r.route)
        assert.equal("id-" .. i, r.id)
        assert.equal('{"n":' .. i .. '}', r.data)
        assert.is_string(r.ref)
      end
      sp:close()
    end)

    it("keeps unacked records for the next process", function()
      fill(dir, 4)
      local sp = assert(core.spool_open(dir))
      for i, r in ipairs(all(sp)) do
        if i % 2 == 1 then
          assert.is_true(sp:ack(r.ref))
        end
      end
      sp:close()
      sp = assert(core.spool_open(dir))
      local left = all(sp)
      assert.equal(2, #left)
      assert.equal("id-2", left[1].id)
      assert.equal("id-4", left[2].id)
      assert.equal(2, sp:status().records_pending)
      sp:close()
    end)

    it("ends quietly when the spool is closed while reading", function()
      fill(dir, 3)
      local sp = assert(core.spool_open(dir))
      local recs = sp:claim()
      assert.is_table(recs())
      sp:close()
      assert.is_nil(recs())
      assert.is_nil(recs:error())
      recs:close()
      collectgarbage()
    end)

    it("raises for a ref that is not one", function()
      local sp = assert(core.spool_open(dir))
      assert.has_error(function() sp:ack("nope") end)
      assert.has_error(function() sp:ack("1:2:3") end)
      sp:close()
      assert.has_error(function() sp:sync() end)
    end)
  end)


  describe("status()", function()
    it("counts dead letters and quarantined files", function()
      fill(dir, 2)
      local f = assert(io.open(dir .. "/seg-0000000000000001-00000001-"
                               .. "00000001.seg", "wb"))
      f:write("not a segment")
      f:close()
      local lines = {}
      local sp = assert(core.spool_open(dir, {
        logger = function(level, msg)
          lines[#lines + 1] = level .. " " .. msg
        end }))
      assert.is_true(sp:dead_letter("ingestion", "id-x", '{"x":1}',
                                    "refused for good"))
      assert.equal(2, #all(sp))
      local st = sp:status()
      assert.equal(1, st.dead_letters)
      assert.equal(1, st.quarantined)
      assert.equal(dir, st.dir)
      assert.is_true(#lines > 0)
      assert.matches("^%[langfuse%] ", lines[1]:gsub("^%a+ ", ""))
      sp:close()
    end)
  end)


  describe("raw_client()", function()
    before_each(function()
      h.reset()
    end)

    it("uploads spooled JSON as is and reports per record", function()
      local events = h.traces(3)
      h.faults{ per_event = { [events[2].id] = {
        status = 400, message = "Invalid request data" } } }
      local recs = {}
      for i, e in ipairs(events) do
        recs[i] = { id = e.id, data = core.encode(e) }
      end
      local raw = core.raw_client{ public_key = h.public_key,
                                   secret_key = h.secret_key,
                                   base_url = h.url .. "/" }
      local rep = raw:upload(recs)
      raw:close()
      assert.equal(2, rep.accepted)
      assert.equal(1, #rep.failed)
      assert.equal(2, rep.failed[1].index)
      assert.equal("rejected", rep.failed[1].kind)
      assert.is_false(rep.failed[1].retryable)
      assert.same({ 1, 0, 1 }, h.delivered_counts(events))
    end)

    it("raises for missing keys and malformed records", function()
      assert.has_error(function() core.raw_client{} end)
      local raw = core.raw_client{ public_key = h.public_key,
                                   secret_key = h.secret_key,
                                   base_url = h.url }
      assert.has_error(function() raw:upload{ { id = 1 } } end)
      raw:close()
      assert.has_error(function() raw:upload{} end)
    end)
  end)
end)
