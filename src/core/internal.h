/*
 * internal.h — private layout of the core's heap objects, shared by the core files and, read
 * only, by the Lua binding. Nothing here is installed.
 *
 * Invariants kept across the core:
 *  - A task is in the ready queue (its woken or its fresh half) iff BT_TASK_F_QUEUED is set;
 *    it is never queued twice.
 *  - A task in a group is on exactly one of the group's lists: `live` until it finishes,
 *    then `done` (completion order) until it is popped or removed.
 *  - A waiting task has t->wait != NULL and t->wait->token == t->token; every wake goes
 *    through bt_task_wake(), which bumps the token, so a second wake for the same wait is
 *    dropped as stale.
 */
#ifndef BATON_INTERNAL_H
#define BATON_INTERNAL_H

#include "baton.h"

#define BT_UNUSED(x) ((void)(x))
#define bt_container_of(ptr, type, field) ((type *)((char *)(ptr) - offsetof(type, field)))

/* Admission (rt.c): while fresh tasks wait, at least one of every BT_FRESH_EVERY + 1
 * resumes starts one; otherwise woken tasks go first. */
#define BT_FRESH_EVERY 64u

/* A timer heap entry: the keys beside the pointer, so that sifting compares entries in
 * one array and touches a timer only to note its new index. */
struct bt_heap_entry {
  uint64_t due, seq;
  bt_timer_t *t;
};

struct bt_rt {
  uv_loop_t *loop;
  uv_loop_t own;                /* used when the caller passed no loop */
  int own_loop;
  uv_check_t check;             /* drains the ready queue */
  uv_idle_t idle;               /* active while the ready queue is non-empty */
  uv_timer_t timer;             /* armed at the head of the timer heap */
  bt_task_t *rq_head, *rq_tail;  /* woken: tasks that ran before, or hold a gate's permit */
  bt_task_t *fq_head, *fq_tail;  /* fresh: spawned, not run yet (rt.c: admission) */
  size_t rq_len;                 /* both queues */
  unsigned since_fresh;          /* woken resumes since a fresh task last started */
  bt_task_t *slice_fresh;        /* fq_tail when the current task was resumed */
  bt_task_t *current;
  unsigned budget;
  uint32_t next_id;
  struct bt_heap_entry *heap;   /* min-heap on (due, seq), kept in the entries (rt.c) */
  size_t heap_len, heap_cap;
  uint64_t timer_seq;
  uint64_t armed_due;           /* due of the uv timer when armed, else UINT64_MAX */
  size_t nprocs;
  struct bt_http *http;         /* libcurl multi state, created on first use */
  void *data;
};

typedef struct bt_tlist { bt_task_t *head, *tail; size_t n; } bt_tlist;

struct bt_gate {
  LIST_ENTRY(bt_gate) link;
  bt_group_t *group;             /* NULL once the group is freed (orphan) */
  bt_rt_t *rt;
  bt_sem_t *sem;
  size_t holders;                /* started tasks still holding a permit */
  bt_sem_waiter_t w;             /* queued on sem while tasks wait here */
  bt_task_t *head, *tail;        /* tasks waiting for a permit, via rq_next */
  size_t n;
};

struct bt_group {
  bt_rt_t *rt;
  bt_tlist live;
  bt_tlist done;
  LIST_HEAD(, bt_joiner) waiters;  /* bt_group_wait() callers */
  LIST_HEAD(, bt_gate) gates;
  bt_group_finish_cb on_finish;    /* bt_group_on_finish(), or NULL */
  void *on_finish_data;
  bt_task_t *owner;                /* bt_group_own(), or NULL */
  LIST_ENTRY(bt_group) owner_link; /* in owner->groups */
  bt_task_t *failed;               /* fail fast: the first failure, until it leaves */
  uint8_t fail_fast, failing;      /* failing: the siblings were aborted */
};

/* group.c */
void bt__group_init(bt_group_t *g, bt_rt_t *rt);   /* caller-owned storage */
void bt__group_destroy(bt_group_t *g);             /* after bt_group_detach_all() */
void bt__group_finished(bt_group_t *g, bt_task_t *t);
void bt__group_disown(bt_group_t *g);
void bt__gate_release(bt_rt_t *rt, bt_task_t *t);
void bt__gate_unqueue(bt_rt_t *rt, bt_task_t *t);
void bt__wake_joiners(bt_rt_t *rt, void *list_head);
/* rt.c: enqueues t, which yields; first, the tasks it spawned in this slice. */
void bt__enqueue_yield(bt_rt_t *rt, bt_task_t *t);
/* rt.c: enqueues t behind the fresh tasks (a woken joiner). */
void bt__enqueue_fresh(bt_rt_t *rt, bt_task_t *t);
/* The cancel of a wait whose src is a bt_joiner_t on some list: unlinks it. */
void bt__joiner_cancel(bt_wait_t *w);

