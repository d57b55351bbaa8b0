-- langfuse: the Langfuse client for Lua.
--
--   local langfuse = require("langfuse")
--   local client = assert(langfuse.new{
--     public_key = "pk-lf-...",          -- LANGFUSE_PUBLIC_KEY
--     secret_key = "sk-lf-...",          -- LANGFUSE_SECRET_KEY
--     base_url = "https://cloud.langfuse.com",
--                                        -- LANGFUSE_BASE_URL, LANGFUSE_HOST
--   })
--   local res, err = client:upload_events_batch(events)
--
--   local trace = client:trace{ name = "chat" }   -- see langfuse.tracing
--   trace:generation{ model = "gpt-4o", input = q }:finish{ output = a }
--   trace:finish()
--   client:flush()
--
-- Options (each falls back to its environment variable, then to the
-- default): timeout 5 s (LANGFUSE_TIMEOUT), connect_timeout (= timeout),
-- max_retries 3, backoff_base 0.5 s, backoff_max 30 s, retry_after_max
-- 60 s, max_event_bytes 1,000,000 (LANGFUSE_MAX_EVENT_SIZE_BYTES),
-- max_batch_bytes 3,500,000 (LANGFUSE_MAX_BATCH_SIZE_BYTES),
-- max_batch_events 1000, max_depth 64, strict true, ca_file, logger
-- (function(level, message)), debug false (LANGFUSE_DEBUG).
--
-- Tracing options: protocol "otlp" (or "ingestion"), environment
-- (LANGFUSE_TRACING_ENVIRONMENT), release (LANGFUSE_RELEASE),
-- sample_rate 1 (LANGFUSE_SAMPLE_RATE), enabled true
-- (LANGFUSE_TRACING_ENABLED), flush_at 512 (LANGFUSE_FLUSH_AT),
-- flush_interval 1 s (LANGFUSE_FLUSH_INTERVAL), gzip true,
-- queue_max_events 10000, queue_max_bytes 64 MiB, queue_full_policy
-- "drop_newest" (or "block", or "spool": the default with a spool),
-- queue_block_timeout 0.5 s, on_error (function(err)), service_name
-- (OTEL_SERVICE_NAME).
--
-- Durable spool (see README, "Durable spool"): spool_dir
-- (LANGFUSE_SPOOL_DIR; none by default), spool_fsync "batch" (or
-- "always", "never"), spool_max_bytes 1 GiB, spool_full_policy "refuse"
-- (or "drop_oldest"), spool_segment_bytes 8 MiB, replay_at_start true
-- (false: a spool that holds events is replayed from the first record or
-- client:start(), not as the client is made).
--
-- Caller mistakes (an argument of the wrong type) raise; configuration
-- problems return nil and an error of kind "config"; failures at run time
-- return nil and an error object (see langfuse.error).

local core = require("langfuse.core")
local errors = require("langfuse.error")
local tracing = require("langfuse.tracing")

local type = type
local pairs = pairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local pcall = pcall
local os_getenv = os.getenv
local io_stderr = io.stderr
local fmt = string.format
local sort = table.sort
local concat = table.concat
local floor = math.floor

local DEFAULT_BASE_URL = "https://cloud.langfuse.com"

