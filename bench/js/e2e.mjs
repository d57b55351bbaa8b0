// End-to-end throughput of the official Langfuse JS SDK (langfuse 3.x, the
// last line on the batch ingestion API) against the local test server.
//
//   node bench/js/e2e.mjs --url URL --traces N [--flush-at K]
//        [--flush-interval MS] [--mode create|update] [--yield-every K]
//
// Records N traces, each with one generation, calls shutdownAsync() and
// prints one JSON line on stdout. The SDK's own log lines go to stderr.
//
// --mode create (default): trace-create + generation-create carrying
//   everything (input, output, usage, start and end time): 2 events/trace.
// --mode update: trace-create + generation-create at start, then
//   generation.end() with output, usage and end time (generation-update):
//   3 events/trace.
// --yield-every K: give the event loop a turn after every K traces. The
//   default 0 records all traces in one synchronous loop, as a batch job
//   would; the SDK then starts one request per flushAt events at once.
//
// After the timed part it waits until the server's event total stops
// moving (requests the SDK timed out on may still be processed), then reads
// GET /_test/events (it polls /_test/stats over fresh connections to tell).
// The caller resets or restarts the server between runs.
//
// Caveat: "lost" and "duplicates" are computed from the envelope ids the
// SDK handed to fetch (its "flush" notifications) and the server's
// per-id counts. An event the SDK dropped itself (oversized) counts as
// lost, which is what a user would see.

import http from "node:http";
import https from "node:https";
import { performance } from "node:perf_hooks";
import { setImmediate as turn } from "node:timers/promises";
import { Langfuse } from "langfuse";

// Event types a trace with one generation can produce.
const RECORD_TYPES = ["trace-create", "generation-create", "generation-update"];
// Reading the server's store can take a while for 100k+ events.
const QUERY_TIMEOUT_MS = 300000;
// A request the SDK gave up on (timeout) may still be processed by the
// server later; wait until its event total stops moving before reading.
const SETTLE_POLL_MS = 500;
// The total must hold still for this many polls in a row (10 s).
const SETTLE_STABLE_POLLS = 20;
// Give up waiting for the server to settle after this long.
const SETTLE_MAX_MS = 120000;

function usage(msg) {
  process.stderr.write(`e2e.mjs: ${msg}\n` +
    "usage: node e2e.mjs --url URL --traces N [--flush-at K]" +
    " [--flush-interval MS] [--mode create|update] [--yield-every K]\n");
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { mode: "create", yieldEvery: 0 };
  const ints = {
    "--traces": "traces", "--flush-at": "flushAt",
    "--flush-interval": "flushInterval", "--yield-every": "yieldEvery",
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) usage(`${flag} needs a value`);
    i++;
    if (flag === "--url") {
      opts.url = value.replace(/\/+$/, "");
    } else if (flag === "--mode") {
      if (value !== "create" && value !== "update") usage("bad --mode");
      opts.mode = value;
    } else if (ints[flag]) {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 0) usage(`bad ${flag}: ${value}`);
      opts[ints[flag]] = n;
    } else {
      usage(`unknown flag ${flag}`);
    }
  }
  if (!opts.url) usage("--url is required");
  if (!opts.traces) usage("--traces must be a positive integer");
  return opts;
}

// One trace with one chat generation. Sizes are fixed so that runs compare.
function record(langfuse, i, mode) {
  const start = new Date();
  const trace = langfuse.trace({
    name: "bench-trace",
    userId: `user-${i % 100}`,
    sessionId: `session-${i % 1000}`,
    tags: ["bench", "e2e"],
    metadata: { bench: "e2e", index: i },
  });
  const input = [
    { role: "system", content: "You are a terse assistant." },
    { role: "user", content: `Question number ${i}: what is 6 times 7?` },
  ];
  const output = { role: "assistant", content: "The answer is 42." };
  const usage = { input: 23, output: 7, unit: "TOKENS" };
  const generation = {
    name: "bench-generation",
    model: "gpt-4o-mini",
    modelParameters: { temperature: 0, maxTokens: 64 },
    input,
    metadata: { bench: "e2e", index: i },
    startTime: start,
  };
  if (mode === "create") {
    trace.generation({ ...generation, output, usage, endTime: new Date() });
  } else {
    trace.generation(generation).end({ output, usage, endTime: new Date() });
  }
}

