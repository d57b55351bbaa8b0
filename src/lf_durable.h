/*
** lf_durable.h: the spool as the client uses it, a handle that follows
** the process, and batch upload with the spool as a write-ahead log.
**
** struct lf_durable wraps one struct lf_spool (lf_spool.h) on a spool
** directory.  It opens the spool lazily, in the process that first uses
** it, and again in a child after fork(): a spool opened before fork()
** refuses to work in the child, and a child must not keep the parent's
** flock'ed segment files open (the parent's segments would stay locked
** after the parent died).  A pthread_atfork handler holds the mutex of
** every handle across fork() and, in the child, closes the inherited
** spool at once, so a child never inherits one in the middle of a call
** and never pins the parent's locks.
**
** Every call takes the handle's mutex around the spool call, so a
** handle may be used from any thread of the process that opened it.
** Claims (lf_durable_claim) belong to the spool of the process that made
** them: a child must forget its parent's claims without touching them.
**
** When the spool cannot be opened (the directory went away, or turned
** read-only) each call fails with LF_EIO and the reason; the open is
** tried again at most once per DURABLE_RETRY seconds (lf_durable.c).
** The spool's log lines are kept, not printed: lf_durable_warnings hands
** them to the owner.
*/
#ifndef LF_DURABLE_H
#define LF_DURABLE_H

#include <stddef.h>

#include "lf_buf.h"
#include "lf_http.h"
#include "lf_spool.h"
#include "lf_upload.h"

struct lf_durable;

/*
** A new handle on the spool in dir with opts (copied; NULL for the
** defaults), or NULL when out of memory.  Nothing is opened yet.  The
** caller owns the handle and frees it with lf_durable_free.
*/
struct lf_durable *lf_durable_new(const char *dir,
                                  const struct lf_spool_opts *opts);

/* Closes the spool (when this process opened it) and frees d.  NULL is
   accepted. */
void lf_durable_free(struct lf_durable *d);

/* Closes the spool now: seals and syncs this process's segment and
   gives up every segment, so that others may replay what is left.  Calls
   made afterwards fail with LF_EABORT.  Claims are freed. */
void lf_durable_close(struct lf_durable *d);

/* The directory, as given. */
const char *lf_durable_dir(const struct lf_durable *d);

/* The lf_spool_* calls of the same names, through the handle.  errbuf
   holds LF_SPOOL_ERRMAX bytes. */
int lf_durable_append(struct lf_durable *d, int route, const char *id,
                      const char *data, size_t len,
                      struct lf_spool_ref *ref,
                      char *errbuf) LF_WARN_UNUSED;
int lf_durable_sync(struct lf_durable *d, char *errbuf) LF_WARN_UNUSED;
int lf_durable_ack(struct lf_durable *d, struct lf_spool_ref ref,
                   char *errbuf) LF_WARN_UNUSED;
int lf_durable_release(struct lf_durable *d,
                       char *errbuf) LF_WARN_UNUSED;
int lf_durable_dead_letter(struct lf_durable *d, int route,
                           const char *id, const char *data, size_t len,
                           const char *reason,
                           char *errbuf) LF_WARN_UNUSED;
int lf_durable_claim(struct lf_durable *d, struct lf_spool_claim **out,
                     char *errbuf) LF_WARN_UNUSED;
int lf_durable_next(struct lf_durable *d, struct lf_spool_claim *c,
                    struct lf_spool_record *rec,
                    char *errbuf) LF_WARN_UNUSED;
void lf_durable_claim_done(struct lf_durable *d, struct lf_spool_claim *c);

/* Takes the warnings the spool logged since the last call (damaged
   records skipped and quarantined, files it could not move): returns how
   many, and copies the first into buf (LF_SPOOL_ERRMAX bytes). */
unsigned lf_durable_warnings(struct lf_durable *d, char *buf);

/* Fills st from the spool (opened if need be); LF_EIO when it cannot be
   opened, and then st is zeroed. */
int lf_durable_stats(struct lf_durable *d, struct lf_spool_stats *st,
                     int count_records) LF_WARN_UNUSED;

struct lua_State;

/*
** Reads the spool options of a client configuration table (at idx,
** already checked by the Lua layer): spool_dir, spool_fsync,
** spool_max_bytes, spool_full_policy, spool_segment_bytes.  Fills opts
** and returns the directory (owned by the table), or NULL when
** spool_dir is not set.  In lf_durable_lua.c.
*/
const char *lf_durable_lua_config(struct lua_State *L, int idx,
                                  struct lf_spool_opts *opts);

/* Whether a failure of this kind (enum lf_kind) is final for the event
   itself, so that it goes to the dead-letter file instead of staying in
   the spool: a per-event rejection, a validation error, 413 alone. */
int lf_durable_is_final(int kind);

/*
** lf_upload with the spool as a write-ahead log.  Each item is appended
** to the spool and the spool synced before the first request; after the
** upload each delivered item is acked, each one the server refused for
** good (lf_durable_is_final) is written to the dead-letter file with
** its reason and acked, and every other one stays in the spool, which is
** then given up (lf_spool_release) so that a replay can claim it.
**
** kept (n bytes, the caller's) says per item whether it is in the spool
** when the call returns (1) or not (0: delivered, dead-lettered, or the
** append failed).  *spool_failed counts the items the spool could not
** take (they are still uploaded) and spool_err (LF_SPOOL_ERRMAX bytes)
** gets the first reason, or "" when none.  Returns lf_upload's result,
** or LF_ENOMEM.
*/
int lf_durable_upload(struct lf_durable *d, struct lf_http *h,
                      const struct lf_route *route, struct lf_item *items,
                      size_t n, const struct lf_upload_opts *opts,
                      struct lf_report *rep, unsigned char *kept,
                      size_t *spool_failed,
                      char *spool_err) LF_WARN_UNUSED;

#endif
