local h = require("helpers")
local langfuse = require("langfuse")

local INGESTION = "/api/public/ingestion"


describe("langfuse client", function()
  before_each(function()
    h.reset()
  end)


  describe("upload_events_batch()", function()
    it("refuses a malformed event before sending, naming index and path",
       function()
      local client = h.client()
      local res, err = client:upload_events_batch{
        { event = "start", timestamp = "not-a-timestamp" },
      }
      assert.is_nil(res)
      assert.is_true(langfuse.is_error(err))
      assert.equal("validation", err.kind)
      assert.equal(1, #err.failed)
      local f = err.failed[1]
      assert.equal(1, f.index)
      local paths = {}
      for _, p in ipairs(f.problems) do
        paths[p.path or ""] = p.message
      end
      assert.truthy(paths.timestamp)
      assert.truthy(paths.type)
      assert.truthy(paths.body)
      assert.equal(0, #h.requests(INGESTION))
    end)

    it("accepts the same event with a type, a body and an epoch time",
       function()
      local client = h.client()
      local ev = { id = "fixed-1", type = "trace-create",
                   timestamp = 1680000000, body = { id = "t-fixed-1",
                   name = "fixed" } }
      local res, err = client:upload_events_batch{ ev }
      assert.is_nil(err)
      assert.equal(1, res.accepted)
      local got = h.events().events
      assert.equal(1, #got)
      assert.equal("fixed-1", got[1].id)
      assert.equal("2023-03-28T10:40:00.000000Z", got[1].timestamp)
    end)

    it("counts sdk-log events delivered though the 207 leaves them out",
       function()
      local client = h.client()
      local events = h.traces(2)
      table.insert(events, 2, { type = "sdk-log", id = 'log"\\1',
                                timestamp = 1680000000,
                                body = { log = { level = "info" } } })
      events[#events + 1] = { type = "sdk-log", timestamp = 1680000000,
                              body = { log = "plain text" } }
      local res, err = client:upload_events_batch(events)
      assert.is_nil(err)
      assert.equal(4, res.accepted)
      assert.equal(1, #h.requests(INGESTION))      -- nothing sent again
      assert.equal(2, #h.events().events)          -- the traces, stored
    end)

    it("delivers every valid event exactly once", function()
      local client = h.client()
      local events = h.traces(25)
      local res = assert(client:upload_events_batch(events))
      assert.equal(25, res.accepted)
      assert.same(h.ones(25), h.delivered_counts(events))
    end)

    it("sends the valid events of a call that holds invalid ones",
       function()
      local client = h.client()
      local events = h.traces(4)
      events[2].body.level = "LOUD"
      events[2].type = "span-create"
      events[4].timestamp = "2026-12-03 10:00:00"
      local res, err = client:upload_events_batch(events)
      assert.is_nil(res)
      assert.equal("validation", err.kind)
      assert.equal(2, err.accepted)
      assert.equal(2, #err.failed)
      assert.equal(2, err.failed[1].index)
      assert.equal(4, err.failed[2].index)
      assert.equal("timestamp", err.failed[2].path)
      assert.equal(events[4], err.failed[2].event)
      assert.same({ 1, 0, 1, 0 }, h.delivered_counts(events))
    end)

    it("gives a missing envelope id a UUIDv4 and keeps it", function()
      local client = h.client()
      local ev = h.event("trace-create")
      ev.id = nil
      ev.timestamp = nil
      assert(client:upload_events_batch{ ev })
      assert.matches("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-"
                     .. "%x%x%x%x%x%x%x%x%x%x%x%x$", ev.id)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT", ev.timestamp)
      assert.same({ 1 }, h.delivered_counts{ ev })
    end)

    it("splits work into requests within max_batch_events", function()
      local client = h.client{ max_batch_events = 10 }
      local events = h.traces(35)
      local res = assert(client:upload_events_batch(events))
      assert.equal(35, res.accepted)
      assert.equal(4, res.requests)
      assert.equal(4, #h.requests(INGESTION))
    end)

    it("reuses one connection across requests", function()
      local client = h.client{ max_batch_events = 2 }
      assert(client:upload_events_batch(h.traces(6)))
      local reqs = h.requests(INGESTION)
      assert.equal(3, #reqs)
      assert.equal(reqs[1].peer, reqs[2].peer)
      assert.equal(reqs[1].peer, reqs[3].peer)
    end)

    it("keeps every request body within max_batch_bytes", function()
      local client = h.client{ max_batch_bytes = 4096 }
      local events = h.traces(60)
      for _, e in ipairs(events) do
        e.body.input = string.rep("x", 300)
      end
      local res = assert(client:upload_events_batch(events))
      assert.equal(60, res.accepted)
      local reqs = h.requests(INGESTION)
      assert.is_true(#reqs > 5)
      for _, r in ipairs(reqs) do
        assert.is_true(r.body_size <= 4096)
      end
    end)

    it("reports an event over max_event_bytes and sends the rest",
       function()
      local client = h.client{ max_event_bytes = 2000 }
      local events = h.traces(3)
      events[2].body.input = string.rep("y", 5000)
      local res, err = client:upload_events_batch(events)
      assert.is_nil(res)
      assert.equal(1, #err.failed)
      assert.equal(2, err.failed[1].index)
      assert.matches("max_event_bytes", err.failed[1].message)
      assert.same({ 1, 0, 1 }, h.delivered_counts(events))
    end)

    it("sends the server's required headers", function()
      local client = h.client()
      assert(client:upload_events_batch(h.traces(1)))
      local r = h.requests(INGESTION)[1]
      assert.equal("application/json", r.headers["content-type"])
      assert.equal("langfuse-lua", r.headers["x-langfuse-sdk-name"])
      assert.equal(langfuse._VERSION, r.headers["x-langfuse-sdk-version"])
      assert.equal(h.public_key, r.headers["x-langfuse-public-key"])
      assert.is_nil(r.headers["content-encoding"])
      assert.matches("^Basic ", r.headers.authorization)
    end)
  end)


  describe("retries", function()
    it("retries 500, 502, 503, 504 and 408, then delivers", function()
      h.faults{ script = { { status = 500 }, { status = 502 },
                           { status = 503 }, { status = 504 },
                           { status = 408 } } }
      local client = h.client{ max_retries = 5 }
      local events = h.traces(3)
      local res = assert(client:upload_events_batch(events))
      assert.equal(3, res.accepted)
      assert.equal(6, res.requests)
      assert.same({ 1, 1, 1 }, h.delivered_counts(events))
    end)

    it("retries a dropped connection", function()
      h.faults{ script = { { drop = true } } }
      local client = h.client()
      local events = h.traces(2)
      local res = assert(client:upload_events_batch(events))
      assert.equal(2, res.accepted)
      assert.equal(2, res.requests)
    end)

    it("honours Retry-After in seconds on 429", function()
      h.faults{ script = { { status = 429,
                             headers = { ["Retry-After"] = "1" } } } }
      local client = h.client()
      local t0 = h.now()
      local res = assert(client:upload_events_batch(h.traces(1)))
      assert.equal(1, res.accepted)
      assert.is_true(h.now() - t0 >= 0.95)
    end)

    it("honours Retry-After as an HTTP date", function()
      local date = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 2)
      h.faults{ script = { { status = 503,
                             headers = { ["Retry-After"] = date } } } }
      local client = h.client()
      local t0 = h.now()
      assert(client:upload_events_batch(h.traces(1)))
      assert.is_true(h.now() - t0 >= 0.9)
    end)

    it("caps a far Retry-After at retry_after_max", function()
      h.faults{ script = { { status = 429,
                             headers = { ["Retry-After"] = "99999" } } } }
      local client = h.client{ retry_after_max = 0.2 }
      local t0 = h.now()
      assert(client:upload_events_batch(h.traces(1)))
      assert.is_true(h.now() - t0 < 3)
    end)

    it("reports retryable failure once retries run out", function()
      local script = {}
      for i = 1, 4 do
        script[i] = { status = 503 }
      end
      h.faults{ script = script }
      local client = h.client{ max_retries = 2 }
      local events = h.traces(2)
      local res, err = client:upload_events_batch(events)
      assert.is_nil(res)
      assert.equal("server", err.kind)
      assert.equal(503, err.status)
      assert.is_true(err.retryable)
      assert.equal(3, err.attempts)
      assert.equal(2, #err.failed)
      assert.same(events, err:events())
      assert.equal(3, #h.requests(INGESTION))
    end)

    it("names a timeout as kind timeout", function()
      h.faults{ script = { { delay = 3 }, { delay = 3 } } }
      local client = h.client{ timeout = 0.5, max_retries = 1 }
      local res, err = client:upload_events_batch(h.traces(1))
      assert.is_nil(res)
      assert.equal("timeout", err.kind)
      assert.is_true(err.retryable)
    end)

    for _, case in ipairs{
      { 400, "rejected" }, { 401, "auth" }, { 403, "forbidden" },
      { 404, "config" }, { 405, "config" },
    } do
      it("never retries status " .. case[1], function()
        h.faults{ script = { { status = case[1],
                               body = '{"message":"nope"}' } } }
        local client = h.client()
        local res, err = client:upload_events_batch(h.traces(1))
        assert.is_nil(res)
        assert.equal(case[2], err.kind)
        assert.equal(case[1], err.status)
        assert.is_false(err.retryable)
        assert.equal(1, #h.requests(INGESTION))
        assert.equal(1, #err.failed)
      end)
    end

    it("splits a request refused whole with 400 to find the bad event",
       function()
      local script = {}
      for i = 1, 3 do
        script[i] = { status = 400, body = "Invalid request data" }
      end
      h.faults{ script = script }
      local client = h.client()
      local events = h.traces(4)
      local res, err = client:upload_events_batch(events)
      assert.is_nil(res)
      assert.equal("rejected", err.kind)
      -- The whole request, then the first half, then its first quarter
      -- were refused; the rest went through.
      assert.equal(1, #err.failed)
      assert.equal(1, err.failed[1].index)
      assert.same({ 0, 1, 1, 1 }, h.delivered_counts(events))
    end)

    it("says to check keys and host on 401", function()
      local client = h.client{ secret_key = "sk-lf-wrong" }
      local res, err = client:upload_events_batch(h.traces(1))
      assert.is_nil(res)
      assert.equal("auth", err.kind)
      assert.matches("key", err.message)
      assert.matches("host", err.message)
    end)

    it("does not follow a redirect and loses nothing", function()
      h.faults{ script = { { redirect = "http://127.0.0.2:9/x" } } }
      local client = h.client()
      local events = h.traces(2)
      local res, err = client:upload_events_batch(events)
      assert.is_nil(res)
      assert.equal("config", err.kind)
      assert.matches("redirect", err.message)
      assert.same(events, err:events())
    end)
  end)


  describe("413", function()
    it("splits a request the server finds too large", function()
      h.faults{ max_body_bytes = 3000, html_413 = true }
      local client = h.client()
      local events = h.traces(40)
      for _, e in ipairs(events) do
        e.body.input = string.rep("z", 100)
      end
      local res = assert(client:upload_events_batch(events))
      assert.equal(40, res.accepted)
      assert.same(h.ones(40), h.delivered_counts(events))
    end)

    it("reports one event still too large alone", function()
      h.faults{ max_body_bytes = 1500 }
      local client = h.client()
      local events = h.traces(3)
      events[3].body.input = string.rep("q", 2000)
      local res, err = client:upload_events_batch(events)
      assert.is_nil(res)
      assert.equal("too_large", err.kind)
      assert.equal(1, #err.failed)
      assert.equal(3, err.failed[1].index)
      assert.same({ 1, 1, 0 }, h.delivered_counts(events))
    end)
  end)


  describe("207", function()
    it("reports per-event errors and keeps the successes", function()
      local events = h.traces(3)
      h.faults{ per_event = { [events[2].id] = {
        status = 400, message = "Invalid request data" } } }
      local client = h.client()
      local res, err = client:upload_events_batch(events)
      assert.is_nil(res)
      assert.equal("rejected", err.kind)
      assert.equal(400, err.status)
      assert.equal(2, err.accepted)
      assert.equal(1, #err.failed)
      assert.equal(events[2].id, err.failed[1].id)
      assert.matches("Invalid request data", err.failed[1].message)
      assert.equal(1, #h.requests(INGESTION))
    end)

    it("retries a per-event 500 alone and never resends successes",
       function()
      local events = h.traces(3)
      h.faults{ per_event = { [events[1].id] = {
        status = 500, message = "boom", times = 1 } } }
      local client = h.client()
      local res = assert(client:upload_events_batch(events))
      assert.equal(3, res.accepted)
      local reqs = h.requests(INGESTION)
      assert.equal(2, #reqs)
      assert.equal(1, reqs[2].events)
      assert.same({ 1, 1, 1 }, h.delivered_counts(events))
    end)

    it("explains a server that takes traces only over OTLP", function()
      h.faults{ events_only = true }
      local client = h.client()
      local events = { h.event("trace-create"), h.event("score-create") }
      local res, err = client:upload_events_batch(events)
      assert.is_nil(res)
      assert.equal("rejected", err.kind)
      assert.equal(1, #err.failed)
      assert.equal(1, err.failed[1].index)
      assert.matches("OTLP", err.failed[1].message)
      assert.same({ 0, 1 }, h.delivered_counts(events))
    end)
  end)


  describe("secrets", function()
    it("never shows the secret key in errors, bodies or logs", function()
      local lines = {}
      h.faults{ script = { { status = 400,
        body = "echo: sk-lf-test Basic " .. "cGstbGYtdGVzdDpzay1sZi10ZXN0" } } }
      local client = h.client{
        debug = true,
        logger = function(_, msg) lines[#lines + 1] = msg end,
      }
      local events = h.traces(1)
      events[1].body.metadata = { note = "plain" }
      local res, err = client:upload_events_batch(events)
      assert.is_nil(res)
      local payload = err:payload()
      assert.is_string(payload)
      local texts = { tostring(err), err.body or "", err.message, payload }
      for _, l in ipairs(lines) do
        texts[#texts + 1] = l
      end
      assert.is_true(#lines > 0)
      for _, t in ipairs(texts) do
        assert.is_nil(t:find(h.secret_key, 1, true))
        assert.is_nil(t:find("cGstbGYtdGVzdDpzay1sZi10ZXN0", 1, true))
      end
    end)
  end)
end)
