/*
** lf_uuid.h: random identifiers from the kernel's generator.
**
** Envelope ids are UUIDv4 (what the ingestion API documents); trace and
** span ids for OTLP are 32 and 16 lowercase hex characters.  Every call
** reads fresh bytes with getrandom(), so nothing is cached that a
** fork() could duplicate into two worker processes.
*/
#ifndef LF_UUID_H
#define LF_UUID_H

#include <stddef.h>

#include "lf_buf.h"

/* Length of a UUID in its 8-4-4-4-12 text form. */
#define LF_UUID_LEN 36

/* Longest hex id lf_hex_id writes (a 128-bit trace id). */
#define LF_HEX_ID_MAX 32

/* Fills buf with n random bytes.  LF_OK, or LF_EIO when the kernel has
   no randomness to give (no getrandom and no /dev/urandom). */
int lf_random(void *buf, size_t n) LF_WARN_UNUSED;

/* Writes a random (version 4, variant 1) UUID and a NUL into out, which
   holds LF_UUID_LEN + 1 bytes.  LF_OK or LF_EIO. */
int lf_uuid4(char *out) LF_WARN_UNUSED;

/* Writes n random lowercase hex characters and a NUL into out; n is
   even and at most LF_HEX_ID_MAX.  The id is never all zeros, which
   OpenTelemetry treats as invalid.  LF_OK, LF_EINVAL for a bad n, or
   LF_EIO. */
int lf_hex_id(char *out, size_t n) LF_WARN_UNUSED;

#endif
