/*
** standalone.c: replays fuzz inputs without libFuzzer, so the corpus and
** the regression cases run with any C compiler (and under valgrind).
**
**   ./fuzz_x FILE|DIR...
**
** Each file, and each regular file directly inside a directory, is fed
** once to LLVMFuzzerTestOneInput.  A crash or a failed check aborts, as
** it would under libFuzzer; otherwise the count of inputs run is
** printed and the exit status is 0.
*/
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Largest input replayed: libFuzzer's default -max_len is far below. */
#define INPUT_MAX (16 * 1024 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads path into a malloc'd buffer the caller frees; NULL on error. */
static uint8_t *slurp(const char *path, size_t *size)
{
  FILE *f = fopen(path, "rb");
  uint8_t *buf;
  size_t n;
  if(!f)
    return NULL;
  buf = malloc(INPUT_MAX);
  if(!buf) {
    fclose(f);
    return NULL;
  }
  n = fread(buf, 1, INPUT_MAX, f);
  fclose(f);
  *size = n;
  return buf;
}

static int run_file(const char *path)
{
  size_t size = 0;
  uint8_t *buf = slurp(path, &size);
  if(!buf) {
    fprintf(stderr, "cannot read %s\n", path);
    return -1;
  }
  fprintf(stderr, "running %s (%zu bytes)\n", path, size);
  LLVMFuzzerTestOneInput(buf, size);
  free(buf);
  return 1;
}

/* Runs every regular file in dir; returns how many, or -1. */
static int run_dir(const char *dir)
{
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;
  if(!d)
    return -1;
  while((e = readdir(d))) {
    char path[4096];
    struct stat st;
    if(e->d_name[0] == '.')
      continue;
    snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    if(stat(path, &st) || !S_ISREG(st.st_mode))
      continue;
    if(run_file(path) < 0) {
      n = -1;
      break;
    }
    n++;
  }
  closedir(d);
  return n;
}

int main(int argc, char **argv)
{
  int i, total = 0;
  for(i = 1; i < argc; i++) {
    struct stat st;
    int n;
    if(stat(argv[i], &st)) {
      fprintf(stderr, "no such input: %s\n", argv[i]);
      return 2;
    }
    n = S_ISDIR(st.st_mode) ? run_dir(argv[i]) : run_file(argv[i]);
    if(n < 0)
      return 2;
    total += n;
  }
  printf("%d inputs ran\n", total);
  return 0;
}
