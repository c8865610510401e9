/* test_mlp_demo.c - the MLP demonstration (train.h) actually learns: on the spiral dataset the
 * loss falls at least 10x and held-out accuracy ends high; the rings dataset learns too; a run
 * is bit-for-bit repeatable for a seed; bad options are refused with a message; the optimized
 * "cpu" backend (the default) and the reference "cpu-ref" train to the same losses. This is the
 * end-to-end test of graph building, autodiff, memory planning, execution and the kernels
 * working together. Sizes are chosen to stay well under 30 s on 2 cores at -O2. */
#include <math.h>
#include <string.h>

#include "check.h"
#include "tessera/train.h"

#define MAX_STEPS 4000

typedef struct {
    float loss[MAX_STEPS];
    int n;
} loss_log;

static void record(void *user, int step, float loss) {
    loss_log *log = user;
    if (step < MAX_STEPS && step == log->n) log->loss[log->n++] = loss;
}

/* The demo's defaults made cheaper: hidden 32 instead of 64 and 400 steps instead of 600 still
 * learn the spiral (loss falls ~30x, held-out accuracy ~99.5% over several seeds). */
static void small_options(ts_mlp_demo_options *o) {
    ts_mlp_demo_default_options(o);
    o->hidden = 32;
    o->steps = 400;
    o->learning_rate = 0.5f;
    o->n_threads = 2;
}

static void test_spiral_learns(void) {
    ts_mlp_demo_options o;
    small_options(&o);
    static loss_log log;
    o.on_step = record;
    o.user = &log;
    ts_mlp_demo_result r;
    ts_status s = ts_mlp_demo_run(&o, &r);
    CHECK(s == TS_OK, "spiral run: %s: %s", ts_status_name(s), r.error);
    if (s != TS_OK) return;
    printf("spiral: loss %.4f -> %.4f (%.1fx), accuracy train %.3f held-out %.3f, %.2f s, peak %zu of %zu bytes\n",
           (double)r.loss_first, (double)r.loss_last, (double)(r.loss_first / r.loss_last), (double)r.train_accuracy,
           (double)r.heldout_accuracy, r.seconds, r.train_plan.arena_bytes, r.train_plan.naive_bytes);
    CHECK(log.n == o.steps, "on_step called %d times for %d steps", log.n, o.steps);
    CHECK(r.loss_first > 0.9f, "an untrained 3-class model should start near ln 3, got %.4f", (double)r.loss_first);
    CHECK(r.loss_last * 10 <= r.loss_first, "loss fell only %.4f -> %.4f (want 10x)", (double)r.loss_first,
          (double)r.loss_last);
    CHECK(r.heldout_accuracy >= 0.95f, "held-out accuracy %.3f", (double)r.heldout_accuracy);
    CHECK(r.train_accuracy >= 0.95f, "train accuracy %.3f", (double)r.train_accuracy);
    CHECK(r.n_params == 2 * 32 + 32 + 32 * 32 + 32 + 32 * 3 + 3, "n_params %lld", (long long)r.n_params);
    CHECK(r.train_plan.arena_bytes > 0 && r.train_plan.arena_bytes <= r.train_plan.naive_bytes,
          "planned peak %zu vs sum of intermediates %zu", r.train_plan.arena_bytes, r.train_plan.naive_bytes);
    CHECK(r.backend[0] != 0, "no backend name");
}

static void test_rings_learn(void) {
    ts_mlp_demo_options o;
    small_options(&o);
    o.dataset = TS_MLP_DATA_RINGS;
    o.hidden = 16;
    o.steps = 300;
    ts_mlp_demo_result r;
    ts_status s = ts_mlp_demo_run(&o, &r);
    CHECK(s == TS_OK, "rings run: %s: %s", ts_status_name(s), r.error);
    if (s != TS_OK) return;
    printf("rings: loss %.4f -> %.4f, accuracy held-out %.3f\n", (double)r.loss_first, (double)r.loss_last,
           (double)r.heldout_accuracy);
    CHECK(r.loss_last * 10 <= r.loss_first, "rings loss fell only %.4f -> %.4f", (double)r.loss_first, (double)r.loss_last);
    CHECK(r.heldout_accuracy >= 0.95f, "rings held-out accuracy %.3f", (double)r.heldout_accuracy);
}

