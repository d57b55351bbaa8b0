/*
** lf_time.h: the date-times the ingestion API accepts.
**
** The server parses every date-time with zod's iso.datetime({offset:
** true}): YYYY-MM-DDTHH:MM[:SS[.fraction]] then Z or +HH:MM / -HH:MM,
** on a real calendar date.  The client writes UTC with microseconds,
** YYYY-MM-DDTHH:MM:SS.ffffffZ, the form Langfuse's Python SDK sends.
*/
#ifndef LF_TIME_H
#define LF_TIME_H

#include <stddef.h>
#include <stdint.h>

/* Length of YYYY-MM-DDTHH:MM:SS.ffffffZ. */
#define LF_TIME_LEN 27

/* Epoch numbers above this are milliseconds: 1e11 seconds is the year
   5138, while milliseconds of this century are about 1.7e12. */
#define LF_TIME_MS_ABOVE 1e11

/* NULL when s (n bytes) is a date-time the server accepts, otherwise a
   short static reason such as "no such date". */
const char *lf_time_check(const char *s, size_t n);

/* Writes microseconds since the Unix epoch as LF_TIME_LEN characters
   and a NUL into out.  Returns LF_OK, or LF_EINVAL outside the years
   0000 to 9999. */
int lf_time_format_us(int64_t us, char *out);

/* Writes an epoch number (seconds, or milliseconds when above
   LF_TIME_MS_ABOVE), rounded to the microsecond.  LF_EINVAL for NaN,
   infinities and years outside 0000 to 9999. */
int lf_time_format(double epoch, char *out);

/* Writes the current UTC time.  LF_EIO when the clock cannot be read. */
int lf_time_now(char *out);

#endif
