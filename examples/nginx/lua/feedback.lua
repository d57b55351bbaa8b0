-- feedback: lets the gateway's clients rate an answer.  It records a
-- Langfuse score on the answer's trace, from content_by_lua: recording
-- works in any phase, not only in the log phase.
--
--   location = /v1/feedback {
--     content_by_lua_block { require("feedback").post() }
--   }
--
-- POST {"trace_id": "<the answer's X-Request-Id>", "value": 1,
-- "comment": "..."}: 202 with the score id, 400 for a bad document,
-- 503 when tracing is off.

local cjson = require("cjson.safe")
local lf = require("langfuse.ngx")

local ngx = ngx
local type = type

local SCORE_NAME = "user-feedback"
-- Characters of a comment kept.
local MAX_COMMENT = 1000


local function reply(status, doc)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode(doc))
end


local function score(client, doc)
  return client:score{
    trace_id = doc.trace_id,
    name = SCORE_NAME,
    value = doc.value,
    comment = type(doc.comment) == "string"
              and doc.comment:sub(1, MAX_COMMENT) or nil,
  }
end


local _M = { _VERSION = "0.1.0" }


function _M.post()
  ngx.req.read_body()
  local doc = cjson.decode(ngx.req.get_body_data() or "")
  if type(doc) ~= "table" or type(doc.trace_id) ~= "string"
     or #doc.trace_id ~= 32 or doc.trace_id:find("[^0-9a-f]")
     or type(doc.value) ~= "number" or doc.value ~= doc.value then
    return reply(400, { error = "expected {trace_id: 32 lowercase hex "
                                .. "characters, value: number}" })
  end
  local id = lf.record(score, doc)
  if not id then
    return reply(503, { error = "tracing is off" })
  end
  return reply(202, { id = id })
end


return _M
