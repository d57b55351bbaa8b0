/*
** lf_spool.h: the durable spool, a write-ahead log of encoded events.
**
** Every event that enters the client is appended here before it is
** sent, and stays until the server has taken it (lf_spool_ack) or it
** has been written to the dead-letter file.  A process that dies with
** events in flight leaves them on disk; the next process to call
** lf_spool_claim replays them.  Delivery is at least once: a record can
** come back after a crash even though it was sent, never the reverse.
**
** What is stored: a route number, the envelope id and the encoded JSON
** of one event.  No HTTP headers, keys or credentials ever reach a
** spool file; the caller must not put any inside an event either.
**
** Directory layout (one directory, shared by the processes of one
** application, e.g. the nginx workers):
**
**   seg-<time>-<pid>-<seq>.new    a segment being created (header only)
**   seg-<time>-<pid>-<seq>.open   the segment a live process appends to
**   seg-<time>-<pid>-<seq>.seg    a sealed segment, full or closed
**   seg-<time>-<pid>-<seq>.ack    offsets of its records already acked
**   dead-letter.jsonl             events the server refused for good
**   quarantine/                   corrupt bytes and files, kept for study
**
** <time> is 16 hex digits of microseconds since the epoch, <pid> and
** <seq> 8 hex digits each, so names sort oldest first.  Any other name
** is left alone.  Nothing but a spool creates files matching the
** pattern, and opening a spool never deletes anything.
**
** Segment file: an 8-byte header "LFSPOOL" + version byte (1), then
** records back to back.  A record, integers little-endian:
**
**   0   4  magic FE 4C 46 52 ("\xfeLFR"; 0xFE never occurs in UTF-8)
**   4   1  record version, 1
**   5   1  route (LF_SPOOL_ROUTE_*)
**   6   2  id length, at most LF_SPOOL_ID_MAX
**   8   4  data length, at most LF_SPOOL_DATA_MAX
**   12  4  CRC-32 (zlib) of the id bytes followed by the data bytes
**   16  4  CRC-32 of bytes 0..15
**   20     id bytes, then data bytes
**
** The header CRC lets a reader reject a damaged length before it reads
** or allocates anything; the body CRC catches torn and damaged data.
** After a bad record the reader looks for the next offset holding the
** magic, a valid header and a valid body, copies the bytes in between
** to quarantine/ and carries on from there.
**
** Ack file: 12-byte entries, the record's offset (8 bytes) and the
** CRC-32 of those 8 bytes.  A torn or damaged entry is ignored, which
** at worst sends that record again.
**
** Ownership of segments.  Each segment is owned by at most one process
** at a time, through flock() on the segment file, so a process that dies
** gives up its segments at once.  The writer owns its .open segment and,
** after sealing it, keeps owning it while records it appended are still
** unacked: those records are still in the caller's hands, and nobody
** else may replay them.  lf_spool_release gives that up (for when the
** caller has dropped its in-memory copies), and lf_spool_close does too.
** lf_spool_claim takes any segment nobody owns: a sealed one, or the
** .open segment of a dead process, and keeps it until the records it
** handed out are acked.  A segment is deleted once every record in it
** is acked.  Under "drop_oldest" a full spool deletes the oldest
** segments nobody else owns, ours included (never the one we append
** to, nor one a claim is still reading); acks into them then return
** LF_EINVAL, and their unacked records are counted as dropped.
**
** Threads.  All functions may be called from any thread of the process
** that opened the spool; one mutex serialises them.  A claim is read
** (lf_spool_next) by one thread at a time, but its records may be acked
** from any thread.  Open the spool after fork(): a spool opened before
** fork() refuses to work in the child (the flock would be shared).
**
** Durability, fsync option:
**   "always"  every append and ack is fsynced before the call returns.
**   "batch"   (default) appends and acks reach the kernel before the
**             call returns, so they survive the process being killed;
**             they survive a power cut once lf_spool_sync has returned.
**             The caller calls lf_spool_sync once after each group of
**             appends (before telling anyone the events are safe) and
**             after each group of acks.
**   "never"   no fsync at all; the kernel writes when it likes.
** Creating and sealing a segment fsyncs the file and the directory
** unless fsync is "never".
**
** Caveats.
**   The size cap is checked against a directory scan made at open, at
**   each rotation and, at most once a second, when the cap seems to be
**   reached; in between each process counts only its own writes.  With
**   W processes appending, the directory can overshoot max_bytes by up
**   to W segments.  The dead-letter file and quarantine/ are not
**   counted and not capped.
**   flock() is per host: do not share a spool directory between hosts
**   over NFS.
**   A SIGXFSZ from RLIMIT_FSIZE kills the process unless the host
**   ignores that signal; when it is ignored the append fails cleanly.
*/
#ifndef LF_SPOOL_H
#define LF_SPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "lf_buf.h"

