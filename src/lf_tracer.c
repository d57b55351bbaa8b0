/*
** lf_tracer.c: the tracing side of langfuse.core, the C half of the
** builders in lua/langfuse/tracing.lua.
**
**   core.new_tracer(cfg) -> tracer    (cfg resolved by the Lua layer)
**   core.time() -> epoch seconds, a float
**   core.clock([which]) -> seconds of a monotonic or thread CPU clock
**   core.tracing_kinds = { span = 0, generation = 1, event = 2,
**                          trace = 3 }
**   core.tracer_methods  the methods below, for callers that cache them
**
** A tracer owns the background sender (lf_sender.h), the scratch
** buffers of the calls below, and the id generator.  Its methods:
**
**   open_trace(opts)      -> body, id, start, root, rec, ctx, version
**   open(kind, opts)      -> body, id, start
**   event(trace_id, parent_id, opts, ctx, version, rec) -> id
**   update(kind, opts)    -> body
**   trace_ctx(body)       -> ctx, version
**   finish(kind, trace_id, span_id, parent_id, start, body, opts, ctx,
**          version, rec)  -> true
**   late(kind, trace_id, span_id, opts, rec) -> true
**   exchange(id, method, route, status, start, finish, header_time,
**            upstream, upstream_status, user, session, request, answer,
**            truncated, capture_io, opts) -> true [, note]
**   score(client, opts, trace_id, observation_id, rec) -> id
**   flush(timeout), shutdown(timeout) -> ok
**   stats() -> table      drain() -> failures | nil
**
** A mistake in the options (an unknown name, a wrong type, a value the
** server's schema refuses) returns nil and a message naming the option
** in snake_case; the Lua layer raises it at the caller.  Every other
** method may return one more value: the failures drained from the
** sender, an array of { route, kind, status, attempts, retryable, id,
** message }, when the tracer reports after each record (cfg.report) and
** there are any.
**
** The options of each call are validated once, by lf_validate_options
** with the schema of the matching ingestion event (option names are
** checked and mapped to body fields in the same walk of the caller's
** table), and kept as the JSON text it wrote ("body"); finish joins
** the bodies of creation, updates and finish with lf_fields_read and
** writes the span or event from them.  A body is a plain Lua string kept
** in the builder's table, so an observation holds no C memory and needs
** no finaliser.
**
** Ids come from a xoshiro256** generator seeded from getrandom(), per
** tracer, and seeded again in a child after fork(), so two processes
** never share a sequence.
*/
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lf_compat.h"
#include "lf_cfg.h"
#include "lf_core.h"
#include "lf_durable.h"
#include "lf_encode.h"
#include "lf_exchange.h"
#include "lf_json.h"
#include "lf_sender.h"
#include "lf_sha256.h"
#include "lf_span.h"
#include "lf_time.h"
#include "lf_uuid.h"

/* Registry name of the tracer's metatable. */
#define TRACER_MT "langfuse.core.tracer"

/* Failures copied from the sender at a time (each is ~400 bytes of C
   stack). */
#define DRAIN_CHUNK 32
/* Failures found on the caller's thread kept until drained. */
#define LOCAL_FAILURES 16
/* Scratch buffers larger than this are freed after a call, so a single
   huge span does not pin its memory. */
#define SCRATCH_KEEP (256 * 1024)
/* Seconds flush and shutdown wait when the caller gives no timeout. */
#define DEFAULT_WAIT 10.0

enum protocol {
  PROTO_OTLP,
  PROTO_INGESTION
};

/* What the Lua layer records: the observation types, then the trace. */
enum kind {
  K_SPAN = LF_OBS_SPAN,
  K_GENERATION = LF_OBS_GENERATION,
  K_EVENT = LF_OBS_EVENT,
  K_TRACE
};

/* Where options are given; each has its set of allowed options. */
enum builder {
  B_TRACE,
  B_TRACE_UPDATE,
  B_TRACE_FINISH,
  B_SPAN,
  B_SPAN_UPDATE,           /* update and finish */
  B_GENERATION,
  B_GENERATION_UPDATE,
  B_EVENT,
  B_SCORE,                 /* trace:score, observation:score */
  B_CLIENT_SCORE,
  B_COUNT
};

/* The ingestion event whose body schema checks each builder's options. */
static const char *const schema_types[B_COUNT] = {
  "trace-create", "trace-create", "trace-create",
  "span-create", "span-create", "generation-create", "generation-create",
  "event-create", "score-create", "score-create"
};

/* Sets of builders, as bits: where an option is allowed. */
#define W(b) (1u << (b))
#define W_TRACE (W(B_TRACE) | W(B_TRACE_UPDATE) | W(B_TRACE_FINISH))
#define W_OBS (W(B_SPAN) | W(B_SPAN_UPDATE) | W(B_GENERATION) | \
               W(B_GENERATION_UPDATE) | W(B_EVENT))
#define W_GEN (W(B_GENERATION) | W(B_GENERATION_UPDATE))
#define W_SCORE (W(B_SCORE) | W(B_CLIENT_SCORE))
#define W_IDS (W(B_TRACE) | W(B_SPAN) | W(B_GENERATION) | W(B_EVENT))

/* One option: its name, the body field it fills, where it is allowed,
   and where it is handled here instead of by the schema (ids, and the
   end time of a trace, which trace-create does not have). */
struct option {
  const char *snake;
  const char *camel;
  unsigned where;
  unsigned special;
};

enum { OPT_ID, OPT_END_TIME };

static const struct option options[] = {
  { "id", "id", W_IDS | W_SCORE, W_IDS },
  { "end_time", "endTime", W(B_SPAN_UPDATE) | W(B_GENERATION_UPDATE) |
    W(B_TRACE_FINISH), W(B_TRACE_FINISH) },
  { "name", "name", W_TRACE | W_OBS | W_SCORE, 0 },
  { "user_id", "userId", W_TRACE, 0 },
  { "session_id", "sessionId", W_TRACE | W(B_CLIENT_SCORE), 0 },
  { "input", "input", W_TRACE | W_OBS, 0 },
  { "output", "output", W_TRACE | W_OBS, 0 },
  { "metadata", "metadata", W_TRACE | W_OBS | W_SCORE, 0 },
  { "tags", "tags", W_TRACE, 0 },
  { "release", "release", W_TRACE, 0 },
  { "version", "version", W_TRACE | W_OBS, 0 },
  { "environment", "environment", W_TRACE, 0 },
  { "public", "public", W_TRACE, 0 },
  { "level", "level", W_OBS, 0 },
  { "status_message", "statusMessage", W_OBS, 0 },
  { "start_time", "startTime", W_OBS, 0 },
  { "completion_start_time", "completionStartTime", W_GEN, 0 },
  { "model", "model", W_GEN, 0 },
  { "model_parameters", "modelParameters", W_GEN, 0 },
  { "usage_details", "usageDetails", W_GEN, 0 },
  { "cost_details", "costDetails", W_GEN, 0 },
  { "prompt_name", "promptName", W_GEN, 0 },
  { "prompt_version", "promptVersion", W_GEN, 0 },
  { "value", "value", W_SCORE, 0 },
  { "data_type", "dataType", W_SCORE, 0 },
  { "comment", "comment", W_SCORE, 0 },
  { "observation_id", "observationId", W_SCORE, 0 },
  { "config_id", "configId", W_SCORE, 0 },
  { "trace_id", "traceId", W(B_CLIENT_SCORE), 0 },
  { "dataset_run_id", "datasetRunId", W(B_CLIENT_SCORE), 0 }
};

#define OPTION_COUNT (sizeof(options) / sizeof(options[0]))

/* What the sender thread needs to write an exchange queued raw: its own
   buffers (the caller's thread uses the tracer's), and the tracer's
   defaults, which never change once it is made. */
struct exbuild {
  struct lf_exchange_out ex;
  struct lf_buf ctx;
  const char *env_json;
  const char *release_json;
};

struct lf_tracer {
  struct lf_sender *sender;   /* owned; NULL when tracing is off */
  int deferred;               /* exchanges are written by the sender */
  struct exbuild xb;          /* the sender thread's, when deferred */
  int protocol;               /* enum protocol */
  int report;                 /* drain failures after each record */
  double sample_rate;
  struct lf_encode_opts encode;
  char *env;                  /* default environment, owned, or NULL */
  char *env_json;             /* the same as a JSON string */
  char *release_json;         /* default release, likewise */
  struct lf_buf body;         /* the options JSON of the current call */
  struct lf_buf out;          /* the span or event being written */
  struct lf_buf ctx;          /* trace-wide attributes of a root span */
  struct lf_exchange_out ex;  /* the fields of an exchange */
  struct lf_problems probs;
  uint64_t rng[4];            /* xoshiro256** state */
  unsigned long rng_gen;      /* fork generation of the seed */
  struct lf_failure local[LOCAL_FAILURES]; /* refused on this thread */
  size_t local_n;
  uint64_t local_drops;       /* events refused on this thread */
  uint64_t sampled_out;       /* traces the sampler left out */
};

