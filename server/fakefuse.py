#!/usr/bin/env python3
"""fakefuse: a local Langfuse-compatible HTTP server for tests, demos and benchmarks.

It serves the two intake routes a Langfuse client uses and answers them the
way the real server does (langfuse/langfuse web + packages/shared):

  POST /api/public/ingestion        legacy batch API: 207 with per-event results,
                                    each event checked like the server's zod schemas
  POST /api/public/otel/v1/traces   OTLP/HTTP JSON (optionally gzip): 200 {} or a
                                    400 for the whole export
  POST /api/public/otel/v1/metrics  authenticated, then discarded (200)

Usage:
  python3 server/fakefuse.py --port 0 --port-file /tmp/port
      [--host 127.0.0.1] [--public-key pk-lf-test] [--secret-key sk-lf-test]
      [--tls-port N --tls-cert F --tls-key F [--tls-port-file F]] [--verbose]
      [--fast | --scan]

--fast is for benchmarks, where this server must not be the bottleneck: the
OTLP route still checks the request's shape (arrays, ids, times, kinds, that
attributes are a KeyValue list) but neither reads nor records attribute
values, and the ingestion route checks each event's envelope (an object with
a string id, a known type and a body object) but not the body's fields.
--scan goes further for OTLP, for clients faster than Python's JSON parser
(about 25 MB/s here): bodies are not parsed; each span's ids are read with
one byte scan that expects "traceId", "spanId" and "parentSpanId" first, in
that order (as this project's client and OpenTelemetry's JSON exporters
write them), and a body where that scan misses a span is answered 400.
Spans are recorded with their ids only.  Ingestion is handled as --fast.

--port 0 picks a free port; the port files are written (atomically) once the
listeners accept connections, the TLS one first. Auth is Basic pk:sk; a
Bearer public key gets the scores-only scope, as upstream. SIGTERM/SIGINT
stop the server. Nothing is printed unless --verbose is given; then requests
and handler errors go to stderr. Standard library only (python3 3.11).

Test control API (no auth, JSON in and out):
  GET  /_test/health     {"ok": true}
  POST /_test/reset      clears events, spans, request log, counters and faults
  POST /_test/faults     sets the fields given, leaves the others (answers with
                         {"ok": true, "faults": {...}}; 400 names a bad field):
    script               [step, ...]; each intake request consumes the first step
                         whose "route" matches. Step fields:
                           route "ingestion"|"otlp", times n (repeat the step),
                           status, headers {..}, body "raw text", delay s,
                           drop, reset (TCP RST), record (process and store
                           normally, answer with this step's status/body),
                           drip s-per-byte, endless (true or seconds, capped at
                           300), huge n-bytes, redirect "url" (307 + Location).
                         Without status/body/endless/huge/redirect the answer is
                         the normal one (delayed, dripped, with extra headers).
                         Events are recorded before any delay.
    max_body_bytes       ingestion body limit (default 4718592; null restores)
    otlp_max_body_bytes  OTLP body limit, also after gunzip (default 64 MiB)
    html_413             answer 413 with an nginx HTML page
    events_only          v4 mode: only score-create/sdk-log are accepted
    per_event            {"<envelope id>": {"status", "message", "error", "times"}}
                         puts that result in the 207 instead (not stored)
    extra_errors         [result, ...] appended to every 207's errors
    malformed_207        text sent as every 207 body (events are still stored)
    delay_all            seconds to wait before every intake answer
  GET  /_test/faults     the current settings
  GET  /_test/events     {"events": [...], "counts": {envelope id: n}, "total": n}
                         events: {id, type, timestamp, body, bodyId, metadata?,
                         stripped? (dropped unknown keys), request (seq)}
  GET  /_test/spans      {"spans": [...], "counts": {spanId: n}, "total": n}
                         spans: {traceId, spanId, parentSpanId, name, kind,
                         startTimeUnixNano, endTimeUnixNano (decimal strings),
                         status, attributes {key: value}, events, resource {..},
                         scope {name, version, attributes}, request}
  GET  /_test/requests   {"requests": [...], "total": n}, the last 10000 intake
                         requests: seq, time, route, path, method, peer, status,
                         headers (lowercase names), body_size, decoded_size,
                         invalid_utf8, events, spans, fault, outcome
  GET  /_test/stats      counters (events, spans, distinct ids, requests, ...)
  GET  /                 plain-text summary for the demo
  The three list routes take ?since=N (events/spans: offset; requests: seq).

Where it differs from the real server on purpose:
  * The OTLP route checks ids, times and attribute values strictly (lowercase
    hex ids, decimal-string times, integer enums, no kvlistValue/bytesValue),
    where the real route only rejects absent ids and non-array collections.
    Client bugs that Langfuse would store silently wrong are caught here.
    Protobuf bodies get 415.
  * JSON nested deeper than Python's recursion limit (about 1000 levels) is
    answered as invalid JSON.
  * Accepted events are recorded after zod-style stripping of unknown keys,
    without the server's later transforms (environment normalisation, usage
    conversion). sdk-log events are counted, not stored.
"""

import argparse
import base64
import collections
import json
import math
import os
import re
import signal
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# ---------------------------------------------------------------------------
# Limits and fixed texts
# ---------------------------------------------------------------------------

# Next.js bodyParser sizeLimit "4.5mb" on the ingestion route.
INGESTION_BODY_LIMIT = 4718592
# The OTLP route has no limit upstream; OTLP recommends receivers cap at 64 MiB.
OTLP_BODY_LIMIT = 64 * 1024 * 1024
# Control routes take small JSON documents only.
CONTROL_BODY_LIMIT = 16 * 1024 * 1024
# An oversized body is still read and discarded up to this much beyond the
# limit, so the 413 arrives on a connection that can be reused.
DRAIN_LIMIT = 256 * 1024 * 1024
# Most requests kept in the /_test/requests log.
REQUEST_LOG_SIZE = 10000
# An idle keep-alive connection is closed after this many seconds.
IDLE_TIMEOUT = 120
# An "endless" answer stops by itself after this many seconds.
ENDLESS_MAX_SECONDS = 300
# Granularity of interruptible sleeps (delays, drips, endless answers).
SLEEP_SLICE = 0.05
# Chunk size for streaming huge answers.
STREAM_CHUNK = 64 * 1024
# Most problems listed in one OTLP 400 answer.
OTLP_MAX_PROBLEMS = 20
# Trace names kept for the GET / summary.
RECENT_NAMES = 8

JS_MAX_SAFE_INT = 2 ** 53 - 1
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1

HOST_HINT = ". Confirm that you've configured the correct host."
TEXT_413 = b"Body exceeded 4.5mb limit"
OTLP_TEXT_413 = b"Request Entity Too Large"
HTML_413 = (b"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n"
            b"<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n"
            b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")

INGESTION_PATH = "/api/public/ingestion"
OTLP_TRACES_PATH = "/api/public/otel/v1/traces"
OTLP_METRICS_PATH = "/api/public/otel/v1/metrics"

EVENTS_ONLY_ALLOWED = frozenset(("score-create", "sdk-log"))
UPDATE_TYPES = frozenset(("span-update", "generation-update", "observation-update"))
EVENTS_ONLY_REMEDIATION = (
    "Upgrade the client or integration to a v4-compatible SDK or OTLP ingestion path. "
    "As a temporary migration bridge, set LANGFUSE_MIGRATION_V4_WRITE_MODE=dual on "
    "both the web and worker services and redeploy. "
    "Docs: https://langfuse.com/self-hosting/upgrade/upgrade-guides/upgrade-v3-to-v4")

STOPPING = threading.Event()
VERBOSE = False
# --fast: shape checks only; --scan: OTLP ids by a byte scan (see the
# module docstring).
FAST = False
SCAN = False


def log(fmt, *args):
    """Writes one diagnostic line to stderr, only with --verbose."""
    if VERBOSE:
        sys.stderr.write("fakefuse: " + (fmt % args if args else fmt) + "\n")
        sys.stderr.flush()


# ---------------------------------------------------------------------------
# JSON: strict decoding (like JSON.parse) and compact encoding
# ---------------------------------------------------------------------------

def _reject_constant(name):
    raise ValueError("invalid JSON constant " + name)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def strict_json(text):
    """Parses text like JSON.parse: NaN/Infinity tokens are errors.

    Returns (ok, value). Deep nesting that Python cannot parse counts as invalid.
    """
    try:
        return True, _DECODER.decode(text)
    except (ValueError, RecursionError):
        return False, None


def to_json(value):
    """Compact ASCII JSON bytes (lone surrogates come out escaped)."""
    return _ENCODER.encode(value).encode("ascii")


def decode_utf8(raw):
    """Decodes like Node's Buffer.toString(): bad bytes become U+FFFD.

    Returns (text, clean) where clean is False when replacement happened.
    """
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), False


# ---------------------------------------------------------------------------
# Ingestion validation: the server's zod schemas, rewritten as checkers
#
# A checker takes a present, non-null value (or null for fields where null
# is not allowed) and returns None when it passes, or a list of problems
# (relative path tuple, zod issue code, message, extra issue fields).
# ---------------------------------------------------------------------------

MISSING = object()
_UNKNOWN = object()  # marks a key the schema does not know (stripped)


