/* trainer.c - one training step of a model, read top to bottom in ts_trainer_step: batch ->
 * inputs -> forward + backward -> clip -> schedule -> Muon / AdamW -> balancing-bias update.
 * The parameter lists are made once from the tensor inventory (model.h: each tensor says which
 * optimizer owns it); routed experts of one layer and kind are one stacked Muon parameter
 * [E, rows, cols] over the contiguous block weights.c keeps them in. The CLI (`tessera train`)
 * adds data preparation, evaluation, checkpoints and logging around this. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/model_internal.h"
#include "model/moe.h"
#include "tessera/train.h"

/* One optimizer-owned buffer: a tensor (or a stacked expert block). */
typedef struct {
    int weight;       /* index into the weights */
    int64_t numel;    /* whole buffer (E x rows x cols for a stack) */
    float *data;
} trained;

struct ts_trainer {
    ts_model_weights *w;
    const ts_v4_config *cfg;
    ts_data_loader *train;
    ts_backend *be;
    ts_trainer_options o;
    ts_model_graph *mg, *eval_mg;
    bool graph_dense;               /* the stage the graphs were built for */
    ts_plan_stats plan;
    int64_t step;

    trained *adam_t, *muon_t;
    int n_adam, n_muon;
    float **adam_p, **adam_g, **muon_p, **muon_g, **all_g;
    float **graph_g;                  /* the graph's gradients (all_g unless accumulating) */
    float **acc;                      /* grad_accum > 1: the mean gradient of the micro-batches */
    int64_t *all_numel;
    ts_adamw *adamw;
    ts_muon *muon;
    ts_threadpool *pool; /* the optimizers' threads (as many as the backend's; idle during the graph) */

    int32_t *ids, *targets, *mtp_ids, *mtp_targets; /* [B*T] staging */
    int64_t **load;                                 /* [layer slots][E] */
};

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void ts_trainer_default_options(ts_trainer_options *o, int64_t batch, int64_t seq, int64_t total_steps) {
    memset(o, 0, sizeof *o);
    o->batch = batch;
    o->seq = seq;
    o->lr = ts_lr_schedule_tiny(total_steps);
    o->weight_decay = 0.1;
    o->grad_clip = 1.0;
    o->mtp = true;
    o->mtp_weight = TS_MTP_WEIGHT;
    o->grad_accum = 1;
    o->balance_alpha = TS_MOE_BALANCE_ALPHA;
    o->bias_gamma = TS_MOE_BIAS_GAMMA;
    o->indexer_loss = true;
    o->indexer_warmup = total_steps / 5;
}

/* ---------------------------------------------------------------- parameter lists */

static bool decayed_by_adamw(const ts_model_tensor *t) {
    return strcmp(t->name, "embed.weight") == 0 || strcmp(t->name, "head.weight") == 0;
}

/* Points the optimizers' gradient lists at the current training graph's gradients. */
static ts_status bind_grads(ts_trainer *tr) {
    for (int i = 0; i < tr->n_adam + tr->n_muon; i++) {
        const trained *t = i < tr->n_adam ? &tr->adam_t[i] : &tr->muon_t[i - tr->n_adam];
        float *g = ts_model_graph_grad_data(tr->mg, t->weight);
        if (!g) return TS_ERR_INTERNAL; /* the graphs of both indexer stages train the same tensors */
        tr->graph_g[i] = g;
        if (tr->acc) g = tr->acc[i];
        tr->all_g[i] = g;
        if (i < tr->n_adam) tr->adam_g[i] = g;
        else tr->muon_g[i - tr->n_adam] = g;
    }
    return TS_OK;
}

