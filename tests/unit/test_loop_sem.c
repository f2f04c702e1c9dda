/* loop_sem: FIFO hand-over, cancel, and never more holders than max. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/backoff.h"
#include "common/loop_sem.h"

typedef struct tw {
    loop_sem_waiter w; /* first member: the callback casts back */
    int id;
    int granted;
    int queued;
} tw;

static int order[1024];
static int norder;
static int holders;
static int max_holders;

static void on_granted(loop_sem_waiter *w)
{
    tw *t = (tw *)w;

    t->granted = 1;
    t->queued = 0;
    order[norder++] = t->id;
    holders++;
    if (holders > max_holders)
        max_holders = holders;
}

static void reset(void)
{
    norder = holders = max_holders = 0;
}

static void tw_init(tw *t, int id)
{
    t->w.granted = on_granted;
    t->w.next = NULL;
    t->id = id;
    t->granted = 0;
    t->queued = 0;
}

static void test_try_and_release(void **state)
{
    loop_sem s;

    (void)state;
    loop_sem_init(&s, 2);
    assert_int_equal(loop_sem_try(&s), 1);
    assert_int_equal(loop_sem_try(&s), 1);
    assert_int_equal(loop_sem_try(&s), 0);
    loop_sem_release(&s);
    assert_int_equal(s.avail, 1);
    loop_sem_release(&s);
    assert_int_equal(s.avail, 2);
    loop_sem_release(&s); /* one release too many: still never above max */
    assert_int_equal(s.avail, 2);
    assert_int_equal(loop_sem_try(&s), 1);
    assert_int_equal(loop_sem_try(&s), 1);
    assert_int_equal(loop_sem_try(&s), 0);
}

static void test_fifo(void **state)
{
    loop_sem s;
    tw a, b, c, d;

    (void)state;
    reset();
    loop_sem_init(&s, 1);
    tw_init(&a, 1);
    tw_init(&b, 2);
    tw_init(&c, 3);
    tw_init(&d, 4);
    loop_sem_wait(&s, &a.w); /* free: granted before wait returns */
    assert_true(a.granted);
    loop_sem_wait(&s, &b.w);
    loop_sem_wait(&s, &c.w);
    loop_sem_wait(&s, &d.w);
    assert_false(b.granted || c.granted || d.granted);
    assert_int_equal(loop_sem_queued(&s), 3);
    assert_int_equal(s.waits, 3);
    /* try must not jump the queue. */
    assert_int_equal(loop_sem_try(&s), 0);
    holders--; /* a is done */
    loop_sem_release(&s);
    assert_true(b.granted && !c.granted);
    holders--;
    loop_sem_release(&s);
    holders--;
    loop_sem_release(&s);
    assert_int_equal(norder, 4);
    assert_int_equal(order[0], 1);
    assert_int_equal(order[1], 2);
    assert_int_equal(order[2], 3);
    assert_int_equal(order[3], 4);
    assert_int_equal(max_holders, 1);
    assert_int_equal(s.avail, 0);
    loop_sem_release(&s);
    assert_int_equal(s.avail, 1);
    assert_null(s.head);
    assert_null(s.tail);
}

static void test_cancel(void **state)
{
    loop_sem s;
    tw a, b, c, d, e;

    (void)state;
    reset();
    loop_sem_init(&s, 1);
    tw_init(&a, 1);
    tw_init(&b, 2);
    tw_init(&c, 3);
    tw_init(&d, 4);
    tw_init(&e, 5);
    assert_int_equal(loop_sem_try(&s), 1);
    loop_sem_wait(&s, &a.w);
    loop_sem_wait(&s, &b.w);
    loop_sem_wait(&s, &c.w);
    assert_int_equal(loop_sem_cancel(&s, &b.w), 1); /* middle */
    assert_int_equal(loop_sem_cancel(&s, &b.w), 0); /* not queued any more */
    assert_int_equal(loop_sem_cancel(&s, &c.w), 1); /* tail */
    loop_sem_wait(&s, &d.w);                        /* tail was fixed up */
    assert_int_equal(loop_sem_cancel(&s, &a.w), 1); /* head */
    loop_sem_wait(&s, &e.w);
    assert_int_equal(loop_sem_queued(&s), 2);
    loop_sem_release(&s);
    loop_sem_release(&s);
    assert_int_equal(norder, 2);
    assert_int_equal(order[0], 4);
    assert_int_equal(order[1], 5);
    assert_false(a.granted || b.granted || c.granted);
    assert_int_equal(loop_sem_cancel(&s, &e.w), 0); /* granted: not queued */
    loop_sem_release(&s);
    assert_int_equal(s.avail, 1);
    /* Cancel on an empty queue. */
    assert_int_equal(loop_sem_cancel(&s, &a.w), 0);
}