def _received(v):
    """zod's name for the type of a received value."""
    if v is MISSING:
        return "undefined"
    if v is None:
        return "null"
    t = type(v)
    if t is bool:
        return "boolean"
    if t is int or t is float:
        return "number"
    if t is str:
        return "string"
    if t is list:
        return "array"
    return "object"


def _bad_type(expected, v, rel=()):
    return [(rel, "invalid_type",
             "Invalid input: expected %s, received %s" % (expected, _received(v)),
             {"expected": expected})]


def _utf16_len(s):
    """String length as JavaScript counts it (UTF-16 code units)."""
    return len(s.encode("utf-16-le", "surrogatepass")) // 2


def _too_big(limit):
    return ((), "too_big", "Too big: expected string to have <=%d characters" % limit,
            {"origin": "string", "maximum": limit, "inclusive": True})


def _too_small(limit):
    return ((), "too_small", "Too small: expected string to have >=%d characters" % limit,
            {"origin": "string", "minimum": limit, "inclusive": True})


def _is_number(v):
    """z.number(): a finite JS number (bools are not numbers)."""
    t = type(v)
    if t is float:
        return math.isfinite(v)
    if t is int:
        return -1.8e308 < v < 1.8e308
    return False


def _is_safe_int(v):
    """z.number().int() in zod 4: a safe integer (5.0 counts, as in JS)."""
    t = type(v)
    if t is int:
        return -JS_MAX_SAFE_INT <= v <= JS_MAX_SAFE_INT
    if t is float:
        return math.isfinite(v) and v.is_integer() and abs(v) <= JS_MAX_SAFE_INT
    return False


def c_string(v):
    if type(v) is str:
        return None
    return _bad_type("string", v)


def c_nonempty(v):
    if type(v) is not str:
        return _bad_type("string", v)
    return None if v else [_too_small(1)]


def c_bool(v):
    return None if type(v) is bool else _bad_type("boolean", v)


def c_number(v):
    return None if _is_number(v) else _bad_type("number", v)


def c_int(v):
    if _is_safe_int(v):
        return None
    if _is_number(v):
        return [((), "invalid_type", "Invalid input: expected int, received number",
                 {"expected": "int", "format": "safeint"})]
    return _bad_type("number", v)


def c_record(v):
    """z.record(z.string(), z.unknown()): any plain object."""
    return None if type(v) is dict else _bad_type("record", v)


def c_id(v):
    """idSchema: string, 1-800 UTF-16 units, no carriage return."""
    if type(v) is not str:
        return _bad_type("string", v)
    n = len(v)
    if n and n <= 400 and "\r" not in v:
        return None
    out = []
    if not n:
        out.append(_too_small(1))
    elif n > 400 and _utf16_len(v) > 800:
        out.append(_too_big(800))
    if "\r" in v:
        out.append(((), "custom", "ID cannot contain carriage return characters", {}))
    return out or None


def c_max_string(limit):
    def check(v):
        if type(v) is not str:
            return _bad_type("string", v)
        if 2 * len(v) > limit and _utf16_len(v) > limit:
            return [_too_big(limit)]
        return None
    return check


# zod 4.3 z.iso.datetime({offset: true}): date with calendar check, 'T',
# HH:MM with optional :SS and optional fraction, then Z or +-HH:MM.
_DATE_RE = (r"(?:(?:\d\d[2468][048]|\d\d[13579][26]|\d\d0[48]|[02468][048]00|"
            r"[13579][26]00)-02-29|\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|"
            r"(?:0[469]|11)-(?:0[1-9]|[12]\d|30)|(?:02)-(?:0[1-9]|1\d|2[0-8])))")
_TIME_RE = r"(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?"
_DATETIME = re.compile(_DATE_RE + r"T(?:" + _TIME_RE + r"(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d))",
                       re.ASCII)
_DATETIME_MATCH = _DATETIME.fullmatch


def c_datetime(v):
    if type(v) is not str:
        return _bad_type("string", v)
    if _DATETIME_MATCH(v):
        return None
    return [((), "invalid_format", "Invalid ISO datetime", {"format": "datetime"})]


def c_enum(*values):
    allowed = frozenset(values)
    message = "Invalid option: expected one of " + "|".join('"%s"' % x for x in values)

    def check(v):
        if type(v) is str and v in allowed:
            return None
        return [((), "invalid_value", message, {"values": list(values)})]
    return check


def c_string_array(v):
    if type(v) is not list:
        return _bad_type("array", v)
    out = None
    for i, item in enumerate(v):
        if type(item) is not str:
            out = (out or []) + _bad_type("string", item, (i,))
    return out


def _union_fail(rel=()):
    return [(rel, "invalid_union", "Invalid input", {"errors": []})]


def c_model_parameters(v):
    """Values: string | number | boolean | string[] | {string: string} | null."""
    if type(v) is not dict:
        return _bad_type("record", v)
    out = None
    for key, item in v.items():
        if item is None:
            continue
        t = type(item)
        if t is str or t is bool or _is_number(item):
            continue
        if t is list and all(type(x) is str for x in item):
            continue
        if t is dict and all(type(x) is str for x in item.values()):
            continue
        out = (out or []) + _union_fail((key,))
    return out


def c_legacy_model_parameters(v):
    """Legacy observation-* events: scalar values only."""
    if type(v) is not dict:
        return _bad_type("record", v)
    out = None
    for key, item in v.items():
        if item is None or type(item) is str or type(item) is bool or _is_number(item):
            continue
        out = (out or []) + _union_fail((key,))
    return out


_USAGE_INT = ("input", "output", "total", "promptTokens", "completionTokens", "totalTokens")
_USAGE_NUM = ("inputCost", "outputCost", "totalCost")
_USAGE_UNIT = c_enum("CHARACTERS", "TOKENS", "SECONDS", "MILLISECONDS", "IMAGES", "REQUESTS")


def c_usage(v):
    """MixedUsage: integer token counts, numeric costs, a unit enum."""
    if type(v) is not dict:
        return _bad_type("object", v)
    out = None
    for key, item in v.items():
        if item is None:
            continue
        if key in _USAGE_INT:
            bad = c_int(item)
        elif key in _USAGE_NUM:
            bad = c_number(item)
        elif key == "unit":
            bad = _USAGE_UNIT(item)
        else:
            continue
        if bad:
            out = (out or []) + [((key,) + rel, code, msg, extra)
                                 for rel, code, msg, extra in bad]
    return out


def c_usage_details(v):
    """OpenAI shapes or a generic map; invalid entries are dropped, not errors."""
    return None if type(v) is dict else _union_fail()


_LEVEL = c_enum("DEBUG", "DEFAULT", "WARNING", "ERROR")
_LEGACY_OBS_TYPE = c_enum("GENERATION", "SPAN", "EVENT")
_SCORE_SOURCE = c_enum("API", "EVAL", "ANNOTATION")
ANY = None  # field accepted with any value (z.any, jsonSchema, environment)


class Schema:
    """An object schema: known fields, required fields, fields where null fails.

    fields maps name -> checker (or ANY); required maps name -> the type name
    zod reports when it is missing. refine runs only when all fields passed.
    """

    __slots__ = ("fields", "required", "nonnull", "refine")

    def __init__(self, fields, required=None, nonnull=(), refine=None):
        self.fields = fields
        self.required = required or {}
        self.nonnull = frozenset(nonnull) | frozenset(self.required)
        self.refine = refine

    def extend(self, fields, required=None, refine=None):
        merged = dict(self.fields)
        merged.update(fields)
        req = dict(self.required)
        req.update(required or {})
        return Schema(merged, req, self.nonnull, refine)


def add_issues(issues, path, problems):
    """Appends checker problems found at path as zod issue dicts."""
    for rel, code, message, extra in problems:
        issue = dict(extra)
        issue["code"] = code
        issue["path"] = list(path + rel)
        issue["message"] = message
        issues.append(issue)


def check_object(obj, schema, prefix, issues, stripped):
    """Validates a dict against schema; returns it without unknown keys.

    Issues are appended with absolute paths; stripped gets dotted paths of
    the dropped keys. The input dict is returned unchanged when nothing was
    stripped, so the common case allocates nothing.
    """
    fields = schema.fields
    nonnull = schema.nonnull
    unknown = False
    before = len(issues)
    for key, value in obj.items():
        check = fields.get(key, _UNKNOWN)
        if check is _UNKNOWN:
            unknown = True
            stripped.append(".".join(prefix + (key,)))
            continue
        if check is None or (value is None and key not in nonnull):
            continue
        bad = check(value)
        if bad:
            add_issues(issues, prefix + (key,), bad)
    for key, expected in schema.required.items():
        if key not in obj:
            issues.append({"expected": expected, "code": "invalid_type",
                           "path": list(prefix + (key,)),
                           "message": "Invalid input: expected %s, received undefined"
                                      % expected})
    if schema.refine is not None and len(issues) == before:
        schema.refine(obj, prefix, issues)
    if unknown:
        return {k: v for k, v in obj.items() if k in fields}
    return obj


def _truthy(v):
    """JavaScript truthiness for JSON values."""
    return v not in (None, False, 0, "") if type(v) is not float else v != 0.0


def refine_prompt(body, prefix, issues):
    """promptName and promptVersion: both set or both absent (truthiness)."""
    if _truthy(body.get("promptName")) != _truthy(body.get("promptVersion")):
        issues.append({"code": "custom", "path": list(prefix), "message": "Invalid input"})


