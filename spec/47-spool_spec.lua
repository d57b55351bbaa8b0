-- The durable spool as the client uses it (spool_dir): a write-ahead log
-- for the background sender and for upload_events_batch, replay when the
-- server answers again or a client starts on a spool, dead letters, the
-- spool queue policy, and a spool that cannot be written.

local h = require("helpers")
local langfuse = require("langfuse")
local core = require("langfuse.core")
local socket = require("socket")
local cjson = require("cjson")

-- A URL nothing listens on: the server is down.
local DOWN = "http://127.0.0.1:1"
-- Seconds a delivery or a replay may take against the local server.
local WAIT = 10
-- A 503 for every request of a route, until the faults are reset.
local function down(route)
  return { script = { { route = route, status = 503, times = 100000 } } }
end


local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -m 700 " .. p))
  return p
end


-- Records still in the spool in dir (whoever holds them), and the rest
-- of its status.
local function left_in(dir)
  local sp = assert(core.spool_open(dir))
  local st = sp:status()
  sp:close()
  return st.records_pending, st
end


-- Polls fn every 20 ms for up to seconds (WAIT); returns its last answer.
local function wait_for(fn, seconds)
  local deadline = h.now() + (seconds or WAIT)
  repeat
    if fn() then
      return true
    end
    socket.sleep(0.02)
  until h.now() > deadline
  return fn()
end


-- A client on the spool in dir, for the test server unless opts says.
local function client(dir, opts)
  local o = { spool_dir = dir, flush_interval = 0.05, max_retries = 1 }
  for k, v in pairs(opts or {}) do
    o[k] = v
  end
  return h.client(o)
end


