/* bench_decode.c - throughput of the incremental decoder (ts_model_decoder, src/model/decode.c)
 * on a checkpoint, for the three shapes a server meets:
 *   single  one sequence stepping alone in a decoder of --slots slots (the others idle);
 *   all     every slot stepping together (aggregate tokens/s);
 * both from empty slots, or (--context N) after each stepping slot was given an N-token prompt
 * (untimed), so that steps attend to N + 1 .. N + steps positions;
 *   prefill one --prompt-token prompt fed with ts_model_decoder_extend (tokens/s; "cold" is the
 *           first call, which also builds the chunk graphs it needs, "warm" the median after).
 * Each figure is the median of --reps runs after a warm-up, with --steps tokens per run. On a
 * shared machine wall time depends on the other processes, so each figure also comes as tokens
 * per second of process CPU time ("cpu"; with --threads 1 the steadier of the two).
 *
 *   tessera_bench_decode --model DIR [--threads N] [--slots N] [--steps N] [--prompt N]
 *                        [--context N] [--max-len N] [--reps N] [--dtype f32|bf16]
 *
 * --dtype bf16: matmul weights in bf16 (ts_model_load_for_inference), the rest f32.
 *
 * DIR: a checkpoint (`tessera init --model tiny --out DIR`). Token ids are a fixed byte
 * pattern: the cost does not depend on them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tessera/backend.h"
#include "tessera/model.h"

typedef struct {
    const char *model, *dtype;
    ts_dtype matmul_dtype;
    int threads, slots, steps, prompt, reps, context;
    int64_t max_len;
} bench_opts;

/* A run's wall and process CPU seconds. */
typedef struct {
    double wall, cpu;
} span;

static span now(void) {
    struct timespec w, c;
    clock_gettime(CLOCK_MONOTONIC, &w);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c);
    return (span){(double)w.tv_sec + 1e-9 * (double)w.tv_nsec, (double)c.tv_sec + 1e-9 * (double)c.tv_nsec};
}

static span since(span t0) {
    span t = now();
    return (span){t.wall - t0.wall, t.cpu - t0.cpu};
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Medians of wall and CPU time over n runs. */
static span median_span(const span *runs, int n, double *scratch) {
    span m;
    for (int i = 0; i < n; i++) scratch[i] = runs[i].wall;
    m.wall = median(scratch, n);
    for (int i = 0; i < n; i++) scratch[i] = runs[i].cpu;
    m.cpu = median(scratch, n);
    return m;
}

static int32_t token(int64_t i) { return (int32_t)(3 + (i * 37 + 11) % 250); }

/* Time of `steps` steps of slots 0..n-1, each emptied and then given the first `context` tokens
 * of prompt untimed (wall < 0: a call failed). */
static span time_steps(ts_model_decoder *dec, int n, int steps, const int32_t *prompt, int context, float *logits) {
    int slots[256];
    int32_t ids[256];
    for (int i = 0; i < n; i++) {
        slots[i] = i;
        ts_model_decoder_reset(dec, i);
        if (context > 0 && ts_model_decoder_extend(dec, i, prompt, context, logits, 1) != TS_OK)
            return (span){-1, -1};
    }
    span t0 = now();
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < n; i++) ids[i] = token(s + 7 * i);
        if (ts_model_decoder_step(dec, n, slots, ids, logits) != TS_OK) return (span){-1, -1};
    }
    return since(t0);
}

static span time_prefill(ts_model_decoder *dec, const int32_t *prompt, int n, float *logits) {
    ts_model_decoder_reset(dec, 0);
    span t0 = now();
    if (ts_model_decoder_extend(dec, 0, prompt, n, logits, 1) != TS_OK) return (span){-1, -1};
    return since(t0);
}

