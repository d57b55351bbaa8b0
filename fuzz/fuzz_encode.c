/*
** fuzz_encode.c: libFuzzer target for the validator and encoder
** (src/lf_encode.h), fed Lua values built from the fuzz bytes.
**
** The input is a small program for a stack machine that builds values
** in a fresh Lua 5.4 state: strings of any bytes (invalid UTF-8, NUL),
** words the schemas know, integers, floats of any bit pattern (NaN,
** infinities, -0.0), special numbers (2^53 + 1, 2^63 - 1, 1e300),
** booleans, nil, the JSON null, functions, userdata, threads, tables
** filled by key, by position and sparsely, cycles, deep nesting, wide
** and big values, metatables whose every metamethod raises, and valid
** events of each type to start from.
**
** The value left on top is then given to lf_encode_value, to
** lf_validate_body under an event type the input picks, and, when it is
** a table, to lf_encode_check_events, lf_encode_batch_body and
** lf_encode_events as an array of events.  Every JSON text they accept
** must pass the strict checker (json_check.h); a refusal must come with
** problems; every event must be accepted or refused, never both and
** never neither; scalars must encode to exactly their value.
**
** The first two input bytes pick the options: max_depth (1 to 1000),
** max_event_bytes (small, or the default) and strict.
*/
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "../src/lf_encode.h"
#include "json_check.h"

/* Values the program may keep on the Lua stack at once. */
#define STACK_MAX 64
/* Levels of nesting one input may add in all: ten times the deepest
   max_depth, far past every limit. */
#define NEST_BUDGET 10000
/* Elements one input may add to wide tables in all. */
#define WIDE_BUDGET 20000
/* Bytes one input may put into big strings in all: past the small
   max_event_bytes the first bytes can pick (the default limit of 1 MB
   is the specs' business; here it would only slow the search). */
#define BIG_BUDGET (128 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum op {
  OP_STR, OP_WORD, OP_INT, OP_FLOAT, OP_SPECIAL, OP_BOOL, OP_NIL,
  OP_NULL, OP_LIGHT, OP_FUNC, OP_UDATA, OP_THREAD, OP_TABLE, OP_SET,
  OP_SETK, OP_APPEND, OP_SETI, OP_LINK, OP_DUP, OP_NEST, OP_META,
  OP_POP, OP_WIDE, OP_BIG, OP_EVENT, OP_COUNT
};

/* Words the schemas know: field names, event types, enum values, and
   a few bad strings.  Lengths are kept, for the one holding a NUL. */
struct word {
  const char *s;
  size_t n;
};
#define W(s) { s, sizeof(s) - 1 }
static const struct word words[] = {
  W("id"), W("type"), W("timestamp"), W("body"), W("metadata"), W("name"),
  W("input"), W("output"), W("traceId"), W("startTime"), W("endTime"),
  W("completionStartTime"), W("level"), W("statusMessage"),
  W("parentObservationId"), W("version"), W("model"), W("modelParameters"),
  W("usage"), W("usageDetails"), W("costDetails"), W("tags"), W("public"),
  W("sessionId"), W("userId"), W("release"), W("environment"), W("value"),
  W("dataType"), W("comment"), W("observationId"), W("configId"), W("unit"),
  W("total"), W("promptTokens"), W("completionTokens"), W("totalTokens"),
  W("inputCost"), W("outputCost"), W("totalCost"), W("promptName"),
  W("promptVersion"), W("source"), W("queueId"), W("datasetRunId"),
  W("executionTraceId"), W("externalId"), W("log"), W("trace-create"),
  W("span-create"), W("span-update"), W("generation-create"),
  W("generation-update"), W("event-create"), W("score-create"), W("sdk-log"),
  W("observation-create"), W("observation-update"), W("agent-create"),
  W("tool-create"), W("chain-create"), W("retriever-create"),
  W("evaluator-create"), W("embedding-create"), W("guardrail-create"),
  W("dataset-run-item-create"), W("DEBUG"), W("DEFAULT"), W("WARNING"),
  W("ERROR"), W("NUMERIC"), W("CATEGORICAL"), W("BOOLEAN"), W("CORRECTION"),
  W("TEXT"), W("TOKENS"), W("CHARACTERS"), W("MILLISECONDS"), W("SECONDS"),
  W("IMAGES"), W("REQUESTS"), W("API"), W("EVAL"), W("ANNOTATION"),
  W("2026-12-03T10:00:00.000Z"), W("2026-12-03T10:00:00Z"),
  W("2026-02-30T25:61:61.5+14:00"), W(""), W("\xff"), W("\xc0\x80"),
  W("\xed\xa0\x80"), W("a\0b")
};
#define NWORDS (sizeof(words) / sizeof(words[0]))

