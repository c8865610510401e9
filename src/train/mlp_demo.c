/* mlp_demo.c - the MLP demonstration (train.h): a 3-layer perceptron learns to classify points
 * of a generated 2-D dataset with plain minibatch SGD, using nothing but the public engine:
 * op constructors record the model, ts_graph_backward appends its gradient, ts_graph_alloc
 * plans all memory once, and each step writes a minibatch, computes the whole graph, reads the
 * gradients and writes the updated parameters back. It is the end-to-end check that graph,
 * autodiff, planner, executor and kernels agree with each other, and what `tessera demo` runs
 * until the DeepSeek-V4 trainer exists.
 *
 * Two graphs are built: the training graph (minibatch rows, loss, backward) and a forward-only
 * evaluation graph whose parameter leaves are bound to the training graph's parameter storage,
 * so evaluating after training reads the trained weights without copying them. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tessera/backend.h"
#include "tessera/train.h"

#define MLP_LAYERS 3
#define MLP_N_PARAMS (2 * MLP_LAYERS) /* a weight and a bias per layer */
#define MLP_EVAL_ROWS 256             /* rows per evaluation pass */
#define MLP_MAX_CLASSES 16
#define MLP_MAX_HIDDEN 4096
#define PI_F 3.14159265358979f

/* ---------------------------------------------------------------- options */

void ts_mlp_demo_default_options(ts_mlp_demo_options *o) {
    memset(o, 0, sizeof *o);
    o->dataset = TS_MLP_DATA_SPIRAL;
    o->n_classes = 3;
    o->n_train = 1536;
    o->n_heldout = 768;
    o->noise = 0.04f;
    o->hidden = 64;
    o->batch = 64;
    o->steps = 600;
    o->learning_rate = 0.5f;
    o->seed = 42;
    o->n_threads = 0;
    o->backend = "cpu"; /* the optimized CPU kernels; "cpu-ref" is the oracle, several times slower */
}

const char *ts_mlp_dataset_name(ts_mlp_dataset d) {
    switch (d) {
    case TS_MLP_DATA_SPIRAL: return "spiral";
    case TS_MLP_DATA_RINGS: return "rings";
    }
    return "unknown";
}

ts_status ts_mlp_dataset_from_name(const char *name, ts_mlp_dataset *out) {
    if (!name || !out) return TS_ERR_INVALID_ARG;
    if (strcmp(name, "spiral") == 0) *out = TS_MLP_DATA_SPIRAL;
    else if (strcmp(name, "rings") == 0) *out = TS_MLP_DATA_RINGS;
    else return TS_ERR_INVALID_ARG;
    return TS_OK;
}

