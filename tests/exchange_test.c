/*
** exchange_test.c: tests for the fields of a proxied LLM request,
** src/lf_exchange.[ch], and the JSON pull reader it reads the bodies
** with, src/lf_jread.[ch].
**
** Each case builds a struct lf_exchange, runs lf_exchange_fields into
** one lf_exchange_out kept for the whole program (as the nginx tracer
** keeps it), and compares every field of the trace and of the
** generation with its exact JSON text.  Every fragment is also checked
** as strict JSON (fuzz/json_check.c) lying inside the output buffer.
**
** tests/run-exchange-test builds and runs it plain, under ASan/UBSan and
** under valgrind.  A failed check prints its line; the last line is
** "N passed, N failed" and the exit status is nonzero on failure.
*/
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/lf_exchange.h"
#include "../src/lf_jread.h"
#include "../fuzz/json_check.h"

/* Calls made on one kept lf_exchange_out in the reuse test. */
#define REUSE_CALLS 1200
/* Bytes of the answer text in the big stream: past the 256 KiB the
   module keeps between calls, so that its buffer is let go. */
#define BIG_TEXT (300 * 1024)
/* Nesting of the deep bodies: far past LF_JREAD_DEPTH_MAX, deep enough
   to overflow a recursive reader's stack. */
#define DEEP (200 * 1000)

/* The request's route and the names and metadata it gives by default. */
#define ROUTE "/v1/chat/completions"
#define TRACE_NAME "\"POST " ROUTE "\""
#define GEN_NAME "\"" ROUTE "\""
#define META(status) "{\"route\":\"" ROUTE "\",\"status\":" status "}"
/* U+FFFD as UTF-8: what mended text holds in place of a bad byte. */
#define FFFD "\xEF\xBF\xBD"
/* The start of every exchange: 2023-11-14T22:13:20Z. */
#define START 1700000000.0

static struct lf_exchange_out out;      /* kept across every case */

#include "check.h"

/* ---- building exchanges ---- */

static struct lf_text text(const char *s)
{
  struct lf_text t;
  t.s = s;
  t.n = s ? strlen(s) : 0;
  return t;
}

/* A plain POST to the chat completions route that answered 200. */
static void base(struct lf_exchange *x)
{
  memset(x, 0, sizeof(*x));
  x->method = text("POST");
  x->route = text(ROUTE);
  x->status = 200;
  x->start = START;
  x->finish = START + 1.5;
  x->header_time = -1;
  x->capture_io = 1;
}

static void bodies(struct lf_exchange *x, const char *request,
                   const char *answer)
{
  x->request = text(request);
  x->answer = text(answer);
}

/* ---- checking the fields ---- */

/* Checks that fragment i of f is strict JSON and lies inside out.buf. */
static void check_fragment(int line, const char *who,
                           const struct lf_fields *f, int i)
{
  const char *why = NULL;
  size_t at = 0;
  int ok = json_check(f->v[i], f->n[i], &why, &at);
  check(ok, line, "%s.%s is not JSON (%s at %zu): %.*s", who,
        lf_field_name(i), why, at, (int)f->n[i], f->v[i]);
  check(f->v[i] >= out.buf.data &&
        f->v[i] + f->n[i] <= out.buf.data + out.buf.len, line,
        "%s.%s lies outside the output buffer", who, lf_field_name(i));
}

/*
** Runs lf_exchange_fields on x into out, and checks what every call
** must give: LF_OK, every fragment JSON inside out.buf, the trace's
** input and output the generation's, nothing in a field that a trace or
** a generation of an exchange never gets, and left_out bits only for
** fields that are absent.
*/
static void run(int line, const struct lf_exchange *x)
{
  static const int trace_only[] = {
    LF_F_NAME, LF_F_INPUT, LF_F_OUTPUT, LF_F_METADATA, LF_F_USER_ID,
    LF_F_SESSION_ID, LF_F_TAGS
  };
  static const int gen_only[] = {
    LF_F_NAME, LF_F_INPUT, LF_F_OUTPUT, LF_F_METADATA, LF_F_LEVEL,
    LF_F_STATUS_MESSAGE, LF_F_COMPLETION_START_TIME, LF_F_MODEL,
    LF_F_MODEL_PARAMETERS, LF_F_USAGE_DETAILS
  };
  unsigned trace_ok = 0, gen_ok = 0;
  size_t k;
  int i, result = lf_exchange_fields(x, &out);
  check(result == LF_OK, line, "lf_exchange_fields gave %d", result);
  if(result)
    return;
  for(k = 0; k < sizeof(trace_only) / sizeof(trace_only[0]); k++)
    trace_ok |= 1u << trace_only[k];
  for(k = 0; k < sizeof(gen_only) / sizeof(gen_only[0]); k++)
    gen_ok |= 1u << gen_only[k];
  for(i = 0; i < LF_F_COUNT; i++) {
    if(out.trace.v[i]) {
      check_fragment(line, "trace", &out.trace, i);
      check(trace_ok >> i & 1, line, "trace.%s set", lf_field_name(i));
    }
    if(out.gen.v[i]) {
      check_fragment(line, "gen", &out.gen, i);
      check(gen_ok >> i & 1, line, "gen.%s set", lf_field_name(i));
    }
  }
  check(out.trace.v[LF_F_INPUT] == out.gen.v[LF_F_INPUT] &&
        out.trace.n[LF_F_INPUT] == out.gen.n[LF_F_INPUT], line,
        "trace input is not the generation's");
  check(out.trace.v[LF_F_OUTPUT] == out.gen.v[LF_F_OUTPUT] &&
        out.trace.n[LF_F_OUTPUT] == out.gen.n[LF_F_OUTPUT], line,
        "trace output is not the generation's");
  check(!(out.left_out & ~(LF_EX_BAD_INPUT | LF_EX_BAD_OUTPUT)), line,
        "left_out %u", out.left_out);
  if(out.left_out & LF_EX_BAD_INPUT)
    check(!out.gen.v[LF_F_INPUT], line, "input left out but set");
  if(out.left_out & LF_EX_BAD_OUTPUT)
    check(!out.gen.v[LF_F_OUTPUT], line, "output left out but set");
}

/*
** Checks that f holds exactly the fields kv names, each with its text:
** kv is name, fragment, name, fragment, ..., NULL.  The trace's input
** and output are left to run(), which compares them with the
** generation's, when skip_io is set.
*/
static void want(int line, const char *who, const struct lf_fields *f,
                 const char *const *kv, int skip_io)
{
  size_t k;
  int i;
  for(k = 0; kv[k]; k += 2) {
    for(i = 0; i < LF_F_COUNT; i++) {
      if(!strcmp(lf_field_name(i), kv[k]))
        break;
    }
    check(i < LF_F_COUNT, line, "no field named %s", kv[k]);
  }
  for(i = 0; i < LF_F_COUNT; i++) {
    const char *expect = NULL;
    if(skip_io && (i == LF_F_INPUT || i == LF_F_OUTPUT))
      continue;
    for(k = 0; kv[k]; k += 2) {
      if(!strcmp(lf_field_name(i), kv[k]))
        expect = kv[k + 1];
    }
    if(!expect) {
      check(!f->v[i], line, "%s.%s set: %.*s", who, lf_field_name(i),
            (int)f->n[i], f->v[i] ? f->v[i] : "");
      continue;
    }
    check(f->v[i] && f->n[i] == strlen(expect) &&
          !memcmp(f->v[i], expect, f->n[i]), line,
          "%s.%s is %.*s, not %s", who, lf_field_name(i),
          f->v[i] ? (int)f->n[i] : 6, f->v[i] ? f->v[i] : "absent",
          expect);
  }
}