/* Event types lf_validate_body is tried under. */
static const char *const types[] = {
  "trace-create", "span-create", "span-update", "generation-create",
  "generation-update", "event-create", "score-create", "sdk-log",
  "observation-create", "observation-update", "agent-create",
  "tool-create", "dataset-run-item-create", "no-such-type"
};
#define NTYPES (sizeof(types) / sizeof(types[0]))

struct vm {
  lua_State *L;
  const uint8_t *p, *end;
  int base;                 /* stack top before the program ran */
  long nest, wide, big;     /* what is left of each budget */
  struct lf_encode_opts o;
  int type;                 /* index in types */
  int partial;
};

static void fail(const char *what, const char *detail)
{
  fprintf(stderr, "fuzz_encode: %s%s%s\n", what, detail ? ": " : "",
          detail ? detail : "");
  abort();
}

static int next_byte(struct vm *vm)
{
  return vm->p < vm->end ? *vm->p++ : 0;
}

static uint64_t next_u64(struct vm *vm)
{
  uint64_t v = 0;
  int k;
  for(k = 0; k < 8; k++)
    v = v << 8 | (uint64_t)next_byte(vm);
  return v;
}

static int depth(struct vm *vm)
{
  return lua_gettop(vm->L) - vm->base;
}

/* Stack index of the value the next byte picks, or 0 when empty. */
static int pick(struct vm *vm)
{
  int n = depth(vm);
  return n ? vm->base + 1 + next_byte(vm) % n : 0;
}

static void push_word(struct vm *vm)
{
  const struct word *w = &words[next_byte(vm) % NWORDS];
  lua_pushlstring(vm->L, w->s, w->n);
}

static int raising(lua_State *L)
{
  return luaL_error(L, "metamethod raised");
}

static int plain_function(lua_State *L)
{
  (void)L;
  return 0;
}

static void push_special(struct vm *vm)
{
  lua_State *L = vm->L;
  switch(next_byte(vm) % 14) {
  case 0: lua_pushnumber(L, 0.0 * -1.0); break;
  case 1: lua_pushnumber(L, (double)NAN); break;
  case 2: lua_pushnumber(L, (double)INFINITY); break;
  case 3: lua_pushnumber(L, -(double)INFINITY); break;
  case 4: lua_pushinteger(L, (lua_Integer)9007199254740993LL); break;
  case 5: lua_pushinteger(L, LUA_MAXINTEGER); break;
  case 6: lua_pushinteger(L, LUA_MININTEGER); break;
  case 7: lua_pushnumber(L, 1e300); break;
  case 8: lua_pushnumber(L, 9007199254740992.0); break;
  case 9: lua_pushnumber(L, 1680000000.5); break;
  case 10: lua_pushnumber(L, 1.7e12); break;
  case 11: lua_pushnumber(L, 0.1); break;
  case 12: lua_pushnumber(L, -1e-310); break;
  default: lua_pushnumber(L, 9.2233720368547758e18); break;
  }
}

/* Raw-sets t[k] = v for t at idx, k and v on top (both popped), unless
   Lua would refuse the key (nil, NaN). */
static void safe_rawset(lua_State *L, int idx)
{
  int kt = lua_type(L, -2);
  if(kt == LUA_TNIL || (kt == LUA_TNUMBER &&
                        lua_tonumber(L, -2) != lua_tonumber(L, -2))) {
    lua_pop(L, 2);
    return;
  }
  lua_rawset(L, idx);
}

/* The top table for OP_SET and friends: the value just under top. */
static int under_table(struct vm *vm, int below)
{
  int idx = lua_gettop(vm->L) - below;
  return idx > vm->base && lua_istable(vm->L, idx) ? idx : 0;
}

static void op_set(struct vm *vm, int op)
{
  lua_State *L = vm->L;
  int t;
  if(op == OP_SETK) {
    t = depth(vm) >= 3 ? under_table(vm, 2) : 0;
    if(t)
      safe_rawset(L, t);                    /* t[k] = v */
    return;
  }
  t = depth(vm) >= 2 ? under_table(vm, 1) : 0;
  if(!t) {
    if(depth(vm))
      lua_pop(L, 1);
    return;
  }
  if(op == OP_SET) {
    push_word(vm);
    lua_insert(L, -2);                      /* t k v */
    lua_rawset(L, t);
  } else if(op == OP_APPEND) {
    lua_rawseti(L, t, (lua_Integer)lua_rawlen(L, t) + 1);
  } else {
    lua_rawseti(L, t, (signed char)next_byte(vm));
  }
}

