/* conformance.h - the backend conformance suite: runs every op x dtype x shape case on a backend
 * and compares each result with the reference CPU backend computing the same graph in f64.
 *
 * A case builds a one-op graph (views are fed into a copy) whose inputs are leaves in the case
 * dtype, runs it on the backend under test with guard bytes around every tensor, and runs the
 * ORACLE: the same graph with every float input widened exactly to f64 on the reference CPU
 * backend (both see identical values: inputs are rounded to the case dtype first). Results are
 * compared by normalized MSE, sum (y - y_ref)^2 / sum y_ref^2, against a tolerance for the
 * output dtype; NaN/Inf where the oracle has none, a damaged guard, or an error from the backend
 * is a failure. Gradient mode checks, for each differentiable op, the gradient of
 * sum(op(...) * fixed random weights) with respect to every float input.
 *
 * A new backend is done when this suite reports zero failures on it (docs/backend-porting.md).
 * tests/test_conformance.c runs it on every registered backend; `tessera ops` prints support. */
#ifndef TESSERA_CONFORMANCE_H
#define TESSERA_CONFORMANCE_H

#include <stdio.h>

#include "tessera/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    bool gradients;          /* false: forward cases; true: gradient cases of differentiable ops */
    const char *op_filter;   /* run only cases whose name contains this substring ("matmul",
                                "softmax bf16", "[3,1000]"); NULL or "" runs all */
    FILE *log;               /* one line per case (PASS / FAIL / SKIP); NULL: silent */
    int n_threads;           /* threads of the reference (oracle) backend; <= 0: all cores */
} ts_conformance_options;

/* Totals for one op (indexed by ts_op in ts_conformance_result.per_op). */
typedef struct {
    int n_cases, n_passed, n_failed, n_unsupported;
} ts_conformance_op_result;

typedef struct {
    int n_cases;             /* cases run: n_passed + n_failed + n_unsupported */
    int n_passed;
    int n_failed;
    int n_unsupported;       /* the backend's supports_op said no for some node of the case */
    char first_failure[160]; /* name of the first failing case, "" when none failed */
    char first_failure_message[512];
    double worst_ratio;      /* largest nmse / tolerance seen among compared cases */
    ts_conformance_op_result per_op[TS_OP_COUNT];
} ts_conformance_result;

/* Runs every selected case on `be`. opts may be NULL (forward mode, all cases, no log).
 * Returns TS_OK when the suite ran, whether or not cases failed (failures are in *res), or an
 * error when it could not run at all (no reference backend, out of memory). */
ts_status ts_conformance_run(ts_backend *be, const ts_conformance_options *opts, ts_conformance_result *res);

/* Prints one line per op (ts_op_name) saying for which dtypes `be` supports every case of that op
 * ("yes"), some cases ("part") or none ("-"), then the ops it lacks. Builds the case graphs only;
 * runs nothing. */
void ts_conformance_print_support(ts_backend *be, FILE *out);

/* Listing: the number of cases a run with `opts` would run (mode and filter applied; NULL:
 * forward, all), and the name of case i (0 <= i < count) written into buf. The name is what log
 * lines and ts_conformance_result.first_failure show, e.g. "matmul f32 [7,33]x[33,1]" or
 * "grad softmax bf16 [2,7,7]+mask[7,7] axis=2". Returns TS_ERR_RANGE for i out of range. */
int ts_conformance_case_count(const ts_conformance_options *opts);
ts_status ts_conformance_case_name(const ts_conformance_options *opts, int i, char *buf, size_t size);

/* Normalized MSE tolerated for a result stored in dtype t (forward mode; gradient mode allows
 * ts_conformance_grad_factor times more). 0 for integer dtypes (exact). On top of it each
 * element may be off by one subnormal step of t (f16: 2^-24), the finest a tiny value can be
 * stored. */
double ts_conformance_tolerance(ts_dtype t);
double ts_conformance_grad_factor(void);

#ifdef __cplusplus
}
#endif
#endif
