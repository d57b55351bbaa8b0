/*
** lf_schema.c: the ingestion API's event schemas.
**
** Source: the server's zod schemas (packages/shared/src/server/ingestion/
** types.ts in langfuse/langfuse), as summarised in the project's
** reference notes.  Where the server silently strips or drops a value
** (unknown keys, junk in usageDetails), the client reports a problem
** instead, so that a misspelt field never vanishes unnoticed.
*/
#include <pthread.h>
#include <string.h>

#include "lf_schema.h"

/* Slots of the name hash table: a power of two, under half full. */
#define NAME_SLOTS 128

/* Longest known field name ("completionStartTime"); longer keys are
   unknown without hashing. */
#define NAME_MAX_LEN 19

/* Longest key lf_schema_suggest rewrites; longer ones get no hint. */
#define SUGGEST_MAX 64

static const char *const names[LF_N_COUNT] = {
  "id", "type", "timestamp", "body", "metadata",
  "name", "userId", "sessionId", "release", "version",
  "externalId", "input", "output", "tags", "public",
  "environment",
  "traceId", "parentObservationId", "statusMessage",
  "startTime", "level", "endTime", "completionStartTime",
  "model", "modelParameters", "usage", "usageDetails",
  "costDetails", "promptName", "promptVersion",
  "value", "datasetRunId", "observationId", "dataType",
  "configId", "comment", "source", "queueId",
  "executionTraceId",
  "log",
  "total", "unit", "inputCost", "outputCost", "totalCost",
  "promptTokens", "completionTokens", "totalTokens"
};

static unsigned char name_slot[NAME_SLOTS];   /* name number + 1, 0 empty */
static unsigned char name_len[LF_N_COUNT];
static pthread_once_t name_once = PTHREAD_ONCE_INIT;

static unsigned name_hash(const unsigned char *s, size_t n)
{
  return ((unsigned)n * 7u + s[0] * 31u + s[n - 1] * 17u + s[n / 2]) &
         (NAME_SLOTS - 1);
}

/* memcmp for the few bytes of a field name, without the call. */
static int same_bytes(const char *a, const char *b, size_t n)
{
  size_t i;
  for(i = 0; i < n; i++) {
    if(a[i] != b[i])
      return 0;
  }
  return 1;
}

static void name_init(void)
{
  int i;
  for(i = 0; i < LF_N_COUNT; i++) {
    unsigned h;
    name_len[i] = (unsigned char)strlen(names[i]);
    h = name_hash((const unsigned char *)names[i], name_len[i]);
    while(name_slot[h])
      h = (h + 1) & (NAME_SLOTS - 1);
    name_slot[h] = (unsigned char)(i + 1);
  }
}

void lf_schema_init(void)
{
  pthread_once(&name_once, name_init);
}

int lf_name_lookup(const char *s, size_t n)
{
  unsigned h;
  if(n == 0 || n > NAME_MAX_LEN)
    return -1;
  h = name_hash((const unsigned char *)s, n);
  while(name_slot[h]) {
    int i = name_slot[h] - 1;
    if(name_len[i] == n && same_bytes(names[i], s, n))
      return i;
    h = (h + 1) & (NAME_SLOTS - 1);
  }
  return -1;
}

const char *lf_name_text(int name)
{
  return name >= 0 && name < LF_N_COUNT ? names[name] : "?";
}

/* The envelope: id and timestamp are filled in when missing. */
static const unsigned char envelope_kind[LF_N_COUNT] = {
  [LF_N_ID] = LF_K_ID, [LF_N_TYPE] = LF_K_TYPE,
  [LF_N_TIMESTAMP] = LF_K_TIME, [LF_N_BODY] = LF_K_BODY,
  [LF_N_METADATA] = LF_K_ANY
};

const struct lf_schema lf_schema_envelope = {
  "event envelope", envelope_kind,
  LF_BIT(LF_N_TYPE) | LF_BIT(LF_N_BODY),
  LF_BIT(LF_N_ID) | LF_BIT(LF_N_TYPE) | LF_BIT(LF_N_TIMESTAMP) |
  LF_BIT(LF_N_BODY),
  LF_CHECK_NONE
};

/* trace-create.  The schema lets id be absent, but the server then
   drops the trace without a word, so the client requires it. */