/* What take_options found besides the schema fields. */
struct taken {
  int camel;                  /* stack index of the options or body; 0 */
  const char *id;             /* the id option, checked, or NULL */
  size_t idlen;
  int end_time;               /* a trace's end_time was given */
};

static pthread_once_t tracer_once = PTHREAD_ONCE_INIT;
/* The lengths of the option names, set once by tracer_init. */
static size_t snake_len[OPTION_COUNT], camel_len[OPTION_COUNT];
static unsigned long fork_gen;                  /* atomic */

static const char hex_digits[] = "0123456789abcdef";


/* {================================================================
** Option names, ids and time
** ================================================================= */

static void on_fork_child(void)
{
  __atomic_add_fetch(&fork_gen, 1, __ATOMIC_RELEASE);
}

static void tracer_init(void)
{
  size_t i;
  (void)pthread_atfork(NULL, NULL, on_fork_child);
  for(i = 0; i < OPTION_COUNT; i++) {
    snake_len[i] = strlen(options[i].snake);
    camel_len[i] = strlen(options[i].camel);
  }
}

/* The option whose camelCase field is s (n bytes), or NULL. */
static const struct option *option_by_field(const char *s, size_t n)
{
  size_t i;
  for(i = 0; i < OPTION_COUNT; i++) {
    if(!strncmp(options[i].camel, s, n) && options[i].camel[n] == '\0')
      return &options[i];
  }
  return NULL;
}

static uint64_t rotl(uint64_t x, int k)
{
  return (x << k) | (x >> (64 - k));
}

/* splitmix64, to spread a weak seed over the state. */
static uint64_t splitmix(uint64_t *x)
{
  uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

/* Seeds the generator from the kernel, or from the clock, the pid and
   an address when the kernel has no randomness to give. */
static void rng_seed(struct lf_tracer *t)
{
  t->rng_gen = __atomic_load_n(&fork_gen, __ATOMIC_ACQUIRE);
  if(lf_random(t->rng, sizeof(t->rng))) {
    struct timespec ts;
    uint64_t x;
    int i;
    clock_gettime(CLOCK_REALTIME, &ts);
    x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^
        ((uint64_t)getpid() << 40) ^ (uint64_t)(uintptr_t)t;
    for(i = 0; i < 4; i++)
      t->rng[i] = splitmix(&x);
  }
  if(!(t->rng[0] | t->rng[1] | t->rng[2] | t->rng[3]))
    t->rng[0] = 1;
}

static uint64_t rng_next(struct lf_tracer *t)
{
  uint64_t *s = t->rng, r, x;
  if(t->rng_gen != __atomic_load_n(&fork_gen, __ATOMIC_ACQUIRE))
    rng_seed(t);
  r = rotl(s[1] * 5, 7) * 9;
  x = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= x;
  s[3] = rotl(s[3], 45);
  return r;
}

/* Writes 2 * bytes random lowercase hex characters and a NUL (bytes is
   8 or 16); never all zeros. */
static void hex_id(struct lf_tracer *t, char *out, int bytes)
{
  uint64_t w[2];
  int i;
  do {
    w[0] = rng_next(t);
    w[1] = bytes > 8 ? rng_next(t) : 0;
  } while(!w[0] && !w[1]);
  for(i = 0; i < bytes; i++) {
    unsigned b = (unsigned)(w[i / 8] >> (8 * (i % 8))) & 0xff;
    out[2 * i] = hex_digits[b >> 4];
    out[2 * i + 1] = hex_digits[b & 15];
  }
  out[2 * bytes] = '\0';
}

/* Writes a version 4 UUID and a NUL (LF_UUID_LEN + 1 bytes). */
static void uuid4(struct lf_tracer *t, char *out)
{
  unsigned char b[16];
  uint64_t w[2];
  int i, k = 0;
  w[0] = rng_next(t);
  w[1] = rng_next(t);
  for(i = 0; i < 16; i++)
    b[i] = (unsigned char)(w[i / 8] >> (8 * (i % 8)));
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
  for(i = 0; i < 16; i++) {
    if(i == 4 || i == 6 || i == 8 || i == 10)
      out[k++] = '-';
    out[k++] = hex_digits[b[i] >> 4];
    out[k++] = hex_digits[b[i] & 15];
  }
  out[k] = '\0';
}

static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Whether s (n bytes) is want lowercase hex characters, not all 0. */
static int is_hex_id(const char *s, size_t n, size_t want)
{
  size_t i;
  int nonzero = 0;
  if(n != want)
    return 0;
  for(i = 0; i < n; i++) {
    char c = s[i];
    if(!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
      return 0;
    nonzero |= c != '0';
  }
  return nonzero;
}

/* }================================================================ */


/* {================================================================
** Options
** ================================================================= */

/* Pushes an option error message and returns 1, for a caller to return
   with fail(). */
static int opt_error(lua_State *L, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);                 /* message */
  va_end(ap);
  return 1;
}

/* Returns nil and the message on top of the stack. */
static int fail(lua_State *L)
{
  lua_pushnil(L);                               /* message nil */
  lua_insert(L, -2);                            /* nil message */
  return 2;
}

static int unknown_option(lua_State *L, const char *k, size_t n, int b)
{
  const struct option *op = option_by_field(k, n);
  if(op && (op->where & W(b)) && strcmp(op->snake, op->camel))
    return opt_error(L, "unknown option \"%s\" (did you mean \"%s\"?)",
                     k, op->snake);
  return opt_error(L, "unknown option \"%s\"", k);
}

/* Notes an option taken here rather than by the schema (value at v) in
   tk.  Returns NULL, or what was given instead of a valid id. */
static const char *special_got(lua_State *L, const struct option *op,
                               int b, int v, struct taken *tk)
{
  size_t n, want = b == B_TRACE ? 32 : 16;
  const char *s;
  if(op != &options[OPT_ID]) {
    tk->end_time = 1;
    return NULL;
  }
  s = lua_type(L, v) == LUA_TSTRING ? lua_tolstring(L, v, &n) : NULL;
  if(!s || !is_hex_id(s, n, want))
    return s ? "another string" : luaL_typename(L, v);
  tk->id = s;                     /* the options table keeps it alive */
  tk->idlen = n;
  return NULL;
}

/* The message of a refused id option (got: what special_got said). */
static int id_error(lua_State *L, int b, const char *got)
{
  return opt_error(L, "option \"id\": expected %d lowercase hex "
                   "characters, not all zeros, got %s",
                   b == B_TRACE ? 32 : 16, got);
}

/* Handles an option taken here rather than by the schema (value on
   top).  Returns 0, or 1 with a message pushed. */
static int take_special(lua_State *L, const struct option *op, int b,
                        struct taken *tk)
{
  const char *got = special_got(L, op, b, lua_gettop(L), tk);
  return got ? id_error(L, b, got) : 0;
}

/* The option named s (n bytes), or NULL. */
static const struct option *option_by_name(const char *s, size_t n)
{
  size_t i;
  for(i = 0; i < OPTION_COUNT; i++) {
    const char *name = options[i].snake;
    if(snake_len[i] == n && name[0] == s[0] && !memcmp(name, s, n))
      return &options[i];
  }
  return NULL;
}

/* The methods share two upvalues: the option numbers by name (a Lua
   lookup is a pointer compare, no hashing), and the body field names by
   option number. */
#define UP_NUMBERS lua_upvalueindex(1)
#define UP_FIELDS lua_upvalueindex(2)

/*
** Copies the options table at idx into a new table keyed by the body
** fields (pushed, its index in tk->camel), checking every name against
** builder b.  No options (nil) pushes nothing and leaves tk->camel 0.
** Returns 0, or 1 with an error message pushed.
*/
static int take_options(lua_State *L, int b, int idx, struct taken *tk)
{
  tk->camel = 0;
  tk->id = NULL;
  tk->idlen = 0;
  tk->end_time = 0;
  if(lua_isnoneornil(L, idx))
    return 0;
  if(lua_type(L, idx) != LUA_TTABLE)
    return opt_error(L, "expected a table of options, got %s",
                     luaL_typename(L, idx));
  lua_createtable(L, 0, 8);                     /* body */
  tk->camel = lua_gettop(L);
  lua_pushnil(L);                               /* body nil */
  while(lua_next(L, idx)) {                     /* body key value */
    const struct option *op;
    int i;
    if(lua_type(L, -2) != LUA_TSTRING)
      return opt_error(L, "option names must be strings, got a %s",
                       luaL_typename(L, -2));
    lua_pushvalue(L, -2);                       /* body key value key */
    lua_rawget(L, UP_NUMBERS);                  /* body key value i */
    i = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);                              /* body key value */
    op = i ? &options[i - 1] : NULL;
    if(!op || !(op->where & W(b))) {
      size_t n;
      const char *k = lua_tolstring(L, -2, &n);
      return unknown_option(L, k, n, b);
    }
    if(op->special & W(b)) {
      if(take_special(L, op, b, tk))
        return 1;
      lua_pop(L, 1);                            /* body key */
    } else {
      lua_rawgeti(L, UP_FIELDS, i);             /* body key value field */
      lua_insert(L, -2);                        /* body key field value */
      lua_rawset(L, tk->camel);                 /* body key */
    }
  }
  return 0;
}

