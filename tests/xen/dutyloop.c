/*
 * dutyloop PCT PERIOD_MS: a CPU load like lookbusy's (the paper's neighbours): in every period
 * of PERIOD_MS it computes for PCT % of the period and sleeps the rest, until killed.
 *
 * Why it exists next to the busy loop (role burn of tests/xen/domU-scenario.sh): a vCPU that
 * never sleeps is always "over" its credit under Xen's schedulers, so a vCPU that wakes for I/O
 * preempts it at once (credit's BOOST, credit2's wake-up preemption by credit). A neighbour that
 * sleeps wakes too, competes for that boost, and so delays the I/O vCPU the way the paper's
 * lookbusy neighbours did. bench/xen.sh runs either (BENCH_LOAD).
 *
 * Static, no libc beyond clock_gettime/clock_nanosleep (the domU image has busybox only).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: dutyloop PCT PERIOD_MS (1 <= PCT <= 100, 1 <= PERIOD_MS <= 1000)\n");
        return 2;
    }
    const long pct = strtol(argv[1], NULL, 10), period_ms = strtol(argv[2], NULL, 10);
    if (pct < 1 || pct > 100 || period_ms < 1 || period_ms > 1000) {
        fprintf(stderr, "dutyloop: PCT %s or PERIOD_MS %s out of range\n", argv[1], argv[2]);
        return 2;
    }
    const long long period = period_ms * 1000000LL, busy = period * pct / 100;
    volatile unsigned long sink = 0;
    long long start = now_ns();
    for (;;) {
        /* compute until this period's busy share is over (wall time: time the vCPU was
         * descheduled counts, as with lookbusy, so a starved neighbour does not catch up) */
        while (now_ns() - start < busy)
            for (int i = 0; i < 1000; i++)
                sink += (unsigned long)i * 2654435761u;
        if (busy < period) {
            const long long next = start + period;
            struct timespec ts = {.tv_sec = next / 1000000000LL, .tv_nsec = next % 1000000000LL};
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
            }
        }
        start += period;
        /* a period lost entirely (descheduled for longer) is skipped, not made up for */
        const long long t = now_ns();
        if (t - start > period)
            start = t - (t - start) % period;
    }
}