static void op_nest(struct vm *vm)
{
  lua_State *L = vm->L;
  long n = (long)next_byte(vm) * 8 + 1;
  int keyed = next_byte(vm) & 1;
  if(!depth(vm))
    lua_newtable(L);
  if(n > vm->nest)
    n = vm->nest;
  vm->nest -= n;
  while(n-- > 0) {
    lua_createtable(L, 1, 1);               /* v t */
    lua_insert(L, -2);                      /* t v */
    if(keyed)
      lua_setfield(L, -2, "metadata");      /* t */
    else
      lua_rawseti(L, -2, 1);                /* t */
  }
}

static void op_meta(struct vm *vm)
{
  static const char *const events[] = {
    "__index", "__newindex", "__len", "__pairs", "__ipairs", "__call",
    "__tostring", "__eq", "__lt", "__le", "__concat", "__name", NULL
  };
  lua_State *L = vm->L;
  int k;
  if(!depth(vm) || !lua_istable(L, -1))
    return;
  lua_newtable(L);                          /* t mt */
  for(k = 0; events[k]; k++) {
    lua_pushcfunction(L, raising);
    lua_setfield(L, -2, events[k]);
  }
  lua_setmetatable(L, -2);                  /* t */
}

static void op_wide(struct vm *vm)
{
  lua_State *L = vm->L;
  long n = (long)next_byte(vm) * 64, i;
  int keyed = next_byte(vm) & 1;
  if(n > vm->wide)
    n = vm->wide;
  vm->wide -= n;
  lua_createtable(L, keyed ? 0 : (int)n, keyed ? (int)n : 0);
  for(i = 1; i <= n; i++) {
    if(keyed) {
      lua_pushfstring(L, "k%d", (int)i);
      lua_pushinteger(L, i);
      lua_rawset(L, -3);
    } else {
      lua_pushinteger(L, i);
      lua_rawseti(L, -2, i);
    }
  }
}

static void op_big(struct vm *vm)
{
  lua_State *L = vm->L;
  size_t n = (size_t)next_byte(vm) * 512;
  int ch = next_byte(vm);
  luaL_Buffer b;
  if(n > (size_t)vm->big)
    n = (size_t)vm->big;
  vm->big -= (long)n;
  memset(luaL_buffinitsize(L, &b, n), ch, n);
  luaL_pushresultsize(&b, n);
}

/* A valid event of the type the next byte picks, to start from.  Leaves
   the event and, above it, its body, so that the next steps can change
   the body and a pop gets back to the event. */
static void op_event(struct vm *vm)
{
  lua_State *L = vm->L;
  const char *type = types[next_byte(vm) % (NTYPES - 1)];
  lua_createtable(L, 0, 4);                 /* ev */
  lua_pushstring(L, type);
  lua_setfield(L, -2, "type");
  lua_pushfstring(L, "ev-%d", next_byte(vm));
  lua_setfield(L, -2, "id");
  lua_pushliteral(L, "2026-12-03T10:00:00.000Z");
  lua_setfield(L, -2, "timestamp");
  lua_createtable(L, 0, 4);                 /* ev body */
  if(!strcmp(type, "sdk-log")) {
    lua_pushliteral(L, "note");
    lua_setfield(L, -2, "log");
  } else {
    lua_pushliteral(L, "b-1");
    lua_setfield(L, -2, "id");
  }
  if(strcmp(type, "trace-create") && strcmp(type, "sdk-log")) {
    lua_pushliteral(L, "t-1");
    lua_setfield(L, -2, "traceId");
  }
  if(!strcmp(type, "score-create")) {
    lua_pushliteral(L, "quality");
    lua_setfield(L, -2, "name");
    lua_pushinteger(L, 1);
    lua_setfield(L, -2, "value");
  }
  lua_pushvalue(L, -1);                     /* ev body body */
  lua_setfield(L, -3, "body");              /* ev body */
}