/* A granted callback may release at once (work that finished synchronously):
 * the slot moves on to the next waiter. */
static loop_sem *reentrant_sem;
static void release_at_once(loop_sem_waiter *w)
{
    on_granted(w);
    holders--;
    loop_sem_release(reentrant_sem);
}

static void test_reentrant_release(void **state)
{
    loop_sem s;
    tw a, b, c;

    (void)state;
    reset();
    reentrant_sem = &s;
    loop_sem_init(&s, 1);
    tw_init(&a, 1);
    tw_init(&b, 2);
    tw_init(&c, 3);
    b.w.granted = release_at_once;
    assert_int_equal(loop_sem_try(&s), 1);
    loop_sem_wait(&s, &a.w);
    loop_sem_wait(&s, &b.w);
    loop_sem_wait(&s, &c.w);
    loop_sem_release(&s); /* the try holder is done -> a */
    holders--;            /* a is done */
    loop_sem_release(&s); /* -> b, which releases at once -> c */
    assert_int_equal(max_holders, 1);
    assert_int_equal(norder, 3);
    assert_int_equal(order[2], 3);
    assert_true(c.granted);
    assert_int_equal(s.avail, 0);
    assert_null(s.head);
}

/* Random waits, cancels and releases: holders never exceed max, grants are
 * in arrival order, and a waiter queues only while every slot is held. */
static void test_random_ops(void **state)
{
    enum { N = 600, MAX = 3 };
    static tw ws[N];
    loop_sem s;
    uint64_t rng = 2024;
    int created = 0, last_granted_id = -1;
    int held[N], nheld = 0;

    (void)state;
    reset();
    loop_sem_init(&s, MAX);
    for (int step = 0; step < 5000; step++) {
        int op = (int)(backoff_rand(&rng) % 3);
        if (op == 0 && created < N) {
            tw *t = &ws[created];
            tw_init(t, created);
            created++;
            t->queued = 1;
            loop_sem_wait(&s, &t->w);
            if (t->granted)
                held[nheld++] = t->id;
            else
                assert_int_equal(holders, MAX);
        } else if (op == 1 && created > 0) {
            tw *t = &ws[backoff_rand(&rng) % (uint64_t)created];
            int was = t->queued;
            assert_int_equal(loop_sem_cancel(&s, &t->w), was);
            t->queued = 0;
        } else if (nheld > 0) {
            int k = (int)(backoff_rand(&rng) % (uint64_t)nheld);
            int before = norder;
            held[k] = held[--nheld];
            holders--;
            loop_sem_release(&s);
            if (norder > before)
                held[nheld++] = order[norder - 1];
        }
        assert_true(holders <= MAX);
        assert_true(s.avail >= 0 && s.avail <= MAX);
        assert_int_equal(holders + s.avail, MAX);
        if (s.head)
            assert_int_equal(s.avail, 0);
    }
    /* FIFO: grants happen in increasing arrival id. */
    for (int i = 0; i < norder; i++) {
        assert_true(order[i] > last_granted_id);
        last_granted_id = order[i];
    }
    assert_int_equal(max_holders, MAX);
    assert_true(norder > 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_try_and_release), cmocka_unit_test(test_fifo),
        cmocka_unit_test(test_cancel),          cmocka_unit_test(test_reentrant_release),
        cmocka_unit_test(test_random_ops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
