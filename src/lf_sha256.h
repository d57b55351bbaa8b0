/*
** lf_sha256.h: SHA-256 (FIPS 180-4) and the trace sampling rule built on
** it.
**
** Sampling keeps or drops whole traces, decided from the trace id alone,
** so every process that sees the same id decides the same way: the
** first 8 hex digits of SHA-256(trace id) read as an integer, divided by
** 0xFFFFFFFF, must be below the rate (the rule of Langfuse's Python SDK
** sampler).
*/
#ifndef LF_SHA256_H
#define LF_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* Bytes of a digest. */
#define LF_SHA256_LEN 32

/* Writes the digest of n bytes at data into out. */
void lf_sha256(const void *data, size_t n, unsigned char out[LF_SHA256_LEN]);

/* 1 when the trace with this id (n bytes) is kept at rate: always for a
   rate of 1 or more, never for 0 or less (and NaN). */
int lf_sample_keep(const char *trace_id, size_t n, double rate);

#endif