static void step(struct vm *vm, int op)
{
  lua_State *L = vm->L;
  size_t n;
  int at;
  uint64_t u;
  double d;
  switch(op) {
  case OP_STR:
    n = (size_t)next_byte(vm);
    if(n > (size_t)(vm->end - vm->p))
      n = (size_t)(vm->end - vm->p);
    lua_pushlstring(L, (const char *)vm->p, n);
    vm->p += n;
    break;
  case OP_WORD:
    push_word(vm);
    break;
  case OP_INT:
    lua_pushinteger(L, (lua_Integer)next_u64(vm));
    break;
  case OP_FLOAT:
    u = next_u64(vm);
    memcpy(&d, &u, sizeof(d));
    lua_pushnumber(L, d);
    break;
  case OP_SPECIAL: push_special(vm); break;
  case OP_BOOL: lua_pushboolean(L, next_byte(vm) & 1); break;
  case OP_NIL: lua_pushnil(L); break;
  case OP_NULL: lua_pushlightuserdata(L, NULL); break;
  case OP_LIGHT: lua_pushlightuserdata(L, vm); break;
  case OP_FUNC: lua_pushcfunction(L, plain_function); break;
  case OP_UDATA: lua_newuserdata(L, 8); break;
  case OP_THREAD: lua_newthread(L); break;
  case OP_TABLE: lua_newtable(L); break;
  case OP_SET: case OP_SETK: case OP_APPEND: case OP_SETI:
    op_set(vm, op);
    break;
  case OP_LINK:                 /* top table gets a link to another */
    at = pick(vm);
    if(at && lua_istable(L, -1) && lua_istable(L, at)) {
      push_word(vm);
      lua_pushvalue(L, at);                 /* t k target */
      lua_rawset(L, -3);                    /* t */
    }
    break;
  case OP_DUP:
    at = pick(vm);
    if(at)
      lua_pushvalue(L, at);
    break;
  case OP_NEST: op_nest(vm); break;
  case OP_META: op_meta(vm); break;
  case OP_POP:
    if(depth(vm))
      lua_pop(L, 1);
    break;
  case OP_WIDE: op_wide(vm); break;
  case OP_BIG: op_big(vm); break;
  default: op_event(vm); break;
  }
}

static void check_json(const char *what, const char *p, size_t len)
{
  const char *why;
  size_t at;
  if(!json_check(p, len, &why, &at)) {
    fprintf(stderr, "fuzz_encode: %s gave invalid JSON at byte %zu: %s\n",
            what, at, why);
    fprintf(stderr, "%.*s\n", (int)(len > 2000 ? 2000 : len), p);
    abort();
  }
}

static void check_problems(const struct lf_problems *probs, size_t nevents)
{
  size_t i;
  for(i = 0; i < probs->n; i++) {
    const struct lf_problem *q = &probs->v[i];
    if(!q->message || !q->path)
      fail("problem without message or path", NULL);
    if(q->index > nevents)
      fail("problem names an event past the end", NULL);
  }
}

/* For scalars the JSON must be exactly the value. */
static void check_scalar(lua_State *L, int idx, struct lf_buf *out)
{
  char want[64];
  const char *s = lf_buf_cstr(out);
  if(lua_isinteger(L, idx)) {
    snprintf(want, sizeof(want), "%lld", (long long)lua_tointeger(L, idx));
    if(strcmp(s, want))
      fail("integer not written exactly", s);
  } else if(lua_type(L, idx) == LUA_TNUMBER) {
    double x = lua_tonumber(L, idx), y = strtod(s, NULL);
    if(x != y)
      fail("float does not read back the same", s);
  } else if(lua_type(L, idx) == LUA_TBOOLEAN) {
    if(strcmp(s, lua_toboolean(L, idx) ? "true" : "false"))
      fail("boolean written wrong", s);
  } else if(lua_isnil(L, idx) || (lua_islightuserdata(L, idx) &&
                                  !lua_touserdata(L, idx))) {
    if(strcmp(s, "null"))
      fail("nil or null not written as null", s);
  }
}

static void encode_value(struct vm *vm, int idx, struct lf_buf *out,
                         struct lf_problems *probs)
{
  int result = lf_encode_value(vm->L, idx, &vm->o, out, probs);
  if(result == LF_OK) {
    if(probs->n)
      fail("lf_encode_value accepted with problems", NULL);
    check_json("lf_encode_value", out->data, out->len);
    check_scalar(vm->L, idx, out);
  } else if(result == LF_EINVAL) {
    if(!probs->n || out->len)
      fail("lf_encode_value refused without problems or kept output",
           NULL);
  }
  check_problems(probs, 0);
  lf_buf_reset(out);
  lf_problems_free(probs);
  result = lf_validate_body(vm->L, idx, types[vm->type], &vm->o,
                            vm->partial ? LF_BODY_PARTIAL : 0, out, probs);
  if(result == LF_OK)
    check_json("lf_validate_body", out->data, out->len);
  else if(result == LF_EINVAL && !probs->n)
    fail("lf_validate_body refused without problems", NULL);
  check_problems(probs, 0);
  lf_buf_reset(out);
  lf_problems_free(probs);
}