TRACE_BODY = Schema({
    "id": c_id, "timestamp": c_datetime, "name": c_max_string(1000),
    "externalId": c_string, "input": ANY, "output": ANY, "sessionId": c_string,
    "userId": c_string, "environment": ANY, "metadata": ANY, "release": c_string,
    "version": c_string, "public": c_bool, "tags": c_string_array,
})

OBSERVATION_BODY = Schema({
    "id": c_id, "traceId": c_id, "environment": ANY, "name": c_string,
    "startTime": c_datetime, "metadata": ANY, "input": ANY, "output": ANY,
    "level": _LEVEL, "statusMessage": c_string, "parentObservationId": c_string,
    "version": c_string,
}, required={"id": "string"})

SPAN_BODY = OBSERVATION_BODY.extend({"endTime": c_datetime})

GENERATION_BODY = SPAN_BODY.extend({
    "completionStartTime": c_datetime, "model": c_string,
    "modelParameters": c_model_parameters, "usage": c_usage,
    "usageDetails": c_usage_details, "costDetails": c_record,
    "promptName": c_string, "promptVersion": c_int,
}, refine=refine_prompt)

LEGACY_OBSERVATION_BODY = Schema({
    "id": c_id, "traceId": c_id, "type": _LEGACY_OBS_TYPE, "name": c_string,
    "startTime": c_datetime, "endTime": c_datetime, "completionStartTime": c_datetime,
    "model": c_string, "modelParameters": c_legacy_model_parameters, "input": ANY,
    "output": ANY, "usage": c_usage, "usageDetails": c_usage_details,
    "costDetails": c_record, "metadata": ANY, "parentObservationId": c_string,
    "level": _LEVEL, "statusMessage": c_string, "version": c_string,
}, required={"type": "string"})


def _sdk_log_json(v):
    """jsonSchema at the root: any JSON value except null."""
    return _union_fail() if v is None else None


SDK_LOG_BODY = Schema({"log": _sdk_log_json, "id": c_string},
                      required={"log": "unknown"})


def refine_dataset_run_item(body, prefix, issues):
    issues.append({"code": "custom", "path": [],
                   "message": "Dataset run item creation is only allowed for internal usage"})


DATASET_RUN_ITEM_BODY = Schema({
    "id": c_id, "traceId": c_string, "observationId": c_string, "error": c_string,
    "createdAt": c_datetime, "datasetId": c_string, "runId": c_string,
    "datasetItemId": c_string, "datasetVersion": c_datetime,
}, required={"traceId": "string", "datasetId": "string", "runId": "string",
             "datasetItemId": "string"}, refine=refine_dataset_run_item)

SCORE_BASE_FIELDS = {
    "id": c_id, "name": c_nonempty, "traceId": c_string, "sessionId": c_string,
    "datasetRunId": c_string, "environment": ANY, "observationId": c_string,
    "comment": c_string, "metadata": ANY, "source": _SCORE_SOURCE,
    "executionTraceId": c_string, "queueId": c_string,
    "value": ANY, "dataType": ANY, "configId": ANY,
}
SCORE_BASE = Schema(SCORE_BASE_FIELDS, required={"name": "string"}, nonnull=("source",))


def _score_boolean(v):
    if not _is_number(v):
        return _bad_type("number", v)
    if v == 0 or v == 1:
        return None
    return [((), "custom",
             "Value must be a number equal to either 0 or 1 for data type BOOLEAN", {})]


def _score_text(v):
    if type(v) is not str:
        return _bad_type("string", v)
    if not v:
        return [_too_small(1)]
    if 2 * len(v) > 500 and _utf16_len(v) > 500:
        return [_too_big(500)]
    return None


def _score_untyped(v):
    return None if type(v) is str or _is_number(v) else _union_fail()


def _config_absent(v):
    return None if v is None else _bad_type("undefined", v)


# dataType -> (value checker, expected name when missing, configId checker)
SCORE_VARIANTS = {
    "NUMERIC": (c_number, "number", c_string),
    "CATEGORICAL": (c_string, "string", c_string),
    "BOOLEAN": (_score_boolean, "number", c_string),
    "CORRECTION": (c_string, "string", _config_absent),
    "TEXT": (_score_text, "string", c_string),
    MISSING: (_score_untyped, None, c_string),
}
SCORE_TARGET_MESSAGE = (
    "Provide exactly one of the following: traceId (with optional observationId), "
    "sessionId or datasetRunId. ObservationId requires traceId.")


def check_score_body(body, prefix, issues, stripped):
    """ScoreBody: a union on dataType, then the one-target rule."""
    data_type = body.get("dataType", MISSING)
    hashable = data_type is MISSING or type(data_type) is str
    variant = SCORE_VARIANTS.get(data_type) if hashable else None
    if variant is None:
        issues.append({"code": "invalid_union", "errors": [], "note": "No matching discriminator",
                       "discriminator": "dataType", "path": list(prefix + ("dataType",)),
                       "message": "Invalid input"})
        return None
    before = len(issues)
    clean = check_object(body, SCORE_BASE, prefix, issues, stripped)
    check_value, expected, check_config = variant
    value = body.get("value", MISSING)
    if value is MISSING or value is None:
        bad = _bad_type(expected, value) if expected else _union_fail()
    else:
        bad = check_value(value)
    if bad:
        add_issues(issues, prefix + ("value",), bad)
    config = body.get("configId")
    bad = check_config(config) if config is not None else None
    if bad:
        add_issues(issues, prefix + ("configId",), bad)
    if len(issues) == before:
        has_trace = _truthy(body.get("traceId"))
        has_session = _truthy(body.get("sessionId"))
        has_run = _truthy(body.get("datasetRunId"))
        has_obs = _truthy(body.get("observationId"))
        ok = ((has_trace and not has_session and not has_run)
              or (has_session and not has_trace and not has_run and not has_obs)
              or (has_run and not has_trace and not has_session and not has_obs))
        if not ok:
            issues.append({"code": "custom",
                           "path": list(prefix + ("traceId", "sessionId", "datasetRunId",
                                                  "observationId")),
                           "message": SCORE_TARGET_MESSAGE})
    return clean


def _body_checker(schema):
    def check(body, prefix, issues, stripped):
        return check_object(body, schema, prefix, issues, stripped)
    return check


# Event type -> body checker; the discriminated union of the ingestion API.
EVENT_TYPES = {
    "trace-create": _body_checker(TRACE_BODY),
    "score-create": check_score_body,
    "event-create": _body_checker(OBSERVATION_BODY),
    "span-create": _body_checker(SPAN_BODY),
    "span-update": _body_checker(SPAN_BODY),
    "generation-create": _body_checker(GENERATION_BODY),
    "generation-update": _body_checker(GENERATION_BODY),
    "sdk-log": _body_checker(SDK_LOG_BODY),
    "dataset-run-item-create": _body_checker(DATASET_RUN_ITEM_BODY),
    "observation-create": _body_checker(LEGACY_OBSERVATION_BODY),
    "observation-update": _body_checker(LEGACY_OBSERVATION_BODY),
}
for _kind in ("agent", "tool", "chain", "retriever", "evaluator", "embedding", "guardrail"):
    EVENT_TYPES[_kind + "-create"] = EVENT_TYPES["generation-create"]

ENVELOPE = Schema({"id": c_id, "timestamp": c_datetime, "metadata": ANY,
                   "type": ANY, "body": ANY},
                  required={"id": "string", "timestamp": "string"})
_BODY_PREFIX = ("body",)


def validate_event(event):
    """Validates one batch item.

    Returns (issues, record): issues is a list of zod-style issue dicts (empty
    when valid); record is the stripped event when valid, else None.
    """
    if type(event) is not dict:
        return [{"expected": "object", "code": "invalid_type", "path": [],
                 "message": "Invalid input: expected object, received %s"
                            % _received(event)}], None
    kind = event.get("type")
    body_check = EVENT_TYPES.get(kind) if type(kind) is str else None
    if body_check is None:
        return [{"code": "invalid_union", "errors": [], "note": "No matching discriminator",
                 "discriminator": "type", "path": ["type"], "message": "Invalid input"}], None
    issues = []
    stripped = []
    clean = check_object(event, ENVELOPE, (), issues, stripped)
    body = event.get("body", MISSING)
    if type(body) is dict:
        clean_body = body_check(body, _BODY_PREFIX, issues, stripped)
    else:
        issues.append({"expected": "object", "code": "invalid_type", "path": ["body"],
                       "message": "Invalid input: expected object, received %s"
                                  % _received(body)})
        clean_body = None
    if issues:
        return issues, None
    record = {"id": clean["id"], "type": kind, "timestamp": clean["timestamp"],
              "body": clean_body, "bodyId": clean_body.get("id")}
    if clean.get("metadata") is not None:
        record["metadata"] = clean["metadata"]
    if stripped:
        record["stripped"] = stripped
    return [], record


