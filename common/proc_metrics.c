/* process_* series from /proc/self (see proc_metrics.h). */
#include "common/proc_metrics.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/metrics.h"

/* The boot time in Unix seconds (btime of /proc/stat); 0 if unknown. */
static double boot_time(void)
{
    static double btime;
    char line[256];
    FILE *f;

    if (btime > 0)
        return btime;
    f = fopen("/proc/stat", "re");
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "btime ", 6)) {
            btime = strtod(line + 6, NULL);
            break;
        }
    fclose(f);
    return btime;
}

/* utime, stime, starttime (clock ticks) and rss (pages) from /proc/self/stat. */
static int read_stat(unsigned long long *utime, unsigned long long *stime,
                     unsigned long long *start, long long *rss)
{
    char text[1024], *p;
    size_t n;
    FILE *f = fopen("/proc/self/stat", "re");

    if (!f)
        return -1;
    n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    /* the command name, in parentheses, may hold spaces and ')': skip to the last */
    p = strrchr(text, ')');
    if (!p)
        return -1;
    /* fields 3.. after ") ": state ppid pgrp session tty tpgid flags minflt cminflt
     * majflt cmajflt utime(14) stime(15) cutime cstime priority nice threads
     * itrealvalue starttime(22) vsize rss(24) */
    if (sscanf(p + 2,
               "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d "
               "%llu %*u %lld",
               utime, stime, start, rss) != 4)
        return -1;
    return 0;
}

static long count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    long n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory stream's own descriptor */
}

void proc_metrics_update(void)
{
    unsigned long long ut, st, start;
    long long rss;
    long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE), fds;
    struct rlimit rl;

    if (ticks <= 0)
        ticks = 100;
    if (read_stat(&ut, &st, &start, &rss) == 0) {
        metrics_counter_set(M_PROC_CPU, NULL, (double)(ut + st) / (double)ticks);
        metrics_gauge_set(M_PROC_RSS, NULL, (double)rss * (double)page);
        if (boot_time() > 0)
            metrics_gauge_set(M_PROC_START, NULL, boot_time() + (double)start / (double)ticks);
    }
    fds = count_fds();
    if (fds >= 0)
        metrics_gauge_set(M_PROC_FDS, NULL, (double)fds);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        metrics_gauge_set(M_PROC_MAX_FDS, NULL, (double)rl.rlim_cur);
}
