/*
** lf_uuid.c: random identifiers from getrandom(), falling back to
** /dev/urandom on kernels older than 3.17.
*/
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "lf_uuid.h"

static const char hex_digits[] = "0123456789abcdef";

/* Reads n bytes from /dev/urandom; LF_OK or LF_EIO. */
static int urandom(unsigned char *p, size_t n)
{
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if(fd < 0)
    return LF_EIO;
  while(n) {
    ssize_t got = read(fd, p, n);
    if(got < 0 && errno == EINTR)
      continue;
    if(got <= 0) {
      close(fd);
      return LF_EIO;
    }
    p += got;
    n -= (size_t)got;
  }
  close(fd);
  return LF_OK;
}

int lf_random(void *buf, size_t n)
{
  unsigned char *p = buf;
  while(n) {
    ssize_t got = getrandom(p, n, 0);
    if(got < 0 && errno == EINTR)
      continue;
    if(got < 0)
      return errno == ENOSYS ? urandom(p, n) : LF_EIO;
    p += got;
    n -= (size_t)got;
  }
  return LF_OK;
}

/* Writes n bytes as 2n hex characters at out. */
static void put_hex(char *out, const unsigned char *p, size_t n)
{
  size_t i;
  for(i = 0; i < n; i++) {
    out[2 * i] = hex_digits[p[i] >> 4];
    out[2 * i + 1] = hex_digits[p[i] & 15];
  }
}

int lf_uuid4(char *out)
{
  unsigned char r[16];
  int result = lf_random(r, sizeof(r));
  if(result)
    return result;
  r[6] = (unsigned char)((r[6] & 0x0f) | 0x40);     /* version 4 */
  r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);     /* variant 10xx */
  put_hex(out, r, 4);
  out[8] = '-';
  put_hex(out + 9, r + 4, 2);
  out[13] = '-';
  put_hex(out + 14, r + 6, 2);
  out[18] = '-';
  put_hex(out + 19, r + 8, 2);
  out[23] = '-';
  put_hex(out + 24, r + 10, 6);
  out[LF_UUID_LEN] = '\0';
  return LF_OK;
}

/* Tries before giving up on drawing an id that is not all zeros; four
   zero draws in a row mean the generator is broken. */
#define HEX_ID_TRIES 4

int lf_hex_id(char *out, size_t n)
{
  unsigned char r[LF_HEX_ID_MAX / 2];
  size_t i, k = n / 2;
  int tries;
  if(n == 0 || n % 2 || n > LF_HEX_ID_MAX)
    return LF_EINVAL;
  for(tries = 0; tries < HEX_ID_TRIES; tries++) {
    unsigned char any = 0;
    int result = lf_random(r, k);
    if(result)
      return result;
    for(i = 0; i < k; i++)
      any |= r[i];
    if(any) {
      put_hex(out, r, k);
      out[n] = '\0';
      return LF_OK;
    }
  }
  return LF_EIO;
}