/* Sorts every trained tensor into the AdamW or the Muon list and creates both optimizers. */
static ts_status make_optimizers(ts_trainer *tr, char *err, size_t err_size) {
    int n = ts_model_weights_count(tr->w);
    tr->adam_t = calloc((size_t)n, sizeof *tr->adam_t);
    tr->muon_t = calloc((size_t)n, sizeof *tr->muon_t);
    ts_adamw_param *ap = calloc((size_t)n, sizeof *ap);
    ts_muon_param *mp = calloc((size_t)n, sizeof *mp);
    ts_status s = tr->adam_t && tr->muon_t && ap && mp ? TS_OK : TS_ERR_OOM;
    for (int i = 0; s == TS_OK && i < n; i++) {
        const ts_model_tensor *t = ts_model_weights_info(tr->w, i);
        int base = ts_model_weights_stack_base(tr->w, i);
        if (!t->is_param || t->optim == TS_OPTIM_NONE || (base >= 0 && base != i)) continue;
        float *grad = ts_model_graph_grad_data(tr->mg, i);
        if (!grad) continue; /* unused by this graph (e.g. MTP off, indexer) */
        int64_t E = base >= 0 ? tr->cfg->n_routed_experts : 1;
        trained tt = {i, E * ts_model_tensor_numel(t), ts_model_weights_data(tr->w, i)};
        if (t->optim == TS_OPTIM_MUON && t->ndim == 2 && !tr->o.adamw_only) {
            mp[tr->n_muon] = (ts_muon_param){t->name, E, t->shape[0], t->shape[1], 0};
            tr->muon_t[tr->n_muon++] = tt;
        } else {
            ap[tr->n_adam] = (ts_adamw_param){t->name, tt.numel, decayed_by_adamw(t) || t->optim == TS_OPTIM_MUON};
            tr->adam_t[tr->n_adam++] = tt;
        }
    }
    int total = tr->n_adam + tr->n_muon;
    tr->adam_p = calloc((size_t)total + 1, sizeof(float *));
    tr->adam_g = calloc((size_t)total + 1, sizeof(float *));
    tr->all_g = calloc((size_t)total + 1, sizeof(float *));
    tr->all_numel = calloc((size_t)total + 1, sizeof(int64_t));
    tr->graph_g = calloc((size_t)total + 1, sizeof(float *));
    if (s == TS_OK && (!tr->adam_p || !tr->adam_g || !tr->all_g || !tr->all_numel || !tr->graph_g)) s = TS_ERR_OOM;
    if (s == TS_OK && tr->o.grad_accum > 1) {
        tr->acc = calloc((size_t)total + 1, sizeof(float *));
        for (int i = 0; tr->acc && i < total; i++) {
            const trained *t = i < tr->n_adam ? &tr->adam_t[i] : &tr->muon_t[i - tr->n_adam];
            tr->acc[i] = malloc((size_t)t->numel * sizeof(float));
            if (!tr->acc[i]) s = TS_ERR_OOM;
        }
        if (!tr->acc) s = TS_ERR_OOM;
    }
    if (s == TS_OK) {
        tr->muon_p = tr->adam_p + tr->n_adam;
        tr->muon_g = tr->adam_g + tr->n_adam;
        for (int i = 0; i < tr->n_adam; i++) {
            tr->adam_p[i] = tr->adam_t[i].data;
            tr->all_numel[i] = tr->adam_t[i].numel;
        }
        for (int i = 0; i < tr->n_muon; i++) {
            tr->muon_p[i] = tr->muon_t[i].data;
            tr->all_numel[tr->n_adam + i] = tr->muon_t[i].numel;
        }
        s = bind_grads(tr);
        /* group 0: no weight decay (norms, sink, biases, scales); group 1: decayed matrices.
         * With adamw_only every matrix is decayed by AdamW. */
        ts_adamw_group ag[2] = {ts_adamw_group_default(0.0), ts_adamw_group_default(tr->o.weight_decay)};
        ts_muon_group mg = ts_muon_group_default();
        mg.weight_decay = tr->o.weight_decay;
        s = ts_adamw_new(ag, 2, ap, tr->n_adam, &tr->adamw);
        if (s == TS_OK && tr->n_muon) s = ts_muon_new(&mg, 1, mp, tr->n_muon, &tr->muon);
        if (s == TS_OK && tr->muon) s = ts_muon_plan(tr->muon, ts_threadpool_size(tr->pool));
    }
    if (s != TS_OK) ts_error_printf(err, err_size, "trainer: creating the optimizers failed: %s", ts_status_name(s));
    free(ap);
    free(mp);
    return s;
}

/* ---------------------------------------------------------------- life cycle */

/* Indexer protocol (spec §5.1, §7.2): until indexer_warmup CSA runs densely and the indexer
 * learns the dense attention; then CSA attends to the indexer's picks. */
