-- Hostile servers: answers that never end, are gigabytes long, drip,
-- break off, make no sense, point elsewhere, ask to wait forever, or
-- fail TLS.  Each case ends within a bounded time (small timeouts) with
-- a delivery or a clear error, and every event is accounted for: the
-- ones the client calls delivered reached the server at least once, the
-- others are listed in err.failed, each exactly once.

local h = require("helpers")
local socket = require("socket")
local http = require("socket.http")
local ltn12 = require("ltn12")
local cjson = require("cjson")

local INGESTION = "/api/public/ingestion"
local GIB = 1024 * 1024 * 1024
-- Seconds any one case may take; the client's timeout is 1 s.
local BOUND = 20
-- How long to wait for a helper server to listen.
local START_WAIT = 10


local function accounted(events, res, err)
  return h.accounted(events, res, err, true)
end


-- A client with a 1 s timeout, one retry and fast backoff.
local function client(opts)
  local o = { timeout = 1, max_retries = 1 }
  for k, v in pairs(opts or {}) do
    o[k] = v
  end
  return h.client(o)
end


-- Uploads n traces with the given client options and returns events,
-- res, err and the seconds it took.
local function upload(n, opts)
  local events = h.traces(n)
  local t0 = h.now()
  local res, err = client(opts):upload_events_batch(events)
  local took = h.now() - t0
  assert.is_true(took < BOUND, "took " .. took .. " s")
  return events, res, err, took
end


local function script(steps)
  h.faults{ script = steps }
end


-- {====================================================== helper servers

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end


-- Waits for a port file to appear; returns the port or nil.
local function wait_port(path)
  local deadline = h.now() + START_WAIT
  while h.now() < deadline do
    local s = read_file(path)
    if s and s:match("^%d+") then
      return tonumber(s:match("^%d+"))
    end
    socket.sleep(0.05)
  end
  return nil
end


-- Starts cmd in the background; returns a stop function.
local function spawn(cmd, pidfile)
  assert(os.execute(cmd .. " & echo $! > " .. pidfile))
  return function()
    local pid = read_file(pidfile)
    if pid and pid:match("^%d+") then
      os.execute("kill " .. pid:match("^%d+") .. " 2>/dev/null")
    end
  end
end


local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -m 700 " .. p))
  return p
end


-- A server that answers every request with the head of a 207 and part
-- of its body, then resets the connection.  Stops by itself after
-- RST_SERVER_LIFE seconds or RST_SERVER_CONNS connections.
local RST_SERVER = [[
import os, socket, struct, sys, time
life, conns = 60, 20
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(8)
s.settimeout(1)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
end = time.monotonic() + life
while conns > 0 and time.monotonic() < end:
    try:
        c, _ = s.accept()
    except socket.timeout:
        continue
    conns -= 1
    c.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        got = c.recv(65536)
        if not got:
            break
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length:
        got = c.recv(65536)
        if not got:
            break
        body += got
    c.sendall(b"HTTP/1.1 207 Multi-Status\r\n"
              b"Content-Type: application/json\r\n"
              b"Content-Length: 4000\r\n\r\n"
              b'{"successes":[{"id":"')
    time.sleep(0.1)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
]]


-- GET (or POST {} to, with post set) path on another test server;
-- returns the answer decoded.
local function get(url, path, post)
  local out = {}
  local ok, code = http.request{
    url = url .. path,
    method = post and "POST" or "GET",
    source = post and ltn12.source.string("{}") or nil,
    headers = post and { ["content-type"] = "application/json",
                         ["content-length"] = "2" } or nil,
    sink = ltn12.sink.table(out),
  }
  assert(ok and code == 200, "helper server unreachable")
  return cjson.decode(table.concat(out))
end

-- }==================================================================