/* The state of option_field during one lf_validate_options. */
struct naming {
  int b;                      /* the builder */
  struct taken *tk;
  const char *why;            /* what stopped the walk, or NULL */
  const char *key;            /* the option that did (Lua-owned) */
  size_t klen;
};

/* Why option_field stops: a name that is not a string, an option that
   is not allowed, an id that is not one; why holds the type got. */
static const char WHY_KEY[] = "key", WHY_UNKNOWN[] = "unknown";

/*
** The lf_rename field of read_options: checks the option name at kidx
** against builder nm->b, as take_options does, and gives its body
** field; an option taken here (take_special) stays out of the body.
*/
static int option_field(void *ud, lua_State *L, int kidx, int vidx,
                        const char **name, size_t *len)
{
  struct naming *nm = ud;
  const struct option *op;
  const char *k, *got;
  size_t n;
  if(lua_type(L, kidx) != LUA_TSTRING) {
    nm->why = WHY_KEY;
    nm->key = luaL_typename(L, kidx);
    return -1;
  }
  k = lua_tolstring(L, kidx, &n);
  op = option_by_name(k, n);
  if(!op || !(op->where & W(nm->b))) {
    nm->why = WHY_UNKNOWN;
    nm->key = k;
    nm->klen = n;
    return -1;
  }
  if(op->special & W(nm->b)) {
    got = special_got(L, op, nm->b, vidx, nm->tk);
    if(got) {
      nm->why = got;
      return -1;
    }
    return 1;
  }
  *name = op->camel;
  *len = camel_len[op - options];
  return 0;
}

/* Pushes the message of what stopped option_field. */
static int naming_error(lua_State *L, const struct naming *nm)
{
  if(nm->why == WHY_KEY)
    return opt_error(L, "option names must be strings, got a %s",
                     nm->key);
  if(nm->why == WHY_UNKNOWN)
    return unknown_option(L, nm->key, nm->klen, nm->b);
  return id_error(L, nm->b, nm->why);
}

/* Pushes the message of the first problem, its path's first field
   named as the option. */
static int problem_error(lua_State *L, const struct lf_problems *p)
{
  const struct lf_problem *q = &p->v[0];
  size_t n = strcspn(q->path, ".[");
  const struct option *op = n ? option_by_field(q->path, n) : NULL;
  if(op)
    lua_pushfstring(L, "option \"%s%s\": %s", op->snake, q->path + n,
                    q->message);                /* message */
  else if(q->path[0])
    lua_pushfstring(L, "option \"%s\": %s", q->path, q->message);
  else
    lua_pushstring(L, q->message);
  if(p->n > 1) {
    lua_pushfstring(L, " (and %d more problems)", (int)p->n - 1);
    lua_concat(L, 2);                           /* message */
  }
  return 1;
}

/*
** Validates the body table at camel with the schema of builder b and
** leaves its JSON in t->body: with nm, camel is the options table
** itself, read through option_field (partial: for builders); else a
** whole body keyed by the body fields.  Returns 0, or 1 with a message
** pushed.  Raises only when out of memory (the buffers belong to the
** userdata).
*/
static int check_body(lua_State *L, struct lf_tracer *t, int b, int camel,
                      struct naming *nm)
{
  int result;
  lf_buf_reset(&t->body);
  if(t->probs.n)
    lf_problems_free(&t->probs);
  if(nm) {
    struct lf_rename rn;
    rn.field = option_field;
    rn.ud = nm;
    result = lf_validate_options(L, camel, schema_types[b], &t->encode,
                                 LF_BODY_PARTIAL, &rn, &t->body,
                                 &t->probs);
    if(nm->why)
      return naming_error(L, nm);
  } else {
    result = lf_validate_body(L, camel, schema_types[b], &t->encode, 0,
                              &t->body, &t->probs);
  }
  if(result == LF_ENOMEM)
    return luaL_error(L, "langfuse: out of memory");
  if(result)
    return problem_error(L, &t->probs);
  return 0;
}

/* Checks the options at idx for builder b, names and values in one walk
   of the options table: their JSON is left in t->body (empty for none).
   Returns 0, or 1 with a message. */
static int read_options(lua_State *L, struct lf_tracer *t, int b, int idx,
                        struct taken *tk)
{
  struct naming nm;
  lf_buf_reset(&t->body);
  tk->camel = 0;
  tk->id = NULL;
  tk->idlen = 0;
  tk->end_time = 0;
  if(lua_isnoneornil(L, idx))
    return 0;
  if(lua_type(L, idx) != LUA_TTABLE)
    return opt_error(L, "expected a table of options, got %s",
                     luaL_typename(L, idx));
  tk->camel = idx;
  nm.b = b;
  nm.tk = tk;
  nm.why = NULL;
  return check_body(L, t, b, idx, &nm);
}

/* The end_time option of a trace finish (opts at idx), checked by the
   span schema's rule and read as epoch seconds into *end. */
static int trace_end_time(lua_State *L, struct lf_tracer *t, int idx,
                          double *end)
{
  struct lf_fields f;
  int64_t ns;
  int result;
  lua_createtable(L, 0, 1);                     /* tmp */
  lua_getfield(L, idx, "end_time");             /* tmp value */
  lua_setfield(L, -2, "endTime");               /* tmp */
  lf_buf_reset(&t->out);
  if(t->probs.n)
    lf_problems_free(&t->probs);
  result = lf_validate_body(L, -1, "span-create", &t->encode,
                            LF_BODY_PARTIAL, &t->out, &t->probs);
  if(result == LF_ENOMEM)
    return luaL_error(L, "langfuse: out of memory");
  if(result)
    return problem_error(L, &t->probs);
  lf_fields_init(&f);
  if(lf_fields_read(&f, t->out.data, t->out.len) ||
     !f.v[LF_F_END_TIME] || f.v[LF_F_END_TIME][0] != '"' ||
     lf_iso_to_ns(f.v[LF_F_END_TIME] + 1, f.n[LF_F_END_TIME] - 2, &ns))
    return opt_error(L, "option \"end_time\": cannot be written as "
                     "nanoseconds since 1970 (years 1970 to 2262)");
  *end = (double)ns / 1e9;
  lua_pop(L, 1);
  return 0;
}

/* }================================================================ */


/* {================================================================
** Failures and sending
** ================================================================= */

/* Records a failure found on the caller's thread (the sender never saw
   the event). */
static void local_failure(struct lf_tracer *t, int route, int kind,
                          const char *id, size_t idlen, const char *msg)
{
  struct lf_failure *f;
  t->local_drops++;
  if(t->local_n == LOCAL_FAILURES)
    return;
  f = &t->local[t->local_n++];
  memset(f, 0, sizeof(*f));
  f->route = route;
  f->kind = kind;
  if(idlen >= sizeof(f->id))
    idlen = sizeof(f->id) - 1;
  memcpy(f->id, id, idlen);
  snprintf(f->message, sizeof(f->message), "%s", msg);
}

static void push_failure(lua_State *L, const struct lf_failure *f)
{
  lua_createtable(L, 0, 7);                     /* list entry */
  lua_pushstring(L, f->route == LF_ROUTE_OTLP ? "otlp" : "ingestion");
  lua_setfield(L, -2, "route");
  lua_pushstring(L, lf_sender_kind_name(f->kind));
  lua_setfield(L, -2, "kind");
  if(f->status) {
    lua_pushinteger(L, f->status);
    lua_setfield(L, -2, "status");
  }
  lua_pushinteger(L, f->attempts);
  lua_setfield(L, -2, "attempts");
  lua_pushboolean(L, f->retryable);
  lua_setfield(L, -2, "retryable");
  if(f->spooled) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "spooled");
  }
  lua_pushstring(L, f->id);
  lua_setfield(L, -2, "id");
  lua_pushstring(L, f->message);
  lua_setfield(L, -2, "message");
}

/* Pushes the array of failures waiting (those found here first, then
   the sender's) and returns 1, or pushes nothing and returns 0. */
static int push_failures(lua_State *L, struct lf_tracer *t)
{
  struct lf_failure f[DRAIN_CHUNK];
  size_t n = 0, i, k = 0;
  if(t->sender)
    n = lf_sender_drain_failures(t->sender, f, DRAIN_CHUNK);
  if(!n && !t->local_n)
    return 0;
  lua_createtable(L, (int)(n + t->local_n), 0); /* list */
  for(i = 0; i < t->local_n; i++) {
    push_failure(L, &t->local[i]);
    lua_rawseti(L, -2, (int)++k);               /* list */
  }
  t->local_n = 0;
  while(n) {
    for(i = 0; i < n; i++) {
      push_failure(L, &f[i]);
      lua_rawseti(L, -2, (int)++k);
    }
    n = n == DRAIN_CHUNK ?
        lf_sender_drain_failures(t->sender, f, DRAIN_CHUNK) : 0;
  }
  return 1;
}