static bool dense_stage(const ts_trainer *tr, int64_t step) {
    return tr->o.dense_csa || (tr->o.indexer_loss && step < tr->o.indexer_warmup);
}

static ts_model_graph_options graph_options(const ts_trainer *tr, bool backward) {
    return (ts_model_graph_options){.batch = tr->o.batch,
                                 .seq = tr->o.seq,
                                 .loss = true,
                                 .backward = backward,
                                 .mtp = tr->o.mtp,
                                 .balance_alpha = backward ? tr->o.balance_alpha : 0,
                                 .dense_csa = dense_stage(tr, tr->step),
                                 .indexer_loss = backward && tr->o.indexer_loss,
                                 .compute_dtype = tr->o.precision,
                                 .recompute = backward && tr->o.recompute};
}

static ts_status build_graph(ts_trainer *tr, bool backward, ts_model_graph **out, ts_plan_stats *plan, char *err,
                             size_t err_size) {
    ts_model_graph_options go = graph_options(tr, backward);
    ts_status s = ts_model_graph_build(tr->w, &go, out, err, err_size);
    if (s == TS_OK) s = ts_model_graph_alloc(*out, tr->be, plan, err, err_size);
    return s;
}

ts_status ts_trainer_new(ts_model_weights *w, ts_data_loader *train, ts_backend *be, const ts_trainer_options *o,
                         ts_trainer **out, char *err, size_t err_size) {
    if (!w || !train || !be || !o || !out) return TS_ERR_INVALID_ARG;
    *out = NULL;
    for (int i = 0; i < ts_model_weights_count(w); i++)
        if (ts_model_weights_mem_dtype(w, i) != TS_F32 && ts_model_weights_mem_dtype(w, i) != TS_I32) {
            ts_error_printf(err, err_size, "trainer: the weights must be f32 (not narrowed for inference)");
            return TS_ERR_UNSUPPORTED;
        }
    ts_status s = ts_lr_schedule_validate(&o->lr, err, err_size);
    if (s != TS_OK) return s;
    ts_trainer *tr = calloc(1, sizeof *tr);
    if (!tr) return TS_ERR_OOM;
    tr->w = w;
    tr->cfg = ts_model_weights_config(w);
    tr->train = train;
    tr->be = be;
    tr->o = *o;
    if (tr->cfg->kind != TS_MODEL_DEEPSEEK_V4 || tr->cfg->num_nextn_predict_layers < 1) tr->o.mtp = false;
    tr->graph_dense = dense_stage(tr, 0);
    ts_backend_info bi;
    ts_backend_get_info(be, &bi);
    s = ts_threadpool_new(bi.n_threads > 0 ? bi.n_threads : 1, &tr->pool);
    if (s != TS_OK) ts_error_printf(err, err_size, "trainer: cannot start the optimizer threads");
    if (s == TS_OK) s = build_graph(tr, true, &tr->mg, &tr->plan, err, err_size);
    if (s == TS_OK) s = make_optimizers(tr, err, err_size);
    int64_t BT = o->batch * o->seq, slots = ts_v4_n_layer_slots(tr->cfg);
    if (s == TS_OK) {
        tr->ids = malloc((size_t)BT * sizeof(int32_t));
        tr->targets = malloc((size_t)BT * sizeof(int32_t));
        tr->mtp_ids = malloc((size_t)BT * sizeof(int32_t));
        tr->mtp_targets = malloc((size_t)BT * sizeof(int32_t));
        tr->load = calloc((size_t)(slots > 0 ? slots : 1), sizeof *tr->load);
        if (!tr->ids || !tr->targets || !tr->mtp_ids || !tr->mtp_targets || !tr->load)
            s = TS_ERR_OOM;
        for (int64_t l = 0; s == TS_OK && l < slots; l++) {
            if (!tr->mg->route_idx[l]) continue;
            char name[64];
            snprintf(name, sizeof name, "%s%lld.ffn.gate.bias", l < tr->cfg->num_hidden_layers ? "layers." : "mtp.",
                     (long long)(l < tr->cfg->num_hidden_layers ? l : l - tr->cfg->num_hidden_layers));
            if (ts_model_weights_find(w, name) < 0) continue; /* hash routing: no bias */
            tr->load[l] = calloc((size_t)tr->cfg->n_routed_experts, sizeof(int64_t));
            if (!tr->load[l]) s = TS_ERR_OOM;
        }
        if (s == TS_OK && tr->o.mtp) s = ts_tensor_write_f32(tr->mg->mtp_weight, (float[]){0.3f}, 1);
        if (s != TS_OK) ts_error_printf(err, err_size, "trainer: out of memory");
    }
    if (s != TS_OK) {
        ts_trainer_free(tr);
        return s;
    }
    *out = tr;
    return TS_OK;
}

