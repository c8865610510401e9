/* sys.c - the few facts about the host that every layer needs: core count and a monotonic clock. */
#include <time.h>
#include <unistd.h>

#include "tessera/core.h"

int ts_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

double ts_time_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