static const unsigned char trace_kind[LF_N_COUNT] = {
  [LF_N_ID] = LF_K_ID, [LF_N_TIMESTAMP] = LF_K_TIME,
  [LF_N_NAME] = LF_K_NAME, [LF_N_EXTERNAL_ID] = LF_K_STRING,
  [LF_N_INPUT] = LF_K_ANY, [LF_N_OUTPUT] = LF_K_ANY,
  [LF_N_SESSION_ID] = LF_K_STRING, [LF_N_USER_ID] = LF_K_STRING,
  [LF_N_ENVIRONMENT] = LF_K_STRING, [LF_N_METADATA] = LF_K_ANY,
  [LF_N_RELEASE] = LF_K_STRING, [LF_N_VERSION] = LF_K_STRING,
  [LF_N_PUBLIC] = LF_K_BOOL, [LF_N_TAGS] = LF_K_TAGS
};

static const struct lf_schema trace_schema = {
  "trace body", trace_kind,
  LF_BIT(LF_N_ID),
  LF_BIT(LF_N_ID) | LF_BIT(LF_N_ENVIRONMENT),
  LF_CHECK_NONE
};

/* The fields every observation body has (event-create). */
#define OBSERVATION_KINDS \
  [LF_N_ID] = LF_K_ID, [LF_N_TRACE_ID] = LF_K_ID, \
  [LF_N_ENVIRONMENT] = LF_K_STRING, [LF_N_NAME] = LF_K_STRING, \
  [LF_N_START_TIME] = LF_K_TIME, [LF_N_METADATA] = LF_K_ANY, \
  [LF_N_INPUT] = LF_K_ANY, [LF_N_OUTPUT] = LF_K_ANY, \
  [LF_N_LEVEL] = LF_K_LEVEL, [LF_N_STATUS_MESSAGE] = LF_K_STRING, \
  [LF_N_PARENT_OBSERVATION_ID] = LF_K_STRING, \
  [LF_N_VERSION] = LF_K_STRING

/* What generation bodies add to span bodies. */
#define GENERATION_KINDS \
  [LF_N_COMPLETION_START_TIME] = LF_K_TIME, [LF_N_MODEL] = LF_K_STRING, \
  [LF_N_MODEL_PARAMETERS] = LF_K_MODEL_PARAMS, [LF_N_USAGE] = LF_K_USAGE, \
  [LF_N_USAGE_DETAILS] = LF_K_USAGE_DETAILS, \
  [LF_N_COST_DETAILS] = LF_K_COST_DETAILS, \
  [LF_N_PROMPT_NAME] = LF_K_STRING, [LF_N_PROMPT_VERSION] = LF_K_INT

#define OBSERVATION_REQUIRED LF_BIT(LF_N_ID)
#define OBSERVATION_NONNULL (LF_BIT(LF_N_ID) | LF_BIT(LF_N_ENVIRONMENT))

static const unsigned char event_kind[LF_N_COUNT] = {
  OBSERVATION_KINDS
};

static const unsigned char span_kind[LF_N_COUNT] = {
  OBSERVATION_KINDS, [LF_N_END_TIME] = LF_K_TIME
};

static const unsigned char generation_kind[LF_N_COUNT] = {
  OBSERVATION_KINDS, [LF_N_END_TIME] = LF_K_TIME, GENERATION_KINDS
};

static const struct lf_schema event_schema = {
  "event body", event_kind, OBSERVATION_REQUIRED, OBSERVATION_NONNULL,
  LF_CHECK_NONE
};

static const struct lf_schema span_schema = {
  "span body", span_kind, OBSERVATION_REQUIRED, OBSERVATION_NONNULL,
  LF_CHECK_NONE
};

static const struct lf_schema generation_schema = {
  "generation body", generation_kind, OBSERVATION_REQUIRED,
  OBSERVATION_NONNULL, LF_CHECK_PROMPT
};

