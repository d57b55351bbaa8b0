/*
** check.h: the quiet checks of the C test programs that run many of
** them: a passing check only counts, a failing one prints its line and
** why.  Include it once, after stdio.h and stdarg.h; main prints the
** counts ("N passed, N failed").
*/
#ifndef TESTS_CHECK_H
#define TESTS_CHECK_H

static int passed, failed;

static void check(int ok, int line, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));
static void check(int ok, int line, const char *fmt, ...)
{
  va_list ap;
  if(ok) {
    passed++;
    return;
  }
  failed++;
  fprintf(stdout, "FAIL line %d: ", line);
  va_start(ap, fmt);
  vfprintf(stdout, fmt, ap);
  va_end(ap);
  fputc('\n', stdout);
  fflush(stdout);
}

#define CHECK(c, ...) check(!!(c), __LINE__, __VA_ARGS__)

#endif