#define RUN(x) run(__LINE__, (x))
#define KV(...) ((const char *const[]){ __VA_ARGS__, NULL })
#define WANT_GEN(...) want(__LINE__, "gen", &out.gen, KV(__VA_ARGS__), 0)
#define WANT_TRACE(...) \
  want(__LINE__, "trace", &out.trace, KV(__VA_ARGS__), 1)
/* The trace of a plain exchange: its default name and metadata. */
#define WANT_PLAIN_TRACE(status) \
  WANT_TRACE("name", TRACE_NAME, "metadata", META(status))

/* Runs x with the bodies req and ans (built with result), and checks
   that the generation got only its name: nothing in them was read. */
static void run_bodies(int line, struct lf_exchange *x,
                       const struct lf_buf *req, const struct lf_buf *ans,
                       int result)
{
  check(result == LF_OK, line, "out of memory");
  x->request.s = req->data;
  x->request.n = req->len;
  x->answer.s = ans->data;
  x->answer.n = ans->len;
  run(line, x);
  want(line, "gen", &out.gen, KV("name", GEN_NAME), 0);
}
/* The generation metadata that says what was left out, and no more. */
#define LEFT_OUT(what) "{\"left_out\":\"" what ": not valid UTF-8\"}"
#define WANT_LEFT_OUT(bits) \
  CHECK(out.left_out == (bits), "left_out %u, not %u", out.left_out, \
        (unsigned)(bits))

/* ---- cases ---- */