// Reads the server's event total over a new connection. A pooled
// keep-alive connection would jump the server's accept queue; a new one
// waits behind any connection the SDK abandoned there, so an answer means
// those have at least been accepted.
function serverTotal(url) {
  return new Promise((resolve, reject) => {
    const client = url.startsWith("https:") ? https : http;
    const req = client.get(`${url}/_test/stats`, { agent: false }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => { text += chunk; });
      res.on("end", () => {
        if (res.statusCode !== 200) {
          reject(new Error(`GET /_test/stats: HTTP ${res.statusCode}`));
        } else {
          try { resolve(JSON.parse(text).events); } catch (e) { reject(e); }
        }
      });
    });
    req.setTimeout(QUERY_TIMEOUT_MS, () => req.destroy(new Error("timeout")));
    req.on("error", reject);
  });
}

// Returns the seconds spent waiting for the server's event total to settle.
async function settle(url) {
  const t0 = performance.now();
  let last = -1;
  let stable = 0;
  while (stable < SETTLE_STABLE_POLLS &&
         performance.now() - t0 < SETTLE_MAX_MS) {
    const total = await serverTotal(url);
    stable = total === last ? stable + 1 : 0;
    last = total;
    await new Promise((resolve) => setTimeout(resolve, SETTLE_POLL_MS));
  }
  return (performance.now() - t0) / 1000;
}

async function readServer(url) {
  const res = await fetch(`${url}/_test/events`, {
    signal: AbortSignal.timeout(QUERY_TIMEOUT_MS),
  });
  if (!res.ok) throw new Error(`GET /_test/events: HTTP ${res.status}`);
  return res.json();
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  // Keep stdout for the one result line.
  console.log = console.error;
  console.info = console.error;

  const langfuse = new Langfuse({
    publicKey: "pk-lf-test",
    secretKey: "sk-lf-test",
    baseUrl: opts.url,
    ...(opts.flushAt !== undefined && { flushAt: opts.flushAt }),
    ...(opts.flushInterval !== undefined &&
        { flushInterval: opts.flushInterval }),
  });

  let produced = 0;
  let retries = 0;
  let errors = 0;
  let failedBatches = 0;
  const handedOver = new Set();
  for (const type of RECORD_TYPES) langfuse.on(type, () => { produced++; });
  langfuse.on("retry", () => { retries++; });
  langfuse.on("error", () => { errors++; });
  // A batch that failed all its tries is reported as a "warning" carrying
  // the fetch error.
  langfuse.on("warning", (w) => { if (w instanceof Error) failedBatches++; });
  langfuse.on("flush", (items) => {
    for (const item of items) handedOver.add(item.id);
  });

  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < opts.traces; i++) {
    record(langfuse, i, opts.mode);
    if (opts.yieldEvery && (i + 1) % opts.yieldEvery === 0) await turn();
  }
  await langfuse.shutdownAsync();
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const peakRssMb = process.resourceUsage().maxRSS / 1024;

  const result = {
    sdk: "langfuse-js",
    version: langfuse.getLibraryVersion(),
    mode: opts.mode,
    flush_at: langfuse.flushAt,
    flush_interval_ms: langfuse.flushInterval,
    traces: opts.traces,
    events_sent: produced,
    seconds: Number(seconds.toFixed(3)),
    events_per_s: Math.round(produced / seconds),
    peak_rss_mb: Number(peakRssMb.toFixed(1)),
    cpu_s: Number(((cpu.user + cpu.system) / 1e6).toFixed(3)),
    sdk_retries: retries,
    sdk_failed_batches: failedBatches,
    sdk_errors: errors,
  };

  try {
    result.settle_s = Number((await settle(opts.url)).toFixed(1));
    const server = await readServer(opts.url);
    const counts = server.counts || {};
    let duplicates = 0;
    for (const n of Object.values(counts)) if (n > 1) duplicates += n - 1;
    let delivered = 0;
    for (const id of handedOver) if (counts[id] > 0) delivered++;
    result.server_events = Array.isArray(server.events) ?
      server.events.length : Object.keys(counts).length;
    result.duplicates = duplicates;
    // Events the SDK produced but the server never stored under their id.
    result.lost = produced - delivered;
  } catch (e) {
    result.server_error = String(e && e.message || e);
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().catch((e) => {
  process.stderr.write(`e2e.mjs: ${e && e.stack || e}\n`);
  process.exit(1);
});
