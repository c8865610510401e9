/* check.h - the tiny assertion kit every test program uses. A failed CHECK prints where and
 * why and the test goes on; check_summary prints "NAME: N passed, M failed" and gives the exit
 * code, so CTest sees a failure and a reader sees all of them at once. */
#ifndef TS_TEST_CHECK_H
#define TS_TEST_CHECK_H

#include <stdio.h>

static int check_passed_, check_failed_;

#define CHECK(cond, ...)                                                 \
    do {                                                                 \
        if (cond) {                                                      \
            check_passed_++;                                             \
        } else {                                                         \
            check_failed_++;                                             \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                \
            fputc('\n', stderr);                                         \
        }                                                                \
    } while (0)

/* CHECK that a call returned TS_OK; prints the graph's message when there is one. */
#define CHECK_OK(expr, graph)                                                            \
    do {                                                                                 \
        ts_status s_ = (expr);                                                           \
        CHECK(s_ == TS_OK, "%s -> %s %s", #expr, ts_status_name(s_),                    \
              (graph) ? ts_graph_error(graph) : "");                                     \
    } while (0)

static inline int check_summary(const char *name) {
    printf("%s: %d passed, %d failed\n", name, check_passed_, check_failed_);
    return check_failed_ ? 1 : 0;
}

#endif