def validate_envelope(event):
    """validate_event for --fast: the envelope's shape only, body unread."""
    kind = event.get("type") if type(event) is dict else None
    body = event.get("body") if type(event) is dict else None
    if type(event.get("id") if type(event) is dict else None) is not str or \
            kind not in EVENT_TYPES or type(body) is not dict:
        return [{"code": "invalid_type", "path": [],
                 "message": "Invalid input: expected an event envelope"}], None
    return [], {"id": event["id"], "type": kind, "timestamp": event.get("timestamp"),
                "body": body, "bodyId": body.get("id")}


def _days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def timestamp_ms(ts):
    """Epoch milliseconds of a validated datetime, like JS Date.getTime()."""
    days = _days_from_civil(int(ts[0:4]), int(ts[5:7]), int(ts[8:10]))
    secs = days * 86400 + int(ts[11:13]) * 3600 + int(ts[14:16]) * 60
    rest = ts[16:]
    ms = 0
    if rest[:1] == ":":
        secs += int(rest[1:3])
        rest = rest[3:]
        if rest[:1] == ".":
            end = 1
            while end < len(rest) and rest[end].isdigit():
                end += 1
            ms = int((rest[1:end] + "00")[:3])
            rest = rest[end:]
    if rest[:1] in ("+", "-"):
        offset = int(rest[1:3]) * 3600 + int(rest[4:6]) * 60
        secs -= offset if rest[0] == "+" else -offset
    return secs * 1000 + ms


def success_sort_key(records):
    """Sort key giving the order of JS Date.getTime() on envelope timestamps.

    When every timestamp has the same length and ends in Z they share one
    layout, so comparing the text cut at millisecond precision is the same
    as comparing the times; otherwise each timestamp is converted.
    """
    if records:
        width = len(records[0]["timestamp"])
        if all(len(r["timestamp"]) == width and r["timestamp"][-1] == "Z"
               for r in records):
            return lambda rec: rec["timestamp"][:23]
    seen = {}

    def key(rec):
        ts = rec["timestamp"]
        ms = seen.get(ts)
        if ms is None:
            ms = seen[ts] = timestamp_ms(ts)
        return ms
    return key


def format_issues(issues):
    """The text zod puts in error.message: the issue list as indented JSON."""
    return json.dumps(issues, indent=2)


# ---------------------------------------------------------------------------
# OTLP/JSON: strict shape check, then flattening into span records
# ---------------------------------------------------------------------------

_HEX32 = re.compile(r"[0-9a-f]{32}", re.ASCII).fullmatch
# --scan: one span's ids, as the start of its object.
_SPAN_SCAN = re.compile(rb'\{"traceId":"([0-9a-f]{32})","spanId":"([0-9a-f]{16})"'
                        rb'(?:,"parentSpanId":"([0-9a-f]{16})")?')
_HEX16 = re.compile(r"[0-9a-f]{16}", re.ASCII).fullmatch
_NANOS = re.compile(r"[0-9]{1,20}", re.ASCII).fullmatch
_INT64 = re.compile(r"-?[0-9]{1,19}", re.ASCII).fullmatch
_ANY_VALUE_KEYS = ("stringValue", "intValue", "doubleValue", "boolValue", "arrayValue")
_DOUBLE_WORDS = ("NaN", "Infinity", "-Infinity")


class OtlpReader:
    """Walks an ExportTraceServiceRequest; collects problems and span records."""

    def __init__(self):
        self.problems = []
        self.problem_count = 0
        self.span_count = 0
        self.spans = []

    def problem(self, path, text):
        self.problem_count += 1
        if len(self.problems) < OTLP_MAX_PROBLEMS:
            self.problems.append("%s: %s" % (path, text))

    def any_value(self, value, path, depth=0):
        """Converts an AnyValue to a plain value; reports what Langfuse cannot read."""
        if type(value) is not dict:
            self.problem(path, "AnyValue must be an object")
            return None
        if "kvlistValue" in value or "bytesValue" in value:
            self.problem(path, "kvlistValue/bytesValue are not decoded by Langfuse; "
                               "send JSON text in a stringValue")
            return None
        present = [k for k in _ANY_VALUE_KEYS if k in value]
        if len(present) != 1 or len(value) != 1:
            got = ",".join(sorted(value)) or "nothing"
            self.problem(path, "AnyValue must hold exactly one of stringValue, intValue, "
                               "doubleValue, boolValue, arrayValue (got %s)" % got)
            return None
        kind = present[0]
        item = value[kind]
        if kind == "stringValue":
            if type(item) is str:
                return item
        elif kind == "intValue":
            if type(item) is str and _INT64(item):
                number = int(item)
                if INT64_MIN <= number <= INT64_MAX:
                    return number
            elif type(item) is int and INT64_MIN <= item <= INT64_MAX:
                return item
        elif kind == "doubleValue":
            if type(item) in (int, float):
                return float(item)
            if item in _DOUBLE_WORDS:
                return item
        elif kind == "boolValue":
            if type(item) is bool:
                return item
        elif type(item) is dict and depth < 32:
            values = item.get("values", [])
            if type(values) is list:
                return [self.any_value(v, "%s.arrayValue.values[%d]" % (path, i), depth + 1)
                        for i, v in enumerate(values)]
        self.problem(path, "bad %s" % kind)
        return None

    def attributes(self, attrs, path):
        """A KeyValue list -> dict of plain values; absent means empty."""
        out = {}
        if attrs is None:
            return out
        if type(attrs) is not list:
            self.problem(path, "must be an array of {key, value} (not an object)")
            return out
        if FAST:
            return out
        for i, kv in enumerate(attrs):
            where = "%s[%d]" % (path, i)
            if type(kv) is not dict or type(kv.get("key")) is not str:
                self.problem(where, "must be {key: string, value: AnyValue}")
                continue
            out[kv["key"]] = self.any_value(kv.get("value"), where + ".value")
        return out

    def span(self, span, path, resource, scope):
        if type(span) is not dict:
            self.problem(path, "span must be an object")
            return
        trace_id = span.get("traceId")
        span_id = span.get("spanId")
        parent = span.get("parentSpanId")
        if type(trace_id) is not str or not _HEX32(trace_id) or trace_id == "0" * 32:
            self.problem(path + ".traceId", "must be 32 lowercase hex characters, not all zero")
        if type(span_id) is not str or not _HEX16(span_id) or span_id == "0" * 16:
            self.problem(path + ".spanId", "must be 16 lowercase hex characters, not all zero")
        if parent is not None and parent != "" and (type(parent) is not str
                                                    or not _HEX16(parent)):
            self.problem(path + ".parentSpanId", "must be 16 lowercase hex characters")
        if type(span.get("name")) is not str:
            self.problem(path + ".name", "must be a string")
        for field in ("startTimeUnixNano", "endTimeUnixNano"):
            nanos = span.get(field)
            if type(nanos) is not str or not _NANOS(nanos):
                self.problem(path + "." + field, "must be a decimal string of nanoseconds")
        kind = span.get("kind")
        if kind is not None and (type(kind) is not int or not 0 <= kind <= 5):
            self.problem(path + ".kind", "must be an integer 0-5")
        status = span.get("status")
        if status is not None:
            if type(status) is not dict:
                self.problem(path + ".status", "must be an object")
                status = {}
            else:
                code = status.get("code", 0)
                if type(code) is not int or not 0 <= code <= 2:
                    self.problem(path + ".status.code", "must be an integer 0-2")
                if type(status.get("message", "")) is not str:
                    self.problem(path + ".status.message", "must be a string")
        attributes = self.attributes(span.get("attributes"), path + ".attributes")
        events = []
        raw_events = span.get("events")
        if raw_events is not None and type(raw_events) is not list:
            self.problem(path + ".events", "must be an array")
        for i, ev in enumerate(raw_events if type(raw_events) is list else ()):
            where = "%s.events[%d]" % (path, i)
            if type(ev) is not dict:
                self.problem(where, "must be an object")
                continue
            events.append({"name": ev.get("name"), "timeUnixNano": ev.get("timeUnixNano"),
                           "attributes": self.attributes(ev.get("attributes"),
                                                         where + ".attributes")})
        self.span_count += 1
        self.spans.append({
            "traceId": trace_id, "spanId": span_id, "parentSpanId": parent or None,
            "name": span.get("name"), "kind": kind,
            "startTimeUnixNano": span.get("startTimeUnixNano"),
            "endTimeUnixNano": span.get("endTimeUnixNano"),
            "status": status or {}, "attributes": attributes, "events": events,
            "resource": resource, "scope": scope,
        })

    def read(self, resource_spans):
        if type(resource_spans) is not list:
            self.problem("resourceSpans", "must be an array")
            return
        for i, rs in enumerate(resource_spans):
            rpath = "resourceSpans[%d]" % i
            if type(rs) is not dict:
                self.problem(rpath, "must be an object")
                continue
            res = rs.get("resource") or {}
            if type(res) is not dict:
                self.problem(rpath + ".resource", "must be an object")
                res = {}
            resource = self.attributes(res.get("attributes"), rpath + ".resource.attributes")
            scope_spans = rs.get("scopeSpans")
            if scope_spans is None:
                continue
            if type(scope_spans) is not list:
                self.problem(rpath + ".scopeSpans", "must be an array")
                continue
            for j, ss in enumerate(scope_spans):
                spath = "%s.scopeSpans[%d]" % (rpath, j)
                if type(ss) is not dict:
                    self.problem(spath, "must be an object")
                    continue
                raw_scope = ss.get("scope") or {}
                if type(raw_scope) is not dict:
                    self.problem(spath + ".scope", "must be an object")
                    raw_scope = {}
                scope = {"name": raw_scope.get("name"), "version": raw_scope.get("version"),
                         "attributes": self.attributes(raw_scope.get("attributes"),
                                                       spath + ".scope.attributes")}
                spans = ss.get("spans")
                if spans is None:
                    continue
                if type(spans) is not list:
                    self.problem(spath + ".spans", "must be an array")
                    continue
                for k, span in enumerate(spans):
                    self.span(span, "%s.spans[%d]" % (spath, k), resource, scope)