void ts_trainer_free(ts_trainer *tr) {
    if (!tr) return;
    ts_model_graph_free(tr->mg);
    ts_model_graph_free(tr->eval_mg);
    ts_adamw_free(tr->adamw);
    ts_muon_free(tr->muon);
    ts_threadpool_free(tr->pool);
    free(tr->adam_t);
    free(tr->muon_t);
    free(tr->adam_p);
    free(tr->adam_g);
    free(tr->all_g);
    free(tr->all_numel);
    for (int i = 0; tr->acc && i < tr->n_adam + tr->n_muon; i++) free(tr->acc[i]);
    free(tr->acc);
    free(tr->graph_g);
    free(tr->ids);
    free(tr->targets);
    free(tr->mtp_ids);
    free(tr->mtp_targets);
    int64_t slots = ts_v4_n_layer_slots(tr->cfg);
    for (int64_t l = 0; tr->load && l < slots; l++) free(tr->load[l]);
    free(tr->load);
    free(tr);
}

/* ---------------------------------------------------------------- one step */

/* Inputs of a batch. MTP: the token at t+1 is the target of t (same document); its target is
 * the target of t+1 when both lie in the document, else ignored. */
static ts_status write_inputs(ts_trainer *tr, ts_model_graph *mg, const ts_batch *b) {
    int64_t B = b->batch, T = b->seq_len;
    memcpy(tr->ids, b->inputs, (size_t)(B * T) * sizeof(int32_t));
    memcpy(tr->targets, b->targets, (size_t)(B * T) * sizeof(int32_t));
    for (int64_t r = 0; r < B; r++)
        for (int64_t t = 0; t < T; t++) {
            int32_t tg = b->targets[r * T + t];
            tr->mtp_ids[r * T + t] = tg >= 0 ? tg : TS_BYTE_PAD;
            tr->mtp_targets[r * T + t] = tg >= 0 && t + 1 < T ? b->targets[r * T + t + 1] : -1;
        }
    size_t bytes = (size_t)(B * T) * sizeof(int32_t);
    ts_status s = ts_tensor_write(mg->ids, tr->ids, bytes);
    if (s == TS_OK) s = ts_tensor_write(mg->targets, tr->targets, bytes);
    if (s == TS_OK && mg->mtp_ids) s = ts_tensor_write(mg->mtp_ids, tr->mtp_ids, bytes);
    if (s == TS_OK && mg->mtp_targets) s = ts_tensor_write(mg->mtp_targets, tr->mtp_targets, bytes);
    if (s == TS_OK) s = ts_model_graph_set_doc_start(mg, b->doc_start); /* document masking */
    return s;
}

static double read_scalar(const ts_tensor *t) {
    float v = NAN;
    if (t) ts_tensor_read_f32(t, &v, 1);
    return v;
}

/* Adds the micro-batch's expert loads (micro 0 starts the count). */
static ts_status count_loads(ts_trainer *tr, int micro) {
    int64_t slots = ts_v4_n_layer_slots(tr->cfg), E = tr->cfg->n_routed_experts;
    int64_t here[E > 0 ? E : 1];
    for (int64_t l = 0; l < slots; l++) {
        if (!tr->load[l]) continue;
        ts_status s = ts_moe_expert_load(tr->mg->route_idx[l], E, here);
        if (s != TS_OK) return s;
        for (int64_t e = 0; e < E; e++) tr->load[l][e] = (micro ? tr->load[l][e] : 0) + here[e];
    }
    return TS_OK;
}