/* Frees a scratch buffer that grew past SCRATCH_KEEP. */
static void trim(struct lf_buf *b)
{
  if(b->cap > SCRATCH_KEEP)
    lf_buf_free(b);
}

/* Hands t->out to the sender on route under id.  An event larger than
   max_event_bytes is refused here, as batch upload refuses it. */
static void send_out(struct lf_tracer *t, int route, const char *id,
                     size_t idlen)
{
  if(t->out.len > t->encode.max_event_bytes) {
    char msg[LF_SENDER_MESSAGE_MAX];
    snprintf(msg, sizeof(msg), "event of %zu bytes exceeds "
             "max_event_bytes (%zu); not sent", t->out.len,
             t->encode.max_event_bytes);
    local_failure(t, route, LF_KIND_TOO_LARGE, id, idlen, msg);
  } else {
    (void)lf_sender_enqueue(t->sender, route, t->out.data, t->out.len,
                            id, idlen);
  }
  trim(&t->out);
  trim(&t->body);
}

/* Returns n results plus the failures when the tracer reports them. */
static int done(lua_State *L, struct lf_tracer *t, int n)
{
  if(t->report && push_failures(L, t))
    n++;
  return n;
}

/* Maps the sender's refusal of a written span to an option error: a
   time that cannot be sent. */
static int time_error(lua_State *L, int why)
{
  return opt_error(L, "option \"%s\": cannot be sent as nanoseconds "
                   "since 1970 (years 1970 to 2262)",
                   why == LF_SPAN_BAD_END ? "end_time" : "start_time");
}

/* }================================================================ */


/* {================================================================
** Methods
** ================================================================= */

static struct lf_tracer *check_tracer(lua_State *L)
{
  return luaL_checkudata(L, 1, TRACER_MT);
}

/* The trace context of the trace fields f: pushes ctx and version. */
static void push_ctx(lua_State *L, struct lf_tracer *t,
                     const struct lf_fields *f)
{
  lf_buf_reset(&t->ctx);
  if(t->protocol == PROTO_OTLP) {
    if(lf_span_trace_ctx(&t->ctx, f, t->env_json, t->release_json))
      luaL_error(L, "langfuse: out of memory");
    lua_pushlstring(L, t->ctx.data ? t->ctx.data : "", t->ctx.len);
    if(f->v[LF_F_VERSION] && f->v[LF_F_VERSION][0] == '"')
      lua_pushlstring(L, f->v[LF_F_VERSION], f->n[LF_F_VERSION]);
    else
      lua_pushnil(L);
    return;
  }
  if(f->v[LF_F_ENVIRONMENT]) {
    lua_pushliteral(L, "\"environment\":");
    lua_pushlstring(L, f->v[LF_F_ENVIRONMENT], f->n[LF_F_ENVIRONMENT]);
    lua_concat(L, 2);                           /* ctx */
  } else if(t->env_json) {
    lua_pushfstring(L, "\"environment\":%s", t->env_json);
  } else {
    lua_pushliteral(L, "");
  }
  lua_pushnil(L);                               /* ctx nil */
}

/* tracer:open_trace(opts) -> body, id, start, root, rec, ctx, version */
static int t_open_trace(lua_State *L)
{
  struct lf_tracer *t = check_tracer(L);
  struct lf_fields f;
  struct taken tk;
  char id[LF_HEX_ID_MAX + 1], root[LF_HEX_ID_MAX + 1];
  int rec;
  if(read_options(L, t, B_TRACE, 2, &tk))
    return fail(L);
  if(tk.id) {
    memcpy(id, tk.id, 32);
    id[32] = '\0';
  } else {
    hex_id(t, id, 16);
  }
  rec = t->sender != NULL;
  if(rec && !lf_sample_keep(id, 32, t->sample_rate)) {
    rec = 0;
    t->sampled_out++;
  }
  lua_pushlstring(L, t->body.data ? t->body.data : "", t->body.len);
  lua_pushlstring(L, id, 32);
  lua_pushnumber(L, now());
  if(t->protocol == PROTO_OTLP) {
    hex_id(t, root, 8);
    lua_pushlstring(L, root, 16);
  } else {
    lua_pushnil(L);
  }
  lua_pushboolean(L, rec);
  if(!rec) {
    lua_pushliteral(L, "");                     /* ... ctx */
    lua_pushnil(L);                             /* ... ctx version */
    return 7;
  }
  lf_fields_init(&f);
  if(lf_fields_read(&f, t->body.data, t->body.len))
    return luaL_error(L, "langfuse: unreadable trace body");
  push_ctx(L, t, &f);
  return 7;
}

/* The builder of an update (or finish) of kind. */
static int update_builder(int kind, int finish)
{
  switch(kind) {
  case K_TRACE:
    return finish ? B_TRACE_FINISH : B_TRACE_UPDATE;
  case K_GENERATION:
    return B_GENERATION_UPDATE;
  default:
    return B_SPAN_UPDATE;
  }
}

/* tracer:open(kind, opts) -> body, id, start */
static int t_open(lua_State *L)
{
  struct lf_tracer *t = check_tracer(L);
  int kind = (int)luaL_checkinteger(L, 2);
  struct taken tk;
  char id[LF_HEX_ID_MAX + 1];
  if(read_options(L, t, kind == K_GENERATION ? B_GENERATION : B_SPAN, 3,
                  &tk))
    return fail(L);
  lua_pushlstring(L, t->body.data ? t->body.data : "", t->body.len);
  if(tk.id) {
    lua_pushlstring(L, tk.id, tk.idlen);
  } else {
    hex_id(t, id, 8);
    lua_pushlstring(L, id, 16);
  }
  lua_pushnumber(L, now());
  return 3;
}

/* tracer:update(kind, opts) -> body */
static int t_update(lua_State *L)
{
  struct lf_tracer *t = check_tracer(L);
  int kind = (int)luaL_checkinteger(L, 2);
  struct taken tk;
  if(read_options(L, t, update_builder(kind, 0), 3, &tk))
    return fail(L);
  lua_pushlstring(L, t->body.data ? t->body.data : "", t->body.len);
  return 1;
}

/* tracer:trace_ctx(body) -> ctx, version */
static int t_trace_ctx(lua_State *L)
{
  struct lf_tracer *t = check_tracer(L);
  size_t n;
  const char *body = luaL_checklstring(L, 2, &n);
  struct lf_fields f;
  lf_fields_init(&f);
  if(lf_fields_read(&f, body, n))
    return luaL_argerror(L, 2, "not a trace body");
  push_ctx(L, t, &f);
  return 2;
}

/* Reads the fields of the body string at idx and of t->body. */
static void read_fields(lua_State *L, struct lf_tracer *t, int idx,
                        struct lf_fields *f)
{
  size_t n;
  const char *body = luaL_checklstring(L, idx, &n);
  lf_fields_init(f);
  if(lf_fields_read(f, body, n) ||
     lf_fields_read(f, t->body.data, t->body.len))
    luaL_argerror(L, idx, "not a body");
}

/* The text of an optional id argument (16 or 32 hex), or NULL. */
static const char *opt_id(lua_State *L, int idx, size_t want)
{
  size_t n;
  const char *s;
  if(lua_isnoneornil(L, idx))
    return NULL;
  s = luaL_checklstring(L, idx, &n);
  luaL_argcheck(L, n == want, idx, "bad id");
  return s;
}

/* Writes the span or event of s into t->out and sends it.  Returns 0,
   or 1 with a message pushed. */
static int record(lua_State *L, struct lf_tracer *t, struct lf_span *s)
{
  char eid[LF_UUID_LEN + 1], ts[LF_TIME_LEN + 1];
  int result, why;
  lf_buf_reset(&t->out);
  if(t->protocol == PROTO_OTLP) {
    result = lf_span_otlp(&t->out, s, &why);
  } else {
    uuid4(t, eid);
    if(lf_time_now(ts))
      return luaL_error(L, "langfuse: the clock cannot be read");
    result = s->root ?
      lf_span_trace_event(&t->out, s, eid, t->env_json, t->release_json,
                          &why) :
      lf_span_event(&t->out, s, eid, ts, &why);
  }
  if(result == LF_EINVAL)
    return time_error(L, why);
  if(result)
    return luaL_error(L, "langfuse: out of memory");
  if(t->protocol == PROTO_OTLP)
    send_out(t, LF_ROUTE_OTLP, s->span_id, 16);
  else
    send_out(t, LF_ROUTE_INGESTION, eid, LF_UUID_LEN);
  return 0;
}

