local h = require("helpers")
local langfuse = require("langfuse")

-- Runs fn with some environment variables set, through a fresh Lua
-- state is impossible here, so the variables are read through a
-- temporary os.getenv.
local function with_env(vars, fn)
  local real = os.getenv
  os.getenv = function(k) -- luacheck: ignore 122
    if vars[k] ~= nil then
      return vars[k] or nil
    end
    return real(k)
  end
  local ok, a, b = pcall(fn)
  os.getenv = real -- luacheck: ignore 122
  assert(ok, a)
  return a, b
end

-- langfuse caches os.getenv at load time, so reload it under the fake.
local function fresh_langfuse()
  package.loaded["langfuse"] = nil
  local m = require("langfuse")
  package.loaded["langfuse"] = nil
  return m
end


describe("langfuse", function()
  describe("new()", function()
    it("fails with kind config naming the missing secret key", function()
      local c, err = with_env({ LANGFUSE_SECRET_KEY = false }, function()
        return fresh_langfuse().new{ public_key = "pk" }
      end)
      assert.is_nil(c)
      assert.is_true(langfuse.is_error(err))
      assert.equal("config", err.kind)
      assert.matches("LANGFUSE_SECRET_KEY", err.message)
    end)

    it("fails with kind config naming the missing public key", function()
      local c, err = with_env({ LANGFUSE_PUBLIC_KEY = false }, function()
        return fresh_langfuse().new{ secret_key = "sk" }
      end)
      assert.is_nil(c)
      assert.matches("LANGFUSE_PUBLIC_KEY", err.message)
    end)

    it("reads keys and host from the environment", function()
      local c = with_env({
        LANGFUSE_PUBLIC_KEY = h.public_key,
        LANGFUSE_SECRET_KEY = h.secret_key,
        LANGFUSE_BASE_URL = false,
        LANGFUSE_HOST = h.url,
      }, function()
        return fresh_langfuse().new()
      end)
      assert.equal(h.url, c.cfg.base_url)
      h.reset()
      assert(c:upload_events_batch(h.traces(1)))
    end)

    it("prefers LANGFUSE_BASE_URL over LANGFUSE_HOST", function()
      local c = with_env({
        LANGFUSE_PUBLIC_KEY = "pk", LANGFUSE_SECRET_KEY = "sk",
        LANGFUSE_BASE_URL = "http://a.invalid",
        LANGFUSE_HOST = "http://b.invalid",
      }, function()
        return fresh_langfuse().new()
      end)
      assert.equal("http://a.invalid", c.cfg.base_url)
    end)

    it("defaults to Langfuse Cloud", function()
      local c = with_env({
        LANGFUSE_PUBLIC_KEY = "pk", LANGFUSE_SECRET_KEY = "sk",
        LANGFUSE_BASE_URL = false, LANGFUSE_HOST = false,
      }, function()
        return fresh_langfuse().new()
      end)
      assert.equal("https://cloud.langfuse.com", c.cfg.base_url)
    end)

    it("reads LANGFUSE_TIMEOUT and LANGFUSE_DEBUG", function()
      local c = with_env({
        LANGFUSE_PUBLIC_KEY = "pk", LANGFUSE_SECRET_KEY = "sk",
        LANGFUSE_TIMEOUT = "2.5", LANGFUSE_DEBUG = "True",
      }, function()
        return fresh_langfuse().new()
      end)
      assert.equal(2.5, c.cfg.timeout)
      assert.is_true(c.cfg.debug)
    end)

    it("refuses an unreadable environment value, naming it", function()
      local c, err = with_env({
        LANGFUSE_PUBLIC_KEY = "pk", LANGFUSE_SECRET_KEY = "sk",
        LANGFUSE_TIMEOUT = "soon",
      }, function()
        return fresh_langfuse().new()
      end)
      assert.is_nil(c)
      assert.equal("config", err.kind)
      assert.matches("LANGFUSE_TIMEOUT", err.message)
    end)

    for _, case in ipairs{
      { { colour = "red" }, "unknown option colour" },
      { { timeout = "fast" }, "timeout" },
      { { max_retries = 1.5 }, "max_retries" },
      { { base_url = "ftp://x" }, "base_url" },
      { { max_batch_bytes = 10 }, "max_batch_bytes" },
      { { logger = "stderr" }, "logger" },
    } do
      it("refuses bad configuration: " .. case[2], function()
        local opts = { public_key = "pk", secret_key = "sk" }
        for k, v in pairs(case[1]) do
          opts[k] = v
        end
        local c, err = langfuse.new(opts)
        assert.is_nil(c)
        assert.equal("config", err.kind)
        assert.matches(case[2], err.message, 1, true)
        assert.matches("^LangfuseBatchUploadError: ", tostring(err))
      end)
    end

    it("raises when opts is not a table", function()
      assert.has_error(function() langfuse.new("pk") end,
                       'bad "opts" argument: expected a table')
    end)

    it("makes no network call", function()
      h.reset()
      assert(langfuse.new{ public_key = "pk", secret_key = "sk",
                           base_url = h.url })
      assert.equal(0, #h.requests())
    end)
  end)


  describe("validate()", function()
    it("returns true for valid events without the network", function()
      h.reset()
      assert.is_true(langfuse.validate(h.traces(3)))
      assert.equal(0, #h.requests())
    end)

    it("returns false and problems with index, id and path", function()
      local events = h.traces(2)
      events[2].body.name = string.rep("n", 1001)
      local ok, problems = langfuse.validate(events)
      assert.is_false(ok)
      assert.equal(1, #problems)
      assert.equal(2, problems[1].index)
      assert.equal(events[2].id, problems[1].id)
      assert.equal("body.name", problems[1].path)
      assert.is_string(problems[1].message)
    end)
  end)


  describe("error object", function()
    before_each(function()
      h.reset()
    end)

    it("reads like LangfuseBatchUploadError with the status", function()
      h.faults{ script = { { status = 400, body = "Invalid JSON" } } }
      local _, err = h.client():upload_events_batch(h.traces(1))
      assert.matches("^LangfuseBatchUploadError: Batch upload failed "
                     .. "with status 400: ", tostring(err))
      assert.equal("Invalid JSON", err.body)
    end)

    it("hands back the undelivered events to fix and resend", function()
      local client = h.client()
      local events = h.traces(3)
      events[1].timestamp = "yesterday"
      events[3].body.public = "yes"
      local _, err = client:upload_events_batch(events)
      local again = err:events()
      assert.same({ events[1], events[3] }, again)
      again[1].timestamp = 1680000000
      again[2].body.public = true
      local res = assert(client:upload_events_batch(again))
      assert.equal(2, res.accepted)
      assert.same({ 1, 1, 1 }, h.delivered_counts(events))
    end)

    it("gives the undelivered events as JSON", function()
      local events = h.traces(2)
      events[2].timestamp = "later"
      local _, err = h.client():upload_events_batch(events)
      local json = err:payload()
      assert.is_string(json)
      local decoded = h.cjson.decode(json)
      assert.equal(1, #decoded)
      assert.equal(events[2].id, decoded[1].id)
      assert.equal("later", decoded[1].timestamp)
    end)

    it("is recognised by is_error and nothing else is", function()
      local _, err = h.client():upload_events_batch{ {} }
      assert.is_true(langfuse.is_error(err))
      assert.is_false(langfuse.is_error({ kind = "validation" }))
      assert.is_false(langfuse.is_error("error"))
    end)

    it("says partial when failures have several kinds", function()
      local events = h.traces(2)
      events[1].timestamp = "never"
      h.faults{ script = { { status = 401 } } }
      local _, err = h.client():upload_events_batch(events)
      assert.equal("partial", err.kind)
      assert.equal("validation", err.failed[1].kind)
      assert.equal("auth", err.failed[2].kind)
    end)
  end)
end)