def parse_int_prefix(text):
    """JavaScript parseInt(text, 10): leading digits after space and sign, or None."""
    match = re.match(r"\s*([+-]?[0-9]+)", text)
    return int(match.group(1)) if match else None


def gunzip_limited(data, limit):
    """Inflates all gzip members; returns bytes, or None when over limit.

    Raises zlib.error / EOFError on a corrupt stream.
    """
    out = []
    size = 0
    while data:
        inflater = zlib.decompressobj(wbits=31)
        chunk = inflater.decompress(data, limit + 1 - size)
        size += len(chunk)
        out.append(chunk)
        if size > limit:
            return None
        if inflater.unconsumed_tail:
            return None
        if not inflater.eof:
            raise EOFError("truncated gzip stream")
        data = inflater.unused_data
    return b"".join(out)


# ---------------------------------------------------------------------------
# Faults: the scripted misbehaviour set through POST /_test/faults
# ---------------------------------------------------------------------------

class FaultError(ValueError):
    """A bad /_test/faults document; the message names the field."""


def _need(cond, message):
    if not cond:
        raise FaultError(message)


def _is_num(v):
    return type(v) in (int, float) and math.isfinite(v) and v >= 0


STEP_FIELDS = ("status", "headers", "body", "delay", "drop", "reset", "record", "drip",
               "endless", "huge", "redirect", "route", "times")


def parse_step(raw, index):
    """Checks one script step and returns it as a plain dict."""
    where = "script[%d]" % index
    _need(type(raw) is dict, where + " must be an object")
    for key in raw:
        _need(key in STEP_FIELDS, "%s: unknown field %r" % (where, key))
    step = dict(raw)
    if "status" in step:
        _need(type(step["status"]) is int and 100 <= step["status"] <= 999,
              where + ".status must be an integer 100-999")
    if "headers" in step:
        headers = step["headers"]
        _need(type(headers) is dict, where + ".headers must be an object")
        clean = {}
        for name, value in headers.items():
            _need(type(value) in (str, int, float), where + ".headers values must be strings")
            text = str(value)
            _need("\r" not in text and "\n" not in text and "\r" not in name
                  and "\n" not in name and ":" not in name, where + ".headers: bad header")
            clean[name] = text
        step["headers"] = clean
    if "body" in step:
        _need(type(step["body"]) is str, where + ".body must be a string")
    for key in ("delay", "drip"):
        if key in step:
            _need(_is_num(step[key]), "%s.%s must be a number >= 0" % (where, key))
    for key in ("drop", "reset", "record"):
        if key in step:
            _need(type(step[key]) is bool, "%s.%s must be a boolean" % (where, key))
    if "endless" in step:
        endless = step.pop("endless")
        _need(type(endless) is bool or _is_num(endless),
              where + ".endless must be true or a number of seconds")
        if endless is not False:
            limit = ENDLESS_MAX_SECONDS
            step["endless"] = limit if endless is True else min(endless, limit)
    if "huge" in step:
        _need(type(step["huge"]) is int and step["huge"] >= 0,
              where + ".huge must be a byte count")
    if "redirect" in step:
        _need(type(step["redirect"]) is str and step["redirect"]
              and "\r" not in step["redirect"] and "\n" not in step["redirect"],
              where + ".redirect must be a URL")
    if "route" in step:
        _need(step["route"] in ("ingestion", "otlp"),
              where + '.route must be "ingestion" or "otlp"')
    step["times"] = step.get("times", 1)
    _need(type(step["times"]) is int and step["times"] >= 1,
          where + ".times must be a positive integer")
    return step


def parse_per_event(raw):
    _need(type(raw) is dict, "per_event must be an object")
    out = {}
    for event_id, spec in raw.items():
        where = "per_event[%r]" % event_id
        _need(type(spec) is dict, where + " must be an object")
        for key in spec:
            _need(key in ("status", "message", "error", "times"),
                  "%s: unknown field %r" % (where, key))
        _need(type(spec.get("status")) is int and 100 <= spec["status"] <= 999,
              where + ".status must be an integer 100-999")
        for key in ("message", "error"):
            _need(type(spec.get(key, "")) is str, "%s.%s must be a string" % (where, key))
        times = spec.get("times")
        _need(times is None or (type(times) is int and times >= 1),
              where + ".times must be a positive integer")
        out[event_id] = dict(spec)
    return out


class Faults:
    """Current fault settings; all access happens under State.lock."""

    def __init__(self):
        self.script = []
        self.max_body_bytes = INGESTION_BODY_LIMIT
        self.otlp_max_body_bytes = OTLP_BODY_LIMIT
        self.html_413 = False
        self.events_only = False
        self.per_event = {}
        self.extra_errors = []
        self.malformed_207 = None
        self.delay_all = 0

    def update(self, doc):
        """Applies the fields present in doc; validates all before changing any."""
        _need(type(doc) is dict, "faults document must be a JSON object")
        known = ("script", "max_body_bytes", "otlp_max_body_bytes", "html_413",
                 "events_only", "per_event", "extra_errors", "malformed_207", "delay_all")
        for key in doc:
            _need(key in known, "unknown field %r" % key)
        changes = {}
        if "script" in doc:
            _need(type(doc["script"]) is list, "script must be an array")
            changes["script"] = [parse_step(s, i) for i, s in enumerate(doc["script"])]
        for key in ("max_body_bytes", "otlp_max_body_bytes"):
            if key in doc:
                value = doc[key]
                if value is None:
                    value = INGESTION_BODY_LIMIT if key == "max_body_bytes" else OTLP_BODY_LIMIT
                _need(type(value) is int and value >= 0, key + " must be a byte count")
                changes[key] = value
        for key in ("html_413", "events_only"):
            if key in doc:
                _need(type(doc[key]) is bool, key + " must be a boolean")
                changes[key] = doc[key]
        if "per_event" in doc:
            changes["per_event"] = parse_per_event(doc["per_event"])
        if "extra_errors" in doc:
            _need(type(doc["extra_errors"]) is list
                  and all(type(e) is dict for e in doc["extra_errors"]),
                  "extra_errors must be an array of objects")
            changes["extra_errors"] = list(doc["extra_errors"])
        if "malformed_207" in doc:
            _need(doc["malformed_207"] is None or type(doc["malformed_207"]) is str,
                  "malformed_207 must be a string or null")
            changes["malformed_207"] = doc["malformed_207"]
        if "delay_all" in doc:
            _need(_is_num(doc["delay_all"]), "delay_all must be a number >= 0")
            changes["delay_all"] = doc["delay_all"]
        for key, value in changes.items():
            setattr(self, key, value)

    def take_step(self, route):
        """Consumes the first script step meant for route; None when none is left."""
        for i, step in enumerate(self.script):
            if step.get("route", route) != route:
                continue
            if step["times"] > 1:
                step["times"] -= 1
                out = dict(step)
                out["times"] = 1
                return out
            del self.script[i]
            return step
        return None

    def take_per_event(self, event_id):
        """The injected result for event_id, counting down its times."""
        spec = self.per_event.get(event_id)
        if spec is None:
            return None
        times = spec.get("times")
        if times is not None:
            if times <= 1:
                del self.per_event[event_id]
            else:
                spec["times"] = times - 1
        return spec

    def describe(self):
        return {
            "script": [dict(s) for s in self.script],
            "max_body_bytes": self.max_body_bytes,
            "otlp_max_body_bytes": self.otlp_max_body_bytes,
            "html_413": self.html_413, "events_only": self.events_only,
            "per_event": {k: dict(v) for k, v in self.per_event.items()},
            "extra_errors": list(self.extra_errors),
            "malformed_207": self.malformed_207, "delay_all": self.delay_all,
        }


# ---------------------------------------------------------------------------
# Recorded state
# ---------------------------------------------------------------------------

OBSERVATION_TYPES = frozenset(t for t in EVENT_TYPES
                              if t not in ("trace-create", "score-create", "sdk-log",
                                           "dataset-run-item-create"))