/* tracer:event(trace_id, parent_id, opts, ctx, version, rec) -> id */
static int t_event(lua_State *L)
{
  struct lf_tracer *t = check_tracer(L);
  struct lf_span s;
  struct lf_fields f;
  struct taken tk;
  char id[LF_HEX_ID_MAX + 1];
  memset(&s, 0, sizeof(s));
  s.trace_id = luaL_checkstring(L, 2);
  s.parent_id = opt_id(L, 3, 16);
  if(read_options(L, t, B_EVENT, 4, &tk))
    return fail(L);
  if(tk.id) {
    memcpy(id, tk.id, 16);
    id[16] = '\0';
  } else {
    hex_id(t, id, 8);
  }
  if(lua_toboolean(L, 7)) {
    s.type = LF_OBS_EVENT;
    s.span_id = id;
    s.start = s.end = now();
    s.ctx = luaL_optlstring(L, 5, "", &s.ctx_len);
    s.version = luaL_optlstring(L, 6, NULL, &s.version_len);
    lf_fields_init(&f);
    if(lf_fields_read(&f, t->body.data, t->body.len))
      return luaL_error(L, "langfuse: unreadable event body");
    s.f = &f;
    if(record(L, t, &s))
      return fail(L);
  }
  lua_pushlstring(L, id, 16);
  return done(L, t, 1);
}

/* promptName and promptVersion go together (the schema's check, which
   only the joined fields can make). */
static int check_prompt(lua_State *L, const struct lf_fields *f)
{
  int has_name = f->v[LF_F_PROMPT_NAME] &&
                 f->v[LF_F_PROMPT_NAME][0] == '"';
  int has_version = f->v[LF_F_PROMPT_VERSION] &&
                    f->v[LF_F_PROMPT_VERSION][0] != 'n';
  if(has_name == has_version)
    return 0;
  return opt_error(L, "option \"%s\": prompt_name and prompt_version "
                   "must be set together",
                   has_name ? "prompt_version" : "prompt_name");
}

/* tracer:finish(kind, trace_id, span_id, parent_id, start, body, opts,
   ctx, version, rec) -> true */
static int t_finish(lua_State *L)
{
  struct lf_tracer *t = check_tracer(L);
  int kind = (int)luaL_checkinteger(L, 2);
  struct lf_span s;
  struct lf_fields f;
  struct taken tk;
  memset(&s, 0, sizeof(s));
  s.trace_id = luaL_checkstring(L, 3);
  s.span_id = opt_id(L, 4, 16);
  s.parent_id = opt_id(L, 5, 16);
  s.start = luaL_checknumber(L, 6);
  if(read_options(L, t, update_builder(kind, 1), 8, &tk))
    return fail(L);
  s.end = now();
  if(tk.end_time && trace_end_time(L, t, 8, &s.end))
    return fail(L);
  read_fields(L, t, 7, &f);
  if(kind == K_GENERATION && check_prompt(L, &f))
    return fail(L);
  lua_pushboolean(L, 1);
  if(!lua_toboolean(L, 11) || !t->sender)
    return 1;
  s.f = &f;
  if(kind == K_TRACE) {
    s.root = 1;
    s.type = LF_OBS_SPAN;
    if(t->protocol == PROTO_OTLP) {
      lf_buf_reset(&t->ctx);
      if(lf_span_trace_ctx(&t->ctx, &f, t->env_json, t->release_json))
        return luaL_error(L, "langfuse: out of memory");
      s.ctx = t->ctx.data;
      s.ctx_len = t->ctx.len;
    }
  } else {
    s.type = kind == K_GENERATION ? LF_OBS_GENERATION : LF_OBS_SPAN;
    s.ctx = luaL_optlstring(L, 9, "", &s.ctx_len);
    s.version = luaL_optlstring(L, 10, NULL, &s.version_len);
  }
  if(record(L, t, &s))
    return fail(L);
  trim(&t->ctx);
  return done(L, t, 1);
}

/* tracer:late(kind, trace_id, span_id, opts, rec) -> true: an update
   after the end, over the ingestion API (trace-create, *-update). */
static int t_late(lua_State *L)
{
  struct lf_tracer *t = check_tracer(L);
  int kind = (int)luaL_checkinteger(L, 2);
  const char *trace_id = luaL_checkstring(L, 3);
  const char *span_id = opt_id(L, 4, 16);
  struct taken tk;
  char eid[LF_UUID_LEN + 1], ts[LF_TIME_LEN + 1];
  const char *type = kind == K_TRACE ? "trace-create" :
                     kind == K_GENERATION ? "generation-update" :
                     "span-update";
  int result;
  if(read_options(L, t, update_builder(kind, 0), 5, &tk))
    return fail(L);
  lua_pushboolean(L, 1);
  if(!t->body.len || !lua_toboolean(L, 6) || !t->sender)
    return 1;
  uuid4(t, eid);
  if(lf_time_now(ts))
    return luaL_error(L, "langfuse: the clock cannot be read");
  lf_buf_reset(&t->out);
  result = lf_buf_printf(&t->out, "{\"id\":\"%s\",\"type\":\"%s\","
                         "\"timestamp\":\"%s\",\"body\":{\"id\":\"%s\"",
                         eid, type, ts, kind == K_TRACE ? trace_id :
                         span_id);
  if(!result && kind != K_TRACE)
    result = lf_buf_printf(&t->out, ",\"traceId\":\"%s\"", trace_id);
  if(!result && t->body.len > 2) {
    result = lf_buf_addc(&t->out, ',');
    if(!result)
      result = lf_buf_add(&t->out, t->body.data + 1, t->body.len - 1);
  } else if(!result) {
    result = lf_buf_addc(&t->out, '}');
  }
  if(!result)
    result = lf_buf_addc(&t->out, '}');
  if(result)
    return luaL_error(L, "langfuse: out of memory");
  send_out(t, LF_ROUTE_INGESTION, eid, LF_UUID_LEN);
  return done(L, t, 1);
}

/* Sets body[field] = the string s when body has no such field. */
static void default_field(lua_State *L, int body, const char *field,
                          const char *s, size_t n)
{
  lua_getfield(L, body, field);                 /* old */
  if(lua_isnil(L, -1) && s) {
    lua_pushlstring(L, s, n);                   /* old s */
    lua_setfield(L, body, field);               /* old */
  }
  lua_pop(L, 1);
}

/* tracer:score(client, opts, trace_id, observation_id, rec) -> id */
static int t_score(lua_State *L)
{
  struct lf_tracer *t = check_tracer(L);
  int client = lua_toboolean(L, 2);
  struct taken tk;
  char eid[LF_UUID_LEN + 1], sid[LF_UUID_LEN + 1], ts[LF_TIME_LEN + 1];
  size_t n;
  const char *s;
  int rec = lua_toboolean(L, 6), body, result;
  if(take_options(L, client ? B_CLIENT_SCORE : B_SCORE, 3, &tk))
    return fail(L);
  if(!tk.camel) {
    lua_createtable(L, 0, 4);                   /* body */
    tk.camel = lua_gettop(L);
  }
  body = tk.camel;
  s = lua_tolstring(L, 4, &n);
  default_field(L, body, "traceId", s, n);
  s = lua_tolstring(L, 5, &n);
  default_field(L, body, "observationId", s, n);
  if(t->env)
    default_field(L, body, "environment", t->env, strlen(t->env));
  uuid4(t, sid);
  default_field(L, body, "id", sid, LF_UUID_LEN);
  lf_buf_reset(&t->body);
  if(check_body(L, t, B_SCORE, body, NULL))
    return fail(L);
  lua_getfield(L, body, "id");                  /* id */
  if(client) {
    lua_getfield(L, body, "traceId");           /* id trace_id */
    s = lua_tolstring(L, -1, &n);
    rec = !s || lf_sample_keep(s, n, t->sample_rate);
    lua_pop(L, 1);                              /* id */
  }
  if(!rec || !t->sender)
    return 1;
  uuid4(t, eid);
  if(lf_time_now(ts))
    return luaL_error(L, "langfuse: the clock cannot be read");
  lf_buf_reset(&t->out);
  result = lf_buf_printf(&t->out, "{\"id\":\"%s\",\"type\":\"score-create\","
                         "\"timestamp\":\"%s\",\"body\":", eid, ts);
  if(!result)
    result = lf_buf_add(&t->out, t->body.data, t->body.len);
  if(!result)
    result = lf_buf_addc(&t->out, '}');
  if(result)
    return luaL_error(L, "langfuse: out of memory");
  send_out(t, LF_ROUTE_INGESTION, eid, LF_UUID_LEN);
  return done(L, t, 1);
}

/* Pushes the result of a flush or shutdown: true, or false. */
/* The texts of an exchange queued raw, in the order they follow its
   head. */
enum {
  R_METHOD, R_ROUTE, R_UPSTREAM, R_UPSTREAM_STATUS, R_USER, R_SESSION,
  R_REQUEST, R_ANSWER, R_NAME, R_GEN_NAME, R_TAGS, R_METADATA, R_COUNT
};
/* The length of a text that is absent. */
#define R_ABSENT UINT32_MAX