describe("hostile server", function()
  before_each(function()
    h.reset()
  end)


  describe("long answers", function()
    it("aborts a gigabyte-long 207 at the cap and retries", function()
      script{ { status = 207, huge = 2 * GIB } }
      local events, res, err = upload(3)
      assert.is_nil(err)
      accounted(events, res, err)
      assert.equal(2, #h.requests(INGESTION))
    end)

    it("gives up on gigabyte answers with every event failed", function()
      script{ { status = 207, huge = 2 * GIB, times = 2 } }
      local events, res, err = upload(3)
      assert.is_nil(res)
      local failed = accounted(events, res, err)
      for i = 1, 3 do
        assert.is_true(failed[i].retryable)
        assert.matches("broke off", failed[i].message)
      end
    end)

    it("retries when a 200 answer breaks off at the size cap",
       function()
      script{ { huge = 2 * GIB } }
      local events, res, err = upload(2)
      assert.is_nil(err)
      accounted(events, res, err)
      assert.equal(2, #h.requests(INGESTION))
    end)

    it("ends an answer that never ends at the timeout and retries",
       function()
      script{ { status = 207, endless = true } }
      local events, res, err = upload(2)
      assert.is_nil(err)
      accounted(events, res, err)
    end)

    it("retries when a 200 answer never ends", function()
      script{ { endless = true } }
      local events, res, err = upload(2)
      assert.is_nil(err)
      accounted(events, res, err)
      assert.equal(2, #h.requests(INGESTION))
    end)

    it("times out a server that drips a byte a second, then retries",
       function()
      script{ { drip = 1 } }
      local events, res, err, took = upload(2)
      assert.is_nil(err)
      accounted(events, res, err)
      assert.is_true(took < 5)
    end)

    it("fails cleanly when every answer drips", function()
      script{ { drip = 1, times = 2 } }
      local events, res, err = upload(2)
      assert.is_nil(res)
      local failed = accounted(events, res, err)
      assert.is_true(failed[1].retryable)
    end)
  end)


  describe("broken answers", function()
    it("retries a connection reset before the answer", function()
      script{ { reset = true } }
      local events, res, err = upload(2)
      assert.is_nil(err)
      accounted(events, res, err)
    end)

    it("retries a reset in the middle of the body, then gives up",
       function()
      local dir = tmpdir()
      local f = assert(io.open(dir .. "/rst.py", "wb"))
      f:write(RST_SERVER)
      f:close()
      local stop = spawn("python3 " .. dir .. "/rst.py " .. dir .. "/port",
                         dir .. "/pid")
      local ok, why = pcall(function()
        local port = assert(wait_port(dir .. "/port"), "rst server down")
        local events, res, err = upload(2, {
          base_url = "http://127.0.0.1:" .. port })
        assert.is_nil(res)
        assert.equal(2, #err.failed)
        assert.equal(0, err.accepted)
        for _, fl in ipairs(err.failed) do
          assert.is_true(fl.retryable)
          assert.equal(2, fl.attempts)
        end
        assert.same(events, err:events())
      end)
      stop()
      os.execute("rm -rf " .. dir)
      assert(ok, why)
    end)

    for _, case in ipairs{
      { "not JSON", "{not json" },
      { "empty", "" },
      { "of the wrong shape", '{"successes":5,"errors":{"a":1}}' },
      { "cut short", '{"successes":[{"id":' },
    } do
      it("treats a 207 body " .. case[1] .. " as not delivered",
         function()
        h.faults{ malformed_207 = case[2] }
        local events, res, err = upload(3)
        assert.is_nil(res)
        local failed = accounted(events, res, err)
        for i = 1, 3 do
          assert.equal(207, failed[i].status)
          assert.is_true(failed[i].retryable)
        end
      end)
    end

    it("ignores ids a 207 names that were never sent", function()
      h.faults{ extra_errors = {
        { id = "ghost-1", status = 400, message = "who is this" },
        { id = "ghost-2", status = 500, message = "nobody" },
      } }
      local events, res, err = upload(3)
      assert.is_nil(err)
      accounted(events, res, err)
      assert.equal(1, #h.requests(INGESTION))
    end)

    it("resends events a 207 did not mention", function()
      script{ { status = 207, body = '{"successes":[{"id":"ghost",'
                                     .. '"status":201}],"errors":[]}' } }
      local events, res, err = upload(2)
      assert.is_nil(err)
      accounted(events, res, err)
      assert.equal(2, #h.requests(INGESTION))
    end)
  end)


  describe("Retry-After", function()
    it("caps a Retry-After far in the future", function()
      script{ { status = 429,
                headers = { ["Retry-After"] = "99999999999" } } }
      local events, res, err, took = upload(2, { retry_after_max = 0.2 })
      assert.is_nil(err)
      accounted(events, res, err)
      assert.is_true(took < 5)
    end)

    it("caps a far HTTP date", function()
      script{ { status = 429, headers = {
        ["Retry-After"] = "Fri, 31 Dec 9999 23:59:59 GMT" } } }
      local events, res, err, took = upload(1, { retry_after_max = 0.2 })
      assert.is_nil(err)
      accounted(events, res, err)
      assert.is_true(took < 5)
    end)

    for _, garbage in ipairs{ "soon", "-5", "1e9", "Mon, 99 Foo 2026",
                              string.rep("9", 400) } do
      it("falls back to backoff for Retry-After " .. garbage:sub(1, 12),
         function()
        script{ { status = 429, headers = { ["Retry-After"] = garbage } } }
        local events, res, err = upload(1, { retry_after_max = 0.5 })
        assert.is_nil(err)
        accounted(events, res, err)
      end)
    end

    it("reports rate_limited, retryable, when 429 never ends", function()
      script{ { status = 429, times = 5,
                headers = { ["Retry-After"] = "99999999999" } } }
      local events, res, err = upload(2, { retry_after_max = 0.2 })
      assert.is_nil(res)
      assert.equal("rate_limited", err.kind)
      assert.is_true(err.retryable)
      accounted(events, res, err)
    end)
  end)


  describe("other hosts and TLS", function()
    local dir, stop, plain_url, tls_port

    lazy_setup(function()
      dir = tmpdir()
      local subj = "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
      assert(os.execute("openssl req -x509 -newkey rsa:2048 -nodes "
                        .. "-keyout " .. dir .. "/key.pem -out " .. dir
                        .. "/cert.pem -days 2 " .. subj
                        .. " >/dev/null 2>&1"))
      stop = spawn("python3 server/fakefuse.py --port 0 --port-file "
                   .. dir .. "/port --tls-port 0 --tls-port-file "
                   .. dir .. "/tls_port --tls-cert " .. dir
                   .. "/cert.pem --tls-key " .. dir .. "/key.pem "
                   .. "--public-key " .. h.public_key .. " --secret-key "
                   .. h.secret_key .. " 2>" .. dir .. "/log",
                   dir .. "/pid")
      tls_port = assert(wait_port(dir .. "/tls_port"), "TLS server down")
      plain_url = "http://127.0.0.1:" .. assert(wait_port(dir .. "/port"))
    end)

    lazy_teardown(function()
      if stop then
        stop()
      end
      if dir then
        os.execute("rm -rf " .. dir)
      end
    end)

    before_each(function()
      get(plain_url, "/_test/reset", true)
    end)

    local function other_requests()
      return get(plain_url, "/_test/requests").total
    end

    it("does not follow a redirect to another host", function()
      script{ { redirect = plain_url .. INGESTION } }
      local events, res, err = upload(2)
      assert.is_nil(res)
      assert.equal("config", err.kind)
      accounted(events, res, err)
      assert.same(events, err:events())
      assert.equal(0, other_requests())
    end)

    it("refuses a self-signed certificate as a config error", function()
      local events, res, err = upload(2, {
        base_url = "https://127.0.0.1:" .. tls_port })
      assert.is_nil(res)
      assert.equal("config", err.kind)
      assert.is_false(err.retryable)
      assert.matches("TLS", err.message)
      assert.same(events, err:events())
      assert.equal(0, other_requests())
    end)

    it("refuses a certificate for another name", function()
      local events, res, err = upload(1, {
        base_url = "https://localhost:" .. tls_port,
        ca_file = dir .. "/cert.pem" })
      assert.is_nil(res)
      assert.equal("config", err.kind)
      assert.same(events, err:events())
      assert.equal(0, other_requests())
    end)

    it("delivers over TLS once the certificate is trusted", function()
      local events = h.traces(2)
      local res, err = client{ base_url = "https://127.0.0.1:" .. tls_port,
                               ca_file = dir .. "/cert.pem" }
                       :upload_events_batch(events)
      assert.is_nil(err)
      assert.equal(2, res.accepted)
      assert.equal(2, get(plain_url, "/_test/events").total)
    end)
  end)
end)
