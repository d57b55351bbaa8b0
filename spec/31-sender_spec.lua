local h = require("helpers")
local langfuse = require("langfuse")
local core = require("langfuse.core")
local socket = require("socket")

local OTLP = "/api/public/otel/v1/traces"

-- Seconds a flush may take against the local server.
local FLUSH_WAIT = 10
-- Slack for timing bounds on a busy machine.
local SLACK = 1.5

-- Trace ids 1..40 (as %032x) that sample_rate 0.5 keeps: the first 8 hex
-- digits of their SHA-256 below half of 0xFFFFFFFF (computed with
-- Python's hashlib).
local KEPT_AT_HALF = {
  3, 5, 9, 11, 19, 20, 21, 22, 23, 25, 26, 27, 28, 29, 30, 31, 32, 34, 37,
  38, 39,
}


local client = h.tracing_client


-- Threads of this process now.
local function threads()
  local f = assert(io.open("/proc/self/status"))
  local n = tonumber(f:read("a"):match("Threads:%s*(%d+)"))
  f:close()
  return n
end


-- Collects every client nobody holds, so their threads are gone.
local function settle()
  collectgarbage()
  collectgarbage()
end


-- An on_error that keeps the error objects in list.
local function keep(list)
  return function(err)
    list[#list + 1] = err
  end
end


-- Every failure entry of the errors in list.
local function failures(list)
  local out = {}
  for _, e in ipairs(list) do
    for _, f in ipairs(e.failed) do
      out[#out + 1] = f
    end
  end
  return out
end


local function span_names()
  local names = {}
  for _, s in ipairs(h.spans().spans) do
    names[s.name] = (names[s.name] or 0) + 1
  end
  return names
end


-- Runs fn with os.getenv answering from vars first (false: unset), on a
-- fresh copy of the langfuse module (it caches os.getenv when loaded).
local function with_env(vars, fn)
  local real = os.getenv
  os.getenv = function(k) -- luacheck: ignore 122
    if vars[k] ~= nil then
      return vars[k] or nil
    end
    return real(k)
  end
  package.loaded["langfuse"] = nil
  local ok, a, b = pcall(function()
    return fn(require("langfuse"))
  end)
  package.loaded["langfuse"] = langfuse
  os.getenv = real -- luacheck: ignore 122
  assert(ok, a)
  return a, b
end


describe("langfuse background sender", function()
  before_each(function()
    -- Clients of earlier tests finish their work (and their finalisers
    -- run) before the server forgets everything.
    settle()
    h.reset()
  end)

  describe("OTLP requests", function()
    it("go gzipped to the OTLP route with ingestion version 4", function()
      local c = client()
      c:trace{ name = "x" }:finish()
      assert.is_true(c:flush(FLUSH_WAIT))
      local reqs = h.requests(OTLP)
      assert.equal(1, #reqs)
      local hd = reqs[1].headers
      assert.equal(200, reqs[1].status)
      assert.equal("gzip", hd["content-encoding"])
      assert.equal("4", hd["x-langfuse-ingestion-version"])
      assert.matches("^application/json", hd["content-type"])
      assert.equal("langfuse-lua", hd["x-langfuse-sdk-name"])
      assert.equal(1, reqs[1].spans)
    end)

    it("are plain JSON with gzip = false", function()
      local c = client{ gzip = false }
      c:trace{}:finish()
      assert.is_true(c:flush(FLUSH_WAIT))
      local reqs = h.requests(OTLP)
      assert.equal(1, #reqs)
      assert.is_nil(reqs[1].headers["content-encoding"])
      assert.equal(reqs[1].body_size, reqs[1].decoded_size)
    end)

    it("carry at most flush_at spans each", function()
      local c = client{ flush_at = 5, flush_interval = 30 }
      local t = c:trace{}
      for _ = 1, 12 do
        t:span{}:finish()
      end
      assert.is_true(c:flush(FLUSH_WAIT))
      local total = 0
      for _, r in ipairs(h.requests(OTLP)) do
        assert.is_true(r.spans <= 5)
        total = total + r.spans
      end
      assert.equal(12, total)
      assert.equal(3, #h.requests(OTLP))
    end)

    it("leave after flush_interval without a flush", function()
      local c = client{ flush_interval = 0.2 }
      c:trace{ name = "timed" }:finish()
      local deadline = h.now() + 5
      while h.now() < deadline and not span_names().timed do
        socket.sleep(0.05)
      end
      assert.equal(1, span_names().timed)
      c:shutdown(1)
    end)

    it("never make the caller wait for the network", function()
      h.faults{ delay_all = 2 }
      local c = client{ flush_at = 1, timeout = 3 }
      local t0 = h.now()
      for _ = 1, 50 do
        c:trace{}:generation{ input = "x" }:finish{ output = "y" }
      end
      assert.is_true(h.now() - t0 < 0.5)
      c:shutdown(0)
    end)
  end)

  describe("flush()", function()
    it("returns true once everything recorded is delivered", function()
      local c = client{ flush_interval = 30 }
      local t = c:trace{}
      t:span{ name = "a" }:finish()
      t:score{ name = "s", value = 1 }
      assert.is_true(c:flush(FLUSH_WAIT))
      assert.equal(1, span_names().a)
      assert.equal(1, h.events().total)
    end)

    it("returns false and \"timeout\" when the server is too slow",
       function()
      h.faults{ delay_all = 2 }
      local c = client{ timeout = 5 }
      local t = c:trace{}
      local s = t:span{}
      s:finish()
      local t0 = h.now()
      local ok, why = c:flush(0.3)
      assert.is_false(ok)
      assert.equal("timeout", why)
      assert.is_true(h.now() - t0 < 0.3 + SLACK)
      assert.is_true(c:flush(FLUSH_WAIT))
      assert.same({ [s.id] = 1 }, h.spans().counts)
    end)

    it("counts a rejected export as done and reports it", function()
      h.faults{ script = { { route = "otlp", status = 400,
        body = '{"error":"Invalid OTLP trace export: bad span"}' } } }
      local errs = {}
      local c = client{ on_error = keep(errs) }
      local t = c:trace{}
      local s = t:span{}
      s:finish()
      assert.is_true(c:flush(FLUSH_WAIT))
      assert.equal(1, #errs)
      local err = errs[1]
      assert.is_true(langfuse.is_error(err))
      assert.equal("rejected", err.kind)
      assert.equal(400, err.status)
      assert.matches("bad span", err.message, 1, true)
      assert.equal(s.id, err.failed[1].id)
      assert.equal("otlp", err.failed[1].route)
      assert.is_false(err.retryable)
      local st = c:stats()
      assert.equal(1, st.failed)
      assert.matches("bad span", st.last_error, 1, true)
    end)
  end)

  describe("retries", function()
    it("retry a 500 and deliver once", function()
      h.faults{ script = { { route = "otlp", status = 500 } } }
      local c = client()
      local t = c:trace{}
      local s = t:span{}
      s:finish()
      assert.is_true(c:flush(FLUSH_WAIT))
      assert.same({ [s.id] = 1 }, h.spans().counts)
      local st = c:stats()
      assert.equal(1, st.retried)
      assert.equal(1, st.accepted)
      assert.equal(2, st.requests)
    end)

    it("honour Retry-After on a 429", function()
      h.faults{ script = { { route = "otlp", status = 429,
                             headers = { ["Retry-After"] = "1" } } } }
      local c = client()
      c:trace{}:finish()
      local t0 = h.now()
      assert.is_true(c:flush(FLUSH_WAIT))
      assert.is_true(h.now() - t0 >= 0.9)
      assert.equal(1, h.spans().total)
    end)
  end)

  describe("shutdown()", function()
    it("delivers what is queued and joins the thread", function()
      settle()
      local base = threads()
      local c = client{ flush_interval = 30 }
      c:trace{ name = "last" }:finish()
      assert.equal(base + 1, threads())
      assert.is_true(c:shutdown(FLUSH_WAIT))
      assert.equal(base, threads())
      assert.equal(1, span_names().last)
    end)

    it("ends in bounded time when the server is down", function()
      local errs = {}
      local c = h.client{ base_url = "http://127.0.0.1:9",
                          flush_interval = 0.05, on_error = keep(errs) }
      c:trace{}:finish()
      local t0 = h.now()
      assert.is_true(c:shutdown(5))
      assert.is_true(h.now() - t0 < 5)
      local f = failures(errs)
      assert.equal(1, #f)
      assert.equal("network", f[1].kind)
      assert.is_true(f[1].retryable)
      assert.equal(1, c:stats().failed)
    end)

    it("says timeout and reports what it left when the server is slow",
       function()
      h.faults{ delay_all = 3 }
      local errs = {}
      local c = client{ timeout = 1, on_error = keep(errs) }
      local t = c:trace{}
      t:span{}:finish()
      local t0 = h.now()
      local ok, why = c:shutdown(0.3)
      local took = h.now() - t0
      assert.is_false(ok)
      assert.equal("timeout", why)
      assert.is_true(took < 0.3 + 1 + SLACK)
      local f = failures(errs)
      assert.equal(1, #f)
      assert.equal("shutdown", f[1].kind)
      assert.equal(1, c:stats().undelivered)
    end)

    it("reports records made after it as dropped", function()
      local errs = {}
      local c = client{ on_error = keep(errs) }
      assert.is_true(c:shutdown(1))
      local t = c:trace{}
      t:span{}:finish()
      local f = failures(errs)
      assert.equal(1, #f)
      assert.equal("shutdown", f[1].kind)
      assert.equal(1, c:stats().dropped)
    end)
  end)

  describe("a full queue", function()
    it("drops the newest events, counting and reporting each", function()
      h.faults{ delay_all = 1 }
      local errs = {}
      local c = client{ queue_max_events = 2, flush_at = 1, timeout = 3,
                        on_error = keep(errs) }
      local t = c:trace{}
      for _ = 1, 10 do
        t:span{}:finish()
      end
      local st = c:stats()
      assert.is_true(st.dropped >= 7)
      assert.equal(10, st.enqueued + st.dropped)
      local f = failures(errs)
      assert.equal(st.dropped, #f)
      for _, x in ipairs(f) do
        assert.equal("queue_full", x.kind)
        assert.equal("otlp", x.route)
      end
      c:shutdown(0)
    end)

    it("blocks up to queue_block_timeout under the block policy",
       function()
      h.faults{ delay_all = 1 }
      local errs = {}
      local c = client{ queue_max_events = 1, flush_at = 1, timeout = 3,
                        queue_full_policy = "block",
                        queue_block_timeout = 0.3, on_error = keep(errs) }
      local t = c:trace{}
      t:span{}:finish()
      local t0 = h.now()
      t:span{}:finish()
      local took = h.now() - t0
      assert.is_true(took >= 0.25 and took < 0.3 + SLACK)
      assert.equal(1, c:stats().dropped)
      assert.equal("queue_full", failures(errs)[1].kind)
      c:shutdown(0)
    end)

    it("admits a blocked event once room frees up", function()
      h.faults{ delay_all = 0.3 }
      local c = client{ queue_max_events = 1, flush_at = 1,
                        queue_full_policy = "block",
                        queue_block_timeout = 5 }
      local t = c:trace{}
      t:span{}:finish()
      t:span{}:finish()
      assert.is_true(c:flush(FLUSH_WAIT))
      local st = c:stats()
      assert.equal(0, st.dropped)
      assert.equal(2, st.accepted)
    end)
  end)

  describe("stats()", function()
    it("counts what the sender did", function()
      local c = client()
      local t = c:trace{}
      t:span{}:finish()
      t:score{ name = "s", value = 1 }
      assert.is_true(c:flush(FLUSH_WAIT))
      local st = c:stats()
      assert.equal(0, st.queued)
      assert.equal(2, st.enqueued)
      assert.equal(2, st.sent)
      assert.equal(2, st.accepted)
      assert.equal(0, st.retried)
      assert.equal(0, st.failed)
      assert.equal(0, st.dropped)
      assert.equal(2, st.requests)
      assert.is_true(st.bytes_sent > 100)
      assert.is_nil(st.last_error)
      assert.equal(0, st.sampled_out)
    end)
  end)

  describe("on_error", function()
    it("failing does not reach the caller; the logger gets it",
       function()
      h.faults{ script = { { route = "otlp", status = 400 } } }
      local logs = {}
      local c = client{
        on_error = function() error("boom") end,
        logger = function(level, msg) logs[#logs + 1] = level .. " " .. msg end,
      }
      c:trace{}:finish()
      assert.is_true(c:flush(FLUSH_WAIT))
      assert.equal(1, #logs)
      assert.matches("^error %[langfuse%] on_error raised: .*boom", logs[1])
    end)

    it("missing, failures go to the logger", function()
      h.faults{ script = { { route = "otlp", status = 400 } } }
      local logs = {}
      local c = client{
        logger = function(level, msg) logs[#logs + 1] = level .. " " .. msg end,
      }
      c:trace{}:finish()
      assert.is_true(c:flush(FLUSH_WAIT))
      assert.equal(1, #logs)
      assert.matches("^warn %[langfuse%] LangfuseBatchUploadError", logs[1])
      assert.matches("1 event not delivered; otlp event", logs[1], 1, true)
    end)
  end)

  describe("fork", function()
    it("lets a child record with a client made before fork()", function()
      local c = client{ flush_interval = 30 }
      c:trace{ name = "parent-before" }:finish()
      local pid = core._fork()
      if pid == 0 then
        local ok = pcall(function()
          c:trace{ name = "child" }:finish()
          assert(c:flush(FLUSH_WAIT))
          local st = c:stats()
          assert(st.enqueued == 1 and st.accepted == 1)
        end)
        core._exit(ok and 0 or 1)
      end
      assert.equal(0, core._wait(pid))
      c:trace{ name = "parent-after" }:finish()
      assert.is_true(c:flush(FLUSH_WAIT))
      assert.same({ ["parent-before"] = 1, child = 1, ["parent-after"] = 1 },
                  span_names())
      assert.equal(2, c:stats().accepted)
    end)
  end)

  describe("garbage collection", function()
    it("stops a client's thread and sends what it held", function()
      settle()
      local base = threads()
      local function use()
        local c = client{ flush_interval = 30 }
        c:trace{ name = "collected" }:finish()
        assert.equal(base + 1, threads())
      end
      use()
      settle()
      assert.equal(base, threads())
      assert.equal(1, span_names().collected)
    end)

    it("ends in bounded time when the server is slow", function()
      settle()
      h.faults{ delay_all = 5 }
      local base = threads()
      local function use()
        local c = client{ timeout = 1 }
        c:trace{}:finish()
      end
      use()
      local t0 = h.now()
      settle()
      assert.is_true(h.now() - t0 < 0.5 + 1 + SLACK)
      assert.equal(base, threads())
    end)
  end)

  describe("closing the Lua state", function()
    local script = [[
      local langfuse = require("langfuse")
      local c = assert(langfuse.new{
        public_key = "pk-lf-test", secret_key = "sk-lf-test",
        base_url = arg[1], flush_interval = 30, timeout = 1,
      })
      c:trace{ name = arg[2] }:finish()
    ]]
    local interp = jit and "luajit" or "lua5.4"

    local function run()
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      f:write(script)
      f:close()
      local t0 = h.now()
      local ok, how, code = os.execute(string.format("exec %s %s %s %s",
                                                     interp,
                                                     path, h.url, "closed"))
      local took = h.now() - t0
      os.remove(path)
      return ok, how, code, took
    end

    it("joins the sender and delivers before the process exits",
       function()
      local ok, how, code = run()
      assert.is_true(ok == true or ok == 0)
      if how then
        assert.equal("exit", how)
        assert.equal(0, code)
      end
      assert.equal(1, span_names().closed)
    end)

    it("ends in bounded time when the server is slow", function()
      h.faults{ delay_all = 5 }
      local ok, _, _, took = run()
      assert.is_true(ok == true or ok == 0)
      assert.is_true(took < 0.5 + 1 + SLACK + 1)
    end)
  end)

  if _VERSION == "Lua 5.4" and not jit then
    describe("<close>", function()
      it("shuts the client down at the end of the scope", function()
        settle()
        local base = threads()
        local run = load([[
          local client = ...
          do
            local c <close> = client{ flush_interval = 30 }
            c:trace{ name = "scoped" }:finish()
          end
        ]])
        run(client)
        assert.equal(base, threads())
        assert.equal(1, span_names().scoped)
      end)
    end)
  end

  describe("sample_rate", function()
    it("keeps or drops whole traces, decided by the trace id", function()
      local c = client{ sample_rate = 0.5 }
      for i = 1, 40 do
        local t = c:trace{ id = string.format("%032x", i), name = "n" .. i }
        t:generation{}:finish()
        t:score{ name = "s", value = 1 }
        t:finish()
        c:score{ name = "c", value = 1, trace_id = t.id }
      end
      assert.is_true(c:flush(FLUSH_WAIT))
      local spans_of = {}
      for _, s in ipairs(h.spans().spans) do
        local i = tonumber(s.traceId, 16)
        spans_of[i] = (spans_of[i] or 0) + 1
      end
      local expected = {}
      for _, i in ipairs(KEPT_AT_HALF) do
        expected[i] = 2
      end
      assert.same(expected, spans_of)
      local scores_of = {}
      for _, e in ipairs(h.events().events) do
        local i = tonumber(e.body.traceId, 16)
        scores_of[i] = (scores_of[i] or 0) + 1
      end
      assert.same(expected, scores_of)
      assert.equal(40 - #KEPT_AT_HALF, c:stats().sampled_out)
    end)

    it("keeps nothing at 0 and everything at 1", function()
      local none = client{ sample_rate = 0 }
      local all = client{ sample_rate = 1 }
      for _ = 1, 10 do
        none:trace{ name = "none" }:finish()
        all:trace{ name = "all" }:finish()
      end
      assert.is_true(none:flush(FLUSH_WAIT))
      assert.is_true(all:flush(FLUSH_WAIT))
      assert.same({ all = 10 }, span_names())
    end)
  end)

  describe("enabled = false", function()
    it("records and sends nothing, while the builders still work",
       function()
      settle()
      local base = threads()
      local c = client{ enabled = false }
      local t = c:trace{ name = "off" }
      assert.equal(32, #t.id)
      local g = t:generation{ model = "m" }:finish{ output = "o" }
      assert.equal(16, #g.id)
      t:event{}
      t:score{ name = "s", value = 1 }
      c:score{ name = "s", value = 1, trace_id = t.id }
      t:finish()
      assert.is_true(c:flush(1))
      assert.equal(base, threads())
      assert.equal(0, #h.requests())
      local st = c:stats()
      assert.equal(0, st.enqueued)
      assert.equal(0, st.requests)
      assert.has_error(function()
        t:span{ level = "LOUD" }
      end)
      assert.is_true(c:shutdown(1))
    end)
  end)

  describe("configuration", function()
    it("reads the tracing options from the environment", function()
      local c = with_env({
        LANGFUSE_TRACING_ENVIRONMENT = "dev", LANGFUSE_RELEASE = "r-7",
        LANGFUSE_SAMPLE_RATE = "0.25", LANGFUSE_TRACING_ENABLED = "false",
        LANGFUSE_FLUSH_AT = "7", LANGFUSE_FLUSH_INTERVAL = "0.5",
        OTEL_SERVICE_NAME = "svc",
      }, function(lf)
        return lf.new{ public_key = "pk", secret_key = "sk",
                       base_url = h.url }
      end)
      assert.equal("dev", c.cfg.environment)
      assert.equal("r-7", c.cfg.release)
      assert.equal(0.25, c.cfg.sample_rate)
      assert.is_false(c.cfg.enabled)
      assert.equal(7, c.cfg.flush_at)
      assert.equal(0.5, c.cfg.flush_interval)
      assert.equal("svc", c.cfg.service_name)
    end)

    it("puts the environment's settings on the wire", function()
      local c = with_env({
        LANGFUSE_TRACING_ENVIRONMENT = "qa", LANGFUSE_RELEASE = "r-8",
        OTEL_SERVICE_NAME = "checkout",
      }, function(lf)
        return lf.new{ public_key = h.public_key, secret_key = h.secret_key,
                       base_url = h.url, flush_interval = 0.05 }
      end)
      c:trace{}:finish()
      assert.is_true(c:flush(FLUSH_WAIT))
      local s = h.spans().spans[1]
      assert.equal("qa", s.attributes["langfuse.environment"])
      assert.equal("r-8", s.attributes["langfuse.release"])
      assert.equal("checkout", s.resource["service.name"])
      assert.equal("qa", s.resource["langfuse.environment"])
      assert.equal(h.public_key, s.scope.attributes.public_key)
      assert.equal("langfuse-sdk", s.scope.name)
    end)

    it("refuses bad tracing options with a config error", function()
      local cases = {
        { { protocol = "grpc" }, 'protocol must be one of "ingestion", '
          .. '"otlp", got "grpc"' },
        { { queue_full_policy = "drop_oldest" }, "queue_full_policy must "
          .. "be one of" },
        { { sample_rate = 2 }, "sample_rate must be between 0 and 1" },
        { { flush_at = 0 }, "flush_at must be at least 1" },
        { { flush_interval = 0 }, "flush_interval must be greater than 0" },
        { { queue_max_events = 0 }, "queue_max_events must be at least 1" },
        { { environment = "Prod!" }, "environment must be" },
        { { environment = "langfuse-x" }, "environment must be" },
        { { on_error = "print" }, "option on_error must be a function" },
        { { gzip = "yes" }, "option gzip must be a boolean" },
      }
      for _, case in ipairs(cases) do
        local o = { public_key = "pk", secret_key = "sk", base_url = h.url }
        for k, v in pairs(case[1]) do
          o[k] = v
        end
        local c, err = langfuse.new(o)
        assert.is_nil(c)
        assert.equal("config", err.kind)
        assert.matches(case[2], err.message, 1, true)
      end
    end)
  end)
end)