class State:
    """Everything the server remembers; guarded by one lock.

    Recording is O(batch) per request; only the /_test/ readers walk the
    whole history.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.generation = 0
        self.request_seq = 0
        self.reset()

    def reset(self):
        with self.lock:
            self.generation += 1
            self.events = []
            self.event_counts = {}
            self.spans = []
            self.span_counts = {}
            self.requests = collections.deque(maxlen=REQUEST_LOG_SIZE)
            self.requests_total = 0
            self.sdk_logs = 0
            self.trace_ids = set()
            self.observation_ids = set()
            self.scores = 0
            self.otlp_trace_ids = set()
            self.recent_names = collections.deque(maxlen=RECENT_NAMES)
            self.faults = Faults()

    def log_request(self, entry):
        with self.lock:
            self.request_seq += 1
            self.requests_total += 1
            entry["seq"] = self.request_seq
            self.requests.append(entry)

    def record_events(self, records, seq):
        with self.lock:
            counts = self.event_counts
            for rec in records:
                rec["request"] = seq
                self.events.append(rec)
                counts[rec["id"]] = counts.get(rec["id"], 0) + 1
                kind = rec["type"]
                body_id = rec["bodyId"]
                if kind == "trace-create":
                    if body_id is not None:
                        self.trace_ids.add(body_id)
                    name = rec["body"].get("name")
                    if type(name) is str:
                        self.recent_names.append(name)
                elif kind == "score-create":
                    self.scores += 1
                elif body_id is not None and kind in OBSERVATION_TYPES:
                    self.observation_ids.add(body_id)

    def record_spans(self, spans, seq):
        with self.lock:
            counts = self.span_counts
            for span in spans:
                span["request"] = seq
                self.spans.append(span)
                counts[span["spanId"]] = counts.get(span["spanId"], 0) + 1
                self.otlp_trace_ids.add(span["traceId"])
                if span["parentSpanId"] is None:
                    name = span["attributes"].get("langfuse.trace.name", span["name"])
                    if type(name) is str:
                        self.recent_names.append(name)

    def stats(self):
        with self.lock:
            return {
                "events": len(self.events),
                "distinct_event_ids": len(self.event_counts),
                "spans": len(self.spans),
                "distinct_span_ids": len(self.span_counts),
                "sdk_logs": self.sdk_logs,
                "requests": self.requests_total,
                "traces": len(self.trace_ids),
                "observations": len(self.observation_ids),
                "scores": self.scores,
                "otlp_traces": len(self.otlp_trace_ids),
                "script_remaining": sum(s["times"] for s in self.faults.script),
            }


STATE = State()


# ---------------------------------------------------------------------------
# HTTP transport
# ---------------------------------------------------------------------------

class ClientGone(Exception):
    """The peer closed or broke the connection; stop handling quietly."""


class BadRequest(Exception):
    """Unparseable framing (Content-Length, chunk sizes); answer 400 and close."""


class Reply:
    """An answer to send: status, body bytes, content type, extra headers."""

    __slots__ = ("status", "body", "ctype", "headers")

    def __init__(self, status, body=b"", ctype="application/json", headers=None):
        self.status = status
        self.body = body
        self.ctype = ctype
        self.headers = headers or {}


def json_reply(status, value, headers=None):
    return Reply(status, to_json(value), "application/json; charset=utf-8", headers)


def text_reply(status, text, ctype="text/plain; charset=utf-8"):
    return Reply(status, text if isinstance(text, bytes) else text.encode("utf-8"), ctype)


def too_large_reply(html, text):
    """413: the route's own plain text, or the page an nginx proxy would send."""
    return text_reply(413, HTML_413, "text/html") if html else text_reply(413, text)


