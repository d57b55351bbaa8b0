/*
** fuzz_spool.c: libFuzzer target for the spool reader (src/lf_spool.h).
**
** Each input becomes one segment file (and maybe its ack file) in an
** empty spool directory; the target opens the spool there, claims the
** segment and reads it to the end, then checks the reader's promises:
** every record it hands out is bytes that really are in the file at the
** offset it names, records come in file order without overlapping, and
** no sound record is lost because of damage before it.
**
** Input: a flag byte, then the file's bytes.
**   bit 0  start the file with a valid segment header
**   bit 1  build the file from record descriptions (below), with real
**          checksums, instead of taking the bytes as they are
**   bit 2  name the file .open (a dead writer's) instead of .seg
**   bit 3  ack every record as it is read
**   bit 4  give the claim back after the first record, claim again
**   bit 5  raw mode: put the last quarter of the bytes in the ack file
** A record description (bit 1): a control byte (route = bits 0-1;
** damage = bits 2-4: 0-3 none, 4 bad body checksum, 5 bad header
** checksum, 6 cut short, 7 garbage before it; bit 5: acked in the ack
** file), an id length byte, a two-byte data length, then the id and
** data bytes, and for damage 6 or 7 one more byte for the cut or the
** garbage length (the garbage comes from the input too).
*/
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "../src/lf_spool.h"

/* Records described in one input: keeps a run quick. */
#define RECORDS_MAX 64
/* Segment header and record header sizes, from the format. */
#define SEG_HDR_LEN 8
#define REC_HDR_LEN 20
#define ACK_LEN 12
/* The one segment name the target writes. */
#define SEG_BASE "seg-0000000000000001-00000001-00000001"
/* Longest log line the spool may hand to its hook. */
#define LOG_LINE_MAX 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct expect {
  uint64_t off;               /* where the sound record starts */
  size_t len;                 /* its whole size */
  int acked;
  int seen;
};

struct build {
  struct lf_buf seg;
  struct lf_buf ack;
  struct expect rec[RECORDS_MAX];
  size_t nrec;
};

static char root[256];
static char dir[300];

static void fail(const char *what)
{
  fprintf(stderr, "fuzz_spool: %s\n", what);
  abort();
}

static void must(int result)
{
  if(result != LF_OK)
    fail("out of memory building the input");
}

