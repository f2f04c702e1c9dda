/* All calls run on one loop thread, so plain fields suffice. A released slot
 * goes straight to the first waiter instead of back to the pool, which keeps
 * FIFO order and stops loop_sem_try from overtaking queued waiters. */
#include "common/loop_sem.h"

#include <stddef.h>

void loop_sem_init(loop_sem *s, int n)
{
    s->avail = n > 0 ? n : 0;
    s->max = s->avail;
    s->head = s->tail = NULL;
    s->waits = 0;
}

int loop_sem_try(loop_sem *s)
{
    if (s->avail <= 0 || s->head)
        return 0;
    s->avail--;
    return 1;
}

void loop_sem_wait(loop_sem *s, loop_sem_waiter *w)
{
    w->next = NULL;
    if (loop_sem_try(s)) {
        w->granted(w);
        return;
    }
    if (s->tail)
        s->tail->next = w;
    else
        s->head = w;
    s->tail = w;
    s->waits++;
}

int loop_sem_cancel(loop_sem *s, loop_sem_waiter *w)
{
    loop_sem_waiter *prev = NULL;

    for (loop_sem_waiter *it = s->head; it; prev = it, it = it->next) {
        if (it != w)
            continue;
        if (prev)
            prev->next = it->next;
        else
            s->head = it->next;
        if (s->tail == it)
            s->tail = prev;
        it->next = NULL;
        return 1;
    }
    return 0;
}

void loop_sem_release(loop_sem *s)
{
    loop_sem_waiter *w = s->head;

    if (w) {
        /* Unlink before the callback: it may wait or release again. */
        s->head = w->next;
        if (!s->head)
            s->tail = NULL;
        w->next = NULL;
        w->granted(w);
        return;
    }
    if (s->avail < s->max)
        s->avail++;
}

int loop_sem_queued(const loop_sem *s)
{
    int n = 0;

    for (const loop_sem_waiter *it = s->head; it; it = it->next)
        n++;
    return n;
}