def _reason(status):
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def sleep_interruptibly(seconds, generation=None):
    """Sleeps in slices; returns False early on shutdown or (if given) on reset."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        if STOPPING.is_set() or (generation is not None and generation != STATE.generation):
            return False
        time.sleep(min(SLEEP_SLICE, left))


class Handler(BaseHTTPRequestHandler):
    """One connection; requests on it are handled in turn (keep-alive)."""

    protocol_version = "HTTP/1.1"
    server_version = "fakefuse/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT

    def setup(self):
        super().setup()
        # TLS listener: handshake here, in this connection's thread. A failed
        # handshake (a client rejecting our certificate) ends the connection
        # through Server.handle_error, which stays quiet.
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    # -- logging -----------------------------------------------------------

    def log_message(self, format, *args):
        if VERBOSE:
            sys.stderr.write("fakefuse: %s %s\n" % (self.address_string(), format % args))

    # -- request body ------------------------------------------------------

    def read_body(self, limit):
        """Reads the request body (Content-Length or chunked).

        Returns (body, size): body is None when it exceeded limit (it was
        drained, or the connection is marked for closing).
        """
        te = self.headers.get("Transfer-Encoding")
        if te is not None and "chunked" in te.lower():
            return self._read_chunked(limit)
        length = self.headers.get("Content-Length")
        if length is None:
            return b"", 0
        length = length.strip()
        if not length.isdigit() or not length.isascii():
            raise BadRequest("bad Content-Length")
        size = int(length)
        if size > limit:
            if size - limit > DRAIN_LIMIT:
                self.close_connection = True
            else:
                self._discard(size)
            return None, size
        data = self.rfile.read(size)
        if len(data) < size:
            raise ClientGone()
        return data, size

    def _discard(self, count):
        while count > 0:
            chunk = self.rfile.read(min(count, STREAM_CHUNK))
            if not chunk:
                raise ClientGone()
            count -= len(chunk)

    def _read_chunked(self, limit):
        parts = []
        size = 0
        while True:
            line = self.rfile.readline(1026)
            if not line:
                raise ClientGone()
            token = line.split(b";", 1)[0].strip()
            try:
                chunk_size = int(token, 16)
            except ValueError:
                raise BadRequest("bad chunk size")
            if chunk_size < 0:
                raise BadRequest("bad chunk size")
            if chunk_size == 0:
                break
            size += chunk_size
            if size > limit + DRAIN_LIMIT:
                self.close_connection = True
                return None, size
            if size > limit:
                parts = None
                self._discard(chunk_size)
            else:
                data = self.rfile.read(chunk_size)
                if len(data) < chunk_size:
                    raise ClientGone()
                parts.append(data)
            if self.rfile.read(2) != b"\r\n":
                raise BadRequest("bad chunk end")
        while True:  # trailers up to the blank line
            line = self.rfile.readline(65537)
            if not line:
                raise ClientGone()
            if line in (b"\r\n", b"\n"):
                break
        if parts is None:
            return None, size
        return b"".join(parts), size

    # -- answers -----------------------------------------------------------

    def _head(self, reply, length=None, extra=()):
        """Status line and headers; step headers override ours by name."""
        headers = {"content-type": ("Content-Type", reply.ctype)}
        if length is not None:
            headers["content-length"] = ("Content-Length", str(length))
        for name, value in extra:
            headers[name.lower()] = (name, value)
        for name, value in reply.headers.items():
            headers[name.lower()] = (name, value)
        if self.close_connection and "connection" not in headers:
            headers["connection"] = ("Connection", "close")
        lines = ["HTTP/1.1 %d %s" % (reply.status, _reason(reply.status))]
        lines.extend("%s: %s" % pair for pair in headers.values())
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    def _write(self, data):
        try:
            self.wfile.write(data)
        except (OSError, ValueError):
            raise ClientGone()

    def send(self, reply):
        """Sends a complete answer in one write (no Nagle stall between parts)."""
        if "content-length" in {k.lower() for k in reply.headers}:
            self.close_connection = True  # a forged length may not match the body
        self._write(self._head(reply, len(reply.body)) + reply.body)
        self.log_request(reply.status, len(reply.body))

    def send_drip(self, reply, per_byte, generation):
        """Headers at once, then the body one byte at a time."""
        self._write(self._head(reply, len(reply.body)))
        for i in range(len(reply.body)):
            if not sleep_interruptibly(per_byte, generation):
                self.close_connection = True
                return
            self._write(reply.body[i:i + 1])
        self.log_request(reply.status, len(reply.body))

    def send_endless(self, reply, seconds, generation):
        """A chunked answer that never finishes; stops when the client leaves."""
        self.close_connection = True
        self._write(self._head(reply, extra=(("Transfer-Encoding", "chunked"),)))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._write(b"1\r\n \r\n")
            if not sleep_interruptibly(0.1, generation):
                return

    def send_huge(self, reply, size, generation):
        """A valid JSON object of exactly size bytes, streamed."""
        head = b'{"successes":[],"errors":[],"padding":"'
        tail = b'"}'
        if size < len(head) + len(tail):
            head, tail = b"", b""
        self._write(self._head(reply, size))
        self._write(head)
        left = size - len(head) - len(tail)
        block = b"x" * STREAM_CHUNK
        while left > 0:
            if STOPPING.is_set() or generation != STATE.generation:
                self.close_connection = True
                return
            n = min(left, STREAM_CHUNK)
            self._write(block[:n])
            left -= n
        self._write(tail)
        self.log_request(reply.status, size)

    def reset_connection(self):
        """Closes with TCP RST (SO_LINGER 0) instead of a FIN."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            # The buffered reader holds a reference to the socket; the file
            # descriptor closes (sending RST) once both are closed.
            self.connection.close()
            self.rfile.close()
        except OSError:
            pass

    # -- dispatch ----------------------------------------------------------

    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def dispatch(self):
        try:
            self.route()
        except ClientGone:
            self.close_connection = True
        except BadRequest as exc:
            self.close_connection = True
            try:
                self.send(json_reply(400, {"error": str(exc)}))
            except ClientGone:
                pass
        except (ConnectionError, TimeoutError, ssl.SSLError):
            self.close_connection = True
        except Exception:  # a bug here must not take the connection loop down
            self.close_connection = True
            if VERBOSE:
                import traceback
                traceback.print_exc()
            try:
                self.send(json_reply(500, {"error": "Internal Server Error"}))
            except Exception:
                pass

    def route(self):
        path = urlsplit(self.path).path
        if path == INGESTION_PATH:
            self.intake("ingestion", self.ingestion)
        elif path == OTLP_TRACES_PATH:
            self.intake("otlp", self.otlp)
        elif path == OTLP_METRICS_PATH:
            self.intake("otlp", self.otlp_metrics)
        elif path.startswith("/_test/") or path == "/":
            self.control(path)
        elif len(path) > 1 and path.endswith("/") and path.rstrip("/") in (
                INGESTION_PATH, OTLP_TRACES_PATH, OTLP_METRICS_PATH):
            # Next.js strips trailing slashes with a permanent redirect.
            self.read_body(CONTROL_BODY_LIMIT)
            target = path.rstrip("/")
            self.send(Reply(308, target.encode(), "text/plain", {"Location": target}))
        else:
            self.read_body(CONTROL_BODY_LIMIT)
            self.send(json_reply(404, {"error": "NotFound", "message": "No route " + path}))

    # -- auth --------------------------------------------------------------

    def auth_level(self):
        """Returns ("project" | "scores" | None, message)."""
        header = self.headers.get("Authorization")
        if not header:
            return None, "No authorization header"
        keys = self.server.keys
        if header.startswith("Basic "):
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return None, "Invalid authorization header" + HOST_HINT
            parts = decoded.split(":")
            public, secret = parts[0], parts[1] if len(parts) > 1 else ""
            if (public, secret) == keys:
                return "project", None
            return None, "Invalid credentials" + HOST_HINT
        if header.startswith("Bearer "):
            if header[7:].strip() == keys[0]:
                return "scores", None
            return None, "Invalid public key" + HOST_HINT
        return None, "Invalid authorization header"

    # -- intake routes -----------------------------------------------------

    def intake(self, route, handler):
        """Common path of the intake routes: body, fault step, answer delivery."""
        generation = STATE.generation
        with STATE.lock:
            faults = STATE.faults
            limit = faults.max_body_bytes if route == "ingestion" else faults.otlp_max_body_bytes
            delay_all = faults.delay_all
        body, size = self.read_body(limit)
        entry = {"time": time.time(), "route": route, "path": self.path,
                 "peer": "%s:%s" % self.client_address[:2],
                 "method": self.command, "status": None,
                 "headers": self.header_dict(), "body_size": size,
                 "decoded_size": None, "invalid_utf8": False, "events": None,
                 "spans": None, "fault": None, "outcome": "answered"}
        # All keys exist from here on: the entry is shared with /_test/requests
        # readers, so later updates only replace values.
        with STATE.lock:
            step = STATE.faults.take_step(route)
        entry["fault"] = step
        STATE.log_request(entry)
        step = step or {}

        if step.get("drop") or step.get("reset"):
            sleep_interruptibly(delay_all + step.get("delay", 0))
            entry["outcome"] = "reset" if step.get("reset") else "drop"
            if step.get("reset"):
                self.reset_connection()
            else:
                self.close_connection = True
            return

        override = self.step_reply(step)
        if override is None or step.get("record"):
            reply = handler(body, size, entry)
        if override is not None:
            reply = override
        for name, value in step.get("headers", {}).items():
            reply.headers[name] = value
        entry["status"] = reply.status
        sleep_interruptibly(delay_all + step.get("delay", 0))
        if "endless" in step:
            entry["outcome"] = "endless"
            self.send_endless(reply, step["endless"], generation)
        elif "huge" in step:
            entry["outcome"] = "huge"
            self.send_huge(reply, step["huge"], generation)
        elif step.get("drip"):
            entry["outcome"] = "drip"
            self.send_drip(reply, step["drip"], generation)
        else:
            self.send(reply)

    @staticmethod
    def step_reply(step):
        """The answer a script step forces, or None to answer normally."""
        if "redirect" in step:
            return json_reply(step.get("status", 307), {"message": "Temporary Redirect"},
                              {"Location": step["redirect"]})
        if not any(k in step for k in ("status", "body", "endless", "huge")):
            return None
        status = step.get("status", 200)
        if "body" in step:
            return Reply(status, step["body"].encode("utf-8"), "application/json")
        if "endless" in step or "huge" in step:
            return Reply(status, b"", "application/json")
        return json_reply(status, {"message": "Injected fault", "status": status})

    def header_dict(self):
        out = {}
        for name, value in self.headers.items():
            key = name.lower()
            out[key] = out[key] + ", " + value if key in out else value
        return out

    def ingestion(self, body, size, entry):
        """POST /api/public/ingestion, in the order the real server checks."""
        if self.command != "POST":
            return json_reply(405, {"error": "MethodNotAllowedError",
                                    "message": "Method not allowed"})
        with STATE.lock:
            html_413 = STATE.faults.html_413
        if body is None:
            return too_large_reply(html_413, TEXT_413)
        # Next.js parses the body before the handler runs: JSON errors come first.
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        parsed = ""
        if ctype in ("application/json", "application/ld+json"):
            text, clean = decode_utf8(body)
            entry["invalid_utf8"] = not clean
            if text.startswith("\ufeff"):
                text = text[1:]
            if not text:
                parsed = {}
            else:
                ok, parsed = strict_json(text)
                if not ok:
                    return text_reply(400, "Invalid JSON")
        level, message = self.auth_level()
        if level is None:
            return json_reply(401, {"error": "UnauthorizedError", "message": message})
        if type(parsed) is not dict:
            return json_reply(400, {"message": "Invalid request data", "errors": [
                "Invalid input: expected object, received %s" % _received(parsed)]})
        batch = parsed.get("batch", MISSING)
        if type(batch) is not list:
            return json_reply(400, {"message": "Invalid request data", "errors": [
                "Invalid input: expected array, received %s" % _received(batch)]})
        entry["events"] = len(batch)
        return self.process_batch(batch, level == "scores", entry)

    def process_batch(self, batch, scores_only, entry):
        """Validates every event, records the accepted ones, builds the 207."""
        with STATE.lock:
            events_only = STATE.faults.events_only
            has_per_event = bool(STATE.faults.per_event)
        errors, auth_errors, rejected, injected_ok, accepted = [], [], [], [], []
        sdk_logs = 0
        for event in batch:
            is_obj = type(event) is dict
            event_id = event.get("id") if is_obj else None
            result_id = event_id if type(event_id) is str else "unknown"
            kind = event.get("type") if is_obj else None
            if events_only and kind not in EVENTS_ONLY_ALLOWED:
                rejected.append({
                    "id": result_id, "status": 400, "message": "Event type not accepted",
                    "error": ('Event type "%s" is not accepted by /api/public/ingestion when '
                              "LANGFUSE_MIGRATION_V4_WRITE_MODE is events_only. This endpoint "
                              "only accepts score and log events. %s")
                             % (kind if type(kind) is str else "unknown",
                                EVENTS_ONLY_REMEDIATION)})
                continue
            if has_per_event and type(event_id) is str:
                with STATE.lock:
                    spec = STATE.faults.take_per_event(event_id)
                if spec is not None:
                    item = {"id": event_id, "status": spec["status"]}
                    if spec["status"] < 300:
                        injected_ok.append(item)
                    else:
                        item["message"] = spec.get("message", "Injected error")
                        if "error" in spec:
                            item["error"] = spec["error"]
                        errors.append(item)
                    continue
            issues, record = (validate_envelope if FAST else validate_event)(event)
            if issues:
                errors.append({"id": result_id, "status": 400,
                               "message": "Invalid request data",
                               "error": format_issues(issues)})
                continue
            if scores_only and kind not in EVENTS_ONLY_ALLOWED:
                auth_errors.append({"id": result_id, "status": 401,
                                    "message": "Authentication error",
                                    "error": "Access Scope Denied"})
                continue
            if kind == "sdk-log":
                sdk_logs += 1
                continue
            accepted.append(record)

        # The server answers in processing order: creates first, updates last,
        # each sorted by envelope timestamp.
        ts_key = success_sort_key(accepted)
        others = sorted((r for r in accepted if r["type"] not in UPDATE_TYPES), key=ts_key)
        updates = sorted((r for r in accepted if r["type"] in UPDATE_TYPES), key=ts_key)
        successes = [{"id": r["id"], "status": 201} for r in others + updates]
        successes.extend(injected_ok)

        STATE.record_events(accepted, entry["seq"])
        with STATE.lock:
            STATE.sdk_logs += sdk_logs
            extra = list(STATE.faults.extra_errors)
            malformed = STATE.faults.malformed_207
        if malformed is not None:
            return Reply(207, malformed.encode("utf-8"), "application/json; charset=utf-8")
        return json_reply(207, {"successes": successes,
                                "errors": errors + auth_errors + rejected + extra})

    def otlp(self, body, size, entry):
        """POST /api/public/otel/v1/traces, in the order the real route checks."""
        if self.command != "POST":
            return json_reply(405, {"message": "Method not allowed",
                                    "error": "MethodNotAllowedError"})
        level, message = self.auth_level()
        if level is None:
            return json_reply(401, {"message": message})
        if level != "project":
            return json_reply(403, {"message": "Access denied - insufficient permissions "
                                               "for this endpoint"})
        with STATE.lock:
            html_413 = STATE.faults.html_413
            limit = STATE.faults.otlp_max_body_bytes
        if body is None:
            return too_large_reply(html_413, OTLP_TEXT_413)
        if "gzip" in (self.headers.get("Content-Encoding") or "").lower():
            try:
                body = gunzip_limited(body, limit)
            except (zlib.error, EOFError):
                return json_reply(400, {"error": "Failed to decompress request body"})
            if body is None:
                return too_large_reply(html_413, OTLP_TEXT_413)
        entry["decoded_size"] = len(body)
        ctype = (self.headers.get("Content-Type") or "").lower()
        if "application/json" not in ctype and "application/x-protobuf" not in ctype:
            return json_reply(400, {"error": "Invalid content type"})
        if "application/x-protobuf" in ctype and "application/json" not in ctype:
            return json_reply(415, {"error": "Protobuf is not supported by this test server; "
                                             "send OTLP/JSON"})
        if SCAN:
            return self.otlp_scan(body, entry)
        text, clean = decode_utf8(body)
        entry["invalid_utf8"] = not clean
        ok, root = strict_json(text)
        if not ok:
            return json_reply(400, {"error": "Failed to parse OTel JSON Trace"})
        resource_spans = root.get("resourceSpans") if type(root) is dict else None
        # Upstream: `if (!resourceSpans || resourceSpans.length === 0) return {}`.
        if not _truthy(resource_spans) or resource_spans == []:
            entry["spans"] = 0
            return json_reply(200, {})
        reader = OtlpReader()
        reader.read(resource_spans)
        entry["spans"] = reader.span_count
        if reader.problem_count:
            return json_reply(400, {"error": (
                "Invalid OTLP trace export: %d problem(s) in %d span(s): %s. The entire "
                "export was rejected and no spans were ingested."
                % (reader.problem_count, reader.span_count, "; ".join(reader.problems)))})
        version = self.headers.get("x-langfuse-ingestion-version") or \
            self.headers.get("x_langfuse_ingestion_version")
        if version:
            number = parse_int_prefix(version)
            if number is None or number > 4:
                return json_reply(400, {"error": 'Unsupported x-langfuse-ingestion-version: '
                                                 '"%s". Maximum supported: "4".' % version})
        STATE.record_spans(reader.spans, entry["seq"])
        return json_reply(200, {})

    def otlp_scan(self, body, entry):
        """--scan: the spans' ids from a byte scan, no JSON parse."""
        found = _SPAN_SCAN.findall(body)
        entry["spans"] = len(found)
        if not body.startswith(b'{"resourceSpans":[') or \
                len(found) != body.count(b'"spanId":"'):
            return json_reply(400, {"error": "--scan cannot read this body: run the "
                                             "server without --scan"})
        STATE.record_spans([{"traceId": t.decode(), "spanId": s.decode(),
                             "parentSpanId": p.decode() or None, "name": None,
                             "attributes": {}} for t, s, p in found], entry["seq"])
        return json_reply(200, {})

    def otlp_metrics(self, body, size, entry):
        """POST /api/public/otel/v1/metrics: authenticated, then discarded."""
        if self.command != "POST":
            return json_reply(405, {"message": "Method not allowed",
                                    "error": "MethodNotAllowedError"})
        level, message = self.auth_level()
        if level is None:
            return json_reply(401, {"message": message})
        return json_reply(200, {"message": "OK"})

    # -- control routes ----------------------------------------------------

    def control(self, path):
        body, _ = self.read_body(CONTROL_BODY_LIMIT)
        if body is None:
            self.send(json_reply(413, {"error": "control document too large"}))
            return
        query = parse_qs(urlsplit(self.path).query)
        method = self.command
        if path == "/" and method == "GET":
            self.send(text_reply(200, self.summary()))
        elif path == "/_test/health" and method == "GET":
            self.send(json_reply(200, {"ok": True}))
        elif path == "/_test/reset" and method == "POST":
            STATE.reset()
            self.send(json_reply(200, {"ok": True}))
        elif path == "/_test/faults" and method == "POST":
            ok, doc = strict_json(decode_utf8(body)[0] or "{}")
            if not ok:
                self.send(json_reply(400, {"error": "faults document is not valid JSON"}))
                return
            try:
                with STATE.lock:
                    STATE.faults.update(doc)
                    described = STATE.faults.describe()
            except FaultError as exc:
                self.send(json_reply(400, {"error": str(exc)}))
                return
            self.send(json_reply(200, {"ok": True, "faults": described}))
        elif path == "/_test/faults" and method == "GET":
            with STATE.lock:
                described = STATE.faults.describe()
            self.send(json_reply(200, {"faults": described}))
        elif path == "/_test/events" and method == "GET":
            since = self.int_param(query, "since")
            with STATE.lock:
                doc = {"events": STATE.events[since:], "counts": dict(STATE.event_counts),
                       "total": len(STATE.events)}
                payload = to_json(doc)
            self.send(Reply(200, payload, "application/json; charset=utf-8"))
        elif path == "/_test/spans" and method == "GET":
            since = self.int_param(query, "since")
            with STATE.lock:
                doc = {"spans": STATE.spans[since:], "counts": dict(STATE.span_counts),
                       "total": len(STATE.spans)}
                payload = to_json(doc)
            self.send(Reply(200, payload, "application/json; charset=utf-8"))
        elif path == "/_test/requests" and method == "GET":
            since = self.int_param(query, "since")
            with STATE.lock:
                doc = {"requests": [r for r in STATE.requests if r["seq"] > since],
                       "total": STATE.requests_total}
                payload = to_json(doc)
            self.send(Reply(200, payload, "application/json; charset=utf-8"))
        elif path == "/_test/stats" and method == "GET":
            self.send(json_reply(200, STATE.stats()))
        else:
            self.send(json_reply(404 if method in ("GET", "POST") else 405,
                                 {"error": "NotFound", "message": "No route %s %s"
                                                                  % (method, path)}))

    @staticmethod
    def int_param(query, name):
        try:
            return max(0, int(query.get(name, ["0"])[0]))
        except ValueError:
            return 0

    @staticmethod
    def summary():
        stats = STATE.stats()
        with STATE.lock:
            names = list(STATE.recent_names)
        lines = [
            "fakefuse - local Langfuse-compatible test server",
            "traces: %d  observations: %d  scores: %d  (batch ingestion, %d events)"
            % (stats["traces"], stats["observations"], stats["scores"], stats["events"]),
            "spans: %d in %d traces  (OTLP)" % (stats["spans"], stats["otlp_traces"]),
            "requests: %d" % stats["requests"],
            "recent traces:",
        ]
        lines.extend("  - " + name[:200] for name in reversed(names))
        if not names:
            lines.append("  (none yet)")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Servers and process lifecycle
