-- fake_llm: a stand-in for an OpenAI-style chat completion API, served
-- by nginx itself (content_by_lua) so that the example gateway has
-- something to proxy to without any network access.
--
--   location /v1/chat/completions {
--     content_by_lua_block { require("fake_llm").chat() }
--   }
--
-- POST a body like {"model": "...", "messages": [{"role": "user",
-- "content": "..."}], "stream": false}.  The answer is a chat.completion
-- object whose usage is derived from the words in the messages, so a
-- test can predict it: prompt_tokens is the number of words in all
-- message contents, completion_tokens the number of words in the reply.
--
-- Request headers that change the answer:
--   x-fake-status: N    answer with status N and an OpenAI-style error
--   x-fake-delay: S     wait S seconds first (without blocking nginx)
--   x-fake-words: N     reply with N words (default 8, at most 10000)
-- A body with "stream": true gets server-sent events: one chunk per
-- word, then a chunk with usage (as with stream_options.include_usage),
-- then "data: [DONE]".

local cjson = require("cjson.safe")

local ngx = ngx
local type = type
local tonumber = tonumber
local concat = table.concat
local min = math.min
local fmt = string.format

local DEFAULT_MODEL = "gpt-4o-mini"
-- Words in a reply unless x-fake-words says otherwise.
local DEFAULT_WORDS = 8
-- Cap on x-fake-words, so a header cannot make a huge answer.
local MAX_WORDS = 10000
-- Cap on x-fake-delay in seconds, so a header cannot hold a worker's
-- connection for long.
local MAX_DELAY = 30
local WORDS = { "the", "quick", "brown", "fox", "jumps", "over", "a",
                "lazy", "dog", "again" }

local REASONS = {
  [400] = { "invalid_request_error", "invalid request" },
  [401] = { "invalid_request_error", "incorrect API key provided" },
  [404] = { "invalid_request_error", "the model does not exist" },
  [429] = { "rate_limit_exceeded", "rate limit reached" },
  [500] = { "server_error", "the server had an error" },
  [503] = { "server_error", "the engine is currently overloaded" },
}


local function count_words(s)
  local n = 0
  for _ in s:gmatch("%S+") do
    n = n + 1
  end
  return n
end


-- Words in every message's text content (plain strings, or the parts
-- of type "text" in a content array).
local function prompt_tokens(messages)
  local n = 0
  if type(messages) ~= "table" then
    return 0
  end
  for _, m in ipairs(messages) do
    local c = type(m) == "table" and m.content
    if type(c) == "string" then
      n = n + count_words(c)
    elseif type(c) == "table" then
      for _, part in ipairs(c) do
        if type(part) == "table" and type(part.text) == "string" then
          n = n + count_words(part.text)
        end
      end
    end
  end
  return n
end


local function reply_words(n)
  local out = {}
  for i = 1, n do
    out[i] = WORDS[(i - 1) % #WORDS + 1]
  end
  return out
end


local function send_error(status)
  local why = REASONS[status] or { "server_error", "error " .. status }
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode({ error = { message = why[2], type = why[1],
                                     code = status } }))
end


local function send_json(id, model, words, usage)
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode({
    id = id,
    object = "chat.completion",
    created = ngx.time(),
    model = model,
    choices = { {
      index = 0,
      message = { role = "assistant", content = concat(words, " ") },
      finish_reason = "stop",
    } },
    usage = usage,
  }))
end


local function chunk(id, model, delta, finish, usage)
  local choices = {}
  if delta then
    choices[1] = { index = 0, delta = delta, finish_reason = finish }
  end
  return "data: " .. cjson.encode({
    id = id, object = "chat.completion.chunk", created = ngx.time(),
    model = model, choices = choices, usage = usage,
  }) .. "\n\n"
end


local function send_stream(id, model, words, usage)
  ngx.header["Content-Type"] = "text/event-stream"
  ngx.header["Cache-Control"] = "no-cache"
  ngx.print(chunk(id, model, { role = "assistant", content = "" }))
  for i, w in ipairs(words) do
    ngx.print(chunk(id, model, { content = (i > 1 and " " or "") .. w }))
  end
  ngx.print(chunk(id, model, {}, "stop"))
  ngx.print(chunk(id, model, nil, nil, usage))
  ngx.print("data: [DONE]\n\n")
end


local _M = { _VERSION = "0.1.0" }


-- Answers one chat completion request.
function _M.chat()
  local h = ngx.req.get_headers()
  local delay = tonumber(h["x-fake-delay"])
  if delay and delay > 0 then
    ngx.sleep(min(delay, MAX_DELAY))
  end
  local status = tonumber(h["x-fake-status"])
  if status and status >= 400 and status <= 599 then
    return send_error(status)
  end
  if ngx.req.get_method() ~= "POST" then
    return send_error(405)
  end

  ngx.req.read_body()
  local req = cjson.decode(ngx.req.get_body_data() or "")
  if type(req) ~= "table" then
    return send_error(400)
  end
  local model = type(req.model) == "string" and req.model or DEFAULT_MODEL
  local n = min(tonumber(h["x-fake-words"]) or DEFAULT_WORDS, MAX_WORDS)
  local words = reply_words(n)
  local p = prompt_tokens(req.messages)
  local usage = { prompt_tokens = p, completion_tokens = n,
                  total_tokens = p + n }
  local id = fmt("chatcmpl-%s", ngx.var.request_id)

  if req.stream == true then
    return send_stream(id, model, words, usage)
  end
  return send_json(id, model, words, usage)
end


return _M