/* The head of an exchange queued raw; its texts follow it. */
struct exrec {
  double start, finish, header_time;
  int status, truncated, capture_io;
  char trace_id[32];
  char span_id[16];
  uint32_t len[R_COUNT];
};

/* The texts of x in record order. */
static void exchange_texts(struct lf_exchange *x, struct lf_text **t)
{
  t[R_METHOD] = &x->method;
  t[R_ROUTE] = &x->route;
  t[R_UPSTREAM] = &x->upstream;
  t[R_UPSTREAM_STATUS] = &x->upstream_status;
  t[R_USER] = &x->user;
  t[R_SESSION] = &x->session;
  t[R_REQUEST] = &x->request;
  t[R_ANSWER] = &x->answer;
  t[R_NAME] = &x->name;
  t[R_GEN_NAME] = &x->gen_name;
  t[R_TAGS] = &x->tags;
  t[R_METADATA] = &x->metadata;
}

/* Writes x as a raw record into b.  LF_ETOOBIG for a text of 4 GB or
   more, LF_ENOMEM. */
static int exchange_record(struct lf_buf *b, struct lf_exchange *x,
                           const char *trace_id, const char *span_id)
{
  struct lf_text *t[R_COUNT];
  struct exrec h;
  int i, result;
  memset(&h, 0, sizeof(h));
  h.start = x->start;
  h.finish = x->finish;
  h.header_time = x->header_time;
  h.status = x->status;
  h.truncated = x->truncated;
  h.capture_io = x->capture_io;
  memcpy(h.trace_id, trace_id, 32);
  memcpy(h.span_id, span_id, 16);
  exchange_texts(x, t);
  for(i = 0; i < R_COUNT; i++) {
    if(t[i]->s && t[i]->n >= R_ABSENT)
      return LF_ETOOBIG;
    h.len[i] = t[i]->s ? (uint32_t)t[i]->n : R_ABSENT;
  }
  lf_buf_reset(b);
  result = lf_buf_add(b, &h, sizeof(h));
  for(i = 0; i < R_COUNT && !result; i++)
    if(t[i]->s)
      result = lf_buf_add(b, t[i]->s, t[i]->n);
  return result;
}

/* The build hook of the sender (lf_build_fn): writes the span of an
   exchange queued raw, on the sender thread. */
static int build_exchange(void *ud, const char *raw, size_t len,
                          struct lf_buf *out)
{
  struct exbuild *xb = ud;
  struct lf_text *t[R_COUNT];
  struct lf_exchange x;
  struct lf_span s;
  struct exrec h;
  size_t at = sizeof(h);
  int i, why, result;
  if(len < sizeof(h))
    return LF_ENOMEM;               /* never: the tracer wrote it */
  memcpy(&h, raw, sizeof(h));
  memset(&x, 0, sizeof(x));
  exchange_texts(&x, t);
  for(i = 0; i < R_COUNT; i++) {
    if(h.len[i] == R_ABSENT)
      continue;
    if(h.len[i] > len - at)
      return LF_ENOMEM;
    t[i]->s = raw + at;
    t[i]->n = h.len[i];
    at += h.len[i];
  }
  x.start = h.start;
  x.finish = h.finish;
  x.header_time = h.header_time;
  x.status = h.status;
  x.truncated = h.truncated;
  x.capture_io = h.capture_io;
  result = lf_exchange_fields(&x, &xb->ex);
  lf_buf_reset(&xb->ctx);
  if(!result)
    result = lf_span_trace_ctx(&xb->ctx, &xb->ex.trace, xb->env_json,
                               xb->release_json);
  memset(&s, 0, sizeof(s));
  s.type = LF_OBS_GENERATION;
  s.trace_id = h.trace_id;
  s.span_id = h.span_id;
  s.start = h.start;
  s.end = h.finish;
  s.f = &xb->ex.gen;
  s.ctx = xb->ctx.data;
  s.ctx_len = xb->ctx.len;
  if(!result)
    result = lf_span_otlp(out, &s, &why);
  if(xb->ex.buf.cap > SCRATCH_KEEP)
    lf_buf_free(&xb->ex.buf);
  if(xb->ctx.cap > SCRATCH_KEEP)
    lf_buf_free(&xb->ctx);
  return result ? LF_ENOMEM : LF_OK;
}

/* Queues x raw, for the sender thread to write (deferred tracers).
   Returns 0, or 1 when x must be written here instead (a time that
   cannot be sent: the writer reports it). */
static int defer_exchange(struct lf_tracer *t, struct lf_exchange *x,
                          const char *id)
{
  char span_id[LF_HEX_ID_MAX + 1];
  int64_t ns;
  int result;
  if(lf_epoch_to_ns(x->start, &ns) || lf_epoch_to_ns(x->finish, &ns))
    return 1;
  hex_id(t, span_id, 8);
  result = exchange_record(&t->out, x, id, span_id);
  if(!result && t->out.len > t->encode.max_event_bytes)
    result = LF_ETOOBIG;
  if(result) {
    char msg[LF_SENDER_MESSAGE_MAX];
    snprintf(msg, sizeof(msg), "exchange of %zu bytes not recorded: %s",
             t->out.len, result == LF_ENOMEM ? "out of memory"
                                             : "exceeds max_event_bytes");
    local_failure(t, LF_ROUTE_OTLP, LF_KIND_TOO_LARGE, span_id, 16, msg);
  } else {
    (void)lf_sender_enqueue_raw(t->sender, LF_ROUTE_OTLP, t->out.data,
                                t->out.len, span_id, 16);
  }
  trim(&t->out);
  return 0;
}

/* An optional string argument as text (s NULL when nil). */
static struct lf_text opt_text(lua_State *L, int idx)
{
  struct lf_text t;
  t.s = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &t.n)
                                        : NULL;
  if(!t.s)
    t.n = 0;
  return t;
}

/* The trace options of exchange's opts at idx, checked by the trace
   builder's rules (tags and metadata), into x.  Their JSON stays in
   t->body.  Returns 0, or 1 with a message pushed. */
static int exchange_options(lua_State *L, struct lf_tracer *t, int idx,
                            struct lf_exchange *x, struct lf_fields *f)
{
  struct taken tk;
  int top = lua_gettop(L);
  lf_buf_reset(&t->body);
  lf_fields_init(f);
  if(lua_isnoneornil(L, idx))
    return 0;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_getfield(L, idx, "name");
  x->name = opt_text(L, -1);
  lua_getfield(L, idx, "generation_name");
  x->gen_name = opt_text(L, -1);
  if(!x->name.s && !lua_isnil(L, -2))
    return opt_error(L, "option \"name\": expected a string, got %s",
                     luaL_typename(L, -2));
  if(!x->gen_name.s && !lua_isnil(L, -1))
    return opt_error(L, "option \"generation_name\": expected a string, "
                     "got %s", luaL_typename(L, -1));
  lua_getfield(L, idx, "tags");
  lua_getfield(L, idx, "metadata");
  if(!lua_isnil(L, -1) || !lua_isnil(L, -2)) {
    lua_createtable(L, 0, 2);
    lua_insert(L, -3);
    lua_setfield(L, -3, "metadata");
    lua_setfield(L, -2, "tags");
    if(read_options(L, t, B_TRACE, lua_gettop(L), &tk))
      return 1;
    if(lf_fields_read(f, t->body.data, t->body.len))
      return luaL_error(L, "langfuse: unreadable exchange options");
    if(f->v[LF_F_TAGS] && f->v[LF_F_TAGS][0] == '[') {
      x->tags.s = f->v[LF_F_TAGS];
      x->tags.n = f->n[LF_F_TAGS];
    }
    if(f->v[LF_F_METADATA] && f->v[LF_F_METADATA][0] == '{') {
      x->metadata.s = f->v[LF_F_METADATA];
      x->metadata.n = f->n[LF_F_METADATA];
    }
  }
  /* the name strings stay referenced by opts, which the caller holds */
  lua_settop(L, top);
  return 0;
}

/* Writes and sends the span (OTLP) or the two events (ingestion) of an
   exchange.  Returns 0, or 1 with a message pushed. */
static int record_exchange(lua_State *L, struct lf_tracer *t,
                           const char *id, const struct lf_exchange *x,
                           struct lf_exchange_out *o)
{
  struct lf_span s;
  char span_id[LF_HEX_ID_MAX + 1];
  memset(&s, 0, sizeof(s));
  hex_id(t, span_id, 8);
  s.trace_id = id;
  s.span_id = span_id;
  s.start = x->start;
  s.end = x->finish;
  if(t->protocol == PROTO_OTLP) {
    /* one span: the generation is the trace's root observation, and
       carries the trace-wide attributes */
    lf_buf_reset(&t->ctx);
    if(lf_span_trace_ctx(&t->ctx, &o->trace, t->env_json,
                         t->release_json))
      return luaL_error(L, "langfuse: out of memory");
    s.type = LF_OBS_GENERATION;
    s.f = &o->gen;
    s.ctx = t->ctx.data;
    s.ctx_len = t->ctx.len;
    return record(L, t, &s);
  }
  s.root = 1;
  s.type = LF_OBS_SPAN;
  s.f = &o->trace;
  if(record(L, t, &s))
    return 1;
  s.root = 0;
  s.type = LF_OBS_GENERATION;
  s.f = &o->gen;
  if(t->env_json) {
    lf_buf_reset(&t->ctx);
    if(lf_buf_printf(&t->ctx, "\"environment\":%s", t->env_json))
      return luaL_error(L, "langfuse: out of memory");
    s.ctx = t->ctx.data;
    s.ctx_len = t->ctx.len;
  }
  return record(L, t, &s);
}

