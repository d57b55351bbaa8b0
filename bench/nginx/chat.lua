-- wrk script for tools/run-bench-nginx: POSTs one small chat completion
-- request, the same for every call, to the URL given on the command line.
-- FAKE_DELAY (seconds, from the environment) makes the fake upstream wait
-- that long before it answers, like a (very fast) model would.
-- luacheck: globals wrk

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"system",' ..
  '"content":"You are terse."},{"role":"user","content":' ..
  '"Say hello to the benchmark in eight words."}],"temperature":0.2}'

local delay = os.getenv("FAKE_DELAY")
if delay and delay ~= "" and delay ~= "0" then
  wrk.headers["x-fake-delay"] = delay
end
