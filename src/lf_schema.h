/*
** lf_schema.h: the ingestion API's event schemas as tables the encoder
** walks with (internal to the encoder).
**
** Every field name any schema knows gets a small number (enum lf_name),
** found from the key bytes by lf_name_lookup.  A schema maps each number
** to the kind of value the field takes (enum lf_fkind), LF_K_NONE for a
** field it does not have, and keeps bit masks of its required fields and
** of the fields where null is refused.
*/
#ifndef LF_SCHEMA_H
#define LF_SCHEMA_H

#include <stddef.h>
#include <stdint.h>

enum lf_name {
  /* envelope */
  LF_N_ID, LF_N_TYPE, LF_N_TIMESTAMP, LF_N_BODY, LF_N_METADATA,
  /* trace */
  LF_N_NAME, LF_N_USER_ID, LF_N_SESSION_ID, LF_N_RELEASE, LF_N_VERSION,
  LF_N_EXTERNAL_ID, LF_N_INPUT, LF_N_OUTPUT, LF_N_TAGS, LF_N_PUBLIC,
  LF_N_ENVIRONMENT,
  /* observations */
  LF_N_TRACE_ID, LF_N_PARENT_OBSERVATION_ID, LF_N_STATUS_MESSAGE,
  LF_N_START_TIME, LF_N_LEVEL, LF_N_END_TIME, LF_N_COMPLETION_START_TIME,
  LF_N_MODEL, LF_N_MODEL_PARAMETERS, LF_N_USAGE, LF_N_USAGE_DETAILS,
  LF_N_COST_DETAILS, LF_N_PROMPT_NAME, LF_N_PROMPT_VERSION,
  /* scores */
  LF_N_VALUE, LF_N_DATASET_RUN_ID, LF_N_OBSERVATION_ID, LF_N_DATA_TYPE,
  LF_N_CONFIG_ID, LF_N_COMMENT, LF_N_SOURCE, LF_N_QUEUE_ID,
  LF_N_EXECUTION_TRACE_ID,
  /* sdk-log */
  LF_N_LOG,
  /* usage */
  LF_N_TOTAL, LF_N_UNIT, LF_N_INPUT_COST, LF_N_OUTPUT_COST, LF_N_TOTAL_COST,
  LF_N_PROMPT_TOKENS, LF_N_COMPLETION_TOKENS, LF_N_TOTAL_TOKENS,
  LF_N_COUNT
};

/* What a field takes. */
enum lf_fkind {
  LF_K_NONE = 0,        /* not a field of this schema */
  LF_K_ANY,             /* any JSON value */
  LF_K_ID,              /* 1 to 800 characters, no carriage return */
  LF_K_STRING,
  LF_K_NAME,            /* a trace name: at most 1000 characters */
  LF_K_NONEMPTY,        /* at least one character */
  LF_K_TIME,            /* ISO 8601 date-time, or an epoch number */
  LF_K_BOOL,
  LF_K_INT,             /* a safe integer (|v| < 2^53) */
  LF_K_NUMBER,
  LF_K_TAGS,            /* array of strings */
  LF_K_LEVEL,           /* enums, listed by lf_enum_values */
  LF_K_UNIT,
  LF_K_DATA_TYPE,
  LF_K_SOURCE,
  LF_K_OBS_TYPE,
  LF_K_USAGE,           /* object with lf_schema_usage */
  LF_K_USAGE_DETAILS,   /* string -> non-negative integer */
  LF_K_COST_DETAILS,    /* string -> non-negative number */
  LF_K_MODEL_PARAMS,    /* string -> scalar, string[] or string map */
  LF_K_MODEL_SCALARS,   /* string -> scalar (legacy observations) */
  LF_K_SCORE_VALUE,     /* number or string, checked with dataType */
  LF_K_TYPE,            /* the envelope's type */
  LF_K_BODY             /* the envelope's body */
};

/* Checks across fields, run when an object is complete. */
enum lf_check {
  LF_CHECK_NONE,
  LF_CHECK_PROMPT,      /* promptName and promptVersion together */
  LF_CHECK_SCORE        /* dataType/value, traceId/sessionId/... */
};

/* One bit per enum lf_name in a field mask. */
#define LF_BIT(n) ((uint64_t)1 << (n))

struct lf_schema {
  const char *what;           /* "generation body", for messages */
  const unsigned char *kind;  /* LF_N_COUNT entries of enum lf_fkind */
  uint64_t required;          /* fields that must be present */
  uint64_t nonnull;           /* fields where null is refused */
  int check;                  /* enum lf_check */
};

extern const struct lf_schema lf_schema_envelope;
extern const struct lf_schema lf_schema_usage;

/* Builds the name table; call before lf_name_lookup (any thread, any
   number of times). */
void lf_schema_init(void);

/* The name number of the n-byte key s, or -1 for a name no schema
   knows. */
int lf_name_lookup(const char *s, size_t n);

/* The text of a name number. */
const char *lf_name_text(int name);

/*
** The body schema of the event type s (n bytes), or NULL for an unknown
** type.  *internal is set to 1 for a type the server refuses from
** public callers (dataset-run-item-create), else 0.
*/
const struct lf_schema *lf_schema_for_type(const char *s, size_t n,
                                           int *internal);

/* The known event types, comma separated, for messages. */
extern const char lf_type_list[];

/* The allowed values of an enum kind, NULL-terminated, and the same as
   one comma-separated string for messages. */
const char *const *lf_enum_values(int kind);
const char *lf_enum_list(int kind);

/*
** A known field of sc that the unknown key s (n bytes) probably meant:
** the camelCase form of a snake_case key (start_time -> startTime), or a
** field that differs only in letter case.  Returns the name number, or
** -1 when nothing is close.
*/
int lf_schema_suggest(const struct lf_schema *sc, const char *s, size_t n);

#endif