/* Same seed -> identical loss sequence; another seed -> a different one. */
static void test_deterministic(void) {
    static loss_log a, b, c;
    ts_mlp_demo_options o;
    ts_mlp_demo_result r;
    small_options(&o);
    o.steps = 25;
    o.hidden = 16;
    o.on_step = record;
    o.user = &a;
    CHECK(ts_mlp_demo_run(&o, &r) == TS_OK, "run a: %s", r.error);
    o.user = &b;
    CHECK(ts_mlp_demo_run(&o, &r) == TS_OK, "run b: %s", r.error);
    o.user = &c;
    o.seed += 1;
    CHECK(ts_mlp_demo_run(&o, &r) == TS_OK, "run c: %s", r.error);
    CHECK(a.n == 25 && b.n == 25 && c.n == 25, "steps recorded %d %d %d", a.n, b.n, c.n);
    CHECK(memcmp(a.loss, b.loss, sizeof a.loss) == 0, "same seed, different losses");
    CHECK(memcmp(a.loss, c.loss, sizeof a.loss) != 0, "different seeds, same losses");
}

/* The same run on the reference kernels and on the optimized ones: f32 GEMM sums round
 * differently from the reference's double sums, so losses may differ in the last bits and the
 * difference may grow a little over the run, but the two must track each other closely. */
static void test_backends_agree(void) {
    static loss_log ref, fast;
    ts_mlp_demo_options o;
    ts_mlp_demo_result r_ref, r_fast;
    small_options(&o);
    o.steps = 150;
    o.on_step = record;
    o.backend = "cpu-ref";
    o.user = &ref;
    CHECK(ts_mlp_demo_run(&o, &r_ref) == TS_OK, "cpu-ref run: %s", r_ref.error);
    o.backend = "cpu";
    o.user = &fast;
    CHECK(ts_mlp_demo_run(&o, &r_fast) == TS_OK, "cpu run: %s", r_fast.error);
    CHECK(ref.n == o.steps && fast.n == o.steps, "steps recorded %d %d", ref.n, fast.n);
    float worst = 0;
    for (int i = 0; i < ref.n && i < fast.n; i++) worst = fmaxf(worst, fabsf(ref.loss[i] - fast.loss[i]));
    printf("backends: cpu-ref %.3f ms/step, cpu %.3f ms/step (%.1fx); final loss %.6f vs %.6f, worst step "
           "difference %.2g\n", 1e3 * r_ref.seconds / o.steps, 1e3 * r_fast.seconds / o.steps,
           r_ref.seconds / fmax(r_fast.seconds, 1e-9), (double)r_ref.loss_last, (double)r_fast.loss_last, (double)worst);
    CHECK(worst <= 1e-4f, "per-step losses differ by up to %g", (double)worst);
    CHECK(fabsf(r_ref.loss_last - r_fast.loss_last) <= 1e-4f * fmaxf(1.0f, r_ref.loss_last), "final losses %g vs %g",
          (double)r_ref.loss_last, (double)r_fast.loss_last);
    CHECK(strcmp(r_ref.backend, "cpu-ref") == 0 && strcmp(r_fast.backend, "cpu") == 0, "backends %s, %s",
          r_ref.backend, r_fast.backend);
}

static void expect_refused(ts_mlp_demo_options o, const char *mentions) {
    ts_mlp_demo_result r;
    ts_status s = ts_mlp_demo_run(&o, &r);
    CHECK(s == TS_ERR_INVALID_ARG, "%s: got %s", mentions, ts_status_name(s));
    CHECK(strstr(r.error, mentions) != NULL, "error '%s' does not mention '%s'", r.error, mentions);
}

static void test_bad_options(void) {
    ts_mlp_demo_options o;
    small_options(&o);
    ts_mlp_demo_options bad = o;
    bad.n_classes = 1;
    expect_refused(bad, "n_classes");
    bad = o;
    bad.batch = o.n_train + 1;
    expect_refused(bad, "batch");
    bad = o;
    bad.learning_rate = NAN;
    expect_refused(bad, "learning_rate");
    bad = o;
    bad.backend = "no-such-backend";
    expect_refused(bad, "no-such-backend");
    ts_mlp_demo_result r;
    CHECK(ts_mlp_demo_run(NULL, &r) == TS_ERR_INVALID_ARG, "NULL options accepted");
}

int main(void) {
    test_bad_options();
    test_deterministic();
    test_backends_agree();
    test_rings_learn();
    test_spiral_learns();
    return check_summary("test_mlp_demo");
}
