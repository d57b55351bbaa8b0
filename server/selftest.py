#!/usr/bin/env python3
"""Self-check for server/fakefuse.py over real HTTP.

Starts the server on free ports (plain, and TLS when openssl is available),
exercises every route and fault once, and prints `N passed, N failed` as the
last line; the exit status is non-zero when anything failed.

  python3 server/selftest.py [--verbose]

Standard library only. Every wait is bounded by a timeout.
"""

import base64
import gzip
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "fakefuse.py")
AUTH = "Basic " + base64.b64encode(b"pk-lf-test:sk-lf-test").decode()
TS = "2024-05-01T12:00:00.000000Z"
# Upper bound for any single network wait in this file.
IO_TIMEOUT = 10


# ---------------------------------------------------------------------------
# Server process and HTTP helpers
# ---------------------------------------------------------------------------

class Harness:
    """Owns the server process and the temporary directory for its files."""

    def __init__(self, verbose):
        self.tmp = tempfile.mkdtemp(prefix="fakefuse-selftest-")
        self.tls = self._make_cert()
        port_file = os.path.join(self.tmp, "port")
        tls_file = os.path.join(self.tmp, "tls-port")
        cmd = [sys.executable, SERVER, "--port", "0", "--port-file", port_file]
        if self.tls:
            cmd += ["--tls-port", "0", "--tls-cert", self.tls[0], "--tls-key", self.tls[1],
                    "--tls-port-file", tls_file]
        if verbose:
            cmd.append("--verbose")
        # Without --verbose the server must print nothing; keep what it writes.
        self.stderr_path = os.path.join(self.tmp, "stderr")
        self.stderr = None if verbose else open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.stderr, stderr=self.stderr)
        deadline = time.monotonic() + IO_TIMEOUT
        while not os.path.exists(port_file):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        self.port = int(open(port_file).read())
        self.tls_port = int(open(tls_file).read()) if self.tls else None

    def _make_cert(self):
        if not shutil.which("openssl"):
            return None
        cert = os.path.join(self.tmp, "cert.pem")
        key = os.path.join(self.tmp, "key.pem")
        done = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
             "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        return (cert, key) if done.returncode == 0 else None

    def stop(self):
        """Stops the server; returns (seconds SIGTERM took, what it printed)."""
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(IO_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(IO_TIMEOUT)
        took = time.monotonic() - start
        output = b""
        if self.stderr is not None:
            self.stderr.close()
            with open(self.stderr_path, "rb") as handle:
                output = handle.read()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return took, output


H = None  # the running Harness


def request(method, path, body=None, headers=None, port=None, context=None):
    """One request on a fresh connection; returns (status, headers dict, body bytes)."""
    if context is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=IO_TIMEOUT,
                                           context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port or H.port, timeout=IO_TIMEOUT)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def ingest(batch, headers=None, raw=None):
    hdrs = {"Authorization": AUTH, "Content-Type": "application/json"}
    hdrs.update(headers or {})
    body = raw if raw is not None else {"batch": batch}
    return request("POST", "/api/public/ingestion", body, hdrs)


def ingest_json(batch):
    status, _, data = ingest(batch)
    assert status == 207, (status, data)
    return json.loads(data)


def otlp(doc, headers=None, compress=False):
    hdrs = {"Authorization": AUTH, "Content-Type": "application/json"}
    hdrs.update(headers or {})
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    if compress:
        body = gzip.compress(body)
        hdrs["Content-Encoding"] = "gzip"
    return request("POST", "/api/public/otel/v1/traces", body, hdrs)


def get_json(path):
    status, _, data = request("GET", path)
    assert status == 200, (path, status, data)
    return json.loads(data)


def set_faults(doc):
    status, _, data = request("POST", "/_test/faults", doc,
                              {"Content-Type": "application/json"})
    assert status == 200, (status, data)
    return json.loads(data)


def reset():
    status, _, _ = request("POST", "/_test/reset", b"")
    assert status == 200


def raw_connect():
    sock = socket.create_connection(("127.0.0.1", H.port), timeout=IO_TIMEOUT)
    return sock


def raw_post(path, body, extra=""):
    """Request bytes for a POST with a Content-Length body."""
    head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (path, AUTH, len(body), extra))
    return head.encode() + body