struct bt_sem {
  size_t avail, cap;
  int closed;
  size_t nwaiting;
  TAILQ_HEAD(, bt_sem_waiter) waiters;
};

/* sem.c: a semaphore in caller-owned storage (the Lua binding embeds it in its userdata).
 * It needs no destroy: close it to fail its waiters. */
void bt__sem_init(bt_sem_t *s, size_t permits);
/* bt_sem_acquire, but k above the capacity (shrunk by bt_sem_forget) queues too: the waiter
 * is granted once bt_sem_add_permits grows it, as a waiter queued before the shrink is. */
int bt__sem_acquire_any(bt_sem_t *s, bt_sem_waiter_t *w, size_t k, bt_sem_cb cb);

struct bt_budget {
  bt_budget_key_t *keys;        /* uthash of the keys with a count above zero */
  size_t default_cap;
};

/* budget.c: a budget in caller-owned storage (the Lua binding embeds it). It owns only the
 * keys held, each freed by its last release, so a budget nobody holds a key of needs no
 * destroy; bt__budget_destroy drops the keys still held (what bt_budget_free does). */
void bt__budget_init(bt_budget_t *b, size_t default_cap);
void bt__budget_destroy(bt_budget_t *b);
const char *bt__budget_key_name(const bt_budget_key_t *k);  /* NUL-terminated */

/* buf.c: a growable byte buffer, NUL-terminated after its bytes. Append returns 0, or -1
 * when memory runs out (the buffer is then unchanged). */
typedef struct bt_buf { char *p; size_t len, cap; } bt_buf;
int bt__buf_append(bt_buf *b, const char *data, size_t n);
void bt__buf_free(bt_buf *b);

/* lines.c: a byte stream cut into lines at "\n" (process stdout: proc:read_line, the MCP
 * client's messages; HTTP bodies: stream:read_line, through bt__lines_find).
 * Zero-initialise; bt__lines_free when done. No I/O: a fuzzer drives it with bytes cut at
 * arbitrary points. */
typedef struct bt_lines {
  bt_buf buf;
  size_t pos;   /* buf.p[0, pos) consumed */
  size_t scan;  /* buf.p[pos, scan) holds no '\n' */
} bt_lines;
enum { BT_LINE_TOO_LONG = -1, BT_LINE_NONE = 0, BT_LINE_OK = 1 };
/* Appends bytes: 0, or -1 when memory runs out (nothing appended). */
int bt__lines_append(bt_lines *l, const char *data, size_t n);
/* The next whole line, without its "\n", consumed: BT_LINE_OK with *line (valid until the
 * next append or free) and *len <= max; BT_LINE_NONE when no "\n" has come yet and at most
 * max bytes are unread; BT_LINE_TOO_LONG when the unread bytes start with a line longer
 * than max (nothing is consumed: the caller decides, e.g. takes bytes raw). */
int bt__lines_next(bt_lines *l, size_t max, const char **line, size_t *len);
/* The same without consuming: *len is the line's length when BT_LINE_OK. */
int bt__lines_scan(bt_lines *l, size_t max, size_t *len);
/* The splitter itself, on bytes p[0, n) that belong to someone else (an HTTP transfer's
 * unread body): where the first line ends, with the results of bt__lines_scan. *seen
 * (in/out, 0 the first time) counts the leading bytes known to hold no '\n', so a caller
 * that keeps it while bytes are only appended searches a long line once. */
int bt__lines_find(const char *p, size_t n, size_t max, size_t *seen, size_t *len);
size_t bt__lines_unread(const bt_lines *l);
const char *bt__lines_peek(const bt_lines *l);     /* the first unread byte */
void bt__lines_consume(bt_lines *l, size_t n);     /* drops n unread bytes (at most all) */
void bt__lines_free(bt_lines *l);

/* task.c: bt_task_spawn() without the enqueue (a gated task waits for its permit). */
void bt__task_init(bt_rt_t *rt, bt_task_t *t, const bt_task_vt *vt, bt_group_t *g);

/* rt.c */
void bt__enqueue(bt_rt_t *rt, bt_task_t *t);

/* http.c: removes what is still running and closes the multi handle and its sockets'
 * poll handles (their close callbacks run on the loop's next turn). */
void bt__http_free(bt_rt_t *rt);

#endif
