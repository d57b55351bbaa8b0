/*
** json_check.h: a small strict JSON checker for the fuzz targets.
**
** Accepts exactly one RFC 8259 value with optional white space around
** it, and is stricter than the RFC where our encoder promises more:
** strings must be valid UTF-8 (no overlong forms, no surrogates, nothing
** past U+10FFFF), a \u escape of a surrogate must be a proper pair, and
** an object must not repeat a key (checked for the first KEYS_CHECKED
** keys).  Nesting deeper than JSON_CHECK_DEPTH is refused.
*/
#ifndef JSON_CHECK_H
#define JSON_CHECK_H

#include <stddef.h>

/* Deepest nesting accepted: the encoder stops at 1000 levels, and an
   event or a batch wraps a few more around that. */
#define JSON_CHECK_DEPTH 1100

/* Returns 1 when p[0..len) is one valid JSON value, else 0 with *why
   (a static string) and *at (the byte offset) set. */
int json_check(const char *p, size_t len, const char **why, size_t *at);

#endif