-- An on_error that keeps every failure entry in list.
local function keep(list)
  return function(err)
    for _, f in ipairs(err.failed) do
      list[#list + 1] = f
    end
  end
end


-- Records n spans in one trace (n + 1 events with the trace's root
-- span); returns the ids of the n spans.
local function spans(c, n)
  local ids = {}
  local trace = c:trace{ name = "spooled" }
  for i = 1, n do
    local s = trace:span{ name = "span " .. i }
    s:finish()
    ids[#ids + 1] = s.id
  end
  trace:finish()
  return ids
end


-- Server counts of the given span ids, and whether all were delivered.
local function span_counts(ids)
  local counts = h.spans().counts or {}
  local out, all = {}, true
  for i, id in ipairs(ids) do
    out[i] = counts[id] or 0
    all = all and out[i] > 0
  end
  return out, all
end


local function delivered(ids)
  return function()
    local _, all = span_counts(ids)
    return all
  end
end


local function read_lines(path)
  local out = {}
  local f = io.open(path)
  if not f then
    return out
  end
  for line in f:lines() do
    out[#out + 1] = cjson.decode(line)
  end
  f:close()
  return out
end


-- The Lua interpreter running the specs, for child processes.
local INTERP = jit and "luajit" or "lua5.4"

-- Runs code (a Lua chunk) in a new process with this package path;
-- prefix goes before the interpreter on the shell line.  Returns what
-- the child printed, and its exit status.
local function child(code, prefix)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(code)
  f:close()
  os.execute("chmod 644 " .. file)
  local cmd = string.format("LUA_PATH='%s' LUA_CPATH='%s' %s %s %s 2>&1",
                            package.path, package.cpath, prefix or "",
                            INTERP, file)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  local ok = p:close()
  os.remove(file)
  return out, ok
end


-- A shell prefix that runs a child as an unprivileged user, when the
-- specs run as root; "" otherwise; nil when that is not possible.
local function unprivileged()
  local p = io.popen("id -u")
  local uid = p:read("l")
  p:close()
  if uid ~= "0" then
    return ""
  end
  if os.execute("command -v setpriv >/dev/null 2>&1") then
    return "setpriv --reuid=65534 --regid=65534 --clear-groups"
  end
  return nil
end


describe("langfuse durable spool", function()
  local dir

  before_each(function()
    collectgarbage()
    collectgarbage()
    h.reset()
    dir = tmpdir()
  end)

  after_each(function()
    collectgarbage()
    collectgarbage()
    h.reset()
    os.execute("rm -rf '" .. dir .. "'")
  end)


  describe("the write-ahead log", function()
    it("has each event on disk before finish returns", function()
      local c = client(dir, { base_url = DOWN, flush_interval = 60 })
      local trace = c:trace{ name = "wal" }
      for i = 1, 5 do
        trace:span{ name = "span " .. i }:finish()
        assert.equal(i, (left_in(dir)))
      end
      trace:finish()
      assert.equal(6, (left_in(dir)))
      assert.equal(6, c:stats().spooled)
      c:shutdown(0)
    end)

    it("keeps what a process that died had been given", function()
      local ids_file = os.tmpname()
      local pid = core._fork()
      if pid == 0 then
        local ok = pcall(function()
          local c = client(dir, { base_url = DOWN, flush_interval = 60 })
          local ids = spans(c, 3)
          local f = assert(io.open(ids_file, "w"))
          f:write(table.concat(ids, "\n"), "\n")
          f:close()
        end)
        core._exit(ok and 0 or 1)  -- no finaliser, no flush: as if killed
      end
      assert.equal(0, core._wait(pid))
      local ids = {}
      for line in io.lines(ids_file) do
        ids[#ids + 1] = line
      end
      os.remove(ids_file)
      assert.equal(3, #ids)
      assert.equal(4, (left_in(dir)))
      -- a client started on that spool, with the server up, replays it
      local c = client(dir)
      assert.is_true(wait_for(delivered(ids)))
      assert.same({ 1, 1, 1 }, (span_counts(ids)))
      assert.is_true(wait_for(function() return left_in(dir) == 0 end))
      assert.equal(4, c:stats().replay_delivered)
    end)
  end)


  describe("while the server is down", function()
    it("keeps events in the spool and delivers each once it answers",
       function()
      h.faults(down("otlp"))
      local fails = {}
      local c = client(dir, { on_error = keep(fails) })
      local ids = spans(c, 20)
      assert.is_true(wait_for(function()
        return c:stats().spool_kept >= 21
      end))
      assert.equal(0, h.spans().total)
      assert.is_true(left_in(dir) >= 21)
      assert.is_true(#fails > 0)
      for _, f in ipairs(fails) do
        assert.is_true(f.spooled)
        assert.equal(503, f.status)
        assert.matches("kept in the spool", f.message)
      end
      h.reset()                         -- the server answers again
      assert.is_true(wait_for(delivered(ids)))
      assert.same(h.ones(20), (span_counts(ids)))
      assert.is_true(wait_for(function() return left_in(dir) == 0 end))
      local st = c:stats()
      assert.equal(0, st.dropped)
      assert.is_true(st.replay_delivered >= 21)
    end)

    it("leaves in the spool what it could not send before shutdown",
       function()
      local fails = {}
      local c = client(dir, { base_url = DOWN, flush_interval = 60,
                              on_error = keep(fails) })
      local ids = spans(c, 5)
      assert.is_true(c:shutdown(1))   -- each event failed, none is held
      assert.equal(6, #fails)
      for _, f in ipairs(fails) do
        assert.equal("network", f.kind)
        assert.is_true(f.spooled)
      end
      assert.equal(6, (left_in(dir)))
      local c2 = client(dir)
      assert.is_true(wait_for(delivered(ids)))
      assert.is_true(wait_for(function() return left_in(dir) == 0 end))
      c2:shutdown()
    end)

    it("waits for start() or a record to replay with replay_at_start " ..
       "false", function()
      local c = client(dir, { base_url = DOWN, flush_interval = 60 })
      local ids = spans(c, 3)
      assert.is_true(c:shutdown(1))
      assert.equal(4, (left_in(dir)))
      local c2 = client(dir, { replay_at_start = false })
      socket.sleep(0.5)
      assert.equal(4, (left_in(dir)))
      assert.equal(0, c2:stats().replayed)
      assert.is_true(c2:start())
      assert.is_true(wait_for(delivered(ids)))
      assert.is_true(wait_for(function() return left_in(dir) == 0 end))
      assert.is_true(c2:start())                -- nothing left: no-op
      c2:shutdown()
    end)

    it("keeps a full queue's overflow in the spool under policy spool",
       function()
      h.faults(down("otlp"))
      local c = client(dir, { queue_max_events = 3 })
      assert.equal("spool", c.cfg.queue_full_policy)
      local ids = spans(c, 40)
      local st = c:stats()
      assert.equal(0, st.dropped)
      assert.is_true(st.spool_only > 0)
      assert.equal(41, st.spooled)
      h.reset()
      assert.is_true(wait_for(delivered(ids)))
      assert.is_true(wait_for(function() return left_in(dir) == 0 end))
    end)

    it("drops the newest under drop_newest, and says so", function()
      h.faults(down("otlp"))
      local fails = {}
      local c = client(dir, { queue_max_events = 3, flush_interval = 60,
                              queue_full_policy = "drop_newest",
                              on_error = keep(fails) })
      spans(c, 10)
      local st = c:stats()
      assert.equal(8, st.dropped)
      assert.equal(0, st.spool_only)
      assert.equal(3, (left_in(dir)))
      c:shutdown(0)
    end)
  end)


  describe("dead letters", function()
    it("take what the server refuses for good, with the reason", function()
      h.faults{ script = { { route = "otlp", status = 400,
                             body = '{"error":"span refused"}' } } }
      local fails = {}
      local c = client(dir, { on_error = keep(fails) })
      local ids = spans(c, 2)
      assert.is_true(c:flush())
      local lines = read_lines(dir .. "/dead-letter.jsonl")
      assert.equal(3, #lines)
      local seen = {}
      for _, l in ipairs(lines) do
        seen[l.id] = true
        assert.equal("otlp", l.route)
        assert.matches("400", l.reason)
        assert.is_table(l.event)
      end
      assert.is_true(seen[ids[1]] and seen[ids[2]])
      assert.equal(0, (left_in(dir)))
      assert.equal(3, c:stats().dead_lettered)
      for _, f in ipairs(fails) do
        assert.equal("rejected", f.kind)
        assert.is_nil(f.spooled)
      end
    end)

    it("take a batch event the server rejects", function()
      local events = h.traces(3)
      h.faults{ per_event = { [events[2].id] = {
        status = 400, message = "Invalid request data" } } }
      local c = client(dir)
      local res, err = c:upload_events_batch(events)
      assert.is_nil(res)
      assert.equal(1, #err.failed)
      assert.equal("rejected", err.failed[1].kind)
      assert.is_nil(err.failed[1].spooled)
      assert.is_nil(err.spooled)
      assert.same({ 1, 0, 1 }, h.delivered_counts(events))
      local lines = read_lines(dir .. "/dead-letter.jsonl")
      assert.equal(1, #lines)
      assert.equal(events[2].id, lines[1].id)
      assert.matches("Invalid request data", lines[1].reason)
      assert.equal(0, (left_in(dir)))
    end)
  end)


  describe("a damaged record", function()
    it("is skipped, quarantined and reported; the others go", function()
      local events = h.traces(3)
      local sp = assert(core.spool_open(dir))
      for _, e in ipairs(events) do
        assert(sp:append("ingestion", e.id, cjson.encode(e)))
      end
      sp:close()
      -- flip a byte inside the second event's JSON
      local name
      for f in io.popen("ls '" .. dir .. "'"):lines() do
        if f:match("^seg%-") and not f:match("%.ack$") then
          name = dir .. "/" .. f
        end
      end
      local f = assert(io.open(name, "r+b"))
      local data = f:read("a")
      local at = assert(data:find(events[2].body.name, 1, true))
      f:seek("set", at - 1)
      f:write("X")
      f:close()
      local fails = {}
      local c = client(dir, { on_error = keep(fails) })
      assert.is_true(wait_for(function()
        local counts = h.delivered_counts(events)
        return counts[1] == 1 and counts[3] == 1
      end))
      assert.is_true(wait_for(function()
        c:stats()                       -- reports what the thread found
        return #fails > 0
      end))
      assert.equal("spool", fails[1].kind)
      assert.matches("checksum", fails[1].message)
      assert.same({ 1, 0, 1 }, h.delivered_counts(events))
      assert.equal(1, c:stats().spool_corrupt)
      local listing = io.popen("ls '" .. dir .. "/quarantine'")
      local kept_bytes = listing:read("a")
      listing:close()
      assert.matches("%.bad", kept_bytes)
    end)
  end)


  describe("upload_events_batch()", function()
    it("spools the events first and acks them once delivered", function()
      local events = h.traces(5)
      local c = client(dir)
      local res = assert(c:upload_events_batch(events))
      assert.equal(5, res.accepted)
      assert.same(h.ones(5), h.delivered_counts(events))
      assert.equal(0, (left_in(dir)))
    end)

    it("keeps what it could not deliver, says so, and the client " ..
       "replays it", function()
      h.faults(down("ingestion"))
      local events = h.traces(4)
      local c = client(dir, { max_retries = 0 })
      local res, err = c:upload_events_batch(events)
      assert.is_nil(res)
      assert.equal(4, err.spooled)
      assert.matches("4 kept in the spool", err.message)
      for _, f in ipairs(err.failed) do
        assert.is_true(f.spooled)
      end
      assert.equal(4, (left_in(dir)))
      h.reset()
      assert.is_true(wait_for(function()
        local n = 0
        for _, k in ipairs(h.delivered_counts(events)) do
          n = n + (k > 0 and 1 or 0)
        end
        return n == 4
      end))
      assert.is_true(wait_for(function() return left_in(dir) == 0 end))
    end)
  end)


  describe("several processes", function()
    it("share one spool: each record is replayed by one of them",
       function()
      -- a spool of many small segments, left by a client that could
      -- not deliver
      local c = client(dir, { base_url = DOWN, flush_interval = 60,
                              spool_segment_bytes = 2048,
                              queue_max_events = 1000 })
      local ids = spans(c, 150)
      c:shutdown(0)
      assert.equal(151, (left_in(dir)))
      local pids = {}
      for i = 1, 3 do
        pids[i] = core._fork()
        if pids[i] == 0 then
          local ok = pcall(function()
            local r = client(dir, { spool_segment_bytes = 2048 })
            local deadline = h.now() + WAIT
            while left_in(dir) > 0 and h.now() < deadline do
              socket.sleep(0.05)
            end
            r:shutdown(2)
          end)
          core._exit(ok and 0 or 1)
        end
      end
      for i = 1, 3 do
        assert.equal(0, core._wait(pids[i]))
      end
      assert.same(h.ones(150), (span_counts(ids)))
      assert.equal(0, (left_in(dir)))
    end)
  end)


  describe("a spool that cannot be written", function()
    it("makes new() return a config error", function()
      local c, err = langfuse.new{
        public_key = "pk-lf-test", secret_key = "sk-lf-test",
        base_url = h.url, spool_dir = "/proc/no/such/dir",
      }
      assert.is_nil(c)
      assert.equal("config", err.kind)
      assert.matches("spool_dir", err.message)
      local file = os.tmpname()
      c, err = langfuse.new{
        public_key = "pk-lf-test", secret_key = "sk-lf-test",
        base_url = h.url, spool_dir = file,
      }
      os.remove(file)
      assert.is_nil(c)
      assert.matches("spool_dir", err.message)
      c, err = langfuse.new{
        public_key = "pk-lf-test", secret_key = "sk-lf-test",
        queue_full_policy = "spool",
      }
      assert.is_nil(c)
      assert.matches("needs spool_dir", err.message)
    end)

    it("makes new() return a config error for a read-only directory",
       function()
      local prefix = unprivileged()
      if not prefix then
        pending("needs setpriv to drop root's rights")
        return
      end
      os.execute("chmod 555 '" .. dir .. "'")
      local out = child(string.format([[
        local langfuse = require("langfuse")
        local c, err = langfuse.new{ public_key = "pk-lf-test",
          secret_key = "sk-lf-test", base_url = %q, spool_dir = %q }
        print(c == nil, err and err.kind, err and err.message)
      ]], h.url, dir), prefix)
      os.execute("chmod 700 '" .. dir .. "'")
      assert.matches("^true\tconfig\tspool_dir: .*writ", out)
    end)

    it("keeps events in memory when the disk is full, and says so",
       function()
      -- RLIMIT_FSIZE stands in for a full disk: writes past 4 KiB fail
      -- with EFBIG (SIGXFSZ ignored, as the spool's caveats ask)
      local out = child(string.format([[
        local langfuse = require("langfuse")
        local fails = {}
        local c = assert(langfuse.new{ public_key = "pk-lf-test",
          secret_key = "sk-lf-test", base_url = %q, spool_dir = %q,
          flush_interval = 0.05, on_error = function(e)
            for _, f in ipairs(e.failed) do fails[#fails + 1] = f end
          end })
        local trace = c:trace{ name = "full disk" }
        for i = 1, 40 do
          trace:span{ name = "span " .. i,
                      input = string.rep("x", 200) }:finish()
        end
        trace:finish()
        assert(c:flush(10))
        local st = c:stats()
        local spooled_fail = 0
        for _, f in ipairs(fails) do
          if f.kind == "spool" and f.spooled then
            spooled_fail = spooled_fail + 1
          end
        end
        print(st.spooled, st.spool_errors, st.accepted, st.dropped,
              spooled_fail, fails[1] and fails[1].kind,
              fails[1] and fails[1].message)
      ]], h.url, dir), "trap '' XFSZ; ulimit -f 8;")
      local spooled, errs, accepted, dropped, bad, kind, msg =
        out:match("^(%d+)\t(%d+)\t(%d+)\t(%d+)\t(%d+)\t(%S+)\t([^\n]*)")
      assert.is_string(spooled, out)
      assert.is_true(tonumber(spooled) > 0)
      assert.is_true(tonumber(errs) > 0)
      assert.equal(41, tonumber(spooled) + tonumber(errs))
      assert.equal(41, tonumber(accepted))
      assert.equal(0, tonumber(dropped))
      assert.equal(0, tonumber(bad))
      assert.equal("spool", kind)
      assert.matches("kept in memory only: .*[Ff]ile too large", msg)
      assert.equal(41, h.spans().total)
    end)

    it("keeps events in memory when the directory turns read-only",
       function()
      local prefix = unprivileged()
      if not prefix then
        pending("needs setpriv to drop root's rights")
        return
      end
      os.execute("chmod 777 '" .. dir .. "'")
      local out = child(string.format([[
        local langfuse = require("langfuse")
        local dir = %q .. "/ro"
        local fails = {}
        local c = assert(langfuse.new{ public_key = "pk-lf-test",
          secret_key = "sk-lf-test", base_url = %q, spool_dir = dir,
          spool_segment_bytes = 1024, flush_interval = 60,
          on_error = function(e)
            for _, f in ipairs(e.failed) do fails[#fails + 1] = f end
          end })
        local trace = c:trace{ name = "read-only" }
        trace:span{ name = "before" }:finish()
        os.execute("chmod 500 " .. dir)
        for i = 1, 20 do
          trace:span{ name = "span " .. i,
                      input = string.rep("y", 200) }:finish()
        end
        trace:finish()
        assert(c:flush(10))
        local st = c:stats()
        os.execute("chmod 700 " .. dir)
        print(st.spool_errors, st.accepted, fails[1] and fails[1].kind,
              fails[1] and fails[1].message)
      ]], dir, h.url), prefix)
      local errs, accepted, kind, msg =
        out:match("^(%d+)\t(%d+)\t(%S+)\t([^\n]*)")
      assert.is_string(errs, out)
      assert.is_true(tonumber(errs) > 0)
      assert.equal(22, tonumber(accepted))
      assert.equal("spool", kind)
      assert.matches("kept in memory only: .*[Pp]ermission denied", msg)
      assert.equal(22, h.spans().total)
    end)
  end)
end)