static void test_chat_one_choice(void)
{
  struct lf_exchange x;
  base(&x);
  bodies(&x,
    "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"system\","
    "\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi\"}],"
    "\"temperature\":0.2,\"stream\":false}",
    "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\","
    "\"created\":1700000000,\"model\":\"gpt-4o-2024-08-06\","
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
    "\"content\":\"Hello!\",\"refusal\":null},\"logprobs\":null,"
    "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":12,"
    "\"completion_tokens\":3,\"total_tokens\":15,"
    "\"prompt_tokens_details\":{\"cached_tokens\":0}},"
    "\"system_fingerprint\":\"fp_1\"}");
  x.user = text("alice");
  x.session = text("s-1");
  x.upstream = text("127.0.0.1:8081");
  x.upstream_status = text("200");
  x.header_time = 0.25;
  RUN(&x);
  WANT_TRACE("name", TRACE_NAME, "userId", "\"alice\"",
             "sessionId", "\"s-1\"", "metadata", META("200"));
  WANT_GEN("name", GEN_NAME,
           "model", "\"gpt-4o-2024-08-06\"",
           "modelParameters", "{\"temperature\":0.2,\"stream\":\"false\"}",
           "usageDetails", "{\"input\":12,\"output\":3,\"total\":15}",
           "input", "[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                    "{\"role\":\"user\",\"content\":\"Hi\"}]",
           "output", "{\"role\":\"assistant\",\"content\":\"Hello!\","
                     "\"refusal\":null}",
           "completionStartTime", "\"2023-11-14T22:13:20.250000Z\"",
           "metadata", "{\"upstream\":\"127.0.0.1:8081\","
                       "\"upstream_status\":\"200\"}");
  WANT_LEFT_OUT(0);

  /* pretty-printed bodies: a raw value keeps its own spacing, nothing
     around it */
  bodies(&x,
    "{\n  \"messages\" : [ {\"role\": \"user\", \"content\": \"Hi\"} ] ,\n"
    "  \"model\": \"gpt-4o\"\n}\n",
    " \r\n{ \"choices\": [\n  { \"message\": { \"content\": \"Yo\" } }\n"
    " ] }\n");
  x.user = x.session = x.upstream = x.upstream_status = text(NULL);
  x.header_time = 0;
  RUN(&x);
  WANT_PLAIN_TRACE("200");
  WANT_GEN("name", GEN_NAME, "model", "\"gpt-4o\"",
           "input", "[ {\"role\": \"user\", \"content\": \"Hi\"} ]",
           "output", "{ \"content\": \"Yo\" }",
           "completionStartTime", "\"2023-11-14T22:13:20.000000Z\"");
}

static void test_choices(void)
{
  struct lf_exchange x;
  base(&x);
  bodies(&x, "{\"model\":\"gpt-4o\",\"n\":2,\"messages\":[]}",
    "{\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"message\":"
    "{\"role\":\"assistant\",\"content\":\"A\"}},{\"index\":1,"
    "\"message\":{\"role\":\"assistant\",\"content\":\"B\"}}]}");
  RUN(&x);
  WANT_PLAIN_TRACE("200");
  WANT_GEN("name", GEN_NAME, "model", "\"gpt-4o\"",
           "modelParameters", "{\"n\":2}", "input", "[]",
           "output", "[{\"index\":0,\"message\":{\"role\":\"assistant\","
                     "\"content\":\"A\"}},{\"index\":1,\"message\":"
                     "{\"role\":\"assistant\",\"content\":\"B\"}}]");

  /* no choice, a choice that is no object, a null message */
  bodies(&x, NULL, "{\"choices\":[]}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME);
  bodies(&x, NULL, "{\"choices\":[1,{\"message\":{}}]}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME);
  bodies(&x, NULL, "{\"choices\":[{\"message\":null}]}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "output", "null");
  bodies(&x, NULL, "{\"choices\":{\"message\":1}}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME);
}

static void test_responses_api(void)
{
  /* messages come before input, input before prompt, whatever the
     order; a null prompt is no prompt */
  static const char *const cases[][2] = {
    { "{\"prompt\":\"p\",\"input\":\"i\",\"messages\":[\"m\"]}",
      "[\"m\"]" },
    { "{\"prompt\":\"p\",\"input\":\"i\"}", "\"i\"" },
    { "{\"messages\":null,\"prompt\":[\"a\",\"b\"]}", "[\"a\",\"b\"]" },
    { "{\"messages\":null}", NULL },
    /* a prompt as long as null is still one */
    { "{\"prompt\":\"ab\"}", "\"ab\"" },
    { "{\"messages\":[12],\"input\":nul}", NULL },
    { "{\"messages\":[12],\"input\":true}", "[12]" }
  };
  size_t i;
  struct lf_exchange x;
  base(&x);
  x.route = text("/v1/responses");
  bodies(&x,
    "{\"model\":\"gpt-4.1\",\"instructions\":\"Be funny\","
    "\"input\":[{\"role\":\"user\",\"content\":\"Tell me a joke\"}],"
    "\"max_output_tokens\":50,\"reasoning\":{\"effort\":\"low\"}}",
    "{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\","
    "\"model\":\"gpt-4.1-2025-04-14\",\"output\":[{\"type\":\"message\","
    "\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\","
    "\"text\":\"Why?\"}]}],\"usage\":{\"input_tokens\":9,"
    "\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":4,"
    "\"total_tokens\":13}}");
  RUN(&x);
  WANT_TRACE("name", "\"POST /v1/responses\"",
             "metadata", "{\"route\":\"/v1/responses\",\"status\":200}");
  WANT_GEN("name", "\"/v1/responses\"", "model", "\"gpt-4.1-2025-04-14\"",
           "modelParameters", "{\"max_output_tokens\":50}",
           "usageDetails", "{\"input\":9,\"output\":4,\"total\":13}",
           "input", "[{\"role\":\"user\",\"content\":\"Tell me a joke\"}]",
           "output", "[{\"type\":\"message\",\"role\":\"assistant\","
                     "\"content\":[{\"type\":\"output_text\","
                     "\"text\":\"Why?\"}]}]");

  /* a stream: the text deltas are passed over, the last event holds
     the whole answer */
  bodies(&x, "{\"model\":\"gpt-4.1\",\"input\":\"Hi\",\"stream\":true}",
    "event: response.created\n"
    "data: {\"type\":\"response.created\",\"response\":{\"id\":\"r1\","
    "\"model\":\"gpt-4.1\",\"output\":[],\"usage\":null}}\n\n"
    "event: response.output_text.delta\n"
    "data: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n"
    "event: response.completed\n"
    "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"r1\","
    "\"model\":\"gpt-4.1-2025-04-14\",\"output\":[{\"type\":\"message\","
    "\"content\":[{\"type\":\"output_text\",\"text\":\"Hi\"}]}],"
    "\"usage\":{\"input_tokens\":5,\"output_tokens\":1,"
    "\"total_tokens\":6}}}\n\n");
  RUN(&x);
  WANT_GEN("name", "\"/v1/responses\"", "model", "\"gpt-4.1-2025-04-14\"",
           "modelParameters", "{\"stream\":\"true\"}",
           "usageDetails", "{\"input\":5,\"output\":1,\"total\":6}",
           "input", "\"Hi\"",
           "output", "[{\"type\":\"message\",\"content\":[{\"type\":"
                     "\"output_text\",\"text\":\"Hi\"}]}]");

  /* a failed one: its error */
  x.status = 500;
  bodies(&x, NULL,
    "event: response.failed\n"
    "data: {\"type\":\"response.failed\",\"response\":{\"model\":\"o3\","
    "\"error\":{\"code\":\"server_error\",\"message\":\"Oops\"},"
    "\"output\":[]}}\n\n");
  RUN(&x);
  WANT_GEN("name", "\"/v1/responses\"", "model", "\"o3\"", "output", "[]",
           "level", "\"ERROR\"", "statusMessage", "\"Oops\"");
  x.status = 200;

  /* a plain string input */
  bodies(&x, "{\"input\":\"Tell me\",\"model\":\"o3\"}",
         "{\"output\":[],\"usage\":{\"input_tokens\":2}}");
  RUN(&x);
  WANT_GEN("name", "\"/v1/responses\"", "model", "\"o3\"",
           "usageDetails", "{\"input\":2}",
           "input", "\"Tell me\"", "output", "[]");

  x.route = text(ROUTE);
  for(i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    bodies(&x, cases[i][0], NULL);
    RUN(&x);
    if(cases[i][1])
      WANT_GEN("name", GEN_NAME, "input", cases[i][1]);
    else
      WANT_GEN("name", GEN_NAME);
  }
}

static void test_completion(void)
{
  struct lf_exchange x;
  base(&x);
  x.route = text("/v1/completions");
  bodies(&x,
    "{\"model\":\"gpt-3.5-turbo-instruct\",\"prompt\":\"Say hi\","
    "\"max_tokens\":5,\"temperature\":0}",
    "{\"id\":\"cmpl-1\",\"object\":\"text_completion\","
    "\"model\":\"gpt-3.5-turbo-instruct\",\"choices\":[{\"text\":\" hi\","
    "\"index\":0,\"finish_reason\":\"stop\"}],\"usage\":"
    "{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}}");
  RUN(&x);
  WANT_TRACE("name", "\"POST /v1/completions\"",
             "metadata", "{\"route\":\"/v1/completions\",\"status\":200}");
  /* the only choice has no message: a legacy completion's text is the
     output */
  WANT_GEN("name", "\"/v1/completions\"",
           "model", "\"gpt-3.5-turbo-instruct\"",
           "modelParameters", "{\"max_tokens\":5,\"temperature\":0}",
           "usageDetails", "{\"input\":2,\"output\":1,\"total\":3}",
           "input", "\"Say hi\"", "output", "\" hi\"");
  WANT_LEFT_OUT(0);
}

static void test_stream(void)
{
  struct lf_exchange x;
  base(&x);
  x.header_time = 0.004;
  x.upstream = text("10.0.0.1:443, 10.0.0.2:443");
  x.upstream_status = text("502, 200");
  bodies(&x,
    "{\"model\":\"gpt-4o-mini\",\"stream\":true,\"stream_options\":"
    "{\"include_usage\":true},\"messages\":[{\"role\":\"user\","
    "\"content\":\"Hi\"}]}",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\","
    "\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
    "\"finish_reason\":null}],\"usage\":null}\n\n"
    "data: {\"id\":\"c1\",\"model\":\"gpt-4o-mini-2024-07-18\","
    "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}],"
    "\"usage\":null}\n\n"
    "data: {\"id\":\"c1\",\"model\":\"gpt-4o-mini-2024-07-18\","
    "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}],"
    "\"usage\":null}\n\n"
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},"
    "\"finish_reason\":\"stop\"}],\"usage\":null}\n\n"
    "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":8,"
    "\"completion_tokens\":2,\"total_tokens\":10}}\n\n"
    "data: [DONE]\n\n");
  RUN(&x);
  WANT_PLAIN_TRACE("200");
  WANT_GEN("name", GEN_NAME, "model", "\"gpt-4o-mini-2024-07-18\"",
           "modelParameters", "{\"stream\":\"true\"}",
           "usageDetails", "{\"input\":8,\"output\":2,\"total\":10}",
           "input", "[{\"role\":\"user\",\"content\":\"Hi\"}]",
           "output", "{\"role\":\"assistant\",\"content\":\"Hello\"}",
           "completionStartTime", "\"2023-11-14T22:13:20.004000Z\"",
           "metadata", "{\"upstream\":\"10.0.0.1:443, 10.0.0.2:443\","
                       "\"upstream_status\":\"502, 200\"}");

  /* \r\n line ends, data: with no space, other fields and comments */
  bodies(&x, NULL,
    ": keep-alive\r\n\r\nevent: message\r\nid: 1\r\n"
    "data:{\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}"
    "\r\n\r\nretry: 10\r\n"
    "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\r\n\r\n"
    "data: [DONE]\r\n\r\n");
  x.upstream = x.upstream_status = text(NULL);
  x.header_time = -1;
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"m\"",
           "output", "{\"role\":\"assistant\",\"content\":\"ab\"}");

  /* escapes, a surrogate pair, a lone surrogate and a NUL in the text;
     the second choice's delta is not the answer */
  bodies(&x, NULL,
    "data: {\"choices\":[{\"delta\":{\"content\":\"caf\\u00e9 \"}}]}\n"
    "data: {\"choices\":[{\"delta\":{\"content\":\"\\ud83d\\ude00\"}},"
    "{\"delta\":{\"content\":\"second\"}}]}\n"
    "data: {\"choices\":[{\"delta\":{\"content\":"
    "\" \\\"q\\\" \\\\ \\n\\t\\/ \\ud800x a\\u0000b \\u001f\"}}]}\n");
  RUN(&x);
  WANT_GEN("name", GEN_NAME,
           "output", "{\"role\":\"assistant\",\"content\":\"caf\xC3\xA9 "
                     "\xF0\x9F\x98\x80 \\\"q\\\" \\\\ \\n\\t/ " FFFD "x ab "
                     "\\u001f\"}");

  /* usage: null keeps nothing, a later object replaces an earlier one;
     the Responses names are read in events too */
  bodies(&x, NULL,
    "data: {\"usage\":{\"prompt_tokens\":1,\"total_tokens\":1}}\n"
    "data: {\"usage\":null}\n"
    "data: {\"usage\":{\"input_tokens\":5,\"output_tokens\":6}}\n"
    "data: {\"usage\":\"x\"}\n");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "usageDetails", "{\"input\":5,\"output\":6}");

  /* a stream with no text: no output, but the model */
  bodies(&x, NULL,
    "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":"
    "\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":"
    "{\"content\":null}}]}\n\n");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"m\"");

  /* an empty text is still an answer */
  bodies(&x, NULL, "data: {\"choices\":[{\"delta\":{\"content\":\"\"}}]}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME,
           "output", "{\"role\":\"assistant\",\"content\":\"\"}");

  /* capture_io off: no text, the rest as before */
  x.capture_io = 0;
  bodies(&x, "{\"stream\":true,\"messages\":[]}",
    "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"a\"}}],"
    "\"usage\":{\"total_tokens\":3}}\n");
  RUN(&x);
  WANT_TRACE("name", TRACE_NAME, "metadata", META("200"));
  WANT_GEN("name", GEN_NAME, "model", "\"m\"",
           "modelParameters", "{\"stream\":\"true\"}",
           "usageDetails", "{\"total\":3}");
}

static void test_stream_cut(void)
{
  struct lf_exchange x;
  base(&x);
  /* kept from its last bytes: the first line is cut mid-way */
  x.truncated = 1;
  bodies(&x, "{\"model\":\"gpt-4o\",\"stream\":true}",
    "t\",\"choices\":[{\"delta\":{\"content\":\"lost\"}}]}\n\n"
    "data: {\"model\":\"gpt-4o-2024\",\"choices\":[{\"delta\":"
    "{\"content\":\"kept\"}}]}\n\n"
    "data: [DONE]\n\n");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"gpt-4o-2024\"",
           "modelParameters", "{\"stream\":\"true\"}",
           "output", "{\"role\":\"assistant\",\"content\":\"kept\"}",
           "metadata", "{\"body_truncated\":true}");

  /* cut inside "data:" and inside the JSON after it */
  bodies(&x, NULL,
    "ta: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n"
    "data: {\"choices\":[{\"delta\":{\"content\":\"y\"}}]}\n");
  RUN(&x);
  WANT_GEN("name", GEN_NAME,
           "output", "{\"role\":\"assistant\",\"content\":\"y\"}",
           "metadata", "{\"body_truncated\":true}");

  /* the upstream stopped mid-event: the last line is passed over, and
     so is a line with bytes after its object */
  x.truncated = 0;
  bodies(&x, NULL,
    "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],"
    "\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1}}\n\n"
    "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]} x\n\n"
    "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"c\"}}],"
    "\"usage\":{\"prompt_tokens\":5,\"comp");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "usageDetails", "{\"input\":4,\"output\":1}",
           "output", "{\"role\":\"assistant\",\"content\":\"a\"}");

  /* a body that starts like one JSON object but is not one is read as
     events */
  bodies(&x, NULL,
    "{}\ndata: {\"choices\":[{\"delta\":{\"content\":\"z\"}}]}\n");
  RUN(&x);
  WANT_GEN("name", GEN_NAME,
           "output", "{\"role\":\"assistant\",\"content\":\"z\"}");
}