/* tracer:exchange(id, method, route, status, start, finish, header_time,
   upstream, upstream_status, user, session, request, answer,
   truncated, capture_io, opts) -> true [, note]: one request proxied to
   an LLM API as a trace with a generation (lf_exchange.h).  id is the
   trace id (32 hex; another value gets a new one); opts may give name,
   generation_name, tags and metadata.  Unlike the other methods it
   never returns the sender's failures: on a busy gateway whose Langfuse
   is away they would cost every request; stats() (the nginx helper's
   report timer) hands them over. */
static int t_exchange(lua_State *L)
{
  struct lf_tracer *t = check_tracer(L);
  struct lf_exchange x;
  struct lf_fields opts;
  struct lf_text ht;
  char id[LF_HEX_ID_MAX + 1];
  size_t idlen;
  const char *given = lua_tolstring(L, 2, &idlen);
  int failed;
  memset(&x, 0, sizeof(x));
  x.method = opt_text(L, 3);
  x.route = opt_text(L, 4);
  x.status = (int)luaL_checkinteger(L, 5);
  x.start = luaL_checknumber(L, 6);
  x.finish = luaL_checknumber(L, 7);
  ht = opt_text(L, 8);
  x.header_time = ht.s ? lf_exchange_seconds(ht.s, ht.n) : -1;
  x.upstream = opt_text(L, 9);
  x.upstream_status = opt_text(L, 10);
  x.user = opt_text(L, 11);
  x.session = opt_text(L, 12);
  x.request = opt_text(L, 13);
  x.answer = opt_text(L, 14);
  x.truncated = lua_toboolean(L, 15);
  x.capture_io = lua_toboolean(L, 16);
  if(exchange_options(L, t, 17, &x, &opts))
    return fail(L);
  if(given && is_hex_id(given, idlen, 32))
    memcpy(id, given, 32);
  else
    hex_id(t, id, 16);
  id[32] = '\0';
  lua_pushboolean(L, 1);
  if(!t->sender)
    return 1;
  if(!lf_sample_keep(id, 32, t->sample_rate)) {
    t->sampled_out++;
    return 1;
  }
  if(t->deferred && !defer_exchange(t, &x, id)) {
    lua_pushnil(L);
    return 2;
  }
  if(lf_exchange_fields(&x, &t->ex))
    return luaL_error(L, "langfuse: out of memory");
  failed = record_exchange(L, t, id, &x, &t->ex);
  trim(&t->ctx);
  trim(&t->ex.buf);
  if(failed)
    return fail(L);
  if(t->ex.left_out)
    lua_pushfstring(L, "left out, not valid UTF-8:%s%s",
                    (t->ex.left_out & LF_EX_BAD_INPUT) ? " the prompt" : "",
                    (t->ex.left_out & LF_EX_BAD_OUTPUT) ? " the answer"
                                                        : "");
  else
    lua_pushnil(L);
  return 2;
}

/* tracer:start() -> true, or nil and a reason: makes the sender this
   process's and replays a spool that holds events. */