def read_response(sock, buf=b""):
    """Reads one response (Content-Length or chunked). Returns (status, headers, body, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed before headers")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed in body")
        buf += chunk
    return status, headers, buf[:length], buf[length:]


def event(eid, kind, body, ts=TS):
    return {"id": eid, "type": kind, "timestamp": ts, "body": body}


def span(trace_id, span_id, name="op", parent=None, attrs=None):
    out = {"traceId": trace_id, "spanId": span_id, "name": name, "kind": 1,
           "startTimeUnixNano": "1714564800000000000", "endTimeUnixNano": "1714564801000000000",
           "attributes": attrs or [], "status": {}}
    if parent:
        out["parentSpanId"] = parent
    return out


def export(spans, resource_attrs=None):
    return {"resourceSpans": [{
        "resource": {"attributes": resource_attrs or [
            {"key": "service.name", "value": {"stringValue": "selftest"}}]},
        "scopeSpans": [{"scope": {"name": "langfuse-sdk", "version": "1.0",
                                  "attributes": [{"key": "public_key",
                                                  "value": {"stringValue": "pk-lf-test"}}]},
                        "spans": spans}]}]}


TRACE_A = "0123456789abcdef0123456789abcdef"
SPAN_A = "0123456789abcdef"
SPAN_B = "fedcba9876543210"


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


@test
def health_and_summary():
    assert get_json("/_test/health") == {"ok": True}
    ingest_json([event("sum-1", "trace-create", {"id": "sum-t", "name": "demo trace"})])
    status, headers, data = request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = data.decode()
    assert "traces: 1" in text and "demo trace" in text and "spans: 0" in text, text


@test
def ingestion_auth():
    status, _, data = ingest([], headers={"Authorization": ""})
    doc = json.loads(data)
    assert status == 401 and doc["error"] == "UnauthorizedError", (status, doc)
    bad = "Basic " + base64.b64encode(b"pk-lf-test:wrong").decode()
    status, _, data = ingest([], headers={"Authorization": bad})
    doc = json.loads(data)
    assert status == 401 and doc["error"] == "UnauthorizedError"
    assert doc["message"].endswith("Confirm that you've configured the correct host."), doc


@test
def ingestion_method_and_content_type():
    status, _, data = request("GET", "/api/public/ingestion", None, {"Authorization": AUTH})
    assert status == 405 and json.loads(data)["error"] == "MethodNotAllowedError"
    status, _, data = ingest(None, headers={"Content-Type": "text/plain"}, raw=b'{"batch":[]}')
    assert status == 400 and json.loads(data)["message"] == "Invalid request data", data


@test
def ingestion_invalid_json():
    for raw in (b'{"batch": [', b'{"batch": [NaN]}', b'{"batch": [Infinity]}',
                b'{"batch": []} x', b"[" * 5000 + b"]" * 5000):
        status, headers, data = ingest(None, raw=raw)
        assert status == 400 and data == b"Invalid JSON", (raw[:20], status, data)
        assert headers["content-type"].startswith("text/plain")


@test
def ingestion_batch_shape():
    for raw in (b"{}", b'{"batch": {}}', b'{"batch": "x"}', b"[]", b""):
        status, _, data = ingest(None, raw=raw)
        doc = json.loads(data)
        assert status == 400 and doc["message"] == "Invalid request data", (raw, data)
        assert isinstance(doc["errors"], list) and doc["errors"]
    assert ingest_json([]) == {"successes": [], "errors": []}


GEN = {"id": "g", "traceId": "t", "model": "m", "usage": {"input": 1, "output": 2.0},
       "usageDetails": {"input": 1, "junk": "x"}, "costDetails": {"input": 0.1},
       "modelParameters": {"temperature": 0.2, "stop": ["a"], "x": {"k": "v"}, "n": None},
       "promptName": "p", "promptVersion": 3, "level": "WARNING",
       "startTime": "2024-05-01T12:00:00+02:00", "completionStartTime": "2024-05-01T12:00Z"}

# (label, event, True when valid / else a substring the error must contain)
CASES = [
    ("trace", event("v1", "trace-create", {"id": "t", "name": "n", "tags": ["a"],
                                           "public": True, "environment": "LANGFUSE-X!"}),
     True),
    ("span", event("v2", "span-create", {"id": "s", "traceId": "t", "endTime": TS}), True),
    ("span-update", event("v3", "span-update", {"id": "s"}), True),
    ("event", event("v4", "event-create", {"id": "e", "input": [1, {"a": None}]}), True),
    ("generation", event("v5", "generation-create", GEN), True),
    ("generation-update", event("v6", "generation-update", {"id": "g", "usage": None}), True),
    ("agent", event("v7", "agent-create", {"id": "a1"}), True),
    ("tool", event("v8", "tool-create", {"id": "a2"}), True),
    ("chain", event("v9", "chain-create", {"id": "a3"}), True),
    ("retriever", event("v10", "retriever-create", {"id": "a4"}), True),
    ("evaluator", event("v11", "evaluator-create", {"id": "a5"}), True),
    ("embedding", event("v12", "embedding-create", {"id": "a6"}), True),
    ("guardrail", event("v13", "guardrail-create", {"id": "a7"}), True),
    ("score numeric", event("v14", "score-create",
                            {"name": "q", "value": 0.5, "traceId": "t", "observationId": "o"}),
     True),
    ("score boolean", event("v15", "score-create", {"name": "q", "value": 1.0,
                                                    "dataType": "BOOLEAN", "sessionId": "s"}),
     True),
    ("score text", event("v16", "score-create", {"name": "q", "value": "fine",
                                                 "dataType": "TEXT", "datasetRunId": "r"}),
     True),
    ("score correction", event("v17", "score-create", {"name": "q", "value": "x",
                                                       "dataType": "CORRECTION",
                                                       "traceId": "t", "configId": None}),
     True),
    ("legacy observation", event("v18", "observation-create", {"type": "SPAN"}), True),
    ("timestamp offset", event("v19", "trace-create", {"id": "t"},
                               ts="2024-02-29T23:59:59.123456789-05:30"), True),
    ("timestamp no seconds", event("v20", "trace-create", {"id": "t"},
                                   ts="2024-01-01T10:00Z"), True),
    ("prompt version 0", event("v21", "generation-create", {"id": "g", "promptVersion": 0}),
     True),
    ("utf16 id at limit", event("\U0001F600" * 400, "trace-create", {"id": "t"}), True),
    ("id missing", {"type": "trace-create", "timestamp": TS, "body": {}}, '"id"'),
    ("id cr", event("bad\rid", "trace-create", {}), "carriage return"),
    ("id too long", event("x" * 801, "trace-create", {}), "<=800"),
    ("utf16 id over", event("\U0001F600" * 401, "trace-create", {}), "<=800"),
    ("type unknown", event("b1", "trace-update", {}), "No matching discriminator"),
    ("ts lowercase z", event("b2", "trace-create", {}, ts="2024-01-01T00:00:00z"),
     "Invalid ISO datetime"),
    ("ts no zone", event("b3", "trace-create", {}, ts="2024-01-01T00:00:00"),
     "Invalid ISO datetime"),
    ("ts compact offset", event("b4", "trace-create", {}, ts="2024-01-01T00:00:00+0200"),
     "Invalid ISO datetime"),
    ("ts bad date", event("b5", "trace-create", {}, ts="2023-02-29T00:00:00Z"),
     "Invalid ISO datetime"),
    ("ts epoch", event("b6", "trace-create", {}, ts=1714564800), "timestamp"),
    ("ts space", event("b7", "trace-create", {}, ts="2024-01-01 00:00:00Z"),
     "Invalid ISO datetime"),
    ("body missing", {"id": "b8", "type": "trace-create", "timestamp": TS}, '"body"'),
    ("observation id", event("b9", "span-create", {"traceId": "t"}), '"id"'),
    ("level", event("b10", "span-create", {"id": "s", "level": "INFO"}), '"level"'),
    ("usage float", event("b11", "generation-create", {"id": "g", "usage": {"input": 1.5}}),
     '"input"'),
    ("usage string", event("b12", "generation-create",
                           {"id": "g", "usage": {"promptTokens": "3"}}), '"promptTokens"'),
    ("usage unit", event("b13", "generation-create", {"id": "g", "usage": {"unit": "BYTES"}}),
     '"unit"'),
    ("usageDetails array", event("b14", "generation-create", {"id": "g", "usageDetails": [1]}),
     '"usageDetails"'),
    ("costDetails string", event("b15", "generation-create",
                                 {"id": "g", "costDetails": "1"}), '"costDetails"'),
    ("modelParameters nested", event("b16", "generation-create",
                                     {"id": "g", "modelParameters": {"x": {"k": 1}}}),
     '"modelParameters"'),
    ("modelParameters objects", event("b17", "generation-create",
                                      {"id": "g", "modelParameters": {"x": [{}]}}),
     '"modelParameters"'),
    ("legacy modelParameters", event("b18", "observation-create",
                                     {"type": "GENERATION", "modelParameters": {"x": ["a"]}}),
     '"modelParameters"'),
    ("promptName alone", event("b19", "generation-create", {"id": "g", "promptName": "p"}),
     "custom"),
    ("promptVersion float", event("b20", "generation-create",
                                  {"id": "g", "promptName": "p", "promptVersion": 1.5}),
     '"promptVersion"'),
    ("trace name", event("b21", "trace-create", {"name": "n" * 1001}), "<=1000"),
    ("tags", event("b22", "trace-create", {"tags": ["a", 1]}), '"tags"'),
    ("public", event("b23", "trace-create", {"public": "yes"}), '"public"'),
    ("score no name", event("b24", "score-create", {"value": 1, "traceId": "t"}), '"name"'),
    ("score empty name", event("b25", "score-create", {"name": "", "value": 1,
                                                       "traceId": "t"}), '"name"'),
    ("score no value", event("b26", "score-create", {"name": "q", "traceId": "t"}), '"value"'),
    ("score boolean 2", event("b27", "score-create", {"name": "q", "value": 2,
                                                      "dataType": "BOOLEAN", "traceId": "t"}),
     "0 or 1"),
    ("score text empty", event("b28", "score-create", {"name": "q", "value": "",
                                                       "dataType": "TEXT", "traceId": "t"}),
     '"value"'),
    ("score text long", event("b29", "score-create", {"name": "q", "value": "x" * 501,
                                                      "dataType": "TEXT", "traceId": "t"}),
     "<=500"),
    ("score categorical number", event("b30", "score-create",
                                       {"name": "q", "value": 1, "dataType": "CATEGORICAL",
                                        "traceId": "t"}), '"value"'),
    ("score dataType", event("b31", "score-create", {"name": "q", "value": 1,
                                                     "dataType": "numeric", "traceId": "t"}),
     '"dataType"'),
    ("score no target", event("b32", "score-create", {"name": "q", "value": 1}),
     "exactly one"),
    ("score two targets", event("b33", "score-create", {"name": "q", "value": 1,
                                                        "traceId": "t", "sessionId": "s"}),
     "exactly one"),
    ("score observation without trace", event("b34", "score-create",
                                              {"name": "q", "value": 1, "sessionId": "s",
                                               "observationId": "o"}), "exactly one"),
    ("score correction config", event("b35", "score-create",
                                      {"name": "q", "value": "x", "dataType": "CORRECTION",
                                       "traceId": "t", "configId": "c"}), '"configId"'),
    ("score source", event("b36", "score-create", {"name": "q", "value": 1, "traceId": "t",
                                                   "source": "SDK"}), '"source"'),
    ("sdk-log no log", event("b37", "sdk-log", {}), '"log"'),
    ("legacy no type", event("b38", "observation-create", {}), '"type"'),
    ("dataset run item", event("b39", "dataset-run-item-create",
                               {"traceId": "t", "datasetId": "d", "runId": "r",
                                "datasetItemId": "i"}), "internal usage"),
]


@test
def ingestion_validation_rules():
    reset()
    doc = ingest_json([case[1] for case in CASES])
    ok_ids = [s["id"] for s in doc["successes"]]
    errors = {e["id"]: e for e in doc["errors"]}
    problems = []
    for label, ev, expect in CASES:
        eid = ev.get("id") if isinstance(ev.get("id"), str) else "unknown"
        if expect is True:
            if eid not in ok_ids:
                problems.append("%s: expected success, got %s" % (label, errors.get(eid)))
        else:
            err = errors.get(eid)
            if err is None:
                problems.append("%s: expected an error" % label)
            elif err["status"] != 400 or err["message"] != "Invalid request data" \
                    or expect not in err["error"]:
                problems.append("%s: unexpected %r" % (label, err))
    assert not problems, "\n  ".join(problems)
    assert len(doc["successes"]) + len(doc["errors"]) == len(CASES)


@test
def ingestion_unknown_id_and_sdk_log():
    doc = ingest_json(["not an event", {"id": 5, "type": "trace-create"},
                       event("log-1", "sdk-log", {"log": {"m": "hi"}})])
    assert [e["id"] for e in doc["errors"]] == ["unknown", "unknown"], doc
    assert doc["successes"] == []
    assert "log-1" not in json.dumps(doc)


@test
def ingestion_records_stripped_events_and_duplicates():
    reset()
    batch = [event("dup-1", "trace-create", {"id": "t1", "nmae": "typo", "name": "ok",
                                             "nul": None}),
             dict(event("dup-2", "span-create", {"id": "s1", "traceId": "t1"}), extra=1)]
    ingest_json(batch)
    ingest_json(batch[:1])
    doc = get_json("/_test/events")
    assert [e["id"] for e in doc["events"]] == ["dup-1", "dup-2", "dup-1"], doc
    first = doc["events"][0]
    assert first["body"] == {"id": "t1", "name": "ok"} and first["bodyId"] == "t1", first
    assert first["stripped"] == ["body.nmae", "body.nul"], first
    assert doc["events"][1]["stripped"] == ["extra"]
    assert doc["counts"] == {"dup-1": 2, "dup-2": 1}
    assert get_json("/_test/events?since=2")["events"][0]["id"] == "dup-1"


@test
def ingestion_success_order():
    doc = ingest_json([
        event("o1", "span-update", {"id": "s"}, ts="2024-01-01T00:00:00Z"),
        event("o2", "span-create", {"id": "s"}, ts="2024-01-01T00:00:02Z"),
        event("o3", "trace-create", {"id": "t"}, ts="2024-01-01T01:00:01+02:00"),
    ])
    assert [s["id"] for s in doc["successes"]] == ["o3", "o2", "o1"], doc


@test
def ingestion_events_only():
    reset()
    set_faults({"events_only": True})
    doc = ingest_json([event("eo-1", "trace-create", {"id": "t"}),
                       event("eo-2", "score-create", {"name": "q", "value": 1, "traceId": "t"}),
                       event("eo-3", "sdk-log", {"log": "x"})])
    assert [s["id"] for s in doc["successes"]] == ["eo-2"], doc
    assert len(doc["errors"]) == 1 and doc["errors"][0]["id"] == "eo-1"
    assert doc["errors"][0]["message"] == "Event type not accepted"
    assert doc["errors"][0]["status"] == 400 and "events_only" in doc["errors"][0]["error"]
    assert [e["id"] for e in get_json("/_test/events")["events"]] == ["eo-2"]
    reset()


@test
def ingestion_bearer_scores_only():
    reset()
    status, _, data = ingest([event("be-1", "trace-create", {"id": "t"}),
                              event("be-2", "score-create",
                                    {"name": "q", "value": 1, "traceId": "t"})],
                             headers={"Authorization": "Bearer pk-lf-test"})
    doc = json.loads(data)
    assert status == 207 and [s["id"] for s in doc["successes"]] == ["be-2"], doc
    assert doc["errors"][0]["status"] == 401 and doc["errors"][0]["error"] == "Access Scope Denied"


@test
def fault_per_event_extra_and_malformed():
    reset()
    set_faults({"per_event": {"pe-1": {"status": 500, "message": "boom", "times": 1}},
                "extra_errors": [{"id": "ghost", "status": 400, "message": "never sent"}]})
    doc = ingest_json([event("pe-1", "trace-create", {"id": "t"}),
                       event("pe-2", "trace-create", {"id": "t"})])
    assert [s["id"] for s in doc["successes"]] == ["pe-2"], doc
    assert [(e["id"], e["status"]) for e in doc["errors"]] == [("pe-1", 500), ("ghost", 400)]
    set_faults({"extra_errors": []})
    doc = ingest_json([event("pe-1", "trace-create", {"id": "t"})])
    assert doc == {"successes": [{"id": "pe-1", "status": 201}], "errors": []}, doc
    assert get_json("/_test/events")["counts"] == {"pe-2": 1, "pe-1": 1}
    set_faults({"malformed_207": "not json"})
    status, _, data = ingest([event("pe-3", "trace-create", {"id": "t"})])
    assert status == 207 and data == b"not json"
    assert "pe-3" in get_json("/_test/events")["counts"]
    reset()


@test
def fault_body_limit_413_keeps_connection():
    reset()
    set_faults({"max_body_bytes": 1000})
    big = json.dumps({"batch": [event("big", "trace-create", {"id": "t", "input": "x" * 2000})]})
    sock = raw_connect()
    try:
        sock.sendall(raw_post("/api/public/ingestion", big.encode()))
        status, headers, body, rest = read_response(sock)
        assert status == 413 and body == b"Body exceeded 4.5mb limit", (status, body)
        small = json.dumps({"batch": []}).encode()
        sock.sendall(raw_post("/api/public/ingestion", small))
        status, _, body, _ = read_response(sock, rest)
        assert status == 207, (status, body)
    finally:
        sock.close()
    set_faults({"html_413": True})
    status, headers, data = ingest(None, raw=big.encode())
    assert status == 413 and headers["content-type"].startswith("text/html")
    assert b"<center><h1>413 Request Entity Too Large</h1></center>" in data
    reset()


@test
def fault_script_status_headers_and_route():
    reset()
    set_faults({"script": [
        {"route": "otlp", "status": 503},
        {"status": 429, "headers": {"Retry-After": "7"}, "body": '{"message":"slow down"}',
         "times": 2},
    ]})
    for _ in range(2):
        status, headers, data = ingest([])
        assert status == 429 and headers["retry-after"] == "7", (status, headers)
        assert json.loads(data) == {"message": "slow down"}
    status, _, _ = ingest([])
    assert status == 207
    status, _, _ = otlp(export([]))
    assert status == 503
    status, _, _ = otlp(export([]))
    assert status == 200
    assert get_json("/_test/stats")["script_remaining"] == 0


@test
def fault_delay_and_delay_all():
    reset()
    set_faults({"script": [{"delay": 0.4}]})
    start = time.monotonic()
    status, _, _ = ingest([event("dl-1", "trace-create", {"id": "t"})])
    took = time.monotonic() - start
    assert status == 207 and 0.35 < took < 3, took
    set_faults({"delay_all": 0.3})
    start = time.monotonic()
    status, _, _ = otlp(export([]))
    assert status == 200 and time.monotonic() - start > 0.25
    reset()


@test
def fault_drop_and_reset():
    reset()
    set_faults({"script": [{"drop": True}, {"reset": True}]})
    body = json.dumps({"batch": [event("dr-1", "trace-create", {"id": "t"})]}).encode()
    sock = raw_connect()
    try:
        sock.sendall(raw_post("/api/public/ingestion", body))
        assert sock.recv(100) == b"", "drop must close without a response"
    finally:
        sock.close()
    sock = raw_connect()
    try:
        sock.sendall(raw_post("/api/public/ingestion", body))
        try:
            data = sock.recv(100)
            raise AssertionError("expected a reset, got %r" % data)
        except ConnectionResetError:
            pass
    finally:
        sock.close()
    assert get_json("/_test/events")["events"] == []
    outcomes = [r["outcome"] for r in get_json("/_test/requests")["requests"]]
    assert outcomes == ["drop", "reset"], outcomes


@test
def fault_record_answer_lost():
    reset()
    set_faults({"script": [{"record": True, "status": 500}]})
    status, _, _ = ingest([event("rec-1", "trace-create", {"id": "t"})])
    assert status == 500
    assert get_json("/_test/events")["counts"] == {"rec-1": 1}


@test
def fault_drip():
    reset()
    set_faults({"script": [{"status": 200, "body": '{"ok":1}', "drip": 0.05}]})
    start = time.monotonic()
    status, _, data = ingest([])
    took = time.monotonic() - start
    assert status == 200 and data == b'{"ok":1}' and took > 0.3, (status, data, took)


@test
def fault_endless():
    reset()
    set_faults({"script": [{"endless": True}]})
    sock = raw_connect()
    try:
        sock.sendall(raw_post("/api/public/ingestion", b'{"batch":[]}'))
        sock.settimeout(2)
        got = b""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and len(got) < 200:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
        assert got.startswith(b"HTTP/1.1 200") and b"chunked" in got.lower(), got[:200]
    finally:
        sock.close()
    assert get_json("/_test/health") == {"ok": True}
    reset()  # also ends the endless answer


@test
def fault_huge():
    reset()
    set_faults({"script": [{"huge": 3000000}]})
    status, headers, data = ingest([])
    assert status == 200 and len(data) == 3000000 == int(headers["content-length"])
    assert json.loads(data)["successes"] == []


@test
def fault_redirect():
    reset()
    set_faults({"script": [{"redirect": "http://127.0.0.1:1/elsewhere"}]})
    status, headers, _ = ingest([])
    assert status == 307 and headers["location"] == "http://127.0.0.1:1/elsewhere"


@test
def fault_document_errors():
    for doc in ({"nope": 1}, {"script": [{"status": "500"}]}, {"script": [{"frobnicate": 1}]},
                {"per_event": {"x": {"message": "no status"}}}, [1]):
        status, _, data = request("POST", "/_test/faults", doc)
        assert status == 400 and "error" in json.loads(data), (doc, status, data)
    status, _, _ = request("POST", "/_test/faults", b"{bad")
    assert status == 400
    assert get_json("/_test/faults")["faults"]["script"] == []


@test
def otlp_accepts_and_flattens():
    reset()
    attrs = [{"key": "langfuse.trace.name", "value": {"stringValue": "otlp trace"}},
             {"key": "n", "value": {"intValue": "42"}},
             {"key": "n2", "value": {"intValue": 7}},
             {"key": "d", "value": {"doubleValue": 1.5}},
             {"key": "b", "value": {"boolValue": True}},
             {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}]}}}]
    doc = export([span(TRACE_A, SPAN_A, "root", attrs=attrs),
                  span(TRACE_A, SPAN_B, "child", parent=SPAN_A)])
    status, headers, data = otlp(doc, headers={"x-langfuse-ingestion-version": "4"})
    assert status == 200 and json.loads(data) == {}, (status, data)
    spans = get_json("/_test/spans")
    root, child = spans["spans"]
    assert root["attributes"] == {"langfuse.trace.name": "otlp trace", "n": 42, "n2": 7,
                                  "d": 1.5, "b": True, "tags": ["a"]}, root
    assert root["parentSpanId"] is None and child["parentSpanId"] == SPAN_A
    assert root["startTimeUnixNano"] == "1714564800000000000"
    assert root["resource"] == {"service.name": "selftest"}
    assert root["scope"]["name"] == "langfuse-sdk"
    assert root["scope"]["attributes"] == {"public_key": "pk-lf-test"}
    status, _, _ = otlp(doc, compress=True)
    assert status == 200
    assert get_json("/_test/spans")["counts"] == {SPAN_A: 2, SPAN_B: 2}
    status, _, data = request("GET", "/")
    assert b"otlp trace" in data


@test
def otlp_rejections():
    good = span(TRACE_A, SPAN_A)
    cases = [
        ("uppercase trace id", export([span(TRACE_A.upper(), SPAN_A)]), "traceId"),
        ("short span id", export([span(TRACE_A, "abc")]), "spanId"),
        ("bad parent", export([span(TRACE_A, SPAN_A, parent="xyz")]), "parentSpanId"),
        ("numeric time", export([dict(good, startTimeUnixNano=1714564800000000000)]),
         "startTimeUnixNano"),
        ("attributes object", export([dict(good, attributes={"a": "b"})]), "attributes"),
        ("kvlist", export([span(TRACE_A, SPAN_A, attrs=[
            {"key": "k", "value": {"kvlistValue": {"values": []}}}])]), "kvlistValue"),
        ("bytes", export([span(TRACE_A, SPAN_A, attrs=[
            {"key": "k", "value": {"bytesValue": "AA=="}}])]), "bytesValue"),
        ("misspelled value", export([span(TRACE_A, SPAN_A, attrs=[
            {"key": "k", "value": {"string_value": "x"}}])]), "string_value"),
        ("status enum text", export([dict(good, status={"code": "STATUS_CODE_ERROR"})]),
         "status.code"),
        ("no name", export([{k: v for k, v in good.items() if k != "name"}]), "name"),
        ("resourceSpans object", {"resourceSpans": {"a": 1}}, "resourceSpans"),
    ]
    reset()
    for label, doc, needle in cases:
        status, _, data = otlp(doc)
        assert status == 400, (label, status, data)
        assert needle in json.loads(data)["error"], (label, data)
    for version in ("5", "abc"):
        status, _, data = otlp(export([good]), headers={"x-langfuse-ingestion-version": version})
        assert status == 400 and "Unsupported x-langfuse-ingestion-version" in data.decode()
    status, _, data = otlp(export([good]), headers={"Content-Type": "application/x-protobuf"})
    assert status == 415, status
    status, _, data = otlp(export([good]), headers={"Content-Type": "text/plain"})
    assert status == 400 and json.loads(data) == {"error": "Invalid content type"}
    status, _, data = otlp(b"\x1f\x8bjunk", headers={"Content-Encoding": "gzip"})
    assert status == 400 and json.loads(data) == {"error": "Failed to decompress request body"}
    status, _, data = otlp(b"{nope")
    assert status == 400 and json.loads(data) == {"error": "Failed to parse OTel JSON Trace"}
    status, _, data = otlp(export([good]), headers={"Authorization": ""})
    assert status == 401 and "message" in json.loads(data)
    status, _, data = request("GET", "/api/public/otel/v1/traces", None, {"Authorization": AUTH})
    assert status == 405
    for empty in ({}, {"resourceSpans": []}, {"resource_spans": [1]}):
        status, _, data = otlp(empty)
        assert status == 200 and json.loads(data) == {}, (empty, data)
    assert get_json("/_test/spans")["spans"] == []
    status, _, data = request("POST", "/api/public/otel/v1/metrics", b"{}",
                              {"Authorization": AUTH, "Content-Type": "application/json"})
    assert status == 200


@test
def requests_log():
    reset()
    ingest([event("rl-1", "trace-create", {"id": "t"})], headers={"X-Langfuse-Sdk-Name": "lua"})
    otlp(export([span(TRACE_A, SPAN_A)]), compress=True)
    log = get_json("/_test/requests")["requests"]
    assert [r["route"] for r in log] == ["ingestion", "otlp"], log
    first, second = log
    assert first["status"] == 207 and first["events"] == 1 and first["method"] == "POST"
    assert first["headers"]["x-langfuse-sdk-name"] == "lua" and first["body_size"] > 0
    assert isinstance(first["time"], float) and first["path"] == "/api/public/ingestion"
    assert second["spans"] == 1 and second["headers"]["content-encoding"] == "gzip"
    assert second["decoded_size"] > second["body_size"] or second["decoded_size"] > 0


@test
def chunked_request_and_keep_alive():
    reset()
    body = json.dumps({"batch": [event("ch-1", "trace-create", {"id": "t"})]}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                       for i in range(0, len(body), 7)) + b"0\r\n\r\n"
    head = ("POST /api/public/ingestion HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" % AUTH)
    sock = raw_connect()
    try:
        # Two pipelined requests on one connection: both must be answered.
        sock.sendall(head.encode() + chunked + raw_post("/api/public/ingestion", body))
        status1, _, body1, rest = read_response(sock)
        status2, headers2, body2, _ = read_response(sock, rest)
        assert status1 == 207 and status2 == 207, (status1, body1, status2, body2)
        assert headers2.get("connection", "").lower() != "close"
    finally:
        sock.close()
    assert get_json("/_test/events")["counts"] == {"ch-1": 2}


@test
def concurrent_clients():
    reset()
    errors = []

    def client(n):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", H.port, timeout=IO_TIMEOUT)
            for i in range(10):
                body = json.dumps({"batch": [event("cc-%d-%d" % (n, i), "trace-create",
                                                   {"id": "t%d" % n})]})
                conn.request("POST", "/api/public/ingestion", body,
                             {"Authorization": AUTH, "Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 207:
                    errors.append(resp.status)
            conn.close()
        except Exception as exc:
            errors.append(repr(exc))

    workers = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors, errors[:3]
    stats = get_json("/_test/stats")
    assert stats["events"] == 160 and stats["distinct_event_ids"] == 160, stats
    # Each client reused one connection for its ten requests.
    peers = {r["peer"] for r in get_json("/_test/requests")["requests"]}
    assert stats["requests"] == 160 and len(peers) == 16, (stats["requests"], len(peers))


@test
def survives_garbage():
    for junk in (b"\x00\x01\x02 garbage\r\n\r\n", b"GET\r\n\r\n",
                 b"POST /api/public/ingestion HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
                 b"POST /api/public/ingestion HTTP/1.1\r\nContent-Length: 100\r\n\r\nshort"):
        sock = raw_connect()
        try:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(3)
            try:
                while sock.recv(4096):
                    pass
            except OSError:
                pass
        finally:
            sock.close()
    status, _, _ = request("POST", "/api/public/ingestion/", b"")
    assert status == 308
    assert get_json("/_test/health") == {"ok": True}


@test
def reset_clears_everything():
    set_faults({"script": [{"status": 500}], "events_only": True})
    reset()
    doc = ingest_json([event("rs-1", "trace-create", {"id": "t"})])
    assert doc["successes"] == [{"id": "rs-1", "status": 201}]
    reset()
    assert get_json("/_test/events") == {"events": [], "counts": {}, "total": 0}
    assert get_json("/_test/spans")["spans"] == []
    assert get_json("/_test/requests")["requests"] == []
    assert get_json("/_test/faults")["faults"]["events_only"] is False


@test
def tls_listener():
    if H.tls is None:
        print("  (openssl missing: TLS not checked)")
        return
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    status, _, data = request("GET", "/_test/health", port=H.tls_port, context=insecure)
    assert status == 200 and json.loads(data) == {"ok": True}
    strict = ssl.create_default_context()
    try:
        request("GET", "/_test/health", port=H.tls_port, context=strict)
        raise AssertionError("self-signed certificate was accepted")
    except ssl.SSLCertVerificationError:
        pass
    trusting = ssl.create_default_context(cafile=H.tls[0])
    status, _, _ = ingest_over(trusting)
    assert status == 207
    assert get_json("/_test/health") == {"ok": True}


def ingest_over(context):
    return request("POST", "/api/public/ingestion", b'{"batch":[]}',
                   {"Authorization": AUTH, "Content-Type": "application/json"},
                   port=H.tls_port, context=context)


@test
def throughput():
    reset()
    batches = 20
    per_batch = 5000
    filler = "x" * 300
    bodies = []
    for b in range(batches):
        batch = []
        for i in range(per_batch):
            n = b * per_batch + i
            if i % 2:
                batch.append(event("perf-%d" % n, "span-create",
                                   {"id": "s%d" % n, "traceId": "t%d" % b, "name": "op",
                                    "startTime": TS, "endTime": TS, "input": filler}))
            else:
                batch.append(event("perf-%d" % n, "generation-create",
                                   {"id": "g%d" % n, "traceId": "t%d" % b, "model": "m",
                                    "usageDetails": {"input": 10, "output": 20},
                                    "startTime": TS, "output": filler}))
        bodies.append(json.dumps({"batch": batch}).encode())
    conn = http.client.HTTPConnection("127.0.0.1", H.port, timeout=60)
    start = time.monotonic()
    try:
        for body in bodies:
            conn.request("POST", "/api/public/ingestion", body,
                         {"Authorization": AUTH, "Content-Type": "application/json"})
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            assert resp.status == 207 and not doc["errors"], doc["errors"][:1]
    finally:
        conn.close()
    took = time.monotonic() - start
    total = batches * per_batch
    mb = sum(len(b) for b in bodies) / 1e6
    print("  ingestion: %d events (%.1f MB, max body %.2f MB) in %.2f s = %.0f events/s"
          % (total, mb, max(len(b) for b in bodies) / 1e6, took, total / took))
    assert get_json("/_test/stats")["events"] == total
    spans = [span("%032x" % (i // 10 + 1), "%016x" % (i + 1), "op", attrs=[
        {"key": "langfuse.observation.type", "value": {"stringValue": "span"}},
        {"key": "langfuse.observation.input", "value": {"stringValue": filler}}])
        for i in range(20000)]
    docs = [gzip.compress(json.dumps(export(spans[i:i + 2000])).encode())
            for i in range(0, len(spans), 2000)]
    start = time.monotonic()
    for body in docs:
        status, _, data = otlp(body, headers={"Content-Encoding": "gzip"})
        assert status == 200, data
    took = time.monotonic() - start
    print("  otlp: %d spans (gzip) in %.2f s = %.0f spans/s" % (len(spans), took,
                                                               len(spans) / took))
    assert total / (took if took > 0 else 1) > 0
    assert get_json("/_test/stats")["spans"] == len(spans)
    reset()


# ---------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------

def main():
    global H
    verbose = "--verbose" in sys.argv[1:]
    passed = failed = 0
    try:
        H = Harness(verbose)
    except Exception as exc:
        print("FAIL - server start: %s" % exc)
        print("0 passed, 1 failed")
        return 1
    try:
        for fn in TESTS:
            try:
                fn()
                passed += 1
                print("ok - %s" % fn.__name__)
            except Exception as exc:
                failed += 1
                detail = str(exc) or type(exc).__name__
                print("FAIL - %s: %s" % (fn.__name__, detail))
                if verbose or not isinstance(exc, AssertionError):
                    traceback.print_exc()
        if H.proc.poll() is not None:
            failed += 1
            print("FAIL - server exited during the run")
    finally:
        took, output = H.stop()
    if took < 3 and H.proc.returncode == 0:
        passed += 1
        print("ok - stops on SIGTERM (%.2f s)" % took)
    else:
        failed += 1
        print("FAIL - stop on SIGTERM: %.2f s, exit status %s" % (took, H.proc.returncode))
    if not output:
        passed += 1
        print("ok - silent without --verbose")
    elif not verbose:
        failed += 1
        print("FAIL - server printed without --verbose: %r" % output[:300])
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