/* Aux-loss-free balancing (§5.2): b_e += gamma·sign(mean load - load_e) per learned-routing layer. */
static ts_status update_biases(ts_trainer *tr) {
    const ts_v4_config *c = tr->cfg;
    int64_t slots = ts_v4_n_layer_slots(c), E = c->n_routed_experts;
    for (int64_t l = 0; l < slots; l++) {
        if (!tr->load[l]) continue;
        char name[64];
        snprintf(name, sizeof name, "%s%lld.ffn.gate.bias", l < c->num_hidden_layers ? "layers." : "mtp.",
                 (long long)(l < c->num_hidden_layers ? l : l - c->num_hidden_layers));
        float *bias = ts_model_weights_data(tr->w, ts_model_weights_find(tr->w, name));
        ts_status s = tr->o.bias_gamma > 0 ? ts_moe_bias_update(bias, tr->load[l], (int)E, tr->o.bias_gamma) : TS_OK;
        if (s != TS_OK) return s;
    }
    return TS_OK;
}

/* Rebuilds the graphs when the step crossed into the other indexer stage (also after a resume). */
static ts_status ensure_stage(ts_trainer *tr, char *err, size_t err_size) {
    if (dense_stage(tr, tr->step) == tr->graph_dense) return TS_OK;
    ts_model_graph_free(tr->mg);
    ts_model_graph_free(tr->eval_mg);
    tr->mg = tr->eval_mg = NULL;
    tr->graph_dense = dense_stage(tr, tr->step);
    ts_status s = build_graph(tr, true, &tr->mg, &tr->plan, err, err_size);
    if (s == TS_OK) s = bind_grads(tr);
    if (s == TS_OK && tr->o.mtp) s = ts_tensor_write_f32(tr->mg->mtp_weight, (float[]){0.3f}, 1);
    return s;
}

ts_status ts_trainer_step(ts_trainer *tr, ts_train_step_stats *st, char *err, size_t err_size) {
    double t0 = seconds_now();
    memset(st, 0, sizeof *st);
    st->step = tr->step;
    ts_status s = ensure_stage(tr, err, err_size);
    if (s != TS_OK) return s;
    int n_micro = tr->o.grad_accum > 1 ? (int)tr->o.grad_accum : 1, n_all = tr->n_adam + tr->n_muon;
    double mtp_w = tr->o.mtp_weight * ts_mtp_loss_weight(&tr->o.lr, tr->step) / TS_MTP_WEIGHT; /* 0.3 -> 0.1 */
    for (int micro = 0; micro < n_micro; micro++) {
        const ts_batch *b = ts_data_loader_next(tr->train);
        if (!b) {
            ts_error_printf(err, err_size, "trainer: the training data ran out");
            return TS_ERR_STATE;
        }
        s = write_inputs(tr, tr->mg, b);
        if (s == TS_OK && tr->o.mtp) s = ts_tensor_write_f32(tr->mg->mtp_weight, (float[]){(float)mtp_w}, 1);
        if (s == TS_OK) s = ts_graph_compute(tr->mg->graph);
        if (s == TS_OK) s = count_loads(tr, micro);
        if (s != TS_OK) {
            ts_error_printf(err, err_size, "trainer: step %lld: %s", (long long)tr->step, ts_graph_error(tr->mg->graph));
            return s;
        }
        st->loss += read_scalar(tr->mg->loss) / n_micro;
        st->lm_loss += read_scalar(tr->mg->lm_loss) / n_micro;
        st->mtp_loss += (tr->mg->mtp_loss ? read_scalar(tr->mg->mtp_loss) : 0) / n_micro;
        st->balance_loss += (tr->mg->balance_loss ? read_scalar(tr->mg->balance_loss) : 0) / n_micro;
        st->indexer_loss += (tr->mg->indexer_loss ? read_scalar(tr->mg->indexer_loss) : 0) / n_micro;
        st->tokens += b->n_tokens;
        for (int i = 0; tr->acc && i < n_all; i++) ts_grad_accumulate(tr->acc[i], tr->graph_g[i], tr->all_numel[i], micro, n_micro);
    }
    st->dense_csa = tr->graph_dense;
    st->grad_norm = tr->o.grad_clip > 0 ? ts_grad_clip_global_norm(tr->all_g, tr->all_numel, n_all, tr->o.grad_clip)
                                        : ts_grad_global_norm(tr->all_g, tr->all_numel, n_all);
    st->lr = ts_lr_at(&tr->o.lr, tr->step);
    st->skipped = !isfinite(st->grad_norm) || !isfinite(st->loss);
    if (!st->skipped) {
        s = ts_adamw_step(tr->adamw, tr->adam_p, (const float *const *)tr->adam_g, st->lr, tr->pool);
        if (s == TS_OK && tr->muon)
            s = ts_muon_step(tr->muon, tr->muon_p, (const float *const *)tr->muon_g, st->lr, tr->pool);
        if (s == TS_OK) s = update_biases(tr);
        if (s != TS_OK) {
            ts_error_printf(err, err_size, "trainer: update at step %lld failed: %s", (long long)tr->step, ts_status_name(s));
            return s;
        }
    }
    tr->step++;
    st->seconds = seconds_now() - t0;
    return TS_OK;
}