/* score-create. */
static const unsigned char score_kind[LF_N_COUNT] = {
  [LF_N_ID] = LF_K_ID, [LF_N_NAME] = LF_K_NONEMPTY,
  [LF_N_TRACE_ID] = LF_K_STRING, [LF_N_SESSION_ID] = LF_K_STRING,
  [LF_N_DATASET_RUN_ID] = LF_K_STRING, [LF_N_ENVIRONMENT] = LF_K_STRING,
  [LF_N_OBSERVATION_ID] = LF_K_STRING, [LF_N_COMMENT] = LF_K_STRING,
  [LF_N_METADATA] = LF_K_ANY, [LF_N_SOURCE] = LF_K_SOURCE,
  [LF_N_VALUE] = LF_K_SCORE_VALUE, [LF_N_DATA_TYPE] = LF_K_DATA_TYPE,
  [LF_N_CONFIG_ID] = LF_K_STRING, [LF_N_QUEUE_ID] = LF_K_STRING,
  [LF_N_EXECUTION_TRACE_ID] = LF_K_STRING
};

static const struct lf_schema score_schema = {
  "score body", score_kind,
  LF_BIT(LF_N_NAME) | LF_BIT(LF_N_VALUE),
  LF_BIT(LF_N_NAME) | LF_BIT(LF_N_VALUE) | LF_BIT(LF_N_ENVIRONMENT) |
  LF_BIT(LF_N_SOURCE) | LF_BIT(LF_N_DATA_TYPE),
  LF_CHECK_SCORE
};

/* sdk-log: the server logs it and forgets it. */
static const unsigned char sdk_log_kind[LF_N_COUNT] = {
  [LF_N_LOG] = LF_K_ANY, [LF_N_ID] = LF_K_STRING
};

static const struct lf_schema sdk_log_schema = {
  "sdk-log body", sdk_log_kind, LF_BIT(LF_N_LOG), LF_BIT(LF_N_LOG),
  LF_CHECK_NONE
};

/* observation-create and observation-update (deprecated). */
static const unsigned char legacy_kind[LF_N_COUNT] = {
  [LF_N_ID] = LF_K_ID, [LF_N_TRACE_ID] = LF_K_ID,
  [LF_N_TYPE] = LF_K_OBS_TYPE, [LF_N_NAME] = LF_K_STRING,
  [LF_N_START_TIME] = LF_K_TIME, [LF_N_END_TIME] = LF_K_TIME,
  [LF_N_COMPLETION_START_TIME] = LF_K_TIME, [LF_N_MODEL] = LF_K_STRING,
  [LF_N_MODEL_PARAMETERS] = LF_K_MODEL_SCALARS,
  [LF_N_INPUT] = LF_K_ANY, [LF_N_OUTPUT] = LF_K_ANY,
  [LF_N_USAGE] = LF_K_USAGE, [LF_N_USAGE_DETAILS] = LF_K_USAGE_DETAILS,
  [LF_N_COST_DETAILS] = LF_K_COST_DETAILS, [LF_N_METADATA] = LF_K_ANY,
  [LF_N_PARENT_OBSERVATION_ID] = LF_K_STRING, [LF_N_LEVEL] = LF_K_LEVEL,
  [LF_N_STATUS_MESSAGE] = LF_K_STRING, [LF_N_VERSION] = LF_K_STRING
};

static const struct lf_schema legacy_schema = {
  "observation body", legacy_kind, LF_BIT(LF_N_TYPE), LF_BIT(LF_N_TYPE),
  LF_CHECK_NONE
};

/* usage, in either its own or the OpenAI-style field names. */
static const unsigned char usage_kind[LF_N_COUNT] = {
  [LF_N_INPUT] = LF_K_INT, [LF_N_OUTPUT] = LF_K_INT,
  [LF_N_TOTAL] = LF_K_INT, [LF_N_UNIT] = LF_K_UNIT,
  [LF_N_PROMPT_TOKENS] = LF_K_INT, [LF_N_COMPLETION_TOKENS] = LF_K_INT,
  [LF_N_TOTAL_TOKENS] = LF_K_INT, [LF_N_INPUT_COST] = LF_K_NUMBER,
  [LF_N_OUTPUT_COST] = LF_K_NUMBER, [LF_N_TOTAL_COST] = LF_K_NUMBER
};

const struct lf_schema lf_schema_usage = {
  "usage", usage_kind, 0, 0, LF_CHECK_NONE
};

struct event_type {
  const char *name;
  const struct lf_schema *body;
};