static int parse(int argc, char **argv, bench_opts *o) {
    *o = (bench_opts){NULL, "f32", TS_F32, 1, 16, 64, 200, 3, 0, 256};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--model") == 0 && v) o->model = argv[++i];
        else if (strcmp(a, "--threads") == 0 && v) o->threads = atoi(argv[++i]);
        else if (strcmp(a, "--slots") == 0 && v) o->slots = atoi(argv[++i]);
        else if (strcmp(a, "--steps") == 0 && v) o->steps = atoi(argv[++i]);
        else if (strcmp(a, "--prompt") == 0 && v) o->prompt = atoi(argv[++i]);
        else if (strcmp(a, "--reps") == 0 && v) o->reps = atoi(argv[++i]);
        else if (strcmp(a, "--context") == 0 && v) o->context = atoi(argv[++i]);
        else if (strcmp(a, "--max-len") == 0 && v) o->max_len = atoll(argv[++i]);
        else if (strcmp(a, "--dtype") == 0 && v) o->dtype = argv[++i];
        else {
            fprintf(stderr, "bench_decode: unknown or incomplete option '%s'\n", a);
            return 2;
        }
    }
    if (!o->model || o->threads < 1 || o->slots < 1 || o->slots > 256 || o->steps < 1 || o->reps < 1 ||
        o->prompt < 1 || o->context < 0 || o->context > o->prompt || o->context + o->steps > o->max_len ||
        o->prompt > o->max_len ||
        !ts_model_matmul_dtype_from_name(o->dtype, &o->matmul_dtype)) {
        fprintf(stderr, "usage: tessera_bench_decode --model DIR [--threads N] [--slots 1..256] [--steps N] "
                        "[--prompt N] [--context N] [--max-len N] [--reps N] [--dtype f32|bf16] "
                        "(context <= prompt <= max-len, context + steps <= max-len)\n");
        return 2;
    }
    return 0;
}

int main(int argc, char **argv) {
    bench_opts o;
    int rc = parse(argc, argv, &o);
    if (rc) return rc;
    char err[512] = "";
    ts_model_weights *w = NULL;
    ts_backend *be = NULL;
    ts_model_decoder *dec = NULL;
    ts_status s = ts_model_load_for_inference(o.model, o.matmul_dtype, &w, err, sizeof err);
    if (s == TS_OK) s = ts_backend_cpu_new(o.threads, &be);
    if (s == TS_OK) s = ts_model_decoder_new(w, be, o.slots, o.max_len, &dec, err, sizeof err);
    if (s != TS_OK) {
        fprintf(stderr, "bench_decode: %s %s\n", ts_status_name(s), err);
        return 1;
    }
    int64_t V = ts_model_weights_config(w)->vocab_size;
    float *logits = malloc((size_t)(o.slots * V) * sizeof *logits);
    int32_t *prompt = malloc((size_t)o.prompt * sizeof *prompt);
    span *t = malloc((size_t)o.reps * sizeof *t);
    double *scratch = malloc((size_t)o.reps * sizeof *scratch);
    for (int i = 0; i < o.prompt; i++) prompt[i] = token(i);

    span cold = time_prefill(dec, prompt, o.prompt, logits);
    for (int r = 0; r < o.reps; r++) t[r] = time_prefill(dec, prompt, o.prompt, logits);
    span warm = median_span(t, o.reps, scratch);
    time_steps(dec, 1, 4, prompt, o.context, logits); /* warm-up: builds the graphs it needs */
    for (int r = 0; r < o.reps; r++) t[r] = time_steps(dec, 1, o.steps, prompt, o.context, logits);
    span single = median_span(t, o.reps, scratch);
    time_steps(dec, o.slots, 4, prompt, o.context, logits);
    for (int r = 0; r < o.reps; r++) t[r] = time_steps(dec, o.slots, o.steps, prompt, o.context, logits);
    span all = median_span(t, o.reps, scratch);
    if (cold.wall < 0 || warm.wall < 0 || single.wall < 0 || all.wall < 0) {
        fprintf(stderr, "bench_decode: a decoder call failed\n");
        return 1;
    }
    printf("threads %d, %d slots, max_len %lld, %d steps after %d tokens of context, %s matmul weights, median of %d; "
           "tokens/s (wall | cpu)\n",
           o.threads, o.slots, (long long)o.max_len, o.steps, o.context, o.dtype, o.reps);
    printf("  single slot of %d:  %8.1f | %8.1f\n", o.slots, o.steps / single.wall, o.steps / single.cpu);
    printf("  all %d slots:       %8.1f | %8.1f aggregate\n", o.slots, o.slots * o.steps / all.wall,
           o.slots * o.steps / all.cpu);
    printf("  prefill %d tokens: %8.1f | %8.1f warm; %.1f | %.1f cold (first call)\n", o.prompt,
           o.prompt / warm.wall, o.prompt / warm.cpu, o.prompt / cold.wall, o.prompt / cold.cpu);
    free(scratch);
    free(t);
    free(prompt);
    free(logits);
    ts_model_decoder_free(dec);
    ts_backend_free(be);
    ts_model_weights_free(w);
    return 0;
}