ts_status ts_trainer_eval(ts_trainer *tr, ts_data_loader *val, int max_batches, double *loss, char *err,
                          size_t err_size) {
    ts_status es = ensure_stage(tr, err, err_size);
    if (es != TS_OK) return es;
    if (!tr->eval_mg) {
        ts_status s = build_graph(tr, false, &tr->eval_mg, NULL, err, err_size);
        if (s != TS_OK) return s;
        if (tr->eval_mg->mtp_weight) ts_tensor_write_f32(tr->eval_mg->mtp_weight, (float[]){0.0f}, 1);
    }
    ts_data_loader_rewind(val);
    double sum = 0, weight = 0;
    for (int i = 0; i < max_batches; i++) {
        const ts_batch *b = ts_data_loader_next(val);
        if (!b) break;
        if (b->batch != tr->o.batch || b->seq_len != tr->o.seq) {
            ts_error_printf(err, err_size, "trainer: the validation batches must be %lld x %lld", (long long)tr->o.batch,
                    (long long)tr->o.seq);
            return TS_ERR_SHAPE;
        }
        ts_status s = write_inputs(tr, tr->eval_mg, b);
        if (s == TS_OK) s = ts_graph_compute(tr->eval_mg->graph);
        if (s != TS_OK) {
            ts_error_printf(err, err_size, "trainer: evaluation: %s", ts_graph_error(tr->eval_mg->graph));
            return s;
        }
        double l = read_scalar(tr->eval_mg->lm_loss);
        if (b->n_targets > 0) { /* the loss is a mean over the batch's targets: weight by their number */
            sum += l * (double)b->n_targets;
            weight += (double)b->n_targets;
        }
    }
    *loss = weight > 0 ? sum / weight : NAN;
    return TS_OK;
}

int64_t ts_trainer_step_count(const ts_trainer *tr) { return tr->step; }
void ts_trainer_set_step(ts_trainer *tr, int64_t step) { tr->step = step; }
ts_plan_stats ts_trainer_plan_stats(const ts_trainer *tr) { return tr->plan; }

ts_status ts_trainer_plan_without_recompute(const ts_trainer *tr, ts_plan_stats *out, char *err, size_t err_size) {
    if (!tr->o.recompute) {
        *out = tr->plan;
        return TS_OK;
    }
    ts_model_graph_options go = graph_options(tr, true);
    go.recompute = false;
    ts_model_graph *mg = NULL;
    ts_status s = ts_model_graph_build(tr->w, &go, &mg, err, err_size);
    if (s == TS_OK && (s = ts_graph_alloc(mg->graph, tr->be, &(ts_plan_options){.plan_only = true}, out)) != TS_OK)
        ts_error_printf(err, err_size, "trainer: planning without recomputation: %s", ts_graph_error(mg->graph));
    ts_model_graph_free(mg);
    return s;
}

int ts_trainer_state_count(const ts_trainer *tr) {
    return ts_adamw_state_count(tr->adamw) + (tr->muon ? ts_muon_state_count(tr->muon) : 0);
}

ts_status ts_trainer_state_at(ts_trainer *tr, int i, ts_optim_state *out) {
    int na = ts_adamw_state_count(tr->adamw);
    if (i < na) return ts_adamw_state_at(tr->adamw, i, out);
    if (!tr->muon) return TS_ERR_RANGE;
    return ts_muon_state_at(tr->muon, i - na, out);
}

const int64_t *ts_trainer_expert_load(const ts_trainer *tr, int layer) {
    if (layer < 0 || layer >= ts_v4_n_layer_slots(tr->cfg)) return NULL;
    return tr->load[layer];
}