/* Events refused: distinct indexes among the problems. */
static size_t refused(const struct lf_problems *probs)
{
  size_t i, n = 0;
  for(i = 0; i < probs->n; i++) {
    if(!i || probs->v[i].index != probs->v[i - 1].index)
      n++;
  }
  return n;
}

static void encode_events(struct vm *vm, int idx, struct lf_buf *out,
                          struct lf_problems *probs, struct lf_batch *b)
{
  size_t nev = lua_rawlen(vm->L, idx), checked, joined, i;
  int r1, r2, r3;
  r1 = lf_encode_check_events(vm->L, idx, &vm->o, out, probs, &checked);
  check_problems(probs, nev);
  if(r1 != LF_ENOMEM && checked + refused(probs) != nev)
    fail("lf_encode_check_events lost or doubled an event", NULL);
  lf_buf_reset(out);
  lf_problems_free(probs);
  r2 = lf_encode_batch_body(vm->L, idx, &vm->o, out, probs, &joined);
  check_problems(probs, nev);
  if(r2 != LF_ENOMEM) {
    check_json("lf_encode_batch_body", out->data, out->len);
    if(joined != checked)
      fail("batch body and check disagree on the count", NULL);
  }
  lf_buf_reset(out);
  lf_problems_free(probs);
  r3 = lf_encode_events(vm->L, idx, &vm->o, b, probs);
  check_problems(probs, nev);
  if(r3 == LF_ENOMEM)
    return;
  if(b->n + refused(probs) != nev || b->n != checked)
    fail("lf_encode_events lost, doubled or changed an event", NULL);
  for(i = 0; i < b->n; i++) {
    const struct lf_item *it = &b->items[i];
    check_json("lf_encode_events item", it->json, it->len);
    if(it->json[0] != '{' || !it->id)
      fail("an event item is not an object with an id", NULL);
    if(it->len > vm->o.max_event_bytes)
      fail("an event item is over max_event_bytes", NULL);
  }
  lf_problems_free(probs);
}

/* Runs the program and the checks; called through lua_pcall so a Lua
   memory error cannot escape.  The buffers live in the vm's caller. */
static int run(lua_State *L)
{
  struct vm *vm = lua_touserdata(L, 1);
  struct lf_buf *out = lua_touserdata(L, 2);
  struct lf_problems *probs = lua_touserdata(L, 3);
  struct lf_batch *b = lua_touserdata(L, 4);
  int top;
  vm->base = lua_gettop(L);
  while(vm->p < vm->end) {
    int op = next_byte(vm) % OP_COUNT;
    if(depth(vm) >= STACK_MAX && op != OP_POP && op != OP_SET &&
       op != OP_SETK && op != OP_APPEND && op != OP_SETI)
      continue;
    if(!lua_checkstack(L, 8))
      break;
    step(vm, op);
  }
  if(!depth(vm))
    lua_pushnil(L);
  top = lua_gettop(L);
  encode_value(vm, top, out, probs);
  if(lua_istable(L, top))
    encode_events(vm, top, out, probs, b);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct vm vm;
  struct lf_buf out;
  struct lf_problems probs;
  struct lf_batch b;
  lua_State *L;
  if(size < 3)
    return 0;
  memset(&vm, 0, sizeof(vm));
  lf_encode_opts_init(&vm.o);
  vm.o.max_depth = 1 + (size_t)(data[0] >> 1) * 8 % LF_MAX_DEPTH_LIMIT;
  if(data[0] & 1)
    vm.o.max_depth = LF_DEFAULT_MAX_DEPTH;
  vm.o.max_event_bytes = data[1] & 0x80 ? LF_DEFAULT_MAX_EVENT_BYTES
                         : ((size_t)data[1] + 1) * 64;
  vm.o.strict = data[2] & 1;
  vm.partial = (data[2] >> 1) & 1;
  vm.type = (data[2] >> 2) % (int)NTYPES;
  vm.p = data + 3;
  vm.end = data + size;
  vm.nest = NEST_BUDGET;
  vm.wide = WIDE_BUDGET;
  vm.big = BIG_BUDGET;
  L = luaL_newstate();
  if(!L)
    return 0;
  lf_buf_init(&out, 0);
  lf_problems_init(&probs);
  lf_batch_init(&b);
  vm.L = L;
  lua_pushcfunction(L, run);
  lua_pushlightuserdata(L, &vm);
  lua_pushlightuserdata(L, &out);
  lua_pushlightuserdata(L, &probs);
  lua_pushlightuserdata(L, &b);
  lua_pcall(L, 4, 0, 0);
  lf_batch_free(&b);
  lf_problems_free(&probs);
  lf_buf_free(&out);
  lua_close(L);
  return 0;
}
