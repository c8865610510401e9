/* test_conformance.c - runs the conformance suite (every op x dtype x shape, forward and
 * gradient mode) on every backend in the registry and fails if any case fails. This is the
 * test a new backend must pass (docs/backend-porting.md). Set TS_CONFORMANCE_VERBOSE=1 to see
 * one line per case; failing cases are always printed. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tessera/conformance.h"

#define ORACLE_THREADS 2

/* Prints the FAIL lines of a log captured in memory. */
static void print_failures(const char *log) {
    for (const char *line = log; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (strncmp(line, "FAIL", 4) == 0) fprintf(stderr, "  %.*s\n", (int)len, line);
        line = end ? end + 1 : NULL;
    }
}

/* Runs one mode on `be`, prints the totals, CHECKs zero failures; returns the result. */
static ts_conformance_result run_mode(ts_backend *be, const char *be_name, bool gradients) {
    ts_conformance_result res;
    char *log = NULL;
    size_t log_size = 0;
    bool verbose = getenv("TS_CONFORMANCE_VERBOSE") != NULL;
    FILE *mem = verbose ? NULL : open_memstream(&log, &log_size);
    ts_conformance_options opts = {.gradients = gradients, .log = verbose ? stdout : mem, .n_threads = ORACLE_THREADS};
    double t0 = ts_time_seconds();
    ts_status s = ts_conformance_run(be, &opts, &res);
    if (mem) fclose(mem);
    CHECK(s == TS_OK, "ts_conformance_run on %s: %s", be_name, ts_status_name(s));
    printf("conformance: backend %s%s: %d cases, %d passed, %d failed, %d unsupported "
           "(worst nmse/tolerance %.2g, %.1f s)\n",
           be_name, gradients ? " (gradients)" : "", res.n_cases, res.n_passed, res.n_failed, res.n_unsupported,
           res.worst_ratio, ts_time_seconds() - t0);
    CHECK(res.n_failed == 0, "%s%s: %d cases failed; first: %s: %s", be_name, gradients ? " gradients" : "",
          res.n_failed, res.first_failure, res.first_failure_message);
    CHECK(res.n_cases == ts_conformance_case_count(&opts), "%s: ran %d cases, listing says %d", be_name, res.n_cases,
          ts_conformance_case_count(&opts));
    if (res.n_failed) print_failures(log);
    free(log);
    return res;
}

/* The case table covers every op (views through a copy, helpers and top-k included). */
static void check_coverage(const ts_conformance_result *fwd, const ts_conformance_result *grad) {
    for (int op = TS_OP_NONE + 1; op < TS_OP_COUNT; op++) /* 3+ variants x 4 dtypes each */
        CHECK(fwd->per_op[op].n_cases >= 4 * 3, "op %s has only %d forward cases", ts_op_name((ts_op)op),
              fwd->per_op[op].n_cases);
    for (int op = TS_OP_NONE + 1; op < TS_OP_COUNT; op++) { /* gradients: all but fill, top-k, helpers */
        bool differentiable = op != TS_OP_FILL && op != TS_OP_TOPK && op < TS_OP_FIRST_BACKWARD_;
        CHECK((grad->per_op[op].n_cases > 0) == differentiable, "op %s has %d gradient cases", ts_op_name((ts_op)op),
              grad->per_op[op].n_cases);
    }
}

/* Listing and filtering agree with what a run does. */
static void check_listing(void) {
    ts_conformance_options all = {0}, mm = {.op_filter = "matmul f32"};
    int n = ts_conformance_case_count(&all), n_mm = ts_conformance_case_count(&mm);
    char name[160];
    CHECK(n > 500, "only %d forward cases", n);
    CHECK(n_mm >= 10 && n_mm < n, "filter 'matmul f32' selects %d of %d", n_mm, n);
    CHECK(ts_conformance_case_name(&mm, 0, name, sizeof name) == TS_OK && strstr(name, "matmul f32 ") == name,
          "first matmul f32 case is '%s'", name);
    CHECK(ts_conformance_case_name(&mm, n_mm, name, sizeof name) == TS_ERR_RANGE, "case past the end has a name");
    CHECK(ts_conformance_case_count(NULL) == n, "NULL options differ from defaults");
}

static void check_support_listing(ts_backend *be, const char *be_name) {
    char *text = NULL;
    size_t size = 0;
    FILE *mem = open_memstream(&text, &size);
    ts_conformance_print_support(be, mem);
    fclose(mem);
    CHECK(text && strstr(text, "matmul") && !strstr(text, "missing:"), "%s support listing:\n%s", be_name,
          text ? text : "");
    free(text);
}

int main(void) {
    check_listing();
    for (int i = 0; i < ts_backend_registry_count(); i++) {
        const ts_backend_entry *e = ts_backend_registry_get(i);
        ts_backend *be = NULL;
        ts_status s = e->create(2, &be);
        if (s == TS_ERR_UNSUPPORTED) { /* compiled in, but this machine has no such device */
            printf("conformance: backend %s: skipped (no device)\n", e->name);
            continue;
        }
        CHECK(s == TS_OK && be, "creating backend %s: %s", e->name, ts_status_name(s));
        if (!be) continue;
        ts_conformance_result fwd = run_mode(be, e->name, false);
        ts_conformance_result grad = run_mode(be, e->name, true);
        if (i == 0) { /* the reference backend must support and pass everything */
            check_coverage(&fwd, &grad);
            CHECK(fwd.n_unsupported == 0 && grad.n_unsupported == 0, "reference backend skips cases");
            check_support_listing(be, e->name);
        }
        ts_backend_free(be);
    }
    return check_summary("test_conformance");
}