-- Every option: its type, environment variables in order, default.
local OPTIONS = {
  public_key = { "string", { "LANGFUSE_PUBLIC_KEY" } },
  secret_key = { "string", { "LANGFUSE_SECRET_KEY" } },
  base_url = { "string", { "LANGFUSE_BASE_URL", "LANGFUSE_HOST" },
               DEFAULT_BASE_URL },
  timeout = { "number", { "LANGFUSE_TIMEOUT" }, 5 },
  connect_timeout = { "number" },
  max_retries = { "count", nil, 3 },
  backoff_base = { "number", nil, 0.5 },
  backoff_max = { "number", nil, 30 },
  retry_after_max = { "number", nil, 60 },
  max_event_bytes = { "count", { "LANGFUSE_MAX_EVENT_SIZE_BYTES" },
                      1000000 },
  max_batch_bytes = { "count", { "LANGFUSE_MAX_BATCH_SIZE_BYTES" },
                      3500000 },
  max_batch_events = { "count", nil, 1000 },
  max_depth = { "count", nil, 64 },
  strict = { "boolean", nil, true },
  ca_file = { "string" },
  logger = { "function" },
  debug = { "boolean", { "LANGFUSE_DEBUG" }, false },
  protocol = { "string", nil, "otlp" },
  environment = { "string", { "LANGFUSE_TRACING_ENVIRONMENT" } },
  release = { "string", { "LANGFUSE_RELEASE" } },
  sample_rate = { "number", { "LANGFUSE_SAMPLE_RATE" }, 1 },
  enabled = { "boolean", { "LANGFUSE_TRACING_ENABLED" }, true },
  flush_at = { "count", { "LANGFUSE_FLUSH_AT" }, 512 },
  flush_interval = { "number", { "LANGFUSE_FLUSH_INTERVAL" }, 1 },
  gzip = { "boolean", nil, true },
  queue_max_events = { "count", nil, 10000 },
  queue_max_bytes = { "count", nil, 64 * 1024 * 1024 },
  queue_full_policy = { "string" },
  queue_block_timeout = { "number", nil, 0.5 },
  on_error = { "function" },
  service_name = { "string", { "OTEL_SERVICE_NAME" } },
  spool_dir = { "string", { "LANGFUSE_SPOOL_DIR" } },
  spool_fsync = { "string", nil, "batch" },
  spool_max_bytes = { "count", nil, 1024 * 1024 * 1024 },
  spool_full_policy = { "string", nil, "refuse" },
  spool_segment_bytes = { "count", nil, 8 * 1024 * 1024 },
  replay_at_start = { "boolean", nil, true },
}

-- Values of the options that take one of a few words.
local CHOICES = {
  protocol = { otlp = true, ingestion = true },
  queue_full_policy = { drop_newest = true, block = true, spool = true },
  spool_fsync = { batch = true, always = true, never = true },
  spool_full_policy = { refuse = true, drop_oldest = true },
}

-- Seconds flush and shutdown wait by default, and what closing a client
-- (Lua 5.4's <close>) gives the sender to deliver what is queued.
local DEFAULT_WAIT = 10
local CLOSE_WAIT = 5

-- Smallest sizes that still make sense, so a typo cannot stall uploads.
local MIN_BATCH_BYTES = 1024
local MIN_QUEUE_BYTES = 1024
-- Langfuse's rule for environment names (longer or other names are
-- replaced by "default" on the server).
local ENVIRONMENT_MAX = 40
local MAX_DEPTH_LIMIT = 1000


local function config_error(message)
  return nil, errors.simple("config", message)
end


-- Reads an environment value as the option's type, or returns nil and
-- a reason.
local function from_env(kind, name, raw)
  if kind == "string" then
    return raw
  elseif kind == "boolean" then
    local v = raw:lower()
    if v == "true" or v == "1" or v == "yes" or v == "on" then
      return true
    elseif v == "false" or v == "0" or v == "no" or v == "off"
        or v == "" then
      return false
    end
    return nil, fmt("%s must be true or false, got %q", name, raw)
  end
  local n = tonumber(raw)
  if not n then
    return nil, fmt("%s must be a number, got %q", name, raw)
  end
  return n
end


local function check_type(kind, name, v)
  local t = type(v)
  if kind == "count" then
    if t ~= "number" or v < 0 or v ~= floor(v) then
      return fmt("option %s must be a non-negative integer, got %s",
                 name, tostring(v))
    end
  elseif kind == "number" then
    if t ~= "number" or v ~= v or v < 0 then
      return fmt("option %s must be a non-negative number, got %s",
                 name, tostring(v))
    end
  elseif t ~= kind then
    return fmt("option %s must be a %s, got a %s", name, kind, t)
  end
  return nil
end


-- Merges opts, the environment and the defaults into a checked table.
local function resolve(opts)
  local cfg = {}
  for name in pairs(opts) do
    if type(name) ~= "string" or not OPTIONS[name] then
      return nil, fmt("unknown option %s", tostring(name))
    end
  end
  for name, spec in pairs(OPTIONS) do
    local kind, envs, default = spec[1], spec[2], spec[3]
    local v = opts[name]
    if v == nil and envs then
      for _, var in pairs(envs) do
        local raw = os_getenv(var)
        if raw and raw ~= "" then
          local got, why = from_env(kind, var, raw)
          if got == nil then
            return nil, why
          end
          v = got
          break
        end
      end
    end
    if v == nil then
      v = default
    end
    if v ~= nil then
      local why = check_type(kind, name, v)
      if why then
        return nil, why
      end
    end
    cfg[name] = v
  end
  return cfg
end