static void test_errors(void)
{
  static const char *const cases[][3] = {
    { "429", "{\"error\":{\"message\":\"Rate limit reached for gpt-4o\","
      "\"type\":\"requests\",\"param\":null,"
      "\"code\":\"rate_limit_exceeded\"}}",
      "\"Rate limit reached for gpt-4o\"" },
    { "429", "{\"error\":{\"type\":\"requests\"}}", "\"HTTP 429\"" },
    { "503", "upstream connect error or disconnect/reset before headers",
      "\"HTTP 503\"" },
    { "503", "{\"error\":{\"message\":null}}", "\"HTTP 503\"" },
    { "503", "{\"error\":{\"message\":7}}", "\"HTTP 503\"" },
    { "500", "{\"error\":\"boom\"}", "\"HTTP 500\"" },
    { "529", "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
      "\"message\":\"Overloaded\"}}", "\"Overloaded\"" },
    { "400", "{\"error\":{\"message\":\"line1\\nline2 \\u00e9 \\\"x\\\"\"}}",
      "\"line1\\nline2 \xC3\xA9 \\\"x\\\"\"" },
    /* a NUL is dropped, a byte that is not UTF-8 mended */
    { "500", "{\"error\":{\"message\":\"a\\u0000b \xFF c\"}}",
      "\"ab " FFFD " c\"" },
    /* an unreadable answer gives no message */
    { "502", "{\"error\":{\"message\":\"cut", "\"HTTP 502\"" },
    { "404", NULL, "\"HTTP 404\"" },
    { "599", "", "\"HTTP 599\"" }
  };
  struct lf_exchange x;
  char meta[128];
  size_t i;
  base(&x);
  x.request = text("{\"model\":\"gpt-4o\"}");
  for(i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    x.status = atoi(cases[i][0]);
    x.answer = text(cases[i][1]);
    RUN(&x);
    snprintf(meta, sizeof(meta), META("%d"), x.status);
    WANT_TRACE("name", TRACE_NAME, "metadata", meta);
    WANT_GEN("name", GEN_NAME, "model", "\"gpt-4o\"",
             "level", x.status >= 500 ? "\"ERROR\"" : "\"WARNING\"",
             "statusMessage", cases[i][2]);
  }

  /* a stream's error event; the last one counts */
  x.status = 500;
  x.answer = text(
    "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
    "data: {\"error\":{\"message\":\"first\"}}\n\n"
    "data: {\"error\":{\"message\":\"upstream died\"}}\n\n");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"gpt-4o\"",
           "output", "{\"role\":\"assistant\",\"content\":\"a\"}",
           "level", "\"ERROR\"", "statusMessage", "\"upstream died\"");

  /* below 400 there is no level, whatever the body says */
  x.status = 399;
  x.answer = text("{\"error\":{\"message\":\"odd\"}}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"gpt-4o\"");
}

/* An error message past LF_EXCHANGE_MESSAGE_MAX is cut, never inside a
   UTF-8 sequence. */
static void test_error_cut(void)
{
  struct lf_exchange x;
  struct lf_buf answer, expect;
  size_t i;
  int result = LF_OK;
  base(&x);
  x.status = 500;
  lf_buf_init(&answer, 0);
  lf_buf_init(&expect, 0);
  /* "x" and 300 two-byte characters: 601 bytes, cut to 511 */
  result |= lf_buf_adds(&answer, "{\"error\":{\"message\":\"x");
  result |= lf_buf_adds(&expect, "\"x");
  for(i = 0; i < 300; i++) {
    result |= lf_buf_adds(&answer, "\xC3\xA9");
    if(1 + 2 * (i + 1) <= LF_EXCHANGE_MESSAGE_MAX)
      result |= lf_buf_adds(&expect, "\xC3\xA9");
  }
  result |= lf_buf_adds(&answer, "\"}}");
  result |= lf_buf_adds(&expect, "\"");
  CHECK(result == LF_OK, "out of memory");
  x.answer.s = answer.data;
  x.answer.n = answer.len;
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "level", "\"ERROR\"",
           "statusMessage", lf_buf_cstr(&expect));
  CHECK(out.gen.n[LF_F_STATUS_MESSAGE] == 511 + 2, "cut at %zu bytes",
        out.gen.n[LF_F_STATUS_MESSAGE] - 2);

  /* exactly the bound is kept whole; one more byte is cut */
  for(i = 0; i < 2; i++) {
    size_t n = LF_EXCHANGE_MESSAGE_MAX + i, k;
    lf_buf_reset(&answer);
    lf_buf_reset(&expect);
    result = lf_buf_adds(&answer, "{\"error\":{\"message\":\"");
    result |= lf_buf_adds(&expect, "\"");
    for(k = 0; k < n; k++) {
      result |= lf_buf_addc(&answer, (char)('a' + k % 26));
      if(k < LF_EXCHANGE_MESSAGE_MAX)
        result |= lf_buf_addc(&expect, (char)('a' + k % 26));
    }
    result |= lf_buf_adds(&answer, "\"}}");
    result |= lf_buf_adds(&expect, "\"");
    CHECK(result == LF_OK, "out of memory");
    x.answer.s = answer.data;
    x.answer.n = answer.len;
    RUN(&x);
    WANT_GEN("name", GEN_NAME, "level", "\"ERROR\"",
             "statusMessage", lf_buf_cstr(&expect));
  }
  lf_buf_free(&answer);
  lf_buf_free(&expect);
}