/* Longest envelope id: ids are UUIDs, far shorter; this only bounds
   what a damaged file can make the reader allocate. */
#define LF_SPOOL_ID_MAX 800
/* Largest data length a reader accepts: above the largest request the
   server takes, so a real event always fits. */
#define LF_SPOOL_DATA_MAX (64 * 1024 * 1024)
/* Size of the errbuf every fallible call fills. */
#define LF_SPOOL_ERRMAX 256

/* Route numbers stored with each record (same values as lf_route_kind
   in lf_upload.h). */
#define LF_SPOOL_ROUTE_INGESTION 0
#define LF_SPOOL_ROUTE_OTLP 1

enum lf_spool_fsync {
  LF_SPOOL_FSYNC_BATCH = 0,
  LF_SPOOL_FSYNC_ALWAYS,
  LF_SPOOL_FSYNC_NEVER
};

enum lf_spool_full {
  LF_SPOOL_REFUSE = 0,       /* append fails with LF_ETOOBIG */
  LF_SPOOL_DROP_OLDEST       /* oldest unowned segments are deleted */
};

/* Levels handed to the log hook. */
enum lf_spool_level {
  LF_SPOOL_LOG_ERROR = 0,
  LF_SPOOL_LOG_WARN,
  LF_SPOOL_LOG_INFO,
  LF_SPOOL_LOG_DEBUG
};

/*
** The log hook gets one line, without newline and without secrets.  It
** is called from whatever thread made the spool call, sometimes with
** the spool's mutex held, so it must not call back into lf_spool_*.
*/
typedef void (*lf_spool_log_fn)(void *ud, int level, const char *msg);

struct lf_spool_opts {
  int fsync;                 /* enum lf_spool_fsync */
  size_t segment_bytes;      /* rotate past this size (8 MiB) */
  uint64_t max_bytes;        /* cap on segments + ack files (1 GiB) */
  int full_policy;           /* enum lf_spool_full */
  size_t max_record_bytes;   /* largest id + data to append (8 MiB) */
  lf_spool_log_fn log;       /* NULL: silent */
  void *log_ud;
};

/* Fills opts with the defaults shown above. */
void lf_spool_opts_init(struct lf_spool_opts *opts);

/* Names the option strings use: "always"/"batch"/"never" and
   "refuse"/"drop_oldest".  Return the enum value, or -1. */
int lf_spool_fsync_parse(const char *s);
int lf_spool_full_parse(const char *s);

/* Identifies one record for lf_spool_ack.  Plain value, copy freely;
   it is meaningful only in the process and spool that returned it. */
struct lf_spool_ref {
  uint64_t seg;              /* process-local segment number, never 0 */
  uint64_t off;              /* offset of the record in its segment */
};

/* One replayed record.  id, and data point into the claim's buffer and
   stay valid until the next lf_spool_next or lf_spool_claim_done on
   the same claim; copy what you keep. */
struct lf_spool_record {
  int route;
  const char *id;            /* NUL-terminated; NULL at the end */
  size_t id_len;
  const char *data;
  size_t len;
  struct lf_spool_ref ref;
};

struct lf_spool_stats {
  uint64_t bytes_pending;    /* segment + ack bytes in the directory */
  uint64_t segments;         /* segment files in the directory */
  int64_t records_pending;   /* unacked records in the directory when
                                counted (count_records), else -1 */
  uint64_t records_held;     /* appended or replayed here, not acked */
  /* Counters since open, for this process only. */
  uint64_t appended;
  uint64_t appended_bytes;
  uint64_t replayed;
  uint64_t acked;
  uint64_t corrupt;          /* damaged regions and files found */
  uint64_t quarantined;      /* of those, copied or moved to quarantine/ */
  uint64_t dropped;          /* records deleted by drop_oldest */
  uint64_t dropped_segments;
  uint64_t refused;          /* appends refused by the size cap */
  uint64_t write_errors;     /* appends failed by the file system */
  uint64_t dead_lettered;
  size_t read_buf_max;       /* largest read buffer any claim grew to */
};

struct lf_spool;
struct lf_spool_claim;

/*
** Opens the spool in dir, creating the directory (mode 0700, parent
** must exist) when it is missing.  Refuses a dir that is a symbolic
** link, not a directory, or not writable.  Deletes nothing.  Returns a
** spool the caller owns and frees with lf_spool_close, or NULL with the
** reason in errbuf (LF_SPOOL_ERRMAX bytes, may be NULL).  opts may be
** NULL for the defaults; the spool keeps a copy.
*/
struct lf_spool *lf_spool_open(const char *dir,
                               const struct lf_spool_opts *opts,
                               char *errbuf);

/*
** Seals this process's segment, syncs, gives up every segment the spool
** owns (unacked records stay on disk for a later claim) and frees sp.
** Claims not yet finished with lf_spool_claim_done are freed too; the
** caller must not use them afterwards.
*/
void lf_spool_close(struct lf_spool *sp);