static int t_start(lua_State *L)
{
  struct lf_tracer *t = check_tracer(L);
  if(t->sender && lf_sender_start(t->sender) != LF_OK) {
    lua_pushnil(L);
    lua_pushliteral(L, "the sender thread could not start");
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int waited(lua_State *L, struct lf_tracer *t, int result)
{
  lua_pushboolean(L, result == LF_OK);
  if(push_failures(L, t))
    return 2;
  return 1;
}

/* tracer:flush(timeout) -> ok [, failures] */
static int t_flush(lua_State *L)
{
  struct lf_tracer *t = check_tracer(L);
  double timeout = luaL_optnumber(L, 2, DEFAULT_WAIT);
  return waited(L, t, t->sender ? lf_sender_flush(t->sender, timeout)
                                : LF_OK);
}

/* tracer:shutdown(timeout) -> ok [, failures] */
static int t_shutdown(lua_State *L)
{
  struct lf_tracer *t = check_tracer(L);
  double timeout = luaL_optnumber(L, 2, DEFAULT_WAIT);
  return waited(L, t, t->sender ? lf_sender_shutdown(t->sender, timeout)
                                : LF_OK);
}

static void set_count(lua_State *L, const char *k, double v)
{
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

/* Adds the spool's counters to the stats table on top. */
static void push_spool_stats(lua_State *L, const struct lf_sender_stats *st)
{
  set_count(L, "spooled", (double)st->spooled);
  set_count(L, "spool_only", (double)st->spool_only);
  set_count(L, "spool_errors", (double)st->spool_errors);
  set_count(L, "spool_kept", (double)st->spool_kept);
  set_count(L, "replayed", (double)st->replayed);
  set_count(L, "replay_delivered", (double)st->replay_delivered);
  set_count(L, "dead_lettered", (double)st->dead_lettered);
  set_count(L, "spool_bytes", (double)st->spool_bytes);
  set_count(L, "spool_segments", (double)st->spool_segments);
  set_count(L, "spool_corrupt", (double)st->spool_corrupt);
  set_count(L, "spool_dropped", (double)st->spool_dropped);
  lua_pushboolean(L, st->backlog);
  lua_setfield(L, -2, "spool_backlog");
}

/* tracer:stats() -> table [, failures] */
static int t_stats(lua_State *L)
{
  struct lf_tracer *t = check_tracer(L);
  struct lf_sender_stats st;
  memset(&st, 0, sizeof(st));
  if(t->sender)
    lf_sender_stats(t->sender, &st);
  lua_createtable(L, 0, 16);                    /* stats */
  set_count(L, "queued", (double)st.queued);
  set_count(L, "enqueued", (double)st.enqueued);
  set_count(L, "sent", (double)st.sent);
  set_count(L, "accepted", (double)st.accepted);
  set_count(L, "retried", (double)st.retried);
  set_count(L, "failed", (double)st.failed);
  set_count(L, "dropped", (double)(st.dropped + t->local_drops));
  set_count(L, "undelivered", (double)st.undelivered);
  set_count(L, "bytes_sent", (double)st.bytes_sent);
  set_count(L, "requests", (double)st.requests);
  set_count(L, "failures_lost", (double)st.failures_lost);
  lua_pushnumber(L, st.paused);
  lua_setfield(L, -2, "paused");
  set_count(L, "sampled_out", (double)t->sampled_out);
  if(st.has_spool)
    push_spool_stats(L, &st);
  if(st.last_error[0]) {
    lua_pushstring(L, st.last_error);
    lua_setfield(L, -2, "last_error");
  }
  return push_failures(L, t) ? 2 : 1;
}

/* tracer:drain() -> failures | nil */
static int t_drain(lua_State *L)
{
  struct lf_tracer *t = check_tracer(L);
  if(!push_failures(L, t))
    lua_pushnil(L);
  return 1;
}

/* Stops and joins the sender thread and frees what the tracer owns;
   safe to call twice. */
static int t_gc(lua_State *L)
{
  struct lf_tracer *t = luaL_checkudata(L, 1, TRACER_MT);
  lf_sender_free(t->sender);
  t->sender = NULL;
  free(t->env);
  free(t->env_json);
  free(t->release_json);
  t->env = t->env_json = t->release_json = NULL;
  lf_buf_free(&t->body);
  lf_buf_free(&t->out);
  lf_buf_free(&t->ctx);
  lf_exchange_out_free(&t->ex);
  if(t->deferred) {
    lf_exchange_out_free(&t->xb.ex);
    lf_buf_free(&t->xb.ctx);
  }
  lf_problems_free(&t->probs);
  return 0;
}

/* }================================================================ */


/* {================================================================
** Construction
** ================================================================= */

/* A malloc'd JSON string of s (the caller frees it), NULL for a NULL s.
   Raises for text that is not UTF-8 or when out of memory; b is the
   tracer's scratch buffer. */
static char *json_text(lua_State *L, struct lf_buf *b, const char *s)
{
  char *p;
  if(!s)
    return NULL;
  lf_buf_reset(b);
  if(lf_json_string(b, s, strlen(s), NULL))
    luaL_error(L, "new_tracer: bad text \"%s\"", s);
  p = lf_strndup(b->data, b->len);
  if(!p)
    luaL_error(L, "new_tracer: out of memory");
  return p;
}

/* Reads the sender's part of the configuration table into sc; strings
   point into the table or into t's buffers. */
static void read_sender_config(lua_State *L, struct lf_tracer *t,
                               struct lf_sender_config *sc)
{
  const char *policy = lf_cfg_string(L, "queue_full_policy");
  const char *base;
  lf_sender_config_init(sc);
  base = lf_cfg_http(L, "new_tracer", &sc->http);
  sc->ingestion.url = lf_cfg_url(L, "new_tracer", &t->out, base,
                                 LF_INGESTION_PATH);
  sc->ingestion.prefix = LF_BATCH_PREFIX;
  sc->ingestion.suffix = LF_BATCH_SUFFIX;
  if(t->protocol == PROTO_OTLP) {
    sc->otlp.url = lf_cfg_url(L, "new_tracer", &t->ctx, base,
                              LF_OTLP_PATH);
    sc->otlp.prefix = lf_cfg_otlp_prefix(L, "new_tracer", &t->body,
                                         sc->http.public_key);
    sc->otlp.suffix = LF_SPAN_SUFFIX;
    sc->otlp.gzip = lf_cfg_bool(L, "gzip", 1);
    sc->otlp.headers = lf_otlp_headers;
  }
  lf_cfg_upload(L, &sc->upload);
  sc->flush_at = (size_t)lf_cfg_number(L, "flush_at", (double)sc->flush_at);
  sc->flush_interval = lf_cfg_number(L, "flush_interval", sc->flush_interval);
  sc->max_queue_events = (size_t)lf_cfg_number(L, "queue_max_events",
                                            (double)sc->max_queue_events);
  sc->max_queue_bytes = (size_t)lf_cfg_number(L, "queue_max_bytes",
                                           (double)sc->max_queue_bytes);
  sc->full_policy = policy && !strcmp(policy, "block") ? LF_FULL_BLOCK
                                                       : LF_FULL_DROP_NEWEST;
  if(policy && !strcmp(policy, "spool"))
    sc->full_policy = LF_FULL_SPOOL;
  sc->spool_dir = lf_durable_lua_config(L, 1, &sc->spool);
  sc->defer_replay = !lf_cfg_bool(L, "replay_at_start", 1);
  sc->block_timeout = lf_cfg_number(L, "queue_block_timeout",
                                 sc->block_timeout);
}

/* core.new_tracer(cfg) -> tracer.  The Lua layer checked cfg; a field
   missing here is a bug in that layer, so it raises. */
static int new_tracer(lua_State *L)
{
  struct lf_tracer *t;
  struct lf_sender_config sc;
  const char *protocol, *s;
  luaL_checktype(L, 1, LUA_TTABLE);
  t = lua_newuserdata(L, sizeof(*t));           /* tracer */
  memset(t, 0, sizeof(*t));
  lf_buf_init(&t->body, 0);
  lf_buf_init(&t->out, 0);
  lf_buf_init(&t->ctx, 0);
  lf_exchange_out_init(&t->ex);
  lf_problems_init(&t->probs);
  luaL_setmetatable(L, TRACER_MT);
  rng_seed(t);
  protocol = lf_cfg_string(L, "protocol");
  t->protocol = protocol && !strcmp(protocol, "ingestion") ?
                PROTO_INGESTION : PROTO_OTLP;
  t->report = lf_cfg_bool(L, "report", 0);
  t->sample_rate = lf_cfg_number(L, "sample_rate", 1);
  lf_encode_opts_init(&t->encode);
  t->encode.max_event_bytes = (size_t)lf_cfg_number(L, "max_event_bytes",
                                   (double)t->encode.max_event_bytes);
  t->encode.max_depth = (size_t)lf_cfg_number(L, "max_depth",
                                           (double)t->encode.max_depth);
  s = lf_cfg_string(L, "environment");
  t->env = s ? lf_strndup(s, strlen(s)) : NULL;
  if(s && !t->env)
    return luaL_error(L, "new_tracer: out of memory");
  t->env_json = json_text(L, &t->body, s);
  t->release_json = json_text(L, &t->body, lf_cfg_string(L, "release"));
  if(lf_cfg_bool(L, "enabled", 1)) {
    read_sender_config(L, t, &sc);
    if(t->protocol == PROTO_OTLP && !sc.spool_dir) {
      t->deferred = 1;
      lf_exchange_out_init(&t->xb.ex);
      lf_buf_init(&t->xb.ctx, 0);
      t->xb.env_json = t->env_json;
      t->xb.release_json = t->release_json;
      sc.build = build_exchange;
      sc.build_ud = &t->xb;
    }
    t->sender = lf_sender_new(&sc);
    if(!t->sender)
      return luaL_error(L, "new_tracer: the sender could not be made "
                        "(out of memory, or a zero limit)");
  }
  lf_buf_free(&t->body);
  lf_buf_free(&t->out);
  lf_buf_free(&t->ctx);
  return 1;
}

/* core.time() -> seconds since the epoch, with the fraction */
static int l_time(lua_State *L)
{
  lua_pushnumber(L, now());
  return 1;
}

/* core.clock(which) -> seconds of CLOCK_MONOTONIC ("monotonic", the
   default) or of the calling thread's CPU time ("thread"), for timing
   code: near zero, so a double keeps nanoseconds. */
static int l_clock(lua_State *L)
{
  static const char *const names[] = { "monotonic", "thread", NULL };
  struct timespec ts;
  int which = luaL_checkoption(L, 1, "monotonic", names);
  clock_gettime(which ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
  return 1;
}

/* }================================================================ */


/* {================================================================
** Process helpers for the specs (fork tests); not part of the API
** ================================================================= */

/* core._fork() -> pid in the parent, 0 in the child */
static int l_fork(lua_State *L)
{
  pid_t pid = fork();
  if(pid < 0)
    return luaL_error(L, "fork failed");
  lua_pushinteger(L, (lua_Integer)pid);
  return 1;
}

/* core._wait(pid) -> exit status, or -signal */
static int l_wait(lua_State *L)
{
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int status;
  if(waitpid(pid, &status, 0) != pid)
    return luaL_error(L, "waitpid failed");
  lua_pushinteger(L, WIFEXITED(status) ? WEXITSTATUS(status)
                                       : -WTERMSIG(status));
  return 1;
}

/* core._exit(code): leaves at once, running no finaliser. */
static int l_exit(lua_State *L)
{
  _exit((int)luaL_optinteger(L, 1, 0));
  return 0;
}

/* }================================================================ */


void lf_tracer_open(lua_State *L)
{
  static const luaL_Reg methods[] = {
    { "open_trace", t_open_trace },
    { "open", t_open },
    { "event", t_event },
    { "update", t_update },
    { "trace_ctx", t_trace_ctx },
    { "finish", t_finish },
    { "late", t_late },
    { "exchange", t_exchange },
    { "score", t_score },
    { "start", t_start },
    { "flush", t_flush },
    { "shutdown", t_shutdown },
    { "stats", t_stats },
    { "drain", t_drain },
    { NULL, NULL }
  };
  static const luaL_Reg funcs[] = {
    { "new_tracer", new_tracer },
    { "time", l_time },
    { "clock", l_clock },
    { "_fork", l_fork },
    { "_wait", l_wait },
    { "_exit", l_exit },
    { NULL, NULL }
  };
  size_t i;
  (void)pthread_once(&tracer_once, tracer_init);
  luaL_newmetatable(L, TRACER_MT);              /* mod mt */
  lua_pushcfunction(L, t_gc);
  lua_setfield(L, -2, "__gc");
  lua_newtable(L);                              /* mod mt methods */
  lua_createtable(L, 0, (int)OPTION_COUNT);     /* ... methods numbers */
  lua_createtable(L, (int)OPTION_COUNT, 0);     /* ... numbers fields */
  for(i = 0; i < OPTION_COUNT; i++) {
    lua_pushinteger(L, (lua_Integer)(i + 1));
    lua_setfield(L, -3, options[i].snake);
    lua_pushstring(L, options[i].camel);
    lua_rawseti(L, -2, (int)(i + 1));
  }
  luaL_setfuncs(L, methods, 2);                 /* mod mt methods */
  lua_pushvalue(L, -1);                         /* mod mt methods methods */
  lua_setfield(L, -4, "tracer_methods");        /* mod mt methods */
  lua_setfield(L, -2, "__index");               /* mod mt */
  lua_pop(L, 1);                                /* mod */
  luaL_setfuncs(L, funcs, 0);
  lua_createtable(L, 0, 4);                     /* mod kinds */
  lua_pushinteger(L, K_SPAN);
  lua_setfield(L, -2, "span");
  lua_pushinteger(L, K_GENERATION);
  lua_setfield(L, -2, "generation");
  lua_pushinteger(L, K_EVENT);
  lua_setfield(L, -2, "event");
  lua_pushinteger(L, K_TRACE);
  lua_setfield(L, -2, "trace");
  lua_setfield(L, -2, "tracing_kinds");         /* mod */
}
