-- tracer:exchange, the one call the nginx module makes in the log phase:
-- a request proxied to an LLM API, read from nginx's facts and the kept
-- bodies, recorded as one root generation span (OTLP) or as a
-- trace-create and a generation-create event (ingestion).

local h = require("helpers")
local core = require("langfuse.core")

local cjson = h.cjson

-- Seconds a flush may take against the local server.
local FLUSH_WAIT = 10
-- nginx's $request_id: 32 lowercase hex characters.
local ID = "0123456789abcdef0123456789abcdef"
local ROUTE = "/v1/chat/completions"
-- When the request came and when its answer was sent, and the same
-- instants as Langfuse reads them.
local START = 1700000000.25
local FINISH = 1700000001.5
local START_NS = "1700000000250000000"
local FINISH_NS = "1700000001500000000"
local START_ISO = "2023-11-14T22:13:20.250000Z"
local FINISH_ISO = "2023-11-14T22:13:21.500000Z"
-- $upstream_header_time after a retry, and START plus its last entry.
local HEADER_TIME = "0.010, 0.004"
local FIRST_TOKEN_ISO = "2023-11-14T22:13:20.254000Z"
-- U+FFFD, the character that replaces a byte that is not UTF-8.
local REPLACEMENT = "\xEF\xBF\xBD"

-- A chat completion request and its answer with one choice.
local MESSAGES = '[{"role":"system","content":"Be brief."},'
  .. '{"role":"user","content":"Say hi"}]'
local CHAT_REQUEST = '{"model":"gpt-4o","messages":' .. MESSAGES
  .. ',"temperature":0.70,"max_tokens":64,"stream":false,'
  .. '"reasoning_effort":"low","user":"end-user-1"}'
local MESSAGE = '{"role":"assistant","content":"Hi!"}'
local CHAT_ANSWER = '{"id":"chatcmpl-1","object":"chat.completion",'
  .. '"created":1700000000,"model":"gpt-4o-2024-08-06","choices":'
  .. '[{"index":0,"message":' .. MESSAGE .. ',"finish_reason":"stop"}],'
  .. '"usage":{"prompt_tokens":12,"completion_tokens":3,'
  .. '"total_tokens":15}}'
-- The model parameters of CHAT_REQUEST as the span carries them.
local CHAT_PARAMETERS = '{"temperature":0.70,"max_tokens":64,'
  .. '"stream":"false","reasoning_effort":"low"}'

local OTLP_PATH = "/api/public/otel/v1/traces"
local INGESTION_PATH = "/api/public/ingestion"


local client = h.tracing_client


-- Calls c's exchange with the fields of x, over a 200 POST to ROUTE
-- with trace id ID, START and FINISH.
local function exchange(c, x)
  return c._tracer:exchange(x.id or ID, x.method or "POST",
    x.route or ROUTE, x.status or 200, x.start or START,
    x.finish or FINISH, x.header_time, x.upstream, x.upstream_status,
    x.user, x.session, x.request, x.answer, x.truncated or false,
    x.capture_io ~= false, x.opts)
end


-- Flushes c and returns the spans the server holds.
local function sent_spans(c)
  assert.is_true(c:flush(FLUSH_WAIT))
  return h.spans().spans
end