/*
** Appends one record (id NUL-terminated, data len bytes, the caller
** keeps both) to this process's segment, rotating first when the
** segment would pass segment_bytes.  On LF_OK the record is in the file
** (see the fsync policy for when it is on the disk) and *ref names it.
** Otherwise nothing readable was added and errbuf says why:
** LF_EINVAL bad route/id/use after fork, LF_ETOOBIG record too big or
** spool full under "refuse", LF_EIO the file system failed (disk full,
** read-only, I/O error: strerror text), LF_ENOMEM.
*/
int lf_spool_append(struct lf_spool *sp, int route, const char *id,
                    const char *data, size_t len,
                    struct lf_spool_ref *ref, char *errbuf) LF_WARN_UNUSED;

/* fsyncs what appends, acks, seals and dead letters since the last
   call left unsynced.  The "batch" contract: call it after each group
   of appends and of acks.  LF_OK or LF_EIO. */
int lf_spool_sync(struct lf_spool *sp, char *errbuf) LF_WARN_UNUSED;

/*
** Marks the record delivered (or dead-lettered): it will not be
** replayed.  Appends its offset to the segment's .ack file (fsynced
** under "always"), and deletes the segment once all its records are
** acked.  Acking twice is harmless.  LF_EINVAL when this spool no longer
** owns the segment (released, dropped, or a ref from elsewhere): the ack
** is not recorded and the record may be replayed.  LF_EIO when the ack
** could not be written (it still counts in memory; after a crash the
** record may be replayed).
*/
int lf_spool_ack(struct lf_spool *sp, struct lf_spool_ref ref,
                 char *errbuf) LF_WARN_UNUSED;

/*
** Seals this process's segment now (if it has records), so that the
** next append starts a new one.
*/
int lf_spool_rotate(struct lf_spool *sp, char *errbuf) LF_WARN_UNUSED;

/*
** Seals this process's segment and gives up the segments it wrote that
** still hold unacked records, so that lf_spool_claim, here or in
** another process, replays those records.  Call it when the in-memory
** copies of appended events were dropped.  Refs into released segments
** stop working (lf_spool_ack: LF_EINVAL).  Segments taken by
** lf_spool_claim are not affected: they stay owned until the records
** handed out are acked, or until lf_spool_close.
*/
int lf_spool_release(struct lf_spool *sp, char *errbuf) LF_WARN_UNUSED;

/*
** Takes the oldest segment nobody owns, for replay.  Along the way it
** quarantines files with the segment naming that are empty, symlinks,
** not regular, or of an unknown version, deletes leftovers (.new files
** of dead processes, .ack files without a segment) and skips segments
** other processes own.  *out is a claim the caller owns: read it with
** lf_spool_next and give it back with lf_spool_claim_done.  *out is
** NULL when there is nothing to replay.  LF_OK, LF_EIO (directory
** unreadable) or LF_ENOMEM.
*/
int lf_spool_claim(struct lf_spool *sp, struct lf_spool_claim **out,
                   char *errbuf) LF_WARN_UNUSED;

/*
** Reads the claim's next unacked record into rec, one record in memory
** at a time.  At the end of the segment it returns LF_OK with rec->id
** set to NULL.  Damaged records are skipped, reported through the log
** hook and copied to quarantine/; they are not errors.  LF_EIO when the
** file cannot be read, LF_ENOMEM.  Each record handed out must later be
** acked, or left to be replayed after lf_spool_release / close / exit.
*/
int lf_spool_next(struct lf_spool_claim *c, struct lf_spool_record *rec,
                  char *errbuf) LF_WARN_UNUSED;

/*
** Frees the claim.  The spool keeps owning the segment until the
** records handed out are acked, then deletes it when it was read to the
** end, or gives it up (for a later claim to resume) when it was not.
*/
void lf_spool_claim_done(struct lf_spool_claim *c);

/*
** Appends {"id","route","reason","time","event"} as one line to
** dead-letter.jsonl with one write().  data is the event's JSON, written
** as is (as a JSON string if it holds a line break); reason must not
** hold secrets (pass redacted server text).  Does not ack: ack the
** record too.  LF_OK, LF_EIO, LF_ENOMEM.
*/
int lf_spool_dead_letter(struct lf_spool *sp, int route, const char *id,
                         const char *data, size_t len,
                         const char *reason, char *errbuf) LF_WARN_UNUSED;

/* Fills st.  With count_records nonzero it also walks the record
   headers of every segment to fill records_pending (reads the whole
   spool's headers: for tests and diagnostics, not for hot paths). */
int lf_spool_stats(struct lf_spool *sp, struct lf_spool_stats *st,
                   int count_records) LF_WARN_UNUSED;

#endif