# ---------------------------------------------------------------------------

class Server(ThreadingHTTPServer):
    """Threaded HTTP/1.1 server; handler errors stay quiet unless --verbose."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, keys, tls_context=None):
        self.keys = keys
        super().__init__(address, Handler)
        if tls_context is not None:
            # The handshake runs in the connection's thread (Handler.setup),
            # so a stalled TLS client cannot block accept().
            self.socket = tls_context.wrap_socket(self.socket, server_side=True,
                                                  do_handshake_on_connect=False)

    def server_bind(self):
        # Skip HTTPServer's reverse DNS lookup (socket.getfqdn) of the host.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        if VERBOSE:
            super().handle_error(request, client_address)


def write_port_file(path, port):
    """Writes the port atomically so a reader never sees a partial file."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as handle:
        handle.write("%d\n" % port)
    os.replace(tmp, path)


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Local Langfuse-compatible test server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--port-file", help="write the chosen port here once listening")
    parser.add_argument("--public-key", default="pk-lf-test")
    parser.add_argument("--secret-key", default="sk-lf-test")
    parser.add_argument("--tls-port", type=int, help="extra HTTPS listener (0 = free port)")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-port-file", help="write the chosen TLS port here")
    parser.add_argument("--verbose", action="store_true")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--fast", action="store_true",
                      help="benchmarks: shape checks only, no attribute or body fields")
    mode.add_argument("--scan", action="store_true",
                      help="benchmarks: as --fast, and OTLP span ids by a byte scan")
    args = parser.parse_args(argv)
    if args.tls_port is not None and not (args.tls_cert and args.tls_key):
        parser.error("--tls-port needs --tls-cert and --tls-key")
    return args


def main(argv=None):
    global VERBOSE, FAST, SCAN
    args = parse_args(argv)
    VERBOSE = args.verbose
    FAST = args.fast or args.scan
    SCAN = args.scan
    keys = (args.public_key, args.secret_key)
    servers = [Server((args.host, args.port), keys)]
    if args.tls_port is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        servers.append(Server((args.host, args.tls_port), keys, context))

    def stop(signum, frame):
        STOPPING.set()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1},
                                daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    if len(servers) > 1:
        log("https on %s:%d", args.host, servers[1].server_port)
        if args.tls_port_file:
            write_port_file(args.tls_port_file, servers[1].server_port)
    log("http on %s:%d", args.host, servers[0].server_port)
    if args.port_file:
        write_port_file(args.port_file, servers[0].server_port)
    while not STOPPING.wait(0.1):
        pass
    for server in servers:
        server.shutdown()
        server.server_close()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
