-- What recording one proxied LLM request costs the thread that records
-- it (nginx's event loop, in langfuse.ngx) against what it costs the
-- whole process (the sender thread writes the span, gzips and sends
-- it), for request and answer bodies of growing size.
--
--   luajit bench/nginx/exchange_cost.lua URL
--
-- URL is a running test server (server/fakefuse.py, best in --scan
-- mode).  Times are CPU times: the calling thread's, and the process's.
-- The last column is the caller's share of the process's CPU.

local langfuse = require("langfuse")
local core = require("langfuse.core")

local url = assert(arg[1], "usage: exchange_cost.lua URL")
-- Exchanges per size; the loop waits for the sender after every
-- FLUSH_BYTES of bodies or FLUSH_EVENTS events, so that the queue (64
-- MiB, 10,000 events) never fills.
local N = 20000
local FLUSH_BYTES = 16 * 1024 * 1024
local FLUSH_EVENTS = 5000
local SIZES = { 100, 1000, 4000, 16000, 60000 }

local clock = core.clock
local fmt = string.format

local client = assert(langfuse.new{
  public_key = "pk-lf-test", secret_key = "sk-lf-test", base_url = url,
  flush_interval = 0.2,
})
local tracer = client._tracer
local exchange = core.tracer_methods.exchange
local ID = ("0123456789abcdef"):rep(2)


-- A chat completion request and answer whose texts are about n bytes.
local function bodies(n)
  local words = ("lorem ipsum dolor sit amet "):rep(math.ceil(n / 27))
  local req = '{"model":"gpt-4o-mini","messages":[{"role":"system",'
    .. '"content":"Be terse."},{"role":"user","content":"' .. words
    .. '"}],"temperature":0.2}'
  local ans = '{"id":"chatcmpl-1","object":"chat.completion",'
    .. '"created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,'
    .. '"message":{"role":"assistant","content":"' .. words .. '"},'
    .. '"finish_reason":"stop"}],"usage":{"prompt_tokens":12,'
    .. '"completion_tokens":8,"total_tokens":20}}'
  return req, ans
end


print(fmt("%-10s %14s %14s %8s", "body bytes", "caller us", "process us",
          "share"))
for _, size in ipairs(SIZES) do
  local req, ans = bodies(size)
  local every = math.max(1, math.min(FLUSH_EVENTS,
    math.floor(FLUSH_BYTES / (#req + #ans))))
  assert(client:flush(30))
  local t0, p0 = clock("thread"), os.clock()
  for i = 1, N do
    exchange(tracer, ID, "POST", "/v1/chat/completions", 200,
             1700000000.5, 1700000000.6, "0.001", "127.0.0.1:8081", "200",
             nil, nil, req, ans, false, true, nil)
    if i % every == 0 then
      assert(client:flush(30))
    end
  end
  local t1 = clock("thread")
  assert(client:flush(30))
  local p1 = os.clock()
  local caller = (t1 - t0) / N * 1e6
  local total = (p1 - p0) / N * 1e6
  print(fmt("%-10d %14.2f %14.2f %8.2f", #req + #ans, caller, total,
            caller / total))
end
local st = client:stats()
assert(st.failed == 0 and st.dropped == 0,
       "events failed or dropped: " .. tostring(st.last_error))
client:shutdown(10)
