/* Counting semaphore for code running on one uv loop (no locking: all calls
 * come from the loop thread). Waiters are intrusive, so waiting allocates
 * nothing; the waiter struct must stay alive until granted or cancelled. */
#ifndef ORGSYNC_LOOP_SEM_H
#define ORGSYNC_LOOP_SEM_H

typedef struct loop_sem_waiter {
    struct loop_sem_waiter *next;
    void (*granted)(struct loop_sem_waiter *w);
} loop_sem_waiter;

typedef struct loop_sem {
    int avail, max;
    loop_sem_waiter *head, *tail;
    unsigned long waits; /* how many loop_sem_wait calls had to queue */
} loop_sem;

void loop_sem_init(loop_sem *s, int n);
/* 1 if a slot was taken now, else 0 (never queues). Also 0 while others wait,
 * so try cannot jump the FIFO queue. */
int loop_sem_try(loop_sem *s);
/* FIFO; w->granted(w) is called when the slot is handed over (synchronously,
 * before this returns, if one is available and nobody is queued). */
void loop_sem_wait(loop_sem *s, loop_sem_waiter *w);
/* 1 if w was removed from the queue, 0 if it was not queued. */
int loop_sem_cancel(loop_sem *s, loop_sem_waiter *w);
/* Hands the slot to the first waiter (calling its granted), else frees it;
 * never exceeds max. */
void loop_sem_release(loop_sem *s);
/* Number of queued waiters. */
int loop_sem_queued(const loop_sem *s);

#endif