static void put32(unsigned char *p, uint32_t v)
{
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

/* Deletes the files directly in path, then path itself. */
static void remove_flat(const char *path)
{
  DIR *d = opendir(path);
  struct dirent *e;
  while(d && (e = readdir(d))) {
    char f[900];
    if(!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
      continue;
    snprintf(f, sizeof(f), "%s/%s", path, e->d_name);
    unlink(f);
  }
  if(d)
    closedir(d);
  rmdir(path);
}

/* Removes the spool directory and what the spool put in it. */
static void clear_dir(void)
{
  char path[600];
  snprintf(path, sizeof(path), "%s/quarantine", dir);
  remove_flat(path);
  remove_flat(dir);
}

static void cleanup(void)
{
  clear_dir();
  rmdir(root);
}

static void log_hook(void *ud, int level, const char *msg)
{
  (void)ud;
  (void)level;
  if(strlen(msg) > LOG_LINE_MAX || strchr(msg, '\n'))
    fail("log line too long or holding a newline");
}

/* Appends one record header and body with real checksums; damage 4
   breaks the body checksum, 5 the header checksum. */
static void add_record(struct lf_buf *b, int route, const uint8_t *id,
                       size_t id_len, const uint8_t *d, size_t len,
                       int damage)
{
  unsigned char h[REC_HDR_LEN];
  uint32_t body = (uint32_t)crc32(0L, Z_NULL, 0);
  body = (uint32_t)crc32(body, id, (uInt)id_len);
  body = (uint32_t)crc32(body, d, (uInt)len);
  memcpy(h, "\xfe" "LFR", 4);
  h[4] = 1;
  h[5] = (unsigned char)route;
  h[6] = (unsigned char)id_len;
  h[7] = (unsigned char)(id_len >> 8);
  put32(h + 8, (uint32_t)len);
  put32(h + 12, damage == 4 ? body ^ 1u : body);
  put32(h + 16, (uint32_t)crc32(crc32(0L, Z_NULL, 0), h, 16) ^
                (damage == 5 ? 1u : 0u));
  must(lf_buf_add(b, h, sizeof(h)));
  must(lf_buf_add(b, id, id_len));
  must(lf_buf_add(b, d, len));
}

static void add_ack(struct lf_buf *b, uint64_t off)
{
  unsigned char e[ACK_LEN];
  put32(e, (uint32_t)off);
  put32(e + 4, (uint32_t)(off >> 32));
  put32(e + 8, (uint32_t)crc32(crc32(0L, Z_NULL, 0), e, 8));
  must(lf_buf_add(b, e, sizeof(e)));
}

/* Takes n bytes from the input, fewer when it runs out. */
static const uint8_t *take(const uint8_t **p, const uint8_t *end, size_t *n)
{
  const uint8_t *at = *p;
  if(*n > (size_t)(end - at))
    *n = (size_t)(end - at);
  *p += *n;
  return at;
}

static int take_byte(const uint8_t **p, const uint8_t *end)
{
  return *p < end ? *(*p)++ : 0;
}

/* Builds the segment from record descriptions (flag bit 1). */
static void build_records(struct build *bd, const uint8_t *p,
                          const uint8_t *end)
{
  while(p < end && bd->nrec < RECORDS_MAX) {
    int ctl = take_byte(&p, end), damage = (ctl >> 2) & 7;
    size_t id_len = (size_t)take_byte(&p, end), len, cut = 0;
    const uint8_t *id, *d;
    uint64_t off;
    len = (size_t)take_byte(&p, end);
    len |= (size_t)take_byte(&p, end) << 8;
    id = take(&p, end, &id_len);
    d = take(&p, end, &len);
    if(damage == 6)
      cut = (size_t)take_byte(&p, end);
    if(damage == 7) {
      size_t glen = (size_t)take_byte(&p, end);
      const uint8_t *g = take(&p, end, &glen);
      must(lf_buf_add(&bd->seg, g, glen));
    }
    off = bd->seg.len;
    add_record(&bd->seg, ctl & 3, id, id_len, d, len, damage);
    if(damage == 6) {
      size_t whole = REC_HDR_LEN + id_len + len;
      bd->seg.len = (size_t)off + cut % whole;
      continue;
    }
    if(damage == 4 || damage == 5)
      continue;
    bd->rec[bd->nrec].off = off;
    bd->rec[bd->nrec].len = REC_HDR_LEN + id_len + len;
    bd->rec[bd->nrec].acked = (ctl >> 5) & 1;
    bd->rec[bd->nrec].seen = 0;
    if(bd->rec[bd->nrec].acked)
      add_ack(&bd->ack, off);
    bd->nrec++;
  }
}

static void write_file(const char *name, const struct lf_buf *b)
{
  char path[600];
  int fd;
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if(fd < 0)
    fail("cannot create a file in the spool directory");
  if(b->len && write(fd, b->data, b->len) != (ssize_t)b->len)
    fail("cannot write a file in the spool directory");
  close(fd);
}

/* Checks one record against the file and the expected list. */
static void check_record(struct build *bd, const struct lf_spool_record *r,
                         uint64_t *next_off)
{
  const unsigned char *f = (const unsigned char *)bd->seg.data;
  uint64_t end = r->ref.off + REC_HDR_LEN + r->id_len + r->len;
  size_t i;
  if(r->id_len > LF_SPOOL_ID_MAX || r->len > LF_SPOOL_DATA_MAX)
    fail("record over the limits");
  if(r->id[r->id_len] != '\0')
    fail("id not NUL-terminated");
  if(r->ref.off < *next_off || end > bd->seg.len)
    fail("record out of order, overlapping, or past the file");
  if(memcmp(f + r->ref.off + REC_HDR_LEN, r->id, r->id_len) ||
     memcmp(f + r->ref.off + REC_HDR_LEN + r->id_len, r->data, r->len))
    fail("record bytes differ from the file");
  *next_off = end;
  for(i = 0; i < bd->nrec; i++) {
    if(bd->rec[i].off == r->ref.off) {
      if(bd->rec[i].acked)
        fail("an acked record came back");
      bd->rec[i].seen++;
    } else if(bd->rec[i].off > r->ref.off && bd->rec[i].off < end) {
      bd->rec[i].seen++;      /* inside a sound record: not lost */
    }
  }
}

/* Claims and reads the segment; returns the records handed out. */
static void read_spool(struct build *bd, int flags)
{
  struct lf_spool_opts o;
  struct lf_spool *sp;
  struct lf_spool_claim *c = NULL;
  struct lf_spool_stats st;
  char err[LF_SPOOL_ERRMAX];
  uint64_t next_off = 0;
  int rounds = 0, i;
  lf_spool_opts_init(&o);
  o.fsync = LF_SPOOL_FSYNC_NEVER;
  o.log = log_hook;
  sp = lf_spool_open(dir, &o, err);
  if(!sp)
    fail(err);
  while(rounds++ < 2 && lf_spool_claim(sp, &c, err) == LF_OK && c) {
    struct lf_spool_record r;
    int n = 0;
    next_off = 0;
    while(lf_spool_next(c, &r, err) == LF_OK && r.id) {
      check_record(bd, &r, &next_off);
      if((flags & 8) && lf_spool_ack(sp, r.ref, err) != LF_OK)
        fail("ack of a record just read failed");
      if((flags & 16) && ++n == 1)
        break;
    }
    lf_spool_claim_done(c);
    c = NULL;
    if(!(flags & 16))
      break;
  }
  if(lf_spool_stats(sp, &st, 1) != LF_OK)
    fail("stats failed");
  lf_spool_close(sp);
  if(!(flags & 1) || (flags & 16))
    return;                   /* no sound header, or a partial read */
  for(i = 0; i < (int)bd->nrec; i++) {
    if(!bd->rec[i].acked && !bd->rec[i].seen)
      fail("a sound record was lost");
    if(bd->rec[i].seen > 1)
      fail("a record came back twice in one read");
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct build bd;
  const uint8_t *p = data + 1, *end = data + size;
  int flags;
  if(size < 1)
    return 0;
  if(!root[0]) {
    strcpy(root, "/tmp/fuzz_spool.XXXXXX");
    if(!mkdtemp(root))
      fail("mkdtemp failed");
    snprintf(dir, sizeof(dir), "%s/spool", root);
    atexit(cleanup);
  }
  flags = data[0];
  memset(&bd, 0, sizeof(bd));
  lf_buf_init(&bd.seg, 0);
  lf_buf_init(&bd.ack, 0);
  if(mkdir(dir, 0700))
    fail("cannot create the spool directory");
  if(flags & 1)
    must(lf_buf_add(&bd.seg, "LFSPOOL\x01", SEG_HDR_LEN));
  if(flags & 2) {
    build_records(&bd, p, end);
  } else {
    size_t n = (size_t)(end - p), ack = flags & 32 ? n / 4 : 0;
    must(lf_buf_add(&bd.seg, p, n - ack));
    must(lf_buf_add(&bd.ack, p + n - ack, ack));
  }
  write_file(flags & 4 ? SEG_BASE ".open" : SEG_BASE ".seg", &bd.seg);
  if(bd.ack.len)
    write_file(SEG_BASE ".ack", &bd.ack);
  read_spool(&bd, flags);
  lf_buf_free(&bd.seg);
  lf_buf_free(&bd.ack);
  clear_dir();
  return 0;
}