static void test_unreadable(void)
{
  static const char *const requests[] = {
    "model=gpt-4o&prompt=hi", "[{\"model\":\"gpt-4o\"}]", "\"gpt-4o\"",
    "{\"model\":\"gpt-4o\"} {}", "{\"model\":\"gpt-4o\",}",
    "{\"model\":\"gpt-4o\"", "{\"model\":\"gpt-4o\",\"messages\":[1,]}",
    "{\"model\" \"gpt-4o\"}", "{model:\"gpt-4o\"}", "",
    "{\"model\":\"gpt-4o\",\"temperature\":01}",
    "{\"model\":\"gpt-4o\",\"temperature\":-}",
    "{\"model\":\"gpt-4o\",\"messages\":\"a\x01\"}",
    "{\"model\":\"gpt-4o\",\"messages\":\"\\x\"}",
    "{\"model\":\"gpt-4o\",\"stream\":tru}",
    "{\"model\":\"gpt-4o\",\"top_p\":1.}"
  };
  static const char *const answers[] = {
    "<html><body>502 Bad Gateway</body></html>", "[]", "null", "",
    "{\"model\":\"gpt-4o-2024\",\"choices\":[",
    "{\"model\":\"gpt-4o-2024\"}}", "{\"model\":\"gpt-4o-2024\"} x",
    "data: {\"model\":\"gpt-4o-2024\"", "data: [DONE]"
  };
  struct lf_exchange x;
  size_t i;
  base(&x);
  x.status = 502;
  for(i = 0; i < sizeof(requests) / sizeof(requests[0]); i++) {
    bodies(&x, requests[i],
           "{\"model\":\"m\",\"usage\":{\"total_tokens\":1}}");
    RUN(&x);
    WANT_PLAIN_TRACE("502");
    WANT_GEN("name", GEN_NAME, "model", "\"m\"",
             "usageDetails", "{\"total\":1}",
             "level", "\"ERROR\"", "statusMessage", "\"HTTP 502\"");
  }
  for(i = 0; i < sizeof(answers) / sizeof(answers[0]); i++) {
    bodies(&x, "{\"model\":\"gpt-4o\",\"messages\":[]}", answers[i]);
    RUN(&x);
    WANT_GEN("name", GEN_NAME, "model", "\"gpt-4o\"", "input", "[]",
             "level", "\"ERROR\"", "statusMessage", "\"HTTP 502\"");
  }

  /* a JSON answer kept from its last bytes is not read as JSON, even
     when what is left looks whole */
  x.status = 200;
  x.truncated = 1;
  bodies(&x, "{\"model\":\"gpt-4o\"}",
    "t\":\"Hello\"}}],\"usage\":{\"prompt_tokens\":5}}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"gpt-4o\"",
           "metadata", "{\"body_truncated\":true}");
  bodies(&x, "{\"model\":\"gpt-4o\"}",
    "{\"model\":\"gpt-4o-2024\",\"choices\":[{\"message\":{}}]}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"gpt-4o\"",
           "metadata", "{\"body_truncated\":true}");

  /* no bodies at all */
  x.truncated = 0;
  bodies(&x, NULL, NULL);
  RUN(&x);
  WANT_PLAIN_TRACE("200");
  WANT_GEN("name", GEN_NAME);
  WANT_LEFT_OUT(0);
}

static void test_mended(void)
{
  struct lf_exchange x;
  base(&x);
  x.route = text("/v1/\xFF" "chat");
  x.user = text("al\xC3" "ice");
  x.session = text("s\xE2\x82");
  x.upstream = text("\xC0\xAF");
  x.upstream_status = text("");
  RUN(&x);
  WANT_TRACE("name", "\"POST /v1/" FFFD "chat\"",
             "userId", "\"al" FFFD "ice\"",
             "sessionId", "\"s" FFFD FFFD "\"",
             "metadata", "{\"route\":\"/v1/" FFFD "chat\",\"status\":200}");
  WANT_GEN("name", "\"/v1/" FFFD "chat\"",
           "metadata", "{\"upstream\":\"" FFFD FFFD "\","
                       "\"upstream_status\":\"\"}");

  /* given names likewise; a quote and a control are escaped */
  x.name = text("n\"\x01\xED\xA0\x80");
  x.gen_name = text("g\xF4\x90\x80\x80");
  x.user = x.session = x.upstream = x.upstream_status = text(NULL);
  x.method = text("P\xFE");
  RUN(&x);
  WANT_TRACE("name", "\"n\\\"\\u0001" FFFD FFFD FFFD "\"",
             "metadata", "{\"route\":\"/v1/" FFFD "chat\",\"status\":200}");
  WANT_GEN("name", "\"g" FFFD FFFD FFFD FFFD "\"");

  /* the method in the default name is mended too; no route at all */
  x.name = x.gen_name = x.route = text(NULL);
  RUN(&x);
  WANT_TRACE("name", "\"P" FFFD " \"", "metadata", "{\"status\":200}");
  WANT_GEN("name", "\"\"");

  /* a model name is mended, a string parameter that is not UTF-8 left
     out */
  base(&x);
  bodies(&x, "{\"model\":\"gpt\xFF\",\"reasoning_effort\":\"lo\xFFw\","
         "\"seed\":1}", NULL);
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"gpt" FFFD "\"",
           "modelParameters", "{\"seed\":1}");
  WANT_LEFT_OUT(0);
}

static void test_left_out(void)
{
  static const char *const bad_prompt =
    "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
    "\"content\":\"caf\xE9\"}]}";
  static const char *const bad_answer =
    "{\"choices\":[{\"message\":{\"content\":\"\xFF\xFE\"}}],"
    "\"usage\":{\"total_tokens\":2}}";
  struct lf_exchange x;
  base(&x);
  bodies(&x, bad_prompt,
         "{\"choices\":[{\"message\":{\"content\":\"caf\xC3\xA9\"}}]}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"m\"",
           "output", "{\"content\":\"caf\xC3\xA9\"}",
           "metadata", LEFT_OUT("the prompt"));
  WANT_LEFT_OUT(LF_EX_BAD_INPUT);

  bodies(&x, "{\"messages\":[\"caf\xC3\xA9\"]}", bad_answer);
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "usageDetails", "{\"total\":2}",
           "input", "[\"caf\xC3\xA9\"]",
           "metadata", LEFT_OUT("the answer"));
  WANT_LEFT_OUT(LF_EX_BAD_OUTPUT);

  bodies(&x, bad_prompt, bad_answer);
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"m\"",
           "usageDetails", "{\"total\":2}",
           "metadata", LEFT_OUT("the prompt and the answer"));
  WANT_LEFT_OUT(LF_EX_BAD_INPUT | LF_EX_BAD_OUTPUT);

  /* after the upstream and the cut, in the same object */
  x.upstream = text("127.0.0.1:1");
  x.truncated = 1;
  bodies(&x, bad_prompt, NULL);
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"m\"",
           "metadata", "{\"upstream\":\"127.0.0.1:1\","
           "\"body_truncated\":true,"
           "\"left_out\":\"the prompt: not valid UTF-8\"}");
  WANT_LEFT_OUT(LF_EX_BAD_INPUT);
  x.upstream = text(NULL);
  x.truncated = 0;

  /* several choices, the Responses output and a stream's text */
  bodies(&x, NULL, "{\"choices\":[{\"message\":1},{\"x\":\"\xC3\"}]}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "metadata", LEFT_OUT("the answer"));
  WANT_LEFT_OUT(LF_EX_BAD_OUTPUT);
  bodies(&x, NULL, "{\"output\":\"\x80\"}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "metadata", LEFT_OUT("the answer"));
  WANT_LEFT_OUT(LF_EX_BAD_OUTPUT);
  bodies(&x, NULL,
    "data: {\"choices\":[{\"delta\":{\"content\":\"ok \"}}]}\n"
    "data: {\"choices\":[{\"delta\":{\"content\":\"\xC3\"}}]}\n"
    "data: {\"choices\":[{\"delta\":{\"content\":\"\xA9\"}}]}\n");
  RUN(&x);
  /* the pieces join into valid UTF-8 */
  WANT_GEN("name", GEN_NAME,
           "output", "{\"role\":\"assistant\",\"content\":\"ok \xC3\xA9\"}");
  WANT_LEFT_OUT(0);
  bodies(&x, NULL,
    "data: {\"choices\":[{\"delta\":{\"content\":\"ok \xC3\"}}]}\n");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "metadata", LEFT_OUT("the answer"));
  WANT_LEFT_OUT(LF_EX_BAD_OUTPUT);

  /* not captured: nothing is left out */
  x.capture_io = 0;
  bodies(&x, bad_prompt, bad_answer);
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"m\"",
           "usageDetails", "{\"total\":2}");
  WANT_LEFT_OUT(0);
}