/* Ordered by how often a client sends them. */
static const struct event_type event_types[] = {
  { "generation-create", &generation_schema },
  { "span-create", &span_schema },
  { "trace-create", &trace_schema },
  { "generation-update", &generation_schema },
  { "span-update", &span_schema },
  { "event-create", &event_schema },
  { "score-create", &score_schema },
  { "agent-create", &generation_schema },
  { "tool-create", &generation_schema },
  { "chain-create", &generation_schema },
  { "retriever-create", &generation_schema },
  { "evaluator-create", &generation_schema },
  { "embedding-create", &generation_schema },
  { "guardrail-create", &generation_schema },
  { "sdk-log", &sdk_log_schema },
  { "observation-create", &legacy_schema },
  { "observation-update", &legacy_schema },
  { NULL, NULL }
};

const char lf_type_list[] =
  "trace-create, span-create, span-update, generation-create, "
  "generation-update, event-create, score-create, agent-create, "
  "tool-create, chain-create, retriever-create, evaluator-create, "
  "embedding-create, guardrail-create, sdk-log, observation-create, "
  "observation-update";

const struct lf_schema *lf_schema_for_type(const char *s, size_t n,
                                           int *internal)
{
  const struct event_type *t;
  *internal = 0;
  if(n == 0)
    return NULL;
  for(t = event_types; t->name; t++) {
    if(t->name[0] == s[0] && strlen(t->name) == n && !memcmp(t->name, s, n))
      return t->body;
  }
  if(n == 23 && !memcmp(s, "dataset-run-item-create", n))
    *internal = 1;
  return NULL;
}

static const char *const level_values[] = {
  "DEBUG", "DEFAULT", "WARNING", "ERROR", NULL
};
static const char *const unit_values[] = {
  "CHARACTERS", "TOKENS", "MILLISECONDS", "SECONDS", "IMAGES", "REQUESTS",
  NULL
};
static const char *const data_type_values[] = {
  "NUMERIC", "CATEGORICAL", "BOOLEAN", "CORRECTION", "TEXT", NULL
};
static const char *const source_values[] = {
  "API", "EVAL", "ANNOTATION", NULL
};
static const char *const obs_type_values[] = {
  "SPAN", "GENERATION", "EVENT", NULL
};

const char *const *lf_enum_values(int kind)
{
  switch(kind) {
  case LF_K_LEVEL: return level_values;
  case LF_K_UNIT: return unit_values;
  case LF_K_DATA_TYPE: return data_type_values;
  case LF_K_SOURCE: return source_values;
  case LF_K_OBS_TYPE: return obs_type_values;
  default: return NULL;
  }
}

const char *lf_enum_list(int kind)
{
  switch(kind) {
  case LF_K_LEVEL: return "DEBUG, DEFAULT, WARNING, ERROR";
  case LF_K_UNIT:
    return "CHARACTERS, TOKENS, MILLISECONDS, SECONDS, IMAGES, REQUESTS";
  case LF_K_DATA_TYPE:
    return "NUMERIC, CATEGORICAL, BOOLEAN, CORRECTION, TEXT";
  case LF_K_SOURCE: return "API, EVAL, ANNOTATION";
  case LF_K_OBS_TYPE: return "SPAN, GENERATION, EVENT";
  default: return "";
  }
}

static int lower(int c)
{
  return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* Whether the n-byte key s equals name when letter case is ignored. */
static int same_letters(const char *s, size_t n, const char *name)
{
  size_t i;
  for(i = 0; i < n; i++) {
    if(!name[i] || lower((unsigned char)s[i]) != lower(name[i]))
      return 0;
  }
  return name[n] == '\0';
}

int lf_schema_suggest(const struct lf_schema *sc, const char *s, size_t n)
{
  char camel[SUGGEST_MAX];
  size_t i, k = 0;
  int name, up = 0;
  if(n > SUGGEST_MAX)
    return -1;
  for(i = 0; i < n; i++) {
    if(s[i] == '_' || s[i] == '-') {
      up = k > 0;
      continue;
    }
    camel[k++] = up && s[i] >= 'a' && s[i] <= 'z' ? (char)(s[i] - 32)
                                                   : s[i];
    up = 0;
  }
  name = lf_name_lookup(camel, k);
  if(name >= 0 && sc->kind[name])
    return name;
  for(name = 0; name < LF_N_COUNT; name++) {
    if(sc->kind[name] && same_letters(camel, k, names[name]))
      return name;
  }
  return -1;
}