/* Records the first failure in res->error and returns s. */
static ts_status fail(ts_mlp_demo_result *res, ts_status s, const char *fmt, ...) {
    if (res->error[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(res->error, sizeof res->error, fmt, ap);
        va_end(ap);
    }
    return s;
}

static ts_status check_options(const ts_mlp_demo_options *o, ts_mlp_demo_result *res) {
    const char *bad = NULL;
    if (o->dataset != TS_MLP_DATA_SPIRAL && o->dataset != TS_MLP_DATA_RINGS) bad = "dataset is not spiral or rings";
    else if (o->n_classes < 2 || o->n_classes > MLP_MAX_CLASSES) bad = "n_classes must be 2..16";
    else if (o->n_train < 1) bad = "n_train must be >= 1";
    else if (o->n_heldout < 1) bad = "n_heldout must be >= 1";
    else if (!(o->noise >= 0 && o->noise <= 10)) bad = "noise must be in [0, 10]";
    else if (o->hidden < 1 || o->hidden > MLP_MAX_HIDDEN) bad = "hidden must be 1..4096";
    else if (o->batch < 1 || o->batch > o->n_train) bad = "batch must be 1..n_train";
    else if (o->steps < 1) bad = "steps must be >= 1";
    else if (!(o->learning_rate > 0 && o->learning_rate < 1e3f)) bad = "learning_rate must be in (0, 1000)";
    if (!bad) return TS_OK;
    return fail(res, TS_ERR_INVALID_ARG, "mlp demo: %s", bad);
}

/* ---------------------------------------------------------------- data */

typedef struct {
    int n;
    float *x;     /* [n, 2] */
    int32_t *y;   /* [n], class ids */
} dataset;

static void dataset_free(dataset *d) {
    free(d->x);
    free(d->y);
    memset(d, 0, sizeof *d);
}

/* Point of class c on spiral arm c: radius grows from 0.15 to 1 while the angle turns by
 * 3/4 of a circle; the arms start evenly spaced around the origin. */
static void spiral_point(ts_rng *rng, int c, int n_classes, float out[2]) {
    float t = (float)ts_rng_uniform(rng);
    float r = 0.15f + 0.85f * t;
    float angle = 2 * PI_F * (float)c / (float)n_classes + 1.5f * PI_F * t;
    out[0] = r * cosf(angle);
    out[1] = r * sinf(angle);
}

/* Point of class c on ring c: radii (c + 1) / n_classes, uniform angle. */
static void ring_point(ts_rng *rng, int c, int n_classes, float out[2]) {
    float angle = 2 * PI_F * (float)ts_rng_uniform(rng);
    float r = (float)(c + 1) / (float)n_classes;
    out[0] = r * cosf(angle);
    out[1] = r * sinf(angle);
}

/* Classes alternate (point i has class i % n_classes) so every class is equally represented. */
static ts_status dataset_make(const ts_mlp_demo_options *o, int n, ts_rng *rng, dataset *d) {
    d->n = n;
    d->x = malloc((size_t)n * 2 * sizeof *d->x);
    d->y = malloc((size_t)n * sizeof *d->y);
    if (!d->x || !d->y) return TS_ERR_OOM;
    for (int i = 0; i < n; i++) {
        int c = i % o->n_classes;
        float *p = d->x + 2 * i;
        if (o->dataset == TS_MLP_DATA_SPIRAL) spiral_point(rng, c, o->n_classes, p);
        else ring_point(rng, c, o->n_classes, p);
        p[0] += o->noise * (float)ts_rng_normal(rng);
        p[1] += o->noise * (float)ts_rng_normal(rng);
        d->y[i] = c;
    }
    return TS_OK;
}

/* ---------------------------------------------------------------- model graph */

typedef struct {
    ts_graph *g;
    ts_tensor *x;                    /* input leaf [rows, 2] */
    ts_tensor *targets;              /* i32 leaf [rows] (training graph only) */
    ts_tensor *logits;               /* [rows, n_classes] */
    ts_tensor *loss;                 /* [1] (training graph only) */
    ts_tensor *param[MLP_N_PARAMS];  /* w1, b1, w2, b2, w3, b3 */
} mlp_graph;

/* y = x @ w + b, the bias broadcast over rows. */
static ts_tensor *dense(ts_graph *g, ts_tensor *x, ts_tensor *w, ts_tensor *b) {
    return ts_add(g, ts_matmul(g, x, w, false, false), b);
}

/* Records the MLP for `rows` inputs. Training graphs mark the parameters trainable and add the
 * loss and its backward; evaluation graphs stop at the logits. Errors end up in m->g. */
static void mlp_build(mlp_graph *m, int rows, int hidden, int n_classes, bool training) {
    ts_graph *g = m->g;
    const int64_t width[MLP_LAYERS + 1] = {2, hidden, hidden, n_classes};
    for (int l = 0; l < MLP_LAYERS; l++) {
        ts_tensor *w = ts_new_tensor_2d(g, TS_F32, width[l], width[l + 1], NULL);
        ts_tensor *b = ts_new_tensor_1d(g, TS_F32, width[l + 1], NULL);
        ts_set_name(w, "w%d", l + 1);
        ts_set_name(b, "b%d", l + 1);
        if (training) {
            ts_set_param(w);
            ts_set_param(b);
        }
        m->param[2 * l] = w;
        m->param[2 * l + 1] = b;
    }
    m->x = ts_set_name(ts_new_tensor_2d(g, TS_F32, rows, 2, NULL), "points");
    ts_tensor *h = m->x;
    for (int l = 0; l < MLP_LAYERS; l++) {
        h = dense(g, h, m->param[2 * l], m->param[2 * l + 1]);
        if (l < MLP_LAYERS - 1) h = ts_relu(g, h);
    }
    m->logits = ts_set_name(h, "logits");
    if (!training) {
        ts_set_output(m->logits);
        return;
    }
    m->targets = ts_set_name(ts_new_tensor_1d(g, TS_I32, rows, NULL), "classes");
    m->loss = ts_set_output(ts_set_name(ts_cross_entropy(g, m->logits, m->targets), "loss"));
    if (ts_graph_status(g) == TS_OK) ts_graph_backward(g, m->loss);
}

static int64_t param_count(const mlp_graph *m) {
    int64_t n = 0;
    for (int i = 0; i < MLP_N_PARAMS; i++) n += ts_nelements(m->param[i]);
    return n;
}

/* ---------------------------------------------------------------- parameters */

/* Host copies of the parameters: SGD updates these and writes them into the graph. */
typedef struct {
    float *value[MLP_N_PARAMS];
    float *grad;                  /* scratch, as large as the largest parameter */
} host_params;

static void host_params_free(host_params *h) {
    for (int i = 0; i < MLP_N_PARAMS; i++) free(h->value[i]);
    free(h->grad);
    memset(h, 0, sizeof *h);
}

/* He-normal weights (std sqrt(2 / fan_in), suited to ReLU) and zero biases. */
static ts_status host_params_init(host_params *h, const mlp_graph *m, ts_rng *rng) {
    int64_t largest = 0;
    for (int i = 0; i < MLP_N_PARAMS; i++) {
        const ts_tensor *p = m->param[i];
        int64_t n = ts_nelements(p);
        if (n > largest) largest = n;
        h->value[i] = calloc((size_t)n, sizeof(float));
        if (!h->value[i]) return TS_ERR_OOM;
        if (p->ndim == 2) {
            float std = sqrtf(2.0f / (float)p->shape[0]);
            for (int64_t j = 0; j < n; j++) h->value[i][j] = std * (float)ts_rng_normal(rng);
        }
    }
    h->grad = malloc((size_t)largest * sizeof(float));
    return h->grad ? TS_OK : TS_ERR_OOM;
}

static ts_status write_params(const host_params *h, mlp_graph *m) {
    for (int i = 0; i < MLP_N_PARAMS; i++) {
        ts_status s = ts_tensor_write_f32(m->param[i], h->value[i], ts_nelements(m->param[i]));
        if (s != TS_OK) return s;
    }
    return TS_OK;
}

/* One SGD step: p -= lr * dloss/dp for every parameter, then the new values go to the graph. */
static ts_status sgd_step(host_params *h, mlp_graph *m, float lr) {
    for (int i = 0; i < MLP_N_PARAMS; i++) {
        ts_tensor *p = m->param[i];
        int64_t n = ts_nelements(p);
        ts_status s = ts_tensor_read_f32(ts_grad(p), h->grad, n);
        if (s != TS_OK) return s;
        for (int64_t j = 0; j < n; j++) h->value[i][j] -= lr * h->grad[j];
        if ((s = ts_tensor_write_f32(p, h->value[i], n)) != TS_OK) return s;
    }
    return TS_OK;
}

/* ---------------------------------------------------------------- minibatches */

/* Walks the training set in a fresh random order every epoch (Fisher-Yates). */
typedef struct {
    int *order;
    int n, next;
    float *x;      /* [batch, 2] */
    int32_t *y;    /* [batch] */
} batcher;

static void shuffle(int *a, int n, ts_rng *rng) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(ts_rng_next(rng) % (uint64_t)(i + 1));
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

static ts_status batcher_init(batcher *b, int n, int batch) {
    b->order = malloc((size_t)n * sizeof *b->order);
    b->x = malloc((size_t)batch * 2 * sizeof *b->x);
    b->y = malloc((size_t)batch * sizeof *b->y);
    if (!b->order || !b->x || !b->y) return TS_ERR_OOM;
    for (int i = 0; i < n; i++) b->order[i] = i;
    b->n = n;
    b->next = n; /* shuffle before the first batch */
    return TS_OK;
}

static void batcher_free(batcher *b) {
    free(b->order);
    free(b->x);
    free(b->y);
}

static void batcher_fill(batcher *b, const dataset *d, int batch, ts_rng *rng) {
    for (int r = 0; r < batch; r++) {
        if (b->next == b->n) {
            shuffle(b->order, b->n, rng);
            b->next = 0;
        }
        int i = b->order[b->next++];
        b->x[2 * r] = d->x[2 * i];
        b->x[2 * r + 1] = d->x[2 * i + 1];
        b->y[r] = d->y[i];
    }
}

/* ---------------------------------------------------------------- evaluation */

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

/* Fraction of d classified right by the evaluation graph, MLP_EVAL_ROWS points per compute
 * (the last pass is padded with zeros whose predictions are ignored). */
static ts_status accuracy(mlp_graph *ev, const dataset *d, int n_classes, float *out) {
    float *x = calloc(MLP_EVAL_ROWS * 2, sizeof *x);
    float *logits = malloc((size_t)MLP_EVAL_ROWS * (size_t)n_classes * sizeof *logits);
    ts_status s = (x && logits) ? TS_OK : TS_ERR_OOM;
    int right = 0;
    for (int start = 0; s == TS_OK && start < d->n; start += MLP_EVAL_ROWS) {
        int rows = d->n - start < MLP_EVAL_ROWS ? d->n - start : MLP_EVAL_ROWS;
        memset(x, 0, MLP_EVAL_ROWS * 2 * sizeof *x);
        memcpy(x, d->x + 2 * start, (size_t)rows * 2 * sizeof *x);
        s = ts_tensor_write_f32(ev->x, x, MLP_EVAL_ROWS * 2);
        if (s == TS_OK) s = ts_graph_compute(ev->g);
        if (s == TS_OK) s = ts_tensor_read_f32(ev->logits, logits, (int64_t)MLP_EVAL_ROWS * n_classes);
        for (int r = 0; s == TS_OK && r < rows; r++) right += argmax(logits + r * n_classes, n_classes) == d->y[start + r];
    }
    free(x);
    free(logits);
    *out = (float)right / (float)d->n;
    return s;
}

/* ---------------------------------------------------------------- the run */

typedef struct {
    const ts_mlp_demo_options *opts;
    ts_mlp_demo_result *res;
    ts_backend *backend;
    mlp_graph train, eval;
    dataset train_set, heldout_set;
    host_params params;
    batcher batches;
    ts_rng rng;
} demo_run;

static void demo_release(demo_run *r) {
    ts_graph_free(r->train.g);
    ts_graph_free(r->eval.g);
    ts_backend_free(r->backend);
    dataset_free(&r->train_set);
    dataset_free(&r->heldout_set);
    host_params_free(&r->params);
    batcher_free(&r->batches);
}

static ts_status open_backend(demo_run *r) {
    const ts_backend_entry *e = r->opts->backend ? ts_backend_registry_find(r->opts->backend) : ts_backend_registry_get(0);
    if (!e) return fail(r->res, TS_ERR_INVALID_ARG, "mlp demo: no backend named '%s'", r->opts->backend);
    ts_status s = e->create(r->opts->n_threads, &r->backend);
    if (s != TS_OK) return fail(r->res, s, "mlp demo: could not create backend %s: %s", e->name, ts_status_name(s));
    snprintf(r->res->backend, sizeof r->res->backend, "%s", e->name);
    return TS_OK;
}

static ts_status graph_failed(demo_run *r, const mlp_graph *m, const char *what, ts_status s) {
    return fail(r->res, s, "mlp demo: %s: %s (%s)", what, ts_status_name(s), ts_graph_error(m->g));
}

/* Builds and plans both graphs; the evaluation graph's parameters share the training graph's
 * storage, so they always hold the current weights. */
static ts_status build_graphs(demo_run *r) {
    const ts_mlp_demo_options *o = r->opts;
    r->train.g = ts_graph_new();
    r->eval.g = ts_graph_new();
    if (!r->train.g || !r->eval.g) return fail(r->res, TS_ERR_OOM, "mlp demo: out of memory for graphs");
    mlp_build(&r->train, o->batch, o->hidden, o->n_classes, true);
    mlp_build(&r->eval, MLP_EVAL_ROWS, o->hidden, o->n_classes, false);
    ts_status s = ts_graph_status(r->train.g);
    if (s != TS_OK) return graph_failed(r, &r->train, "building the training graph", s);
    if ((s = ts_graph_status(r->eval.g)) != TS_OK) return graph_failed(r, &r->eval, "building the evaluation graph", s);

    s = ts_graph_alloc(r->train.g, r->backend, NULL, &r->res->train_plan);
    if (s != TS_OK) return graph_failed(r, &r->train, "planning the training graph", s);
    for (int i = 0; i < MLP_N_PARAMS; i++) {
        const ts_tensor *p = r->train.param[i];
        if ((s = ts_tensor_bind(r->eval.param[i], p->buffer, p->buffer_offset)) != TS_OK)
            return graph_failed(r, &r->eval, "sharing parameters with the evaluation graph", s);
    }
    if ((s = ts_graph_alloc(r->eval.g, r->backend, NULL, NULL)) != TS_OK)
        return graph_failed(r, &r->eval, "planning the evaluation graph", s);
    r->res->n_params = param_count(&r->train);
    r->res->train_nodes = ts_graph_n_nodes(r->train.g);
    return TS_OK;
}

static ts_status prepare_data(demo_run *r) {
    const ts_mlp_demo_options *o = r->opts;
    ts_status s = dataset_make(o, o->n_train, &r->rng, &r->train_set);
    if (s == TS_OK) s = dataset_make(o, o->n_heldout, &r->rng, &r->heldout_set);
    if (s == TS_OK) s = host_params_init(&r->params, &r->train, &r->rng);
    if (s == TS_OK) s = batcher_init(&r->batches, o->n_train, o->batch);
    if (s != TS_OK) return fail(r->res, s, "mlp demo: out of memory for data");
    if ((s = write_params(&r->params, &r->train)) != TS_OK) return graph_failed(r, &r->train, "writing parameters", s);
    return TS_OK;
}

/* Linear decay from lr to lr / 10: large early steps, a calm finish. */
static float learning_rate_at(const ts_mlp_demo_options *o, int step) {
    float progress = o->steps > 1 ? (float)step / (float)(o->steps - 1) : 0.0f;
    return o->learning_rate * (1.0f - 0.9f * progress);
}

/* Adds a step's loss to the running means of the first and last TS_MLP_LOSS_WINDOW steps. */
static void track_loss(const ts_mlp_demo_options *o, int step, float loss, double *first_sum, double *last_sum) {
    if (step < TS_MLP_LOSS_WINDOW) *first_sum += loss;
    if (step >= o->steps - TS_MLP_LOSS_WINDOW) *last_sum += loss;
}

static ts_status train(demo_run *r) {
    const ts_mlp_demo_options *o = r->opts;
    double first_sum = 0, last_sum = 0, t0 = ts_time_seconds();
    for (int step = 0; step < o->steps; step++) {
        batcher_fill(&r->batches, &r->train_set, o->batch, &r->rng);
        ts_status s = ts_tensor_write_f32(r->train.x, r->batches.x, (int64_t)o->batch * 2);
        if (s == TS_OK) s = ts_tensor_write(r->train.targets, r->batches.y, (size_t)o->batch * sizeof(int32_t));
        if (s == TS_OK) s = ts_graph_compute(r->train.g);
        float loss = NAN;
        if (s == TS_OK) s = ts_tensor_read_f32(r->train.loss, &loss, 1);
        if (s == TS_OK) s = sgd_step(&r->params, &r->train, learning_rate_at(o, step));
        if (s != TS_OK) return graph_failed(r, &r->train, "training step", s);
        if (!isfinite(loss)) return fail(r->res, TS_ERR_RANGE, "mlp demo: loss became %g at step %d", loss, step);
        track_loss(o, step, loss, &first_sum, &last_sum);
        if (o->on_step) o->on_step(o->user, step, loss);
    }
    int window = o->steps < TS_MLP_LOSS_WINDOW ? o->steps : TS_MLP_LOSS_WINDOW;
    r->res->loss_first = (float)(first_sum / window);
    r->res->loss_last = (float)(last_sum / window);
    r->res->seconds = ts_time_seconds() - t0;
    return TS_OK;
}

static ts_status evaluate(demo_run *r) {
    ts_status s = accuracy(&r->eval, &r->train_set, r->opts->n_classes, &r->res->train_accuracy);
    if (s == TS_OK) s = accuracy(&r->eval, &r->heldout_set, r->opts->n_classes, &r->res->heldout_accuracy);
    if (s != TS_OK) return graph_failed(r, &r->eval, "evaluation", s);
    return TS_OK;
}

ts_status ts_mlp_demo_run(const ts_mlp_demo_options *opts, ts_mlp_demo_result *res) {
    if (!res) return TS_ERR_INVALID_ARG;
    memset(res, 0, sizeof *res);
    if (!opts) return fail(res, TS_ERR_INVALID_ARG, "mlp demo: no options given");
    ts_status s = check_options(opts, res);
    if (s != TS_OK) return s;

    demo_run r = {.opts = opts, .res = res};
    ts_rng_seed(&r.rng, opts->seed);
    s = open_backend(&r);
    if (s == TS_OK) s = build_graphs(&r);
    if (s == TS_OK) s = prepare_data(&r);
    if (s == TS_OK && opts->on_ready) opts->on_ready(opts->user, res);
    if (s == TS_OK) s = train(&r);
    if (s == TS_OK) s = evaluate(&r);
    demo_release(&r);
    return s;
}