static void test_model_parameters(void)
{
  struct lf_exchange x;
  base(&x);
  bodies(&x,
    "{\"model\":\"m\",\"temperature\":0.7,\"top_p\":1,\"max_tokens\":256,"
    "\"max_completion_tokens\":1024,\"presence_penalty\":-0.5,"
    "\"frequency_penalty\":1e-3,\"seed\":-42,\"n\":1,\"stream\":true,"
    "\"reasoning_effort\":\"high\",\"user\":\"u1\",\"tools\":[],"
    "\"logit_bias\":{\"50256\":-100},\"stop\":[\"\\n\"]}", NULL);
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"m\"",
           "modelParameters", "{\"temperature\":0.7,\"top_p\":1,"
           "\"max_tokens\":256,\"max_completion_tokens\":1024,"
           "\"presence_penalty\":-0.5,\"frequency_penalty\":1e-3,"
           "\"seed\":-42,\"n\":1,\"stream\":\"true\","
           "\"reasoning_effort\":\"high\"}");

  /* objects, arrays and null are passed over; strings and booleans of
     any parameter kept; numbers as written */
  bodies(&x,
    "{\"temperature\":null,\"top_p\":{\"v\":1},\"seed\":[1],\"n\":\"2\","
    "\"stream\":false,\"max_tokens\":1E+2,\"presence_penalty\":-0,"
    "\"frequency_penalty\":2.5e-10,\"reasoning_effort\":\"h\\u0069gh\","
    "\"max_completion_tokens\":  12  }", NULL);
  RUN(&x);
  WANT_GEN("name", GEN_NAME,
           "modelParameters", "{\"n\":\"2\",\"stream\":\"false\","
           "\"max_tokens\":1E+2,\"presence_penalty\":-0,"
           "\"frequency_penalty\":2.5e-10,\"reasoning_effort\":\"high\","
           "\"max_completion_tokens\":12}");

  /* none at all: no field */
  bodies(&x, "{\"temperature\":null,\"stream\":{}}", NULL);
  RUN(&x);
  WANT_GEN("name", GEN_NAME);
}

/* Numbers and strings past their bounds are left out. */
static void test_parameter_bounds(void)
{
  struct lf_exchange x;
  struct lf_buf req, expect;
  int result;
  base(&x);
  lf_buf_init(&req, 0);
  lf_buf_init(&expect, 0);
  /* 32 characters kept, 33 left out */
  bodies(&x,
    "{\"temperature\":0.123456789012345678901234567890,"
    "\"top_p\":0.1234567890123456789012345678901,"
    "\"seed\":123456789012345678901234567890123,"
    "\"n\":12345678901234567890123456789012}", NULL);
  RUN(&x);
  WANT_GEN("name", GEN_NAME,
           "modelParameters", "{\"temperature\":"
           "0.123456789012345678901234567890,"
           "\"n\":12345678901234567890123456789012}");

  /* a string of 256 bytes kept, of 257 left out, with a NUL left out */
  result = lf_buf_adds(&req, "{\"reasoning_effort\":\"");
  result |= lf_buf_adds(&expect, "{\"reasoning_effort\":\"");
  while(!result && expect.len < 21 + 256) {
    result |= lf_buf_addc(&req, 'e');
    result |= lf_buf_addc(&expect, 'e');
  }
  result |= lf_buf_adds(&req, "\",\"stream\":\"");
  result |= lf_buf_adds(&expect, "\"}");
  while(!result && req.len < 21 + 256 + 12 + 257)
    result |= lf_buf_addc(&req, 's');
  result |= lf_buf_adds(&req, "\",\"seed\":\"a\\u0000\"}");
  CHECK(result == LF_OK, "out of memory");
  x.request.s = req.data;
  x.request.n = req.len;
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "modelParameters", lf_buf_cstr(&expect));

  /* a model name past 256 bytes is passed over */
  lf_buf_reset(&req);
  result = lf_buf_adds(&req, "{\"model\":\"");
  while(!result && req.len < 10 + 257)
    result |= lf_buf_addc(&req, 'm');
  result |= lf_buf_adds(&req, "\"}");
  CHECK(result == LF_OK, "out of memory");
  x.request.s = req.data;
  x.request.n = req.len;
  RUN(&x);
  WANT_GEN("name", GEN_NAME);
  lf_buf_free(&req);
  lf_buf_free(&expect);
}