local function check_config(cfg)
  if not cfg.public_key or cfg.public_key == "" then
    return "missing public key: pass public_key or set LANGFUSE_PUBLIC_KEY"
  end
  if not cfg.secret_key or cfg.secret_key == "" then
    return "missing secret key: pass secret_key or set LANGFUSE_SECRET_KEY"
  end
  if not cfg.base_url:match("^https?://[^/]") then
    return fmt("base_url must start with http:// or https://, got %q",
               cfg.base_url)
  end
  if cfg.max_batch_bytes < MIN_BATCH_BYTES then
    return fmt("max_batch_bytes must be at least %d", MIN_BATCH_BYTES)
  end
  if cfg.max_batch_events < 1 then
    return "max_batch_events must be at least 1"
  end
  if cfg.max_depth < 1 or cfg.max_depth > MAX_DEPTH_LIMIT then
    return fmt("max_depth must be between 1 and %d", MAX_DEPTH_LIMIT)
  end
  if cfg.timeout <= 0 then
    return "timeout must be greater than 0"
  end
  return nil
end


local function check_tracing(cfg)
  for name, words in pairs(CHOICES) do
    if not words[cfg[name]] then
      local list = {}
      for w in pairs(words) do
        list[#list + 1] = fmt("%q", w)
      end
      sort(list)
      return fmt("%s must be one of %s, got %q", name, concat(list, ", "),
                 cfg[name])
    end
  end
  if cfg.sample_rate > 1 then
    return fmt("sample_rate must be between 0 and 1, got %s",
               tostring(cfg.sample_rate))
  end
  if cfg.flush_at < 1 then
    return "flush_at must be at least 1"
  end
  if cfg.flush_interval <= 0 then
    return "flush_interval must be greater than 0"
  end
  if cfg.queue_max_events < 1 then
    return "queue_max_events must be at least 1"
  end
  if cfg.queue_max_bytes < MIN_QUEUE_BYTES then
    return fmt("queue_max_bytes must be at least %d", MIN_QUEUE_BYTES)
  end
  local env = cfg.environment
  if env and (#env > ENVIRONMENT_MAX or not env:match("^[a-z0-9_-]+$")
              or env:match("^langfuse")) then
    return fmt("environment must be 1 to %d characters of a-z, 0-9, _ "
               .. "and -, not starting with \"langfuse\", got %q",
               ENVIRONMENT_MAX, env)
  end
  return nil
end


-- Defaults that depend on other options: with a spool, a full queue
-- keeps events in the spool.
local function fill_defaults(cfg)
  if cfg.spool_dir == "" then
    cfg.spool_dir = nil
  end
  if cfg.queue_full_policy == nil then
    cfg.queue_full_policy = cfg.spool_dir and "spool" or "drop_newest"
  end
end


-- Checks the spool options by opening the spool once (it creates the
-- directory when its parent exists, and deletes nothing).
local function check_spool(cfg)
  local dir = cfg.spool_dir
  if not dir then
    if cfg.queue_full_policy == "spool" then
      return "queue_full_policy \"spool\" needs spool_dir"
    end
    return nil
  end
  local sp, why = core.spool_open(dir, {
    fsync = cfg.spool_fsync, max_bytes = cfg.spool_max_bytes,
    full = cfg.spool_full_policy,
    segment_bytes = cfg.spool_segment_bytes,
  })
  if not sp then
    return "spool_dir: " .. tostring(why)
  end
  sp:close()
  return nil
end


local Client = {}
Client.__index = Client


-- Hands a message to the logger (or to stderr in debug mode) with the
-- secret key masked, whatever the message holds.
function Client:log(level, message)
  if not (self.logger or self.debug) then
    return
  end
  local secret = self.secret
  if secret and secret ~= "" then
    local from = 1
    while true do
      local i, j = message:find(secret, from, true)
      if not i then
        break
      end
      message = message:sub(1, i - 1) .. "***" .. message:sub(j + 1)
      from = i + 3
    end
  end
  if self.logger then
    self.logger(level, "[langfuse] " .. message)
  elseif level ~= "debug" or self.debug then
    io_stderr:write("[langfuse] ", level, ": ", message, "\n")
  end
end


-- Validates, encodes and uploads events on the caller's thread.
-- Returns { accepted, requests, attempts } when every event was
-- delivered, or nil and an error object that names each one that was
-- not.  With spool_dir, the events that could not be delivered now stay
-- in the spool (their failure entries say spooled = true, err.spooled
-- counts them) and the client's sender replays them; spool_error says
-- why the spool could not take some events, if it could not.
function Client:upload_events_batch(events)
  if type(events) ~= "table" then
    error('bad "events" argument: expected an array of events', 2)
  end
  local rep = self.core:upload(events)
  local total = rep.total
  if rep.spool_error then
    self:log("warn", fmt("spool: %d events not in the spool: %s",
                         rep.spool_failed, rep.spool_error))
  end
  if #rep.failed == 0 then
    if self.debug then
      self:log("debug", fmt("delivered %d events in %d requests",
                            rep.accepted, rep.requests))
    end
    return { accepted = rep.accepted, requests = rep.requests,
             attempts = rep.attempts, spool_error = rep.spool_error }
  end
  local err = errors.from_report(rep, events, total)
  if rep.spooled and rep.spooled > 0 then
    err.spooled = rep.spooled
    err.message = fmt("%s; %d kept in the spool for replay", err.message,
                      rep.spooled)
  end
  err.spool_error = rep.spool_error
  self:log("warn", tostring(err))
  return nil, err
end


-- Hands a sender failure to on_error, or to the logger.
function Client:_report(err)
  local on_error = self.on_error
  if not on_error then
    self:log("warn", tostring(err))
    return
  end
  local ok, why = pcall(on_error, err)
  if not ok then
    self:log("error", "on_error raised: " .. tostring(why))
  end
end


-- Reports the failures a tracer call returned, if any.
local function report(self, fails)
  if fails then
    tracing.report(self, fails)
  end
end


Client.trace = tracing.trace
Client.score = tracing.score


-- Starts this process's sender when the spool holds events to replay
-- (in each nginx worker, say, for a client made before the fork).
-- Returns true, or nil and a reason.
function Client:start()
  return self._tracer:start()
end


-- Waits until everything recorded before the call is delivered or has
-- failed.  Returns true, or false and "timeout".
function Client:flush(timeout)
  if timeout ~= nil and type(timeout) ~= "number" then
    error('bad "timeout" argument: expected seconds', 2)
  end
  local ok, fails = self._tracer:flush(timeout or DEFAULT_WAIT)
  report(self, fails)
  if not ok then
    return false, "timeout"
  end
  return true
end


-- Flushes for up to timeout seconds, then stops the sender and joins its
-- thread.  Returns true, or false and "timeout" when events were left
-- undelivered (each is reported to on_error, kind "shutdown").
function Client:shutdown(timeout)
  if timeout ~= nil and type(timeout) ~= "number" then
    error('bad "timeout" argument: expected seconds', 2)
  end
  local ok, fails = self._tracer:shutdown(timeout or DEFAULT_WAIT)
  report(self, fails)
  if not ok then
    return false, "timeout"
  end
  return true
end


-- The sender's counters: queued, sent, accepted, retried, failed,
-- dropped, bytes_sent, requests, last_error, and more (see README).
function Client:stats()
  local st, fails = self._tracer:stats()
  report(self, fails)
  return st
end


function Client:close()
  self:shutdown(CLOSE_WAIT)
  self.core:close()
end


-- Lua 5.4: `local client <close> = langfuse.new()` shuts down on scope
-- exit.
function Client:__close()
  self:shutdown(CLOSE_WAIT)
end


local _M = {
  _VERSION = core._VERSION,
  is_error = errors.is_error,
  null = core.null,
}


function _M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error('bad "opts" argument: expected a table', 2)
  end
  local cfg, why = resolve(opts or {})
  if not cfg then
    return config_error(why)
  end
  fill_defaults(cfg)
  why = check_config(cfg) or check_tracing(cfg) or check_spool(cfg)
  if why then
    return config_error(why)
  end
  cfg.report = cfg.on_error ~= nil or cfg.logger ~= nil or cfg.debug
  local self = setmetatable({
    cfg = cfg,
    core = core.new_client(cfg),
    _tracer = core.new_tracer(cfg),
    _late = cfg.protocol == "ingestion",
    logger = cfg.logger,
    debug = cfg.debug,
    on_error = cfg.on_error,
    secret = cfg.secret_key,
  }, Client)
  cfg.secret_key = nil
  return self
end


function _M.validate(events, opts)
  if type(events) ~= "table" then
    error('bad "events" argument: expected an array of events', 2)
  end
  return core.validate(events, opts)
end


_M.Client = Client

return _M
