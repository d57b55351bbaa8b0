/*
** lf_time.c: checking and writing ISO 8601 date-times.
**
** Dates are converted with the proleptic Gregorian calendar counted in
** 400-year eras of 146097 days, which needs no table and no libc time
** zone code (gmtime would consult TZ and is not thread-safe).
*/
#include <string.h>
#include <time.h>

#include "lf_buf.h"
#include "lf_time.h"

/* Microseconds from 0000-01-01T00:00:00Z to the Unix epoch, negated:
   the earliest time a four-digit year can show. */
#define MIN_US (-62167219200LL * 1000000LL)

/* 9999-12-31T23:59:59.999999Z, the latest time a four-digit year can
   show, in microseconds since the epoch. */
#define MAX_US (253402300799LL * 1000000LL + 999999LL)

/* Days in 400 Gregorian years, and from 0000-03-01 to the epoch. */
#define ERA_DAYS 146097
#define EPOCH_SHIFT 719468

#define SEC_US 1000000LL
#define DAY_SEC 86400LL

static int is_digit(char c)
{
  return c >= '0' && c <= '9';
}

/* The value of the two digits at s, or -1 when they are not digits. */
static int two_digits(const char *s)
{
  if(!is_digit(s[0]) || !is_digit(s[1]))
    return -1;
  return (s[0] - '0') * 10 + (s[1] - '0');
}

static int is_leap(int y)
{
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int month_days(int y, int m)
{
  static const unsigned char days[12] = {
    31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31
  };
  return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

/* Checks the zone at s (n bytes left): Z, or +HH:MM / -HH:MM. */
static const char *check_zone(const char *s, size_t n)
{
  int h, m;
  if(n == 0)
    return "missing time zone (add Z or +HH:MM)";
  if(s[0] == 'Z')
    return n == 1 ? NULL : "unexpected text after the time zone";
  if(s[0] == 'z')
    return "lowercase z (use Z)";
  if(s[0] != '+' && s[0] != '-')
    return "missing time zone (add Z or +HH:MM)";
  if(n < 6 || s[3] != ':')
    return "time zone offset must be +HH:MM or -HH:MM";
  h = two_digits(s + 1);
  m = two_digits(s + 4);
  if(h < 0 || m < 0)
    return "time zone offset must be +HH:MM or -HH:MM";
  if(h > 23 || m > 59)
    return "time zone offset out of range";
  return n == 6 ? NULL : "unexpected text after the time zone";
}

const char *lf_time_check(const char *s, size_t n)
{
  static const char *const shape =
    "not of the form YYYY-MM-DDTHH:MM[:SS[.fraction]]";
  int y, mo, d, h, mi;
  size_t p;
  if(n < 16 || s[4] != '-' || s[7] != '-' || s[13] != ':')
    return shape;
  if(two_digits(s) < 0 || two_digits(s + 2) < 0)
    return shape;
  y = two_digits(s) * 100 + two_digits(s + 2);
  mo = two_digits(s + 5);
  d = two_digits(s + 8);
  h = two_digits(s + 11);
  mi = two_digits(s + 14);
  if(mo < 0 || d < 0 || h < 0 || mi < 0)
    return shape;
  if(s[10] != 'T')
    return s[10] == ' ' ? "a space separates date and time (use T)"
                        : shape;
  if(mo < 1 || mo > 12 || d < 1 || d > month_days(y, mo))
    return "no such date";
  if(h > 23 || mi > 59)
    return "time of day out of range";
  p = 16;
  if(p < n && s[p] == ':') {
    int sec;
    if(n - p < 3 || (sec = two_digits(s + p + 1)) < 0)
      return shape;
    if(sec > 59)
      return "time of day out of range";
    p += 3;
    if(p < n && s[p] == '.') {
      size_t q = ++p;
      while(p < n && is_digit(s[p]))
        p++;
      if(p == q)
        return "no digits after the decimal point";
    }
  }
  return check_zone(s + p, n - p);
}

/* Year, month and day of a day count since the epoch. */
static void civil(int64_t days, int *y, int *m, int *d)
{
  int64_t z = days + EPOCH_SHIFT;
  int64_t era = (z >= 0 ? z : z - (ERA_DAYS - 1)) / ERA_DAYS;
  int64_t doe = z - era * ERA_DAYS;                    /* [0, 146096] */
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);  /* from Mar 1 */
  int64_t mp = (5 * doy + 2) / 153;                    /* Mar = 0 */
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = (int)(yoe + era * 400 + (*m <= 2));
}

static void put2(char *o, int v)
{
  o[0] = (char)('0' + v / 10);
  o[1] = (char)('0' + v % 10);
}

int lf_time_format_us(int64_t us, char *out)
{
  int64_t secs, days, rem;
  int y, m, d, frac, i;
  if(us < MIN_US || us > MAX_US)
    return LF_EINVAL;
  secs = us >= 0 ? us / SEC_US : -((-us + SEC_US - 1) / SEC_US);
  frac = (int)(us - secs * SEC_US);
  days = secs >= 0 ? secs / DAY_SEC : -((-secs + DAY_SEC - 1) / DAY_SEC);
  rem = secs - days * DAY_SEC;
  civil(days, &y, &m, &d);
  put2(out, y / 100);
  put2(out + 2, y % 100);
  out[4] = '-';
  put2(out + 5, m);
  out[7] = '-';
  put2(out + 8, d);
  out[10] = 'T';
  put2(out + 11, (int)(rem / 3600));
  out[13] = ':';
  put2(out + 14, (int)(rem / 60 % 60));
  out[16] = ':';
  put2(out + 17, (int)(rem % 60));
  out[19] = '.';
  for(i = 25; i >= 20; i--) {
    out[i] = (char)('0' + frac % 10);
    frac /= 10;
  }
  out[26] = 'Z';
  out[27] = '\0';
  return LF_OK;
}

/* The whole and fractional parts are scaled apart: scaling the whole
   epoch first would round away the microseconds of today's times. */
int lf_time_format(double epoch, char *out)
{
  double unit = epoch > LF_TIME_MS_ABOVE ? 1e3 : 1e6;  /* us per unit */
  double frac;
  int64_t whole, us;
  /* the margin keeps the casts defined; exact limits are checked later */
  if(!(epoch > (double)MIN_US / unit - 1 && epoch < (double)MAX_US / unit + 1))
    return LF_EINVAL;                   /* also NaN */
  whole = (int64_t)epoch;               /* truncates towards zero */
  if((double)whole > epoch)
    whole--;                            /* floor */
  frac = epoch - (double)whole;         /* exact, in [0, 1) */
  us = (int64_t)(frac * unit + 0.5);
  return lf_time_format_us(whole * (int64_t)unit + us, out);
}

int lf_time_now(char *out)
{
  struct timespec ts;
  if(clock_gettime(CLOCK_REALTIME, &ts))
    return LF_EIO;
  return lf_time_format_us((int64_t)ts.tv_sec * SEC_US + ts.tv_nsec / 1000,
                           out);
}
