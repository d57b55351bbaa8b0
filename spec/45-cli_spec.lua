-- The langfuse command (bin/langfuse), run as a subprocess with the
-- interpreter running the specs, against the test server.

local h = require("helpers")
local core = require("langfuse.core")
local cjson = require("cjson")

local INTERP = jit and "luajit" or "lua5.4"
local INGESTION = "/api/public/ingestion"
local SECRET_PROBE = "sk-lf-cli-secret-never-shown"


local function read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end


local function write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end


local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -m 700 " .. p))
  return p
end


local function quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end


-- Runs bin/langfuse with args (a string for the shell) and env (table,
-- or false for no keys at all).  Returns exit code, stdout, stderr.
local function run(args, env, stdin)
  local vars = {
    LANGFUSE_PUBLIC_KEY = h.public_key,
    LANGFUSE_SECRET_KEY = h.secret_key,
    LANGFUSE_BASE_URL = h.url,
    COLUMNS = "80",
  }
  if env == false then
    vars.LANGFUSE_PUBLIC_KEY, vars.LANGFUSE_SECRET_KEY = nil, nil
  end
  for k, v in pairs(env or {}) do
    vars[k] = v
  end
  local parts = { "env -u LANGFUSE_PUBLIC_KEY -u LANGFUSE_SECRET_KEY",
                  "-u LANGFUSE_BASE_URL -u LANGFUSE_HOST" }
  for k, v in pairs(vars) do
    parts[#parts + 1] = k .. "=" .. quote(v)
  end
  local errfile = os.tmpname()
  local cmd = table.concat(parts, " ") .. " " .. INTERP .. " bin/langfuse "
              .. args .. " 2>" .. errfile
              .. (stdin and (" <" .. stdin) or "") .. '; echo "__rc=$?"'
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  local err = read_file(errfile) or ""
  os.remove(errfile)
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  out = out:gsub("__rc=%d+%s*$", "")
  return rc, out, err
end


-- Writes events (tables, or raw strings) as JSON lines; returns path.
local function jsonl(dir, lines)
  local out = {}
  for i, l in ipairs(lines) do
    out[i] = type(l) == "string" and l or core.encode(l)
  end
  local path = dir .. "/events.jsonl"
  write_file(path, table.concat(out, "\n") .. "\n")
  return path
end


local function fits_terminal(text)
  for line in text:gmatch("[^\n]+") do
    assert.is_true(#line <= 80, "line over 80 columns: " .. line)
  end
end


-- A spool in dir holding the given events as ingestion records.
local function spool_with(dir, events)
  local sp = assert(core.spool_open(dir))
  for _, e in ipairs(events) do
    assert(sp:append("ingestion", e.id, core.encode(e)))
  end
  assert(sp:sync())
  sp:close()
end


describe("langfuse command", function()
  local dir

  before_each(function()
    h.reset()
    dir = tmpdir()
  end)

  after_each(function()
    os.execute("rm -rf " .. quote(dir))
  end)


  describe("usage", function()
    it("documents the commands and exit codes in --help", function()
      local rc, out = run("--help")
      assert.equal(0, rc)
      for _, s in ipairs{ "validate FILE", "upload FILE",
                          "spool status DIR", "spool replay DIR",
                          "--json", "--public-key", "--secret-key",
                          "--base-url", "exit codes:" } do
        assert.truthy(out:find(s, 1, true), s)
      end
      for code = 0, 3 do
        assert.matches("\n  " .. code .. "  ", out)
      end
      fits_terminal(out)
    end)

    it("prints the version", function()
      local rc, out = run("--version")
      assert.equal(0, rc)
      assert.equal("langfuse " .. core._VERSION .. "\n", out)
    end)

    it("exits 2 on usage errors", function()
      for _, args in ipairs{ "", "frobnicate", "validate", "--nope x",
                             "spool status", "spool burn " .. dir,
                             "upload --timeout" } do
        local rc, _, err = run(args)
        assert.equal(2, rc, args)
        assert.matches("langfuse:", err)
      end
    end)
  end)


  describe("validate", function()
    it("exits 0 for a file of valid events", function()
      local file = jsonl(dir, h.traces(3))
      local rc, out = run("validate " .. file)
      assert.equal(0, rc)
      assert.matches("3 valid events, 0 bad lines", out)
      assert.equal(0, #h.requests(INGESTION))
    end)

    it("reports each bad line with line, id, path and message",
       function()
      local bad = h.event("trace-create", { name = 5 })
      local file = jsonl(dir, {
        h.event("trace-create"), bad, "{not json", "", "[1, 2]",
        h.event("span-create"),
      })
      local rc, out = run("validate " .. file)
      assert.equal(1, rc)
      assert.matches("line 2 %(id " .. bad.id:gsub("%-", "%%-")
                     .. "%): validation: body.name: expected a string",
                     out)
      assert.matches("line 3: json: invalid JSON", out)
      assert.matches("line 5: json: expected a JSON object", out)
      assert.matches("6 lines, 2 valid events, 3 bad lines", out)
      fits_terminal(out)
    end)

    it("gives one JSON document with --json", function()
      local bad = h.event("trace-create", { name = 5 })
      local file = jsonl(dir, { h.event("trace-create"), bad })
      local rc, out = run("--json validate " .. file)
      assert.equal(1, rc)
      local doc = cjson.decode(out)
      assert.equal("validate", doc.command)
      assert.equal(1, doc.valid)
      assert.equal(1, doc.exit_code)
      assert.equal(1, #doc.problems)
      local p = doc.problems[1]
      assert.equal(2, p.line)
      assert.equal(bad.id, p.id)
      assert.equal("body.name", p.path)
    end)

    it("reads standard input for -", function()
      local file = jsonl(dir, h.traces(2))
      local rc, out = run("validate -", nil, file)
      assert.equal(0, rc)
      assert.matches("2 valid events", out)
    end)

    it("exits 2 for a file it cannot read", function()
      local rc, _, err = run("validate " .. dir .. "/missing.jsonl")
      assert.equal(2, rc)
      assert.matches("cannot read", err)
    end)
  end)


  describe("upload", function()
    it("delivers every event and exits 0", function()
      local events = h.traces(5)
      local rc, out = run("upload " .. jsonl(dir, events))
      assert.equal(0, rc)
      assert.matches("delivered%s+5", out)
      assert.same(h.ones(5), h.delivered_counts(events))
      fits_terminal(out)
    end)

    it("sends the valid events and exits 1 for the refused ones",
       function()
      local events = h.traces(3)
      events[2].body.name = 5
      local rc, out = run("upload " .. jsonl(dir, events))
      assert.equal(1, rc)
      assert.matches("delivered%s+2", out)
      assert.matches("refused%s+1%s+%(validation 1%)", out)
      assert.same({ 1, 0, 1 }, h.delivered_counts(events))
    end)

    it("counts server refusals per kind in --json", function()
      local events = h.traces(3)
      h.faults{ per_event = { [events[3].id] = {
        status = 400, message = "Invalid request data" } } }
      local rc, out = run("--json upload " .. jsonl(dir, events))
      assert.equal(1, rc)
      local doc = cjson.decode(out)
      assert.equal(2, doc.delivered)
      assert.equal(1, doc.refused)
      assert.equal(1, doc.kinds.rejected)
      assert.equal(3, doc.problems[1].line)
    end)

    it("exits 2 without keys", function()
      local rc, _, err = run("upload " .. jsonl(dir, h.traces(1)), false)
      assert.equal(2, rc)
      assert.matches("public key", err)
    end)

    it("exits 2 on 401 and never prints the secret", function()
      local rc, out, err = run("upload --secret-key " .. SECRET_PROBE
                               .. " " .. jsonl(dir, h.traces(2)))
      assert.equal(2, rc)
      assert.matches("auth", out)
      assert.is_nil(out:find(SECRET_PROBE, 1, true))
      assert.is_nil(err:find(SECRET_PROBE, 1, true))
      rc, out, err = run("--json upload --secret-key=" .. SECRET_PROBE
                         .. " " .. jsonl(dir, h.traces(1)))
      assert.equal(2, rc)
      assert.is_nil(out:find(SECRET_PROBE, 1, true))
      assert.is_nil(err:find(SECRET_PROBE, 1, true))
    end)

    it("exits 3 when the server cannot be reached", function()
      local rc, out = run("upload --base-url http://127.0.0.1:1 "
                          .. "--timeout 1 --max-retries 0 "
                          .. jsonl(dir, h.traces(3)))
      assert.equal(3, rc)
      assert.matches("failed%s+3%s+%(network 3%)", out)
    end)

    it("exits 3 when the server keeps failing", function()
      h.faults{ script = { { status = 503, times = 2 } } }
      local rc = run("upload --max-retries 1 " .. jsonl(dir, h.traces(2)))
      assert.equal(3, rc)
    end)
  end)


  describe("spool", function()
    it("exits 2 for a directory that does not exist", function()
      local rc, _, err = run("spool status " .. dir .. "/none")
      assert.equal(2, rc)
      assert.matches("no such spool directory", err)
      rc = run("spool replay " .. dir .. "/none")
      assert.equal(2, rc)
    end)

    it("shows what a spool holds", function()
      spool_with(dir, h.traces(4))
      local rc, out = run("spool status " .. dir)
      assert.equal(0, rc)
      assert.matches("segments%s+1", out)
      assert.matches("records pending%s+4", out)
      assert.matches("dead letters%s+0", out)
      assert.matches("quarantined%s+0", out)
      fits_terminal(out)
      rc, out = run("--json spool status " .. dir)
      assert.equal(0, rc)
      local doc = cjson.decode(out)
      assert.equal(4, doc.records_pending)
      assert.is_true(doc.bytes_pending > 0)
    end)

    it("replays every record once, keeping ids, and empties the spool",
       function()
      local events = h.traces(30)
      spool_with(dir, events)
      local rc, out = run("spool replay " .. dir)
      assert.equal(0, rc)
      assert.matches("30 records sent", out)
      assert.matches("delivered%s+30", out)
      assert.same(h.ones(30), h.delivered_counts(events))
      local _, status = run("--json spool status " .. dir)
      assert.equal(0, cjson.decode(status).records_pending)
      rc = run("spool replay " .. dir)
      assert.equal(0, rc)
      assert.same(h.ones(30), h.delivered_counts(events))
    end)

    it("replays the spans a tracer left in the spool, with the events",
       function()
      local c = h.client{ spool_dir = dir, base_url = "http://127.0.0.1:1",
                          flush_interval = 60, max_retries = 0 }
      local trace = c:trace{ name = "left behind" }
      local ids = {}
      for i = 1, 3 do
        local s = trace:span{ name = "span " .. i }
        s:finish()
        ids[#ids + 1] = s.id
      end
      trace:finish()
      assert.is_true(c:shutdown(1))
      c:close()
      local events = h.traces(2)
      spool_with(dir, events)
      local rc, out = run("--json spool replay " .. dir,
                          { OTEL_SERVICE_NAME = "replayer" })
      assert.equal(0, rc)
      local doc = cjson.decode(out)
      assert.equal(6, doc.records)
      assert.equal(4, doc.otlp_records)
      assert.equal(6, doc.delivered)
      assert.equal(0, doc.records_pending)
      assert.same(h.ones(2), h.delivered_counts(events))
      local spans = h.spans()
      assert.equal(4, #spans.spans)            -- the trace's and three
      for _, sp in ipairs(spans.spans) do
        assert.equal("replayer", sp.resource["service.name"])
        assert.equal(trace.id, sp.traceId)
      end
      for _, id in ipairs(ids) do
        assert.equal(1, spans.counts[id])
      end
      local _, status = run("--json spool status " .. dir)
      assert.equal(0, cjson.decode(status).records_pending)
    end)

    it("dead-letters what the server refuses and exits 1", function()
      local events = h.traces(3)
      h.faults{ per_event = { [events[2].id] = {
        status = 400, message = "Invalid request data" } } }
      spool_with(dir, events)
      local rc, out = run("--json spool replay " .. dir)
      assert.equal(1, rc)
      local doc = cjson.decode(out)
      assert.equal(2, doc.delivered)
      assert.equal(1, doc.dead_lettered)
      assert.equal(0, doc.records_pending)
      local dl = read_file(dir .. "/dead-letter.jsonl")
      assert.matches(events[2].id, dl, 1, true)
      assert.matches("Invalid request data", dl, 1, true)
      local _, status = run("--json spool status " .. dir)
      assert.equal(1, cjson.decode(status).dead_letters)
    end)

    it("keeps every record when the server is down and exits 3",
       function()
      spool_with(dir, h.traces(5))
      local rc, out = run("spool replay --base-url http://127.0.0.1:1 "
                          .. "--timeout 1 --max-retries 0 " .. dir)
      assert.equal(3, rc)
      assert.matches("failed%s+5", out)
      local _, status = run("--json spool status " .. dir)
      assert.equal(5, cjson.decode(status).records_pending)
    end)
  end)
end)