static void test_usage(void)
{
  struct lf_exchange x;
  base(&x);
  /* counts from 0 to 2^53; fractions, exponents, signs, strings and
     larger numbers are passed over */
  bodies(&x, NULL,
    "{\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":9007199254740992,"
    "\"total_tokens\":9007199254740993}}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME,
           "usageDetails", "{\"input\":0,\"output\":9007199254740992}");
  bodies(&x, NULL,
    "{\"usage\":{\"prompt_tokens\":1.0,\"completion_tokens\":-1,"
    "\"total_tokens\":\"3\",\"input_tokens\":1e2,\"output_tokens\":null}}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME);
  bodies(&x, NULL, "{\"usage\":{}}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME);
  bodies(&x, NULL, "{\"usage\":[1,2]}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME);
  /* the Chat Completions name wins over the Responses one, either
     order */
  bodies(&x, NULL,
    "{\"usage\":{\"input_tokens\":9,\"prompt_tokens\":3,"
    "\"output_tokens\":8,\"completion_tokens\":4}}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "usageDetails", "{\"input\":3,\"output\":4}");
}

static void test_duplicate_keys(void)
{
  struct lf_exchange x;
  base(&x);
  /* the model: the last; the prompt: the first; a parameter: the first
     written, so that modelParameters has no key twice; usage: the
     first; a choice's message: the last */
  bodies(&x,
    "{\"model\":\"a\",\"messages\":[1],\"temperature\":0.5,"
    "\"model\":\"b\",\"messages\":[2],\"temperature\":1,"
    "\"stream\":null,\"stream\":true,\"stream\":false}",
    "{\"model\":\"x\",\"model\":\"y\",\"usage\":{\"prompt_tokens\":1,"
    "\"prompt_tokens\":2},\"choices\":[{\"message\":{\"content\":\"c\"},"
    "\"message\":{\"content\":\"d\"}}]}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"y\"",
           "modelParameters", "{\"temperature\":0.5,\"stream\":\"true\"}",
           "usageDetails", "{\"input\":1}",
           "input", "[1]", "output", "{\"content\":\"d\"}");
}

/* Builds {<head>, then depth brackets and their closers, then <tail>}
   into b. */
static int nested(struct lf_buf *b, const char *head, size_t depth,
                  const char *tail)
{
  size_t i;
  int result;
  lf_buf_reset(b);
  result = lf_buf_adds(b, head);
  for(i = 0; i < depth && !result; i++)
    result = lf_buf_addc(b, i % 2 ? '[' : '{') ||
             (i % 2 ? 0 : lf_buf_adds(b, "\"k\":"));
  /* an object level opened last needs a value */
  if(!result && depth % 2)
    result = lf_buf_addc(b, '1');
  for(i = depth; i > 0 && !result; i--)
    result = lf_buf_addc(b, (i - 1) % 2 ? ']' : '}');
  if(!result)
    result = lf_buf_adds(b, tail);
  return result;
}

static void test_deep(void)
{
  struct lf_exchange x;
  struct lf_buf req, ans;
  int result;
  base(&x);
  lf_buf_init(&req, 0);
  lf_buf_init(&ans, 0);

  /* LF_JREAD_DEPTH_MAX levels in a value passed over are read */
  result = nested(&req, "{\"model\":\"m\",\"tools\":", LF_JREAD_DEPTH_MAX,
                  ",\"seed\":1}");
  result |= nested(&ans, "{\"model\":\"a\",\"x\":", LF_JREAD_DEPTH_MAX,
                   ",\"usage\":{\"total_tokens\":5}}");
  CHECK(result == LF_OK, "out of memory");
  x.request.s = req.data;
  x.request.n = req.len;
  x.answer.s = ans.data;
  x.answer.n = ans.len;
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"a\"",
           "modelParameters", "{\"seed\":1}",
           "usageDetails", "{\"total\":5}");

  /* the same as the prompt and the output: kept raw */
  result = nested(&req, "{\"messages\":", LF_JREAD_DEPTH_MAX, "}");
  CHECK(result == LF_OK, "out of memory");
  x.request.s = req.data;
  x.request.n = req.len;
  x.answer = text(NULL);
  RUN(&x);
  CHECK(out.gen.v[LF_F_INPUT] &&
        out.gen.n[LF_F_INPUT] == req.len - 13, "deep prompt not kept");

  /* one level more makes the body unreadable */
  result = nested(&req, "{\"model\":\"m\",\"tools\":",
                  LF_JREAD_DEPTH_MAX + 1, ",\"seed\":1}");
  result |= nested(&ans, "{\"model\":\"a\",\"x\":", LF_JREAD_DEPTH_MAX + 1,
                   ",\"usage\":{\"total_tokens\":5}}");
  run_bodies(__LINE__, &x, &req, &ans, result);

  /* far deeper, in every place a value is passed over: no crash */
  result = nested(&req, "{\"messages\":", DEEP, "}");
  result |= nested(&ans, "{\"usage\":{\"x\":", DEEP, "}}");
  run_bodies(__LINE__, &x, &req, &ans, result);
  result = nested(&req, "{\"temperature\":", DEEP, "}");
  result |= nested(&ans, "data: {\"choices\":[{\"delta\":", DEEP, "}]}");
  run_bodies(__LINE__, &x, &req, &ans, result);
  /* only openers, with nothing after them */
  lf_buf_reset(&req);
  result = lf_buf_adds(&req, "{\"messages\":");
  while(!result && req.len < DEEP)
    result = lf_buf_addc(&req, '[');
  CHECK(result == LF_OK, "out of memory");
  x.request.s = req.data;
  x.request.n = req.len;
  x.answer.s = req.data;
  x.answer.n = req.len;
  RUN(&x);
  WANT_GEN("name", GEN_NAME);
  lf_buf_free(&req);
  lf_buf_free(&ans);
}

static void test_escaped_keys(void)
{
  struct lf_exchange x;
  base(&x);
  bodies(&x,
    "{\"\\u006dodel\":\"m\",\"mess\\u0061ges\":[1],"
    "\"temp\\u0065rature\":0.5,\"\\u0000model\":\"x\","
    "\"model\\u0000\":\"y\",\"mo\\\"del\":\"z\",\"mode\":\"w\","
    "\"models\":\"v\",\"\":1,\"s\\u0065\\u0065\\u0064\":7,"
    "\"max_completion_tokens_and_then_some_more\\u0021\":3}",
    "{\"\\u0075sage\":{\"\\u0074otal_tokens\":4},\"ch\\u006fices\":"
    "[{\"m\\u0065ssage\":{\"a\":1}}]}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"m\"",
           "modelParameters", "{\"temperature\":0.5,\"seed\":7}",
           "usageDetails", "{\"total\":4}",
           "input", "[1]", "output", "{\"a\":1}");

  /* bad escapes in keys make the body unreadable */
  bodies(&x, "{\"mo\\qdel\":\"m\",\"model\":\"n\"}",
         "{\"\\u12\":1,\"model\":\"n\"}");
  RUN(&x);
  WANT_GEN("name", GEN_NAME);
}

static void test_given_options(void)
{
  struct lf_exchange x;
  base(&x);
  x.name = text("chat");
  x.gen_name = text("gpt call");
  x.tags = text("[\"prod\",\"nginx\"]");
  x.metadata = text("{\"tenant\":\"acme\",\"tier\":2}");
  RUN(&x);
  WANT_TRACE("name", "\"chat\"", "tags", "[\"prod\",\"nginx\"]",
             "metadata", "{\"route\":\"" ROUTE "\",\"status\":200,"
                         "\"tenant\":\"acme\",\"tier\":2}");
  WANT_GEN("name", "\"gpt call\"");

  /* the caller's route and status replace the exchange's */
  x.metadata = text("{\"route\":\"/mine\",\"tier\":1}");
  RUN(&x);
  WANT_TRACE("name", "\"chat\"", "tags", "[\"prod\",\"nginx\"]",
             "metadata", "{\"status\":200,\"route\":\"/mine\",\"tier\":1}");
  x.metadata = text("{\"status\":\"ok\",\"route\":null}");
  RUN(&x);
  WANT_TRACE("name", "\"chat\"", "tags", "[\"prod\",\"nginx\"]",
             "metadata", "{\"status\":\"ok\",\"route\":null}");
  x.metadata = text("{\"a\":{\"route\":1},\"status\":2}");
  RUN(&x);
  WANT_TRACE("name", "\"chat\"", "tags", "[\"prod\",\"nginx\"]",
             "metadata", "{\"route\":\"" ROUTE "\",\"a\":{\"route\":1},"
                         "\"status\":2}");

  /* empty ones */
  x.name = text("");
  x.gen_name = text("");
  x.tags = text("[]");
  x.metadata = text("{}");
  RUN(&x);
  WANT_TRACE("name", "\"\"", "tags", "[]", "metadata", META("200"));
  WANT_GEN("name", "\"\"");
}

static void test_times(void)
{
  struct lf_exchange x;
  base(&x);
  x.header_time = -1;
  RUN(&x);
  WANT_GEN("name", GEN_NAME);
  x.header_time = -0.5;
  RUN(&x);
  WANT_GEN("name", GEN_NAME);
  x.start = START + 0.5;
  x.header_time = 1.25;
  RUN(&x);
  WANT_GEN("name", GEN_NAME,
           "completionStartTime", "\"2023-11-14T22:13:21.750000Z\"");
  /* a time that cannot be written is left out */
  x.start = NAN;
  RUN(&x);
  WANT_GEN("name", GEN_NAME);
  x.start = 1e18;
  RUN(&x);
  WANT_GEN("name", GEN_NAME);
}

static void test_seconds(void)
{
  static const struct {
    const char *s;
    double v;
  } cases[] = {
    { "0.012, 0.004", 0.004 }, { "-", -1 }, { "", -1 }, { "0.5", 0.5 },
    { "12", 12 }, { "0.012, -", -1 }, { "1.000 : 0.250", 0.25 },
    { "0.100, ", 0.1 }, { "1..2", -1 }, { "abc", -1 }, { ".5", 0.5 },
    { "5.", 5 }, { ".", -1 }, { "0.000", 0 }, { " 3.5", 3.5 },
    { "1, 2, 3", 3 }, { "-, 0.7", 0.7 }
  };
  size_t i;
  for(i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    double v = lf_exchange_seconds(cases[i].s, strlen(cases[i].s));
    CHECK(fabs(v - cases[i].v) < 1e-12, "seconds of \"%s\": %g, not %g",
          cases[i].s, v, cases[i].v);
  }
  /* only n bytes are read */
  CHECK(fabs(lf_exchange_seconds("0.25, 0.75", 4) - 0.25) < 1e-12,
        "length ignored");
  CHECK(lf_exchange_seconds(NULL, 0) == -1, "no text");
}

/* ---- reuse ---- */

/* The exchanges of the reuse test, one per index below REUSE_CASES. */
#define REUSE_CASES 8

static void reuse_case(struct lf_exchange *x, int i, const char *big)
{
  base(x);
  switch(i) {
  case 0:
    bodies(x, "{\"model\":\"a\",\"messages\":[{\"content\":\"hi\"}],"
           "\"temperature\":1}",
           "{\"choices\":[{\"message\":{\"content\":\"yo\"}}],"
           "\"usage\":{\"total_tokens\":3}}");
    x->user = text("u");
    break;
  case 1:
    x->status = 500;
    bodies(x, NULL, "{\"error\":{\"message\":\"first failure\"}}");
    break;
  case 2:
    /* no message of its own: none from the call before */
    x->status = 500;
    bodies(x, "{\"model\":\"b\"}", "{\"error\":{\"code\":5}}");
    break;
  case 3:
    bodies(x, "{\"stream\":true}", big);
    x->truncated = 1;
    break;
  case 4:
    x->status = 503;
    bodies(x, "not json", "{\"error\":{\"message\":7}}");
    break;
  case 5:
    bodies(x, "{\"messages\":[\"\xFF\"]}", "{\"output\":[1]}");
    x->header_time = 0.5;
    break;
  case 6:
    bodies(x, NULL,
           "data: {\"model\":\"s\",\"choices\":[{\"delta\":"
           "{\"content\":\"x\"}}]}\n");
    x->name = text("named");
    x->metadata = text("{\"k\":1}");
    break;
  default:
    x->status = 429;
    bodies(x, NULL, "{\"error\":{}}");
    x->capture_io = 0;
    break;
  }
}

/* Compares the fields of out with those of a fresh output. */
static int same_fields(const struct lf_fields *a, const struct lf_fields *b)
{
  int i;
  for(i = 0; i < LF_F_COUNT; i++) {
    if(!a->v[i] != !b->v[i])
      return 0;
    if(a->v[i] && (a->n[i] != b->n[i] || memcmp(a->v[i], b->v[i], a->n[i])))
      return 0;
  }
  return 1;
}

/* Builds a stream whose answer text is BIG_TEXT bytes. */
static char *big_stream(void)
{
  static const char head[] =
    "data: {\"choices\":[{\"delta\":{\"content\":\"";
  static const char tail[] = "\"}}]}\n";
  size_t n = sizeof(head) - 1 + BIG_TEXT + sizeof(tail);
  char *s = malloc(n);
  if(!s)
    return NULL;
  memcpy(s, head, sizeof(head) - 1);
  memset(s + sizeof(head) - 1, 'b', BIG_TEXT);
  memcpy(s + sizeof(head) - 1 + BIG_TEXT, tail, sizeof(tail));
  return s;
}

static void test_reuse(void)
{
  struct lf_exchange x;
  struct lf_exchange_out fresh[REUSE_CASES];
  struct lf_exchange_work *work = NULL;
  const char *data = NULL;
  char *big = big_stream();
  int i, same = 1, kept = 1, result;
  CHECK(big != NULL, "out of memory");
  if(!big)
    return;
  for(i = 0; i < REUSE_CASES; i++) {
    reuse_case(&x, i, big);
    lf_exchange_out_init(&fresh[i]);
    result = lf_exchange_fields(&x, &fresh[i]);
    CHECK(result == LF_OK, "fresh case %d gave %d", i, result);
  }
  CHECK(fresh[2].gen.v[LF_F_STATUS_MESSAGE] &&
        !memcmp(fresh[2].gen.v[LF_F_STATUS_MESSAGE], "\"HTTP 500\"", 10),
        "case 2 has a message of its own");
  lf_exchange_out_free(&out);
  for(i = 0; i < REUSE_CASES; i++) {  /* a first round grows it all */
    reuse_case(&x, i, big);
    RUN(&x);
  }
  for(i = 0; i < REUSE_CALLS; i++) {
    int c = (int)((unsigned)i * 5u % REUSE_CASES);
    reuse_case(&x, c, big);
    if(lf_exchange_fields(&x, &out)) {
      CHECK(0, "call %d failed", i);
      break;
    }
    if(!same_fields(&out.trace, &fresh[c].trace) ||
       !same_fields(&out.gen, &fresh[c].gen) ||
       out.left_out != fresh[c].left_out) {
      if(same)
        CHECK(0, "call %d (case %d) differs from a fresh output", i, c);
      same = 0;
    }
    if(i == 0) {
      work = out.work;
      data = out.buf.data;
    } else if(out.work != work || out.buf.data != data) {
      kept = 0;
    }
  }
  CHECK(same, "every call gave what a fresh output gives");
  CHECK(kept && work, "the buffers were kept from call to call");

  /* a case after the stream too big to keep, checked fully */
  reuse_case(&x, 2, big);
  RUN(&x);
  WANT_GEN("name", GEN_NAME, "model", "\"b\"", "level", "\"ERROR\"",
           "statusMessage", "\"HTTP 500\"");

  lf_exchange_out_free(&out);
  CHECK(!out.work && !out.buf.data && !out.buf.len && !out.left_out,
        "lf_exchange_out_free left something");
  for(i = 0; i < LF_F_COUNT; i++)
    CHECK(!out.trace.v[i] && !out.gen.v[i], "field %d set after free", i);
  lf_exchange_out_free(&out);         /* twice is harmless */
  reuse_case(&x, 0, big);
  RUN(&x);                            /* and it can be used again */
  WANT_GEN("name", GEN_NAME, "model", "\"a\"",
           "modelParameters", "{\"temperature\":1}",
           "usageDetails", "{\"total\":3}",
           "input", "[{\"content\":\"hi\"}]",
           "output", "{\"content\":\"yo\"}");
  for(i = 0; i < REUSE_CASES; i++)
    lf_exchange_out_free(&fresh[i]);
  free(big);
}

#define TEST(fn) do { \
    int before = failed; \
    fn(); \
    printf("%s %s\n", failed == before ? "ok  " : "FAIL", #fn); \
  } while(0)

int main(void)
{
  lf_exchange_out_init(&out);
  TEST(test_chat_one_choice);
  TEST(test_choices);
  TEST(test_responses_api);
  TEST(test_completion);
  TEST(test_stream);
  TEST(test_stream_cut);
  TEST(test_errors);
  TEST(test_error_cut);
  TEST(test_unreadable);
  TEST(test_mended);
  TEST(test_left_out);
  TEST(test_model_parameters);
  TEST(test_parameter_bounds);
  TEST(test_usage);
  TEST(test_duplicate_keys);
  TEST(test_deep);
  TEST(test_escaped_keys);
  TEST(test_given_options);
  TEST(test_times);
  TEST(test_seconds);
  TEST(test_reuse);
  lf_exchange_out_free(&out);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
