/*
** lf_sha256.c: SHA-256 over a buffer in memory, and the sampling rule
** (see lf_sha256.h).  Written for ids of a few dozen bytes: one call,
** no streaming state.
*/
#include <string.h>

#include "lf_sha256.h"

/* Bytes per block. */
#define BLOCK 64

/* The first 32 bits of the fractional parts of the cube roots of the
   first 64 primes (FIPS 180-4, 4.2.2). */
static const uint32_t k[64] = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
  0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
  0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
  0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
  0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
  0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
  0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
  0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
  0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
};

static uint32_t rotr(uint32_t x, int n)
{
  return (x >> n) | (x << (32 - n));
}

/* Mixes one 64-byte block into the state h. */
static void compress(uint32_t h[8], const unsigned char *p)
{
  uint32_t w[64], v[8];
  int i;
  for(i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
           (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
  for(i = 16; i < 64; i++) {
    uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^
                  (w[i - 15] >> 3);
    uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^
                  (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  memcpy(v, h, sizeof(v));
  for(i = 0; i < 64; i++) {
    /* v holds a..h; each round shifts them down one place */
    uint32_t e = v[4], a = v[0];
    uint32_t t1 = v[7] + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) +
                  ((e & v[5]) ^ (~e & v[6])) + k[i] + w[i];
    uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) +
                  ((a & v[1]) ^ (a & v[2]) ^ (v[1] & v[2]));
    memmove(v + 1, v, 7 * sizeof(v[0]));
    v[4] += t1;
    v[0] = t1 + t2;
  }
  for(i = 0; i < 8; i++)
    h[i] += v[i];
}

void lf_sha256(const void *data, size_t n, unsigned char out[LF_SHA256_LEN])
{
  /* the initial hash value (FIPS 180-4, 5.3.3) */
  uint32_t h[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
  };
  const unsigned char *p = data;
  unsigned char tail[2 * BLOCK];
  uint64_t bits = (uint64_t)n * 8;
  size_t rest, len, i;
  for(; n >= BLOCK; n -= BLOCK, p += BLOCK)
    compress(h, p);
  rest = n;
  memset(tail, 0, sizeof(tail));
  if(rest)
    memcpy(tail, p, rest);
  tail[rest] = 0x80;
  len = rest + 1 + 8 <= BLOCK ? BLOCK : 2 * BLOCK;
  for(i = 0; i < 8; i++)
    tail[len - 1 - i] = (unsigned char)(bits >> (8 * i));
  compress(h, tail);
  if(len > BLOCK)
    compress(h, tail + BLOCK);
  for(i = 0; i < 8; i++) {
    out[4 * i] = (unsigned char)(h[i] >> 24);
    out[4 * i + 1] = (unsigned char)(h[i] >> 16);
    out[4 * i + 2] = (unsigned char)(h[i] >> 8);
    out[4 * i + 3] = (unsigned char)h[i];
  }
}

int lf_sample_keep(const char *trace_id, size_t n, double rate)
{
  unsigned char d[LF_SHA256_LEN];
  uint32_t x;
  if(rate >= 1)
    return 1;
  if(!(rate > 0))
    return 0;
  lf_sha256(trace_id, n, d);
  x = (uint32_t)d[0] << 24 | (uint32_t)d[1] << 16 | (uint32_t)d[2] << 8 |
      (uint32_t)d[3];
  return (double)x / 4294967295.0 < rate;
}