-- Flushes c and returns the one span the server holds, and its
-- attributes.
local function only_span(c)
  local spans = sent_spans(c)
  assert.equal(1, #spans)
  return spans[1], spans[1].attributes
end


-- Flushes c and returns the bodies of the two events the server
-- accepted, by type, and their envelopes.
local function sent_events(c)
  assert.is_true(c:flush(FLUSH_WAIT))
  local events = h.events().events
  local bodies, envelopes = {}, {}
  assert.equal(2, #events)
  for _, e in ipairs(events) do
    assert.is_nil(bodies[e.type], "two events of type " .. e.type)
    assert.is_nil(e.stripped, "the server dropped unknown keys")
    bodies[e.type] = e.body
    envelopes[e.type] = e
  end
  return bodies, envelopes
end


-- JSON null (cjson.null) or missing.
local function absent(v)
  return v == nil or v == cjson.null
end


-- The attributes every exchange span has: its type, the trace's name
-- and the trace metadata nginx gives (route and status).
local function base_attributes(status)
  return {
    ["langfuse.observation.type"] = "generation",
    ["langfuse.trace.name"] = "POST " .. ROUTE,
    ["langfuse.trace.metadata.route"] = ROUTE,
    ["langfuse.trace.metadata.status"] = tostring(status or 200),
  }
end


-- t with the members of more added.
local function with(t, more)
  for k, v in pairs(more) do
    t[k] = v
  end
  return t
end


describe("tracer:exchange", function()
  before_each(function()
    -- Clients of earlier tests finish their work (and their finalisers
    -- run) before the server forgets everything.
    collectgarbage()
    collectgarbage()
    h.reset()
  end)

  describe("over OTLP", function()
    it("sends one root generation span with the trace's attributes",
       function()
      local c = client{ environment = "staging", release = "r-7" }
      local ok, note = exchange(c, {
        header_time = HEADER_TIME, upstream = "127.0.0.1:8080",
        upstream_status = "200", user = "user-7", session = "sess-9",
        request = CHAT_REQUEST, answer = CHAT_ANSWER,
      })
      assert.is_true(ok)
      assert.is_nil(note)
      local sp, a = only_span(c)
      assert.equal(ID, sp.traceId)
      assert.matches("^[0-9a-f]+$", sp.spanId)
      assert.equal(16, #sp.spanId)
      assert.is_true(absent(sp.parentSpanId))
      assert.equal(ROUTE, sp.name)
      assert.equal(START_NS, sp.startTimeUnixNano)
      assert.equal(FINISH_NS, sp.endTimeUnixNano)
      assert.same({}, sp.status)
      assert.same(with(base_attributes(), {
        ["user.id"] = "user-7",
        ["session.id"] = "sess-9",
        ["langfuse.environment"] = "staging",
        ["langfuse.release"] = "r-7",
        ["langfuse.observation.model.name"] = "gpt-4o-2024-08-06",
        ["langfuse.observation.model.parameters"] = CHAT_PARAMETERS,
        ["langfuse.observation.usage_details"] =
          '{"input":12,"output":3,"total":15}',
        ["langfuse.observation.input"] = MESSAGES,
        ["langfuse.observation.output"] = MESSAGE,
        ["langfuse.observation.completion_start_time"] = FIRST_TOKEN_ISO,
        ["langfuse.observation.metadata.upstream"] = "127.0.0.1:8080",
        ["langfuse.observation.metadata.upstream_status"] = "200",
      }), a)
      assert.equal(0, #h.requests(INGESTION_PATH))
      assert.is_true(#h.requests(OTLP_PATH) >= 1)
    end)

    it("writes numbers as written, strings, and booleans as text",
       function()
      local c = client()
      exchange(c, {
        request = '{"model":"o3-mini","messages":[],"temperature":-0.5,'
          .. '"top_p":1E-2,"seed":1e3,"n":2,"max_completion_tokens":100,'
          .. '"presence_penalty":0,"frequency_penalty":0.250,'
          .. '"stream":true,"reasoning_effort":"high","max_tokens":null,'
          .. '"stop":["\\n"],"tools":[],"user":"u","logprobs":true}',
      })
      local _, a = only_span(c)
      assert.equal('{"temperature":-0.5,"top_p":1E-2,"seed":1e3,"n":2,'
        .. '"max_completion_tokens":100,"presence_penalty":0,'
        .. '"frequency_penalty":0.250,"stream":"true",'
        .. '"reasoning_effort":"high"}',
        a["langfuse.observation.model.parameters"])
      -- with no answer, the model is the one asked for
      assert.equal("o3-mini", a["langfuse.observation.model.name"])
      assert.equal("[]", a["langfuse.observation.input"])
      assert.is_nil(a["langfuse.observation.output"])
      assert.is_nil(a["langfuse.observation.usage_details"])
    end)

    it("takes every choice as the output when there are several",
       function()
      local c = client()
      local choices = '[{"index":0,"message":{"role":"assistant",'
        .. '"content":"Hi!"},"finish_reason":"stop"},{"index":1,'
        .. '"message":{"role":"assistant","content":"Hello!"},'
        .. '"finish_reason":"stop"}]'
      exchange(c, {
        request = '{"model":"gpt-4o","messages":' .. MESSAGES
          .. ',"n":2}',
        answer = '{"model":"gpt-4o-2024-08-06","choices":' .. choices
          .. ',"usage":{"prompt_tokens":12,"completion_tokens":5,'
          .. '"total_tokens":17}}',
      })
      local _, a = only_span(c)
      assert.equal(choices, a["langfuse.observation.output"])
      assert.same({
        { index = 0, message = { role = "assistant", content = "Hi!" },
          finish_reason = "stop" },
        { index = 1, message = { role = "assistant", content = "Hello!" },
          finish_reason = "stop" },
      }, cjson.decode(a["langfuse.observation.output"]))
      assert.equal(MESSAGES, a["langfuse.observation.input"])
      assert.equal('{"n":2}', a["langfuse.observation.model.parameters"])
      assert.equal('{"input":12,"output":5,"total":17}',
                   a["langfuse.observation.usage_details"])
    end)

    it("reads Responses API bodies", function()
      local c = client()
      local output = '[{"type":"message","id":"msg_1","status":'
        .. '"completed","role":"assistant","content":[{"type":'
        .. '"output_text","text":"A pun walks into a bar."}]}]'
      exchange(c, {
        route = "/v1/responses",
        request = '{"model":"gpt-4.1","input":"Tell me a joke",'
          .. '"instructions":"Be funny.","temperature":1}',
        answer = '{"id":"resp_1","object":"response","status":'
          .. '"completed","model":"gpt-4.1-2025-04-14","output":'
          .. output .. ',"usage":{"input_tokens":11,'
          .. '"input_tokens_details":{"cached_tokens":0},'
          .. '"output_tokens":9,"total_tokens":20}}',
      })
      local sp, a = only_span(c)
      assert.equal("/v1/responses", sp.name)
      assert.same({
        ["langfuse.observation.type"] = "generation",
        ["langfuse.trace.name"] = "POST /v1/responses",
        ["langfuse.trace.metadata.route"] = "/v1/responses",
        ["langfuse.trace.metadata.status"] = "200",
        ["langfuse.observation.model.name"] = "gpt-4.1-2025-04-14",
        ["langfuse.observation.model.parameters"] = '{"temperature":1}',
        ["langfuse.observation.usage_details"] =
          '{"input":11,"output":9,"total":20}',
        -- a string prompt is sent as the string
        ["langfuse.observation.input"] = "Tell me a joke",
        ["langfuse.observation.output"] = output,
      }, a)
    end)

    it("reads a stream of server-sent events", function()
      local c = client()
      local function chunk(choices, usage)
        return 'data: {"id":"chatcmpl-2","object":"chat.completion.chunk",'
          .. '"model":"gpt-4o-mini-2024-07-18","choices":' .. choices
          .. ',"usage":' .. usage .. '}\n\n'
      end
      local answer = chunk('[{"index":0,"delta":{"role":"assistant",'
          .. '"content":""},"finish_reason":null}]', "null")
        .. chunk('[{"index":0,"delta":{"content":"Hello"},'
          .. '"finish_reason":null}]', "null")
        .. chunk('[{"index":0,"delta":{"content":", w\\u00f6rld"},'
          .. '"finish_reason":null}]', "null")
        .. chunk('[{"index":0,"delta":{},"finish_reason":"stop"}]',
          "null")
        .. chunk("[]", '{"prompt_tokens":9,"completion_tokens":4,'
          .. '"total_tokens":13}')
        .. "data: [DONE]\n\n"
      exchange(c, {
        header_time = "0.004",
        request = '{"model":"gpt-4o-mini","messages":' .. MESSAGES
          .. ',"stream":true,"stream_options":{"include_usage":true}}',
        answer = answer,
      })
      local _, a = only_span(c)
      assert.same(with(base_attributes(), {
        ["langfuse.observation.model.name"] = "gpt-4o-mini-2024-07-18",
        ["langfuse.observation.model.parameters"] = '{"stream":"true"}',
        ["langfuse.observation.usage_details"] =
          '{"input":9,"output":4,"total":13}',
        ["langfuse.observation.input"] = MESSAGES,
        ["langfuse.observation.output"] =
          '{"role":"assistant","content":"Hello, w\xC3\xB6rld"}',
        ["langfuse.observation.completion_start_time"] = FIRST_TOKEN_ISO,
      }), a)
    end)

    it("reads a stream cut at its start and marks the body truncated",
       function()
      local c = client()
      -- the first event lost its start to the size bound
      local answer = 'ices":[{"index":0,"delta":{"content":"lost"}}]}\n\n'
        .. 'data: {"model":"gpt-4o","choices":[{"index":0,"delta":'
        .. '{"content":"kept"}}]}\n\n'
        .. 'data: {"model":"gpt-4o","choices":[],"usage":'
        .. '{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
        .. '\n\ndata: [DONE]\n\n'
      exchange(c, {
        upstream = "10.0.0.1:443, 10.0.0.2:443",
        upstream_status = "502, 200",
        request = '{"model":"gpt-4o","messages":[]}',
        answer = answer, truncated = true,
      })
      local _, a = only_span(c)
      assert.equal('{"role":"assistant","content":"kept"}',
                   a["langfuse.observation.output"])
      assert.equal('{"input":1,"output":1,"total":2}',
                   a["langfuse.observation.usage_details"])
      assert.equal("10.0.0.1:443, 10.0.0.2:443",
                   a["langfuse.observation.metadata.upstream"])
      assert.equal("502, 200",
                   a["langfuse.observation.metadata.upstream_status"])
      assert.equal("true", a["langfuse.observation.metadata.body_truncated"])
    end)

    it("marks a 429 WARNING with the upstream's error message", function()
      local c = client()
      local ok, note = exchange(c, {
        status = 429, request = CHAT_REQUEST,
        answer = '{"error":{"message":"Rate limit reached for gpt-4o",'
          .. '"type":"requests","param":null,'
          .. '"code":"rate_limit_exceeded"}}',
      })
      assert.is_true(ok)
      assert.is_nil(note)
      local sp, a = only_span(c)
      assert.same(with(base_attributes(429), {
        ["langfuse.observation.model.name"] = "gpt-4o",
        ["langfuse.observation.model.parameters"] = CHAT_PARAMETERS,
        ["langfuse.observation.input"] = MESSAGES,
        ["langfuse.observation.level"] = "WARNING",
        ["langfuse.observation.status_message"] =
          "Rate limit reached for gpt-4o",
      }), a)
      assert.same({}, sp.status)
    end)

    it("marks a 503 ERROR with the upstream's error message", function()
      local c = client()
      exchange(c, {
        status = 503, request = CHAT_REQUEST,
        answer = '{"error":{"message":"The engine is currently '
          .. 'overloaded, please try again later","type":"server_error"}}',
      })
      local sp, a = only_span(c)
      local message = "The engine is currently overloaded, please try "
        .. "again later"
      assert.equal("ERROR", a["langfuse.observation.level"])
      assert.equal(message, a["langfuse.observation.status_message"])
      assert.equal("503", a["langfuse.trace.metadata.status"])
      assert.is_nil(a["langfuse.observation.output"])
      assert.same({ code = 2, message = message }, sp.status)
    end)

    it("never carries one answer's error message to the next", function()
      local c = client()
      exchange(c, { status = 429,
                    answer = '{"error":{"message":"first message"}}' })
      exchange(c, { id = ID:sub(1, 31) .. "e", status = 500,
                    answer = '{"error":{"code":"server_error"}}' })
      local by_id = {}
      for _, sp in ipairs(sent_spans(c)) do
        by_id[sp.traceId] = sp.attributes
      end
      assert.equal("first message",
                   by_id[ID]["langfuse.observation.status_message"])
      assert.equal("HTTP 500", by_id[ID:sub(1, 31) .. "e"]
                                 ["langfuse.observation.status_message"])
    end)

    it("reads an error sent as a server-sent event", function()
      local c = client()
      exchange(c, { status = 503, answer = 'data: {"error":{"message":'
                    .. '"overloaded","type":"server_error"}}\n\n' })
      local _, a = only_span(c)
      assert.equal("ERROR", a["langfuse.observation.level"])
      assert.equal("overloaded", a["langfuse.observation.status_message"])
    end)

    it("reads a Responses API stream from its response.completed event",
       function()
      local c = client()
      local output = '[{"type":"message","role":"assistant","content":'
        .. '[{"type":"output_text","text":"Hi there"}]}]'
      local answer = 'event: response.created\n'
        .. 'data: {"type":"response.created","response":{"id":"r1",'
        .. '"model":"gpt-4.1","output":[],"usage":null}}\n\n'
        .. 'event: response.output_text.delta\n'
        .. 'data: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
        .. 'event: response.completed\n'
        .. 'data: {"type":"response.completed","response":{"id":"r1",'
        .. '"model":"gpt-4.1-2025-04-14","output":' .. output
        .. ',"usage":{"input_tokens":7,"output_tokens":2,'
        .. '"total_tokens":9}}}\n\n'
      exchange(c, { request = '{"model":"gpt-4.1","input":"Hello",'
                    .. '"max_output_tokens":50,"stream":true}',
                    answer = answer })
      local _, a = only_span(c)
      assert.equal("gpt-4.1-2025-04-14",
                   a["langfuse.observation.model.name"])
      assert.equal('{"max_output_tokens":50,"stream":"true"}',
                   a["langfuse.observation.model.parameters"])
      assert.same({ input = 7, output = 2, total = 9 },
                  cjson.decode(a["langfuse.observation.usage_details"]))
      assert.equal("Hello", a["langfuse.observation.input"])
      assert.equal(output, a["langfuse.observation.output"])
    end)

    it("marks a 502 with no body ERROR with its status", function()
      local c = client()
      exchange(c, {
        status = 502, header_time = "-", upstream = "10.0.0.1:443",
        upstream_status = "502", request = CHAT_REQUEST,
      })
      local sp, a = only_span(c)
      assert.same(with(base_attributes(502), {
        ["langfuse.observation.model.name"] = "gpt-4o",
        ["langfuse.observation.model.parameters"] = CHAT_PARAMETERS,
        ["langfuse.observation.input"] = MESSAGES,
        ["langfuse.observation.level"] = "ERROR",
        ["langfuse.observation.status_message"] = "HTTP 502",
        ["langfuse.observation.metadata.upstream"] = "10.0.0.1:443",
        ["langfuse.observation.metadata.upstream_status"] = "502",
      }), a)
      assert.same({ code = 2, message = "HTTP 502" }, sp.status)
    end)

    it("takes the first token's time from the last upstream's header",
       function()
      local c = client()
      local given = {
        [string.rep("1", 32)] = { "0.010, 0.004", FIRST_TOKEN_ISO },
        [string.rep("2", 32)] = { "0.5 : 0.004", FIRST_TOKEN_ISO },
        [string.rep("3", 32)] = { "1.25", "2023-11-14T22:13:21.500000Z" },
        [string.rep("4", 32)] = { "-" },
        [string.rep("5", 32)] = {},
      }
      for id, g in pairs(given) do
        assert.is_true(exchange(c, { id = id, header_time = g[1] }))
      end
      local spans = sent_spans(c)
      assert.equal(5, #spans)
      for _, sp in ipairs(spans) do
        local a = sp.attributes
        assert.equal(given[sp.traceId][2],
                     a["langfuse.observation.completion_start_time"])
      end
    end)

    it("names the trace and the generation as told", function()
      local c = client()
      exchange(c, {
        opts = { name = "chat", generation_name = "openai" },
      })
      local sp, a = only_span(c)
      assert.equal("openai", sp.name)
      assert.equal("chat", a["langfuse.trace.name"])
    end)

    it("names them by method and route by default", function()
      local c = client()
      exchange(c, { method = "PUT", route = "/v1/embeddings" })
      local sp, a = only_span(c)
      assert.equal("/v1/embeddings", sp.name)
      assert.equal("PUT /v1/embeddings", a["langfuse.trace.name"])
    end)

    it("adds tags, and metadata after route and status", function()
      local c = client()
      exchange(c, {
        status = 201,
        opts = { tags = { "chat", "prod" },
                 metadata = { team = "search", n = 3, ok = true,
                              nested = { a = 1 } } },
      })
      local _, a = only_span(c)
      assert.same(with(base_attributes(201), {
        ["langfuse.trace.tags"] = { "chat", "prod" },
        ["langfuse.trace.metadata.team"] = "search",
        ["langfuse.trace.metadata.n"] = "3",
        ["langfuse.trace.metadata.ok"] = "true",
        ["langfuse.trace.metadata.nested"] = '{"a":1}',
      }), a)
    end)

    it("lets the caller's metadata override route and status", function()
      local c = client()
      exchange(c, { opts = { metadata = { route = "chat", status = "ok" } } })
      local _, a = only_span(c)
      assert.equal("chat", a["langfuse.trace.metadata.route"])
      assert.equal("ok", a["langfuse.trace.metadata.status"])
    end)

    it("mends user and session ids that are not UTF-8", function()
      local c = client()
      local ok, note = exchange(c, {
        user = "al\xFFice", session = "s\xC3(1",
      })
      assert.is_true(ok)
      assert.is_nil(note)
      local _, a = only_span(c)
      assert.equal("al" .. REPLACEMENT .. "ice", a["user.id"])
      assert.equal("s" .. REPLACEMENT .. "(1", a["session.id"])
    end)

    it("leaves out a prompt that is not UTF-8 and says so in metadata",
       function()
      local c = client()
      local ok, note = exchange(c, {
        request = '{"model":"gpt-4o","messages":[{"role":"user",'
          .. '"content":"caf\xE9"}],"temperature":0.2}',
        answer = CHAT_ANSWER,
      })
      assert.is_true(ok)
      -- written later, on the sender thread: no note for the caller
      assert.is_nil(note)
      local _, a = only_span(c)
      assert.equal("the prompt: not valid UTF-8",
                   a["langfuse.observation.metadata.left_out"])
      assert.is_nil(a["langfuse.observation.input"])
      assert.equal(MESSAGE, a["langfuse.observation.output"])
      assert.equal("gpt-4o-2024-08-06", a["langfuse.observation.model.name"])
      assert.equal('{"temperature":0.2}',
                   a["langfuse.observation.model.parameters"])
    end)

    it("leaves out an answer that is not UTF-8 and says so in metadata",
       function()
      local c = client()
      local ok, note = exchange(c, {
        request = '{"messages":[{"role":"user","content":"\xC0"}]}',
        answer = '{"model":"m","choices":[{"message":{"role":'
          .. '"assistant","content":"\xFF"}}],"usage":'
          .. '{"prompt_tokens":1,"completion_tokens":1}}',
      })
      assert.is_true(ok)
      assert.is_nil(note)
      local _, a = only_span(c)
      assert.equal("the prompt and the answer: not valid UTF-8",
                   a["langfuse.observation.metadata.left_out"])
      assert.is_nil(a["langfuse.observation.input"])
      assert.is_nil(a["langfuse.observation.output"])
      assert.equal("m", a["langfuse.observation.model.name"])
      assert.equal('{"input":1,"output":1}',
                   a["langfuse.observation.usage_details"])
    end)

    it("with a spool, writes the span at once and returns the note",
       function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -m 700 " .. dir))
      local c = client{ spool_dir = dir }
      local ok, note = exchange(c, {
        request = '{"messages":[{"role":"user","content":"\xC0"}]}',
        answer = CHAT_ANSWER,
      })
      assert.is_true(ok)
      assert.equal("left out, not valid UTF-8: the prompt", note)
      local _, a = only_span(c)
      assert.is_nil(a["langfuse.observation.input"])
      assert.equal(MESSAGE, a["langfuse.observation.output"])
      assert.equal("the prompt: not valid UTF-8",
                   a["langfuse.observation.metadata.left_out"])
      assert.is_true(c:shutdown(FLUSH_WAIT))
      os.execute("rm -rf '" .. dir .. "'")
    end)

    it("records no prompt or answer when capture_io is false", function()
      local c = client()
      local ok, note = exchange(c, {
        request = CHAT_REQUEST, answer = CHAT_ANSWER, capture_io = false,
      })
      assert.is_true(ok)
      assert.is_nil(note)
      local _, a = only_span(c)
      assert.same(with(base_attributes(), {
        ["langfuse.observation.model.name"] = "gpt-4o-2024-08-06",
        ["langfuse.observation.model.parameters"] = CHAT_PARAMETERS,
        ["langfuse.observation.usage_details"] =
          '{"input":12,"output":3,"total":15}',
      }), a)
    end)

    it("returns nil and a message naming a bad option, sending nothing",
       function()
      local c = client()
      local cases = {
        { { tags = { "a", 2 } },
          'option "tags[2]": expected a string, got 2' },
        { { tags = { "a", true } },
          'option "tags[2]": expected a string, got true' },
        { { tags = "a" },
          'option "tags": expected an array of strings, got "a"' },
        { { metadata = { f = print } },
          'option "metadata.f": cannot encode a function' },
        { { name = 5 }, 'option "name": expected a string, got number' },
        { { generation_name = {} },
          'option "generation_name": expected a string, got table' },
      }
      for _, case in ipairs(cases) do
        local ok, err = exchange(c, { request = CHAT_REQUEST,
                                      opts = case[1] })
        assert.is_nil(ok)
        assert.equal(case[2], err)
      end
      assert.equal(0, #sent_spans(c))
      assert.equal(0, #h.requests(OTLP_PATH))
    end)

    it("makes a fresh id for one that is not 32 lowercase hex", function()
      local c = client()
      local tracer = c._tracer
      local bad = { "not-an-id", string.rep("AB", 16), string.rep("a", 31),
                    string.rep("0", 32), string.rep("g", 32) }
      for _, id in ipairs(bad) do
        assert.is_true(exchange(c, { id = id }))
      end
      assert.is_true(tracer:exchange(nil, "POST", ROUTE, 200, START,
                                     FINISH))
      local spans = sent_spans(c)
      assert.equal(#bad + 1, #spans)
      local seen = {}
      for _, sp in ipairs(spans) do
        assert.matches("^[0-9a-f]+$", sp.traceId)
        assert.equal(32, #sp.traceId)
        assert.not_equal(string.rep("0", 32), sp.traceId)
        assert.is_nil(seen[sp.traceId], "an id was used twice")
        seen[sp.traceId] = true
      end
    end)

    it("is reached through core.tracer_methods as nginx calls it",
       function()
      local c = client()
      local exchange_method = core.tracer_methods.exchange
      local ok, note, fails = exchange_method(c._tracer, ID, "POST", ROUTE,
        200, START, FINISH, HEADER_TIME, "127.0.0.1:8080", "200", nil, nil,
        CHAT_REQUEST, CHAT_ANSWER, false, true, nil)
      assert.is_true(ok)
      assert.is_nil(note)
      assert.is_nil(fails)
      local sp, a = only_span(c)
      assert.equal(ID, sp.traceId)
      assert.equal(MESSAGE, a["langfuse.observation.output"])
      assert.equal(FIRST_TOKEN_ISO,
                   a["langfuse.observation.completion_start_time"])
    end)
  end)

  describe("sampling and switching off", function()
    it("sends nothing at sample_rate 0 and counts it sampled out",
       function()
      local c = client{ sample_rate = 0 }
      for i = 1, 3 do
        local ok, note = exchange(c, {
          id = string.rep(tostring(i), 32), request = CHAT_REQUEST,
          answer = CHAT_ANSWER,
        })
        assert.is_true(ok)
        assert.is_nil(note)
      end
      assert.equal(0, #sent_spans(c))
      local st = c:stats()
      assert.equal(3, st.sampled_out)
      assert.equal(0, st.enqueued)
      assert.equal(0, #h.requests(OTLP_PATH))
    end)

    it("sends nothing when tracing is disabled, but checks options",
       function()
      local c = client{ enabled = false }
      assert.is_true(exchange(c, { request = CHAT_REQUEST,
                                   answer = CHAT_ANSWER }))
      local ok, err = exchange(c, { opts = { tags = { 1 } } })
      assert.is_nil(ok)
      assert.equal('option "tags[1]": expected a string, got 1', err)
      assert.is_true(c:flush(FLUSH_WAIT))
      assert.equal(0, c:stats().sampled_out)
      assert.equal(0, #h.spans().spans)
      assert.equal(0, #h.requests())
    end)
  end)

  describe("over the ingestion API", function()
    it("sends a trace-create and a generation-create the server accepts",
       function()
      local c = client{ protocol = "ingestion", environment = "staging",
                        release = "r-7" }
      local ok, note = exchange(c, {
        header_time = HEADER_TIME, upstream = "127.0.0.1:8080",
        upstream_status = "200", user = "user-7", session = "sess-9",
        request = CHAT_REQUEST, answer = CHAT_ANSWER,
        opts = { tags = { "chat" }, metadata = { team = "search" } },
      })
      assert.is_true(ok)
      assert.is_nil(note)
      local bodies, envelopes = sent_events(c)
      local input = cjson.decode(MESSAGES)
      local output = { role = "assistant", content = "Hi!" }
      assert.equal(START_ISO, envelopes["trace-create"].timestamp)
      assert.same({
        id = ID, timestamp = START_ISO, name = "POST " .. ROUTE,
        userId = "user-7", sessionId = "sess-9", tags = { "chat" },
        metadata = { route = ROUTE, status = 200, team = "search" },
        input = input, output = output,
        environment = "staging", release = "r-7",
      }, bodies["trace-create"])
      local gen = bodies["generation-create"]
      assert.matches("^[0-9a-f]+$", gen.id)
      assert.equal(16, #gen.id)
      assert.same({
        id = gen.id, traceId = ID, name = ROUTE,
        startTime = START_ISO, endTime = FINISH_ISO,
        completionStartTime = FIRST_TOKEN_ISO,
        model = "gpt-4o-2024-08-06",
        modelParameters = { temperature = 0.7, max_tokens = 64,
                            stream = "false", reasoning_effort = "low" },
        usageDetails = { input = 12, output = 3, total = 15 },
        input = input, output = output,
        metadata = { upstream = "127.0.0.1:8080", upstream_status = "200" },
        environment = "staging",
      }, gen)
      assert.is_nil(next(h.spans().spans))
      assert.equal(0, c:stats().failed)
    end)

    it("sends a failed exchange's events valid as well", function()
      local c = client{ protocol = "ingestion" }
      local ok, note = exchange(c, {
        status = 503, header_time = "0.010, 0.004",
        upstream = "10.0.0.1:443", upstream_status = "503",
        user = "al\xFFice", session = "s\xC3(1", request = CHAT_REQUEST,
        answer = '{"error":{"message":"overloaded","type":"server_error"}}',
        opts = { name = "chat", generation_name = "openai" },
      })
      assert.is_true(ok)
      assert.is_nil(note)
      local bodies = sent_events(c)
      local input = cjson.decode(MESSAGES)
      assert.same({
        id = ID, timestamp = START_ISO, name = "chat",
        userId = "al" .. REPLACEMENT .. "ice",
        sessionId = "s" .. REPLACEMENT .. "(1",
        metadata = { route = ROUTE, status = 503 }, input = input,
      }, bodies["trace-create"])
      local gen = bodies["generation-create"]
      assert.same({
        id = gen.id, traceId = ID, name = "openai",
        startTime = START_ISO, endTime = FINISH_ISO,
        completionStartTime = FIRST_TOKEN_ISO, model = "gpt-4o",
        modelParameters = { temperature = 0.7, max_tokens = 64,
                            stream = "false", reasoning_effort = "low" },
        input = input, level = "ERROR", statusMessage = "overloaded",
        metadata = { upstream = "10.0.0.1:443", upstream_status = "503" },
      }, gen)
      assert.equal(0, c:stats().failed)
    end)

    it("sends a cut stream's answer as an assistant message", function()
      local c = client{ protocol = "ingestion" }
      exchange(c, {
        request = '{"model":"gpt-4o","stream":true,"messages":'
          .. MESSAGES .. '}',
        answer = 'lta":{"content":"lost"}}]}\n\ndata: {"model":"gpt-4o",'
          .. '"choices":[{"delta":{"content":"Hi"}}]}\n\ndata: {"model":'
          .. '"gpt-4o","choices":[{"delta":{"content":"!"}}]}\n\n'
          .. 'data: [DONE]\n\n',
        truncated = true,
      })
      local bodies = sent_events(c)
      local output = { role = "assistant", content = "Hi!" }
      assert.same(output, bodies["trace-create"].output)
      local gen = bodies["generation-create"]
      assert.same(output, gen.output)
      assert.same({ stream = "true" }, gen.modelParameters)
      assert.same({ body_truncated = true }, gen.metadata)
      assert.is_nil(gen.usageDetails)
      assert.equal(0, c:stats().failed)
    end)
  end)
end)
